"""Export availability windows: when each Clover host accepts exports (all times UTC).

Clover's windows have moved before, so they are data (a `WindowTable` per region, read from
the config with the documented tables as defaults) rather than code.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from types import MappingProxyType

from harvester.clover.chunks import start_of_utc_day
from harvester.errors import ConfigError

_MINUTES_PER_DAY = 24 * 60
_DAY_NAMES = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_FULL_DAY_NAMES = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_DAY_NUMBERS = {name.lower(): number for number, name in enumerate(_DAY_NAMES)} | {
    name: number for number, name in enumerate(_FULL_DAY_NAMES)
}
_EVERY_DAY = frozenset(range(7))
_EVERY_DAY_WORDS = ("every day", "everyday", "daily")
_SEARCH_DAYS = 8  # one week of rules, plus a day for a period that started yesterday

_RULE = re.compile(
    r"\s*(?P<days>\S.*?)\s+(?P<start>\d{1,2}:\d{2})\s*-\s*(?P<end>\d{1,2}:\d{2})\s*",
)
_CLOCK_TIME = re.compile(r"(?P<hour>\d{1,2}):(?P<minute>\d{2})")

# A time of day as Clover might write it: "10:00", "10:00:00", "3:00 PM", "3 pm". A bare
# number counts only with AM/PM, so that dates and counts in the message are not taken for hours.
_MESSAGE_TIME = (
    r"(?<![\d:.])(?P<{0}_hour>\d{{1,2}})(?::(?P<{0}_minute>\d{{2}})(?::\d{{2}})?)?(?![\d:])"
    r"(?:\s*(?P<{0}_half>[ap])\.?m\b\.?)?"
    r"(?({0}_minute)|(?({0}_half)|(?!)))"
)
_MESSAGE_RANGE = re.compile(
    _MESSAGE_TIME.format("start")
    + r"\s*(?:-|\u2013|\u2014|to|until|till|and)\s*"
    + _MESSAGE_TIME.format("end"),
    re.IGNORECASE,
)
_WINDOW_WORDS = re.compile(r"\b(?:hours|available|availability|window|outside)\b", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class WindowRule:
    """On each of `days` (0 = Monday ... 6 = Sunday), open from `start_min` to `end_min`."""

    days: frozenset[int]
    start_min: int  # minutes after 00:00 UTC
    end_min: int  # minutes after 00:00 UTC, > start_min, may be 1440 ("24:00")

    def __post_init__(self) -> None:
        if not self.days or not self.days <= _EVERY_DAY:
            raise ValueError(f"window days must be a non-empty subset of 0..6, got {self.days}")
        if not 0 <= self.start_min < self.end_min <= _MINUTES_PER_DAY:
            raise ValueError(
                f"a window must have 0 <= start < end <= 1440 minutes, "
                f"got {self.start_min}-{self.end_min}"
            )

    def open_period(self, day_start: datetime) -> tuple[datetime, datetime] | None:
        """The instants this rule opens and closes on the UTC day starting at `day_start`."""
        if day_start.weekday() not in self.days:
            return None
        return (
            day_start + timedelta(minutes=self.start_min),
            day_start + timedelta(minutes=self.end_min),
        )

    def describe(self) -> str:
        """The rule as the config would write it, e.g. "Mon-Fri 01:00-05:00"."""
        return f"{_describe_days(self.days)} {_clock(self.start_min)}-{_clock(self.end_min)}"


@dataclass(frozen=True, slots=True)
class WindowTable:
    """The weekly hours during which a host accepts exports."""

    rules: tuple[WindowRule, ...]  # empty with always_open=True means "always"
    always_open: bool = False

    @classmethod
    def always(cls) -> WindowTable:
        """A table that is never closed (the sandbox)."""
        return cls(rules=(), always_open=True)

    @classmethod
    def parse(cls, spec: object, where: str) -> WindowTable:
        """Read "always" or a list like ["Mon-Fri 01:00-05:00", "Sat 02:00-05:00"].

        Raises ConfigError naming `where` (the YAML path) and the item it could not read.
        """
        if isinstance(spec, str) and spec.strip().lower() == "always":
            return cls.always()
        if not isinstance(spec, list) or not spec:
            raise ConfigError(
                f"{where}: expected 'always' or a list of windows like "
                f"['Mon-Fri 01:00-05:00'], got {spec!r}"
            )
        return cls(rules=tuple(_parse_rule(item, f"{where}[{i}]") for i, item in enumerate(spec)))

    def is_open(self, now: datetime) -> bool:
        """True if exports are accepted at `now` (open at a rule's start, closed at its end)."""
        return self.always_open or self._close_of_rules_open_at(now) is not None

    def current_close(self, now: datetime) -> datetime | None:
        """When the open period containing `now` ends; None if closed or always open.

        Back-to-back and overlapping rules form one period: Mon 22:00-24:00 with Tue
        00:00-02:00 closes at Tue 02:00.
        """
        if self.always_open:
            return None
        close = self._close_of_rules_open_at(now)
        if close is None:
            return None
        horizon = now + timedelta(days=_SEARCH_DAYS)
        while (later := self._close_of_rules_open_at(close)) is not None:
            close = later
            if close > horizon:
                # Rules that cover the whole week never close.
                return None
        return close

    def next_open(self, now: datetime) -> datetime:
        """`now` if open, else the next instant a rule opens."""
        if self.is_open(now):
            return now
        today = start_of_utc_day(now)
        openings = [
            period[0]
            for offset in range(_SEARCH_DAYS + 1)
            for rule in self.rules
            if (period := rule.open_period(today + timedelta(days=offset))) is not None
            and period[0] > now
        ]
        if not openings:
            raise ValueError("a window table with no rules never opens")
        return min(openings)

    def describe(self) -> str:
        """The table as the config would write it: "always" or "Mon-Fri 01:00-05:00, ..."."""
        if self.always_open:
            return "always"
        return ", ".join(rule.describe() for rule in self.rules)

    def _close_of_rules_open_at(self, instant: datetime) -> datetime | None:
        """The latest close among the rules open at `instant`, or None if none is."""
        today = start_of_utc_day(instant)
        closes = [
            period[1]
            for rule in self.rules
            if (period := rule.open_period(today)) is not None and period[0] <= instant < period[1]
        ]
        return max(closes, default=None)


def _parse_rule(item: object, where: str) -> WindowRule:
    problem = ConfigError(f"{where}: cannot read {item!r}; expected like 'Mon-Fri 01:00-05:00'")
    if not isinstance(item, str) or (match := _RULE.fullmatch(item)) is None:
        raise problem
    days = _parse_days(match["days"])
    start_min = _parse_clock(match["start"])
    end_min = _parse_clock(match["end"])
    if days is None or start_min is None or end_min is None or start_min == _MINUTES_PER_DAY:
        raise problem
    if end_min <= start_min:
        raise ConfigError(
            f"{where}: {item!r} ends before it starts; write a window across midnight as two, "
            f"e.g. 'Mon 22:00-24:00' and 'Tue 00:00-02:00'"
        )
    return WindowRule(days=days, start_min=start_min, end_min=end_min)


def _parse_days(text: str) -> frozenset[int] | None:
    """Read "every day", "Mon-Fri", "Sat,Sun", "Fri-Mon" (wrapping); None if unreadable."""
    if " ".join(text.lower().split()) in _EVERY_DAY_WORDS:
        return _EVERY_DAY
    days: set[int] = set()
    for part in text.split(","):
        first_text, dash, last_text = part.partition("-")
        first = _DAY_NUMBERS.get(first_text.strip().lower())
        last = _DAY_NUMBERS.get(last_text.strip().lower()) if dash else first
        if first is None or last is None:
            return None
        days.update((first + step) % 7 for step in range((last - first) % 7 + 1))
    return frozenset(days)


def _parse_clock(text: str) -> int | None:
    """Minutes after midnight for "HH:MM" (up to "24:00"); None if no such time."""
    match = _CLOCK_TIME.fullmatch(text)
    if match is None:
        return None
    hour, minute = int(match["hour"]), int(match["minute"])
    if minute > 59 or hour > 24 or (hour == 24 and minute != 0):
        return None
    return hour * 60 + minute


def _clock(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


def _describe_days(days: frozenset[int]) -> str:
    if days == _EVERY_DAY:
        return "every day"
    # Start after a missing day so that a run wrapping the week (Fri-Mon) stays one run.
    first = next(day for day in range(7) if (day - 1) % 7 not in days and day in days)
    runs: list[tuple[int, int]] = []
    for step in range(7):
        day = (first + step) % 7
        if day not in days:
            continue
        if runs and runs[-1][1] == (day - 1) % 7:
            runs[-1] = (runs[-1][0], day)
        else:
            runs.append((day, day))
    return ",".join(
        _DAY_NAMES[start] if start == end else f"{_DAY_NAMES[start]}-{_DAY_NAMES[end]}"
        for start, end in runs
    )


def hours_from_message(text: str) -> WindowTable | None:
    """The daily hours a "closed" 503 body names ("between 10:00 and 15:00"), or None.

    The body's shape is not documented, so this only looks for time ranges anywhere in the
    text, takes them as UTC and every day, and leaves the rest to the configured table.
    """
    rules: list[WindowRule] = []
    for match in _MESSAGE_RANGE.finditer(text):
        start_min = _message_minutes(match, "start")
        end_min = _message_minutes(match, "end")
        if start_min is None or end_min is None or start_min == end_min:
            continue
        if end_min == 0:
            end_min = _MINUTES_PER_DAY
        if end_min > start_min:
            spans = [(start_min, end_min)]
        else:  # crosses midnight, e.g. 22:00-02:00
            spans = [(start_min, _MINUTES_PER_DAY), (0, end_min)]
        for start, end in spans:
            if start < _MINUTES_PER_DAY:
                rule = WindowRule(days=_EVERY_DAY, start_min=start, end_min=end)
                if rule not in rules:
                    rules.append(rule)
    return WindowTable(rules=tuple(rules)) if rules else None


def _message_minutes(match: re.Match[str], which: str) -> int | None:
    hour = int(match[f"{which}_hour"])
    minute = int(match[f"{which}_minute"] or 0)
    half = match[f"{which}_half"]
    if minute > 59:
        return None
    if half is not None:
        if not 1 <= hour <= 12:
            return None
        hour = hour % 12 + (12 if half.lower() == "p" else 0)
    elif hour > 24 or (hour == 24 and minute != 0):
        return None
    return hour * 60 + minute


def is_window_message(text: str) -> bool:
    """True if a 503 body speaks of hours or availability: closed, rather than busy."""
    return _WINDOW_WORDS.search(text) is not None or _MESSAGE_RANGE.search(text) is not None


@dataclass(frozen=True, slots=True)
class BuiltinRegion:
    base_url: str
    windows: WindowTable


BUILTIN_REGIONS: Mapping[str, BuiltinRegion] = MappingProxyType(
    {
        "us": BuiltinRegion(
            "https://api.clover.com",
            WindowTable.parse(["every day 10:00-15:00"], "regions.us.windows"),
        ),
        "eu": BuiltinRegion(
            "https://api.eu.clover.com",
            WindowTable.parse(
                ["Mon-Fri 01:00-05:00", "Sat 02:00-05:00", "Sun 02:00-06:00"],
                "regions.eu.windows",
            ),
        ),
        # Clover documents no window for la: like us until observed otherwise.
        "la": BuiltinRegion(
            "https://api.la.clover.com",
            WindowTable.parse(["every day 10:00-15:00"], "regions.la.windows"),
        ),
        "sandbox": BuiltinRegion("https://apisandbox.dev.clover.com", WindowTable.always()),
    }
)

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from harvester.errors import ConfigError
from harvester.pacing.windows import (
    BUILTIN_REGIONS,
    WindowRule,
    WindowTable,
    hours_from_message,
    is_window_message,
)

# 2025-01-06 is a Monday; the tables below name days through these dates.
DAY = {"Mon": 6, "Tue": 7, "Wed": 8, "Thu": 9, "Fri": 10, "Sat": 11, "Sun": 12}

US = BUILTIN_REGIONS["us"].windows
EU = BUILTIN_REGIONS["eu"].windows


def at(day: str, clock: str, week: int = 0) -> datetime:
    """An instant in the week of 2025-01-06 (or `week` weeks later), e.g. at("Sun", "23:59:59")."""
    hour, minute, second = [*(int(part) for part in clock.split(":")), 0][:3]
    return datetime(2025, 1, DAY[day] + 7 * week, hour, minute, second, tzinfo=UTC)


def table(*rules: str) -> WindowTable:
    return WindowTable.parse(list(rules), "test.windows")


@pytest.mark.parametrize(
    ("spec", "described"),
    [
        ("always", "always"),
        (" Always ", "always"),
        (["every day 10:00-15:00"], "every day 10:00-15:00"),
        (["daily 10:00-15:00"], "every day 10:00-15:00"),
        (["Mon-Sun 10:00-15:00"], "every day 10:00-15:00"),
        (["Mon-Fri 01:00-05:00", "Sat 02:00-05:00"], "Mon-Fri 01:00-05:00, Sat 02:00-05:00"),
        (["Sat,Sun 02:00-06:00"], "Sat-Sun 02:00-06:00"),
        (["sat, SUN 02:00 - 06:00"], "Sat-Sun 02:00-06:00"),
        (["Mon 22:00-24:00"], "Mon 22:00-24:00"),
        (["Fri-Mon 08:00-09:30"], "Fri-Mon 08:00-09:30"),
        (["Mon,Wed,Thu 0:00-1:00"], "Mon,Wed-Thu 00:00-01:00"),
        (["Sun,Tue 07:15-07:45"], "Tue,Sun 07:15-07:45"),
        (["Monday-Friday 01:00-05:00"], "Mon-Fri 01:00-05:00"),
    ],
)
def test_parse_and_describe(spec: object, described: str) -> None:
    """Every accepted spelling reads into rules that describe themselves in canonical form."""
    parsed = WindowTable.parse(spec, "regions.x.windows")
    assert parsed.describe() == described
    if parsed.rules:
        assert WindowTable.parse(described.split(", "), "again") == parsed


def test_parse_reads_days_and_minutes() -> None:
    """A rule holds its weekday numbers (Monday = 0) and minutes after midnight UTC."""
    assert table("Fri-Mon 01:30-24:00").rules == (
        WindowRule(days=frozenset({4, 5, 6, 0}), start_min=90, end_min=1440),
    )


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("sometimes", "regions.eu.windows: expected 'always' or a list of windows"),
        ([], "regions.eu.windows: expected 'always' or a list of windows"),
        (None, "regions.eu.windows: expected 'always' or a list of windows"),
        (
            ["Mon-Fri 01:00-05:00", "Sat 2-5"],
            "regions.eu.windows[1]: cannot read 'Sat 2-5'; expected like 'Mon-Fri 01:00-05:00'",
        ),
        (["Sat 02:00-05:00", 5], "regions.eu.windows[1]: cannot read 5;"),
        (["10:00-15:00"], "regions.eu.windows[0]: cannot read '10:00-15:00';"),
        (["Funday 10:00-15:00"], "regions.eu.windows[0]: cannot read 'Funday 10:00-15:00';"),
        (["Mon-Xyz 10:00-15:00"], "regions.eu.windows[0]: cannot read"),
        (["Mon 10:60-15:00"], "regions.eu.windows[0]: cannot read"),
        (["Mon 10:00-25:00"], "regions.eu.windows[0]: cannot read"),
        (["Mon 10:00-24:30"], "regions.eu.windows[0]: cannot read"),
        (["Mon 24:00-24:00"], "regions.eu.windows[0]: cannot read"),
        (["Mon 10:00-15:00 UTC"], "regions.eu.windows[0]: cannot read"),
        (["Mon 22:00-02:00"], "regions.eu.windows[0]: 'Mon 22:00-02:00' ends before it starts"),
        (["Mon 10:00-10:00"], "regions.eu.windows[0]: 'Mon 10:00-10:00' ends before it starts"),
    ],
)
def test_parse_refuses_with_the_culprit(spec: object, message: str) -> None:
    """Unreadable windows are a ConfigError naming the YAML path and the bad item."""
    with pytest.raises(ConfigError) as caught:
        WindowTable.parse(spec, "regions.eu.windows")
    assert str(caught.value).startswith(message)


@pytest.mark.parametrize(
    ("days", "start_min", "end_min"),
    [
        (frozenset(), 0, 60),
        (frozenset({7}), 0, 60),
        (frozenset({0}), 60, 60),
        (frozenset({0}), -1, 60),
        (frozenset({0}), 0, 1441),
    ],
)
def test_window_rule_refuses_impossible_rules(
    days: frozenset[int], start_min: int, end_min: int
) -> None:
    """A rule needs some weekday 0..6 and a non-empty span within the day."""
    with pytest.raises(ValueError, match="window"):
        WindowRule(days=days, start_min=start_min, end_min=end_min)


@pytest.mark.parametrize(
    ("windows", "now", "expected"),
    [
        (US, at("Mon", "09:59:59"), False),
        (US, at("Mon", "10:00"), True),
        (US, at("Sun", "14:59:59"), True),
        (US, at("Sun", "15:00"), False),
        (US, at("Sat", "00:00"), False),
        (EU, at("Mon", "00:59:59"), False),
        (EU, at("Mon", "01:00"), True),
        (EU, at("Fri", "04:59:59"), True),
        (EU, at("Fri", "05:00"), False),
        (EU, at("Sat", "01:00"), False),
        (EU, at("Sat", "02:00"), True),
        (EU, at("Sat", "05:00"), False),
        (EU, at("Sun", "05:30"), True),
        (EU, at("Sun", "06:00"), False),
        (EU, at("Sun", "23:59:59"), False),
        (WindowTable.always(), at("Wed", "03:17"), True),
        (BUILTIN_REGIONS["sandbox"].windows, at("Sun", "23:59:59"), True),
    ],
)
def test_is_open(windows: WindowTable, now: datetime, expected: bool) -> None:
    """A window is open from its start inclusive to its end exclusive, on its own days only."""
    assert windows.is_open(now) is expected


def test_is_open_reads_any_offset_as_utc() -> None:
    """An instant with another offset is judged by its UTC time."""
    tokyo = datetime.fromisoformat("2025-01-06T19:30:00+09:00")  # Monday 10:30 UTC
    assert US.is_open(tokyo)


NIGHT_SHIFT = table("Mon 22:00-24:00", "Tue 00:00-02:00")
WEEKEND_WRAP = table("Sun 22:00-24:00", "Mon 00:00-01:00")
OVERLAPPING = table("Wed 01:00-05:00", "Wed 04:00-06:00")
ALL_WEEK = table("every day 00:00-24:00")


@pytest.mark.parametrize(
    ("windows", "now", "expected"),
    [
        (US, at("Mon", "10:00"), at("Mon", "15:00")),
        (US, at("Mon", "14:59:59"), at("Mon", "15:00")),
        (US, at("Mon", "15:00"), None),
        (US, at("Mon", "09:00"), None),
        (EU, at("Sun", "02:00"), at("Sun", "06:00")),
        (EU, at("Sat", "04:00"), at("Sat", "05:00")),
        (NIGHT_SHIFT, at("Mon", "23:00"), at("Tue", "02:00")),
        (NIGHT_SHIFT, at("Tue", "01:00"), at("Tue", "02:00")),
        (WEEKEND_WRAP, at("Sun", "22:30"), at("Mon", "01:00", week=1)),
        (OVERLAPPING, at("Wed", "02:00"), at("Wed", "06:00")),
        (OVERLAPPING, at("Wed", "04:30"), at("Wed", "06:00")),
        (ALL_WEEK, at("Thu", "12:00"), None),
        (WindowTable.always(), at("Thu", "12:00"), None),
    ],
)
def test_current_close(windows: WindowTable, now: datetime, expected: datetime | None) -> None:
    """The open period ends at the last back-to-back rule's close; closed or always gives None."""
    assert windows.current_close(now) == expected


@pytest.mark.parametrize(
    ("windows", "now", "expected"),
    [
        (US, at("Mon", "10:30"), at("Mon", "10:30")),
        (US, at("Mon", "09:00"), at("Mon", "10:00")),
        (US, at("Mon", "15:00"), at("Tue", "10:00")),
        (US, at("Sun", "20:00"), at("Mon", "10:00", week=1)),
        (EU, at("Fri", "05:00"), at("Sat", "02:00")),
        (EU, at("Sat", "05:00"), at("Sun", "02:00")),
        (EU, at("Sun", "06:00"), at("Mon", "01:00", week=1)),
        (EU, at("Mon", "00:00"), at("Mon", "01:00")),
        (table("Wed 03:00-04:00"), at("Wed", "04:00"), at("Wed", "03:00", week=1)),
        (WindowTable.always(), at("Sat", "08:00"), at("Sat", "08:00")),
    ],
)
def test_next_open(windows: WindowTable, now: datetime, expected: datetime) -> None:
    """next_open is now when open, else the next opening, up to a week ahead."""
    assert windows.next_open(now) == expected


def test_next_open_without_rules_is_an_error() -> None:
    """A table with no rules that is not always open never opens."""
    never = WindowTable(rules=())
    assert not never.is_open(at("Mon", "12:00"))
    with pytest.raises(ValueError, match="never opens"):
        never.next_open(at("Mon", "12:00"))


@pytest.mark.parametrize(
    ("body", "described"),
    [
        (
            '{"message": "The export API is only available between 10:00 and 15:00 UTC"}',
            "every day 10:00-15:00",
        ),
        ("Exports are available 10:00-15:00 UTC", "every day 10:00-15:00"),
        ("available hours: 10:00 - 15:00", "every day 10:00-15:00"),
        ("hours 08:00 to 12:00", "every day 08:00-12:00"),
        ("hours 08:00 \u2013 12:00", "every day 08:00-12:00"),
        ("open from 10:00 AM to 3:00 PM", "every day 10:00-15:00"),
        ("open 10 a.m. until 3 p.m.", "every day 10:00-15:00"),
        ("12 AM - 12 PM", "every day 00:00-12:00"),
        ("10:00:00-15:00:00", "every day 10:00-15:00"),
        ("18:00-24:00", "every day 18:00-24:00"),
        ("18:00-00:00", "every day 18:00-24:00"),
        ("22:00-02:00", "every day 22:00-24:00, every day 00:00-02:00"),
        ("08:00-12:00 and 13:00-15:00", "every day 08:00-12:00, every day 13:00-15:00"),
        ("10:00-15:00, again 10:00-15:00", "every day 10:00-15:00"),
    ],
)
def test_hours_from_message(body: str, described: str) -> None:
    """Time ranges in a 503 body become an every-day UTC table, whatever the wording."""
    found = hours_from_message(body)
    assert found is not None
    assert found.describe() == described


@pytest.mark.parametrize(
    "body",
    [
        "",
        "Service Unavailable",
        '{"message": "Too many concurrent exports, please retry later"}',
        "outside the export window",
        "Request 12-34 failed at 2025-01-05T10:00:00Z",
        "retry in 10-15 minutes",
        "25:00-26:00",
        "10:61-11:00",
        "13 PM to 14 PM",
        "10:00-10:00",
    ],
)
def test_hours_from_message_finds_nothing(body: str) -> None:
    """Without a readable time range (dates, counts, impossible times) there are no hours."""
    assert hours_from_message(body) is None


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ('{"message": "The export API is only available between 10:00 and 15:00 UTC"}', True),
        ("Outside of export hours", True),
        ("AVAILABILITY WINDOW CLOSED", True),
        ("export window closed", True),
        ("please come back 10:00-15:00", True),
        ("", False),
        ("Service Unavailable", False),
        ('{"message": "Too many concurrent exports, please retry later"}', False),
        ("Server busy", False),
        ("Request 12-34 failed", False),
    ],
)
def test_is_window_message(body: str, expected: bool) -> None:
    """A 503 speaking of hours, availability or a time range means closed; anything else busy."""
    assert is_window_message(body) is expected


def test_builtin_regions_follow_the_documented_table() -> None:
    """The built-in hosts and windows are the ones Clover documents (la like us)."""
    assert {name: region.base_url for name, region in BUILTIN_REGIONS.items()} == {
        "us": "https://api.clover.com",
        "eu": "https://api.eu.clover.com",
        "la": "https://api.la.clover.com",
        "sandbox": "https://apisandbox.dev.clover.com",
    }
    assert US.describe() == "every day 10:00-15:00"
    assert BUILTIN_REGIONS["la"].windows == US
    assert EU.describe() == "Mon-Fri 01:00-05:00, Sat 02:00-05:00, Sun 02:00-06:00"
    assert BUILTIN_REGIONS["sandbox"].windows == WindowTable.always()

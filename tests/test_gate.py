"""The export gate's decisions: what a 503 means, how long to wait, and one probe at a time."""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime, timedelta

import pytest

from harvester.errors import ServerBusy, Unavailable503, WindowClosed
from harvester.pacing.gate import MIN_MARGIN_S, HostGate, classify_503, p90, window_wait_s
from harvester.pacing.windows import WindowTable
from tests.fakeclock import FakeClock

TUESDAY_NOON = datetime(2025, 7, 1, 12, 0, tzinfo=UTC)
TEN_TO_THREE = WindowTable.parse(["every day 10:00-15:00"], "test")
ONE_TO_TWO = WindowTable.parse(["every day 13:00-14:00"], "test")
ALWAYS = WindowTable.always()
HOURS_BODY = '{"message": "The export API is only available between 13:00 and 15:00 UTC"}'


def gate_for(
    table: WindowTable, clock: FakeClock, backoff_max_s: float, margin_s: float | None
) -> HostGate:
    return HostGate("h", table, clock, 1.0, backoff_max_s, margin_s, random.Random(7))


def hour(h: int, minute: int = 0, days: int = 0) -> datetime:
    return TUESDAY_NOON.replace(hour=h, minute=minute) + timedelta(days=days)


@pytest.mark.parametrize(
    ("body", "table", "reopens_at"),
    [
        pytest.param(HOURS_BODY, ALWAYS, hour(13), id="hours-in-body-beat-the-table"),
        pytest.param(HOURS_BODY, TEN_TO_THREE, hour(13), id="hours-in-body-beat-open-table"),
        pytest.param(
            '{"message": "between 10:00 and 15:00"}', ALWAYS, None, id="body-hours-say-open"
        ),
        pytest.param("Outside of export hours", ONE_TO_TWO, hour(13), id="words-then-table"),
        pytest.param("export window closed", ALWAYS, None, id="words-table-always-open"),
        pytest.param("  \n", ONE_TO_TWO, hour(13), id="blank-body-closed-table"),
        pytest.param("Too many concurrent exports", ONE_TO_TWO, hour(13), id="busy-words-shut"),
    ],
)
def test_a_closed_503_says_when_to_come_back(
    body: str, table: WindowTable, reopens_at: datetime | None
) -> None:
    """A 503 that speaks of hours, or any 503 while the table is shut, means closed; it
    reopens at the body's hours, else the table's, else unknown (None: probe)."""
    verdict = classify_503(body, table, TUESDAY_NOON)
    assert isinstance(verdict, WindowClosed)
    assert verdict.reopens_at == reopens_at


@pytest.mark.parametrize(
    "body",
    [
        '{"message": "Too many concurrent exports, please retry later"}',
        "Service Unavailable",
        "Server busy",
        "Request 12-34 failed",
        "",
    ],
)
@pytest.mark.parametrize("table", [ALWAYS, TEN_TO_THREE], ids=["always", "10-15"])
def test_a_503_that_speaks_of_no_hours_in_an_open_window_means_busy(
    body: str, table: WindowTable
) -> None:
    """While the table says open, a 503 whose body says nothing of hours (or nothing) is busy."""
    verdict = classify_503(body, table, TUESDAY_NOON)
    assert isinstance(verdict, ServerBusy)
    assert not isinstance(verdict, WindowClosed)


def test_the_verdict_quotes_the_body_briefly() -> None:
    """The error quotes at most 200 characters of the body, and names an empty one."""
    assert "(empty body)" in str(classify_503("", ALWAYS, TUESDAY_NOON))
    assert len(str(classify_503("busy " * 100, ALWAYS, TUESDAY_NOON))) < 250


@pytest.mark.parametrize(
    ("now", "table", "closed_until", "margin_s", "expected_s"),
    [
        pytest.param(hour(12), TEN_TO_THREE, None, 300, 0, id="open"),
        pytest.param(hour(9), TEN_TO_THREE, None, 300, 3600, id="before-opening"),
        pytest.param(hour(16), TEN_TO_THREE, None, 300, 18 * 3600, id="after-close"),
        pytest.param(hour(14, 54), TEN_TO_THREE, None, 300, 0, id="6min-left-5min-margin"),
        pytest.param(hour(14, 56), TEN_TO_THREE, None, 300, 19 * 3600 + 4 * 60, id="4min-left"),
        pytest.param(hour(14), TEN_TO_THREE, None, 3601, 20 * 3600, id="1h-left-1h+1s-margin"),
        pytest.param(hour(12), TEN_TO_THREE, hour(12, 5), 300, 300, id="host-said-closed"),
        pytest.param(hour(12), TEN_TO_THREE, hour(11), 300, 0, id="host-said-closed-earlier"),
        pytest.param(hour(12), ALWAYS, None, 10**6, 0, id="always-has-no-close"),
    ],
)
def test_window_wait(
    now: datetime,
    table: WindowTable,
    closed_until: datetime | None,
    margin_s: float,
    expected_s: float,
) -> None:
    """How long before an export may start: the host's word, the table, and the margin."""
    assert window_wait_s(now, table, closed_until, margin_s) == expected_s


def test_p90_of_durations() -> None:
    """The margin's p90 is the smallest duration at or above 90% of those observed."""
    assert p90([]) is None
    assert p90([5.0]) == 5.0
    assert p90([float(n) for n in range(1, 11)]) == 9.0
    assert p90([float(n) for n in range(1, 101)]) == 90.0


def test_the_gate_judges_a_503_by_its_table_at_the_clocks_now() -> None:
    """HostGate.classify_503 reads an Unavailable503's body against its own table, now."""
    clock = FakeClock(hour(12))
    gate = gate_for(ONE_TO_TWO, clock, 30.0, None)
    error = Unavailable503("create export: Clover answered 503", "Too many concurrent exports")
    closed = gate.classify_503(error)
    assert isinstance(closed, WindowClosed)
    assert closed.reopens_at == hour(13)
    clock.advance(3600 + 60)  # 13:01, inside the window
    assert type(gate.classify_503(error)) is ServerBusy


def test_the_default_margin_follows_observed_durations(clock: FakeClock) -> None:
    """Without a configured margin: 300 s until exports were seen, then their p90 if longer."""
    gate = gate_for(TEN_TO_THREE, clock, backoff_max_s=60, margin_s=None)
    assert gate.margin_s == MIN_MARGIN_S
    gate.observe_duration(100)
    assert gate.margin_s == MIN_MARGIN_S
    for seconds in (1000, 1200, 900):
        gate.observe_duration(seconds)
    assert gate.margin_s == 1200
    configured = gate_for(TEN_TO_THREE, clock, backoff_max_s=60, margin_s=30)
    configured.observe_duration(5000)
    assert configured.margin_s == 30


async def test_after_a_closed_answer_one_probe_goes_and_the_others_wait(
    clock: FakeClock,
) -> None:
    """Once the host said closed with no reopening, only one caller at a time is let through,
    one probe interval later; when it finds the host open, everyone goes."""
    gate = gate_for(ALWAYS, clock, backoff_max_s=300, margin_s=None)
    stop = asyncio.Event()
    admitted: list[tuple[int, float]] = []
    outcomes = iter(["closed", "closed", "open"])

    async def caller(number: int) -> None:
        while True:
            async with gate.admission(stop) as go:
                assert go
                admitted.append((number, clock.monotonic()))
                # The POST happens here; its answer is reported before leaving.
                await clock.sleep(1)
                outcome = next(outcomes, "open")
                if outcome == "open":
                    gate.created()
                    return
                gate.closed(WindowClosed("closed", reopens_at=None))

    gate.closed(WindowClosed("closed", reopens_at=None))
    await asyncio.gather(*(caller(n) for n in range(5)))

    times = [at for _, at in admitted]
    # Probes at 300 and 601 (each 300 s after the last answer), then everyone at 902.
    assert times[:3] == [300.0, 601.0, 902.0]
    assert sorted(times[3:]) == [903.0] * 4
    assert sorted(number for number, _ in admitted[2:]) == list(range(5))


async def test_a_stop_releases_everyone_waiting_at_the_gate(clock: FakeClock) -> None:
    """Callers waiting for a window hours away come out (not admitted) as soon as stop is set."""
    gate = gate_for(ONE_TO_TWO, clock, backoff_max_s=300, margin_s=None)
    stop = asyncio.Event()
    answers: list[bool] = []

    async def caller() -> None:
        async with gate.admission(stop) as go:
            answers.append(go)

    waiting = [asyncio.create_task(caller()) for _ in range(3)]
    await clock.sleep(120)
    stop.set()
    await asyncio.gather(*waiting)
    assert answers == [False, False, False]
    assert clock.now() < hour(13)


async def test_a_busy_answer_holds_every_caller_back_for_a_growing_jittered_backoff(
    clock: FakeClock,
) -> None:
    """After busy answers in a row (each to a POST sent after the backoff before it), no
    caller is admitted before the backoff has passed; the backoffs are full-jitter draws under
    a doubling cap, and a created export resets them."""
    gate = gate_for(ALWAYS, clock, backoff_max_s=300, margin_s=None)
    stop = asyncio.Event()
    pauses = [gate.busy()]
    for _ in range(9):
        clock.advance(pauses[-1] + 0.001)  # the retry goes once the backoff has passed
        pauses.append(gate.busy())
    caps = [min(300.0, 2.0**n) for n in range(10)]
    assert all(0 <= p <= cap for p, cap in zip(pauses, caps, strict=True))
    assert max(pauses[6:]) > 8, "later backoffs should reach well beyond the first caps"
    holds_until = gate.wait_s(clock.now())
    assert holds_until > 0
    async with gate.admission(stop) as go:
        assert go
        assert clock.monotonic() >= holds_until
    gate.created()
    assert gate.wait_s(clock.now()) == 0
    assert gate.busy() <= 1.0, "the streak starts over after a created export"


def test_answers_to_posts_sent_before_a_backoff_neither_grow_nor_lengthen_it(
    clock: FakeClock,
) -> None:
    """Six POSTs go at once and four come back busy: the first answer's backoff holds, the
    three others (sent before it began) return what is left of it, and the next answer after
    it is the second in a row, not the fifth."""
    gate = gate_for(ALWAYS, clock, backoff_max_s=300, margin_s=None)
    first = gate.busy()
    holds_until = clock.now() + timedelta(seconds=first)
    for _ in range(3):
        clock.advance(first / 4)
        assert gate.busy() == pytest.approx((holds_until - clock.now()).total_seconds())
        assert gate.wait_s(clock.now()) == pytest.approx(
            (holds_until - clock.now()).total_seconds()
        )
    clock.advance(first)  # the backoff is over; a retry is refused again
    second = gate.busy()
    assert 0 <= second <= 2.0, "the second in a row: a cap of 2 s, not 8 s"


@pytest.mark.parametrize(
    ("now", "margin_s", "expected_s"),
    [
        pytest.param(hour(10), 6 * 3600, 0.0, id="margin-longer-than-window-start-at-opening"),
        pytest.param(hour(12, 29), 6 * 3600, 0.0, id="first-half-of-the-window"),
        pytest.param(hour(12, 31), 6 * 3600, 21.5 * 3600 - 60, id="second-half-waits"),
        pytest.param(hour(12, 31), 3600, 0.0, id="an-ordinary-margin-is-untouched"),
    ],
)
def test_a_margin_longer_than_the_window_is_capped_at_half_of_it(
    now: datetime, margin_s: float, expected_s: float
) -> None:
    """Exports longer than a whole window (a p90 of hours) still start in its first half,
    instead of the harvest waiting for a window that never comes."""
    assert window_wait_s(now, TEN_TO_THREE, None, margin_s) == pytest.approx(expected_s)

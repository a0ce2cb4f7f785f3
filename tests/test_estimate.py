"""The backfill estimate: exports, slot-hours from observed durations, days of windows."""

from __future__ import annotations

import asyncio
import json
import re
from datetime import timedelta
from pathlib import Path

import pytest

from harvester import commands
from harvester.cli import main
from harvester.clover.chunks import TimeRange
from harvester.config import Region
from harvester.errors import StoreError
from harvester.harvest.estimate import (
    DEFAULT_EXPORT_S,
    estimate,
    open_hours_per_week,
    percentile,
    render_estimate,
)
from harvester.harvest.planning import select
from harvester.pacing.windows import WindowTable
from harvester.state.sqlite import read_export_durations
from tests.conftest import DATA_START
from tests.fakeclock import FakeClock
from tests.harness import metronome, simulated
from tests.test_cli import GOOD, write


def region(name: str, windows: object, slots: int = 3) -> Region:
    return Region(name, "https://example.invalid", WindowTable.parse(windows, name), slots)


@pytest.mark.parametrize(
    ("windows", "hours"),
    [
        ("always", 168.0),
        (["every day 10:00-15:00"], 35.0),
        (["Mon-Fri 01:00-05:00", "Sat 02:00-05:00", "Sun 02:00-06:00"], 27.0),
        (["every day 10:00-15:00", "Mon 12:00-16:00"], 36.0),  # overlap counted once
        (["every day 10:00-15:00", "Mon 11:00-12:00"], 35.0),  # inside another: nothing more
        (["Mon 22:00-24:00", "Tue 00:00-02:00"], 4.0),
    ],
)
def test_open_hours_per_week(windows: object, hours: float) -> None:
    """A week's open hours sum the rules' periods, overlaps once."""
    assert open_hours_per_week(WindowTable.parse(windows, "t")) == pytest.approx(hours)


@pytest.mark.parametrize(
    ("values", "fraction", "expected"),
    [([5.0], 0.5, 5.0), ([1.0, 2.0, 3.0, 4.0], 0.5, 2.0), ([*range(1, 11)], 0.9, 9)],
)
def test_percentile_is_nearest_rank(values: list[float], fraction: float, expected: float) -> None:
    """Percentiles take the nearest rank, never interpolate."""
    assert percentile(values, fraction) == expected


@pytest.mark.parametrize(
    ("exports", "windows", "slots", "durations", "days_p50", "days_p90"),
    [
        # 90 exports x 10 min = 15 slot-hours; 3 slots x 5 h a day = 15: one day.
        (90, ["every day 10:00-15:00"], 3, [600.0] * 10, 1.0, 1.0),
        # 1 slot, always open: 24 slot-hours a day.
        (48, "always", 1, [1800.0], 1.0, 1.0),
        # p50 of 10 and p90 of 30 minutes.
        (30, ["every day 10:00-15:00"], 2, [600.0] * 5 + [1800.0] * 5, 0.5, 1.5),
        # No durations: the default.
        (10, "always", 1, [], 10 * DEFAULT_EXPORT_S / 86400, 10 * DEFAULT_EXPORT_S / 86400),
    ],
)
def test_days_of_windows_at_the_slot_limit(
    exports: int,
    windows: object,
    slots: int,
    durations: list[float],
    days_p50: float,
    days_p90: float,
) -> None:
    """Days = exports x duration / (slots x open hours a day)."""
    found = estimate({"us": exports}, {"us": region("us", windows, slots)}, durations)
    (us,) = found.regions
    assert us.days_p50 == pytest.approx(days_p50)
    assert us.days_p90 == pytest.approx(days_p90)
    assert found.exports == exports
    assert found.durations_seen == len(durations)


def test_long_and_impossible_backfills_read_plainly() -> None:
    """Ten days or more round to whole days, under a day reads in hours, a table that never
    opens says so."""
    never = Region("x", "https://example.invalid", WindowTable(rules=()), 3)
    regions = {"us": region("us", ["every day 10:00-15:00"]), "x": never}
    lines = render_estimate(estimate({"us": 1300, "x": 1}, regions, [600.0]))
    assert any("us: 1300 exports, about 14 days" in line for line in lines)
    assert any("x: 1 exports, never (the window never opens)" in line for line in lines)
    short = render_estimate(estimate({"us": 3, "x": 0}, regions, [30.0]))
    assert "one export takes 30 s (p50)" in short[0]
    assert any("us: 3 exports, under a minute" in line for line in short)  # 90 s over 3 slots
    hours = render_estimate(estimate({"us": 60}, regions, [90.0, 600.0]))
    assert any("about 30 minutes (about 3.3 hours at p90)" in line for line in hours)
    day = render_estimate(estimate({"us": 60}, regions, [450.0]))
    assert any("about 2.5 hours" in line for line in day)  # 7.5 slot-hours over 3 slots


def test_rendering_states_the_basis_and_each_window() -> None:
    """The lines say where durations came from and name each region's window and slots."""
    regions = {"us": region("us", ["every day 10:00-15:00"]), "eu": region("eu", "always", 2)}
    guessed = render_estimate(estimate({"us": 540, "eu": 10}, regions, []))
    assert "a default" in guessed[0]
    assert any(
        "about 9.0 days" in line  # 540 x 15 min (the default) / (3 slots x 5 h)
        and "us window (every day 10:00-15:00 UTC" in line
        and "at 3 slots" in line
        for line in guessed
    )
    seen = render_estimate(estimate({"us": 540}, regions, [600.0, 900.0]))
    assert "from 2 exports in the state store" in seen[0]
    assert any("about 6.0 days" in line for line in seen)  # 540 x 10 min / (3 x 5 h)


async def test_estimate_predicts_a_simulated_run(tmp_path: Path, clock: FakeClock) -> None:
    """After a first run, the estimate from its durations predicts how long the next one takes."""
    # Exports take 1 + 20 s on the simulator, whatever their size; 2 slots, always open.
    async with simulated(tmp_path, clock, export_per_object_s=0.0) as scenario:
        config = scenario.config()
        selections = select(config, [], [])
        # Short naps beside the run keep the FakeClock from leaping while lanes wait on I/O.
        beat = asyncio.create_task(metronome(clock, 3600, step_s=0.25))
        first = TimeRange(DATA_START, DATA_START + timedelta(days=30))
        await commands.backfill(config, selections, first, clock, asyncio.Event())
        durations = read_export_durations(config.state_path)
        assert len(durations) == 6
        # Never under the simulator's 21 s; over it by the polling's lag (and, on a loaded
        # machine, by the fake clock's leaps while a poll waits on loopback I/O).
        assert min(durations) >= 21, durations
        assert percentile(durations, 0.5) <= 27, durations

        second = TimeRange(first.end, first.end + timedelta(days=90))
        planned = commands.plan_backfill(config, selections, second)
        found = commands.plan_estimate(config, planned)
        assert found.exports == len(planned) == 3 * 2 * 3
        started = clock.monotonic()
        summary = await commands.backfill(config, selections, second, clock, asyncio.Event())
        took_s = clock.monotonic() - started
        beat.cancel()
    assert summary.all_done
    assert summary.totals()["exports_created"] == found.exports
    (local,) = found.regions
    assert local.days_p50 is not None
    predicted_s = local.days_p50 * 86400
    assert predicted_s == pytest.approx(took_s, rel=0.25)


def test_plan_prints_the_estimate_and_json_says_the_same(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """plan ends with the estimate; plan --json carries the same numbers and the exports."""
    monkeypatch.setenv("TOKEN_ABC", "secret-token-value")
    config = write(tmp_path, GOOD)
    args = ["plan", "--config", str(config), "--from", "2025-01-01", "--to", "2025-03-15"]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "6 exports" in text
    assert "estimate: 6 exports" in text
    assert "of the local window (always UTC, 24.0 h a day) at 3 slots" in text
    assert main([*args, "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert len(document["exports"]) == 6
    assert document["exports"][0]["merchant"] == "ABC123"
    assert document["estimate"]["exports"] == 6
    assert document["estimate"]["export_seconds_p50"] == DEFAULT_EXPORT_S
    assert document["estimate"]["regions"][0]["region"] == "local"
    assert not (tmp_path / "state").exists()


def test_durations_of_no_store_are_none_and_of_a_damaged_one_an_error(tmp_path: Path) -> None:
    """No state file yet: no durations; a file that is not SQLite: a StoreError naming it."""
    assert read_export_durations(tmp_path / "missing.sqlite3") == []
    damaged = tmp_path / "h.sqlite3"
    damaged.write_bytes(b"not a database, but long enough to look like a header" * 40)
    with pytest.raises(StoreError, match=re.escape(str(damaged))):
        read_export_durations(damaged)

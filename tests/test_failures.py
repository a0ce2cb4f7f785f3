"""Failures end to end: transient errors, failed exports, bad downloads, and refusals."""

from __future__ import annotations

import io
from datetime import timedelta
from pathlib import Path

import pytest

from harvester.clover.chunks import ExportType, TimeRange
from harvester.harvest.scheduler import Harvest
from harvester.simulator import Account, Faults
from harvester.simulator.faults import FaultKind
from harvester.state.records import ExportState
from tests.conftest import DATA_START, FAST_TIMING, Scenario
from tests.fakeclock import FakeClock
from tests.harness import (
    Requests,
    assert_exactly_once,
    harvest,
    log_events,
    recorded_exports,
    simulated,
)

MONTH = TimeRange(DATA_START, DATA_START + timedelta(days=30))
COOLDOWN_S = FAST_TIMING["export_cooldown_s"]
BACKOFF_BASE_S = FAST_TIMING["backoff_base_s"]


def only_payments(scenario: Scenario) -> str:
    """Harvest one type of the scenario's first merchant only; returns its id."""
    merchant_id = next(iter(scenario.tokens))
    scenario.merchant_overrides[merchant_id] = {"types": ["PAYMENTS"]}
    return merchant_id


# -- transient errors ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "timing", "error"),
    [
        pytest.param(FaultKind.API_5XX, {}, "Clover answered 50", id="5xx"),
        pytest.param(FaultKind.API_RESET, {}, "ServerDisconnectedError", id="connection-reset"),
        # A timeout far shorter than any loopback answer: every request times out, for real.
        pytest.param(None, {"request_timeout_s": 1e-6}, "TimeoutError", id="timeout"),
    ],
)
async def test_transient_errors_fail_the_chunk_after_max_attempts_and_the_next_run_retries(
    tmp_path: Path,
    clock: FakeClock,
    log_buffer: io.StringIO,
    fault: FaultKind | None,
    timing: dict[str, float],
    error: str,
) -> None:
    """An operation that keeps failing transiently is tried `max_attempts` times with capped
    full-jitter backoff, then its chunk fails for the run (exit 1, named in the summary);
    the next run retries it and succeeds."""
    faults = Faults()
    if fault is not None:
        faults.set_probability(fault, 1.0)
    async with simulated(tmp_path, clock, merchants=2, faults=faults) as scenario:
        broken = {
            **FAST_TIMING,
            "max_attempts": 4,
            "backoff_base_s": 2,
            "backoff_max_s": 5,
            **timing,
        }
        scenario.top["timing"] = broken
        first = await harvest(scenario, clock, MONTH)

        assert first.summary.exit_code == 1
        tallies = first.summary.tallies.values()
        assert sum(t.chunks_failed for t in tallies) == 4
        assert all(error in t.errors[0] for t in tallies), first.summary.render()
        assert error in first.summary.render()
        # Four attempts per chunk, and no more.
        assert len(first.requests.of("create")) == 4 * 4
        # A create that got a 5xx, a reset or a timeout may have made the export: each one
        # counts as lost (an orphan), and is retried all the same.
        retries = log_events(log_buffer, "export.create_lost")
        assert log_events(log_buffer, "export.create_retry") == []
        assert len(retries) == 4 * 3
        assert first.summary.orphans == 4 * 4
        for line in retries:
            ceiling = min(5, 2 * 2 ** (line["attempt"] - 1))
            assert 0 <= line["wait_s"] <= ceiling
        assert len({line["wait_s"] for line in retries}) > 6, "full jitter, not a fixed ladder"

        faults.set_probability(FaultKind.API_5XX, 0.0)
        faults.set_probability(FaultKind.API_RESET, 0.0)
        scenario.top["timing"] = FAST_TIMING
        second = await harvest(scenario, clock, MONTH)
        assert second.summary.exit_code == 0, second.summary.render()
        assert_exactly_once(scenario, MONTH)


async def test_polls_that_keep_failing_fail_the_chunk_and_the_next_run_reattaches(
    tmp_path: Path, clock: FakeClock, log_buffer: io.StringIO
) -> None:
    """Once the export is created, 5xx on every poll: after `max_attempts` the chunk fails for
    the run; the next run follows the same export (no second POST) and saves its files."""
    faults = Faults()
    async with simulated(tmp_path, clock, merchants=1, faults=faults) as scenario:
        only_payments(scenario)
        scenario.top["timing"] = {**FAST_TIMING, "max_attempts": 3}
        requests = Requests(clock)

        async def break_polls_once_created(runner: Harvest) -> None:
            while not requests.of("create", status=200):
                await clock.sleep(0.1)
            faults.set_probability(FaultKind.API_5XX, 1.0)

        first = await harvest(
            scenario, clock, MONTH, requests=requests, beside=break_polls_once_created
        )
        assert first.summary.exit_code == 1
        assert len(first.requests.of("poll")) == 3
        assert len(log_events(log_buffer, "request.retry")) == 2

        faults.set_probability(FaultKind.API_5XX, 0.0)
        second = await harvest(scenario, clock, MONTH)
        assert second.summary.exit_code == 0, second.summary.render()
        assert second.requests.of("create") == []
        assert scenario.sim.stats.exports_created == 1
        assert_exactly_once(scenario, MONTH)


async def test_a_flaky_api_and_file_host_still_deliver_everything(
    tmp_path: Path, clock: FakeClock
) -> None:
    """With one request in five failing at random, retries carry every chunk through."""
    faults = Faults(api_5xx=0.1, api_reset=0.1, file_5xx=0.1, file_reset=0.1)
    async with simulated(tmp_path, clock, merchants=2, faults=faults) as scenario:
        run = await harvest(scenario, clock)

        assert run.summary.exit_code == 0, run.summary.render()
        assert_exactly_once(scenario)
        assert sum(scenario.sim.stats.faults_injected.values()) > 10


# -- the export lifecycle ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fate", "ended", "error"),
    [
        pytest.param(FaultKind.EXPORT_FAILED, ExportState.FAILED, "status FAILED", id="FAILED"),
        pytest.param(FaultKind.EXPORT_STUCK, ExportState.FAILED, "no progress", id="stuck"),
        pytest.param(FaultKind.EXPORT_FORGOTTEN, ExportState.LOST, "404", id="forgotten"),
    ],
)
async def test_a_failed_export_is_created_again_after_a_short_backoff(
    tmp_path: Path,
    clock: FakeClock,
    log_buffer: io.StringIO,
    fate: FaultKind,
    ended: ExportState,
    error: str,
) -> None:
    """An export that ends badly (unknown status, no progress for export_timeout_s,
    forgotten) is recorded as failed and created again after a jittered backoff from
    backoff_base_s (its first step: at most the base), not a fixed cool-down."""
    faults = Faults()
    faults.script(fate)
    async with simulated(
        tmp_path, clock, merchants=1, faults=faults, stuck_fail_after_s=86400
    ) as scenario:
        only_payments(scenario)
        scenario.top["timing"] = {**FAST_TIMING, "export_timeout_s": 120}
        run = await harvest(scenario, clock, MONTH)

        assert run.summary.exit_code == 0, run.summary.render()
        assert_exactly_once(scenario, MONTH)
        failed, done = recorded_exports(scenario)
        assert (failed.state, done.state) == (ended, ExportState.DONE)
        (line,) = log_events(log_buffer, "export.failed")
        assert 0 <= line["wait_s"] <= min(BACKOFF_BASE_S, COOLDOWN_S)
        assert done.created_at - failed.updated_at >= timedelta(seconds=line["wait_s"] - 0.001)
        assert error in line["error"]
        assert line["export_id"] == failed.id
        if fate is FaultKind.EXPORT_STUCK:
            # Given up export_timeout_s after progress stopped, long before Clover would fail it.
            lasted = failed.updated_at - failed.created_at
            assert timedelta(seconds=120) < lasted < timedelta(seconds=20 + 6 + 1 + 120 + 20)


async def test_a_chunk_whose_exports_keep_failing_fails_for_the_run_then_succeeds(
    tmp_path: Path, clock: FakeClock
) -> None:
    """After `max_export_attempts` failed exports the chunk fails for this run (exit 1, the
    summary says why); the next run creates it afresh and finishes."""
    faults = Faults()
    faults.script(FaultKind.EXPORT_FAILED, times=3)
    async with simulated(tmp_path, clock, merchants=1, faults=faults) as scenario:
        merchant_id = only_payments(scenario)
        first = await harvest(scenario, clock, MONTH)

        assert first.summary.exit_code == 1
        tally = first.summary.tally(merchant_id, ExportType.PAYMENTS)
        assert (tally.chunks_failed, tally.exports_created) == (1, 3)
        assert "3 exports failed, the last: " in tally.errors[0]
        assert "status FAILED" in first.summary.render()

        second = await harvest(scenario, clock, MONTH)
        assert second.summary.exit_code == 0, second.summary.render()
        assert scenario.sim.stats.exports_created == 4
        assert_exactly_once(scenario, MONTH)


# -- downloads -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fault",
    [
        FaultKind.FILE_TRUNCATED,
        FaultKind.FILE_BAD_JSON,
        FaultKind.FILE_OVERSIZE,
        FaultKind.FILE_5XX,
        FaultKind.FILE_RESET,
    ],
)
async def test_a_bad_download_is_fetched_again_from_the_same_export(
    tmp_path: Path, clock: FakeClock, log_buffer: io.StringIO, fault: FaultKind
) -> None:
    """A truncated body, invalid JSON, over 1000 objects or a 5xx: the file is downloaded
    again; the export is not re-created."""
    faults = Faults()
    faults.script(fault, times=2)
    # One file per export, so both faults strike the same file.
    async with simulated(
        tmp_path, clock, merchants=1, faults=faults, objects_per_file=1000
    ) as scenario:
        only_payments(scenario)
        run = await harvest(scenario, clock, MONTH)

        assert run.summary.exit_code == 0, run.summary.render()
        assert_exactly_once(scenario, MONTH)
        assert scenario.sim.stats.faults_injected == {str(fault): 2}
        assert scenario.sim.stats.exports_created == 1
        assert scenario.sim.stats.requests["file"] == 1 + 2
        retries = log_events(log_buffer, "file.retry")
        if fault is FaultKind.FILE_RESET:
            # aiohttp itself sends an idempotent GET once more after a dropped connection;
            # the second drop reaches the harvester.
            assert (len(retries), len(run.requests.of("file"))) == (1, 2)
        else:
            assert (len(retries), len(run.requests.of("file"))) == (2, 3)


@pytest.mark.parametrize("status", [403, 404, 410])
async def test_a_file_host_saying_gone_has_the_chunk_exported_again(
    tmp_path: Path, clock: FakeClock, log_buffer: io.StringIO, status: int
) -> None:
    """A 403, 404 or 410 from the file host means the files are gone: a new export at once
    (no server failed: no backoff), not a retry of the old URL."""
    faults = Faults()
    faults.script(FaultKind.FILE_EXPIRED_EARLY)
    async with simulated(
        tmp_path, clock, merchants=1, faults=faults, expired_status=status
    ) as scenario:
        only_payments(scenario)
        run = await harvest(scenario, clock, MONTH)

        assert run.summary.exit_code == 0, run.summary.render()
        assert_exactly_once(scenario, MONTH)
        expired, done = recorded_exports(scenario)
        assert (expired.state, done.state) == (ExportState.EXPIRED, ExportState.DONE)
        gone = run.requests.of("file", status=status)
        assert len(gone) == 1
        assert all(s.url != gone[0].url for s in run.requests.of("file", status=200))
        (line,) = log_events(log_buffer, "export.failed")
        assert line["wait_s"] == 0
        assert done.created_at - expired.updated_at < timedelta(seconds=0.5)


async def test_files_past_available_until_are_not_fetched_but_exported_again(
    tmp_path: Path, clock: FakeClock
) -> None:
    """A run that could not download a finished export's files leaves it DONE; a later run,
    after availableUntil, exports the chunk again without trying the dead URLs."""
    faults = Faults(file_5xx=1.0)
    async with simulated(tmp_path, clock, merchants=1, faults=faults, file_ttl_s=3600) as scenario:
        only_payments(scenario)
        scenario.top["timing"] = {**FAST_TIMING, "max_attempts": 2}
        first = await harvest(scenario, clock, MONTH)
        assert first.summary.exit_code == 1
        (stale,) = recorded_exports(scenario)
        assert stale.state is ExportState.DONE
        assert stale.available_until is not None

        clock.advance((stale.available_until - clock.now()).total_seconds() + 1)
        faults.set_probability(FaultKind.FILE_5XX, 0.0)
        second = await harvest(scenario, clock, MONTH)

        assert second.summary.exit_code == 0, second.summary.render()
        assert_exactly_once(scenario, MONTH)
        assert not {s.url for s in second.requests.of("file")} & set(stale.urls)
        expired, done = recorded_exports(scenario)
        assert (expired.id, expired.state) == (stale.id, ExportState.EXPIRED)
        assert done.state is ExportState.DONE


# -- refusals ------------------------------------------------------------------------------


async def test_a_403_on_post_flags_the_merchant_and_the_others_finish(
    tmp_path: Path, clock: FakeClock, log_buffer: io.StringIO
) -> None:
    """A merchant whose export permission is missing is flagged once, never retried this run,
    and the run ends with exit 1 and a summary that says so, after the others finished."""
    lacking = "M001TESTSHOP1"

    def account(merchant_id: str, token: str) -> Account:
        return Account(token=token, export_permission=merchant_id != lacking)

    async with simulated(tmp_path, clock, merchants=3, accounts=account) as scenario:
        run = await harvest(scenario, clock)

        assert run.summary.exit_code == 1
        assert run.summary.refusals == {lacking: "export permission missing"}
        assert f"{lacking}: export permission missing" in run.summary.render()
        refused = run.requests.of("create", merchant=lacking)
        # Only its two lanes' first POSTs, which may have gone out at the same instant, each
        # followed by one read of the merchant (which works: the token is good).
        assert 1 <= len(refused) <= 2
        assert all(s.status == 403 for s in refused)
        reads = run.requests.of("merchant", merchant=lacking)
        assert [s.status for s in reads] == [200] * len(refused)
        assert len(run.requests.of(merchant=lacking)) == 2 * len(refused)
        for export_type in ExportType:
            tally = run.summary.tally(lacking, export_type)
            assert tally.chunks_failed == tally.chunks_planned == 4
        for merchant_id in scenario.tokens.keys() - {lacking}:
            for export_type in ExportType:
                tally = run.summary.tally(merchant_id, export_type)
                assert tally.chunks_done == tally.chunks_planned == 4
        flagged = log_events(log_buffer, "merchant.refused")
        assert len(flagged) == len(refused)
        assert all(line["merchant"] == lacking for line in flagged)


async def test_a_rejected_static_token_flags_the_merchant(tmp_path: Path, clock: FakeClock) -> None:
    """A 401 for a merchant with a fixed token (nothing to refresh) flags it "token rejected";
    the other merchants finish."""
    wrong = "M000TESTSHOP0"

    def account(merchant_id: str, token: str) -> Account:
        return Account(token=token if merchant_id != wrong else "a-different-token")

    async with simulated(tmp_path, clock, merchants=2, accounts=account) as scenario:
        run = await harvest(scenario, clock, MONTH)

        assert run.summary.exit_code == 1
        assert run.summary.refusals == {wrong: "token rejected"}
        creates = run.requests.of("create", merchant=wrong)
        assert 1 <= len(creates) <= 2
        # Each 401 on a create is checked with a read of the merchant, refused too.
        assert len(run.requests.of("merchant", merchant=wrong)) == len(creates)
        assert all(s.status == 401 for s in run.requests.of(merchant=wrong))
        assert scenario.sim.stats.refreshes == 0
        other = "M001TESTSHOP1"
        assert all(run.summary.tally(other, t).chunks_done == 1 for t in ExportType), (
            run.summary.render()
        )

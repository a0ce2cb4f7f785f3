"""Issue 7's acceptance: every documented unknown played the hard way at once.

"One simulator run with all of the above switched on harvests every object of the other
merchants exactly once: gzip files, lower-case headers, empty ranges without URLs, 8% lost
creates, and one merchant whose creates answer 401; exit 1, naming that merchant "export
permission missing"; no request is retried before its retry-after; exports created <= chunks
+ empty chunks (each confirmed once) + lost creates + 2."
"""

from __future__ import annotations

import io
from datetime import timedelta
from pathlib import Path

from harvester.clover.chunks import TimeRange
from harvester.simulator import Account, Faults
from harvester.simulator.app import CONCURRENT_HEADER
from harvester.simulator.faults import FaultKind
from tests.conftest import DATA_START, merchant_ids
from tests.fakeclock import FakeClock
from tests.harness import assert_exactly_once, harvest, log_events, simulated

MERCHANTS = 4
# The first chunk of each merchant and type holds no object: its export is DONE without
# exportUrls, twice.
REQUESTED = TimeRange(DATA_START - timedelta(days=30), DATA_START + timedelta(days=60))
RETRY_AFTER_S = 2.0


async def test_every_unknown_the_hard_way_at_once(
    tmp_path: Path, clock: FakeClock, log_buffer: io.StringIO
) -> None:
    """Gzip files, lower-case headers, empty ranges without exportUrls, 8% lost creates, 429s
    with retry-after, and one merchant without the export permission answered 401: the
    others' objects arrive exactly once, that merchant is named, and no export is wasted."""
    denied = merchant_ids(MERCHANTS)[1]
    faults = Faults(create_lost=0.08, api_429=0.03, rate_limit_header=CONCURRENT_HEADER)
    faults.script(FaultKind.CREATE_LOST)

    def account(merchant_id: str, token: str) -> Account:
        return Account(token=token, export_permission=merchant_id != denied)

    async with simulated(
        tmp_path,
        clock,
        merchants=MERCHANTS,
        faults=faults,
        accounts=account,
        file_encoding="gzip",
        header_case="lower",
        empty_exports="no_urls",
        permission_status=401,
        retry_after_s=RETRY_AFTER_S,
        max_concurrent_exports=3,
        objects_per_file=120,
    ) as scenario:
        scenario.region["max_concurrent_exports"] = 3
        run = await harvest(scenario, clock, REQUESTED)

        summary = run.summary
        assert summary.exit_code == 1
        assert summary.refusals == {denied: "export permission missing"}
        assert f"{denied}: export permission missing" in summary.render()
        assert assert_exactly_once(scenario, REQUESTED, besides={denied}) > 0

        others = [t for (m, _), t in summary.tallies.items() if m != denied]
        chunks = sum(t.chunks_planned for t in others)
        empty = sum(t.chunks_empty for t in others)
        assert chunks == (MERCHANTS - 1) * 2 * 3
        assert empty == (MERCHANTS - 1) * 2
        assert all(t.chunks_done == t.chunks_planned for t in others)
        stats = scenario.sim.stats
        lost = summary.orphans
        assert stats.faults_injected["create_lost"] >= 1
        assert lost >= stats.faults_injected["create_lost"]
        assert stats.exports_created <= chunks + empty + lost + 2, summary.render()

        assert stats.rate_limited, "no 429 came: the retry-after check tested nothing"
        assert len(run.requests.pauses) == len(run.requests.of(status=429))
        assert run.requests.started_in_a_pause() == []
        waits = [line["wait_s"] for line in log_events(log_buffer, "request.rate_limited")]
        assert waits
        assert all(wait >= RETRY_AFTER_S for wait in waits), "retry-after (lower case) was missed"
        assert stats.file_auth_headers == 0
        print(
            f"\nacceptance: {chunks} chunks ({empty} empty), {stats.exports_created} exports "
            f"created, {lost} lost creates, {sum(stats.rate_limited.values())} 429s, "
            f"{stats.busy_503s} busy 503s, {clock.monotonic():.0f} s virtual"
        )

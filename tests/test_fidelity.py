"""Clover as its docs and samples show it, not only as our simulator used to play it (issue 7).

Each unknown is played every plausible way by the simulator; the harvester, through its real
client over loopback, gets everything exactly once whichever way it is played.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import random
import re
from datetime import timedelta
from pathlib import Path

import aiohttp
import pytest

from harvester.clover.api import CloverApi, TokenGrant
from harvester.clover.chunks import ExportType, TimeRange, split
from harvester.clover.ratelimit import RequestLimiter
from harvester.config import Timing
from harvester.errors import AnswerLost, CloverUnavailable, PermissionMissing, TokenRejected
from harvester.harvest.merchant import MerchantClient
from harvester.harvest.scheduler import Harvest
from harvester.harvest.tokens import RefreshingToken, StaticToken
from harvester.ops.status import build_status, render_status, status_as_json
from harvester.pacing.gate import UNKNOWN_DURATION_S
from harvester.simulator import Account, Faults, Simulator
from harvester.simulator.choices import EMPTY_EXPORTS, FILE_ENCODINGS, PERMISSION_STATUSES
from harvester.simulator.faults import FaultKind
from harvester.state.records import ChunkStatus
from harvester.state.sqlite import Store, read_snapshot
from tests.conftest import DATA_START, Scenario, merchant_ids, new_token, sim_settings
from tests.fakeclock import FakeClock
from tests.harness import assert_exactly_once, harvest, log_events, simulated

MONTH = TimeRange(DATA_START, DATA_START + timedelta(days=30))
# Two 30-day chunks before the simulator's first object.
BEFORE_DATA = TimeRange(DATA_START - timedelta(days=60), DATA_START)
CLIENT_ID = "fidelity-app"


def only_payments(scenario: Scenario, merchant_id: str | None = None) -> str:
    """Harvest one type of one merchant (the first by default); returns its id."""
    merchant_id = merchant_id or next(iter(scenario.tokens))
    scenario.merchant_overrides[merchant_id] = {
        **scenario.merchant_overrides.get(merchant_id, {}),
        "types": ["PAYMENTS"],
    }
    return merchant_id


def refreshing(scenario: Scenario, merchant_id: str) -> None:
    """The merchant's configured secret is a refresh token (the simulator's account too)."""
    scenario.merchant_overrides[merchant_id] = {
        **scenario.merchant_overrides.get(merchant_id, {}),
        "token": None,
        "refresh_token": f"${{TOKEN_{merchant_id}}}",
        "client_id": CLIENT_ID,
    }


# -- file encodings -------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", FILE_ENCODINGS)
async def test_files_in_any_encoding_are_stored_decoded(
    tmp_path: Path, clock: FakeClock, encoding: str
) -> None:
    """Identity, gzip or deflate: every object arrives once, each part is the decoded JSON,
    and the manifest's size and sha256 describe the bytes stored."""
    async with simulated(
        tmp_path, clock, merchants=2, file_encoding=encoding, objects_per_file=60
    ) as scenario:
        run = await harvest(scenario, clock, MONTH)

        assert run.summary.exit_code == 0, run.summary.render()
        assert assert_exactly_once(scenario, MONTH) > 0
        manifests = sorted(scenario.output_dir.rglob("_manifest.json"))
        assert len(manifests) == 4
        for path in manifests:
            for part in json.loads(path.read_text())["parts"]:
                stored = (path.parent / part["file"]).read_bytes()
                assert stored.startswith(b'{"elements": [')
                assert part["size"] == len(stored)
                assert part["sha256"] == hashlib.sha256(stored).hexdigest()
        assert run.summary.tallies
        assert all(t.bytes > 0 for t in run.summary.tallies.values())


async def test_a_compressed_body_cut_short_is_downloaded_again(
    tmp_path: Path, clock: FakeClock, log_buffer: io.StringIO
) -> None:
    """A gzip file whose body stops halfway is refused and fetched again; the part is whole."""
    faults = Faults()
    faults.script(FaultKind.FILE_TRUNCATED)
    async with simulated(
        tmp_path, clock, merchants=1, faults=faults, file_encoding="gzip"
    ) as scenario:
        only_payments(scenario)
        run = await harvest(scenario, clock, MONTH)

        assert run.summary.exit_code == 0, run.summary.render()
        assert_exactly_once(scenario, MONTH)
        (retry,) = log_events(log_buffer, "file.retry")
        assert "cut short" in retry["error"] or "truncated" in retry["error"]


# -- empty ranges ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("empty_exports", "exports_per_chunk", "reason"),
    [
        pytest.param("file", 1, "empty_files", id="one-empty-file"),
        pytest.param("no_elements", 2, "no_files", id="elements-empty"),
        pytest.param("no_urls", 2, "no_files", id="no-exportUrls"),
    ],
)
async def test_an_empty_range_ends_as_a_covered_empty_chunk(
    tmp_path: Path, clock: FakeClock, empty_exports: str, exports_per_chunk: int, reason: str
) -> None:
    """However Clover answers an export of a range without objects, the chunk ends covered:
    a folder whose manifest lists no parts and says why. A DONE listing no files is believed
    only once a second export of the range says the same; the next run has nothing to do."""
    assert {"file", "no_elements", "no_urls"} == set(EMPTY_EXPORTS)
    async with simulated(tmp_path, clock, merchants=1, empty_exports=empty_exports) as scenario:
        merchant_id = only_payments(scenario)
        run = await harvest(scenario, clock, BEFORE_DATA)

        assert run.summary.exit_code == 0, run.summary.render()
        tally = run.summary.tally(merchant_id, ExportType.PAYMENTS)
        assert (tally.chunks_done, tally.chunks_empty, tally.objects, tally.parts) == (2, 2, 0, 0)
        assert scenario.sim.stats.exports_created == 2 * exports_per_chunk
        chunk_dirs = sorted((scenario.output_dir / merchant_id / "payments").iterdir())
        assert [d.name for d in chunk_dirs] == [r.name for r in split(BEFORE_DATA, 30)]
        for chunk_dir in chunk_dirs:
            assert [p.name for p in chunk_dir.iterdir()] == ["_manifest.json"]
            manifest = json.loads((chunk_dir / "_manifest.json").read_text())
            assert (manifest["parts"], manifest["objects"]) == ([], 0)
            assert manifest["empty_reason"] == reason
        async with await Store.open(scenario.config().state_path, clock) as store:
            chunks = await store.chunks(merchant_id)
        assert [c.status for c in chunks] == [ChunkStatus.COMPLETE] * 2
        assert all(c.completed_at is not None for c in chunks)

        again = await harvest(scenario, clock, BEFORE_DATA)
        assert again.summary.exit_code == 0
        assert again.requests.of("create") == []


async def test_a_done_without_urls_over_objects_is_not_believed(
    tmp_path: Path, clock: FakeClock, log_buffer: io.StringIO
) -> None:
    """An export DONE without exportUrls for a range that has objects (a glitch) is followed
    at once by a second export, whose files arrive: no empty chunk, nothing lost."""
    faults = Faults()
    faults.script(FaultKind.DONE_WITHOUT_URLS)
    async with simulated(tmp_path, clock, merchants=1, faults=faults) as scenario:
        merchant_id = only_payments(scenario)
        run = await harvest(scenario, clock, MONTH)

        assert run.summary.exit_code == 0, run.summary.render()
        assert assert_exactly_once(scenario, MONTH) > 0
        assert run.summary.tally(merchant_id, ExportType.PAYMENTS).chunks_empty == 0
        assert scenario.sim.stats.exports_created == 2
        (line,) = log_events(log_buffer, "export.no_files")
        assert "no exportUrls" in line["error"]
        assert log_events(log_buffer, "export.failed") == []


# -- lost creates ---------------------------------------------------------------------------


async def test_a_lost_create_holds_its_slot_for_the_orphan(
    tmp_path: Path, clock: FakeClock, log_buffer: io.StringIO
) -> None:
    """A create whose answer is lost (the export was made) is an orphan: its slot stays
    taken while the orphan may run, so the next create finds the server free, not busy;
    the summary and `status` count it."""
    faults = Faults()
    faults.script(FaultKind.CREATE_LOST)
    async with simulated(
        tmp_path, clock, merchants=1, faults=faults, max_concurrent_exports=1
    ) as scenario:
        merchant_id = only_payments(scenario)
        scenario.region["max_concurrent_exports"] = 1
        two_months = TimeRange(DATA_START, DATA_START + timedelta(days=60))
        run = await harvest(scenario, clock, two_months)

        assert run.summary.exit_code == 0, run.summary.render()
        assert_exactly_once(scenario, two_months)
        stats = scenario.sim.stats
        assert stats.faults_injected == {"create_lost": 1}
        assert stats.busy_503s == 0, "a create walked into the orphan's slot"
        assert stats.exports_created == 2 + 1  # two chunks, one orphan
        posts = run.requests.of("create")
        assert posts[0].status in (None, 502, 504)
        assert posts[1].at - posts[0].at >= UNKNOWN_DURATION_S - 0.001
        assert run.summary.orphans == 1
        assert "orphans: 1" in run.summary.render()
        assert run.summary.as_dict()["orphans"] == 1
        (held,) = log_events(log_buffer, "export.orphan_held")
        assert held["expected_s"] == UNKNOWN_DURATION_S

        config = scenario.config()
        (row,) = build_status(config, read_snapshot(config.state_path))
        assert (row.merchant_id, row.orphans) == (merchant_id, 1)
        assert "orphans: 1 create(s) lost their answer" in render_status([row])
        assert status_as_json([row])[0]["orphans"] == 1


async def test_an_orphan_is_held_as_long_as_exports_are_seen_to_take(
    tmp_path: Path, clock: FakeClock, log_buffer: io.StringIO
) -> None:
    """Once exports have been seen to finish, an orphan holds its slot for their median
    duration, not the default guess."""
    faults = Faults()
    async with simulated(
        tmp_path, clock, merchants=1, faults=faults, max_concurrent_exports=1
    ) as scenario:
        only_payments(scenario)
        scenario.region["max_concurrent_exports"] = 1
        three_months = TimeRange(DATA_START, DATA_START + timedelta(days=90))
        scripted: list[int] = []

        async def lose_the_second_create(runner: Harvest) -> None:
            while scenario.sim.stats.exports_by_final_state["DONE"] < 1:
                await clock.sleep(0.5)
            faults.script(FaultKind.CREATE_LOST)
            scripted.append(1)

        run = await harvest(scenario, clock, three_months, beside=lose_the_second_create)

        assert run.summary.exit_code == 0, run.summary.render()
        assert_exactly_once(scenario, three_months)
        assert scripted, "the create to lose was never scripted"
        assert scenario.sim.stats.busy_503s == 0
        (held,) = log_events(log_buffer, "export.orphan_held")
        assert 0 < held["expected_s"] < UNKNOWN_DURATION_S


# -- a create refused with 401 or 403 --------------------------------------------------------


def refreshing_tokens(
    api: CloverApi, store: Store, clock: FakeClock, merchant_id: str, refresh_token: str
) -> RefreshingToken:
    async def refresher(token: str) -> TokenGrant:
        return await api.refresh(merchant_id, CLIENT_ID, token)

    return RefreshingToken(merchant_id, refresh_token, refresher, store, clock, 300.0)


@pytest.mark.parametrize("status", PERMISSION_STATUSES)
@pytest.mark.parametrize("kind", ["static", "refreshing"])
async def test_a_missing_export_permission_is_told_from_a_rejected_token(
    tmp_path: Path, clock: FakeClock, status: int, kind: str
) -> None:
    """Whether Clover answers 401 or 403 to the create, one read of the merchant with the
    same token shows the token works: the merchant is flagged "export permission missing",
    no refresh is spent on it, and the other merchant is harvested."""
    denied = merchant_ids(2)[0]

    def account(merchant_id: str, token: str) -> Account:
        permission = merchant_id != denied
        if kind == "refreshing" and merchant_id == denied:
            return Account(refresh_token=token, client_id=CLIENT_ID, export_permission=False)
        return Account(token=token, export_permission=permission)

    async with simulated(
        tmp_path, clock, merchants=2, accounts=account, permission_status=status
    ) as scenario:
        if kind == "refreshing":
            refreshing(scenario, denied)
        run = await harvest(scenario, clock, MONTH)

        assert run.summary.exit_code == 1
        assert run.summary.refusals == {denied: "export permission missing"}
        assert f"{denied}: export permission missing" in run.summary.render()
        assert_exactly_once(scenario, MONTH, besides={denied})
        # Its two types' lanes may each have asked before the first answer came back.
        creates = [s.status for s in run.requests.of("create", merchant=denied)]
        assert creates in ([status], [status, status])
        reads = [s.status for s in run.requests.of("merchant", merchant=denied)]
        assert reads == [200] * len(creates)
        assert scenario.sim.stats.refreshes == (1 if kind == "refreshing" else 0)


async def test_a_rejected_token_on_create_is_named_so(tmp_path: Path, clock: FakeClock) -> None:
    """A create answered 401 whose token the merchant read refuses too: "token rejected"."""
    async with simulated(tmp_path, clock, merchants=2) as scenario:
        rejected = merchant_ids(2)[1]
        scenario.tokens[rejected] = new_token("stranger")
        run = await harvest(scenario, clock, MONTH)

        assert run.summary.refusals == {rejected: "token rejected"}
        reads = [s.status for s in run.requests.of("merchant", merchant=rejected)]
        assert reads in ([401], [401, 401])
        assert_exactly_once(scenario, MONTH, besides={rejected})


async def test_a_denied_create_spends_at_most_one_refresh_per_run(
    tmp_path: Path, clock: FakeClock
) -> None:
    """A create denied while the read refuses the token too gets one refresh and a retry; the
    next time in the same run, the token is reported rejected with no refresh spent."""
    merchant_id = merchant_ids(1)[0]
    refresh_token = new_token(merchant_id)
    account = Account(refresh_token=refresh_token, client_id=CLIENT_ID)
    async with (
        Simulator(sim_settings({merchant_id: account}), clock, Faults()) as sim,
        aiohttp.ClientSession() as session,
        await Store.open(tmp_path / "state.sqlite3", clock) as store,
    ):
        limiter = RequestLimiter(clock, 16, 5, 50, 10)
        api = CloverApi(session, sim.api_url, limiter, 10.0)
        tokens = refreshing_tokens(api, store, clock, merchant_id, refresh_token)
        client = MerchantClient(
            merchant_id, api, tokens, limiter, Timing(), clock, random.Random(7)
        )
        await client.create_export(ExportType.PAYMENTS, MONTH)
        assert sim.stats.refreshes == 1

        sim.revoke_access_tokens(merchant_id)
        await client.create_export(ExportType.PAYMENTS, MONTH)
        assert sim.stats.refreshes == 2
        assert sim.stats.requests["merchant"] == 1

        sim.revoke_access_tokens(merchant_id)
        with pytest.raises(TokenRejected, match="token rejected"):
            await client.create_export(ExportType.PAYMENTS, MONTH)
        assert sim.stats.refreshes == 2
        assert sim.stats.requests["merchant"] == 2
        assert sim.stats.exports_created == 2


async def test_a_permission_answer_never_costs_a_refresh(tmp_path: Path, clock: FakeClock) -> None:
    """A refreshing merchant without the export permission: the read works, no refresh."""
    merchant_id = merchant_ids(1)[0]
    refresh_token = new_token(merchant_id)
    account = Account(refresh_token=refresh_token, client_id=CLIENT_ID, export_permission=False)
    settings = sim_settings({merchant_id: account}, permission_status=401)
    async with (
        Simulator(settings, clock, Faults()) as sim,
        aiohttp.ClientSession() as session,
        await Store.open(tmp_path / "state.sqlite3", clock) as store,
    ):
        limiter = RequestLimiter(clock, 16, 5, 50, 10)
        api = CloverApi(session, sim.api_url, limiter, 10.0)
        tokens = refreshing_tokens(api, store, clock, merchant_id, refresh_token)
        client = MerchantClient(
            merchant_id, api, tokens, limiter, Timing(), clock, random.Random(7)
        )
        for _ in range(2):
            with pytest.raises(PermissionMissing, match="export permission missing"):
                await client.create_export(ExportType.PAYMENTS, MONTH)
        assert sim.stats.refreshes == 1  # the first access token, nothing more
        assert sim.stats.permission_denied == 2
        assert sim.stats.bad_tokens == 0


# -- where files live, what DONE is called, what the harvester sends -------------------------


async def test_file_urls_on_the_api_host_get_no_credentials(
    tmp_path: Path, clock: FakeClock
) -> None:
    """Files served from the API host itself are still fetched with no credentials."""
    async with simulated(tmp_path, clock, merchants=2, file_host="api") as scenario:
        run = await harvest(scenario, clock, MONTH)

        assert run.summary.exit_code == 0, run.summary.render()
        assert_exactly_once(scenario, MONTH)
        files = run.requests.of("file")
        assert files
        assert all(s.url.startswith(scenario.sim.api_url + "/exports/") for s in files)
        assert all(s.authorization is None for s in files)
        assert scenario.sim.stats.file_auth_headers == 0


async def test_complete_is_read_as_done(tmp_path: Path, clock: FakeClock) -> None:
    """An export whose finished status is COMPLETE (Clover's 2016 name) is harvested."""
    async with simulated(tmp_path, clock, merchants=1, done_status="COMPLETE") as scenario:
        run = await harvest(scenario, clock, MONTH)

        assert run.summary.exit_code == 0, run.summary.render()
        assert assert_exactly_once(scenario, MONTH) > 0


async def test_the_harvester_sends_its_token_in_the_bearer_header_only(
    tmp_path: Path, clock: FakeClock
) -> None:
    """Though Clover takes `?access_token=` and a trailing slash, the harvester sends the
    Bearer header, no token in any URL, and POSTs to `/exports` as documented."""
    async with simulated(tmp_path, clock, merchants=1) as scenario:
        token = next(iter(scenario.tokens.values()))
        run = await harvest(scenario, clock, MONTH)

        assert run.summary.exit_code == 0, run.summary.render()
        api = [s for s in run.requests.sent if s.kind in ("create", "poll")]
        assert api
        assert all(s.authorization == f"Bearer {token}" for s in api)
        assert all(token not in s.url and "access_token" not in s.url for s in run.requests.sent)
        assert all(s.url.endswith("/exports") for s in run.requests.of("create"))
        assert scenario.sim.stats.sample_requests == {}


async def test_a_lost_answer_to_the_merchant_read_is_no_lost_create(clock: FakeClock) -> None:
    """A create denied, then the merchant read loses its answer: a plain transient failure
    (a read creates nothing), never counted as a lost create."""

    async def deny_then_hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        if head.startswith(b"POST"):
            length = re.search(rb"(?i)content-length: *(\d+)", head)
            assert length is not None
            await reader.readexactly(int(length.group(1)))
            writer.write(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(deny_then_hang_up, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    limiter = RequestLimiter(clock, 16, 5, 50, 10)
    try:
        async with aiohttp.ClientSession() as session:
            api = CloverApi(session, f"http://127.0.0.1:{port}", limiter, 10.0)
            client = MerchantClient(
                "M1", api, StaticToken("tok-1"), limiter, Timing(), clock, random.Random(7)
            )
            with pytest.raises(CloverUnavailable, match="/v3/merchants/M1") as raised:
                await client.create_export(ExportType.PAYMENTS, MONTH)
        assert not isinstance(raised.value, AnswerLost)
    finally:
        server.close()
        await server.wait_closed()

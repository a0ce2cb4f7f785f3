"""The simulator, spoken to over real loopback HTTP, on a fake clock."""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import re
import zlib
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from typing import Any

import aiohttp
import pytest

from harvester.simulator import Account, FaultKind, Faults, Simulator, SimulatorSettings
from harvester.simulator.command import (
    MERCHANTS_ENV,
    DailyWindow,
    add_arguments,
    serve,
    settings_from_args,
)
from harvester.simulator.data import generate
from tests.fakeclock import FakeClock
from tests.simdata import generate_once

NOW = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)
DATA_START = datetime(2024, 1, 1, tzinfo=UTC)
DATA_END = datetime(2024, 3, 1, tzinfo=UTC)
DAY_MS = 86_400_000
M1_TOKEN = "tok-1"
JAN_10 = int(datetime(2024, 1, 10, tzinfo=UTC).timestamp() * 1000)
RANGE = (JAN_10, JAN_10 + 10 * DAY_MS - 1)  # ~200 objects, ~4 files of 50
LONG_S = 10_000.0  # far longer than any healthy export in these tests
RATE_HEADERS = {
    "X-RateLimit-tokenLimit",
    "X-RateLimit-tokenConcurrentLimit",
    "X-RateLimit-crossTokenLimit",
    "X-RateLimit-crossTokenConcurrentLimit",
}


def make_settings(**overrides: Any) -> SimulatorSettings:
    values: dict[str, Any] = {
        "accounts": {
            "M1": Account(token=M1_TOKEN),
            "M2": Account(token="tok-2", export_permission=False),
            "M3": Account(token="tok-3"),
            "M4": Account(refresh_token="refresh-4", client_id="app-4"),
        },
        "data_start": DATA_START,
        "data_end": DATA_END,
        "objects_per_day": 20.0,
        "objects_per_file": 50,
        "pending_s": 1.0,
        "export_base_s": 5.0,
        **overrides,
    }
    return SimulatorSettings(**values)


@dataclass
class Reply:
    status: int
    headers: Mapping[str, str]
    raw: bytes

    @property
    def data(self) -> Any:
        return json.loads(self.raw)


async def call(
    session: aiohttp.ClientSession, method: str, url: str, token: str | None = None, **kw: Any
) -> Reply:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with session.request(method, url, headers=headers, **kw) as response:
        return Reply(response.status, response.headers, await response.read())


async def create(
    session: aiohttp.ClientSession,
    sim: Simulator,
    merchant: str = "M1",
    token: str | None = M1_TOKEN,
    body: Any = None,
) -> Reply:
    if body is None:
        body = {"type": "ORDERS", "startTime": RANGE[0], "endTime": RANGE[1]}
    url = f"{sim.api_url}/v3/merchants/{merchant}/exports"
    return await call(session, "POST", url, token, json=body)


async def poll(
    session: aiohttp.ClientSession,
    sim: Simulator,
    export_id: str,
    merchant: str = "M1",
    token: str = M1_TOKEN,
) -> Reply:
    url = f"{sim.api_url}/v3/merchants/{merchant}/exports/{export_id}"
    return await call(session, "GET", url, token)


async def finished(
    session: aiohttp.ClientSession, sim: Simulator, clock: FakeClock, **create_kw: Any
) -> dict[str, Any]:
    """Create an export, let it run to its end, and return what a poll then shows."""
    created = await create(session, sim, **create_kw)
    assert created.status == 200, created.raw
    clock.advance(LONG_S)
    polled = await poll(session, sim, created.data["id"])
    assert polled.status == 200
    result: dict[str, Any] = polled.data
    return result


def urls(export: dict[str, Any]) -> list[str]:
    return [element["url"] for element in export["exportUrls"]["elements"]]


async def refresh(session: aiohttp.ClientSession, sim: Simulator, client_id: str, rt: str) -> Reply:
    body = {"client_id": client_id, "refresh_token": rt}
    return await call(session, "POST", f"{sim.api_url}/oauth/v2/refresh", json=body)


@pytest.fixture
def clock() -> FakeClock:
    """Virtual time starting the instant the data ends."""
    return FakeClock(NOW)


@pytest.fixture
async def sim(clock: FakeClock) -> AsyncIterator[Simulator]:
    async with Simulator(make_settings(), clock) as simulator:
        yield simulator


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


@pytest.fixture
async def fresh_session() -> AsyncIterator[aiohttp.ClientSession]:
    """A client that opens a new connection per request, so a dropped one shows plainly."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as client:
        yield client


# -- the export flow ------------------------------------------------------------------------


async def test_export_files_hold_exactly_the_objects_of_the_range(
    sim: Simulator, session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    """A DONE export's files, fetched without credentials from the file host, hold the range."""
    created = await create(session, sim)
    assert created.status == 200
    assert created.data["status"] == "PENDING"
    assert created.data["percentComplete"] == 0
    assert re.fullmatch(r"[A-Z0-9]{13}", created.data["id"])
    assert created.data["merchantRef"] == {"id": "M1"}
    assert (created.data["startTime"], created.data["endTime"]) == RANGE
    assert created.data["type"] == "ORDERS"

    done = await finished(session, sim, clock)
    assert done["status"] == "DONE"
    assert done["percentComplete"] == 100
    links = urls(done)
    assert len(links) >= 3
    assert all(link.startswith(sim.file_url + "/") for link in links)
    assert sim.file_url != sim.api_url
    assert {e["export"]["id"] for e in done["exportUrls"]["elements"]} == {done["id"]}

    union: list[dict[str, Any]] = []
    for link in links:
        file = await call(session, "GET", link)
        assert file.status == 200
        assert file.headers["Content-Type"].startswith("application/json")
        assert int(file.headers["Content-Length"]) == len(file.raw)
        elements = file.data["elements"]
        assert 0 < len(elements) <= 50
        union.extend(elements)
    assert union == sim.objects("M1", "ORDERS", *RANGE)
    assert sim.stats.file_downloads == len(links)
    assert sim.stats.file_auth_headers == 0


async def test_status_goes_pending_then_in_progress_with_linear_percent_then_done(
    clock: FakeClock, session: aiohttp.ClientSession
) -> None:
    """PENDING for pending_s, IN_PROGRESS with percent rising linearly, then DONE with expiry."""
    settings = make_settings(pending_s=10.0, export_base_s=100.0, export_per_object_s=0.0)
    async with Simulator(settings, clock) as sim:
        export_id = (await create(session, sim)).data["id"]
        seen = []
        for step_s in (5.0, 5.0, 25.0, 50.0, 19.0, 6.0):
            clock.advance(step_s)
            view = (await poll(session, sim, export_id)).data
            seen.append((view["status"], view["percentComplete"]))
        assert seen == [
            ("PENDING", 0),
            ("IN_PROGRESS", 0),
            ("IN_PROGRESS", 25),
            ("IN_PROGRESS", 75),
            ("IN_PROGRESS", 94),
            ("DONE", 100),
        ]
        created_ms = int(NOW.timestamp() * 1000)
        assert view["availableUntil"] == created_ms + (110 + 86400) * 1000
        assert view["modifiedTime"] == created_ms + 110_000


async def test_an_export_with_no_objects_still_has_one_empty_file(
    sim: Simulator, session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    """A range before the data gives one file with an empty elements array."""
    before = JAN_10 - 100 * DAY_MS
    body = {"type": "PAYMENTS", "startTime": before, "endTime": before + DAY_MS}
    done = await finished(session, sim, clock, body=body)
    [link] = urls(done)
    assert (await call(session, "GET", link)).data == {"elements": []}


async def test_numeric_strings_are_accepted_as_times(
    sim: Simulator, session: aiohttp.ClientSession
) -> None:
    """startTime and endTime may come as strings of digits, as one Clover sample sends them."""
    body = {"type": "PAYMENTS", "startTime": str(RANGE[0]), "endTime": str(RANGE[1])}
    reply = await create(session, sim, body=body)
    assert reply.status == 200
    assert (reply.data["startTime"], reply.data["endTime"]) == RANGE


# -- refusals -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("merchant", "token"),
    [("M1", None), ("M1", "wrong"), ("M1", "tok-3"), ("UNKNOWN", "tok-1")],
    ids=["missing", "wrong", "other-merchants", "unknown-merchant"],
)
async def test_bad_credentials_get_401(
    sim: Simulator, session: aiohttp.ClientSession, merchant: str, token: str | None
) -> None:
    """A missing, wrong or foreign token, or an unknown merchant, is a 401 and counted."""
    assert (await create(session, sim, merchant=merchant, token=token)).status == 401
    assert sim.stats.bad_tokens == 1
    assert sim.stats.exports_created == 0


async def test_merchant_without_export_permission_gets_403(
    sim: Simulator, session: aiohttp.ClientSession
) -> None:
    """Creating an export for a merchant without the permission is a 403 with a message."""
    reply = await create(session, sim, merchant="M2", token="tok-2")
    assert reply.status == 403
    assert reply.data["message"]


@pytest.mark.parametrize(
    "body",
    [
        {"type": "REFUNDS", "startTime": RANGE[0], "endTime": RANGE[1]},
        {"type": "ORDERS", "endTime": RANGE[1]},
        {"type": "ORDERS", "startTime": "yesterday", "endTime": RANGE[1]},
        {"type": "ORDERS", "startTime": 1.5, "endTime": RANGE[1]},
        {"type": "ORDERS", "startTime": True, "endTime": RANGE[1]},
        {"type": "ORDERS", "startTime": RANGE[1], "endTime": RANGE[0]},
        [RANGE[0], RANGE[1]],
    ],
    ids=["type", "missing-start", "text", "float", "bool", "reversed", "not-object"],
)
async def test_malformed_create_requests_get_400(
    sim: Simulator, session: aiohttp.ClientSession, body: Any
) -> None:
    """A bad type, bad or missing times, a reversed range or a non-object body is a 400."""
    reply = await create(session, sim, body=body)
    assert reply.status == 400
    assert reply.data["message"]


async def test_a_body_that_is_not_json_gets_400(
    sim: Simulator, session: aiohttp.ClientSession
) -> None:
    """A create whose body does not parse as JSON is a 400."""
    url = f"{sim.api_url}/v3/merchants/M1/exports"
    assert (await call(session, "POST", url, "tok-1", data=b"{not json")).status == 400


async def test_ranges_longer_than_30_days_get_400(
    sim: Simulator, session: aiohttp.ClientSession
) -> None:
    """Exactly max_range_days is accepted; one millisecond more is a 400 saying so."""
    ok = {"type": "ORDERS", "startTime": JAN_10, "endTime": JAN_10 + 30 * DAY_MS}
    assert (await create(session, sim, body=ok)).status == 200
    too_long = {**ok, "endTime": JAN_10 + 30 * DAY_MS + 1}
    reply = await create(session, sim, body=too_long)
    assert reply.status == 400
    assert "30 days" in reply.data["message"]


async def test_unknown_or_foreign_export_ids_get_404(
    sim: Simulator, session: aiohttp.ClientSession
) -> None:
    """Polling an unknown id, or another merchant's export, is a 404."""
    export_id = (await create(session, sim)).data["id"]
    assert (await poll(session, sim, export_id, merchant="M3", token="tok-3")).status == 404
    assert (await poll(session, sim, "NOSUCHEXPORT1")).status == 404
    assert (await poll(session, sim, export_id)).status == 200


async def test_creates_beyond_the_concurrency_limit_get_busy_503(
    sim: Simulator, session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    """With max_concurrent_exports running, a create is a busy 503 until one finishes."""
    for merchant, token in [("M1", "tok-1"), ("M3", "tok-3"), ("M1", "tok-1")]:
        assert (await create(session, sim, merchant=merchant, token=token)).status == 200
    assert sim.running_exports() == 3
    refused = await create(session, sim, merchant="M3", token="tok-3")
    assert refused.status == 503
    assert refused.data == {"message": "Too many concurrent exports, please retry later"}
    clock.advance(LONG_S)
    assert sim.running_exports() == 0
    assert (await create(session, sim)).status == 200
    assert sim.stats.busy_503s == 1
    assert sim.stats.max_running == 3
    assert sim.stats.exports_created == 4


@pytest.mark.parametrize(
    ("window_body", "expected"),
    [
        ("hours", b'{"message": "The export API is only available between 10:00 and 15:00 UTC"}'),
        ("bare", b""),
    ],
)
async def test_outside_the_window_creates_get_503(
    clock: FakeClock, session: aiohttp.ClientSession, window_body: str, expected: bytes
) -> None:
    """Outside the window a create is a 503 whose body speaks of hours, or is empty."""
    settings = make_settings(window=lambda now: now.hour == 23, window_body=window_body)
    async with Simulator(settings, clock) as sim:
        reply = await create(session, sim)
        assert (reply.status, reply.raw) == (503, expected)
        clock.advance(11 * 3600)
        assert (await create(session, sim)).status == 200
        assert sim.stats.window_503s == 1
        assert sim.stats.busy_503s == 0


# -- rate limits ----------------------------------------------------------------------------


async def test_more_than_16_requests_a_second_per_token_get_429(
    sim: Simulator, session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    """The 17th request of a token within one second is a 429 naming the token limit."""
    statuses = [(await poll(session, sim, "NOSUCHEXPORT1")).status for _ in range(16)]
    assert statuses == [404] * 16
    refused = await poll(session, sim, "NOSUCHEXPORT1")
    assert refused.status == 429
    assert "X-RateLimit-tokenLimit" in refused.headers
    assert (await poll(session, sim, "NOSUCHEXPORT1", merchant="M3", token="tok-3")).status == 404
    clock.advance(1.0)
    assert (await poll(session, sim, "NOSUCHEXPORT1")).status == 404
    assert sim.stats.rate_limited == {"X-RateLimit-tokenLimit": 1}


async def test_requests_over_the_app_rate_get_429_across_tokens(
    clock: FakeClock, session: aiohttp.ClientSession
) -> None:
    """Requests of all tokens together beyond app_requests_per_s get a cross-token 429."""
    async with Simulator(make_settings(app_requests_per_s=3), clock) as sim:
        for merchant, token in [("M1", "tok-1"), ("M3", "tok-3"), ("M1", "tok-1")]:
            assert (await poll(session, sim, "X", merchant=merchant, token=token)).status == 404
        refused = await poll(session, sim, "X", merchant="M3", token="tok-3")
        assert refused.status == 429
        assert "X-RateLimit-crossTokenLimit" in refused.headers
        assert sim.stats.rate_limited == {"X-RateLimit-crossTokenLimit": 1}


@pytest.mark.parametrize(
    ("overrides", "tokens", "header"),
    [
        ({"token_concurrent": 2}, ["tok-1", "tok-1", "tok-1"], "X-RateLimit-tokenConcurrentLimit"),
        (
            {"app_concurrent": 2},
            ["tok-1", "tok-3", "tok-1"],
            "X-RateLimit-crossTokenConcurrentLimit",
        ),
    ],
    ids=["token", "app"],
)
async def test_too_many_requests_in_flight_get_429_with_retry_after(
    session: aiohttp.ClientSession, overrides: dict[str, int], tokens: list[str], header: str
) -> None:
    """A request beyond the concurrent limit is a 429 naming it, with Retry-After: 1."""
    # Slow ticks keep the first requests in flight until the last one has arrived.
    clock = FakeClock(NOW, tick_s=0.2)
    async with Simulator(make_settings(api_latency_s=1.0, **overrides), clock) as sim:
        merchants = {"tok-1": "M1", "tok-3": "M3"}
        replies = await asyncio.gather(
            *(poll(session, sim, "X", merchant=merchants[t], token=t) for t in tokens)
        )
        refused = [reply for reply in replies if reply.status == 429]
        assert sorted(reply.status for reply in replies) == [404, 404, 429]
        assert refused[0].headers[header]
        assert refused[0].headers["Retry-After"] == "1"
        assert sim.stats.rate_limited == {header: 1}
        assert clock.monotonic() >= 1.0


# -- tokens ---------------------------------------------------------------------------------


async def test_refresh_tokens_are_single_use_and_reuse_is_detected(
    sim: Simulator, session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    """A refresh gives a working token pair; the old refresh token then fails and is counted."""
    first = await refresh(session, sim, "app-4", "refresh-4")
    assert first.status == 200
    tokens = first.data
    now_s = int(NOW.timestamp())
    assert tokens["access_token_expiration"] == now_s + 3600
    assert tokens["refresh_token_expiration"] == now_s + 86400 * 30
    assert (await create(session, sim, merchant="M4", token=tokens["access_token"])).status == 200
    assert (await create(session, sim, merchant="M1", token=tokens["access_token"])).status == 401

    assert (await refresh(session, sim, "app-4", "refresh-4")).status == 401
    assert sim.stats.refresh_reuse == 1
    assert (await refresh(session, sim, "other-app", tokens["refresh_token"])).status == 401
    clock.advance(1800)
    second = await refresh(session, sim, "app-4", tokens["refresh_token"])
    assert second.status == 200
    assert sim.stats.refreshes == 2

    clock.advance(1799)
    assert (
        await poll(session, sim, "X", merchant="M4", token=tokens["access_token"])
    ).status == 404
    clock.advance(1)
    assert (
        await poll(session, sim, "X", merchant="M4", token=tokens["access_token"])
    ).status == 401
    newest = second.data["access_token"]
    assert (await poll(session, sim, "X", merchant="M4", token=newest)).status == 404


def test_secrets_stay_out_of_reprs() -> None:
    """An account's tokens appear in no repr, nor in the settings' repr."""
    account = Account(token="sekrit-1", refresh_token="sekrit-2", client_id="app")
    settings = make_settings(accounts={"M1": account})
    assert "sekrit" not in repr(settings)


# -- files ----------------------------------------------------------------------------------


async def test_files_expire_with_the_configured_status(
    clock: FakeClock, session: aiohttp.ClientSession
) -> None:
    """A file fetched after availableUntil gets expired_status."""
    async with Simulator(make_settings(file_ttl_s=LONG_S, expired_status=410), clock) as sim:
        done = await finished(session, sim, clock)
        link = urls(done)[0]
        clock.advance(done["availableUntil"] / 1000 - clock.now().timestamp() - 0.5)
        assert (await call(session, "GET", link)).status == 200
        clock.advance(1.0)
        assert (await call(session, "GET", link)).status == 410


async def test_file_host_counts_requests_carrying_authorization(
    sim: Simulator, session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    """A token sent to the file host is served but counted, so tests can catch the leak."""
    link = urls(await finished(session, sim, clock))[0]
    assert (await call(session, "GET", link, "tok-1")).status == 200
    assert (await call(session, "GET", link)).status == 200
    assert sim.stats.file_auth_headers == 1


async def test_unknown_file_paths_get_404(
    sim: Simulator, session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    """A guessed or out-of-range file URL is a 404."""
    link = urls(await finished(session, sim, clock))[0]
    assert (await call(session, "GET", link.replace("-0.json", "-99.json"))).status == 404
    assert (await call(session, "GET", f"{sim.file_url}/exports/{'0' * 32}/X-0.json")).status == 404


# -- data -----------------------------------------------------------------------------------


def test_objects_spread_over_the_data_range_in_clover_shapes(clock: FakeClock) -> None:
    """Objects cover [data_start, data_end) at about objects_per_day, with unique ids."""
    sim = Simulator(make_settings(), clock)
    days = (DATA_END - DATA_START).days
    for kind in ("ORDERS", "PAYMENTS"):
        objects = sim.all_objects("M1", kind)
        assert 0.7 * 20 * days < len(objects) < 1.3 * 20 * days
        created = [obj["createdTime"] for obj in objects]
        assert created == sorted(created)
        assert DATA_START.timestamp() * 1000 <= created[0]
        assert created[-1] < DATA_END.timestamp() * 1000
        assert len({obj["id"] for obj in objects}) == len(objects)
        assert all(re.fullmatch(r"[A-Z0-9]{13}", obj["id"]) for obj in objects)
    order = sim.all_objects("M1", "ORDERS")[0]
    assert order["currency"] == "USD"
    assert (order["state"], order["paymentState"]) == ("locked", "PAID")
    assert order["lineItems"]["elements"][0].keys() >= {"id", "name", "price"}
    payment = sim.all_objects("M1", "PAYMENTS")[0]
    assert payment["result"] == "SUCCESS"
    assert payment["tender"]["label"] == "Credit Card"
    assert payment["cardTransaction"]["type"] == "AUTH"
    assert payment.keys() >= {"order", "amount", "tipAmount", "taxAmount", "clientCreatedTime"}


def test_objects_not_yet_created_do_not_exist(clock: FakeClock) -> None:
    """Before an object's createdTime comes, no query returns it."""
    sim = Simulator(make_settings(), FakeClock(datetime(2024, 2, 1, tzinfo=UTC)))
    visible = sim.all_objects("M1", "ORDERS")
    cutoff = datetime(2024, 2, 1, tzinfo=UTC).timestamp() * 1000
    assert visible
    assert all(obj["createdTime"] <= cutoff for obj in visible)
    assert len(visible) < len(Simulator(make_settings(), clock).all_objects("M1", "ORDERS"))


async def test_an_edit_shows_now_but_not_in_files_of_an_earlier_export(
    sim: Simulator, session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    """An edit bumps modifiedTime and the amount; files already DONE keep the old version."""
    before = await finished(session, sim, clock)
    original = sim.objects("M1", "ORDERS", *RANGE)[0]
    edited = sim.edit("M1", "ORDERS", original["id"])
    assert edited["modifiedTime"] == int(clock.now().timestamp() * 1000)
    assert edited["total"] < original["total"]
    assert sim.objects("M1", "ORDERS", *RANGE)[0] == edited

    old_file = await call(session, "GET", urls(before)[0])
    assert old_file.data["elements"][0] == original
    after = await finished(session, sim, clock)
    new_file = await call(session, "GET", urls(after)[0])
    assert new_file.data["elements"][0] == edited


async def test_with_a_modified_time_filter_an_edit_moves_the_object(
    clock: FakeClock, session: aiohttp.ClientSession
) -> None:
    """Filtering on modifiedTime, an edited object leaves its old range and joins the recent."""
    async with Simulator(make_settings(filter_field="modifiedTime"), clock) as sim:
        original = sim.objects("M1", "PAYMENTS", *RANGE)[0]
        clock.advance(3600.0)  # past every unedited object's modifiedTime
        edited = sim.edit("M1", "PAYMENTS", original["id"])
        now_ms = int(clock.now().timestamp() * 1000)
        assert original["id"] not in {obj["id"] for obj in sim.objects("M1", "PAYMENTS", *RANGE)}
        body = {"type": "PAYMENTS", "startTime": now_ms - 60_000, "endTime": now_ms}
        done = await finished(session, sim, clock, body=body)
        file = await call(session, "GET", urls(done)[0])
        assert file.data["elements"] == [edited]


@pytest.mark.fresh_data
async def test_the_same_seed_gives_the_same_files_byte_for_byte(
    session: aiohttp.ClientSession,
) -> None:
    """Two simulators with one seed serve identical files; another seed serves others."""

    async def bodies(seed: int) -> list[bytes]:
        clock = FakeClock(NOW)
        async with Simulator(make_settings(seed=seed), clock) as sim:
            done = await finished(session, sim, clock)
            return [(await call(session, "GET", link)).raw for link in urls(done)]

    first = await bodies(7)
    assert first == await bodies(7)
    assert first != await bodies(8)


def test_the_workers_copy_of_the_objects_is_what_generate_makes_and_each_callers_own() -> None:
    """tests/simdata.py gives the objects `generate` makes for the same arguments, and
    each call objects of its own: a simulator that edits or sorts them changes no other's."""
    args = (3, "M1", "ORDERS", datetime(2024, 1, 1, tzinfo=UTC), datetime(2024, 1, 5, tzinfo=UTC))
    made = generate(*args, 20.0)
    first = generate_once(*args, 20.0)
    assert first == made
    first[0]["total"] = -1
    first.reverse()
    assert generate_once(*args, 20.0) == made
    assert generate_once(*args, 40.0) == generate(*args, 40.0) != made


async def test_a_restarted_simulator_never_reuses_export_ids(
    session: aiohttp.ClientSession,
) -> None:
    """Export ids repeat for the same seed and start instant, and differ after a restart."""

    async def first_id(start: datetime) -> str:
        async with Simulator(make_settings(), FakeClock(start)) as sim:
            export_id: str = (await create(session, sim)).data["id"]
            return export_id

    assert await first_id(NOW) == await first_id(NOW)
    assert await first_id(NOW) != await first_id(NOW + timedelta(seconds=1))


# -- stats ----------------------------------------------------------------------------------


async def test_stats_integrate_running_exports_over_time(
    sim: Simulator, session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    """running_seconds sums each export's running time; first and last instants are kept."""
    quiet = {"type": "ORDERS", "startTime": 0, "endTime": DAY_MS}  # no objects: runs 6 s
    await create(session, sim, body=quiet)
    clock.advance(2.0)
    await create(session, sim, body=quiet)
    clock.advance(1.0)
    assert sim.stats.running_seconds == pytest.approx(3.0 + 1.0)
    clock.advance(LONG_S)
    stats = sim.stats
    assert stats.running_seconds == pytest.approx(12.0)
    assert stats.max_running == 2
    assert stats.first_create_at == NOW
    assert stats.last_done_at == datetime(2024, 3, 1, 12, 0, 8, tzinfo=UTC)
    assert stats.exports_by_final_state == {"DONE": 2}
    assert stats.requests == {"create": 2}


async def test_stats_keep_each_export_span_and_each_busy_503_instant(
    sim: Simulator, session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    """Each ended export's (id, created, ended) and each busy 503's instant are kept."""
    quiet = {"type": "ORDERS", "startTime": 0, "endTime": DAY_MS}  # no objects: runs 6 s
    sim.faults.script("busy_503", times=1)
    assert (await create(session, sim, body=quiet)).status == 503
    clock.advance(2.0)
    export_id = (await create(session, sim, body=quiet)).data["id"]
    assert sim.stats.export_spans == []  # still running
    clock.advance(LONG_S)
    start_s = NOW.timestamp()
    assert sim.stats.busy_503_times == [start_s]
    assert sim.stats.export_spans == [(export_id, start_s + 2.0, start_s + 8.0)]


async def test_stats_endpoint_serves_the_stats_as_json_without_auth(
    sim: Simulator, session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    """GET /_simulator/stats returns as_dict() as JSON, instants in ISO 8601."""
    await finished(session, sim, clock)
    reply = await call(session, "GET", f"{sim.api_url}/_simulator/stats")
    assert reply.status == 200
    assert reply.data == json.loads(json.dumps(sim.stats.as_dict()))
    assert reply.data["exports_created"] == 1
    assert reply.data["first_create_at"] == NOW.isoformat()
    assert reply.data["requests"] == {"create": 1, "poll": 1}


# -- faults ---------------------------------------------------------------------------------


async def test_scripted_faults_hit_exactly_the_next_eligible_requests(
    sim: Simulator, session: aiohttp.ClientSession
) -> None:
    """script(busy_503, times=2) refuses the next two creates, under the limit, then stops."""
    sim.faults.script("busy_503", times=2)
    statuses = [(await create(session, sim)).status for _ in range(3)]
    assert statuses == [503, 503, 200]
    assert sim.stats.busy_503s == 2
    assert sim.stats.faults_injected == {"busy_503": 2}


async def test_a_window_503_fault_looks_like_a_closed_window(
    sim: Simulator, session: aiohttp.ClientSession
) -> None:
    """An injected window_503 answers the hours body although the window is open."""
    sim.faults.script(FaultKind.WINDOW_503)
    reply = await create(session, sim)
    assert reply.status == 503
    assert "only available between" in reply.data["message"]
    assert sim.stats.window_503s == 1


async def test_api_5xx_fails_one_call_and_the_retry_succeeds(
    sim: Simulator, session: aiohttp.ClientSession
) -> None:
    """An injected api_5xx answers 500, 502 or 504 once."""
    sim.faults.script("api_5xx")
    assert (await create(session, sim)).status in {500, 502, 504}
    assert (await create(session, sim)).status == 200
    assert sim.stats.faults_injected == {"api_5xx": 1}


async def test_api_reset_drops_the_connection_without_a_response(
    sim: Simulator, fresh_session: aiohttp.ClientSession
) -> None:
    """An injected api_reset closes the socket: the client sees a server disconnect."""
    sim.faults.script("api_reset")
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await create(fresh_session, sim)
    assert (await create(fresh_session, sim)).status == 200


async def test_api_429_fault_names_one_of_the_four_limits(
    sim: Simulator, session: aiohttp.ClientSession
) -> None:
    """An injected api_429 carries a rate-limit header, and Retry-After when on concurrency."""
    sim.faults.script("api_429", times=8)
    for _ in range(8):
        reply = await poll(session, sim, "X")
        assert reply.status == 429
        [header] = RATE_HEADERS & set(reply.headers)
        assert ("Retry-After" in reply.headers) == ("Concurrent" in header)
    assert sum(sim.stats.rate_limited.values()) == 8


async def test_api_slow_delays_the_response_by_slow_s(
    clock: FakeClock, session: aiohttp.ClientSession
) -> None:
    """An injected api_slow answers normally but slow_s later on the clock."""
    async with Simulator(make_settings(), clock, Faults(slow_s=30.0)) as sim:
        sim.faults.script("api_slow")
        assert (await create(session, sim)).status == 200
        assert clock.monotonic() >= 30.0


async def test_probabilities_draw_from_the_seed(session: aiohttp.ClientSession) -> None:
    """A probability fails some requests, not all, and the same seed fails the same ones."""

    async def statuses() -> list[int]:
        async with Simulator(make_settings(), FakeClock(NOW), Faults(api_5xx=0.5)) as sim:
            return [(await poll(session, sim, "X")).status for _ in range(16)]

    first = await statuses()
    assert {404} < set(first) <= {404, 500, 502, 504}
    assert first == await statuses()


async def test_an_export_failed_fault_ends_the_export_failed_partway(
    sim: Simulator, session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    """An export fated to fail shows FAILED below 100 percent and frees its slot."""
    sim.faults.script("export_failed")
    done = await finished(session, sim, clock)
    assert done["status"] == "FAILED"
    assert 0 <= done["percentComplete"] < 100
    assert "exportUrls" not in done
    assert sim.running_exports() == 0
    assert sim.stats.exports_by_final_state == {"FAILED": 1}


async def test_a_stuck_export_stops_rising_then_fails(
    clock: FakeClock, session: aiohttp.ClientSession
) -> None:
    """A stuck export holds its percent and its slot until stuck_fail_after_s, then FAILED."""
    async with Simulator(make_settings(stuck_fail_after_s=1000.0), clock) as sim:
        sim.faults.script("export_stuck")
        export_id = (await create(session, sim)).data["id"]
        clock.advance(100.0)
        stuck = (await poll(session, sim, export_id)).data
        clock.advance(800.0)
        still = (await poll(session, sim, export_id)).data
        assert stuck["status"] == still["status"] == "IN_PROGRESS"
        assert stuck["percentComplete"] == still["percentComplete"] < 100
        assert sim.running_exports() == 1
        clock.advance(200.0)
        assert (await poll(session, sim, export_id)).data["status"] == "FAILED"
        assert sim.running_exports() == 0


async def test_done_without_urls_fault(
    sim: Simulator, session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    """An export fated so ends DONE with no exportUrls."""
    sim.faults.script("done_without_urls")
    done = await finished(session, sim, clock)
    assert done["status"] == "DONE"
    assert "exportUrls" not in done


async def test_a_forgotten_export_answers_404_later(
    sim: Simulator, session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    """An export the server forgets polls fine at first, then 404, and frees its slot."""
    sim.faults.script("export_forgotten")
    export_id = (await create(session, sim)).data["id"]
    assert (await poll(session, sim, export_id)).status == 200
    clock.advance(LONG_S)
    assert (await poll(session, sim, export_id)).status == 404
    assert sim.running_exports() == 0
    assert sim.stats.exports_by_final_state == {"FORGOTTEN": 1}


@pytest.fixture
async def file_link(
    sim: Simulator, session: aiohttp.ClientSession, clock: FakeClock
) -> tuple[str, bytes]:
    """The URL of a DONE export's first file and its intact body."""
    link = urls(await finished(session, sim, clock))[0]
    return link, (await call(session, "GET", link)).raw


async def test_file_5xx_fails_one_download(
    sim: Simulator, session: aiohttp.ClientSession, file_link: tuple[str, bytes]
) -> None:
    """An injected file_5xx answers a 5xx once; the retry gets the file."""
    link, body = file_link
    sim.faults.script("file_5xx")
    assert (await call(session, "GET", link)).status in {500, 502, 503, 504}
    assert (await call(session, "GET", link)).raw == body


async def test_file_reset_drops_the_connection(
    sim: Simulator, fresh_session: aiohttp.ClientSession, file_link: tuple[str, bytes]
) -> None:
    """file_reset closes the socket unanswered; aiohttp retries a GET once, so two show."""
    link, body = file_link
    sim.faults.script("file_reset", times=2)
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await call(fresh_session, "GET", link)
    assert sim.stats.faults_injected == {"file_reset": 2}
    assert (await call(fresh_session, "GET", link)).raw == body


async def test_file_truncated_is_a_short_body(
    sim: Simulator, session: aiohttp.ClientSession, file_link: tuple[str, bytes]
) -> None:
    """file_truncated announces the full length, sends half, closes: a payload error."""
    link, body = file_link
    sim.faults.script("file_truncated")
    async with session.get(link) as response:
        assert response.status == 200
        assert int(response.headers["Content-Length"]) == len(body)
        with pytest.raises(aiohttp.ClientPayloadError):
            await response.read()
    assert (await call(session, "GET", link)).raw == body


async def test_file_slow_sends_the_body_in_pieces_over_time(
    clock: FakeClock, sim: Simulator, session: aiohttp.ClientSession, file_link: tuple[str, bytes]
) -> None:
    """file_slow delivers the intact body, with slow_s of clock time between pieces."""
    link, body = file_link
    sim.faults.slow_s = 7.0
    sim.faults.script("file_slow")
    started = clock.monotonic()
    assert (await call(session, "GET", link)).raw == body
    assert clock.monotonic() - started >= 3 * 7.0


async def test_file_bad_json_is_garbage_of_the_announced_length(
    sim: Simulator, session: aiohttp.ClientSession, file_link: tuple[str, bytes]
) -> None:
    """file_bad_json sends a body of the right length that is not JSON."""
    link, body = file_link
    sim.faults.script("file_bad_json")
    reply = await call(session, "GET", link)
    assert reply.status == 200
    assert len(reply.raw) == len(body) == int(reply.headers["Content-Length"])
    with pytest.raises(ValueError, match="Expecting value"):
        json.loads(reply.raw)


async def test_file_oversize_holds_1001_objects(
    sim: Simulator, session: aiohttp.ClientSession, file_link: tuple[str, bytes]
) -> None:
    """file_oversize serves one object more than Clover's 1000 per file."""
    link, body = file_link
    sim.faults.script("file_oversize")
    elements = (await call(session, "GET", link)).data["elements"]
    assert len(elements) == 1001
    assert elements[: len(json.loads(body)["elements"])] == json.loads(body)["elements"]


async def test_file_expired_early_answers_the_expired_status_before_its_time(
    sim: Simulator, session: aiohttp.ClientSession, file_link: tuple[str, bytes]
) -> None:
    """file_expired_early answers expired_status although availableUntil is still ahead."""
    link, body = file_link
    sim.faults.script("file_expired_early")
    assert (await call(session, "GET", link)).status == 403
    assert (await call(session, "GET", link)).raw == body
    assert sim.stats.faults_injected == {"file_expired_early": 1}


def test_faults_reject_unknown_kinds_and_bad_probabilities() -> None:
    """Faults refuse a kind they do not know and a probability outside 0..1."""
    faults = Faults()
    with pytest.raises(ValueError, match="nonsense"):
        faults.script("nonsense")
    with pytest.raises(ValueError, match=r"0\.\.1"):
        faults.set_probability("api_5xx", 1.5)
    faults.set_probability("api_5xx", 0.25)
    assert faults.api_5xx == 0.25


# -- the unknowns, each played every way ----------------------------------------------------

EMPTY_RANGE = (JAN_10 - 40 * DAY_MS, JAN_10 - 20 * DAY_MS - 1)  # in December: before the data


@pytest.mark.parametrize(
    ("empty_exports", "export_urls"),
    [
        ("file", {"elements": ["one"]}),
        ("no_elements", {"elements": []}),
        ("no_urls", None),
    ],
)
async def test_an_empty_export_answers_as_set(
    clock: FakeClock,
    session: aiohttp.ClientSession,
    empty_exports: str,
    export_urls: dict[str, Any] | None,
) -> None:
    """A range without objects ends DONE with one empty file, an empty exportUrls, or none."""
    async with Simulator(make_settings(empty_exports=empty_exports), clock) as sim:
        body = {"type": "ORDERS", "startTime": EMPTY_RANGE[0], "endTime": EMPTY_RANGE[1]}
        done = await finished(session, sim, clock, body=body)
        assert done["status"] == "DONE"
        if export_urls is None:
            assert "exportUrls" not in done
        elif export_urls["elements"]:
            (url,) = urls(done)
            assert (await call(session, "GET", url)).data == {"elements": []}
        else:
            assert done["exportUrls"] == {"elements": []}


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
async def test_files_can_come_compressed_whatever_was_asked(
    clock: FakeClock, session: aiohttp.ClientSession, encoding: str
) -> None:
    """With a file encoding set, the body is compressed, Content-Length counts the compressed
    bytes, and it decodes to the same JSON as an identity file (asked for or not)."""
    async with (
        Simulator(make_settings(file_encoding=encoding), clock) as packed,
        Simulator(make_settings(), clock) as plain,
    ):
        packed_url = urls(await finished(session, packed, clock))[0]
        plain_url = urls(await finished(session, plain, clock))[0]
        headers = {"Accept-Encoding": "identity"}
        async with session.get(packed_url, auto_decompress=False, headers=headers) as response:
            assert response.headers["Content-Encoding"] == encoding
            raw = await response.read()
            assert response.content_length == len(raw)
        decoded = gzip.decompress(raw) if encoding == "gzip" else zlib.decompress(raw)
        assert decoded == (await call(session, "GET", plain_url)).raw
        assert json.loads(decoded)["elements"]


async def test_header_names_can_go_out_lower_case(
    clock: FakeClock, session: aiohttp.ClientSession
) -> None:
    """With header_case "lower", every header name on the wire is lower case, a 429's
    retry-after and x-ratelimit-* and a file's content-length included."""
    faults = Faults(rate_limit_header="X-RateLimit-tokenConcurrentLimit")
    settings = make_settings(header_case="lower", retry_after_s=7)
    async with Simulator(settings, clock, faults) as sim:
        url = urls(await finished(session, sim, clock))[0]
        faults.script(FaultKind.API_429)
        async with session.get(f"{sim.api_url}/v3/merchants/M1", headers=bearer()) as response:
            assert response.status == 429
            names = [name for name, _ in response.raw_headers]
            assert b"retry-after" in names
            assert b"x-ratelimit-tokenconcurrentlimit" in names
            assert response.headers["Retry-After"] == "7"
        async with session.get(url) as response:
            file_names = [name for name, _ in response.raw_headers]
            assert b"content-length" in file_names
        assert all(name == name.lower() for name in names + file_names)


async def test_file_urls_can_point_at_the_api_host(
    clock: FakeClock, session: aiohttp.ClientSession
) -> None:
    """With file_host "api", the URLs name the API host, and it serves the files."""
    async with Simulator(make_settings(file_host="api"), clock) as sim:
        file_urls = urls(await finished(session, sim, clock))
        assert all(u.startswith(f"{sim.api_url}/exports/") for u in file_urls)
        assert (await call(session, "GET", file_urls[0])).data["elements"]


async def test_a_missing_permission_can_answer_401_and_the_merchant_still_reads(
    clock: FakeClock, session: aiohttp.ClientSession
) -> None:
    """With permission_status 401, a create without the permission answers 401 like a bad
    token, while GET /v3/merchants/{mId} with the same token answers 200."""
    async with Simulator(make_settings(permission_status=401), clock) as sim:
        refused = await create(session, sim, merchant="M2", token="tok-2")
        assert refused.status == 401
        read = await call(session, "GET", f"{sim.api_url}/v3/merchants/M2", "tok-2")
        assert (read.status, read.data["id"]) == (200, "M2")
        unknown = await call(session, "GET", f"{sim.api_url}/v3/merchants/M2", "not-a-token")
        assert unknown.status == 401
        assert sim.stats.permission_denied == 1
        assert sim.stats.bad_tokens == 1


async def test_a_lost_create_answer_still_made_the_export(
    clock: FakeClock, fresh_session: aiohttp.ClientSession
) -> None:
    """The create_lost fault makes the export, then drops the connection or answers 502/504."""
    faults = Faults()
    faults.script(FaultKind.CREATE_LOST, times=6)
    async with Simulator(make_settings(max_concurrent_exports=10), clock, faults) as sim:
        outcomes: set[str] = set()
        for _ in range(6):
            try:
                outcomes.add(str((await create(fresh_session, sim)).status))
            except aiohttp.ClientError:
                outcomes.add("reset")
        assert outcomes <= {"reset", "502", "504"}
        assert len(outcomes) >= 2
        assert sim.stats.exports_created == 6
        assert sim.running_exports() == 6


@pytest.mark.parametrize(
    ("count", "percents"),
    [
        ("steady", [0, 0, 25, 74, 94, 100]),
        ("none", [0, 0, 0, 0, 0, 100]),
        ("jumpy", [0, 0, 25, 67, 94, 100]),
    ],
)
async def test_percent_complete_is_played_as_the_progress_count_says(
    clock: FakeClock, session: aiohttp.ClientSession, count: str, percents: list[int]
) -> None:
    """A steady count of the work done; none at all until DONE; or a jumpy one, 7 points under
    the steady count on every third second of the clock (here at 84 s: 74 shown as 67)."""
    settings = make_settings(
        pending_s=10.0, export_base_s=100.0, export_per_object_s=0.0, progress_count=count
    )
    async with Simulator(settings, clock) as sim:
        export_id = (await create(session, sim)).data["id"]
        seen = []
        for step_s in (5.0, 5.0, 25.0, 49.0, 20.0, 6.0):
            clock.advance(step_s)
            seen.append((await poll(session, sim, export_id)).data["percentComplete"])
        assert seen == percents


async def test_done_can_be_called_complete(
    clock: FakeClock, session: aiohttp.ClientSession
) -> None:
    """With done_status COMPLETE, a finished export says so, with its files."""
    async with Simulator(make_settings(done_status="COMPLETE"), clock) as sim:
        done = await finished(session, sim, clock)
        assert done["status"] == "COMPLETE"
        assert urls(done)


async def test_requests_as_clovers_sample_sends_them_are_accepted(
    clock: FakeClock, session: aiohttp.ClientSession, sim: Simulator
) -> None:
    """Clover's Python sample POSTs to `/exports/` with `?access_token=` and string times;
    the simulator takes it, and the poll with the token in the query too."""
    body = {"type": "PAYMENTS", "startTime": str(RANGE[0]), "endTime": str(RANGE[1])}
    query = {"access_token": M1_TOKEN}
    url = f"{sim.api_url}/v3/merchants/M1/exports/"
    created = await call(session, "POST", url, json=body, params=query)
    assert created.status == 200, created.raw
    clock.advance(LONG_S)
    polled = await call(session, "GET", url + created.data["id"], params=query)
    assert polled.data["status"] == "DONE"
    assert sim.stats.sample_requests == {
        "trailing_slash": 1,
        "access_token_query": 1,
        "string_times": 1,
    }
    wrong = await call(session, "POST", url, json=body, params={"access_token": "nope"})
    assert wrong.status == 401


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("file_encoding", "brotli"),
        ("empty_exports", "nothing"),
        ("permission_status", 404),
        ("header_case", "upper"),
        ("file_host", "cdn"),
        ("done_status", "FINISHED"),
        ("progress_count", "smooth"),
    ],
)
def test_an_unknown_way_of_playing_is_refused(setting: str, value: object) -> None:
    """A switch set to a value it does not know is a ValueError naming the setting."""
    with pytest.raises(ValueError, match=setting):
        make_settings(**{setting: value})


def bearer(token: str = M1_TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# -- `harvester simulate` -------------------------------------------------------------------


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv)


def test_flags_become_settings_and_faults(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every simulate flag lands in the settings or the faults."""
    monkeypatch.delenv(MERCHANTS_ENV, raising=False)
    argv = (
        "--seed 9 --merchant M1=tok-1 --merchant M2=tok-2 --refresh-merchant M3=app:refresh-3"
        " --no-permission M2 --max-concurrent-exports 2 --data-from 2024-02-01"
        " --data-to 2024-03-01 --objects-per-day 7.5 --objects-per-file 10 --export-seconds 2"
        " --file-ttl-s 60 --window-open-hours 10:00-15:30 --fault api_5xx=0.1"
        " --fault file_slow=1 --latency-s 0.25 --file-encoding gzip --empty-exports no_urls"
        " --permission-status 401 --header-case lower --file-host api --done-status COMPLETE"
        " --progress-count jumpy"
        " --fault create_lost=0.08 --token-requests-per-s 8 --token-concurrent 2"
        " --app-requests-per-s 20 --app-concurrent 4"
    )
    settings, faults = settings_from_args(parse(*argv.split()))
    assert settings.accounts["M1"].token == "tok-1"
    assert not settings.accounts["M2"].export_permission
    assert settings.accounts["M3"].refresh_token == "refresh-3"
    assert settings.accounts["M3"].client_id == "app"
    assert settings.seed == 9
    assert settings.max_concurrent_exports == 2
    assert (settings.data_start, settings.data_end) == (
        datetime(2024, 2, 1, tzinfo=UTC),
        datetime(2024, 3, 1, tzinfo=UTC),
    )
    assert (settings.objects_per_day, settings.objects_per_file) == (7.5, 10)
    assert (settings.export_base_s, settings.file_ttl_s, settings.api_latency_s) == (2, 60, 0.25)
    assert settings.window_hours_text == "10:00 and 15:30"
    assert settings.window is not None
    assert settings.window(datetime(2024, 1, 1, 15, 29, tzinfo=UTC))
    assert not settings.window(datetime(2024, 1, 1, 15, 30, tzinfo=UTC))
    assert (faults.api_5xx, faults.file_slow, faults.api_reset) == (0.1, 1.0, 0.0)
    assert faults.create_lost == 0.08
    assert (settings.file_encoding, settings.empty_exports) == ("gzip", "no_urls")
    assert (settings.permission_status, settings.header_case) == (401, "lower")
    assert (settings.file_host, settings.done_status) == ("api", "COMPLETE")
    assert (settings.token_requests_per_s, settings.token_concurrent) == (8, 2)
    assert (settings.app_requests_per_s, settings.app_concurrent) == (20, 4)
    assert settings.progress_count == "jumpy"


def test_merchants_come_from_the_environment_without_merchant_flags(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without --merchant, SIMULATOR_MERCHANTS="ID=TOKEN,ID=TOKEN" names the merchants."""
    monkeypatch.setenv(MERCHANTS_ENV, "M1=tok-1, M2=tok-2")
    settings, _ = settings_from_args(parse())
    assert {m: a.token for m, a in settings.accounts.items()} == {"M1": "tok-1", "M2": "tok-2"}
    assert settings.window is None


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["--host", "192.0.2.10"], "--host"),
        (["--merchant", "M1"], "--merchant"),
        (["--merchant", "M1=a", "--merchant", "M1=b"], "--merchant"),
        (["--refresh-merchant", "M9=no-client"], "--refresh-merchant"),
        (["--no-permission", "M9"], "--no-permission"),
        (["--data-from", "2024-13-01"], "--data-from"),
        (["--data-to", "2023-01-01"], "--data-to"),
        (["--objects-per-file", "1001"], "--objects-per-file"),
        (["--max-concurrent-exports", "0"], "--max-concurrent-exports"),
        (["--window-open-hours", "10-15"], "--window-open-hours"),
        (["--window-open-hours", "25:00-26:00"], "--window-open-hours"),
        (["--fault", "gremlins=0.5"], "--fault"),
        (["--fault", "api_5xx=2"], "--fault"),
        (["--port", "70000"], "--port"),
        (["--latency-s", "-1"], "--latency-s"),
        (["--app-requests-per-s", "0"], "--app-requests-per-s"),
        (["--app-concurrent", "0"], "--app-concurrent"),
        (["--token-requests-per-s", "0"], "--token-requests-per-s"),
        (["--token-concurrent", "0"], "--token-concurrent"),
    ],
)
def test_bad_flags_raise_value_errors_naming_the_flag(
    monkeypatch: pytest.MonkeyPatch, argv: list[str], flag: str
) -> None:
    """Bad input is a ValueError whose message names the culprit flag."""
    monkeypatch.setenv(MERCHANTS_ENV, "M1=tok-1")
    with pytest.raises(ValueError, match=re.escape(flag)):
        settings_from_args(parse(*argv))


def test_no_merchants_at_all_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without --merchant, --refresh-merchant or the environment there is nothing to serve."""
    monkeypatch.delenv(MERCHANTS_ENV, raising=False)
    with pytest.raises(ValueError, match=MERCHANTS_ENV):
        settings_from_args(parse())


def test_a_malformed_merchant_never_echoes_its_token(monkeypatch: pytest.MonkeyPatch) -> None:
    """The error for a malformed merchant entry does not repeat the value, which holds a token."""
    monkeypatch.setenv(MERCHANTS_ENV, "sekrit-token-without-id")
    with pytest.raises(ValueError, match=MERCHANTS_ENV) as caught:
        settings_from_args(parse())
    assert "sekrit" not in str(caught.value)


@pytest.mark.parametrize(
    ("moment", "open_"),
    [(time(21, 59), False), (time(22, 0), True), (time(1, 0), True), (time(2, 0), False)],
)
def test_a_daily_window_past_midnight_wraps(moment: time, open_: bool) -> None:
    """22:00-02:00 is open late in the evening and early in the morning, closed between."""
    window = DailyWindow(time(22, 0), time(2, 0))
    assert window(datetime.combine(datetime(2024, 1, 1, tzinfo=UTC).date(), moment, UTC)) is open_


async def test_serve_prints_its_addresses_and_stops_when_told(
    capsys: pytest.CaptureFixture[str], session: aiohttp.ClientSession
) -> None:
    """serve() prints one line with both URLs, answers there, and returns once stop is set."""
    settings, faults = make_settings(), Faults()
    stop = asyncio.Event()
    task = asyncio.create_task(serve(settings, faults, "127.0.0.1", 0, None, stop, FakeClock(NOW)))
    printed = ""
    while not printed and not task.done():
        await asyncio.sleep(0)  # only yields: starting needs no waiting, just turns of the loop
        printed = capsys.readouterr().out
    address = r"(http://127\.0\.0\.1:\d+)"
    match = re.fullmatch(rf"simulator: api {address} files {address}\n", printed)
    assert match is not None
    api_url, file_url = match.groups()
    assert api_url != file_url
    assert (await call(session, "GET", f"{api_url}/_simulator/stats")).status == 200
    stop.set()
    await asyncio.wait_for(task, timeout=10)


async def test_the_most_requests_in_any_second_is_counted_refused_ones_too(
    clock: FakeClock, sim: Simulator, session: aiohttp.ClientSession
) -> None:
    """The server's own count of its busiest sliding second, 429s included: 3 polls, a pause
    of a second, then 5 more: the busiest second held 5."""
    for _ in range(3):
        await poll(session, sim, "X")
    clock.advance(1.0)
    for _ in range(5):
        await poll(session, sim, "X")
    assert sim.stats.max_requests_in_a_second == 5

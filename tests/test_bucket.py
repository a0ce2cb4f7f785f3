"""The output in a bucket, against a real S3 server (SeaweedFS on loopback): the folder's
layout and promises, streaming, faults, crashes, and refusals before any export."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import io
import json
import os
import random
import signal
import socket
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from harvester.clock import SystemClock
from harvester.clover.chunks import ExportType, TimeRange
from harvester.config import Bucket, Secret, Timing
from harvester.errors import BadFile, ConfigError, OutputError
from harvester.harvest.downloader import Downloader
from harvester.output.bucket import BucketChunk, BucketOutput, open_bucket
from harvester.output.folder import MANIFEST_NAME, ChunkOutput, Manifest, PartInfo
from harvester.simulator import Account, Faults, Simulator
from harvester.state.sqlite import Store
from tests.backfills import start_backfill
from tests.conftest import BUCKET, FAST_TIMING, Scenario, ids, new_token, sim_settings
from tests.fakeclock import FakeClock
from tests.faultproxy import Fault, fault_proxy
from tests.harness import harvest, simulated
from tests.seaweed import ACCESS_KEY, SECRET_KEY, SeaweedFS

MERCHANT = "MERCHANT00001"
JANUARY = TimeRange(datetime(2025, 1, 1, tzinfo=UTC), datetime(2025, 1, 31, tzinfo=UTC))
HARVESTED_AT = datetime(2025, 3, 1, 12, 30, 15, 250000, tzinfo=UTC)
MIB = 1024 * 1024
# Short retries: a fault test waits for botocore's real backoff, at most about a second.
TIMING = Timing(request_timeout_s=5.0, max_attempts=4)


def new_prefix() -> str:
    return f"t-{uuid.uuid4().hex[:12]}/out"


def bucket_top(endpoint_url: str, prefix: str, secret_key: str = SECRET_KEY) -> dict[str, Any]:
    """The config keys that send a scenario's output to the bucket."""
    return {
        "output_url": f"s3://{BUCKET}/{prefix}",
        "object_store": {
            "endpoint_url": endpoint_url,
            "access_key_id": ACCESS_KEY,
            "secret_access_key": secret_key,
        },
    }


def settings(endpoint_url: str, prefix: str, part_size_mib: int = 5) -> Bucket:
    return Bucket(
        url=f"s3://{BUCKET}/{prefix}",
        name=BUCKET,
        prefix=prefix,
        endpoint_url=endpoint_url,
        region=None,
        access_key_id=Secret(ACCESS_KEY),
        secret_access_key=Secret(SECRET_KEY),
        session_token=None,
        part_size_mib=part_size_mib,
    )


@asynccontextmanager
async def bucket_output(endpoint_url: str, prefix: str) -> AsyncIterator[BucketOutput]:
    async with open_bucket(settings(endpoint_url, prefix), TIMING, 8) as output:
        yield output


def export_file(count: int, tag: str = "a", padding: int = 0) -> bytes:
    pad = "x" * padding
    return json.dumps(
        {"elements": [{"id": f"{tag}{n}", "pad": pad} for n in range(count)]}
    ).encode()


part_name = ChunkOutput.part_name


def keys(client: Any, prefix: str) -> list[str]:
    found: list[str] = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
        found += [item["Key"] for item in page.get("Contents", [])]
    return sorted(found)


def read(client: Any, key: str) -> bytes:
    body: bytes = client.get_object(Bucket=BUCKET, Key=key)["Body"].read()
    return body


def unfinished_uploads(client: Any, prefix: str) -> list[str]:
    answer = client.list_multipart_uploads(Bucket=BUCKET, Prefix=prefix)
    return [upload["Key"] for upload in answer.get("Uploads", [])]


def bucket_harvested(client: Any, prefix: str, merchant_id: str, folder: str) -> list[Any]:
    """Every object in the `part-*.json` objects listed under one merchant and type."""
    objects: list[Any] = []
    for key in keys(client, f"{prefix}/{merchant_id}/{folder}/"):
        if key.rsplit("/", 1)[1].startswith("part-"):
            objects += json.loads(read(client, key))["elements"]
    return objects


def assert_bucket_exactly_once(scenario: Scenario, client: Any, prefix: str) -> int:
    """Listing part-*.json under each type's prefix yields the simulator's objects once."""
    found = 0
    for merchant in scenario.config().merchants:
        for export_type in merchant.types:
            start_ms = int(datetime(2025, 1, 1, tzinfo=UTC).timestamp() * 1000)
            end_ms = int(datetime(2025, 5, 1, tzinfo=UTC).timestamp() * 1000)
            expected = scenario.sim.objects(merchant.id, str(export_type), start_ms, end_ms - 1)
            got = bucket_harvested(client, prefix, merchant.id, export_type.folder)
            assert len(ids(got)) == len(set(ids(got))), f"duplicates for {merchant.id}"
            assert sorted(ids(got)) == sorted(ids(expected))
            found += len(got)
    return found


def assert_manifests_hold(client: Any, prefix: str) -> int:
    """Each chunk holds exactly its manifest's parts, each of the listed size and sha256."""
    everything = keys(client, f"{prefix}/")
    manifests = [key for key in everything if key.endswith(f"/{MANIFEST_NAME}")]
    chunks = {key.rsplit("/", 1)[0] for key in everything if "/.staging/" not in f"/{key}"}
    assert chunks == {key.rsplit("/", 1)[0] for key in manifests}, "a chunk without manifest"
    for key in manifests:
        folder = key.rsplit("/", 1)[0]
        manifest = Manifest.from_json(read(client, key).decode())
        listed = {f"{folder}/{part_name(part.index)}": part for part in manifest.parts}
        assert {k for k in everything if k.startswith(f"{folder}/part-")} == set(listed)
        for part_key, info in listed.items():
            body = read(client, part_key)
            assert (len(body), hashlib.sha256(body).hexdigest()) == (info.size, info.sha256)
    return len(manifests)


# -- the harvest, end to end -----------------------------------------------------------------


async def test_a_harvest_lands_every_object_once_and_a_rerun_creates_no_export(
    tmp_path: Path, clock: FakeClock, seaweed: SeaweedFS, log_buffer: io.StringIO
) -> None:
    """The simulator's merchants harvested into s3://bucket/prefix: every object once by
    listing, every manifest's sha256 right, nothing staged, and a rerun exports nothing."""
    prefix = new_prefix()
    client = seaweed.client()
    top = bucket_top(seaweed.endpoint_url, prefix)
    async with simulated(tmp_path, clock, 2, top=top) as sc:
        run = await harvest(sc, clock)
        assert run.summary.exit_code == 0, run.summary.render()
        assert assert_bucket_exactly_once(sc, client, prefix) > 0
        assert assert_manifests_hold(client, prefix) == 2 * 2 * 4
        assert keys(client, f"{prefix}/.staging/") == []
        assert unfinished_uploads(client, f"{prefix}/") == []
        assert not (tmp_path / "data").exists()
        # The keys are in the config and nowhere else: not in logs, not in the state store.
        state = (tmp_path / "state" / "harvester.sqlite3").read_bytes()
        assert SECRET_KEY not in log_buffer.getvalue()
        assert SECRET_KEY.encode() not in state
        before = {key: read(client, key) for key in keys(client, f"{prefix}/")}
        created = sc.sim.stats.exports_created

        again = await harvest(sc, clock)

        assert again.summary.exit_code == 0
        assert sc.sim.stats.exports_created == created
        assert {key: read(client, key) for key in keys(client, f"{prefix}/")} == before


# -- parts and publish ----------------------------------------------------------------------


async def write_part(
    chunk: BucketChunk, index: int, body: bytes, piece: int = 64 * 1024
) -> PartInfo:
    writer = await chunk.open_part(index)
    async with writer:
        for start in range(0, len(body), piece):
            await writer.write(body[start : start + piece])
        return await writer.commit(len(body), index - 1)


async def stage(chunk: BucketChunk, bodies: list[bytes], export_id: str) -> Manifest:
    parts = [await write_part(chunk, index, body) for index, body in enumerate(bodies, start=1)]
    return Manifest(MERCHANT, ExportType.PAYMENTS, JANUARY, export_id, HARVESTED_AT, tuple(parts))


async def test_a_large_part_streams_in_pieces_and_lands_byte_for_byte(seaweed: SeaweedFS) -> None:
    """A part over part_size goes up as a multipart upload and publishes the same bytes."""
    prefix = new_prefix()
    client = seaweed.client()
    body = export_file(1000, padding=12_000)  # about 12 MB: three upload parts of 5 MiB
    assert len(body) > 2 * 5 * MIB
    async with bucket_output(seaweed.endpoint_url, prefix) as output:
        assert repr(output) == f"BucketOutput('s3://{BUCKET}/{prefix}')"  # and no key
        chunk = output.chunk(MERCHANT, ExportType.PAYMENTS, JANUARY)
        info = await write_part(chunk, 1, body)
        assert info == PartInfo(1, 0, len(body), hashlib.sha256(body).hexdigest(), 1000)
        assert await chunk.saved_part(1, info.sha256)
        assert not await chunk.saved_part(1, "0" * 64)
        assert not await chunk.saved_part(2, info.sha256)
        manifest = Manifest(MERCHANT, ExportType.PAYMENTS, JANUARY, "E1", HARVESTED_AT, (info,))
        assert await chunk.published_manifest() is None
        assert await chunk.publish(manifest) == manifest
        assert await chunk.published_manifest() == manifest
    folder = f"{prefix}/{MERCHANT}/payments/{JANUARY.name}"
    assert keys(client, f"{prefix}/") == [f"{folder}/{MANIFEST_NAME}", f"{folder}/part-00001.json"]
    assert read(client, f"{folder}/part-00001.json") == body
    assert read(client, f"{folder}/{MANIFEST_NAME}").decode() == manifest.to_json()
    assert unfinished_uploads(client, f"{prefix}/") == []


@pytest.mark.parametrize(
    ("body", "expected_size"),
    [
        (export_file(1000, padding=6_000)[:-1], None),  # multipart, not JSON at the end
        (export_file(1000, padding=6_000), 7 * MIB),  # multipart, shorter than announced
        (b'{"elements": [1]}', None),  # one PUT, an element that is not an object
    ],
)
async def test_a_bad_part_leaves_no_object_and_no_upload(
    seaweed: SeaweedFS, body: bytes, expected_size: int | None
) -> None:
    """A part that fails its check is refused, and the bucket keeps nothing of it."""
    prefix = new_prefix()
    client = seaweed.client()
    async with bucket_output(seaweed.endpoint_url, prefix) as output:
        chunk = output.chunk(MERCHANT, ExportType.PAYMENTS, JANUARY)
        writer = await chunk.open_part(1)
        async with writer:
            for start in range(0, len(body), 64 * 1024):
                await writer.write(body[start : start + 64 * 1024])
            with pytest.raises(BadFile):
                await writer.commit(expected_size, 0)
    assert keys(client, f"{prefix}/") == []
    assert unfinished_uploads(client, f"{prefix}/") == []


async def test_publish_refuses_a_part_that_is_not_staged(seaweed: SeaweedFS) -> None:
    """A manifest naming a part the staging does not hold is BadFile, and nothing goes live."""
    prefix = new_prefix()
    async with bucket_output(seaweed.endpoint_url, prefix) as output:
        chunk = output.chunk(MERCHANT, ExportType.PAYMENTS, JANUARY)
        manifest = await stage(chunk, [export_file(3)], "E1")
        ghost = PartInfo(2, 1, 10, "0" * 64, 1)
        with pytest.raises(BadFile, match=r"part-00002\.json is not staged"):
            await chunk.publish(dataclasses.replace(manifest, parts=(*manifest.parts, ghost)))
    assert [k for k in keys(seaweed.client(), f"{prefix}/") if "/.staging/" not in k] == []


async def test_publish_refuses_another_chunks_manifest_and_a_part_of_another_size(
    seaweed: SeaweedFS,
) -> None:
    """A manifest of another range, or one whose part size differs from the staged part,
    is refused, and nothing goes live."""
    prefix = new_prefix()
    async with bucket_output(seaweed.endpoint_url, prefix) as output:
        chunk = output.chunk(MERCHANT, ExportType.PAYMENTS, JANUARY)
        manifest = await stage(chunk, [export_file(3)], "E1")
        february = TimeRange.from_name("20250131T000000Z_20250302T000000Z")
        with pytest.raises(ValueError, match="does not belong to BucketChunk"):
            await chunk.publish(dataclasses.replace(manifest, range=february))
        wrong = dataclasses.replace(manifest.parts[0], size=manifest.parts[0].size + 1)
        with pytest.raises(BadFile, match="bytes staged, the manifest says"):
            await chunk.publish(dataclasses.replace(manifest, parts=(wrong,)))
    assert [k for k in keys(seaweed.client(), f"{prefix}/") if "/.staging/" not in k] == []


async def test_a_manifest_not_written_by_the_harvester_counts_as_none(seaweed: SeaweedFS) -> None:
    """Whatever else sits at `_manifest.json` is not trusted: the chunk counts as unpublished."""
    prefix = new_prefix()
    folder = f"{prefix}/{MERCHANT}/payments/{JANUARY.name}"
    seaweed.client().put_object(Bucket=BUCKET, Key=f"{folder}/{MANIFEST_NAME}", Body=b"\xff{")
    async with bucket_output(seaweed.endpoint_url, prefix) as output:
        chunk = output.chunk(MERCHANT, ExportType.PAYMENTS, JANUARY)
        assert await chunk.published_manifest() is None
        with pytest.raises(OutputError, match="larger than 1 bytes"):
            await output.read(f"{folder}/{MANIFEST_NAME}", limit=1)


async def test_a_part_takes_no_write_after_its_commit(seaweed: SeaweedFS) -> None:
    """Writing to or committing a part again is a programming error, said at once."""
    async with bucket_output(seaweed.endpoint_url, new_prefix()) as output:
        chunk = output.chunk(MERCHANT, ExportType.PAYMENTS, JANUARY)
        writer = await chunk.open_part(1)
        async with writer:
            await writer.write(export_file(1))
            await writer.commit(None, 0)
            with pytest.raises(RuntimeError, match="write after commit"):
                await writer.write(b"more")
            with pytest.raises(RuntimeError, match="commit after commit"):
                await writer.commit(None, 0)


@pytest.mark.parametrize("method", ["GET", "HEAD"])
async def test_a_failing_read_is_an_output_error_naming_the_object(
    seaweed: SeaweedFS, method: str
) -> None:
    """A read or a size check the bucket keeps refusing is an OutputError with its s3:// URL."""
    prefix = new_prefix()
    async with (
        fault_proxy(seaweed.endpoint_url) as proxy,
        bucket_output(proxy.url, prefix) as output,
    ):
        chunk = output.chunk(MERCHANT, ExportType.PAYMENTS, JANUARY)
        manifest = await stage(chunk, [export_file(2)], "E1")
        proxy.add(Fault(method=method, status=403, times=None))
        attempt = (
            chunk.saved_part(1, manifest.parts[0].sha256)
            if method == "GET"
            else chunk.publish(manifest)
        )
        with pytest.raises(OutputError, match=rf"s3://{BUCKET}/{prefix}/.*: 403"):
            await attempt


async def test_without_keys_and_without_a_chain_the_run_is_refused(
    seaweed: SeaweedFS, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """No keys in the config and none in the provider's chain: a ConfigError saying so."""
    for name in [name for name in os.environ if name.startswith("AWS_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance role: loopback only
    keyless = dataclasses.replace(
        settings(seaweed.endpoint_url, new_prefix()), access_key_id=None, secret_access_key=None
    )
    with pytest.raises(ConfigError, match="object_store: no credentials found"):
        async with open_bucket(keyless, TIMING, 8):
            pass


async def test_a_chunk_published_before_a_crash_counts_as_done_and_its_staging_goes(
    tmp_path: Path, clock: FakeClock, seaweed: SeaweedFS
) -> None:
    """The process died after the manifest went up but before the store heard: the next
    run takes the chunk as published (no download) and deletes what its staging still holds."""
    prefix = new_prefix()
    async with (
        bucket_output(seaweed.endpoint_url, prefix) as output,
        await Store.open(tmp_path / "state.sqlite3", clock) as store,
        aiohttp.ClientSession() as session,
    ):
        (record,) = await store.add_chunks(MERCHANT, ExportType.PAYMENTS, [JANUARY])
        await store.record_export(record.id, "E1", "PENDING", 0.0)
        await store.export_done("E1", None, ["http://127.0.0.1:9/never-fetched"])
        export = await store.get_export("E1")
        assert export is not None
        chunk = output.chunk(MERCHANT, ExportType.PAYMENTS, JANUARY)
        published = await chunk.publish(await stage(chunk, [export_file(3)], "E1"))
        await write_part(chunk, 1, export_file(3))  # staging a crash left behind
        downloader = Downloader(session, store, clock, TIMING, 1, random.Random(0))

        look = await chunk.look()
        assert look.published == published
        assert not look.staged_elsewhere
        saved = await store.parts("E1")
        assert await downloader.publish_chunk(chunk, record, export, look.published, saved) == (
            published
        )

    assert keys(seaweed.client(), f"{prefix}/.staging/") == []


async def test_a_reader_following_manifests_never_sees_a_mix_while_a_chunk_is_replaced(
    seaweed: SeaweedFS,
) -> None:
    """While a lookback replaces a chunk again and again (slowed down by a proxy), a reader
    that follows `_manifest.json` reads one whole export each time, never a mix."""
    prefix = new_prefix()
    client = seaweed.client()
    folder = f"{prefix}/{MERCHANT}/payments/{JANUARY.name}"
    exports = {
        f"E{n}": [export_file(40, tag=f"e{n}p{p}") for p in range(2 + n % 3)] for n in range(1, 6)
    }
    reads: list[str] = []
    done = asyncio.Event()

    async def reader() -> None:
        async with bucket_output(seaweed.endpoint_url, prefix) as output:
            chunk = output.chunk(MERCHANT, ExportType.PAYMENTS, JANUARY)
            while not done.is_set():
                manifest = await chunk.published_manifest()
                if manifest is None:
                    await asyncio.sleep(0.005)
                    continue
                bodies = []
                for part in manifest.parts:
                    body = await output.read(f"{folder}/{part_name(part.index)}", 64 * MIB)
                    if body is None:
                        break  # replaced meanwhile: read the manifest again
                    assert hashlib.sha256(body).hexdigest() == part.sha256, "a mix of exports"
                    bodies.append(body)
                else:
                    assert bodies == exports[manifest.export_id]
                    reads.append(manifest.export_id)

    async with fault_proxy(seaweed.endpoint_url) as proxy:
        proxy.add(Fault(delay_s=0.02, times=None))  # every request of the writer, a bit late
        reading = asyncio.create_task(reader())
        async with bucket_output(proxy.url, prefix) as output:
            chunk = output.chunk(MERCHANT, ExportType.PAYMENTS, JANUARY)
            for export_id, bodies in exports.items():
                await chunk.publish(await stage(chunk, bodies, export_id))
                await asyncio.sleep(0.1)
        done.set()
        await reading
    assert len(set(reads)) >= 3, reads
    last = exports["E5"]
    parts = [k for k in keys(client, f"{prefix}/") if k.startswith(f"{folder}/part-")]
    assert sorted(read(client, k) for k in parts) == sorted(last)
    assert keys(client, f"{prefix}/.staging/") == []


@pytest.mark.parametrize("failing", ["manifest", "tidying"])
async def test_a_publish_cut_short_is_finished_by_the_next_recover(
    seaweed: SeaweedFS, failing: str
) -> None:
    """A publish that dies before or after its manifest leaves unlisted parts that the next
    start's recover deletes: then each chunk holds exactly its manifest's parts again."""
    prefix = new_prefix()
    client = seaweed.client()
    folder = f"{prefix}/{MERCHANT}/payments/{JANUARY.name}"
    old = [export_file(5, tag="old1"), export_file(5, tag="old2")]
    new = [export_file(7, tag="new1"), export_file(7, tag="new2"), export_file(7, tag="new3")]
    async with bucket_output(seaweed.endpoint_url, prefix) as output:
        chunk = output.chunk(MERCHANT, ExportType.PAYMENTS, JANUARY)
        await chunk.publish(await stage(chunk, old, "OLD"))
    async with (
        fault_proxy(seaweed.endpoint_url) as proxy,
        bucket_output(proxy.url, prefix) as output,
    ):
        chunk = output.chunk(MERCHANT, ExportType.PAYMENTS, JANUARY)
        manifest = await stage(chunk, new, "NEW")
        if failing == "manifest":
            proxy.add(Fault(method="PUT", path_contains=MANIFEST_NAME, status=400))
        else:  # the first delete after the manifest: the old parts'
            proxy.add(Fault(method="POST", path_contains="delete", status=400))
        with pytest.raises(OutputError, match="400"):
            await chunk.publish(manifest)
    visible = [k for k in keys(client, f"{folder}/") if k.startswith(f"{folder}/part-")]
    assert len(visible) == 5  # the crash left more parts than the manifest lists
    async with bucket_output(seaweed.endpoint_url, prefix) as output:
        touched = await output.recover(lambda *_: False)
        chunk = output.chunk(MERCHANT, ExportType.PAYMENTS, JANUARY)
        live = await chunk.published_manifest()
    assert live is not None
    assert live.export_id == ("OLD" if failing == "manifest" else "NEW")
    assert len(touched) >= 2
    assert assert_manifests_hold(client, prefix) == 1
    parts = [k for k in keys(client, f"{folder}/") if k.startswith(f"{folder}/part-")]
    assert sorted(read(client, k) for k in parts) == sorted(old if failing == "manifest" else new)
    assert keys(client, f"{prefix}/.staging/") == []


async def test_recover_keeps_the_staging_of_an_export_in_flight(seaweed: SeaweedFS) -> None:
    """Staged parts of an export still in flight survive recover; others and unfinished
    uploads go."""
    prefix = new_prefix()
    client = seaweed.client()
    async with bucket_output(seaweed.endpoint_url, prefix) as output:
        kept = output.chunk(MERCHANT, ExportType.PAYMENTS, JANUARY)
        dropped = output.chunk(MERCHANT, ExportType.ORDERS, JANUARY)
        info = await write_part(kept, 1, export_file(3))
        await write_part(dropped, 1, export_file(3))
        writer = await dropped.open_part(2)
        await writer.write(export_file(1000, padding=6_000))  # an upload under way: a crash
        assert unfinished_uploads(client, f"{prefix}/") != []
        for junk in ("/.probe-1", "/M1/payments/not-a-chunk/x", "/M1/receipts/x/y"):
            client.put_object(Bucket=BUCKET, Key=f"{prefix}/.staging{junk}", Body=b"")
        touched = await output.recover(lambda merchant, folder, name: folder == "payments")
        assert await kept.saved_part(1, info.sha256)
        assert not await dropped.saved_part(1, info.sha256)
        await writer.abort()
    assert unfinished_uploads(client, f"{prefix}/") == []
    assert sum("/orders/" in url for url in touched) == 3
    assert len(touched) == 6
    assert [k.rsplit("/", 1)[1] for k in keys(client, f"{prefix}/")] == [
        ".part-00001.json",
        ".part-00001.sha256",
    ]


# -- a bucket that misbehaves ---------------------------------------------------------------


async def test_a_bucket_answering_500_or_503_costs_retries_not_objects(
    tmp_path: Path, clock: FakeClock, seaweed: SeaweedFS
) -> None:
    """Writes, reads and checks the bucket answers with 500 or 503 are retried, and the
    harvest still lands every object once."""
    prefix = new_prefix()
    async with fault_proxy(seaweed.endpoint_url) as proxy:
        faults = [
            proxy.add(Fault(method="PUT", path_contains="/.staging/", status=503, times=2)),
            proxy.add(Fault(method="PUT", path_contains=MANIFEST_NAME, status=500)),
            proxy.add(Fault(method="HEAD", status=503)),
            proxy.add(Fault(method="GET", status=500)),
            proxy.add(Fault(method="POST", path_contains="delete", status=503)),
        ]
        top = bucket_top(proxy.url, prefix)
        async with simulated(tmp_path, clock, 2, top=top) as scenario:
            run = await harvest(scenario, clock)
            assert run.summary.exit_code == 0, run.summary.render()
            assert [fault.seen for fault in faults] == [2, 1, 1, 1, 1]
            client = seaweed.client()
            assert assert_bucket_exactly_once(scenario, client, prefix) > 0
            assert assert_manifests_hold(client, prefix) == 2 * 2 * 4
            assert keys(client, f"{prefix}/.staging/") == []


async def test_a_slow_bucket_is_waited_for_and_a_stalled_write_tidied_next_run(
    tmp_path: Path, clock: FakeClock, seaweed: SeaweedFS
) -> None:
    """Every request late, and one held past request_timeout_s: the harvest retries it and
    completes exactly; the held write, landing after all, is hidden and the next run's
    recover removes it."""
    prefix = new_prefix()
    client = seaweed.client()
    async with fault_proxy(seaweed.endpoint_url) as proxy:
        stalled = proxy.add(Fault(method="PUT", path_contains="/.part-", hold=True))
        proxy.add(Fault(delay_s=0.03, times=None))
        top = {**bucket_top(proxy.url, prefix), "timing": {**FAST_TIMING, "request_timeout_s": 1}}
        async with simulated(tmp_path, clock, 1, top=top) as scenario:
            run = await harvest(scenario, clock)
            assert run.summary.exit_code == 0, run.summary.render()
            assert stalled.seen == 1
            assert assert_bucket_exactly_once(scenario, client, prefix) > 0
            assert assert_manifests_hold(client, prefix) == 2 * 4
            assert keys(client, f"{prefix}/.staging/") == []
            before = keys(client, f"{prefix}/")

            proxy.release()
            for _ in range(200):  # the server takes the abandoned write at last
                if keys(client, f"{prefix}/.staging/"):
                    break
                await asyncio.sleep(0.05)
            else:
                pytest.fail("the held write never landed")
            assert [k for k in keys(client, f"{prefix}/") if "/.staging/" not in k] == before
            again = await harvest(scenario, clock)
            assert again.summary.exit_code == 0
            assert keys(client, f"{prefix}/.staging/") == []


@pytest.mark.parametrize(
    ("fault", "error", "message"),
    [
        (Fault(method="PUT", status=403), ConfigError, r"access denied \(403 AccessDenied"),
        (Fault(method="HEAD", status=500, times=None), OutputError, "500"),
    ],
)
async def test_a_bucket_that_refuses_writes_or_keeps_failing_is_refused_at_start(
    seaweed: SeaweedFS, fault: Fault, error: type[Exception], message: str
) -> None:
    """A bucket that answers the start-up probe with 403, or keeps answering 500, stops the
    run before any work, naming the bucket."""
    # Two attempts, not four: botocore backs off between them in real time (the test took
    # 5-9 s with four, 1-1.5 s with two), and the 500 is answered to every one of them.
    timing = dataclasses.replace(TIMING, max_attempts=2)
    async with fault_proxy(seaweed.endpoint_url) as proxy:
        proxy.add(fault)
        with pytest.raises(error, match=message) as refused:
            async with open_bucket(settings(proxy.url, new_prefix()), timing, 8):
                pass
    assert f"s3://{BUCKET}/" in str(refused.value)
    assert SECRET_KEY not in str(refused.value)


async def test_an_unreachable_bucket_is_an_output_error() -> None:
    """Nothing listening at endpoint_url: OutputError saying the bucket cannot be reached."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        endpoint_url = f"http://127.0.0.1:{sock.getsockname()[1]}"  # bound, never listening
        with pytest.raises(OutputError, match="cannot reach the bucket"):
            async with open_bucket(settings(endpoint_url, "p"), Timing(max_attempts=1), 8):
                pass


# -- the command line: refusals before any export, SIGKILL and resume -------------------------

FROM, TO = "2025-01-01", "2025-01-31"  # one chunk


def write_cli_config(
    tmp_path: Path, api_url: str, merchant_id: str, output_url: str, endpoint_url: str
) -> Path:
    document = {
        "output_url": output_url,
        "object_store": {
            "endpoint_url": endpoint_url,
            "access_key_id": "${S3_KEY}",
            "secret_access_key": "${S3_SECRET}",
            "part_size_mib": 5,
        },
        "state_path": "state/harvester.sqlite3",
        "timing": {"poll_min_s": 0.05, "poll_max_s": 0.3, "max_attempts": 3},
        "regions": {"local": {"base_url": api_url, "windows": "always"}},
        "merchants": [
            {"id": merchant_id, "region": "local", "token": "${TOKEN}", "types": ["PAYMENTS"]}
        ],
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


async def run_cli(
    config: Path, env: dict[str, str]
) -> tuple[asyncio.subprocess.Process, asyncio.Task[bytes]]:
    process = await start_backfill(config, FROM, TO, env)
    assert process.stderr is not None
    return process, asyncio.create_task(process.stderr.read())


@asynccontextmanager
async def big_file_simulator(merchant_id: str, token: str) -> AsyncIterator[Simulator]:
    """One merchant whose January export is three files of about 6 MB: multipart uploads."""
    settings = sim_settings(
        {merchant_id: Account(token=token)},
        objects_per_day=100.0,
        objects_per_file=1000,
        object_padding_bytes=6_000,
        pending_s=0.1,
        export_base_s=0.3,
        export_per_object_s=0.0,
    )
    async with Simulator(settings, SystemClock(), Faults()) as sim:
        yield sim


@pytest.mark.parametrize(
    ("bucket", "secret", "message"),
    [
        (BUCKET, "not-the-secret-key", "object_store: the bucket refused the credentials"),
        ("no-such-bucket", SECRET_KEY, "the bucket 'no-such-bucket' does not exist"),
    ],
)
async def test_bad_credentials_or_a_missing_bucket_stop_the_run_before_any_export(
    tmp_path: Path, seaweed: SeaweedFS, bucket: str, secret: str, message: str
) -> None:
    """Wrong keys or a missing bucket: exit 2 with a message naming the culprit (never the
    key), and no export created."""
    merchant_id, token = "MERCHANT00001", new_token("MERCHANT00001")
    async with big_file_simulator(merchant_id, token) as sim:
        output_url = f"s3://{bucket}/{new_prefix()}"
        config = write_cli_config(
            tmp_path, sim.api_url, merchant_id, output_url, seaweed.endpoint_url
        )
        env = {"TOKEN": token, "S3_KEY": ACCESS_KEY, "S3_SECRET": secret}
        process, stderr = await run_cli(config, env)
        assert await process.wait() == 2
        text = (await stderr).decode()
        assert message in text
        assert secret not in text
        assert token not in text
        assert sim.stats.exports_created == 0


@pytest.mark.timeout(180)
async def test_sigkill_during_an_upload_then_a_rerun_finishes_exactly_and_tidily(
    tmp_path: Path, seaweed: SeaweedFS
) -> None:
    """Killed with SIGKILL while a multipart upload is under way, the harvester leaves only
    hidden staging; the next run reuses the saved parts, lands every object once, and
    leaves no staging object and no unfinished upload."""
    merchant_id, token = "MERCHANT00001", new_token("MERCHANT00001")
    prefix = new_prefix()
    client = seaweed.client()
    async with (
        big_file_simulator(merchant_id, token) as sim,
        fault_proxy(seaweed.endpoint_url) as proxy,
    ):
        held = proxy.add(Fault(method="PUT", path_contains="uploadId=", hold=True))
        config = write_cli_config(
            tmp_path, sim.api_url, merchant_id, f"s3://{BUCKET}/{prefix}", proxy.url
        )
        env = {"TOKEN": token, "S3_KEY": ACCESS_KEY, "S3_SECRET": SECRET_KEY}
        process, stderr = await run_cli(config, env)
        await asyncio.wait_for(held.arrived.wait(), timeout=60)
        process.send_signal(signal.SIGKILL)
        await process.wait()
        await stderr
        assert [k for k in keys(client, f"{prefix}/") if "/.staging/" not in k] == []
        assert unfinished_uploads(client, f"{prefix}/") != []  # the one cut short

        proxy.release()
        process, stderr = await run_cli(config, env)
        assert await process.wait() == 0, (await stderr).decode()[-3000:]
        await stderr

        january = TimeRange.from_name("20250101T000000Z_20250131T000000Z")
        expected = sim.objects(merchant_id, "PAYMENTS", january.start_ms, january.end_ms - 1)
        got = bucket_harvested(client, prefix, merchant_id, "payments")
        assert sorted(ids(got)) == sorted(ids(expected))
        assert len(got) > 2000  # three files, each a multipart upload
        assert assert_manifests_hold(client, prefix) == 1
        assert keys(client, f"{prefix}/.staging/") == []
        assert unfinished_uploads(client, f"{prefix}/") == []
        assert sim.stats.exports_created == 1  # the export in flight was picked up again

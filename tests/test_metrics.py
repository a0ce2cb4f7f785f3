"""Prometheus metrics: counted from a harvest, written to a textfile, served while a run goes."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import re
import socket
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from harvester import commands
from harvester.clock import SystemClock
from harvester.clover.chunks import ExportType
from harvester.config import MetricsSettings, load_config
from harvester.errors import ConfigError
from harvester.harvest.observer import Observers, RunObserver
from harvester.harvest.planning import select
from harvester.ops.health import Health
from harvester.ops.metrics import Metrics
from harvester.ops.operation import Operation
from harvester.simulator import Account, Faults, Simulator
from tests.conftest import Scenario, new_token, sim_settings
from tests.fakeclock import FakeClock
from tests.harness import FULL, log_events
from tests.test_cli import GOOD, write
from tests.test_health import ping_server


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition, keyed by name and sorted labels."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(text: str, name: str, **labels: str) -> float:
    return samples(text)[(name, tuple(sorted(labels.items())))]


async def test_harvest_counts_match_the_simulator_and_the_summary(
    scenario: Scenario, clock: FakeClock
) -> None:
    """Exports, chunks, objects and bytes counted by the metrics equal what happened."""
    config = scenario.config()
    metrics = Metrics(clock)
    metrics.regions(["local"])
    summary = await commands.backfill(
        config, select(config, [], []), FULL, clock, asyncio.Event(), observer=metrics
    )
    text = metrics.exposition().decode()
    totals = summary.totals()
    assert value(text, "harvester_exports_created_total", region="local") == (
        scenario.sim.stats.exports_created
    )
    completed = sum(
        value(text, "harvester_chunks_completed_total", type=str(t)) for t in ExportType
    )
    assert completed == totals["chunks_done"] > 0
    objects = sum(value(text, "harvester_objects_total", type=str(t)) for t in ExportType)
    assert objects == totals["objects"]
    assert (
        sum(value(text, "harvester_bytes_total", type=str(t)) for t in ExportType)
        == (totals["bytes"])
    )
    assert value(text, "harvester_chunks_pending") == 0
    assert value(text, "harvester_export_duration_seconds_count") == totals["exports_created"]
    assert value(text, "harvester_export_slot_limit", region="local") == 2
    assert value(text, "harvester_export_slots_in_use", region="local") == 0
    assert value(text, "harvester_window_open", region="local") == 1
    assert "merchant" not in text


async def test_busy_and_rate_limited_answers_are_counted(
    scenario: Scenario, clock: FakeClock
) -> None:
    """Busy 503s and 429s are counted per region (and scope), as the simulator sent them."""
    scenario.sim.faults.script("busy_503", 2)
    scenario.sim.faults.rate_limit_header = "X-RateLimit-tokenLimit"
    scenario.sim.faults.script("api_429", 3)
    config = scenario.config()
    metrics = Metrics(clock)
    await commands.backfill(
        config, select(config, [], []), FULL, clock, asyncio.Event(), observer=metrics
    )
    text = metrics.exposition().decode()
    assert value(text, "harvester_busy_503_total", region="local") == 2
    assert value(text, "harvester_rate_limited_total", region="local", scope="token") == 3


async def test_lost_creates_are_counted(scenario: Scenario, clock: FakeClock) -> None:
    """Creates whose answer was lost (the export made all the same) are counted per region,
    as the summary counts them."""
    scenario.sim.faults.script("create_lost", 2)
    config = scenario.config()
    metrics = Metrics(clock)
    summary = await commands.backfill(
        config, select(config, [], []), FULL, clock, asyncio.Event(), observer=metrics
    )
    text = metrics.exposition().decode()
    assert summary.orphans == summary.totals()["lost_creates"] == 2
    assert value(text, "harvester_lost_creates_total", region="local") == 2


async def test_run_gauges_and_failures(clock: FakeClock) -> None:
    """A run moves in-progress, pending and last-success; failed chunks count and leave pending."""
    metrics = Metrics(clock)
    metrics.regions(["us"])
    metrics.run_started()
    metrics.chunks_planned(3)
    metrics.chunk_failed(ExportType.ORDERS)
    metrics.lost_create("us")
    text = metrics.exposition().decode()
    assert value(text, "harvester_run_in_progress") == 1
    assert value(text, "harvester_chunks_pending") == 2
    assert value(text, "harvester_chunks_failed_total", type="ORDERS") == 1
    assert value(text, "harvester_lost_creates_total", region="us") == 1
    assert value(text, "harvester_last_success_timestamp_seconds") == 0
    metrics.run_finished(ok=False)
    assert value(metrics.exposition().decode(), "harvester_last_success_timestamp_seconds") == 0
    metrics.run_finished(ok=True)
    text = metrics.exposition().decode()
    assert value(text, "harvester_run_in_progress") == 0
    assert value(text, "harvester_last_success_timestamp_seconds") == clock.now().timestamp()


def test_each_metrics_object_has_its_own_registry(clock: FakeClock) -> None:
    """Two Metrics never share counts (no global registry)."""
    first, second = Metrics(clock), Metrics(clock)
    first.export_created("us")
    assert value(first.exposition().decode(), "harvester_exports_created_total", region="us") == 1
    assert ("harvester_exports_created_total", (("region", "us"),)) not in samples(
        second.exposition().decode()
    )


class Recorder(RunObserver):
    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

    def __getattribute__(self, name: str) -> Any:
        if name.startswith("_") or name == "calls" or not hasattr(RunObserver, name):
            return object.__getattribute__(self, name)
        return lambda *args: self.calls.append((name, args))


def test_observers_hand_every_call_to_each() -> None:
    """Observers forwards each of the interface's calls, with its arguments, to every member."""
    one, two = Recorder(), Recorder()
    group = Observers([one, two])
    group.chunks_planned(4)
    group.host_added("us", None, None)  # type: ignore[arg-type]
    group.export_created("us")
    group.export_done("us", 12.0)
    group.busy_503("us")
    group.rate_limited("us", "app")
    group.lost_create("us")
    group.chunk_completed(ExportType.PAYMENTS, 5, 100)
    group.chunk_failed(ExportType.ORDERS)
    assert one.calls == two.calls
    assert [name for name, _ in one.calls] == [
        "chunks_planned",
        "host_added",
        "export_created",
        "export_done",
        "busy_503",
        "rate_limited",
        "lost_create",
        "chunk_completed",
        "chunk_failed",
    ]
    assert one.calls[-2] == ("chunk_completed", (ExportType.PAYMENTS, 5, 100))


async def written(path: Path, name: str, expected: float, **labels: str) -> bool:
    """Whether `path` comes to show `expected` for the sample, once a write on a worker
    thread (started by the clock's wake-up) has landed; only real time passes meanwhile."""
    for _ in range(500):
        if value(await asyncio.to_thread(path.read_text), name, **labels) == expected:
            return True
        await asyncio.sleep(0.01)
    return False


async def test_textfile_is_written_every_interval_and_at_exit(
    scenario: Scenario, clock: FakeClock, tmp_path: Path
) -> None:
    """The textfile appears at once, is rewritten each interval_s, and holds the last counts."""
    textfile = tmp_path / "metrics" / "harvester.prom"
    textfile.parent.mkdir()
    config = dataclasses.replace(
        scenario.config(), metrics=MetricsSettings(textfile=textfile, interval_s=15)
    )
    async with Operation(config, clock) as operation:
        await operation.started()
        first = textfile.read_text()
        assert value(first, "harvester_run_in_progress") == 1
        operation.metrics.export_created("local")
        await clock.sleep(16)
        assert await written(textfile, "harvester_exports_created_total", 1, region="local")
        operation.metrics.export_created("local")
    assert value(textfile.read_text(), "harvester_exports_created_total", region="local") == 2
    assert list(textfile.parent.iterdir()) == [textfile]  # no temporary file left behind


async def test_an_unwritable_textfile_is_logged_not_fatal(
    scenario: Scenario, clock: FakeClock, tmp_path: Path, log_buffer: Any
) -> None:
    """A textfile in a missing folder logs metrics.write_failed and the run goes on."""
    config = dataclasses.replace(
        scenario.config(), metrics=MetricsSettings(textfile=tmp_path / "missing" / "h.prom")
    )
    async with Operation(config, clock) as operation:
        await operation.finished(0)
    assert log_events(log_buffer, "metrics.write_failed")


async def test_metrics_and_healthz_are_served(scenario: Scenario, clock: FakeClock) -> None:
    """/metrics answers in Prometheus' format and /healthz says what the health function says."""
    config = dataclasses.replace(
        scenario.config(), metrics=MetricsSettings(listen=("127.0.0.1", 0))
    )
    verdict = Health(True, "running")
    async with Operation(config, clock, health=lambda: verdict) as operation:
        assert operation.address is not None
        base = f"http://127.0.0.1:{operation.address[1]}"
        operation.metrics.export_created("local")
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{base}/metrics") as answer:
                assert answer.status == 200
                assert answer.headers["Content-Type"].startswith("text/plain")
                text = await answer.text()
            assert value(text, "harvester_exports_created_total", region="local") == 1
            async with session.get(f"{base}/healthz") as answer:
                assert answer.status == 200
                assert (await answer.json())["healthy"] is True
            verdict = Health(False, "the last run failed")
            async with session.get(f"{base}/healthz") as answer:
                assert answer.status == 503
                assert (await answer.json())["detail"] == "the last run failed"
    async with Operation(config, clock) as plain, aiohttp.ClientSession() as session:
        assert plain.address is not None
        async with session.get(f"http://127.0.0.1:{plain.address[1]}/healthz") as answer:
            assert answer.status == 200  # `run` and `backfill`: healthy while they run
            assert (await answer.json())["detail"] == "running"


async def test_cli_run_leaves_a_readable_textfile_and_serves_metrics_meanwhile(
    tmp_path: Path,
) -> None:
    """A real `backfill` with metrics and pings set: /metrics answers while it runs, the
    textfile's exports_created_total equals the simulator's count, start and success are
    pinged, and (stderr being no terminal) the live view is not even imported."""
    merchants = ["METRICS00001", "METRICS00002"]
    tokens = {m: new_token(m) for m in merchants}
    settings = sim_settings(
        {m: Account(token=t) for m, t in tokens.items()},
        pending_s=0.2,
        export_base_s=0.6,
        export_per_object_s=0.0,
    )
    textfile = tmp_path / "harvester.prom"
    async with Simulator(settings, SystemClock(), Faults()) as sim, ping_server() as pings:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        document = {
            "output_dir": "data",
            "state_path": "state/h.sqlite3",
            "timing": {"poll_min_s": 0.1, "poll_max_s": 0.3, "backoff_base_s": 0.1},
            "metrics": {"textfile": str(textfile), "interval_s": 0.5, "listen": f":{port}"},
            "healthcheck_url": pings.url,
            "regions": {"local": {"base_url": sim.api_url, "windows": "always"}},
            "merchants": [{"id": m, "region": "local", "token": f"${{T_{m}}}"} for m in merchants],
        }
        config = tmp_path / "config.yaml"
        config.write_text(yaml.safe_dump(document))
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-X",
            "importtime",  # lists every module imported, on stderr
            "-m",
            "harvester",
            "backfill",
            "--config",
            str(config),
            "--from",
            "2025-01-01",
            "--to",
            "2025-01-31",
            env={**os.environ, **{f"T_{m}": t for m, t in tokens.items()}},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        scraped: list[str] = []
        async with aiohttp.ClientSession() as session:
            while process.returncode is None and not scraped:
                try:
                    async with session.get(f"http://127.0.0.1:{port}/healthz") as answer:
                        healthz = answer.status
                    async with session.get(f"http://127.0.0.1:{port}/metrics") as answer:
                        scraped.append(await answer.text())
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.05)
        _out, err = await process.communicate()
        assert process.returncode == 0, err.decode()
        assert scraped, "the metrics endpoint never answered while the run went on"
        assert healthz == 200
        assert value(scraped[0], "harvester_run_in_progress") == 1
        text = textfile.read_text()
        assert value(text, "harvester_exports_created_total", region="local") == (
            sim.stats.exports_created
        )
        assert value(text, "harvester_run_in_progress") == 0
        assert value(text, "harvester_last_success_timestamp_seconds") > 0
        assert [path for path, _ in pings.pings] == ["/ping/abc-123/start", "/ping/abc-123"]
    imported = [line.rsplit("|", 1)[-1].strip() for line in err.decode().splitlines()]
    assert "harvester.harvest.scheduler" in imported
    # Off a terminal the live view is never imported, nor rich (which structlog would bring
    # in for console tracebacks it never draws here).
    assert "harvester.ops.live" not in imported
    # (-X importtime lists an import that was refused too: "rich" alone, from its hiding.)
    assert [name for name in imported if name.startswith(("rich.", "pygments"))] == []
    finished = [json.loads(line) for line in err.decode().splitlines() if "run.finished" in line]
    assert finished[0]["exports_created"] == sim.stats.exports_created
    assert "merchants" in finished[0]
    assert not isinstance(finished[0]["merchants"], list)


@pytest.mark.parametrize(
    ("written", "listen"),
    [
        (":9108", ("127.0.0.1", 9108)),
        ("9108", ("127.0.0.1", 9108)),
        (9108, ("127.0.0.1", 9108)),
        ("0.0.0.0:9108", ("0.0.0.0", 9108)),  # noqa: S104 -- written explicitly, as required
        ("[::1]:9108", ("::1", 9108)),
        ("localhost:80", ("localhost", 80)),
    ],
)
def test_listen_is_loopback_unless_written(
    tmp_path: Path, written: object, listen: tuple[str, int]
) -> None:
    """A bare port listens on 127.0.0.1; any other address only when written out."""
    path = write(tmp_path, {**GOOD, "metrics": {"listen": written}})
    assert load_config(path, {"TOKEN_ABC": "x"}).metrics.listen == listen


@pytest.mark.parametrize(
    ("metrics", "culprit"),
    [
        ({"listen": "127.0.0.1:99999"}, "metrics.listen"),
        ({"listen": "example.com:9108"}, "metrics.listen"),
        ({"listen": "127.0.0.1:http"}, "metrics.listen"),
        ({"listen": True}, "metrics.listen"),
        ({"interval_s": 0}, "metrics.interval_s"),
        ({"textfile": ""}, "metrics.textfile"),
        ({"listn": ":9108"}, "metrics.listn"),
    ],
)
def test_bad_metrics_settings_name_the_key(
    tmp_path: Path, metrics: dict[str, Any], culprit: str
) -> None:
    """Each bad metrics setting is a ConfigError naming its YAML path."""
    path = write(tmp_path, {**GOOD, "metrics": metrics})
    with pytest.raises(ConfigError, match=re.escape(culprit)):
        load_config(path, {"TOKEN_ABC": "x"})


def test_textfile_resolves_against_the_config_folder(tmp_path: Path) -> None:
    """A relative textfile path is under the config file's folder; interval_s defaults to 15."""
    path = write(tmp_path, {**GOOD, "metrics": {"textfile": "m/h.prom"}})
    settings = load_config(path, {"TOKEN_ABC": "x"}).metrics
    assert settings == MetricsSettings(textfile=tmp_path / "m" / "h.prom", interval_s=15.0)

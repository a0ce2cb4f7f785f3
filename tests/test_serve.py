"""`harvester serve` on the fake clock: a run each night, catch-up, reloads, and /healthz."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from harvester.cli import main
from harvester.clock import SystemClock
from harvester.ops.schedule import LastRun, read_last_run, write_last_run
from harvester.ops.serve import Server, last_run_path
from harvester.simulator import Account, Faults, Simulator
from tests.conftest import new_token, sim_settings
from tests.fakeclock import FakeClock
from tests.harness import log_events, simulated
from tests.test_cli import GOOD, write

TOP = {"default_start": "2025-06-25", "schedule": {"daily_at": "00:30"}}


def utc(day: int, hour: int, minute: int = 0) -> datetime:
    return datetime(2025, 7, day, hour, minute, tzinfo=UTC)


async def logged(buffer: Any, event: str, count: int) -> None:
    """Wait (in real time: no fake sleeper of ours for the clock to leap to) for `count` events."""
    for _ in range(3000):
        if len(log_events(buffer, event)) >= count:
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"fewer than {count} {event}")


async def test_four_nights_with_a_reload_and_a_bad_config(
    tmp_path: Path, clock: FakeClock, log_buffer: Any
) -> None:
    """Started at noon with no run yet, serve runs at once, then at 00:30 each night; SIGHUP
    adds a merchant from the next night on; a broken config is logged and the old one kept."""
    async with simulated(tmp_path, clock, merchants=2, top=TOP) as scenario:
        everyone = dict(scenario.tokens)
        scenario.tokens = dict(list(everyone.items())[:1])
        path = scenario.config_path()
        server = Server(path, scenario.config(), clock, scenario.environ | everyone_env(everyone))
        stop = asyncio.Event()
        serving = asyncio.create_task(server.run(stop))

        # Each reload is asked for while a run goes on: it takes effect at the next one.
        await logged(log_buffer, "serve.run_starting", 2)
        scenario.tokens = everyone
        scenario.config_path()
        os.kill(os.getpid(), signal.SIGHUP)
        await logged(log_buffer, "serve.run_starting", 3)
        path.write_text("merchants: [\n")
        server.request_reload()
        await logged(log_buffer, "serve.run_ended", 4)
        assert server.health().healthy
        stop.set()
        assert await serving == 0

    starts = log_events(log_buffer, "serve.run_starting")
    assert [(s["at"], s["merchants"]) for s in starts] == [
        ("2025-07-01T12:00:00Z", 1),
        ("2025-07-02T00:30:00Z", 1),
        ("2025-07-03T00:30:00Z", 2),
        ("2025-07-04T00:30:00Z", 2),
    ]
    assert [e["exit_code"] for e in log_events(log_buffer, "serve.run_ended")] == [0] * 4
    assert len(log_events(log_buffer, "config.reloaded")) == 1
    (failed,) = log_events(log_buffer, "config.reload_failed")
    assert "line" in failed["error"]
    last = read_last_run(last_run_path(scenario.config()))
    assert last is not None
    assert last.started_at == utc(4, 0, 30)


def everyone_env(tokens: dict[str, str]) -> dict[str, str]:
    return {f"TOKEN_{m}": token for m, token in tokens.items()}


async def test_a_missed_night_runs_at_start_up_and_a_failed_one_is_unhealthy(
    tmp_path: Path, clock: FakeClock, log_buffer: Any
) -> None:
    """With the last run two nights back, serve runs at once; its exit 1 makes /healthz say so."""
    rejected = simulated(
        tmp_path, clock, merchants=1, top=TOP, accounts=lambda m, t: Account(token="other")
    )
    async with rejected as scenario:
        config = scenario.config()
        write_last_run(
            last_run_path(config),
            LastRun(
                datetime(2025, 6, 29, 0, 30, tzinfo=UTC), datetime(2025, 6, 29, 1, tzinfo=UTC), 0
            ),
        )
        server = Server(scenario.config_path(), config, clock, scenario.environ)
        assert not server.health().healthy  # the night of July 1st had no run by noon
        stop = asyncio.Event()
        serving = asyncio.create_task(server.run(stop))
        await logged(log_buffer, "serve.run_ended", 1)
        health = server.health()
        stop.set()
        await serving
    assert [s["at"] for s in log_events(log_buffer, "serve.run_starting")] == [
        "2025-07-01T12:00:00Z"
    ]
    assert not health.healthy
    assert "exit code 1" in health.detail


async def test_a_stopped_run_leaves_the_night_owed(
    tmp_path: Path, clock: FakeClock, log_buffer: Any
) -> None:
    """A run stopped part-way records nothing: the night is still owed at the next start-up."""
    async with simulated(tmp_path, clock, merchants=1, top=TOP) as scenario:
        config = scenario.config()
        server = Server(scenario.config_path(), config, clock, scenario.environ)
        stop = asyncio.Event()
        serving = asyncio.create_task(server.run(stop))
        await clock.sleep(3)
        stop.set()
        await serving
    assert len(log_events(log_buffer, "serve.run_starting")) == 1
    assert read_last_run(last_run_path(config)) is None


async def test_a_night_that_cannot_start_is_a_failed_night(
    tmp_path: Path, clock: FakeClock, log_buffer: Any
) -> None:
    """A merchant with no start refuses the night (exit 2); a state store that cannot open
    fails it (exit 1); either way serve goes on and /healthz names the exit code."""
    async with simulated(tmp_path, clock, merchants=1, top={"schedule": TOP["schedule"]}) as sc:
        server = Server(sc.config_path(), sc.config(), clock, sc.environ)
        stop = asyncio.Event()
        serving = asyncio.create_task(server.run(stop))
        await logged(log_buffer, "serve.run_ended", 1)
        refused = server.health()
        sc.top = {**TOP, "state_path": "a-folder"}
        (tmp_path / "a-folder").mkdir()
        sc.config_path()
        server.request_reload()
        await logged(log_buffer, "serve.run_ended", 2)
        broken = server.health()
        stop.set()
        await serving
    assert [e["exit_code"] for e in log_events(log_buffer, "serve.run_ended")] == [2, 1]
    assert "merchants[0].start" in log_events(log_buffer, "serve.run_refused")[0]["error"]
    assert log_events(log_buffer, "serve.run_failed")
    assert "exit code 2" in refused.detail
    assert not broken.healthy
    assert "exit code 1" in broken.detail


def test_serve_needs_a_daily_at(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """serve without schedule.daily_at exits 2 naming the key; a bad time is refused too."""
    monkeypatch.setenv("TOKEN_ABC", "secret-token-value")
    assert main(["serve", "--config", str(write(tmp_path, GOOD))]) == 2
    assert "schedule.daily_at: required by harvester serve" in capsys.readouterr().err
    for bad in ("25:00", "noon", 30):
        path = write(tmp_path, {**GOOD, "schedule": {"daily_at": bad}})
        assert main(["serve", "--config", str(path)]) == 2
        assert "schedule.daily_at" in capsys.readouterr().err


async def test_serve_from_the_command_line_runs_serves_health_and_stops_on_sigterm(
    tmp_path: Path,
) -> None:
    """The real `harvester serve`, never run before: it runs at once, /healthz turns to "did
    all its work", /metrics stays up after the run, and SIGTERM ends it with 143."""
    merchant = "SERVECLI0001"
    token = new_token(merchant)
    settings = sim_settings(
        {merchant: Account(token=token)}, pending_s=0.05, export_base_s=0.1, export_per_object_s=0
    )
    port = free_port()
    async with Simulator(settings, SystemClock(), Faults()) as sim:
        document = {
            "output_dir": "data",
            "state_path": "state/h.sqlite3",
            # Two chunks back from today, whatever today is: the real clock runs this one.
            "default_start": (datetime.now(UTC) - timedelta(days=45)).date().isoformat(),
            "schedule": {"daily_at": "00:30"},
            "metrics": {"listen": f"127.0.0.1:{port}"},
            "timing": {"poll_min_s": 0.05, "poll_max_s": 0.2},
            "regions": {"local": {"base_url": sim.api_url, "windows": "always"}},
            "merchants": [
                {"id": merchant, "region": "local", "token": "${T}", "types": ["ORDERS"]}
            ],
        }
        config = tmp_path / "config.yaml"
        config.write_text(yaml.safe_dump(document))
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "harvester",
            "serve",
            "--config",
            str(config),
            env={**os.environ, "T": token},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        health: dict[str, Any] = {}
        async with aiohttp.ClientSession() as session:
            for _ in range(1000):
                try:
                    async with session.get(f"http://127.0.0.1:{port}/healthz") as answer:
                        health = await answer.json()
                except aiohttp.ClientConnectionError:
                    pass
                if "did all its work" in health.get("detail", ""):
                    break
                await asyncio.sleep(0.02)
            async with session.get(f"http://127.0.0.1:{port}/metrics") as answer:
                metrics = await answer.text()
        process.send_signal(signal.SIGTERM)
        out, err = await process.communicate()
    assert health["healthy"] is True, err.decode()
    assert "harvester_last_success_timestamp_seconds" in metrics
    assert "harvester_run_in_progress 0.0" in metrics
    assert process.returncode == 143
    assert "all requested work done" in out.decode()
    last = read_last_run(tmp_path / "state" / "h.sqlite3.last-run.json")
    assert last is not None
    assert last.exit_code == 0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port

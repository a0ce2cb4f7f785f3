"""The live view: its figures, window states and ETA, drawn on a terminal and ended cleanly."""

from __future__ import annotations

import asyncio
import io
import os
import pty
import random
import re
import sys
from datetime import timedelta
from pathlib import Path
from typing import TextIO

import pytest
import yaml
from rich.console import Console

from harvester.clock import SystemClock
from harvester.clover.chunks import ExportType
from harvester.ops.live import LiveView, duration, live_progress, window_state
from harvester.pacing.gate import HostGate
from harvester.pacing.slots import ExportSlots
from harvester.pacing.windows import WindowTable
from harvester.simulator import Account, Faults, Simulator
from tests.conftest import new_token, sim_settings
from tests.fakeclock import FakeClock


def gate(clock: FakeClock, windows: object) -> HostGate:
    table = WindowTable.parse(windows, "test")
    return HostGate("https://h.invalid", table, clock, 1.0, 30.0, None, random.Random(0))


def text_of(view: LiveView, width: int = 120) -> str:
    console = Console(file=io.StringIO(), width=width, color_system=None)
    console.print(view.render())
    return console.file.getvalue()  # type: ignore[attr-defined,no-any-return]


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [(0, "0s"), (45.4, "45s"), (725, "12m05s"), (12000, "3h20m"), (3 * 86400 + 7200, "3d02h")],
)
def test_duration(seconds: float, shown: str) -> None:
    """Durations are short and human."""
    assert duration(seconds) == shown


def test_window_states_name_the_next_change(clock: FakeClock) -> None:
    """Open with its close, closed with its opening, inside the margin with the next start."""
    # The clock says Tuesday 2025-07-01 12:00 UTC.
    assert window_state(gate(clock, ["every day 10:00-15:00"]), clock.now()) == (
        "open, closes in 3h00m"
    )
    assert window_state(gate(clock, ["Mon-Fri 01:00-05:00"]), clock.now()) == (
        "closed, opens in 13h00m"
    )
    assert window_state(gate(clock, "always"), clock.now()) == "open"
    late = gate(clock, ["every day 10:00-15:00"])
    clock.advance(timedelta(hours=2, minutes=57).total_seconds())
    assert window_state(late, clock.now()) == "open, next export in 19h03m"


def test_view_shows_chunks_objects_mb_exports_and_eta(clock: FakeClock) -> None:
    """The figures add up from the run's events; the ETA follows the pace so far."""
    view = LiveView(clock)
    us_slots = ExportSlots(3)
    view.host_added("us", us_slots, gate(clock, ["every day 10:00-15:00"]))
    view.host_added("eu", ExportSlots(2), gate(clock, ["Mon-Fri 01:00-05:00"]))
    view.chunks_planned(4)
    assert view.eta() == "waiting for a window, 13h00m"  # nothing runs yet, eu is closed
    us_slots.busy()  # the limit drops to 1 of 3
    view.export_created("us")
    clock.advance(600)
    view.chunk_completed(ExportType.PAYMENTS, 1500, 2_500_000)
    view.chunk_failed(ExportType.ORDERS)
    shown = text_of(view)
    assert "chunks 1/4 done, 1 failed" in shown
    assert "objects 1,500" in shown
    assert "MB 2.5" in shown
    assert "ETA waiting for a window, 12h50m" in shown  # nothing runs; eu opens at 01:00
    assert "us      0/1 (max 3)" in shown
    assert "closed, opens in 12h50m" in shown

    async def hold() -> None:
        async with us_slots.hold("M1"):
            assert view.eta() == "10m00s"  # 2 chunks left at 5 minutes each

    asyncio.run(hold())
    view.chunk_completed(ExportType.ORDERS, 1, 1)
    view.chunk_completed(ExportType.ORDERS, 1, 1)
    assert view.eta() == "done"


def plain(text: str) -> str:
    """`text` without terminal escape sequences."""
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)


class Terminal(io.StringIO):
    """A stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


async def test_live_view_draws_on_a_terminal_and_ends_with_its_last_frame(
    clock: FakeClock,
) -> None:
    """While the block runs the view is drawn, logs go through its stream (told it is drawn),
    and at the end its last frame stays, the logs pointing back at the terminal."""
    screen = Terminal()
    logs_to: list[tuple[TextIO, bool]] = []
    view = LiveView(clock)
    view.chunks_planned(2)
    async with live_progress(
        view, screen, lambda stream, drawing: logs_to.append((stream, drawing))
    ):
        assert logs_to == [(sys.stderr, True)]
        view.chunk_completed(ExportType.PAYMENTS, 7, 1000)
        await asyncio.sleep(0.6)  # one refresh of the screen, at its real-time pace
        assert "chunks 1/2 done" in plain(screen.getvalue())
    assert logs_to == [logs_to[0], (screen, False)]
    last_line = text_of(view, 80).rstrip().splitlines()[-1]
    assert plain(screen.getvalue()).rstrip().endswith(last_line.rstrip())
    assert "\x1b[?25h" in screen.getvalue()  # the cursor is shown again


async def backfill_on_a_terminal(
    tmp_path: Path, faults: Faults, *, stdout_too: bool
) -> tuple[int | None, str, str]:
    """The real CLI's backfill with stderr (and stdout, if `stdout_too`) on a pseudo-terminal:
    its exit code, what the terminal showed, and what a stdout pipe got."""
    merchant = "LIVEVIEW0001"
    token = new_token(merchant)
    settings = sim_settings(
        {merchant: Account(token=token)}, pending_s=0.2, export_base_s=0.5, export_per_object_s=0
    )
    async with Simulator(settings, SystemClock(), faults) as sim:
        document = {
            "output_dir": "data",
            "state_path": "state/h.sqlite3",
            "timing": {"poll_min_s": 0.1, "poll_max_s": 0.3, "backoff_base_s": 0.1},
            "regions": {"local": {"base_url": sim.api_url, "windows": "always"}},
            "merchants": [{"id": merchant, "region": "local", "token": "${T}"}],
        }
        config = tmp_path / "config.yaml"
        config.write_text(yaml.safe_dump(document))
        leader, follower = pty.openpty()
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "harvester",
            "backfill",
            "--config",
            str(config),
            "--from",
            "2025-01-01",
            "--to",
            "2025-02-15",
            env={**os.environ, "T": token, "COLUMNS": "120", "TERM": "xterm"},
            stdout=follower if stdout_too else asyncio.subprocess.PIPE,
            stderr=follower,
        )
        os.close(follower)
        screen = await asyncio.to_thread(read_all, leader)
        out, _ = await process.communicate()
    return process.returncode, screen, (out or b"").decode()


async def test_a_backfill_on_a_terminal_draws_the_view_and_ends_cleanly(tmp_path: Path) -> None:
    """The real CLI, its stderr a pseudo-terminal: the view is drawn, its last frame shows every
    chunk done, the cursor comes back, and stdout (a pipe) holds the summary alone."""
    code, screen, out = await backfill_on_a_terminal(tmp_path, Faults(), stdout_too=False)
    assert code == 0, screen
    shown = plain(screen)
    assert "chunks 4/4 done" in shown
    assert "exports running/limit" in shown
    assert "ETA done" in shown
    assert "\x1b[?25h" in screen  # the cursor is shown again
    assert out.startswith("merchant")  # the summary, with no drawing in it
    assert "\x1b[" not in out


async def test_under_the_view_only_warnings_are_logged_and_the_summary_comes_last(
    tmp_path: Path,
) -> None:
    """stdout and stderr both on the terminal: while the view is drawn, info lines stay off
    the screen and a warning is shown; the summary is printed below the view's last frame."""
    faults = Faults()
    faults.script("file_5xx")  # one download fails once: a file.retry warning
    code, screen, _ = await backfill_on_a_terminal(tmp_path, faults, stdout_too=True)
    assert code == 0, screen
    shown = plain(screen)
    assert "file.retry" in shown
    for info in ("run.started", "export.created", "chunk.completed", "run.finished"):
        assert info not in shown
    summary_at = shown.rindex("merchant ")
    assert shown.rindex("exports running/limit") < summary_at
    assert "chunks 4/4 done" in shown[:summary_at]
    summary = shown[summary_at:].rstrip().splitlines()
    assert summary[1].startswith("LIVEVIEW0001  ORDERS")
    assert summary[-1] == "all requested work done"  # nothing printed after it


def read_all(fd: int) -> str:
    """Everything written to a pseudo-terminal until its writer closes it."""
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO: the other side is closed
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(fd)
    return b"".join(chunks).decode(errors="replace")

"""The command line: exit codes, refusals of bad input, and no token in any output."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from harvester.cli import main
from harvester.clock import SystemClock
from harvester.simulator import Account, Faults, Simulator
from harvester.state.sqlite import Store
from tests.conftest import new_token, sim_settings

GOOD: dict[str, Any] = {
    "output_dir": "data",
    "state_path": "state/harvester.sqlite3",
    "regions": {"local": {"base_url": "http://127.0.0.1:9", "windows": "always"}},
    "merchants": [{"id": "ABC123", "region": "local", "token": "${TOKEN_ABC}"}],
}
RANGE = ["--from", "2025-01-01", "--to", "2025-02-01"]


def write(tmp_path: Path, document: Any) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(document if isinstance(document, str) else yaml.safe_dump(document))
    return path


def with_merchant(**changes: Any) -> dict[str, Any]:
    return {**GOOD, "merchants": [{**GOOD["merchants"][0], **changes}]}


REFUSALS: list[tuple[str, Any, list[str], str]] = [
    ("missing file", None, [], "no such file"),
    ("malformed yaml", "merchants: [\n  - id: A\n   bad", [], "line"),
    ("unknown key", {**GOOD, "chunk_dayz": 3}, [], "chunk_dayz"),
    ("unknown nested key", with_merchant(tokn="x"), [], "merchants[0].tokn"),
    ("missing env var", with_merchant(token="${NOT_SET_ANYWHERE}"), [], "NOT_SET_ANYWHERE"),
    ("unknown region", with_merchant(region="mars"), [], "merchants[0].region"),
    ("unknown type", with_merchant(types=["REFUNDS"]), [], "merchants[0].types[0]"),
    (
        "duplicate merchant",
        {**GOOD, "merchants": GOOD["merchants"] * 2},
        [],
        "merchants[1].id",
    ),
    ("bad merchant id", with_merchant(id="../etc"), [], "merchants[0].id"),
    ("no merchants", {**GOOD, "merchants": []}, [], "merchants"),
    ("state pool of none", {**GOOD, "state_pool_size": 0}, [], "state_pool_size"),
    (
        "limit below 1",
        {**GOOD, "regions": {"local": {**GOOD["regions"]["local"], "max_concurrent_exports": 0}}},
        [],
        "regions.local.max_concurrent_exports",
    ),
    (
        "http to a remote host",
        {
            **GOOD,
            "regions": {"local": {**GOOD["regions"]["local"], "base_url": "http://example.com"}},
        },
        [],
        "regions.local.base_url",
    ),
    ("from not before to", GOOD, ["--from", "2025-02-01", "--to", "2025-02-01"], "--from"),
    ("unparsable date", GOOD, ["--from", "2025-13-01", "--to", "2025-02-01"], "--from"),
    ("unknown merchant on the command line", GOOD, ["--merchant", "NOPE", *RANGE], "NOPE"),
]


@pytest.mark.parametrize(
    ("document", "args", "culprit"),
    [case[1:] for case in REFUSALS],
    ids=[case[0] for case in REFUSALS],
)
def test_bad_input_is_refused_before_anything_is_written(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    document: Any,
    args: list[str],
    culprit: str,
) -> None:
    """Each bad input exits 2 with a message naming the culprit, and creates nothing."""
    monkeypatch.setenv("TOKEN_ABC", "secret-token-value")
    config = write(tmp_path, document) if document is not None else tmp_path / "config.yaml"
    code = main(["backfill", "--config", str(config), *(args or RANGE)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert culprit in err
    assert "secret-token-value" not in err
    assert not (tmp_path / "state").exists()
    assert not (tmp_path / "data").exists()


def test_check_config_accepts_a_good_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """check-config exits 0 on a valid file and touches nothing."""
    monkeypatch.setenv("TOKEN_ABC", "secret-token-value")
    assert main(["check-config", "--config", str(write(tmp_path, GOOD))]) == 0
    assert "ok" in capsys.readouterr().out
    assert not (tmp_path / "state").exists()


def test_plan_prints_exports_and_calls_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """plan lists the 30-day chunks per merchant and type; nothing is written or called."""
    monkeypatch.setenv("TOKEN_ABC", "secret-token-value")
    config = write(tmp_path, GOOD)  # its host (port 9) would refuse any call
    assert (
        main(["plan", "--config", str(config), "--from", "2025-01-01", "--to", "2025-03-15"]) == 0
    )
    out = capsys.readouterr().out
    assert "6 exports" in out
    assert "ABC123  PAYMENTS  2025-01-01T00:00:00Z/2025-01-31T00:00:00Z" in out
    assert not (tmp_path / "state").exists()


def test_unknown_command_word_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    """A misspelt command exits 2."""
    with pytest.raises(SystemExit) as exited:
        main(["backfil"])
    assert exited.value.code == 2


def files_except_config(folder: Path) -> bytes:
    """Everything the harvester wrote: output, state, logs."""
    return b"".join(
        p.read_bytes() for p in folder.rglob("*") if p.is_file() and p.name != "config.yaml"
    )


async def run_cli(*args: str, env: dict[str, str]) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "harvester",
        *args,
        env={**os.environ, **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_token_appears_in_no_output(tmp_path: Path) -> None:
    """A real CLI run logs, reports and stores nothing that contains a merchant's token."""
    merchants = ["LEAKCHECK0001", "LEAKCHECK0002"]
    tokens = {m: new_token(m) for m in merchants}
    settings = sim_settings(
        {m: Account(token=t) for m, t in tokens.items()},
        pending_s=0.05,
        export_base_s=0.2,
        export_per_object_s=0.0,
    )
    async with Simulator(settings, SystemClock(), Faults()) as sim:
        document = {
            "output_dir": "data",
            "state_path": "state/h.sqlite3",
            "timing": {
                "poll_min_s": 0.05,
                "poll_max_s": 0.5,
                "backoff_base_s": 0.05,
                "backoff_max_s": 0.5,
            },
            "regions": {"local": {"base_url": sim.api_url, "windows": "always"}},
            "merchants": [{"id": m, "region": "local", "token": f"${{T_{m}}}"} for m in merchants],
        }
        config = write(tmp_path, document)
        env = {f"T_{m}": t for m, t in tokens.items()}
        code, out, err = await run_cli(
            "backfill",
            "--config",
            str(config),
            "--from",
            "2025-01-01",
            "--to",
            "2025-02-15",
            "--log-level",
            "debug",
            env=env,
        )
        assert code == 0, err
        assert "export.created" in err
        assert "chunk.completed" in err
        status_code, status_out, _ = await run_cli("status", "--config", str(config), env=env)
        assert status_code == 0
    written = files_except_config(tmp_path)
    for token in tokens.values():
        assert token not in out + err + status_out
        assert token.encode() not in written


async def test_simulate_stopped_by_a_signal_exits_with_its_code() -> None:
    """`harvester simulate` ended by SIGTERM exits 128 + 15, as a run does."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "harvester",
        "simulate",
        "--port",
        "0",
        "--merchant",
        "M1=tok-1",
        env={**os.environ},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    line = await asyncio.wait_for(process.stdout.readline(), timeout=30)
    assert line.startswith(b"simulator: api http://127.0.0.1:")
    process.send_signal(signal.SIGTERM)
    await asyncio.wait_for(process.communicate(), timeout=30)
    assert process.returncode == 128 + signal.SIGTERM


@pytest.mark.parametrize("command", ["plan", "status"])
async def test_plan_and_status_piped_into_head_stop_quietly(tmp_path: Path, command: str) -> None:
    """`harvester plan ... | head` and `harvester status | head`: the reader goes away after
    two lines, and the harvester exits 0 with nothing on stderr (no BrokenPipeError)."""
    merchants = [
        {"id": f"M{n:05d}", "region": "local", "token": "${TOKEN_ABC}"} for n in range(800)
    ]
    config = write(tmp_path, {**GOOD, "chunk_days": 1, "merchants": merchants})
    if command == "status":
        async with await Store.open(tmp_path / "state" / "harvester.sqlite3", SystemClock()):
            pass
        args = f"status --config {config}"
    else:
        args = f"plan --config {config} --from 2024-01-01 --to 2024-04-01"
    errors = tmp_path / "stderr.txt"
    # Far more than a pipe holds, so that the harvester writes into a closed pipe.
    pipeline = f"set -o pipefail; {sys.executable} -m harvester {args} 2>{errors} | head -n 2"
    process = await asyncio.create_subprocess_exec(
        "bash",
        "-c",
        pipeline,
        env={**os.environ, "TOKEN_ABC": "secret-token-value"},
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await process.communicate()
    assert errors.read_text() == ""
    assert process.returncode == 0
    assert len(out.decode().splitlines()) == 2

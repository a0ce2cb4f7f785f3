"""Secrets against a server that echoes them: no token or file grant in any output or file."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from tests.hostile.running import ONE_CHUNK, TOKEN, run_cli, run_here, write_config, written
from tests.hostile.server import SIGNATURE, HostileServer, Mode


@pytest.mark.parametrize(
    "mode",
    [Mode.ECHO_CREATE_400, Mode.ECHO_POLL_500, Mode.TOKEN_IN_FIELDS, Mode.FILE_ERROR_500],
)
async def test_an_echoed_token_reaches_no_output_and_no_file(tmp_path: Path, mode: Mode) -> None:
    """Whatever the server echoes, the token appears in no stdout, stderr, status, status
    --json, state file or output, nor the file grant anywhere but the (private) state file;
    the chunk fails with a readable error."""
    async with HostileServer(mode) as server:
        config = str(write_config(tmp_path, server.url))
        run = await run_cli("backfill", "--config", config, *ONE_CHUNK, "--log-level", "debug")
    status = run_here("status", "--config", config)
    status_json = run_here("status", "--config", config, "--json")
    assert run.code == 1, run.err
    assert status.code == status_json.code == 0
    assert "last error" in status.out
    shown = run.out + run.err + status.out + status_json.out
    assert TOKEN not in shown
    assert TOKEN.encode() not in written(tmp_path)
    for grant in (SIGNATURE, SIGNATURE.partition("=")[2]):
        assert grant not in shown
        assert grant.encode() not in written(tmp_path / "data")
    assert "Traceback" not in run.err
    if mode is not Mode.FILE_ERROR_500:
        assert "***" in run.out  # the echo arrived, and was blotted out where it entered


async def test_state_file_is_private(tmp_path: Path) -> None:
    """The state file the harvester creates is 0600, its folder 0700."""
    async with HostileServer(Mode.GOOD) as server:
        config = str(write_config(tmp_path, server.url))
        run = await run_cli("backfill", "--config", config, *ONE_CHUNK)
    assert run.code == 0, run.err
    state = tmp_path / "state" / "harvester.sqlite3"
    assert stat.S_IMODE(state.stat().st_mode) == 0o600
    assert stat.S_IMODE(state.parent.stat().st_mode) == 0o700


async def test_a_state_file_readable_by_others_is_warned_about(tmp_path: Path) -> None:
    """An existing state file that others may read gets a warning naming it."""
    async with HostileServer(Mode.GOOD) as server:
        config = str(write_config(tmp_path, server.url))
        assert (await run_cli("backfill", "--config", config, *ONE_CHUNK)).code == 0
        state = tmp_path / "state" / "harvester.sqlite3"
        state.chmod(0o644)
        run = await run_cli("backfill", "--config", config, *ONE_CHUNK)
    assert run.code == 0, run.err
    assert "state.readable_by_others" in run.err
    assert str(state) in run.err


async def test_file_url_grants_stay_out_of_logs(tmp_path: Path) -> None:
    """A failing file download is reported by host and path, never with its query."""
    async with HostileServer(Mode.FILE_ERROR_500) as server:
        config = str(write_config(tmp_path, server.url))
        run = await run_cli("backfill", "--config", config, *ONE_CHUNK, "--log-level", "debug")
    assert run.code == 1
    assert f"{server.url}/files/" in run.out
    assert "X-Amz-Signature" not in run.out + run.err


def test_short_tokens_are_refused_outside_loopback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A token shorter than Clover's (16 characters) is a config error naming it, exit 2,
    unless its region is on loopback."""
    monkeypatch.setenv("HOSTILE_TOKEN_SHORT", "x")
    path = tmp_path / "config.yaml"
    path.write_text("merchants: [{id: M1, region: us, token: '${HOSTILE_TOKEN_SHORT}'}]\n")
    refused = run_here("check-config", "--config", str(path))
    assert refused.code == 2
    assert "merchants[0].token: shorter than 16 characters" in refused.err
    local = "regions: {local: {base_url: 'http://127.0.0.1:9'}}\n"
    path.write_text(local + "merchants: [{id: M1, region: local, token: x}]\n")
    assert run_here("check-config", "--config", str(path)).code == 0


async def test_a_short_loopback_token_does_not_mangle_log_lines(tmp_path: Path) -> None:
    """With the token 'x', log lines keep their words: export.created, not e***port.created."""
    async with HostileServer(Mode.GOOD) as server:
        config = str(write_config(tmp_path, server.url))
        run = await run_cli("backfill", "--config", config, *ONE_CHUNK, env={"HOSTILE_TOKEN": "x"})
    assert run.code == 0, run.err
    assert '"event": "export.created"' in run.err
    assert "e***port" not in run.err

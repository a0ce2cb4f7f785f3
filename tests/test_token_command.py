"""`token_command`: the protocol read, and the command run for real as a subprocess."""

from __future__ import annotations

import asyncio
import json
import re
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg
import pytest

from harvester.config import Config, TokenCommand, load_config
from harvester.errors import ConfigError, TokenCommandFailed
from harvester.harvest.token_command import (
    MAX_STDOUT_BYTES,
    CommandToken,
    TokenCommandRunner,
    first_line,
    read_answer,
)
from harvester.scrub import forget_secrets, scrub
from tests.apptokens import app_script, runs_of, write_script
from tests.conftest import NOW
from tests.fakeclock import FakeClock

TOKEN = "tok-cmd-0123456789abcdef"


@pytest.fixture(autouse=True)
def no_secrets() -> None:
    forget_secrets()


@pytest.mark.parametrize(
    ("expires_at", "expected"),
    [
        (None, None),
        ("2026-12-05T00:00:00Z", datetime(2026, 12, 5, tzinfo=UTC)),
        ("2026-12-05T02:00:00+02:00", datetime(2026, 12, 5, tzinfo=UTC)),
        (1_796_428_800, datetime(2026, 12, 5, tzinfo=UTC)),
        (1_796_428_800.5, datetime(2026, 12, 5, 0, 0, 0, 500_000, tzinfo=UTC)),
        ("1796428800", datetime(2026, 12, 5, tzinfo=UTC)),
    ],
)
def test_answers_are_read(expires_at: object, expected: datetime | None) -> None:
    """The access token, and expires_at as ISO 8601 with an offset or epoch seconds."""
    document: dict[str, Any] = {"access_token": f" {TOKEN}\n", "other": 1}
    if expires_at is not None:
        document["expires_at"] = expires_at
    answer = read_answer(json.dumps(document).encode())
    assert (answer.access_token, answer.expires_at) == (TOKEN, expected)
    assert TOKEN not in repr(answer)
    assert scrub(f"said {TOKEN}") == "said ***"  # registered as it was read


@pytest.mark.parametrize(
    ("stdout", "problem"),
    [
        (b"\xff", "its output is not UTF-8 text"),
        (b"", "its output is not JSON (Expecting value at line 1, column 1)"),
        (b'["x"]', "its output is JSON but not an object (got list)"),
        (b'{"token": "x"}', "its output has no access_token (text)"),
        (b'{"access_token": 5}', "its output has no access_token (text)"),
        (b'{"access_token": "  "}', "its output has no access_token (text)"),
        (b'{"access_token": "a b"}', "its access_token holds spaces"),
        (b'{"access_token": "ab\\r\\nX-Evil: 1"}', "its access_token holds spaces"),
        (b'{"access_token": "ab", "expires_at": "2026-12-05T00:00:00"}', "its expires_at"),
        (b'{"access_token": "ab", "expires_at": "soon"}', "its expires_at 'soon' is neither"),
        (b'{"access_token": "ab", "expires_at": true}', "its expires_at True is neither"),
        (b'{"access_token": "ab", "expires_at": 1e300}', "its expires_at 1e+300 is not a time"),
    ],
)
def test_bad_answers_are_refused_without_quoting_them(stdout: bytes, problem: str) -> None:
    """Output that is not the protocol's JSON object is refused, saying what is wrong."""
    with pytest.raises(ValueError, match=f"^{re.escape(problem)}"):
        read_answer(stdout)


def test_a_bare_token_printed_is_scrubbed_anyway() -> None:
    """A command printing its token bare (no JSON) is refused, and that token is blotted out
    of what is shown from then on; a short word is not."""
    with pytest.raises(ValueError, match="not JSON"):
        read_answer(f"{TOKEN}\n".encode())
    with pytest.raises(ValueError, match="not JSON"):
        read_answer(b"error")
    assert scrub(f"stderr: {TOKEN} error") == "stderr: *** error"


def test_the_first_line_of_stderr_is_scrubbed_and_bounded() -> None:
    """Of stderr, the first non-empty line: control characters out, secrets out, cut short."""
    read_answer(json.dumps({"access_token": TOKEN}).encode())
    assert first_line(f"\n  \x1b[31mno: {TOKEN}\x07\nmore".encode()) == "?[31mno: ***?"
    assert first_line(b"") == "(empty)"
    assert first_line(b"Authorization: Bearer abc") == "Authorization: Bearer ***"
    long = first_line(b"y" * 10_000 + b" " + TOKEN.encode())
    assert len(long) == 200
    assert long.endswith("...")


def runner(command: list[str], **settings: Any) -> TokenCommandRunner:
    return TokenCommandRunner(TokenCommand(argv=tuple(command), shown="app-token", **settings))


async def test_the_command_gets_the_merchant_and_its_region(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The merchant id comes last, the arguments reach it as written (no shell), and its
    environment is the process's plus CLOVER_MERCHANT_ID and CLOVER_REGION."""
    command = write_script(
        tmp_path,
        "echo",
        """\
        import json, os, sys
        json.dump({"access_token": "tok-" + "-".join(sys.argv[1:]).replace(" ", "_"),
                   "expires_at": os.environ["CLOVER_REGION"] == "eu" and 1796428800,
                   }, sys.stdout) if os.environ["CLOVER_MERCHANT_ID"] == sys.argv[-1] \\
            and os.environ["FROM_PARENT"] == "yes" else sys.exit(9)
        """,
    )
    monkeypatch.setenv("FROM_PARENT", "yes")
    answer = await runner([*command, "$(id)", "a;b"]).fetch("M1", "eu")
    assert answer.access_token == "tok-$(id)-a;b-M1"
    assert answer.expires_at == datetime(2026, 12, 5, tzinfo=UTC)


@pytest.mark.parametrize(
    ("body", "settings", "error"),
    [
        (
            "import sys; sys.stderr.write('\\n\\ndb down\\nmore'); sys.exit(3)",
            {},
            "token_command app-token: exited with status 3; stderr: db down",
        ),
        (
            'import sys; sys.stdout.write(\'{"access_token": "tok-cmd-0123456789abcdef"}\'); '
            "sys.stderr.write('leaked tok-cmd-0123456789abcdef'); sys.exit(1)",
            {},
            "token_command app-token: exited with status 1; stderr: leaked ***",
        ),
        (
            "import sys; sys.stdout.write('ok')",
            {},
            "token_command app-token: exited 0 but its output is not JSON",
        ),
        (
            "import sys; sys.stdout.write('x' * 1_000_000); sys.stdout.flush(); "
            "import time; time.sleep(60)",
            {},
            f"token_command app-token: printed more than {MAX_STDOUT_BYTES} bytes (killed)",
        ),
        (
            "import os; os.kill(os.getpid(), 9)",
            {},
            "token_command app-token: exited with status -9; stderr: (empty)",
        ),
    ],
)
async def test_failures_name_the_command_status_and_stderr(
    tmp_path: Path, body: str, settings: dict[str, Any], error: str
) -> None:
    """A command that fails raises TokenCommandFailed naming the command, what happened and
    the first line of its stderr, scrubbed."""
    command = write_script(tmp_path, "failing", body)
    with pytest.raises(TokenCommandFailed) as caught:
        await runner(command, **settings).fetch("M1", "us")
    assert str(caught.value).startswith(error)
    assert TOKEN not in str(caught.value)


async def test_a_command_past_its_timeout_is_killed_with_what_it_started(tmp_path: Path) -> None:
    """A command still running after timeout_s is killed, and so is the process it started."""
    command = write_script(
        tmp_path,
        "hangs",
        f"""\
        import subprocess, sys
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        open({str(tmp_path / "pids")!r}, "w").write(str(child.pid))
        sys.stderr.write("connecting\\n")
        sys.stderr.flush()
        child.wait()
        """,
    )
    pids = tmp_path / "pids"
    with pytest.raises(TokenCommandFailed) as caught:
        # Long enough for a loaded machine to start two interpreters.
        await runner(command, timeout_s=5).fetch("M1", "us")
    assert str(caught.value) == (
        "token_command app-token: timed out after 5 s (killed); stderr: connecting"
    )
    grandchild = int(pids.read_text())
    for _ in range(500):  # reaped by init once killed
        if not _running(grandchild):
            break
        await asyncio.sleep(0.01)
    else:
        raise AssertionError("the command's child was left running")


def _running(pid: int) -> bool:
    """Is the process there and not a zombie?"""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


async def test_a_program_that_cannot_start_is_named(tmp_path: Path) -> None:
    """A program gone since the config was read is a failure of its merchant."""
    with pytest.raises(TokenCommandFailed, match="app-token: cannot start it: No such file"):
        await runner([str(tmp_path / "gone")]).fetch("M1", "us")


async def test_at_most_concurrency_commands_run_at_once(tmp_path: Path) -> None:
    """With token_command_concurrency 2, five merchants' commands run two at a time."""
    go = tmp_path / "go"
    command = write_script(
        tmp_path,
        "waits",
        f"""\
        import os, sys, time
        open(os.path.join({str(tmp_path)!r}, "started-" + sys.argv[-1]), "w").close()
        while not os.path.exists({str(go)!r}):
            time.sleep(0.01)
        sys.stdout.write('{{"access_token": "tok-%s"}}' % sys.argv[-1])
        """,
    )
    runs = runner(command, concurrency=2, timeout_s=60)
    fetches = [asyncio.create_task(runs.fetch(f"M{n}", "us")) for n in range(5)]

    def started() -> int:
        return len(list(tmp_path.glob("started-*")))

    for _ in range(3000):
        if started() == 2:
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.3)  # a third would have started by now
    assert started() == 2
    go.touch()
    answers = await asyncio.gather(*fetches)
    assert [a.access_token for a in answers] == [f"tok-M{n}" for n in range(5)]
    assert started() == 5


def answer(token: str, expires_at: datetime | None = None) -> dict[str, Any]:
    document: dict[str, Any] = {"access_token": token}
    if expires_at is not None:
        document["expires_at"] = expires_at.timestamp()
    return {"out": json.dumps(document)}


def command_token(
    tmp_path: Path, answers: list[dict[str, Any]], clock: FakeClock, **settings: Any
) -> CommandToken:
    command = app_script(tmp_path, {"M1": answers})
    return CommandToken("M1", "us", runner(command, **settings), clock, margin_s=300, ttl_s=3600)


async def test_a_token_is_kept_until_the_margin_before_it_expires(
    tmp_path: Path, clock: FakeClock
) -> None:
    """The command runs once per token: again within the margin of expires_at, or of ttl_s
    when the answer gave none."""
    tokens = command_token(
        tmp_path,
        [answer("tok-1", NOW + timedelta(seconds=1000)), answer("tok-2"), answer("tok-3")],
        clock,
    )
    assert [await tokens.get(), await tokens.get()] == ["tok-1", "tok-1"]
    clock.advance(699)
    assert await tokens.get() == "tok-1"
    clock.advance(1)
    assert await tokens.get() == "tok-2"  # 300 s before its expiry
    clock.advance(3299)
    assert await tokens.get() == "tok-2"
    clock.advance(1)
    assert await tokens.get() == "tok-3"  # 300 s before the end of its ttl of 3600 s
    assert runs_of(tmp_path, "M1") == 3
    assert "tok-2" not in repr(tokens)


async def test_after_a_401_the_command_is_asked_once_more(tmp_path: Path, clock: FakeClock) -> None:
    """A rejected token is worth a new try only if the command gives a different one; given
    the same one back, the merchant's token is rejected, and the command not run again."""
    tokens = command_token(tmp_path, [answer("tok-1"), answer("tok-2")], clock)
    assert await tokens.get() == "tok-1"
    assert await tokens.rejected("tok-1") is True
    assert await tokens.get() == "tok-2"
    assert await tokens.rejected("tok-1") is True  # already replaced: no run
    assert runs_of(tmp_path, "M1") == 2
    assert await tokens.rejected("tok-2") is False  # the same again
    assert await tokens.rejected("tok-2") is False
    assert runs_of(tmp_path, "M1") == 3


async def test_a_failed_command_fails_every_later_ask(tmp_path: Path, clock: FakeClock) -> None:
    """Once the command failed for a merchant, the same error comes back without a run."""
    tokens = command_token(tmp_path, [{"err": "no such merchant", "code": 2}], clock)
    for _ in range(2):
        with pytest.raises(TokenCommandFailed, match="status 2; stderr: no such merchant"):
            await tokens.get()
    assert runs_of(tmp_path, "M1") == 1


async def test_a_token_that_has_expired_already_is_a_failure(
    tmp_path: Path, clock: FakeClock
) -> None:
    """A token whose expires_at has passed is refused (it would only earn a 401)."""
    tokens = command_token(tmp_path, [answer("tok-1", NOW - timedelta(seconds=1))], clock)
    with pytest.raises(TokenCommandFailed, match="gave a token that expired at 2025-07-01T11:59"):
        await tokens.get()


async def test_the_readme_psql_example_reads_the_token(
    tmp_path: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The README's example command, run as the harvester runs it against a real PostgreSQL,
    prints the token and expiry the app stored for the merchant."""
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    block = readme.split("  ```sh\n  #!/bin/sh\n", 1)[1].split("  ```\n", 1)[0]
    script = tmp_path / "app-token"
    script.write_text("#!/bin/sh\n" + textwrap.dedent(block))
    script.chmod(0o755)
    with psycopg.connect(pg_url, autocommit=True) as connection:
        connection.execute(
            "CREATE TABLE clover_installs (merchant_id text, access_token text, "
            "expires_at timestamptz)"
        )
        connection.execute(
            "INSERT INTO clover_installs VALUES ('M1', %s, '2026-12-05T00:00:00Z')", (TOKEN,)
        )
    url = urlsplit(pg_url)
    for name, value in {
        "PGHOST": url.hostname,
        "PGPORT": str(url.port),
        "PGUSER": url.username,
        "PGDATABASE": url.path.lstrip("/"),
    }.items():
        assert value is not None
        monkeypatch.setenv(name, value)
    answer = await runner([str(script)]).fetch("M1", "us")
    assert (answer.access_token, answer.expires_at) == (TOKEN, datetime(2026, 12, 5, tzinfo=UTC))
    with pytest.raises(TokenCommandFailed, match="exited 0 but its output is not JSON"):
        await runner([str(script)]).fetch("UNKNOWN", "us")


def load_with(tmp_path: Path, top: str) -> Config:
    path = tmp_path / "config.yaml"
    path.write_text(top + "merchants: [{id: M1}]\n")
    return load_config(path, environ={"DB": "app-db"})


def test_the_config_reads_token_command_and_its_settings(tmp_path: Path) -> None:
    """A relative program resolves against the config's folder, a bare name on PATH; ${VAR}
    is filled in; the command as written is what messages show."""
    script = tmp_path / "bin" / "app-token"
    script.parent.mkdir()
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    config = load_with(
        tmp_path,
        "token_command: [bin/app-token, --db, '${DB}']\ntoken_command_ttl_s: 600\n"
        "token_command_timeout_s: 5\ntoken_command_concurrency: 2\n",
    )
    command = config.token_command
    assert command is not None
    assert command.argv == (str(script), "--db", "app-db")
    assert command.shown == "bin/app-token --db '${DB}'"
    assert (command.ttl_s, command.timeout_s, command.concurrency) == (600, 5, 2)
    assert "app-db" not in repr(command)
    assert "app-token" in repr(TokenCommandRunner(command))
    assert config.merchants[0].token is None
    assert config.merchants[0].refresh_token is None
    defaults = load_with(tmp_path, "token_command: [sh]\n").token_command
    assert defaults is not None
    assert defaults.argv[0].endswith("/sh")
    assert (defaults.ttl_s, defaults.timeout_s, defaults.concurrency) == (3600, 30, 4)


@pytest.mark.parametrize(
    ("top", "message"),
    [
        ("token_command_ttl_s: 5\n", "token_command_ttl_s: only used with token_command"),
        ("token_command: sh\n", "token_command: expected a list [PROGRAM, ARG...]"),
        ("token_command: []\n", "token_command: expected a list [PROGRAM, ARG...]"),
        ("token_command: [sh, 5]\n", "token_command[1]: expected text (quote it), got 5"),
        ("token_command: [sh, '${NOPE}']\n", "token_command[1]: environment variable NOPE"),
        ("token_command: [' ']\n", "token_command[0]: the program must not be empty"),
        ("token_command: [./nowhere]\n", "token_command[0]: './nowhere': no such executable"),
        ("token_command: [no-such-program-x]\n", "token_command[0]: 'no-such-program-x': not "),
        ("token_command: [sh]\ntoken_command_timeout_s: 0\n", "token_command_timeout_s: must be"),
        ("token_command: [sh]\ntoken_command_concurrency: 0\n", "token_command_concurrency: must"),
    ],
)
def test_bad_token_commands_are_refused(tmp_path: Path, top: str, message: str) -> None:
    """Each bad token_command setting is refused by name."""
    with pytest.raises(ConfigError) as caught:
        load_with(tmp_path, top)
    assert str(caught.value).startswith(message)


def test_an_endless_expiry_is_no_time() -> None:
    """expires_at Infinity (Python's JSON reads it) is refused."""
    with pytest.raises(ValueError, match="its expires_at inf is not a time"):
        read_answer(b'{"access_token": "ab", "expires_at": Infinity}')


async def test_endless_stderr_is_drained_and_its_first_line_kept(tmp_path: Path) -> None:
    """A command that writes megabytes on stderr is not blocked by a full pipe; its first
    line is what is shown."""
    command = write_script(
        tmp_path,
        "noisy",
        "import sys; sys.stderr.write('first\\n' + 'e' * 3_000_000); sys.exit(4)",
    )
    with pytest.raises(TokenCommandFailed, match=r"status 4; stderr: first$"):
        await runner(command).fetch("M1", "us")


async def test_a_flood_on_stdout_is_cut_short_even_when_its_pipe_was_paused(
    tmp_path: Path,
) -> None:
    """A command that fills a large pipe at once, so that its reader pauses the pipe, is
    killed at the stdout cap and reaped at once: it never waits for its timeout (a pipe left
    unread kept the process from being reaped; CI saw it time out)."""
    command = write_script(
        tmp_path,
        "flood",
        """\
        import fcntl, os, time
        fcntl.fcntl(1, 1031, 1 << 20)  # F_SETPIPE_SZ: all of it fits in the pipe at once
        os.write(1, b"x" * (1 << 20))
        time.sleep(60)
        """,
    )
    with pytest.raises(TokenCommandFailed) as caught:
        await runner(command, timeout_s=50).fetch("M1", "us")
    assert str(caught.value) == (
        f"token_command app-token: printed more than {MAX_STDOUT_BYTES} bytes (killed); "
        "stderr: (empty)"
    )

"""Merchants from a merchants_file and tokens from a token_command, as an app keeps them.

`AppScenario` is a `Scenario` whose config lists no merchant itself: they are rows of a CSV
file, and their tokens come from a script the test writes (real subprocesses, run with this
Python). Scripts are written here, each named for what it does.
"""

from __future__ import annotations

import csv
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import FAST_TIMING, Scenario

# -I -S: no site-packages, no user environment; the interpreter starts in a few milliseconds.
PYTHON = (sys.executable, "-I", "-S")


def write_script(tmp_path: Path, name: str, body: str) -> list[str]:
    """A Python script in tmp_path; the token_command that runs it."""
    path = tmp_path / f"{name}.py"
    path.write_text(textwrap.dedent(body))
    return [*PYTHON, str(path)]


def token_of(merchant_id: str, salt: str, generation: int = 1) -> str:
    """The token the app hands out for a merchant (as `tokens_script` prints it)."""
    return f"app-{merchant_id}-{generation}-{salt}"


def tokens_script(tmp_path: Path, salt: str) -> list[str]:
    """Prints each merchant's token, without expires_at: a shell script, which starts several
    times faster than Python (1,000 of them run in the 1,000-merchant test)."""
    path = tmp_path / "tokens.sh"
    path.write_text(f"""printf '{{"access_token": "app-%s-1-{salt}"}}' "$1"\n""")
    return ["/bin/sh", str(path)]


@dataclass
class AppScenario(Scenario):
    """The merchants of `tokens` as rows of merchants.csv (the order of `tokens`), their
    tokens from `command`."""

    command: list[str] = field(default_factory=list)
    types: str = "PAYMENTS ORDERS"
    timing: dict[str, float] = field(default_factory=dict)  # over FAST_TIMING
    extra_top: dict[str, Any] = field(default_factory=dict)

    def config_path(self) -> Path:
        rows = self.tmp_path / "merchants.csv"
        with rows.open("w", newline="") as file:
            writer = csv.writer(file)
            writer.writerow(["id", "region", "types"])
            writer.writerows([m, "local", self.types] for m in self.tokens)
        document = {
            "output_dir": "data",
            "state_path": "state/harvester.sqlite3",
            "timing": {**FAST_TIMING, **self.timing},
            "regions": {
                "local": {
                    "base_url": self.sim.api_url,
                    "windows": "always",
                    "max_concurrent_exports": 2,
                    **self.region,
                }
            },
            "merchants_file": "merchants.csv",
            "token_command": self.command,
            **self.extra_top,
        }
        path = self.tmp_path / "config.yaml"
        path.write_text(yaml.safe_dump(document, sort_keys=False))
        return path


def app_script(tmp_path: Path, answers: dict[str, list[dict[str, Any]]]) -> list[str]:
    """A token_command whose n-th run for a merchant gives `answers[merchant][n]` (the last
    one again past the end): a mapping of `out` (stdout), `err` (stderr), `code` (the exit
    status) and `sleep` (seconds before exiting). Each run is counted in runs-<merchant>."""
    return write_script(
        tmp_path,
        "app",
        f"""\
        import os, sys, time
        merchant = sys.argv[-1]
        assert os.environ["CLOVER_MERCHANT_ID"] == merchant
        answers = {answers!r}[merchant]
        counter = os.path.join({str(tmp_path)!r}, "runs-" + merchant)
        runs = int(open(counter).read()) if os.path.exists(counter) else 0
        open(counter, "w").write(str(runs + 1))
        answer = answers[min(runs, len(answers) - 1)]
        sys.stdout.write(answer.get("out", ""))
        sys.stderr.write(answer.get("err", ""))
        sys.stdout.flush()
        sys.stderr.flush()
        time.sleep(answer.get("sleep", 0))
        sys.exit(answer.get("code", 0))
        """,
    )


def runs_of(tmp_path: Path, merchant_id: str) -> int:
    """How many times app_script ran for the merchant."""
    counter = tmp_path / f"runs-{merchant_id}"
    return int(counter.read_text()) if counter.exists() else 0

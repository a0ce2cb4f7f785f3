"""Hostile or huge configs: refused in a moment and a little memory, naming the cause."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from harvester.config import load_config, shown
from harvester.errors import ConfigError
from harvester.yaml_file import MAX_CONFIG_BYTES
from tests.measured import run_measured

# 440 bytes that expand to 9^9 (387 million) strings, "billion laughs", where the config
# reads a value: a merchant id. (Anchors under unknown keys would be refused for the key.)
ALIAS_BOMB = """\
merchants:
  - id: [&a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"],
        &b [*a,*a,*a,*a,*a,*a,*a,*a,*a],
        &c [*b,*b,*b,*b,*b,*b,*b,*b,*b],
        &d [*c,*c,*c,*c,*c,*c,*c,*c,*c],
        &e [*d,*d,*d,*d,*d,*d,*d,*d,*d],
        &f [*e,*e,*e,*e,*e,*e,*e,*e,*e],
        &g [*f,*f,*f,*f,*f,*f,*f,*f,*f],
        &h [*g,*g,*g,*g,*g,*g,*g,*g,*g],
        &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]]
    token: tok-0123456789abcdef
"""


def test_an_alias_bomb_exits_2_quickly_and_lean(tmp_path: Path) -> None:
    """The CLI refuses a billion-laughs config with exit 2, naming the aliases, in under 2 s
    of CPU and 200 MB (measured on the child process, not with a wall clock)."""
    path = tmp_path / "config.yaml"
    path.write_text(ALIAS_BOMB)
    run = run_measured(
        [sys.executable, "-m", "harvester", "check-config", "--config", str(path)],
        tmp_path / "rusage.json",
    )
    assert run.usage.code == 2, run.err
    assert "aliases (*name) expand" in run.err
    assert run.usage.cpu_s < 2.0, f"{run.usage.cpu_s:.2f} s of CPU"
    assert run.usage.peak_rss_mb < 200, f"{run.usage.peak_rss_mb:.0f} MB"


def test_an_alias_that_holds_itself_is_refused(tmp_path: Path) -> None:
    """A recursive alias is a config error naming its line, not a hang."""
    path = tmp_path / "config.yaml"
    path.write_text("merchants: &m [*m]\n")
    with pytest.raises(ConfigError, match=r"an alias refers to a value that holds it \(line 1\)"):
        load_config(path, {})


def test_modest_aliases_are_welcome(tmp_path: Path) -> None:
    """A merchant template merged into many merchants is not mistaken for a bomb."""
    merchants = "".join(
        f"  - {{<<: *base, id: M{n}, token: tok-{n:012d}-abcdef}}\n" for n in range(2000)
    )
    path = tmp_path / "config.yaml"
    path.write_text(
        "regions: {local: {base_url: 'http://127.0.0.1:9'}}\n"
        "template: &base {region: local, types: [ORDERS, PAYMENTS]}\n"
        "merchants:\n" + merchants
    )
    with pytest.raises(ConfigError, match="template: unknown key"):
        load_config(path, {})  # read whole, then refused for the key, not for aliases


def test_a_huge_config_file_is_refused_by_its_size(tmp_path: Path) -> None:
    """A file larger than the cap is refused before it is parsed."""
    path = tmp_path / "config.yaml"
    with path.open("wb") as file:
        file.truncate(MAX_CONFIG_BYTES + 1)
    with pytest.raises(ConfigError, match=f"larger than {MAX_CONFIG_BYTES} bytes"):
        load_config(path, {})


def test_deeply_nested_yaml_is_a_config_error(tmp_path: Path) -> None:
    """Nesting past any sane depth is a config error, not a RecursionError."""
    path = tmp_path / "config.yaml"
    path.write_text("merchants: " + "[" * 100_000 + "]" * 100_000 + "\n")
    with pytest.raises(ConfigError, match=str(path)):
        load_config(path, {})


def test_show_never_builds_a_whole_repr() -> None:
    """A value shared ten levels deep (10^10 items once expanded) is shown short at once."""
    value: object = ["lol"] * 10
    for _ in range(9):
        value = [value] * 10
    started = time.process_time()
    text = shown(value)
    assert len(text) <= 80
    assert text.startswith("[[[")
    assert time.process_time() - started < 1.0


def test_a_bad_id_after_many_merchants_is_named(tmp_path: Path) -> None:
    """Validation reaches a bad id at the end of a long list and names its index."""
    count = 5000
    lines = "".join(f"  - {{id: M{n}, region: local, token: t}}\n" for n in range(count))
    path = tmp_path / "config.yaml"
    path.write_text(
        "regions: {local: {base_url: 'http://127.0.0.1:9'}}\nmerchants:\n"
        + lines
        + "  - {id: 'bad/id', region: local, token: t}\n"
    )
    with pytest.raises(ConfigError, match=rf"merchants\[{count}\]\.id: 'bad/id'"):
        load_config(path, {})

"""The config's YAML reader: PyYAML's safe values, built from events, with a config's limits."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from harvester.errors import ConfigError
from harvester.yaml_file import read_yaml

SAME_AS_PYYAML = [
    "a: 1\nb: [x, 2.5, ~, yes, '3']\n",
    "- {a: [1, {b: [2, 3]}]}\n- []\n- {}\n",
    "a: &x 1\nb: *x\nc: &l [1, 2]\nd: *l\n",
    "base: &m {k: 1, j: 2}\nb: {<<: *m, j: 3}\n",
    "base: &m {k: 1, j: 2}\nc: {<<: [{k: 9}, *m]}\nd: {<<: [{k: 9}, *m], k: 0}\n",
    "d: 2024-01-01\nt: 2001-12-14t21:59:43.10-05:00\nbin: !!binary aGVsbG8=\n",
    "'<<': quoted is a plain key\n",
    "? complex key\n: value\n",
    "",
]


@pytest.mark.parametrize("text", SAME_AS_PYYAML)
def test_values_are_those_of_pyyaml_safe_load(tmp_path: Path, text: str) -> None:
    """Mappings, lists, scalars, anchors and merge keys read as yaml.safe_load reads them."""
    path = tmp_path / "config.yaml"
    path.write_text(text)
    assert read_yaml(path) == yaml.safe_load(text)


def test_an_impossible_date_stays_text(tmp_path: Path) -> None:
    """2023-02-30 is kept as text, to be refused later with its YAML path."""
    path = tmp_path / "config.yaml"
    path.write_text("start: 2023-02-30\n")
    assert read_yaml(path) == {"start": "2023-02-30"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a: 1\na: 2\n", "line 2, column 1: invalid YAML: found duplicate key 'a'"),
        ("a: *nope\n", "line 1, column 4: invalid YAML: found undefined alias 'nope'"),
        ("---\na: 1\n---\nb: 2\n", "line 3, column 1: invalid YAML: but found another document"),
        ("? [1]\n: 2\n", "line 1, column 3: invalid YAML: found an unhashable key"),
        ("a: !!set {x}\n", "invalid YAML: found the tag 'tag:yaml.org,2002:set', not used"),
        ("a: !custom x\n", "invalid YAML: found the tag '!custom', not used in a config"),
        ("a: {<<: [1, 2]}\n", "a merge key (<<) takes a mapping or a list of mappings"),
        ("a: &l [1, *l]\n", "an alias refers to a value that holds it (line 1)"),
    ],
)
def test_what_a_config_has_no_use_for_is_refused(tmp_path: Path, text: str, message: str) -> None:
    """Each refusal names the file, and where YAML says so, the line and column."""
    path = tmp_path / "config.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        read_yaml(path)
    assert str(caught.value).startswith(f"{path}: ")
    assert message in str(caught.value)


def test_aliases_may_not_expand_a_file_tenfold(tmp_path: Path) -> None:
    """An alias that would take the expanded file past ten times what is written is refused
    at that alias, before anything walks the value."""
    lines = ["a: &a [" + ", ".join(["x"] * 1000) + "]"]
    lines += [f"k{n}: *a" for n in range(200)]
    path = tmp_path / "config.yaml"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ConfigError, match=r"its aliases \(\*name\) expand it to more than"):
        read_yaml(path)

"""The house's rule: nothing imports upwards, and no modules import each other in a circle.

The allowed imports are the table of docs/architecture.md, read from it here: the doc is
the one place they are written. Every import of every module counts, whether at the top,
inside a function or under TYPE_CHECKING.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "harvester"
DOC = ROOT / "docs" / "architecture.md"


@dataclass(frozen=True)
class Layer:
    name: str
    prefixes: tuple[str, ...]  # the modules (and packages) it holds
    may_import: frozenset[str]  # layer names


def read_layers(text: str) -> list[Layer]:
    """The rows of the table under '## The layers': layer | `modules` | may import | ..."""
    section = text.split("## The layers", 1)[1].split("\n## ", 1)[0]
    layers = []
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) < 3 or cells[0] in ("layer", "") or set(cells[0]) <= {"-"}:
            continue
        prefixes = tuple(re.findall(r"`([\w.]+)`", cells[1]))
        layers.append(Layer(cells[0], prefixes, frozenset(cells[2].split())))
    return layers


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def all_modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The harvester modules `name` imports (a package's name when no module is named)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            # `from harvester import commands` names a module; `from x import Name`, x.
            targets = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                for alias in node.names
            ]
        else:
            continue
        found.update(t for t in targets if t == "harvester" or t.startswith("harvester."))
    found.discard(name)
    return found


def layer_of(name: str, layers: list[Layer]) -> Layer | None:
    matches = [
        (len(prefix), layer)
        for layer in layers
        for prefix in layer.prefixes
        if name == prefix or name.startswith(prefix + ".")
    ]
    return max(matches, key=lambda match: match[0])[1] if matches else None


LAYERS = read_layers(DOC.read_text())
MODULES = all_modules()
GRAPH = {name: imports_of(name, path, MODULES) for name, path in MODULES.items()}


def test_the_doc_names_the_layers_it_builds_on() -> None:
    """Every layer named in a 'may import' cell is a layer of the table."""
    names = {layer.name for layer in LAYERS}
    assert {"ground", "clover", "pacing", "state", "output", "harvest", "ops", "cli"} <= names
    for layer in LAYERS:
        assert layer.may_import <= names, f"{layer.name} may import unknown layers"


def test_every_module_has_a_layer() -> None:
    """A new module must be placed in a layer of docs/architecture.md (the package aside)."""
    homeless = [name for name in MODULES if name != "harvester" and not layer_of(name, LAYERS)]
    assert homeless == []


def upward_imports(name: str, graph: dict[str, set[str]], layers: list[Layer]) -> list[str]:
    """The imports of `name` that land in a layer its own row does not allow."""
    own = layer_of(name, layers)
    if own is None:
        return sorted(graph[name] - {"harvester"})
    return [
        f"{target} ({theirs.name})"
        for target in sorted(graph[name])
        if (theirs := layer_of(target, layers)) is not None and theirs.name not in own.may_import
    ]


def find_circle(graph: dict[str, set[str]]) -> list[str] | None:
    """Modules that import each other in a loop (a depth-first walk), or None."""
    done: set[str] = set()
    path: list[str] = []

    def visit(name: str) -> list[str] | None:
        if name in path:
            return [*path[path.index(name) :], name]
        if name in done:
            return None
        path.append(name)
        for target in sorted(graph.get(name, ())):
            if (circle := visit(target)) is not None:
                return circle
        path.pop()
        done.add(name)
        return None

    for name in sorted(graph):
        if (circle := visit(name)) is not None:
            return circle
    return None


@pytest.mark.parametrize("name", sorted(MODULES))
def test_a_module_imports_only_the_layers_its_own_may_import(name: str) -> None:
    """Nothing imports upwards: each import lands in a layer the module's row allows."""
    assert upward_imports(name, GRAPH, LAYERS) == []


def test_no_modules_import_each_other_in_a_circle() -> None:
    """The import graph of harvester/ has no cycle."""
    assert find_circle(GRAPH) is None


def test_the_checks_catch_an_upward_import_and_a_circle() -> None:
    """clover importing the state is upward; a -> b -> a is a circle."""
    graph = {"harvester.clover.api": {"harvester.state.sqlite", "harvester.errors"}}
    assert upward_imports("harvester.clover.api", graph, LAYERS) == [
        "harvester.state.sqlite (state)"
    ]
    assert find_circle({"a": {"b"}, "b": {"c", "a"}, "c": set()}) == ["a", "b", "a"]
    assert find_circle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    table = "## The layers\n| layer | modules | may import |\n|---|---|---|\n| a | `x` | a |\n"
    assert read_layers(table) == [Layer("a", ("x",), frozenset({"a"}))]


def test_only_the_state_touches_a_database() -> None:
    """sqlite3 and psycopg are imported under harvester/state/ only."""
    offenders = []
    for name, path in MODULES.items():
        if name.startswith(("harvester.state.", "harvester.simulator")):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [alias.name for alias in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            offenders += [
                f"{name}: {n}" for n in names if n.split(".")[0] in ("sqlite3", "psycopg")
            ]
    assert offenders == []

"""Reading the YAML config file, with limits: a hostile file costs a moment, not the machine.

A 559-byte "billion laughs" file nests aliases so that its value expands to a billion
items. PyYAML shares aliased values rather than copying them, so the harm comes later, from
whatever walks the value: a repr() in a message, a check of every item. The file is
therefore refused, before any value is built, when its aliases would expand it past a
small multiple of what it holds. Its size is capped too, and libyaml (when present) parses
it several times faster than pure Python and refuses nesting past 1000 levels.
"""

from __future__ import annotations

from collections.abc import Hashable
from pathlib import Path
from typing import Any

import yaml

from harvester.errors import ConfigError

MAX_CONFIG_BYTES = 64 * 1024 * 1024
# Aliases may at most expand a file to this many times the values it holds, plus a few:
# far above what templates of merchants (`<<: *base`) need, far below a bomb.
ALIAS_EXPANSION_FACTOR = 10
ALIAS_EXPANSION_SLACK = 10_000

try:
    from yaml import CSafeLoader as _SafeLoader
except ImportError:  # PyYAML built without libyaml
    from yaml import SafeLoader as _SafeLoader  # type: ignore[assignment]


def read_yaml(path: Path) -> object:
    """The YAML document at `path`; ConfigError naming the file (and line) if it is bad."""
    try:
        with path.open("rb") as file:
            data = file.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a folder, not a file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: larger than {MAX_CONFIG_BYTES} bytes: not a config file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: cannot read: not UTF-8 text") from None
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_aliases(node, path)
        return loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"{path}: line {mark.line + 1}, column {mark.column + 1}" if mark else f"{path}"
        raise ConfigError(f"{where}: invalid YAML: {exc.problem}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from None
    except RecursionError:
        raise ConfigError(f"{path}: values nested too deeply") from None
    finally:
        loader.dispose()


class _Loader(_SafeLoader):
    """PyYAML's safe loader, refusing duplicate keys and keeping impossible dates as text.

    A duplicate key would silently drop the first value (a whole merchant list, say), and
    PyYAML raises a bare ValueError for a date like 2023-02-30; as text it gets the usual
    message naming its YAML path.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[object] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # keys brought in by "<<: *anchor" may be overridden
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, Hashable):
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        "while reading a mapping",
                        node.start_mark,
                        f"found duplicate key {key!r}",
                        key_node.start_mark,
                    )
                seen.add(key)
        return super().construct_mapping(node, deep=deep)

    def construct_yaml_timestamp(self, node: yaml.ScalarNode) -> Any:
        try:
            return super().construct_yaml_timestamp(node)
        except ValueError:
            return self.construct_scalar(node)


_Loader.add_constructor("tag:yaml.org,2002:timestamp", _Loader.construct_yaml_timestamp)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return node.value  # type: ignore[no-any-return]
    if isinstance(node, yaml.MappingNode):
        return [item for pair in node.value for item in pair]
    return []


def _is_collection(node: yaml.Node) -> bool:
    return isinstance(node, yaml.SequenceNode | yaml.MappingNode)


def _check_aliases(root: yaml.Node, path: Path) -> None:
    """Refuse a document whose aliases expand it far beyond its size, or that holds itself.

    One pass over the distinct lists and mappings (an aliased one is one node reached
    several times), without recursion: each one's expanded size is one, plus its scalars,
    plus its lists' and mappings' expanded sizes. Scalars are not tracked one by one: an
    alias of a scalar adds one value, as its `*name` does to the file.
    """
    if not _is_collection(root):
        return
    sizes: dict[int, int] = {}
    held = 0  # values written: each distinct list or mapping, and the scalars it holds
    expanding: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_counted = stack.pop()
        key = id(node)
        if children_counted:
            expanding.discard(key)
            scalars, inner = 0, 0
            for child in _children(node):
                if _is_collection(child):
                    inner += sizes[id(child)]
                else:
                    scalars += 1
            sizes[key] = 1 + scalars + inner
            held += 1 + scalars
            continue
        if key in sizes:
            continue
        if key in expanding:
            raise ConfigError(
                f"{path}: an alias refers to a value that holds it "
                f"(line {node.start_mark.line + 1})"
            )
        expanding.add(key)
        stack.append((node, True))
        stack.extend(
            (child, False)
            for child in _children(node)
            if _is_collection(child) and id(child) not in sizes
        )
    expanded = sizes[id(root)]
    if expanded > ALIAS_EXPANSION_FACTOR * held + ALIAS_EXPANSION_SLACK:
        raise ConfigError(
            f"{path}: its aliases (*name) expand {held} values into {_count(expanded)}: "
            f"refused (at most {ALIAS_EXPANSION_FACTOR} times the values written, "
            f"plus {ALIAS_EXPANSION_SLACK})"
        )


def _count(number: int) -> str:
    return str(number) if number < 10**12 else f"about 10^{len(str(number)) - 1}"

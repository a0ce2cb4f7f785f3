"""Reading the YAML config file, with limits: a hostile file costs a moment, not the machine.

A few hundred bytes of "billion laughs" nest aliases so that a value expands to a billion
items. PyYAML shares aliased values rather than copying them, so the harm comes later, from
whatever walks the value: a repr() in a message, a check of every item. The file is
therefore refused as soon as its aliases expand it past a small multiple of what it holds.

The values are built straight from the parser's events, one event at a time, instead of
from PyYAML's node graph: the graph holds an object and two position marks per value, and
for a config of half a million merchants that alone is gigabytes. libyaml (when present)
parses several times faster than pure Python and refuses nesting past 1000 levels. The
file's size is capped too.

What is kept of YAML: mappings, sequences, PyYAML's safe scalars (ints, floats, booleans,
null, dates, strings), anchors and aliases, merge keys (`<<: *base`). Duplicate keys are
refused (a duplicate would silently drop the first value: a whole merchant list, say), and
an impossible date like 2023-02-30 stays text, to be refused with its YAML path. Other tags
on lists or mappings (`!!set`, `!!omap`) have no place in a config and are refused.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from yaml.events import (
    AliasEvent,
    CollectionStartEvent,
    DocumentEndEvent,
    Event,
    MappingEndEvent,
    MappingStartEvent,
    ScalarEvent,
    SequenceEndEvent,
    StreamEndEvent,
)

from harvester.errors import ConfigError

MAX_CONFIG_BYTES = 64 * 1024 * 1024
# Aliases may at most expand a file to this many times the values it holds, plus a few:
# far above what templates of merchants (`<<: *base`) need, far below a bomb.
ALIAS_EXPANSION_FACTOR = 10
ALIAS_EXPANSION_SLACK = 10_000

_SEQ = "tag:yaml.org,2002:seq"
_MAP = "tag:yaml.org,2002:map"
_MERGE = "tag:yaml.org,2002:merge"
_TIMESTAMP = "tag:yaml.org,2002:timestamp"

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
    del data
    loader = _SafeLoader(text)
    try:
        return _Builder(loader, path).document()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"{path}: line {mark.line + 1}, column {mark.column + 1}" if mark else f"{path}"
        raise ConfigError(f"{where}: invalid YAML: {exc.problem}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from None
    finally:
        loader.dispose()


def _problem(problem: str, mark: Any) -> yaml.MarkedYAMLError:
    return yaml.constructor.ConstructorError(None, None, problem, mark)


def _mark(event: Event | None) -> Any:
    """Where an event starts (libyaml's marks and PyYAML's differ in type, not in use)."""
    return None if event is None else event.start_mark


def _line(event: Event) -> int:
    return int(_mark(event).line) + 1


_NO_KEY = object()


@dataclass(slots=True, eq=False)
class _Open:
    """A list or mapping whose end has not been read yet."""

    items: list[object] | None  # a list's items; None for a mapping
    anchor: str | None
    start_mark: Any
    size: int = 1  # values it holds, aliases expanded, itself included
    # A mapping's explicit keys and values, the mappings merged into it, its pending key.
    pairs: dict[object, object] = field(default_factory=dict)
    merged: list[dict[object, object]] = field(default_factory=list)
    key: object = _NO_KEY
    key_is_merge: bool = False

    def close(self) -> object:
        if self.items is not None:
            return self.items
        # As PyYAML: explicit keys win over merged ones; of merged mappings, the first wins
        # (so they are applied last to first).
        result: dict[object, object] = {}
        for mapping in reversed(self.merged):
            result.update(mapping)
        result.update(self.pairs)
        return result


class _Builder:
    """Python values from the parser's events: no node graph, no recursion."""

    def __init__(self, loader: _SafeLoader, path: Path) -> None:
        self._loader = loader
        self._path = path
        # An anchor's value and expanded size; while its list or mapping is still being
        # read, that open collection (as PyYAML, an anchor is defined where it starts).
        self._anchors: dict[str, tuple[object, int] | _Open] = {}
        self._open: list[_Open] = []
        self._held = 0  # values written in the file
        self._expanded = 0  # values once every alias is expanded
        self._result: object = None

    def document(self) -> object:
        events = self._loader
        events.get_event()  # stream start
        if events.check_event(StreamEndEvent):
            return None
        events.get_event()  # document start
        while not events.check_event(DocumentEndEvent):
            event = events.get_event()
            if event is not None:
                self._take(event)
        events.get_event()
        if not events.check_event(StreamEndEvent):
            raise yaml.composer.ComposerError(
                "expected a single document in the stream",
                None,
                "but found another document",
                _mark(events.peek_event()),
            )
        return self._result

    def _take(self, event: Event) -> None:
        if isinstance(event, ScalarEvent):
            self._held += 1
            self._place(self._scalar(event), 1, event.anchor, _mark(event))
        elif isinstance(event, AliasEvent):
            self._alias(event)
        elif isinstance(event, CollectionStartEvent):
            self._held += 1
            mapping = isinstance(event, MappingStartEvent)
            if event.tag not in (None, "!", _MAP if mapping else _SEQ):
                raise _problem(
                    f"found the tag {event.tag!r}, not used in a config", event.start_mark
                )
            opened = _Open(None if mapping else [], event.anchor, event.start_mark)
            if event.anchor is not None:
                self._anchors[event.anchor] = opened
            self._open.append(opened)
        elif isinstance(event, SequenceEndEvent | MappingEndEvent):
            done = self._open.pop()
            # Defined again inside itself? Then the inner definition stands, as in PyYAML.
            anchor = done.anchor if self._anchors.get(done.anchor or "") is done else None
            self._place(done.close(), done.size, anchor, done.start_mark)

    def _alias(self, event: AliasEvent) -> None:
        anchor = event.anchor or ""
        known = self._anchors.get(anchor)
        if known is None:
            raise _problem(f"found undefined alias {anchor!r}", event.start_mark)
        if isinstance(known, _Open):
            raise ConfigError(
                f"{self._path}: an alias refers to a value that holds it (line {_line(event)})"
            )
        value, size = known
        self._held += 1
        self._expanded += size - 1  # _place counts one more
        if self._expanded > ALIAS_EXPANSION_FACTOR * self._held + ALIAS_EXPANSION_SLACK:
            raise ConfigError(
                f"{self._path}: its aliases (*name) expand it to more than {self._expanded} "
                f"values by line {_line(event)}, from {self._held} written: "
                f"refused (at most {ALIAS_EXPANSION_FACTOR} times the values written, "
                f"plus {ALIAS_EXPANSION_SLACK})"
            )
        self._place(value, size, None, _mark(event))

    def _place(self, value: object, size: int, anchor: str | None, mark: Any) -> None:
        """A value has been read (starting at `mark`): into its list or mapping it goes."""
        self._expanded += 1
        if anchor is not None:
            self._anchors[anchor] = (value, size)
        if not self._open:
            self._result = value
            return
        parent = self._open[-1]
        parent.size += size
        if parent.items is not None:
            parent.items.append(value)
        elif parent.key is _NO_KEY:
            self._key(parent, value, mark)
        else:
            self._value(parent, value, mark)

    def _key(self, parent: _Open, key: object, mark: Any) -> None:
        parent.key_is_merge = key is _MERGE_KEY
        if parent.key_is_merge:
            parent.key = key
            return
        try:
            hash(key)
        except TypeError:
            raise _problem("found an unhashable key (a list or mapping)", mark) from None
        if key in parent.pairs:
            raise yaml.constructor.ConstructorError(
                "while reading a mapping",
                parent.start_mark,
                f"found duplicate key {key!r}",
                mark,
            )
        parent.key = key

    def _value(self, parent: _Open, value: object, mark: Any) -> None:
        key, parent.key = parent.key, _NO_KEY
        if not parent.key_is_merge:
            parent.pairs[key] = value
            return
        merged: list[Any] = value if isinstance(value, list) else [value]
        if not all(isinstance(item, dict) for item in merged):
            raise _problem("a merge key (<<) takes a mapping or a list of mappings", mark)
        parent.merged.extend(merged)

    def _scalar(self, event: ScalarEvent) -> object:
        loader = self._loader
        tag = event.tag
        if tag is None or tag == "!":
            tag = loader.resolve(yaml.ScalarNode, event.value, event.implicit)  # type: ignore[no-untyped-call]
        if tag == _MERGE:
            return _MERGE_KEY
        node = yaml.ScalarNode(tag, event.value, _mark(event), None, event.style)
        constructor = loader.yaml_constructors.get(tag)
        if constructor is None:
            raise _problem(f"found the tag {tag!r}, not used in a config", event.start_mark)
        try:
            value: object = constructor(loader, node)
        except ValueError:
            if tag != _TIMESTAMP:
                raise
            return event.value  # an impossible date: text, refused with its YAML path
        return value


class _MergeKey:
    """The `<<` of a merge: a key that is never stored."""

    def __repr__(self) -> str:
        return "'<<'"


_MERGE_KEY = _MergeKey()

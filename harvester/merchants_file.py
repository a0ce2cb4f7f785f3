"""`merchants_file`: merchants as rows of a CSV or JSON Lines file, where an app keeps them.

Each row holds the keys of an entry of `merchants:` (config.py checks them). This module only
turns the file into one mapping per row, tagged with its line: in CSV an empty cell is an
absent key and `types` is separated by spaces; in JSON Lines a row is one JSON object per
line, and `null` is an absent key. Refusals name the file and the line. The file is
streamed, and bounded in size like the config file itself (and each cell): a hostile file
costs a moment, not the machine.
"""

from __future__ import annotations

import codecs
import csv
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from harvester.errors import ConfigError
from harvester.yaml_file import MAX_CONFIG_BYTES

SUFFIXES = (".csv", ".jsonl")
# A field far longer than any id, token or date: csv's own limit (128 KiB) is too generous.
MAX_FIELD_CHARS = 4096
MAX_LINE_CHARS = 8 * MAX_FIELD_CHARS  # a JSON Lines row


@dataclass(frozen=True, slots=True)
class Row:
    line: int  # 1-based, where the row starts
    values: dict[object, object]


@dataclass(frozen=True, slots=True)
class Header:
    """A CSV file's header row: its columns are checked once, there, not on every row."""

    line: int
    columns: tuple[str, ...]


def place(path: Path, line: int) -> str:
    """How a row is named in messages: PATH:LINE."""
    return f"{path}:{line}"


@contextmanager
def merchant_rows(path: Path) -> Iterator[tuple[Header | None, Iterator[Row]]]:
    """The file's header (CSV only) and its rows, read as they are taken; ConfigError naming
    the file (and line) if it is bad. Which keys a row may hold is the config's business.

    The file is streamed, never held whole: 100,000 rows cost the merchants they make.
    """
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise ConfigError(
            f"merchants_file: {path}: expected a .csv or .jsonl file (the extension says which)"
        )
    with _open(path) as file:
        lines = _decoded(path, file)
        if suffix == ".jsonl":
            yield None, _jsonl_rows(path, lines)
            return
        reader = csv.reader(lines, strict=True)
        records = _csv_records(path, reader)
        first = next(records, None)
        if first is None:
            yield None, iter(())
            return
        line, cells = first
        header = Header(line, tuple(cell.strip() for cell in cells))
        yield header, _csv_rows(path, header, records)


def _open(path: Path) -> BinaryIO:
    try:
        file = path.open("rb")
    except FileNotFoundError:
        raise ConfigError(f"merchants_file: {path}: no such file") from None
    except IsADirectoryError:
        raise ConfigError(f"merchants_file: {path}: is a folder, not a file") from None
    except OSError as exc:
        raise ConfigError(f"merchants_file: {path}: cannot read: {exc.strerror or exc}") from None
    if os.fstat(file.fileno()).st_size > MAX_CONFIG_BYTES:
        file.close()
        raise ConfigError(f"merchants_file: {path}: larger than {MAX_CONFIG_BYTES} bytes")
    return file


def _decoded(path: Path, file: BinaryIO) -> Iterator[str]:
    """The file's lines as text; a byte-order mark (spreadsheets write one) dropped."""
    for number, raw in enumerate(file, start=1):
        if number == 1 and raw.startswith(codecs.BOM_UTF8):
            raw = raw[len(codecs.BOM_UTF8) :]
        try:
            yield raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ConfigError(f"{place(path, number)}: cannot read: not UTF-8 text") from None


def _csv_records(path: Path, reader: Any) -> Iterator[tuple[int, list[str]]]:
    """(the line a record starts on, its cells), blank lines left out."""
    line = 1  # where the next record starts
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            # The message is csv's own ("unexpected end of data"): it never quotes a cell.
            raise ConfigError(f"{place(path, line)}: not CSV: {exc}") from None
        start, line = line, reader.line_num + 1
        if not any(cell.strip() for cell in cells):
            continue  # a blank line
        if any(len(cell) > MAX_FIELD_CHARS for cell in cells):
            raise ConfigError(
                f"{place(path, start)}: a cell is longer than {MAX_FIELD_CHARS} characters"
            )
        yield start, cells


def _csv_rows(
    path: Path, header: Header, records: Iterator[tuple[int, list[str]]]
) -> Iterator[Row]:
    keys = header.columns
    for start, cells in records:
        if len(cells) != len(keys):
            raise ConfigError(
                f"{place(path, start)}: {len(cells)} cells, but the header "
                f"(line {header.line}) has {len(keys)}"
            )
        values: dict[object, object] = {}
        for key, cell in zip(keys, cells, strict=True):
            cell = cell.strip()
            if cell:
                values[key] = cell.split() if key == "types" else cell
        yield Row(start, values)


def _jsonl_rows(path: Path, lines: Iterator[str]) -> Iterator[Row]:
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        if len(raw) > MAX_LINE_CHARS:
            raise ConfigError(f"{place(path, number)}: longer than {MAX_LINE_CHARS} characters")
        try:
            value = json.loads(raw, object_pairs_hook=_unique_keys)
        except json.JSONDecodeError as exc:
            # msg and column only: the text itself may hold a token.
            raise ConfigError(
                f"{place(path, number)}: not JSON: {exc.msg} (column {exc.colno})"
            ) from None
        except _DuplicateKey as exc:
            raise ConfigError(f"{place(path, number)}: key {exc.key!r} appears twice") from None
        if not isinstance(value, dict):
            raise ConfigError(
                f"{place(path, number)}: expected a JSON object, got {type(value).__name__}"
            )
        yield Row(number, value)


class _DuplicateKey(Exception):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key[:40]


def _unique_keys(pairs: list[tuple[str, object]]) -> dict[object, object]:
    result: dict[object, object] = {}
    for key, value in pairs:
        if key in result:
            raise _DuplicateKey(key)
        result[key] = value
    return result

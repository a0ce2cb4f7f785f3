"""`merchants_file`: merchants as rows of a CSV or JSON Lines file, where an app keeps them.

Each row holds the keys of an entry of `merchants:` (config.py checks them). This module only
turns the file into one mapping per row, tagged with its line: in CSV an empty cell is an
absent key and `types` is separated by spaces; in JSON Lines a row is one JSON object per
line, and `null` is an absent key. Refusals name the file and the line. The file is read
whole, but bounded like the config file itself: a hostile file costs a moment, not the
machine.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

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


def read_rows(path: Path) -> tuple[Header | None, list[Row]]:
    """The file's header (CSV only) and rows, in order; ConfigError naming the file (and
    line) if it is bad. Which keys a row may hold is the config's business."""
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise ConfigError(
            f"merchants_file: {path}: expected a .csv or .jsonl file (the extension says which)"
        )
    text = _read_text(path)
    header: Header | None = None
    if suffix == ".csv":
        header, rows = _csv_rows(path, text)
    else:
        rows = list(_jsonl_rows(path, text))
    del text
    if not rows:
        raise ConfigError(f"merchants_file: {path}: holds no merchant")
    return header, rows


def _read_text(path: Path) -> str:
    try:
        with path.open("rb") as file:
            data = file.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(f"merchants_file: {path}: no such file") from None
    except IsADirectoryError:
        raise ConfigError(f"merchants_file: {path}: is a folder, not a file") from None
    except OSError as exc:
        raise ConfigError(f"merchants_file: {path}: cannot read: {exc.strerror or exc}") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"merchants_file: {path}: larger than {MAX_CONFIG_BYTES} bytes")
    try:
        # utf-8-sig: a spreadsheet's CSV export often starts with a byte-order mark.
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ConfigError(f"{place(path, line)}: cannot read: not UTF-8 text") from None


def _csv_rows(path: Path, text: str) -> tuple[Header | None, list[Row]]:
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    header: list[str] | None = None
    header_line = 0
    rows: list[Row] = []
    line = 1  # where the next record starts
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            break
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
        if header is None:
            header, header_line = [cell.strip() for cell in cells], start
            continue
        if len(cells) != len(header):
            raise ConfigError(
                f"{place(path, start)}: {len(cells)} cells, but the header "
                f"(line {header_line}) has {len(header)}"
            )
        values: dict[object, object] = {}
        for key, cell in zip(header, cells, strict=True):
            cell = cell.strip()
            if cell:
                values[key] = cell.split() if key == "types" else cell
        rows.append(Row(start, values))
    return (Header(header_line, tuple(header)) if header is not None else None), rows


def _jsonl_rows(path: Path, text: str) -> Iterator[Row]:
    for number, raw in enumerate(text.splitlines(), start=1):
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

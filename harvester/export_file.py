"""Clover's export file format, `{"elements": [...]}`, checked as a stream.

The 1000-object ceiling bounds the number of objects in a file, not its size, so a part is
never loaded whole: the checker holds one element (and one read) at a time, and memory
stays flat however large the files grow.
"""

from __future__ import annotations

import codecs
import json
from pathlib import Path
from typing import Any, BinaryIO

from harvester.errors import BadFile

MAX_OBJECTS_PER_FILE = 1000
READ_BYTES = 256 * 1024
# One order or payment is a few kilobytes; anything this large is not one, and refusing it
# is what keeps memory bounded for a malformed file too.
MAX_VALUE_CHARS = 16 * 1024 * 1024
_WHITESPACE = " \t\n\r"
_decoder = json.JSONDecoder()


def count_elements(
    path: Path, *, read_bytes: int = READ_BYTES, max_value_chars: int = MAX_VALUE_CHARS
) -> int:
    """The number of elements of an export file; BadFile if it breaks Clover's format.

    The file is read `read_bytes` at a time; a value longer than `max_value_chars` is refused.
    """
    with path.open("rb") as file:
        return _Reader(file, read_bytes, max_value_chars).document()


class _Reader:
    """UTF-8 text of a file through a window that only ever holds the value being read."""

    def __init__(self, file: BinaryIO, read_bytes: int, max_value_chars: int) -> None:
        self._file = file
        self._read_bytes = read_bytes
        self._max_value_chars = max_value_chars
        self._utf8 = codecs.getincrementaldecoder("utf-8")()
        self._text = ""
        self._pos = 0
        self._eof = False

    def document(self) -> int:
        if self._peek() != "{":
            raise BadFile("not a JSON object")
        self._pos += 1
        count: int | None = None
        if self._peek() == "}":
            raise BadFile('no "elements" list')
        while True:
            key = self._value()
            if not isinstance(key, str):
                raise BadFile("not JSON: an object key is not a string")
            self._expect(":")
            if key == "elements":
                if count is not None:
                    raise BadFile('"elements" appears twice')
                count = self._elements()
            else:
                self._value()
            if self._after_item("}"):
                break
        if self._peek() is not None:
            raise BadFile("not JSON: data after the object")
        if count is None:
            raise BadFile('no "elements" list')
        return count

    def _elements(self) -> int:
        if self._peek() != "[":
            raise BadFile('no "elements" list ("elements" is not a list)')
        self._pos += 1
        if self._peek() == "]":
            self._pos += 1
            return 0
        count = 0
        while True:
            if not isinstance(self._value(), dict):
                raise BadFile(f"element {count} is not a JSON object")
            count += 1
            if count > MAX_OBJECTS_PER_FILE:
                raise BadFile(f"{count} elements or more, more than {MAX_OBJECTS_PER_FILE}")
            if self._after_item("]"):
                return count

    def _after_item(self, closing: str) -> bool:
        """Past a comma (False) or the closing bracket (True)."""
        char = self._peek()
        if char not in (",", closing):
            raise BadFile(f"not JSON: expected ',' or {closing!r}, found {char!r}")
        self._pos += 1
        return char == closing

    def _expect(self, char: str) -> None:
        if self._peek() != char:
            raise BadFile(f"not JSON: expected {char!r}")
        self._pos += 1

    def _peek(self) -> str | None:
        """The next character that is not white space, unread; None at the end."""
        while True:
            while self._pos < len(self._text) and self._text[self._pos] in _WHITESPACE:
                self._pos += 1
            if self._pos < len(self._text):
                return self._text[self._pos]
            if not self._read():
                return None

    def _value(self) -> Any:
        self._peek()
        while True:
            try:
                value, end = _decoder.raw_decode(self._text, self._pos)
            except (ValueError, RecursionError) as exc:
                # Most likely the value runs past what has been read so far.
                if not self._read():
                    raise BadFile(f"not JSON: {exc}") from None
                continue
            # A number that ends where the text does may go on in the next read.
            if end == len(self._text) and self._read():
                continue
            self._pos = end
            return value

    def _read(self) -> bool:
        """Append the next piece of the file; False at its end."""
        if self._eof:
            return False
        data = self._file.read(self._read_bytes)
        try:
            text = self._utf8.decode(data, final=not data)
        except UnicodeDecodeError as exc:
            raise BadFile(f"not JSON: not UTF-8 text ({exc.reason})") from None
        self._eof = not data
        self._text = self._text[self._pos :] + text
        self._pos = 0
        if len(self._text) > self._max_value_chars:
            raise BadFile(
                f"not an export file: a value longer than {self._max_value_chars} characters"
            )
        return True

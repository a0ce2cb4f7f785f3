"""Clover's export file format, `{"elements": [...]}`, checked as a stream.

The 1000-object ceiling bounds the number of objects in a file, not its size, so a part is
never loaded whole: the checker holds one element (and one piece) at a time, and memory
stays flat however large the files grow. It is fed the pieces as they arrive (a generator
that asks for the next piece when it needs one), so a part is checked in the same pass that
writes it, never read back, and in the thread that receives it: no hand-off per piece.

The elements are checked a window at a time: msgspec checks that the window's whole elements
are JSON objects (their values skipped, still checked JSON, never made into Python objects)
at a tenth of the CPU of decoding them. Whatever it refuses is read again element by element
by Python's own JSON decoder, which has the last word: a file is refused for exactly what
it was refused for before. UTF-8 is checked apart, as the text is decoded.

Where a window's whole elements end is found by counting its braces, once; then where the
elements of the file end alike (the same few characters before the ", {"), msgspec is asked
at once and no brace is counted: its check says whether the guess holds.
"""

from __future__ import annotations

import codecs
import json
from collections.abc import Generator
from pathlib import Path
from typing import Any

import msgspec

from harvester.errors import BadFile

MAX_OBJECTS_PER_FILE = 1000
READ_BYTES = 256 * 1024
# One order or payment is a few kilobytes; anything this large is not one, and refusing it
# is what keeps memory bounded for a malformed file too.
MAX_VALUE_CHARS = 16 * 1024 * 1024
# The elements checked at once: a few copies of this many characters are held meanwhile.
WINDOW_CHARS = 64 * 1024
# The characters of an element's end looked for again (with the ", {" after them): enough to
# tell "]}}" (an order closing its line items) from "e}" (a line item).
ENDING_CHARS = 3
_WHITESPACE = " \t\n\r"
_NOT_BRACES = bytes(byte for byte in range(256) if byte not in b"{}")
_decoder = json.JSONDecoder()


class _AnyObject(msgspec.Struct, gc=False):
    """A JSON object, any keys: msgspec checks them and their values, and keeps none.

    gc=False: a window makes hundreds of these at once, and tracked ones would set off the
    garbage collector's young-generation passes over and over, for objects that hold
    nothing."""


# Whole elements of a window: a list of JSON objects, checked, not built into Python objects.
_objects = msgspec.json.Decoder(list[_AnyObject])

# What the check yields when it needs the next piece of the file, and is sent: the piece,
# or b"" at the end of the file.
_Needs = Generator[None, bytes, Any]


def count_elements(
    path: Path, *, read_bytes: int = READ_BYTES, max_value_chars: int = MAX_VALUE_CHARS
) -> int:
    """The number of elements of an export file; BadFile if it breaks Clover's format.

    The file is read `read_bytes` at a time; a value longer than `max_value_chars` is refused.
    """
    check = StreamCheck(max_value_chars=max_value_chars)
    with path.open("rb") as file:
        while data := file.read(read_bytes):
            check.feed(data)
    return check.finish()


class StreamCheck:
    """count_elements for a file that is never on disk: fed piece by piece as it streams.

    Each piece is checked as it is fed, as far as it goes (an element cut at its end waits
    for the next piece), in the caller's thread: a 64 KiB piece takes a fraction of a
    millisecond. A refusal is kept and raised by `finish`, after the caller has had its say
    (a truncated body is "truncated" before it is "not JSON").
    """

    def __init__(self, *, max_value_chars: int = MAX_VALUE_CHARS) -> None:
        self._check: _Needs | None = _Reader(max_value_chars).document()
        self._count: int | None = None
        self._error: BadFile | None = None
        self._ended = False
        self._send(None)  # up to its first need of a piece

    def feed(self, data: bytes) -> None:
        """Check the next piece of the file, as far as it goes."""
        if self._ended:
            raise RuntimeError("feed after finish or abandon")
        if data:
            self._send(data)

    def finish(self) -> int:
        """The file's element count; BadFile if it breaks Clover's format."""
        if self._ended:
            raise RuntimeError("finish after finish or abandon")
        self._send(b"")
        self._ended = True
        if self._error is not None:
            raise self._error
        if self._count is None:  # pragma: no cover -- a check fed its end returns or raises
            raise RuntimeError("the check ended without a result")
        return self._count

    def abandon(self) -> None:
        """Stop the check without a result."""
        self._ended = True
        check, self._check = self._check, None
        if check is not None:
            check.close()

    def _send(self, data: bytes | None) -> None:
        check = self._check
        if check is None:  # refused already: the rest of the file changes nothing
            return
        try:
            check.send(data)  # type: ignore[arg-type]  # None starts it, as for any generator
        except StopIteration as end:
            self._check, self._count = None, end.value
        except BadFile as exc:
            self._check, self._error = None, exc


class _Reader:
    """UTF-8 text of a file through a window that only ever holds the value being read.

    Every step that may need more of the file is a generator: it yields when it has read
    all it was fed, and is sent the next piece (b"" at the end of the file).
    """

    def __init__(self, max_value_chars: int) -> None:
        self._max_value_chars = max_value_chars
        self._utf8 = codecs.getincrementaldecoder("utf-8")()
        self._text = ""
        self._pos = 0
        self._offset = 0  # characters of the file before `_text`
        self._slow_until = 0  # the file's characters up to here are read element by element
        self._ending = ""  # how the last counted cut ended, and the ", {" after it
        self._misses = 0  # guesses at that ending msgspec refused
        self._eof = False

    def document(self) -> _Needs:
        if (yield from self._peek()) != "{":
            raise BadFile("not a JSON object")
        self._pos += 1
        count: int | None = None
        if (yield from self._peek()) == "}":
            raise BadFile('no "elements" list')
        while True:
            key = yield from self._value()
            if not isinstance(key, str):
                raise BadFile("not JSON: an object key is not a string")
            yield from self._expect(":")
            if key == "elements":
                if count is not None:
                    raise BadFile('"elements" appears twice')
                count = yield from self._elements()
            else:
                yield from self._value()
            if (yield from self._after_item("}")):
                break
        if (yield from self._peek()) is not None:
            raise BadFile("not JSON: data after the object")
        if count is None:
            raise BadFile('no "elements" list')
        return count

    def _elements(self) -> _Needs:
        if (yield from self._peek()) != "[":
            raise BadFile('no "elements" list ("elements" is not a list)')
        self._pos += 1
        if (yield from self._peek()) == "]":
            self._pos += 1
            return 0
        count = 0
        while True:
            whole = yield from self._whole_elements()
            if whole:
                count += whole
            else:
                if not isinstance((yield from self._value()), dict):
                    raise BadFile(f"element {count} is not a JSON object")
                count += 1
            if count > MAX_OBJECTS_PER_FILE:
                raise BadFile(
                    f"{MAX_OBJECTS_PER_FILE + 1} elements or more, more than {MAX_OBJECTS_PER_FILE}"
                )
            if (yield from self._after_item("]")):
                return count

    def _whole_elements(self) -> _Needs:
        """Check the whole elements at the start of the window and step past them: their
        number, or 0 (nothing read) where msgspec cannot say (then the rest of the window is
        read element by element, so a refusal costs at most one more pass)."""
        if self._offset + self._pos < self._slow_until:
            return 0
        while len(self._text) - self._pos < WINDOW_CHARS and (yield from self._read()):
            pass
        text, start = self._text, self._pos
        end = min(len(text), start + WINDOW_CHARS)
        self._slow_until = self._offset + end
        # The elements of a file most likely end alike: where the last counted cut's ending
        # (its last characters and the ", {" after them) is found again, msgspec is asked at
        # once, no brace counted. A guess it refuses costs one more check of the window; the
        # second makes the file's windows counted to its end.
        if self._ending:
            at = text.rfind(self._ending, start, end)
            if at > start:
                whole = self._all_to(text, start, at + ENDING_CHARS)
                if whole:
                    return whole
                self._misses += 1
                if self._misses == 2:
                    self._ending = ""
        # Where the braces outside strings balance, a '}' followed by ", {" ends an element of
        # the list: every element is an object, so a bracket inside one is closed before it
        # is (strings holding braces only make a good cut look bad: then the slow way reads
        # it). The window's balance is counted in one pass over its UTF-8 (where a brace is
        # one byte and no other character holds its byte), that drops all but the braces:
        # half the CPU of counting each kind of brace in the text. Then counted back from the
        # window's end.
        braces = text[start:end].encode().translate(None, _NOT_BRACES)
        curly = braces.count(b"{") - braces.count(b"}")
        balanced_to = end
        cut = text.rfind("}", start, end)
        while cut >= 0:
            curly -= text.count("{", cut + 1, balanced_to) - text.count("}", cut + 1, balanced_to)
            balanced_to = cut + 1
            if curly == 0 and _next_element_at(text, cut + 1):
                whole = self._all_to(text, start, balanced_to)
                if whole and self._misses < 2 and balanced_to - ENDING_CHARS > start:
                    after = text.index("{", balanced_to)  # the next element's, as seen above
                    ending = text[balanced_to - ENDING_CHARS : after + 1]
                    self._ending = ending if len(ending) <= 16 else ""
                return whole
            cut = text.rfind("}", start, cut)
        return 0

    def _all_to(self, text: str, start: int, end: int) -> int:
        """Step past text[start:end] if it is whole elements, all JSON objects: their number,
        or 0 (nothing read)."""
        try:
            # A str is decoded as it stands (its UTF-8 is not copied out first).
            elements = _objects.decode(f"[{text[start:end]}]")
        except msgspec.DecodeError:
            return 0
        self._pos = end
        return len(elements)

    def _after_item(self, closing: str) -> _Needs:
        """Past a comma (False) or the closing bracket (True)."""
        char = yield from self._peek()
        if char not in (",", closing):
            raise BadFile(f"not JSON: expected ',' or {closing!r}, found {char!r}")
        self._pos += 1
        return char == closing

    def _expect(self, char: str) -> _Needs:
        if (yield from self._peek()) != char:
            raise BadFile(f"not JSON: expected {char!r}")
        self._pos += 1

    def _peek(self) -> _Needs:
        """The next character that is not white space, unread; None at the end."""
        while True:
            while self._pos < len(self._text) and self._text[self._pos] in _WHITESPACE:
                self._pos += 1
            if self._pos < len(self._text):
                return self._text[self._pos]
            if not (yield from self._read()):
                return None

    def _value(self) -> _Needs:
        yield from self._peek()
        while True:
            try:
                value, end = _decoder.raw_decode(self._text, self._pos)
            except (ValueError, RecursionError) as exc:
                # Most likely the value runs past what has been read so far.
                if not (yield from self._read()):
                    raise BadFile(f"not JSON: {exc}") from None
                continue
            # A number that ends where the text does may go on in the next read.
            if end == len(self._text) and (yield from self._read()):
                continue
            self._pos = end
            return value

    def _read(self) -> _Needs:
        """Append the next piece of the file; False at its end."""
        if self._eof:
            return False
        data = yield
        try:
            text = self._utf8.decode(data, final=not data)
        except UnicodeDecodeError as exc:
            raise BadFile(f"not JSON: not UTF-8 text ({exc.reason})") from None
        self._eof = not data
        self._offset += self._pos
        self._text = self._text[self._pos :] + text
        self._pos = 0
        if len(self._text) > self._max_value_chars:
            raise BadFile(
                f"not an export file: a value longer than {self._max_value_chars} characters"
            )
        return True


def _next_element_at(text: str, at: int) -> bool:
    """Whether `text` goes on at `at` with a comma and an object (white space aside)."""
    at = _skip_whitespace(text, at)
    if text[at : at + 1] != ",":
        return False
    at = _skip_whitespace(text, at + 1)
    return text[at : at + 1] == "{"


def _skip_whitespace(text: str, at: int) -> int:
    """Where the first character at or after `at` that is not white space is (or the end)."""
    while at < len(text) and text[at] in _WHITESPACE:
        at += 1
    return at

"""Secrets out of text: every token the process knows, anything after `Bearer `, URL queries.

Text from a server is hostile: an error body may echo the request's Authorization header,
a "status" may carry a token. `scrub()` runs where such text enters (the Clover client),
before it is stored, printed or raised; the log processor runs it once more on every line.

A token is replaced where it occurs as a whole: not inside a longer run of letters and
digits, so a short loopback token like `x` never turns `export.created` into
`e***port.created`. A token of `MIN_TOKEN_CHARS` or more (the config refuses shorter ones
outside loopback) is also replaced where an echo glued it to other characters: so long a
run of random characters is never a piece of an ordinary word.

Pre-signed file URLs grant access by their query string: `describe_url()` is how one is
shown (host and path), and `scrub_url()` takes a URL's query out of a library's message.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

REDACTED = "***"
# Clover's tokens are UUID-like; anything shorter is refused by the config outside loopback.
MIN_TOKEN_CHARS = 16

# Whatever follows "Bearer " up to white space, a quote, or the end of a header-like value.
_BEARER = re.compile(r"(?i)(bearer\s+)[^\s\"'<>,;\\]+")

# A URL's query in a message: from "?" up to white space or a quote.
_QUERY = re.compile(r"\?[^\s\"'<>]+")
# Where a whole token may begin: a letter or digit that does not follow one.
_WORD_START = re.compile(r"(?<![A-Za-z0-9])[A-Za-z0-9]")
# The first few characters from each place a whole token may begin (the run of letters and
# digits starting there is matched whole, so the next match is at the next such place).
_WORD_PREFIX = re.compile(r"(?=([A-Za-z0-9][\s\S]{0,7}))[A-Za-z0-9]+")
_ALNUM = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")
_PREFIX_CHARS = 8  # long tokens are first looked up by these: one set lookup per place
# Where a long token glued to other characters can hide: a long run of token-like characters.
_LONG_RUN = re.compile(rf"[A-Za-z0-9._~+/=-]{{{MIN_TOKEN_CHARS},}}")


class _Secrets:
    """Every secret the process knows (config tokens, refreshed tokens), indexed for lookup.

    A run may know hundreds of thousands of tokens: at each place a token could begin, one
    set lookup of the next few characters says whether a long token may start there; only
    then is each length tried. Most texts (every answer Clover sends) hold none: the
    characters at all such places are gathered by a regular expression and looked up at
    once, and a text with none at all is left as it is without a step of Python per place.
    Short (loopback) tokens are tried by length at word starts.
    """

    def __init__(self) -> None:
        self.known: set[str] = set()
        self._by_length: dict[int, set[str]] = {}
        self._long_prefixes: set[str] = set()
        self._long_lengths: list[int] = []  # MIN_TOKEN_CHARS or more, longest first
        self._short_lengths: list[int] = []  # the others, longest first
        self._odd: list[str] = []  # secrets that do not start with a letter or digit

    def clear(self) -> None:
        self.known.clear()
        self._by_length.clear()
        self._long_prefixes.clear()
        self._long_lengths.clear()
        self._short_lengths.clear()
        self._odd.clear()

    def add(self, secret: str) -> None:
        if not secret or secret in self.known:
            return
        self.known.add(secret)
        if secret[0] not in _ALNUM:
            self._odd.append(secret)
            return
        same_length = self._by_length.setdefault(len(secret), set())
        if not same_length:
            lengths = sorted(self._by_length, reverse=True)
            self._long_lengths = [n for n in lengths if n >= MIN_TOKEN_CHARS]
            self._short_lengths = [n for n in lengths if n < MIN_TOKEN_CHARS]
        same_length.add(secret)
        if len(secret) >= MIN_TOKEN_CHARS:
            self._long_prefixes.add(secret[:_PREFIX_CHARS])

    def replace(self, text: str) -> str:
        if not self.known:
            return text
        for secret in self._odd:
            text = _replace_whole(text, secret)
        if self._short_lengths or not self._long_prefixes.isdisjoint(_WORD_PREFIX.findall(text)):
            text = self._replace_whole_words(text)
        return self._replace_glued(text) if self._may_hold_glued(text) else text

    def _replace_whole_words(self, text: str) -> str:
        pieces: list[str] = []
        done = 0
        for match in _WORD_START.finditer(text):
            start = match.start()
            if start < done:
                continue
            found = self._whole_at(text, start)
            if found:
                pieces += (text[done:start], REDACTED)
                done = start + found
        if not pieces:
            return text
        pieces.append(text[done:])
        return "".join(pieces)

    def _may_hold_glued(self, text: str) -> bool:
        """Whether a long run of `text` has a long token's prefix where `_replace_glued` looks
        for one: most texts have none, and this looks without a step of Python per place."""
        prefixes = self._long_prefixes
        return bool(prefixes) and any(
            not prefixes.isdisjoint(
                [run[at : at + _PREFIX_CHARS] for at in range(len(run) - MIN_TOKEN_CHARS + 1)]
            )
            for run in _LONG_RUN.findall(text)
        )

    def _whole_at(self, text: str, start: int) -> int:
        """The length of the longest whole secret at `start`; 0 if none."""
        if text[start : start + _PREFIX_CHARS] in self._long_prefixes:
            for length in self._long_lengths:
                end = start + length
                if text[start:end] in self._by_length[length] and _ends_whole(text, end):
                    return length
        for length in self._short_lengths:
            end = start + length
            if text[start:end] in self._by_length[length] and _ends_whole(text, end):
                return length
        return 0

    def _replace_glued(self, text: str) -> str:
        """`text` without long tokens glued to other characters (whole ones are gone)."""
        spans: list[tuple[int, int]] = []
        for run in _LONG_RUN.finditer(text):
            position, end = run.start(), run.end()
            while position <= end - MIN_TOKEN_CHARS:
                length = self._long_at(text, position)
                if length:
                    spans.append((position, position + length))
                    position += length
                else:
                    position += 1
        if not spans:
            return text
        pieces: list[str] = []
        done = 0
        for start, stop in spans:
            pieces += (text[done:start], REDACTED)
            done = stop
        pieces.append(text[done:])
        return "".join(pieces)

    def _long_at(self, text: str, start: int) -> int:
        if text[start : start + _PREFIX_CHARS] not in self._long_prefixes:
            return 0
        for length in self._long_lengths:
            if text[start : start + length] in self._by_length[length]:
                return length
        return 0


def _ends_whole(text: str, end: int) -> bool:
    return end >= len(text) or text[end] not in _ALNUM or text[end - 1] not in _ALNUM


def _replace_whole(text: str, secret: str) -> str:
    return re.sub(rf"(?<![A-Za-z0-9]){re.escape(secret)}(?![A-Za-z0-9])", REDACTED, text)


_secrets = _Secrets()


def register_secret(value: str) -> None:
    """Make sure `value` is blotted out of every scrubbed text from now on."""
    _secrets.add(value)


def forget_secrets() -> None:
    """Forget every registered secret (tests start from a clean slate)."""
    _secrets.clear()


def scrub(text: str) -> str:
    """`text` without any known secret (as a whole word) nor bearer credential."""
    return _BEARER.sub(rf"\g<1>{REDACTED}", _secrets.replace(text))


def describe_url(url: str) -> str:
    """A file URL as it may be shown: scheme, host and path; never its query (the grant)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port is not None else ""
    except ValueError:
        return "(an unreadable URL)"
    return scrub(f"{parts.scheme}://{host}{port}{parts.path}")


def scrub_url(text: str, url: str) -> str:
    """`text` (a library's message about `url`) with the URL shown by `describe_url`."""
    shown = describe_url(url)
    text = text.replace(url, shown)
    query = url.partition("?")[2]
    if query:
        text = text.replace(query, REDACTED)
    # A library may have re-encoded the URL: no query of any shape survives.
    return scrub(_QUERY.sub(f"?{REDACTED}", text))

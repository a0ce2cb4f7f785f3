"""Secrets out of text: every token the process knows, anything after `Bearer `, URL queries.

Text from a server is hostile: an error body may echo the request's Authorization header,
a "status" may carry a token. `scrub()` runs where such text enters (the Clover client),
before it is stored, printed or raised; the log processor runs it once more on every line.

A token is replaced where it occurs as a whole: not inside a longer run of letters and
digits, so a short loopback token like `x` never turns `export.created` into
`e***port.created`. (The config refuses tokens shorter than `MIN_TOKEN_CHARS` outside
loopback: a real one is never a piece of an ordinary word.)

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
_ALNUM = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")
_KEY_CHARS = 8  # secrets are looked up by their first characters: linear in the text


class _Secrets:
    """Every secret the process knows (config tokens, refreshed tokens), indexed for lookup.

    A run may know hundreds of thousands of tokens: a text is scanned once, and at each
    place a token could begin, only the tokens starting with the same characters are tried.
    """

    def __init__(self) -> None:
        self.known: set[str] = set()
        self._by_key: dict[str, list[str]] = {}
        self._short: set[str] = set()
        self._short_lengths: list[int] = []
        self._odd: list[str] = []  # secrets that do not start with a letter or digit

    def clear(self) -> None:
        self.known.clear()
        self._by_key.clear()
        self._short.clear()
        self._short_lengths.clear()
        self._odd.clear()

    def add(self, secret: str) -> None:
        if not secret or secret in self.known:
            return
        self.known.add(secret)
        if secret[0] not in _ALNUM:
            self._odd.append(secret)
        elif len(secret) < _KEY_CHARS:
            self._short.add(secret)
            self._short_lengths = sorted({len(s) for s in self._short}, reverse=True)
        else:
            bucket = self._by_key.setdefault(secret[:_KEY_CHARS], [])
            bucket.append(secret)
            bucket.sort(key=len, reverse=True)

    def replace(self, text: str) -> str:
        if not self.known:
            return text
        for secret in self._odd:
            text = _replace_whole(text, secret)
        pieces: list[str] = []
        done = 0
        for match in _WORD_START.finditer(text):
            start = match.start()
            if start < done:
                continue
            found = self._match_at(text, start)
            if found:
                pieces += (text[done:start], REDACTED)
                done = start + found
        if not pieces:
            return text
        pieces.append(text[done:])
        return "".join(pieces)

    def _match_at(self, text: str, start: int) -> int:
        """The length of the longest whole secret at `start`; 0 if none."""
        for secret in self._by_key.get(text[start : start + _KEY_CHARS], ()):
            if text.startswith(secret, start) and _ends_whole(text, start + len(secret)):
                return len(secret)
        for length in self._short_lengths:
            end = start + length
            if text[start:end] in self._short and _ends_whole(text, end):
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

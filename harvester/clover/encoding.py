"""A file body as the file host sent it (maybe compressed) turned into the bytes we store.

S3 and CDNs serve an object stored compressed with `Content-Encoding: gzip`, whatever the
client asked for, and then `Content-Length` counts the compressed bytes. So the body is read
as sent (its length framed by Content-Length) and decoded here; the decoded JSON is what is
stored (and hashed). Decoding streams: one piece in, bounded pieces out, so that a small
compressed body that inflates to gigabytes never sits in memory at once.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator

from harvester.errors import BadFile

# What a download asks for: the encodings this module decodes.
ACCEPT_ENCODING = "gzip, deflate"
# The most decoded bytes handed out at once.
DECODED_PIECE_BYTES = 256 * 1024

_GZIP_WBITS = 16 + zlib.MAX_WBITS
_ZLIB_WBITS = zlib.MAX_WBITS
_RAW_DEFLATE_WBITS = -zlib.MAX_WBITS


class BodyDecoder:
    """Undoes one response's Content-Encoding.

    `feed` each piece as it arrives, then `finish`; both yield decoded bytes. BadFile for an
    encoding it does not know or a body that does not decode.
    """

    def __init__(self, content_encoding: str | None) -> None:
        codings = [c.strip().lower() for c in (content_encoding or "").split(",") if c.strip()]
        codings = [c for c in codings if c != "identity"]
        if len(codings) > 1:
            raise BadFile(f"file host used several encodings at once: {content_encoding!r}")
        self.encoding = codings[0] if codings else "identity"
        self._inflater: zlib._Decompress | None = None
        self._deflate_pending = b""  # "deflate" is zlib-wrapped or raw: decided on its start
        if self.encoding in ("gzip", "x-gzip"):
            self._inflater = zlib.decompressobj(_GZIP_WBITS)
        elif self.encoding != "deflate" and self.encoding != "identity":
            raise BadFile(f"file host used an encoding the harvester cannot read: {self.encoding}")

    def feed(self, piece: bytes) -> Iterator[bytes]:
        if self.encoding == "identity":
            yield piece
            return
        if self.encoding == "deflate" and self._inflater is None:
            self._deflate_pending += piece
            if len(self._deflate_pending) < 2:
                return
            piece = self._start_deflate()
        yield from self._inflate(piece)

    def finish(self) -> Iterator[bytes]:
        """The decoded tail; BadFile if the compressed body stopped short of its end."""
        if self.encoding == "identity":
            return
        if self._deflate_pending:
            yield from self._inflate(self._start_deflate())
        if self._inflater is None:  # nothing was sent
            return
        yield self._inflater.flush()  # what it held back, if anything
        if not self._inflater.eof:
            raise BadFile(f"{self.encoding} body cut short")
        if self._inflater.unused_data:
            raise BadFile(f"{self.encoding} body has data after its end")

    def _start_deflate(self) -> bytes:
        """Pick zlib-wrapped or raw deflate by the body's first bytes; return them."""
        piece, self._deflate_pending = self._deflate_pending, b""
        wbits = _ZLIB_WBITS if _looks_zlib_wrapped(piece) else _RAW_DEFLATE_WBITS
        self._inflater = zlib.decompressobj(wbits)
        return piece

    def _inflate(self, data: bytes) -> Iterator[bytes]:
        inflater = self._inflater
        assert inflater is not None
        try:
            while data:
                if inflater.eof:
                    raise BadFile(f"{self.encoding} body has data after its end")
                out = inflater.decompress(data, DECODED_PIECE_BYTES)
                data = inflater.unconsumed_tail
                if out:
                    yield out
        except zlib.error as exc:
            raise BadFile(f"{self.encoding} body does not decode: {exc}") from None


def _looks_zlib_wrapped(start: bytes) -> bool:
    """RFC 1950's two-byte header: method 8, and the pair a multiple of 31."""
    return len(start) >= 2 and start[0] & 0x0F == 8 and (start[0] << 8 | start[1]) % 31 == 0

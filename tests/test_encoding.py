"""A file body as sent, compressed or not, turned into the bytes stored."""

from __future__ import annotations

import gzip
import json
import zlib

import pytest

from harvester.clover.encoding import DECODED_PIECE_BYTES, BodyDecoder
from harvester.errors import BadFile

BODY = json.dumps({"elements": [{"id": f"O{n:05d}", "note": "x" * 40} for n in range(3000)]})
PLAIN = BODY.encode()


def raw_deflate(data: bytes) -> bytes:
    packer = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return packer.compress(data) + packer.flush()


ENCODED = {
    None: PLAIN,
    "identity": PLAIN,
    "gzip": gzip.compress(PLAIN),
    "x-gzip": gzip.compress(PLAIN),
    "GZIP": gzip.compress(PLAIN),
    "deflate": zlib.compress(PLAIN),  # as RFC 9110 means it: zlib-wrapped
    "identity, gzip": gzip.compress(PLAIN),
}


def decode(encoding: str | None, sent: bytes, piece: int) -> bytes:
    decoder = BodyDecoder(encoding)
    out = b"".join(
        data for at in range(0, len(sent), piece) for data in decoder.feed(sent[at : at + piece])
    )
    return out + b"".join(decoder.finish())


@pytest.mark.parametrize("encoding", list(ENCODED))
@pytest.mark.parametrize("piece", [1, 7, 65536])
def test_every_encoding_decodes_to_the_json_whatever_the_pieces(
    encoding: str | None, piece: int
) -> None:
    """Identity, gzip (x-gzip) and deflate decode to the same bytes, fed whole or byte by
    byte."""
    assert decode(encoding, ENCODED[encoding], piece) == PLAIN


def test_raw_deflate_is_read_too() -> None:
    """Some servers send "deflate" without the zlib wrapper: it decodes all the same."""
    assert decode("deflate", raw_deflate(PLAIN), 1000) == PLAIN


def test_decoded_pieces_stay_bounded() -> None:
    """A small compressed body that inflates a lot comes out in bounded pieces."""
    bomb = gzip.compress(b" " * (20 * DECODED_PIECE_BYTES))
    decoder = BodyDecoder("gzip")
    pieces = list(decoder.feed(bomb)) + list(decoder.finish())
    assert len(pieces) >= 20
    assert max(len(p) for p in pieces) <= DECODED_PIECE_BYTES
    assert sum(len(p) for p in pieces) == 20 * DECODED_PIECE_BYTES


@pytest.mark.parametrize(
    ("encoding", "sent", "problem"),
    [
        pytest.param("gzip", gzip.compress(PLAIN)[:-100], "cut short", id="gzip-cut-short"),
        pytest.param("gzip", b"<html>502 Bad Gateway</html>", "does not decode", id="not-gzip"),
        pytest.param("gzip", gzip.compress(PLAIN) + b"more", "after its end", id="gzip-trailer"),
        pytest.param("deflate", zlib.compress(PLAIN)[:50], "cut short", id="deflate-cut-short"),
        pytest.param("deflate", b"x", "cut short", id="deflate-one-byte"),
        pytest.param("br", PLAIN, "cannot read: br", id="unknown-encoding"),
        pytest.param("gzip, deflate", PLAIN, "several encodings", id="two-encodings"),
    ],
)
def test_a_body_that_does_not_decode_is_a_bad_file(
    encoding: str, sent: bytes, problem: str
) -> None:
    """Truncated, garbage, trailing data, an unknown or stacked encoding: BadFile, saying so."""
    with pytest.raises(BadFile, match=problem):
        decode(encoding, sent, 4096)


def test_data_after_the_end_in_a_later_piece_is_a_bad_file() -> None:
    """Bytes that come after a complete gzip body, in a piece of their own, are refused."""
    decoder = BodyDecoder("gzip")
    assert b"".join(decoder.feed(gzip.compress(PLAIN))) == PLAIN
    with pytest.raises(BadFile, match="after its end"):
        list(decoder.feed(b"more"))


def test_an_empty_body_decodes_to_nothing() -> None:
    """No bytes sent, none stored: the file check then says an empty body is no JSON."""
    for encoding in (None, "deflate"):
        assert decode(encoding, b"", 10) == b""

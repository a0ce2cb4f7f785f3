"""The streaming check of Clover's export file format."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from harvester.clover.export_file import StreamCheck, count_elements
from harvester.errors import BadFile


def document(rng: random.Random, elements: int) -> str:
    items = [
        {
            "id": f"ID{n}",
            "amount": rng.randint(-(10**12), 10**12),
            "rate": rng.random(),
            "note": "café ☕ 𝄞" * rng.randint(0, 3),
            "lineItems": {"elements": [{"price": 1.5e3}] * rng.randint(0, 2)},
        }
        for n in range(elements)
    ]
    body = {"href": "x", "elements": items, "after": [1, 2.5, None, True]}
    return json.dumps(body, indent=rng.choice([None, 1, 4]), ensure_ascii=rng.random() < 0.5)


@pytest.mark.parametrize("read_bytes", [1, 7, 64, 4096])
def test_counts_match_a_full_parse_whatever_the_read_size(tmp_path: Path, read_bytes: int) -> None:
    """Reads that split numbers, strings and multi-byte characters anywhere change nothing."""
    rng = random.Random(read_bytes)
    for elements in (0, 1, 2, 17):
        path = tmp_path / f"part-{elements}.json"
        path.write_text(document(rng, elements), encoding="utf-8")
        expected = len(json.loads(path.read_text())["elements"])
        assert count_elements(path, read_bytes=read_bytes) == expected


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b'{"elements": [{"id": 1}], "elements": []}', "appears twice"),
        (b'{"elements": [{"id": 1}]} {}', "data after"),
        (b'{"elements": [{"id": 1},]}', "not JSON"),
        (b'{"elements": [{"id": 1}', "not JSON"),
        (b"{}", '"elements" list'),
        (b"", "not a JSON object"),
    ],
)
def test_malformed_files_are_refused(tmp_path: Path, body: bytes, problem: str) -> None:
    """Duplicate keys, trailing data, stray commas and cut-off bodies raise BadFile."""
    path = tmp_path / "part.json"
    path.write_bytes(body)
    with pytest.raises(BadFile, match=problem):
        count_elements(path)


def test_a_value_too_large_to_be_an_object_is_refused(tmp_path: Path) -> None:
    """One value larger than the ceiling is refused instead of being held in memory."""
    path = tmp_path / "part.json"
    path.write_text(json.dumps({"elements": [{"note": "x" * 5000}]}))
    with pytest.raises(BadFile, match="longer than 1000"):
        count_elements(path, max_value_chars=1000)


def many(elements: list[str]) -> bytes:
    return ('{"elements": [' + ", ".join(elements) + "]}").encode()


def test_elements_checked_a_window_at_a_time_count_like_a_full_parse(tmp_path: Path) -> None:
    """Whole windows of elements are checked at once; strings holding braces and "}, {",
    nested lists of objects and values Python's decoder takes (NaN) count as before."""
    rng = random.Random(20)
    kinds = [
        '{"id": "A%d", "lineItems": [{"id": "L1"}, {"id": "L2", "tags": [{}]}], "n": 1}',
        '{"id": "B%d", "note": "a } and a }, { and a {", "more": {"x": [1, {"y": 2}]}}',
        '{"id": "C%d", "note": "unbalanced {{{", "rate": NaN}',
        '{"id": "D%d", "note": "unbalanced }}}", "pad": "%s"}',
    ]
    elements = []
    for n in range(1000):
        kind = rng.choice(kinds)
        elements.append(kind % ((n, "x" * rng.randint(0, 3000)) if "%s" in kind else n))
    path = tmp_path / "part.json"
    path.write_bytes(many(elements))
    for read_bytes in (64, 4096, 256 * 1024):
        assert count_elements(path, read_bytes=read_bytes) == 1000


def test_nested_items_that_end_like_the_elements_count_like_a_full_parse(tmp_path: Path) -> None:
    """Where the items of a nested list end as the elements do, a guess at the elements' end
    falls inside an element: msgspec refuses it, and the braces are counted instead."""
    rng = random.Random(22)
    elements = []
    for n in range(1000):
        items = ", ".join('{"a": {"v": 1}}' for _ in range(rng.randint(0, 3)))
        tail = rng.choice(['"z": {"v": 1}', '"z": [{"v": 1}, {"w": 1}]', '"z": 1'])
        elements.append(f'{{"id": {n}, "pad": "{"p" * 150}", "list": [{items}], {tail}}}')
    elements[700] = '{"id": 700, "list": [{"a": {"v": 1}}], "z": {"v": tru}}'
    path = tmp_path / "part.json"
    path.write_bytes(many(elements))
    for read_bytes in (4096, 256 * 1024):
        with pytest.raises(BadFile, match="not JSON"):
            count_elements(path, read_bytes=read_bytes)
    elements[700] = '{"id": 700, "list": [{"a": {"v": 1}}], "z": {"v": 1}}'
    path.write_bytes(many(elements))
    for read_bytes in (4096, 256 * 1024):
        assert count_elements(path, read_bytes=read_bytes) == 1000


def test_braces_among_characters_of_every_width_count_like_a_full_parse(tmp_path: Path) -> None:
    """A window's braces are counted in its UTF-8 bytes: characters of two, three and four
    bytes, in strings that hold braces, change no count wherever the windows fall."""
    rng = random.Random(21)
    notes = ["é{", "☕}, {", "𝄞{{", "}ü}", "{\\u00e9}"]
    elements = [
        json.dumps(
            {"id": n, "note": "".join(rng.choices(notes, k=rng.randint(0, 40))), "n": [{}]},
            ensure_ascii=False,
        )
        for n in range(1000)
    ]
    path = tmp_path / "part.json"
    path.write_bytes(many(elements))
    for read_bytes in (97, 4096, 256 * 1024):
        assert count_elements(path, read_bytes=read_bytes) == 1000


@pytest.mark.parametrize(
    ("bad", "problem"),
    [
        ("[1]", "element 600 is not a JSON object"),
        ('{"id": tru}', "not JSON"),
        ('{"id": "\\q"}', "not JSON"),
    ],
)
def test_a_bad_element_among_many_is_refused_as_before(
    tmp_path: Path, bad: str, problem: str
) -> None:
    """An element the window's check refuses is read again one at a time: the refusal names
    what the element-by-element reading names."""
    elements = [f'{{"id": "E{n}", "items": [{{"a": 1}}, {{"b": 2}}]}}' for n in range(1000)]
    elements[600] = bad
    path = tmp_path / "part.json"
    path.write_bytes(many(elements))
    with pytest.raises(BadFile, match=problem):
        count_elements(path)


def test_more_than_1000_elements_in_whole_windows_are_refused(tmp_path: Path) -> None:
    """The ceiling holds when the elements are counted a window at a time."""
    path = tmp_path / "part.json"
    path.write_bytes(many(['{"id": 1}'] * 1500))
    with pytest.raises(BadFile, match="1001 elements or more, more than 1000"):
        count_elements(path)


def test_a_stream_check_keeps_its_refusal_for_finish() -> None:
    """A piece that breaks the format is not raised as it is fed: the rest is taken and
    ignored, and finish raises the refusal (a caller checks the size first)."""
    check = StreamCheck()
    check.feed(b'{"elements": [{"id": 1}, 7, ')
    check.feed(b'{"id": 3}]}')
    with pytest.raises(BadFile, match="element 1 is not a JSON object"):
        check.finish()
    with pytest.raises(RuntimeError, match="after finish"):
        check.feed(b"more")


def test_a_stream_check_fed_in_pieces_counts_like_the_whole() -> None:
    """Pieces cut anywhere count like the file read whole; an abandoned check takes no more
    pieces."""
    elements = [f'{{"id": "E{n}", "items": [{{"a": 1}}]}}' for n in range(1000)]
    body = many(elements)
    check = StreamCheck()
    for start in range(0, len(body), 10_000):
        check.feed(body[start : start + 10_000])
    assert check.finish() == 1000
    abandoned = StreamCheck()
    abandoned.feed(body[:100])
    abandoned.abandon()
    with pytest.raises(RuntimeError, match="after finish or abandon"):
        abandoned.feed(body[100:])

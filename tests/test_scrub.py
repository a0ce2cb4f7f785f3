"""Scrubbing: whole tokens and bearer credentials out of text, URLs shown without their grant."""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest

from harvester.scrub import describe_url, forget_secrets, register_secret, scrub, scrub_url

TOKEN = "tok-7f3a9c0e-51b2-4d6e-8a7b-123456789abc"


@pytest.fixture(autouse=True)
def known() -> Iterator[None]:
    """Each test registers its own secrets, and forgets them after."""
    forget_secrets()
    yield
    forget_secrets()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f"Authorization: Bearer {TOKEN}", "Authorization: Bearer ***"),
        (f'{{"token": "{TOKEN}"}}', '{"token": "***"}'),
        (f"?access_token={TOKEN}&x=1", "?access_token=***&x=1"),
        (f"{TOKEN}", "***"),
        (f"Z{TOKEN}Z", "Z***Z"),  # glued by an echo: a long token goes all the same
        (f"{TOKEN} and {TOKEN}{TOKEN}", "*** and ******"),
    ],
)
def test_a_known_token_is_replaced_wherever_it_occurs(text: str, expected: str) -> None:
    """A registered token of Clover's length is blotted out alone or glued to other text."""
    register_secret(TOKEN)
    assert scrub(text) == expected


def test_a_short_token_leaves_words_that_contain_it_alone() -> None:
    """The loopback token 'x' (or 'abcdefghij') is replaced only as a whole word: never
    export.created into e***port.created."""
    register_secret("x")
    register_secret("abcdefghij")
    assert scrub("export.created x-ray x") == "export.created ***-ray ***"
    assert scrub("abcdefghij abcdefghijk zabcdefghij") == "*** abcdefghijk zabcdefghij"


def test_anything_after_bearer_is_replaced_even_when_unknown() -> None:
    """A bearer credential nobody registered is still blotted out, up to a quote or space."""
    assert scrub('echo: "authorization": "bearer abc.DEF-123" end') == (
        'echo: "authorization": "bearer ***" end'
    )


def test_many_known_tokens_are_each_replaced() -> None:
    """With thousands of tokens known, each is still found, longest first."""
    tokens = [f"tok-{n:06d}-0123456789abcdef" for n in range(5000)]
    for token in tokens:
        register_secret(token)
    register_secret(tokens[7] + "-longer")
    text = f"a {tokens[0]} b {tokens[4999]} c {tokens[7]}-longer d"
    assert scrub(text) == "a *** b *** c *** d"


def test_a_file_url_is_shown_without_its_query() -> None:
    """A pre-signed URL is shown as scheme, host, port and path: the query is the grant."""
    url = "https://files.example:8443/exports/ABC-1.json?X-Amz-Signature=s3cr3t&X-Amz-Date=1"
    assert describe_url(url) == "https://files.example:8443/exports/ABC-1.json"


def test_a_library_message_loses_the_query_even_re_encoded() -> None:
    """A message quoting the URL, even in another encoding, keeps no query."""
    url = "https://files.example/a.json?sig=s3cr3t%2F"
    message = f"Cannot connect to {url} and https://files.example/a.json?sig=s3cr3t/"
    scrubbed = scrub_url(message, url)
    assert "s3cr3t" not in scrubbed
    assert "https://files.example/a.json" in scrubbed


@pytest.mark.parametrize("seed", range(3))
def test_a_token_anywhere_in_an_answer_is_found_and_a_text_without_one_is_left_alone(
    seed: int,
) -> None:
    """Most texts hold no token and are looked over without a step per place: that look
    misses no token, whole (at any word start, whatever it holds) or glued into a long run."""
    rng = random.Random(seed)
    glueable = ["8f14e45f-ceea-467f-a0e6-0123456789ab", "Zq9.Ab_c/d+e=f~g-0123456789"]
    glueable.append("Ab3dEf7h.j1lMn5p")  # as short as a token glued to others may be
    whole_only = ["client:secret with-space-9"]  # (a short token turns the look off)
    for token in glueable + whole_only:
        register_secret(token)
    filler = 'ab19{}":,/ .-_=?&\n'
    for _ in range(300):
        before = "".join(rng.choices(filler, k=rng.randrange(40)))
        after = "".join(rng.choices(filler, k=rng.randrange(40)))
        assert scrub(before + " " + after) == before + " " + after
        if rng.random() < 0.5:
            token = rng.choice(glueable + whole_only)
            text = f"{before} {token} {after}"
        else:
            token = rng.choice(glueable)
            # Letters or digits next to it: the token does not stand as a whole word.
            glue = "".join(rng.choices("ab19.-=/", k=rng.randrange(20))) + rng.choice("ab19")
            tail = rng.choice(["", " ", "1" + glue])
            text = f"{before}{glue}{token}{tail}{after}"
        assert token not in scrub(text), text

"""Logging: one logger per routing, routed as configured last, never a token."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator

import pytest
from structlog.testing import capture_logs

from harvester.logs import configure_logging, get_logger
from harvester.scrub import forget_secrets, register_secret


@pytest.fixture(autouse=True)
def no_secrets() -> Iterator[None]:
    forget_secrets()
    yield
    forget_secrets()


def lines(buffer: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in buffer.getvalue().splitlines()]


def test_a_logger_is_made_once_per_routing() -> None:
    """Every call hands out the same logger (a line its level drops costs no new one) until
    logging is routed anew."""
    first = get_logger()
    assert get_logger() is first
    configure_logging("json", "warning", stream=io.StringIO())
    assert get_logger() is not first
    assert get_logger() is get_logger()


def test_a_new_routing_reaches_the_loggers_handed_out_after_it() -> None:
    before, after = io.StringIO(), io.StringIO()
    configure_logging("json", "debug", stream=before)
    get_logger().debug("first", n=1)
    configure_logging("json", "warning", stream=after)
    get_logger().info("dropped")
    get_logger().warning("second", n=2)
    assert [(line["event"], line["level"]) for line in lines(before)] == [("first", "debug")]
    assert [(line["event"], line["level"]) for line in lines(after)] == [("second", "warning")]


def test_capture_logs_sees_the_lines_of_a_logger_made_before_it() -> None:
    log = get_logger()
    with capture_logs() as captured:
        log.info("export.created", export_id="E1")
    assert captured == [{"event": "export.created", "export_id": "E1", "log_level": "info"}]


def test_a_known_token_never_reaches_a_line(log_buffer: io.StringIO) -> None:
    token = "tok-7f3a9c0e-51b2-4d6e-8a7b-123456789abc"
    log = get_logger()
    register_secret(token)
    log.warning("request.retry", error=f"echo: {token}")
    assert token not in log_buffer.getvalue()
    assert lines(log_buffer)[-1]["error"] == "echo: ***"

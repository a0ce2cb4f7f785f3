"""Logging: structlog, JSON lines for machines, readable lines for people, never a token.

structlog is loaded by the first logger made: a command that logs nothing, such as `status`
or `plan`, starts without it. It comes without rich, which it would bring in for console
tracebacks it never draws here (`format_exc_info` makes every traceback text first): a
twentieth of a second of every run's start-up.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, MutableMapping
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Literal, TextIO

from harvester.scrub import scrub

if TYPE_CHECKING:
    import structlog

LogFormat = Literal["auto", "json", "console"]


class _Routing:
    """Where logs go: set up when the first logger is made, at once after that."""

    def __init__(self) -> None:
        self.pending: Callable[[], None] | None = None
        self.loaded = False
        # What `get_logger` hands out, made once per routing. structlog's own `get_logger` is
        # a lazy proxy that builds a new logger at every call on it, even one its level drops
        # (a poll's debug line): a few microseconds each, several times per export.
        self.logger: structlog.typing.FilteringBoundLogger | None = None


_routing = _Routing()


def _scrub(value: Any) -> Any:
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, dict):
        return {key: _scrub(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_scrub(item) for item in value)
    return value


def scrub_secrets(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: replace any known secret in any value with ***.

    Defence in depth: text from servers is scrubbed where it enters, and code never passes
    a token to a log call in the first place.
    """
    return {key: _scrub(value) for key, value in event_dict.items()}


def configure_logging(
    log_format: LogFormat = "auto",
    level: str = "info",
    stream: TextIO | None = None,
    *,
    drawing: bool = False,
) -> None:
    """Route structlog to `stream` (stderr by default) as JSON or console lines.

    `drawing`: a live view is drawn on the terminal; readable lines below `warning` are left
    out there (JSON lines, which a person did not ask to read, keep `level`).
    """
    out = stream if stream is not None else sys.stderr
    _routing.pending = lambda: _configure(log_format, level, out, drawing)
    if _routing.loaded:
        _apply()


def _apply() -> None:
    if _routing.pending is not None:
        _routing.pending()
        _routing.pending = None
    _routing.loaded = True
    _routing.logger = None  # made again, routed anew


def _load_structlog() -> None:
    """Import structlog without rich, unless rich is loaded already (the live view).

    structlog imports rich whenever it can, for its console tracebacks; hidden meanwhile,
    rich is left to the live view, which imports it as usual later.
    """
    if "structlog" not in sys.modules and "rich" not in sys.modules:
        sys.modules["rich"] = None  # type: ignore[assignment]  # what makes an import fail
        try:
            import structlog  # noqa: F401 -- loaded here, used by the callers
        finally:
            del sys.modules["rich"]


def bound_context(**values: Any) -> AbstractContextManager[None]:
    """Within it, every log line of this task carries `values` (structlog's contextvars)."""
    _load_structlog()
    import structlog

    manager: AbstractContextManager[None] = structlog.contextvars.bound_contextvars(**values)
    return manager


def _configure(log_format: LogFormat, level: str, out: TextIO, drawing: bool) -> None:
    _load_structlog()
    import structlog

    use_json = log_format == "json" or (log_format == "auto" and not out.isatty())
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if use_json
        else structlog.dev.ConsoleRenderer(colors=out.isatty())
    )
    threshold = logging.getLevelNamesMapping()[level.upper()]
    if drawing and not use_json:
        threshold = max(threshold, logging.WARNING)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            scrub_secrets,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(threshold),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=False,
    )


def get_logger() -> structlog.typing.FilteringBoundLogger:
    logger = _routing.logger
    if logger is None:
        _load_structlog()
        import structlog

        if not _routing.loaded:
            _apply()
        # bind() on structlog's proxy makes the logger itself, as routed now. Its processors
        # are structlog's list, which `capture_logs` changes in place.
        logger = structlog.get_logger("harvester").bind()
        _routing.logger = logger
    return logger

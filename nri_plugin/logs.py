"""Structured logs: JSON lines when not on a terminal, readable lines on a terminal.

Rendering and writing wait until the runtime has its answer. A log call made
while an event loop runs in this thread only records the event (its level,
its fields, the time as a number); the line is rendered (the ISO timestamp,
the JSON) and written by a callback the loop runs after the current step, so
after the reply that the step writes to the runtime. A decision's log line
(the hints can be hundreds of masks) cost as much as the decision to render.
The lines are the same as if written at once, in the same order. Without a
running loop (the CLI commands, tests calling handlers directly), or when
:data:`MAX_QUEUED` lines wait, lines are written at once; whatever still
waits at interpreter exit is written then. Values handed to a log call must
not be changed afterwards (they are rendered later): callers pass fresh ones.
"""

from __future__ import annotations

import asyncio
import atexit
import datetime
import json
import logging
import sys
import threading
import time
from collections import deque
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

LEVELS = ("debug", "info", "warning", "error")

MAX_QUEUED = 1000
"""Lines that may wait for the loop; one more and every waiting line is written at once."""

_TIMESTAMP = "timestamp"


# structlog's level names for its method aliases (``add_log_level``)
_LEVEL_OF = {"warn": "warning", "exception": "error"}


def _stamp_and_hand_over(logger: Any, method: str, event_dict: MutableMapping[str, Any]) -> Any:
    """structlog's ``add_log_level``, the time of the call, ``format_exc_info``, and the
    event itself handed to the sink unrendered, in one processor (one call per log line,
    not four: the request path logs on every request)."""
    event_dict["level"] = _LEVEL_OF.get(method, method)
    # the time of the call, as a number: formatted (ISO 8601, UTC) when the line is rendered
    event_dict[_TIMESTAMP] = time.time()
    if "exc_info" in event_dict:
        # now: the exception is the current one
        event_dict = structlog.processors.format_exc_info(logger, method, event_dict)
    return (method, event_dict), {}


def _json_fallback(value: Any) -> Any:
    # as structlog's JSONRenderer: a value's own ``__structlog__``, else its repr
    try:
        return value.__structlog__()
    except AttributeError:
        return repr(value)


# structlog's JSONRenderer(sort_keys=False) calls json.dumps, which builds an encoder for
# every line; this one is built once, with the same settings (the same text)
_encode_json = json.JSONEncoder(default=_json_fallback).encode


def _render_json(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> str:
    return _encode_json(event_dict)


def _iso_utc(seconds: float) -> str:
    """structlog's TimeStamper(fmt="iso", utc=True) text for a time.time() value."""
    moment = datetime.datetime.fromtimestamp(seconds, tz=datetime.UTC)
    return moment.isoformat().replace("+00:00", "Z")


class DeferredSink:
    """structlog's logger: queues events, renders and writes them after the loop's step."""

    def __init__(self, stream: TextIO, renderer: Any) -> None:
        self._stream = stream
        self._render = renderer
        self._queue: deque[tuple[str, MutableMapping[str, Any]]] = deque()
        self._lock = threading.Lock()
        self._scheduled = False

    def msg(self, method: str, event_dict: MutableMapping[str, Any]) -> None:
        # None outside a running loop (get_running_loop would raise: costlier, every call)
        loop = asyncio._get_running_loop()
        with self._lock:
            self._queue.append((method, event_dict))
            if loop is None or len(self._queue) > MAX_QUEUED:
                self._write_queued()
            elif not self._scheduled:
                self._scheduled = True
                loop.call_soon(self.flush)

    # the bound logger calls the method named after the level
    debug = info = warning = warn = error = err = critical = fatal = exception = log = msg

    def flush(self) -> None:
        """Render and write every waiting line."""
        with self._lock:
            self._write_queued()

    def _write_queued(self) -> None:
        self._scheduled = False
        if not self._queue:
            return
        lines = []
        while self._queue:
            method, event_dict = self._queue.popleft()
            stamp = event_dict.get(_TIMESTAMP)
            if isinstance(stamp, float):
                event_dict[_TIMESTAMP] = _iso_utc(stamp)
            try:
                lines.append(self._render(None, method, event_dict))
            except Exception as exc:  # a log line must never take the plugin down
                lines.append(f"log line not rendered ({exc!r}): {event_dict!r}")
        try:
            self._stream.write("\n".join(lines) + "\n")
            self._stream.flush()
        except (OSError, ValueError):
            pass  # the stream is gone (closed pipe, closed file): nothing to tell it


_sink: DeferredSink | None = None


def flush_logs() -> None:
    """Write every log line still waiting (shutdown; tests reading the stream)."""
    if _sink is not None:
        _sink.flush()


atexit.register(flush_logs)


def configure_logging(level: str = "info", stream: TextIO | None = None) -> None:
    global _sink
    out = stream if stream is not None else sys.stderr
    renderer: structlog.types.Processor = (
        structlog.dev.ConsoleRenderer(colors=False) if out.isatty() else _render_json
    )
    flush_logs()  # lines of the previous configuration go where they were meant to
    sink = _sink = DeferredSink(out, renderer)
    structlog.configure(
        processors=[structlog.contextvars.merge_contextvars, _stamp_and_hand_over],
        wrapper_class=structlog.make_filtering_bound_logger(
            getattr(logging, level.upper(), logging.INFO)
        ),
        logger_factory=lambda *_args: sink,
        cache_logger_on_first_use=False,
    )


def bound_logger(name: str | None = None) -> Any:
    """A logger bound to the configuration in force (call after :func:`configure_logging`).

    ``structlog.get_logger`` returns a proxy that builds a new bound logger on every
    call (a dozen microseconds per log line); the request path logs on every request.
    """
    return structlog.get_logger(name).bind()

"""configure_logging: JSON lines off a terminal, readable lines on one, --log-level filtering."""

from __future__ import annotations

import io
import json
import os
import select
from collections.abc import Iterator
from datetime import datetime

import pytest
import structlog

from nri_plugin.cli import build_parser
from nri_plugin.logs import LEVELS, configure_logging


@pytest.fixture(autouse=True)
def _reset_structlog() -> Iterator[None]:
    yield
    structlog.reset_defaults()


def emit_every_level() -> None:
    log = structlog.get_logger("test")
    log.debug("a debug event", n=1)
    log.info("admission", pod="default/web", container="app", result="admitted")
    log.warning("a warning event", n=3)
    log.error("an error event", n=4)


def json_lines(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines()]


def test_json_lines_when_not_on_a_terminal() -> None:
    stream = io.StringIO()
    configure_logging("debug", stream)
    emit_every_level()
    records = json_lines(stream.getvalue())
    assert [r["level"] for r in records] == ["debug", "info", "warning", "error"]
    admission = records[1]
    assert admission["event"] == "admission"
    assert admission["pod"] == "default/web"
    assert admission["container"] == "app"
    assert admission["result"] == "admitted"
    for record in records:
        offset = datetime.fromisoformat(str(record["timestamp"])).utcoffset()
        assert offset is not None and offset.total_seconds() == 0


def test_exceptions_stay_on_one_json_line() -> None:
    stream = io.StringIO()
    configure_logging("info", stream)
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        structlog.get_logger("test").exception("handler failed")
    (record,) = json_lines(stream.getvalue())
    assert record["event"] == "handler failed"
    assert "RuntimeError: boom" in str(record["exception"])


def read_available(fd: int) -> str:
    chunks = []
    while select.select([fd], [], [], 0.5)[0]:
        data = os.read(fd, 65536)
        if not data:
            break
        chunks.append(data)
    return b"".join(chunks).decode()


def test_readable_console_lines_on_a_terminal() -> None:
    controller, terminal = os.openpty()
    try:
        with os.fdopen(terminal, "w", closefd=False) as stream:
            assert stream.isatty()
            configure_logging("info", stream)
            structlog.get_logger("test").info("admission", pod="default/web", result="admitted")
            stream.flush()
        text = read_available(controller)
    finally:
        os.close(controller)
        os.close(terminal)
    (line,) = [line for line in text.splitlines() if line.strip()]
    with pytest.raises(ValueError):
        json.loads(line)
    assert "admission" in line
    assert "[info" in line
    assert "pod=default/web" in line and "result=admitted" in line
    # colors off: no escape sequences in a log that may be copied into a ticket
    assert "\x1b[" not in line


@pytest.mark.parametrize("level", LEVELS)
def test_log_level_drops_less_severe_events(level: str) -> None:
    stream = io.StringIO()
    configure_logging(level, stream)
    emit_every_level()
    emitted = [r["level"] for r in json_lines(stream.getvalue())]
    assert emitted == list(LEVELS[LEVELS.index(level) :])


def test_run_accepts_exactly_the_log_levels() -> None:
    parser = build_parser()
    for level in LEVELS:
        args = parser.parse_args(["run", "--log-level", level])
        assert args.log_level == level
    assert parser.parse_args(["run"]).log_level == "info"
    with pytest.raises(SystemExit) as exit_:
        parser.parse_args(["run", "--log-level", "verbose"])
    assert exit_.value.code == 2

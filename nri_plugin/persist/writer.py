"""Writing the checkpoint off the event loop, after every change.

When a write starts, the state is copied on the event loop (a consistent
snapshot, no locks); a worker thread serialises the copy and writes it, so the
serialisation and the fsyncs of a crash-safe write never delay an answer to the
runtime. Writes coalesce: changes made while a write is in flight, or in the
pause after it, all go into the next one.

The pause: a write starts no sooner than ``gap_factor`` times the previous
write's duration after it, and at least ``min_gap`` seconds. The worker thread
holds the GIL while it serialises, so back-to-back writes would take most of a
busy event loop's CPU; spaced out, writing takes at most a fifth of the time at
any state size, while a quiet node still writes each change within
milliseconds. :meth:`CheckpointWriter.flush` skips the pause (shutdown).

A write lost to a crash, or not yet made, is harmless: the file is always
complete and consistent (checksum), and at restart Synchronize rebuilds what it
missed from the runtime's view (docs/recovery.md, docs/performance.md).
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nri_plugin.engine.state import MemoryState
from nri_plugin.errors import StateError
from nri_plugin.persist.exits import Records, write_exit_records
from nri_plugin.persist.file import EXITS_FILE_NAME, write_file

MIN_GAP = 0.02  # seconds between writes at the least
GAP_FACTOR = 4.0  # pause after a write: this many times its duration


class CheckpointWriter:
    def __init__(
        self,
        path: Path,
        logger: Any,
        *,
        min_gap: float = MIN_GAP,
        gap_factor: float = GAP_FACTOR,
        exit_records: Callable[[], Records] | None = None,
    ) -> None:
        self.path = path
        # the exit records beside the checkpoint (nri_plugin.persist.exits), taken with it
        self.exit_records = exit_records
        self.exits_path = path.with_name(EXITS_FILE_NAME)
        self._log = logger
        self._min_gap = min_gap
        self._gap_factor = gap_factor
        self._dirty: MemoryState | None = None
        self._task: asyncio.Task[None] | None = None
        self._next_start = 0.0  # loop time before which no write starts
        self._pausing: asyncio.Future[None] | None = None  # the pause in progress
        self._flushing = 0  # flush() calls waiting: no pause meanwhile
        self.last_error: str | None = None
        self.writes = 0

    def request(self, state: MemoryState) -> None:
        """Schedule a write of ``state``; call on the event loop.

        Only marks the state dirty: the snapshot is taken when a write starts,
        so a burst of changes costs one copy and one write, not one per change.
        """
        self._dirty = state
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        while self._dirty is not None:
            await self._pause(self._next_start - loop.time())
            started = loop.time()
            snapshot, self._dirty = self._dirty.clone(), None
            exits = self.exit_records() if self.exit_records is not None else None
            try:
                await asyncio.to_thread(self._write, snapshot, exits)
                self.writes += 1
                self.last_error = None
            except StateError as exc:
                self.last_error = str(exc)
                self._log.error("checkpoint write failed", path=str(self.path), error=str(exc))
            ended = loop.time()
            self._next_start = ended + max(self._min_gap, self._gap_factor * (ended - started))

    async def _pause(self, seconds: float) -> None:
        if seconds <= 0 or self._flushing:
            return
        loop = asyncio.get_running_loop()
        self._pausing = loop.create_future()
        timer = loop.call_later(seconds, _end_pause, self._pausing)
        try:
            await self._pausing
        finally:
            timer.cancel()
            self._pausing = None

    async def flush(self) -> None:
        """Wait until every requested change is written, without the pauses between writes."""
        self._flushing += 1
        try:
            while self._task is not None and not self._task.done():
                if self._pausing is not None:
                    _end_pause(self._pausing)
                await self._task
        finally:
            self._flushing -= 1

    def write_now(self, state: MemoryState) -> None:
        """Synchronous write, for start-up and shutdown."""
        self._write(state, self.exit_records() if self.exit_records is not None else None)
        self.writes += 1

    def _write(self, state: MemoryState, exits: Records | None) -> None:
        # the checkpoint first: exit records only matter for names it holds
        write_file(self.path, state)
        if exits is not None:
            write_exit_records(self.exits_path, exits)

    def writable(self) -> tuple[bool, str]:
        """Whether the state directory accepts a new file now (for /healthz)."""
        if self.last_error is not None:
            return False, self.last_error
        try:
            fd, name = tempfile.mkstemp(prefix=".healthz.", dir=self.path.parent)
            os.close(fd)
            os.unlink(name)
        except OSError as exc:
            return False, f"state dir {self.path.parent} not writable: {exc.strerror}"
        return True, "ok"


def _end_pause(pause: asyncio.Future[None]) -> None:
    if not pause.done():
        pause.set_result(None)

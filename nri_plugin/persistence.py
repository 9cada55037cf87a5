"""Writing the checkpoint off the event loop, after every change.

The state is serialised on the event loop (a consistent snapshot, no locks)
and written by a worker thread: the fsyncs of a crash-safe write never delay
an answer to the runtime. Writes coalesce: while one is in flight, only the
newest snapshot is kept for the next. A write lost to a crash is harmless:
Synchronize rebuilds what the checkpoint missed from the runtime's view.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from pathlib import Path
from typing import Any

from nri_plugin import checkpoint
from nri_plugin.errors import StateError
from nri_plugin.state import MemoryState


class CheckpointWriter:
    def __init__(self, path: Path, logger: Any) -> None:
        self.path = path
        self._log = logger
        self._dirty: MemoryState | None = None
        self._task: asyncio.Task[None] | None = None
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
        while self._dirty is not None:
            snapshot, self._dirty = self._dirty.clone(), None
            try:
                await asyncio.to_thread(checkpoint.write_file, self.path, snapshot)
                self.writes += 1
                self.last_error = None
            except StateError as exc:
                self.last_error = str(exc)
                self._log.error("checkpoint write failed", path=str(self.path), error=str(exc))

    async def flush(self) -> None:
        while self._task is not None and not self._task.done():
            await self._task

    def write_now(self, state: MemoryState) -> None:
        """Synchronous write, for start-up and shutdown."""
        checkpoint.write_file(self.path, state)
        self.writes += 1

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

"""Restart recovery: trusting (or not) the checkpoint left by an earlier run."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from nri_plugin import checkpoint
from nri_plugin.config import Config
from nri_plugin.errors import StateError
from nri_plugin.manager import MemoryManager
from nri_plugin.state import MemoryState
from nri_plugin.topology import Topology


def restore(topology: Topology, config: Config, path: Path, log: Any) -> MemoryManager:
    """The manager over the checkpoint if it can be trusted, else empty (rebuilt at sync).

    An untrusted file is kept aside (never deleted): what it recorded is not
    lost, and Synchronize rebuilds the state from the runtime's view.
    """
    restored: MemoryState | None = None
    try:
        restored = checkpoint.load_file(path)
    except StateError as exc:
        _set_aside(path, log, str(exc))
    if restored is not None:
        try:
            manager = MemoryManager(topology, config, restored)
            log.info(
                "checkpoint restored",
                path=str(path),
                containers=sum(len(c) for c in restored.entries.values()),
            )
            return manager
        except StateError as exc:
            _set_aside(path, log, str(exc))
    return MemoryManager(topology, config)


def _set_aside(path: Path, log: Any, reason: str) -> None:
    aside = path.with_name(f"{path.name}.untrusted-{int(time.time())}")
    try:
        os.rename(path, aside)
    except OSError:
        aside = path
    log.error(
        "checkpoint not trusted; rebuilding the state from the runtime",
        path=str(path),
        kept_as=str(aside),
        reason=reason,
    )

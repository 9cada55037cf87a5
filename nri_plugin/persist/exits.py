"""The exit records file: exited containers that hold memory, for a restarted plugin.

containerd lists no exited container at Synchronize, so the checkpoint alone
cannot tell a restarted plugin whether a name that holds blocks belonged to a
finished init container or to a crashed app container
(:meth:`~nri_plugin.tracker.tracker.NodeTracker.exit_records`). This file,
beside the checkpoint, says. It is advisory: missing, stale or damaged, it is
ignored (with a log line) and such names keep their blocks until their pod goes.
Written crash-safe like the checkpoint; JSON with an FNV-1a checksum.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from nri_plugin.errors import StateError
from nri_plugin.persist.checksum import fnv1a_32
from nri_plugin.persist.file import EXITS_FILE_NAME, read_regular_file, replace_file

__all__ = ["EXITS_FILE_NAME", "load_exit_records", "write_exit_records"]

VERSION = 1
MAX_BYTES = 16 << 20

Records = Mapping[str, Mapping[str, Mapping[str, Any]]]


def dumps(records: Records) -> str:
    body = json.dumps(records, sort_keys=True, separators=(",", ":"))
    return json.dumps(
        {"version": VERSION, "pods": json.loads(body), "checksum": fnv1a_32(body.encode())},
        sort_keys=True,
        separators=(",", ":"),
    )


def write_exit_records(path: Path, records: Records) -> None:
    replace_file(path, dumps(records).encode(), what="exit records")


def load_exit_records(path: Path, log: Any) -> dict[str, dict[str, dict[str, Any]]]:
    """The records at ``path``; empty when there are none or they cannot be trusted."""
    try:
        raw = read_regular_file(path, MAX_BYTES, what="exit records")
    except StateError as exc:
        log.warning("exit records ignored", path=str(path), reason=str(exc))
        return {}
    if raw is None:
        return {}
    try:
        data = json.loads(raw)
        if not isinstance(data, dict) or data.get("version") != VERSION:
            raise ValueError(f"version {data.get('version') if isinstance(data, dict) else '?'}")
        pods = data["pods"]
        body = json.dumps(pods, sort_keys=True, separators=(",", ":"))
        if fnv1a_32(body.encode()) != data.get("checksum"):
            raise ValueError("checksum mismatch")
        if not isinstance(pods, dict) or not all(
            isinstance(names, dict) and all(isinstance(f, dict) for f in names.values())
            for names in pods.values()
        ):
            raise ValueError("not a mapping of pods to containers")
    except (ValueError, KeyError, TypeError, RecursionError) as exc:
        log.warning("exit records ignored", path=str(path), reason=str(exc)[:200])
        return {}
    return pods

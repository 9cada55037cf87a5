"""The checkpoint file on disk: read without following links, written crash-safe."""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
import time
from pathlib import Path
from typing import Any

from nri_plugin.engine.state import MemoryState
from nri_plugin.errors import StateError
from nri_plugin.inputs.reader import decode_text
from nri_plugin.persist.format import (
    MAX_FILE_BYTES,
    Checkpoint,
    dumps,
    from_checkpoint,
    parse_json,
    read_checkpoint,
)

# kubelet's name for the memory manager's checkpoint, in its state directory
STATE_FILE_NAME = "memory_manager_state"
# our exit records beside it (nri_plugin.persist.exits)
EXITS_FILE_NAME = "exited_containers"


def load_file(path: str | Path) -> MemoryState | None:
    """Read and verify the checkpoint at ``path``; None when there is no file.

    A symlink is refused (never followed), as is anything but a regular file;
    so is a file whose pod-level entries are not parts of their pods' reservations
    (kubelet's shared pool, :func:`~nri_plugin.persist.format.from_checkpoint`).
    """
    p = os.fspath(path)
    data = _read_json(p)
    return None if data is _ABSENT else from_checkpoint(data, source=p)


def load_checkpoint(path: str | Path) -> Checkpoint | None:
    """Like :func:`load_file`, keeping the form and any pod-level entries (``state``)."""
    p = os.fspath(path)
    data = _read_json(p)
    return None if data is _ABSENT else read_checkpoint(data, source=p)


_ABSENT = object()  # no file (a file may hold JSON null)


def _read_json(p: str) -> object:
    raw = read_regular_file(p, MAX_FILE_BYTES, what="checkpoint")
    if raw is None:
        return _ABSENT
    return parse_json(decode_text(raw, p, StateError), source=p)


def read_regular_file(path: str | Path, limit: int, *, what: str = "file") -> bytes | None:
    """The bytes of the regular file at ``path`` (None: absent), never following a link.

    Raises StateError for a symlink, anything but a regular file, an unreadable file
    or one larger than ``limit`` bytes.
    """
    p = os.fspath(path)
    try:
        st = os.lstat(p)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StateError(f"{p}: cannot read: {exc.strerror}") from exc
    if stat.S_ISLNK(st.st_mode):
        raise StateError(f"{p}: {what} is a symlink; refusing to follow it")
    if not stat.S_ISREG(st.st_mode):
        raise StateError(f"{p}: {what} is not a regular file")
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
    try:
        # O_NOFOLLOW and fstat close the window between lstat and open.
        fd = os.open(p, flags)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StateError(f"{p}: cannot read: {exc.strerror}") from exc
    try:
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise StateError(f"{p}: {what} is not a regular file")
            raw = f.read(limit + 1)
    except OSError as exc:
        raise StateError(f"{p}: cannot read: {exc.strerror}") from exc
    if len(raw) > limit:
        raise StateError(f"{p}: larger than {limit} bytes (the limit for {what} files)")
    return raw


def write_file(path: str | Path, state: MemoryState) -> None:
    """Replace the checkpoint at ``path`` with ``state``, crash-safe (:func:`replace_file`)."""
    replace_file(Path(path), dumps(state).encode(), what="checkpoint")


def replace_file(target: Path, data: bytes, *, what: str = "file") -> None:
    """Replace ``target`` with ``data``, crash-safe.

    The content goes to a fresh 0600 temp file in the same directory, is
    fsynced, renamed over ``target`` and the directory fsynced, so a reader sees
    the old file or the new one, never a mix. A missing directory is created
    0700. A symlink or non-file at ``target`` is refused. Raises StateError.
    """
    directory = target.parent
    try:
        _make_directory(directory)
        _refuse_destination(target, what)
        tmp = directory / f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        flags = os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(tmp, flags, 0o600)
        try:
            try:
                os.fchmod(fd, 0o600)  # exact mode, whatever the umask
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            _refuse_destination(target, what)
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            raise
        _fsync_directory(directory)
    except OSError as exc:
        raise StateError(f"{target}: cannot write {what}: {exc.strerror or exc}") from exc


def _make_directory(directory: Path) -> None:
    missing: list[Path] = []
    d = directory
    while not os.path.lexists(d):
        missing.append(d)
        if d.parent == d:
            break
        d = d.parent
    for d in reversed(missing):
        try:
            os.mkdir(d, 0o700)
        except FileExistsError:
            continue  # created concurrently; leave its mode alone
        os.chmod(d, 0o700)


def _refuse_destination(target: Path, what: str) -> None:
    try:
        st = os.lstat(target)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(st.st_mode):
        raise StateError(f"{target}: {what} is a symlink; refusing to replace it")
    if not stat.S_ISREG(st.st_mode):
        raise StateError(f"{target}: {what} is not a regular file; refusing to replace it")


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def set_aside(path: Path, tag: str) -> Path | None:
    """Rename ``path`` to a fresh ``<name>.<tag>-<UTC time>[-N]`` beside it; never delete.

    A symlink is renamed itself (never followed). Returns None when there is
    nothing at ``path`` or it cannot be renamed (the error then shows at the
    first checkpoint write).
    """
    if not os.path.lexists(path):
        return None
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    base = f"{path.name}.{tag}-{stamp}"
    for attempt in range(1, 1000):
        aside = path.with_name(base if attempt == 1 else f"{base}-{attempt}")
        if os.path.lexists(aside):
            continue  # os.rename would silently replace an earlier one
        try:
            os.rename(path, aside)
        except OSError:
            return None
        return aside
    return None


def remove_stale_temp_files(path: Path, log: Any) -> list[Path]:
    """Remove ``.<name>.*.tmp`` files that a crash between create and rename left behind.

    Only regular files and symlinks (removed, not followed) with exactly that
    pattern; nothing else in the directory is touched.
    """
    directory = path.parent
    prefixes = (f".{path.name}.", f".{EXITS_FILE_NAME}.")
    removed: list[Path] = []
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return removed
    for entry in entries:
        if not (entry.name.startswith(prefixes) and entry.name.endswith(".tmp")):
            continue
        try:
            mode = entry.stat(follow_symlinks=False).st_mode
        except OSError:
            continue
        if not (stat.S_ISREG(mode) or stat.S_ISLNK(mode)):
            continue
        with contextlib.suppress(FileNotFoundError):
            os.unlink(entry.path)
            removed.append(Path(entry.path))
    if removed:
        log.info(
            "removed temp files of an interrupted checkpoint write",
            files=[str(p) for p in removed],
        )
    return removed


def secure_directory(path: Path, log: Any) -> None:
    """Make the state directory 0700 when it is ours alone; else report it if open to others.

    A directory created by the first write is already 0700. One created by
    someone else (a DaemonSet's hostPath is made 0755) is tightened when we own
    it and it holds nothing but this checkpoint's files; a directory shared
    with other files is left as it is and reported.
    """
    directory = path.parent
    try:
        st = os.stat(directory)
    except OSError:
        return  # created 0700 at the first write
    mode = stat.S_IMODE(st.st_mode)
    if not stat.S_ISDIR(st.st_mode) or not mode & 0o077:
        return
    try:
        names = os.listdir(directory)
    except OSError:
        names = []
    ours = all(
        n.startswith((path.name, f".{path.name}.", EXITS_FILE_NAME, f".{EXITS_FILE_NAME}."))
        or n.startswith(".healthz.")
        for n in names
    )
    if ours and st.st_uid == os.geteuid():
        with contextlib.suppress(OSError):
            os.chmod(directory, 0o700)
            log.info("state directory made private", path=str(directory), was=oct(mode))
            return
    log.warning(
        "state directory is accessible to other users; 0700 is recommended",
        path=str(directory),
        mode=oct(mode),
    )

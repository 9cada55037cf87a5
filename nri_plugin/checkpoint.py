"""kubelet's memory manager checkpoint file (``memory_manager_state``).

Reads and writes :class:`~nri_plugin.state.MemoryState` in the JSON layout
kubelet uses, with kubelet's checksum, so that a kubelet can read our file and
we can read kubelet's (reference: static-policy.md sections 12 and 13).

Three concerns live here and nowhere else:

* the format: :func:`to_checkpoint` / :func:`dumps` / :func:`from_checkpoint`
  and the checksum (:func:`checksum`, a 32-bit FNV-1a over the go-spew dump
  that kubelet hashes);
* the file: :func:`load_file` and the crash-safe :func:`write_file`;
* restore validation: :func:`validate_restored` rebuilds the state the entries
  imply (:func:`expected_state`) and compares it with the saved one as kubelet
  does.

The policy never sees any of this; it works on the in-memory state.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import stat
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import NoReturn

from fnv_hash_fast import fnv1a_32 as _compiled_fnv1a_32

from nri_plugin.errors import StateError
from nri_plugin.state import (
    POLICY_NONE,
    POLICY_STATIC,
    Block,
    MemoryState,
    MemoryTable,
    NodeState,
    is_memory_type,
)

MAX_UINT64 = (1 << 64) - 1
MAX_INT64 = (1 << 63) - 1

# Far above any real node (an entry is ~150 bytes); stops a bogus file from
# exhausting memory before the JSON parser even starts.
MAX_FILE_BYTES = 64 << 20

KEY_CELLS = "cells"
KEY_NODES = "nodes"  # the group key of the first implementation (KEP-1769, kubernetes.io)

# Policy spellings of the first implementation; only trusted in `nodes` files.
_LEGACY_POLICY_NAMES = {"static": POLICY_STATIC, "none": POLICY_NONE}

_TABLE_FIELDS = ("total", "systemReserved", "allocatable", "reserved", "free")


@dataclass(frozen=True)
class _GoNames:
    """Go type and field names that appear in the hashed dump."""

    node_map: str
    group_field: str


_NEW_NAMES = _GoNames(node_map="state.NUMANodeMap", group_field="Cells")
_OLD_NAMES = _GoNames(node_map="state.NodeMap", group_field="Nodes")


# -- checksum ----------------------------------------------------------------

# kubelet's checksum: 32-bit FNV-1a (offset basis 2166136261, prime 16777619) over
# the go-spew text. Compiled (fnv-hash-fast): byte by byte in Python it took most
# of a write. tests/test_checksum.py checks it against a plain implementation.
fnv1a_32: Callable[[bytes], int] = _compiled_fnv1a_32


def _go_order(key: str) -> bytes:
    # Go compares strings byte-wise; sorting by UTF-8 bytes says so explicitly. The
    # writers sort plain str instead: code point order is UTF-8 byte order, and
    # that saves encoding every key of a large state.
    return key.encode()


def _spew_ints(ids: Iterable[int]) -> str:
    return "[" + " ".join(map(str, ids)) + "]"


def _spew_node(node_id: int, node: NodeState, names: _GoNames) -> str:
    tables = []
    for mem_type in sorted(node.memory_map):
        t = node.memory_map[mem_type]
        tables.append(
            f"{mem_type}:<*>{{TotalMemSize:(uint64){t.total}"
            f" SystemReserved:(uint64){t.system_reserved}"
            f" Allocatable:(uint64){t.allocatable}"
            f" Reserved:(uint64){t.reserved}"
            f" Free:(uint64){t.free}}}"
        )
    return (
        f"{node_id}:<*>{{NumberOfAssignments:(int){node.number_of_assignments}"
        f" MemoryMap:(map[v1.ResourceName]*state.MemoryTable)map[{' '.join(tables)}]"
        f" {names.group_field}:([]int){_spew_ints(node.cells)}}}"
    )


def _join_in_batches(sep: str, parts: Iterable[str]) -> str:
    """``sep.join(parts)``, joining a few hundred parts at a time.

    A write turns every pod into a short string; joined as they come, only a few
    hundred are alive at once, so a write of a large state leaves no scattered
    small blocks behind in the heap (the resident memory between writes).
    """
    it = iter(parts)
    chunks = []
    while batch := list(islice(it, 256)):
        chunks.append(sep.join(batch))
    return sep.join(chunks)


def _spew_pods(entries: Mapping[str, Mapping[str, Sequence[Block]]]) -> Iterator[str]:
    for uid in sorted(entries):
        containers = entries[uid]
        items = []
        for name in sorted(containers):
            # Blocks keep their stored order: kubelet hashes the slice as it is.
            blocks = " ".join(
                [
                    f"{{NUMAAffinity:([]int)[{' '.join(map(str, b.numa_affinity))}]"
                    f" Type:(v1.ResourceName){b.type} Size:(uint64){b.size}}}"
                    for b in containers[name]
                ]
            )
            items.append(f"{name}:[{blocks}]")
        yield f"{uid}:map[{' '.join(items)}]"


def _dump(
    policy_name: str,
    machine: Mapping[int, NodeState],
    entries: Mapping[str, Mapping[str, Sequence[Block]]],
    names: _GoNames,
) -> str:
    nodes = " ".join(_spew_node(i, machine[i], names) for i in sorted(machine))
    pods = _join_in_batches(" ", _spew_pods(entries))
    return (
        f"(*state.MemoryManagerCheckpoint){{PolicyName:(string){policy_name}"
        f" MachineState:({names.node_map})map[{nodes}]"
        f" Entries:(state.ContainerMemoryAssignments)map[{pods}]"
        f" Checksum:(checksum.Checksum)0}}"
    )


def checksum_dump(state: MemoryState, *, legacy_names: bool = False) -> str:
    """The text kubelet hashes: go-spew's dump of the checkpoint with checksum 0.

    ``legacy_names`` uses the Go names of the first implementation
    (``state.NodeMap``, field ``Nodes``).
    """
    names = _OLD_NAMES if legacy_names else _NEW_NAMES
    return _dump(state.policy_name, state.machine, state.entries, names)


def checksum(state: MemoryState) -> int:
    """kubelet's checksum of ``state``: FNV-1a 32 of :func:`checksum_dump`."""
    return fnv1a_32(checksum_dump(state).encode())


# -- writing -----------------------------------------------------------------


def to_checkpoint(state: MemoryState) -> dict[str, object]:
    """``state`` as a JSON-ready dict in kubelet's layout, keys in Go's order."""
    machine: dict[str, object] = {}
    # encoding/json turns int map keys into strings and sorts those strings.
    for key in sorted((str(i) for i in state.machine), key=_go_order):
        node = state.machine[int(key)]
        machine[key] = {
            "numberOfAssignments": node.number_of_assignments,
            "memoryMap": {
                t: _table_to_json(node.memory_map[t])
                for t in sorted(node.memory_map, key=_go_order)
            },
            KEY_CELLS: list(node.cells),
        }
    out: dict[str, object] = {"policyName": state.policy_name, "machineState": machine}
    if state.entries:  # `omitempty`
        out["entries"] = {
            uid: {
                name: [_block_to_json(b) for b in containers[name]]
                for name in sorted(containers, key=_go_order)
            }
            for uid, containers in sorted(state.entries.items(), key=lambda kv: _go_order(kv[0]))
        }
    out["checksum"] = checksum(state)
    return out


def _table_to_json(t: MemoryTable) -> dict[str, int]:
    return {
        "total": t.total,
        "systemReserved": t.system_reserved,
        "allocatable": t.allocatable,
        "reserved": t.reserved,
        "free": t.free,
    }


def _block_to_json(b: Block) -> dict[str, object]:
    return {"numaAffinity": list(b.numa_affinity), "type": b.type, "size": b.size}


# encoding/json escapes these even though JSON does not require it.
_GO_ESCAPED = "<>&\u2028\u2029"
_GO_EXTRA_ESCAPES = str.maketrans(
    {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}
)

# The string encoder json.dumps(ensure_ascii=False) itself uses (C): the same
# escapes as to_checkpoint + json.dumps, at a fraction of the cost.
_json_str: Callable[[str], str] = json.encoder.encode_basestring


def _json_pods(entries: Mapping[str, Mapping[str, Sequence[Block]]]) -> Iterator[str]:
    for uid in sorted(entries):
        containers = entries[uid]
        items = []
        for name in sorted(containers):
            blocks = ",".join(
                [
                    f'{{"numaAffinity":[{",".join(map(str, b.numa_affinity))}],'
                    f'"type":{_json_str(b.type)},"size":{b.size}}}'
                    for b in containers[name]
                ]
            )
            items.append(f"{_json_str(name)}:[{blocks}]")
        yield f"{_json_str(uid)}:{{{','.join(items)}}}"


def dumps(state: MemoryState) -> str:
    """The file content kubelet would write for ``state``: compact JSON, no newline.

    The text of ``json.dumps(to_checkpoint(state))`` with Go's escapes, written
    directly: no dict per block, one short string per pod (see :func:`_join_in_batches`).
    """
    # First, so that its text is gone before the JSON text is built.
    checksum_value = checksum(state)
    nodes = []
    # encoding/json turns int map keys into strings and sorts those strings.
    for key in sorted(str(i) for i in state.machine):
        node = state.machine[int(key)]
        tables = ",".join(
            [
                f'{_json_str(t)}:{{"total":{m.total},"systemReserved":{m.system_reserved},'
                f'"allocatable":{m.allocatable},"reserved":{m.reserved},"free":{m.free}}}'
                for t, m in sorted(node.memory_map.items())
            ]
        )
        nodes.append(
            f'"{key}":{{"numberOfAssignments":{node.number_of_assignments},'
            f'"memoryMap":{{{tables}}},"{KEY_CELLS}":[{",".join(map(str, node.cells))}]}}'
        )
    entries = ""
    if state.entries:  # `omitempty`
        entries = f',"entries":{{{_join_in_batches(",", _json_pods(state.entries))}}}'
    text = (
        f'{{"policyName":{_json_str(state.policy_name)},"machineState":{{{",".join(nodes)}}}'
        f'{entries},"checksum":{checksum_value}}}'
    )
    # The escaped characters can only occur inside strings, so this is safe; most
    # states have none, and looking for them costs less than translating.
    if any(c in text for c in _GO_ESCAPED):
        text = text.translate(_GO_EXTRA_ESCAPES)
    return text


# -- reading -----------------------------------------------------------------


def _show(value: object) -> str:
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _type_name(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number with a fraction or exponent"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


class _Reader:
    """Checks one decoded checkpoint; every error names the key path."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, path: str, problem: str) -> NoReturn:
        where = f"{self.source}: {path}" if path else self.source
        raise StateError(f"{where}: {problem}")

    def obj(self, value: object, path: str) -> dict[object, object]:
        if not isinstance(value, dict):
            self.fail(path, f"must be a JSON object, got {_type_name(value)}")
        return value

    def field(self, obj: dict[object, object], key: str, path: str) -> object:
        if key not in obj:
            self.fail(_join(path, key), "is missing")
        return obj[key]

    def string(self, value: object, path: str) -> str:
        if not isinstance(value, str):
            self.fail(path, f"must be a string, got {_type_name(value)}")
        return value

    def key(self, value: object, path: str) -> str:
        if not isinstance(value, str):
            self.fail(path, f"key {_show(value)} must be a string")
        # An empty pod UID or container name is read, as kubelet reads it: the
        # writer accepts it, and a file we wrote must load back.
        try:
            value.encode()
        except UnicodeEncodeError:
            self.fail(path, f"key {_show(value)} is not valid UTF-8")
        return value

    def integer(self, value: object, path: str, limit: int) -> int:
        # bool is an int subclass in Python; JSON true is not a number.
        if not isinstance(value, int) or isinstance(value, bool):
            self.fail(path, f"must be a non-negative integer, got {_show(value)}")
        if value < 0:
            self.fail(path, f"must be a non-negative integer, got {value}")
        if value > limit:
            self.fail(path, f"must be at most {limit}, got {value}")
        return value

    def node_ids(self, value: object, path: str, *, allow_empty: bool) -> list[int]:
        if not isinstance(value, list):
            self.fail(path, f"must be a list of NUMA node ids, got {_type_name(value)}")
        ids = [self.integer(v, f"{path}[{i}]", MAX_INT64) for i, v in enumerate(value)]
        if not ids and not allow_empty:
            self.fail(path, "must name at least one NUMA node")
        if len(set(ids)) != len(ids):
            self.fail(path, f"must not repeat a NUMA node, got {ids}")
        return ids

    def node_key(self, key: object, path: str) -> int:
        # JSON keys are strings; a YAML initialState may give plain integers.
        if isinstance(key, int) and not isinstance(key, bool) and 0 <= key <= MAX_INT64:
            return key
        if isinstance(key, str) and key.isascii() and key.isdigit() and key == str(int(key[:20])):
            # at most 20 digits converted: a long digit string is no node id (and int()
            # refuses more than 4300 digits)
            return self.integer(int(key), f"{path}.{key}", MAX_INT64)
        self.fail(path, f"key {_show(key)} must be a NUMA node id (a non-negative decimal)")


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


@dataclass(frozen=True)
class _Decoded:
    """A checkpoint as written, before the policy name is normalised."""

    policy_name: str
    machine: dict[int, NodeState]
    entries: dict[str, dict[str, list[Block]]]
    legacy_layout: bool
    stored_checksum: int


def _decode(data: object, r: _Reader) -> _Decoded:
    top = r.obj(data, "")
    policy_name = r.string(r.field(top, "policyName", ""), "policyName")

    machine: dict[int, NodeState] = {}
    layouts: set[str] = set()
    raw_machine = r.obj(r.field(top, "machineState", ""), "machineState")
    for raw_id, raw_node in raw_machine.items():
        node_id = r.node_key(raw_id, "machineState")
        path = f"machineState.{node_id}"
        if node_id in machine:
            r.fail(path, "appears twice")
        node, layout = _decode_node(raw_node, path, r)
        machine[node_id] = node
        layouts.add(layout)
    if len(layouts) > 1:
        r.fail("machineState", f"mixes the group keys {KEY_CELLS!r} and {KEY_NODES!r}")

    entries: dict[str, dict[str, list[Block]]] = {}
    if "entries" in top:
        raw_pods = r.obj(top["entries"], "entries")
        for raw_uid, raw_containers in raw_pods.items():
            uid = r.key(raw_uid, "entries")
            pod_path = f"entries.{uid}"
            containers: dict[str, list[Block]] = {}
            for raw_name, raw_blocks in r.obj(raw_containers, pod_path).items():
                name = r.key(raw_name, pod_path)
                containers[name] = _decode_blocks(raw_blocks, f"{pod_path}.{name}", r)
            entries[uid] = containers

    stored = r.integer(r.field(top, "checksum", ""), "checksum", MAX_UINT64)
    return _Decoded(policy_name, machine, entries, KEY_NODES in layouts, stored)


def _decode_node(raw: object, path: str, r: _Reader) -> tuple[NodeState, str]:
    node = r.obj(raw, path)
    count = r.integer(
        r.field(node, "numberOfAssignments", path), f"{path}.numberOfAssignments", MAX_INT64
    )
    memory_map: dict[str, MemoryTable] = {}
    map_path = f"{path}.memoryMap"
    for raw_type, raw_table in r.obj(r.field(node, "memoryMap", path), map_path).items():
        mem_type = r.key(raw_type, map_path)
        if not is_memory_type(mem_type):
            r.fail(map_path, f"key {_show(mem_type)} is not 'memory' or 'hugepages-<size>'")
        memory_map[mem_type] = _decode_table(raw_table, f"{map_path}.{mem_type}", r)

    has_cells, has_nodes = KEY_CELLS in node, KEY_NODES in node
    if has_cells and has_nodes:
        r.fail(path, f"has both {KEY_CELLS!r} and {KEY_NODES!r}; a checkpoint uses one")
    if not has_cells and not has_nodes:
        r.fail(_join(path, KEY_CELLS), "is missing")
    layout = KEY_CELLS if has_cells else KEY_NODES
    # kubelet's own test writes "cells": [], so an empty group is readable.
    cells = r.node_ids(node[layout], f"{path}.{layout}", allow_empty=True)
    return NodeState(number_of_assignments=count, memory_map=memory_map, cells=cells), layout


def _decode_table(raw: object, path: str, r: _Reader) -> MemoryTable:
    table = r.obj(raw, path)
    values = [r.integer(r.field(table, f, path), f"{path}.{f}", MAX_UINT64) for f in _TABLE_FIELDS]
    total, system_reserved, allocatable, reserved, free = values
    return MemoryTable(total, system_reserved, allocatable, reserved, free)


def _decode_blocks(raw: object, path: str, r: _Reader) -> list[Block]:
    if not isinstance(raw, list):
        r.fail(path, f"must be a list of memory blocks, got {_type_name(raw)}")
    blocks = []
    for i, raw_block in enumerate(raw):
        block_path = f"{path}[{i}]"
        block = r.obj(raw_block, block_path)
        mask = r.node_ids(
            r.field(block, "numaAffinity", block_path),
            f"{block_path}.numaAffinity",
            allow_empty=False,
        )
        mem_type = r.string(r.field(block, "type", block_path), f"{block_path}.type")
        if not is_memory_type(mem_type):
            r.fail(f"{block_path}.type", f"{_show(mem_type)} is not 'memory' or 'hugepages-<size>'")
        size = r.integer(r.field(block, "size", block_path), f"{block_path}.size", MAX_UINT64)
        blocks.append(Block(numa_affinity=tuple(mask), type=mem_type, size=size))
    return blocks


def _checksum_candidates(d: _Decoded) -> list[int]:
    """Checksums a genuine writer of this content could have stored."""
    sums = [fnv1a_32(_dump(d.policy_name, d.machine, d.entries, _NEW_NAMES).encode())]
    if d.legacy_layout:
        sums.append(fnv1a_32(_dump(d.policy_name, d.machine, d.entries, _OLD_NAMES).encode()))
        # The kubernetes.io example shows "Static" but its checksum was made
        # with the first implementation's "static"; accept that one edit.
        lower = d.policy_name.lower()
        if lower != d.policy_name and lower in _LEGACY_POLICY_NAMES:
            sums.append(fnv1a_32(_dump(lower, d.machine, d.entries, _OLD_NAMES).encode()))
    return sums


def from_checkpoint(data: object, *, source: str = "state") -> MemoryState:
    """Decode a parsed checkpoint (JSON or YAML), verify its checksum and policy name.

    Accepts the group key ``cells`` and the older ``nodes``. The returned
    state uses kubelet's current policy spelling (``Static`` / ``None``).
    Raises :class:`StateError` naming ``source`` and the offending key path.
    """
    r = _Reader(source)
    d = _decode(data, r)

    candidates = _checksum_candidates(d)
    if d.stored_checksum not in candidates:
        r.fail(
            "checksum",
            f"checkpoint is corrupted: stored checksum {d.stored_checksum} does not match"
            f" the content (computed {candidates[1 if d.legacy_layout else 0]})",
        )

    policy_name = d.policy_name
    if policy_name not in (POLICY_STATIC, POLICY_NONE):
        if d.legacy_layout and policy_name in _LEGACY_POLICY_NAMES:
            policy_name = _LEGACY_POLICY_NAMES[policy_name]
        else:
            r.fail(
                "policyName",
                f"{_show(policy_name)} is not {POLICY_STATIC!r} or {POLICY_NONE!r}"
                " (lower-case names are only read from old checkpoints that use 'nodes')",
            )
    return MemoryState(policy_name=policy_name, machine=d.machine, entries=d.entries)


# -- the file ----------------------------------------------------------------


def _reject_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in pairs:
        if key in out:
            # Go keeps the last one silently; a duplicate means a hand-edited file.
            raise StateError(f"duplicate key {_show(key)}")
        out[key] = value
    return out


def _reject_constant(name: str) -> object:
    raise StateError(f"{name} is not a JSON number")


def parse_json(text: str, *, source: str) -> object:
    """Strict JSON parse of a checkpoint: no duplicate keys, no NaN/Infinity."""
    if not text.strip():
        raise StateError(f"{source}: checkpoint is empty")
    try:
        return json.loads(
            text, object_pairs_hook=_reject_duplicates, parse_constant=_reject_constant
        )
    except StateError as exc:
        raise StateError(f"{source}: {exc}") from exc
    except json.JSONDecodeError as exc:
        raise StateError(
            f"{source}: checkpoint is not valid JSON (truncated?): {exc.msg}"
            f" at line {exc.lineno} column {exc.colno}"
        ) from exc
    except (ValueError, RecursionError) as exc:
        # e.g. an integer with more digits than Python converts, or absurd nesting
        raise StateError(f"{source}: checkpoint is not valid JSON: {exc}") from exc


def load_file(path: str | Path) -> MemoryState | None:
    """Read and verify the checkpoint at ``path``; None when there is no file.

    A symlink is refused (never followed), as is anything but a regular file.
    """
    p = os.fspath(path)
    try:
        st = os.lstat(p)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StateError(f"{p}: cannot read checkpoint: {exc.strerror}") from exc
    if stat.S_ISLNK(st.st_mode):
        raise StateError(f"{p}: checkpoint is a symlink; refusing to follow it")
    if not stat.S_ISREG(st.st_mode):
        raise StateError(f"{p}: checkpoint is not a regular file")

    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
    try:
        # O_NOFOLLOW and fstat close the window between lstat and open.
        fd = os.open(p, flags)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StateError(f"{p}: cannot read checkpoint: {exc.strerror}") from exc
    try:
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise StateError(f"{p}: checkpoint is not a regular file")
            raw = f.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise StateError(f"{p}: cannot read checkpoint: {exc.strerror}") from exc
    if len(raw) > MAX_FILE_BYTES:
        raise StateError(f"{p}: checkpoint is larger than {MAX_FILE_BYTES} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise StateError(f"{p}: checkpoint is not UTF-8 text (byte {exc.start})") from exc
    return from_checkpoint(parse_json(text, source=p), source=p)


def write_file(path: str | Path, state: MemoryState) -> None:
    """Replace the checkpoint at ``path`` with ``state``, crash-safe.

    The content goes to a fresh 0600 temp file in the same directory, is
    fsynced, renamed over ``path`` and the directory fsynced, so a reader sees
    the old file or the new one, never a mix. A missing directory is created
    0700. A symlink or non-file at ``path`` is refused. Raises StateError.
    """
    target = Path(path)
    directory = target.parent
    data = dumps(state).encode()
    try:
        _make_directory(directory)
        _refuse_destination(target)
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
            _refuse_destination(target)
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            raise
        _fsync_directory(directory)
    except OSError as exc:
        raise StateError(f"{target}: cannot write checkpoint: {exc.strerror or exc}") from exc


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


def _refuse_destination(target: Path) -> None:
    try:
        st = os.lstat(target)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(st.st_mode):
        raise StateError(f"{target}: checkpoint is a symlink; refusing to replace it")
    if not stat.S_ISREG(st.st_mode):
        raise StateError(f"{target}: checkpoint is not a regular file; refusing to replace it")


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# -- restore validation (reference section 13) -------------------------------

_MM = "[memorymanager]"
MSG_MACHINE_DIFFERS = f"{_MM} the expected machine state is different from the real one"


def _go_quote(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)  # close enough to Go's %q for names


def expected_state(
    default: MemoryState,
    entries: Mapping[str, Mapping[str, Sequence[Block]]],
    *,
    groups_first: bool = False,
) -> MemoryState:
    """``default`` with every block of ``entries`` applied as kubelet's restore does.

    ``default`` is the fresh machine state the policy builds (all free, no
    assignments, cells ``[self]``); it is not modified. Each block adds one
    assignment to every node of its mask, sets their cells to the mask, and
    takes min(free, remaining) bytes node by node in mask order.
    """
    out = MemoryState(policy_name=default.policy_name, machine=default.clone().machine)
    for uid, containers in entries.items():
        for name, blocks in containers.items():
            out.set_blocks(uid, name, list(blocks))
    passes = (True, False) if groups_first else (None,)
    for multi in passes:
        _apply_blocks(out, entries, multi)
    return out


def _apply_blocks(
    out: MemoryState, entries: Mapping[str, Mapping[str, Sequence[Block]]], multi: bool | None
) -> None:
    """Apply the blocks (only multi-node ones, only single-node ones, or all) to ``out``."""
    for uid, containers in entries.items():
        for name, blocks in containers.items():
            for block in blocks:
                if multi is not None and (len(block.numa_affinity) > 1) != multi:
                    continue
                remaining = block.size
                for node_id in block.numa_affinity:
                    node = out.machine.get(node_id)
                    if node is None:
                        raise StateError(
                            f"{_MM} (pod: {uid}, container: {name}) the memory assignment uses"
                            f" the NUMA that does not exist: node {node_id}"
                        )
                    node.number_of_assignments += 1
                    node.cells = list(block.numa_affinity)
                    table = node.memory_map.get(block.type)
                    if table is None:
                        raise StateError(
                            f"{_MM} (pod: {uid}, container: {name}) the memory assignment uses"
                            f" memory resource that does not exist: {block.type} on node {node_id}"
                        )
                    take = min(table.free, remaining)
                    table.free -= take
                    table.reserved += take
                    remaining -= take


def validate_restored(saved: MemoryState, default: MemoryState, configured_policy: str) -> None:
    """Check a restored checkpoint against the machine as kubelet does at start.

    Returns normally when ``saved`` can be used as it is, and also when its
    machine state is empty with no entries (the caller then installs
    ``default``). Raises StateError with kubelet's message and the first
    difference found.
    """
    if saved.policy_name != configured_policy:
        raise StateError(
            f"{_MM} configured policy {_go_quote(configured_policy)} differs from state"
            f" checkpoint policy {_go_quote(saved.policy_name)}"
        )
    if configured_policy != POLICY_STATIC:
        return  # the None policy keeps nothing to validate
    if not saved.machine:
        if saved.entries:
            raise StateError(f"{_MM} machine state can not be empty when it has memory assignments")
        return
    expected = expected_state(default, saved.entries)
    difference = _first_difference(saved.machine, expected.machine)
    if difference is not None:
        # kubelet replays entries in hash-map order, which it cannot know either. One order
        # matters: a single-node block placed on a grouped node (kubelet lets single-node
        # masks through its group check) re-labels that node's cells, so it must come after
        # the group's blocks. Accept the state when that order reproduces it.
        regrouped = expected_state(default, saved.entries, groups_first=True)
        if _first_difference(saved.machine, regrouped.machine) is None:
            return
        # That node then leaves the group while bytes of the group's blocks may sit on it
        # (allocation and release walk a group's nodes in order), so kubelet's sums over
        # the saved group no longer see them, and no replay order may fit them back (a
        # replay takes min(free, remaining) node by node); kubelet would refuse its own file
        # here. Accept it when the assignments and groups are the replay's and every byte is
        # accounted for over the nodes the blocks link.
        if (
            _first_difference(saved.machine, regrouped.machine, sums=False) is None
            and _unaccounted_bytes(saved) is None
        ):
            return
        raise StateError(f"{MSG_MACHINE_DIFFERS}: {difference}")


def _unaccounted_bytes(state: MemoryState) -> str | None:
    """Where the state's bytes do not add up: per node and type free + reserved must be the
    allocatable, and over each set of nodes linked by cells or block masks the reserved
    bytes must be the sizes of the blocks placed there."""
    linked = _linked_nodes(state)
    placed: dict[tuple[int, str], int] = {}
    for containers in state.entries.values():
        for blocks in containers.values():
            for block in blocks:
                if block.numa_affinity and block.numa_affinity[0] in linked:
                    root = linked[block.numa_affinity[0]][0]
                    placed[(root, block.type)] = placed.get((root, block.type), 0) + block.size
    reserved: dict[tuple[int, str], int] = {}
    for node_id, node in sorted(state.machine.items()):
        for mem_type, table in sorted(node.memory_map.items()):
            if table.free + table.reserved != table.allocatable:
                return (
                    f"node {node_id} {mem_type}: free {table.free} + reserved {table.reserved}"
                    f" is not the allocatable {table.allocatable}"
                )
            key = (linked[node_id][0], mem_type)
            reserved[key] = reserved.get(key, 0) + table.reserved
    for key in sorted(set(placed) | set(reserved)):
        if placed.get(key, 0) != reserved.get(key, 0):
            nodes = linked[key[0]]
            return (
                f"nodes {nodes} {key[1]}: reserved {reserved.get(key, 0)}, blocks"
                f" {placed.get(key, 0)}"
            )
    return None


def _linked_nodes(state: MemoryState) -> dict[int, list[int]]:
    """Node -> the nodes its saved cells or any block's mask connect it to, transitively."""
    parent = {n: n for n in state.machine}

    def find(n: int) -> int:
        while parent[n] != n:
            parent[n] = parent[parent[n]]
            n = parent[n]
        return n

    def join(nodes: Sequence[int]) -> None:
        known = [n for n in nodes if n in parent]
        for n in known[1:]:
            parent[find(n)] = find(known[0])

    for node in state.machine.values():
        join(node.cells)
    for containers in state.entries.values():
        for blocks in containers.values():
            for block in blocks:
                join(block.numa_affinity)
    members: dict[int, list[int]] = {}
    for n in sorted(parent):
        members.setdefault(find(n), []).append(n)
    return {n: members[find(n)] for n in parent}


def _first_difference(
    saved: Mapping[int, NodeState], expected: Mapping[int, NodeState], *, sums: bool = True
) -> str | None:
    """The first field where the states differ; free and reserved summed over each node's
    saved cells, as kubelet compares them (not with ``sums=False``)."""
    if set(saved) != set(expected):
        return f"saved NUMA nodes {sorted(saved)}, the machine has {sorted(expected)}"
    ids = sorted(saved)
    # Per-node fields of every node first, so the group sums below only meet
    # nodes whose cells and types already agree.
    for node_id in ids:
        s, e = saved[node_id], expected[node_id]
        if s.number_of_assignments != e.number_of_assignments:
            return (
                f"node {node_id} numberOfAssignments: saved {s.number_of_assignments},"
                f" expected {e.number_of_assignments}"
            )
        if sorted(s.cells) != sorted(e.cells):
            return f"node {node_id} cells: saved {s.cells}, expected {e.cells}"
        if set(s.memory_map) != set(e.memory_map):
            return (
                f"node {node_id} memory types: saved {sorted(s.memory_map)},"
                f" expected {sorted(e.memory_map)}"
            )
        for mem_type in sorted(s.memory_map):
            st, et = s.memory_map[mem_type], e.memory_map[mem_type]
            for label, sv, ev in (
                ("total", st.total, et.total),
                ("systemReserved", st.system_reserved, et.system_reserved),
                ("allocatable", st.allocatable, et.allocatable),
            ):
                if sv != ev:
                    return f"node {node_id} {mem_type} {label}: saved {sv}, expected {ev}"
    if not sums:
        return None
    for node_id in ids:
        cells = saved[node_id].cells
        for mem_type in sorted(saved[node_id].memory_map):
            for label in ("free", "reserved"):
                sv = _group_sum(saved, cells, mem_type, label)
                ev = _group_sum(expected, cells, mem_type, label)
                if sv != ev:
                    return (
                        f"node {node_id} {mem_type} {label} summed over group {cells}:"
                        f" saved {sv}, expected {ev}"
                    )
    return None


def _group_sum(
    machine: Mapping[int, NodeState], cells: Sequence[int], mem_type: str, label: str
) -> int:
    total = 0
    for node_id in cells:
        table = machine[node_id].memory_map.get(mem_type)
        if table is not None:
            total += table.free if label == "free" else table.reserved
    return total

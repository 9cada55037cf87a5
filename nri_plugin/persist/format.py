"""kubelet's memory manager checkpoint file (``memory_manager_state``).

Reads and writes :class:`~nri_plugin.engine.state.MemoryState` in the JSON layout
kubelet uses, with kubelet's checksum, so that a kubelet can read our file and
we can read kubelet's (``pkg/kubelet/cm/memorymanager/state/checkpoint.go``).

What lives here: the layout (:func:`to_checkpoint` / :func:`dumps` for our own
file, kubelet's v1 form), and the reader of every form kubelet 1.34 to 1.37
writes (:func:`read_checkpoint` / :func:`from_checkpoint`: v1, v2 with
``podEntries``, v3 with ``data`` and ``dataChecksum``), verifying every checksum
the file carries (:mod:`.checksum`). The file itself is :mod:`.file`; restore
validation is the engine's (:mod:`nri_plugin.engine.restore`).

About 670 lines: the three forms share one decoder and differ in what their
checksums cover; one module keeps the rule "which form, which checksum" in one
place.

The policy never sees any of this; it works on the in-memory state.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NoReturn

from nri_plugin.engine.state import (
    POLICY_NONE,
    POLICY_STATIC,
    Block,
    MemoryState,
    MemoryTable,
    NodeState,
    is_memory_type,
    shared_block,
)
from nri_plugin.errors import StateError, quote
from nri_plugin.inputs.reader import describe, too_deep
from nri_plugin.persist.checksum import (
    _NEW_NAMES,
    _OLD_NAMES,
    _V1_STRUCT_NAMES,
    _dump,
    _go_order,
    _GoNames,
    _join_in_batches,
    checksum,
    data_checksum,
    fnv1a_32,
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

KEY_POD_ENTRIES = "podEntries"  # kubelet 1.36's v2 (PodLevelResourceManagers)
KEY_DATA = "data"  # kubelet 1.37's v3: the state as a JSON string ...
KEY_DATA_CHECKSUM = "dataChecksum"  # ... and the checksum of that string

# The checkpoint versions kubelet writes (pkg/kubelet/cm/memorymanager/state/checkpoint.go),
# as messages and `state` name them.
FORM_V1 = "v1"
FORM_V2 = "v2"
FORM_V3 = "v3"
FORMS = {
    FORM_V1: "kubelet's v1 form",
    FORM_V2: "kubelet 1.36's v2 form",
    FORM_V3: "kubelet 1.37's v3 form",
}
# Who writes each form, for `state` and the docs.
FORM_WRITERS = {
    FORM_V1: "kubelet 1.34 and 1.35, 1.36 without PodLevelResourceManagers, and this plugin",
    FORM_V2: "kubelet 1.36 with PodLevelResourceManagers: podEntries, under the checksum",
    FORM_V3: "kubelet 1.37: the v1 fields, plus data (with podEntries) and dataChecksum",
}


@dataclass(frozen=True)
class Checkpoint:
    """A verified checkpoint: the state, the form it was written in, and pod-level entries.

    ``pod_entries`` (pod UID -> blocks) is what kubelet's ``PodLevelResourceManagers``
    reserved for whole pods (v2, v3), or this plugin with ``podLevelResources: managers``
    (v2); empty for v1. ``state.pod_entries`` stays empty here (see
    :func:`from_checkpoint`).
    """

    state: MemoryState
    form: str
    pod_entries: Mapping[str, tuple[Block, ...]] = field(default_factory=dict)


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
    if state.pod_entries:
        out[KEY_POD_ENTRIES] = {
            uid: {"memoryBlocks": [_block_to_json(b) for b in blocks]}
            for uid, blocks in sorted(state.pod_entries.items(), key=lambda kv: _go_order(kv[0]))
        }
    out["checksum"] = checksum(state)
    return out


def checkpoint_to_json(checkpoint: Checkpoint) -> dict[str, object]:
    """A read checkpoint as JSON: our v1 form, or kubelet 1.36's v2 when it holds podEntries.

    Either is a checkpoint that reads back (``state --json``); the v2 form is the
    one that keeps pod-level entries under a checksum in plain fields.
    """
    out = to_checkpoint(checkpoint.state)
    if not checkpoint.pod_entries:
        return out
    state = checkpoint.state
    del out["checksum"]
    out[KEY_POD_ENTRIES] = {
        uid: {"memoryBlocks": [_block_to_json(b) for b in blocks]}
        for uid, blocks in sorted(checkpoint.pod_entries.items(), key=lambda kv: _go_order(kv[0]))
    }
    names = _NEW_NAMES
    out["checksum"] = fnv1a_32(
        _dump(
            state.policy_name, state.machine, state.entries, names, checkpoint.pod_entries
        ).encode()
    )
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


def _json_pod_entries(pod_entries: Mapping[str, Sequence[Block]]) -> Iterator[str]:
    for uid in sorted(pod_entries):
        blocks = ",".join(
            [
                f'{{"numaAffinity":[{",".join(map(str, b.numa_affinity))}],'
                f'"type":{_json_str(b.type)},"size":{b.size}}}'
                for b in pod_entries[uid]
            ]
        )
        yield f'{_json_str(uid)}:{{"memoryBlocks":[{blocks}]}}'


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
    pods = ""
    if state.pod_entries:
        pods = f',"{KEY_POD_ENTRIES}":{{{",".join(_json_pod_entries(state.pod_entries))}}}'
    text = (
        f'{{"policyName":{_json_str(state.policy_name)},"machineState":{{{",".join(nodes)}}}'
        f'{entries}{pods},"checksum":{checksum_value}}}'
    )
    # The escaped characters can only occur inside strings, so this is safe; most
    # states have none, and looking for them costs less than translating.
    if any(c in text for c in _GO_ESCAPED):
        text = text.translate(_GO_EXTRA_ESCAPES)
    return text


# -- reading -----------------------------------------------------------------


def _key(value: object) -> str:
    return quote(value) if isinstance(value, str) else describe(value)


class _Reader:
    """Checks one decoded checkpoint; every error names the key path."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, path: str, problem: str) -> NoReturn:
        where = f"{self.source}: {path}" if path else self.source
        raise StateError(f"{where}: {problem}")

    def obj(self, value: object, path: str) -> dict[object, object]:
        if not isinstance(value, dict):
            self.fail(path, f"must be a JSON object, got {describe(value)}")
        return value

    def field(self, obj: dict[object, object], key: str, path: str) -> object:
        if key not in obj:
            self.fail(_join(path, key), "is missing")
        return obj[key]

    def string(self, value: object, path: str) -> str:
        if not isinstance(value, str):
            self.fail(path, f"must be a string, got {describe(value)}")
        return value

    def key(self, value: object, path: str) -> str:
        if not isinstance(value, str):
            self.fail(path, f"key {_key(value)} must be a string")
        # An empty pod UID or container name is read, as kubelet reads it: the
        # writer accepts it, and a file we wrote must load back.
        try:
            value.encode()
        except UnicodeEncodeError:
            self.fail(path, f"key {_key(value)} is not valid UTF-8")
        return value

    def integer(self, value: object, path: str, limit: int) -> int:
        # bool is an int subclass in Python; JSON true is not a number.
        if not isinstance(value, int) or isinstance(value, bool):
            self.fail(path, f"must be a non-negative integer, got {describe(value)}")
        if value < 0:
            self.fail(path, f"must be a non-negative integer, got {value}")
        if value > limit:
            self.fail(path, f"must be at most {limit}, got {value}")
        return value

    def node_ids(self, value: object, path: str, *, allow_empty: bool) -> list[int]:
        if not isinstance(value, list):
            self.fail(path, f"must be a list of NUMA node ids, got {describe(value)}")
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
        self.fail(path, f"key {_key(key)} must be a NUMA node id (a non-negative decimal)")


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


@dataclass(frozen=True)
class _Decoded:
    """A checkpoint as written, before the policy name is normalised."""

    policy_name: str
    machine: dict[int, NodeState]
    entries: dict[str, dict[str, list[Block]]]
    legacy_layout: bool
    # v2's podEntries (None: the key is absent); a pod entry without
    # "memoryBlocks" is None too, as Go's nil slice (it hashes as <nil>)
    pod_entries: dict[str, list[Block] | None] | None


def _decode(top: dict[object, object], r: _Reader) -> _Decoded:
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

    pod_entries: dict[str, list[Block] | None] | None = None
    if KEY_POD_ENTRIES in top:
        pod_entries = {}
        for raw_uid, raw_entry in r.obj(top[KEY_POD_ENTRIES], KEY_POD_ENTRIES).items():
            uid = r.key(raw_uid, KEY_POD_ENTRIES)
            entry_path = f"{KEY_POD_ENTRIES}.{uid}"
            entry = r.obj(raw_entry, entry_path)
            pod_entries[uid] = (
                _decode_blocks(entry["memoryBlocks"], f"{entry_path}.memoryBlocks", r)
                if "memoryBlocks" in entry
                else None
            )
    return _Decoded(policy_name, machine, entries, KEY_NODES in layouts, pod_entries)


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
            r.fail(map_path, f"key {quote(mem_type)} is not 'memory' or 'hugepages-<size>'")
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
        r.fail(path, f"must be a list of memory blocks, got {describe(raw)}")
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
            r.fail(f"{block_path}.type", f"{quote(mem_type)} is not 'memory' or 'hugepages-<size>'")
        size = r.integer(r.field(block, "size", block_path), f"{block_path}.size", MAX_UINT64)
        blocks.append(shared_block(tuple(mask), mem_type, size))
    return blocks


def _v1_candidates(d: _Decoded) -> Iterator[int]:
    """Checksums a genuine writer of this content in the v1 form could have stored.

    Lazily, the one kubelet and this plugin write today first: a large state is
    dumped once at start.
    """

    def sum_of(policy_name: str, names: _GoNames) -> int:
        return fnv1a_32(_dump(policy_name, d.machine, d.entries, names).encode())

    yield sum_of(d.policy_name, _NEW_NAMES)
    if not d.legacy_layout:
        yield sum_of(d.policy_name, _V1_STRUCT_NAMES)
        return
    yield sum_of(d.policy_name, _OLD_NAMES)
    # The kubernetes.io example shows "Static" but its checksum was made
    # with the first implementation's "static"; accept that one edit.
    lower = d.policy_name.lower()
    if lower != d.policy_name and lower in _LEGACY_POLICY_NAMES:
        yield sum_of(lower, _OLD_NAMES)


def _v2_checksum(d: _Decoded) -> int:
    pods = d.pod_entries if d.pod_entries is not None else {}
    return fnv1a_32(_dump(d.policy_name, d.machine, d.entries, _NEW_NAMES, pods).encode())


def _corrupted(stored: int, what: str) -> str:
    return f"checkpoint is corrupted: stored checksum {stored} does not match {what}"


def _verify_v1_or_v2(top: dict[object, object], d: _Decoded, r: _Reader) -> str:
    """The form whose checksum the file carries (v1 or v2); StateError naming it if none."""
    stored = r.integer(r.field(top, "checksum", ""), "checksum", MAX_UINT64)
    if d.pod_entries is not None:
        v2 = _v2_checksum(d)
        if stored != v2:
            r.fail(
                "checksum", _corrupted(stored, f"the content of {FORMS[FORM_V2]} (computed {v2})")
            )
        return FORM_V2
    v1 = []
    for candidate in _v1_candidates(d):
        if stored == candidate:
            return FORM_V1
        v1.append(candidate)
    if d.legacy_layout:
        r.fail("checksum", _corrupted(stored, f"the content (computed {v1[1]})"))
    # kubelet 1.36 with PodLevelResourceManagers on omits an empty podEntries from
    # the JSON but still hashes the field: the file looks like v1, the sum is v2's
    v2 = _v2_checksum(d)
    if stored == v2:
        return FORM_V2
    r.fail(
        "checksum",
        _corrupted(
            stored,
            f"the content (computed {v1[0]} as {FORMS[FORM_V1]}, {v2} as {FORMS[FORM_V2]})",
        ),
    )


def _read_v3(top: dict[object, object], r: _Reader) -> tuple[_Decoded, str]:
    """kubelet 1.37's form: the v1 fields, and the same state (plus podEntries) in ``data``.

    Both checksums are verified, and the two copies must agree: kubelet 1.37
    reads ``data``, an older kubelet (or a downgrade) the v1 fields.
    """
    form = FORMS[FORM_V3]
    for key in (KEY_DATA, KEY_DATA_CHECKSUM):
        if key not in top:
            r.fail(key, f"is missing ({form} has both {KEY_DATA} and {KEY_DATA_CHECKSUM})")
    if KEY_POD_ENTRIES in top:
        r.fail(
            KEY_POD_ENTRIES,
            f"beside {KEY_DATA}: kubelet 1.36's field in {form}, which keeps podEntries"
            f" in {KEY_DATA}; no kubelet writes both",
        )
    data = r.string(top[KEY_DATA], KEY_DATA)
    stored = r.integer(top[KEY_DATA_CHECKSUM], KEY_DATA_CHECKSUM, MAX_UINT64)
    computed = data_checksum(data)
    if stored != computed:
        r.fail(KEY_DATA_CHECKSUM, _corrupted(stored, f"{KEY_DATA} of {form} (computed {computed})"))
    inner_reader = _Reader(f"{r.source}: {KEY_DATA}")
    inner = inner_reader.obj(parse_json(data, source=inner_reader.source), "")
    if "checksum" in inner:
        inner_reader.fail("checksum", f"is not a field of {form}'s {KEY_DATA}")
    d = _decode(inner, inner_reader)

    legacy = _decode(top, r)
    if legacy.legacy_layout:
        r.fail("machineState", f"uses {KEY_NODES!r} in {form}, which writes {KEY_CELLS!r}")
    stored_v1 = r.integer(r.field(top, "checksum", ""), "checksum", MAX_UINT64)
    v1 = next(_v1_candidates(legacy))
    if stored_v1 != v1:
        r.fail("checksum", _corrupted(stored_v1, f"the v1 fields of {form} (computed {v1})"))
    if (legacy.policy_name, legacy.machine, legacy.entries) != (
        d.policy_name,
        d.machine,
        d.entries,
    ):
        differing = next(
            key
            for key, a, b in (
                ("policyName", legacy.policy_name, d.policy_name),
                ("machineState", legacy.machine, d.machine),
                ("entries", legacy.entries, d.entries),
            )
            if a != b
        )
        r.fail(
            differing,
            f"differs from {KEY_DATA}.{differing}: {form} keeps one state twice, the v1 fields"
            " for kubelet 1.36 and older and data for 1.37 and newer",
        )
    return d, FORM_V3


def read_checkpoint(data: object, *, source: str = "state") -> Checkpoint:
    """Decode a parsed checkpoint of any form kubelet 1.34-1.37 writes, verifying its checksums.

    Accepts the group key ``cells`` and the older ``nodes``. The returned
    state uses kubelet's current policy spelling (``Static`` / ``None``).
    Raises :class:`StateError` naming ``source``, the offending key path and,
    for a checksum that does not match, the form it was read as.
    """
    r = _Reader(source)
    top = r.obj(data, "")
    if KEY_DATA in top or KEY_DATA_CHECKSUM in top:
        d, form = _read_v3(top, r)
    else:
        d = _decode(top, r)
        form = _verify_v1_or_v2(top, d, r)

    policy_name = d.policy_name
    if policy_name not in (POLICY_STATIC, POLICY_NONE):
        if d.legacy_layout and policy_name in _LEGACY_POLICY_NAMES:
            policy_name = _LEGACY_POLICY_NAMES[policy_name]
        else:
            r.fail(
                "policyName",
                f"{quote(policy_name)} is not {POLICY_STATIC!r} or {POLICY_NONE!r}"
                " (lower-case names are only read from old checkpoints that use 'nodes')",
            )
    pods = {uid: tuple(blocks or ()) for uid, blocks in (d.pod_entries or {}).items()}
    state = MemoryState(policy_name=policy_name, machine=d.machine, entries=d.entries)
    return Checkpoint(state, form, pods)


def from_checkpoint(data: object, *, source: str = "state") -> MemoryState:
    """The state of a parsed checkpoint (:func:`read_checkpoint`) for the engine.

    A pod-level reservation (``podEntries``, kubelet's ``PodLevelResourceManagers``)
    is read into ``state.pod_entries`` when its pod's container entries are parts of
    it (on its nodes, together no more than it): the form this plugin writes with
    ``podLevelResources: managers``, whose pod shared pool stays out of ``entries``.
    kubelet writes the pool into the entry of every container sharing it, views of
    the pod's blocks rather than allocations of their own (docs/simulate.md,
    "initialState"): such a state is refused rather than read wrong.
    """
    checkpoint = read_checkpoint(data, source=source)
    state = checkpoint.state
    held = {uid: blocks for uid, blocks in checkpoint.pod_entries.items() if blocks}
    views = [uid for uid in sorted(held) if not _parts_of(state.entries.get(uid, {}), held[uid])]
    if views:
        more = f" (and {len(views) - 1} more)" if len(views) > 1 else ""
        _Reader(source).fail(
            f"{KEY_DATA}.{KEY_POD_ENTRIES}" if checkpoint.form == FORM_V3 else KEY_POD_ENTRIES,
            f"pod {quote(str(views[0]))}{more} holds pod-level memory (kubelet's"
            f" PodLevelResourceManagers, pod scope; read as {FORMS[checkpoint.form]}) whose"
            " containers' entries share the pod's blocks instead of being parts of them;"
            " remove the pod from podEntries and entries to use the rest",
        )
    state.pod_entries = {uid: list(blocks) for uid, blocks in held.items()}
    return state


def _parts_of(containers: Mapping[str, Sequence[Block]], reservation: Sequence[Block]) -> bool:
    """Whether the containers' blocks are parts of the pod's reservation: each on the
    reservation's nodes for its type, their sizes adding up to no more than it."""
    budget = {b.type: b for b in reservation}
    taken: dict[str, int] = {}
    for blocks in containers.values():
        for b in blocks:
            held = budget.get(b.type)
            if held is None or held.numa_affinity != b.numa_affinity:
                return False
            taken[b.type] = taken.get(b.type, 0) + b.size
    return all(size <= budget[t].size for t, size in taken.items())


# -- the file ----------------------------------------------------------------


def _reject_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in pairs:
        if key in out:
            # Go keeps the last one silently; a duplicate means a hand-edited file.
            raise StateError(f"duplicate key {quote(key)}")
        out[key] = value
    return out


def _reject_constant(name: str) -> object:
    raise StateError(f"{name} is not a JSON number")


def parse_json(text: str, *, source: str) -> object:
    """Strict JSON parse of a checkpoint: no duplicate keys, no NaN/Infinity."""
    if not text.strip():
        raise StateError(f"{source}: checkpoint is empty")
    try:
        data = json.loads(
            text, object_pairs_hook=_reject_duplicates, parse_constant=_reject_constant
        )
    except StateError as exc:
        raise StateError(f"{source}: {exc}") from exc
    except json.JSONDecodeError as exc:
        # a writer that crashed mid-file leaves text that ends early
        ends_early = exc.pos >= len(text.rstrip()) or exc.msg.startswith("Unterminated")
        cut = " (cut short?)" if ends_early else ""
        problem = exc.msg.removesuffix(" at")  # "Unterminated string starting at"
        raise StateError(
            f"{source}: not valid JSON: {problem} at line {exc.lineno}, column {exc.colno}{cut}"
        ) from exc
    except RecursionError:
        raise StateError(too_deep(source)) from None
    except ValueError:
        # the only other refusal: an integer longer than Python converts
        raise StateError(f"{source}: not valid JSON: a number of more than 4300 digits") from None
    # No depth check beyond the json module's: the decoder below walks kubelet's fixed
    # layout, so anything nested deeper is refused there, at no extra cost at start.
    return data

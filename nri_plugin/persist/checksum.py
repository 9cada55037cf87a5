"""kubelet's checkpoint checksum: FNV-1a (32 bits) over the go-spew dump of the checkpoint.

kubelet's ``checkpointmanager/checksum`` hashes ``spew.Sprintf("%#v", obj)`` of the
checkpoint struct with ``Checksum`` zeroed (``pkg/kubelet/cm/memorymanager/state/checkpoint.go``);
this module writes the same text without Go and hashes it with compiled FNV-1a.

Three structs are hashed, one per checkpoint version kubelet has written
(docs/simulate.md, "initialState"):

* v1 (every kubelet up to 1.35, 1.36 with ``PodLevelResourceManagers`` off, and
  the v1 fields of 1.37's file): ``PolicyName``, ``MachineState``, ``Entries``;
  1.36 hashes it under the struct name ``MemoryManagerCheckpointV1``, every
  other version under ``MemoryManagerCheckpoint``;
* v2 (1.36 with ``PodLevelResourceManagers`` on): the same plus ``PodEntries``
  (``state.PodMemoryAssignments``, pod UID -> ``PodEntry{MemoryBlocks}``);
  kubelet renames ``MemoryManagerCheckpointV2`` to ``MemoryManagerCheckpoint``
  in the dump, so both hash under the v1 struct name;
* v3 (1.37, kubernetes/kubernetes#139626): ``dataChecksum`` is the checksum of
  the ``data`` string itself, which spew prints as ``(string)`` and the text.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import islice

from fnv_hash_fast import fnv1a_32 as _compiled_fnv1a_32

from nri_plugin.engine.state import Block, MemoryState, NodeState


@dataclass(frozen=True)
class _GoNames:
    """Go type and field names that appear in the hashed dump."""

    node_map: str
    group_field: str
    checkpoint: str = "state.MemoryManagerCheckpoint"


_NEW_NAMES = _GoNames(node_map="state.NUMANodeMap", group_field="Cells")
_OLD_NAMES = _GoNames(node_map="state.NodeMap", group_field="Nodes")
# kubelet 1.36 (checkpoint.go @1c4a3861) writes the v1 struct as MemoryManagerCheckpointV1
# and hashes it under that name; 1.37 hashes it under the old one, as every reader expects
_V1_STRUCT_NAMES = _GoNames(
    node_map="state.NUMANodeMap",
    group_field="Cells",
    checkpoint="state.MemoryManagerCheckpointV1",
)


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


def _spew_blocks(blocks: Sequence[Block]) -> str:
    return " ".join(
        [
            f"{{NUMAAffinity:([]int)[{' '.join(map(str, b.numa_affinity))}]"
            f" Type:(v1.ResourceName){b.type} Size:(uint64){b.size}}}"
            for b in blocks
        ]
    )


def _spew_pod_entries(pod_entries: Mapping[str, Sequence[Block] | None]) -> str:
    # A PodEntry is a struct in a map: spew prints its field with the slice type;
    # a pod entry read without "memoryBlocks" holds a nil slice, printed <nil>.
    items = []
    for uid in sorted(pod_entries):
        blocks = pod_entries[uid]
        shown = "<nil>" if blocks is None else f"[{_spew_blocks(blocks)}]"
        items.append(f"{uid}:{{MemoryBlocks:([]state.Block){shown}}}")
    return " ".join(items)


def _dump(
    policy_name: str,
    machine: Mapping[int, NodeState],
    entries: Mapping[str, Mapping[str, Sequence[Block]]],
    names: _GoNames,
    pod_entries: Mapping[str, Sequence[Block] | None] | None = None,
) -> str:
    """The v1 struct's dump; with ``pod_entries`` (even empty) the v2 struct's."""
    nodes = " ".join(_spew_node(i, machine[i], names) for i in sorted(machine))
    pods = _join_in_batches(" ", _spew_pods(entries))
    v2 = (
        ""
        if pod_entries is None
        else f" PodEntries:(state.PodMemoryAssignments)map[{_spew_pod_entries(pod_entries)}]"
    )
    return (
        f"(*{names.checkpoint}){{PolicyName:(string){policy_name}"
        f" MachineState:({names.node_map})map[{nodes}]"
        f" Entries:(state.ContainerMemoryAssignments)map[{pods}]{v2}"
        f" Checksum:(checksum.Checksum)0}}"
    )


def data_checksum(data: str) -> int:
    """kubelet 1.37's ``dataChecksum``: the checksum of the ``data`` string (a Go string)."""
    return fnv1a_32(("(string)" + data).encode())


def checksum_dump(state: MemoryState, *, legacy_names: bool = False) -> str:
    """The text kubelet hashes: go-spew's dump of the checkpoint with checksum 0.

    ``legacy_names`` uses the Go names of the first implementation
    (``state.NodeMap``, field ``Nodes``).
    """
    names = _OLD_NAMES if legacy_names else _NEW_NAMES
    # pod-level reservations (KEP-5526) make it kubelet 1.36's v2 struct; without them
    # it is the v1 struct every kubelet reads
    pods = state.pod_entries or None
    return _dump(state.policy_name, state.machine, state.entries, names, pods)


def checksum(state: MemoryState) -> int:
    """kubelet's checksum of ``state``: FNV-1a 32 of :func:`checksum_dump`."""
    return fnv1a_32(checksum_dump(state).encode())

"""The memory manager's state: per-NUMA-node memory maps and container blocks.

This is kubelet's ``state`` package in Python: a plain, mutable model with a
small set of mutating methods. The policy mutates it; persistence (the
checkpoint file, :mod:`nri_plugin.checkpoint`) reads and writes it and knows
nothing of the policy.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

MEMORY = "memory"
HUGEPAGES_PREFIX = "hugepages-"

POLICY_STATIC = "Static"
POLICY_NONE = "None"


@dataclass(slots=True)
class MemoryTable:
    """Byte counters of one memory type on one NUMA node (kubelet's MemoryTable)."""

    total: int
    system_reserved: int
    allocatable: int
    reserved: int
    free: int


@dataclass(slots=True)
class NodeState:
    """One NUMA node of the machine state (kubelet's NUMANodeState)."""

    number_of_assignments: int
    memory_map: dict[str, MemoryTable]
    cells: list[int]

    def table(self, type_: str) -> MemoryTable:
        """The node's table of ``type_``; an all-zero one when the node has none.

        A real machine lists every supported page size, with zero pages when none
        are set up, so a type the node has no table for counts as zero capacity.
        """
        return self.memory_map.get(type_, _ZERO_TABLE)


@dataclass(frozen=True, slots=True)
class Block:
    """One allocation record of a container: a mask, a memory type and a size."""

    numa_affinity: tuple[int, ...]
    type: str
    size: int

    def __post_init__(self) -> None:
        # One is kept per tracked container, and the masks and types repeat: blocks
        # share equal ones (both immutable) instead of holding a copy each.
        object.__setattr__(self, "numa_affinity", _shared(self.numa_affinity))
        object.__setattr__(self, "type", sys.intern(self.type))


_ZERO_TABLE = MemoryTable(0, 0, 0, 0, 0)


def blocks_mask(blocks: Iterable[Block]) -> int:
    """The union of the blocks' NUMA masks (bit n for node n): what ``cpuset.mems`` pins."""
    mask = 0
    for b in blocks:
        for n in b.numa_affinity:
            mask |= 1 << n
    return mask


@functools.lru_cache(maxsize=1024)
def _shared(value: tuple[int, ...]) -> tuple[int, ...]:
    """The first-seen tuple equal to ``value`` (among the last 1024 distinct ones)."""
    return value


@functools.lru_cache(maxsize=4096)
def shared_block(numa_affinity: tuple[int, ...], type_: str, size: int) -> Block:
    """A Block equal to ``Block(numa_affinity, type_, size)``, shared with the containers
    that hold an equal one (blocks are immutable; pods of one workload repeat theirs)."""
    return Block(numa_affinity, type_, size)


# Stored block lists, and the dicts of pods with one container, shared between equal
# ones: neither is changed in place once stored (see ``MemoryState.clone``), and pods of
# one workload repeat them (at 10,000 pods, a list and a dict each were 256 bytes a pod).
# Keyed by identity (blocks come from ``shared_block``); each value keeps what its key
# names alive, so no id is reused while its entry stands. Emptied when full.
_SHARED_MAX = 4096
_lists: dict[tuple[int, ...], list[Block]] = {}
_pods: dict[tuple[str, int], dict[str, list[Block]]] = {}


def _shared_list(blocks: list[Block]) -> list[Block]:
    key = tuple(map(id, blocks))
    shared = _lists.get(key)
    if shared is None:
        if len(_lists) >= _SHARED_MAX:
            _lists.clear()
        shared = _lists[key] = list(blocks)
    return shared


def _shared_pod(container: str, blocks: list[Block]) -> dict[str, list[Block]]:
    key = (container, id(blocks))
    shared = _pods.get(key)
    if shared is None:
        if len(_pods) >= _SHARED_MAX:
            _pods.clear()
        shared = _pods[key] = {container: blocks}
    return shared


def sort_blocks(blocks: Iterable[Block]) -> list[Block]:
    """Blocks of one container in the order we store them: by type name, byte order."""
    return sorted(blocks, key=lambda b: b.type.encode())


@dataclass(slots=True)
class MemoryState:
    """Everything the static policy remembers: machine state and assignments.

    ``machine`` maps NUMA node id to its state (empty for the None policy);
    ``entries`` maps pod UID -> container name -> blocks; ``pod_entries`` maps pod UID
    -> the blocks reserved for a whole pod with pod-level resources (KEP-5526, kubelet's
    ``PodMemoryAssignments``): the machine counts those, and the pod's containers' own
    blocks in ``entries`` are carved out of them, not out of the machine.
    """

    policy_name: str
    machine: dict[int, NodeState] = field(default_factory=dict)
    entries: dict[str, dict[str, list[Block]]] = field(default_factory=dict)
    # containers holding blocks, kept up to date by the mutations (metrics read it per change)
    holders: int = field(default=-1, compare=False)
    pod_entries: dict[str, list[Block]] = field(default_factory=dict)
    # whether a table may hold allocatable memory beyond the machine's default (overflow
    # counted at restore, see engine/rebase.py): True until a pass of ``repay_overflow``
    # finds none, and again whenever ``count_overflow`` lends
    overflow_lent: bool = field(default=True, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.holders < 0:
            self.holders = sum(len(c) for c in self.entries.values())

    # -- queries -----------------------------------------------------------

    def blocks(self, pod_uid: str, container: str) -> list[Block] | None:
        """The container's stored blocks; never change the list in place (see ``clone``)."""
        pod = self.entries.get(pod_uid)
        if pod is None:
            return None
        return pod.get(container)

    def pod_blocks(self, pod_uid: str) -> list[Block] | None:
        """The blocks reserved for the whole pod (pod-level resources), if any."""
        return self.pod_entries.get(pod_uid)

    def carved(self, pod_uid: str) -> bool:
        """Whether the pod's container blocks come out of a pod-level reservation."""
        return pod_uid in self.pod_entries

    def iter_blocks(self) -> Iterator[tuple[str, str, Block]]:
        for pod_uid, containers in self.entries.items():
            for name, blocks in containers.items():
                for block in blocks:
                    yield pod_uid, name, block

    def clone(self) -> MemoryState:
        """A copy that shares each pod's entries (much cheaper than deepcopy).

        Taken on the event loop before every checkpoint write, so kept lean: one dict
        in all. Blocks are immutable, and neither a pod's dict of containers nor a
        container's block list is changed in place once stored (``set_blocks`` and
        ``delete_blocks`` replace the pod's dict), so sharing them is safe.
        """
        entries = dict(self.entries)
        return MemoryState(
            self.policy_name,
            {
                n: NodeState(
                    s.number_of_assignments,
                    {
                        t: MemoryTable(
                            m.total, m.system_reserved, m.allocatable, m.reserved, m.free
                        )
                        for t, m in s.memory_map.items()
                    },
                    list(s.cells),
                )
                for n, s in self.machine.items()
            },
            entries,
            self.holders,
            dict(self.pod_entries),
            self.overflow_lent,
        )

    # -- mutations ---------------------------------------------------------

    def set_blocks(self, pod_uid: str, container: str, blocks: list[Block]) -> None:
        blocks = _shared_list(blocks)
        pod = self.entries.get(pod_uid)
        if pod is None:
            self.holders += 1
            self.entries[pod_uid] = _shared_pod(container, blocks)
            return
        if container not in pod:
            self.holders += 1
        # a new dict for the pod: a clone may share the old one
        self.entries[pod_uid] = {**pod, container: blocks}

    def set_pod_blocks(self, pod_uid: str, blocks: list[Block]) -> None:
        self.pod_entries = {**self.pod_entries, pod_uid: blocks}  # a clone may share the dict

    def delete_pod_blocks(self, pod_uid: str) -> list[Block] | None:
        blocks = self.pod_entries.get(pod_uid)
        if blocks is not None:
            self.pod_entries = {u: b for u, b in self.pod_entries.items() if u != pod_uid}
        return blocks

    def delete_blocks(self, pod_uid: str, container: str) -> list[Block] | None:
        pod = self.entries.get(pod_uid)
        if pod is None or container not in pod:
            return None
        blocks = pod[container]
        self.holders -= 1
        rest = {name: b for name, b in pod.items() if name != container}  # a clone may share pod
        if rest:
            self.entries[pod_uid] = rest
        else:
            del self.entries[pod_uid]
        return blocks


def is_memory_type(name: str) -> bool:
    """True for ``memory`` and ``hugepages-*`` resource names (a prefix check, as kubelet)."""
    return name == MEMORY or name.startswith(HUGEPAGES_PREFIX)

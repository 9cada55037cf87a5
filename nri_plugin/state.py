"""The memory manager's state: per-NUMA-node memory maps and container blocks.

This is kubelet's ``state`` package in Python: a plain, mutable model with a
small set of mutating methods. The policy mutates it; persistence (the
checkpoint file, :mod:`nri_plugin.checkpoint`) reads and writes it and knows
nothing of the policy.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

MEMORY = "memory"
HUGEPAGES_PREFIX = "hugepages-"

POLICY_STATIC = "Static"
POLICY_NONE = "None"


@dataclass
class MemoryTable:
    """Byte counters of one memory type on one NUMA node (kubelet's MemoryTable)."""

    total: int
    system_reserved: int
    allocatable: int
    reserved: int
    free: int


@dataclass
class NodeState:
    """One NUMA node of the machine state (kubelet's NUMANodeState)."""

    number_of_assignments: int
    memory_map: dict[str, MemoryTable]
    cells: list[int]


@dataclass(frozen=True)
class Block:
    """One allocation record of a container: a mask, a memory type and a size."""

    numa_affinity: tuple[int, ...]
    type: str
    size: int


def sort_blocks(blocks: Iterable[Block]) -> list[Block]:
    """Blocks of one container in the order we store them: by type name, byte order."""
    return sorted(blocks, key=lambda b: b.type.encode())


@dataclass
class MemoryState:
    """Everything the static policy remembers: machine state and assignments.

    ``machine`` maps NUMA node id to its state (empty for the None policy);
    ``entries`` maps pod UID -> container name -> blocks.
    """

    policy_name: str
    machine: dict[int, NodeState] = field(default_factory=dict)
    entries: dict[str, dict[str, list[Block]]] = field(default_factory=dict)

    # -- queries -----------------------------------------------------------

    def blocks(self, pod_uid: str, container: str) -> list[Block] | None:
        pod = self.entries.get(pod_uid)
        if pod is None:
            return None
        return pod.get(container)

    def iter_blocks(self) -> Iterator[tuple[str, str, Block]]:
        for pod_uid, containers in self.entries.items():
            for name, blocks in containers.items():
                for block in blocks:
                    yield pod_uid, name, block

    def clone(self) -> MemoryState:
        """A deep copy; blocks are immutable values and are shared (much cheaper than deepcopy)."""
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
            {u: {c: list(b) for c, b in cs.items()} for u, cs in self.entries.items()},
        )

    # -- mutations ---------------------------------------------------------

    def set_blocks(self, pod_uid: str, container: str, blocks: list[Block]) -> None:
        self.entries.setdefault(pod_uid, {})[container] = blocks

    def delete_blocks(self, pod_uid: str, container: str) -> list[Block] | None:
        pod = self.entries.get(pod_uid)
        if pod is None or container not in pod:
            return None
        blocks = pod.pop(container)
        if not pod:
            del self.entries[pod_uid]
        return blocks


def is_memory_type(name: str) -> bool:
    """True for ``memory`` and ``hugepages-*`` resource names (a prefix check, as kubelet)."""
    return name == MEMORY or name.startswith(HUGEPAGES_PREFIX)

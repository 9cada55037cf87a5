"""The machine as the engine sees it: NUMA nodes, their CPUs, memory, hugepages, distances.

Built by :mod:`nri_plugin.inputs.topology` from sysfs or a fake-topology file.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property

from nri_plugin.engine.state import HUGEPAGES_PREFIX


@dataclass(frozen=True)
class NumaNode:
    """One NUMA node as kubelet reads it from cadvisor."""

    id: int
    cpus: frozenset[int]
    # The node's MemTotal in bytes: it INCLUDES the memory of its hugepage pools.
    memory: int
    # page size in bytes -> total bytes of pages of that size on this node
    hugepages: Mapping[int, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Topology:
    """The machine: NUMA nodes sorted by id, and an optional SLIT distance matrix."""

    nodes: tuple[NumaNode, ...]
    # distances[(a, b)] = SLIT distance from node a to node b; None when unknown
    distances: Mapping[tuple[int, int], int] | None = None

    @property
    def node_ids(self) -> tuple[int, ...]:
        return tuple(n.id for n in self.nodes)

    def node(self, node_id: int) -> NumaNode:
        for n in self.nodes:
            if n.id == node_id:
                return n
        raise KeyError(node_id)

    @property
    def hugepage_sizes(self) -> tuple[int, ...]:
        """Every hugepage size (bytes) named on any node, ascending."""
        sizes: set[int] = set()
        for n in self.nodes:
            sizes.update(n.hugepages)
        return tuple(sorted(sizes))

    @cached_property
    def cpu_mask(self) -> int:
        """Every CPU of the machine, bit i for CPU i."""
        mask = 0
        for n in self.nodes:
            for cpu in n.cpus:
                mask |= 1 << cpu
        return mask

    def nodes_of_cpus(self, cpus: frozenset[int]) -> frozenset[int]:
        """NUMA node ids holding any of ``cpus`` (unknown CPUs are ignored)."""
        return frozenset(n.id for n in self.nodes if n.cpus & cpus)

    def distance(self, a: int, b: int) -> int:
        if self.distances is None:
            raise KeyError("no NUMA distance matrix")
        return self.distances[(a, b)]


def hugepage_resource_name(page_size: int) -> str:
    """``hugepages-<size>`` with the size as a canonical binary quantity (``2Mi``, ``1Gi``)."""
    for suffix, power in (("Ei", 60), ("Pi", 50), ("Ti", 40), ("Gi", 30), ("Mi", 20), ("Ki", 10)):
        unit = 1 << power
        if page_size >= unit and page_size % unit == 0:
            return f"{HUGEPAGES_PREFIX}{page_size // unit}{suffix}"
    return f"{HUGEPAGES_PREFIX}{page_size}"

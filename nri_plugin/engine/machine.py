"""The empty machine state from topology and reservations (kubelet's getDefaultMachineState)."""

from __future__ import annotations

from collections.abc import Callable

from nri_plugin.engine.state import MEMORY, MemoryTable, NodeState
from nri_plugin.engine.topology import Topology, hugepage_resource_name
from nri_plugin.errors import ConfigError


def build_machine_state(
    topology: Topology, reserved: Callable[[int, str], int]
) -> dict[int, NodeState]:
    """kubelet's default state: every node, a table for every hugepage size and for memory.

    ``reserved(node, type)`` gives the configured reservation (0 when none).
    Conventional memory's allocatable excludes the hugepage pools, because the
    node's MemTotal includes them.
    """
    sizes = topology.hugepage_sizes
    machine: dict[int, NodeState] = {}
    for node in topology.nodes:
        tables: dict[str, MemoryTable] = {}
        hugepages_total = 0
        for size in sizes:
            name = hugepage_resource_name(size)
            total = node.hugepages.get(size, 0)
            hugepages_total += total
            tables[name] = _table(node.id, name, total, reserved(node.id, name), 0)
        tables[MEMORY] = _table(
            node.id, MEMORY, node.memory, reserved(node.id, MEMORY), hugepages_total
        )
        machine[node.id] = NodeState(0, tables, [node.id])
    return machine


def _table(node: int, type_: str, total: int, system_reserved: int, other: int) -> MemoryTable:
    allocatable = total - system_reserved - other
    if allocatable < 0:
        # kubelet's unsigned arithmetic would wrap around here; refuse instead
        raise ConfigError(
            f"reservedMemory: NUMA node {node} {type_}: reserved {system_reserved} bytes"
            f" exceeds the {total - other} bytes the node has"
        )
    return MemoryTable(total, system_reserved, allocatable, 0, allocatable)

"""Taking bytes from NUMA nodes and giving them back, as kubelet's static policy counts them.

``take`` is ``Allocate``'s last step (every node of the mask gets an assignment
and the mask as its cells; bytes come from the nodes in mask order), ``release``
is ``RemoveContainer``. One deliberate departure, documented in docs/simulate.md:
where kubelet's own release would lose track of memory, ours does not.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

from nri_plugin.engine.state import Block, MemoryState, NodeState


def release(state: MemoryState, blocks: Sequence[Block]) -> None:
    """Return blocks to the machine state node by node, as kubelet's RemoveContainer.

    One deviation, where kubelet loses track of memory: a node of a multi-node block whose
    cells are no longer the block's mask was re-labelled by a single-node allocation that
    kubelet let through (a CPU-pinned container under ``best-effort``, see
    docs/simulate.md); kubelet's walk would hand that allocation's bytes back as the
    group's (the node then shows them free while they are in use, and the group's own
    bytes stay reserved on another node for nobody). Such a node gives back only what
    exceeds its single-node blocks, and rejoins its group when the last of them goes.
    """
    machine = state.machine
    for b in blocks:
        mask = b.numa_affinity
        relabelled = relabelled_nodes(machine, mask)
        for node_id in mask:
            node = machine[node_id]
            node.number_of_assignments -= 1
            if node.number_of_assignments == 0:
                node.cells = [node_id]
        give_back(state, mask, b.type, b.size, relabelled)
    for node_id in {b.numa_affinity[0] for b in blocks if len(b.numa_affinity) == 1}:
        _regroup(state, node_id)


def relabelled_nodes(machine: Mapping[int, NodeState], mask: Sequence[int]) -> frozenset[int]:
    """Nodes of a multi-node ``mask`` whose cells say another mask (see :func:`release`)."""
    if len(mask) < 2:
        return frozenset()
    group = sorted(mask)
    return frozenset(n for n in mask if sorted(machine[n].cells) != group)


def give_back(
    state: MemoryState,
    mask: Sequence[int],
    type_: str,
    size: int,
    relabelled: Collection[int] = frozenset(),
) -> None:
    """Free ``size`` bytes of ``type_`` node by node in ``mask`` order (counts unchanged)."""
    for node_id in mask:
        if size == 0:
            return
        table = state.machine[node_id].memory_map.get(type_)
        if table is None or table.reserved == 0:
            continue
        held = _single_node_bytes(state, node_id, type_) if node_id in relabelled else 0
        give = max(0, min(table.reserved - held, size))
        table.reserved -= give
        table.free += give
        size -= give


def _regroup(state: MemoryState, node_id: int) -> None:
    """A node re-labelled by single-node blocks joins its group again once the last of them
    is gone (kubelet leaves it on its own, serving single-node hints while the group's
    bytes may sit on it), so that the state is again one that kubelet's restore replays."""
    node = state.machine[node_id]
    if node.number_of_assignments == 0 or len(node.cells) > 1:
        return
    group: Sequence[int] | None = None
    for containers in state.entries.values():
        for blocks in containers.values():
            for block in blocks:
                if node_id not in block.numa_affinity:
                    continue
                if len(block.numa_affinity) == 1:
                    return  # still serves single-node blocks
                group = block.numa_affinity
    if group is not None:
        node.cells = list(group)


def _single_node_bytes(state: MemoryState, node_id: int, mem_type: str) -> int:
    """Bytes of ``mem_type`` held on ``node_id`` by single-node blocks."""
    return sum(
        block.size
        for containers in state.entries.values()
        for blocks in containers.values()
        for block in blocks
        if block.type == mem_type and tuple(block.numa_affinity) == (node_id,)
    )


def take(machine: Mapping[int, NodeState], nodes: Sequence[int], type_: str, size: int) -> None:
    """kubelet's updateMachineState: count the assignment on every node, take bytes in order."""
    for n in nodes:
        node = machine[n]
        node.number_of_assignments += 1
        node.cells = list(nodes)
        if size == 0:
            continue
        table = node.memory_map.get(type_)
        if table is None or table.free <= 0:
            continue
        give = min(table.free, size)
        table.free -= give
        table.reserved += give
        size -= give

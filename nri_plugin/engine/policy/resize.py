"""In-place resize of a container that holds blocks (InPlacePodVerticalScaling, GA in 1.35).

kubelet's static policy never resizes a container's blocks: ``Allocate`` skips a
container already in the state, and the resize admission handler marks memory
resizes of Guaranteed pods Infeasible while the memory manager is ``Static``
(``pkg/kubelet/allocation/handlers.go``). With this plugin kubelet's memory
manager is ``None``, so kubelet resizes freely and the books must follow the
container's new limit (docs/simulate.md, the ``resize`` step):

* a memory shrink lowers the memory block and frees the difference node by node
  in the block's affinity order, as kubelet's ``RemoveContainer`` frees a block;
* a memory grow raises the block and takes the difference node by node in the
  affinity order, as much as each node has free, as ``Allocate`` takes a block,
  never from other nodes (the container's ``cpuset.mems`` stays); it is refused,
  with nothing changed, when those nodes lack the free memory;
* assignment counts and groups do not change; hugepages cannot be resized.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from nri_plugin.engine.bitmask import format_mems, mask_of
from nri_plugin.engine.policy.accounting import give_back, relabelled_nodes
from nri_plugin.engine.state import MEMORY, Block, MemoryState, sort_blocks
from nri_plugin.quantity import format_bytes_human


@dataclass(frozen=True)
class ResizeRefusal:
    """Why a resize cannot be applied; the state is unchanged."""

    reason: str
    # the bytes the grow needed and those its nodes have free (0, 0 when not a shortfall)
    needed: int = 0
    free: int = 0


def resize_blocks(
    state: MemoryState,
    pod_uid: str,
    container: str,
    requested: Mapping[str, int],
) -> ResizeRefusal | None:
    """Apply ``requested`` (memory type -> bytes) to the container's blocks, or say why not.

    A container without blocks is left alone (None).
    """
    blocks = state.blocks(pod_uid, container)
    if blocks is None:
        return None
    current = {b.type: b for b in blocks}
    for type_ in sorted(set(current) | set(requested), key=str.encode):
        if type_ == MEMORY:
            continue
        old = current[type_].size if type_ in current else 0
        new = requested.get(type_, 0)
        if old != new:
            return ResizeRefusal(
                f"{type_} cannot be resized in place (from {_human(old)} to {_human(new)})"
            )
    block = current.get(MEMORY)
    new_size = requested.get(MEMORY, 0)
    if block is None:
        if new_size:
            return ResizeRefusal("the container holds no memory block to resize")
        return None
    delta = new_size - block.size
    if delta == 0:
        return None
    nodes = block.numa_affinity
    machine = state.machine
    if delta > 0:
        free = sum(machine[n].table(MEMORY).free for n in nodes)
        if free < delta:
            where = format_mems(mask_of(nodes))
            return ResizeRefusal(
                f"memory {_human(block.size)} -> {_human(new_size)} needs {_human(delta)} more"
                f" on NUMA node{'s' if len(nodes) > 1 else ''} {where}, which"
                f" {'have' if len(nodes) > 1 else 'has'} {_human(free)} free",
                needed=delta,
                free=free,
            )
        remaining = delta
        for n in nodes:
            table = machine[n].table(MEMORY)
            take = min(table.free, remaining)
            if take > 0:
                table.free -= take
                table.reserved += take
                remaining -= take
    else:
        give_back(state, nodes, MEMORY, -delta, relabelled_nodes(machine, nodes))
    resized = [Block(b.numa_affinity, b.type, new_size) if b is block else b for b in blocks]
    state.set_blocks(pod_uid, container, sort_blocks(resized))
    return None


def _human(n: int) -> str:
    return format_bytes_human(n)

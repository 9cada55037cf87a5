"""kubelet's validation of a restored state (``policy_static.go`` ``validateState``).

Pure: rebuild the machine state the saved entries imply (:func:`expected_state`)
and compare it with the saved one, as kubelet does at start.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

from nri_plugin.engine.state import POLICY_STATIC, Block, MemoryState, NodeState
from nri_plugin.errors import StateError

# -- restore validation (kubelet's validateState) ----------------------------

_MM = "[memorymanager]"
MSG_MACHINE_DIFFERS = f"{_MM} the expected machine state is different from the real one"


def _go_quote(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)  # close enough to Go's %q for names


# The name under which a pod-level reservation is counted in :func:`accounted_entries`
# (never a container's: it is not written to ``entries``).
POD_RESERVATION = "(pod-level reservation)"


def accounted_entries(
    entries: Mapping[str, Mapping[str, Sequence[Block]]],
    pod_entries: Mapping[str, Sequence[Block]],
) -> dict[str, dict[str, Sequence[Block]]]:
    """The blocks the machine state counts: every container's, except in a pod with a
    pod-level reservation (KEP-5526), where the reservation counts once and its
    containers' blocks, carved out of it, not again (kubelet's validateState with
    PodLevelResourceManagers)."""
    out: dict[str, dict[str, Sequence[Block]]] = {
        uid: dict(containers) for uid, containers in entries.items() if uid not in pod_entries
    }
    for uid, blocks in pod_entries.items():
        out[uid] = {POD_RESERVATION: blocks}
    return out


def expected_state(
    default: MemoryState,
    entries: Mapping[str, Mapping[str, Sequence[Block]]],
    *,
    groups_first: bool = False,
    pod_entries: Mapping[str, Sequence[Block]] | None = None,
) -> MemoryState:
    """``default`` with every block of ``entries`` applied as kubelet's restore does.

    ``default`` is the fresh machine state the policy builds (all free, no
    assignments, cells ``[self]``); it is not modified. Each block adds one
    assignment to every node of its mask, sets their cells to the mask, and
    takes min(free, remaining) bytes node by node in mask order. A pod with a
    reservation in ``pod_entries`` counts the reservation, not its containers.
    """
    out = MemoryState(policy_name=default.policy_name, machine=default.clone().machine)
    for uid, containers in entries.items():
        for name, blocks in containers.items():
            out.set_blocks(uid, name, list(blocks))
    for uid, blocks in (pod_entries or {}).items():
        out.set_pod_blocks(uid, list(blocks))
    counted = accounted_entries(entries, pod_entries) if pod_entries else entries
    passes = (True, False) if groups_first else (None,)
    for multi in passes:
        _apply_blocks(out, counted, multi)
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
        if saved.entries or saved.pod_entries:
            raise StateError(f"{_MM} machine state can not be empty when it has memory assignments")
        return
    for uid in saved.pod_entries:
        for name, blocks in saved.entries.get(uid, {}).items():
            _check_carved(saved, uid, name, blocks)
    pods = saved.pod_entries
    expected = expected_state(default, saved.entries, pod_entries=pods)
    difference = _first_difference(saved.machine, expected.machine)
    if difference is not None:
        # kubelet replays entries in hash-map order, which it cannot know either. One order
        # matters: a single-node block placed on a grouped node (kubelet lets single-node
        # masks through its group check) re-labels that node's cells, so it must come after
        # the group's blocks. Accept the state when that order reproduces it.
        regrouped = expected_state(default, saved.entries, groups_first=True, pod_entries=pods)
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


def _check_carved(saved: MemoryState, uid: str, name: str, blocks: Sequence[Block]) -> None:
    """A container of a pod-level pod holds a part of the pod's reservation: on its nodes,
    of its types, no larger."""
    reservation = {b.type: b for b in saved.pod_entries[uid]}
    for block in blocks:
        held = reservation.get(block.type)
        if held is None or held.numa_affinity != block.numa_affinity or block.size > held.size:
            raise StateError(
                f"{_MM} (pod: {uid}, container: {name}) the memory assignment is not a part of"
                f" the pod's pod-level reservation: {block.type} {block.size} on"
                f" {list(block.numa_affinity)}"
            )


def _unaccounted_bytes(state: MemoryState) -> str | None:
    """Where the state's bytes do not add up: per node and type free + reserved must be the
    allocatable, and over each set of nodes linked by cells or block masks the reserved
    bytes must be the sizes of the blocks placed there."""
    linked = _linked_nodes(state)
    placed: dict[tuple[int, str], int] = {}
    for containers in accounted_entries(state.entries, state.pod_entries).values():
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
    for containers in accounted_entries(state.entries, state.pod_entries).values():
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

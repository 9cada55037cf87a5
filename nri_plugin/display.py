"""Human-readable views of a topology and of a memory manager state."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from nri_plugin.engine.bitmask import format_cpulist
from nri_plugin.engine.state import Block, MemoryState
from nri_plugin.engine.topology import Topology, hugepage_resource_name
from nri_plugin.persist.format import FORM_WRITERS, Checkpoint
from nri_plugin.quantity import format_bytes_human


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip()
        for r in [header, *rows]
    ]
    return "\n".join(lines)


def format_topology_table(topology: Topology) -> str:
    header = ["NODE", "CPUS", "MEMORY", "HUGEPAGES"]
    rows = []
    for n in topology.nodes:
        pages = ", ".join(
            f"{hugepage_resource_name(size)[len('hugepages-') :]}: {format_bytes_human(total)}"
            for size, total in sorted(n.hugepages.items())
        )
        rows.append(
            [str(n.id), format_cpulist(n.cpus) or "-", format_bytes_human(n.memory), pages or "-"]
        )
    out = _table(header, rows)
    if topology.distances is not None:
        ids = topology.node_ids
        dist_rows = [[str(a)] + [str(topology.distances[(a, b)]) for b in ids] for a in ids]
        out += "\n\nDISTANCES\n" + _table(["NODE"] + [str(b) for b in ids], dist_rows)
    return out


def format_machine_table(state: MemoryState) -> str:
    """Each NUMA node's memory map: total, system reserved, allocatable, reserved, free."""
    header = [
        "NODE",
        "TYPE",
        "TOTAL",
        "SYSTEM-RESERVED",
        "ALLOCATABLE",
        "RESERVED",
        "FREE",
        "ASSIGNMENTS",
        "GROUP",
    ]
    rows = []
    for node_id in sorted(state.machine):
        node = state.machine[node_id]
        for type_ in sorted(node.memory_map, key=str.encode):
            t = node.memory_map[type_]
            rows.append(
                [
                    str(node_id),
                    type_,
                    format_bytes_human(t.total),
                    format_bytes_human(t.system_reserved),
                    format_bytes_human(t.allocatable),
                    format_bytes_human(t.reserved),
                    format_bytes_human(t.free),
                    str(node.number_of_assignments),
                    ",".join(map(str, node.cells)),
                ]
            )
    if not rows:
        return "(no machine state: policy None)"
    return _table(header, rows)


def format_entries_table(state: MemoryState) -> str:
    header = ["POD", "CONTAINER", "TYPE", "SIZE", "NUMA"]
    rows = []
    for pod_uid in sorted(state.entries):
        for name in sorted(state.entries[pod_uid]):
            for b in state.entries[pod_uid][name]:
                rows.append(
                    [
                        pod_uid,
                        name,
                        b.type,
                        format_bytes_human(b.size),
                        ",".join(map(str, b.numa_affinity)),
                    ]
                )
    if not rows:
        return "(no containers hold memory)"
    return _table(header, rows)


def format_state(state: MemoryState) -> str:
    return (
        f"policy: {state.policy_name}\n\n"
        + format_machine_table(state)
        + "\n\n"
        + format_entries_table(state)
    )


def format_pod_entries_table(pod_entries: Mapping[str, Sequence[Block]]) -> str:
    """Pod-level memory (kubelet's PodLevelResourceManagers): what each pod holds as a whole."""
    rows = [
        [uid, b.type, format_bytes_human(b.size), ",".join(map(str, b.numa_affinity))]
        for uid in sorted(pod_entries)
        for b in pod_entries[uid]
    ]
    if not rows:
        return "(no pod-level memory)"
    return _table(["POD", "TYPE", "SIZE", "NUMA"], rows)


def format_checkpoint(checkpoint: Checkpoint) -> str:
    """A checkpoint read from a file: its form, the state and any pod-level entries."""
    out = f"form: {checkpoint.form} ({FORM_WRITERS[checkpoint.form]})\n" + format_state(
        checkpoint.state
    )
    if checkpoint.pod_entries:
        out += (
            "\n\npod-level memory (reserved for the whole pod; the entries of its containers"
            " above are shares of it, not memory of their own):\n"
            + format_pod_entries_table(checkpoint.pod_entries)
        )
    return out

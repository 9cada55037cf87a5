"""Words for the node administrator: refusal messages and the decision log's values."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from nri_plugin.engine.hint import ProviderHints, TopologyHint
from nri_plugin.engine.manager import PROVIDER_DEVICES, AdmissionResult, MemoryManager
from nri_plugin.engine.state import Block
from nri_plugin.engine.topologymanager import TOPOLOGY_AFFINITY_ERROR
from nri_plugin.quantity import format_bytes_human

REFUSAL_PREFIX = TOPOLOGY_AFFINITY_ERROR + ":"


def request_text(memory: Mapping[str, int]) -> str:
    return ", ".join(f"{t}={format_bytes_human(v)}" for t, v in sorted(memory.items()))


def free_text(manager: MemoryManager, types: Iterable[str]) -> str:
    """Free memory of ``types`` per NUMA node, with each node's group when it has one."""
    wanted = sorted(set(types))
    parts = []
    for node_id, node in sorted(manager.state.machine.items()):
        free = [
            f"{t}={format_bytes_human(node.memory_map[t].free)}"
            for t in wanted
            if t in node.memory_map
        ]
        group = "" if len(node.cells) <= 1 else f" (group {','.join(map(str, node.cells))})"
        parts.append(f"node {node_id}: {' '.join(free)}{group}")
    return "; ".join(parts)


def device_hints_text(hints: ProviderHints) -> str:
    """The device manager's hints, per resource ("" when it gave none)."""
    if not hints:
        return ""
    parts = []
    for resource, lst in sorted(hints.items()):
        alternatives = "any" if lst is None else " | ".join(map(str, lst)) or "none fits"
        parts.append(f"{resource} {alternatives}")
    return "; device hints " + ", ".join(parts)


def policy_text(manager: MemoryManager) -> str:
    config = manager.config
    return (
        f"topology manager policy {config.topology_manager_policy},"
        f" scope {config.topology_manager_scope}"
    )


def refusal(
    manager: MemoryManager,
    pod_ref: str,
    container: str,
    memory: Mapping[str, int],
    result: AdmissionResult,
    *,
    cpu_nodes: Iterable[int] | None = None,
    sizing: str = "",
) -> str:
    """Why a container cannot be placed: request, free per node, best hint, policy."""
    hint = result.failed_affinity
    merged = "" if hint is None else f"; best hint {hint}"
    detail = (result.message or "").split(": ", 1)[-1]  # drop kubelet's "container x: "
    cpus = ""
    if cpu_nodes is not None:
        cpus = "; CPUs on NUMA nodes " + ",".join(map(str, sorted(cpu_nodes)))
    devices = device_hints_text(result.failed_hints.get(PROVIDER_DEVICES))
    pod_scope = f"; {sizing}" if sizing else ""
    return (
        f"{REFUSAL_PREFIX} pod {pod_ref} container {container}: {detail} ({result.reason})"
        f"; request {request_text(memory)}{cpus}{devices}{pod_scope}; free"
        f" {free_text(manager, memory)}{merged}; {policy_text(manager)}"
    )


def resize_refusal(
    manager: MemoryManager,
    pod_ref: str,
    container: str,
    memory: Mapping[str, int],
    reason: str,
) -> str:
    """Why an in-place resize is refused: the container, the request, free memory, why."""
    return (
        f"{REFUSAL_PREFIX} resize of pod {pod_ref} container {container} refused: {reason};"
        f" request {request_text(memory)}; free {free_text(manager, memory)};"
        f" inPlaceResize {manager.config.in_place_resize}"
    )


def hint_json(hint: TopologyHint | None) -> dict[str, object] | None:
    return None if hint is None else hint.to_json()


def providers_json(providers: Mapping[str, ProviderHints]) -> dict[str, object]:
    out: dict[str, object] = {}
    for provider, hints in providers.items():
        if hints is None:
            out[provider] = None
            continue
        out[provider] = {
            resource: None if lst is None else [h.to_json() for h in lst]
            for resource, lst in hints.items()
        }
    return out


def block_json(b: Block) -> dict[str, object]:
    return {"type": b.type, "size": b.size, "numaAffinity": list(b.numa_affinity)}

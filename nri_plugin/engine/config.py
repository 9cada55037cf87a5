"""The engine's settings: memory manager and topology manager, as kubelet names them.

Read and validated by :mod:`nri_plugin.inputs.config` (and
:mod:`nri_plugin.inputs.kubeletconfig`); the engine only reads these values.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from nri_plugin.engine.state import POLICY_STATIC

TOPOLOGY_POLICIES = ("none", "best-effort", "restricted", "single-numa-node")


TOPOLOGY_SCOPES = ("container", "pod")


OPTION_PREFER_CLOSEST = "prefer-closest-numa-nodes"


OPTION_MAX_ALLOWABLE = "max-allowable-numa-nodes"


# Kubelet's limit; the option may only raise it.
DEFAULT_MAX_ALLOWABLE_NUMA_NODES = 8


DEFAULT_MEMORY_DRIFT_TOLERANCE = 64 << 20


# memoryManagerPolicyOptions (KEP-6232): memory-drift-tolerance: auto | off | <quantity>
OPTION_MEMORY_DRIFT_TOLERANCE = "memory-drift-tolerance"


DRIFT_TOLERANCE_AUTO = "auto"  # the kernel image size plus AUTO_DRIFT_GRACE, read at start


DRIFT_TOLERANCE_OFF = "off"  # the exact comparison


AUTO_DRIFT_GRACE = 64 << 20


# memoryDriftBeyondTolerance: what a memory total that moved beyond the tolerance does
DRIFT_BEYOND_REFUSE = "refuse"  # refuse to start, as KEP-6232 does
DRIFT_BEYOND_ACCEPT_IF_FITS = "accept-if-fits"  # start while every recorded block still fits
DRIFT_BEYOND_MODES = (DRIFT_BEYOND_REFUSE, DRIFT_BEYOND_ACCEPT_IF_FITS)
# inPlaceResize: what a memory resize of a container holding blocks does (docs/simulate.md)
RESIZE_ACCOUNT = "account"  # the blocks follow the new limit on the container's own nodes
RESIZE_REFUSE = "refuse"  # refused, as kubelet's static policy refuses them
RESIZE_MODES = (RESIZE_ACCOUNT, RESIZE_REFUSE)


# podLevelResources: what the memory manager does with pods that set pod.spec.resources
# (KEP-2837); kubelet's two behaviours, by its PodLevelResourceManagers gate (KEP-5526)
POD_LEVEL_IGNORE = "ignore"  # the gate off, kubelet's default: such pods are left unpinned
POD_LEVEL_MANAGERS = "managers"  # the gate on: KEP-5526's pod and container scopes
POD_LEVEL_MODES = (POD_LEVEL_IGNORE, POD_LEVEL_MANAGERS)


SIGNAL_MEMORY_AVAILABLE = "memory.available"


# Kubelet's default hard eviction threshold for memory.
DEFAULT_EVICTION_HARD: Mapping[str, str] = {SIGNAL_MEMORY_AVAILABLE: "100Mi"}


@dataclass(frozen=True)
class ReservedMemory:
    """One (NUMA node, memory type) reservation of ``reservedMemory``, in bytes."""

    numa_node: int
    type: str
    size: int


@dataclass(frozen=True)
class Config:
    """Memory manager and topology manager settings (kubelet's names in snake case)."""

    policy: str = POLICY_STATIC
    topology_manager_policy: str = "none"
    topology_manager_scope: str = "container"
    prefer_closest_numa_nodes: bool = False
    max_allowable_numa_nodes: int = DEFAULT_MAX_ALLOWABLE_NUMA_NODES
    reserved_memory: tuple[ReservedMemory, ...] = ()
    # resource -> amount: bytes, except cpu (millicores) and pid (a count)
    kube_reserved: Mapping[str, int] | None = None
    system_reserved: Mapping[str, int] | None = None
    # eviction signal -> threshold text ("100Mi" or "10%")
    eviction_hard: Mapping[str, str] | None = None
    # how far a NUMA node's regular memory total may move between restarts and still be
    # accepted with the checkpoint (rebase.py), in bytes; 0: the exact comparison
    memory_drift_tolerance: int = DEFAULT_MEMORY_DRIFT_TOLERANCE
    # the setting as configured ("auto", "off" or a quantity); None: not configured, the
    # default above. "auto" is resolved at start (inputs/iomem.py); until then the
    # tolerance is 0
    memory_drift_tolerance_option: str | None = None
    memory_drift_beyond_tolerance: str = DRIFT_BEYOND_REFUSE
    in_place_resize: str = RESIZE_ACCOUNT
    pod_level_resources: str = POD_LEVEL_IGNORE
    # fake NUMA node -> host NUMA node for cpuset.mems with a fake topology (the daemon's,
    # not the engine's: decisions stay on the fake nodes; nri_plugin/tracker/nodemap.py)
    host_node_map: Mapping[int, int] | None = None

    def __post_init__(self) -> None:
        # inputs/config.py refuses bad values with the key's name; this guards other callers
        if self.pod_level_resources not in POD_LEVEL_MODES:
            raise ValueError(
                f"pod_level_resources: {self.pod_level_resources!r} is not one of"
                f" {', '.join(POD_LEVEL_MODES)}"
            )

    @property
    def pod_level_managers(self) -> bool:
        """Whether pods with pod-level resources are managed as KEP-5526 does."""
        return self.pod_level_resources == POD_LEVEL_MANAGERS

    def reserved(self, numa_node: int, type: str) -> int:
        """Bytes of ``type`` reserved on ``numa_node`` (0 if none)."""
        return sum(
            r.size for r in self.reserved_memory if r.numa_node == numa_node and r.type == type
        )

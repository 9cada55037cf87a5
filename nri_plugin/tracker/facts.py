"""What a front end tells the tracker about a pod or a container, in the domain's words.

The NRI handler builds these from NRI messages, the CRI proxy from CRI
requests and listings (both through :mod:`nri_plugin.frontends.nri_convert`);
the tracker reads nothing else. Values, no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from fractions import Fraction

from nri_plugin.engine.bitmask import nodes_of
from nri_plugin.engine.hint import DeviceHints
from nri_plugin.engine.pod import CPU, ContainerSpec
from nri_plugin.engine.state import MEMORY
from nri_plugin.engine.topology import Topology

# A container's state as the runtime tells it.
CREATED = "created"
RUNNING = "running"
EXITED = "exited"
UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class ContainerResources:
    """What the plugin reads of one container's resources (its OCI limits).

    One is kept for every tracked container, so it holds ints and tuples rather
    than a dict, a frozenset and Fractions of its own.
    """

    memory_limit: int  # bytes, 0 when there is none
    hugepage_limits: tuple[tuple[str, int], ...]  # (hugepages-<size>, bytes), non-zero only
    cpu_limit: Fraction | None  # cores, from quota/period; equal limits share one Fraction
    cpu_mask: int | None  # the cpuset, bit i for CPU i, when one is set
    # its cpu shares are not those of its cpu limit: kubelet wrote them from a cpu request
    # that differs from the limit (tracker/podlevel.py)
    cpu_request_differs: bool = False

    @property
    def memory(self) -> dict[str, int]:
        """Memory type -> bytes: the memory limit, then the hugepage limits (a new dict)."""
        out = {MEMORY: self.memory_limit} if self.memory_limit else {}
        out.update(self.hugepage_limits)
        return out

    @property
    def cpus(self) -> frozenset[int] | None:
        """The cpuset, when one is set."""
        return None if self.cpu_mask is None else frozenset(nodes_of(self.cpu_mask))

    def pinned_cpus(self, topology: Topology) -> frozenset[int] | None:
        """The CPUs the CPU manager pinned the container to, or None for the shared pool.

        A cpuset covering every CPU of the machine is the shared pool (CPU manager
        policy none, or a non-integer request): it gives no CPU-side hint, as
        kubelet's CPU manager gives none for such containers.
        """
        if self.cpu_mask is None:
            return None
        known = topology.cpu_mask
        mask = self.cpu_mask & known
        if not mask or mask == known:
            return None
        return frozenset(nodes_of(mask))

    def to_spec(self, name: str, *, init: bool = False) -> ContainerSpec:
        """The engine's view: a Guaranteed container's requests equal its limits."""
        amounts: dict[str, Fraction] = {k: Fraction(v) for k, v in self.memory.items()}
        if self.cpu_limit is not None:
            amounts[CPU] = self.cpu_limit
        return ContainerSpec(name=name, requests=dict(amounts), limits=dict(amounts), init=init)

    def updated(self, new: ContainerResources) -> ContainerResources:
        """These resources after an update that carries ``new`` (0 / empty: unchanged).

        containerd applies a CRI UpdateContainerResources onto the spec in force:
        a zero memory limit, an empty cpuset or no hugepage limit leaves the
        current value (kubelet's CPU manager updates only the cpuset).
        """
        hugepages = dict(self.hugepage_limits)
        hugepages.update(new.hugepage_limits)
        return ContainerResources(
            new.memory_limit or self.memory_limit,
            tuple(sorted(hugepages.items())),
            new.cpu_limit if new.cpu_limit is not None else self.cpu_limit,
            new.cpu_mask if new.cpu_mask is not None else self.cpu_mask,
            new.cpu_request_differs if new.cpu_limit is not None else self.cpu_request_differs,
        )


@dataclass(frozen=True, slots=True)
class PodFacts:
    """A pod sandbox as the runtime shows it."""

    uid: str
    sandbox_id: str
    name: str
    namespace: str
    # kubelet's QoS class, from the sandbox's cgroup parent (None: not a kubelet pod)
    qos: str | None
    # the pod's memory limit kubelet sends with the sandbox (kubelet >= 1.23): its own
    # sidecar-aware sum of the containers' limits, or the pod-level limit (KEP-2837)
    memory_limit: int | None
    # the pod's hugepage limits per type, when its cgroup shows them (kubelet sets the
    # pod cgroup's hugetlb limits to the pod's requests); None: unknown
    hugepage_limits: Mapping[str, int] | None = None
    # the pod's cpu limit kubelet sends with the sandbox (cores, from quota/period)
    cpu_limit: Fraction | None = None

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}" if self.name else self.uid


@dataclass(frozen=True, slots=True)
class ContainerFacts:
    """A container as the runtime shows it (an event's, or a Synchronize listing's)."""

    id: str
    name: str
    state: str
    # None when they could not be read (``error`` says why): the container is left alone
    resources: ContainerResources | None
    # kubelet's QoS class from the container's own cgroups path (when the pod's is unknown)
    qos: str | None = None
    # the cpuset.mems the runtime shows in force ("" when none)
    mems: str = ""
    # creation time in ns when the runtime says (NRI >= 0.10), else 0
    created_at: int = 0
    # the exit code when the runtime says (CRI ContainerStatus; NRI >= 0.10 may)
    exit_code: int | None = None
    # kubelet's io.kubernetes.container.restartCount annotation, when present
    restart_count: int | None = None
    error: str | None = None
    # the container's annotations (only read for our own, see nodemap.py)
    annotations: Mapping[str, str] = field(default_factory=dict)
    # the device manager's hints for the devices kubelet allocated to it, one list per
    # resource (from kubelet's pod-resources API); None: no devices, or not known
    device_hints: DeviceHints | None = None


@dataclass(frozen=True, slots=True)
class SandboxFacts:
    """A pod sandbox as the runtime's CRI ``ListPodSandbox`` shows it."""

    uid: str  # the pod's UID (the sandbox's metadata)
    sandbox_id: str
    ready: bool  # SANDBOX_READY; a stopped sandbox is NOTREADY until it is removed

"""Pods and containers as the policy sees them, and kubelet's QoS and request rules.

These are plain values built by the simulator (from a scenario) and by the
live plugin (from NRI data); the policy engine reads nothing else.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from fractions import Fraction

from nri_plugin.engine.hint import DeviceHints
from nri_plugin.engine.state import HUGEPAGES_PREFIX, is_memory_type

GUARANTEED = "Guaranteed"
BURSTABLE = "Burstable"
BEST_EFFORT = "BestEffort"
QOS_CLASSES = (GUARANTEED, BURSTABLE, BEST_EFFORT)

CPU = "cpu"
MEMORY = "memory"


@dataclass(frozen=True, slots=True)
class ContainerSpec:
    """One container: exact requests and limits (cpu in cores, memory in bytes)."""

    name: str
    requests: Mapping[str, Fraction] = field(default_factory=dict)
    limits: Mapping[str, Fraction] = field(default_factory=dict)
    init: bool = False
    # an init container with restartPolicy Always (a sidecar)
    restartable: bool = False
    # CPUs the CPU manager pinned it to (None: not pinned)
    cpuset: frozenset[int] | None = None
    # the device manager's hints for this container, one list per resource (kubelet's
    # device plugins); None: no opinion
    device_hints: DeviceHints | None = None

    @property
    def is_regular_init(self) -> bool:
        return self.init and not self.restartable

    def effective_requests(self) -> dict[str, Fraction]:
        """Requests after API defaulting: a limit without a request is also the request."""
        merged = dict(self.requests)
        for name, value in self.limits.items():
            merged.setdefault(name, value)
        return merged

    def unequal_requests_and_limits(self) -> str | None:
        """The first resource (cpu, memory, hugepages) whose request is not its limit.

        After API defaulting (a limit without a request is the request); cpu and
        memory must have a limit, as in a Guaranteed pod.
        """
        requests = self.effective_requests()
        for name in (CPU, MEMORY):
            if name not in self.limits or requests.get(name) != self.limits[name]:
                return name
        for name in sorted(set(requests) | set(self.limits), key=str.encode):
            if name.startswith(HUGEPAGES_PREFIX) and requests.get(name) != self.limits.get(name):
                return name
        return None

    def memory_requests(self) -> dict[str, int]:
        """Requested bytes per memory type (``memory``, ``hugepages-*``), zeros included."""
        out: dict[str, int] = {}
        for name, value in self.effective_requests().items():
            if is_memory_type(name):
                out[name] = int(value)
        return out


@dataclass(frozen=True, slots=True)
class PodSpec:
    uid: str
    name: str = ""
    namespace: str = "default"
    init_containers: tuple[ContainerSpec, ...] = ()
    containers: tuple[ContainerSpec, ...] = ()
    # from the pod status when known; computed from the containers otherwise
    qos_class: str | None = None
    # pod.spec.resources (KEP-2837): QoS is computed from them first, and kubelet's memory
    # manager leaves such pods unpinned while PodLevelResourceManagers is off
    pod_level_resources: bool = False
    pod_requests: Mapping[str, Fraction] = field(default_factory=dict)
    pod_limits: Mapping[str, Fraction] = field(default_factory=dict)

    def all_containers(self) -> tuple[ContainerSpec, ...]:
        """Init containers in order, then app containers in order (kubelet's admission order)."""
        return self.init_containers + self.containers

    def container(self, name: str) -> ContainerSpec | None:
        for c in self.all_containers():
            if c.name == name:
                return c
        return None

    def with_container(self, container: ContainerSpec) -> PodSpec:
        """This pod with the container of ``container``'s name replaced by it."""

        def swap(cs: tuple[ContainerSpec, ...]) -> tuple[ContainerSpec, ...]:
            return tuple(container if c.name == container.name else c for c in cs)

        return replace(
            self, init_containers=swap(self.init_containers), containers=swap(self.containers)
        )

    def qos(self) -> str:
        return self.qos_class if self.qos_class is not None else compute_qos(self)


def compute_qos(pod: PodSpec) -> str:
    """kubelet's ComputePodQOS over cpu and memory (hugepages do not count).

    Pod-level resources, when the pod sets them, decide alone (KEP-2837).
    """
    if pod.pod_level_resources:
        return _resource_qos(pod.pod_requests, pod.pod_limits)
    requests: dict[str, Fraction] = {}
    limits: dict[str, Fraction] = {}
    guaranteed = True
    for c in pod.all_containers():
        for name, value in c.effective_requests().items():
            if name in (CPU, MEMORY) and value != 0:
                requests[name] = requests.get(name, Fraction(0)) + value
        found = set()
        for name, value in c.limits.items():
            if name in (CPU, MEMORY) and value != 0:
                found.add(name)
                limits[name] = limits.get(name, Fraction(0)) + value
        if found != {CPU, MEMORY}:
            guaranteed = False
    if not requests and not limits:
        return BEST_EFFORT
    if guaranteed:
        for name, value in requests.items():
            if limits.get(name) != value:
                guaranteed = False
                break
    if guaranteed and len(requests) == len(limits):
        return GUARANTEED
    return BURSTABLE


def _resource_qos(requests: Mapping[str, Fraction], limits: Mapping[str, Fraction]) -> str:
    """kubelet's resourceQOS of one set of requirements (requests defaulted from limits)."""
    if not requests and not limits:
        return BEST_EFFORT
    effective = {**limits, **requests}
    qos = None
    for name in (CPU, MEMORY):
        request, limit = effective.get(name, Fraction(0)), limits.get(name, Fraction(0))
        if request != limit:
            return BURSTABLE
        this = BEST_EFFORT if request == 0 else GUARANTEED
        if qos is None:
            qos = this
        elif qos != this:
            return BURSTABLE
    assert qos is not None
    return qos


def pod_memory_requests(pod: PodSpec) -> dict[str, int]:
    """The pod-level request per memory type (kubelet's getPodRequestedResources).

    max(largest regular init container plus the sidecars started before it,
        sum of app containers plus all sidecars); only types that an app
    container requests appear.
    """
    by_init: dict[str, int] = {}
    by_sidecars: dict[str, int] = {}
    for c in pod.init_containers:
        for name, size in c.memory_requests().items():
            by_init.setdefault(name, 0)
            if c.restartable:
                by_sidecars[name] = by_sidecars.get(name, 0) + size
            elif by_sidecars.get(name, 0) + size > by_init[name]:
                by_init[name] = by_sidecars.get(name, 0) + size
    by_app: dict[str, int] = {}
    for c in pod.containers:
        for name, size in c.memory_requests().items():
            by_app[name] = by_app.get(name, 0) + size
    for name in by_app:
        by_app[name] += by_sidecars.get(name, 0)
        by_app[name] = max(by_app[name], by_init.get(name, 0))
    return by_app

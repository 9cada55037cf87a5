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

    def exclusive_eligible(self) -> bool:
        """kubelet's ``IsContainerEquivalentQOSGuaranteed``: cpu and memory requested, each
        request equal to its limit (after API defaulting). In a pod with pod-level
        resources only such containers get exclusive resources (KEP-5526)."""
        requests = self.effective_requests()
        for name in (CPU, MEMORY):
            request = requests.get(name, Fraction(0))
            if request == 0 or request != self.limits.get(name):
                return False
        return True

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
    # pod.spec.resources (KEP-2837), after the API server's defaulting
    # (:func:`default_pod_level_resources`): QoS is computed from them alone, and
    # kubelet's memory manager leaves such pods unpinned while PodLevelResourceManagers
    # is off (config ``podLevelResources: ignore``)
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
        return _pod_level_qos(pod.pod_requests, pod.pod_limits)
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


def _pod_level_qos(requests: Mapping[str, Fraction], limits: Mapping[str, Fraction]) -> str:
    """ComputePodQOS's pod-level branch, over the API-defaulted pod.spec.resources.

    Guaranteed needs both cpu and memory limits, and every cpu or memory request equal
    to its limit; a pod-level request the API server did not default from the limit
    (it takes the containers' aggregate when any container requests the resource)
    can make the pod Burstable.
    """
    positive_requests = {n: v for n, v in requests.items() if n in (CPU, MEMORY) and v > 0}
    positive_limits = {n: v for n, v in limits.items() if n in (CPU, MEMORY) and v > 0}
    guaranteed = True
    if limits and set(positive_limits) != {CPU, MEMORY}:
        guaranteed = False
    if not positive_requests and not positive_limits:
        return BEST_EFFORT
    if guaranteed:
        for name, value in positive_requests.items():
            if positive_limits.get(name) != value:
                guaranteed = False
                break
    if guaranteed and len(positive_requests) == len(positive_limits):
        return GUARANTEED
    return BURSTABLE


def is_pod_level_resource(name: str) -> bool:
    """component-helpers' IsSupportedPodLevelResource: cpu, memory and hugepages."""
    return name in (CPU, MEMORY) or name.startswith(HUGEPAGES_PREFIX)


def is_pod_level_resources_set(
    requests: Mapping[str, Fraction], limits: Mapping[str, Fraction]
) -> bool:
    """component-helpers' IsPodLevelResourcesSet: a supported resource at pod level."""
    return any(is_pod_level_resource(n) for n in (*requests, *limits))


def aggregate_container_resources(
    init_containers: tuple[ContainerSpec, ...],
    containers: tuple[ContainerSpec, ...],
    *,
    limits: bool = False,
) -> dict[str, Fraction]:
    """component-helpers' AggregateContainerRequests (or ...Limits) over every resource.

    max(sum of app containers plus all sidecars, each regular init container plus the
    sidecars started before it), KEP-753's formula; requests are the defaulted ones.
    """

    def of(c: ContainerSpec) -> dict[str, Fraction]:
        return dict(c.limits) if limits else c.effective_requests()

    total: dict[str, Fraction] = {}
    for c in containers:
        for name, value in of(c).items():
            total[name] = total.get(name, Fraction(0)) + value
    sidecars: dict[str, Fraction] = {}
    init_peak: dict[str, Fraction] = {}
    for c in init_containers:
        own = of(c)
        if c.restartable:
            for name, value in own.items():
                total[name] = total.get(name, Fraction(0)) + value
                sidecars[name] = sidecars.get(name, Fraction(0)) + value
            running = dict(sidecars)
        else:
            running = dict(own)
            for name, value in sidecars.items():
                running[name] = running.get(name, Fraction(0)) + value
        for name, value in running.items():
            if value > init_peak.get(name, Fraction(-1)):
                init_peak[name] = value
    for name, value in init_peak.items():
        if value > total.get(name, Fraction(-1)):
            total[name] = value
    return total


def default_pod_level_resources(
    init_containers: tuple[ContainerSpec, ...],
    containers: tuple[ContainerSpec, ...],
    requests: Mapping[str, Fraction],
    limits: Mapping[str, Fraction],
) -> tuple[dict[str, Fraction], dict[str, Fraction]]:
    """pod.spec.resources as the API server stores them (``pkg/apis/core/v1/defaults.go``
    ``SetDefaults_Pod``, after the containers' requests are defaulted from their limits):

    1. ``defaultHugePagePodLimits``: a hugepage size the containers limit, without a
       pod-level request or limit, gets the containers' aggregate as its pod-level limit;
    2. ``defaultPodRequests`` (only with pod-level limits): a cpu or memory request the
       containers make defaults to their aggregate, every other pod-level limit is also
       the request (hugepages included);
    3. ``defaultPodLimits`` (only with pod-level requests and no pod-level limit): cpu
       and memory limits default to the containers' aggregate when every container
       limits that resource.
    """
    pod_requests = dict(requests)
    pod_limits = dict(limits)
    if not pod_requests and not pod_limits:
        return pod_requests, pod_limits
    container_limits = aggregate_container_resources(init_containers, containers, limits=True)
    for name, value in container_limits.items():
        if name.startswith(HUGEPAGES_PREFIX) and name not in pod_requests:
            pod_limits.setdefault(name, value)
    if pod_limits:
        container_requests = aggregate_container_resources(init_containers, containers)
        for name, value in container_requests.items():
            if name in (CPU, MEMORY):  # the overcommittable pod-level resources
                pod_requests.setdefault(name, value)
        for name, value in pod_limits.items():
            if is_pod_level_resource(name):
                pod_requests.setdefault(name, value)
    elif any(is_pod_level_resource(n) for n in pod_requests):
        everyone = init_containers + containers
        for name, value in container_limits.items():
            if name in (CPU, MEMORY) and all(name in c.limits for c in everyone):
                pod_limits.setdefault(name, value)
    return pod_requests, pod_limits


def pod_level_memory_budget(pod: PodSpec) -> dict[str, int]:
    """kubelet's getPodRequestedResources with PodLevelResourceManagers: the pod-level
    requests of memory and hugepages (positive ones), the pod's whole budget."""
    return {
        name: int(value)
        for name, value in pod.pod_requests.items()
        if is_memory_type(name) and value > 0
    }


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


def exclusive_memory_requests(pod: PodSpec, c: ContainerSpec) -> dict[str, int]:
    """kubelet's getContainerRequestedResources with PodLevelResourceManagers: in a pod
    with pod-level resources only an individually Guaranteed container requests memory
    of its own (:meth:`ContainerSpec.exclusive_eligible`); the others none."""
    if pod.pod_level_resources and not c.exclusive_eligible():
        return {}
    return c.memory_requests()


def empty_pod_shared_pool(pod: PodSpec) -> str | None:
    """kubelet's validatePodScopeResources for memory (KEP-5526, "Rejected Configurations"):
    why the pod's budget leaves a container that needs the pod's shared pool without
    memory, or None.

    Sidecars and app containers run together: when one of them has no exclusive
    request, the exclusive requests of all of them must stay below the budget. A
    regular init container runs with the sidecars started before it: its exclusive
    request must fit what they leave, and without one, they must leave something.
    """
    budget = pod_level_memory_budget(pod)
    long_running: dict[str, int] = {}
    shared = False
    for c in pod.init_containers:
        requests = exclusive_memory_requests(pod, c)
        if not c.restartable:
            for name in sorted(budget, key=str.encode):
                pool = budget[name] - long_running.get(name, 0)
                if requests and requests.get(name, 0) > pool:
                    return (
                        f"pod rejected, largest exclusive init container requests"
                        f" {requests[name]} of {name}, but only {pool} available"
                    )
                if not requests and long_running.get(name, 0) >= budget[name]:
                    return (
                        f"pod rejected, pod has shared init containers but no {name}"
                        " available for them"
                    )
            continue
        if not requests:
            shared = True
        for name, size in requests.items():
            long_running[name] = long_running.get(name, 0) + size
    for c in pod.containers:
        requests = exclusive_memory_requests(pod, c)
        if not requests:
            shared = True
        for name, size in requests.items():
            long_running[name] = long_running.get(name, 0) + size
    if shared:
        for name in sorted(budget, key=str.encode):
            if long_running.get(name, 0) >= budget[name]:
                return (
                    f"pod rejected, sum of exclusive container {name} requests equals pod"
                    " budget, leaving no memory for shared containers"
                )
    return None

"""Pod admission as kubelet runs it: topology manager + memory manager over one state.

This is the piece both front ends call: the simulator feeds it whole pods
from a scenario, the live plugin feeds it containers as NRI reports them.
Pure: no I/O; the caller persists ``manager.state`` after each change.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction

from nri_plugin.engine.bitmask import format_mems, mask_of
from nri_plugin.engine.config import RESIZE_REFUSE, Config
from nri_plugin.engine.hint import DeviceHints, ProviderHints, TopologyHint, topology_hint
from nri_plugin.engine.machine import build_machine_state
from nri_plugin.engine.pod import GUARANTEED, ContainerSpec, PodSpec
from nri_plugin.engine.policy.base import AllocationError, EmptyPodSharedPoolError, Policy
from nri_plugin.engine.policy.none import NonePolicy
from nri_plugin.engine.policy.static import StaticPolicy
from nri_plugin.engine.state import MEMORY, POLICY_STATIC, Block, MemoryState, blocks_mask
from nri_plugin.engine.topology import Topology
from nri_plugin.engine.topologymanager import (
    EMPTY_AFFINITY,
    POLICY_NONE,
    SCOPE_POD,
    TOPOLOGY_AFFINITY_ERROR,
    TOPOLOGY_AFFINITY_MESSAGE,
    UNEXPECTED_ADMISSION_ERROR,
    MergeFocus,
    NUMAInfo,
    merge,
)
from nri_plugin.quantity import format_bytes_human

# kubelet's admission reason for a pod-level pod whose shared pool would be empty
# (pkg/kubelet/cm/admission ErrorReasonEmptyPodSharedPool, KEP-5526)
EMPTY_POD_SHARED_POOL_ERROR = "EmptyPodSharedPoolError"

# Hint providers in kubelet's registration order.
PROVIDER_CPU = "cpu"
PROVIDER_MEMORY = "memory"
PROVIDER_DEVICES = "devices"


@dataclass(frozen=True)
class ContainerDecision:
    """What admission decided for one container."""

    name: str
    init: bool
    # the memory manager's hints (what the static policy generated)
    hints: ProviderHints
    # every provider's answer, for decision logs
    provider_hints: dict[str, ProviderHints]
    affinity: TopologyHint
    allocations: tuple[Block, ...]
    # the pod's pod-level reservation when the container runs in its shared pool
    # (KEP-5526, pod scope): no blocks of its own, pinned to the pod's nodes
    pool: tuple[Block, ...] = ()

    @property
    def cpuset_mems(self) -> str:
        """``cpuset.mems`` as kubelet sets it: the union of the blocks' masks ("" = untouched)."""
        return format_mems(blocks_mask(self.allocations) | blocks_mask(self.pool))


@dataclass(frozen=True)
class AdmissionResult:
    pod_uid: str
    qos_class: str
    admitted: bool
    containers: tuple[ContainerDecision, ...] = ()
    reason: str | None = None
    message: str | None = None
    # the container whose hints or allocation failed
    failed_container: str | None = None
    failed_hints: dict[str, ProviderHints] = field(default_factory=dict)
    failed_affinity: TopologyHint | None = None
    # the pod-level reservation of an admitted pod (KEP-5526, pod scope)
    pod_allocations: tuple[Block, ...] = ()


@dataclass(frozen=True)
class ResizeResult:
    """What an in-place resize of one container did (docs/simulate.md, ``resize``)."""

    pod_uid: str
    container: str
    resized: bool
    # why it was refused (None when resized)
    reason: str | None
    # the container's blocks after the step
    allocations: tuple[Block, ...]
    # a refused grow: the bytes it needed on the container's nodes, and their free bytes
    needed: int = 0
    free: int = 0


class MemoryManager:
    """kubelet's memory manager with its topology manager, over one machine."""

    def __init__(
        self, topology: Topology, config: Config, restored: MemoryState | None = None
    ) -> None:
        self.topology = topology
        self.config = config
        self.numa = NUMAInfo(topology.node_ids, topology.distances)
        self.policy: Policy
        if config.policy == POLICY_STATIC:
            self.policy = StaticPolicy(
                build_machine_state(topology, config.reserved),
                pod_level_managers=config.pod_level_managers,
            )
        else:
            self.policy = NonePolicy()
        self.state = self.policy.default_state()
        if restored is not None:
            self._restore(restored)
        # specs of admitted pods (the simulator knows them; the plugin fills what NRI shows)
        self.pods: dict[str, PodSpec] = {}
        # containers of admitted pods that were removed one by one
        self._removed: dict[str, set[str]] = {}

    def _restore(self, restored: MemoryState) -> None:
        from nri_plugin.engine.restore import validate_restored

        validate_restored(restored, self.policy.default_state(), self.policy.name)
        self.state = restored
        self.policy.start(self.state)

    # -- admission -----------------------------------------------------------

    def admit(self, pod: PodSpec) -> AdmissionResult:
        """Admit a pod: init then app containers (topologymanager containerScope/podScope Admit)."""
        # Reusable init-container memory is per admission: memory of init containers
        # released since an earlier admission of the same pod must not be reused again
        # (kubelet never admits a pod UID twice without a restart emptying this).
        self.policy.forget_pod(pod.uid)
        qos = pod.qos()
        tm_policy = self.config.topology_manager_policy
        decisions: list[ContainerDecision] = []
        if self._pod_level_pod_scope(pod):
            return self._admit_pod_level(pod, qos)
        if tm_policy != POLICY_NONE and self.config.topology_manager_scope == SCOPE_POD:
            affinity, admit, providers = self.pod_affinity(pod)
            if not admit:
                return self._reject_pod_affinity(pod, qos, providers, affinity)
            for c in pod.all_containers():
                failure = self._allocate(pod, c, affinity)
                if failure is not None:
                    return self._reject(
                        pod, qos, UNEXPECTED_ADMISSION_ERROR, failure, c.name, providers, affinity
                    )
                decisions.append(self._decision(pod, c, providers, affinity))
        else:
            for c in pod.all_containers():
                decision_or_error = self.admit_container(pod, c)
                if isinstance(decision_or_error, AdmissionResult):
                    return decision_or_error
                decisions.append(decision_or_error)
        self.pods[pod.uid] = pod
        self._removed.pop(pod.uid, None)
        return AdmissionResult(pod.uid, qos, True, tuple(decisions))

    def _pod_level_pod_scope(self, pod: PodSpec) -> bool:
        """KEP-5526's pod scope: a pod with pod-level resources, PodLevelResourceManagers."""
        return (
            pod.pod_level_resources
            and self.config.pod_level_managers
            and self.config.topology_manager_scope == SCOPE_POD
        )

    def reserve_pod(
        self,
        pod_uid: str,
        name: str,
        namespace: str,
        budget: Mapping[str, int],
        cpuset: frozenset[int] | None,
        affinity: TopologyHint | None = None,
    ) -> AdmissionResult:
        """The live plugin's AllocatePod for a pod it sees one container at a time: reserve
        ``budget`` (memory type -> bytes) for the whole pod, carving nothing yet.

        The pod's hints are merged with the CPU hint of ``cpuset`` (its first container's)
        unless ``affinity`` is given (the nodes its containers already use).
        """
        amounts = {t: Fraction(size) for t, size in budget.items()}
        pod = PodSpec(
            pod_uid,
            name,
            namespace,
            containers=(ContainerSpec("pod", cpuset=cpuset),),
            qos_class=GUARANTEED,
            pod_level_resources=True,
            pod_requests=amounts,
            pod_limits=amounts,
        )
        return self._admit_pod_level(pod, GUARANTEED, keep=False, affinity=affinity)

    def carve(self, pod_uid: str, container: ContainerSpec) -> ContainerDecision | str:
        """A container's exclusive part of its pod's reservation (see :meth:`reserve_pod`),
        or why it cannot have one."""
        refusal = self.policy.carve(
            self.state, pod_uid, container.name, container.memory_requests()
        )
        if refusal is not None:
            return refusal
        held = self.state.pod_blocks(pod_uid) or []
        mask = blocks_mask(held)
        blocks = tuple(self.state.blocks(pod_uid, container.name) or ())
        return ContainerDecision(
            container.name, container.init, None, {}, TopologyHint(mask, True), blocks
        )

    def shared(self, pod_uid: str, container: ContainerSpec) -> ContainerDecision | None:
        """A container in its pod's shared pool: pinned to the reservation's nodes, no blocks."""
        held = self.state.pod_blocks(pod_uid)
        if held is None:
            return None
        return ContainerDecision(
            container.name,
            container.init,
            None,
            {},
            TopologyHint(blocks_mask(held), True),
            (),
            tuple(held),
        )

    def _admit_pod_level(
        self,
        pod: PodSpec,
        qos: str,
        *,
        keep: bool = True,
        affinity: TopologyHint | None = None,
    ) -> AdmissionResult:
        """Pod scope with pod-level resources (KEP-5526): one hint for the pod's budget,
        the budget reserved on it, the exclusive containers carved out of it, the others
        in its shared pool. With topology manager policy ``none`` the affinity is empty
        and the policy takes its default hint, as kubelet's AllocatePod does."""
        if affinity is None:
            affinity, admit, providers = self.pod_affinity(pod)
        else:
            admit, providers = True, {}
        if not admit:
            return self._reject_pod_affinity(pod, qos, providers, affinity)
        try:
            self.policy.allocate_pod(self.state, pod, affinity)
        except EmptyPodSharedPoolError as exc:
            return self._reject(
                pod, qos, EMPTY_POD_SHARED_POOL_ERROR, str(exc), None, providers, affinity
            )
        except AllocationError as exc:
            return self._reject(
                pod,
                qos,
                UNEXPECTED_ADMISSION_ERROR,
                f"pod {pod.uid}: Allocate failed due to {exc}, which is unexpected",
                None,
                providers,
                affinity,
            )
        decisions = tuple(self._decision(pod, c, providers, affinity) for c in pod.all_containers())
        if keep:
            self.pods[pod.uid] = pod
            self._removed.pop(pod.uid, None)
        held = tuple(self.state.pod_blocks(pod.uid) or ())
        return AdmissionResult(pod.uid, qos, True, decisions, pod_allocations=held)

    def admit_container(
        self, pod: PodSpec, container: ContainerSpec, *, release_pod_on_reject: bool = True
    ) -> ContainerDecision | AdmissionResult:
        """Container scope: hints, merge, allocate one container (the pod may be partial).

        On refusal an AdmissionResult with the reason is returned; the pod's
        containers allocated so far are released (kubelet rejects the whole
        pod) unless ``release_pod_on_reject`` is false: the live plugin sees
        containers one by one, and earlier ones may already be running.
        """
        qos = pod.qos()
        tm_policy = self.config.topology_manager_policy
        if tm_policy == POLICY_NONE:
            providers: dict[str, ProviderHints] = {}
            affinity = EMPTY_AFFINITY
        else:
            providers, merged_lists = self._container_providers(pod, container)
            affinity, admit = merge(
                tm_policy,
                merged_lists,
                self.numa,
                self.config.prefer_closest_numa_nodes,
            )
            if not admit:
                return self._reject(
                    pod,
                    qos,
                    TOPOLOGY_AFFINITY_ERROR,
                    f"container {container.name}: {TOPOLOGY_AFFINITY_MESSAGE}",
                    container.name,
                    providers,
                    affinity,
                    release=release_pod_on_reject,
                )
        return self.allocate_container(
            pod, container, affinity, providers, release_pod_on_reject=release_pod_on_reject
        )

    def allocate_container(
        self,
        pod: PodSpec,
        container: ContainerSpec,
        affinity: TopologyHint,
        providers: dict[str, ProviderHints] | None = None,
        *,
        release_pod_on_reject: bool = True,
    ) -> ContainerDecision | AdmissionResult:
        """Allocate one container on an affinity already chosen (pod scope, or after merge)."""
        providers = providers if providers is not None else {}
        failure = self._allocate(pod, container, affinity)
        if failure is not None:
            return self._reject(
                pod,
                pod.qos(),
                UNEXPECTED_ADMISSION_ERROR,
                failure,
                container.name,
                providers,
                affinity,
                release=release_pod_on_reject,
            )
        return self._decision(pod, container, providers, affinity)

    def pod_affinity(self, pod: PodSpec) -> tuple[TopologyHint, bool, dict[str, ProviderHints]]:
        """Pod scope: the pod-level hints merged once; (affinity, admit, providers)."""
        if self.config.topology_manager_policy == POLICY_NONE:
            return EMPTY_AFFINITY, True, {}
        providers, merged_lists = self._pod_providers(pod)
        affinity, admit = merge(
            self.config.topology_manager_policy,
            merged_lists,
            self.numa,
            self.config.prefer_closest_numa_nodes,
        )
        return affinity, admit, providers

    def readmit(self, pod: PodSpec, container: ContainerSpec) -> ContainerDecision | None:
        """Admit again a container that already holds blocks (restarted, or an earlier
        init container).

        Nothing is allocated; only the reuse bookkeeping is refreshed, as
        kubelet's Allocate does for a container it already knows.
        """
        blocks = self.state.blocks(pod.uid, container.name)
        if blocks is None:
            return None
        self.policy.allocate(self.state, pod, container, EMPTY_AFFINITY)
        return ContainerDecision(
            container.name,
            container.init,
            None,
            {},
            TopologyHint(blocks_mask(blocks), True),
            tuple(blocks),
        )

    def _allocate(self, pod: PodSpec, c: ContainerSpec, affinity: TopologyHint) -> str | None:
        try:
            self.policy.allocate(self.state, pod, c, affinity)
        except AllocationError as exc:
            return f"container {c.name}: Allocate failed due to {exc}, which is unexpected"
        return None

    def _decision(
        self,
        pod: PodSpec,
        c: ContainerSpec,
        providers: dict[str, ProviderHints],
        affinity: TopologyHint,
    ) -> ContainerDecision:
        blocks = self.state.blocks(pod.uid, c.name)
        pool = self.state.pod_blocks(pod.uid) if blocks is None else None
        return ContainerDecision(
            c.name,
            c.init,
            providers.get(PROVIDER_MEMORY),
            providers,
            affinity,
            tuple(blocks or ()),
            tuple(pool or ()),
        )

    def _reject_pod_affinity(
        self,
        pod: PodSpec,
        qos: str,
        providers: dict[str, ProviderHints],
        affinity: TopologyHint,
    ) -> AdmissionResult:
        """Pod scope: the topology manager admits no merged hint for the whole pod."""
        return self._reject(
            pod,
            qos,
            TOPOLOGY_AFFINITY_ERROR,
            f"pod {pod.uid}: {TOPOLOGY_AFFINITY_MESSAGE}",
            None,
            providers,
            affinity,
        )

    def _reject(
        self,
        pod: PodSpec,
        qos: str,
        reason: str,
        message: str,
        container: str | None,
        providers: dict[str, ProviderHints],
        affinity: TopologyHint,
        *,
        release: bool = True,
    ) -> AdmissionResult:
        if release:
            # kubelet's stale-state cleanup: a rejected pod keeps nothing
            for c in pod.all_containers():
                self.policy.remove_container(self.state, pod.uid, c.name)
            self.policy.release_pod(self.state, pod.uid)
            self.policy.forget_pod(pod.uid)
            self.pods.pop(pod.uid, None)
        return AdmissionResult(
            pod.uid, qos, False, (), reason, message, container, providers, affinity
        )

    # -- hint providers ------------------------------------------------------

    def _cpu_hint(self, cpusets: Sequence[frozenset[int]]) -> ProviderHints:
        if not cpusets:
            return None
        cpus: frozenset[int] = frozenset().union(*cpusets)
        return {"cpu": [topology_hint(mask_of(self.topology.nodes_of_cpus(cpus)), True)]}

    def _container_providers(
        self, pod: PodSpec, c: ContainerSpec
    ) -> tuple[dict[str, ProviderHints], list[ProviderHints]]:
        """Every provider's hints as reported, and the hint lists to merge (same outcome)."""
        guaranteed = pod.qos() == GUARANTEED
        cpusets = [c.cpuset] if guaranteed and c.cpuset is not None else []
        devices = None if c.device_hints is None else _device_provider(c.device_hints)
        cpu = self._cpu_hint(cpusets)
        focus = self._focus(cpu, devices)
        memory, to_merge = self.policy.focused_container_hints(self.state, pod, c, focus)
        providers = {PROVIDER_CPU: cpu, PROVIDER_MEMORY: memory, PROVIDER_DEVICES: devices}
        return providers, [cpu, to_merge, devices]

    def _pod_providers(self, pod: PodSpec) -> tuple[dict[str, ProviderHints], list[ProviderHints]]:
        guaranteed = pod.qos() == GUARANTEED
        cpusets = [c.cpuset for c in pod.all_containers() if guaranteed and c.cpuset is not None]
        # each container's list of each resource is merged as its own list; kubelet's
        # device manager gives one list per resource for the whole pod, which the
        # tracker passes as the hints of the one container it sizes the pod with
        devices: dict[str, list[TopologyHint] | None] = {}
        for c in pod.all_containers():
            if c.device_hints is not None:
                for resource, hints in _device_provider(c.device_hints).items():
                    devices[f"{resource}/{c.name}"] = hints
        cpu = self._cpu_hint(cpusets)
        device_hints: ProviderHints = devices or None
        focus = self._focus(cpu, device_hints)
        memory, to_merge = self.policy.focused_pod_hints(self.state, pod, focus)
        providers = {PROVIDER_CPU: cpu, PROVIDER_MEMORY: memory, PROVIDER_DEVICES: device_hints}
        return providers, [cpu, to_merge, device_hints]

    def _focus(self, *others: ProviderHints) -> MergeFocus:
        """The other providers' hints, so the memory hints to merge can be few."""
        return MergeFocus(
            self.config.topology_manager_policy,
            others,
            self.numa,
            self.config.prefer_closest_numa_nodes,
        )

    # -- lifecycle -----------------------------------------------------------

    def start(self, pod_uid: str) -> list[str] | None:
        """The pod's containers start: release its finished regular init containers.

        Returns the released init containers' names, or None when the pod is
        not an admitted pod.
        """
        pod = self.pods.get(pod_uid)
        if pod is None:
            return None
        released = []
        for c in pod.init_containers:
            if c.restartable:
                continue
            if self.policy.remove_container(self.state, pod_uid, c.name):
                released.append(c.name)
        return released

    def remove_pod(self, pod_uid: str) -> bool:
        pod = self.pods.pop(pod_uid, None)
        self._removed.pop(pod_uid, None)
        known = pod is not None or pod_uid in self.state.entries
        names = [c.name for c in pod.all_containers()] if pod is not None else []
        names += [n for n in self.state.entries.get(pod_uid, {}) if n not in names]
        for name in names:
            self.policy.remove_container(self.state, pod_uid, name)
        known = self.policy.release_pod(self.state, pod_uid) or known
        self.policy.forget_pod(pod_uid)
        return known

    def resize(self, pod_uid: str, name: str, spec: ContainerSpec) -> ResizeResult:
        """In-place resize of one container to ``spec``'s resources.

        A container that holds blocks gets them resized on its own nodes, or the
        resize is refused with nothing changed (:mod:`.policy.resize`); one without
        blocks is resized with no effect on the state. The recorded pod spec (when
        the pod was admitted here) takes the new resources.
        """
        pod = self.pods.get(pod_uid)
        blocks = self.state.blocks(pod_uid, name)
        removed = name in self._removed.get(pod_uid, ())
        old = None if pod is None or removed else pod.container(name)
        if blocks is None and old is None:
            return ResizeResult(pod_uid, name, False, _unknown(pod_uid, name, pod, removed), ())
        if blocks is not None:
            refusal = self._resize_refusal(blocks, spec)
            if refusal is None:
                outcome = self.policy.resize(self.state, pod_uid, name, spec.memory_requests())
                if outcome is not None:
                    return ResizeResult(
                        pod_uid,
                        name,
                        False,
                        outcome.reason,
                        tuple(blocks),
                        outcome.needed,
                        outcome.free,
                    )
            else:
                return ResizeResult(pod_uid, name, False, refusal, tuple(blocks))
        if pod is not None and old is not None:
            resized = ContainerSpec(
                old.name,
                spec.requests,
                spec.limits,
                init=old.init,
                restartable=old.restartable,
                cpuset=old.cpuset,
                device_hints=old.device_hints,
            )
            self.pods[pod_uid] = pod.with_container(resized)
        return ResizeResult(
            pod_uid, name, True, None, tuple(self.state.blocks(pod_uid, name) or ())
        )

    def _resize_refusal(self, blocks: Sequence[Block], spec: ContainerSpec) -> str | None:
        """Why a container holding ``blocks`` cannot take ``spec``, before any accounting."""
        unequal = spec.unequal_requests_and_limits()
        if unequal:
            return f"{unequal}: requests must equal limits (the pod would no longer be Guaranteed)"
        if self.config.in_place_resize == RESIZE_REFUSE:
            size = next((b.size for b in blocks if b.type == MEMORY), 0)
            wanted = spec.memory_requests().get(MEMORY, 0)
            if wanted != size:
                return (
                    f"memory {format_bytes_human(size)} -> {format_bytes_human(wanted)}:"
                    f" inPlaceResize is {RESIZE_REFUSE} (kubelet's static policy refuses"
                    " memory resizes of Guaranteed pods)"
                )
        return None

    def adopt(self, pod: PodSpec, container: ContainerSpec, mask: int) -> tuple[Block, ...]:
        """Record a running container that already carries ``cpuset.mems`` = ``mask``.

        Used when the checkpoint is lost: the blocks are rebuilt from what the
        runtime shows, applied as an allocation on exactly that mask.
        """
        self.policy.adopt(self.state, pod, container, mask)
        return tuple(self.state.blocks(pod.uid, container.name) or [])

    def remove_container(self, pod_uid: str, name: str) -> bool:
        pod = self.pods.get(pod_uid)
        removed = self._removed.setdefault(pod_uid, set()) if pod is not None else set()
        known = self.state.blocks(pod_uid, name) is not None or (
            pod is not None and pod.container(name) is not None and name not in removed
        )
        self.policy.remove_container(self.state, pod_uid, name)
        removed.add(name)
        # kubelet gives a pod-level reservation back with the pod's last container (a pod
        # known only from its blocks keeps it until the pod is removed)
        if (
            pod is not None
            and self.state.carved(pod_uid)
            and {c.name for c in pod.all_containers()} <= removed
        ):
            known = self.policy.release_pod(self.state, pod_uid) or known
        return known


def _device_provider(hints: DeviceHints) -> dict[str, list[TopologyHint] | None]:
    """A container's device hints as the device manager's answer: resource -> hints."""
    return {resource: None if h is None else list(h) for resource, h in hints.items()}


def _unknown(pod_uid: str, name: str, pod: PodSpec | None, removed: bool) -> str:
    if pod is None:
        return f"pod {pod_uid} is not admitted"
    if removed:
        return f"container {name} of pod {pod_uid} was removed"
    return f"pod {pod_uid} has no container {name}"

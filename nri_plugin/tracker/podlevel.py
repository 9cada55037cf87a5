"""Telling a pod with pod-level resources (KEP-2837) from what the runtime shows.

kubelet's memory manager decides on the pod spec (``IsPodLevelResourcesSet``);
the runtime never sees ``pod.spec.resources`` itself, only what kubelet derives
from it (``pkg/kubelet/kuberuntime``):

* the sandbox's pod resources (CRI ``LinuxPodSandboxConfig.resources``, NRI
  ``PodSandbox.linux.pod_resources``): ``calculateSandboxResources`` sends
  ``PodLimits``, the pod-level limits when they are set, else the containers'
  aggregate (max(apps + sidecars, each init container + the sidecars before it));
* each container's limits: ``getMemoryLimit`` / ``getCPULimit`` give a container
  without a limit of its own the pod-level limit, so in a Guaranteed pod no
  container shows "no limit" (kubelet 1.32 and later); its cpu shares come from
  its own cpu request when it has one (``calculateLinuxResources``), else from
  the limit it is given;
* kubelet's pod-resources API fills ``PodResources.cpu_ids`` / ``memory`` only
  for pods it manages at pod level (``PodLevelResourceManagers``).

What is certain, and used here (docs/lifecycle.md, "Pod-level resources"):

1. the pod-resources API reports pod-level allocations for the pod;
2. a container of a Guaranteed pod without a memory limit;
3. a container of a Guaranteed pod whose cpu shares are not those of its cpu
   limit: its cpu request differs from its limit, which a Guaranteed pod allows
   only when its QoS comes from pod-level resources;
4. the memory limits of the pod's containers alive together add up to more than
   the sandbox's memory limit: without pod-level resources that limit is at least
   their sum (a container without a limit of its own shows the whole pod-level
   limit, so two such, or one and any other, always do);
5. once kubelet's pod-resources API has listed the pod's app containers and
   sidecars and all of them were created while the plugin watched the pod from its
   sandbox on, kubelet's aggregate of their limits (with the init containers seen)
   is below the sandbox's limit: only a pod-level limit is larger.

Signals 4 and 5 compare the sandbox's limit with the containers' limits at
their first creation, which the plugin must have seen (an in-place resize
changes a container's limit later; kubelet then updates the pod's limit with
``UpdatePodSandboxResources``, which the plugin does not follow, and signal 5
is not used after a resize). After a restart of the plugin they are not used
for a pod whose containers hold blocks: the run that pinned them judged them.

What cannot be told: a pod-level pod whose containers all set limits that add
up to the pod-level limit (it looks exactly like a pod without pod-level
resources), one with a single container without a limit (it shows the
pod-level limit as its own), and one whose containers all set limits, until
the last of them exists (without the pod-resources API: never).
"""

from __future__ import annotations

from collections.abc import Mapping
from fractions import Fraction

from nri_plugin.engine.hint import TopologyHint
from nri_plugin.engine.manager import (
    EMPTY_POD_SHARED_POOL_ERROR,
    AdmissionResult,
    ContainerDecision,
)
from nri_plugin.engine.pod import GUARANTEED, ContainerSpec, PodSpec
from nri_plugin.engine.state import MEMORY, blocks_mask
from nri_plugin.engine.topologymanager import SCOPE_POD, UNEXPECTED_ADMISSION_ERROR
from nri_plugin.tracker import messages
from nri_plugin.tracker.core import TrackerState
from nri_plugin.tracker.facts import EXITED, ContainerFacts, ContainerResources
from nri_plugin.tracker.records import INIT, PodRecord

# kubelet's pkg/kubelet/cm (helpers_linux.go): cpu shares and CFS quota from millicores
MIN_SHARES = 2
MAX_SHARES = 262144
SHARES_PER_CPU = 1024
MILLI_CPU_TO_CPU = 1000
MIN_QUOTA_PERIOD = 1000
# kubelet's cpuCFSQuotaPeriod must be between 1ms and 1s (validation.go)
MIN_PERIOD = 1000
MAX_PERIOD = 1_000_000
# far above any machine's CPUs: a larger quota is no limit kubelet wrote
MAX_CORES = 1 << 20

SIGNAL_POD_RESOURCES = "kubelet's pod-resources API reports pod-level allocations for the pod"


def milli_cpu_to_shares(milli: int) -> int:
    """kubelet's MilliCPUToShares."""
    if milli == 0:
        return MIN_SHARES
    return min(MAX_SHARES, max(MIN_SHARES, milli * SHARES_PER_CPU // MILLI_CPU_TO_CPU))


def milli_cpu_to_quota(milli: int, period: int) -> int:
    """kubelet's MilliCPUToQuota (0: no quota)."""
    if milli == 0:
        return 0
    return max(MIN_QUOTA_PERIOD, milli * period // MILLI_CPU_TO_CPU)


def cpu_request_differs(shares: int, quota: int, period: int) -> bool:
    """Whether no cpu request equal to the limit gives both ``shares`` and ``quota``.

    kubelet writes ``shares`` from the request and ``quota`` from the limit; the
    millicores a quota can come from form a range, and shares grow with millicores.
    False when the quota is not one kubelet writes (nothing can be said then).
    """
    if quota < MIN_QUOTA_PERIOD or not MIN_PERIOD <= period <= MAX_PERIOD:
        return False
    if quota // period > MAX_CORES:
        return False  # not a limit kubelet writes for any machine
    low = 1 if quota == MIN_QUOTA_PERIOD else -(-quota * MILLI_CPU_TO_CPU // period)
    high = ((quota + 1) * MILLI_CPU_TO_CPU - 1) // period
    if low > high or milli_cpu_to_quota(low, period) != quota:
        return False
    return not milli_cpu_to_shares(low) <= shares <= milli_cpu_to_shares(high)


def container_signal(name: str, resources: ContainerResources) -> str:
    """Signals 2 and 3, from one container of a Guaranteed pod ("" when none)."""
    if not resources.memory_limit:
        return f"container {name} of a Guaranteed pod has no memory limit"
    if resources.cpu_request_differs:
        return (
            f"container {name}'s cpu shares are not those of its cpu limit: its request differs"
            " from its limit in a Guaranteed pod"
        )
    return ""


def pod_signal(record: PodRecord) -> str:
    """Signals 4 and 5, from the pod's containers and the sandbox's memory limit."""
    limit = record.memory_limit
    if limit is None:
        return ""
    # each container's limit at its first creation (an in-place resize changes a
    # container's limit, not what the sandbox's was computed from); containers whose first
    # creation the plugin did not see do not count
    created = record.created_limits
    alive = sorted({c.name for c in record.containers.values() if c.exited is None} & set(created))
    total = sum(created[n] for n in alive)
    # kubelet sums quantities and rounds once; a container's limit is rounded up on its
    # own: up to a byte each
    if total > limit + len(alive):
        return (
            f"the memory limits of its containers {', '.join(alive)} add up to"
            f" {total}, above the pod's memory limit {limit}"
        )
    if record.listed is None or not record.seen_from_start or record.resized:
        return ""
    if not record.listed <= record.first_created.keys():
        return ""
    order = sorted(record.first_created, key=record.first_created.__getitem__)
    if not set(order) <= created.keys():
        return ""
    long_running = 0
    init_peak = 0
    for n in order:
        kind = record.classify(n)
        if kind is not None and kind[0] == INIT:
            init_peak = max(init_peak, long_running + created[n])
        else:
            long_running += created[n]
    aggregate = max(long_running, init_peak)
    if aggregate + len(order) < limit:
        return (
            f"kubelet's aggregate of its containers' memory limits is {aggregate}, below the"
            f" pod's memory limit {limit}"
        )
    return ""


def looks_exclusive(record: PodRecord, resources: ContainerResources) -> bool:
    """Whether a container of a pod-level pod looks individually Guaranteed (kubelet's
    ``IsContainerEquivalentQOSGuaranteed``: cpu and memory limits of its own, each equal
    to its request).

    A limit of its own shows below the pod's: a container showing the pod's whole
    memory or cpu limit is taken for one without a limit (the two cannot be told
    apart); its memory request cannot be seen at all.
    """
    if not resources.memory_limit or resources.cpu_request_differs:
        return False
    if record.memory_limit is not None and resources.memory_limit >= record.memory_limit:
        return False
    if resources.cpu_limit is None or record.cpu_limit is None:
        # no CFS quota (kubelet's cpuCFSQuota off, or exclusive CPUs, whose quota kubelet
        # lifts): the memory limit alone says
        return True
    return resources.cpu_limit < record.cpu_limit


class PodLevelPods(TrackerState):
    """Pods that set pod-level resources (KEP-2837), on the tracker's state: left unpinned
    as kubelet leaves them by default, or managed as KEP-5526 does with
    ``podLevelResources: managers``."""

    def _found_pod_level(self, record: PodRecord, signal: str, creating: str = "") -> None:
        """The pod sets pod-level resources (``signal`` says how that is known): what its
        containers pinned so far hold follows the mode (``creating``: the container being
        created, which its own admission handles)."""
        record.pod_level = signal
        config = self.manager.config
        uid = record.uid
        self._log.info(
            "pod-level resources found",
            pod=record.ref,
            pod_uid=uid,
            signal=signal,
            pod_level_resources=config.pod_level_resources,
        )
        held = list(self.manager.state.entries.get(uid, {}))
        if not held:
            return
        if config.pod_level_managers and config.topology_manager_scope == SCOPE_POD:
            self._into_pod_reservation(record, creating)
            return
        release = [
            n
            for n in held
            if not config.pod_level_managers
            or (res := record.resources.get(n)) is None
            or not looks_exclusive(record, res)
        ]
        unpinned = []
        for name in release:
            self.manager.remove_container(uid, name)
            owner = self.owners.pop((uid, name), None)
            if owner and owner != creating and self._live(record, owner):
                self._updates.append((owner, self._unpinned_mems()))
                unpinned.append(name)
        if release:
            self._log.info(
                "released",
                pod_uid=uid,
                containers=release,
                unpinned=unpinned,
                reason="pod-level resources",
            )
            self._changed()

    def _pod_budget(self, record: PodRecord, resources: ContainerResources) -> dict[str, int]:
        """A pod-level pod's budget as the node shows it: the sandbox's memory limit (the
        pod-level limit, which is the request of a Guaranteed pod) and the pod cgroup's
        hugepage limits (else the first container's)."""
        assert record.memory_limit is not None
        budget = {MEMORY: record.memory_limit}
        hugepages = record.hugepage_limits
        budget.update(hugepages if hugepages is not None else dict(resources.hugepage_limits))
        return {t: size for t, size in budget.items() if size}

    def _admit_in_reservation(
        self, record: PodRecord, spec: ContainerSpec, resources: ContainerResources
    ) -> ContainerDecision | AdmissionResult:
        """KEP-5526's pod scope, one container at a time: the pod's budget is reserved at
        its first container; a container that looks individually Guaranteed is carved out
        of it, the others share the rest (pinned to the reservation's nodes). A container
        that would empty the shared pool while a container needs it is refused, as kubelet
        refuses such a pod (EmptyPodSharedPoolError)."""
        manager = self.manager
        state = manager.state
        uid = record.uid
        if not state.carved(uid):
            if record.memory_limit is None:
                return self._pod_level_refusal(
                    record, spec.name, "the sandbox shows no pod memory limit to reserve"
                )
            budget = self._pod_budget(record, resources)
            result = manager.reserve_pod(uid, record.name, record.namespace, budget, spec.cpuset)
            if not result.admitted:
                return AdmissionResult(
                    uid, GUARANTEED, False, (), result.reason, result.message, spec.name,
                    result.failed_hints, result.failed_affinity,
                )  # fmt: skip
            record.affinity = TopologyHint(blocks_mask(state.pod_blocks(uid) or ()), True)
            record.sizing = (
                f"pod-level resources: the pod's budget was reserved when its first container"
                f" {spec.name} was created: {messages.request_text(budget)} (the sandbox's"
                " pod limit and the pod cgroup's hugepages)"
            )
        budget = {b.type: b.size for b in state.pod_blocks(uid) or ()}
        taken: dict[str, int] = {}
        for name, blocks in state.entries.get(uid, {}).items():
            if name != spec.name:
                for b in blocks:
                    taken[b.type] = taken.get(b.type, 0) + b.size
        if looks_exclusive(record, resources):
            shared = sorted(
                c.name
                for c in record.containers.values()
                if c.exited is None and c.name != spec.name and state.blocks(uid, c.name) is None
            )
            after = taken.get(MEMORY, 0) + resources.memory_limit
            if shared and after >= budget.get(MEMORY, 0):
                return self._pod_level_refusal(
                    record,
                    spec.name,
                    f"its memory would use up the pod's budget while {', '.join(shared)} run"
                    " in the pod's shared pool",
                    EMPTY_POD_SHARED_POOL_ERROR,
                )
            carved = manager.carve(uid, spec)
            if isinstance(carved, str):
                return self._pod_level_refusal(record, spec.name, carved)
            return carved
        if taken.get(MEMORY, 0) >= budget.get(MEMORY, 0):
            return self._pod_level_refusal(
                record,
                spec.name,
                "the exclusive containers use up the pod's budget, leaving no memory for its"
                " shared pool",
                EMPTY_POD_SHARED_POOL_ERROR,
            )
        decision = manager.shared(uid, spec)
        assert decision is not None
        return decision

    def _pod_level_refusal(
        self, record: PodRecord, name: str, why: str, reason: str = UNEXPECTED_ADMISSION_ERROR
    ) -> AdmissionResult:
        return AdmissionResult(
            record.uid, GUARANTEED, False, (), reason, f"pod-level resources: {why}", name
        )

    def _into_pod_reservation(self, record: PodRecord, creating: str) -> None:
        """Pod scope with ``podLevelResources: managers``: a pod found to set pod-level
        resources after some of its containers were pinned one by one gets its budget
        reserved on the nodes they use; those that look individually Guaranteed are carved
        out of it, the others join its shared pool. When the budget does not fit there,
        they keep what they hold (logged)."""
        manager = self.manager
        state = manager.state
        uid = record.uid
        held = {n: list(state.blocks(uid, n) or ()) for n in state.entries.get(uid, {})}
        mask = blocks_mask(b for blocks in held.values() for b in blocks)
        if record.memory_limit is None or not mask:
            return
        first = next(iter(record.resources.values()))
        budget = self._pod_budget(record, first)
        nodes = [n for n in manager.topology.node_ids if mask >> n & 1]
        for type_, size in budget.items():
            free = sum(state.machine[n].table(type_).free for n in nodes if n in state.machine)
            back = sum(b.size for blocks in held.values() for b in blocks if b.type == type_)
            if free + back < size:
                self._log.error(
                    "pod-level reservation does not fit", pod=record.ref, pod_uid=uid,
                    budget=messages.request_text(budget), cpuset_mems=self._mems_text(mask),
                    containers=sorted(held),
                )  # fmt: skip
                return
        for name in held:
            manager.remove_container(uid, name)
        result = manager.reserve_pod(
            uid, record.name, record.namespace, budget, None, affinity=TopologyHint(mask, True)
        )
        if not result.admitted:
            for name, blocks in held.items():  # put back what they held, as it was
                spec = ContainerSpec(name, {b.type: Fraction(b.size) for b in blocks})
                pod = PodSpec(uid, record.name, record.namespace, (), (spec,), GUARANTEED)
                manager.adopt(pod, spec, blocks_mask(blocks))
            self._log.error(
                "pod-level reservation refused", pod=record.ref, pod_uid=uid,
                message=result.message,
            )  # fmt: skip
            return
        carved = []
        for name in held:
            res = record.resources.get(name)
            if (
                res is not None
                and looks_exclusive(record, res)
                and isinstance(manager.carve(uid, res.to_spec(name)), ContainerDecision)
            ):
                carved.append(name)
        pool = blocks_mask(state.pod_blocks(uid) or ())
        record.affinity = TopologyHint(pool, True)
        for c in record.containers.values():
            if c.id != creating and c.state != EXITED:
                self._updates.append((c.id, self._mems_text(pool)))
        self._log.info(
            "pod-level reservation", pod=record.ref, pod_uid=uid,
            budget=messages.request_text(budget), cpuset_mems=self._mems_text(pool),
            carved=carved, shared=sorted(set(held) - set(carved)),
        )  # fmt: skip
        self._changed()

    def _left_alone(self, record: PodRecord, resources: ContainerResources) -> bool:
        """A container of a pod-level pod the plugin does not pin, or pins with its pod."""
        if not record.pod_level:
            return False
        config = self.manager.config
        if not config.pod_level_managers:
            return True
        if config.topology_manager_scope == SCOPE_POD:
            # a container in the pod's shared pool holds no blocks of its own
            return self.manager.state.carved(record.uid)
        return not looks_exclusive(record, resources)

    def _pod_level_at_sync(self, live: Mapping[tuple[str, str], ContainerFacts]) -> None:
        """Which listed pods set pod-level resources, from what the runtime shows now (a
        reservation in the checkpoint says it too); what their containers hold follows."""
        if not self.handles:
            return
        for record in self.pods.values():
            if record.pod_level:
                continue
            if self.manager.state.carved(record.uid):
                record.pod_level = "its pod-level reservation in the checkpoint"
                continue
            if record.qos != GUARANTEED:
                continue
            signal = ""
            for (uid, name), c in live.items():
                if uid == record.uid and c.resources is not None:
                    signal = signal or container_signal(name, c.resources)
            if not signal and not self.manager.state.entries.get(record.uid):
                # a pod whose containers hold blocks was judged by the run that pinned them,
                # which saw its resizes; limits compared with the sandbox's would take a
                # grown container for a pod-level one
                signal = pod_signal(record)
            if signal:
                self._found_pod_level(record, signal)

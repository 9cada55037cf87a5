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

from nri_plugin.tracker.facts import ContainerResources
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

"""From NRI's view of a pod and a container to the policy's PodSpec/ContainerSpec.

kubelet does not tell the runtime a pod's QoS class or a container's requests
directly; they are read back the way the reference (nri-protocol.md §6)
describes: the QoS class from the pod's cgroup parent (cgroupfs and systemd
drivers), the memory and hugepage requests from the container's limits
(request == limit for Guaranteed pods), the pinned CPUs from its cpuset.
"""

from __future__ import annotations

import functools
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from fractions import Fraction

from nri_plugin.engine.bitmask import parse_cpulist
from nri_plugin.engine.pod import BEST_EFFORT, BURSTABLE, CPU, GUARANTEED, MEMORY, ContainerSpec
from nri_plugin.engine.topology import Topology, hugepage_resource_name
from nri_plugin.errors import InputError
from nri_plugin.nri.gen import nri_pb2 as api

LABEL_POD_UID = "io.kubernetes.pod.uid"
LABEL_CONTAINER_NAME = "io.kubernetes.container.name"

_BURSTABLE = re.compile(r"(?:^|[/:._-])burstable(?:[/:._-]|$)")
_BEST_EFFORT = re.compile(r"(?:^|[/:._-])besteffort(?:[/:._-]|$)")
_KUBEPODS = re.compile(r"(?:^|[/:._-])kubepods(?:[/:._-]|$)")
_PAGE_SIZE = re.compile(r"([0-9]+)(KB|MB|GB|TB|PB)")
_UNITS = {"KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30, "TB": 1 << 40, "PB": 1 << 50}

# int64 bounds: OCI values are int64; anything outside is refused as malformed
_INT64_MAX = (1 << 63) - 1
# Page sizes Linux has on any architecture: 4KB (base pages) up to 16GB (ppc64).
_MIN_PAGE_SIZE = 4 << 10
_MAX_PAGE_SIZE = 16 << 30
_MAX_PAGE_SIZE_TEXT = 32


def qos_from_cgroup(path: str) -> str | None:
    """kubelet's QoS class from a cgroup parent or cgroups path; None outside kubepods."""
    if not path or not _KUBEPODS.search(path):
        return None
    if _BEST_EFFORT.search(path):
        return BEST_EFFORT
    if _BURSTABLE.search(path):
        return BURSTABLE
    return GUARANTEED


def pod_qos(pod: api.PodSandbox, container: api.Container | None = None) -> str | None:
    qos = qos_from_cgroup(pod.linux.cgroup_parent) if pod.HasField("linux") else None
    if qos is None and container is not None and container.HasField("linux"):
        qos = qos_from_cgroup(container.linux.cgroups_path)
    return qos


def page_size_bytes(text: str) -> int:
    """OCI hugepage sizes (``2MB``, ``1GB``, ``64KB``) are binary units."""
    match = _PAGE_SIZE.fullmatch(text) if len(text) <= _MAX_PAGE_SIZE_TEXT else None
    if match is None:
        raise InputError(f"hugepage limit: page size {text!r} is not like 2MB or 1GB")
    size = int(match[1]) * _UNITS[match[2]]
    if size & (size - 1) or not _MIN_PAGE_SIZE <= size <= _MAX_PAGE_SIZE:
        raise InputError(
            f"hugepage limit: page size {text!r} is not a power of two between 4KB and 16GB"
        )
    return size


@dataclass(frozen=True, slots=True)
class ContainerResources:
    """What the plugin reads of one container's resources.

    One is kept for every tracked container, so it holds ints and tuples rather
    than a dict, a frozenset and Fractions of its own.
    """

    memory_limit: int  # bytes, 0 when there is none
    hugepage_limits: tuple[tuple[str, int], ...]  # (hugepages-<size>, bytes), non-zero only
    cpu_limit: Fraction | None  # cores, from quota/period; equal limits share one Fraction
    cpu_mask: int | None  # the cpuset, bit i for CPU i, when one is set

    @property
    def memory(self) -> dict[str, int]:
        """Memory type -> bytes: the memory limit, then the hugepage limits (a new dict)."""
        out = {MEMORY: self.memory_limit} if self.memory_limit else {}
        out.update(self.hugepage_limits)
        return out

    @property
    def cpus(self) -> frozenset[int] | None:
        """The cpuset, when one is set."""
        return None if self.cpu_mask is None else frozenset(_cpus_of(self.cpu_mask))

    def to_spec(self, name: str, *, init: bool = False) -> ContainerSpec:
        amounts: dict[str, Fraction] = {k: Fraction(v) for k, v in self.memory.items()}
        if self.cpu_limit is not None:
            amounts[CPU] = self.cpu_limit
        # Guaranteed: request == limit for every resource
        return ContainerSpec(name=name, requests=dict(amounts), limits=dict(amounts), init=init)


def _cpus_of(mask: int) -> list[int]:
    cpus = []
    while mask:
        low = mask & -mask  # the lowest set bit
        cpus.append(low.bit_length() - 1)
        mask ^= low
    return cpus


def _mask_of(cpus: Iterable[int]) -> int:
    mask = 0
    for cpu in cpus:
        mask |= 1 << cpu
    return mask


@functools.lru_cache(maxsize=256)
def _cores(quota: int, period: int) -> Fraction:
    # Fractions are immutable: containers with the same limit share one.
    return Fraction(quota, period)


def container_resources(container: api.Container) -> ContainerResources:
    """Read memory, hugepages and CPU settings from the container's OCI resources."""
    res = container.linux.resources if container.HasField("linux") else api.LinuxResources()
    memory_limit = 0
    if res.HasField("memory") and res.memory.HasField("limit"):
        memory_limit = res.memory.limit.value
        if memory_limit < 0 or memory_limit > _INT64_MAX:
            raise InputError(
                f"container {container.name!r}: memory limit {memory_limit} is out of range"
            )
    hugepages: dict[str, int] = {}
    for hp in res.hugepage_limits:
        if hp.limit == 0:
            continue  # containerd lists every host page size with limit 0
        if hp.limit > _INT64_MAX:
            raise InputError(
                f"container {container.name!r}: hugepage limit {hp.limit} is out of range"
            )
        resource = hugepage_resource_name(page_size_bytes(hp.page_size))
        if resource in hugepages:
            # two limits for one page size: no way to know which the kubelet meant
            raise InputError(
                f"container {container.name!r}: hugepage size {hp.page_size!r} is limited twice"
            )
        hugepages[resource] = hp.limit
    cpu_limit: Fraction | None = None
    cpu_mask: int | None = None
    if res.HasField("cpu"):
        cpu = res.cpu
        if cpu.HasField("quota") and cpu.HasField("period"):
            quota, period = cpu.quota.value, cpu.period.value
            if quota > 0 and period > 0:
                cpu_limit = _cores(quota, period)
        if cpu.cpus:
            try:
                cpu_mask = _mask_of(parse_cpulist(cpu.cpus, what="cpuset.cpus"))
            except InputError:
                cpu_mask = None
    return ContainerResources(memory_limit, tuple(hugepages.items()), cpu_limit, cpu_mask)


def pinned_cpus(resources: ContainerResources, topology: Topology) -> frozenset[int] | None:
    """The CPUs the CPU manager pinned the container to, or None for the shared pool.

    A cpuset covering every CPU of the machine is the shared pool (CPU manager
    policy none, or a non-integer request): it gives no CPU-side hint, as
    kubelet's CPU manager gives none for such containers.
    """
    if resources.cpu_mask is None:
        return None
    known = _mask_of(cpu for n in topology.nodes for cpu in n.cpus)
    mask = resources.cpu_mask & known
    if not mask or mask == known:
        return None
    return frozenset(_cpus_of(mask))


def pod_memory_limit(pod: api.PodSandbox) -> int | None:
    """The pod-level memory limit kubelet sends (kubelet >= 1.23), or None."""
    if not pod.HasField("linux") or not pod.linux.HasField("pod_resources"):
        return None
    res = pod.linux.pod_resources
    if res.HasField("memory") and res.memory.HasField("limit") and res.memory.limit.value > 0:
        return int(res.memory.limit.value)
    return None


def container_identity(pod: api.PodSandbox, container: api.Container) -> tuple[str, str]:
    """(pod UID, container name), the key kubelet uses for memory blocks."""
    # Interned: the UID is kept by the pod's record, its containers' and the owners' keys,
    # and pods of one workload repeat their container names (records, blocks): one string
    # each, not one per protobuf read.
    uid = sys.intern(pod.uid or container.labels.get(LABEL_POD_UID, ""))
    name = sys.intern(container.name or container.labels.get(LABEL_CONTAINER_NAME, ""))
    return uid, name

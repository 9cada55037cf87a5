"""From NRI's view of a pod and a container to the tracker's facts.

kubelet does not tell the runtime a pod's QoS class or a container's requests
directly; they are read back from what it does send (kubelet's
``pkg/kubelet/kuberuntime``): the QoS class from the pod's cgroup parent
(cgroupfs and systemd drivers), the memory and hugepage requests from the
container's limits (request == limit in a Guaranteed pod), the pinned CPUs
from its cpuset, the pod's memory limit from the sandbox's resources, restarts
from the ``io.kubernetes.container.restartCount`` annotation. The CRI proxy
uses the same functions on the NRI messages it builds from CRI.
"""

from __future__ import annotations

import functools
import re
import sys
from collections.abc import Mapping
from fractions import Fraction

from nri_plugin.engine.bitmask import mask_of, parse_cpulist
from nri_plugin.engine.pod import BEST_EFFORT, BURSTABLE, GUARANTEED
from nri_plugin.engine.topology import hugepage_resource_name
from nri_plugin.errors import InputError
from nri_plugin.nri.gen import nri_pb2 as api
from nri_plugin.tracker.facts import (
    CREATED,
    EXITED,
    RUNNING,
    UNKNOWN,
    ContainerFacts,
    ContainerResources,
    PodFacts,
)
from nri_plugin.tracker.podlevel import cpu_request_differs

LABEL_POD_UID = "io.kubernetes.pod.uid"
LABEL_CONTAINER_NAME = "io.kubernetes.container.name"
ANNOTATION_RESTART_COUNT = "io.kubernetes.container.restartCount"
OUR_ANNOTATIONS = "nri-memory-manager.io/"

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

_STATES: Mapping[int, str] = {
    api.CONTAINER_CREATED: CREATED,
    api.CONTAINER_RUNNING: RUNNING,
    api.CONTAINER_STOPPED: EXITED,
}


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


@functools.lru_cache(maxsize=256)
def _cores(quota: int, period: int) -> Fraction:
    # Fractions are immutable: containers with the same limit share one.
    return Fraction(quota, period)


def container_resources(container: api.Container) -> ContainerResources:
    """Read memory, hugepages and CPU settings from the container's OCI resources."""
    res = container.linux.resources if container.HasField("linux") else api.LinuxResources()
    return _resources(res, f"container {container.name!r}")


def _resources(res: api.LinuxResources, what: str) -> ContainerResources:
    memory_limit = 0
    if res.HasField("memory") and res.memory.HasField("limit"):
        memory_limit = res.memory.limit.value
        if memory_limit < 0 or memory_limit > _INT64_MAX:
            raise InputError(f"{what}: memory limit {memory_limit} is out of range")
    hugepages: dict[str, int] = {}
    for hp in res.hugepage_limits:
        if hp.limit == 0:
            continue  # containerd lists every host page size with limit 0
        if hp.limit > _INT64_MAX:
            raise InputError(f"{what}: hugepage limit {hp.limit} is out of range")
        resource = hugepage_resource_name(page_size_bytes(hp.page_size))
        if resource in hugepages:
            # two limits for one page size: no way to know which the kubelet meant
            raise InputError(f"{what}: hugepage size {hp.page_size!r} is limited twice")
        hugepages[resource] = hp.limit
    cpu_limit: Fraction | None = None
    cpu_mask: int | None = None
    differs = False
    if res.HasField("cpu"):
        cpu = res.cpu
        if cpu.HasField("quota") and cpu.HasField("period"):
            quota, period = cpu.quota.value, cpu.period.value
            if quota > 0 and period > 0:
                cpu_limit = _cores(quota, period)
                if cpu.HasField("shares"):
                    differs = cpu_request_differs(cpu.shares.value, quota, period)
        if cpu.cpus:
            try:
                cpu_mask = mask_of(parse_cpulist(cpu.cpus, what="cpuset.cpus"))
            except InputError:
                cpu_mask = None
    return ContainerResources(memory_limit, tuple(hugepages.items()), cpu_limit, cpu_mask, differs)


def pod_memory_limit(pod: api.PodSandbox) -> int | None:
    """The pod-level memory limit kubelet sends (kubelet >= 1.23), or None."""
    if not pod.HasField("linux") or not pod.linux.HasField("pod_resources"):
        return None
    res = pod.linux.pod_resources
    if res.HasField("memory") and res.memory.HasField("limit") and res.memory.limit.value > 0:
        return int(res.memory.limit.value)
    return None


def pod_cpu_limit(pod: api.PodSandbox) -> Fraction | None:
    """The pod's cpu limit kubelet sends with the sandbox (cores), or None."""
    if not pod.HasField("linux") or not pod.linux.HasField("pod_resources"):
        return None
    cpu = pod.linux.pod_resources.cpu
    if cpu.HasField("quota") and cpu.HasField("period"):
        quota, period = cpu.quota.value, cpu.period.value
        if quota > 0 and period > 0:
            return _cores(quota, period)
    return None


def container_identity(pod: api.PodSandbox, container: api.Container) -> tuple[str, str]:
    """(pod UID, container name), the key kubelet uses for memory blocks."""
    # Interned: the UID is kept by the pod's record, its containers' and the owners' keys,
    # and pods of one workload repeat their container names (records, blocks): one string
    # each, not one per protobuf read.
    uid = sys.intern(pod.uid or container.labels.get(LABEL_POD_UID, ""))
    name = sys.intern(container.name or container.labels.get(LABEL_CONTAINER_NAME, ""))
    return uid, name


def pod_facts(
    pod: api.PodSandbox,
    hugepage_limits: Mapping[str, int] | None = None,
    container: api.Container | None = None,
) -> PodFacts:
    """The tracker's view of a pod sandbox (``hugepage_limits`` read from its cgroup).

    Without a UID in the sandbox, a container's kubelet label names the pod.
    """
    uid = pod.uid
    if not uid and container is not None:
        uid = container.labels.get(LABEL_POD_UID, "")
    return PodFacts(
        sys.intern(uid),
        pod.id,
        pod.name,
        pod.namespace,
        pod_qos(pod),
        pod_memory_limit(pod),
        hugepage_limits,
        pod_cpu_limit(pod),
    )


def container_facts(pod: api.PodSandbox, container: api.Container) -> ContainerFacts:
    """The tracker's view of a container; unreadable resources are said, not raised."""
    _, name = container_identity(pod, container)
    resources: ContainerResources | None
    error = None
    try:
        resources = container_resources(container)
    except InputError as exc:
        resources, error = None, str(exc)
    linux = container.linux if container.HasField("linux") else None
    mems = linux.resources.cpu.mems if linux is not None else ""
    return ContainerFacts(
        container.id,
        name,
        _STATES.get(container.state, UNKNOWN),
        resources,
        qos=qos_from_cgroup(linux.cgroups_path) if linux is not None else None,
        mems=mems,
        created_at=container.created_at,
        # NRI >= 0.10 defines an exit code, but containerd (2.1 and 1.7) never fills it:
        # 0 means "not said" there
        exit_code=container.exit_code or None,
        restart_count=_restart_count(container.annotations.get(ANNOTATION_RESTART_COUNT)),
        error=error,
        annotations=_ours(container.annotations),
    )


def update_resources(res: api.LinuxResources) -> ContainerResources | None:
    """The resources an UpdateContainer carries (zero / empty: unchanged); None if malformed."""
    try:
        return _resources(res, "update")
    except InputError:
        return None


def _ours(annotations: Mapping[str, str]) -> dict[str, str]:
    """Our own annotations (nri-memory-manager.io/...), the only ones the tracker reads."""
    return {k: v for k, v in annotations.items() if k.startswith(OUR_ANNOTATIONS)}


def _restart_count(text: str | None) -> int | None:
    if text is None or not text.isascii() or not text.isdigit() or len(text) > 9:
        return None
    return int(text)

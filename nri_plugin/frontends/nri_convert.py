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
from nri_plugin.tracker.nodemap import ANNOTATION as NUMA_NODES_ANNOTATION
from nri_plugin.tracker.podlevel import cpu_request_differs

LABEL_POD_UID = "io.kubernetes.pod.uid"
LABEL_CONTAINER_NAME = "io.kubernetes.container.name"
ANNOTATION_RESTART_COUNT = "io.kubernetes.container.restartCount"
# the annotations of ours that the tracker reads (all under nri-memory-manager.io/)
OUR_ANNOTATIONS = (NUMA_NODES_ANNOTATION,)

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


# The characters that separate the words of cgroup paths (cgroupfs and systemd drivers).
_CGROUP_SEPARATORS = frozenset("/:._-")


def _has_word(path: str, word: str) -> bool:
    """Whether ``word`` stands in ``path`` between separators or the ends (a trailing
    newline counts as the end, as ``$`` in a regular expression)."""
    end = len(path)
    i = path.find(word)
    while i >= 0:
        j = i + len(word)
        if (i == 0 or path[i - 1] in _CGROUP_SEPARATORS) and (
            j == end or path[j] in _CGROUP_SEPARATORS or (j == end - 1 and path[j] == "\n")
        ):
            return True
        i = path.find(word, i + 1)
    return False


def qos_from_cgroup(path: str) -> str | None:
    """kubelet's QoS class from a cgroup parent or cgroups path; None outside kubepods."""
    # plain substring searches: a regular expression's scan of the whole path, three
    # times per pod and container, was a tenth of a CreateContainer's reading
    if not path or not _has_word(path, "kubepods"):
        return None
    if _has_word(path, "besteffort"):
        return BEST_EFFORT
    if _has_word(path, "burstable"):
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
    if not container.HasField("linux"):
        return _resources(api.LinuxResources(), container)
    return _resources(container.linux.resources, container)


def _what(source: api.Container | str) -> str:
    # built only for an error's text: a CreateContainer reads resources that are fine
    return source if isinstance(source, str) else f"container {source.name!r}"


def _resources(res: api.LinuxResources, source: api.Container | str) -> ContainerResources:
    memory_limit = 0
    if res.HasField("memory"):
        memory = res.memory
        if memory.HasField("limit"):
            memory_limit = memory.limit.value
            if memory_limit < 0 or memory_limit > _INT64_MAX:
                raise InputError(f"{_what(source)}: memory limit {memory_limit} is out of range")
    hugepages: dict[str, int] = {}
    for hp in res.hugepage_limits:
        limit = hp.limit
        if limit == 0:
            continue  # containerd lists every host page size with limit 0
        if limit > _INT64_MAX:
            raise InputError(f"{_what(source)}: hugepage limit {limit} is out of range")
        resource = hugepage_resource_name(page_size_bytes(hp.page_size))
        if resource in hugepages:
            # two limits for one page size: no way to know which the kubelet meant
            raise InputError(f"{_what(source)}: hugepage size {hp.page_size!r} is limited twice")
        hugepages[resource] = limit
    quota = period = 0  # no cpu limit
    cpu_mask: int | None = None
    differs = False
    if res.HasField("cpu"):
        cpu = res.cpu
        if cpu.HasField("quota") and cpu.HasField("period"):
            quota, period = cpu.quota.value, cpu.period.value
            if quota > 0 and period > 0:
                if cpu.HasField("shares"):
                    differs = _request_differs(cpu.shares.value, quota, period)
            else:
                quota = period = 0
        cpus = cpu.cpus
        if cpus:
            cpu_mask = _cpu_mask(cpus)
    pages = tuple(hugepages.items()) if hugepages else ()
    return _shared_resources(memory_limit, pages, quota, period, cpu_mask, differs)


@functools.lru_cache(maxsize=4096)
def _shared_resources(
    memory_limit: int,
    hugepages: tuple[tuple[str, int], ...],
    quota: int,
    period: int,
    cpu_mask: int | None,
    differs: bool,
) -> ContainerResources:
    # One is kept per tracked container, and pods of one workload repeat them: equal
    # resources are one object (they are immutable), built once.
    cpu_limit = _cores(quota, period) if quota else None
    return ContainerResources(memory_limit, hugepages, cpu_limit, cpu_mask, differs)


# Pods of one workload repeat their cpusets and cpu settings: each is worked out once.
@functools.lru_cache(maxsize=1024)
def _cpu_mask(cpus: str) -> int | None:
    try:
        return mask_of(parse_cpulist(cpus, what="cpuset.cpus"))
    except InputError:
        return None


@functools.lru_cache(maxsize=256)
def _request_differs(shares: int, quota: int, period: int) -> bool:
    return cpu_request_differs(shares, quota, period)


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
    """Our own annotations, the only ones the tracker reads (nodemap.py)."""
    # looked up by name: iterating every annotation of the protobuf map cost as much as
    # reading the container's resources
    out = {}
    for key in OUR_ANNOTATIONS:
        value = annotations.get(key)
        if value is not None:
            out[key] = value
    return out


def _restart_count(text: str | None) -> int | None:
    if text is None or not text.isascii() or not text.isdigit() or len(text) > 9:
        return None
    return int(text)

"""CRI requests and listings -> the NRI view of pods and containers.

The CRI proxy feeds the NRI plugin's handler (``nri_plugin.plugin``), so it
must show it what containerd would have shown through NRI: the pod's cgroup
parent and pod-level resources from the sandbox config, the container's
resources as the OCI spec gets them (a zero CRI value means "not set"), its
kubelet labels and annotations. Pure functions, no I/O.

For restart recovery the runtime's verbose status is read the way containerd
and CRI-O fill it: ``info["info"]`` is JSON with ``config`` (the CRI config
kubelet sent, field names as in the proto) and ``runtimeSpec`` (the OCI spec
now in force, which carries our ``cpuset.mems``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from google.protobuf import json_format

from nri_plugin.frontends.cri.gen import cri_pb2 as cri
from nri_plugin.nri.gen import nri_pb2 as api

_CONTAINER_STATES: dict[int, api.ContainerState] = {
    cri.CONTAINER_CREATED: api.CONTAINER_CREATED,
    cri.CONTAINER_RUNNING: api.CONTAINER_RUNNING,
    cri.CONTAINER_EXITED: api.CONTAINER_STOPPED,
    cri.CONTAINER_UNKNOWN: api.CONTAINER_UNKNOWN,
}


def container_state(state: int) -> api.ContainerState:
    """CRI ContainerState -> NRI ContainerState (EXITED is NRI's STOPPED)."""
    return _CONTAINER_STATES.get(int(state), api.CONTAINER_UNKNOWN)


def linux_resources(res: cri.LinuxContainerResources) -> api.LinuxResources:
    """CRI LinuxContainerResources -> NRI LinuxResources, as containerd builds the OCI spec."""
    out = api.LinuxResources()
    if res.memory_limit_in_bytes:
        out.memory.limit.value = res.memory_limit_in_bytes
    if res.memory_swap_limit_in_bytes:
        out.memory.swap.value = res.memory_swap_limit_in_bytes
    if res.cpu_shares:
        out.cpu.shares.value = res.cpu_shares
    if res.cpu_quota:
        out.cpu.quota.value = res.cpu_quota
    if res.cpu_period:
        out.cpu.period.value = res.cpu_period
    if res.cpuset_cpus:
        out.cpu.cpus = res.cpuset_cpus
    if res.cpuset_mems:
        out.cpu.mems = res.cpuset_mems
    for hp in res.hugepage_limits:
        out.hugepage_limits.add(page_size=hp.page_size, limit=hp.limit)
    out.unified.update(res.unified)
    return out


def pod_sandbox(
    sandbox_id: str, config: cri.PodSandboxConfig, runtime_handler: str = ""
) -> api.PodSandbox:
    """The NRI pod of a RunPodSandbox (or CreateContainer's sandbox_config)."""
    pod = api.PodSandbox(
        id=sandbox_id,
        name=config.metadata.name,
        uid=config.metadata.uid,
        namespace=config.metadata.namespace,
        runtime_handler=runtime_handler,
    )
    pod.labels.update(config.labels)
    pod.annotations.update(config.annotations)
    if config.HasField("linux"):
        pod.linux.cgroup_parent = config.linux.cgroup_parent
        if config.linux.HasField("resources"):
            pod.linux.pod_resources.CopyFrom(linux_resources(config.linux.resources))
        if config.linux.HasField("overhead"):
            pod.linux.pod_overhead.CopyFrom(linux_resources(config.linux.overhead))
    return pod


def container(
    container_id: str,
    sandbox_id: str,
    config: cri.ContainerConfig,
    *,
    state: api.ContainerState = api.CONTAINER_CREATED,
    created_at: int = 0,
) -> api.Container:
    """The NRI container of a CreateContainer request (state and time as NRI has them)."""
    c = api.Container(
        id=container_id,
        pod_sandbox_id=sandbox_id,
        name=config.metadata.name,
        state=state,
        created_at=created_at,
    )
    c.labels.update(config.labels)
    c.annotations.update(config.annotations)
    if config.HasField("linux") and config.linux.HasField("resources"):
        c.linux.resources.CopyFrom(linux_resources(config.linux.resources))
    return c


# -- restart recovery: listings and verbose status --------------------------------------


def verbose_info(info: Mapping[str, str]) -> dict[str, Any]:
    """The JSON object of a verbose status' ``info["info"]`` ({} when absent or not JSON)."""
    try:
        value = json.loads(info.get("info", ""))
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _cri_resources(value: object) -> cri.LinuxContainerResources | None:
    """CRI LinuxContainerResources from its JSON form (proto or camelCase names)."""
    if not isinstance(value, dict):
        return None
    res = cri.LinuxContainerResources()
    try:
        json_format.ParseDict(value, res, ignore_unknown_fields=True)
    except json_format.ParseError:
        return None
    return res


def _dig(value: object, *keys: str) -> object:
    for key in keys:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def listed_pod(item: cri.PodSandbox, info: Mapping[str, str]) -> api.PodSandbox:
    """A pod of ListPodSandbox, completed from its verbose PodSandboxStatus info."""
    details = verbose_info(info)
    config = cri.PodSandboxConfig()
    config.metadata.CopyFrom(item.metadata)
    config.labels.update(item.labels)
    config.annotations.update(item.annotations)
    parent = _dig(details, "config", "linux", "cgroup_parent")
    if isinstance(parent, str):
        config.linux.cgroup_parent = parent
    for field in ("resources", "overhead"):
        res = _cri_resources(_dig(details, "config", "linux", field))
        if res is not None:
            getattr(config.linux, field).CopyFrom(res)
    return pod_sandbox(item.id, config, item.runtime_handler)


def listed_container(
    item: cri.Container, status: cri.ContainerStatus, info: Mapping[str, str]
) -> api.Container:
    """A container of ListContainers, with resources from its verbose ContainerStatus.

    The resources are those kubelet asked for at creation (the CRI config in
    the verbose info, else the status' resources), with the cpusets now in
    force from the runtime spec: the mems show whether we pinned it.
    """
    details = verbose_info(info)
    config = cri.ContainerConfig()
    config.metadata.CopyFrom(item.metadata)
    config.labels.update(item.labels)
    config.annotations.update(item.annotations)
    res = _cri_resources(_dig(details, "config", "linux", "resources"))
    if res is None and status.HasField("resources") and status.resources.HasField("linux"):
        res = status.resources.linux
    if res is not None:
        config.linux.resources.CopyFrom(res)
    c = container(
        item.id,
        item.pod_sandbox_id,
        config,
        state=container_state(status.state if status.id else item.state),
        created_at=item.created_at,
    )
    spec_cpu = _dig(details, "runtimeSpec", "linux", "resources", "cpu")
    if isinstance(spec_cpu, dict):
        for key in ("cpus", "mems"):
            value = spec_cpu.get(key)
            setattr(c.linux.resources.cpu, key, value if isinstance(value, str) else "")
    path = _dig(details, "runtimeSpec", "linux", "cgroupsPath")
    if isinstance(path, str):
        c.linux.cgroups_path = path  # the QoS class when the sandbox config is not shown
    return c

"""NRI messages as containerd builds them from kubelet's CRI requests (for plugin tests)."""

from __future__ import annotations

from nri_plugin.nri.gen import nri_pb2 as api

GI = 1 << 30


def pod(
    uid: str,
    qos: str = "Guaranteed",
    name: str = "",
    memory_limit: int | None = None,
    *,
    cpu_millis: int | None = None,
) -> api.PodSandbox:
    parent = {
        "Guaranteed": f"/kubepods/pod{uid}",
        "Burstable": f"/kubepods/burstable/pod{uid}",
        "BestEffort": f"/kubepods/besteffort/pod{uid}",
    }[qos]
    p = api.PodSandbox(id=f"sb-{uid}", uid=uid, name=name or f"pod-{uid}", namespace="default")
    p.linux.cgroup_parent = parent
    if memory_limit is not None:
        p.linux.pod_resources.memory.limit.value = memory_limit
    if cpu_millis is not None:  # kubelet's calculateSandboxResources: the pod's cpu limit
        p.linux.pod_resources.cpu.period.value = 100000
        p.linux.pod_resources.cpu.quota.value = cpu_millis * 100
    return p


def container(
    p: api.PodSandbox,
    name: str,
    cid: str,
    memory: int | None,
    *,
    cpus: str = "",
    cpu_millis: int = 1000,
    hugepages: dict[str, int] | None = None,
    mems: str = "",
    state: int = api.CONTAINER_UNKNOWN,
    cpu_request_millis: int | None = None,
) -> api.Container:
    c = api.Container(id=cid, pod_sandbox_id=p.id, name=name, state=state)
    c.labels["io.kubernetes.pod.uid"] = p.uid
    c.labels["io.kubernetes.container.name"] = name
    c.linux.cgroups_path = f"{p.linux.cgroup_parent}/{cid}"
    res = c.linux.resources
    if memory is not None:
        res.memory.limit.value = memory
    # kubelet writes shares from the cpu request (when there is one) and quota from the limit
    request = cpu_millis if cpu_request_millis is None else cpu_request_millis
    res.cpu.shares.value = max(2, request * 1024 // 1000)
    res.cpu.period.value = 100000
    res.cpu.quota.value = cpu_millis * 100
    res.cpu.cpus = cpus
    res.cpu.mems = mems
    for size in ("2MB", "1GB"):
        res.hugepage_limits.add(page_size=size, limit=(hugepages or {}).get(size, 0))
    return c

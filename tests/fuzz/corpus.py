"""Seed inputs for the fuzz targets: a day on a node as containerd sends it.

``synthetic_corpus`` builds sessions with kubelet's own values (QoS cgroup
parents, CPU shares and quotas, hugepage limits); ``capture`` (tests.fuzz.capture)
records the traffic of a real containerd.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

from google.protobuf.message import Message

from nri_plugin.nri import mux, ttrpc
from nri_plugin.nri.gen import nri_pb2 as api
from nri_plugin.nri.mux import PLUGIN_SERVICE_CONN, RUNTIME_SERVICE_CONN
from nri_plugin.nri.stub import PLUGIN_SERVICE
from tests.fuzz.targets import CONFIGS, GI, MI, encode_plugin_input

# -- seed corpus: what containerd sends, built with kubelet's values -----------------------


def _uid(n: int) -> str:
    return f"{n:08x}-5e3d-4c1a-9f1b-{n * 7919:012x}"


def _pod(n: int, qos: str, *, systemd: bool = False, memory: int = 0) -> api.PodSandbox:
    uid = _uid(n)
    if systemd:
        u = uid.replace("-", "_")
        tier = "" if qos == "guaranteed" else f"-{qos}"
        slices = "" if qos == "guaranteed" else f"kubepods-{qos}.slice/"
        parent = f"/kubepods.slice/{slices}kubepods{tier}-pod{u}.slice"
    else:
        parent = "/kubepods" + ("" if qos == "guaranteed" else f"/{qos}") + f"/pod{uid}"
    pod = api.PodSandbox(
        id=hashlib.sha256(uid.encode()).hexdigest(),
        name=f"pod-{n}",
        uid=uid,
        namespace="default",
        labels={
            "io.kubernetes.pod.name": f"pod-{n}",
            "io.kubernetes.pod.namespace": "default",
            "io.kubernetes.pod.uid": uid,
        },
        annotations={"kubernetes.io/config.source": "api"},
        runtime_handler="",
        pid=1000 + n,
    )
    pod.linux.cgroup_parent = parent
    pod.linux.cgroups_path = parent
    if memory:
        pod.linux.pod_resources.memory.limit.value = memory
    return pod


def _container(
    pod: api.PodSandbox,
    name: str,
    *,
    memory: int = 0,
    cpu_millis: int = 0,
    hugepages: dict[str, int] | None = None,
    cpus: str = "",
    mems: str = "",
    state: int = api.CONTAINER_CREATED,
    created_at: int = 0,
) -> api.Container:
    c = api.Container(
        id=hashlib.sha256(f"{pod.uid}/{name}".encode()).hexdigest(),
        pod_sandbox_id=pod.id,
        name=name,
        state=cast(Any, state),
        labels={
            "io.kubernetes.container.name": name,
            "io.kubernetes.pod.name": pod.name,
            "io.kubernetes.pod.namespace": pod.namespace,
            "io.kubernetes.pod.uid": pod.uid,
        },
        args=["sleep", "2147483647"],
        env=["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
        created_at=created_at,
    )
    c.mounts.add(
        destination="/dev/termination-log", type="bind", source="/tmp/x", options=["rbind"]
    )
    linux = c.linux
    linux.cgroups_path = f"{pod.linux.cgroup_parent}/{c.id}"
    res = linux.resources
    if memory:
        res.memory.limit.value = memory
    res.memory.swap.value = memory
    res.cpu.shares.value = max(2, cpu_millis * 1024 // 1000)
    res.cpu.period.value = 100_000
    if cpu_millis:
        res.cpu.quota.value = cpu_millis * 100
    res.cpu.cpus = cpus
    res.cpu.mems = mems
    for size in ("2MB", "1GB"):
        res.hugepage_limits.add(page_size=size, limit=(hugepages or {}).get(size, 0))
    linux.oom_score_adj.value = -997
    return c


def _resources(memory: int, cpu_millis: int, cpus: str = "") -> api.LinuxResources:
    res = api.LinuxResources()
    res.memory.limit.value = memory
    res.cpu.shares.value = max(2, cpu_millis * 1024 // 1000)
    res.cpu.quota.value = cpu_millis * 100
    res.cpu.period.value = 100_000
    res.cpu.cpus = cpus
    return res


def runtime_session() -> list[tuple[str, Message]]:
    """A day on a node: every call containerd makes, with kubelet's values."""
    a = _pod(1, "guaranteed", memory=2 * GI)
    b = _pod(2, "guaranteed", systemd=True)
    c = _pod(3, "burstable")
    d = _pod(4, "besteffort", systemd=True)
    e = _pod(5, "guaranteed", memory=5 * GI)
    a_app = _container(
        a, "app", memory=2 * GI, cpu_millis=2000, mems="0", state=api.CONTAINER_RUNNING
    )
    b_init = _container(b, "init", memory=GI, cpu_millis=1000)
    b_app = _container(
        b, "app", memory=3 * GI, cpu_millis=2000, cpus="2-3", hugepages={"2MB": 512 * MI}
    )
    c_app = _container(c, "web", memory=GI, cpu_millis=500)
    d_app = _container(d, "batch")
    e_app = _container(e, "db", memory=4 * GI, cpu_millis=4000, cpus="4-7", hugepages={"1GB": GI})

    def event(kind: int, pod: api.PodSandbox, ctr: api.Container | None = None) -> Message:
        ev = api.StateChangeEvent(event=cast(Any, kind), pod=pod)
        if ctr is not None:
            ev.container.CopyFrom(ctr)
        return ev

    b_stopped = api.Container()
    b_stopped.CopyFrom(b_init)
    b_stopped.state = api.CONTAINER_STOPPED
    return [
        (
            "Configure",
            api.ConfigureRequest(
                config="",
                runtime_name="containerd",
                runtime_version="v2.1.4",
                registration_timeout=5000,
                request_timeout=2000,
            ),
        ),
        ("Synchronize", api.SynchronizeRequest(pods=[a], containers=[a_app], more=True)),
        ("Synchronize", api.SynchronizeRequest()),
        ("RunPodSandbox", api.RunPodSandboxRequest(pod=b)),
        ("CreateContainer", api.CreateContainerRequest(pod=b, container=b_init)),
        ("PostCreateContainer", api.PostCreateContainerRequest(pod=b, container=b_init)),
        ("StartContainer", api.StartContainerRequest(pod=b, container=b_init)),
        ("StopContainer", api.StopContainerRequest(pod=b, container=b_stopped)),
        ("CreateContainer", api.CreateContainerRequest(pod=b, container=b_app)),
        ("StateChange", event(api.START_CONTAINER, b, b_app)),
        ("StateChange", event(api.REMOVE_CONTAINER, b, b_stopped)),
        (
            "UpdateContainer",
            api.UpdateContainerRequest(
                pod=b, container=b_app, linux_resources=_resources(3 * GI, 2000, "2-3")
            ),
        ),
        ("StateChange", event(api.RUN_POD_SANDBOX, c)),
        ("CreateContainer", api.CreateContainerRequest(pod=c, container=c_app)),
        ("StateChange", event(api.RUN_POD_SANDBOX, d)),
        ("CreateContainer", api.CreateContainerRequest(pod=d, container=d_app)),
        ("RunPodSandbox", api.RunPodSandboxRequest(pod=e)),
        ("CreateContainer", api.CreateContainerRequest(pod=e, container=e_app)),
        ("StopContainer", api.StopContainerRequest(pod=a, container=a_app)),
        ("RemoveContainer", api.RemoveContainerRequest(pod=a, container=a_app)),
        ("StopPodSandbox", api.StopPodSandboxRequest(pod=a)),
        ("StateChange", event(api.REMOVE_POD_SANDBOX, a)),
        ("Shutdown", api.Empty()),
    ]


def go_frames(conn_id: int, message: bytes) -> bytes:
    """One ttrpc message framed as the Go runtime writes it (4096-byte buffered writer)."""
    first, rest = message[: mux.GO_READ_BUFFER], message[mux.GO_READ_BUFFER :]
    out = mux.FRAME_HEADER.pack(conn_id, len(first)) + first
    if rest:
        out += mux.FRAME_HEADER.pack(conn_id, len(rest)) + rest
    return out


def runtime_stream(calls: Sequence[tuple[str, Message]], *, registered: bool = True) -> bytes:
    """The socket bytes the runtime sends: the RegisterPlugin answer, then the calls."""
    out = bytearray()
    if registered:
        out += go_frames(RUNTIME_SERVICE_CONN, ttrpc.encode_response(1))
    for i, (name, message) in enumerate(calls):
        request = ttrpc.encode_request(
            2 * i + 1,
            PLUGIN_SERVICE,
            name,
            message.SerializeToString(),
            timeout_nano=2_000_000_000,
            metadata=[("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")],
        )
        out += go_frames(PLUGIN_SERVICE_CONN, request)
    return bytes(out)


def synthetic_corpus() -> dict[str, list[bytes]]:
    """Seeds per target, from :func:`runtime_session` and protocol corner cases."""
    calls = runtime_session()
    stream = runtime_stream(calls)
    wire = [bytes([seed]) + stream for seed in (0, 7, 42)]
    wire += [bytes([1]) + runtime_stream([call]) for call in calls]
    big = api.SynchronizeRequest(
        pods=[_pod(100 + i, "guaranteed", memory=GI) for i in range(40)], more=False
    )
    wire.append(bytes([3]) + runtime_stream([("Synchronize", big)]))  # crosses 4096 bytes
    wire.append(b"\x00" + go_frames(PLUGIN_SERVICE_CONN, ttrpc.encode_response(1)))
    wire.append(b"\x00" + go_frames(7, b"\x00" * 10))
    wire.append(b"\x00" + mux.FRAME_HEADER.pack(1, mux.MAX_FRAME_PAYLOAD + 1))
    wire.append(b"\x00" + mux.FRAME_HEADER.pack(1, 10) + ttrpc.HEADER.pack(2**32 - 1, 1, 1, 0))
    plugin = [
        encode_plugin_input(i, calls[: n + 1])
        for i in range(len(CONFIGS))
        for n in (len(calls) - 1, 8)
    ]
    plugin += [encode_plugin_input(0, [call]) for call in calls]
    return {"wire": wire, "conn": list(wire), "plugin": plugin}


def write_corpus(out: Path, corpus: dict[str, list[bytes]], prefix: str = "seed") -> int:
    count = 0
    for target, seeds in corpus.items():
        directory = out / target
        directory.mkdir(parents=True, exist_ok=True)
        for seed in seeds:
            name = f"{prefix}-{hashlib.sha1(seed).hexdigest()[:16]}"
            (directory / name).write_bytes(seed)
            count += 1
    return count


def load_corpus(directory: Path | None, target: str) -> list[bytes]:
    seeds = list(synthetic_corpus()[target])
    if directory is not None and (directory / target).is_dir():
        seeds += [p.read_bytes() for p in sorted((directory / target).iterdir()) if p.is_file()]
    return seeds

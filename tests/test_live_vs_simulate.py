"""The live plugin's books against `simulate`, through both front ends (docs/lifecycle.md).

Random pods (init containers, sidecars, several app containers, hugepages,
cpusets), both topology manager scopes, with random crashes (non-zero exits
followed by a restart), restarts with new limits, in-place resizes, pod
removals and plugin restarts are driven as kubelet drives the runtime:

* through the NRI handler (``MemoryPlugin`` and its tracker), with NRI messages
  shaped as containerd sends them;
* through the CRI proxy, with CRI requests as kubelet sends them, over gRPC to
  a fake runtime.

After every kubelet-level step (a pod admitted: its init containers run to
completion and its app containers are created and started; a crash and the
restart; a resize; a removal; a restart of the plugin) the live state must
equal what the engine computes for the same `simulate` steps (admit + start,
resize, remove): the invariant of docs/lifecycle.md. Inside an admission the
states differ by design (kubelet reserves a whole pod at admission, the
plugin each container at its creation), so the comparison is made at these
points.

kubelet's pod-resources API is a stand-in kubelet (tests/podresources_standin.py)
on a unix socket, served in the node's event loop: the pods drawn as "listed"
are known to it, with devices allocated to some of their Guaranteed
containers (sidecars and app containers: kubelet never lists regular init
containers) from a node inventory of devices on one NUMA node, on two, and
without topology. `simulate` gets the device manager's hints for the same
devices (``devicehints.allocated_device_hints`` with the same inventory): per
container in container scope; in pod scope the hints of all the pod's
devices together, given on one container (docs/simulate.md). Live decisions
with device hints must equal simulate's.

What the runtime cannot show the plugin is kept out of the generated pods
(docs/lifecycle.md, "What the plugin cannot know"): zero-sized hugepage
requests (a limit of 0 is what kubelet sends for every page size), a cpuset of
every CPU (the shared pool), devices of regular init containers and of pods
that are not Guaranteed (the plugin leaves those alone), and in pod scope
hugepage sizes that only init containers request and cpusets that differ
between a pod's containers.
"""

from __future__ import annotations

import asyncio
import inspect
import shutil
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from fractions import Fraction
from typing import Any, Protocol

import grpc  # type: ignore[import-untyped]
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nri_plugin.engine.bitmask import format_cpulist
from nri_plugin.engine.config import Config
from nri_plugin.engine.manager import AdmissionResult, MemoryManager, ResizeResult
from nri_plugin.engine.pod import (
    BEST_EFFORT,
    BURSTABLE,
    CPU,
    GUARANTEED,
    MEMORY,
    ContainerSpec,
    PodSpec,
)
from nri_plugin.engine.state import HUGEPAGES_PREFIX, POLICY_STATIC
from nri_plugin.engine.topology import Topology
from nri_plugin.engine.topologymanager import SCOPE_POD
from nri_plugin.frontends.cri.gen import cri_pb2 as cri
from nri_plugin.frontends.kubelet import KubeletResources, device_hints
from nri_plugin.frontends.nri import AdmissionRefused, MemoryPlugin
from nri_plugin.frontends.simulate import apply_step
from nri_plugin.inputs.scenario import AdmitStep, RemoveStep, ResizeStep, StartStep, Step
from nri_plugin.nri.gen import nri_pb2 as api
from nri_plugin.persist.format import to_checkpoint
from nri_plugin.podresources.client import PodResourcesClient
from nri_plugin.podresources.devicehints import allocated_device_hints
from nri_plugin.podresources.resources import ContainerDevices
from nri_plugin.tracker.tracker import NodeTracker
from tests.podresources_standin import running_standin
from tests.strategies import BOOLS, _pick, configs, draw_container, ints, one_of, topologies
from tests.test_criproxy import FakeRuntime, proxied

MI = 1 << 20


# -- what happens on the node ---------------------------------------------------------------


# container name -> resource name -> the ids of the devices kubelet allocated to it
Devices = Mapping[str, Mapping[str, tuple[str, ...]]]


@dataclass(frozen=True)
class Admit:
    pod: PodSpec
    # kubelet's pod-resources API answers for the pod (its app containers and sidecars)
    listed: bool = False
    # the devices kubelet allocated to its containers (listed pods only)
    devices: Devices = field(default_factory=dict)


@dataclass(frozen=True)
class Crash:
    """A running container exits with ``code``; kubelet restarts it (same name)."""

    uid: str
    name: str
    code: int


@dataclass(frozen=True)
class Resize:
    """An in-place resize (UpdateContainerResources), or a restart with new limits."""

    uid: str
    name: str
    spec: ContainerSpec
    restart: bool


@dataclass(frozen=True)
class Remove:
    uid: str


@dataclass(frozen=True)
class RestartPlugin:
    pass


Op = Admit | Crash | Resize | Remove | RestartPlugin


# -- kubelet's view of a pod ----------------------------------------------------------------


def _aggregate(pod: PodSpec, resource: str) -> int:
    """kubelet's sidecar-aware pod total of one resource (resourcehelper.PodLimits)."""
    sidecars = 0
    init_peak = 0
    for c in pod.init_containers:
        amount = int(c.limits.get(resource, 0))
        if c.restartable:
            sidecars += amount
        else:
            init_peak = max(init_peak, amount + sidecars)
    apps = sum(int(c.limits.get(resource, 0)) for c in pod.containers) + sidecars
    return max(apps, init_peak)


def sandbox_memory(pod: PodSpec) -> int:
    return _aggregate(pod, MEMORY)


def pod_hugepages(pod: PodSpec) -> dict[str, int]:
    """The hugetlb limits kubelet writes to the pod's cgroup."""
    types = {t for c in pod.all_containers() for t in c.limits if t.startswith(HUGEPAGES_PREFIX)}
    return {t: _aggregate(pod, t) for t in types}


def qos_parent(pod: PodSpec) -> str:
    tier = {GUARANTEED: "", BURSTABLE: "/burstable", BEST_EFFORT: "/besteffort"}[pod.qos()]
    return f"/kubepods{tier}/pod{pod.uid}"


def page_limits(spec: ContainerSpec) -> dict[str, int]:
    """CRI page size -> limit, for every size kubelet knows (0 when not requested)."""
    out = {"2MB": 0, "1GB": 0}
    for t, v in spec.limits.items():
        if t.startswith(HUGEPAGES_PREFIX):
            size = {"hugepages-2Mi": "2MB", "hugepages-1Gi": "1GB"}[t]
            out[size] = int(v)
    return out


def cpu_quota(spec: ContainerSpec) -> int:
    cores = spec.limits.get(CPU)
    return 0 if cores is None else int(cores * 100_000)


# -- kubelet's devices and its pod-resources API -----------------------------------------------

GPU, NIC, QAT = "example.com/gpu", "example.com/nic", "example.com/qat"


def inventory(topology: Topology) -> dict[str, list[dict[str, Any]]]:
    """The node's devices: two GPUs and a NIC per NUMA node, a NIC on the first two nodes
    together, two accelerators without topology."""
    nodes = topology.node_ids
    gpus = [{"id": f"gpu{n}-{i}", "numa": [n]} for n in nodes for i in range(2)]
    nics = [{"id": f"nic{n}", "numa": [n]} for n in nodes]
    if len(nodes) > 1:
        nics.append({"id": "nic-wide", "numa": list(nodes[:2])})
    return {GPU: gpus, NIC: nics, QAT: [{"id": "qat0"}, {"id": "qat1"}]}


def _entries(topology: Topology, devices: Mapping[str, Iterable[str]]) -> list[ContainerDevices]:
    numa = {
        (resource, d["id"]): tuple(d.get("numa", ()))
        for resource, known in inventory(topology).items()
        for d in known
    }
    return [ContainerDevices(r, (i,), numa[(r, i)]) for r, ids in devices.items() for i in ids]


def simulated_pod(topology: Topology, scope: str, op: Admit) -> PodSpec:
    """The pod as simulate gets it: the device manager's hints for its allocated devices
    (kubelet's GetTopologyHints, or GetPodTopologyHints on one container in pod scope)."""
    if not op.devices:
        return op.pod
    every = _entries(topology, {r: [d["id"] for d in ds] for r, ds in inventory(topology).items()})
    node_ids = topology.node_ids

    def hints(devices: Mapping[str, Iterable[str]]) -> Any:
        return device_hints(allocated_device_hints(node_ids, _entries(topology, devices), every))

    if scope == SCOPE_POD:
        whole: dict[str, list[str]] = {}
        for devices in op.devices.values():
            for resource, ids in devices.items():
                whole.setdefault(resource, []).extend(ids)
        first = op.pod.containers[0]
        return op.pod.with_container(replace(first, device_hints=hints(whole)))
    pod = op.pod
    for name, devices in op.devices.items():
        c = pod.container(name)
        assert c is not None
        pod = pod.with_container(replace(c, device_hints=hints(devices)))
    return pod


def standin_pod(spec: PodSpec, devices: Devices) -> dict[str, Any]:
    """The pod as the stand-in kubelet knows it."""

    def c(container: ContainerSpec) -> dict[str, Any]:
        out: dict[str, Any] = {"name": container.name}
        if container.restartable:
            out["restartPolicy"] = "Always"
        if container.name in devices:
            out["devices"] = {r: list(ids) for r, ids in devices[container.name].items()}
        return out

    return {
        "name": spec.name,
        "namespace": spec.namespace,
        "initContainers": [c(x) for x in spec.init_containers],
        "containers": [c(x) for x in spec.containers],
    }


class Kubelet:
    """The stand-in kubelet's pod-resources socket, served in ``loop``."""

    def __init__(self, loop: asyncio.AbstractEventLoop, topology: Topology) -> None:
        self.loop = loop
        self.dir = tempfile.mkdtemp(prefix="lvs-", dir="/tmp")  # unix socket paths < 108
        self.path = f"{self.dir}/kubelet.sock"
        spec = {
            "node": {"devices": inventory(topology)},
            "pods": [],
            "behaviour": {"rateLimit": False},
        }
        self._context = running_standin(self.path, spec)
        self.standin = loop.run_until_complete(self._context.__aenter__())

    def add(self, spec: PodSpec, devices: Devices) -> None:
        self.standin.kubelet.add_pod(standin_pod(spec, devices))

    def remove(self, spec: PodSpec) -> None:
        self.standin.kubelet.remove_pod(spec.namespace, spec.name)

    async def client(self) -> PodResourcesClient:
        """The plugin's client; kubelet's deadline and rate limits are other tests' concern:
        here every answer must come."""
        client = PodResourcesClient(
            self.path, logger=_Quiet(), deadline=30.0, qps=1e6, burst=1_000_000
        )
        await client.start()
        assert await client.refresh_inventory() is not None
        return client

    def close(self) -> None:
        self.loop.run_until_complete(self._context.__aexit__(None, None, None))
        shutil.rmtree(self.dir, ignore_errors=True)


# -- the simulate side -----------------------------------------------------------------------


class Simulated:
    """The engine run with `simulate`'s steps for the same ops."""

    def __init__(self, topology: Topology, config: Config) -> None:
        self.manager = MemoryManager(topology, config)

    def step(self, step: Step) -> Any:
        return apply_step(self.manager, step)

    def state(self) -> dict[str, object]:
        return to_checkpoint(self.manager.state)


# -- the NRI side ----------------------------------------------------------------------------


class FakeCgroups:
    """The pods' cgroups as kubelet made them (hugetlb limits per pod)."""

    def __init__(self) -> None:
        self.by_parent: dict[str, dict[str, int]] = {}

    def hugepage_limits(self, cgroup_parent: str) -> dict[str, int] | None:
        return self.by_parent.get(cgroup_parent)


class FakeExitCodes:
    """The runtime's CRI answer for exit codes."""

    def __init__(self) -> None:
        self.codes: dict[str, int] = {}

    async def of(self, ids: Iterable[str]) -> dict[str, int]:
        return {cid: self.codes[cid] for cid in ids if cid in self.codes}


@dataclass
class LiveContainer:
    spec: ContainerSpec
    id: str
    state: int
    attempt: int = 0


@dataclass
class LivePod:
    spec: PodSpec
    sandbox: api.PodSandbox
    containers: dict[str, LiveContainer] = field(default_factory=dict)


class NriNode:
    """containerd with our plugin, as kubelet drives it."""

    def __init__(self, topology: Topology, config: Config) -> None:
        self.topology, self.config = topology, config
        self.cgroups = FakeCgroups()
        self.exits = FakeExitCodes()
        self.loop = asyncio.new_event_loop()
        self.kubelet = Kubelet(self.loop, topology)
        self.client: PodResourcesClient | None = None
        self.plugin = self._plugin(MemoryManager(topology, config))
        self.pods: dict[str, LivePod] = {}
        self.serial = 0

    def _plugin(self, manager: MemoryManager) -> MemoryPlugin:
        if self.client is not None:
            self.loop.run_until_complete(self.client.close())
        self.client = self.loop.run_until_complete(self.kubelet.client())
        tracker = NodeTracker(manager, logger=_Quiet())
        return MemoryPlugin(
            manager,
            tracker=tracker,
            logger=_Quiet(),
            pod_cgroups=self.cgroups,  # type: ignore[arg-type]
            exit_codes=self.exits,  # type: ignore[arg-type]
            kubelet=KubeletResources(self.client, tracker),
        )

    def close(self) -> None:
        if self.client is not None:
            self.loop.run_until_complete(self.client.close())
        self.kubelet.close()
        self.loop.close()

    def state(self) -> dict[str, object]:
        return to_checkpoint(self.plugin.manager.state)

    def _resolve(self, result: Any) -> Any:
        return self.loop.run_until_complete(result) if inspect.isawaitable(result) else result

    def _on_loop(self, call: Callable[..., Any], *args: Any) -> Any:
        """A handler call as the stub makes it: in the event loop, its awaitable awaited."""

        async def handle() -> Any:
            result = call(*args)
            return await result if inspect.isawaitable(result) else result

        return self.loop.run_until_complete(handle())

    def _message(self, pod: LivePod, c: LiveContainer) -> api.Container:
        ctr = api.Container(id=c.id, pod_sandbox_id=pod.sandbox.id, name=c.spec.name, state=c.state)
        ctr.labels["io.kubernetes.container.name"] = c.spec.name
        ctr.labels["io.kubernetes.pod.uid"] = pod.spec.uid
        ctr.annotations["io.kubernetes.container.restartCount"] = str(c.attempt)
        ctr.linux.cgroups_path = f"{pod.sandbox.linux.cgroup_parent}/{c.id}"
        _set_resources(ctr.linux.resources, c.spec)
        if pod.spec.qos() == GUARANTEED and c.spec.cpuset is not None:
            ctr.linux.resources.cpu.cpus = format_cpulist(c.spec.cpuset)
        mems = self.plugin.tracker.mems(pod.spec.uid, c.spec.name)
        if mems and c.state in (api.CONTAINER_CREATED, api.CONTAINER_RUNNING):
            ctr.linux.resources.cpu.mems = mems
        return ctr

    def _new_id(self) -> str:
        self.serial += 1
        return f"c{self.serial:05d}"

    def create(self, pod: LivePod, spec: ContainerSpec, attempt: int = 0) -> bool:
        c = LiveContainer(spec, self._new_id(), api.CONTAINER_CREATED, attempt)
        try:
            self._on_loop(self.plugin.create_container, pod.sandbox, self._message(pod, c))
        except AdmissionRefused:
            # containerd's undo of a failed creation
            self._on_loop(self.plugin.stop_container, pod.sandbox, self._message(pod, c))
            self._on_loop(self.plugin.remove_container, pod.sandbox, self._message(pod, c))
            return False
        pod.containers[spec.name] = c
        return True

    def start(self, pod: LivePod, name: str) -> None:
        c = pod.containers[name]
        self._on_loop(self.plugin.start_container, pod.sandbox, self._message(pod, c))
        c.state = api.CONTAINER_RUNNING

    def exit(self, pod: LivePod, name: str, code: int) -> None:
        c = pod.containers[name]
        self.exits.codes[c.id] = code
        self._on_loop(self.plugin.stop_container, pod.sandbox, self._message(pod, c))
        c.state = api.CONTAINER_STOPPED

    def admit(self, spec: PodSpec, listed: bool = False, devices: Devices | None = None) -> bool:
        sandbox = api.PodSandbox(
            id=f"sb-{spec.uid}", uid=spec.uid, name=spec.name, namespace=spec.namespace
        )
        sandbox.linux.cgroup_parent = qos_parent(spec)
        memory = sandbox_memory(spec)
        if memory:
            sandbox.linux.pod_resources.memory.limit.value = memory
        self.cgroups.by_parent[sandbox.linux.cgroup_parent] = pod_hugepages(spec)
        pod = self.pods[spec.uid] = LivePod(spec, sandbox)
        if listed:
            self.kubelet.add(spec, devices or {})
        self._on_loop(self.plugin.run_pod_sandbox, sandbox)
        for init in spec.init_containers:
            if not self.create(pod, init):
                return False
            self.start(pod, init.name)
            if not init.restartable:
                self.exit(pod, init.name, 0)
        for app in spec.containers:
            if not self.create(pod, app):
                return False
            self.start(pod, app.name)
        return True

    def crash(self, uid: str, name: str, code: int) -> None:
        pod = self.pods[uid]
        c = pod.containers[name]
        self.exit(pod, name, code)
        assert self.create(pod, c.spec, c.attempt + 1), "a restart is never refused"
        self.start(pod, name)

    def resize(self, uid: str, name: str, spec: ContainerSpec, restart: bool) -> bool:
        pod = self.pods[uid]
        c = pod.containers[name]
        resized = replace(c.spec, requests=spec.requests, limits=spec.limits)
        if restart:
            self.exit(pod, name, 0)
            if self.create(pod, resized, c.attempt + 1):
                self.start(pod, name)
                return True
            # refused: kubelet retries; here the resize is given up and the old limits
            # come back, which a restart is never refused
            assert self.create(pod, c.spec, c.attempt + 1)
            self.start(pod, name)
            return False
        update = api.LinuxResources()
        _set_resources(update, resized)
        try:
            self._on_loop(self.plugin.update_container, pod.sandbox, self._message(pod, c), update)
        except AdmissionRefused:
            return False
        c.spec = resized
        self._on_loop(self.plugin.post_update_container, pod.sandbox, self._message(pod, c))
        return True

    def remove(self, uid: str) -> None:
        pod = self.pods.pop(uid)
        for c in pod.containers.values():
            if c.state == api.CONTAINER_RUNNING:
                self._on_loop(self.plugin.stop_container, pod.sandbox, self._message(pod, c))
                c.state = api.CONTAINER_STOPPED
        self._on_loop(self.plugin.stop_pod_sandbox, pod.sandbox)
        for c in pod.containers.values():
            self._on_loop(self.plugin.remove_container, pod.sandbox, self._message(pod, c))
        self._on_loop(self.plugin.remove_pod_sandbox, pod.sandbox)
        self.kubelet.remove(pod.spec)

    def restart_plugin(self) -> None:
        old = self.plugin
        self.plugin = self._plugin(
            MemoryManager(self.topology, self.config, old.manager.state.clone())
        )
        self.plugin.tracker.restore_exit_records(old.tracker.exit_records())
        listed = [
            self._message(p, c)
            for p in self.pods.values()
            for c in p.containers.values()
            if c.state in (api.CONTAINER_CREATED, api.CONTAINER_RUNNING)  # as containerd
        ]
        # the listing shows each container's mems as the runtime applied them
        for msg in listed:
            msg.linux.resources.cpu.mems = old.tracker.mems(
                msg.labels["io.kubernetes.pod.uid"], msg.name
            )
        self._on_loop(self.plugin.synchronize, [p.sandbox for p in self.pods.values()], listed)


class CriNode:
    """A CRI runtime with the proxy in front (over gRPC), as kubelet drives it."""

    def __init__(self, topology: Topology, config: Config) -> None:
        self.topology, self.config = topology, config
        self.cgroups = FakeCgroups()
        self.runtime = FakeRuntime()
        self.loop = asyncio.new_event_loop()
        self.pods: dict[str, tuple[PodSpec, str]] = {}  # uid -> (spec, sandbox id)
        self.ids: dict[tuple[str, str], tuple[str, int, ContainerSpec]] = {}
        self._env: Any = None
        self._context: Any = None
        self.kubelet = Kubelet(self.loop, topology)
        self.client: PodResourcesClient | None = None
        self._open(NodeTracker(MemoryManager(topology, config), logger=_Quiet()))

    def _open(self, tracker: NodeTracker) -> None:
        self.client = self.loop.run_until_complete(self.kubelet.client())
        self._context = proxied(
            tracker=tracker,
            runtime=self.runtime,
            pod_cgroups=self.cgroups,
            kubelet=KubeletResources(self.client, tracker),
        )
        self._env = self.loop.run_until_complete(self._context.__aenter__())

    def _shut(self) -> None:
        self.loop.run_until_complete(self._context.__aexit__(None, None, None))
        if self.client is not None:
            self.loop.run_until_complete(self.client.close())

    def close(self) -> None:
        self._shut()
        self.kubelet.close()
        self.loop.close()

    def state(self) -> dict[str, object]:
        return to_checkpoint(self._env.manager.state)

    def _call(self, name: str, request: Any, response: Any = None) -> Any:
        return self.loop.run_until_complete(self._env.call(name, request, response))

    def _create(self, uid: str, spec: ContainerSpec, attempt: int) -> bool:
        pod, sandbox = self.pods[uid]
        config = cri.ContainerConfig()
        config.metadata.name = spec.name
        config.metadata.attempt = attempt
        config.labels["io.kubernetes.container.name"] = spec.name
        config.labels["io.kubernetes.pod.uid"] = uid
        config.annotations["io.kubernetes.container.restartCount"] = str(attempt)
        res = config.linux.resources
        memory = spec.limits.get(MEMORY)
        res.memory_limit_in_bytes = int(memory) if memory else 0
        quota = cpu_quota(spec)
        if quota:
            res.cpu_quota, res.cpu_period = quota, 100_000
        if pod.qos() == GUARANTEED and spec.cpuset is not None:
            res.cpuset_cpus = format_cpulist(spec.cpuset)
        for size, limit in page_limits(spec).items():
            res.hugepage_limits.add(page_size=size, limit=limit)
        try:
            cid = self.loop.run_until_complete(self._env.create(sandbox, config))
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == grpc.StatusCode.FAILED_PRECONDITION, exc
            return False
        self.ids[(uid, spec.name)] = (cid, attempt, spec)
        return True

    def _start(self, uid: str, name: str) -> None:
        cid = self.ids[(uid, name)][0]
        self._call("StartContainer", cri.StartContainerRequest(container_id=cid))

    def _exit(self, uid: str, name: str, code: int) -> None:
        # the container exits on its own: kubelet learns it from the runtime, CRI says
        # nothing (the proxy asks ContainerStatus when it needs to know)
        c = self.runtime.containers[self.ids[(uid, name)][0]]
        c.state, c.exit_code, c.finished_at = cri.CONTAINER_EXITED, code, 1

    def admit(self, spec: PodSpec, listed: bool = False, devices: Devices | None = None) -> bool:
        config = cri.PodSandboxConfig()
        config.metadata.name, config.metadata.uid = spec.name, spec.uid
        config.metadata.namespace = spec.namespace
        config.labels["io.kubernetes.pod.uid"] = spec.uid
        config.linux.cgroup_parent = qos_parent(spec)
        memory = sandbox_memory(spec)
        if memory:
            config.linux.resources.memory_limit_in_bytes = memory
        self.cgroups.by_parent[config.linux.cgroup_parent] = pod_hugepages(spec)
        if listed:
            self.kubelet.add(spec, devices or {})
        resp = self._call(
            "RunPodSandbox", cri.RunPodSandboxRequest(config=config), cri.RunPodSandboxResponse
        )
        self.pods[spec.uid] = (spec, resp.pod_sandbox_id)
        for init in spec.init_containers:
            if not self._create(spec.uid, init, 0):
                return False
            self._start(spec.uid, init.name)
            if not init.restartable:
                self._exit(spec.uid, init.name, 0)
        for app in spec.containers:
            if not self._create(spec.uid, app, 0):
                return False
            self._start(spec.uid, app.name)
        return True

    def crash(self, uid: str, name: str, code: int) -> None:
        _, attempt, spec = self.ids[(uid, name)]
        self._exit(uid, name, code)
        assert self._create(uid, spec, attempt + 1), "a restart is never refused"
        self._start(uid, name)

    def resize(self, uid: str, name: str, spec: ContainerSpec, restart: bool) -> bool:
        cid, attempt, old = self.ids[(uid, name)]
        resized = replace(old, requests=spec.requests, limits=spec.limits)
        if restart:
            self._exit(uid, name, 0)
            if self._create(uid, resized, attempt + 1):
                self._start(uid, name)
                return True
            assert self._create(uid, old, attempt + 1)
            self._start(uid, name)
            return False
        update = cri.UpdateContainerResourcesRequest(container_id=cid)
        update.linux.memory_limit_in_bytes = int(resized.limits.get(MEMORY, 0))
        quota = cpu_quota(resized)
        if quota:
            update.linux.cpu_quota, update.linux.cpu_period = quota, 100_000
        try:
            self._call("UpdateContainerResources", update)
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == grpc.StatusCode.FAILED_PRECONDITION, exc
            return False
        self.ids[(uid, name)] = (cid, attempt, resized)
        return True

    def remove(self, uid: str) -> None:
        spec, sandbox = self.pods.pop(uid)
        self._call("StopPodSandbox", cri.StopPodSandboxRequest(pod_sandbox_id=sandbox))
        self._call("RemovePodSandbox", cri.RemovePodSandboxRequest(pod_sandbox_id=sandbox))
        self.kubelet.remove(spec)

    def restart_plugin(self) -> None:
        old = self._env.plugin
        self._shut()
        restored = MemoryManager(self.topology, self.config, old.manager.state.clone())
        tracker = NodeTracker(restored, logger=_Quiet())
        tracker.restore_exit_records(old.exit_records())
        self._open(tracker)


class _Quiet:
    """A logger that drops everything (hypothesis runs thousands of events)."""

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None


def _set_resources(res: api.LinuxResources, spec: ContainerSpec) -> None:
    memory = spec.limits.get(MEMORY)
    if memory:
        res.memory.limit.value = int(memory)
    quota = cpu_quota(spec)
    if quota:
        res.cpu.quota.value = quota
        res.cpu.period.value = 100_000
    for size, limit in page_limits(spec).items():
        res.hugepage_limits.add(page_size=size, limit=limit)


# -- the generated workloads -------------------------------------------------------------------


@st.composite
def live_pods(draw: st.DrawFn, topology: Topology, uid: str, scope: str) -> PodSpec:
    """Pods as a kubelet would run them, keeping out what the runtime cannot show."""
    qos = draw(one_of((GUARANTEED, GUARANTEED, GUARANTEED, BURSTABLE, BEST_EFFORT)))
    n_init = draw(ints(0, 2))
    n_app = draw(ints(1, 3))
    inits = [
        draw_container(draw, topology, f"init{i}", qos, init=True, restartable=draw(BOOLS))
        for i in range(n_init)
    ]
    apps = [
        draw_container(draw, topology, f"app{i}", qos, needs_burstable=i == 0) for i in range(n_app)
    ]
    # device hints come from kubelet's pod-resources API (drawn as devices, see
    # workloads); a cpuset of every CPU of the machine is the shared pool to the plugin
    # (no CPU hint)
    every_cpu = frozenset().union(*(n.cpus for n in topology.nodes))
    containers = [
        replace(
            _visible(c),
            device_hints=None,
            cpuset=None if c.cpuset == every_cpu else c.cpuset,
        )
        for c in inits + apps
    ]
    if scope == SCOPE_POD:
        app_types = {t for c in containers[n_init:] for t in c.limits}
        shared_cpus = containers[0].cpuset
        containers = [
            replace(
                _drop_types(c, {t for t in c.limits if t not in app_types}),
                cpuset=shared_cpus,
            )
            for c in containers
        ]
    return PodSpec(
        uid=uid,
        name=uid,
        init_containers=tuple(containers[:n_init]),
        containers=tuple(containers[n_init:]),
    )


def _init_peak(pod: PodSpec) -> int:
    sidecars = peak = 0
    for c in pod.init_containers:
        amount = int(c.limits.get(MEMORY, 0))
        if c.restartable:
            sidecars += amount
        else:
            peak = max(peak, amount + sidecars)
    return (
        peak if pod.init_containers and any(c.is_regular_init for c in pod.init_containers) else 0
    )


def _visible(c: ContainerSpec) -> ContainerSpec:
    """Without zero-sized hugepage requests, which the runtime cannot show."""
    zero = {t for t, v in c.limits.items() if t.startswith(HUGEPAGES_PREFIX) and v == 0}
    zero |= {t for t, v in c.requests.items() if t.startswith(HUGEPAGES_PREFIX) and v == 0}
    return _drop_types(c, zero)


def _drop_types(c: ContainerSpec, types: set[str]) -> ContainerSpec:
    if not types:
        return c
    return replace(
        c,
        requests={t: v for t, v in c.requests.items() if t not in types},
        limits={t: v for t, v in c.limits.items() if t not in types},
    )


@st.composite
def workloads(draw: st.DrawFn, max_ops: int = 14) -> tuple[Topology, Config, list[Op]]:
    topology = draw(topologies(1, 4))
    config = draw(configs(topology, POLICY_STATIC))
    ops: list[Op] = []
    live: dict[str, PodSpec] = {}
    serial = 0
    for _ in range(draw(ints(1, max_ops))):
        kind = draw(one_of(("admit", "admit", "crash", "resize", "remove", "restart")))
        if kind == "admit" or not live:
            serial += 1
            pod = draw(live_pods(topology, f"pod-{serial}", config.topology_manager_scope))
            # without kubelet's listing, a pod whose init container's memory is its peak
            # may see later containers placed otherwise (docs/lifecycle.md): listed here
            listed = draw(BOOLS) or _init_peak(pod) >= sandbox_memory(pod)
            devices = _draw_devices(draw, topology, pod) if listed else {}
            ops.append(Admit(pod, listed, devices))
            live[pod.uid] = pod
            continue
        pod = live[_pick(draw, sorted(live))]
        running = [c for c in pod.all_containers() if not (c.init and not c.restartable)]
        if kind == "crash":
            c = _pick(draw, running)
            ops.append(Crash(pod.uid, c.name, draw(one_of((1, 3, 137, 0)))))
        elif kind == "resize":
            c = _pick(draw, running)
            ops.append(Resize(pod.uid, c.name, _resized(draw, c), draw(BOOLS)))
        elif kind == "remove":
            ops.append(Remove(pod.uid))
            del live[pod.uid]
        else:
            ops.append(RestartPlugin())
    return topology, config, ops


def _draw_devices(draw: st.DrawFn, topology: Topology, pod: PodSpec) -> Devices:
    """Devices kubelet allocated to some of a Guaranteed pod's listed containers."""
    if pod.qos() != GUARANTEED:
        return {}
    ids = {r: tuple(d["id"] for d in devices) for r, devices in inventory(topology).items()}
    out: dict[str, dict[str, tuple[str, ...]]] = {}
    for c in pod.all_containers():
        if c.is_regular_init or draw(ints(0, 2)) != 0:
            continue
        resources = draw(st.lists(one_of((GPU, GPU, NIC, QAT)), min_size=1, max_size=2))
        out[c.name] = {
            r: tuple(draw(st.lists(one_of(ids[r]), min_size=1, max_size=2, unique=True)))
            for r in dict.fromkeys(resources)
        }
    return out


def _resized(draw: st.DrawFn, c: ContainerSpec) -> ContainerSpec:
    """New limits: memory up or down by a few steps, hugepages and CPU as they were."""
    memory = c.limits.get(MEMORY)
    if not memory:
        return c
    new = max(Fraction(256 * MI), memory + draw(ints(-4, 16)) * 256 * MI)
    limits = {**c.limits, MEMORY: new}
    requests = {**c.requests, MEMORY: new} if MEMORY in c.requests else dict(c.requests)
    return replace(c, requests=requests, limits=limits)


# -- the comparison ----------------------------------------------------------------------------


class Node(Protocol):
    """A runtime with the plugin in front, driven as kubelet drives it."""

    def admit(self, spec: PodSpec, listed: bool, devices: Devices) -> bool: ...

    def crash(self, uid: str, name: str, code: int) -> None: ...

    def resize(self, uid: str, name: str, spec: ContainerSpec, restart: bool) -> bool: ...

    def remove(self, uid: str) -> None: ...

    def restart_plugin(self) -> None: ...

    def state(self) -> dict[str, object]: ...


def run_workload(node: Node, topology: Topology, config: Config, ops: list[Op]) -> Counter[str]:
    """Drive ``ops`` on ``node`` and on simulate; the states must agree after each."""
    sim = Simulated(topology, config)
    admitted: dict[str, bool] = {}
    seen: Counter[str] = Counter()
    for i, op in enumerate(ops):
        if isinstance(op, (Crash, Resize, Remove)) and not admitted.get(op.uid):
            continue  # a pod the node refused, or removed, is not running
        if isinstance(op, Admit):
            live_ok = node.admit(op.pod, op.listed, op.devices)
            simulated = simulated_pod(topology, config.topology_manager_scope, op)
            if op.devices:
                # the same admission without the device hints, on a copy: did they matter?
                blind = Simulated(topology, config)
                blind.manager.state = sim.manager.state.clone()
                blind_result = blind.step(AdmitStep(op.pod))
            result = sim.step(AdmitStep(simulated))
            assert isinstance(result, AdmissionResult)
            if live_ok != result.admitted:
                pytest.fail(
                    f"op {i} {op}: live admitted {live_ok}, simulate {result.message}\n"
                    f"topology {topology}\nconfig {config}\nops {ops[:i]}"
                )
            admitted[op.pod.uid] = live_ok
            seen["admitted" if live_ok else "refused"] += 1
            if live_ok and op.pod.init_containers:
                seen["admitted with init containers"] += 1
            if op.devices:
                seen[f"{'admitted' if live_ok else 'refused'} with device hints"] += 1
                assert isinstance(blind_result, AdmissionResult)
                if blind_result.admitted != result.admitted or (
                    result.admitted and to_checkpoint(blind.manager.state) != sim.state()
                ):
                    seen["device hints changed the decision"] += 1
            if live_ok:
                sim.step(StartStep(op.pod.uid))
            else:
                node.remove(op.pod.uid)
                sim.step(RemoveStep(op.pod.uid, None))
        elif isinstance(op, Crash):
            node.crash(op.uid, op.name, op.code)
            seen["crash"] += 1
        elif isinstance(op, Resize):
            live_ok = node.resize(op.uid, op.name, op.spec, op.restart)
            result = sim.step(ResizeStep(op.uid, op.name, op.spec))
            assert isinstance(result, ResizeResult)
            if live_ok != result.resized:
                pytest.fail(f"op {i} {op}: live resized {live_ok}, simulate {result.reason}")
            kind = "restart" if op.restart else "in place"
            seen[f"resize {kind} {'accepted' if live_ok else 'refused'}"] += 1
        elif isinstance(op, Remove):
            node.remove(op.uid)
            sim.step(RemoveStep(op.uid, None))
            admitted[op.uid] = False
            seen["remove"] += 1
        else:
            node.restart_plugin()
            seen["plugin restart"] += 1
        if node.state() != sim.state():
            pytest.fail(f"after op {i} {op}:\n{_diff(node.state(), sim.state())}")
    return seen


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(workloads())
def test_nri_plugin_keeps_simulates_books(workload: tuple[Topology, Config, list[Op]]) -> None:
    node = NriNode(*workload[:2])
    try:
        run_workload(node, *workload)
    finally:
        node.close()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(workloads(max_ops=10))
def test_cri_proxy_keeps_simulates_books(workload: tuple[Topology, Config, list[Op]]) -> None:
    node = CriNode(*workload[:2])
    try:
        run_workload(node, *workload)
    finally:
        node.close()


def test_workloads_reach_the_interesting_events() -> None:
    """Guard against generators that never crash, resize or restart anything."""
    seen: Counter[str] = Counter()

    @settings(max_examples=200, deadline=None, database=None, derandomize=True)
    @given(workloads())
    def observe(workload: tuple[Topology, Config, list[Op]]) -> None:
        node = NriNode(*workload[:2])
        try:
            seen.update(run_workload(node, *workload))
        finally:
            node.close()

    observe()
    for event in (
        "admitted",
        "refused",
        "admitted with init containers",
        "crash",
        "resize in place accepted",
        "resize in place refused",
        "resize restart accepted",
        "resize restart refused",
        "remove",
        "plugin restart",
        "admitted with device hints",
        "refused with device hints",
        "device hints changed the decision",
    ):
        assert seen[event] > 0, (event, seen)


def _diff(live: dict[str, object], simulated: dict[str, object]) -> str:
    """The parts of two checkpoints that differ, for a readable failure."""
    lines = []
    for key in ("machineState", "entries"):
        a, b = live.get(key, {}), simulated.get(key, {})
        assert isinstance(a, dict) and isinstance(b, dict)
        for k in sorted(set(a) | set(b)):
            if a.get(k) != b.get(k):
                lines.append(f"{key}[{k}]: live {a.get(k)} simulate {b.get(k)}")
    return "\n".join(lines)

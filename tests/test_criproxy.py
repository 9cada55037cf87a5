"""The CRI proxy against an in-process fake runtime (gRPC over unix sockets).

The fake runtime keeps sandboxes and containers the way a CRI runtime does
and records every request it receives as bytes, so the tests can compare
what kubelet sent with what reached the runtime.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc  # type: ignore[import-untyped]
import pytest
import yaml
from google.protobuf import json_format
from google.protobuf.message import Message

from nri_plugin.engine.manager import MemoryManager
from nri_plugin.frontends.cri import convert
from nri_plugin.frontends.cri.gen import cri_pb2 as cri
from nri_plugin.frontends.cri.proxy import (
    REFUSAL_CODE,
    CRIProxy,
    endpoint_target,
    start_server,
    unix_socket_path,
)
from nri_plugin.frontends.nri_convert import pod_qos
from nri_plugin.inputs.config import parse_config
from nri_plugin.inputs.topology import host_node_ids, topology_from_mapping
from nri_plugin.nri.gen import nri_pb2 as api
from nri_plugin.persist.file import load_file
from nri_plugin.persist.format import to_checkpoint
from nri_plugin.tracker.nodemap import ANNOTATION, NodeMap, default_map
from nri_plugin.tracker.tracker import NodeTracker
from tests.helpers import eventually

REPO = Path(__file__).resolve().parents[1]
GI = 1 << 30
RUNTIME = "/runtime.v1.RuntimeService/"
IMAGES = "/runtime.v1.ImageService/"

# 4 NUMA nodes of 8Gi, 4 CPUs each; node 0 has 1Gi reserved (7Gi allocatable)
TOPOLOGY = """\
nodes:
  - {id: 0, cpus: "0-3", memory: 8Gi}
  - {id: 1, cpus: "4-7", memory: 8Gi}
  - {id: 2, cpus: "8-11", memory: 8Gi}
  - {id: 3, cpus: "12-15", memory: 8Gi}
distances: [[10, 21, 31, 31], [21, 10, 31, 31], [31, 31, 10, 21], [31, 31, 21, 10]]
"""


def config_mapping(policy: str) -> dict[str, Any]:
    return {
        "policy": "static",
        "topologyManagerPolicy": policy,
        "reservedMemory": ["0:memory=1Gi"],
    }


def new_manager(policy: str = "single-numa-node") -> MemoryManager:
    topology = topology_from_mapping(yaml.safe_load(TOPOLOGY))
    return MemoryManager(topology, parse_config(config_mapping(policy)))


# -- the fake runtime ------------------------------------------------------------------------


@dataclass
class Sandbox:
    id: str
    config: cri.PodSandboxConfig
    state: int = cri.SANDBOX_READY


@dataclass
class Ctr:
    id: str
    sandbox_id: str
    config: cri.ContainerConfig
    created_at: int
    state: int = cri.CONTAINER_CREATED
    mems: str = ""
    # set when the container exits on its own (tests set them)
    exit_code: int = 0
    finished_at: int = 0


@dataclass
class FakeRuntime:
    """A CRI runtime's bookkeeping, no containers run.

    ``fail`` makes a method fail, ``hold`` makes it wait for an event.
    """

    sandboxes: dict[str, Sandbox] = field(default_factory=dict)
    containers: dict[str, Ctr] = field(default_factory=dict)
    requests: list[tuple[str, bytes]] = field(default_factory=list)
    metadata: dict[str, dict[str, str]] = field(default_factory=dict)
    remaining: dict[str, float | None] = field(default_factory=dict)
    fail: dict[str, tuple[Any, str]] = field(default_factory=dict)
    hold: dict[str, asyncio.Event] = field(default_factory=dict)  # answer once set
    serial: int = 0

    def received(self, name: str) -> list[bytes]:
        return [data for method, data in self.requests if method == RUNTIME + name]

    def _next(self, prefix: str) -> str:
        self.serial += 1
        return f"{prefix}{self.serial:04d}"

    def add_sandbox(self, config: cri.PodSandboxConfig, state: int = cri.SANDBOX_READY) -> str:
        sid = self._next("sb")
        self.sandboxes[sid] = Sandbox(sid, config, state)
        return sid

    def add_container(
        self, sandbox_id: str, config: cri.ContainerConfig, state: int, mems: str = ""
    ) -> str:
        cid = self._next("ctr")
        self.serial += 1
        self.containers[cid] = Ctr(cid, sandbox_id, config, self.serial, state, mems)
        return cid

    # -- CRI methods (request message -> response message) --

    def Version(self, r: cri.VersionRequest) -> Message:
        return cri.VersionResponse(version="0.1.0", runtime_name="fake", runtime_version="1")

    def RunPodSandbox(self, r: cri.RunPodSandboxRequest) -> Message:
        return cri.RunPodSandboxResponse(pod_sandbox_id=self.add_sandbox(r.config))

    def StopPodSandbox(self, r: cri.StopPodSandboxRequest) -> Message:
        self.sandboxes[r.pod_sandbox_id].state = cri.SANDBOX_NOTREADY
        for c in self.containers.values():
            if c.sandbox_id == r.pod_sandbox_id:
                c.state = cri.CONTAINER_EXITED
        return cri.UpdateContainerResourcesResponse()  # empty, like StopPodSandboxResponse

    def RemovePodSandbox(self, r: cri.RemovePodSandboxRequest) -> Message:
        self.sandboxes.pop(r.pod_sandbox_id, None)
        for cid in [k for k, c in self.containers.items() if c.sandbox_id == r.pod_sandbox_id]:
            del self.containers[cid]
        return cri.UpdateContainerResourcesResponse()

    def PodSandboxStatus(self, r: cri.PodSandboxStatusRequest) -> Message:
        s = self.sandboxes[r.pod_sandbox_id]
        resp = cri.PodSandboxStatusResponse()
        resp.status.id = s.id
        resp.status.metadata.CopyFrom(s.config.metadata)
        resp.status.state = s.state  # type: ignore[assignment]
        if r.verbose:  # containerd's layout; Go writes int64 as JSON numbers
            config = json_format.MessageToDict(s.config, preserving_proto_field_name=True)
            resp.info["info"] = json.dumps({"config": _numbers(config)})
        return resp

    def ListPodSandbox(self, r: cri.ListPodSandboxRequest) -> Message:
        resp = cri.ListPodSandboxResponse()
        for s in self.sandboxes.values():
            item = resp.items.add(id=s.id, state=s.state)
            item.metadata.CopyFrom(s.config.metadata)
            item.labels.update(s.config.labels)
        return resp

    def CreateContainer(self, r: cri.CreateContainerRequest) -> Message:
        if r.pod_sandbox_id not in self.sandboxes:
            raise KeyError(r.pod_sandbox_id)
        cid = self.add_container(
            r.pod_sandbox_id,
            r.config,
            cri.CONTAINER_CREATED,
            r.config.linux.resources.cpuset_mems,
        )
        return cri.CreateContainerResponse(container_id=cid)

    def StartContainer(self, r: cri.StartContainerRequest) -> Message:
        self.containers[r.container_id].state = cri.CONTAINER_RUNNING
        return cri.UpdateContainerResourcesResponse()

    def StopContainer(self, r: cri.StopContainerRequest) -> Message:
        self.containers[r.container_id].state = cri.CONTAINER_EXITED
        return cri.UpdateContainerResourcesResponse()

    def RemoveContainer(self, r: cri.RemoveContainerRequest) -> Message:
        self.containers.pop(r.container_id, None)
        return cri.UpdateContainerResourcesResponse()

    def ListContainers(self, r: cri.ListContainersRequest) -> Message:
        resp = cri.ListContainersResponse()
        for c in self.containers.values():
            item = resp.containers.add(
                id=c.id,
                pod_sandbox_id=c.sandbox_id,
                state=c.state,
                created_at=c.created_at,
            )
            item.metadata.CopyFrom(c.config.metadata)
            item.labels.update(c.config.labels)
        return resp

    def ContainerStatus(self, r: cri.ContainerStatusRequest) -> Message:
        c = self.containers[r.container_id]
        resp = cri.ContainerStatusResponse()
        resp.status.id = c.id
        resp.status.metadata.CopyFrom(c.config.metadata)
        resp.status.state = c.state  # type: ignore[assignment]
        resp.status.exit_code = c.exit_code
        resp.status.finished_at = c.finished_at
        if r.verbose:
            res = c.config.linux.resources
            config = json_format.MessageToDict(c.config, preserving_proto_field_name=True)
            spec_cpu = {"cpus": res.cpuset_cpus, "mems": c.mems}
            resp.info["info"] = json.dumps(
                {
                    "sandboxID": c.sandbox_id,
                    "config": _numbers(config),
                    "runtimeSpec": {"linux": {"resources": {"cpu": spec_cpu}}},
                }
            )
        return resp

    def UpdateContainerResources(self, r: cri.UpdateContainerResourcesRequest) -> Message:
        c = self.containers[r.container_id]
        if r.linux.cpuset_mems:
            c.mems = r.linux.cpuset_mems
        if r.linux.memory_limit_in_bytes:  # as containerd merges an update (0: unchanged)
            c.config.linux.resources.memory_limit_in_bytes = r.linux.memory_limit_in_bytes
        return cri.UpdateContainerResourcesResponse()

    # -- gRPC --

    def rpc_handler(self) -> Any:
        runtime = self

        class Handler(grpc.GenericRpcHandler):  # type: ignore[misc]
            def service(self, details: Any) -> Any:
                method = details.method
                if method == RUNTIME + "GetContainerEvents":
                    return grpc.unary_stream_rpc_method_handler(runtime._events)
                return grpc.unary_unary_rpc_method_handler(runtime._unary(method))

        return Handler()

    def _note(self, method: str, data: bytes, context: Any) -> None:
        self.requests.append((method, data))
        self.metadata[method] = {m.key: m.value for m in context.invocation_metadata()}
        self.remaining[method] = context.time_remaining()

    def _unary(self, method: str) -> Callable[[bytes, Any], Awaitable[bytes]]:
        async def handle(data: bytes, context: Any) -> bytes:
            self._note(method, data, context)
            if method in self.hold:
                await self.hold[method].wait()
            if method in self.fail:
                code, details = self.fail[method]
                await context.abort(code, details, (("x-runtime", "refused"),))
            name = method.rsplit("/", 1)[-1]
            if method == RUNTIME + "Echo" or method.startswith(IMAGES):
                await context.send_initial_metadata((("x-echo", "1"),))
                context.set_trailing_metadata((("x-done", "1"),))
                return b"echo:" + data
            request_type = getattr(cri, f"{name}Request", None)
            if request_type is None or not hasattr(self, name):
                await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"unknown method {method}")
                raise AssertionError("abort raises")
            try:
                response: Message = getattr(self, name)(request_type.FromString(data))
            except KeyError as exc:
                await context.abort(grpc.StatusCode.NOT_FOUND, f"{exc.args[0]} not found")
            return response.SerializeToString()

        return handle

    async def _events(self, data: bytes, context: Any) -> AsyncIterator[bytes]:
        self._note(RUNTIME + "GetContainerEvents", data, context)
        for i in range(3):
            yield f"event-{i}".encode()


_INT64_FIELDS = {
    "cpu_period",
    "cpu_quota",
    "cpu_shares",
    "memory_limit_in_bytes",
    "memory_swap_limit_in_bytes",
    "oom_score_adj",
    "limit",
}


def _numbers(value: Any, key: str = "") -> Any:
    """MessageToDict writes int64 as strings; containerd's Go JSON writes numbers."""
    if isinstance(value, dict):
        return {k: _numbers(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [_numbers(v, key) for v in value]
    return int(value) if key in _INT64_FIELDS else value


# -- kubelet's requests ---------------------------------------------------------------------


def sandbox_config(uid: str, qos: str = "Guaranteed", memory: int = 0) -> cri.PodSandboxConfig:
    tier = {"Guaranteed": "", "Burstable": "/burstable", "BestEffort": "/besteffort"}[qos]
    config = cri.PodSandboxConfig()
    config.metadata.name = f"pod-{uid}"
    config.metadata.uid = uid
    config.metadata.namespace = "default"
    config.labels["io.kubernetes.pod.uid"] = uid
    config.linux.cgroup_parent = f"/kubepods{tier}/pod{uid}"
    if memory:
        config.linux.resources.memory_limit_in_bytes = memory
        config.linux.resources.cpu_period = 100_000
        config.linux.resources.cpu_quota = 200_000
    return config


def container_config(
    name: str,
    memory: int = 0,
    cpus: str = "",
    mems: str = "",
    cpu_millis: int = 2000,
) -> cri.ContainerConfig:
    config = cri.ContainerConfig()
    config.metadata.name = name
    config.labels["io.kubernetes.container.name"] = name
    res = config.linux.resources
    res.cpu_period = 100_000
    res.cpu_quota = cpu_millis * 100
    res.cpu_shares = cpu_millis * 1024 // 1000
    res.memory_limit_in_bytes = memory
    res.cpuset_cpus = cpus
    res.cpuset_mems = mems
    res.hugepage_limits.add(page_size="2MB", limit=0)
    return config


@dataclass
class Kubelet:
    """Sends CRI requests the way kubelet does, to whatever serves ``client``'s socket."""

    client: Any
    runtime: FakeRuntime

    async def call(
        self,
        name: str,
        request: Message | bytes,
        response_type: type[Any] | None = None,
        *,
        timeout: float = 5.0,
        metadata: tuple[tuple[str, str], ...] = (),
    ) -> Any:
        data = request if isinstance(request, bytes) else request.SerializeToString()
        method = name if name.startswith("/") else RUNTIME + name
        answer = await self.client.unary_unary(method)(data, timeout=timeout, metadata=metadata)
        return answer if response_type is None else response_type.FromString(answer)

    async def run_pod(self, uid: str, qos: str = "Guaranteed", memory: int = 0) -> str:
        config = sandbox_config(uid, qos, memory)
        resp = await self.call(
            "RunPodSandbox", cri.RunPodSandboxRequest(config=config), cri.RunPodSandboxResponse
        )
        return str(resp.pod_sandbox_id)

    async def create(self, sandbox_id: str, config: cri.ContainerConfig) -> str:
        sandbox = self.runtime.sandboxes[sandbox_id].config
        request = cri.CreateContainerRequest(
            pod_sandbox_id=sandbox_id, config=config, sandbox_config=sandbox
        )
        resp = await self.call("CreateContainer", request, cri.CreateContainerResponse)
        return str(resp.container_id)


@dataclass
class Env(Kubelet):
    proxy: CRIProxy
    plugin: NodeTracker
    manager: MemoryManager

    def reserved(self, node: int) -> int:
        return self.manager.state.machine[node].memory_map["memory"].reserved

    def entries(self) -> dict[str, list[str]]:
        return {uid: sorted(c) for uid, c in self.manager.state.entries.items() if c}


@contextlib.asynccontextmanager
async def proxied(
    *,
    policy: str = "single-numa-node",
    runtime: FakeRuntime | None = None,
    manager: MemoryManager | None = None,
    persist: Callable[[], None] | None = None,
    synchronize: bool = True,
    tracker: NodeTracker | None = None,
    pod_cgroups: Any = None,
    kubelet: Any = None,
) -> AsyncIterator[Env]:
    runtime = runtime or FakeRuntime()
    manager = manager or new_manager(policy)
    sockets = Path(tempfile.mkdtemp(prefix="nmm-cri-"))  # short: unix socket paths < 108
    runtime_server = grpc.aio.server()
    runtime_server.add_generic_rpc_handlers((runtime.rpc_handler(),))
    runtime_server.add_insecure_port(f"unix:{sockets}/runtime.sock")
    await runtime_server.start()
    channel = grpc.aio.insecure_channel(f"unix:{sockets}/runtime.sock")
    plugin = tracker or NodeTracker(manager, persist=persist)
    manager = plugin.manager
    proxy = CRIProxy(plugin, channel, pod_cgroups=pod_cgroups, kubelet=kubelet)
    server = await start_server(proxy, str(sockets / "proxy.sock"))
    client = grpc.aio.insecure_channel(f"unix:{sockets}/proxy.sock")
    try:
        if synchronize:
            await proxy.synchronize()
        yield Env(client, runtime, proxy, plugin, manager)
    finally:
        await client.close()
        await server.stop(None)
        await channel.close()
        await runtime_server.stop(None)
        shutil.rmtree(sockets, ignore_errors=True)


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(test())  # type: ignore[arg-type]


# -- generated code and wire numbers --------------------------------------------------------


def test_generated_cri_modules_are_up_to_date(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, str(REPO / "hack" / "gen_proto.py"), "--cri-out", str(tmp_path)],
        check=True,
        capture_output=True,
    )
    committed_dir = REPO / "nri_plugin" / "frontends" / "cri" / "gen"
    fresh = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    committed = {p.name: p.read_bytes() for p in committed_dir.iterdir() if p.is_file()}
    assert sorted(fresh) == sorted(committed)
    assert [n for n in fresh if fresh[n] != committed[n]] == [], "run hack/gen_proto.py"


# runtime.v1 wire numbers (k8s.io/cri-api api.proto) of every field the proxy reads or writes
FIELD_NUMBERS = {
    ("ContainerStatus", "finished_at"): 6,
    ("ContainerStatus", "exit_code"): 7,
    ("RunPodSandboxRequest", "config"): 1,
    ("RunPodSandboxRequest", "runtime_handler"): 2,
    ("PodSandboxConfig", "metadata"): 1,
    ("PodSandboxConfig", "labels"): 6,
    ("PodSandboxConfig", "annotations"): 7,
    ("PodSandboxConfig", "linux"): 8,
    ("LinuxPodSandboxConfig", "cgroup_parent"): 1,
    ("LinuxPodSandboxConfig", "overhead"): 4,
    ("LinuxPodSandboxConfig", "resources"): 5,
    ("PodSandboxMetadata", "uid"): 2,
    ("PodSandboxMetadata", "namespace"): 3,
    ("CreateContainerRequest", "config"): 2,
    ("CreateContainerRequest", "sandbox_config"): 3,
    ("ContainerConfig", "labels"): 9,
    ("ContainerConfig", "annotations"): 10,
    ("ContainerConfig", "linux"): 15,
    ("LinuxContainerConfig", "resources"): 1,
    ("LinuxContainerResources", "memory_limit_in_bytes"): 4,
    ("LinuxContainerResources", "cpuset_cpus"): 6,
    ("LinuxContainerResources", "cpuset_mems"): 7,
    ("LinuxContainerResources", "hugepage_limits"): 8,
    ("LinuxContainerResources", "memory_swap_limit_in_bytes"): 10,
    ("HugepageLimit", "limit"): 2,
    ("Container", "state"): 6,
    ("Container", "created_at"): 7,
    ("Container", "labels"): 8,
    ("ContainerStatus", "state"): 3,
    ("ContainerStatus", "resources"): 16,
    ("ContainerStatusResponse", "info"): 2,
    ("PodSandboxStatusResponse", "info"): 2,
    ("UpdateContainerResourcesRequest", "linux"): 2,
    ("UpdateContainerResourcesRequest", "annotations"): 4,
    ("VersionResponse", "runtime_version"): 3,
}


def test_field_numbers_are_runtime_v1s() -> None:
    got = {
        (message, name): getattr(cri, message).DESCRIPTOR.fields_by_name[name].number
        for message, name in FIELD_NUMBERS
    }
    assert got == FIELD_NUMBERS
    assert (cri.CONTAINER_EXITED, cri.SANDBOX_NOTREADY) == (2, 1)


# -- conversions ----------------------------------------------------------------------------


def test_resources_convert_as_containerd_builds_the_spec() -> None:
    res = container_config("app", memory=2 * GI, cpus="4-5").linux.resources
    res.hugepage_limits.add(page_size="1GB", limit=GI)
    out = convert.linux_resources(res)
    assert out.memory.limit.value == 2 * GI
    assert (out.cpu.quota.value, out.cpu.period.value, out.cpu.shares.value) == (
        200_000,
        100_000,
        2048,
    )
    assert out.cpu.cpus == "4-5"
    assert [(h.page_size, h.limit) for h in out.hugepage_limits] == [("2MB", 0), ("1GB", GI)]
    # zero means "not set" in CRI: no limit, no quota in the spec
    empty = convert.linux_resources(cri.LinuxContainerResources())
    assert not empty.HasField("memory") and not empty.cpu.HasField("quota")


def test_pod_keeps_cgroup_parent_and_pod_level_limits() -> None:
    pod = convert.pod_sandbox("sb1", sandbox_config("u1", "Burstable", memory=3 * GI))
    assert (pod.id, pod.uid, pod.name, pod.namespace) == ("sb1", "u1", "pod-u1", "default")
    assert pod_qos(pod) == "Burstable"
    assert pod.linux.pod_resources.memory.limit.value == 3 * GI


def test_listed_container_takes_kubelets_resources_and_the_specs_mems() -> None:
    config = container_config("app", memory=GI, cpus="0-1")
    item = cri.Container(id="c1", pod_sandbox_id="sb1", state=cri.CONTAINER_RUNNING)
    item.metadata.name = "app"
    info = {
        "info": json.dumps(
            {
                "config": {
                    "linux": {"resources": {"memory_limit_in_bytes": GI, "cpuset_cpus": "0-1"}}
                },
                "runtimeSpec": {
                    "linux": {
                        "cgroupsPath": "/kubepods/podu1/c1",
                        "resources": {"cpu": {"cpus": "0-3", "mems": "2"}},
                    }
                },
            }
        )
    }
    status = cri.ContainerStatus(id="c1", state=cri.CONTAINER_EXITED)
    c = convert.listed_container(item, status, info)
    assert c.linux.resources.memory.limit.value == GI
    assert (c.linux.resources.cpu.cpus, c.linux.resources.cpu.mems) == ("0-3", "2")
    assert c.state == api.CONTAINER_STOPPED  # the status is newer than the listing
    assert c.linux.cgroups_path == "/kubepods/podu1/c1"
    # no verbose info: the status' resources
    status.resources.linux.CopyFrom(config.linux.resources)
    bare = convert.listed_container(item, status, {"info": "not json"})
    assert bare.linux.resources.memory.limit.value == GI
    assert bare.linux.resources.cpu.cpus == "0-1"


def test_endpoints_accept_paths_and_unix_urls() -> None:
    assert endpoint_target("/run/x.sock") == "unix:/run/x.sock"
    assert endpoint_target("unix:///run/x.sock") == "unix:/run/x.sock"
    assert unix_socket_path("unix:///run/x.sock") == Path("/run/x.sock")
    assert unix_socket_path("/run/x.sock") == Path("/run/x.sock")


# -- relaying -------------------------------------------------------------------------------


def test_unknown_methods_pass_through_with_metadata_deadline_and_errors() -> None:
    async def scenario() -> None:
        async with proxied() as env:
            payload = bytes(range(256))  # not a protobuf we know: bytes must stay bytes
            call = env.client.unary_unary(RUNTIME + "Echo")(
                payload, timeout=30.0, metadata=(("x-trace", "abc"),)
            )
            assert await call == b"echo:" + payload
            assert ("x-echo", "1") in tuple(await call.initial_metadata())
            assert ("x-done", "1") in tuple(await call.trailing_metadata())
            assert env.runtime.metadata[RUNTIME + "Echo"]["x-trace"] == "abc"
            remaining = env.runtime.remaining[RUNTIME + "Echo"]
            # the caller's deadline, give or take gRPC's rounding of timeouts
            assert remaining is not None and 25 < remaining < 31
            await env.client.unary_unary(RUNTIME + "Echo")(b"")
            assert env.runtime.remaining[RUNTIME + "Echo"] is None

            answer = await env.call(IMAGES + "ListImages", b"\x0a\x00")
            assert answer == b"echo:\x0a\x00"

            env.runtime.fail[RUNTIME + "Echo"] = (grpc.StatusCode.NOT_FOUND, "no such thing")
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await env.call("Echo", b"x")
            assert err.value.code() == grpc.StatusCode.NOT_FOUND
            assert err.value.details() == "no such thing"
            assert ("x-runtime", "refused") in tuple(err.value.trailing_metadata())

    run(scenario)


def test_server_streaming_calls_pass_through() -> None:
    async def scenario() -> None:
        async with proxied() as env:
            call = env.client.unary_stream(RUNTIME + "GetContainerEvents")(b"", timeout=5)
            assert [m async for m in call] == [b"event-0", b"event-1", b"event-2"]
            assert await call.code() == grpc.StatusCode.OK

    run(scenario)


def test_untouched_requests_reach_the_runtime_byte_for_byte() -> None:
    async def scenario() -> None:
        async with proxied() as env:
            sid = await env.run_pod("u1", "Burstable")
            config = container_config("b", memory=GI, cpu_millis=500)
            request = cri.CreateContainerRequest(
                pod_sandbox_id=sid,
                config=config,
                sandbox_config=env.runtime.sandboxes[sid].config,
            ).SerializeToString()
            await env.call("CreateContainer", request)
            assert env.runtime.received("CreateContainer") == [request]
            assert env.entries() == {}

    run(scenario)


# -- admission ------------------------------------------------------------------------------


def test_guaranteed_container_is_pinned_and_unknown_fields_survive() -> None:
    async def scenario() -> None:
        async with proxied() as env:
            sid = await env.run_pod("u1")
            config = container_config("app", memory=GI, cpus="8-9")
            # working_dir (field 5) is not in our schema: it must reach the runtime intact
            config = cri.ContainerConfig.FromString(config.SerializeToString() + b"\x2a\x04/srv")
            cid = await env.create(sid, config)
            assert env.runtime.containers[cid].mems == "2"
            sent = cri.CreateContainerRequest.FromString(env.runtime.received("CreateContainer")[0])
            assert b"\x2a\x04/srv" in sent.config.SerializeToString()
            assert sent.config.linux.resources.cpuset_cpus == "8-9"
            assert env.reserved(2) == GI
            assert env.plugin.owners[("u1", "app")] == cid
            assert list(env.plugin.pods["u1"].containers) == [cid]

    run(scenario)


def test_refusal_reaches_the_client_and_nothing_is_created() -> None:
    async def scenario() -> None:
        async with proxied() as env:
            sid = await env.run_pod("u1")
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await env.create(sid, container_config("big", memory=12 * GI))
            assert err.value.code() == REFUSAL_CODE
            details = err.value.details()
            assert details.startswith("TopologyAffinityError:")
            assert "memory=12Gi" in details and "single-numa-node" in details
            assert env.runtime.received("CreateContainer") == []
            assert env.entries() == {}

    run(scenario)


def test_runtime_failure_undoes_the_admission_but_a_restart_keeps_its_blocks() -> None:
    async def scenario() -> None:
        async with proxied() as env:
            sid = await env.run_pod("u1")
            create = RUNTIME + "CreateContainer"
            env.runtime.fail[create] = (grpc.StatusCode.RESOURCE_EXHAUSTED, "disk full")
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await env.create(sid, container_config("app", memory=2 * GI))
            assert (err.value.code(), err.value.details()) == (
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                "disk full",
            )
            assert env.entries() == {} and env.reserved(0) == 0
            # a container that exited and is re-created under its name
            del env.runtime.fail[create]
            first = await env.create(sid, container_config("app", memory=2 * GI))
            await env.call("StopContainer", cri.StopContainerRequest(container_id=first))
            env.runtime.fail[create] = (grpc.StatusCode.UNKNOWN, "runc failed")
            with pytest.raises(grpc.aio.AioRpcError):
                await env.create(sid, container_config("app", memory=2 * GI))
            assert env.entries() == {"u1": ["app"]} and env.reserved(0) == 2 * GI
            assert env.plugin.owners[("u1", "app")] == first

    run(scenario)


def test_update_keeps_our_mems() -> None:
    async def scenario() -> None:
        async with proxied() as env:
            sid = await env.run_pod("u1")
            cid = await env.create(sid, container_config("app", memory=GI, cpus="4"))
            update = cri.UpdateContainerResourcesRequest(container_id=cid)
            update.linux.cpuset_cpus = "4-5"
            update.linux.cpuset_mems = "0-3"
            await env.call("UpdateContainerResources", update)
            sent = cri.UpdateContainerResourcesRequest.FromString(
                env.runtime.received("UpdateContainerResources")[-1]
            )
            assert (sent.linux.cpuset_cpus, sent.linux.cpuset_mems) == ("4-5", "1")
            # a container we did not pin: untouched
            other = await env.run_pod("u2", "Burstable")
            bid = await env.create(other, container_config("b", memory=GI, cpu_millis=500))
            raw = cri.UpdateContainerResourcesRequest(container_id=bid)
            raw.linux.cpuset_mems = "0-3"
            await env.call("UpdateContainerResources", raw)
            assert env.runtime.received("UpdateContainerResources")[-1] == raw.SerializeToString()

    run(scenario)


def test_removal_and_pod_stop_release_memory() -> None:
    async def scenario() -> None:
        async with proxied() as env:
            sid = await env.run_pod("u1")
            a = await env.create(sid, container_config("a", memory=2 * GI))
            await env.create(sid, container_config("b", memory=3 * GI))
            assert env.reserved(0) == 5 * GI
            await env.call("StopContainer", cri.StopContainerRequest(container_id=a))
            assert env.reserved(0) == 5 * GI  # a stopped container may restart
            await env.call("RemoveContainer", cri.RemoveContainerRequest(container_id=a))
            assert env.entries() == {"u1": ["b"]} and env.reserved(0) == 3 * GI
            await env.call("StopPodSandbox", cri.StopPodSandboxRequest(pod_sandbox_id=sid))
            assert env.entries() == {} and env.reserved(0) == 0
            await env.call("RemovePodSandbox", cri.RemovePodSandboxRequest(pod_sandbox_id=sid))
            assert "u1" not in env.plugin.pods and env.proxy.sandboxes == {}

    run(scenario)


def test_removing_the_sandbox_a_pod_replaced_keeps_the_new_ones_memory() -> None:
    async def scenario() -> None:
        async with proxied() as env:
            old = await env.run_pod("u1")
            await env.create(old, container_config("app", memory=2 * GI))
            await env.call("StopPodSandbox", cri.StopPodSandboxRequest(pod_sandbox_id=old))
            new = await env.run_pod("u1")  # kubelet re-creates the dead sandbox
            await env.create(new, container_config("app", memory=2 * GI))
            # kubelet's garbage collection removes the dead sandbox later
            await env.call("StopPodSandbox", cri.StopPodSandboxRequest(pod_sandbox_id=old))
            await env.call("RemovePodSandbox", cri.RemovePodSandboxRequest(pod_sandbox_id=old))
            assert env.entries() == {"u1": ["app"]} and env.reserved(0) == 2 * GI
            await env.call("StopPodSandbox", cri.StopPodSandboxRequest(pod_sandbox_id=new))
            assert env.entries() == {}

    run(scenario)


def test_a_create_the_caller_abandons_is_undone() -> None:
    async def scenario() -> None:
        runtime = FakeRuntime()
        async with proxied(runtime=runtime) as env:
            sid = await env.run_pod("u1")
            release = asyncio.Event()
            runtime.hold[RUNTIME + "CreateContainer"] = release  # the runtime hangs
            request = cri.CreateContainerRequest(
                pod_sandbox_id=sid,
                config=container_config("app", memory=2 * GI),
                sandbox_config=runtime.sandboxes[sid].config,
            )
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await env.call("CreateContainer", request, timeout=0.5)
            assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            # the proxy learns of the cancellation
            await eventually(lambda: not env.entries(), what="the cancelled container released")
            assert env.entries() == {} and env.reserved(0) == 0
            assert env.plugin.pods["u1"].containers == {}
            release.set()

    run(scenario)


def test_finished_init_container_lends_its_memory_and_is_released_on_start() -> None:
    async def scenario() -> None:
        async with proxied() as env:
            sid = await env.run_pod("u1")
            init = await env.create(sid, container_config("init", memory=4 * GI))
            await env.call("StartContainer", cri.StartContainerRequest(container_id=init))
            env.runtime.containers[init].state = cri.CONTAINER_EXITED  # exits on its own
            app = await env.create(sid, container_config("app", memory=4 * GI))
            # as kubelet: the app reuses the init container's 4Gi on node 0
            assert env.runtime.containers[app].mems == "0"
            assert env.reserved(0) == 4 * GI
            await env.call("StartContainer", cri.StartContainerRequest(container_id=app))
            assert env.entries() == {"u1": ["app"]} and env.reserved(0) == 4 * GI

    run(scenario)


def test_a_running_sidecar_keeps_its_own_memory() -> None:
    async def scenario() -> None:
        async with proxied() as env:
            sid = await env.run_pod("u1")
            side = await env.create(sid, container_config("sidecar", memory=4 * GI))
            await env.call("StartContainer", cri.StartContainerRequest(container_id=side))
            app = await env.create(sid, container_config("app", memory=4 * GI))
            assert env.runtime.containers[app].mems == "1"  # node 0 has 3Gi left
            assert env.entries() == {"u1": ["app", "sidecar"]}

    run(scenario)


def test_state_changes_are_persisted(tmp_path: Path) -> None:
    from nri_plugin.persist.writer import CheckpointWriter

    async def scenario() -> None:
        manager = new_manager()
        path = tmp_path / "memory_manager_state"
        writer = CheckpointWriter(path, None)
        async with proxied(manager=manager, persist=lambda: writer.request(manager.state)) as env:
            sid = await env.run_pod("u1")
            await env.create(sid, container_config("app", memory=GI, cpus="12"))
            await writer.flush()
        saved = load_file(path)
        assert saved is not None and saved.blocks("u1", "app") is not None
        assert saved.machine[3].memory_map["memory"].reserved == GI

    run(scenario)


# -- restart recovery -----------------------------------------------------------------------


def populated_runtime() -> tuple[FakeRuntime, dict[str, str]]:
    rt = FakeRuntime()
    ids = {}
    g = rt.add_sandbox(sandbox_config("g"))
    ids["pinned"] = rt.add_container(
        g, container_config("pinned", memory=3 * GI), cri.CONTAINER_RUNNING, mems="1"
    )
    ids["late"] = rt.add_container(
        g, container_config("late", memory=2 * GI, cpus="8"), cri.CONTAINER_CREATED
    )
    b = rt.add_sandbox(sandbox_config("b", "Burstable"))
    ids["burst"] = rt.add_container(
        b, container_config("burst", memory=GI, cpu_millis=500), cri.CONTAINER_RUNNING
    )
    stopped = rt.add_sandbox(sandbox_config("s"), cri.SANDBOX_NOTREADY)
    ids["stopped"] = rt.add_container(
        stopped, container_config("app", memory=GI), cri.CONTAINER_EXITED, mems="0"
    )
    return rt, ids


def test_recovery_adopts_pins_late_and_releases_gone() -> None:
    async def scenario() -> None:
        rt, ids = populated_runtime()
        manager = new_manager()
        # a stale checkpoint: pod "s" has stopped, pod "gone" no longer exists
        async with proxied(runtime=FakeRuntime(), manager=manager) as env:
            for uid in ("s", "gone"):
                sid = await env.run_pod(uid)
                await env.create(sid, container_config("app", memory=GI))
        async with proxied(runtime=rt, manager=manager) as env:
            assert env.entries() == {"g": ["late", "pinned"]}
            assert env.reserved(1) == 3 * GI  # adopted where it runs
            assert rt.containers[ids["late"]].mems == "2"  # admitted now, follows its CPUs
            assert env.reserved(2) == 2 * GI and env.reserved(0) == 0
            # the caches know them: removal releases
            await env.call("RemoveContainer", cri.RemoveContainerRequest(container_id=ids["late"]))
            assert env.entries() == {"g": ["pinned"]}

    run(scenario)


def test_recovery_from_nothing_matches_the_state_it_replaces() -> None:
    async def scenario() -> None:
        runtime = FakeRuntime()
        async with proxied(runtime=runtime, policy="best-effort") as env:
            sid = await env.run_pod("u1")
            await env.create(sid, container_config("a", memory=3 * GI, cpus="4"))
            await env.create(sid, container_config("b", memory=12 * GI))  # a group
            before = to_checkpoint(env.manager.state)
        async with proxied(runtime=runtime, policy="best-effort") as env:
            assert to_checkpoint(env.manager.state) == before
            assert env.runtime.received("UpdateContainerResources") == []

    run(scenario)


def test_intercepted_calls_wait_for_synchronization() -> None:
    async def scenario() -> None:
        async with proxied(synchronize=False) as env:
            assert await env.call("Echo", b"up") == b"echo:up"  # relayed at once
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await env.call(
                    "RunPodSandbox",
                    cri.RunPodSandboxRequest(config=sandbox_config("u1")),
                    timeout=1.0,
                )
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            assert env.runtime.received("RunPodSandbox") == []
            pending = asyncio.create_task(env.run_pod("u2"))
            # the call is in the proxy, parked until synchronization (not merely not sent yet)
            await eventually(
                lambda: len(env.proxy.synchronized._waiters or ()) > 0,
                what="RunPodSandbox waiting for synchronization",
            )
            assert not pending.done()
            assert env.runtime.received("RunPodSandbox") == []
            await env.proxy.synchronize_until_done()
            assert (await pending).startswith("sb")

    run(scenario)


def test_synchronization_retries_until_the_runtime_answers() -> None:
    async def scenario() -> None:
        runtime = FakeRuntime()
        runtime.fail[RUNTIME + "Version"] = (grpc.StatusCode.UNAVAILABLE, "starting")
        async with proxied(runtime=runtime, synchronize=False) as env:
            task = asyncio.create_task(env.proxy.synchronize_until_done())
            await eventually(lambda: len(runtime.received("Version")) >= 2, what="a retry")
            assert not env.proxy.synchronized.is_set()
            del runtime.fail[RUNTIME + "Version"]
            await asyncio.wait_for(task, 10)
            assert env.proxy.synchronized.is_set() and env.plugin.synchronized

    run(scenario)


# -- the command ----------------------------------------------------------------------------


def test_cli_refuses_to_proxy_to_itself() -> None:
    # a subprocess: the command configures logging for the whole process
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "nri_plugin.cli",
            "cri-proxy",
            "--listen",
            "/tmp/x.sock",
            "--runtime-endpoint",
            "unix:///tmp/x.sock",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=False,
    )
    assert out.returncode == 2
    assert out.stderr.strip() == (
        "nri-memory-manager cri-proxy: --listen /tmp/x.sock: is the runtime endpoint;"
        " the proxy would call itself"
    )


def test_cli_serves_persists_and_stops_cleanly(tmp_path: Path) -> None:
    async def scenario() -> None:
        runtime = FakeRuntime()
        sockets = Path(tempfile.mkdtemp(prefix="nmm-cli-"))
        server = grpc.aio.server()
        server.add_generic_rpc_handlers((runtime.rpc_handler(),))
        server.add_insecure_port(f"unix:{sockets}/runtime.sock")
        await server.start()
        (tmp_path / "topology.yaml").write_text(TOPOLOGY)
        (tmp_path / "config.yaml").write_text(yaml.safe_dump(config_mapping("single-numa-node")))
        (sockets / "proxy.sock").touch()  # a leftover file that is not a socket is refused
        port = _free_port()
        argv = [
            sys.executable,
            "-m",
            "nri_plugin.cli",
            "cri-proxy",
            "--listen",
            str(sockets / "proxy.sock"),
            "--runtime-endpoint",
            f"unix://{sockets}/runtime.sock",
            "--config",
            str(tmp_path / "config.yaml"),
            "--topology-file",
            str(tmp_path / "topology.yaml"),
            "--state-dir",
            str(tmp_path / "state"),
            "--metrics-address",
            f"127.0.0.1:{port}",
        ]
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        refused = await asyncio.create_subprocess_exec(
            *argv, env=env, stderr=asyncio.subprocess.PIPE
        )
        _, err = await refused.communicate()
        assert refused.returncode == 2 and b"is not a socket" in err
        (sockets / "proxy.sock").unlink()
        proc = await asyncio.create_subprocess_exec(
            *argv, env=env, stderr=asyncio.subprocess.DEVNULL
        )
        try:
            status = await _wait_healthy(port)
            assert status == 200
            client = grpc.aio.insecure_channel(f"unix:{sockets}/proxy.sock")
            kubelet = Kubelet(client, runtime)
            sid = await kubelet.run_pod("u1")
            cid = await kubelet.create(sid, container_config("app", memory=GI, cpus="4"))
            # fake node 1, written as the host node it maps to when this host lacks node 1
            host = NodeMap(default_map(range(4), host_node_ids("/sys")))
            assert runtime.containers[cid].mems == host.mems_text(1 << 1)
            received = cri.CreateContainerRequest.FromString(
                runtime.received("CreateContainer")[-1]
            )
            assert received.config.annotations.get(ANNOTATION, "1") == "1"
            metrics = await asyncio.to_thread(_get, port, "/metrics")
            assert "kubelet_memory_manager_pinning_requests_total 1.0" in metrics
            await client.close()
        finally:
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(proc.wait(), 15) == 0
            await server.stop(None)
            shutil.rmtree(sockets, ignore_errors=True)
        saved = load_file(tmp_path / "state" / "memory_manager_state")
        assert saved is not None and saved.machine[1].memory_map["memory"].reserved == GI

    run(scenario)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(port: int, path: str) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
        return str(r.read().decode())


async def _wait_healthy(port: int, timeout: float = 20.0) -> int:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            return await asyncio.to_thread(_status, port)
        except OSError:
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.1)


def _status(port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        if e.code == 503:
            raise ConnectionError("not synchronized yet") from None
        return int(e.code)

"""A stand-in for kubelet's pod-resources server, built from proto/podresources.proto.

It answers as kubelet's ``v1PodResourcesServer`` does
(``pkg/kubelet/apis/podresources/server_v1.go``) for a node described in a
file or a mapping:

* ``List``: every pod; ``Get``: one pod by namespace and name, or the plain
  error kubelet returns ("pod NAME in namespace NS not found", code Unknown);
* a pod's containers: its sidecars (init containers with
  ``restartPolicy: Always``) then its app containers; regular init containers
  are never listed;
* devices as kubelet's ``containerDevicesFromResourceDeviceInstances`` sends
  them: one entry per device and NUMA node, one without topology for a
  device that has none; ``GetAllocatableResources`` lists the healthy
  devices that way, the node's CPUs, and no memory (kubelet's memory manager
  at None), unless the node says otherwise;
* kubelet's rate limit (100 QPS, burst 10): ``ResourceExhausted`` "rejected
  by rate limit";
* knobs for what a real kubelet can do: ``delay`` before every answer (slow;
  a large one hangs), ``get_disabled`` (a kubelet before 1.34 without the
  gate: "PodResources API Get method disabled").

The node file (YAML or JSON)::

    node:
      cpus: [0, 1, 2, 3]
      devices:
        example.com/gpu:
          - {id: gpu0, numa: [1]}
          - {id: gpu1}                  # no topology
          - {id: gpu2, numa: [0], healthy: false}
      memory: [{type: memory, size: 1073741824, numa: [0]}]   # allocatable (None: empty)
    behaviour: {delay: 0.0, rateLimit: true, getDisabled: false}
    pods:
      - name: web
        namespace: default
        initContainers:
          - {name: setup}                                # never listed
          - {name: proxy, restartPolicy: Always}         # a sidecar: listed first
        containers:
          - name: app
            devices: {example.com/gpu: [gpu0]}
            cpus: [2, 3]
            memory: [{type: memory, size: 1073741824, numa: [1]}]
            dynamicClaim: my-claim    # a DRA claim, sent as field 5 (unknown to our proto)

In-process: ``async with running_standin(path, node) as standin`` (asyncio,
``standin.kubelet`` to change pods and knobs, ``standin.calls`` to see what
was asked). As a process: ``python -m tests.podresources_standin --socket
PATH --pods FILE [--delay S]``; it re-reads FILE when it changes, prints
``serving PATH`` once listening, and stops on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc  # type: ignore[import-untyped]
import yaml

from nri_plugin.podresources.gen import podresources_pb2 as pb
from nri_plugin.podresources.gen import podresources_pb2_grpc as pb_grpc
from nri_plugin.podresources.ratelimit import KUBELET_BURST, KUBELET_QPS, TokenBucket
from tests.protowire import varint

RATE_LIMIT_MESSAGE = "rejected by rate limit"
GET_DISABLED_MESSAGE = "PodResources API Get method disabled"


def _length_delimited(field_number: int, payload: bytes) -> bytes:
    return varint(field_number << 3 | 2) + varint(len(payload)) + payload


def dynamic_resource_field(claim_name: str) -> bytes:
    """ContainerResources.dynamic_resources (5) = DynamicResource{claim_name (2)}, as bytes."""
    return _length_delimited(5, _length_delimited(2, claim_name.encode()))


def _memory(items: Any) -> list[Any]:
    return [
        pb.ContainerMemory(
            memory_type=m["type"],
            size=int(m["size"]),
            topology=pb.TopologyInfo(nodes=[pb.NUMANode(ID=n) for n in m.get("numa", [])]),
        )
        for m in items or []
    ]


@dataclass
class Kubelet:
    """The node as kubelet knows it, and how kubelet behaves."""

    spec: dict[str, Any]
    delay: float = 0.0
    rate_limit: bool = True
    get_disabled: bool = False
    qps: float = KUBELET_QPS
    burst: int = KUBELET_BURST

    @classmethod
    def from_mapping(cls, spec: Mapping[str, Any]) -> Kubelet:
        behaviour = spec.get("behaviour", {}) or {}
        return cls(
            spec=dict(spec),
            delay=float(behaviour.get("delay", 0.0)),
            rate_limit=bool(behaviour.get("rateLimit", True)),
            get_disabled=bool(behaviour.get("getDisabled", False)),
        )

    # -- the node -----------------------------------------------------------

    def _devices(self) -> dict[str, list[dict[str, Any]]]:
        return dict((self.spec.get("node", {}) or {}).get("devices", {}) or {})

    def _topology_of(self, resource: str, device_id: str) -> list[int] | None:
        for d in self._devices().get(resource, []):
            if d["id"] == device_id:
                numa = d.get("numa")
                return list(numa) if numa else None
        return None

    def _device_entries(self, resource: str, ids: list[str]) -> list[Any]:
        """containerDevicesFromResourceDeviceInstances: one entry per device and NUMA node."""
        out = []
        for device_id in ids:
            nodes = self._topology_of(resource, device_id)
            if nodes is None:
                out.append(pb.ContainerDevices(resource_name=resource, device_ids=[device_id]))
                continue
            for n in nodes:
                out.append(
                    pb.ContainerDevices(
                        resource_name=resource,
                        device_ids=[device_id],
                        topology=pb.TopologyInfo(nodes=[pb.NUMANode(ID=n)]),
                    )
                )
        return out

    def _container(self, c: Mapping[str, Any]) -> Any:
        message = pb.ContainerResources(name=c["name"], cpu_ids=list(c.get("cpus", [])))
        for resource, ids in (c.get("devices", {}) or {}).items():
            message.devices.extend(self._device_entries(resource, list(ids)))
        message.memory.extend(_memory(c.get("memory")))
        if c.get("dynamicClaim"):
            message.MergeFromString(dynamic_resource_field(c["dynamicClaim"]))
        return message

    def pod(self, p: Mapping[str, Any]) -> Any:
        containers = [
            self._container(c)
            for c in p.get("initContainers", []) or []
            if c.get("restartPolicy") == "Always"
        ]
        containers += [self._container(c) for c in p.get("containers", []) or []]
        return pb.PodResources(
            name=p["name"],
            namespace=p.get("namespace", "default"),
            containers=containers,
            cpu_ids=list(p.get("cpus", [])),
            memory=_memory(p.get("memory")),
        )

    def pods(self) -> list[Mapping[str, Any]]:
        return list(self.spec.get("pods", []) or [])

    def add_pod(self, pod: Mapping[str, Any]) -> None:
        self.spec.setdefault("pods", []).append(dict(pod))

    def remove_pod(self, namespace: str, name: str) -> None:
        self.spec["pods"] = [
            p
            for p in self.pods()
            if (p.get("namespace", "default"), p["name"]) != (namespace, name)
        ]

    def allocatable(self) -> Any:
        node = self.spec.get("node", {}) or {}
        message = pb.AllocatableResourcesResponse(cpu_ids=list(node.get("cpus", [])))
        for resource, devices in self._devices().items():
            healthy = [d["id"] for d in devices if d.get("healthy", True)]
            message.devices.extend(self._device_entries(resource, healthy))
        message.memory.extend(_memory(node.get("memory")))
        return message


@dataclass
class Call:
    method: str
    request: Any
    at: float
    refused: bool = False


@dataclass
class Standin(pb_grpc.PodResourcesListerServicer):  # type: ignore[misc]
    kubelet: Kubelet
    calls: list[Call] = field(default_factory=list)
    reload: Any = None  # called before every answer (the subprocess re-reads its file)
    _bucket: TokenBucket | None = None

    def count(self, method: str) -> int:
        return sum(1 for c in self.calls if c.method == method and not c.refused)

    async def _enter(self, method: str, request: Any, context: Any) -> None:
        now = time.monotonic()
        if self.reload is not None:
            self.reload()
        k = self.kubelet
        if self._bucket is None or (self._bucket.qps, self._bucket.burst) != (k.qps, k.burst):
            self._bucket = TokenBucket(k.qps, k.burst, now)
        call = Call(method, request, now)
        self.calls.append(call)
        if k.rate_limit and not self._bucket.allow(now):
            call.refused = True
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, RATE_LIMIT_MESSAGE)
        if k.delay > 0:
            await asyncio.sleep(k.delay)

    async def List(self, request: Any, context: Any) -> Any:
        await self._enter("List", request, context)
        return pb.ListPodResourcesResponse(
            pod_resources=[self.kubelet.pod(p) for p in self.kubelet.pods()]
        )

    async def Get(self, request: Any, context: Any) -> Any:
        await self._enter("Get", request, context)
        if self.kubelet.get_disabled:
            await context.abort(grpc.StatusCode.UNKNOWN, GET_DISABLED_MESSAGE)
        for p in self.kubelet.pods():
            if (p.get("namespace", "default"), p["name"]) == (
                request.pod_namespace,
                request.pod_name,
            ):
                return pb.GetPodResourcesResponse(pod_resources=self.kubelet.pod(p))
        await context.abort(
            grpc.StatusCode.UNKNOWN,
            f"pod {request.pod_name} in namespace {request.pod_namespace} not found",
        )

    async def GetAllocatableResources(self, request: Any, context: Any) -> Any:
        await self._enter("GetAllocatableResources", request, context)
        return self.kubelet.allocatable()


async def start_standin(path: str | os.PathLike[str], standin: Standin) -> Any:
    """Serve ``standin`` on the unix socket ``path``; returns the started grpc.aio server."""
    socket_path = Path(path)
    with contextlib.suppress(FileNotFoundError):
        socket_path.unlink()
    server = grpc.aio.server()
    pb_grpc.add_PodResourcesListerServicer_to_server(standin, server)
    server.add_insecure_port("unix:" + os.path.abspath(socket_path))
    await server.start()
    return server


@contextlib.asynccontextmanager
async def running_standin(
    path: str | os.PathLike[str], node: Mapping[str, Any] | Kubelet
) -> AsyncIterator[Standin]:
    kubelet = node if isinstance(node, Kubelet) else Kubelet.from_mapping(node)
    standin = Standin(kubelet)
    server = await start_standin(path, standin)
    try:
        yield standin
    finally:
        await server.stop(grace=None)
        with contextlib.suppress(FileNotFoundError):
            Path(path).unlink()


def load_node(path: Path) -> dict[str, Any]:
    text = path.read_text()
    data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: not a mapping")
    return data


async def _serve(socket: str, pods: Path, delay: float | None) -> None:
    kubelet = Kubelet.from_mapping(load_node(pods))
    if delay is not None:
        kubelet.delay = delay
    seen = pods.stat().st_mtime_ns

    def reload() -> None:
        nonlocal seen
        mtime = pods.stat().st_mtime_ns
        if mtime != seen:
            seen = mtime
            fresh = Kubelet.from_mapping(load_node(pods))
            kubelet.spec = fresh.spec
            kubelet.rate_limit, kubelet.get_disabled = fresh.rate_limit, fresh.get_disabled
            kubelet.delay = delay if delay is not None else fresh.delay

    standin = Standin(kubelet, reload=reload)
    server = await start_standin(socket, standin)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"serving {socket}", flush=True)
    await stop.wait()
    await server.stop(grace=None)
    with contextlib.suppress(FileNotFoundError):
        Path(socket).unlink()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--socket", required=True, metavar="PATH")
    parser.add_argument("--pods", required=True, type=Path, metavar="FILE")
    parser.add_argument("--delay", type=float, default=None, metavar="SECONDS")
    args = parser.parse_args(argv)
    try:
        load_node(args.pods)
    except (OSError, ValueError, yaml.YAMLError) as exc:
        print(f"podresources_standin: {exc}", file=sys.stderr)
        return 2
    asyncio.run(_serve(args.socket, args.pods, args.delay))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""kubelet's pod-resources API wired into the tracker, the NRI handler and the CRI proxy.

The stand-in kubelet (tests/podresources_standin.py) runs in-process on a unix
socket. What is checked: a device's NUMA node steers a container's memory and
refuses it under ``single-numa-node`` when that node lacks memory; the decision
log names the device hints; exact init classification from the listing (and
the decision log says so); pod scope takes every listed container's devices
per resource; a slow, dead, rate-limiting or absent kubelet leaves today's
behaviour within the client's deadline, counted by kind; Synchronize lists
first; the served socket's memory is the tracker's.
"""

from __future__ import annotations

import asyncio
import inspect
import shutil
import socket
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc  # type: ignore[import-untyped]
import pytest

from nri_plugin.engine.manager import MemoryManager
from nri_plugin.frontends.cri.gen import cri_pb2 as cri
from nri_plugin.frontends.kubelet import KubeletResources, TrackerMemory, listed_containers
from nri_plugin.frontends.nri import AdmissionRefused, MemoryPlugin
from nri_plugin.inputs.config import parse_config
from nri_plugin.inputs.topology import topology_from_mapping
from nri_plugin.metrics import Metrics
from nri_plugin.nri.gen import nri_pb2 as api
from nri_plugin.podresources import client as prc
from nri_plugin.podresources.client import PodResourcesClient
from nri_plugin.podresources.gen import podresources_pb2 as pb
from nri_plugin.podresources.gen import podresources_pb2_grpc as pb_grpc
from nri_plugin.podresources.server import PodResourcesServer, start_server
from nri_plugin.tracker.tracker import NodeTracker
from tests.nri_builders import GI, container, pod
from tests.podresources_standin import Standin, running_standin

# 4 NUMA nodes of 8Gi, 1Gi reserved on node 0; CPUs 0-15 (a cpuset of all of them is
# the shared pool: no CPU hint)
TOPOLOGY = {
    "nodes": [
        {"id": i, "cpus": f"{4 * i}-{4 * i + 3}", "memory": "8Gi", "hugepages": {"1Gi": "2Gi"}}
        for i in range(4)
    ]
}
SHARED = "0-15"
# beyond the client's deadline, what a CreateContainer may take here: the decision itself
# and the event loop's latency on a busy 2-core machine (kubelet's delays below are 2 s)
SLACK_S = 0.25

GPUS = [
    {"id": "gpu0", "numa": [0]},
    {"id": "gpu1", "numa": [1]},
    {"id": "gpu2", "numa": [1]},
    {"id": "gpu3", "numa": [2]},
]


# kubelet's device manager's hints for one device on node 1 of 4 (topology_hints.go): every
# mask that holds it, narrowest first, preferred at the narrowest width
ON_NODE_1 = [
    {"nodes": nodes, "preferred": len(nodes) == 1}
    for nodes in (
        [1], [0, 1], [1, 2], [1, 3], [0, 1, 2], [0, 1, 3], [1, 2, 3], [0, 1, 2, 3]
    )
]  # fmt: skip


def kubelet_node(*pods: dict[str, Any], **behaviour: Any) -> dict[str, Any]:
    return {
        "node": {"cpus": list(range(16)), "devices": {"example.com/gpu": GPUS}},
        "pods": list(pods),
        "behaviour": behaviour,
    }


def kpod(uid: str, containers: list[dict[str, Any]], init: list[dict[str, Any]] | None = None):  # type: ignore[no-untyped-def]
    """A pod as the stand-in kubelet knows it (named as tests.nri_builders.pod names it)."""
    return {
        "name": f"pod-{uid}",
        "namespace": "default",
        "initContainers": init or [],
        "containers": containers,
    }


class Log:
    """A logger that keeps every event (the tracker's decision log among them)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, dict[str, Any]]] = []

    def __getattr__(self, level: str) -> Callable[..., None]:
        def log(event: str, **kw: Any) -> None:
            self.events.append((level, event, kw))

        return log

    def named(self, event: str) -> list[dict[str, Any]]:
        return [kw for _, e, kw in self.events if e == event]


@dataclass
class Node:
    plugin: MemoryPlugin
    client: PodResourcesClient
    metrics: Metrics
    log: Log
    standin: Standin | None

    @property
    def tracker(self) -> NodeTracker:
        return self.plugin.tracker

    def failures(self) -> dict[str, float]:
        return {
            kind: self.metrics.pod_resources_failures.labels(kind)._value.get()
            for kind in prc.FAILURE_KINDS
            if self.metrics.pod_resources_failures.labels(kind)._value.get()
        }

    async def create(self, p: api.PodSandbox, c: api.Container) -> str:
        """CreateContainer: the cpuset.mems set ('' when none)."""
        result = self.plugin.create_container(p, c)
        if inspect.isawaitable(result):
            result = await result
        return "" if result is None else result.linux.resources.cpu.mems


def manager(policy: str = "single-numa-node", scope: str = "container") -> MemoryManager:
    config = parse_config(
        {
            "policy": "static",
            "topologyManagerPolicy": policy,
            "topologyManagerScope": scope,
            "reservedMemory": ["0:memory=1Gi"],
        }
    )
    return MemoryManager(topology_from_mapping(TOPOLOGY), config)


@pytest.fixture
def sockets() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="kr-", dir="/tmp"))  # unix socket paths < 108 bytes
    yield d
    shutil.rmtree(d, ignore_errors=True)


@asynccontextmanager
async def node(
    path: Path | str,
    spec: dict[str, Any] | None,
    *,
    policy: str = "single-numa-node",
    scope: str = "container",
) -> AsyncIterator[Node]:
    """The NRI handler with a pod-resources client of the stand-in at ``path`` (none when
    ``spec`` is None)."""
    log, metrics = Log(), Metrics()

    async def build(standin: Standin | None) -> AsyncIterator[Node]:
        client = PodResourcesClient(str(path), observer=metrics, logger=log)
        await client.start()
        tracker = NodeTracker(manager(policy, scope), observer=metrics, logger=log)
        kubelet = KubeletResources(client, tracker)
        plugin = MemoryPlugin(tracker.manager, tracker=tracker, logger=log, kubelet=kubelet)
        try:
            yield Node(plugin, client, metrics, log, standin)
        finally:
            await kubelet.close()
            await client.close()

    if spec is None:
        async for n in build(None):
            yield n
        return
    async with running_standin(path, spec) as standin:
        async for n in build(standin):
            yield n


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(test())  # type: ignore[arg-type]


async def timed(call: Awaitable[str]) -> tuple[str, float]:
    loop = asyncio.get_running_loop()
    start = loop.time()
    mems = await call
    return mems, loop.time() - start


def admission(n: Node, container_name: str) -> dict[str, Any]:
    (found,) = [kw for kw in n.log.named("admission") if kw["container"] == container_name]
    return found


# -- device hints ----------------------------------------------------------------------------


def test_a_device_on_node_1_pins_a_shared_cpu_container_to_node_1(sockets: Path) -> None:
    async def scenario() -> None:
        spec = kubelet_node(
            kpod("g", [{"name": "app", "devices": {"example.com/gpu": ["gpu1"]}}]),
            kpod("plain", [{"name": "app"}]),
        )
        async with node(sockets / "k.sock", spec) as n:
            g = pod("g")
            n.plugin.run_pod_sandbox(g)
            await n.client.drain()
            # the prefetched answer is there: no waiting at all
            c = container(g, "app", "c1", 2 * GI, cpus=SHARED)
            result = n.plugin.create_container(g, c)
            assert not inspect.isawaitable(result)
            assert result is not None and result.linux.resources.cpu.mems == "1"
            assert admission(n, "app")["hints"]["devices"] == {"example.com/gpu": ON_NODE_1}
            # the same container without a device: memory goes where kubelet's memory
            # manager would put it without one (node 0, the first that fits)
            plain = pod("plain")
            n.plugin.run_pod_sandbox(plain)
            assert await n.create(plain, container(plain, "app", "c2", 2 * GI, cpus=SHARED)) == "0"
            assert n.failures() == {}
            assert n.standin is not None and n.standin.count("Get") == 2

    run(scenario)


def test_single_numa_node_refuses_when_the_devices_node_lacks_memory(sockets: Path) -> None:
    async def scenario() -> None:
        spec = kubelet_node(
            kpod("filler", [{"name": "app"}]),
            kpod("g", [{"name": "app", "devices": {"example.com/gpu": ["gpu1"]}}]),
        )
        async with node(sockets / "k.sock", spec) as n:
            filler = pod("filler")
            # node 1: 6Gi of conventional memory (8Gi less 2Gi of hugepage pools); 1Gi left
            assert await n.create(filler, container(filler, "app", "c1", 5 * GI, cpus="4")) == "1"
            g = pod("g")
            with pytest.raises(AdmissionRefused) as err:
                await n.create(g, container(g, "app", "c2", 2 * GI, cpus=SHARED))
            text = str(err.value)
            assert text.startswith("TopologyAffinityError:")
            assert "device hints example.com/gpu [1]" in text
            assert "node 1: memory=1Gi" in text
            (refusal,) = [kw for kw in n.log.named("admission") if kw["result"] == "refused"]
            assert refusal["hints"]["devices"] == {"example.com/gpu": ON_NODE_1}
            assert n.tracker.manager.state.blocks("g", "app") is None

    run(scenario)


def test_devices_without_topology_give_no_hint(sockets: Path) -> None:
    async def scenario() -> None:
        spec = kubelet_node(kpod("g", [{"name": "app", "devices": {"example.com/qat": ["q0"]}}]))
        spec["node"]["devices"]["example.com/qat"] = [{"id": "q0"}, {"id": "q1"}]
        async with node(sockets / "k.sock", spec) as n:
            g = pod("g")
            assert await n.create(g, container(g, "app", "c1", 2 * GI, cpus=SHARED)) == "0"
            assert admission(n, "app")["hints"]["devices"] == {"example.com/qat": None}

    run(scenario)


def test_pod_scope_takes_every_listed_containers_devices_per_resource(sockets: Path) -> None:
    async def scenario() -> None:
        spec = kubelet_node(
            # both GPUs on node 1: the pod fits node 1
            kpod(
                "near",
                [
                    {"name": "a", "devices": {"example.com/gpu": ["gpu1"]}},
                    {"name": "b", "devices": {"example.com/gpu": ["gpu2"]}},
                ],
            ),
            # a GPU on node 0 and one on node 2: no single node holds the pod's devices,
            # though each container's alone would fit one
            kpod(
                "far",
                [
                    {"name": "a", "devices": {"example.com/gpu": ["gpu0"]}},
                    {"name": "b", "devices": {"example.com/gpu": ["gpu3"]}},
                ],
            ),
        )
        async with node(sockets / "k.sock", spec, scope="pod") as n:
            near = pod("near", memory_limit=4 * GI)
            n.plugin.run_pod_sandbox(near)
            assert await n.create(near, container(near, "a", "c1", 2 * GI, cpus=SHARED)) == "1"
            assert await n.create(near, container(near, "b", "c2", 2 * GI, cpus=SHARED)) == "1"
            far = pod("far", memory_limit=4 * GI)
            n.plugin.run_pod_sandbox(far)
            with pytest.raises(AdmissionRefused) as err:
                await n.create(far, container(far, "a", "c3", 2 * GI, cpus=SHARED))
            assert "device hints example.com/gpu/pod [0,2] (not preferred)" in str(err.value)
            (refusal,) = [kw for kw in n.log.named("admission") if kw["result"] == "refused"]
            hints = refusal["hints"]["devices"]["example.com/gpu/pod"]
            assert {"nodes": [0, 2], "preferred": False} in hints
            assert all(len(h["nodes"]) >= 2 for h in hints)

    run(scenario)


# -- exact init containers -------------------------------------------------------------------


def test_a_listed_container_that_exited_is_never_taken_for_an_init_container(
    sockets: Path,
) -> None:
    # app "a" runs and exits (code unknown: no CRI here) before "b" is first created
    # (its image could not be pulled before): inference would take "a" for a finished
    # init container; kubelet's listing says it is an app container
    async def scenario(listed: bool) -> None:
        spec = kubelet_node(kpod("g", [{"name": "a"}, {"name": "b"}])) if listed else None
        async with node(sockets / "k.sock", spec) as n:
            g = pod("g")  # no pod limit from the sandbox: nothing else to wait for
            n.plugin.run_pod_sandbox(g)
            a = container(g, "a", "c1", 2 * GI, cpus=SHARED)
            await n.create(g, a)
            n.plugin.start_container(g, a)
            n.plugin.stop_container(g, a)
            b = container(g, "b", "c2", 2 * GI, cpus=SHARED)
            await n.create(g, b)
            n.plugin.start_container(g, b)
            held = n.tracker.manager.state.blocks("g", "a")
            if listed:
                # kept whole for its restart, as kubelet keeps it; "b" got its own memory
                assert held is not None and [b.size for b in held] == [2 * GI]
                assert n.tracker.manager.state.machine[0].memory_map["memory"].reserved == 4 * GI
                assert n.failures() == {}
            else:
                assert held is None  # inferred an init container and released
                assert n.failures() == {prc.SOCKET_ABSENT: 2}

    run(lambda: scenario(True))
    run(lambda: scenario(False))


def test_a_regular_init_container_lends_its_memory_classified_by_pod_resources(
    sockets: Path,
) -> None:
    async def scenario() -> None:
        spec = kubelet_node(
            kpod("g", [{"name": "app"}], init=[{"name": "setup"}]),
        )
        async with node(sockets / "k.sock", spec) as n:
            g = pod("g", memory_limit=4 * GI)
            n.plugin.run_pod_sandbox(g)
            setup = container(g, "setup", "c1", 4 * GI, cpus=SHARED)
            assert await n.create(g, setup) == "0"
            n.plugin.start_container(g, setup)
            n.plugin.stop_container(g, setup)
            app = container(g, "app", "c2", 2 * GI, cpus=SHARED)
            assert await n.create(g, app) == "0"
            assert admission(n, "app")["init_classified_by"] == ["pod-resources"]
            assert admission(n, "app")["reused_from"] == ["setup"]
            n.plugin.start_container(g, app)
            (released,) = n.log.named("init containers released")
            assert released["init_classified_by"] == ["pod-resources"]
            assert n.tracker.manager.state.blocks("g", "setup") is None
            assert n.tracker.pods["g"].listed == frozenset({"app"})

    run(scenario)


# -- kubelet slow, dead, rate-limiting, absent: today's behaviour within the deadline ---------


async def _today(n: Node, uid: str) -> tuple[str, float]:
    """A GPU container on node 1 created against a kubelet that gives no answer."""
    p = pod(uid)
    n.plugin.run_pod_sandbox(p)
    return await timed(n.create(p, container(p, "app", f"c-{uid}", 2 * GI, cpus=SHARED)))


GPU_POD = kpod("g", [{"name": "app", "devices": {"example.com/gpu": ["gpu1"]}}])


def test_a_slow_kubelet_never_holds_create_container_past_the_deadline(sockets: Path) -> None:
    async def scenario() -> None:
        async with node(sockets / "k.sock", kubelet_node(GPU_POD, delay=2.0)) as n:
            mems, took = await _today(n, "g")
            assert mems == "0"  # as without the API: the device is not known in time
            assert took <= prc.LOOKUP_DEADLINE_S + SLACK_S
            # the pod's next container: counted again, logged once per pod
            g = pod("g")
            mems, took = await timed(n.create(g, container(g, "side", "c2", GI, cpus=SHARED)))
            assert mems == "0" and took <= prc.LOOKUP_DEADLINE_S + SLACK_S
            assert n.failures() == {prc.DEADLINE: 2}
            warnings = n.log.named("pod-resources: no answer for pod")
            assert [w["pod"] for w in warnings] == ["default/pod-g"]

    run(scenario)


def test_a_dead_kubelet_is_today_at_once(sockets: Path) -> None:
    async def scenario() -> None:
        path = sockets / "k.sock"
        stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        stale.bind(str(path))  # kubelet died without removing its socket
        stale.close()
        async with node(path, None) as n:
            mems, took = await _today(n, "g")
            assert mems == "0"
            assert took <= prc.LOOKUP_DEADLINE_S + SLACK_S
            assert n.failures() == {prc.UNAVAILABLE: 1}

    run(scenario)


def test_a_rate_limiting_kubelet_is_today_and_counted(sockets: Path) -> None:
    async def scenario() -> None:
        async with node(sockets / "k.sock", kubelet_node(GPU_POD)) as n:
            assert n.standin is not None
            await n.client.refresh_inventory()  # connected, the inventory fetched
            await n.client.drain()
            # other clients spent kubelet's budget: the last token goes to our inventory
            n.standin.kubelet.qps, n.standin.kubelet.burst = 0.001, 1
            await n.client.refresh_inventory()
            mems, took = await _today(n, "g")
            assert mems == "0"
            assert took <= prc.LOOKUP_DEADLINE_S + SLACK_S
            assert n.failures() == {prc.RATE_LIMITED: 1}
            exposition = n.metrics.exposition().decode()
            assert (
                'nri_memory_manager_pod_resources_failures_total{kind="rate-limited"} 1.0'
                in exposition
            )
            assert (
                'nri_memory_manager_pod_resources_failures_total{kind="deadline"} 0.0' in exposition
            )

    run(scenario)


def test_without_the_socket_it_is_said_once_and_today(sockets: Path) -> None:
    async def scenario() -> None:
        async with node(sockets / "absent.sock", None) as n:
            for uid in ("g", "h"):
                mems, took = await _today(n, uid)
                assert mems == "0" and took < prc.LOOKUP_DEADLINE_S
            assert n.failures() == {prc.SOCKET_ABSENT: 2}
            absent = [e for lvl, e, _ in n.log.events if lvl == "warning" and "absent" in e]
            assert absent == [
                "pod-resources socket absent: no device hints, init containers inferred"
            ]

    run(scenario)


def test_without_the_api_nothing_waits_and_nothing_counts(sockets: Path) -> None:
    async def scenario() -> None:
        async with node("", None) as n:
            g = pod("g")
            n.plugin.run_pod_sandbox(g)
            result = n.plugin.create_container(g, container(g, "app", "c1", GI, cpus=SHARED))
            assert not inspect.isawaitable(result)
            assert n.failures() == {}

    run(scenario)


def test_pods_that_are_not_guaranteed_are_never_asked(sockets: Path) -> None:
    async def scenario() -> None:
        spec = kubelet_node(kpod("b", [{"name": "app"}]), kpod("e", [{"name": "app"}]))
        async with node(sockets / "k.sock", spec) as n:
            for uid, qos in (("b", "Burstable"), ("e", "BestEffort")):
                p = pod(uid, qos)
                n.plugin.run_pod_sandbox(p)
                result = n.plugin.create_container(p, container(p, "app", f"c-{uid}", GI))
                assert result is None
            await n.client.drain()
            assert n.standin is not None and n.standin.count("Get") == 0

    run(scenario)


def test_the_answer_is_forgotten_with_the_pod_sandbox(sockets: Path) -> None:
    async def scenario() -> None:
        async with node(sockets / "k.sock", kubelet_node(GPU_POD)) as n:
            g = pod("g")
            n.plugin.run_pod_sandbox(g)
            await n.client.drain()
            assert n.client.cached_pod("g") is not None
            n.plugin.remove_pod_sandbox(g)
            assert n.client.cached_pod("g") is None

    run(scenario)


# -- Synchronize ----------------------------------------------------------------------------


def test_a_container_created_while_away_is_admitted_with_its_device_hints(sockets: Path) -> None:
    async def scenario() -> None:
        async with node(sockets / "k.sock", kubelet_node(GPU_POD)) as n:
            g = pod("g")
            c = container(g, "app", "c1", 2 * GI, cpus=SHARED, state=api.CONTAINER_RUNNING)
            result = n.plugin.synchronize([g], [c])
            assert inspect.isawaitable(result)
            updates = await result
            assert [(u.container_id, u.linux.resources.cpu.mems) for u in updates] == [("c1", "1")]
            assert n.tracker.pods["g"].listed == frozenset({"app"})
            assert n.standin is not None and n.standin.count("List") == 1

    run(scenario)


# -- the CRI proxy --------------------------------------------------------------------------


def test_the_cri_proxy_takes_device_hints_too(sockets: Path) -> None:
    from tests.test_criproxy import proxied

    async def scenario() -> None:
        async with running_standin(sockets / "k.sock", kubelet_node(GPU_POD)) as standin:
            metrics = Metrics()
            client = PodResourcesClient(str(sockets / "k.sock"), observer=metrics, logger=Log())
            await client.start()
            tracker = NodeTracker(manager(), logger=Log())
            async with proxied(tracker=tracker, kubelet=KubeletResources(client, tracker)) as env:
                config = cri.PodSandboxConfig()
                config.metadata.name, config.metadata.uid = "pod-g", "g"
                config.metadata.namespace = "default"
                config.linux.cgroup_parent = "/kubepods/podg"
                sandbox = (
                    await env.call(
                        "RunPodSandbox",
                        cri.RunPodSandboxRequest(config=config),
                        cri.RunPodSandboxResponse,
                    )
                ).pod_sandbox_id
                ctr = cri.ContainerConfig()
                ctr.metadata.name = "app"
                ctr.labels["io.kubernetes.container.name"] = "app"
                ctr.labels["io.kubernetes.pod.uid"] = "g"
                ctr.linux.resources.memory_limit_in_bytes = 2 * GI
                ctr.linux.resources.cpu_quota, ctr.linux.resources.cpu_period = 100_000, 100_000
                ctr.linux.resources.cpuset_cpus = SHARED
                cid = await env.create(sandbox, ctr)
                assert env.runtime.containers[cid].config.linux.resources.cpuset_mems == "1"
                assert standin.count("Get") == 1
            await client.close()

    run(scenario)


# -- the served socket: the tracker's memory ------------------------------------------------


def test_the_served_socket_reports_the_trackers_blocks_and_allocatable(sockets: Path) -> None:
    async def scenario() -> None:
        spec = kubelet_node(
            kpod(
                "g",
                [{"name": "app", "devices": {"example.com/gpu": ["gpu1"]}}],
                init=[{"name": "setup"}, {"name": "proxy", "restartPolicy": "Always"}],
            ),
        )
        async with node(sockets / "k.sock", spec) as n:
            # kubelet's sandbox limit: max(proxy + app, setup) (a larger one would be a
            # pod-level limit, and the pod left unpinned)
            g = pod("g", memory_limit=2 * GI)
            n.plugin.run_pod_sandbox(g)
            for name, cid, size in (("setup", "c1", GI), ("proxy", "c2", GI), ("app", "c3", GI)):
                c = container(g, name, cid, size, cpus=SHARED, hugepages={"1GB": GI})
                await n.create(g, c)
                n.plugin.start_container(g, c)
                if name == "setup":
                    n.plugin.stop_container(g, c)
            server = PodResourcesServer(TrackerMemory(n.tracker), n.client, logger=Log())
            served = await start_server(server, str(sockets / "served.sock"))
            channel = grpc.aio.insecure_channel(f"unix:{sockets}/served.sock")
            try:
                stub = pb_grpc.PodResourcesListerStub(channel)
                listed = await stub.List(pb.ListPodResourcesRequest())
                state = n.tracker.manager.state
                seen = {}
                for p in listed.pod_resources:
                    for c in p.containers:
                        seen[c.name] = [
                            (m.memory_type, m.size, [x.ID for x in m.topology.nodes])
                            for m in c.memory
                        ]
                assert set(seen) == {"proxy", "app"}  # kubelet never lists "setup"
                for name, got in seen.items():
                    want = [
                        (b.type, b.size, list(b.numa_affinity))
                        for b in state.blocks("g", name) or ()
                    ]
                    assert got == want and want, name
                allocatable = await stub.GetAllocatableResources(pb.AllocatableResourcesRequest())
                memory = {
                    (m.memory_type, m.topology.nodes[0].ID): m.size for m in allocatable.memory
                }
                assert memory == {
                    (t, node): table.allocatable
                    for node, machine in state.machine.items()
                    for t, table in machine.memory_map.items()
                    if table.allocatable
                }
                assert ("memory", 0) in memory and ("hugepages-1Gi", 3) in memory
                assert [d.device_ids for d in allocatable.devices] == [
                    ["gpu0"],
                    ["gpu1"],
                    ["gpu2"],
                    ["gpu3"],
                ]
            finally:
                await channel.close()
                await served.stop(None)

    run(scenario)


def test_answering_alone_the_provider_lists_what_the_tracker_knows() -> None:
    tracker = NodeTracker(manager(), logger=Log())
    plugin = MemoryPlugin(tracker.manager, tracker=tracker, logger=Log())
    g = pod("g", memory_limit=2 * GI)
    plugin.run_pod_sandbox(g)
    setup = container(g, "setup", "c1", GI, cpus=SHARED)
    plugin.create_container(g, setup)
    plugin.start_container(g, setup)
    plugin.stop_container(g, setup)
    app = container(g, "app", "c2", GI, cpus=SHARED)
    plugin.create_container(g, app)
    record = tracker.pods["g"]
    # no listing: what inference knows (the exited "setup" is an init container)
    assert listed_containers(record) == ("app",)
    tracker.pod_listed("g", ["sidecar", "app"])
    assert listed_containers(record) == ("app", "sidecar")
    provider = TrackerMemory(tracker)
    (provided,) = provider.pods()
    assert (provided.namespace, provided.name) == ("default", "pod-g")
    blocks = provider.memory_blocks("default", "pod-g", "app")
    assert [(b.memory_type, b.size) for b in blocks] == [("memory", GI)]
    assert provider.memory_blocks("default", "nobody", "app") == ()


# -- the flags -----------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["run", "cri-proxy"])
def test_both_commands_take_the_pod_resources_flags(command: str) -> None:
    from nri_plugin.cli import build_parser
    from nri_plugin.podresources import flags

    parser = build_parser()
    extra = ["--listen", "/tmp/l.sock", "--runtime-endpoint", "/tmp/r.sock"]
    args = parser.parse_args([command, *(extra if command == "cri-proxy" else [])])
    assert args.pod_resources_socket == flags.DEFAULT_SOCKET == prc.DEFAULT_SOCKET
    assert args.serve_pod_resources is None
    # the help text's figure is the client's deadline
    assert f"{round(prc.LOOKUP_DEADLINE_S * 1000)} ms" == flags.DEADLINE_TEXT
    sub = parser._subparsers._group_actions[0].choices[command]  # type: ignore[union-attr]
    text = sub.format_help()
    assert "--pod-resources-socket PATH" in text and "--serve-pod-resources PATH" in text
    assert flags.DEADLINE_TEXT in " ".join(text.split())

"""The served pod-resources socket, read with a plain gRPC client of the same API.

kubelet is the stand-in (tests/podresources_standin.py); the plugin's memory
comes from a provider written here. Every container's memory on our socket
must be exactly the provider's blocks; everything else exactly kubelet's.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import stat
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc  # type: ignore[import-untyped]
import pytest

from nri_plugin.errors import InputError
from nri_plugin.podresources import wire
from nri_plugin.podresources.client import PodResourcesClient
from nri_plugin.podresources.gen import podresources_pb2 as pb
from nri_plugin.podresources.gen import podresources_pb2_grpc as pb_grpc
from nri_plugin.podresources.resources import MemoryBlock
from nri_plugin.podresources.server import (
    RATE_LIMIT_MESSAGE,
    PodResourcesServer,
    ProvidedPod,
    prepare_socket,
    start_server,
)
from tests.podresources_standin import (
    GET_DISABLED_MESSAGE,
    dynamic_resource_field,
    running_standin,
)

GI = 1 << 30
MI = 1 << 20

NODE: dict[str, Any] = {
    "node": {
        "cpus": [0, 1, 2, 3],
        "devices": {"example.com/gpu": [{"id": "gpu0", "numa": [0]}, {"id": "gpu1", "numa": [1]}]},
    },
    "pods": [
        {
            "name": "web",
            "namespace": "default",
            "initContainers": [
                {"name": "setup"},
                {"name": "proxy", "restartPolicy": "Always"},
            ],
            "containers": [
                {
                    "name": "app",
                    "devices": {"example.com/gpu": ["gpu1"]},
                    "cpus": [2, 3],
                    # what kubelet's own memory manager would say: ours replaces it
                    "memory": [{"type": "memory", "size": 1, "numa": [0]}],
                    "dynamicClaim": "gpu-claim",
                }
            ],
        },
        {"name": "db", "namespace": "data", "containers": [{"name": "pg"}]},
    ],
}

BLOCKS: dict[tuple[str, str, str], tuple[MemoryBlock, ...]] = {
    ("default", "web", "app"): (
        MemoryBlock("memory", 2 * GI, (1,)),
        MemoryBlock("hugepages-1Gi", GI, (1,)),
    ),
    ("default", "web", "proxy"): (MemoryBlock("memory", 512 * MI, (0, 1)),),
    ("default", "web", "setup"): (MemoryBlock("memory", GI, (0,)),),
    ("data", "db", "pg"): (),
}
ALLOCATABLE = (
    MemoryBlock("memory", 7 * GI, (0,)),
    MemoryBlock("memory", 8 * GI, (1,)),
    MemoryBlock("hugepages-1Gi", 2 * GI, (1,)),
)


class Provider:
    def __init__(self) -> None:
        self.blocks = dict(BLOCKS)
        self.provided = [
            ProvidedPod("default", "web", ("proxy", "app")),
            ProvidedPod("data", "db", ("pg",)),
        ]

    def memory_blocks(
        self, namespace: str, pod_name: str, container_name: str
    ) -> Sequence[MemoryBlock]:
        return self.blocks.get((namespace, pod_name, container_name), ())

    def allocatable_memory(self) -> Sequence[MemoryBlock]:
        return ALLOCATABLE

    def pods(self) -> Sequence[ProvidedPod]:
        return self.provided


class Logger:
    def __init__(self) -> None:
        self.records: list[tuple[str, str]] = []

    def debug(self, event: str, **kw: Any) -> None:
        self.records.append(("debug", event))

    def info(self, event: str, **kw: Any) -> None:
        self.records.append(("info", event))

    def warning(self, event: str, **kw: Any) -> None:
        self.records.append(("warning", event))

    def exception(self, event: str, **kw: Any) -> None:
        self.records.append(("exception", event))


@pytest.fixture
def sockets() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="pr-", dir="/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(test())  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def served(
    kubelet_path: Path | None, ours: Path, provider: Provider, **kw: Any
) -> AsyncIterator[tuple[Any, Logger]]:
    """Our server in front of kubelet_path; yields a plain stub on our socket."""
    client = None
    if kubelet_path is not None:
        client = PodResourcesClient(str(kubelet_path), logger=Logger())
        await client.start()
    logger = Logger()
    server = PodResourcesServer(provider, client, logger=logger, **kw)
    grpc_server = await start_server(server, str(ours))
    channel = grpc.aio.insecure_channel("unix:" + str(ours))
    try:
        yield pb_grpc.PodResourcesListerStub(channel), logger
    finally:
        await channel.close()
        await grpc_server.stop(grace=None)
        if client is not None:
            await client.close()


async def eventually(condition: Callable[[], bool], within: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    give_up = loop.time() + within
    while not condition():
        assert loop.time() < give_up, "condition not reached"
        await asyncio.sleep(0.01)


def blocks_of(memory: Any) -> tuple[MemoryBlock, ...]:
    return wire.memory_from_pb(memory)


def assert_memory_is_the_providers(pods: Sequence[Any], provider: Provider) -> None:
    for pod in pods:
        for container in pod.containers:
            key = (pod.namespace, pod.name, container.name)
            assert blocks_of(container.memory) == tuple(provider.blocks[key]), key


# -- with kubelet -------------------------------------------------------------------------------


def test_list_and_get_carry_the_providers_memory_and_kubelets_rest(sockets: Path) -> None:
    async def scenario() -> None:
        provider = Provider()
        async with running_standin(sockets / "k.sock", NODE) as kubelet:
            direct = kubelet.kubelet
            async with served(sockets / "k.sock", sockets / "ours.sock", provider) as (stub, _):
                listed = (await stub.List(pb.ListPodResourcesRequest(), timeout=5)).pod_resources
                assert [(p.namespace, p.name) for p in listed] == [
                    ("default", "web"),
                    ("data", "db"),
                ]
                assert [c.name for c in listed[0].containers] == ["proxy", "app"]  # no "setup"
                assert_memory_is_the_providers(listed, provider)
                web = (
                    await stub.Get(
                        pb.GetPodResourcesRequest(pod_name="web", pod_namespace="default"),
                        timeout=5,
                    )
                ).pod_resources
                assert_memory_is_the_providers([web], provider)
                assert web == listed[0]
                # everything but memory is kubelet's, DRA's field 5 included
                want = direct.pod(direct.pods()[0])
                for ours, theirs in zip(web.containers, want.containers, strict=True):
                    del theirs.memory[:]
                    theirs.memory.extend(ours.memory)
                    assert ours.SerializeToString() == theirs.SerializeToString()
                app = web.containers[1]
                assert dynamic_resource_field("gpu-claim") in app.SerializeToString()
                assert wire.devices_from_pb(app.devices)[0].numa_nodes == (1,)
                assert list(app.cpu_ids) == [2, 3]

    run(scenario)


def test_get_of_a_pod_kubelet_does_not_know_is_kubelets_error(sockets: Path) -> None:
    async def scenario() -> None:
        async with (
            running_standin(sockets / "k.sock", NODE),
            served(sockets / "k.sock", sockets / "ours.sock", Provider()) as (stub, _),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.Get(
                    pb.GetPodResourcesRequest(pod_name="nope", pod_namespace="default"), timeout=5
                )
            assert refused.value.code() == grpc.StatusCode.UNKNOWN
            assert refused.value.details() == "pod nope in namespace default not found"

    run(scenario)


def test_allocatable_is_kubelets_devices_and_cpus_with_our_memory(sockets: Path) -> None:
    async def scenario() -> None:
        async with (
            running_standin(sockets / "k.sock", NODE) as kubelet,
            served(sockets / "k.sock", sockets / "ours.sock", Provider()) as (stub, _),
        ):
            got = await stub.GetAllocatableResources(pb.AllocatableResourcesRequest(), timeout=5)
            want = kubelet.kubelet.allocatable()
            assert list(got.devices) == list(want.devices)
            assert list(got.cpu_ids) == [0, 1, 2, 3]
            assert blocks_of(got.memory) == ALLOCATABLE

    run(scenario)


def test_kubelet_without_get_answers_through_us_as_it_would(sockets: Path) -> None:
    async def scenario() -> None:
        spec = {**NODE, "behaviour": {"getDisabled": True}}
        async with (
            running_standin(sockets / "k.sock", spec),
            served(sockets / "k.sock", sockets / "ours.sock", Provider()) as (stub, _),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.Get(
                    pb.GetPodResourcesRequest(pod_name="web", pod_namespace="default"), timeout=5
                )
            assert refused.value.code() == grpc.StatusCode.UNKNOWN
            assert refused.value.details() == GET_DISABLED_MESSAGE
            listed = await stub.List(pb.ListPodResourcesRequest(), timeout=5)
            assert len(listed.pod_resources) == 2

    run(scenario)


def test_a_failing_provider_is_an_error_not_a_crash(sockets: Path) -> None:
    class Failing(Provider):
        def allocatable_memory(self) -> Sequence[MemoryBlock]:
            raise RuntimeError("state unreadable")

    async def scenario() -> None:
        async with served(None, sockets / "ours.sock", Failing()) as (stub, logger):
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await stub.GetAllocatableResources(pb.AllocatableResourcesRequest(), timeout=5)
            assert failed.value.code() == grpc.StatusCode.INTERNAL
            assert ("exception", "pod-resources answer failed") in logger.records
            listed = await stub.List(pb.ListPodResourcesRequest(), timeout=5)
            assert len(listed.pod_resources) == 2

    run(scenario)


def test_kubelets_rate_limit_answer_passes_through(sockets: Path) -> None:
    async def scenario() -> None:
        async with (
            running_standin(sockets / "k.sock", NODE) as kubelet,
            served(sockets / "k.sock", sockets / "ours.sock", Provider()) as (stub, _),
        ):
            await stub.List(pb.ListPodResourcesRequest(), timeout=5)
            # the client's own inventory request at connection is over before the budget shrinks
            await eventually(lambda: kubelet.count("GetAllocatableResources") >= 1)
            kubelet.kubelet.qps, kubelet.kubelet.burst = 0.001, 1
            await stub.List(pb.ListPodResourcesRequest(), timeout=5)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.List(pb.ListPodResourcesRequest(), timeout=5)
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert refused.value.details() == RATE_LIMIT_MESSAGE

    run(scenario)


def test_our_socket_is_rate_limited_as_kubelets(sockets: Path) -> None:
    async def scenario() -> None:
        async with (
            running_standin(sockets / "k.sock", NODE) as kubelet,
            served(sockets / "k.sock", sockets / "ours.sock", Provider(), qps=0.001, burst=2) as (
                stub,
                _,
            ),
        ):
            for _ in range(2):
                await stub.List(pb.ListPodResourcesRequest(), timeout=5)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.List(pb.ListPodResourcesRequest(), timeout=5)
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert refused.value.details() == RATE_LIMIT_MESSAGE
            assert kubelet.count("List") == 2  # the refused call never reached kubelet

    run(scenario)


# -- without kubelet ----------------------------------------------------------------------------


@pytest.mark.parametrize("kubelet", ["absent", "dead", "not used"])
def test_without_kubelet_the_provider_answers_alone(sockets: Path, kubelet: str) -> None:
    async def scenario() -> None:
        provider = Provider()
        kubelet_path: Path | None = sockets / "k.sock"
        if kubelet == "dead":
            stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            stale.bind(str(kubelet_path))
            stale.close()
        elif kubelet == "not used":
            kubelet_path = None
        async with served(kubelet_path, sockets / "ours.sock", provider) as (stub, logger):
            listed = (await stub.List(pb.ListPodResourcesRequest(), timeout=5)).pod_resources
            assert [(p.namespace, p.name, [c.name for c in p.containers]) for p in listed] == [
                ("default", "web", ["proxy", "app"]),
                ("data", "db", ["pg"]),
            ]
            assert_memory_is_the_providers(listed, provider)
            assert all(not c.devices and not c.cpu_ids for p in listed for c in p.containers)
            web = await stub.Get(
                pb.GetPodResourcesRequest(pod_name="web", pod_namespace="default"), timeout=5
            )
            assert web.pod_resources == listed[0]
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.Get(
                    pb.GetPodResourcesRequest(pod_name="nope", pod_namespace="x"), timeout=5
                )
            assert refused.value.code() == grpc.StatusCode.UNKNOWN
            assert refused.value.details() == "pod nope in namespace x not found"
            allocatable = await stub.GetAllocatableResources(
                pb.AllocatableResourcesRequest(), timeout=5
            )
            assert not allocatable.devices and not allocatable.cpu_ids
            assert blocks_of(allocatable.memory) == ALLOCATABLE
            assert [e for lvl, e in logger.records if lvl == "warning"] == [
                "kubelet's pod-resources unavailable: serving our memory alone"
            ]

    run(scenario)


def test_kubelet_coming_back_is_used_again(sockets: Path) -> None:
    async def scenario() -> None:
        provider = Provider()
        async with served(sockets / "k.sock", sockets / "ours.sock", provider) as (stub, logger):
            alone = await stub.List(pb.ListPodResourcesRequest(), timeout=5)
            assert not any(c.devices for p in alone.pod_resources for c in p.containers)
            async with running_standin(sockets / "k.sock", NODE):
                back = await stub.List(pb.ListPodResourcesRequest(), timeout=5)
                assert any(c.devices for p in back.pod_resources for c in p.containers)
                assert_memory_is_the_providers(back.pod_resources, provider)
            assert ("info", "kubelet's pod-resources answering again") in logger.records

    run(scenario)


# -- the socket ---------------------------------------------------------------------------------


def test_socket_is_made_as_kubelet_makes_its_own(sockets: Path) -> None:
    async def scenario() -> None:
        ours = sockets / "sub" / "ours.sock"
        old = os.umask(0o022)
        try:
            async with served(None, ours, Provider()) as (stub, _):
                mode = ours.stat().st_mode
                assert stat.S_ISSOCK(mode)
                # no chmod: the umask decides, as with kubelet's CreateListener
                assert stat.S_IMODE(mode) == 0o755
                assert stat.S_IMODE(ours.parent.stat().st_mode) == 0o750
                await stub.List(pb.ListPodResourcesRequest(), timeout=5)
        finally:
            os.umask(old)

    run(scenario)


def test_stale_socket_is_replaced_and_anything_else_refused(sockets: Path) -> None:
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(sockets / "ours.sock"))
    stale.close()
    prepare_socket(sockets / "ours.sock", None)
    assert not (sockets / "ours.sock").exists()
    (sockets / "file").write_text("x")
    with pytest.raises(InputError, match=r"^--serve-pod-resources .*/file: exists and is not a"):
        prepare_socket(sockets / "file", None)
    assert (sockets / "file").read_text() == "x"
    link = sockets / "link"
    link.symlink_to(sockets)
    with pytest.raises(InputError, match="is kubelet's own socket"):
        prepare_socket(link / "k.sock", str(sockets / "k.sock"))


def test_served_socket_cannot_listen_in_a_file(sockets: Path) -> None:
    async def scenario() -> None:
        (sockets / "file").write_text("x")
        server = PodResourcesServer(Provider(), None, logger=Logger())
        with pytest.raises(InputError, match="--serve-pod-resources"):
            await start_server(server, str(sockets / "file" / "ours.sock"))

    run(scenario)

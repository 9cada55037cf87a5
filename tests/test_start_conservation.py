"""A start on a node whose memory shrank under the checkpoint's blocks, through `run`'s wiring.

KEP-6232's conservation check is decided at the first Synchronize, on the
entries of the containers that still exist (docs/recovery.md, "Drift
tolerance"): refused (exit 2, the file byte for byte as it was, Synchronize
answered with an error and no updates) while the holders of the blocks run;
started, their blocks released and the file written, once they are gone. The
NRI plugin runs as a real process (pre-launched on a socketpair, as containerd
starts it) against the fake NRI runtime; the CRI proxy runs in-process against
the fake CRI runtime of test_criproxy.py.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import grpc  # type: ignore[import-untyped]
import pytest
import structlog

from nri_plugin.daemon import CRIFrontEnd, serve
from nri_plugin.engine.manager import MemoryManager
from nri_plugin.engine.pod import ContainerSpec, PodSpec
from nri_plugin.errors import StateError
from nri_plugin.frontends.cri.gen import cri_pb2 as cri
from nri_plugin.inputs.config import load_config_file
from nri_plugin.inputs.topology import load_topology_file
from nri_plugin.logs import configure_logging
from nri_plugin.nri.gen import nri_pb2 as api
from nri_plugin.persist.file import STATE_FILE_NAME, load_file, write_file
from tests.helpers import eventually
from tests.nri.fake_runtime import FakeRuntime
from tests.nri_builders import container, pod
from tests.test_criproxy import FakeRuntime as FakeCRIRuntime
from tests.test_criproxy import container_config, sandbox_config

ROOT = Path(__file__).resolve().parent.parent
GI = 1 << 30
MI = 1 << 20

# node 1 is full (8Gi of 8Gi) when the checkpoint is written; at the next boot it has 16Mi less
TOPOLOGY = (
    "nodes:\n  - {{id: 0, cpus: '0-3', memory: 8Gi}}\n  - {{id: 1, cpus: '4-7', memory: {}}}\n"
)
CONFIG = (
    "policy: static\ntopologyManagerPolicy: single-numa-node\nreservedMemory: ['0:memory=1Gi']\n"
)
REFUSAL = (
    "NUMA node 1 memory total was 8Gi (8589934592 bytes), is now 7.98Gi (8573157376 bytes),"
    " within the memory-drift-tolerance of 64Mi (67108864 bytes), and the running allocations"
    " no longer fit: memory on NUMA node 1: the recorded blocks need 8Gi (8589934592 bytes),"
    " 7.98Gi (8573157376 bytes) is allocatable now, short by 16Mi (16777216 bytes); drain the"
    " node, then restart"
)


@pytest.fixture
def node(tmp_path: Path) -> Path:
    """A work dir: topology (node 1 shrunk), config, and the checkpoint of the full node."""
    (tmp_path / "topology.yaml").write_text(TOPOLOGY.format("8Gi"))
    (tmp_path / "config.yaml").write_text(CONFIG)
    manager = MemoryManager(
        load_topology_file(str(tmp_path / "topology.yaml")),
        load_config_file(str(tmp_path / "config.yaml")),
    )
    for uid, memory, cpus in (("full", 8 * GI, {4}), ("small", GI, {0})):
        amounts = {"memory": Fraction(memory), "cpu": Fraction(1)}
        spec = ContainerSpec("app", dict(amounts), dict(amounts), cpuset=frozenset(cpus))
        assert manager.admit(PodSpec(uid, f"pod-{uid}", "default", (), (spec,))).admitted
    blocks = {uid: c["app"][0] for uid, c in manager.state.entries.items()}
    assert {uid: b.numa_affinity for uid, b in blocks.items()} == {"full": (1,), "small": (0,)}
    write_file(tmp_path / "state" / STATE_FILE_NAME, manager.state)
    (tmp_path / "topology.yaml").write_text(TOPOLOGY.format("8176Mi"))
    return tmp_path


def state_bytes(work: Path) -> bytes:
    return (work / "state" / STATE_FILE_NAME).read_bytes()


def running(uid: str, memory: int, cpus: str, mems: str) -> tuple[api.PodSandbox, api.Container]:
    p = pod(uid)
    return p, container(p, "app", f"c-{uid}", memory, cpus=cpus, mems=mems, state=2)


# -- the NRI plugin, a real process -----------------------------------------------------------


class Plugin:
    """`nri-memory-manager run`, pre-launched on a socketpair; the test is containerd."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.proc: asyncio.subprocess.Process | None = None
        self.runtime: FakeRuntime | None = None

    async def start(self) -> FakeRuntime:
        ours, theirs = socket.socketpair()
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "nri_plugin.cli",
            "run",
            "--topology-file",
            str(self.work / "topology.yaml"),
            "--config",
            str(self.work / "config.yaml"),
            "--state-dir",
            str(self.work / "state"),
            "--runtime-endpoint",  # none: exits are inferred, no real containerd is asked
            f"unix://{self.work}/absent.sock",
            env={**os.environ, "NRI_PLUGIN_SOCKET": str(theirs.fileno())},
            pass_fds=(theirs.fileno(),),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            cwd=ROOT,
        )
        theirs.close()
        reader, writer = await asyncio.open_unix_connection(sock=ours)
        self.runtime = FakeRuntime(reader, writer)
        await asyncio.wait_for(self.runtime.registrations.get(), 30)
        await self.runtime.call_ok(
            "Configure",
            api.ConfigureRequest(runtime_name="containerd", runtime_version="v2.1.9"),
            api.ConfigureResponse,
        )
        return self.runtime

    async def end(self, *, terminate: bool = False) -> tuple[int, list[str]]:
        """Its exit status and its stderr lines (the JSON log, then any error line)."""
        assert self.proc is not None and self.proc.stderr is not None
        if terminate:
            self.proc.send_signal(signal.SIGTERM)
        err = await asyncio.wait_for(self.proc.stderr.read(), 30)
        status = await asyncio.wait_for(self.proc.wait(), 30)
        if self.runtime is not None:
            await self.runtime.close()
        return status, err.decode().splitlines()

    def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()


def logged(lines: list[str]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in lines if line.startswith("{")]


def on_plugin(work: Path, scenario: Any) -> None:
    async def main() -> None:
        plugin = Plugin(work)
        try:
            await scenario(plugin)
        finally:
            plugin.kill()
            if plugin.proc is not None:
                await plugin.proc.wait()

    asyncio.run(main())


def test_nri_refusal_after_synchronize_answers_no_updates_exits_2_and_keeps_the_file(
    node: Path,
) -> None:
    content = state_bytes(node)

    async def scenario(plugin: Plugin) -> None:
        runtime = await plugin.start()
        full, small = running("full", 8 * GI, "4", "1"), running("small", GI, "0", "0")
        answer = await runtime.call(
            "Synchronize",
            api.SynchronizeRequest(pods=[full[0], small[0]], containers=[full[1], small[1]]),
        )
        assert not answer.ok and answer.status_message == REFUSAL  # no updates answered
        status, lines = await plugin.end()
        assert status == 2
        assert lines[-1] == f"nri-memory-manager run: {REFUSAL}"
        events = logged(lines)
        [waiting] = [e for e in events if "nothing is written" in e["event"]]
        assert waiting["level"] == "warning" and waiting["numa_nodes"] == [1]
        [refused] = [e for e in events if e["event"] == "refusing to start"]
        assert refused["level"] == "error" and refused["reason"] == REFUSAL
        assert not [e for e in events if e["event"] in ("synchronized", "admission")]

    on_plugin(node, scenario)
    assert state_bytes(node) == content
    assert sorted(p.name for p in (node / "state").iterdir()) == [STATE_FILE_NAME]


def test_nri_start_releases_the_blocks_of_containers_that_are_gone_and_writes(
    node: Path,
) -> None:
    content = state_bytes(node)

    async def scenario(plugin: Plugin) -> None:
        runtime = await plugin.start()
        small = running("small", GI, "0", "0")  # the pod on node 1 was removed meanwhile
        answer = await runtime.call_ok(
            "Synchronize",
            api.SynchronizeRequest(pods=[small[0]], containers=[small[1]]),
            api.SynchronizeResponse,
        )
        assert list(answer.update) == []
        await eventually(lambda: state_bytes(node) != content, 30, "the state written")
        state = load_file(node / "state" / STATE_FILE_NAME)
        assert state is not None and list(state.entries) == ["small"]
        table = state.machine[1].memory_map["memory"]  # the loan is paid back, all free
        assert (table.total, table.allocatable, table.reserved, table.free) == (
            8176 * MI,
            8176 * MI,
            0,
            8176 * MI,
        )
        # and it serves: 7Gi go to node 1, which the old state had full (node 0 has 6Gi)
        p = pod("late")
        created = await runtime.call_ok(
            "CreateContainer",
            api.CreateContainerRequest(pod=p, container=container(p, "app", "c-late", 7 * GI)),
            api.CreateContainerResponse,
        )
        assert created.adjust.linux.resources.cpu.mems  # pinned (node 1, or the host's)
        status, lines = await plugin.end(terminate=True)
        assert status == 0
        [accepted] = [e for e in logged(lines) if "were released" in e["event"]]
        assert accepted["level"] == "warning"
        assert accepted["numa_nodes"] == [1] and accepted["released"] == ["full/app"]
        assert accepted["drifts"] == [
            "NUMA node 1 memory total was 8Gi (8589934592 bytes), is now 7.98Gi (8573157376 bytes)"
        ]

    on_plugin(node, scenario)
    state = load_file(node / "state" / STATE_FILE_NAME)
    assert state is not None and sorted(state.entries) == ["late", "small"]
    assert state.entries["late"]["app"][0].numa_affinity == (1,)


def test_nri_stop_before_synchronize_writes_nothing(node: Path) -> None:
    content = state_bytes(node)

    async def scenario(plugin: Plugin) -> None:
        await plugin.start()
        status, _ = await plugin.end(terminate=True)
        assert status == 0

    on_plugin(node, scenario)
    assert state_bytes(node) == content
    assert sorted(p.name for p in (node / "state").iterdir()) == [STATE_FILE_NAME]


# -- the CRI proxy, in-process ----------------------------------------------------------------


@pytest.fixture
def structlog_restored() -> Iterator[None]:
    yield
    structlog.reset_defaults()  # `serve` configured it


@pytest.fixture
def sockets() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="nmm-cons-"))  # short: unix socket paths < 108
    yield path
    shutil.rmtree(path, ignore_errors=True)


def proxy_args(work: Path, sockets: Path) -> argparse.Namespace:
    return argparse.Namespace(
        topology_file=str(work / "topology.yaml"),
        sysfs_root=None,
        config=str(work / "config.yaml"),
        kubelet_config=None,
        state_dir=str(work / "state"),
        metrics_address=None,
        listen=f"unix://{sockets}/proxy.sock",
        runtime_endpoint=f"unix://{sockets}/runtime.sock",
    )


def run_proxy(work: Path, sockets: Path, runtime: FakeCRIRuntime, *, stop: bool) -> int:
    """`serve` as `cri-proxy` runs it; with ``stop``, stopped once it took the runtime's view."""

    async def main() -> int:
        server = grpc.aio.server()
        server.add_generic_rpc_handlers((runtime.rpc_handler(),))
        server.add_insecure_port(f"unix:{sockets}/runtime.sock")
        await server.start()
        front = CRIFrontEnd(proxy_args(work, sockets))
        task = asyncio.get_running_loop().create_task(serve(proxy_args(work, sockets), front))
        try:
            if stop:
                await eventually(lambda: front.health()[0], 30, "the proxy synchronized")
                front.stop()
            return await asyncio.wait_for(task, 30)
        finally:
            await server.stop(None)

    return asyncio.run(main())


def cri_runtime(*uids: str) -> FakeCRIRuntime:
    runtime = FakeCRIRuntime()
    for uid in uids:
        memory, cpus, mems = {
            "full": (8 * GI, "4-7", "1"),
            "small": (GI, "0-3", "0"),
            "late": (2 * GI, "0-3", ""),  # created while the proxy was down: not pinned yet
        }[uid]
        sandbox = runtime.add_sandbox(sandbox_config(uid))
        config = container_config("app", memory, cpus, mems)
        runtime.add_container(sandbox, config, cri.CONTAINER_RUNNING, mems)
    return runtime


@pytest.mark.usefixtures("structlog_restored")
def test_cri_proxy_refuses_after_its_initial_take_and_keeps_the_file(
    node: Path, sockets: Path
) -> None:
    content = state_bytes(node)
    configure_logging("critical")
    runtime = cri_runtime("full", "small", "late")
    with pytest.raises(StateError) as err:  # the CLI's one line and exit status 2
        run_proxy(node, sockets, runtime, stop=False)
    assert str(err.value) == REFUSAL
    assert runtime.received("UpdateContainerResources") == []  # "late" not pinned on it
    assert state_bytes(node) == content
    assert sorted(p.name for p in (node / "state").iterdir()) == [STATE_FILE_NAME]


@pytest.mark.usefixtures("structlog_restored")
def test_cri_proxy_starts_once_the_holders_are_gone(node: Path, sockets: Path) -> None:
    configure_logging("critical")
    runtime = cri_runtime("small", "late")
    assert run_proxy(node, sockets, runtime, stop=True) == 0
    state = load_file(node / "state" / STATE_FILE_NAME)
    assert state is not None and sorted(state.entries) == ["late", "small"]
    table = state.machine[1].memory_map["memory"]
    assert (table.allocatable, table.reserved, table.free) == (8176 * MI, 0, 8176 * MI)
    [pinned] = [
        cri.UpdateContainerResourcesRequest.FromString(r)
        for r in runtime.received("UpdateContainerResources")
    ]
    assert pinned.linux.cpuset_mems  # "late" admitted late, once the check passed

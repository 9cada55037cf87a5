"""kubelet's pod-resources API with the plugin on a real containerd (2.x and 1.7).

kubelet is the stand-in of tests/podresources_standin.py, run as a process on a
unix socket (``python -m tests.podresources_standin``); the plugin is
``nri-memory-manager run`` with ``--pod-resources-socket`` pointing at it, on
the fake 4-NUMA topology of test_plugin.py (the fake nodes map to the host's;
the stand-in's devices are on the fake nodes, whose ids the plugin reads device
NUMA nodes in). Checked:

* a Guaranteed container with shared CPUs and a device on NUMA node 1 is pinned
  to node 1, and refused under ``single-numa-node`` when node 1 lacks memory;
* with kubelet's socket gone, or a kubelet that answers late, it is pinned as
  without the API and CreateContainer is not held past the client's deadline
  (100 ms): measured against a prompt kubelet, figures printed;
* the served socket (``--serve-pod-resources``), read with a plain gRPC client
  of the same API: every listed container's memory equals the state file's
  blocks, the allocatable memory the state's, kubelet's devices passed on; and
  when kubelet goes away, the plugin's view alone;
* a unix socket on a read-only bind mount can be connected to (the DaemonSet
  mounts kubelet's pod-resources directory read-only).
"""

from __future__ import annotations

import json
import os
import select
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc  # type: ignore[import-untyped]
import pytest
import yaml

from nri_plugin.podresources.client import LOOKUP_DEADLINE_S
from nri_plugin.podresources.gen import podresources_pb2 as pb
from nri_plugin.podresources.gen import podresources_pb2_grpc as pb_grpc

from .conftest import FLAVOR_IDS, _closed_and_clean
from .harness import FLAVOR_TAG, FLAVORS, Containerd, CRIClient, CRIError, E2EPaths
from .test_plugin import GI, ROOT, MemoryManagerPlugin, wait_exited

GPU = "example.com/gpu"
# what CreateContainer may take beyond a prompt kubelet's figure and the client's deadline:
# containerd's own work varies by tens of milliseconds on a busy 2-core machine
SLACK_S = 0.3


@pytest.fixture(scope="module", params=FLAVORS, ids=FLAVOR_IDS)
def containerd(request: pytest.FixtureRequest, e2e_paths: E2EPaths) -> Iterator[Containerd]:
    """This module's own containerd per flavor (run-<tag>pr), so that the CreateContainer
    figures are not another module's containerd's."""
    ctrd = Containerd(e2e_paths, request.param, f"{FLAVOR_TAG[request.param]}pr")
    try:
        ctrd.start()
        yield ctrd
    finally:
        _closed_and_clean(ctrd)


class StandinKubelet:
    """The stand-in kubelet as a process; it re-reads its pods file when it changes."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.socket = directory / "pod-resources" / "kubelet.sock"
        self.pods_file = directory / "kubelet-pods.yaml"
        self.socket.parent.mkdir(parents=True, exist_ok=True)
        self.pods: list[dict[str, Any]] = []
        self.proc: subprocess.Popen[str] | None = None
        self._version = 0
        self._write()

    def _write(self) -> None:
        node = {
            "node": {
                "cpus": list(range(16)),
                "devices": {
                    GPU: [
                        {"id": "gpu0", "numa": [0]},
                        {"id": "gpu1", "numa": [1]},
                        {"id": "gpu2", "numa": [1]},
                    ]
                },
            },
            "pods": self.pods,
        }
        self.pods_file.write_text(yaml.safe_dump(node))
        # a distinct mtime for every version, however fast they follow each other
        self._version += 1
        stamp = time.time_ns() + self._version
        os.utime(self.pods_file, ns=(stamp, stamp))

    def add_pod(
        self,
        name: str,
        containers: dict[str, dict[str, list[str]]],
        init: list[dict[str, Any]] | None = None,
    ) -> None:
        """The pod (namespace e2e) as kubelet admitted it: containers -> resource -> the
        device ids allocated to it."""
        self.pods.append(
            {
                "name": name,
                "namespace": "e2e",
                "initContainers": init or [],
                "containers": [{"name": n, "devices": d} for n, d in containers.items()],
            }
        )
        self._write()

    def start(self, delay: float | None = None) -> StandinKubelet:
        argv = [sys.executable, "-m", "tests.podresources_standin", "--socket", str(self.socket)]
        argv += ["--pods", str(self.pods_file)]
        if delay is not None:
            argv += ["--delay", str(delay)]
        self.proc = subprocess.Popen(
            argv,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], 20)
        line = self.proc.stdout.readline() if ready else ""
        assert line.strip() == f"serving {self.socket}", line
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None


@pytest.fixture
def kubelet() -> Iterator[StandinKubelet]:
    directory = Path(tempfile.mkdtemp(prefix="kpr-", dir="/tmp"))  # socket paths < 108 bytes
    standin = StandinKubelet(directory)
    try:
        yield standin.start()
    finally:
        standin.stop()
        shutil.rmtree(directory, ignore_errors=True)


class PodResourcesPlugin(MemoryManagerPlugin):
    """The plugin with kubelet's pod-resources socket, and optionally serving its own."""

    def __init__(
        self,
        ctrd: Containerd,
        work: Path,
        policy: str,
        kubelet_socket: Path,
        served: Path | None,
    ) -> None:
        super().__init__(ctrd, work, policy)
        self.kubelet_socket = kubelet_socket
        self.served = served

    @property
    def argv(self) -> list[str]:
        extra = ["--pod-resources-socket", str(self.kubelet_socket)]
        if self.served is not None:
            extra += ["--serve-pod-resources", str(self.served)]
        return [*super().argv, *extra]

    def admissions(self) -> list[dict[str, Any]]:
        assert self.proc is not None
        events = []
        for line in self.proc.log_text().splitlines():
            if line.startswith("{"):
                event = json.loads(line)
                if event.get("event") == "admission":
                    events.append(event)
        return events

    def failures(self) -> dict[str, float]:
        status, text = self.http("/metrics")
        assert status == 200
        out = {}
        for line in text.splitlines():
            prefix = "nri_memory_manager_pod_resources_failures_total{kind="
            if line.startswith(prefix):
                kind, value = line[len(prefix) :].split("} ")
                if float(value):
                    out[kind.strip('"')] = float(value)
        return out


@pytest.fixture
def plugin_with(
    containerd: Containerd, cri: CRIClient, tmp_path: Path, kubelet: StandinKubelet
) -> Iterator[Callable[..., PodResourcesPlugin]]:
    made: list[PodResourcesPlugin] = []

    def make(policy: str, *, served: bool = False) -> PodResourcesPlugin:
        sock = kubelet.dir / "served" / "pr.sock" if served else None
        p = PodResourcesPlugin(
            containerd, tmp_path / f"p{len(made)}", policy, kubelet.socket, sock
        ).start()
        made.append(p)
        return p

    yield make
    if containerd.running:
        containerd.cri().remove_all_pods()
    for p in made:
        p.stop()


def device_pod(
    cri: CRIClient,
    kubelet: StandinKubelet,
    devices: list[str],
    memory: int = GI,
) -> tuple[Any, str]:
    """A Guaranteed pod, 500m CPU (the shared pool), its app holding ``devices``; kubelet
    admitted it (allocated the devices) before its sandbox starts."""
    uid = str(uuid.uuid4())
    name = f"pod-{uid[:8]}"
    kubelet.add_pod(name, {"app": {GPU: devices} if devices else {}})
    pod = cri.run_pod(uid, name, qos="Guaranteed")
    cid = cri.create_container(pod, "app", memory_limit=memory, cpu_millis=500)
    return pod, cid


def test_a_device_on_node_1_pins_a_container_with_shared_cpus_to_node_1(
    cri: CRIClient, kubelet: StandinKubelet, plugin_with: Callable[..., PodResourcesPlugin]
) -> None:
    plugin = plugin_with("single-numa-node")
    _, with_gpu = device_pod(cri, kubelet, ["gpu1"])
    _, without = device_pod(cri, kubelet, [])
    assert cri.numa_nodes(with_gpu) == "1"
    assert cri.numa_nodes(without) == "0"  # as without a device: the first node that fits
    pinned = [e for e in plugin.admissions() if e["result"] == "pinned"]
    assert pinned[0]["hints"]["devices"][GPU][0] == {"nodes": [1], "preferred": True}
    assert pinned[1]["hints"]["devices"] is None
    assert plugin.failures() == {}


def test_refused_under_single_numa_node_when_the_devices_node_lacks_memory(
    cri: CRIClient, kubelet: StandinKubelet, plugin_with: Callable[..., PodResourcesPlugin]
) -> None:
    plugin = plugin_with("single-numa-node")
    uid = str(uuid.uuid4())
    kubelet.add_pod(f"pod-{uid[:8]}", {"app": {}})
    filler = cri.run_pod(uid, qos="Guaranteed")
    fill = cri.create_container(
        filler, "app", memory_limit=8 * GI, cpu_millis=2000, cpuset_cpus="4-5"
    )
    assert cri.numa_nodes(fill) == "1"  # node 1 is full
    with pytest.raises(CRIError) as err:
        device_pod(cri, kubelet, ["gpu1"])
    text = str(err.value)
    assert "TopologyAffinityError:" in text and "single-numa-node" in text
    assert f"device hints {GPU} [1]" in text
    # without the device it would have fitted node 0
    _, plain = device_pod(cri, kubelet, [])
    assert cri.numa_nodes(plain) == "0"
    assert plugin.failures() == {}


def _create_times(
    cri: CRIClient, kubelet: StandinKubelet, count: int
) -> tuple[list[float], list[str]]:
    """CreateContainer's round trips for ``count`` GPU pods (RunPodSandbox not counted)."""
    times, mems = [], []
    for _ in range(count):
        uid = str(uuid.uuid4())
        name = f"pod-{uid[:8]}"
        kubelet.add_pod(name, {"app": {GPU: ["gpu1"]}})
        pod = cri.run_pod(uid, name, qos="Guaranteed")
        started = time.monotonic()
        # small: node 0 holds all of them (it holds 7Gi)
        cid = cri.create_container(pod, "app", memory_limit=GI // 4, cpu_millis=500)
        times.append(time.monotonic() - started)
        mems.append(cri.numa_nodes(cid))
    return times, mems


def test_socket_gone_or_late_kubelet_is_today_within_the_deadline(
    cri: CRIClient, kubelet: StandinKubelet, plugin_with: Callable[..., PodResourcesPlugin]
) -> None:
    plugin = plugin_with("best-effort")
    prompt, prompt_mems = _create_times(cri, kubelet, 6)
    assert prompt_mems == ["1"] * 6
    assert plugin.failures() == {}
    # a kubelet that answers after 2 s: the device is not known in time
    kubelet.stop()
    kubelet.start(delay=2.0)
    time.sleep(1.5)  # the client's channel is connected again (backoff at most 1 s)
    late, late_mems = _create_times(cri, kubelet, 6)
    assert late_mems == ["0"] * 6  # as without the API
    after_late = plugin.failures()
    assert after_late.get("deadline", 0) >= 6, after_late
    # kubelet's socket gone
    kubelet.stop()
    gone, gone_mems = _create_times(cri, kubelet, 6)
    assert gone_mems == ["0"] * 6
    after_gone = plugin.failures()
    failed_gone = sum(after_gone.values()) - sum(after_late.values())
    assert failed_gone >= 6, (after_late, after_gone)
    print(
        f"\nCreateContainer (s): prompt kubelet median"
        f" {statistics.median(prompt):.3f} max {max(prompt):.3f}; kubelet 2 s late median"
        f" {statistics.median(late):.3f} max {max(late):.3f}; socket gone median"
        f" {statistics.median(gone):.3f} max {max(gone):.3f}; deadline {LOOKUP_DEADLINE_S} s;"
        f" failures counted {after_gone}"
    )
    assert max(late) <= max(prompt) + LOOKUP_DEADLINE_S + SLACK_S
    assert max(gone) <= max(prompt) + LOOKUP_DEADLINE_S + SLACK_S


def test_a_late_answer_serves_the_pods_next_containers(
    cri: CRIClient, kubelet: StandinKubelet, plugin_with: Callable[..., PodResourcesPlugin]
) -> None:
    plugin = plugin_with("best-effort")
    kubelet.stop()
    kubelet.start(delay=1.0)
    time.sleep(1.5)  # connected again
    uid = str(uuid.uuid4())
    name = f"pod-{uid[:8]}"
    kubelet.add_pod(name, {"a": {}, "b": {GPU: ["gpu1"]}})
    pod = cri.run_pod(uid, name, qos="Guaranteed")
    first = cri.create_container(pod, "a", memory_limit=GI, cpu_millis=500)
    assert cri.numa_nodes(first) == "0"
    assert plugin.failures() == {"deadline": 1.0}
    time.sleep(1.5)  # the answer asked at RunPodSandbox arrives meanwhile, and is kept
    started = time.monotonic()
    second = cri.create_container(pod, "b", memory_limit=GI, cpu_millis=500)
    took = time.monotonic() - started
    assert cri.numa_nodes(second) == "1"  # its GPU is known now, without asking again
    assert plugin.failures() == {"deadline": 1.0}
    print(f"\nCreateContainer answered from the cached late answer: {took:.3f} s")


def _blocks(state: dict[str, Any], uid: str, name: str) -> list[tuple[str, int, list[int]]]:
    entries = state.get("entries", {}).get(uid, {}).get(name, [])
    return [(b["type"], b["size"], b["numaAffinity"]) for b in entries]


def test_the_served_socket_reports_the_state_files_memory(
    cri: CRIClient, kubelet: StandinKubelet, plugin_with: Callable[..., PodResourcesPlugin]
) -> None:
    plugin = plugin_with("best-effort", served=True)
    assert plugin.served is not None
    pods = {}
    # a pod with a sidecar and an init container that has run (kubelet lists the sidecar,
    # never the init container), on node 0 (this machine's) so that it runs; then a GPU
    # pod and a big pod (a multi-node group), created only
    uid = str(uuid.uuid4())
    name = f"pod-{uid[:8]}"
    kubelet.add_pod(
        name, {"app": {}}, init=[{"name": "setup"}, {"name": "proxy", "restartPolicy": "Always"}]
    )
    pod = cri.run_pod(uid, name, qos="Guaranteed")
    pods[("e2e", name)] = uid
    setup = cri.create_container(
        pod, "setup", memory_limit=GI, cpu_millis=500, cpuset_cpus="0-1", command=["/bin/true"]
    )
    cri.start_container(setup)
    wait_exited(cri, setup)
    for container in ("proxy", "app"):
        cid = cri.create_container(
            pod, container, memory_limit=GI, cpu_millis=500, cpuset_cpus="0-1"
        )
        cri.start_container(cid)
    deadline = time.monotonic() + 10
    while "setup" in plugin.state().get("entries", {}).get(uid, {}):
        assert time.monotonic() < deadline, "the init container's blocks were never released"
        time.sleep(0.05)
    for devices, memory in ((["gpu1"], 2 * GI), ([], 12 * GI)):
        created, _ = device_pod(cri, kubelet, devices, memory)
        pods[(created.namespace, created.name)] = created.uid

    def check(channel: Any, *, kubelet_answers: bool) -> None:
        stub = pb_grpc.PodResourcesListerStub(channel)
        state = plugin.state()
        listed = stub.List(pb.ListPodResourcesRequest(), timeout=10)
        seen = set()
        for p in listed.pod_resources:
            uid = pods.get((p.namespace, p.name))
            if uid is None:
                continue
            for c in p.containers:
                got = [(m.memory_type, m.size, [n.ID for n in m.topology.nodes]) for m in c.memory]
                assert got == _blocks(state, uid, c.name), (p.name, c.name)
                seen.add((uid, c.name))
        held = {(u, n) for u, names in state["entries"].items() for n in names}
        assert held <= seen, held - seen  # every container holding blocks is reported
        assert (pods[("e2e", name)], "setup") not in seen
        if kubelet_answers:
            (gpu_pod,) = [p for p in listed.pod_resources if p.containers[0].devices]
            assert gpu_pod.containers[0].devices[0].device_ids == ["gpu1"]
        allocatable = stub.GetAllocatableResources(pb.AllocatableResourcesRequest(), timeout=10)
        memory = {(m.memory_type, m.topology.nodes[0].ID): m.size for m in allocatable.memory}
        assert memory == {
            (t, int(node)): table["allocatable"]
            for node, machine in state["machineState"].items()
            for t, table in machine["memoryMap"].items()
            if table["allocatable"]
        }
        assert len(allocatable.devices) == (3 if kubelet_answers else 0)

    with grpc.insecure_channel(f"unix:{plugin.served}") as channel:
        check(channel, kubelet_answers=True)
        kubelet.stop()
        check(channel, kubelet_answers=False)


def test_a_socket_on_a_read_only_bind_mount_can_be_connected_to(kubelet: StandinKubelet) -> None:
    """What the DaemonSet does with /var/lib/kubelet/pod-resources (readOnly: true)."""
    kubelet.add_pod("web", {"app": {GPU: ["gpu1"]}})
    target = kubelet.dir / "ro"
    target.mkdir()
    client = textwrap.dedent(
        f"""
        import asyncio, errno, sys
        from nri_plugin.podresources.client import PodResourcesClient
        try:
            open("{target}/probe", "w")
            sys.exit("the bind mount is writable")
        except OSError as exc:
            assert exc.errno == errno.EROFS, exc
        async def main():
            client = PodResourcesClient("{target}/kubelet.sock", deadline=10)
            await client.start()
            answer = await client.container("u", "e2e", "web", "app")
            await client.close()
            print(answer.listing.value, answer.resources.devices[0].device_ids[0])
        asyncio.run(main())
        """
    )
    script = (
        f"mount --bind {kubelet.socket.parent} {target}"
        f" && mount -o remount,bind,ro {target}"
        f" && {sys.executable} -c '{client}'"
    )
    ran = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.split() == ["listed", "gpu1"]

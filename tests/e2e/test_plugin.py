"""nri-memory-manager run against a real containerd (2.x and 1.7), driven as kubelet drives CRI.

The plugin runs on a fake 4-NUMA topology, bigger than this machine: it writes
the host nodes the fake ones map to into cpuset.mems and names the fake ones in
an annotation (`CRIClient.numa_nodes`). These tests read the OCI spec the
plugin's answer produced; tests/e2e/test_running.py starts containers on every
fake node.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from .harness import Containerd, CRIClient, CRIError, PluginProcess

GI = 1 << 30
ROOT = Path(__file__).resolve().parents[2]

# 4 NUMA nodes of 8Gi, 4 CPUs each; node 0 has 1Gi reserved (7Gi allocatable)
TOPOLOGY = """\
nodes:
  - {id: 0, cpus: "0-3", memory: 8Gi}
  - {id: 1, cpus: "4-7", memory: 8Gi}
  - {id: 2, cpus: "8-11", memory: 8Gi}
  - {id: 3, cpus: "12-15", memory: 8Gi}
distances: [[10, 21, 31, 31], [21, 10, 31, 31], [31, 31, 10, 21], [31, 31, 21, 10]]
"""


def config_text(policy: str) -> str:
    return f"policy: static\ntopologyManagerPolicy: {policy}\nreservedMemory: ['0:memory=1Gi']\n"


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


RELIST_INTERVAL_S = 0.5


class MemoryManagerPlugin:
    """One `nri-memory-manager run` process against a containerd, restartable."""

    def __init__(self, ctrd: Containerd, work: Path, policy: str) -> None:
        self.ctrd = ctrd
        self.work = work
        self.state_dir = work / "state"
        self.port = free_port()
        work.mkdir(parents=True, exist_ok=True)
        (work / "topology.yaml").write_text(TOPOLOGY)
        (work / "config.yaml").write_text(config_text(policy))
        self.proc: PluginProcess | None = None

    @property
    def argv(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "nri_plugin.cli",
            "run",
            "--socket",
            str(self.ctrd.nri_socket),
            "--config",
            str(self.work / "config.yaml"),
            "--topology-file",
            str(self.work / "topology.yaml"),
            "--state-dir",
            str(self.state_dir),
            "--metrics-address",
            f"127.0.0.1:{self.port}",
            "--log-level",
            "debug",
            # pods whose end containerd does not announce (after its restart): looked up
            # often, so that a test or the fault-injection oracle need not wait long
            "--relist-interval",
            str(RELIST_INTERVAL_S),
        ]

    def start(self) -> MemoryManagerPlugin:
        self.proc = self.ctrd.start_plugin(
            self.argv, env={"PYTHONPATH": str(ROOT)}, name="90-memory-manager"
        )
        self.proc.wait_registered(self.ctrd, timeout=20)
        return self

    def kill(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.kill(sig)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()

    def state(self) -> dict[str, Any]:
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "nri_plugin.cli",
                "state",
                "--state-dir",
                str(self.state_dir),
                "--json",
            ],
            capture_output=True,
            text=True,
            check=True,
            cwd=ROOT,
        )
        return json.loads(out.stdout)  # type: ignore[no-any-return]

    def http(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()


@pytest.fixture
def plugin_factory(
    containerd: Containerd, cri: CRIClient, tmp_path: Path
) -> Iterator[Callable[[str], MemoryManagerPlugin]]:
    made: list[MemoryManagerPlugin] = []

    def make(policy: str) -> MemoryManagerPlugin:
        p = MemoryManagerPlugin(containerd, tmp_path / f"p{len(made)}", policy).start()
        made.append(p)
        return p

    yield make
    # pods first (the plugin sees their removal), then the plugin
    if containerd.running:
        containerd.cri().remove_all_pods()  # a fresh client: containerd may have restarted
    for p in made:
        p.stop()


def guaranteed(
    cri: CRIClient, memory: int, cpuset: str | None = None, name: str = "app"
) -> tuple[Any, str]:
    uid = str(uuid.uuid4())
    pod = cri.run_pod(uid, qos="Guaranteed")
    cid = cri.create_container(pod, name, memory_limit=memory, cpu_millis=2000, cpuset_cpus=cpuset)
    return pod, cid


def test_single_node_fit_follows_cpu_pinning(
    cri: CRIClient, plugin_factory: Callable[[str], MemoryManagerPlugin]
) -> None:
    plugin = plugin_factory("single-numa-node")
    _, on_node2 = guaranteed(cri, GI, cpuset="8-9")
    assert cri.numa_nodes(on_node2) == "2"
    _, unpinned_cpus = guaranteed(cri, GI)
    # no CPU preference: the narrowest, lowest node
    assert cri.numa_nodes(unpinned_cpus) == "0"
    state = plugin.state()
    assert state["machineState"]["2"]["memoryMap"]["memory"]["reserved"] == GI
    assert state["machineState"]["0"]["memoryMap"]["memory"]["reserved"] == GI


def test_request_larger_than_a_node_gets_a_group(
    cri: CRIClient, plugin_factory: Callable[[str], MemoryManagerPlugin]
) -> None:
    plugin_factory("best-effort")
    _, cid = guaranteed(cri, 12 * GI)
    assert cri.numa_nodes(cid) == "0,1"


def test_single_numa_node_refuses_with_topology_affinity_error(
    cri: CRIClient, plugin_factory: Callable[[str], MemoryManagerPlugin]
) -> None:
    plugin = plugin_factory("single-numa-node")
    with pytest.raises(CRIError) as err:
        guaranteed(cri, 12 * GI)
    text = str(err.value)
    assert "TopologyAffinityError:" in text
    assert "memory=12Gi" in text and "single-numa-node" in text
    status, metrics = plugin.http("/metrics")
    assert status == 200
    assert "kubelet_topology_manager_admission_errors_total 1.0" in metrics
    # nothing is kept for the refused container
    assert "entries" not in plugin.state()


def test_burstable_and_best_effort_are_untouched(
    cri: CRIClient, plugin_factory: Callable[[str], MemoryManagerPlugin]
) -> None:
    plugin = plugin_factory("single-numa-node")
    burst = cri.run_pod(str(uuid.uuid4()), qos="Burstable")
    cid_b = cri.create_container(burst, "b", memory_limit=GI, cpu_millis=500, cpu_limit_millis=1000)
    be = cri.run_pod(str(uuid.uuid4()), qos="BestEffort")
    cid_e = cri.create_container(be, "e")
    assert cri.numa_nodes(cid_b) == ""
    assert cri.numa_nodes(cid_e) == ""
    assert "entries" not in plugin.state()


def test_removing_a_pod_frees_memory_for_one_that_did_not_fit(
    cri: CRIClient, plugin_factory: Callable[[str], MemoryManagerPlugin]
) -> None:
    plugin_factory("single-numa-node")
    first, _ = guaranteed(cri, 7 * GI)  # fills node 0
    for _ in range(3):
        guaranteed(cri, 8 * GI)  # fill nodes 1, 2, 3
    with pytest.raises(CRIError, match="TopologyAffinityError"):
        guaranteed(cri, 5 * GI)
    cri.stop_pod(first.id)
    cri.remove_pod(first.id)
    _, cid = guaranteed(cri, 5 * GI)
    assert cri.numa_nodes(cid) == "0"


def test_plugin_killed_keeps_every_allocation(
    cri: CRIClient, plugin_factory: Callable[[str], MemoryManagerPlugin]
) -> None:
    plugin = plugin_factory("single-numa-node")
    _, a = guaranteed(cri, 7 * GI)
    _, b = guaranteed(cri, 3 * GI)
    assert (cri.numa_nodes(a), cri.numa_nodes(b)) == ("0", "1")
    before = plugin.state()
    plugin.kill(signal.SIGKILL)
    plugin.start()
    assert plugin.state()["machineState"] == before["machineState"]
    # the restarted plugin still counts both: 6Gi goes to node 2, not node 0 or 1
    _, c = guaranteed(cri, 6 * GI)
    assert cri.numa_nodes(c) == "2"


def test_lost_state_file_is_rebuilt_from_the_runtime(
    cri: CRIClient, plugin_factory: Callable[[str], MemoryManagerPlugin]
) -> None:
    plugin = plugin_factory("best-effort")
    guaranteed(cri, 3 * GI, cpuset="4")
    guaranteed(cri, 12 * GI)  # a group
    before = plugin.state()
    plugin.kill(signal.SIGKILL)
    (plugin.state_dir / "memory_manager_state").unlink()
    plugin.start()
    after = plugin.state()
    assert after["entries"] == before["entries"]
    assert after["machineState"] == before["machineState"]


def test_containerd_restart_reconnects(
    containerd: Containerd,
    cri: CRIClient,
    plugin_factory: Callable[[str], MemoryManagerPlugin],
) -> None:
    plugin = plugin_factory("single-numa-node")
    _, a = guaranteed(cri, 7 * GI)
    assert cri.numa_nodes(a) == "0"
    assert plugin.proc is not None
    since = containerd.log_offset()
    containerd.restart()
    containerd.wait_for_log(r'plugin \\?"90-memory-manager\\?" connected', timeout=20, since=since)
    cri2 = containerd.cri()
    _, b = guaranteed(cri2, 2 * GI)
    assert cri2.numa_nodes(b) == "1"  # node 0 is still held by the first pod
    assert plugin.http("/healthz")[0] == 200


def test_health_and_metrics_endpoints(
    cri: CRIClient, plugin_factory: Callable[[str], MemoryManagerPlugin]
) -> None:
    plugin = plugin_factory("restricted")
    assert plugin.http("/healthz") == (200, "ok\n")
    guaranteed(cri, 2 * GI, cpuset="4-5")
    status, text = plugin.http("/metrics")
    assert status == 200
    assert "kubelet_memory_manager_pinning_requests_total 1.0" in text
    assert "kubelet_topology_manager_admission_requests_total 1.0" in text
    assert (
        'nri_memory_manager_memory_bytes{numa_node="1",state="reserved",type="memory"} '
        "2.147483648e+09" in text
    )
    assert plugin.http("/nope")[0] == 404
    # SIGTERM stops it cleanly, with the state written
    assert plugin.proc is not None
    assert plugin.proc.stop() == 0
    assert plugin.state()["machineState"]["1"]["memoryMap"]["memory"]["reserved"] == 2 * GI


def wait_exited(cri: CRIClient, cid: str, timeout: float = 15.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while cri.container_state(cid) != "CONTAINER_EXITED":
        assert time.monotonic() < deadline, f"{cid} did not exit"
        time.sleep(0.05)


def test_init_container_memory_is_reused_then_released(
    cri: CRIClient, plugin_factory: Callable[[str], MemoryManagerPlugin]
) -> None:
    # kubelet's order: the init container runs to completion, then the app is created
    plugin = plugin_factory("single-numa-node")
    uid = str(uuid.uuid4())
    pod = cri.run_pod(uid, qos="Guaranteed")
    init = cri.create_container(
        pod, "init", memory_limit=4 * GI, cpu_millis=1000, cpuset_cpus="0-1", command=["/bin/true"]
    )
    assert cri.numa_nodes(init) == "0"  # node 0 of the fake machine: this one can run
    cri.start_container(init)
    wait_exited(cri, init)
    app = cri.create_container(pod, "app", memory_limit=2 * GI, cpu_millis=1000, cpuset_cpus="0-1")
    assert cri.numa_nodes(app) == "0"
    node0 = plugin.state()["machineState"]["0"]["memoryMap"]["memory"]
    assert node0["reserved"] == 4 * GI  # the app reused the init container's memory
    cri.start_container(app)
    assert cri.host_cpuset_mems(app) == "0"
    import time

    deadline = time.monotonic() + 10
    while "init" in plugin.state().get("entries", {}).get(uid, {}):
        assert time.monotonic() < deadline, "init container's blocks never released"
        time.sleep(0.05)
    state = plugin.state()
    assert list(state["entries"][uid]) == ["app"]
    assert state["machineState"]["0"]["memoryMap"]["memory"]["reserved"] == 2 * GI


def test_prelaunched_by_containerd(flavor: str, e2e_paths: Any, tmp_path: Path) -> None:
    """containerd starts `90-memory-manager` from its plugin dir with fd 3 as the socket."""
    work = tmp_path / "pre"
    work.mkdir()
    (work / "topology.yaml").write_text(TOPOLOGY)
    (work / "config.yaml").write_text(config_text("single-numa-node"))
    ctrd = Containerd(e2e_paths, flavor, instance=f"pre{flavor.replace('.', '')}")  # type: ignore[arg-type]
    try:
        ctrd.start()  # the first start sweeps the run dir: install the plugin after it
        ctrd.stop()
        script = ctrd.nri_plugin_path / "90-memory-manager"
        # containerd gives a pre-launched plugin only the NRI_* variables: no PATH
        script.write_text(
            "#!/bin/sh\n"
            f"cd {ROOT}\n"
            f"exec {sys.executable} -m nri_plugin.cli run --config {work}/config.yaml"
            f" --topology-file {work}/topology.yaml --state-dir {work}/state"
            f" >>{work}/plugin.log 2>&1\n"
        )
        script.chmod(0o755)
        since = ctrd.log_offset()
        ctrd.start()
        # pre-launched plugins are registered and synchronized while containerd boots
        ctrd.wait_for_log(r'registered as \\?"90-memory-manager\\?"', timeout=20, since=since)
        ctrd.wait_for_log(r"containerd successfully booted", timeout=20, since=since)
        cri = ctrd.cri()
        _, cid = guaranteed(cri, 2 * GI, cpuset="12")
        assert cri.numa_nodes(cid) == "3"
        log = (work / "plugin.log").read_text()
        assert '"result": "pinned"' in log
    finally:
        ctrd.close()
        ctrd.assert_clean()

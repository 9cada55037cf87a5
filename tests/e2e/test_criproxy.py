"""nri-memory-manager cri-proxy in front of a real containerd (2.x and 1.7) with NRI disabled.

A CRI client talks to the proxy's socket as kubelet would; the container specs
are read back from containerd itself. The policy runs on a fake 4-NUMA
topology, bigger than this machine: the proxy writes the host nodes the fake
ones map to into cpuset.mems and names the fake ones in an annotation.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc  # type: ignore[import-untyped]
import pytest

from .conftest import FLAVOR_IDS
from .harness import (
    FLAVOR_TAG,
    FLAVORS,
    WORKLOAD_IMAGE,
    Containerd,
    CRIClient,
    CRIError,
    E2EPaths,
    PluginProcess,
    PodResources,
    load_cri_stubs,
)
from .test_plugin import GI, TOPOLOGY, free_port

ROOT = Path(__file__).resolve().parents[2]
STATE_FILE = "memory_manager_state"


class CRIProxy:
    """One `nri-memory-manager cri-proxy` process in front of a containerd, restartable."""

    def __init__(self, ctrd: Containerd, work: Path, policy: str) -> None:
        self.ctrd = ctrd
        self.work = work
        self.state_dir = work / "state"
        self.socket = ctrd.run_dir / "cri-proxy.sock"  # short: unix socket paths < 108
        self.port = free_port()
        work.mkdir(parents=True, exist_ok=True)
        (work / "topology.yaml").write_text(TOPOLOGY)
        (work / "config.yaml").write_text(
            f"policy: static\ntopologyManagerPolicy: {policy}\nreservedMemory: ['0:memory=1Gi']\n"
        )
        self.proc: PluginProcess | None = None
        self._client: CRIClient | None = None

    @property
    def argv(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "nri_plugin.cli",
            "cri-proxy",
            "--listen",
            str(self.socket),
            "--runtime-endpoint",
            f"unix://{self.ctrd.cri_socket}",
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
        ]

    def start(self, timeout: float = 20.0) -> CRIProxy:
        self.proc = self.ctrd.start_plugin(self.argv, env={"PYTHONPATH": str(ROOT)})
        deadline = time.monotonic() + timeout
        while self.http("/healthz")[0] != 200:  # 200 once synchronized with containerd
            if not self.proc.running or time.monotonic() > deadline:
                raise AssertionError(f"cri-proxy not healthy; its log:\n{self.proc.log_text()}")
            time.sleep(0.05)
        return self

    def cri(self) -> CRIClient:
        """A CRI client on the proxy's socket: kubelet's view."""
        if self._client is None:
            self._client = CRIClient(
                self.ctrd.paths, self.socket, self.ctrd.run_dir / "pods", self.ctrd.cgroup_prefix
            )
        return self._client

    def kill(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.kill(sig)
        self.proc.wait(10)

    def stop(self) -> int | None:
        if self._client is not None:
            self._client.close()
            self._client = None
        return None if self.proc is None else self.proc.stop()

    def state(self) -> dict[str, Any]:
        state = ["state", "--state-dir", str(self.state_dir), "--json"]
        out = subprocess.run(
            [sys.executable, "-m", "nri_plugin.cli", *state],
            capture_output=True,
            text=True,
            check=True,
            cwd=ROOT,
        )
        return json.loads(out.stdout)  # type: ignore[no-any-return]

    def reserved(self, node: int) -> int:
        table = self.state()["machineState"][str(node)]["memoryMap"]["memory"]
        return int(table["reserved"])

    def http(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()
        except OSError:
            return 0, ""


@pytest.fixture(scope="module", params=FLAVORS, ids=FLAVOR_IDS)
def runtime(request: pytest.FixtureRequest, e2e_paths: E2EPaths) -> Iterator[Containerd]:
    """A containerd without NRI, per flavor and module; torn down and checked clean."""
    flavor = request.param
    ctrd = Containerd(e2e_paths, flavor, f"{FLAVOR_TAG[flavor]}p", nri=False)
    try:
        ctrd.start()
        assert not ctrd.nri_socket.exists()
        yield ctrd
    finally:
        try:
            ctrd.close()
        finally:
            ctrd.assert_clean()


@pytest.fixture
def direct(runtime: Containerd) -> CRIClient:
    """A CRI client on containerd's own socket (what the runtime really holds)."""
    return runtime.cri()


@pytest.fixture
def proxy_factory(
    runtime: Containerd, direct: CRIClient, tmp_path: Path
) -> Iterator[Callable[[str], CRIProxy]]:
    made: list[CRIProxy] = []

    def make(policy: str) -> CRIProxy:
        p = CRIProxy(runtime, tmp_path / f"p{len(made)}", policy).start()
        made.append(p)
        return p

    yield make
    direct.remove_all_pods()
    for p in made:
        p.stop()


def guaranteed(
    cri: CRIClient, memory: int, cpuset: str | None = None, name: str = "app"
) -> tuple[Any, str]:
    pod = cri.run_pod(str(uuid.uuid4()), qos="Guaranteed")
    cid = cri.create_container(pod, name, memory_limit=memory, cpu_millis=2000, cpuset_cpus=cpuset)
    return pod, cid


def wait_for_state(cri: CRIClient, container_id: str, state: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while (now := cri.container_state(container_id)) != state:
        assert time.monotonic() < deadline, f"{container_id} still {now}, not {state}"
        time.sleep(0.05)


# -- admission ------------------------------------------------------------------------------


def test_guaranteed_containers_are_pinned_in_the_stored_spec(
    direct: CRIClient, proxy_factory: Callable[[str], CRIProxy]
) -> None:
    proxy = proxy_factory("single-numa-node")
    kubelet = proxy.cri()
    _, on_node2 = guaranteed(kubelet, GI, cpuset="8-9")
    _, anywhere = guaranteed(kubelet, 2 * GI)
    assert direct.numa_nodes(on_node2) == "2"
    assert direct.numa_nodes(anywhere) == "0"  # no CPU preference: the narrowest, lowest node
    burst = kubelet.run_pod(str(uuid.uuid4()), qos="Burstable")
    b = kubelet.create_container(burst, "b", memory_limit=GI, cpu_millis=500, cpu_limit_millis=1000)
    assert direct.numa_nodes(b) == ""
    assert (proxy.reserved(2), proxy.reserved(0)) == (GI, 2 * GI)
    status, metrics = proxy.http("/metrics")
    assert status == 200 and "kubelet_memory_manager_pinning_requests_total 2.0" in metrics


def test_refusal_reaches_the_client_and_nothing_is_created(
    direct: CRIClient, proxy_factory: Callable[[str], CRIProxy]
) -> None:
    proxy = proxy_factory("single-numa-node")
    kubelet = proxy.cri()
    pod = kubelet.run_pod(str(uuid.uuid4()), qos="Guaranteed")
    with pytest.raises(CRIError) as err:
        kubelet.create_container(pod, "big", memory_limit=12 * GI, cpu_millis=2000)
    assert err.value.code == "FAILED_PRECONDITION"
    assert err.value.details.startswith("TopologyAffinityError:")
    assert "memory=12Gi" in err.value.details and "single-numa-node" in err.value.details
    assert direct.list_containers(pod.id) == []
    assert "entries" not in proxy.state()
    assert "kubelet_topology_manager_admission_errors_total 1.0" in proxy.http("/metrics")[1]


def test_update_keeps_the_pinned_mems(
    direct: CRIClient, proxy_factory: Callable[[str], CRIProxy]
) -> None:
    proxy = proxy_factory("single-numa-node")
    kubelet = proxy.cri()
    _, cid = guaranteed(kubelet, GI, cpuset="4")
    kubelet.update_container_resources(
        cid, memory_limit=GI, cpu_millis=2000, cpuset_cpus="4-5", cpuset_mems="0-3"
    )
    cpu = direct.spec(cid)["linux"]["resources"]["cpu"]
    # fake node 1 is written as host node 0 (this machine has one node)
    assert (cpu["cpus"], cpu["mems"]) == ("4-5", "0")
    assert direct.numa_nodes(cid) == "1"


def test_pod_removal_frees_memory_for_a_pod_that_did_not_fit(
    direct: CRIClient, proxy_factory: Callable[[str], CRIProxy]
) -> None:
    proxy = proxy_factory("single-numa-node")
    kubelet = proxy.cri()
    first, _ = guaranteed(kubelet, 7 * GI)  # fills node 0
    for _ in range(3):
        guaranteed(kubelet, 8 * GI)  # fills nodes 1, 2, 3
    with pytest.raises(CRIError, match="TopologyAffinityError"):
        guaranteed(kubelet, 5 * GI)
    kubelet.stop_pod(first.id)
    kubelet.remove_pod(first.id)
    _, cid = guaranteed(kubelet, 5 * GI)
    assert direct.numa_nodes(cid) == "0"


def test_finished_init_container_lends_its_memory_to_the_app(
    direct: CRIClient, proxy_factory: Callable[[str], CRIProxy]
) -> None:
    proxy = proxy_factory("single-numa-node")
    kubelet = proxy.cri()
    pod = kubelet.run_pod(str(uuid.uuid4()), qos="Guaranteed")
    # node 0 is the machine's only real node: these two can run
    init = kubelet.create_container(
        pod, "init", memory_limit=4 * GI, cpu_millis=1000, command=["true"]
    )
    kubelet.start_container(init)
    wait_for_state(direct, init, "CONTAINER_EXITED")
    app = kubelet.create_container(pod, "app", memory_limit=4 * GI, cpu_millis=1000)
    # kubelet's rule: the app reuses the init container's memory (node 0 has 7Gi)
    assert direct.numa_nodes(app) == "0"
    kubelet.start_container(app)
    assert direct.host_cpuset_mems(app) == "0"
    assert list(proxy.state()["entries"][pod.uid]) == ["app"]
    assert proxy.reserved(0) == 4 * GI


# -- relaying -------------------------------------------------------------------------------


class Stubs:
    """Raw CRI stubs on one socket, to compare answers byte for byte."""

    def __init__(self, paths: E2EPaths, socket: Path) -> None:
        self.api, grpc_mod = load_cri_stubs(paths)
        self.channel = grpc.insecure_channel(f"unix://{socket}")
        self.runtime = grpc_mod.RuntimeServiceStub(self.channel)
        self.images = grpc_mod.ImageServiceStub(self.channel)

    def close(self) -> None:
        self.channel.close()


def test_other_calls_pass_through_unchanged(
    runtime: Containerd, direct: CRIClient, proxy_factory: Callable[[str], CRIProxy]
) -> None:
    proxy = proxy_factory("single-numa-node")
    _, cid = guaranteed(proxy.cri(), GI)
    a = Stubs(runtime.paths, runtime.cri_socket)
    b = Stubs(runtime.paths, proxy.socket)
    api = a.api
    try:
        image = api.ImageSpec(image=WORKLOAD_IMAGE)
        calls: list[tuple[Callable[[Stubs], Any], Any]] = [
            (lambda s: s.runtime.Version, api.VersionRequest()),
            (lambda s: s.runtime.Status, api.StatusRequest()),
            (lambda s: s.runtime.ListPodSandbox, api.ListPodSandboxRequest()),
            (lambda s: s.runtime.ListContainers, api.ListContainersRequest()),
            (lambda s: s.runtime.ContainerStatus, api.ContainerStatusRequest(container_id=cid)),
            (lambda s: s.images.ImageStatus, api.ImageStatusRequest(image=image)),
            (lambda s: s.images.ListImages, api.ListImagesRequest()),
        ]
        for method, request in calls:
            assert method(b)(request, timeout=10) == method(a)(request, timeout=10), method(a)
        # errors: the same code and message
        missing = api.ContainerStatusRequest(container_id="0" * 64)
        errors = []
        for stubs in (a, b):
            with pytest.raises(grpc.RpcError) as err:
                stubs.runtime.ContainerStatus(missing, timeout=10)
            errors.append((err.value.code(), err.value.details()))
        assert errors[0] == errors[1] and errors[0][0] == grpc.StatusCode.NOT_FOUND
        # a server-streaming call: containerd's events reach the client through the proxy
        events = b.runtime.GetContainerEvents(api.GetEventsRequest(), timeout=20)
        time.sleep(0.3)  # let the subscription reach containerd
        _, created = guaranteed(proxy.cri(), GI)
        seen = next(e for e in events if e.container_id == created)
        assert seen.container_event_type == api.CONTAINER_CREATED_EVENT
        events.cancel()
    finally:
        a.close()
        b.close()


# -- restarts -------------------------------------------------------------------------------


def test_killed_proxy_restarts_with_every_allocation(
    direct: CRIClient, proxy_factory: Callable[[str], CRIProxy]
) -> None:
    proxy = proxy_factory("single-numa-node")
    first, a = guaranteed(proxy.cri(), 7 * GI)
    _, b = guaranteed(proxy.cri(), 3 * GI)
    assert (direct.numa_nodes(a), direct.numa_nodes(b)) == ("0", "1")
    before = proxy.state()
    proxy.kill(signal.SIGKILL)
    with pytest.raises(CRIError):  # kubelet's limit: no proxy, no containers
        proxy.cri().version(timeout=2)
    proxy.stop()
    proxy.start()
    assert proxy.state() == before
    # the restarted proxy counts both: 6Gi goes to node 2
    _, c = guaranteed(proxy.cri(), 6 * GI)
    assert direct.numa_nodes(c) == "2"
    # and still knows the first pod: removing it frees node 0
    proxy.cri().stop_pod(first.id)
    proxy.cri().remove_pod(first.id)
    assert proxy.reserved(0) == 0


def test_lost_state_is_rebuilt_and_containers_created_meanwhile_are_pinned(
    direct: CRIClient, proxy_factory: Callable[[str], CRIProxy]
) -> None:
    proxy = proxy_factory("best-effort")
    guaranteed(proxy.cri(), 3 * GI, cpuset="4")
    guaranteed(proxy.cri(), 12 * GI)  # a group
    before = proxy.state()
    proxy.kill(signal.SIGKILL)
    (proxy.state_dir / STATE_FILE).unlink()
    # created on containerd directly while the proxy was away: not pinned
    pod = direct.run_pod(str(uuid.uuid4()), qos="Guaranteed", resources=PodResources(2000, GI))
    late = direct.create_container(pod, "late", memory_limit=GI, cpu_millis=2000, cpuset_cpus="12")
    assert direct.numa_nodes(late) == ""
    proxy.stop()
    proxy.start()
    after = proxy.state()
    assert after["entries"][pod.uid]["late"][0]["numaAffinity"] == [3]
    del after["entries"][pod.uid]
    assert after["entries"] == before["entries"]
    # pinned with UpdateContainerResources, which carries no annotation: the host's node
    assert direct.spec(late)["linux"]["resources"]["cpu"]["mems"] == "0"

"""The node tracker's rules on a real containerd (2.x and 1.7), checked against `simulate`.

Crash loops, finished init containers, in-place resizes and pod scope, driven as
kubelet drives CRI. After each sequence the plugin's state file must equal what
`simulate` computes for the same admissions, starts and resizes
(docs/lifecycle.md, "The invariant"). The fake nodes map to this machine's, so
the containers started here run wherever they were placed (test_running.py).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from nri_plugin.frontends.simulate import simulate_text

from .harness import Containerd, CRIClient, CRIError, PodResources
from .test_criproxy import CRIProxy, runtime
from .test_plugin import TOPOLOGY, MemoryManagerPlugin, config_text, plugin_factory, wait_exited

__all__ = ["plugin_factory", "runtime"]  # the fixtures, re-used

GI = 1 << 30
MI = 1 << 20


# a machine with 2Mi hugepage pools for pod scope: 640Mi on node 0, 2Gi on node 1
HUGEPAGES_TOPOLOGY = """\
nodes:
  - {id: 0, cpus: "0-3", memory: 8Gi, hugepages: {2Mi: 640Mi}}
  - {id: 1, cpus: "4-7", memory: 8Gi, hugepages: {2Mi: 2Gi}}
"""
POD_SCOPE_CONFIG = (
    "policy: static\ntopologyManagerPolicy: single-numa-node\ntopologyManagerScope: pod\n"
    "reservedMemory: ['0:memory=1Gi']\n"
)


def simulated_state(
    steps: list[dict[str, Any]], topology: str = TOPOLOGY, config: str | None = None
) -> Any:
    """The final state `simulate` computes for ``steps`` on the plugin's machine."""
    scenario = {
        "topology": yaml.safe_load(topology),
        "config": yaml.safe_load(config or config_text("single-numa-node")),
        "steps": steps,
    }
    return simulate_text(json.dumps(scenario))["state"]


def container(name: str, memory: int, *, cpu: str = "2", **extra: Any) -> dict[str, Any]:
    limits = {"cpu": cpu, "memory": memory, **extra}
    return {"name": name, "resources": {"limits": limits}}


def entries(plugin: MemoryManagerPlugin, uid: str) -> Mapping[str, Any]:
    return plugin.state().get("entries", {}).get(uid, {})  # type: ignore[no-any-return]


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def memory_limit(cri: CRIClient, cid: str) -> int:
    return int(cri.spec(cid)["linux"]["resources"]["memory"]["limit"])


def test_crashed_container_keeps_its_blocks_while_a_sibling_is_created(
    cri: CRIClient, plugin_factory: Callable[[str], MemoryManagerPlugin]
) -> None:
    # "a" exits with code 3, then "b" (a name never created before) is created and
    # started, then "a" is restarted: "a" is an app container that crashed, never an
    # init container whose memory "b" may take
    plugin = plugin_factory("single-numa-node")
    uid = str(uuid.uuid4())
    pod = cri.run_pod(uid, qos="Guaranteed")
    a = cri.create_container(
        pod, "a", memory_limit=GI, cpu_millis=2000, command=["/bin/sh", "-c", "exit 3"]
    )
    cri.start_container(a)
    wait_exited(cri, a)
    b = cri.create_container(pod, "b", memory_limit=GI, cpu_millis=2000)
    cri.start_container(b)
    assert cri.numa_nodes(b) == "0"
    assert sorted(entries(plugin, uid)) == ["a", "b"]
    a_blocks = entries(plugin, uid)["a"]
    again = cri.create_container(pod, "a", memory_limit=GI, cpu_millis=2000, attempt=1)
    assert cri.numa_nodes(again) == "0"
    cri.start_container(again)
    assert entries(plugin, uid)["a"] == a_blocks  # a restart keeps its blocks
    expected = simulated_state(
        [{"admit": {"pod": {"uid": uid}, "containers": [container("a", GI), container("b", GI)]}}]
    )
    assert plugin.state() == expected


def test_finished_init_container_lends_then_goes(
    cri: CRIClient, plugin_factory: Callable[[str], MemoryManagerPlugin]
) -> None:
    plugin = plugin_factory("single-numa-node")
    uid = str(uuid.uuid4())
    pod = cri.run_pod(uid, qos="Guaranteed")
    init = cri.create_container(
        pod, "init", memory_limit=3 * GI, cpu_millis=2000, command=["/bin/true"]
    )
    cri.start_container(init)
    wait_exited(cri, init)
    app = cri.create_container(pod, "app", memory_limit=2 * GI, cpu_millis=2000)
    cri.start_container(app)
    wait_for(lambda: "init" not in entries(plugin, uid), "the init container's blocks stay")
    expected = simulated_state(
        [
            {
                "admit": {
                    "pod": {"uid": uid},
                    "initContainers": [container("init", 3 * GI)],
                    "containers": [container("app", 2 * GI)],
                }
            },
            {"start": {"pod": uid}},
        ],
    )
    assert plugin.state() == expected


def test_in_place_resize_grows_refuses_and_shrinks(
    cri: CRIClient, plugin_factory: Callable[[str], MemoryManagerPlugin]
) -> None:
    plugin = plugin_factory("single-numa-node")
    uid, filler_uid = str(uuid.uuid4()), str(uuid.uuid4())
    pod = cri.run_pod(uid, qos="Guaranteed")
    app = cri.create_container(pod, "app", memory_limit=2 * GI, cpu_millis=2000)
    cri.start_container(app)
    filler = cri.run_pod(filler_uid, qos="Guaranteed")
    cri.create_container(filler, "app", memory_limit=3 * GI, cpu_millis=2000)
    # node 0: 7Gi allocatable, 5Gi reserved
    cri.update_container_resources(app, memory_limit=3 * GI, cpu_millis=2000)
    assert entries(plugin, uid)["app"][0]["size"] == 3 * GI
    assert memory_limit(cri, app) == 3 * GI
    with pytest.raises(CRIError) as refused:
        cri.update_container_resources(app, memory_limit=6 * GI, cpu_millis=2000)
    text = str(refused.value)
    assert "TopologyAffinityError: resize of pod" in text and "container app" in text
    assert "needs 3Gi more on NUMA node 0, which has 1Gi free" in text
    assert memory_limit(cri, app) == 3 * GI  # the container keeps its old limit
    assert entries(plugin, uid)["app"][0]["size"] == 3 * GI
    cri.update_container_resources(app, memory_limit=GI, cpu_millis=2000)
    assert entries(plugin, uid)["app"][0]["size"] == GI
    assert cri.numa_nodes(app) == "0"
    steps: list[dict[str, Any]] = [
        {"admit": {"pod": {"uid": uid}, "containers": [container("app", 2 * GI)]}},
        {"admit": {"pod": {"uid": filler_uid}, "containers": [container("app", 3 * GI)]}},
    ]
    for size in (3 * GI, 6 * GI, GI):
        limits = {"cpu": "2", "memory": size}
        steps.append({"resize": {"pod": uid, "container": "app", "resources": {"limits": limits}}})
    assert plugin.state() == simulated_state(steps)


def test_restart_with_new_limits_is_a_resize_on_its_node(
    cri: CRIClient, plugin_factory: Callable[[str], MemoryManagerPlugin]
) -> None:
    # a resize with resizePolicy RestartContainer: the container is created again with
    # its new limit and keeps its NUMA node
    plugin = plugin_factory("single-numa-node")
    uid = str(uuid.uuid4())
    pod = cri.run_pod(uid, qos="Guaranteed")
    first = cri.create_container(pod, "app", memory_limit=2 * GI, cpu_millis=2000)
    cri.start_container(first)
    cri.stop_container(first)
    again = cri.create_container(pod, "app", memory_limit=4 * GI, cpu_millis=2000, attempt=1)
    assert cri.numa_nodes(again) == "0"
    assert entries(plugin, uid)["app"][0]["size"] == 4 * GI
    with pytest.raises(CRIError) as refused:
        cri.create_container(pod, "app", memory_limit=9 * GI, cpu_millis=2000, attempt=2)
    assert "TopologyAffinityError: resize of pod" in str(refused.value)
    assert entries(plugin, uid)["app"][0]["size"] == 4 * GI


def test_pod_scope_sizes_the_pod_from_the_sandbox(
    containerd: Containerd, cri: CRIClient, tmp_path: Path
) -> None:
    # Through NRI on this machine: containerd drops hugepage limits from the spec when
    # the host has no hugetlb cgroup controller (tolerate_missing_hugetlb_controller),
    # so only memory reaches the plugin here; the CRI proxy test below sees hugepages.
    plugin = MemoryManagerPlugin(containerd, tmp_path / "plugin", "single-numa-node")
    (plugin.work / "config.yaml").write_text(POD_SCOPE_CONFIG)
    plugin.start()
    try:
        uid = str(uuid.uuid4())
        pod = cri.run_pod(
            uid, qos="Guaranteed", resources=PodResources(cpu_millis=4000, memory_limit=5 * GI)
        )
        one = cri.create_container(pod, "one", memory_limit=2 * GI, cpu_millis=2000)
        two = cri.create_container(pod, "two", memory_limit=3 * GI, cpu_millis=2000)
        # the pod (5Gi) was placed as a whole: node 0 holds only 7Gi, one and two fit
        assert cri.numa_nodes(one) == cri.numa_nodes(two) == "0"
        steps = [
            {
                "admit": {
                    "pod": {"uid": uid},
                    "containers": [container("one", 2 * GI), container("two", 3 * GI)],
                }
            }
        ]
        assert plugin.state() == simulated_state(steps, TOPOLOGY, POD_SCOPE_CONFIG)
    finally:
        cri.remove_all_pods()
        plugin.stop()


def test_pod_scope_with_hugepages_in_two_containers_through_the_cri_proxy(
    runtime: Containerd, tmp_path: Path
) -> None:
    proxy = CRIProxy(runtime, tmp_path / "proxy", "single-numa-node")
    (proxy.work / "topology.yaml").write_text(HUGEPAGES_TOPOLOGY)
    (proxy.work / "config.yaml").write_text(POD_SCOPE_CONFIG)
    proxy.start()
    try:
        check_pod_scope_hugepages(proxy)
    finally:
        proxy.cri().remove_all_pods()
        proxy.stop()


def check_pod_scope_hugepages(proxy: CRIProxy) -> None:
    cri = proxy.cri()
    uid = str(uuid.uuid4())
    pod = cri.run_pod(
        uid, qos="Guaranteed", resources=PodResources(cpu_millis=4000, memory_limit=2 * GI)
    )
    hugepages = {"2MB": 128 * MI}
    one = cri.create_container(pod, "one", memory_limit=GI, cpu_millis=2000, hugepages=hugepages)
    two = cri.create_container(pod, "two", memory_limit=GI, cpu_millis=2000, hugepages=hugepages)
    assert proxy.ctrd.cri().numa_nodes(one) == proxy.ctrd.cri().numa_nodes(two) == "0"
    pages = {"hugepages-2Mi": 128 * MI}
    steps = [
        {
            "admit": {
                "pod": {"uid": uid},
                "containers": [container("one", GI, **pages), container("two", GI, **pages)],
            }
        }
    ]
    assert proxy.state() == simulated_state(steps, HUGEPAGES_TOPOLOGY, POD_SCOPE_CONFIG)
    # a pod whose second container's hugepages no longer fit the node chosen at its first
    # (this machine has no hugetlb cgroup for the pod's totals): refused, and the message
    # says how the pod was sized
    big = str(uuid.uuid4())
    pod2 = cri.run_pod(
        big, qos="Guaranteed", resources=PodResources(cpu_millis=4000, memory_limit=2 * GI)
    )
    # node 0 has 384Mi of hugepages left: enough for the first container, not for both
    half = {"2MB": 256 * MI}
    cri.create_container(pod2, "one", memory_limit=GI, cpu_millis=2000, hugepages=half)
    with pytest.raises(CRIError) as refused:
        cri.create_container(pod2, "two", memory_limit=GI, cpu_millis=2000, hugepages=half)
    text = str(refused.value)
    assert "TopologyAffinityError: pod" in text and "container two" in text
    assert "pod scope: the pod was sized when its first container one was created" in text

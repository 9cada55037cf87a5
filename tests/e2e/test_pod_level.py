"""Pods with pod-level resources (KEP-2837) on a real containerd (2.x and 1.7).

kubelet sends such a pod's sandbox the pod-level limits and gives a container
without limits of its own the pod's (``getMemoryLimit``/``getCPULimit``); the
CRI requests here are built that way. By default the plugin leaves such pods
unpinned, as kubelet does while ``PodLevelResourceManagers`` is off; with
``podLevelResources: managers`` and pod scope it reserves the pod's budget as
KEP-5526 does, and its state file must equal what `simulate` computes for the
same pod spec.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

from .harness import Containerd, CRIClient, PodResources
from .test_criproxy import CRIProxy, runtime
from .test_lifecycle import simulated_state, wait_for
from .test_plugin import TOPOLOGY, MemoryManagerPlugin, plugin_factory

__all__ = ["plugin_factory", "runtime"]  # the fixtures, re-used

GI = 1 << 30

MANAGERS_POD_SCOPE = (
    "policy: static\ntopologyManagerPolicy: single-numa-node\ntopologyManagerScope: pod\n"
    "podLevelResources: managers\nreservedMemory: ['0:memory=1Gi']\n"
)
# pod.spec.resources: 4 cpus and 4Gi, requests = limits (a Guaranteed pod)
POD = PodResources(cpu_millis=4000, memory_limit=4 * GI)


def events(plugin: MemoryManagerPlugin | CRIProxy, name: str) -> list[dict[str, Any]]:
    """The plugin's (or the proxy's) JSON log events called ``name``."""
    assert plugin.proc is not None
    out = []
    for line in plugin.proc.log_text().splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict) and event.get("event") == name:
            out.append(event)
    return out


def decision(plugin: MemoryManagerPlugin, container: str) -> dict[str, Any]:
    found = [e for e in events(plugin, "admission") if e.get("container") == container]
    assert found, f"no admission logged for {container}"
    return found[-1]


def test_pod_level_pod_is_left_unpinned_by_default(cri: CRIClient, plugin_factory: Any) -> None:
    plugin = plugin_factory("single-numa-node")
    # containers without limits of their own: both show the pod's 4Gi and 4 cpus. The first
    # cannot be told from a one-container pod and is pinned; the second tells (8Gi under a
    # 4Gi pod limit) and the first is unpinned with its creation
    uid = str(uuid.uuid4())
    pod = cri.run_pod(uid, qos="Guaranteed", resources=POD)
    one = cri.create_container(pod, "one", memory_limit=4 * GI, cpu_millis=4000)
    assert cri.numa_nodes(one) == "0"
    two = cri.create_container(pod, "two", memory_limit=4 * GI, cpu_millis=4000)
    cri.start_container(one)
    cri.start_container(two)
    d = decision(plugin, "two")
    assert (d["result"], d["reason"]) == ("untouched", "pod-level resources")
    assert "add up to" in d["pod_level"]
    released = [e for e in events(plugin, "released") if e.get("pod_uid") == uid]
    assert released and released[-1]["unpinned"] == ["one"]
    wait_for(lambda: "entries" not in plugin.state(), "the first container's blocks released")

    # containers with limits of their own: one whose cpu request (500m) is below its cpu
    # limit is never individually Guaranteed, so a Guaranteed pod holding it sets
    # pod-level resources; nothing of the pod is pinned
    uid2 = str(uuid.uuid4())
    pod2 = cri.run_pod(uid2, qos="Guaranteed", resources=POD)
    limited = cri.create_container(
        pod2, "limited", memory_limit=2 * GI, cpu_millis=500, cpu_limit_millis=2000
    )
    cri.start_container(limited)
    d = decision(plugin, "limited")
    assert (d["result"], d["reason"]) == ("untouched", "pod-level resources")
    assert "cpu shares" in d["pod_level"]
    assert cri.mems(limited) == ""
    state = plugin.state()
    assert "entries" not in state and "podEntries" not in state
    assert all(n["memoryMap"]["memory"]["reserved"] == 0 for n in state["machineState"].values())


def test_managers_in_pod_scope_reserve_the_pods_budget(
    containerd: Containerd, cri: CRIClient, tmp_path: Path
) -> None:
    plugin = MemoryManagerPlugin(containerd, tmp_path / "plugin", "single-numa-node")
    (plugin.work / "config.yaml").write_text(MANAGERS_POD_SCOPE)
    plugin.start()
    try:
        # KEP-5526 pod scope, Example 2: shared, exclusive (2 cpus, 2Gi of its own), shared.
        # The first is pinned alone (nothing tells yet); the second tells, the pod's 4Gi is
        # reserved on the first's node, the first joins the pod's shared pool
        uid = str(uuid.uuid4())
        pod = cri.run_pod(uid, qos="Guaranteed", resources=POD)
        one = cri.create_container(pod, "container-1", memory_limit=4 * GI, cpu_millis=4000)
        two = cri.create_container(pod, "container-2", memory_limit=2 * GI, cpu_millis=2000)
        three = cri.create_container(pod, "container-3", memory_limit=4 * GI, cpu_millis=4000)
        for cid in (one, two, three):
            cri.start_container(cid)
            assert cri.numa_nodes(cid) == "0"
        assert decision(plugin, "container-3")["pod_shared_pool"] is True
        steps = [
            {
                "admit": {
                    "pod": {"uid": uid},
                    # requests too: the API server would default them to the containers'
                    # 2 cpus and 2Gi otherwise, and the pod would be Burstable
                    "resources": {
                        "requests": {"cpu": "4", "memory": 4 * GI},
                        "limits": {"cpu": "4", "memory": 4 * GI},
                    },
                    "containers": [
                        {"name": "container-1"},
                        {
                            "name": "container-2",
                            "resources": {"limits": {"cpu": "2", "memory": 2 * GI}},
                        },
                        {"name": "container-3"},
                    ],
                }
            }
        ]
        expected = simulated_state(steps, TOPOLOGY, MANAGERS_POD_SCOPE)
        assert expected["podEntries"] == {
            uid: {"memoryBlocks": [{"numaAffinity": [0], "type": "memory", "size": 4 * GI}]}
        }
        assert plugin.state() == expected
        # the pod goes: its whole reservation with it
        cri.stop_pod(pod.id)
        wait_for(lambda: "podEntries" not in plugin.state(), "the reservation released")
    finally:
        cri.remove_all_pods()
        plugin.stop()


def test_pod_level_pod_is_unpinned_through_the_cri_proxy(
    runtime: Containerd, tmp_path: Path
) -> None:
    # the same pod through the CRI proxy: the first container is unpinned with an
    # UpdateContainerResources the proxy sends the runtime
    proxy = CRIProxy(runtime, tmp_path / "proxy", "single-numa-node")
    proxy.start()
    try:
        cri = proxy.cri()
        uid = str(uuid.uuid4())
        pod = cri.run_pod(uid, qos="Guaranteed", resources=POD)
        one = cri.create_container(pod, "one", memory_limit=4 * GI, cpu_millis=4000)
        assert proxy.ctrd.cri().numa_nodes(one) == "0"
        two = cri.create_container(pod, "two", memory_limit=4 * GI, cpu_millis=4000)
        assert proxy.ctrd.cri().mems(two) == ""
        # every NUMA node of the fake topology, written as the host's (node 0 here)
        assert proxy.ctrd.cri().mems(one) == "0"
        released = [e for e in events(proxy, "released") if e.get("pod_uid") == uid]
        assert released and released[-1]["unpinned"] == ["one"]
        assert not events(proxy, "pinning a container admitted late failed")
        assert "entries" not in proxy.state()
    finally:
        proxy.cri().remove_all_pods()
        proxy.stop()

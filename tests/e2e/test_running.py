"""Containers that run on every NUMA node of a fake topology (real containerd 2.x and 1.7).

The plugin runs on test_plugin.py's fake topology (four nodes); this machine has
fewer. The plugin decides, records and reports on the fake nodes and writes the
host nodes they map to into `cpuset.mems` (docs/lifecycle.md; README, "Trying it
on a fake topology"), so every container it pins is started here, as kubelet
would start it: init containers that run and exit 0, a sidecar, an app that
crashes and is restarted, a pod that finishes, a pod spanning a group of nodes.
Each check reads three things: the fake nodes the plugin decided (the container's
`nri-memory-manager.io/numa-nodes` annotation), what the kernel enforces on the
running process (`Mems_allowed_list`) and the container cgroup's `cpuset.mems`;
and the plugin's state must equal `simulate`'s for the same pods.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from nri_plugin.engine.bitmask import parse_cpulist

from .harness import CRIClient, CRIError, Pod, PodResources
from .test_lifecycle import container, entries, simulated_state, wait_for
from .test_plugin import MemoryManagerPlugin, config_text, plugin_factory, wait_exited

__all__ = ["plugin_factory"]  # the fixture, re-used

GI = 1 << 30


def host_nodes() -> set[int]:
    return parse_cpulist(Path("/sys/devices/system/node/online").read_text().strip())


def wait_running(cri: CRIClient, cid: str) -> None:
    wait_for(lambda: cri.container_state(cid) == "CONTAINER_RUNNING", f"{cid} is not running")


def check_runs_on(cri: CRIClient, cid: str, fake_nodes: str) -> None:
    """The container runs, was given ``fake_nodes``, and the kernel confines it to host
    nodes that exist (on a one-node host: node 0)."""
    wait_running(cri, cid)
    assert cri.numa_nodes(cid) == fake_nodes
    enforced = cri.process_mems(cid)
    assert enforced == cri.host_cpuset_mems(cid)
    assert parse_cpulist(enforced) <= host_nodes(), (enforced, host_nodes())
    if len(host_nodes()) == 1:
        assert enforced == "0"


def guaranteed(cri: CRIClient, memory: int, **extra: Any) -> tuple[Pod, str]:
    """A Guaranteed pod of one 2-CPU container of ``memory``, created and started."""
    pod = cri.run_pod(str(uuid.uuid4()), qos="Guaranteed")
    cid = cri.create_container(pod, "app", memory_limit=memory, cpu_millis=2000, **extra)
    cri.start_container(cid)
    return pod, cid


def admit(uid: str, memory: int) -> dict[str, Any]:
    return {"admit": {"pod": {"uid": uid}, "containers": [container("app", memory)]}}


def test_a_container_runs_on_each_fake_node(
    cri: CRIClient, plugin_factory: Callable[[str], MemoryManagerPlugin]
) -> None:
    plugin = plugin_factory("single-numa-node")
    # 5Gi fits one node at a time (7Gi allocatable on node 0, 8Gi on the others):
    # kubelet's narrowest, lowest mask puts the n-th pod on node n
    pods = [guaranteed(cri, 5 * GI) for _ in range(4)]
    for node, (_, cid) in enumerate(pods):
        check_runs_on(cri, cid, str(node))
    with pytest.raises(CRIError) as refused:
        guaranteed(cri, 5 * GI)
    assert "TopologyAffinityError" in str(refused.value)
    steps = [admit(pod.uid, 5 * GI) for pod, _ in pods]
    steps += [{"start": {"pod": pod.uid}} for pod, _ in pods]
    assert plugin.state() == simulated_state(steps)


def test_init_container_sidecar_and_a_crashing_app_run_on_a_fake_node(
    cri: CRIClient, plugin_factory: Callable[[str], MemoryManagerPlugin]
) -> None:
    plugin = plugin_factory("single-numa-node")
    filler, filler_cid = guaranteed(cri, 7 * GI)  # node 0 is full: the pod goes to node 1
    check_runs_on(cri, filler_cid, "0")
    uid = str(uuid.uuid4())
    # kubelet's pod limit: max(app + sidecar, the init peak) = max(2Gi + 1Gi, 3Gi)
    pod = cri.run_pod(
        uid, qos="Guaranteed", resources=PodResources(cpu_millis=2000, memory_limit=3 * GI)
    )
    setup = cri.create_container(
        pod, "setup", memory_limit=3 * GI, cpu_millis=2000, command=["/bin/true"]
    )
    assert cri.numa_nodes(setup) == "1"
    cri.start_container(setup)
    wait_exited(cri, setup)
    assert cri.container_exit_code(setup) == 0  # it really ran
    proxy = cri.create_container(pod, "proxy", memory_limit=GI, cpu_millis=2000)
    cri.start_container(proxy)
    check_runs_on(cri, proxy, "1")
    app = cri.create_container(
        pod, "app", memory_limit=2 * GI, cpu_millis=2000, command=["/bin/sh", "-c", "exit 1"]
    )
    cri.start_container(app)
    wait_exited(cri, app)
    assert cri.container_exit_code(app) == 1
    wait_for(lambda: "setup" not in entries(plugin, uid), "the finished init container holds")
    app_blocks = entries(plugin, uid)["app"]
    # kubelet restarts the crashed app under the same name, the next attempt
    again = cri.create_container(pod, "app", memory_limit=2 * GI, cpu_millis=2000, attempt=1)
    cri.start_container(again)
    check_runs_on(cri, again, "1")
    check_runs_on(cri, proxy, "1")
    assert entries(plugin, uid)["app"] == app_blocks  # a restart keeps its blocks
    steps = [
        admit(filler.uid, 7 * GI),
        {"start": {"pod": filler.uid}},
        {
            "admit": {
                "pod": {"uid": uid},
                "initContainers": [
                    container("setup", 3 * GI),
                    {**container("proxy", GI), "restartPolicy": "Always"},
                ],
                "containers": [container("app", 2 * GI)],
            }
        },
        {"start": {"pod": uid}},
    ]
    assert plugin.state() == simulated_state(steps)


def test_a_finished_pod_gives_its_fake_node_back(
    cri: CRIClient, plugin_factory: Callable[[str], MemoryManagerPlugin]
) -> None:
    plugin = plugin_factory("single-numa-node")
    runner, runner_cid = guaranteed(cri, 4 * GI)  # node 0 keeps 3Gi
    check_runs_on(cri, runner_cid, "0")
    job, job_cid = guaranteed(cri, 6 * GI, command=["/bin/true"])  # node 1
    assert cri.numa_nodes(job_cid) == "1"
    wait_exited(cri, job_cid)
    assert cri.container_exit_code(job_cid) == 0
    # restartPolicy Never, all containers done: the pod succeeded and kubelet stops it
    cri.stop_pod(job.id)
    wait_for(lambda: not entries(plugin, job.uid), "the finished pod still holds blocks")
    # node 1 is whole again: 7Gi no longer fits node 0 and lands there
    nxt, nxt_cid = guaranteed(cri, 7 * GI)
    check_runs_on(cri, nxt_cid, "1")
    cri.remove_pod(job.id)
    steps = [
        admit(runner.uid, 4 * GI),
        {"start": {"pod": runner.uid}},
        admit(job.uid, 6 * GI),
        {"start": {"pod": job.uid}},
        {"remove": {"pod": job.uid}},
        admit(nxt.uid, 7 * GI),
        {"start": {"pod": nxt.uid}},
    ]
    assert plugin.state() == simulated_state(steps)


def test_a_container_spanning_a_group_of_fake_nodes_runs(
    cri: CRIClient, plugin_factory: Callable[[str], MemoryManagerPlugin]
) -> None:
    plugin = plugin_factory("restricted")
    # 12Gi fits no single node: the narrowest group is nodes 0 and 1 (15Gi)
    group, group_cid = guaranteed(cri, 12 * GI)
    check_runs_on(cri, group_cid, "0,1")  # as kubelet writes cpuset.mems
    # a single-node container cannot use the group's nodes: it goes to node 2
    single, single_cid = guaranteed(cri, 2 * GI)
    check_runs_on(cri, single_cid, "2")
    steps = [
        admit(group.uid, 12 * GI),
        admit(single.uid, 2 * GI),
        {"start": {"pod": group.uid}},
        {"start": {"pod": single.uid}},
    ]
    assert plugin.state() == simulated_state(steps, config=config_text("restricted"))

"""Pods with pod-level resources on a live node, through the NRI handler (no runtime).

What the runtime shows of such a pod is what kubelet derives from its spec
(nri_plugin/tracker/podlevel.py): the sandbox's memory limit is the pod-level
limit, a container without a limit of its own shows that whole limit, its cpu
shares come from its own cpu request when it has one. kubelet's default leaves
the pod unpinned; ``podLevelResources: managers`` follows KEP-5526.
"""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nri_plugin.engine.manager import MemoryManager
from nri_plugin.engine.restore import validate_restored
from nri_plugin.frontends.nri import AdmissionRefused, MemoryPlugin
from nri_plugin.inputs.config import parse_config
from nri_plugin.inputs.topology import topology_from_mapping
from nri_plugin.nri.gen import nri_pb2 as api
from nri_plugin.tracker.podlevel import cpu_request_differs, milli_cpu_to_shares
from tests.nri_builders import GI, container, pod
from tests.test_kubelet_resources import sockets

__all__ = ["sockets"]  # the fixture, re-used

TOPOLOGY = {"nodes": [{"id": i, "cpus": f"{4 * i}-{4 * i + 3}", "memory": "8Gi"} for i in range(4)]}
ALL_NODES = "0,1,2,3"  # every NUMA node, written as kubelet writes masks


class Log:
    """A structlog stand-in that keeps every event."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def _event(self, event: str, **fields: Any) -> None:
        self.events.append({"event": event, **fields})

    info = warning = error = debug = _event

    def admissions(self, container: str) -> list[dict[str, Any]]:
        return [
            e for e in self.events if e["event"] == "admission" and e.get("container") == container
        ]


def make_plugin(
    mode: str = "ignore", scope: str = "container", policy: str = "single-numa-node"
) -> tuple[MemoryPlugin, Log]:
    config = parse_config(
        {
            "topologyManagerPolicy": policy,
            "topologyManagerScope": scope,
            "reservedMemory": ["0:memory=1Gi"],
            "podLevelResources": mode,
        }
    )
    log = Log()
    return MemoryPlugin(MemoryManager(topology_from_mapping(TOPOLOGY), config), logger=log), log


def answer(
    result: api.ContainerAdjustment | api.CreateContainerResponse | None,
) -> tuple[str, list[tuple[str, str]]]:
    """(cpuset.mems set on the container, [(other container, cpuset.mems)])."""
    if result is None:
        return "", []
    if isinstance(result, api.ContainerAdjustment):
        return result.linux.resources.cpu.mems, []
    updates = [(u.container_id, u.linux.resources.cpu.mems) for u in result.update]
    return result.adjust.linux.resources.cpu.mems, updates


def reserved(plugin: MemoryPlugin, node: int) -> int:
    return plugin.manager.state.machine[node].memory_map["memory"].reserved


def total_reserved(plugin: MemoryPlugin) -> int:
    return sum(reserved(plugin, n) for n in range(4))


# A Guaranteed pod with pod.spec.resources of 4 cpus and 4Gi: kubelet sends the sandbox the
# pod-level limits, and gives a container without limits of its own the pod's (getMemoryLimit,
# getCPULimit), its cpu shares from the limit it is given.
def pod_level_pod(uid: str = "p") -> api.PodSandbox:
    return pod(uid, memory_limit=4 * GI, cpu_millis=4000)


def shared(p: api.PodSandbox, name: str, cid: str) -> api.Container:
    """A container without resources of its own in the 4Gi/4cpu pod-level pod."""
    return container(p, name, cid, 4 * GI, cpu_millis=4000)


def own(
    p: api.PodSandbox, name: str, cid: str, memory: int, cpus: int = 1, **more: Any
) -> api.Container:
    """A container with its own Guaranteed limits."""
    return container(p, name, cid, memory, cpu_millis=1000 * cpus, **more)


# -- the signals ----------------------------------------------------------------------


def test_cpu_shares_tell_a_request_below_the_limit() -> None:
    # kubelet: shares from the request, quota from the limit (period 100000)
    assert not cpu_request_differs(milli_cpu_to_shares(2000), 200000, 100000)
    assert cpu_request_differs(milli_cpu_to_shares(500), 200000, 100000)
    # the 1ms minimum quota: 1m to 10m cpu all give quota 1000, shares 2 to 10
    assert not cpu_request_differs(2, 1000, 100000)
    assert not cpu_request_differs(10, 1000, 100000)
    assert cpu_request_differs(11, 1000, 100000)
    # a quota kubelet cannot write says nothing
    assert not cpu_request_differs(2, 999, 100000)


# -- kubelet's default: left unpinned --------------------------------------------------


def test_second_container_reveals_the_pod_and_the_first_is_unpinned() -> None:
    # two containers without limits show 4Gi each under a 4Gi pod limit: only pod-level
    # resources allow that. The first could not be told and was pinned; it is unpinned
    # with the second's creation, which is left alone.
    plugin, log = make_plugin()
    p = pod_level_pod()
    assert answer(plugin.create_container(p, shared(p, "c1", "id1")))[0] != ""
    mems, others = answer(plugin.create_container(p, shared(p, "c2", "id2")))
    assert mems == ""
    assert others == [("id1", ALL_NODES)]
    assert plugin.manager.state.entries == {}
    assert total_reserved(plugin) == 0
    decision = log.admissions("c2")[-1]
    assert (decision["result"], decision["reason"]) == ("untouched", "pod-level resources")
    assert "add up to" in decision["pod_level"]


def test_a_container_with_a_cpu_request_below_its_limit_tells_at_once() -> None:
    # its own cpu request (500m) without its own limit: shares of 500m, quota of the pod's 4
    plugin, log = make_plugin()
    p = pod_level_pod()
    c = container(p, "c1", "id1", 4 * GI, cpu_millis=4000, cpu_request_millis=500)
    assert answer(plugin.create_container(p, c)) == ("", [])
    assert "cpu shares" in log.admissions("c1")[-1]["pod_level"]
    assert total_reserved(plugin) == 0


def test_pod_resources_api_reports_the_pod_level_allocation() -> None:
    plugin, log = make_plugin()
    p = pod_level_pod()
    plugin.run_pod_sandbox(p)
    plugin.tracker.pod_level_reported("p")
    assert answer(plugin.create_container(p, own(p, "c1", "id1", 2 * GI))) == ("", [])
    assert "pod-resources API" in log.admissions("c1")[-1]["pod_level"]


def test_listed_containers_below_the_pod_limit_tell_once_all_exist() -> None:
    # every container sets limits (2Gi + 1Gi) under a 4Gi pod-level limit: nothing tells
    # until kubelet's pod-resources API listed the pod and its last container exists
    plugin, log = make_plugin()
    p = pod_level_pod()
    plugin.run_pod_sandbox(p)
    plugin.tracker.pod_listed("p", ["c1", "c2"])
    assert answer(plugin.create_container(p, own(p, "c1", "id1", 2 * GI)))[0] == "0"
    mems, others = answer(plugin.create_container(p, own(p, "c2", "id2", GI)))
    assert (mems, others) == ("", [("id1", ALL_NODES)])
    assert "aggregate" in log.admissions("c2")[-1]["pod_level"]
    assert total_reserved(plugin) == 0


def test_without_the_listing_or_the_pod_seen_from_its_start_nothing_is_guessed() -> None:
    plugin, _ = make_plugin()
    p = pod_level_pod()
    plugin.tracker.pod_listed("p", ["c1", "c2"])  # no RunPodSandbox seen: not from the start
    plugin.create_container(p, own(p, "c1", "id1", 2 * GI))
    assert answer(plugin.create_container(p, own(p, "c2", "id2", GI)))[0] != ""
    assert total_reserved(plugin) == 3 * GI


def test_pods_without_pod_level_resources_are_pinned_as_before() -> None:
    # the sandbox's limit is kubelet's aggregate: an init container's 4Gi peak above the
    # apps' 3Gi, then two app containers
    plugin, _ = make_plugin()
    p = pod("p", memory_limit=4 * GI, cpu_millis=3000)
    plugin.run_pod_sandbox(p)
    plugin.tracker.pod_listed("p", ["a", "b"])
    init = own(p, "init", "i1", 4 * GI)
    assert answer(plugin.create_container(p, init))[0] != ""
    plugin.stop_container(p, init)
    assert answer(plugin.create_container(p, own(p, "a", "a1", 2 * GI)))[0] != ""
    assert answer(plugin.create_container(p, own(p, "b", "b1", GI)))[0] != ""
    assert plugin.tracker.pods["p"].pod_level == ""


def test_restart_unpins_a_pod_level_pod_pinned_before_the_state_was_lost() -> None:
    # Synchronize lists a pod pinned by an earlier run whose checkpoint is gone; one of its
    # containers has a cpu request below its limit: it is unpinned, not adopted
    plugin, _ = make_plugin()
    p = pod_level_pod()
    listed = [
        container(p, "c1", "id1", 4 * GI, cpu_millis=4000, mems="1", state=api.CONTAINER_RUNNING),
        container(
            p, "c2", "id2", 4 * GI, cpu_millis=4000, cpu_request_millis=500, mems="1",
            state=api.CONTAINER_RUNNING,
        ),
    ]  # fmt: skip
    updates = plugin.synchronize([p], listed)
    assert {(u.container_id, u.linux.resources.cpu.mems) for u in updates} == {
        ("id1", ALL_NODES),
        ("id2", ALL_NODES),
    }
    assert plugin.manager.state.entries == {}


def test_limits_that_only_add_up_after_a_resize_tell_nothing() -> None:
    # a 512Mi pod of two 256Mi containers; app0 grows to 512Mi in place, crashes and is
    # created again: its limit now and its sibling's exceed the sandbox's, a resize did it
    plugin, _ = make_plugin()
    p = pod("p", memory_limit=GI // 2, cpu_millis=2000)
    plugin.run_pod_sandbox(p)
    app0 = own(p, "app0", "a1", GI // 4)
    plugin.create_container(p, app0)
    plugin.create_container(p, own(p, "app1", "b1", GI // 4))
    grown = api.LinuxResources()
    grown.memory.limit.value = GI // 2
    plugin.update_container(p, app0, grown)
    plugin.stop_container(p, app0)
    again = own(p, "app0", "a2", GI // 2)
    again.annotations["io.kubernetes.container.restartCount"] = "1"
    assert answer(plugin.create_container(p, again))[0] != ""
    assert plugin.tracker.pods["p"].pod_level == ""
    # ...nor after a restart of the plugin, which did not see the resize
    fresh, _ = make_plugin()
    fresh.manager.state = plugin.manager.state.clone()
    fresh.synchronize([p], [again, own(p, "app1", "b1", GI // 4, state=api.CONTAINER_RUNNING)])
    assert fresh.tracker.pods["p"].pod_level == ""


# -- podLevelResources: managers, container scope -----------------------------------------


def test_container_scope_pins_only_the_individually_guaranteed() -> None:
    # KEP-5526 container scope, Example 1: container-1 (2 cpus, 2Gi of its own) pinned,
    # the others in the node's shared pool
    plugin, log = make_plugin("managers")
    p = pod_level_pod()
    assert answer(plugin.create_container(p, own(p, "c1", "id1", 2 * GI, cpus=2)))[0] == "0"
    assert answer(plugin.create_container(p, shared(p, "c2", "id2"))) == ("", [])
    assert answer(plugin.create_container(p, shared(p, "c3", "id3"))) == ("", [])
    assert list(plugin.manager.state.entries["p"]) == ["c1"]
    assert total_reserved(plugin) == 2 * GI
    reason = log.admissions("c3")[-1]["reason"]
    assert reason == "pod-level resources: not individually Guaranteed"


def test_container_scope_unpins_a_shared_container_pinned_before_the_pod_was_found() -> None:
    plugin, _ = make_plugin("managers")
    p = pod_level_pod()
    plugin.create_container(p, shared(p, "c1", "id1"))  # pinned: nothing told yet
    mems, others = answer(plugin.create_container(p, own(p, "c2", "id2", 2 * GI, cpus=2)))
    assert mems != "" and others == [("id1", ALL_NODES)]
    assert list(plugin.manager.state.entries["p"]) == ["c2"]


# -- podLevelResources: managers, pod scope ---------------------------------------------


def test_pod_scope_reserves_the_budget_and_carves_the_exclusive() -> None:
    # KEP-5526 pod scope, Example 2, the pod known from its start (pod-resources API)
    plugin, log = make_plugin("managers", "pod")
    p = pod_level_pod()
    plugin.run_pod_sandbox(p)
    plugin.tracker.pod_level_reported("p")
    assert answer(plugin.create_container(p, own(p, "c1", "id1", 2 * GI, cpus=2))) == ("0", [])
    assert answer(plugin.create_container(p, shared(p, "c2", "id2"))) == ("0", [])
    assert answer(plugin.create_container(p, shared(p, "c3", "id3"))) == ("0", [])
    state = plugin.manager.state
    assert [b.size for b in state.pod_entries["p"]] == [4 * GI]
    assert list(state.entries["p"]) == ["c1"]
    assert total_reserved(plugin) == 4 * GI
    assert log.admissions("c2")[-1]["pod_shared_pool"] is True
    # a resize of a shared container keeps its pool's nodes
    update = plugin.update_container(p, shared(p, "c2", "id2"), api.LinuxResources())
    assert [(u.container_id, u.linux.resources.cpu.mems) for u in update] == [("id2", "0")]
    plugin.stop_pod_sandbox(p)
    assert total_reserved(plugin) == 0
    assert state.pod_entries == {}


def test_pod_scope_moves_pinned_containers_into_the_reservation() -> None:
    # found with the second container: the first, pinned alone on the pod's affinity,
    # joins the pod's reservation (it shows the pod's whole limit: shared)
    plugin, _ = make_plugin("managers", "pod")
    p = pod_level_pod()
    assert answer(plugin.create_container(p, shared(p, "c1", "id1")))[0] == "0"
    mems, others = answer(plugin.create_container(p, shared(p, "c2", "id2")))
    assert (mems, others) == ("0", [("id1", "0")])
    state = plugin.manager.state
    assert [b.size for b in state.pod_entries["p"]] == [4 * GI]
    assert state.entries == {}
    assert total_reserved(plugin) == 4 * GI


def test_pod_scope_refuses_to_empty_the_shared_pool() -> None:
    # KEP-5526 pod scope, Example 3, one container at a time: 2Gi + 2Gi exclusive would
    # use up the 4Gi budget while c0 runs in the pod's shared pool
    plugin, _ = make_plugin("managers", "pod")
    p = pod_level_pod()
    plugin.run_pod_sandbox(p)
    plugin.tracker.pod_level_reported("p")
    plugin.create_container(p, shared(p, "c0", "id0"))
    plugin.create_container(p, own(p, "c1", "id1", 2 * GI))
    with pytest.raises(AdmissionRefused) as err:
        plugin.create_container(p, own(p, "c2", "id2", 2 * GI))
    assert "EmptyPodSharedPoolError" in str(err.value)
    assert total_reserved(plugin) == 4 * GI


def test_pod_scope_reservation_survives_a_plugin_restart() -> None:
    plugin, _ = make_plugin("managers", "pod")
    p = pod_level_pod()
    plugin.run_pod_sandbox(p)
    plugin.tracker.pod_level_reported("p")
    plugin.create_container(p, own(p, "c1", "id1", 2 * GI, cpus=2))
    plugin.create_container(p, shared(p, "c2", "id2"))
    fresh, _ = make_plugin("managers", "pod")
    fresh.manager.state = plugin.manager.state.clone()
    listed = [
        container(p, "c1", "id1", 2 * GI, cpu_millis=2000, mems="0", state=api.CONTAINER_RUNNING),
        container(p, "c2", "id2", 4 * GI, cpu_millis=4000, mems="0", state=api.CONTAINER_RUNNING),
    ]
    assert fresh.synchronize([p], listed) == []
    assert fresh.manager.state == plugin.manager.state  # nothing admitted twice
    assert answer(fresh.create_container(p, shared(p, "c3", "id3"))) == ("0", [])


# -- through the CRI proxy ----------------------------------------------------------------


def test_cri_proxy_unpins_the_first_container_with_update_container_resources() -> None:
    from tests.test_criproxy import container_config, proxied, run

    async def scenario() -> None:
        async with proxied() as env:
            sandbox = await env.run_pod("p", memory=4 * GI)  # a 4Gi, 2-cpu pod-level limit
            first = await env.create(sandbox, container_config("c1", memory=4 * GI))
            assert env.runtime.containers[first].mems == "0"
            second = await env.create(sandbox, container_config("c2", memory=4 * GI))
            assert env.runtime.containers[second].mems == ""
            assert env.runtime.containers[first].mems == ALL_NODES
            assert env.entries() == {}
            assert env.reserved(0) == 0

    run(scenario)


def test_pod_scope_reservation_of_a_pod_gone_while_away_is_released() -> None:
    plugin, _ = make_plugin("managers", "pod")
    p = pod_level_pod()
    plugin.run_pod_sandbox(p)
    plugin.tracker.pod_level_reported("p")
    plugin.create_container(p, shared(p, "c1", "id1"))
    assert total_reserved(plugin) == 4 * GI
    fresh, _ = make_plugin("managers", "pod")
    fresh.manager.state = plugin.manager.state.clone()
    fresh.synchronize([], [])  # the pod went while the plugin was down
    assert fresh.manager.state.pod_entries == {}
    assert total_reserved(fresh) == 0


# -- properties ---------------------------------------------------------------------------


@st.composite
def node_pods(draw: st.DrawFn) -> list[tuple[bool, int, list[tuple[int | None, int]]]]:
    """Pods as (pod-level?, sandbox memory limit in Gi, [(own memory Gi or None, cpus)])."""
    pods = []
    for _ in range(draw(st.integers(1, 4))):
        level = draw(st.booleans())
        sizes = draw(st.lists(st.integers(1, 3), min_size=1, max_size=3))
        if level:
            budget = draw(st.integers(max(sizes), 6))
            own = [draw(st.sampled_from([s, None])) for s in sizes]
            pods.append((True, budget, [(o, 1) for o in own]))
        else:  # kubelet's aggregate of the containers' limits
            pods.append((False, sum(sizes), [(s, 1) for s in sizes]))
    return pods


@settings(max_examples=80, suppress_health_check=[HealthCheck.too_slow])
@given(
    pods=node_pods(),
    mode=st.sampled_from(["ignore", "managers"]),
    scope=st.sampled_from(["container", "pod"]),
)
def test_no_pod_without_pod_level_resources_is_taken_for_one_and_nothing_leaks(
    pods: list[tuple[bool, int, list[tuple[int | None, int]]]], mode: str, scope: str
) -> None:
    plugin, _ = make_plugin(mode, scope, policy="best-effort")
    sandboxes = []
    for i, (level, budget, containers) in enumerate(pods):
        p = pod(
            f"p{i}", memory_limit=budget * GI, cpu_millis=4000 if level else 1000 * len(containers)
        )
        sandboxes.append(p)
        plugin.run_pod_sandbox(p)
        for j, (own_gi, cpus) in enumerate(containers):
            memory = (own_gi or budget) * GI
            millis = 1000 * cpus if own_gi is not None else (4000 if level else 1000)
            c = container(p, f"c{j}", f"p{i}-c{j}", memory, cpu_millis=millis)
            with contextlib.suppress(AdmissionRefused):
                plugin.create_container(p, c)
            plugin.tracker.take_updates()
        record = plugin.tracker.pods[f"p{i}"]
        if not level:
            assert record.pod_level == ""  # every signal is certain
        elif mode == "ignore" and record.pod_level:
            assert not plugin.manager.state.entries.get(f"p{i}")
        validate_restored(plugin.manager.state, plugin.manager.policy.default_state(), "Static")
    for p in sandboxes:
        plugin.stop_pod_sandbox(p)
        plugin.remove_pod_sandbox(p)
    assert plugin.manager.state.entries == {} and plugin.manager.state.pod_entries == {}
    assert total_reserved(plugin) == 0


# -- kubelet's pod-resources API --------------------------------------------------------


def test_pod_level_allocations_in_kubelets_answer_leave_the_pod_unpinned(
    sockets: Any,
) -> None:
    from tests.test_kubelet_resources import kpod, kubelet_node, node
    from tests.test_kubelet_resources import run as run_async

    async def scenario() -> None:
        # kubelet (PodLevelResourceManagers on, its CPU manager static, pod scope) reports
        # the pod's CPUs at pod level: only a pod that sets pod-level resources has them
        managed = {**kpod("p", [{"name": "app"}]), "cpus": [0, 1, 2, 3]}
        async with node(
            sockets / "k.sock", kubelet_node(managed, kpod("q", [{"name": "app"}]))
        ) as n:
            p = pod("p", memory_limit=2 * GI)
            n.plugin.run_pod_sandbox(p)
            await n.client.drain()
            assert await n.create(p, container(p, "app", "c1", 2 * GI)) == ""
            decision = [kw for kw in n.log.named("admission") if kw["pod_uid"] == "p"][-1]
            assert decision["reason"] == "pod-level resources"
            assert "pod-resources API" in decision["pod_level"]
            # a pod without pod-level allocations in the answer is pinned as before
            q = pod("q", memory_limit=2 * GI)
            n.plugin.run_pod_sandbox(q)
            await n.client.drain()
            assert await n.create(q, container(q, "app", "c2", 2 * GI)) == "0"

    run_async(scenario)

"""MemoryPlugin's bookkeeping (docs/lifecycle.md) with NRI messages, no runtime needed."""

from __future__ import annotations

import pytest

from nri_plugin.engine.manager import MemoryManager
from nri_plugin.frontends.nri import AdmissionRefused, MemoryPlugin
from nri_plugin.inputs.config import parse_config
from nri_plugin.inputs.topology import topology_from_mapping
from nri_plugin.nri.gen import nri_pb2 as api
from tests.nri_builders import GI, container, pod

TOPOLOGY = {
    "nodes": [
        {"id": i, "cpus": f"{4 * i}-{4 * i + 3}", "memory": "8Gi", "hugepages": {"1Gi": "2Gi"}}
        for i in range(4)
    ]
}


def make_plugin(policy: str = "single-numa-node", scope: str = "container") -> MemoryPlugin:
    topology = topology_from_mapping(TOPOLOGY)
    config = parse_config(
        {
            "policy": "static",
            "topologyManagerPolicy": policy,
            "topologyManagerScope": scope,
            "reservedMemory": ["0:memory=1Gi"],
        }
    )
    return MemoryPlugin(MemoryManager(topology, config))


def init_then_app(plugin: MemoryPlugin, g: api.PodSandbox) -> tuple[api.Container, api.Container]:
    """A finished init container "init" (c1, 4Gi) then the pod's app container "app" (c2,
    2Gi), created with the cpuset.mems the plugin gave it (as containerd shows it)."""
    init = container(g, "init", "c1", 4 * GI)
    plugin.create_container(g, init)
    plugin.stop_container(g, init)
    app = container(g, "app", "c2", 2 * GI)
    app.linux.resources.cpu.mems = mems(plugin.create_container(g, app))
    return init, app


def restarted(
    plugin: MemoryPlugin, policy: str = "single-numa-node", *, exit_records: bool = True
) -> MemoryPlugin:
    """A new plugin process that restored the checkpoint ``plugin`` wrote (and, unless
    ``exit_records`` is false, the exit records beside it)."""
    fresh = make_plugin(policy)
    fresh.manager.state = plugin.manager.state.clone()
    if exit_records:
        fresh.tracker.restore_exit_records(plugin.tracker.exit_records())
    return fresh


def reserved(plugin: MemoryPlugin, node: int, type_: str = "memory") -> int:
    return plugin.manager.state.machine[node].memory_map[type_].reserved


def mems(adjust: api.ContainerAdjustment | None) -> str:
    return "" if adjust is None else adjust.linux.resources.cpu.mems


def test_guaranteed_container_is_pinned_and_others_untouched() -> None:
    plugin = make_plugin()
    g = pod("g")
    assert mems(plugin.create_container(g, container(g, "app", "c1", 2 * GI, cpus="4-5"))) == "1"
    b = pod("b", "Burstable")
    assert plugin.create_container(b, container(b, "app", "c2", 2 * GI)) is None
    e = pod("e", "BestEffort")
    assert plugin.create_container(e, container(e, "app", "c3", None)) is None
    assert list(plugin.manager.state.entries) == ["g"]
    assert reserved(plugin, 1) == 2 * GI


def test_shared_pool_cpuset_gives_no_cpu_hint() -> None:
    # CPU manager policy none: every container gets all CPUs; that must not force a group
    plugin = make_plugin("restricted")
    g = pod("g")
    adjust = plugin.create_container(g, container(g, "app", "c1", GI, cpus="0-15"))
    assert mems(adjust) == "0"


def test_hugepages_requests_are_read_from_limits() -> None:
    plugin = make_plugin()
    g = pod("g")
    adjust = plugin.create_container(g, container(g, "app", "c1", GI, hugepages={"1GB": GI}))
    assert mems(adjust) == "0"
    types = {b.type for b in plugin.manager.state.blocks("g", "app") or []}
    assert types == {"memory", "hugepages-1Gi"}
    assert reserved(plugin, 0, "hugepages-1Gi") == GI


def test_refusal_names_request_free_memory_and_policy() -> None:
    plugin = make_plugin()
    g = pod("g")
    with pytest.raises(AdmissionRefused) as err:
        plugin.create_container(g, container(g, "big", "c1", 10 * GI))
    text = str(err.value)
    assert text.startswith("TopologyAffinityError:")
    assert "memory=10Gi" in text and "node 3: memory=6Gi" in text
    assert "single-numa-node" in text
    assert "g" not in plugin.manager.state.entries
    # containerd's undo events for the refused container are harmless
    plugin.stop_container(g, container(g, "big", "c1", 10 * GI))
    plugin.remove_container(g, container(g, "big", "c1", 10 * GI))


def test_restarted_container_keeps_its_blocks() -> None:
    plugin = make_plugin()
    g = pod("g")
    first = container(g, "app", "c1", 3 * GI, cpus="8")
    assert mems(plugin.create_container(g, first)) == "2"
    plugin.stop_container(g, first)
    second = container(g, "app", "c2", 3 * GI, cpus="8")
    assert mems(plugin.create_container(g, second)) == "2"
    assert reserved(plugin, 2) == 3 * GI  # not counted twice
    plugin.remove_container(g, first)  # the old instance goes: the new one keeps the blocks
    assert plugin.manager.state.blocks("g", "app") is not None
    plugin.remove_container(g, second)
    assert plugin.manager.state.blocks("g", "app") is None
    assert reserved(plugin, 2) == 0


def test_exited_container_is_an_init_container_reused_then_released() -> None:
    # init 4Gi runs and exits; app 2Gi reuses its memory; when the app starts the init goes
    plugin = make_plugin()
    g = pod("g")
    init = container(g, "init", "c1", 4 * GI)
    assert mems(plugin.create_container(g, init)) == "0"
    plugin.start_container(g, init)
    plugin.stop_container(g, init)
    app = container(g, "app", "c2", 2 * GI)
    assert mems(plugin.create_container(g, app)) == "0"
    # the app reused the init container's memory: the pod still holds 4Gi on node 0
    assert reserved(plugin, 0) == 4 * GI
    plugin.start_container(g, app)
    assert plugin.manager.state.blocks("g", "init") is None
    assert reserved(plugin, 0) == 2 * GI


def test_stopping_the_pod_sandbox_releases_everything() -> None:
    plugin = make_plugin()
    g = pod("g")
    plugin.create_container(g, container(g, "a", "c1", GI))
    plugin.create_container(g, container(g, "b", "c2", GI))
    plugin.stop_pod_sandbox(g)
    assert plugin.manager.state.entries == {}
    assert all(reserved(plugin, n) == 0 for n in range(4))


def test_update_keeps_the_pinned_mems() -> None:
    plugin = make_plugin()
    g = pod("g")
    c = container(g, "app", "c1", GI, cpus="12")
    plugin.create_container(g, c)
    resources = api.LinuxResources()
    resources.cpu.cpus = "13"
    updates = plugin.update_container(g, c, resources)
    assert [(u.container_id, u.linux.resources.cpu.mems) for u in updates] == [("c1", "3")]
    b = pod("b", "Burstable")
    cb = container(b, "app", "c2", GI)
    plugin.create_container(b, cb)
    assert plugin.update_container(b, cb, resources) == []


def test_synchronize_releases_gone_adopts_pinned_and_pins_unpinned() -> None:
    plugin = make_plugin()
    gone = pod("gone")
    plugin.create_container(gone, container(gone, "app", "c0", GI))
    # the runtime's view after a restart of the plugin
    kept = pod("kept")
    late = pod("late")
    pinned = container(kept, "app", "c1", 3 * GI, mems="2", state=api.CONTAINER_RUNNING)
    unpinned = container(late, "app", "c2", 2 * GI, cpus="4", state=api.CONTAINER_RUNNING)
    updates = plugin.synchronize([kept, late], [pinned, unpinned])
    entries = plugin.manager.state.entries
    assert "gone" not in entries
    assert [b.numa_affinity for b in entries["kept"]["app"]] == [(2,)]
    assert reserved(plugin, 2) == 3 * GI
    assert [(u.container_id, u.linux.resources.cpu.mems) for u in updates] == [("c2", "1")]
    assert reserved(plugin, 1) == 2 * GI
    # owners are known again: removing the adopted container releases it
    plugin.remove_container(kept, pinned)
    assert reserved(plugin, 2) == 0


def test_synchronize_releases_finished_init_containers() -> None:
    plugin = make_plugin()
    g = pod("g")
    init, app = init_then_app(plugin, g)
    # the plugin restarts before seeing the app start; the app now runs
    fresh = restarted(plugin)
    init.state = api.CONTAINER_STOPPED
    app.state = api.CONTAINER_RUNNING
    assert fresh.synchronize([g], [init, app]) == []
    assert fresh.manager.state.blocks("g", "init") is None
    assert reserved(fresh, 0) == 2 * GI


def test_synchronize_readmits_a_container_created_without_the_recorded_answer() -> None:
    # The plugin records an admission and dies before its answer reaches containerd, which
    # then creates the container unpinned. At the restart the runtime's view wins: the
    # container is one created while the plugin was away, admitted after every release.
    plugin = make_plugin("restricted")
    big, late = pod("big"), pod("late")
    assert mems(plugin.create_container(big, container(big, "app", "c1", 5 * GI))) == "0"
    assert mems(plugin.create_container(late, container(late, "app", "c2", 3 * GI))) == "1"
    fresh = restarted(plugin, "restricted")
    # meanwhile "big" went away; "late" exists, created without cpuset.mems
    unpinned = container(late, "app", "c2", 3 * GI, state=api.CONTAINER_CREATED)
    updates = fresh.synchronize([late], [unpinned])
    assert [(u.container_id, u.linux.resources.cpu.mems) for u in updates] == [("c2", "0")]
    assert [b.numa_affinity for b in fresh.manager.state.blocks("late", "app") or []] == [(0,)]
    assert (reserved(fresh, 0), reserved(fresh, 1)) == (3 * GI, 0)
    # pinned as recorded: kept as it is, nothing to update
    pinned = container(late, "app", "c2", 3 * GI, mems="0", state=api.CONTAINER_RUNNING)
    assert fresh.synchronize([late], [pinned]) == []
    assert reserved(fresh, 0) == 3 * GI


def test_pod_scope_uses_the_pod_level_limit() -> None:
    # pod scope: two 3Gi containers (pod limit 6Gi) share one node; node 0 has only 5Gi
    plugin = make_plugin("single-numa-node", "pod")
    g = pod("g", memory_limit=6 * GI)
    assert mems(plugin.create_container(g, container(g, "a", "c1", 3 * GI))) == "1"
    assert mems(plugin.create_container(g, container(g, "b", "c2", 3 * GI))) == "1"
    big = pod("big", memory_limit=12 * GI)
    with pytest.raises(AdmissionRefused, match="TopologyAffinityError"):
        plugin.create_container(big, container(big, "a", "c3", 6 * GI))


def test_events_of_a_replaced_sandbox_leave_the_new_one_alone() -> None:
    # kubelet replaces a dead sandbox (same pod UID, new sandbox id), then removes the old one
    plugin = make_plugin()
    old = pod("g")
    plugin.run_pod_sandbox(old)
    plugin.create_container(old, container(old, "app", "c1", 2 * GI))
    new = api.PodSandbox()
    new.CopyFrom(old)
    new.id = "sb-g-2"
    plugin.run_pod_sandbox(new)
    plugin.create_container(new, container(new, "app", "c2", 2 * GI))
    plugin.stop_pod_sandbox(old)
    plugin.remove_pod_sandbox(old)
    assert plugin.manager.state.blocks("g", "app") is not None
    assert reserved(plugin, 0) == 2 * GI
    plugin.stop_pod_sandbox(new)
    assert plugin.manager.state.blocks("g", "app") is None


def test_memory_of_a_released_init_container_is_not_reused_again() -> None:
    # init (4Gi) exits; app1 (2Gi) reuses it and starts, releasing the init; app2 (1Gi)
    # must take its own memory: the pod then holds 3Gi, as kubelet's state says
    plugin = make_plugin()
    g = pod("g")
    init = container(g, "init", "c1", 4 * GI)
    plugin.create_container(g, init)
    plugin.start_container(g, init)
    plugin.stop_container(g, init)
    app1 = container(g, "app1", "c2", 2 * GI)
    plugin.create_container(g, app1)
    plugin.start_container(g, app1)
    assert reserved(plugin, 0) == 2 * GI
    app2 = container(g, "app2", "c3", GI)
    plugin.create_container(g, app2)
    plugin.start_container(g, app2)
    assert reserved(plugin, 0) == 3 * GI
    sizes = sum(b.size for _, _, b in plugin.manager.state.iter_blocks())
    assert sizes == 3 * GI


def test_unlisted_init_container_is_released_once_the_next_one_runs() -> None:
    # containerd lists no exited container at Synchronize: the exit records say the
    # unlisted "init" was a finished init container whose successor "app" now runs
    plugin = make_plugin()
    g = pod("g")
    _, app = init_then_app(plugin, g)
    fresh = restarted(plugin)
    app.state = api.CONTAINER_RUNNING
    fresh.synchronize([g], [app])
    assert fresh.manager.state.blocks("g", "init") is None
    assert reserved(fresh, 0) == 2 * GI


def test_unlisted_exited_container_is_kept_without_exit_records() -> None:
    # without the exit records nothing tells a finished init container from a crashed
    # app container: its blocks stay until its pod goes (never "exited, so released")
    plugin = make_plugin()
    g = pod("g")
    _, app = init_then_app(plugin, g)
    fresh = restarted(plugin, exit_records=False)
    app.state = api.CONTAINER_RUNNING
    fresh.synchronize([g], [app])
    assert fresh.manager.state.blocks("g", "init") is not None
    fresh.remove_pod_sandbox(g)
    assert fresh.manager.state.entries == {}
    assert reserved(fresh, 0) == 0


def test_crashed_app_container_keeps_its_blocks_across_a_restart() -> None:
    # "a" exits (a crash) while its sibling "b" runs; the plugin restarts; "a" is not
    # listed but keeps its blocks, and its restart (same name) is not a new admission
    plugin = make_plugin()
    g = pod("g")
    a = container(g, "a", "c1", 2 * GI)
    b = container(g, "b", "c2", 2 * GI)
    a.linux.resources.cpu.mems = mems(plugin.create_container(g, a))
    b.linux.resources.cpu.mems = mems(plugin.create_container(g, b))
    plugin.start_container(g, a)
    plugin.start_container(g, b)
    plugin.stop_container(g, a)
    fresh = restarted(plugin)
    b.state = api.CONTAINER_RUNNING
    fresh.synchronize([g], [b])
    before = fresh.manager.state.blocks("g", "a")
    assert before is not None
    again = container(g, "a", "c3", 2 * GI)
    assert mems(fresh.create_container(g, again)) == "0"
    assert fresh.manager.state.blocks("g", "a") == before
    assert reserved(fresh, 0) == 4 * GI


def test_refused_containers_are_counted_by_pod_until_they_run_or_go() -> None:
    from prometheus_client import generate_latest

    from nri_plugin.metrics import Metrics

    metrics = Metrics()
    plugin = MemoryPlugin(make_plugin().manager, observer=metrics)
    g = pod("g", name="web")

    def waiting() -> str:
        lines = generate_latest(metrics.registry).decode().splitlines()
        return "\n".join(line for line in lines if line.startswith("nri_memory_manager_refused"))

    big = container(g, "big", "c1", 12 * GI)
    for attempt in range(2):  # kubelet retries: still one container waiting
        with pytest.raises(AdmissionRefused):
            plugin.create_container(g, big)
        assert waiting() == (
            'nri_memory_manager_refused_containers{namespace="default",pod="web"} 1.0'
        ), attempt
    plugin.create_container(g, container(g, "big", "c2", 2 * GI))  # e.g. after a resize
    assert waiting() == ""
    with pytest.raises(AdmissionRefused):
        plugin.create_container(g, container(g, "other", "c3", 12 * GI))
    assert waiting().endswith(" 1.0")
    plugin.remove_pod_sandbox(g)
    assert waiting() == ""


def test_synchronize_follows_limits_in_force_before_late_admissions() -> None:
    # Seen in a fault-injection run (plugin-kill). While the plugin was away, kubelet
    # resized "big" (pinned to node 0, 3Gi) to 5Gi in place (containerd applied it without
    # the plugin) and a new container "late" (2Gi) was created unpinned. "big" runs on node
    # 0 (5Gi allocatable) with its 5Gi limit: that memory is taken before "late" is placed,
    # else "late" is pinned to node 0, the resize is refused and the node overcommitted.
    plugin = make_plugin("best-effort")
    big, late = pod("big"), pod("late")
    assert mems(plugin.create_container(big, container(big, "app", "c1", 3 * GI))) == "0"
    fresh = restarted(plugin, "best-effort")
    resized = container(big, "app", "c1", 5 * GI, mems="0", state=api.CONTAINER_RUNNING)
    unpinned = container(late, "app", "c2", 2 * GI, state=api.CONTAINER_CREATED)
    updates = fresh.synchronize([big, late], [resized, unpinned])
    assert [b.size for b in fresh.manager.state.blocks("big", "app") or []] == [5 * GI]
    assert [(u.container_id, u.linux.resources.cpu.mems) for u in updates] == [("c2", "1")]
    assert (reserved(fresh, 0), reserved(fresh, 1)) == (5 * GI, 2 * GI)


def test_restored_exit_records_survive_until_synchronize() -> None:
    # Found while writing the fault-injection oracle (plugin-kill). The daemon writes the
    # checkpoint, with the exit records, right after start-up, before containerd's
    # Synchronize has applied the restored records: a plugin killed in between lost them,
    # and the finished init container's memory then stayed with its pod for good.
    plugin = make_plugin()
    g = pod("g")
    _, app = init_then_app(plugin, g)
    records = plugin.tracker.exit_records()
    assert "init" in records["g"]
    fresh = restarted(plugin)
    # what the start-up write persists, before any Synchronize
    assert fresh.tracker.exit_records() == records
    again = make_plugin()
    again.manager.state = fresh.manager.state.clone()
    again.tracker.restore_exit_records(fresh.tracker.exit_records())
    app.state = api.CONTAINER_RUNNING
    again.synchronize([g], [app])
    assert again.manager.state.blocks("g", "init") is None
    assert reserved(again, 0) == 2 * GI


def test_an_exit_is_persisted_at_once() -> None:
    # Found while writing the fault-injection oracle (plugin-kill). The exit records go to
    # disk with the checkpoint; a StopContainer changes no block, so it wrote nothing, and
    # a plugin killed before the next change lost the exit of a finished init container
    # (whose memory then stays with its pod for good).
    writes: list[dict[str, object]] = []
    plugin = make_plugin()
    plugin.tracker._persist = lambda: writes.append(plugin.tracker.exit_records())
    g = pod("g")
    init = container(g, "init", "c1", 4 * GI)
    plugin.create_container(g, init)
    plugin.stop_container(g, init)
    assert writes and "init" in writes[-1].get("g", {})  # type: ignore[operator]


def test_restored_exited_containers_are_not_each_others_successors() -> None:
    # Seen in a fault-injection run (plugin-kill, containerd 1.7, seed 896319150). "app"
    # crashed, was restarted, crashed again; its sibling "helper" crashed too; the exit
    # codes were never asked (no new name was created), so both are inferred finished init
    # containers. The restarted plugin restored them one after the other, so "helper"
    # looked first created after "app" exited, a next container that ran: "app"'s blocks
    # were released while it waits to be restarted.
    plugin = make_plugin()
    g = pod("g")
    app = container(g, "app", "c1", 2 * GI)
    helper = container(g, "helper", "c2", GI)
    for c in (app, helper):
        c.linux.resources.cpu.mems = mems(plugin.create_container(g, c))
        plugin.start_container(g, c)
    plugin.stop_container(g, app)  # a crash; kubelet restarts it
    again = container(g, "app", "c3", 2 * GI)
    again.annotations["io.kubernetes.container.restartCount"] = "1"
    again.linux.resources.cpu.mems = mems(plugin.create_container(g, again))
    plugin.start_container(g, again)
    plugin.stop_container(g, again)  # it crashes again
    plugin.stop_container(g, helper)  # and so does its sibling
    fresh = restarted(plugin)
    fresh.synchronize([g], [])
    assert fresh.manager.state.blocks("g", "app") is not None
    assert fresh.manager.state.blocks("g", "helper") is not None
    assert reserved(fresh, 0) == 3 * GI

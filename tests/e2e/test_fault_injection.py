"""Fault injection against real containerd 2.x and 1.7 (issue 5, items 5 and 6; issue 10,
item 6: resizes and crash/re-create cycles).

The random runs are `tests/e2e/faults.py`; set NMM_FAULT_SEED to repeat one
(the seed is printed) and NMM_FAULT_OPS to change its length. The tests after
them are the smallest cases the runs led to.
The last ones check the oracle itself and need no containerd.
"""

from __future__ import annotations

import os
import random
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from nri_plugin.persist.format import to_checkpoint

from .faults import (
    CRASHABLE,
    FAULTS,
    PLUGIN_NAME,
    ContainerPlan,
    Fault,
    FaultInjection,
    Listed,
    LiveContainer,
    LivePod,
    Oracle,
    PodPlan,
    Schedule,
    Stock,
    accounting_error,
    merged_units,
    settled_state,
    state_differences,
)
from .harness import FLAVOR_TAG, Containerd, CRIClient, E2EPaths, Flavor, Pod, registered_pattern
from .test_plugin import RELIST_INTERVAL_S, TOPOLOGY, MemoryManagerPlugin, config_text

GI = 1 << 30
OPERATIONS = int(os.environ.get("NMM_FAULT_OPS") or 1000)


@pytest.fixture
def ctrd(e2e_paths: E2EPaths, flavor: Flavor) -> Iterator[Containerd]:
    """A containerd of this module's own ("fi2x", "fi17"): its teardown sweeps only what is
    its own, so other e2e runs on the machine neither disturb it nor get disturbed."""
    instance = Containerd(e2e_paths, flavor, f"fi{FLAVOR_TAG[flavor]}")
    try:
        yield instance.start()
    finally:
        try:
            instance.close()
        finally:
            instance.assert_clean()


def fault_seed() -> int:
    text = os.environ.get("NMM_FAULT_SEED")
    return int(text) if text else random.SystemRandom().randrange(1 << 31)


@pytest.mark.parametrize("fault", FAULTS)
def test_plugin_state_equals_simulate_under_faults(
    ctrd: Containerd, fault: Fault, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    seed = fault_seed()
    with capsys.disabled():  # the seed and the figures go to the terminal, pass or fail
        print(f"\nfault injection {fault}: seed {seed} (NMM_FAULT_SEED={seed} repeats it)")
    # the topology manager policy (best-effort or restricted) is the seed's choice
    schedule = Schedule(seed=seed, operations=OPERATIONS, fault=fault)
    figures = FaultInjection(ctrd, tmp_path, schedule).run()
    with capsys.disabled():
        print(figures.summary())
    assert figures.operations == OPERATIONS
    assert (figures.kills if fault == "plugin-kill" else figures.restarts) > 0, figures.summary()
    problems = figures.problems()
    assert not problems, f"seed {seed}: {len(problems)} problems:\n" + "\n".join(problems[:40])


# --------------------------------------------------------------------------------------------
# Minimised cases


def _guaranteed(
    cri: CRIClient,
    uid: str,
    name: str,
    memory: int,
    *,
    cpuset: str | None = None,
    command: list[str] | None = None,
) -> tuple[Any, str]:
    pod = cri.run_pod(uid, qos="Guaranteed")
    cid = cri.create_container(
        pod, name, memory_limit=memory, cpu_millis=1000, cpuset_cpus=cpuset, command=command
    )
    return pod, cid


def _restart(plugin: MemoryManagerPlugin) -> None:
    plugin.kill(signal.SIGKILL)
    plugin.start()


def _state(plugin: MemoryManagerPlugin) -> dict[str, Any]:
    """The checkpoint after the plugin's asynchronous writes (a restart's sync included)."""
    return to_checkpoint(settled_state(plugin))


def test_restart_trusts_the_checkpoint_it_wrote(ctrd: Containerd, tmp_path: Path) -> None:
    """A container whose CPUs sit in a group's node gets that node alone (best-effort; kubelet
    does the same): the node's group becomes [1] while the group's block stays on [0,1].
    The restart must take that checkpoint back as it is, whatever the order of the pods."""
    plugin = MemoryManagerPlugin(ctrd, tmp_path, "best-effort").start()
    cri = ctrd.cri()
    # kubelet's restore check replays entries by pod UID: the pinned pod's must come first
    _, group = _guaranteed(cri, "ffffffff-0000-4000-8000-000000000001", "app", 12 * GI)
    _, pinned = _guaranteed(cri, "00000000-0000-4000-8000-000000000002", "app", GI, cpuset="4-5")
    assert (cri.numa_nodes(group), cri.numa_nodes(pinned)) == ("0,1", "1")
    before = _state(plugin)
    _restart(plugin)
    assert _state(plugin) == before
    assert plugin.proc is not None
    assert "checkpoint not trusted" not in plugin.proc.log_text()


def test_pod_removed_after_a_containerd_restart_is_released(
    ctrd: Containerd, tmp_path: Path
) -> None:
    """containerd (1.7 and 2.x) forgets its pods and exited containers when it restarts and
    sends no StopPodSandbox/RemovePodSandbox for them, nor RemoveContainer for the instance
    that had exited (docs/fault-injection.md): the plugin finds the pod's end in the
    runtime's CRI listing (--relist-interval) and releases it."""
    plugin = MemoryManagerPlugin(ctrd, tmp_path, "best-effort").start()
    cri = ctrd.cri()
    uid = "00000000-0000-4000-8000-0000000000aa"
    pod = cri.run_pod(uid, qos="Guaranteed")
    limits: dict[str, Any] = {"memory_limit": GI, "cpu_millis": 1000, "cpuset_cpus": "0-1"}
    first = cri.create_container(pod, "app", command=list(CRASHABLE), **limits)
    cri.start_container(first)
    cri.stop_container(first)  # it exits; kubelet restarts it (the same name, attempt 1)
    again = cri.create_container(pod, "app", command=list(CRASHABLE), attempt=1, **limits)
    cri.start_container(again)
    assert uid in _state(plugin)["entries"]
    since = ctrd.log_offset()
    ctrd.restart()
    ctrd.wait_for_log(registered_pattern(PLUGIN_NAME), timeout=30, since=since)
    cri = ctrd.cri()
    # kubelet deletes the pod: the sandbox is stopped, its containers and it removed
    cri.stop_pod(pod.id)
    for c in cri.list_containers(pod.id):
        cri.remove_container(c.id)
    cri.remove_pod(pod.id)
    deadline = time.monotonic() + 10 * RELIST_INTERVAL_S + 5
    while uid in _state(plugin).get("entries", {}):
        assert time.monotonic() < deadline, "the pod's memory was not released"
        time.sleep(RELIST_INTERVAL_S / 2)
    assert plugin.proc is not None
    # released when its sandbox stopped or when it went, whichever the relist saw first
    assert "not announced by the runtime)" in plugin.proc.log_text()


# --------------------------------------------------------------------------------------------
# The oracle itself (no containerd needed)


def _oracle(policy: str = "single-numa-node") -> tuple[Oracle, dict[str, LivePod]]:
    pods: dict[str, LivePod] = {}
    return Oracle(yaml.safe_load(TOPOLOGY), yaml.safe_load(config_text(policy)), pods), pods


def _pod(pods: dict[str, LivePod], uid: str, *containers: ContainerPlan) -> LivePod:
    sandbox = Pod(f"sandbox-{uid}", uid, f"pod-{uid}", "e2e", "Guaranteed", "", None)
    pod = LivePod(PodPlan(uid, f"pod-{uid}", "guaranteed", "Guaranteed", containers), sandbox)
    pods[uid] = pod
    return pod


_serial = iter(range(1, 1 << 30))


def _created(
    pod: LivePod, plan: ContainerPlan, mems: str, *, attempt: int = 0, memory: int | None = None
) -> LiveContainer:
    seq = next(_serial)
    size = plan.memory if memory is None else memory
    c = LiveContainer(plan, pod.uid, f"c{seq}", seq, attempt, size, mems, guaranteed=True)
    pod.containers.append(c)
    return c


def _stock(*listed: LiveContainer, restarted: bool = True, exits: Any = None) -> Stock:
    """What the driver finds at a registration: these containers created or running, each
    with the cpuset.mems the plugin's Synchronize gave it (``c.mems``)."""
    return Stock(
        restarted,
        exits or {},
        {c.id: Listed(c.started, c.mems, c.limit) for c in listed},
        [],
        [],
        {(c.pod_uid, c.name): c.mems for c in listed},  # as the plugin logs late admissions
    )


def _nodes(oracle: Oracle, uid: str, name: str = "app") -> tuple[int, ...]:
    mems = oracle.mems_of(uid, name)
    assert mems is not None
    return tuple(int(n) for n in mems.split(","))


def _steps(oracle: Oracle) -> list[str]:
    return [next(iter(step)) for step in oracle.steps]


APP = ContainerPlan("app", GI, 1000)


def test_oracle_replays_an_outage_releases_first() -> None:
    """Node 0 full with A; while the plugin is away A goes and B is created unpinned: at
    the Synchronize, A's release comes before B's admission, so B lands on node 0."""
    oracle, pods = _oracle()
    a = _pod(pods, "a", ContainerPlan("app", 7 * GI, 1000))
    oracle.admitted(a, _created(a, a.plan.containers[0], "0"))
    oracle.flush()
    a.removed = True
    oracle.removed_pod(a, seen=False)
    b = _pod(pods, "b", APP)
    late = _created(b, APP, "")  # created while the plugin was away
    late.mems = "0"  # what the plugin's Synchronize gave it
    oracle.synchronized(_stock(late))
    assert oracle.mismatches == []
    assert _nodes(oracle, "b") == (0,) and not oracle.holds("a", "app")
    assert oracle.counts["late admissions"] == 1
    assert _steps(oracle) == ["admit", "remove", "admit"]


def test_oracle_retries_an_unplaced_container_at_the_next_synchronize() -> None:
    oracle, pods = _oracle()
    for n in range(4):
        filler = _pod(pods, f"f{n}", ContainerPlan("app", 8 * GI if n else 7 * GI, 1000))
        oracle.admitted(filler, _created(filler, filler.plan.containers[0], str(n)))
    late_pod = _pod(pods, "late", APP)
    late = _created(late_pod, APP, "")
    oracle.synchronized(_stock(late))
    assert not oracle.holds("late", "app") and oracle.mismatches == []  # no room: unplaced
    pods["f2"].removed = True
    oracle.removed_pod(pods["f2"], seen=True)
    late.mems = "2"
    oracle.synchronized(_stock(late))
    assert _nodes(oracle, "late") == (2,) and oracle.mismatches == []


def _finished_init(oracle: Oracle, pods: dict[str, LivePod]) -> LivePod:
    """Pod "p": init (4Gi, admitted on node 0) ran to completion; app (2Gi) not created."""
    init_plan = ContainerPlan("init", 4 * GI, 1000, init=True)
    pod = _pod(pods, "p", init_plan, ContainerPlan("app", 2 * GI, 1000))
    init = _created(pod, init_plan, "0")
    oracle.admitted(pod, init)
    init.started, init.exited, init.exit_code = True, True, 0
    oracle.exited(pod, init)
    return pod


def test_oracle_lends_init_memory_within_one_admission() -> None:
    """init (4Gi) runs to completion, app (2Gi) reuses its memory: one admit step; the
    app's start releases the init container (the pod's containers all exist)."""
    oracle, pods = _oracle()
    pod = _finished_init(oracle, pods)
    app = _created(pod, pod.plan.containers[1], "0")
    oracle.admitted(pod, app)
    app.started = True
    oracle.started(pod, app, seen=True)
    oracle.flush()
    assert oracle.mismatches == []
    assert _steps(oracle) == ["admit", "start"]
    admit = oracle.steps[0]["admit"]
    assert isinstance(admit, dict) and [c["name"] for c in admit["initContainers"]] == ["init"]
    assert not oracle.holds("p", "init")
    assert oracle.manager.state.machine[0].memory_map["memory"].reserved == 2 * GI


def test_oracle_keeps_blocks_across_restarts_and_resizes_a_restart_with_new_limits() -> None:
    oracle, pods = _oracle()
    pod = _pod(pods, "p", ContainerPlan("app", 2 * GI, 1000))
    first = _created(pod, pod.plan.containers[0], "0")
    oracle.admitted(pod, first)
    first.started, first.exited, first.exit_code = True, True, 3  # a crash
    oracle.exited(pod, first)
    oracle.admitted(pod, _created(pod, first.plan, "0", attempt=1))  # kubelet's restart
    assert _steps(oracle) == ["admit"]
    oracle.admitted(pod, _created(pod, first.plan, "0", attempt=2, memory=5 * GI))
    assert _steps(oracle) == ["admit", "resize"] and oracle.mismatches == []
    # node 0 has 7Gi: 9Gi does not fit, the plugin refused it as simulate does
    oracle.refused(pod, first.plan, 9 * GI, 3)
    oracle.resized(pod, pod.containers[-1], 8 * GI, accepted=False)
    assert oracle.mismatches == []
    blocks = oracle.manager.state.blocks("p", "app")
    assert blocks is not None and [b.size for b in blocks] == [5 * GI]
    # refusals simulate would not make are mismatches
    oracle.refused(pod, first.plan, 6 * GI, 3)
    oracle.resized(pod, pod.containers[-1], GI, accepted=False)
    assert len(oracle.mismatches) == 2
    assert all("simulate accepts it" in m for m in oracle.mismatches)


def test_oracle_follows_exit_records_at_a_plugin_restart() -> None:
    """The plugin died after the init container exited; the app was created and started
    while it was away. Its exit record says it was a finished init container: released at
    the Synchronize. Without a record its blocks stay until the pod goes."""
    for records, kept in (({"p": {"init": {"kind": "init"}}}, False), ({}, True)):
        oracle, pods = _oracle()
        pod = _finished_init(oracle, pods)
        oracle.flush()
        app = _created(pod, pod.plan.containers[1], "")
        app.started, app.mems = True, "0"
        oracle.synchronized(_stock(app, exits=records))
        assert oracle.holds("p", "init") == kept and oracle.holds("p", "app")
        assert oracle.mismatches == []


def test_oracle_follows_the_restored_checkpoint_sizes() -> None:
    """A resize the plugin answered just before a kill, not yet in its checkpoint: the
    restarted plugin has the old size, and its Synchronize resizes to the limit in force."""
    oracle, pods = _oracle()
    pod = _pod(pods, "p", ContainerPlan("app", 2 * GI, 1000))
    c = _created(pod, pod.plan.containers[0], "0")
    oracle.admitted(pod, c)
    oracle.resized(pod, c, 3 * GI, accepted=True)
    restored = oracle.manager.state.clone()
    oracle.resized(pod, c, 4 * GI, accepted=True)
    c.limit = 4 * GI
    oracle.restoring(restored)
    blocks = oracle.manager.state.blocks("p", "app")
    assert blocks is not None and [b.size for b in blocks] == [3 * GI]
    oracle.synchronized(_stock(c))
    blocks = oracle.manager.state.blocks("p", "app")
    assert blocks is not None and [b.size for b in blocks] == [4 * GI]
    assert oracle.mismatches == [] and _steps(oracle)[-2:] == ["resize", "resize"]


def _removed_unannounced(oracle: Oracle, pods: dict[str, LivePod]) -> None:
    """After a containerd restart, a pod created before it is removed: containerd sends no
    StopPodSandbox, and no RemoveContainer for the instance that had exited before the
    restart. The restarted name waits for the plugin's relist (or its next Synchronize);
    the other goes at once."""
    pod = _pod(pods, "p", ContainerPlan("app", GI, 1000), ContainerPlan("helper", GI, 1000))
    old = _created(pod, pod.plan.containers[0], "0")
    oracle.admitted(pod, old)
    helper = _created(pod, pod.plan.containers[1], "0")
    oracle.admitted(pod, helper)
    old.exited, old.exit_code = True, 3
    oracle.admitted(pod, _created(pod, old.plan, "0", attempt=1))
    old.known = False  # exited before the restart: containerd forgot it
    pod.removed = True
    for c in pod.containers:
        c.removed, c.record_gone = True, c.known
    oracle.removed_pod(pod, seen=True, sandbox_event=False)
    assert oracle.holds("p", "app") and not oracle.holds("p", "helper")
    assert [p.uid for p in oracle.pending_removals] == ["p"]


def test_oracle_keeps_names_whose_removal_containerd_did_not_announce() -> None:
    oracle, pods = _oracle("best-effort")
    _removed_unannounced(oracle, pods)
    oracle.synchronized(_stock(restarted=False))
    assert oracle.manager.state.entries == {} and oracle.pending_removals == ()


def test_oracle_follows_the_relist_of_an_unannounced_pod_removal() -> None:
    oracle, pods = _oracle("best-effort")
    _removed_unannounced(oracle, pods)
    oracle.relisted(pods["p"])
    assert oracle.manager.state.entries == {} and oracle.pending_removals == ()
    assert oracle.mismatches == []


def test_units_map_back_to_their_pods() -> None:
    oracle, pods = _oracle("best-effort")
    pod = _pod(pods, "p", ContainerPlan("app", GI, 1000), ContainerPlan("helper", GI, 1000))
    oracle.admitted(pod, _created(pod, pod.plan.containers[0], "0"))
    oracle.flush()  # the helper comes in a later unit (another operation)
    oracle.admitted(pod, _created(pod, pod.plan.containers[1], "0"))
    oracle.flush()
    assert sorted(oracle.manager.state.entries) == ["p", "p~2"]
    assert sorted(merged_units(oracle.manager.state).entries["p"]) == ["app", "helper"]


def test_state_differences_compare_groups_by_their_sums() -> None:
    oracle, pods = _oracle("best-effort")
    g = _pod(pods, "g", ContainerPlan("app", 12 * GI, 1000))
    oracle.admitted(g, _created(g, g.plan.containers[0], "0,1"))
    oracle.flush()
    assert oracle.mismatches == []
    state = oracle.manager.state
    default = oracle.manager.policy.default_state()
    moved = state.clone()
    # the same bytes spread differently inside the group [0,1]: not a difference
    moved.machine[0].memory_map["memory"].reserved -= GI
    moved.machine[0].memory_map["memory"].free += GI
    moved.machine[1].memory_map["memory"].reserved += GI
    moved.machine[1].memory_map["memory"].free -= GI
    assert state_differences(moved, state) == []
    assert accounting_error(moved, default) is None
    # a gigabyte reserved for nobody: a difference and a leak
    leaked = state.clone()
    leaked.machine[2].memory_map["memory"].reserved += GI
    leaked.machine[2].memory_map["memory"].free -= GI
    assert state_differences(leaked, state) == [
        f"node 2 memory reserved: plugin {GI}, simulate 0",
        f"node 2 memory free: plugin {7 * GI}, simulate {8 * GI}",
    ]
    assert accounting_error(leaked, default) is not None

"""Fault injection against real containerd 2.x and 1.7 (issue 5, items 5 and 6).

The random runs are `tests/e2e/faults.py`; set NMM_FAULT_SEED to repeat one
(the seed is printed) and NMM_FAULT_OPS to change its length. The two tests
after them are the smallest cases the runs led to, each a rule of
docs/lifecycle.md that a plugin restart must keep. The last ones check the
oracle itself and need no containerd.
"""

from __future__ import annotations

import os
import random
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from nri_plugin.persist.format import to_checkpoint

from .faults import (
    FAULTS,
    ContainerPlan,
    Expectation,
    Fault,
    FaultInjection,
    LiveContainer,
    LivePod,
    Oracle,
    PodPlan,
    Schedule,
    accounting_error,
    settled_state,
    state_differences,
)
from .harness import FLAVOR_TAG, Containerd, CRIClient, E2EPaths, Flavor, Pod
from .test_plugin import TOPOLOGY, MemoryManagerPlugin, config_text

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


# --------------------------------------------------------------------------------------------
# The oracle itself (no containerd needed)


def _oracle(policy: str = "single-numa-node") -> Oracle:
    return Oracle(yaml.safe_load(TOPOLOGY), yaml.safe_load(config_text(policy)))


def _pod(uid: str, *containers: ContainerPlan) -> LivePod:
    sandbox = Pod(f"sandbox-{uid}", uid, f"pod-{uid}", "e2e", "Guaranteed", "", None)
    return LivePod(PodPlan(uid, f"pod-{uid}", "guaranteed", "Guaranteed", containers), sandbox)


def _created(oracle: Oracle, pod: LivePod, seq: int, mems: str) -> Expectation | None:
    c = LiveContainer(pod.plan.containers[0], pod.uid, f"c{seq}", seq, mems, guaranteed=True)
    pod.containers.append(c)
    return oracle.created(pod, c)


def _nodes(oracle: Oracle, uid: str) -> tuple[int, ...]:
    blocks = oracle.manager.state.blocks(uid, "app")
    assert blocks is not None
    return blocks[0].numa_affinity


def test_oracle_replays_an_outage_releases_first() -> None:
    """Node 0 full with A; while the plugin is away A goes and B is created unpinned: at
    the Synchronize, A's release comes before B's admission, so B lands on node 0."""
    oracle = _oracle()
    a = _pod("a", ContainerPlan("app", 7 * GI, 1000))
    b = _pod("b", ContainerPlan("app", GI, 1000))
    assert _created(oracle, a, 1, "0") == Expectation(0, True, "0")
    a.removed = True
    oracle.removed_pod(a, plugin_up=False)
    assert _created(oracle, b, 2, "") is None  # waits for the plugin
    oracle.synchronized()
    assert oracle.holds("b", "app") and not oracle.holds("a", "app")
    assert _nodes(oracle, "b") == (0,)
    assert oracle.late_admissions == 1
    assert [next(iter(step)) for step in oracle.steps] == ["admit", "remove", "admit"]


def test_oracle_retries_an_unplaced_container_at_the_next_synchronize() -> None:
    oracle = _oracle()
    fillers = [_pod(f"f{n}", ContainerPlan("app", 8 * GI if n else 7 * GI, 1000)) for n in range(4)]
    for n, pod in enumerate(fillers):
        _created(oracle, pod, n + 1, str(n))
    late = _pod("late", ContainerPlan("app", GI, 1000))
    _created(oracle, late, 9, "")
    oracle.synchronized()
    assert not oracle.holds("late", "app")  # no room: unplaced
    fillers[2].removed = True
    oracle.removed_pod(fillers[2], plugin_up=False)
    oracle.synchronized()
    assert _nodes(oracle, "late") == (2,)


def test_oracle_releases_exited_containers_at_a_synchronize_as_the_plugin_does() -> None:
    """containerd does not list an exited init container at Synchronize, so the plugin
    releases it; its app, created while the plugin was away, then takes memory of its own."""
    oracle = _oracle()
    init_plan = ContainerPlan("init", 4 * GI, 1000, runs_to_completion=True)
    pod = _pod("p", init_plan, ContainerPlan("app", 2 * GI, 1000))
    assert _created(oracle, pod, 1, "0") == Expectation(0, True, "0")
    init = pod.containers[0]
    init.started = init.exited = True
    oracle.started(pod, init, plugin_up=True)
    app = LiveContainer(pod.plan.containers[1], pod.uid, "c2", 2, "", guaranteed=True)
    pod.containers.append(app)
    assert oracle.created(pod, app) is None  # created while the plugin was away
    oracle.exited_at_sync = {init.id}  # the stock the driver takes at the registration
    oracle.synchronized()
    assert not oracle.holds("p", "init") and oracle.holds("p", "app")
    assert [next(iter(step)) for step in oracle.steps][-2:] == ["remove", "admit"]
    admitted = oracle.steps[-1]["admit"]
    assert isinstance(admitted, dict) and admitted["initContainers"] == []
    assert oracle.manager.state.machine[0].memory_map["memory"].reserved == 2 * GI
    assert oracle.exited_at_sync is None  # taken once


def test_state_differences_compare_groups_by_their_sums() -> None:
    oracle = _oracle("best-effort")
    _created(oracle, _pod("g", ContainerPlan("app", 12 * GI, 1000)), 1, "0,1")
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

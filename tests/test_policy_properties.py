"""Properties of the policy engine over random machines and random pod lifecycles.

Every step of a random admit/start/remove sequence runs through
``MemoryManager``; after each one the machine state must satisfy kubelet's
accounting rules (``pkg/kubelet/cm/memorymanager``: ``policy_static.go``, the
checkpoint of ``state/checkpoint.go`` and the restart check ``validateState``).
"""

from __future__ import annotations

import json
from collections import Counter
from fractions import Fraction

import yaml
from hypothesis import HealthCheck, event, given, settings

from nri_plugin.engine.config import Config, ReservedMemory
from nri_plugin.engine.hint import TopologyHint
from nri_plugin.engine.manager import AdmissionResult, MemoryManager
from nri_plugin.engine.pod import GUARANTEED, ContainerSpec, PodSpec
from nri_plugin.engine.restore import validate_restored
from nri_plugin.engine.state import POLICY_STATIC, MemoryState
from nri_plugin.engine.topology import NumaNode, Topology
from nri_plugin.frontends.simulate import apply_step, simulate_text
from nri_plugin.inputs.scenario import AdmitStep, Scenario, StartStep, load_scenario_text
from nri_plugin.persist.format import from_checkpoint, to_checkpoint
from tests.strategies import GI, MI, scenario_mapping, scenarios

SETTINGS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# -- the invariants ----------------------------------------------------------------


def assert_accounting(state: MemoryState, default: MemoryState, *, groups: bool = True) -> None:
    """Per-node counters, assignment counts, groups and group sums are consistent.

    ``groups=False`` leaves out the group rules, for states where the
    topology manager handed a grouped node a single-node affinity (kubelet
    allocates it; see test_single_node_affinity_on_a_grouped_node).
    """
    if state.policy_name != POLICY_STATIC:
        assert state.machine == {} and state.entries == {}
        return
    machine = state.machine
    assert set(machine) == set(default.machine)

    for node_id, node in machine.items():
        base = default.machine[node_id]
        assert set(node.memory_map) == set(base.memory_map)
        for type_, t in node.memory_map.items():
            b = base.memory_map[type_]
            assert (t.total, t.system_reserved, t.allocatable) == (
                b.total,
                b.system_reserved,
                b.allocatable,
            ), (node_id, type_)
            assert t.free + t.reserved == t.allocatable, (node_id, type_, t)
            assert t.free >= 0 and t.reserved >= 0, (node_id, type_, t)

    # numberOfAssignments counts (block, node) pairs
    pairs: Counter[int] = Counter()
    for _, _, block in state.iter_blocks():
        pairs.update(block.numa_affinity)
    for node_id, node in machine.items():
        assert node.number_of_assignments == pairs[node_id], node_id
        if node.number_of_assignments == 0:
            assert node.cells == [node_id]
    if not groups:
        return

    # groups are disjoint: a node is in its own cells, and its cells agree on the group
    for node_id, node in machine.items():
        assert node_id in node.cells, (node_id, node.cells)
        cells = set(node.cells)
        for member in cells:
            assert set(machine[member].cells) == cells, (node_id, member)

    # single- and multi-node masks never share a node; a multi-node mask is its nodes' group
    multi: dict[int, bool] = {}
    group_blocks: dict[tuple[frozenset[int], str], int] = {}
    for _, _, block in state.iter_blocks():
        mask = frozenset(block.numa_affinity)
        for n in mask:
            assert multi.setdefault(n, len(mask) > 1) == (len(mask) > 1), (
                f"node {n} serves single- and multi-node blocks"
            )
            if len(mask) > 1:
                assert set(machine[n].cells) == mask, (n, machine[n].cells, block)
        key = (mask, block.type)
        group_blocks[key] = group_blocks.get(key, 0) + block.size

    # reserved per group and type == the sizes of the blocks on that group
    for group in {frozenset(node.cells) for node in machine.values()}:
        for type_ in set().union(*(machine[n].memory_map for n in group)):
            reserved = sum(
                machine[n].memory_map[type_].reserved
                for n in group
                if type_ in machine[n].memory_map
            )
            assert reserved == group_blocks.get((group, type_), 0), (sorted(group), type_)


def assert_checkpoint_round_trip(
    state: MemoryState, default: MemoryState, *, validate: bool = True
) -> None:
    data = json.loads(json.dumps(to_checkpoint(state)))
    restored = from_checkpoint(data)
    assert restored == state
    if validate:
        validate_restored(restored, default, state.policy_name)


def assert_unchanged_by_rejection(before: MemoryState, after: MemoryState) -> None:
    """A rejected pod keeps nothing.

    Releasing walks a block's nodes in order (kubelet's RemoveContainer), so inside
    a multi-node group the bytes may come back to a different node than they
    were taken from: only group sums are restored then. Without groups the
    state must be identical.
    """
    if all(len(node.cells) == 1 for node in before.machine.values()):
        assert after == before, "a rejected pod changed the state"
        return
    assert after.entries == before.entries
    for node_id, b in before.machine.items():
        a = after.machine[node_id]
        assert (a.number_of_assignments, a.cells) == (b.number_of_assignments, b.cells)
        for type_ in b.memory_map:
            for label in ("free", "reserved"):
                assert _group_sum(after, b.cells, type_, label) == _group_sum(
                    before, b.cells, type_, label
                ), (node_id, type_, label)


def _group_sum(state: MemoryState, cells: list[int], type_: str, label: str) -> int:
    tables = [state.machine[n].memory_map[type_] for n in cells]
    return sum(t.free if label == "free" else t.reserved for t in tables)


class GroupedNodeSpy:
    """Records when Allocate puts a single-node block on a node of a multi-node group.

    kubelet's Allocate lets a single-node affinity through on a grouped node
    (its single- vs cross-NUMA check, isAffinityViolatingNUMAAllocations,
    skips single-node masks), e.g. best-effort merging a CPU hint [0] with the
    memory hint [0,1]. The node then holds both kinds of blocks and its cells
    no longer name its group, so the group rules cannot hold afterwards.
    """

    def __init__(self, manager: MemoryManager) -> None:
        self.hit = False
        allocate = manager.policy.allocate

        def spy(
            state: MemoryState, pod: PodSpec, container: ContainerSpec, affinity: TopologyHint
        ) -> None:
            grouped = {n for n, node in state.machine.items() if len(node.cells) > 1}
            fresh = state.blocks(pod.uid, container.name) is None
            allocate(state, pod, container, affinity)
            blocks = state.blocks(pod.uid, container.name) or []
            nodes = {n for b in blocks for n in b.numa_affinity}
            if fresh and len(nodes) == 1 and nodes <= grouped:
                self.hit = True

        manager.policy.allocate = spy  # type: ignore[method-assign]


def assert_pinning(manager: MemoryManager, result: AdmissionResult) -> None:
    """Guaranteed containers are pinned under the static policy; nothing else is."""
    pinned = manager.config.policy == POLICY_STATIC and result.qos_class == GUARANTEED
    assert len(result.containers) == len(manager.pods[result.pod_uid].all_containers())
    for decision in result.containers:
        if pinned:
            assert decision.cpuset_mems != "", decision
            assert decision.allocations, decision
        else:
            assert decision.cpuset_mems == "", decision
            assert decision.allocations == (), decision


def run_checked(scenario: Scenario) -> tuple[MemoryManager, GroupedNodeSpy]:
    """Run every step, asserting the invariants after each; return the manager and its spy."""
    manager = MemoryManager(scenario.topology, scenario.config)
    initial = manager.state.clone()
    default = manager.policy.default_state()
    assert initial == default
    spy = GroupedNodeSpy(manager)
    for step in scenario.steps:
        before = manager.state.clone()
        groups_held = not spy.hit
        if isinstance(step, AdmitStep):
            result = manager.admit(step.pod)
            if result.admitted:
                assert_pinning(manager, result)
            else:
                assert result.containers == ()
                assert manager.state.entries == before.entries
                if not spy.hit:
                    assert_unchanged_by_rejection(before, manager.state)
            if groups_held and spy.hit:
                event("single-node affinity on a grouped node")
        elif isinstance(step, StartStep):
            manager.start(step.pod_uid)
        elif step.container is None:
            manager.remove_pod(step.pod_uid)
        else:
            manager.remove_container(step.pod_uid, step.container)
        assert_accounting(manager.state, default, groups=not spy.hit)
        # every byte stays accounted for, so the restore check takes the state back even
        # after a single-node block on a grouped node (docs/simulate.md, the departure)
        assert_checkpoint_round_trip(manager.state, default)
    return manager, spy


def assert_removing_everything_restores(
    manager: MemoryManager, spy: GroupedNodeSpy, scenario: Scenario
) -> None:
    for step in scenario.steps:
        if isinstance(step, AdmitStep):
            manager.remove_pod(step.pod.uid)
    assert manager.pods == {}
    assert manager.state.entries == {}
    # also after a single-node block on a grouped node: kubelet's release walk would strand
    # bytes there, ours does not (docs/simulate.md, the departure)
    assert manager.state == manager.policy.default_state(), ("state not restored", spy.hit)


# -- tests ---------------------------------------------------------------------------


@SETTINGS
@given(scenarios())
def test_invariants_hold_after_every_step(scenario: Scenario) -> None:
    manager, spy = run_checked(scenario)
    assert_removing_everything_restores(manager, spy, scenario)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios(max_nodes=4, max_steps=10, policy=POLICY_STATIC))
def test_invariants_hold_on_small_crowded_machines(scenario: Scenario) -> None:
    # Small machines make full nodes, groups and rejections frequent.
    manager, spy = run_checked(scenario)
    assert_removing_everything_restores(manager, spy, scenario)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios(max_nodes=4, max_steps=8))
def test_simulate_report_matches_the_manager(scenario: Scenario) -> None:
    flag_form = len(scenario.steps) % 2 == 0
    text = yaml.safe_dump(scenario_mapping(scenario, flag_form=flag_form), sort_keys=False)
    # the scenario file describes exactly the generated scenario
    assert load_scenario_text(text) == scenario

    report = simulate_text(text)
    assert json.loads(json.dumps(report)) == report  # plain JSON values only

    manager = MemoryManager(scenario.topology, scenario.config)
    expected_admitted: list[bool] = []
    for step in scenario.steps:
        result = apply_step(manager, step)
        if isinstance(result, AdmissionResult):
            expected_admitted.append(result.admitted)
    steps = report["steps"]
    assert isinstance(steps, list) and len(steps) == len(scenario.steps)
    assert [s["admitted"] for s in steps if s["action"] == "admit"] == expected_admitted
    assert report["state"] == to_checkpoint(manager.state)
    assert from_checkpoint(report["state"]) == manager.state


def test_generated_scenarios_reach_the_interesting_states() -> None:
    """Guard against generators that never reach groups, rejections or zero-size blocks."""
    seen: Counter[str] = Counter()

    @settings(max_examples=200, deadline=None, database=None, derandomize=True)
    @given(scenarios(max_nodes=4, max_steps=10, policy=POLICY_STATIC))
    def observe(scenario: Scenario) -> None:
        manager = MemoryManager(scenario.topology, scenario.config)
        spy = GroupedNodeSpy(manager)
        for step in scenario.steps:
            if isinstance(step, AdmitStep):
                result = manager.admit(step.pod)
                seen["admitted" if result.admitted else str(result.reason)] += 1
            elif isinstance(step, StartStep) and manager.start(step.pod_uid):
                seen["init released"] += 1
            blocks = [b for _, _, b in manager.state.iter_blocks()]
            if any(len(n.cells) > 1 for n in manager.state.machine.values()) and not spy.hit:
                seen["group, rules checked"] += 1
            if any(b.size == 0 and b.type != "memory" for b in blocks):
                seen["zero-size hugepages block"] += 1
        seen["grouped node spy hit" if spy.hit else "clean scenario"] += 1

    observe()
    for what in (
        "admitted",
        "TopologyAffinityError",
        "UnexpectedAdmissionError",
        "init released",
        "group, rules checked",
        "zero-size hugepages block",
    ):
        assert seen[what] > 0, (what, seen)
    # the group rules must stay checked in most scenarios
    assert seen["clean scenario"] > 4 * seen["grouped node spy hit"], seen


# -- kubelet behaviour that the properties above have to allow for -----------------------


def _two_nodes(policy: str = "best-effort") -> MemoryManager:
    topology = Topology((NumaNode(0, frozenset({0}), GI), NumaNode(1, frozenset({1}), GI)))
    config = Config(
        topology_manager_policy=policy, reserved_memory=(ReservedMemory(0, "memory", 256 * MI),)
    )
    return MemoryManager(topology, config)


def _pod(uid: str, *sizes: int, cpus: frozenset[int] | None = None) -> PodSpec:
    apps = tuple(
        ContainerSpec(f"app{i}", limits={"cpu": Fraction(1), "memory": Fraction(size)}, cpuset=cpus)
        for i, size in enumerate(sizes)
    )
    return PodSpec(uid, containers=apps)


def test_rejection_restores_group_sums_not_the_per_node_split() -> None:
    # kubelet's RemoveContainer walks the mask's nodes in order, so bytes taken
    # from node 1 come back to node 0 when node 0 holds reservations too.
    manager = _two_nodes("none")
    assert manager.admit(_pod("big", 1536 * MI)).admitted  # [0,1]: 768Mi + 768Mi
    before = manager.state.clone()
    result = manager.admit(_pod("late", 256 * MI, GI))  # app0 fits the group, app1 nowhere
    assert not result.admitted and result.reason == "UnexpectedAdmissionError"
    memory = {n: manager.state.machine[n].memory_map["memory"] for n in (0, 1)}
    assert [(t.reserved, t.free) for t in memory.values()] == [
        (512 * MI, 256 * MI),
        (1024 * MI, 0),
    ]
    assert manager.state.entries == before.entries
    assert_unchanged_by_rejection(before, manager.state)


def test_single_node_affinity_on_a_grouped_node() -> None:
    # Best-effort merges CPU [1] with the group's hint [0,1] into [1]; kubelet's
    # single- vs cross-NUMA check (isAffinityViolatingNUMAAllocations) skips single-node masks,
    # so node 1 serves a single-node block while it is in group [0,1].
    manager = _two_nodes()
    spy = GroupedNodeSpy(manager)
    assert manager.admit(_pod("big", 1536 * MI)).admitted
    assert not spy.hit
    result = manager.admit(_pod("small", 256 * MI, cpus=frozenset({1})))
    assert result.admitted
    (decision,) = result.containers
    assert decision.affinity == TopologyHint(0b10, False)
    assert decision.cpuset_mems == "1"
    assert spy.hit
    machine = manager.state.machine
    assert (machine[0].cells, machine[1].cells) == ([0, 1], [1])
    assert (machine[0].number_of_assignments, machine[1].number_of_assignments) == (1, 2)

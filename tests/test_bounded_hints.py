"""The bounded hint search (machines above EXHAUSTIVE_NODE_LIMIT) against the exhaustive walk.

Its promises: without a focus, the exhaustive masks of the narrowest width
that has any, and the same minimal width; hence the same default hint and
the same extension; with a focus (the other providers' hints), masks from
which the topology manager's merge picks what it picks from the full list.
Machine states come from real allocations through ``StaticPolicy`` (groups,
full nodes, init-container reuse) on up to 8 nodes, where the exhaustive
walk is still cheap enough to compare with.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from fractions import Fraction

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nri_plugin.engine.config import Config, ReservedMemory
from nri_plugin.engine.hint import ProviderHints, TopologyHint
from nri_plugin.engine.machine import build_machine_state
from nri_plugin.engine.manager import AdmissionResult, MemoryManager
from nri_plugin.engine.pod import GUARANTEED, ContainerSpec, PodSpec
from nri_plugin.engine.policy.base import AllocationError
from nri_plugin.engine.policy.bounded import (
    MergeFocus,
    _bounded_default,
    _bounded_extension,
    _bounded_masks,
)
from nri_plugin.engine.policy.exhaustive import _exhaustive_masks
from nri_plugin.engine.policy.static import StaticPolicy, _best_of, _hint_lists
from nri_plugin.engine.state import MEMORY, POLICY_STATIC, Block, MemoryState
from nri_plugin.engine.topology import NumaNode, Topology, hugepage_resource_name
from nri_plugin.engine.topologymanager import POLICIES, POLICY_BEST_EFFORT, NUMAInfo, merge
from nri_plugin.inputs.scenario import AdmitStep, Scenario, StartStep, Step
from tests.strategies import (
    GI,
    STEP,
    configs,
    draw_pod,
    exhaustive_node_limit,
    nonempty_masks,
    scenarios,
    topologies,
    topology_hints,
)

CURRENT = "current"


@dataclass
class MachineUnderTest:
    """A machine state after random allocations, mid-admission of the pod CURRENT."""

    topology: Topology
    policy: StaticPolicy
    state: MemoryState

    @property
    def reusable(self) -> dict[int, dict[str, int]]:
        return self.policy.reusable_memory(CURRENT)


@st.composite
def machines(draw: st.DrawFn) -> MachineUnderTest:
    topology = draw(topologies(1, 8))
    config = draw(configs(topology, policy=POLICY_STATIC))
    policy = StaticPolicy(build_machine_state(topology, config.reserved))
    state = policy.default_state()
    affinities = topology_hints(topology.node_ids)

    def allocate_some(uid: str, only_init: bool) -> None:
        pod = draw_pod(draw, topology, uid, qos=GUARANTEED)
        containers = pod.init_containers if only_init else pod.all_containers()
        for c in containers:
            try:
                policy.allocate(state, pod, c, draw(affinities))
            except AllocationError:
                return

    for i in range(draw(st.integers(0, 8))):
        uid = f"prior-{i}"
        allocate_some(uid, only_init=False)
        if draw(st.integers(0, 3)) == 0:  # some pods are gone again: dissolved groups
            for name in list(state.entries.get(uid, {})):
                policy.remove_container(state, uid, name)
    # the pod being admitted may have allocated its init containers already (reuse)
    allocate_some(CURRENT, only_init=True)
    return MachineUnderTest(topology, policy, state)


@st.composite
def requests(draw: st.DrawFn, topology: Topology) -> dict[str, int]:
    """1-3 memory types; from zero up to more than any one node has."""
    types = [MEMORY] + [hugepage_resource_name(s) for s in topology.hugepage_sizes]
    chosen = draw(st.lists(st.sampled_from(types), min_size=1, unique=True))
    return {
        t: draw(st.integers(0, 40 if t == MEMORY else 8)) * (STEP if t == MEMORY else 512 << 20)
        for t in chosen
    }


@st.composite
def merge_foci(draw: st.DrawFn, topology: Topology) -> MergeFocus:
    """What the memory hints get merged with: a CPU hint and a device provider, or nothing."""
    ids = topology.node_ids
    cpu: ProviderHints = None
    if draw(st.booleans()):
        cpu = {"cpu": [TopologyHint(draw(nonempty_masks(ids)), True)]}
    devices: ProviderHints = None
    kind = draw(st.integers(0, 3))
    if kind == 1:
        devices = {}
    elif kind >= 2:
        devices = {
            f"dev{i}": draw(st.none() | st.lists(topology_hints(ids), max_size=3))
            for i in range(draw(st.integers(1, 2)))
        }
    closest = topology.distances is not None and draw(st.booleans())
    numa = NUMAInfo(ids, topology.distances)
    return MergeFocus(draw(st.sampled_from(POLICIES)), (cpu, devices), numa, closest)


def _width(mask: int) -> int:
    return mask.bit_count()


def _best_containing(hints: list[TopologyHint], mask: int) -> TopologyHint | None:
    """kubelet's extension over the full list: the best hint containing ``mask``."""
    return _best_of([h for h in hints if h.mask is not None and h.mask & mask == mask])


def _merged(focus: MergeFocus, memory: ProviderHints) -> tuple[TopologyHint, bool]:
    cpu, devices = focus.others
    return merge(focus.policy, [cpu, memory, devices], focus.numa, focus.prefer_closest)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(machines(), st.data())
def test_bounded_search_answers_like_the_exhaustive_walk(
    m: MachineUnderTest, data: st.DataObject
) -> None:
    machine = m.state.machine
    ids = sorted(machine)
    reusable = m.reusable
    for _ in range(3):
        requested = data.draw(requests(m.topology))
        exhaustive, exhaustive_min = _exhaustive_masks(machine, ids, requested, reusable)
        full = _hint_lists(exhaustive, exhaustive_min, requested)
        full_list = next(iter(full.values()), [])

        # without a focus: the narrowest width that has any hint, all of it
        bounded, bounded_min = _bounded_masks(machine, ids, requested, reusable)
        assert bounded_min == exhaustive_min
        narrowest = min((_width(mask) for mask in exhaustive), default=0)
        assert bounded == [mask for mask in exhaustive if _width(mask) == narrowest]

        # the default hint (kubelet's getDefaultHint)
        exhaustive_default = m.policy._find_best(full)
        assert _bounded_default(machine, requested, reusable) == exhaustive_default

        # the extension of an affinity without enough free memory (extendTopologyManagerHint)
        for mask in {data.draw(nonempty_masks(tuple(ids))), *(exhaustive[:1])}:
            expected = _best_containing(full_list, mask)
            assert _bounded_extension(machine, requested, reusable, mask) == expected, mask

        # with a focus: the merge picks what it picks from the exhaustive list
        focus = data.draw(merge_foci(m.topology))
        focused, focused_min = _bounded_masks(machine, ids, requested, reusable, focus)
        assert focused_min == exhaustive_min
        assert set(focused) <= set(exhaustive)
        hints = _hint_lists(focused, focused_min, requested)
        assert _merged(focus, dict(hints) or None) == _merged(focus, dict(full) or None), focus


# -- whole admissions --------------------------------------------------------------------
#
# With EXHAUSTIVE_NODE_LIMIT at 0 every hint calculation, default hint and
# extension goes through the bounded search; the merge is handed the focused
# hints. Admission decisions (affinity, allocations) and states must not change.

Outcome = tuple[object, ...]


def _apply(manager: MemoryManager, step: Step) -> Outcome:
    if isinstance(step, AdmitStep):
        r: AdmissionResult = manager.admit(step.pod)
        return (
            r.admitted,
            r.reason,
            tuple((d.name, d.affinity, d.allocations) for d in r.containers),
        )
    if isinstance(step, StartStep):
        return (manager.start(step.pod_uid),)
    if step.container is None:
        return (manager.remove_pod(step.pod_uid),)
    return (manager.remove_container(step.pod_uid, step.container),)


def first_divergence(scenario: Scenario) -> tuple[int, Outcome, Outcome] | None:
    """Run the scenario with the exhaustive and with the bounded search side by side.

    Returns the first step whose outcome (admission, affinities, allocations)
    or resulting state differ, with both outcomes; None when they never do.
    """
    exhaustive = MemoryManager(scenario.topology, scenario.config)
    bounded = MemoryManager(scenario.topology, scenario.config)
    for i, step in enumerate(scenario.steps):
        a = _apply(exhaustive, step)
        with exhaustive_node_limit(0):
            b = _apply(bounded, step)
        if a != b or exhaustive.state != bounded.state:
            return i, a, b
    return None


def _divergence_counts(policy: str, examples: int) -> Counter[str]:
    counts: Counter[str] = Counter()

    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(
        scenarios(max_nodes=8, max_steps=8, policy=POLICY_STATIC, topology_manager_policy=policy)
    )
    def run(scenario: Scenario) -> None:
        counts["cases"] += 1
        if first_divergence(scenario) is not None:
            counts["differ"] += 1

    run()
    return counts


@pytest.mark.parametrize("policy", POLICIES)
def test_admissions_are_the_same_with_the_bounded_search(policy: str) -> None:
    counts = _divergence_counts(policy, 60)
    assert counts == {"cases": 60}, counts


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios(max_nodes=8, max_steps=8, policy=POLICY_STATIC))
def test_admissions_are_the_same_with_the_bounded_search_shrinking(scenario: Scenario) -> None:
    # the same property with random (shrinkable) examples, every policy and scope
    assert first_divergence(scenario) is None


def test_best_effort_picks_the_wide_hint_with_the_bounded_search_too() -> None:
    # A CPU set on both nodes and a request that fits one node: memory hints
    # [0], [1] preferred and [0,1] not; merged with CPU [0,1] the best
    # non-preferred merge has the CPU list's width 2, so [0,1] (HintMerger.compare).
    # A search that only kept the narrowest hints would give [0].
    topology = Topology((NumaNode(0, frozenset({0}), 4 * GI), NumaNode(1, frozenset({1}), 4 * GI)))
    config = Config(
        topology_manager_policy=POLICY_BEST_EFFORT,
        reserved_memory=(ReservedMemory(0, MEMORY, GI),),
    )
    app = ContainerSpec(
        "app", limits={"cpu": Fraction(2), MEMORY: Fraction(GI)}, cpuset=frozenset({0, 1})
    )
    pod = PodSpec("p", containers=(app,))
    for limit in (8, 0):
        manager = MemoryManager(topology, config)
        with exhaustive_node_limit(limit):
            result = manager.admit(pod)
        (decision,) = result.containers
        assert decision.affinity == TopologyHint(0b11, False), limit
        assert decision.allocations == (Block((0, 1), MEMORY, GI),), limit


def divergence_report(examples: int = 300) -> Mapping[str, float]:
    """Fraction of random scenarios whose admissions differ, per topology manager policy.

    Not a test: ``python -c "from tests.test_bounded_hints import divergence_report as r;
    print(r())"`` prints the numbers.
    """
    out = {}
    for policy in POLICIES:
        counts = _divergence_counts(policy, examples)
        out[policy] = counts["differ"] / max(1, counts["cases"])
    return out

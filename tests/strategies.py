"""Hypothesis strategies for the policy-engine property and differential tests.

Everything generated here is *valid* input (a config that passes
``validate_for_machine``, pods that the scenario parser accepts), so that a
failing property points at the engine, not at the generator. Sizes are drawn
on a coarse grid (256Mi steps, whole pages) so that requests often fit
exactly, fail by one step, or tie between nodes: the interesting edges.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import replace
from fractions import Fraction
from functools import cache
from typing import Any

from hypothesis import strategies as st

from nri_plugin.engine.bitmask import format_cpulist, mask_of, nodes_of
from nri_plugin.engine.config import (
    OPTION_PREFER_CLOSEST,
    SIGNAL_MEMORY_AVAILABLE,
    TOPOLOGY_POLICIES,
    TOPOLOGY_SCOPES,
    Config,
    ReservedMemory,
)
from nri_plugin.engine.hint import DeviceHints, TopologyHint
from nri_plugin.engine.pod import (
    BEST_EFFORT,
    BURSTABLE,
    CPU,
    GUARANTEED,
    MEMORY,
    ContainerSpec,
    PodSpec,
)
from nri_plugin.engine.policy import static
from nri_plugin.engine.state import POLICY_NONE, POLICY_STATIC
from nri_plugin.engine.topology import NumaNode, Topology, hugepage_resource_name
from nri_plugin.inputs.config import validate_for_machine
from nri_plugin.inputs.scenario import (
    DEVICES_RESOURCE,
    AdmitStep,
    RemoveStep,
    Scenario,
    StartStep,
    Step,
)
from nri_plugin.inputs.topology import topology_to_mapping as _topology_to_mapping

MI = 1 << 20
GI = 1 << 30
STEP = 256 * MI
PAGE_SIZES = (2 * MI, GI)
# the grid on which pools, reservations and requests of each page size are drawn
_POOL_UNIT = {2 * MI: 512 * MI, GI: GI}
EVICTION_DEFAULT = 100 * MI

# Strategies are built once and reused: hypothesis validates every new strategy
# object, which otherwise costs more than the tests themselves.
BOOLS = st.booleans()


@cache
def ints(low: int, high: int) -> st.SearchStrategy[int]:
    return st.integers(low, high)


@cache
def one_of(values: tuple[Any, ...]) -> st.SearchStrategy[Any]:
    return st.sampled_from(values)


def _pick(draw: st.DrawFn, values: Sequence[Any]) -> Any:
    return values[draw(ints(0, len(values) - 1))]


# -- topologies ----------------------------------------------------------------


@st.composite
def distance_matrices(draw: st.DrawFn, ids: Sequence[int]) -> dict[tuple[int, int], int]:
    """A symmetric SLIT matrix: 10 on the diagonal, 11..40 elsewhere (ties are likely)."""
    out: dict[tuple[int, int], int] = {}
    for i, a in enumerate(ids):
        out[(a, a)] = 10
        for b in ids[i + 1 :]:
            d = draw(one_of((11, 12, 20, 21, 31, 40)))
            out[(a, b)] = out[(b, a)] = d
    return out


@st.composite
def node_id_sets(draw: st.DrawFn, min_nodes: int = 1, max_nodes: int = 8) -> tuple[int, ...]:
    """NUMA node ids: usually 0..n-1, sometimes with holes (offlined nodes)."""
    count = draw(ints(min_nodes, max_nodes))
    if draw(ints(0, 3)) == 0:
        ids = draw(st.sets(ints(0, count + 3), min_size=count, max_size=count))
        return tuple(sorted(ids))
    return tuple(range(count))


@st.composite
def topologies(
    draw: st.DrawFn, min_nodes: int = 1, max_nodes: int = 8, distances: bool | None = None
) -> Topology:
    """Machines of 1-8 nodes, CPU-less nodes included, random memory and hugepage pools.

    Every node has at least 1Gi of conventional memory besides its pools, so
    that a reservation always fits; every node lists every page size (0 where
    it has none), as cadvisor does.
    """
    ids = draw(node_id_sets(min_nodes, max_nodes))
    sizes = sorted(draw(st.sets(one_of(PAGE_SIZES))))
    nodes = []
    next_cpu = 0
    for node_id in ids:
        pools = {size: draw(ints(0, 3)) * _POOL_UNIT[size] for size in sizes}
        conventional = draw(ints(1, 6)) * GI
        ncpus = 0 if draw(ints(0, 3)) == 0 else draw(ints(1, 3))
        cpus = frozenset(range(next_cpu, next_cpu + ncpus))
        next_cpu += ncpus
        nodes.append(NumaNode(node_id, cpus, conventional + sum(pools.values()), pools))
    with_distances = draw(BOOLS) if distances is None else distances
    matrix = draw(distance_matrices(ids)) if with_distances else None
    return Topology(tuple(nodes), matrix)


# -- configs -------------------------------------------------------------------


@st.composite
def configs(
    draw: st.DrawFn,
    topology: Topology,
    policy: str | None = None,
    topology_manager_policy: str | None = None,
) -> Config:
    """A config that ``validate_for_machine`` accepts for ``topology``."""
    if policy is None:
        policy = POLICY_NONE if draw(ints(0, 7)) == 0 else POLICY_STATIC
    if topology_manager_policy is None:
        topology_manager_policy = draw(one_of(TOPOLOGY_POLICIES))
    scope = draw(one_of(TOPOLOGY_SCOPES))
    prefer_closest = topology.distances is not None and draw(BOOLS)

    reserved: list[ReservedMemory] = []
    must_reserve = draw(one_of(topology.node_ids))
    for node in topology.nodes:
        low = 1 if node.id == must_reserve else 0
        memory = draw(ints(low, 4)) * STEP
        if memory:
            reserved.append(ReservedMemory(node.id, MEMORY, memory))
        for size, total in sorted(node.hugepages.items()):
            unit = _POOL_UNIT[size]
            pages = draw(ints(0, total // unit)) if draw(ints(0, 3)) == 0 else 0
            if pages:
                reserved.append(ReservedMemory(node.id, hugepage_resource_name(size), pages * unit))

    kube: dict[str, int] | None = None
    system: dict[str, int] | None = None
    eviction: dict[str, str] | None = None
    if draw(BOOLS):
        # the Node Allocatable sum check: kube + system + eviction == sum(reservedMemory)
        sums: dict[str, int] = {}
        for r in reserved:
            sums[r.type] = sums.get(r.type, 0) + r.size
        kube = {t: s for t, s in sums.items() if t != MEMORY}
        eviction_memory = EVICTION_DEFAULT if draw(BOOLS) else 0
        if eviction_memory == 0:
            eviction = {}
        elif draw(BOOLS):
            eviction = {SIGNAL_MEMORY_AVAILABLE: "100Mi"}  # else absent: 100Mi by default
        rest = sums[MEMORY] - eviction_memory
        kube_memory = draw(ints(0, rest // STEP)) * STEP
        kube[MEMORY] = kube_memory
        system = {MEMORY: rest - kube_memory}

    config = Config(
        policy=policy,
        topology_manager_policy=topology_manager_policy,
        topology_manager_scope=scope,
        prefer_closest_numa_nodes=prefer_closest,
        reserved_memory=tuple(reserved),
        kube_reserved=kube,
        system_reserved=system,
        eviction_hard=eviction,
    )
    validate_for_machine(config, topology)  # a generator bug if this raises
    return config


# -- hints, pods -----------------------------------------------------------------


@cache
def nonempty_masks(node_ids: tuple[int, ...]) -> st.SearchStrategy[int]:
    return st.sets(one_of(node_ids), min_size=1).map(mask_of)


@cache
def topology_hints(node_ids: tuple[int, ...]) -> st.SearchStrategy[TopologyHint]:
    """Any hint a provider could give: a mask (or none) and a preferred flag."""
    return st.builds(TopologyHint, st.none() | nonempty_masks(node_ids), BOOLS)


@cache
def hint_lists(node_ids: tuple[int, ...]) -> st.SearchStrategy[list[TopologyHint]]:
    return st.lists(topology_hints(node_ids), max_size=3)


@cache
def cpu_sets(cpus: tuple[int, ...]) -> st.SearchStrategy[set[int]]:
    return st.sets(one_of(cpus), min_size=1, max_size=3)


_CPU_QUANTITIES: st.SearchStrategy[Fraction] = st.sampled_from(
    (Fraction(1, 2), Fraction(1), Fraction(2))
)


def _cpu_quantity(draw: st.DrawFn) -> Fraction:
    return draw(_CPU_QUANTITIES)


def draw_container(
    draw: st.DrawFn,
    topology: Topology,
    name: str,
    qos: str,
    *,
    init: bool = False,
    restartable: bool = False,
    needs_burstable: bool = False,
) -> ContainerSpec:
    """One container whose resources make its pod ``qos`` (together with its siblings).

    Guaranteed: cpu and memory limits > 0, requests equal or omitted (API
    defaulting). Burstable: requests below the limits or no limits.
    BestEffort: no cpu or memory at all. The first two may request hugepages of
    the machine's sizes, zero-sized ones included, always with a limit equal to the
    request (the API server refuses anything else, and hugepages without cpu or memory).
    """
    requests: dict[str, Fraction] = {}
    limits: dict[str, Fraction] = {}
    if qos == GUARANTEED:
        limits[CPU] = _cpu_quantity(draw)
        limits[MEMORY] = Fraction(draw(ints(1, 16)) * STEP)
        if draw(BOOLS):
            requests.update(limits)  # else: requests default to the limits
    elif qos == BURSTABLE:
        requests[CPU] = _cpu_quantity(draw)
        requests[MEMORY] = Fraction(draw(ints(1, 16)) * STEP)
        if needs_burstable or draw(BOOLS):
            if draw(BOOLS):
                limits[MEMORY] = requests[MEMORY] + STEP
        else:
            limits.update(requests)
    for size in topology.hugepage_sizes if qos != BEST_EFFORT else ():
        kind = draw(ints(0, 3))
        name_ = hugepage_resource_name(size)
        if kind == 1:
            # a zero-size block that still counts as an assignment
            requests[name_] = limits[name_] = Fraction(0)
        elif kind >= 2:
            amount = Fraction(draw(ints(1, 3)) * _POOL_UNIT[size])
            requests[name_] = amount
            limits[name_] = amount
    cpuset = None
    all_cpus = sorted(set().union(*(n.cpus for n in topology.nodes)))
    if len(all_cpus) > 0 and draw(BOOLS):
        cpuset = frozenset(draw(cpu_sets(tuple(all_cpus))))
    device_hints = None
    if draw(ints(0, 3)) == 0:
        device_hints = draw_device_hints(draw, topology.node_ids)
    return ContainerSpec(
        name=name,
        requests=requests,
        limits=limits,
        init=init,
        restartable=restartable,
        cpuset=cpuset,
        device_hints=device_hints,
    )


DEVICE_RESOURCES = ("devices", "example.com/gpu", "example.com/nic")


def draw_device_hints(draw: st.DrawFn, node_ids: tuple[int, ...]) -> DeviceHints:
    """The device manager's hints for a container: simulate's list form (one resource,
    ``devices``) or a mapping of one or two resources, a resource without topology
    (``None``) among them."""
    if draw(BOOLS):
        return {DEVICES_RESOURCE: tuple(draw(hint_lists(node_ids)))}
    names = draw(st.lists(one_of(DEVICE_RESOURCES), min_size=1, max_size=2, unique=True))
    return {
        name: None if draw(ints(0, 4)) == 0 else tuple(draw(hint_lists(node_ids))) for name in names
    }


@st.composite
def pods(draw: st.DrawFn, topology: Topology, uid: str, qos: str | None = None) -> PodSpec:
    """A pod of 0-2 init containers (regular or sidecar) and 1-3 app containers."""
    return draw_pod(draw, topology, uid, qos)


def draw_pod(draw: st.DrawFn, topology: Topology, uid: str, qos: str | None = None) -> PodSpec:
    """``pods`` for use inside other composite strategies (no strategy object per pod)."""
    if qos is None:
        qos = draw(one_of((GUARANTEED, GUARANTEED, GUARANTEED, BURSTABLE, BEST_EFFORT)))
    n_init = draw(ints(0, 2))
    n_app = draw(ints(1, 3))
    init = tuple(
        draw_container(draw, topology, f"init{i}", qos, init=True, restartable=draw(BOOLS))
        for i in range(n_init)
    )
    apps = tuple(
        draw_container(draw, topology, f"app{i}", qos, needs_burstable=i == 0) for i in range(n_app)
    )
    return PodSpec(uid=uid, name=uid, init_containers=init, containers=apps)


# -- scenarios -------------------------------------------------------------------


@st.composite
def step_lists(
    draw: st.DrawFn, topology: Topology, min_steps: int = 1, max_steps: int = 12
) -> tuple[Step, ...]:
    """Admit (mostly), start, remove pod, remove container, on earlier or unknown pods."""
    steps: list[Step] = []
    admitted: list[PodSpec] = []
    for _ in range(draw(ints(min_steps, max_steps))):
        kind = draw(one_of(("admit", "admit", "start", "remove", "container")))
        if kind == "admit" or not admitted:
            pod = draw_pod(draw, topology, f"pod-{len(admitted)}")
            admitted.append(pod)
            steps.append(AdmitStep(pod))
            if len(pod.init_containers) > 0 and draw(BOOLS):
                steps.append(StartStep(pod.uid))  # as kubelet would, right away
            continue
        # mostly the latest pod, so that starts and removals meet admitted pods
        pod = admitted[-1] if draw(BOOLS) else _pick(draw, admitted)
        if kind == "start":
            steps.append(StartStep(pod.uid))
        elif kind == "remove":
            steps.append(RemoveStep(pod.uid, None))
        else:
            names = [c.name for c in pod.all_containers()] + ["ghost"]
            steps.append(RemoveStep(pod.uid, _pick(draw, names)))
    return tuple(steps)


@st.composite
def scenarios(
    draw: st.DrawFn,
    min_nodes: int = 1,
    max_nodes: int = 8,
    max_steps: int = 12,
    policy: str | None = None,
    topology_manager_policy: str | None = None,
) -> Scenario:
    topology = draw(topologies(min_nodes, max_nodes))
    config = draw(configs(topology, policy, topology_manager_policy))
    steps = draw(step_lists(topology, max_steps=max_steps))
    return Scenario(topology, config, None, steps)


# -- rendering as a scenario file --------------------------------------------------


def _quantity(value: Fraction) -> str:
    if value.denominator == 1:
        return str(value.numerator)
    millis = value * 1000
    assert millis.denominator == 1, value
    return f"{millis.numerator}m"


def _resource_list(values: Mapping[str, Fraction]) -> dict[str, str]:
    return {name: _quantity(v) for name, v in values.items()}


def _hint_mapping(h: TopologyHint) -> dict[str, object]:
    return {"nodes": None if h.mask is None else nodes_of(h.mask), "preferred": h.preferred}


def _device_hints_mapping(hints: DeviceHints) -> object:
    """The list form for one resource named ``devices``, else the mapping form."""
    if set(hints) == {DEVICES_RESOURCE} and hints[DEVICES_RESOURCE] is not None:
        return [_hint_mapping(h) for h in hints[DEVICES_RESOURCE] or ()]
    return {
        name: None if lst is None else [_hint_mapping(h) for h in lst]
        for name, lst in hints.items()
    }


def _container_mapping(c: ContainerSpec) -> dict[str, object]:
    out: dict[str, object] = {"name": c.name}
    resources: dict[str, object] = {}
    if c.requests:
        resources["requests"] = _resource_list(c.requests)
    if c.limits:
        resources["limits"] = _resource_list(c.limits)
    if resources:
        out["resources"] = resources
    if c.restartable:
        out["restartPolicy"] = "Always"
    if c.cpuset is not None:
        out["cpuset"] = format_cpulist(c.cpuset)
    if c.device_hints is not None:
        out["deviceHints"] = _device_hints_mapping(c.device_hints)
    return out


def _pod_mapping(pod: PodSpec) -> dict[str, object]:
    out: dict[str, object] = {"pod": {"uid": pod.uid, "name": pod.name}}
    if pod.init_containers:
        out["initContainers"] = [_container_mapping(c) for c in pod.init_containers]
    out["containers"] = [_container_mapping(c) for c in pod.containers]
    return out


def _config_mapping(config: Config, flag_form: bool) -> dict[str, object]:
    out: dict[str, object] = {
        "policy": config.policy.lower(),
        "topologyManagerPolicy": config.topology_manager_policy,
        "topologyManagerScope": config.topology_manager_scope,
    }
    if config.prefer_closest_numa_nodes:
        out["topologyManagerPolicyOptions"] = {OPTION_PREFER_CLOSEST: "true"}
    by_node: dict[int, dict[str, str]] = {}
    for r in config.reserved_memory:
        by_node.setdefault(r.numa_node, {})[r.type] = str(r.size)
    if flag_form:
        out["reservedMemory"] = [
            f"{n}:" + ",".join(f"{t}={v}" for t, v in limits.items())
            for n, limits in by_node.items()
        ]
    else:
        out["reservedMemory"] = [{"numaNode": n, "limits": lim} for n, lim in by_node.items()]
    for key, part in (
        ("kubeReserved", config.kube_reserved),
        ("systemReserved", config.system_reserved),
    ):
        if part is not None:
            out[key] = {name: str(v) for name, v in part.items()}
    if config.eviction_hard is not None:
        out["evictionHard"] = dict(config.eviction_hard)
    return out


def scenario_mapping(scenario: Scenario, *, flag_form: bool = False) -> dict[str, Any]:
    """``scenario`` as the YAML document of docs/simulate.md (steps, config, topology)."""
    steps: list[dict[str, object]] = []
    for step in scenario.steps:
        if isinstance(step, AdmitStep):
            steps.append({"admit": _pod_mapping(step.pod)})
        elif isinstance(step, StartStep):
            steps.append({"start": {"pod": step.pod_uid}})
        else:
            body: dict[str, object] = {"pod": step.pod_uid}
            if step.container is not None:
                body["container"] = step.container
            steps.append({"remove": body})
    return {
        "topology": _topology_to_mapping(scenario.topology),
        "config": _config_mapping(scenario.config, flag_form),
        "steps": steps,
    }


def with_steps(scenario: Scenario, steps: Sequence[Step]) -> Scenario:
    return replace(scenario, steps=tuple(steps))


# -- the bounded hint search switch ------------------------------------------------


@contextmanager
def exhaustive_node_limit(limit: int) -> Iterator[None]:
    """Run with ``static.EXHAUSTIVE_NODE_LIMIT`` set to ``limit`` (0: always the bounded search)."""
    saved = static.EXHAUSTIVE_NODE_LIMIT
    static.EXHAUSTIVE_NODE_LIMIT = limit
    try:
        yield
    finally:
        static.EXHAUSTIVE_NODE_LIMIT = saved

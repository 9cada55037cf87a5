"""Pods with pod-level resources (KEP-2837) through the simulator and the engine.

kubelet's default (``PodLevelResourceManagers`` off; our ``podLevelResources:
ignore``) admits such pods without pinning anything
(``pkg/kubelet/cm/memorymanager/policy_static.go``: ``Allocate``,
``GetTopologyHints`` and ``GetPodTopologyHints`` return early when
``IsPodLevelResourcesSet``). ``podLevelResources: managers`` is KEP-5526
(``keps/sig-node/5526-pod-level-resource-managers/README.md``): its examples
are the cases below, cited by section; the KEP writes them for CPUs and says
"the memory behavior is analogous", so CPUs become Gi of memory here.
"""

from __future__ import annotations

import copy
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nri_plugin.engine.config import POD_LEVEL_MANAGERS, Config, ReservedMemory
from nri_plugin.engine.manager import EMPTY_POD_SHARED_POOL_ERROR, MemoryManager
from nri_plugin.engine.pod import (
    BURSTABLE,
    GUARANTEED,
    ContainerSpec,
    PodSpec,
    default_pod_level_resources,
    empty_pod_shared_pool,
)
from nri_plugin.engine.restore import validate_restored
from nri_plugin.engine.topology import NumaNode, Topology
from nri_plugin.errors import ConfigError, ScenarioError, StateError
from nri_plugin.inputs.config import parse_config
from nri_plugin.persist.format import dumps, from_checkpoint, parse_json, to_checkpoint
from tests.helpers import GI, node, simulate, table

# -- builders -------------------------------------------------------------------------


def res(memory: str | None = None, cpu: str | None = None, **more: str) -> dict[str, Any]:
    """Equal requests and limits (a Guaranteed container's, or a pod's)."""
    values = {k: v for k, v in (("cpu", cpu), ("memory", memory)) if v is not None}
    values.update({k.replace("_", "-"): v for k, v in more.items()})
    return {"requests": dict(values), "limits": dict(values)}


def ctr(name: str, resources: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"name": name, **extra}
    if resources is not None:
        out["resources"] = resources
    return out


def pod(
    uid: str,
    pod_resources: dict[str, Any] | None,
    *containers: dict[str, Any],
    init: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {"pod": {"uid": uid}, "containers": list(containers)}
    if pod_resources is not None:
        body["resources"] = pod_resources
    if init:
        body["initContainers"] = init
    return {"admit": body}


def scenario(
    *steps: dict[str, Any],
    mode: str = "managers",
    scope: str = "pod",
    tm: str = "restricted",
    nodes: tuple[str, ...] = ("10Gi", "10Gi"),
) -> dict[str, Any]:
    return {
        "topology": {"nodes": [node(i, m, f"{4 * i}-{4 * i + 3}") for i, m in enumerate(nodes)]},
        "config": {
            "topologyManagerPolicy": tm,
            "topologyManagerScope": scope,
            "podLevelResources": mode,
            "reservedMemory": [{"numaNode": 0, "limits": {"memory": "1Gi"}}],
        },
        "steps": list(steps),
    }


def containers_of(report: dict[str, Any], step: int = 0) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in report["steps"][step]["containers"]}


def block(size: int, nodes: list[int], type_: str = "memory") -> dict[str, Any]:
    return {"type": type_, "size": size, "numaAffinity": nodes}


# KEP-5526 "Pod Scope" examples: pod.spec.resources of 4 and of 5
POD_4 = res("4Gi", "4")
POD_5 = res("5Gi", "5")


# -- API defaulting and QoS (KEP-2837, pkg/apis/core/v1/defaults.go) -------------------


def test_pod_limit_alone_defaults_the_pod_request_and_makes_the_pod_guaranteed() -> None:
    # KEP-2837 "Clarifying Tricky Cases" 1: no container requests, so the pod-level
    # request defaults to the pod-level limit
    report = simulate(
        scenario(
            pod("p", {"limits": {"cpu": "4", "memory": "4Gi"}}, ctr("a"), ctr("b")),
            mode="ignore",
        )
    )
    assert report["steps"][0]["qosClass"] == GUARANTEED


def test_pod_request_defaults_to_the_containers_aggregate_when_they_request() -> None:
    # KEP-2837 tricky case 3: the pod-level request is the containers' sum (defaultPodRequests),
    # not the pod-level limit: the pod is Burstable
    body = pod(
        "p",
        {"limits": {"cpu": "4", "memory": "4Gi"}},
        ctr("a", {"requests": {"cpu": "1", "memory": "1Gi"}}),
        ctr("b", {"requests": {"cpu": "1", "memory": "1Gi"}}),
    )
    assert simulate(scenario(body, mode="ignore"))["steps"][0]["qosClass"] == BURSTABLE


def test_pod_request_above_the_pod_limit_after_defaulting_is_refused() -> None:
    # KEP-2837 tricky case 2: container limits 3Gi + 3Gi default their requests; the
    # pod-level request (their sum, 6Gi) exceeds the pod-level limit of 5Gi
    body = pod(
        "p",
        {"limits": {"cpu": "4", "memory": "5Gi"}},
        ctr("a", {"limits": {"cpu": "1", "memory": "3Gi"}}),
        ctr("b", {"limits": {"cpu": "1", "memory": "3Gi"}}),
    )
    with pytest.raises(ScenarioError, match=r"resources.requests.memory: 6442450944 is above"):
        simulate(scenario(body))


def test_pod_limits_default_from_containers_when_every_container_limits() -> None:
    # defaultPodLimits: pod-level requests only, every container limits cpu and memory
    apps = (
        ContainerSpec("a", limits={"cpu": Fraction(1), "memory": Fraction(GI)}),
        ContainerSpec("b", limits={"cpu": Fraction(1), "memory": Fraction(GI)}),
    )
    requests, limits = default_pod_level_resources(
        (), apps, {"cpu": Fraction(2), "memory": Fraction(2 * GI)}, {}
    )
    assert limits == {"cpu": 2, "memory": 2 * GI}
    assert requests == {"cpu": 2, "memory": 2 * GI}
    # one container without a memory limit: no pod-level memory limit is derived
    apps = (apps[0], ContainerSpec("b", limits={"cpu": Fraction(1)}))
    _, limits = default_pod_level_resources((), apps, {"cpu": Fraction(2)}, {})
    assert limits == {"cpu": 2}


def test_pod_hugepage_limit_defaults_from_the_containers() -> None:
    # defaultHugePagePodLimits, then defaultPodRequests takes the limit as the request
    apps = (ContainerSpec("a", limits={"hugepages-2Mi": Fraction(8 << 20)}),)
    requests, limits = default_pod_level_resources(
        (), apps, {}, {"cpu": Fraction(1), "memory": Fraction(GI)}
    )
    assert limits["hugepages-2Mi"] == 8 << 20
    assert requests["hugepages-2Mi"] == 8 << 20


@pytest.mark.parametrize(
    ("pod_resources", "containers", "message"),
    [
        (
            {"limits": {"ephemeral-storage": "1Gi"}},
            [ctr("a")],
            r"resources.limits.ephemeral-storage: not supported at pod level",
        ),
        (
            POD_4,
            [ctr("a", {"requests": {"memory": "1Gi"}, "limits": {"memory": "5Gi"}})],
            r"resources.limits.memory: 4294967296 is below container a's limit 5368709120",
        ),
        (
            POD_4,
            [ctr("a", res("3Gi", "1")), ctr("b", res("2Gi", "1"))],
            r"resources.requests.memory: 4294967296 is below the containers' aggregate",
        ),
    ],
)
def test_api_server_validation_of_pod_level_resources(
    pod_resources: dict[str, Any], containers: list[dict[str, Any]], message: str
) -> None:
    with pytest.raises(ScenarioError, match=message):
        simulate(scenario(pod("p", pod_resources, *containers)))


def test_pod_level_resources_without_cpu_and_memory_limits_are_not_guaranteed() -> None:
    body = pod("p", res("4Gi"), ctr("a"))  # memory only: ComputePodQOS wants both limits
    assert simulate(scenario(body, mode="ignore"))["steps"][0]["qosClass"] == BURSTABLE


def test_config_mode_is_validated() -> None:
    assert parse_config({"podLevelResources": "managers"}).pod_level_managers
    assert not parse_config({}).pod_level_managers
    with pytest.raises(ConfigError, match=r"podLevelResources: unknown mode: \"both\""):
        parse_config({"podLevelResources": "both"})
    with pytest.raises(ValueError, match="pod_level_resources"):
        Config(pod_level_resources="sometimes")


# -- kubelet's default: left unpinned ----------------------------------------------------


@pytest.mark.parametrize("scope", ["container", "pod"])
def test_default_mode_leaves_a_guaranteed_pod_level_pod_unpinned(scope: str) -> None:
    # with and without container limits: IsPodLevelResourcesSet is all kubelet asks
    report = simulate(
        scenario(
            pod("shared", POD_4, ctr("a"), ctr("b")),
            pod("limited", POD_4, ctr("a", res("2Gi", "2")), ctr("b", res("2Gi", "2"))),
            mode="ignore",
            scope=scope,
        )
    )
    for step in report["steps"]:
        assert step["admitted"] is True
        assert step["qosClass"] == GUARANTEED
        assert "podAllocations" not in step
        for c in step["containers"]:
            assert (c["hints"], c["cpusetMems"], c["allocations"]) == ({}, "", [])
    assert "entries" not in report["state"]
    assert "podEntries" not in report["state"]
    assert table(report, 0)["reserved"] == 0


# -- KEP-5526, pod scope -----------------------------------------------------------------


def test_pod_scope_example_1_shared_pool_only() -> None:
    # "Example 1: Shared Pool Only": one hint for the 4Gi budget, every container in it
    report = simulate(scenario(pod("p", POD_4, ctr("c1"), ctr("c2"), ctr("c3"))))
    step = report["steps"][0]
    assert step["admitted"] is True
    assert step["podAllocations"] == [block(4 * GI, [0])]
    for c in step["containers"]:
        assert c["hints"]["memory"][0] == {"nodes": [0], "preferred": True}
        assert (c["cpusetMems"], c["allocations"], c["sharedPool"]) == ("0", [], True)
    assert table(report, 0)["reserved"] == 4 * GI
    assert report["state"]["podEntries"] == {"p": {"memoryBlocks": [block(4 * GI, [0])]}}
    assert "entries" not in report["state"]  # the pool stays out of the legacy entries


def test_pod_scope_example_2_mixed_exclusive_and_shared() -> None:
    # "Example 2: Mixed Allocation": container-1's 2Gi slice is carved from the 4Gi
    # budget, the two others share the remaining 2Gi; the machine counts 4Gi, not 6Gi
    report = simulate(scenario(pod("p", POD_4, ctr("c1", res("2Gi", "2")), ctr("c2"), ctr("c3"))))
    c = containers_of(report)
    assert c["c1"]["allocations"] == [block(2 * GI, [0])]
    assert "sharedPool" not in c["c1"]
    assert c["c2"]["sharedPool"] and c["c3"]["sharedPool"]
    assert {x["cpusetMems"] for x in c.values()} == {"0"}
    assert table(report, 0)["reserved"] == 4 * GI
    assert report["state"]["entries"] == {"p": {"c1": [_entry(2 * GI, [0])]}}


def test_pod_scope_example_3_empty_shared_pool_is_refused() -> None:
    # "Example 3: Admission Failure": 3Gi + 2Gi exclusive use up the 5Gi budget while
    # container-3 needs the shared pool. kubelet's GetPodTopologyHints answers empty hint
    # lists, so restricted refuses it at the merge...
    body = pod("p", POD_5, ctr("c1", res("3Gi", "3")), ctr("c2", res("2Gi", "2")), ctr("c3"))
    step = simulate(scenario(body))["steps"][0]
    assert (step["admitted"], step["reason"]) == (False, "TopologyAffinityError")
    assert step["refused"]["hints"]["memory"] == {"memory": []}
    # ...and best-effort admits the merge, then AllocatePod refuses it
    report = simulate(scenario(body, tm="best-effort"))
    step = report["steps"][0]
    assert (step["admitted"], step["reason"]) == (False, EMPTY_POD_SHARED_POOL_ERROR)
    assert step["message"] == (
        "pod rejected, sum of exclusive container memory requests equals pod budget,"
        " leaving no memory for shared containers"
    )
    assert table(report, 0)["reserved"] == 0
    assert "podEntries" not in report["state"]


def test_pod_scope_all_guaranteed_containers() -> None:
    # the pod-scope table, "All Guaranteed containers": 5 = 3 + 1 + 1, each exclusive
    body = pod(
        "p",
        POD_5,
        ctr("c1", res("3Gi", "3")),
        ctr("c2", res("1Gi", "1")),
        ctr("c3", res("1Gi", "1")),
    )
    report = simulate(scenario(body))
    c = containers_of(report)
    assert [x["allocations"] for x in c.values()] == [
        [block(3 * GI, [0])],
        [block(GI, [0])],
        [block(GI, [0])],
    ]
    assert not any("sharedPool" in x for x in c.values())
    assert table(report, 0)["reserved"] == 5 * GI


def test_pod_scope_underutilized_budget_is_reserved_whole() -> None:
    # "Underutilization of Pod-Level Resources": not rejected; the whole budget is held
    report = simulate(scenario(pod("p", POD_4, ctr("c1", res("1Gi", "1")))))
    assert report["steps"][0]["admitted"] is True
    assert table(report, 0)["reserved"] == 4 * GI


def test_pod_scope_one_hint_for_the_budget_spans_nodes_when_it_must() -> None:
    # the budget, not the containers, is what must fit: 12Gi needs both 10Gi nodes
    report = simulate(
        scenario(
            pod("p", res("12Gi", "4"), ctr("c1", res("1Gi", "1")), ctr("c2")), tm="best-effort"
        )
    )
    step = report["steps"][0]
    assert step["podAllocations"] == [block(12 * GI, [0, 1])]
    c = containers_of(report)
    assert c["c1"]["allocations"] == [block(GI, [0, 1])]
    assert c["c2"]["cpusetMems"] == "0,1"
    assert report["state"]["machineState"]["0"]["cells"] == [0, 1]


def test_pod_scope_refused_when_the_budget_fits_no_node() -> None:
    step = simulate(scenario(pod("p", res("12Gi", "4"), ctr("c1")), tm="single-numa-node"))
    assert step["steps"][0]["reason"] == "TopologyAffinityError"


def test_pod_scope_init_container_and_sidecar_slices() -> None:
    # KEP-5526 test plan "Pod Scope, Init Containers" and "Sidecar": the init container's
    # slice goes at start (its memory stays in the pod's budget), the sidecar's stays
    init = [
        ctr("setup", res("3Gi", "1")),
        ctr("proxy", res("1Gi", "1"), restartPolicy="Always"),
    ]
    report = simulate(scenario(pod("p", POD_4, ctr("app"), init=init), {"start": {"pod": "p"}}))
    c = containers_of(report)
    assert c["setup"]["allocations"] == [block(3 * GI, [0])]
    assert c["proxy"]["allocations"] == [block(GI, [0])]
    assert c["app"]["sharedPool"] is True
    assert report["steps"][1]["released"] == ["setup"]
    assert report["state"]["entries"] == {"p": {"proxy": [_entry(GI, [0])]}}
    assert table(report, 0)["reserved"] == 4 * GI  # the budget is unchanged


def test_pod_scope_init_container_larger_than_what_sidecars_leave_is_refused() -> None:
    # kubelet checks it again at admission; the API server's own check (the containers'
    # aggregate within the pod's request) already refuses such a pod, so the engine is
    # asked directly
    one = {"cpu": Fraction(1), "memory": Fraction(2 * GI)}
    three = {"cpu": Fraction(1), "memory": Fraction(3 * GI)}
    budget = {"cpu": Fraction(4), "memory": Fraction(4 * GI)}
    p = PodSpec(
        "p",
        init_containers=(
            ContainerSpec("proxy", one, one, init=True, restartable=True),
            ContainerSpec("setup", three, three, init=True),
        ),
        containers=(ContainerSpec("app"),),
        pod_level_resources=True,
        pod_requests=budget,
        pod_limits=budget,
    )
    assert empty_pod_shared_pool(p) == (
        "pod rejected, largest exclusive init container requests 3221225472 of memory,"
        " but only 2147483648 available"
    )
    result = MemoryManager(_topology(), _config()).admit(p)
    assert (result.admitted, result.reason) == (False, EMPTY_POD_SHARED_POOL_ERROR)


def test_pod_scope_reservation_goes_with_the_last_container() -> None:
    steps = [
        pod("p", POD_4, ctr("c1", res("2Gi", "2")), ctr("c2")),
        {"remove": {"pod": "p", "container": "c1"}},
    ]
    report = simulate(scenario(*steps))
    assert table(report, 0)["reserved"] == 4 * GI  # c2 still runs in the pod's pool
    assert "entries" not in report["state"]
    steps.append({"remove": {"pod": "p", "container": "c2"}})
    report = simulate(scenario(*steps))
    assert table(report, 0)["reserved"] == 0
    assert "podEntries" not in report["state"]


def test_pod_scope_resize_of_a_carved_container_is_refused() -> None:
    steps = [
        pod("p", POD_4, ctr("c1", res("2Gi", "2")), ctr("c2")),
        {"resize": {"pod": "p", "container": "c1", "resources": res("3Gi", "2")}},
    ]
    step = simulate(scenario(*steps))["steps"][1]
    assert step["resized"] is False
    assert "pod-level reservation" in step["reason"]


def test_pod_scope_with_topology_policy_none_takes_the_default_hint() -> None:
    report = simulate(scenario(pod("p", POD_4, ctr("c1")), tm="none"))
    assert report["steps"][0]["podAllocations"] == [block(4 * GI, [0])]


def test_pod_scope_pods_without_pod_level_resources_are_unchanged() -> None:
    body = pod("p", None, ctr("c1", res("2Gi", "2")), ctr("c2", res("1Gi", "1")))
    managed = simulate(scenario(body))
    assert managed == simulate(scenario(body, mode="ignore"))
    assert "podAllocations" not in managed["steps"][0]


# -- KEP-5526, container scope -----------------------------------------------------------


def test_container_scope_example_1_mixed_exclusive_and_node_shared() -> None:
    # "Example 1: Mixed Allocation (Exclusive and Node Shared)": pod.spec.resources is
    # ignored; container-1 gets its own 2Gi, the others no hint and no pinning
    report = simulate(
        scenario(
            pod("p", POD_4, ctr("c1", res("2Gi", "2")), ctr("c2"), ctr("c3")), scope="container"
        )
    )
    c = containers_of(report)
    assert c["c1"]["hints"]["memory"][0] == {"nodes": [0], "preferred": True}
    assert c["c1"]["allocations"] == [block(2 * GI, [0])]
    for name in ("c2", "c3"):
        assert (c[name]["hints"], c[name]["cpusetMems"], c[name]["allocations"]) == ({}, "", [])
    assert table(report, 0)["reserved"] == 2 * GI
    assert "podEntries" not in report["state"]


def test_container_scope_example_2_pod_level_only_pins_nothing() -> None:
    # "Example 2: Pod-Level Resources Only (No Exclusive Allocation)"
    report = simulate(scenario(pod("p", POD_4, ctr("c1"), ctr("c2"), ctr("c3")), scope="container"))
    assert report["steps"][0]["admitted"] is True
    assert "entries" not in report["state"]
    assert table(report, 0)["reserved"] == 0


def test_container_scope_all_guaranteed_containers_pinned_each() -> None:
    body = pod(
        "p",
        POD_5,
        ctr("c1", res("3Gi", "3")),
        ctr("c2", res("1Gi", "1")),
        ctr("c3", res("1Gi", "1")),
    )
    report = simulate(scenario(body, scope="container"))
    assert sorted(report["state"]["entries"]["p"]) == ["c1", "c2", "c3"]
    assert table(report, 0)["reserved"] == 5 * GI


def test_container_scope_a_container_without_a_cpu_limit_is_not_eligible() -> None:
    # IsContainerEquivalentQOSGuaranteed wants cpu and memory, each request == limit
    body = pod(
        "p", POD_4, ctr("c1", res("2Gi")), ctr("c2", {"requests": {"cpu": "1", "memory": "1Gi"}})
    )
    report = simulate(scenario(body, scope="container"))
    assert "entries" not in report["state"]


# -- the checkpoint ----------------------------------------------------------------------


def _entry(size: int, nodes: list[int], type_: str = "memory") -> dict[str, Any]:
    return {"numaAffinity": nodes, "type": type_, "size": size}


def _managed_state() -> dict[str, Any]:
    report = simulate(scenario(pod("p", POD_4, ctr("c1", res("2Gi", "2")), ctr("c2"))))
    return report["state"]  # type: ignore[no-any-return]


def test_checkpoint_keeps_the_reservation_under_the_checksum() -> None:
    saved = _managed_state()
    state = from_checkpoint(saved)
    assert state.pod_entries["p"][0].size == 4 * GI
    assert to_checkpoint(state) == saved
    assert parse_json(dumps(state), source="dumps") == saved  # the fast writer says the same
    tampered = copy.deepcopy(saved)
    tampered["podEntries"]["p"]["memoryBlocks"][0]["size"] = 3 * GI
    with pytest.raises(StateError, match="checkpoint is corrupted"):
        from_checkpoint(tampered)


def test_restore_counts_the_reservation_once() -> None:
    saved = _managed_state()
    steps = [{"remove": {"pod": "p"}}]
    report = simulate({**scenario(*steps), "initialState": saved})
    assert report["steps"][0]["removed"] is True
    assert table(report, 0)["reserved"] == 0
    # a container's part that is not inside the reservation is refused
    state = from_checkpoint(saved)
    state.entries["p"]["c1"] = [type(state.entries["p"]["c1"][0])((1,), "memory", 2 * GI)]
    manager = MemoryManager(_topology(), _config())
    with pytest.raises(StateError, match="not a part of the pod's pod-level reservation"):
        validate_restored(state, manager.policy.default_state(), "Static")


def _topology() -> Topology:
    return Topology(
        (NumaNode(0, frozenset(range(4)), 10 * GI), NumaNode(1, frozenset(range(4, 8)), 10 * GI))
    )


def _config(scope: str = "pod", tm: str = "best-effort") -> Config:
    return Config(
        topology_manager_policy=tm,
        topology_manager_scope=scope,
        reserved_memory=(ReservedMemory(0, "memory", GI),),
        pod_level_resources=POD_LEVEL_MANAGERS,
    )


# -- properties --------------------------------------------------------------------------

SIZES = st.integers(min_value=1, max_value=6)


@st.composite
def pod_level_pods(draw: st.DrawFn, uid: str) -> PodSpec:
    """A Guaranteed pod-level pod of a few containers, some exclusive, within its budget."""
    budget = draw(st.integers(min_value=1, max_value=9))
    apps = []
    used = 0
    for i in range(draw(st.integers(min_value=1, max_value=3))):
        size = draw(SIZES)
        if draw(st.booleans()) and used + size <= budget:
            used += size
            amounts = {"cpu": Fraction(1), "memory": Fraction(size * GI)}
            apps.append(ContainerSpec(f"c{i}", amounts, amounts))
        else:
            apps.append(ContainerSpec(f"c{i}"))
    amounts = {"cpu": Fraction(budget), "memory": Fraction(budget * GI)}
    return PodSpec(
        uid,
        containers=tuple(apps),
        pod_level_resources=True,
        pod_requests=amounts,
        pod_limits=amounts,
    )


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    pods=st.lists(
        st.sampled_from(["a", "b", "c", "d"]), min_size=1, max_size=4, unique=True
    ).flatmap(lambda uids: st.tuples(*(pod_level_pods(u) for u in uids))),
    scope=st.sampled_from(["pod", "container"]),
    tm=st.sampled_from(["none", "best-effort", "restricted", "single-numa-node"]),
)
def test_reservations_are_consistent_and_all_given_back(
    pods: tuple[PodSpec, ...], scope: str, tm: str
) -> None:
    manager = MemoryManager(_topology(), _config(scope, tm))
    default = manager.policy.default_state()
    for p in pods:
        result = manager.admit(p)
        if result.admitted and scope == "pod":
            held = manager.state.pod_blocks(p.uid)
            assert held is not None and held[0].size == p.pod_requests["memory"]
            for c in result.containers:
                # exclusive containers on the reservation's nodes; the others share it
                assert c.cpuset_mems == result.containers[0].cpuset_mems
                assert bool(c.allocations) != bool(c.pool)
        if not result.admitted and scope == "pod" and empty_pod_shared_pool(p) is None:
            assert result.reason in ("TopologyAffinityError", "UnexpectedAdmissionError")
        # what the machine counts is exactly the reservations and the others' blocks
        validate_restored(manager.state, default, "Static")
        assert from_checkpoint(to_checkpoint(manager.state)) == manager.state
    for p in pods:
        manager.remove_pod(p.uid)
    assert manager.state == default

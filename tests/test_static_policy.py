"""The static policy's rules, each from a worked example of kubelet's behaviour.

Every case runs through the simulator (the project's black-box interface) and
checks the report and the final state against the numbers kubelet produces
(kubelet's memorymanager tests, e.g. ``policy_static_test.go``, and KEP-1769).
"""

from __future__ import annotations

from typing import Any

import pytest

from nri_plugin.errors import StateError
from nri_plugin.persist.format import from_checkpoint, to_checkpoint
from tests.helpers import GI, MI, admit, blocks, container, node, simulate, table


def config(tm: str = "best-effort", scope: str = "container", **reserved: str) -> dict[str, Any]:
    res = [{"numaNode": int(k[1:]), "limits": {"memory": v}} for k, v in reserved.items()]
    return {
        "policy": "static",
        "topologyManagerPolicy": tm,
        "topologyManagerScope": scope,
        "reservedMemory": res or [{"numaNode": 0, "limits": {"memory": "512Mi"}}],
    }


def hints_of(report: dict[str, Any], step: int, ctr: int, type_: str = "memory") -> list[Any]:
    return [
        (h["nodes"], h["preferred"])
        for h in report["steps"][step]["containers"][ctr]["hints"][type_]
    ]


def test_default_state_excludes_hugepages_and_reservation() -> None:
    # kubelet: "should fill the state with default values, when the state is empty"
    report = simulate(
        {
            "topology": {"nodes": [node(0, "3Gi", "0", {"1Gi": "1Gi"})]},
            "config": config(n0="512Mi"),
            "steps": [],
        }
    )
    assert table(report, 0) == {
        "total": 3 * GI,
        "systemReserved": 512 * MI,
        "allocatable": 1536 * MI,
        "reserved": 0,
        "free": 1536 * MI,
    }
    assert table(report, 0, "hugepages-1Gi") == {
        "total": GI,
        "systemReserved": 0,
        "allocatable": GI,
        "reserved": 0,
        "free": GI,
    }
    assert report["state"]["machineState"]["0"]["cells"] == [0]
    assert "entries" not in report["state"]


def four_nodes_with_group() -> dict[str, Any]:
    # four nodes: 1536Mi allocatable memory and one 1Gi page each
    return {
        "topology": {
            "nodes": [node(i, "3Gi", str(i), {"1Gi": "1Gi"}) for i in range(4)],
        },
        "config": config(n0="512Mi", n1="512Mi", n2="512Mi", n3="512Mi"),
        "steps": [
            # 2Gi + 2Gi fits no single node: the group [0, 1]
            admit("grouped", container("c", "2Gi", hugepages={"hugepages-1Gi": "2Gi"})),
            admit("new", container("c", "1Gi", hugepages={"hugepages-1Gi": "1Gi"})),
        ],
    }


def test_hints_skip_grouped_nodes_and_full_groups() -> None:
    # kubelet: "should calculate new topology hints, when the container does not
    # exist under assignments"
    report = simulate(four_nodes_with_group())
    first = report["steps"][0]["containers"][0]
    assert first["affinity"] == {"nodes": [0, 1], "preferred": True}
    expected = [([2], True), ([3], True), ([2, 3], False)]
    assert hints_of(report, 1, 0, "memory") == expected
    assert hints_of(report, 1, 0, "hugepages-1Gi") == expected
    assert report["steps"][1]["containers"][0]["cpusetMems"] == "2"
    state = report["state"]["machineState"]
    assert state["0"]["cells"] == [0, 1] and state["1"]["cells"] == [0, 1]
    # a memory block and a hugepages block on [0, 1]: two assignments on each node
    assert state["0"]["numberOfAssignments"] == 2
    assert state["2"]["numberOfAssignments"] == 2


def reject_pod2(tm: str) -> dict[str, Any]:
    # KEP-1769 "Reject Pod2": two nodes with 10Gi allocatable each; Pod1 (15Gi)
    # holds the group [0, 1] (admitted under best-effort, then the node restarts
    # with the policy under test: the checkpoint carries Pod1 over)
    topology = {"nodes": [node(0, "11Gi", "0"), node(1, "10Gi", "1")]}
    first = simulate(
        {
            "topology": topology,
            "config": config("best-effort", n0="1Gi"),
            "steps": [admit("pod1", container("c", "15Gi"))],
        }
    )
    assert first["steps"][0]["containers"][0]["cpusetMems"] == "0,1"
    return {
        "topology": topology,
        "config": config(tm, n0="1Gi"),
        "initialState": first["state"],
        "steps": [admit("pod2", container("c", "5Gi"))],
    }


@pytest.mark.parametrize("tm", ["restricted", "single-numa-node"])
def test_pod_fitting_one_node_is_refused_when_nodes_are_grouped(tm: str) -> None:
    report = simulate(reject_pod2(tm))
    pod2 = report["steps"][0]
    assert pod2["admitted"] is False
    assert pod2["reason"] == "TopologyAffinityError"
    assert pod2["containers"] == []
    # pod1 alone holds memory: 10Gi on node 0, 5Gi on node 1
    assert table(report, 0)["reserved"] == 10 * GI
    assert table(report, 1)["reserved"] == 5 * GI
    assert list(report["state"]["entries"]) == ["pod1"]


def test_best_effort_admits_into_the_group_non_preferred() -> None:
    report = simulate(reject_pod2("best-effort"))
    pod2 = report["steps"][0]
    assert pod2["admitted"] is True
    c = pod2["containers"][0]
    assert c["hints"]["memory"] == [{"nodes": [0, 1], "preferred": False}]
    assert c["affinity"] == {"nodes": [0, 1], "preferred": False}
    # the 5Gi come from node 1: node 0 is full
    assert table(report, 0)["free"] == 0
    assert table(report, 1)["reserved"] == 10 * GI
    assert table(report, 1)["free"] == 0


def test_pod_fitting_nowhere_is_unexpected_admission_error_even_under_single_numa_node() -> None:
    # a kubelet quirk: no hints means "no preference", so the topology manager admits and
    # Allocate fails
    report = simulate(
        {
            "topology": {"nodes": [node(0, "4Gi", "0"), node(1, "4Gi", "1")]},
            "config": config("single-numa-node", n0="1Gi"),
            "steps": [admit("big", container("c", "10Gi"))],
        }
    )
    step = report["steps"][0]
    assert step["admitted"] is False
    assert step["reason"] == "UnexpectedAdmissionError"
    assert "failed to get the default NUMA affinity" in step["message"]
    assert "entries" not in report["state"]


@pytest.mark.parametrize(
    ("inits", "apps", "reserved", "final_inits"),
    [
        ((1, 2), (3, 4), 7, (0, 0)),
        ((4, 3), (2, 1), 4, (0, 1)),
        ((7, 4), (4, 3), 7, (0, 0)),
        ((7, 4), (5, 2), 7, (0, 0)),
    ],
)
def test_init_container_memory_is_reused(
    inits: tuple[int, int], apps: tuple[int, int], reserved: int, final_inits: tuple[int, int]
) -> None:
    # kubelet: TestStaticPolicyAllocateWithInitContainers
    def ctr(name: str, gi: int) -> dict[str, Any]:
        return container(name, f"{gi}Gi", hugepages={"hugepages-1Gi": f"{gi}Gi"})

    report = simulate(
        {
            "topology": {"nodes": [node(0, "40Gi", "0-3", {"1Gi": "16Gi"})]},
            "config": config("single-numa-node", n0="1Gi"),
            "steps": [
                admit(
                    "pod",
                    ctr("app1", apps[0]),
                    ctr("app2", apps[1]),
                    init=[ctr("init1", inits[0]), ctr("init2", inits[1])],
                )
            ],
        }
    )
    assert report["steps"][0]["admitted"] is True
    for type_ in ("memory", "hugepages-1Gi"):
        assert table(report, 0, type_)["reserved"] == reserved * GI
        for name, size in zip(("init1", "init2"), final_inits, strict=True):
            sizes = {b["type"]: b["size"] for b in blocks(report, "pod", name)}
            assert sizes[type_] == size * GI
        for name, size in zip(("app1", "app2"), apps, strict=True):
            sizes = {b["type"]: b["size"] for b in blocks(report, "pod", name)}
            assert sizes[type_] == size * GI
    assert report["state"]["machineState"]["0"]["numberOfAssignments"] == 8
    # allocations in the report are the blocks right after each container's allocation
    first_init = report["steps"][0]["containers"][0]
    assert first_init["init"] is True
    assert {a["size"] for a in first_init["allocations"]} == {inits[0] * GI}


def test_sidecar_memory_is_never_reused() -> None:
    # kubelet: TestStaticPolicyAllocateWithRestartableInitContainers
    report = simulate(
        {
            "topology": {"nodes": [node(0, "40Gi", "0-3", {"1Gi": "16Gi"})]},
            "config": config("restricted", n0="1Gi"),
            "steps": [
                admit(
                    "pod",
                    container("app", "1Gi", hugepages={"hugepages-1Gi": "1Gi"}),
                    init=[
                        container("init1", "1Gi", hugepages={"hugepages-1Gi": "1Gi"}),
                        container(
                            "side2",
                            "2Gi",
                            hugepages={"hugepages-1Gi": "2Gi"},
                            restartPolicy="Always",
                        ),
                        container("init3", "3Gi", hugepages={"hugepages-1Gi": "3Gi"}),
                        container(
                            "side4",
                            "4Gi",
                            hugepages={"hugepages-1Gi": "4Gi"},
                            restartPolicy="Always",
                        ),
                    ],
                )
            ],
        }
    )
    assert table(report, 0)["reserved"] == 7 * GI
    assert table(report, 0, "hugepages-1Gi")["reserved"] == 7 * GI
    final = {"init1": 0, "side2": 2, "init3": 0, "side4": 4, "app": 1}
    for name, gi in final.items():
        assert {b["size"] for b in blocks(report, "pod", name)} == {gi * GI}
    assert report["state"]["machineState"]["0"]["numberOfAssignments"] == 10


def test_start_releases_finished_init_containers() -> None:
    # kubelet: TestAllocateAndAddPodWithInitContainers
    scenario = {
        "topology": {"nodes": [node(0, "40Gi", "0-3", {"1Gi": "16Gi"})]},
        "config": config("single-numa-node", n0="1Gi"),
        "steps": [
            admit(
                "pod",
                container("app", "4Gi", hugepages={"hugepages-1Gi": "4Gi"}),
                init=[container("init", "7Gi", hugepages={"hugepages-1Gi": "5Gi"})],
            ),
        ],
    }
    before = simulate(scenario)
    assert table(before, 0)["reserved"] == 7 * GI
    assert table(before, 0, "hugepages-1Gi")["reserved"] == 5 * GI
    sizes = {b["type"]: b["size"] for b in blocks(before, "pod", "init")}
    assert sizes == {"memory": 3 * GI, "hugepages-1Gi": GI}

    scenario["steps"].append({"start": {"pod": "pod"}})
    after = simulate(scenario)
    assert after["steps"][1] == {
        "action": "start",
        "pod": "pod",
        "started": True,
        "released": ["init"],
    }
    assert table(after, 0)["reserved"] == 4 * GI
    assert table(after, 0, "hugepages-1Gi")["reserved"] == 4 * GI
    assert list(after["state"]["entries"]["pod"]) == ["app"]


def test_start_of_unknown_pod_reports_not_started() -> None:
    report = simulate(
        {
            "topology": {"nodes": [node(0, "4Gi", "0")]},
            "config": config(n0="1Gi"),
            "steps": [{"start": {"pod": "nope"}}],
        }
    )
    assert report["steps"][0] == {
        "action": "start",
        "pod": "nope",
        "started": False,
        "released": [],
    }


def test_removing_from_a_group_walks_nodes_in_order() -> None:
    # kubelet: TestRemoveContainer "Correct removing of a multi NUMA container"
    report = simulate(
        {
            "topology": {
                "nodes": [
                    node(0, "12Gi", "0", {"1Gi": "2Gi"}),
                    node(1, "10Gi", "1", {"1Gi": "0"}),
                ]
            },
            "config": config("best-effort", n0="1Gi"),
            "steps": [
                admit("a", container("c", "12Gi", hugepages={"hugepages-1Gi": "1Gi"})),
                admit("b", container("c", "1Gi", hugepages={"hugepages-1Gi": "1Gi"})),
            ],
        }
    )
    assert table(report, 0)["reserved"] == 9 * GI
    assert table(report, 1)["reserved"] == 4 * GI
    assert table(report, 0, "hugepages-1Gi")["reserved"] == 2 * GI
    scenario_after = {
        "topology": {
            "nodes": [node(0, "12Gi", "0", {"1Gi": "2Gi"}), node(1, "10Gi", "1", {"1Gi": "0"})]
        },
        "config": config("best-effort", n0="1Gi"),
        "initialState": report["state"],
        "steps": [{"remove": {"pod": "a"}}],
    }
    after = simulate(scenario_after)
    assert after["steps"][0] == {"action": "remove", "pod": "a", "removed": True}
    assert table(after, 0)["reserved"] == 0
    assert table(after, 1)["reserved"] == GI
    assert table(after, 0, "hugepages-1Gi")["reserved"] == GI
    assert table(after, 1, "hugepages-1Gi")["reserved"] == 0
    ms = after["state"]["machineState"]
    assert ms["0"]["numberOfAssignments"] == 2 and ms["1"]["numberOfAssignments"] == 2
    assert ms["0"]["cells"] == [0, 1]


def test_wide_cpuset_makes_best_effort_group_a_tiny_pod() -> None:
    # a kubelet quirk: CPUs on nodes 0 and 1 + memory that fits one node
    def scenario(tm: str) -> dict[str, Any]:
        return {
            "topology": {"nodes": [node(0, "8Gi", "0-3"), node(1, "8Gi", "4-7")]},
            "config": config(tm, n0="1Gi"),
            "steps": [admit("p", container("c", "1Gi", cpuset="3-4"))],
        }

    best_effort = simulate(scenario("best-effort"))["steps"][0]
    assert best_effort["admitted"] is True
    assert best_effort["containers"][0]["affinity"] == {"nodes": [0, 1], "preferred": False}
    assert best_effort["containers"][0]["cpusetMems"] == "0,1"
    restricted = simulate(scenario("restricted"))["steps"][0]
    assert restricted["admitted"] is False
    assert restricted["reason"] == "TopologyAffinityError"


def test_cpu_pinning_chooses_the_node() -> None:
    report = simulate(
        {
            "topology": {"nodes": [node(0, "8Gi", "0-3"), node(1, "8Gi", "4-7")]},
            "config": config("single-numa-node", n0="1Gi"),
            "steps": [admit("p", container("c", "1Gi", cpuset="5"))],
        }
    )
    c = report["steps"][0]["containers"][0]
    assert c["affinity"] == {"nodes": [1], "preferred": True}
    assert c["cpusetMems"] == "1"
    assert c["allocations"] == [{"type": "memory", "size": GI, "numaAffinity": [1]}]


def test_extension_widens_a_cpu_driven_affinity() -> None:
    # best-effort: CPU on node 0, memory needs two nodes; the hint [0] is extended to [0, 1]
    report = simulate(
        {
            "topology": {"nodes": [node(0, "5Gi", "0-3"), node(1, "4Gi", "4-7")]},
            "config": config("best-effort", n0="1Gi"),
            "steps": [admit("p", container("c", "6Gi", cpuset="0"))],
        }
    )
    c = report["steps"][0]["containers"][0]
    assert report["steps"][0]["admitted"] is True
    assert c["allocations"][0]["numaAffinity"] == [0, 1]
    assert table(report, 0)["reserved"] == 4 * GI
    assert table(report, 1)["reserved"] == 2 * GI


def test_non_guaranteed_pods_are_not_touched() -> None:
    report = simulate(
        {
            "topology": {"nodes": [node(0, "8Gi", "0-3")]},
            "config": config("single-numa-node", n0="1Gi"),
            "steps": [
                {
                    "admit": {
                        "pod": {"uid": "burst"},
                        "containers": [
                            {"name": "c", "resources": {"requests": {"memory": "1Gi"}}},
                        ],
                    }
                },
                {"admit": {"pod": {"uid": "be"}, "containers": [{"name": "c"}]}},
            ],
        }
    )
    burst, be = report["steps"]
    assert burst["qosClass"] == "Burstable" and be["qosClass"] == "BestEffort"
    for step in (burst, be):
        assert step["admitted"] is True
        c = step["containers"][0]
        assert c["hints"] == {} and c["allocations"] == [] and c["cpusetMems"] == ""
    assert "entries" not in report["state"]
    assert table(report, 0)["reserved"] == 0


def test_fractional_cpu_guaranteed_pod_is_pinned() -> None:
    report = simulate(
        {
            "topology": {"nodes": [node(0, "8Gi", "0-3")]},
            "config": config("restricted", n0="1Gi"),
            "steps": [admit("p", container("c", "1Gi", cpu="500m"))],
        }
    )
    assert report["steps"][0]["qosClass"] == "Guaranteed"
    assert report["steps"][0]["containers"][0]["cpusetMems"] == "0"


def test_zero_hugepages_request_makes_a_zero_block() -> None:
    # a kubelet quirk: a zero-valued hugepages request still counts as an assignment
    report = simulate(
        {
            "topology": {"nodes": [node(0, "8Gi", "0-3", {"2Mi": "1Gi"})]},
            "config": config("restricted", n0="1Gi"),
            "steps": [
                {
                    "admit": {
                        "pod": {"uid": "p"},
                        "containers": [
                            {
                                "name": "c",
                                "resources": {
                                    "requests": {"cpu": "1", "memory": "1Gi", "hugepages-2Mi": 0},
                                    "limits": {"cpu": "1", "memory": "1Gi", "hugepages-2Mi": 0},
                                },
                            }
                        ],
                    }
                }
            ],
        }
    )
    c = report["steps"][0]["containers"][0]
    assert c["allocations"] == [
        {"type": "hugepages-2Mi", "size": 0, "numaAffinity": [0]},
        {"type": "memory", "size": GI, "numaAffinity": [0]},
    ]
    assert report["state"]["machineState"]["0"]["numberOfAssignments"] == 2


def test_pod_scope_uses_the_pod_level_request() -> None:
    # pod scope: 3Gi + 3Gi fit one 8Gi node together, so both containers share node 0...
    scenario = {
        "topology": {"nodes": [node(0, "8Gi", "0-3"), node(1, "8Gi", "4-7")]},
        "config": config("single-numa-node", "pod", n0="1Gi"),
        "steps": [admit("p", container("a", "3Gi"), container("b", "3Gi"))],
    }
    report = simulate(scenario)
    step = report["steps"][0]
    assert step["admitted"] is True
    for c in step["containers"]:
        assert c["affinity"] == {"nodes": [0], "preferred": True}
        assert c["hints"]["memory"][0] == {"nodes": [0], "preferred": True}
    # ...and 4Gi + 5Gi fit no node (7Gi and 8Gi allocatable): refused as a whole
    scenario["steps"] = [admit("p", container("a", "4Gi"), container("b", "5Gi"))]
    refused = simulate(scenario)["steps"][0]
    assert refused["admitted"] is False
    assert refused["reason"] == "TopologyAffinityError"


def test_topology_policy_none_gathers_no_hints() -> None:
    report = simulate(
        {
            "topology": {"nodes": [node(0, "8Gi", "0-3"), node(1, "8Gi", "4-7")]},
            "config": config("none", n0="1Gi"),
            "steps": [admit("p", container("c", "2Gi", cpuset="4"))],
        }
    )
    c = report["steps"][0]["containers"][0]
    assert c["hints"] == {}
    assert c["affinity"] == {"nodes": None, "preferred": False}
    # the static policy's default hint: preferred first, then narrowest -> node 0
    assert c["cpusetMems"] == "0"


def test_removing_everything_restores_the_initial_state() -> None:
    scenario = four_nodes_with_group()
    initial = simulate({**scenario, "steps": []})["state"]
    scenario["steps"] += [{"remove": {"pod": "grouped"}}, {"remove": {"pod": "new"}}]
    report = simulate(scenario)
    assert report["state"] == initial


def test_remove_reports_whether_something_was_known() -> None:
    report = simulate(
        {
            "topology": {"nodes": [node(0, "4Gi", "0")]},
            "config": config("restricted", n0="1Gi"),
            "steps": [
                admit("big", container("c", "10Gi")),
                admit("ok", container("a", "1Gi"), container("b", "1Gi")),
                {"remove": {"pod": "big"}},
                {"remove": {"pod": "ok", "container": "a"}},
                {"remove": {"pod": "ok", "container": "a"}},
                {"remove": {"pod": "ok"}},
                {"remove": {"pod": "ok"}},
            ],
        }
    )
    removed = [s["removed"] for s in report["steps"][2:]]
    assert removed == [False, True, False, True, False]
    assert report["steps"][3]["container"] == "a"
    assert "entries" not in report["state"]


def test_single_node_block_on_a_grouped_node_restores() -> None:
    # kubelet's isAffinityViolatingNUMAAllocations lets a single-node affinity through: a pod
    # pinned to CPUs of node 1 while node 1 is grouped with node 0 gets a block on [1],
    # which relabels node 1's cells. The checkpoint must still load back, whatever the
    # order of its entries (kubelet replays them in map order).
    topology = {"nodes": [node(i, "8Gi", f"{4 * i}-{4 * i + 3}") for i in range(4)]}
    first = simulate(
        {
            "topology": topology,
            "config": config("best-effort", n0="1Gi"),
            "steps": [
                admit("zbig", container("c", "12Gi")),
                admit("apinned", container("c", "1Gi", cpuset="4-5")),
            ],
        }
    )
    assert first["steps"][1]["containers"][0]["cpusetMems"] == "1"
    assert first["state"]["machineState"]["1"]["cells"] == [1]
    again = simulate(
        {
            "topology": topology,
            "config": config("best-effort", n0="1Gi"),
            "initialState": first["state"],
            "steps": [{"remove": {"pod": "apinned"}}, {"remove": {"pod": "zbig"}}],
        }
    )
    assert "entries" not in again["state"]


def test_releasing_a_group_leaves_a_single_node_block_on_a_relabelled_node_its_bytes() -> None:
    # The one place we depart from kubelet (docs/simulate.md). Node 0 is full, so the 10Gi
    # group lands on [1,2] (node 1 gives 8Gi, node 2 2Gi), and the 2Gi pod joins it (node
    # 2). With the group pod gone, node 1 holds none of the group's bytes; the pinned pod
    # then gets [1] (isAffinityViolatingNUMAAllocations skips one-node masks). When the 2Gi pod
    # goes, kubelet's walk takes its bytes back from node 1 first, i.e. the pinned pod's:
    # node 1 would show them free while in use and node 2 keep 1.5Gi for nobody.
    topology = {"nodes": [node(i, "8Gi", f"{4 * i}-{4 * i + 3}") for i in range(3)]}
    cfg = config("best-effort", n0="1Gi")
    before = simulate(
        {
            "topology": topology,
            "config": cfg,
            "steps": [
                admit("fill", container("c", "7Gi")),
                admit("group", container("c", "10Gi")),
                admit("joins", container("c", "2Gi")),
                {"remove": {"pod": "group"}},
                admit("pinned", container("c", "1536Mi", cpuset="4-5")),
            ],
        }
    )
    mems = [s["containers"][0]["cpusetMems"] for s in before["steps"] if "containers" in s]
    assert mems == ["0", "1,2", "1,2", "1"]
    # The group's bytes are on node 2, the pinned pod's on node 1, which left the group: no
    # replay order gives that back, yet every byte is there, so the state restores.
    assert (table(before, 1)["reserved"], table(before, 2)["reserved"]) == (1536 * MI, 2 * GI)
    report = simulate(
        {
            "topology": topology,
            "config": cfg,
            "initialState": before["state"],
            "steps": [{"remove": {"pod": "joins"}}],
        }
    )
    assert table(report, 1)["reserved"] == 1536 * MI  # the pinned pod's, still counted
    assert table(report, 2)["reserved"] == 0  # nothing kept for a pod that is gone
    assert report["state"]["machineState"]["2"]["cells"] == [2]
    again = simulate(
        {
            "topology": topology,
            "config": cfg,
            "initialState": report["state"],
            "steps": [{"remove": {"pod": "pinned"}}, {"remove": {"pod": "fill"}}],
        }
    )
    assert "entries" not in again["state"]
    assert all(table(again, n)["reserved"] == 0 for n in range(3))


def test_a_node_left_by_its_single_node_blocks_rejoins_its_group() -> None:
    # kubelet resets a node's cells only when its count reaches 0, so after the pinned pod
    # goes node 1 would keep cells [1] (serving single-node hints) while the group's block
    # still covers it, a state its own restore check refuses. It rejoins the group here.
    topology = {"nodes": [node(i, "8Gi", f"{4 * i}-{4 * i + 3}") for i in range(4)]}
    cfg = config("best-effort", n0="1Gi")
    first = simulate(
        {
            "topology": topology,
            "config": cfg,
            "steps": [
                admit("zbig", container("c", "12Gi")),
                admit("apinned", container("c", "1Gi", cpuset="4-5")),
                {"remove": {"pod": "apinned"}},
            ],
        }
    )
    machine = first["state"]["machineState"]
    assert (machine["0"]["cells"], machine["1"]["cells"]) == ([0, 1], [0, 1])
    again = simulate(
        {
            "topology": topology,
            "config": cfg,
            "initialState": first["state"],
            "steps": [admit("small", container("c", "1Gi", cpuset="4-5"))],
        }
    )
    # node 1 is grouped again: it offers no single-node hint, so [1] is not preferred
    decision = again["steps"][0]["containers"][0]
    assert [1] not in [h["nodes"] for h in decision["hints"]["memory"]]
    assert decision["affinity"] == {"nodes": [1], "preferred": False}
    moved = from_checkpoint(first["state"])  # 1Gi moved to node 2: refused
    moved.machine[1].memory_map["memory"].reserved -= GI
    moved.machine[1].memory_map["memory"].free += GI
    moved.machine[2].memory_map["memory"].reserved += GI
    moved.machine[2].memory_map["memory"].free -= GI
    with pytest.raises(StateError, match="expected machine state is different"):
        simulate({"topology": topology, "config": cfg, "initialState": to_checkpoint(moved)})

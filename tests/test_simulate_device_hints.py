"""simulate's ``deviceHints``: the list form (one resource, ``devices``) and the mapping form
(one list per resource, as kubelet's device manager answers), docs/simulate.md."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from nri_plugin.errors import ScenarioError
from nri_plugin.frontends.simulate import simulate_text

TOPOLOGY = {
    "nodes": [
        {"id": 0, "cpus": "0-1", "memory": "8Gi"},
        {"id": 1, "cpus": "2-3", "memory": "8Gi"},
    ]
}
RESERVED = [{"numaNode": 0, "limits": {"memory": "1Gi"}}]


def scenario(device_hints: Any, *, policy: str = "single-numa-node", scope: str = "container",
             memory: str = "1Gi", apps: int = 1) -> str:  # fmt: skip
    containers = [
        {
            "name": f"app{i}",
            "resources": {"limits": {"cpu": "1", "memory": memory}},
            **({"deviceHints": device_hints} if i == 0 and device_hints is not None else {}),
        }
        for i in range(apps)
    ]
    return yaml.safe_dump(
        {
            "topology": TOPOLOGY,
            "config": {
                "policy": "static",
                "topologyManagerPolicy": policy,
                "topologyManagerScope": scope,
                "reservedMemory": RESERVED,
            },
            "steps": [{"admit": {"pod": {"uid": "p"}, "containers": containers}}],
        }
    )


def run(text: str) -> dict[str, Any]:
    report = simulate_text(text)
    step = report["steps"][0]
    assert isinstance(step, dict)
    return step


NODE_1 = [{"nodes": [1], "preferred": True}]


def test_the_list_form_is_the_mapping_of_one_resource_named_devices() -> None:
    listed = simulate_text(scenario(NODE_1))
    mapped = simulate_text(scenario({"devices": NODE_1}))
    assert json.dumps(listed) == json.dumps(mapped)
    assert listed["steps"][0]["containers"][0]["cpusetMems"] == "1"  # type: ignore[index]


def test_each_resource_is_merged_on_its_own() -> None:
    # a GPU on node 1 and a NIC on node 0: no single node holds both
    step = run(
        scenario({"nvidia.com/gpu": NODE_1, "example.com/nic": [{"nodes": [0], "preferred": True}]})
    )
    assert step["admitted"] is False
    assert step["reason"] == "TopologyAffinityError"
    assert step["refused"]["hints"]["devices"] == {
        "example.com/nic": [{"nodes": [0], "preferred": True}],
        "nvidia.com/gpu": [{"nodes": [1], "preferred": True}],
    }
    # under best-effort both nodes are taken, not preferred
    step = run(
        scenario(
            {"nvidia.com/gpu": NODE_1, "example.com/nic": [{"nodes": [0], "preferred": True}]},
            policy="best-effort",
        )
    )
    assert step["admitted"] is True


def test_a_resource_without_topology_does_not_care_and_an_empty_list_refuses() -> None:
    step = run(scenario({"nvidia.com/gpu": NODE_1, "example.com/fpga": None}))
    assert step["containers"][0]["cpusetMems"] == "1"
    step = run(scenario({"nvidia.com/gpu": NODE_1, "example.com/fpga": []}))
    assert step["admitted"] is False
    assert step["refused"]["hints"]["devices"]["example.com/fpga"] == []


def test_device_hints_steer_memory_and_single_numa_node_refuses_when_it_lacks_memory() -> None:
    assert run(scenario(NODE_1, memory="6Gi"))["containers"][0]["cpusetMems"] == "1"
    step = run(scenario(NODE_1, memory="9Gi"))
    assert step["admitted"] is False and step["reason"] == "TopologyAffinityError"


def test_pod_scope_names_each_containers_list() -> None:
    step = run(scenario({"nvidia.com/gpu": [], "devices": []}, scope="pod", apps=2))
    assert step["admitted"] is False
    assert sorted(step["refused"]["hints"]["devices"]) == ["devices/app0", "nvidia.com/gpu/app0"]
    step = run(scenario({"nvidia.com/gpu": NODE_1}, scope="pod", apps=2))
    assert [c["cpusetMems"] for c in step["containers"]] == ["1", "1"]


@pytest.mark.parametrize(
    ("device_hints", "message"),
    [
        ("gpu", "deviceHints: expected a list of hints or a mapping of resource name"),
        ({"gpu": "x"}, "deviceHints.gpu: expected a list of hints, got"),
        (
            {"gpu": [{"nodes": [7], "preferred": True}]},
            "deviceHints.gpu[0].nodes: the number 7 is not a",
        ),
        ({1: NODE_1}, "deviceHints: expected resource names (strings), got"),
    ],
)
def test_bad_device_hints_are_one_line_naming_the_key(device_hints: Any, message: str) -> None:
    with pytest.raises(ScenarioError) as err:
        simulate_text(scenario(device_hints))
    assert message in str(err.value)
    assert "\n" not in str(err.value)

"""Facts the plugin reads on the node besides NRI: fake-to-host NUMA nodes, pod cgroups,
exit codes from the runtime's CRI (docs/lifecycle.md)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from nri_plugin.errors import ConfigError, InputError
from nri_plugin.frontends.exits import candidate_endpoints
from nri_plugin.frontends.nri import MemoryPlugin
from nri_plugin.frontends.podcgroup import PodCgroups, cgroup_dir
from nri_plugin.inputs.config import parse_config
from nri_plugin.inputs.topology import host_node_ids
from nri_plugin.nri.gen import nri_pb2 as api
from nri_plugin.tracker.nodemap import ANNOTATION, NodeMap, checked_map, default_map
from tests.nri_builders import GI, container, pod
from tests.test_bad_input import ListLogger
from tests.test_plugin_lifecycle import make_plugin, mems

UID = "3f5d0c4e-1111-2222-3333-444455556666"


# -- fake NUMA nodes onto the host's ---------------------------------------------------------


def test_default_map_spreads_fake_nodes_over_the_host_nodes() -> None:
    assert default_map([0, 1, 2, 3], [0]) == {0: 0, 1: 0, 2: 0, 3: 0}
    assert default_map([0, 1, 2, 3], [0, 1]) == {0: 0, 1: 1, 2: 0, 3: 1}
    assert default_map([0, 1], [0, 1, 2]) == {}  # every fake node exists: no mapping


def test_configured_map_is_checked_and_completed() -> None:
    assert checked_map({3: 1}, [0, 1, 2, 3], [0, 1], "hostNodeMap") == {0: 0, 1: 1, 2: 0, 3: 1}
    with pytest.raises(InputError, match="fake NUMA node 7 is not in the topology"):
        checked_map({7: 0}, [0, 1], [0], "hostNodeMap")
    with pytest.raises(InputError, match=r"host NUMA node 5 does not exist here \(host nodes: 0\)"):
        checked_map({1: 5}, [0, 1], [0], "hostNodeMap")


def test_node_map_writes_host_nodes_and_names_the_fake_ones() -> None:
    nodes = NodeMap({0: 0, 1: 0, 2: 1, 3: 1})
    assert nodes.mems_text(0b1100) == "1"
    assert nodes.mems_text(0b0110) == "0,1"
    assert nodes.annotations(0b1100) == {ANNOTATION: "2,3"}
    assert nodes.fake_nodes({ANNOTATION: "2,3"}) == 0b1100
    assert nodes.fake_nodes({ANNOTATION: "garbage"}) == 0
    identity = NodeMap()
    assert not identity.active and identity.mems_text(0b1100) == "2,3"
    assert identity.annotations(0b1100) == {}


def test_host_node_map_config_key() -> None:
    config = parse_config({"hostNodeMap": {"3": 0, 2: 1}})
    assert config.host_node_map == {3: 0, 2: 1}
    with pytest.raises(ConfigError, match=r"config.hostNodeMap: \"x\" is not a NUMA node id"):
        parse_config({"hostNodeMap": {"x": 0}})
    with pytest.raises(ConfigError, match=r"hostNodeMap.1: .* is not a NUMA node id"):
        parse_config({"hostNodeMap": {1: "zero"}})


def test_host_node_ids_from_sysfs(tmp_path: Path) -> None:
    base = tmp_path / "devices" / "system" / "node"
    for n in (0, 2):
        (base / f"node{n}").mkdir(parents=True)
    (base / "possible").write_text("0-3\n")
    assert host_node_ids(tmp_path) == [0, 2]
    assert host_node_ids(tmp_path / "missing") == [0]  # no NUMA support: one node


def test_mapped_plugin_pins_host_nodes_and_annotates_fake_ones() -> None:
    plugin = make_plugin()
    plugin.tracker.node_map = NodeMap({0: 0, 1: 0, 2: 0, 3: 0})
    plugin.tracker._mems_text = plugin.tracker.node_map.mems_text
    g = pod("g")
    adjust = plugin.create_container(g, container(g, "app", "c1", 2 * GI, cpus="4-5"))
    assert mems(adjust) == "0"  # fake node 1 on this machine's node 0
    assert adjust is not None and dict(adjust.annotations) == {ANNOTATION: "1"}
    assert plugin.manager.state.blocks("g", "app")[0].numa_affinity == (1,)  # type: ignore[index]


def test_mapped_late_admission_logs_the_fake_nodes() -> None:
    # a container created while the plugin was away is pinned through the Synchronize
    # reply, which carries no annotation: the decision log is where the fake nodes show
    log = ListLogger()
    plugin = MemoryPlugin(make_plugin().manager, logger=log)
    plugin.tracker.node_map = NodeMap({0: 0, 1: 0, 2: 0, 3: 0})
    plugin.tracker._mems_text = plugin.tracker.node_map.mems_text
    g = pod("g")
    late = container(g, "app", "c1", 2 * GI, cpus="4-5", state=api.CONTAINER_RUNNING)
    updates = plugin.synchronize([g], [late])
    assert [(u.container_id, u.linux.resources.cpu.mems) for u in updates] == [("c1", "0")]
    line = log.find("admission")
    assert (line["result"], line["cpuset_mems"], line["numa_nodes"]) == ("pinned late", "0", "1")


# -- the pod cgroup's hugepage limits ----------------------------------------------------------


@pytest.mark.parametrize(
    ("parent", "expected"),
    [
        (f"/kubepods/burstable/pod{UID}", f"kubepods/burstable/pod{UID}"),
        (
            "kubepods-burstable-podabc.slice",
            "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-podabc.slice",
        ),
        ("kubepods-podabc.slice", "kubepods.slice/kubepods-podabc.slice"),
        ("", None),
        ("/", None),
        ("/kubepods/../etc", None),
    ],
)
def test_cgroup_dir_from_either_driver(parent: str, expected: str | None) -> None:
    found = cgroup_dir(parent)
    assert (None if found is None else str(found)) == expected


def test_hugepage_limits_from_cgroup_v1_and_v2(tmp_path: Path) -> None:
    v1 = tmp_path / "v1"
    pod_dir = v1 / "hugetlb" / "kubepods" / f"pod{UID}"
    pod_dir.mkdir(parents=True)
    (pod_dir / "hugetlb.2MB.limit_in_bytes").write_text(f"{256 << 20}\n")
    (pod_dir / "hugetlb.1GB.limit_in_bytes").write_text("0\n")  # kubelet: 0 when not requested
    assert PodCgroups(v1).hugepage_limits(f"/kubepods/pod{UID}") == {"hugepages-2Mi": 256 << 20}

    v2 = tmp_path / "v2"
    pod_dir = v2 / "kubepods.slice" / "kubepods-podx.slice"
    pod_dir.mkdir(parents=True)
    (pod_dir / "hugetlb.1GB.max").write_text(f"{2 << 30}\n")
    (pod_dir / "hugetlb.2MB.max").write_text("0\n")
    assert PodCgroups(v2).hugepage_limits("kubepods-podx.slice") == {"hugepages-1Gi": 2 << 30}


def test_hugepage_limits_unknown_when_nobody_set_them(tmp_path: Path) -> None:
    pod_dir = tmp_path / "kubepods" / "podx"
    pod_dir.mkdir(parents=True)
    (pod_dir / "hugetlb.2MB.max").write_text("max\n")  # not kubelet's: unlimited
    assert PodCgroups(tmp_path).hugepage_limits("/kubepods/podx") is None
    assert PodCgroups(tmp_path).hugepage_limits("/kubepods/none") is None


# -- exit codes from the runtime's CRI ----------------------------------------------------------


def test_cri_socket_candidates() -> None:
    assert candidate_endpoints(None, "/run/e2e/nri.sock") == [
        Path("/run/e2e/containerd.sock"),
        Path("/run/containerd/containerd.sock"),
    ]
    assert candidate_endpoints("unix:///x/c.sock", "/run/nri/nri.sock") == [Path("/x/c.sock")]


def test_a_sibling_created_after_a_crash_does_not_take_its_memory() -> None:
    # "a" exits with code 3 (the runtime's CRI says so); "b", a name never created
    # before, is then created and started: "a" keeps its blocks (an app container)
    class Codes:
        def __init__(self) -> None:
            self.asked: list[str] = []

        async def of(self, ids: list[str]) -> dict[str, int]:
            self.asked.extend(ids)
            return dict.fromkeys(ids, 3)

    codes = Codes()
    plugin = make_plugin()
    plugin._exit_codes = codes  # type: ignore[assignment]
    g = pod("g")
    a = container(g, "a", "c1", 2 * GI)
    plugin.create_container(g, a)
    plugin.start_container(g, a)
    plugin.stop_container(g, a)
    b = container(g, "b", "c2", 2 * GI)
    pending = plugin.create_container(g, b)
    assert asyncio.iscoroutine(pending)  # it asks the runtime first
    assert mems(asyncio.run(pending)) == "0"
    plugin.start_container(g, b)
    assert codes.asked == ["c1"]
    assert sorted(plugin.manager.state.entries["g"]) == ["a", "b"]
    assert plugin.manager.state.machine[0].memory_map["memory"].reserved == 4 * GI


def test_without_an_exit_code_the_same_sequence_is_taken_for_an_init_container() -> None:
    # the documented residual case: no exit code, no pod-resources listing
    plugin = make_plugin()
    g = pod("g")
    a = container(g, "a", "c1", 2 * GI)
    plugin.create_container(g, a)
    plugin.start_container(g, a)
    plugin.stop_container(g, a)
    b = container(g, "b", "c2", 2 * GI)
    plugin.create_container(g, b)
    plugin.start_container(g, b)
    assert sorted(plugin.manager.state.entries["g"]) == ["b"]

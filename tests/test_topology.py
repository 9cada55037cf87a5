"""Topology loaders: cpulists, the fake-topology schema, files and sysfs discovery."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from nri_plugin.engine.bitmask import format_cpulist, parse_cpulist
from nri_plugin.engine.topology import NumaNode, Topology
from nri_plugin.errors import TopologyError
from nri_plugin.inputs.topology import (
    discover_sysfs,
    load_topology_file,
    topology_from_mapping,
    topology_to_mapping,
)

GI = 1 << 30
MI = 1 << 20
HACK_TOPOLOGIES = Path(__file__).resolve().parent.parent / "hack" / "topologies"


def two_nodes(**node1: Any) -> dict[str, Any]:
    """A valid 2-node mapping whose node 1 gets the given keys."""
    return {
        "nodes": [
            {"id": 0, "cpus": "0-3", "memory": "10Gi", "hugepages": {"2Mi": "1Gi", "1Gi": "2Gi"}},
            {"id": 1, "cpus": "4-7", "memory": "10Gi", **node1},
        ],
        "distances": [[10, 21], [21, 10]],
    }


# -- cpulists ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "cpus"),
    [
        ("", set()),
        ("0", {0}),
        ("0-3,8,10-11", {0, 1, 2, 3, 8, 10, 11}),
        ("0-3\n", {0, 1, 2, 3}),  # as sysfs writes it
        ("5,1", {1, 5}),
        ("7-7", {7}),
    ],
)
def test_parse_cpulist(text: str, cpus: set[int]) -> None:
    assert parse_cpulist(text) == frozenset(cpus)


@pytest.mark.parametrize("text", ["0-", "-1", "a", "0,,1", "1 2", "0-3,", "3-1", "0-99999999"])
def test_malformed_cpulist_names_text(text: str) -> None:
    with pytest.raises(TopologyError) as err:
        parse_cpulist(text, what="topology.nodes[0].cpus")
    assert str(err.value).startswith(f'topology.nodes[0].cpus: "{text}"')


@pytest.mark.parametrize(
    ("cpus", "text"),
    [
        (set(), ""),
        ({0}, "0"),
        ({0, 1}, "0-1"),
        ({0, 1, 2, 3, 8, 10, 11}, "0-3,8,10-11"),
        ({5, 3, 4, 9}, "3-5,9"),
    ],
)
def test_format_cpulist(cpus: set[int], text: str) -> None:
    assert format_cpulist(cpus) == text
    assert parse_cpulist(format_cpulist(cpus)) == frozenset(cpus)


# -- the fake-topology schema ---------------------------------------------


def test_topology_from_mapping() -> None:
    topo = topology_from_mapping(two_nodes())
    assert topo == Topology(
        nodes=(
            NumaNode(
                id=0,
                cpus=frozenset(range(4)),
                memory=10 * GI,
                hugepages={2 * MI: GI, GI: 2 * GI},
            ),
            # every node lists every page size of the machine, 0 where it has none
            NumaNode(
                id=1, cpus=frozenset(range(4, 8)), memory=10 * GI, hugepages={2 * MI: 0, GI: 0}
            ),
        ),
        distances={(0, 0): 10, (0, 1): 21, (1, 0): 21, (1, 1): 10},
    )
    assert topo.hugepage_sizes == (2 * MI, GI)


def test_nodes_are_sorted_by_id_and_distances_follow_list_order() -> None:
    topo = topology_from_mapping(
        {
            "nodes": [
                {"id": 1, "cpus": "4-7", "memory": "1Gi"},
                {"id": 0, "cpus": "0-3", "memory": "2Gi"},
            ],
            "distances": [[10, 31], [21, 10]],
        }
    )
    assert topo.node_ids == (0, 1)
    assert topo.node(0).memory == 2 * GI
    assert topo.distance(1, 0) == 31
    assert topo.distance(0, 1) == 21


def test_cpu_less_nodes_and_no_distances() -> None:
    topo = topology_from_mapping(
        {
            "nodes": [
                {"id": 0, "cpus": "0-1", "memory": "4Gi"},
                {"id": 1, "cpus": "", "memory": "8Gi"},
                {"id": 2, "memory": "8Gi"},
                {"id": 3, "cpus": None, "memory": 8589934592, "hugepages": None},
            ]
        }
    )
    assert [n.cpus for n in topo.nodes[1:]] == [frozenset()] * 3
    assert topo.distances is None
    assert topo.node(3).memory == 8 * GI


def test_unquoted_single_cpu() -> None:
    topo = topology_from_mapping({"nodes": [{"id": 0, "cpus": 5, "memory": "1Gi"}]})
    assert topo.node(0).cpus == frozenset({5})


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (None, "topology: expected a mapping with nodes, got null"),
        ({}, "topology.nodes: expected a list of NUMA nodes, got null"),
        ({"nodes": []}, "topology.nodes: the list is empty"),
        ({"nodes": "0-3"}, 'topology.nodes: expected a list of NUMA nodes, got the string "0-3"'),
        (
            {"nodes": [{"id": 0, "memory": "1Gi"}], "distance": [[10]]},
            'topology: unknown key "distance" (known: nodes, distances); did you mean "distances"?',
        ),
        (two_nodes(memory="12XB"), 'topology.nodes[1].memory: "12XB" is not a valid quantity'),
        (two_nodes(memory="-1Gi"), 'topology.nodes[1].memory: "-1Gi" must not be negative'),
        (two_nodes(memory="0.5"), 'topology.nodes[1].memory: "0.5" is not a whole number'),
        (two_nodes(memroy="1Gi"), 'topology.nodes[1]: unknown key "memroy"'),
        (two_nodes(id=-1), "topology.nodes[1].id: NUMA node id -1 is negative"),
        (two_nodes(id="1"), "topology.nodes[1].id: a NUMA node id must be an integer, got the s"),
        (two_nodes(id=True), "topology.nodes[1].id: a NUMA node id must be an integer"),
        (two_nodes(id=5000), "topology.nodes[1].id: NUMA node id 5000 is above"),
        (two_nodes(id=0), "topology.nodes[1]: NUMA node 0 is listed twice (also at topology.no"),
        (
            two_nodes(cpus="3-5"),
            "topology.nodes[1]: CPU 3 is on NUMA node 1 and also on NUMA node 0",
        ),
        (two_nodes(cpus="4-"), 'topology.nodes[1].cpus: "4-" is not a valid cpulist'),
        (two_nodes(cpus=[4, 5]), "topology.nodes[1].cpus: expected a cpulist string"),
        (
            {"nodes": [{"id": 0, "cpus": "0"}]},
            'topology.nodes[0]: missing key "memory"',
        ),
        ({"nodes": [{"cpus": "0", "memory": "1Gi"}]}, 'topology.nodes[0]: missing key "id"'),
        ({"nodes": ["0-3"]}, "topology.nodes[0]: expected a mapping"),
        (
            two_nodes(hugepages={"2Mi": "3Mi"}),
            'topology.nodes[1].hugepages: "3Mi" of 2Mi hugepages is not a whole number of 2Mi'
            " pages",
        ),
        (
            two_nodes(hugepages={"2Mi": "8Gi", "1Gi": "4Gi"}),
            'topology.nodes[1].hugepages: hugepage pools total "12Gi", more than the node\'s'
            ' memory "10Gi"',
        ),
        (
            two_nodes(hugepages={"2M": "2M"}),
            'topology.nodes[1].hugepages: hugepage size "2M" (2000000 bytes) is not a power of two',
        ),
        (
            two_nodes(hugepages={"2Mi": "2Mi", "2048Ki": "4Mi"}),
            'topology.nodes[1].hugepages: page size "2048Ki" is the same size as "2Mi"',
        ),
        (two_nodes(hugepages={"2Mi": "lots"}), 'topology.nodes[1].hugepages.2Mi: "lots" is not'),
        (
            two_nodes(hugepages={"huge": "2Mi"}),
            'topology.nodes[1].hugepages: "huge" is not a valid quantity',
        ),
        (two_nodes(hugepages=["2Mi"]), "topology.nodes[1].hugepages: expected a mapping"),
    ],
)
def test_invalid_topology_mapping(data: object, message: str) -> None:
    with pytest.raises(TopologyError) as err:
        topology_from_mapping(data)
    assert str(err.value).startswith(message), str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("distances", "message"),
    [
        ([[10, 21]], "topology.distances: expected a 2x2 matrix (one row per node, in the order"),
        ([[10, 21], [21]], "topology.distances[1]: expected a row of 2 distances, got 1 entries"),
        ([[10, 21], [21, 10, 5]], "topology.distances[1]: expected a row of 2 distances, got 3"),
        ([[10, 0], [21, 10]], "topology.distances[0][1]: a distance must be a positive integer"),
        ([[10, -3], [21, 10]], "topology.distances[0][1]: a distance must be a positive integer"),
        ([[10, "21"], [21, 10]], 'positive integer, got the string "21"'),
        ([[10, 2.5], [21, 10]], "positive integer, got the number 2.5"),
        ("10 21", "topology.distances: expected a 2x2 matrix"),
    ],
)
def test_invalid_distances(distances: object, message: str) -> None:
    data = two_nodes()
    data["distances"] = distances
    with pytest.raises(TopologyError) as err:
        topology_from_mapping(data)
    assert message in str(err.value)


def test_source_prefixes_messages() -> None:
    with pytest.raises(TopologyError, match=r"^scenario\.topology\.nodes\[1\]\.memory: "):
        topology_from_mapping(two_nodes(memory="x"), source="scenario.topology")


def test_round_trip_through_mapping_and_json() -> None:
    topo = topology_from_mapping(two_nodes())
    mapping = topology_to_mapping(topo)
    assert mapping == {
        "nodes": [
            {"id": 0, "cpus": "0-3", "memory": "10Gi", "hugepages": {"2Mi": "1Gi", "1Gi": "2Gi"}},
            {"id": 1, "cpus": "4-7", "memory": "10Gi", "hugepages": {"2Mi": "0", "1Gi": "0"}},
        ],
        "distances": [[10, 21], [21, 10]],
    }
    assert topology_from_mapping(json.loads(json.dumps(mapping))) == topo


def test_round_trip_without_distances_or_hugepages() -> None:
    topo = topology_from_mapping({"nodes": [{"id": 0, "cpus": "", "memory": "1536"}]})
    mapping = topology_to_mapping(topo)
    assert mapping == {"nodes": [{"id": 0, "cpus": "", "memory": "1536"}]}
    assert topology_from_mapping(mapping) == topo


# -- files -------------------------------------------------------------------


def test_load_yaml_and_json_files(tmp_path: Path) -> None:
    yaml_file = tmp_path / "t.yaml"
    yaml_file.write_text("nodes:\n  - id: 0\n    cpus: '0-1'\n    memory: 2Gi\n")
    json_file = tmp_path / "t.json"
    json_file.write_text(json.dumps(topology_to_mapping(load_topology_file(yaml_file))))
    assert load_topology_file(json_file) == load_topology_file(str(yaml_file))
    assert load_topology_file(yaml_file).node(0).memory == 2 * GI


def test_missing_file_names_path(tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"
    with pytest.raises(TopologyError, match=rf"^{path}: no such file$"):
        load_topology_file(path)


def test_unreadable_file_names_path(tmp_path: Path) -> None:
    with pytest.raises(TopologyError, match=rf"^{tmp_path}: cannot read: "):
        load_topology_file(tmp_path)  # a directory


def test_malformed_yaml_names_path_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("nodes:\n  - id: 0\n   memory: [\n")
    with pytest.raises(TopologyError) as err:
        load_topology_file(path)
    assert str(err.value).startswith(f"{path}: not valid YAML or JSON: ")
    assert "line" in str(err.value)
    assert "\n" not in str(err.value)


def test_invalid_content_names_path_and_key(tmp_path: Path) -> None:
    path = tmp_path / "t.yaml"
    path.write_text("nodes:\n  - {id: 0, memory: 12XB}\n")
    with pytest.raises(TopologyError) as err:
        load_topology_file(path)
    assert str(err.value) == f'{path}: topology.nodes[0].memory: "12XB" is not a valid quantity'


@pytest.mark.parametrize("name", sorted(p.name for p in HACK_TOPOLOGIES.glob("*.yaml")))
def test_hack_topologies_load(name: str) -> None:
    topo = load_topology_file(HACK_TOPOLOGIES / name)
    assert topo.distances is not None
    assert load_topology_file(HACK_TOPOLOGIES / name) == topology_from_mapping(
        topology_to_mapping(topo)
    )


def test_hack_topologies_cover_the_cases() -> None:
    topos = {p.stem: load_topology_file(p) for p in HACK_TOPOLOGIES.glob("*.yaml")}
    assert len(topos["two-node"].nodes) == 2
    assert topos["four-node-hugepages"].hugepage_sizes == (2 * MI, GI)
    cxl = topos["eight-node-cxl"]
    assert len(cxl.nodes) == 8
    assert sum(1 for n in cxl.nodes if not n.cpus) == 4
    assert topos["two-socket-server"].hugepage_sizes == (2 * MI, GI)


# -- sysfs -------------------------------------------------------------------


def fake_sysfs(
    root: Path,
    nodes: dict[int, tuple[str, int, dict[int, int]]],
    distances: dict[int, str] | None = None,
) -> Path:
    """A sysfs tree: node id -> (cpulist, MemTotal kB, {page size kB: pages})."""
    base = root / "devices" / "system" / "node"
    base.mkdir(parents=True)
    (base / "online").write_text("0-1\n")  # not a node directory; must be ignored
    (base / "possible").write_text("0-1\n")
    for node_id, (cpulist, mem_kb, pages) in nodes.items():
        d = base / f"node{node_id}"
        d.mkdir()
        (d / "cpulist").write_text(cpulist + "\n")
        (d / "meminfo").write_text(
            f"Node {node_id} MemTotal:       {mem_kb} kB\n"
            f"Node {node_id} MemFree:        {mem_kb // 2} kB\n"
        )
        for size_kb, count in pages.items():
            p = d / "hugepages" / f"hugepages-{size_kb}kB"
            p.mkdir(parents=True)
            (p / "nr_hugepages").write_text(f"{count}\n")
            (p / "free_hugepages").write_text(f"{count}\n")
        if distances is not None and node_id in distances:
            (d / "distance").write_text(distances[node_id] + "\n")
    return root


def test_discover_sysfs(tmp_path: Path) -> None:
    root = fake_sysfs(
        tmp_path,
        {
            0: ("0-3", 16 * 1024 * 1024, {2048: 512, 1048576: 2}),
            1: ("4-7", 16 * 1024 * 1024, {2048: 0, 1048576: 0}),
            # a CPU-less (CXL-style) memory node, listed with an id gap
            3: ("", 32 * 1024 * 1024, {2048: 0, 1048576: 0}),
        },
        {0: "10 21 30", 1: "21 10 30", 3: "30 30 10"},
    )
    topo = discover_sysfs(root)
    assert topo == Topology(
        nodes=(
            NumaNode(0, frozenset(range(4)), 16 * GI, {2 * MI: GI, GI: 2 * GI}),
            NumaNode(1, frozenset(range(4, 8)), 16 * GI, {2 * MI: 0, GI: 0}),
            NumaNode(3, frozenset(), 32 * GI, {2 * MI: 0, GI: 0}),
        ),
        distances={
            (0, 0): 10, (0, 1): 21, (0, 3): 30,
            (1, 0): 21, (1, 1): 10, (1, 3): 30,
            (3, 0): 30, (3, 1): 30, (3, 3): 10,
        },
    )  # fmt: skip
    # discovery output fed back as a --topology-file describes the same machine
    assert topology_from_mapping(topology_to_mapping(topo)) == topo


def test_discover_sysfs_orders_nodes_numerically(tmp_path: Path) -> None:
    nodes: dict[int, tuple[str, int, dict[int, int]]] = {
        i: (str(i), 1024 * 1024, {}) for i in (0, 1, 2, 10)
    }
    rows = {i: " ".join("10" if j == i else str(20 + i) for j in (0, 1, 2, 10)) for i in nodes}
    topo = discover_sysfs(fake_sysfs(tmp_path, nodes, rows))
    assert topo.node_ids == (0, 1, 2, 10)
    assert topo.distance(10, 2) == 30
    assert topo.distance(2, 10) == 22


def test_discover_sysfs_without_distances_or_hugepages(tmp_path: Path) -> None:
    topo = discover_sysfs(fake_sysfs(tmp_path, {0: ("0-1", 1024, {})}))
    assert topo == Topology(nodes=(NumaNode(0, frozenset({0, 1}), 1024 * 1024, {}),))


def test_discover_sysfs_without_numa_names_path(tmp_path: Path) -> None:
    with pytest.raises(TopologyError) as err:
        discover_sysfs(tmp_path)
    assert str(err.value).startswith(f"{tmp_path}/devices/system/node: missing")


def test_discover_sysfs_without_node_dirs(tmp_path: Path) -> None:
    (tmp_path / "devices" / "system" / "node").mkdir(parents=True)
    with pytest.raises(TopologyError, match="no node<N> directories"):
        discover_sysfs(tmp_path)


def test_discover_sysfs_missing_meminfo(tmp_path: Path) -> None:
    fake_sysfs(tmp_path, {0: ("0", 1024, {})})
    meminfo = tmp_path / "devices/system/node/node0/meminfo"
    meminfo.unlink()
    with pytest.raises(TopologyError, match=rf"^{meminfo}: no such file$"):
        discover_sysfs(tmp_path)


def test_discover_sysfs_malformed_meminfo(tmp_path: Path) -> None:
    fake_sysfs(tmp_path, {0: ("0", 1024, {})})
    meminfo = tmp_path / "devices/system/node/node0/meminfo"
    meminfo.write_text("Node 0 MemTotal: lots\n")
    with pytest.raises(TopologyError, match=rf'^{meminfo}: no "Node 0 MemTotal: <n> kB" line'):
        discover_sysfs(tmp_path)


def test_discover_sysfs_meminfo_of_another_node(tmp_path: Path) -> None:
    fake_sysfs(tmp_path, {0: ("0", 1024, {})})
    meminfo = tmp_path / "devices/system/node/node0/meminfo"
    meminfo.write_text("Node 1 MemTotal: 1024 kB\n")
    with pytest.raises(TopologyError, match=rf"^{meminfo}: describes node 1, not node 0$"):
        discover_sysfs(tmp_path)


def test_discover_sysfs_malformed_cpulist(tmp_path: Path) -> None:
    fake_sysfs(tmp_path, {0: ("0-x", 1024, {})})
    cpulist = tmp_path / "devices/system/node/node0/cpulist"
    with pytest.raises(TopologyError, match=rf'^{cpulist}: "0-x\\n" is not a valid cpulist'):
        discover_sysfs(tmp_path)


def test_discover_sysfs_malformed_nr_hugepages(tmp_path: Path) -> None:
    fake_sysfs(tmp_path, {0: ("0", 1024 * 1024, {2048: 1})})
    nr = tmp_path / "devices/system/node/node0/hugepages/hugepages-2048kB/nr_hugepages"
    nr.write_text("many\n")
    with pytest.raises(TopologyError, match=rf'^{nr}: expected a non-negative integer, got "many"'):
        discover_sysfs(tmp_path)


def test_discover_sysfs_bad_distance_row(tmp_path: Path) -> None:
    fake_sysfs(tmp_path, {0: ("0", 1024, {}), 1: ("1", 1024, {})}, {0: "10 21", 1: "21"})
    distance = tmp_path / "devices/system/node/node1/distance"
    with pytest.raises(TopologyError, match=rf'^{distance}: expected 2 distances .*got "21"$'):
        discover_sysfs(tmp_path)


def test_discover_sysfs_distance_missing_on_one_node(tmp_path: Path) -> None:
    fake_sysfs(tmp_path, {0: ("0", 1024, {}), 1: ("1", 1024, {})}, {0: "10 21"})
    distance = tmp_path / "devices/system/node/node1/distance"
    with pytest.raises(TopologyError, match=rf"^{distance}: no such file$"):
        discover_sysfs(tmp_path)


def test_discover_sysfs_cpu_on_two_nodes(tmp_path: Path) -> None:
    fake_sysfs(tmp_path, {0: ("0-1", 1024, {}), 1: ("1-2", 1024, {})})
    with pytest.raises(TopologyError, match="CPU 1 is on NUMA node 1 and also on NUMA node 0"):
        discover_sysfs(tmp_path)

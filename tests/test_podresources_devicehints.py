"""Device hints from pod-resources answers, against kubelet's device manager.

The table cases are kubelet's ``TestGetTopologyHints`` common cases
(``pkg/kubelet/cm/devicemanager/topology_hints_test.go``, ``getCommonTestCases``),
on kubelet's two-node machine (``numaNodes: []int{0, 1}``):

* the cases with devices already allocated to the container go through
  ``allocated_device_hints`` (the path kubelet takes for them);
* the cases that allocate afresh check ``generate_device_hints`` with the
  devices kubelet would find available (healthy minus those allocated to
  another container), since regeneration is the same function with the
  container's devices as the available ones;
* "less/more already allocated to container than requested" do not apply:
  they test kubelet's request-size check, and the pod-resources answer gives
  the allocated devices, not the request (our request is their number).

Then properties: an independent brute-force oracle written over sets of node
ids, and invariances of the wire form (entry order, one entry per node).
"""

from __future__ import annotations

import ast
import random
from collections.abc import Sequence
from itertools import combinations
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nri_plugin.engine.bitmask import mask_of
from nri_plugin.engine.hint import TopologyHint
from nri_plugin.podresources.devicehints import (
    allocated_device_hints,
    device_topology,
    generate_device_hints,
    iterate_masks,
)
from nri_plugin.podresources.resources import ContainerDevices

NODES = (0, 1)


def hint(*nodes: int, preferred: bool) -> TopologyHint:
    return TopologyHint(mask_of(nodes), preferred)


def numa(resource: str, device_id: str, *nodes: int) -> ContainerDevices:
    """kubelet's makeNUMADevice, in the wire form (one entry per node)."""
    return ContainerDevices(resource, (device_id,), tuple(nodes))


def bare(resource: str, device_id: str) -> ContainerDevices:
    return ContainerDevices(resource, (device_id,))


def topology(entries: Sequence[ContainerDevices], resource: str) -> dict[str, frozenset[int]]:
    return device_topology(entries)[resource]


# -- kubelet's cases ------------------------------------------------------------------------


def test_single_request_no_alignment() -> None:
    # Dev3 has Topology{Nodes: []}, Dev4 Topology{Nodes: nil}: on the wire neither has nodes
    inventory = [bare("testdevice", f"Dev{i}") for i in (1, 2, 3, 4)]
    got = allocated_device_hints(NODES, [bare("testdevice", "Dev1")], inventory)
    assert got == {"testdevice": None}


def test_single_request_only_one_with_alignment() -> None:
    inventory = [bare("testdevice", "Dev1"), numa("testdevice", "Dev2", 1)]
    got = generate_device_hints(NODES, topology(inventory, "testdevice"), ["Dev1", "Dev2"], 1)
    assert got == [hint(1, preferred=True), hint(0, 1, preferred=False)]


def test_single_request_one_device_per_socket() -> None:
    inventory = [numa("testdevice", "Dev1", 0), numa("testdevice", "Dev2", 1)]
    got = generate_device_hints(NODES, topology(inventory, "testdevice"), ["Dev1", "Dev2"], 1)
    assert got == [hint(0, preferred=True), hint(1, preferred=True), hint(0, 1, preferred=False)]


def test_request_for_2_one_device_per_socket() -> None:
    inventory = [numa("testdevice", "Dev1", 0), numa("testdevice", "Dev2", 1)]
    got = generate_device_hints(NODES, topology(inventory, "testdevice"), ["Dev1", "Dev2"], 2)
    assert got == [hint(0, 1, preferred=True)]


def test_request_for_2_two_devices_per_socket() -> None:
    inventory = [numa("testdevice", f"Dev{i}", (i - 1) % 2) for i in (1, 2, 3, 4)]
    available = ["Dev1", "Dev2", "Dev3", "Dev4"]
    got = generate_device_hints(NODES, topology(inventory, "testdevice"), available, 2)
    assert got == [hint(0, preferred=True), hint(1, preferred=True), hint(0, 1, preferred=False)]


def test_request_for_2_optimal_on_one_node_forced_cross_numa() -> None:
    inventory = [numa("testdevice", f"Dev{i}", (i - 1) % 2) for i in (1, 2, 3, 4)]
    # Dev1 and Dev2 are allocated to another container of the pod
    got = generate_device_hints(NODES, topology(inventory, "testdevice"), ["Dev3", "Dev4"], 2)
    assert got == [hint(0, 1, preferred=False)]


def test_two_device_types_mixed_configuration() -> None:
    inventory = [numa("testdevice1", f"Dev{i}", (i - 1) % 2) for i in (1, 2, 3, 4)]
    inventory.append(numa("testdevice2", "Dev1", 0))
    got1 = generate_device_hints(
        NODES, topology(inventory, "testdevice1"), ["Dev1", "Dev2", "Dev3", "Dev4"], 2
    )
    got2 = generate_device_hints(NODES, topology(inventory, "testdevice2"), ["Dev1"], 1)
    assert got1 == [hint(0, preferred=True), hint(1, preferred=True), hint(0, 1, preferred=False)]
    assert got2 == [hint(0, preferred=True), hint(0, 1, preferred=False)]


def test_more_requested_than_available() -> None:
    # kubelet answers [] before generating; generating gives [] as well
    inventory = [numa("testdevice", f"Dev{i}", 0 if i < 3 else 1) for i in (1, 2, 3, 4)]
    available = ["Dev1", "Dev2", "Dev3", "Dev4"]
    assert generate_device_hints(NODES, topology(inventory, "testdevice"), available, 6) == []


def test_all_already_allocated_to_container() -> None:
    inventory = [numa("testdevice", "Dev1", 0), numa("testdevice", "Dev2", 0)]
    allocated = [ContainerDevices("testdevice", ("Dev1", "Dev2"), (0,))]
    got = allocated_device_hints(NODES, allocated, inventory)
    assert got == {"testdevice": [hint(0, preferred=True), hint(0, 1, preferred=False)]}


# -- the regeneration path beyond kubelet's table --------------------------------------------


def test_no_devices_no_opinion() -> None:
    assert allocated_device_hints(NODES, [], [numa("gpu", "a", 0)]) is None
    assert allocated_device_hints(NODES, [ContainerDevices("gpu", ())]) is None


def test_allocated_on_node_1_of_four() -> None:
    nodes = (0, 1, 2, 3)
    inventory = [numa("gpu", f"g{n}", n) for n in nodes]
    got = allocated_device_hints(nodes, [numa("gpu", "g1", 1)], inventory)
    assert got is not None
    hints = got["gpu"]
    assert hints is not None
    assert hints[0] == hint(1, preferred=True)
    assert all(h.mask is not None and h.mask & 0b10 for h in hints)
    assert [h for h in hints if h.preferred] == [hint(1, preferred=True)]
    assert len(hints) == 8  # every mask holding node 1


def test_allocation_wider_than_the_inventory_needs_is_not_preferred() -> None:
    # two GPUs per node exist, but the container got one on node 0 and one on node 1
    inventory = [numa("gpu", f"g{i}", i // 2) for i in range(4)]
    allocated = [numa("gpu", "g0", 0), numa("gpu", "g2", 1)]
    assert allocated_device_hints(NODES, allocated, inventory) == {
        "gpu": [hint(0, 1, preferred=False)]
    }


def test_unknown_inventory_counts_the_container_devices_only() -> None:
    allocated = [numa("gpu", "g0", 0), numa("gpu", "g2", 1)]
    assert allocated_device_hints(NODES, allocated) == {"gpu": [hint(0, 1, preferred=True)]}


def test_allocated_device_without_topology_among_aligned_ones_fits_no_mask() -> None:
    inventory = [numa("nic", "vf0", 0), bare("nic", "vf1")]
    assert allocated_device_hints(NODES, [bare("nic", "vf1")], inventory) == {"nic": []}


def test_device_on_two_nodes_arrives_as_two_entries() -> None:
    allocated = [numa("fpga", "f0", 0), numa("fpga", "f0", 1)]
    inventory = [*allocated, numa("fpga", "f1", 1)]
    assert device_topology(allocated) == {"fpga": {"f0": frozenset({0, 1})}}
    # AnySet: node 0 alone holds f0, and so does node 1
    assert allocated_device_hints(NODES, allocated, inventory) == {
        "fpga": [hint(0, preferred=True), hint(1, preferred=True), hint(0, 1, preferred=False)]
    }


def test_one_provider_entry_per_resource() -> None:
    allocated = [numa("gpu", "g0", 1), numa("nic", "vf3", 0), bare("qat", "q0")]
    inventory = [*allocated, numa("gpu", "g1", 0), bare("qat", "q1")]
    got = allocated_device_hints(NODES, allocated, inventory)
    assert got == {
        "gpu": [hint(1, preferred=True), hint(0, 1, preferred=False)],
        "nic": [hint(0, preferred=True), hint(0, 1, preferred=False)],
        "qat": None,
    }


def test_nodes_the_machine_does_not_have_hold_nothing() -> None:
    # a device reporting node 7 on a two-node machine: AnySet over machine masks never hits it
    got = allocated_device_hints(NODES, [numa("gpu", "g0", 7)], [numa("gpu", "g1", 0)])
    assert got == {"gpu": []}


def test_kubelet_mask_order() -> None:
    assert list(iterate_masks((0, 1, 2))) == [
        0b001, 0b010, 0b100, 0b011, 0b101, 0b110, 0b111
    ]  # fmt: skip


# -- properties ------------------------------------------------------------------------------


def oracle(
    machine: Sequence[int],
    inventory: dict[str, frozenset[int]],
    allocated: set[str],
) -> list[tuple[frozenset[int], bool]] | None:
    """kubelet's regeneration re-derived over node sets, for one resource."""
    if all(not nodes for nodes in inventory.values()):
        return None
    subsets = [frozenset(c) for k in range(1, len(machine) + 1) for c in combinations(machine, k)]

    def held(devices: set[str], subset: frozenset[int]) -> int:
        return sum(1 for d in devices if inventory.get(d, frozenset()) & subset)

    request = len(allocated)
    feasible = [len(s) for s in subsets if held(set(inventory), s) >= request]
    narrowest = min(feasible, default=len(machine))
    return [(s, len(s) == narrowest) for s in subsets if held(allocated, s) == request]


@st.composite
def situations(draw: st.DrawFn) -> tuple[tuple[int, ...], list[ContainerDevices], set[str]]:
    machine = tuple(sorted(draw(st.sets(st.integers(0, 9), min_size=1, max_size=5))))
    # devices report machine nodes mostly, sometimes none, sometimes a node the machine lacks
    node = st.one_of(st.sampled_from(machine), st.integers(0, 11))
    count = draw(st.integers(1, 8))
    entries: list[ContainerDevices] = []
    for i in range(count):
        nodes = draw(st.lists(node, max_size=3, unique=True))
        if nodes:
            entries.extend(numa("dev", f"d{i}", n) for n in nodes)
        else:
            entries.append(bare("dev", f"d{i}"))
    allocated = draw(st.sets(st.sampled_from([f"d{i}" for i in range(count)]), min_size=1))
    return machine, entries, allocated


@given(situations())
@settings(max_examples=300, deadline=None)
def test_regenerated_hints_equal_the_oracle(
    situation: tuple[tuple[int, ...], list[ContainerDevices], set[str]],
) -> None:
    machine, entries, allocated = situation
    mine = [e for e in entries if e.device_ids[0] in allocated]
    got = allocated_device_hints(machine, mine, entries)
    assert got is not None
    expected = oracle(machine, device_topology(entries)["dev"], allocated)
    hints = got["dev"]
    if expected is None:
        assert hints is None
        return
    assert hints is not None
    assert [(frozenset(h.nodes() or ()), h.preferred) for h in hints] == expected


@given(situations(), st.randoms())
@settings(max_examples=200, deadline=None)
def test_entry_order_and_grouping_do_not_matter(
    situation: tuple[tuple[int, ...], list[ContainerDevices], set[str]], rnd: random.Random
) -> None:
    machine, entries, allocated = situation
    mine = [e for e in entries if e.device_ids[0] in allocated]
    reference = allocated_device_hints(machine, mine, entries)
    # the same devices grouped into one entry per NUMA node, in any order
    grouped: dict[tuple[int, ...], list[str]] = {}
    for e in mine:
        grouped.setdefault(e.numa_nodes, []).extend(e.device_ids)
    regrouped = [ContainerDevices("dev", tuple(ids), nodes) for nodes, ids in grouped.items()]
    shuffled = list(entries)
    rnd.shuffle(regrouped)
    rnd.shuffle(shuffled)
    assert allocated_device_hints(machine, regrouped, shuffled) == reference
    # an unknown inventory is the container's own devices
    assert allocated_device_hints(machine, mine) == allocated_device_hints(machine, mine, mine)


@given(situations())
@settings(max_examples=200, deadline=None)
def test_hints_are_upward_closed_and_in_kubelet_order(
    situation: tuple[tuple[int, ...], list[ContainerDevices], set[str]],
) -> None:
    machine, entries, allocated = situation
    mine = [e for e in entries if e.device_ids[0] in allocated]
    got = allocated_device_hints(machine, mine, entries)
    assert got is not None
    hints = got["dev"]
    if hints is None:
        return
    order = list(iterate_masks(machine))
    masks = [h.mask for h in hints]
    assert masks == [m for m in order if m in set(masks)]
    full = mask_of(machine)
    for m in masks:
        assert m is not None
        for n in machine:
            assert (m | 1 << n) in masks  # any wider mask holds the devices too
    # preferred hints share one width, and it is the narrowest hint's when any is preferred
    widths = {h.mask.bit_count() for h in hints if h.preferred and h.mask is not None}
    assert len(widths) <= 1
    if widths and masks:
        assert widths == {min(m.bit_count() for m in masks if m is not None)}
    if masks:
        assert masks[-1] == full


@given(st.sets(st.integers(0, 7), min_size=1, max_size=4), st.data())
@settings(max_examples=100, deadline=None)
def test_allocation_on_one_node_is_preferred_there(nodes: set[int], data: st.DataObject) -> None:
    machine = tuple(sorted(nodes))
    where = data.draw(st.sampled_from(machine))
    others = data.draw(st.lists(st.sampled_from(machine), max_size=6))
    inventory = [numa("gpu", f"o{i}", n) for i, n in enumerate(others)]
    allocated = [numa("gpu", "mine0", where), numa("gpu", "mine1", where)]
    got = allocated_device_hints(machine, allocated, [*inventory, *allocated])
    assert got is not None
    hints = got["gpu"]
    assert hints is not None
    assert hints[0] == hint(where, preferred=True)
    assert [h for h in hints if h.preferred] == [hint(where, preferred=True)]


# -- purity ----------------------------------------------------------------------------------


@pytest.mark.parametrize("module", ["devicehints", "resources", "ratelimit"])
def test_pure_modules_do_no_io(module: str) -> None:
    path = Path(__file__).resolve().parents[1] / "nri_plugin" / "podresources" / f"{module}.py"
    imported: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            imported.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module)
    forbidden = ("asyncio", "grpc", "socket", "threading", "subprocess", "google", "os")
    bad = sorted(i for i in imported if i.split(".")[0] in forbidden or ".gen" in i)
    assert bad == []
    ours = {i for i in imported if i.startswith("nri_plugin.")}
    assert ours <= {
        "nri_plugin.engine.bitmask",
        "nri_plugin.engine.hint",
        "nri_plugin.podresources.resources",
    }

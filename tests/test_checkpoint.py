"""The checkpoint file: kubelet's format and checksum, file safety, writer, restore checks."""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import json
import os
import stat
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nri_plugin.engine.manager import MemoryManager
from nri_plugin.engine.restore import expected_state, validate_restored
from nri_plugin.engine.state import (
    POLICY_NONE,
    POLICY_STATIC,
    Block,
    MemoryState,
    MemoryTable,
    NodeState,
)
from nri_plugin.errors import StateError
from nri_plugin.inputs.scenario import AdmitStep, parse_scenario
from nri_plugin.persist.checksum import checksum, checksum_dump, fnv1a_32
from nri_plugin.persist.file import load_file, write_file
from nri_plugin.persist.format import MAX_UINT64, dumps, from_checkpoint, to_checkpoint
from nri_plugin.persist.writer import CheckpointWriter

DATA = Path(__file__).parent / "data"
KUBERNETES_IO_EXAMPLE = DATA / "kubernetes-io-memory-manager-state.json"
GOLDEN = DATA / "memory_manager_state"

G = 1 << 30
HP = "hugepages-2Mi"


def table(total: int, system_reserved: int = 0, reserved: int = 0) -> MemoryTable:
    allocatable = total - system_reserved
    return MemoryTable(total, system_reserved, allocatable, reserved, allocatable - reserved)


def default_machine() -> MemoryState:
    """Three nodes as the policy builds them at start: all free, cells [self]."""
    return MemoryState(
        POLICY_STATIC,
        {
            0: NodeState(0, {"memory": table(10 * G, 1 * G), HP: table(1 * G)}, [0]),
            1: NodeState(0, {"memory": table(10 * G), HP: table(1 * G)}, [1]),
            2: NodeState(0, {"memory": table(10 * G), HP: table(1 * G)}, [2]),
        },
    )


ENTRIES: dict[str, dict[str, list[Block]]] = {
    "pod-a": {"app": [Block((0,), "memory", 2 * G)]},
    "pod-b": {
        "db": [Block((1, 2), HP, 3 * G // 2), Block((1, 2), "memory", 12 * G)],
    },
}


def running_machine() -> MemoryState:
    """default_machine after admitting ENTRIES, written out by hand as kubelet would hold it."""
    return MemoryState(
        POLICY_STATIC,
        {
            0: NodeState(1, {"memory": table(10 * G, 1 * G, 2 * G), HP: table(1 * G)}, [0]),
            1: NodeState(2, {"memory": table(10 * G, 0, 10 * G), HP: table(1 * G, 0, G)}, [1, 2]),
            2: NodeState(
                2, {"memory": table(10 * G, 0, 2 * G), HP: table(1 * G, 0, G // 2)}, [1, 2]
            ),
        },
        copy.deepcopy(ENTRIES),
    )


def kubelet_restore_test_state() -> MemoryState:
    """The state of kubelet's TestCheckpointStateRestore "Restore valid checkpoint"."""
    return MemoryState(
        "static",
        {0: NodeState(0, {"memory": MemoryTable(2048, 512, 1536, 512, 1024)}, [])},
        {"pod": {"container1": [Block((0,), "memory", 512)]}},
    )


def as_json(state: MemoryState) -> Any:
    return json.loads(dumps(state))


# -- checksum ----------------------------------------------------------------


def test_fnv1a_32_known_vectors() -> None:
    assert fnv1a_32(b"") == 2166136261
    assert fnv1a_32(b"a") == 0xE40C292C
    assert fnv1a_32(b"foobar") == 0xBF9CF968


def test_worked_example_dump_and_checksum() -> None:
    state = kubelet_restore_test_state()
    assert checksum_dump(state) == (
        "(*state.MemoryManagerCheckpoint){PolicyName:(string)static"
        " MachineState:(state.NUMANodeMap)map[0:<*>{NumberOfAssignments:(int)0"
        " MemoryMap:(map[v1.ResourceName]*state.MemoryTable)map[memory:<*>{"
        "TotalMemSize:(uint64)2048 SystemReserved:(uint64)512 Allocatable:(uint64)1536"
        " Reserved:(uint64)512 Free:(uint64)1024}] Cells:([]int)[]}]"
        " Entries:(state.ContainerMemoryAssignments)map[pod:map[container1:["
        "{NUMAAffinity:([]int)[0] Type:(v1.ResourceName)memory Size:(uint64)512}]]]"
        " Checksum:(checksum.Checksum)0}"
    )
    assert checksum(state) == 4215593881


def test_kubernetes_io_example_checksum_uses_old_names() -> None:
    state = load_file(KUBERNETES_IO_EXAMPLE)
    assert state is not None
    # The example's checksum was made by the first implementation: "static",
    # state.NodeMap and field Nodes.
    original = dataclasses.replace(state, policy_name="static")
    dump = checksum_dump(original, legacy_names=True)
    assert "MachineState:(state.NodeMap)map[0:<*>" in dump
    assert "Nodes:([]int)[0 1]}" in dump
    assert fnv1a_32(dump.encode()) == 4142013182
    assert checksum(original) != 4142013182  # not with today's names


def test_checksum_dump_sorts_nodes_types_pods_and_keeps_block_order() -> None:
    state = MemoryState(
        POLICY_STATIC,
        {
            10: NodeState(0, {"memory": table(4), "hugepages-1Gi": table(0)}, [10]),
            2: NodeState(0, {"memory": table(4), "hugepages-2Mi": table(0)}, [2]),
        },
        {
            "uid-b": {"c": [Block((2,), "memory", 1)]},
            "uid-a": {
                "z": [Block((10,), "memory", 1), Block((10,), "hugepages-1Gi", 0)],
                "b": [Block((10,), "memory", 2)],
            },
        },
    )
    dump = checksum_dump(state)
    assert dump.index("map[2:<*>") < dump.index(" 10:<*>")
    assert "MemoryTable)map[hugepages-2Mi:<*>" in dump  # node 2: byte order, memory last
    assert "MemoryTable)map[hugepages-1Gi:<*>" in dump  # node 10
    assert dump.index("uid-a:map[b:[") < dump.index(" z:[") < dump.index("uid-b:map[c:[")
    # blocks hashed as stored: memory before hugepages here
    assert "z:[{NUMAAffinity:([]int)[10] Type:(v1.ResourceName)memory Size:(uint64)1}" in dump
    swapped = copy.deepcopy(state)
    swapped.entries["uid-a"]["z"].reverse()
    assert checksum(swapped) != checksum(state)


def test_empty_state_dumps_empty_maps() -> None:
    state = MemoryState(POLICY_NONE)
    assert checksum_dump(state) == (
        "(*state.MemoryManagerCheckpoint){PolicyName:(string)None"
        " MachineState:(state.NUMANodeMap)map[]"
        " Entries:(state.ContainerMemoryAssignments)map[] Checksum:(checksum.Checksum)0}"
    )


# -- writing the JSON --------------------------------------------------------


def test_dumps_is_kubelets_compact_json() -> None:
    assert dumps(kubelet_restore_test_state()) == (
        '{"policyName":"static","machineState":{"0":{"numberOfAssignments":0,'
        '"memoryMap":{"memory":{"total":2048,"systemReserved":512,"allocatable":1536,'
        '"reserved":512,"free":1024}},"cells":[]}},"entries":{"pod":{"container1":'
        '[{"numaAffinity":[0],"type":"memory","size":512}]}},"checksum":4215593881}'
    )


def test_dumps_sorts_node_ids_as_go_sorts_strings() -> None:
    state = MemoryState(
        POLICY_STATIC,
        {n: NodeState(0, {"memory": table(1)}, [n]) for n in (2, 10, 1)},
    )
    assert list(as_json(state)["machineState"]) == ["1", "10", "2"]
    assert list(to_checkpoint(state)) == ["policyName", "machineState", "checksum"]


def test_entries_omitted_when_empty_and_present_otherwise() -> None:
    state = default_machine()
    assert "entries" not in as_json(state)
    assert '"entries"' not in dumps(state)
    state.set_blocks("pod-a", "app", [Block((0,), "memory", G)])
    assert list(to_checkpoint(state)) == ["policyName", "machineState", "entries", "checksum"]


def test_dumps_escapes_html_characters_like_go() -> None:
    state = MemoryState(POLICY_STATIC, {0: NodeState(1, {"memory": table(4)}, [0])})
    state.set_blocks("pod<&>", "c", [Block((0,), "memory", 0)])
    text = dumps(state)
    assert '"pod\\u003c\\u0026\\u003e"' in text
    assert from_checkpoint(json.loads(text)) == state


# encoding/json's escapes beyond JSON's, applied to json.dumps' text: the reference
# for dumps, which writes the text directly.
GO_ESCAPES = str.maketrans(
    {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}
)


def reference_dumps(state: MemoryState) -> str:
    text = json.dumps(to_checkpoint(state), separators=(",", ":"), ensure_ascii=False)
    return text.translate(GO_ESCAPES)


def test_dumps_escapes_strings_as_json_dumps_and_go_do() -> None:
    odd = 'q"b\\s/\x00\x1f\x7f<&>\u2028\u2029é😀'
    state = MemoryState(POLICY_STATIC, {0: NodeState(1, {"hugepages-" + odd: table(4)}, [0])})
    state.set_blocks("pod" + odd, odd, [Block((0,), "hugepages-" + odd, 1)])
    text = dumps(state)
    assert text == reference_dumps(state)
    assert "\\u2028" in text and "\u2028" not in text
    assert from_checkpoint(json.loads(text)) == state


def large_state(pods: int) -> MemoryState:
    state = default_machine()
    for i in range(pods):
        blocks = [Block((i % 3,), HP, 2 << 20), Block((i % 3,), "memory", i)]
        state.set_blocks(f"pod-{i:04d}", "app", blocks)
        if i % 7 == 0:
            state.set_blocks(f"pod-{i:04d}", "sidecar", [Block((1, 2), "memory", 1)])
    return state


def test_large_state_text_is_whole() -> None:
    # Hundreds of pods: the writers join them a few hundred at a time.
    state = large_state(700)
    assert dumps(state) == reference_dumps(state)
    pods = []
    for uid in sorted(state.entries):
        items = []
        for name, blocks in sorted(state.entries[uid].items()):
            text = " ".join(
                f"{{NUMAAffinity:([]int)[{' '.join(map(str, b.numa_affinity))}]"
                f" Type:(v1.ResourceName){b.type} Size:(uint64){b.size}}}"
                for b in blocks
            )
            items.append(f"{name}:[{text}]")
        pods.append(f"{uid}:map[{' '.join(items)}]")
    entries = f" Entries:(state.ContainerMemoryAssignments)map[{' '.join(pods)}] Checksum:"
    assert entries in checksum_dump(state)


def test_clone_is_independent_of_later_changes() -> None:
    # The checkpoint writer serialises a clone in a thread while the state changes.
    state = large_state(10)
    snapshot = state.clone()
    before = dumps(snapshot)
    state.machine[0].memory_map["memory"].free -= 1
    state.machine[0].cells.append(9)
    blocks = state.blocks("pod-0000", "app")
    assert blocks is not None
    # stored lists are replaced, never changed in place (the clone shares them)
    state.set_blocks("pod-0000", "app", [Block((2,), HP, 0), *blocks[1:]])
    state.set_blocks("pod-0000", "new", [Block((0,), "memory", 1)])
    state.delete_blocks("pod-0001", "app")
    assert dumps(snapshot) == before
    assert snapshot.entries["pod-0000"]["app"][0] == Block((0,), HP, 2 << 20)
    assert "new" not in snapshot.entries["pod-0000"] and "pod-0001" in snapshot.entries


def test_clone_keeps_the_init_blocks_an_app_container_shrinks_later() -> None:
    # The policy shrinks an init container's blocks by what the app reuses (kubelet's
    # updateInitContainersMemoryBlocks): a snapshot taken before (a checkpoint write in
    # flight) must keep them whole.
    scenario = parse_scenario(
        {
            "topology": {"nodes": [{"id": 0, "cpus": "0-3", "memory": "8Gi"}]},
            "config": {"policy": "static", "reservedMemory": ["0:memory=1Gi"]},
            "steps": [
                {"admit": {"pod": {"uid": "p"}, "containers": [_guaranteed("init", "4Gi")]}},
                {
                    "admit": {
                        "pod": {"uid": "p"},
                        "initContainers": [_guaranteed("init", "4Gi")],
                        "containers": [_guaranteed("app", "3Gi")],
                    }
                },
            ],
        }
    )
    manager = MemoryManager(scenario.topology, scenario.config)
    first, second = scenario.steps
    assert isinstance(first, AdmitStep) and isinstance(second, AdmitStep)
    assert manager.admit(first.pod).admitted
    snapshot = manager.state.clone()
    assert manager.admit(second.pod).admitted
    assert [b.size for b in manager.state.blocks("p", "init") or []] == [G]
    assert [b.size for b in snapshot.blocks("p", "init") or []] == [4 * G]
    assert snapshot.blocks("p", "app") is None


def _guaranteed(name: str, memory: str) -> dict[str, Any]:
    amounts = {"cpu": "1", "memory": memory}
    return {"name": name, "resources": {"requests": amounts, "limits": amounts}}


def test_golden_file_is_what_we_write() -> None:
    # Byte-for-byte regression of the writer: a 3-node machine with a group.
    assert GOLDEN.read_text() == dumps(running_machine())
    assert load_file(GOLDEN) == running_machine()


# -- the writer (persistence.CheckpointWriter) --------------------------------


async def wait_for_writes(writer: CheckpointWriter, count: int) -> None:
    for _ in range(500):
        if writer.writes >= count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{writer.writes} writes, expected {count}")


def test_writer_coalesces_a_burst_into_one_write(tmp_path: Path) -> None:
    path = tmp_path / "state"
    state = large_state(3)

    async def burst() -> CheckpointWriter:
        writer = CheckpointWriter(path, None)
        for i in range(50):
            state.set_blocks(f"burst-{i}", "app", [Block((0,), "memory", i)])
            writer.request(state)
        await writer.flush()
        return writer

    writer = asyncio.run(burst())
    assert writer.writes == 1
    assert path.read_text() == dumps(state)


def test_writer_pauses_between_writes_and_flush_skips_the_pause(tmp_path: Path) -> None:
    path = tmp_path / "state"
    state = large_state(3)

    async def scenario() -> None:
        writer = CheckpointWriter(path, None, min_gap=60.0)
        writer.request(state)
        await wait_for_writes(writer, 1)  # the first write does not wait
        first = dumps(state)
        assert path.read_text() == first
        state.delete_blocks("pod-0000", "app")
        writer.request(state)
        await asyncio.sleep(0.3)
        assert (writer.writes, path.read_text()) == (1, first)  # paused
        started = time.monotonic()
        await writer.flush()
        assert time.monotonic() - started < 30  # not the 60 s pause
        assert (writer.writes, path.read_text()) == (2, dumps(state))

    asyncio.run(scenario())


def test_writer_pause_grows_with_the_write_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "state"
    state = large_state(3)
    real_write = write_file

    def slow_write(target: Path, snapshot: MemoryState) -> None:
        time.sleep(0.05)
        real_write(target, snapshot)

    monkeypatch.setattr("nri_plugin.persist.writer.write_file", slow_write)

    async def scenario() -> None:
        # at least 0.05 s per write, times 200: a pause of 10 s or more
        writer = CheckpointWriter(path, None, min_gap=0.0, gap_factor=200.0)
        writer.request(state)
        await wait_for_writes(writer, 1)
        state.delete_blocks("pod-0000", "app")
        writer.request(state)
        await asyncio.sleep(0.5)
        assert writer.writes == 1
        await writer.flush()
        assert (writer.writes, path.read_text()) == (2, dumps(state))

    asyncio.run(scenario())


def test_writer_without_pause_writes_every_change_promptly(tmp_path: Path) -> None:
    path = tmp_path / "state"
    state = large_state(3)

    async def scenario() -> None:
        writer = CheckpointWriter(path, None, min_gap=0.0, gap_factor=0.0)
        for i in range(3):
            state.set_blocks(f"late-{i}", "app", [Block((1,), "memory", i)])
            writer.request(state)
            await wait_for_writes(writer, i + 1)
            assert path.read_text() == dumps(state)

    asyncio.run(scenario())


# -- reading -----------------------------------------------------------------


def test_round_trip() -> None:
    state = running_machine()
    data = to_checkpoint(state)
    assert from_checkpoint(data) == state
    assert from_checkpoint(json.loads(json.dumps(data))) == state
    assert from_checkpoint(json.loads(dumps(state))) == state


memory_types = st.sampled_from(["memory", "hugepages-2Mi", "hugepages-1Gi"])
uint64 = st.integers(min_value=0, max_value=MAX_UINT64)
names = st.text(st.characters(codec="utf-8"), min_size=1, max_size=8)


@st.composite
def states(draw: st.DrawFn) -> MemoryState:
    ids = draw(st.lists(st.integers(0, 20), unique=True, max_size=4))
    machine = {
        i: NodeState(
            draw(st.integers(0, 100)),
            draw(
                st.dictionaries(
                    memory_types, st.builds(MemoryTable, uint64, uint64, uint64, uint64, uint64)
                )
            ),
            draw(st.lists(st.integers(0, 20), unique=True, max_size=3)),
        )
        for i in ids
    }
    blocks = st.lists(
        st.builds(
            Block,
            st.lists(st.integers(0, 20), unique=True, min_size=1, max_size=3).map(tuple),
            memory_types,
            uint64,
        ),
        max_size=3,
    )
    entries = draw(st.dictionaries(names, st.dictionaries(names, blocks, max_size=3), max_size=3))
    policy = draw(st.sampled_from([POLICY_STATIC, POLICY_NONE]))
    return MemoryState(policy, machine, entries)


# deadline=None: correctness properties, not timings (speed is benchmarks/' business); a
# state of a few hundred blocks serialised twice can exceed hypothesis's 200 ms default
# on a loaded 2-core machine and fail for no fault of the code.
@settings(max_examples=300, deadline=None)
@given(states())
def test_dumps_is_the_text_of_to_checkpoint(state: MemoryState) -> None:
    assert dumps(state) == reference_dumps(state)


@settings(max_examples=200, deadline=None)
@given(states())
def test_round_trip_any_state(state: MemoryState) -> None:
    data = json.loads(dumps(state))
    assert data["checksum"] == checksum(state)
    assert from_checkpoint(data) == state


def test_load_kubernetes_io_example_file() -> None:
    state = load_file(KUBERNETES_IO_EXAMPLE)
    assert state is not None
    assert state.policy_name == POLICY_STATIC
    assert state.machine[0].cells == [0, 1]
    assert state.machine[1].cells == [0, 1]
    assert state.machine[1].memory_map["memory"].free == 103739236352
    assert state.entries == {
        "fa9bdd38-6df9-4cf9-aa67-8c4814da37a8": {
            "guaranteed": [Block((0, 1), "memory", 161061273600)]
        }
    }
    # Rewritten in today's layout: cells, "Static", a current checksum.
    rewritten = as_json(state)
    assert rewritten["machineState"]["0"]["cells"] == [0, 1]
    assert "nodes" not in rewritten["machineState"]["0"]
    assert from_checkpoint(rewritten) == state


def test_old_layout_with_original_lower_case_policy_name() -> None:
    data = json.loads(KUBERNETES_IO_EXAMPLE.read_text())
    data["policyName"] = "static"
    assert from_checkpoint(data).policy_name == POLICY_STATIC


def test_old_layout_with_new_names_checksum_is_accepted() -> None:
    data = as_json(running_machine())
    for node in data["machineState"].values():
        node["nodes"] = node.pop("cells")
    assert from_checkpoint(data) == running_machine()


def test_old_layout_none_policy() -> None:
    state = MemoryState("none", {0: NodeState(0, {"memory": table(4)}, [0])})
    data = as_json(state)
    data["machineState"]["0"]["nodes"] = data["machineState"]["0"].pop("cells")
    data["checksum"] = fnv1a_32(checksum_dump(state, legacy_names=True).encode())
    assert from_checkpoint(data).policy_name == POLICY_NONE


def test_corrupted_checksum() -> None:
    data = as_json(running_machine())
    data["checksum"] += 1
    with pytest.raises(StateError, match=r"checksum: checkpoint is corrupted: stored checksum"):
        from_checkpoint(data)


def test_edited_value_is_detected_as_corruption() -> None:
    data = as_json(running_machine())
    data["machineState"]["1"]["memoryMap"]["memory"]["free"] += 1
    with pytest.raises(StateError, match="checkpoint is corrupted"):
        from_checkpoint(data, source="initialState")


def test_kubernetes_io_example_with_edited_value_is_corrupted() -> None:
    data = json.loads(KUBERNETES_IO_EXAMPLE.read_text())
    data["entries"]["fa9bdd38-6df9-4cf9-aa67-8c4814da37a8"]["guaranteed"][0]["size"] -= 1
    with pytest.raises(StateError, match="checkpoint is corrupted"):
        from_checkpoint(data)


@pytest.mark.parametrize("name", ["static", "none", "STATIC", "Foo", ""])
def test_policy_name_other_than_static_or_none_is_refused(name: str) -> None:
    state = dataclasses.replace(running_machine(), policy_name=name)
    with pytest.raises(StateError, match=r"policyName: .* is not 'Static' or 'None'"):
        from_checkpoint(as_json(state))


def test_kubelet_restore_test_file_is_refused_for_its_lower_case_name() -> None:
    # Valid checksum, but today's kubelet refuses "static" too.
    with pytest.raises(StateError, match=r"policyName: \"static\""):
        from_checkpoint(as_json(kubelet_restore_test_state()))


def test_both_cells_and_nodes_is_refused() -> None:
    data = as_json(running_machine())
    data["machineState"]["0"]["nodes"] = [0]
    with pytest.raises(StateError, match=r"state: machineState\.0: has both 'cells' and 'nodes'"):
        from_checkpoint(data)


def test_mixed_group_keys_are_refused() -> None:
    data = as_json(running_machine())
    data["machineState"]["0"]["nodes"] = data["machineState"]["0"].pop("cells")
    with pytest.raises(StateError, match="machineState: mixes the group keys"):
        from_checkpoint(data)


def _set(data: Any, path: str, value: object) -> None:
    *parents, last = path.split("/")
    for key in parents:
        data = data[int(key)] if isinstance(data, list) else data[key]
    if value is _DELETE:
        del data[last]
    elif isinstance(data, list):
        data[int(last)] = value
    else:
        data[last] = value


_DELETE = object()


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("policyName", _DELETE, r"^state: policyName: is missing$"),
        ("policyName", 1, r"^state: policyName: must be a string, got the number 1$"),
        ("machineState", _DELETE, r"^state: machineState: is missing$"),
        ("machineState", [], r"^state: machineState: must be a JSON object, got an empty list$"),
        ("checksum", _DELETE, r"^state: checksum: is missing$"),
        ("checksum", -1, r"^state: checksum: must be a non-negative integer, got -1$"),
        ("checksum", 1 << 64, r"^state: checksum: must be at most 18446744073709551615"),
        (
            "machineState/0/numberOfAssignments",
            -1,
            r"^state: machineState\.0\.numberOfAssignments: must be a non-negative integer",
        ),
        (
            "machineState/0/numberOfAssignments",
            True,
            r"numberOfAssignments: must be a non-negative integer, got the boolean true$",
        ),
        (
            "machineState/1/memoryMap/memory/free",
            _DELETE,
            r"^state: machineState\.1\.memoryMap\.memory\.free: is missing$",
        ),
        (
            "machineState/1/memoryMap/memory/free",
            -5,
            r"^state: machineState\.1\.memoryMap\.memory\.free: must be a non-negative integer",
        ),
        (
            "machineState/1/memoryMap/memory/total",
            1.5,
            r"memory\.total: must be a non-negative integer, got the number 1\.5$",
        ),
        ("machineState/1/memoryMap/memory/total", "10", r"memory\.total: must be a non-negative"),
        ("machineState/1/memoryMap/memory", None, r"memoryMap\.memory: must be a JSON object"),
        ("machineState/1/memoryMap/memory", None, r"got null$"),
        ("machineState/1/cells", _DELETE, r"^state: machineState\.1\.cells: is missing$"),
        ("machineState/1/cells", "1,2", r"machineState\.1\.cells: must be a list of NUMA"),
        ("machineState/1/cells/0", -1, r"machineState\.1\.cells\[0\]: must be a non-negative"),
        ("machineState/1/cells/0", 2, r"machineState\.1\.cells: must not repeat a NUMA node"),
        ("machineState/1/memoryMap/cpu", {}, r"memoryMap: key \"cpu\" is not 'memory'"),
        ("entries", [], r"^state: entries: must be a JSON object, got an empty list$"),
        ("entries/pod-a", [], r"^state: entries\.pod-a: must be a JSON object"),
        ("entries/pod-a/app", {}, r"^state: entries\.pod-a\.app: must be a list of memory"),
        ("entries/pod-a/app/0", 1, r"^state: entries\.pod-a\.app\[0\]: must be a JSON object"),
        (
            "entries/pod-a/app/0/size",
            _DELETE,
            r"^state: entries\.pod-a\.app\[0\]\.size: is missing$",
        ),
        ("entries/pod-a/app/0/size", -512, r"app\[0\]\.size: must be a non-negative integer"),
        ("entries/pod-a/app/0/numaAffinity", [], r"numaAffinity: must name at least one NUMA"),
        ("entries/pod-a/app/0/numaAffinity", [0, 0], r"numaAffinity: must not repeat"),
        ("entries/pod-a/app/0/type", "cpu", r"app\[0\]\.type: \"cpu\" is not 'memory'"),
        ("entries/pod-a/app/0/type", 7, r"app\[0\]\.type: must be a string, got the number 7$"),
    ],
)
def test_wrong_types_and_missing_keys_name_the_key_path(
    path: str, value: object, message: str
) -> None:
    data = as_json(running_machine())
    _set(data, path, value)
    with pytest.raises(StateError, match=message):
        from_checkpoint(data)


@pytest.mark.parametrize("key", ["x", "-1", "01", "1.0", ""])
def test_node_id_keys_must_be_decimal_ids(key: str) -> None:
    data = as_json(running_machine())
    data["machineState"][key] = data["machineState"].pop("0")
    with pytest.raises(StateError, match=r"^state: machineState: key .* must be a NUMA node id"):
        from_checkpoint(data)


def test_top_level_must_be_an_object() -> None:
    with pytest.raises(StateError, match=r"^state: must be a JSON object, got an empty list$"):
        from_checkpoint([])


def test_integer_node_keys_from_yaml_are_accepted() -> None:
    data = as_json(running_machine())
    data["machineState"] = {int(k): v for k, v in data["machineState"].items()}
    assert from_checkpoint(data) == running_machine()


def test_error_messages_are_one_line() -> None:
    data = as_json(running_machine())
    data["entries"]["pod-a"]["app"][0]["type"] = "x\ny"
    with pytest.raises(StateError) as info:
        from_checkpoint(data)
    assert "\n" not in str(info.value)


# -- the file ----------------------------------------------------------------


def test_load_missing_file_is_none(tmp_path: Path) -> None:
    assert load_file(tmp_path / "memory_manager_state") is None


def test_load_truncated_file(tmp_path: Path) -> None:
    path = tmp_path / "memory_manager_state"
    path.write_text(dumps(running_machine())[:-20])
    with pytest.raises(
        StateError, match=r"memory_manager_state: not valid JSON: .* \(cut short\?\)$"
    ):
        load_file(path)


def test_load_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "memory_manager_state"
    path.write_text("")
    with pytest.raises(StateError, match="checkpoint is empty"):
        load_file(path)


def test_load_non_utf8_file(tmp_path: Path) -> None:
    path = tmp_path / "memory_manager_state"
    path.write_bytes(b'{"policyName":"\xff"}')
    with pytest.raises(StateError, match="not UTF-8"):
        load_file(path)


def test_load_corrupted_file_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "memory_manager_state"
    path.write_text(dumps(running_machine()).replace('"free":0', '"free":1', 1))
    with pytest.raises(StateError, match=rf"^{path}: checksum: checkpoint is corrupted"):
        load_file(path)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"policyName":"Static","policyName":"None"}', r'duplicate key "policyName"'),
        ('{"checksum":NaN}', "NaN is not a JSON number"),
        ("[" * 100000 + "]" * 100000, "nested deeper than 64 levels"),
    ],
)
def test_load_refuses_json_that_kubelet_would_not_write(
    tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "memory_manager_state"
    path.write_text(text)
    with pytest.raises(StateError, match=message):
        load_file(path)


def test_load_refuses_symlink_even_to_a_valid_file(tmp_path: Path) -> None:
    real = tmp_path / "real"
    write_file(real, running_machine())
    link = tmp_path / "memory_manager_state"
    link.symlink_to(real)
    with pytest.raises(StateError, match="is a symlink; refusing to follow it"):
        load_file(link)


def test_load_refuses_dangling_symlink(tmp_path: Path) -> None:
    link = tmp_path / "memory_manager_state"
    link.symlink_to(tmp_path / "nowhere")
    with pytest.raises(StateError, match="is a symlink"):
        load_file(link)


def test_load_refuses_directory(tmp_path: Path) -> None:
    path = tmp_path / "memory_manager_state"
    path.mkdir()
    with pytest.raises(StateError, match="checkpoint is not a regular file"):
        load_file(path)


def test_write_creates_private_directory_and_file(tmp_path: Path) -> None:
    path = tmp_path / "var" / "lib" / "nri-memory-manager" / "memory_manager_state"
    write_file(path, running_machine())
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "var").stat().st_mode) == 0o700
    assert path.read_text() == dumps(running_machine())
    assert load_file(path) == running_machine()
    assert os.listdir(path.parent) == ["memory_manager_state"]


def test_write_leaves_an_existing_directory_mode_alone(tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    write_file(tmp_path / "memory_manager_state", running_machine())
    assert stat.S_IMODE(tmp_path.stat().st_mode) == 0o755


def test_write_replaces_old_content(tmp_path: Path) -> None:
    path = tmp_path / "memory_manager_state"
    write_file(path, default_machine())
    path.chmod(0o644)
    write_file(path, running_machine())
    assert load_file(path) == running_machine()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_crash_before_rename_keeps_old_file_and_no_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "memory_manager_state"
    write_file(path, default_machine())
    old = path.read_bytes()

    def crash(src: object, dst: object) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(StateError, match=r"cannot write checkpoint: Input/output error"):
        write_file(path, running_machine())
    assert path.read_bytes() == old
    assert os.listdir(tmp_path) == ["memory_manager_state"]


def test_write_refuses_symlink_destination(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("keep me")
    link = tmp_path / "memory_manager_state"
    link.symlink_to(victim)
    with pytest.raises(StateError, match="is a symlink; refusing to replace it"):
        write_file(link, running_machine())
    assert victim.read_text() == "keep me"
    assert link.is_symlink()
    assert sorted(os.listdir(tmp_path)) == ["memory_manager_state", "victim"]


def test_write_refuses_directory_destination(tmp_path: Path) -> None:
    (tmp_path / "memory_manager_state").mkdir()
    with pytest.raises(StateError, match="is not a regular file; refusing to replace it"):
        write_file(tmp_path / "memory_manager_state", running_machine())
    assert os.listdir(tmp_path) == ["memory_manager_state"]


# -- restore validation ------------------------------------------------------


def test_expected_state_applies_blocks_like_allocations() -> None:
    default = default_machine()
    before = copy.deepcopy(default)
    expected = expected_state(default, ENTRIES)
    assert expected == running_machine()
    assert default == before


def test_validate_accepts_consistent_state() -> None:
    validate_restored(running_machine(), default_machine(), POLICY_STATIC)


def test_validate_accepts_other_distribution_inside_a_group() -> None:
    saved = running_machine()
    # Same group sums (memory 12Gi reserved / 8Gi free over [1, 2]), split differently.
    saved.machine[1].memory_map["memory"] = table(10 * G, 0, 4 * G)
    saved.machine[2].memory_map["memory"] = table(10 * G, 0, 8 * G)
    saved.machine[1].cells = [2, 1]
    validate_restored(saved, default_machine(), POLICY_STATIC)


def test_validate_accepts_empty_state_without_entries() -> None:
    validate_restored(MemoryState(POLICY_STATIC), default_machine(), POLICY_STATIC)


def test_validate_none_policy_only_checks_the_name() -> None:
    validate_restored(MemoryState(POLICY_NONE), MemoryState(POLICY_NONE), POLICY_NONE)


def test_validate_policy_mismatch() -> None:
    with pytest.raises(
        StateError,
        match=r'^\[memorymanager\] configured policy "Static" differs from state checkpoint'
        r' policy "None"$',
    ):
        validate_restored(MemoryState(POLICY_NONE), default_machine(), POLICY_STATIC)


def test_validate_empty_machine_with_entries() -> None:
    saved = MemoryState(POLICY_STATIC, {}, copy.deepcopy(ENTRIES))
    with pytest.raises(
        StateError,
        match=r"^\[memorymanager\] machine state can not be empty when it has memory assignments$",
    ):
        validate_restored(saved, default_machine(), POLICY_STATIC)


def test_validate_block_on_missing_node() -> None:
    saved = running_machine()
    saved.set_blocks("pod-c", "x", [Block((3,), "memory", G)])
    with pytest.raises(
        StateError,
        match=r"^\[memorymanager\] \(pod: pod-c, container: x\) the memory assignment uses the"
        r" NUMA that does not exist: node 3$",
    ):
        validate_restored(saved, default_machine(), POLICY_STATIC)


def test_validate_block_of_missing_memory_type() -> None:
    saved = running_machine()
    saved.set_blocks("pod-c", "x", [Block((0,), "hugepages-1Gi", G)])
    with pytest.raises(
        StateError,
        match=r"\(pod: pod-c, container: x\) the memory assignment uses memory resource that"
        r" does not exist: hugepages-1Gi on node 0$",
    ):
        validate_restored(saved, default_machine(), POLICY_STATIC)


def _break_nodes(s: MemoryState) -> None:
    del s.machine[2]


def _break_count(s: MemoryState) -> None:
    s.machine[0].number_of_assignments = 2


def _break_cells(s: MemoryState) -> None:
    s.machine[2].cells = [2]


def _break_types(s: MemoryState) -> None:
    s.machine[0].memory_map["hugepages-1Gi"] = table(0)


def _break_total(s: MemoryState) -> None:
    s.machine[0].memory_map["memory"].total += 1


def _break_system_reserved(s: MemoryState) -> None:
    s.machine[0].memory_map["memory"] = table(10 * G, 2 * G, 2 * G)


def _break_free(s: MemoryState) -> None:
    s.machine[2].memory_map["memory"] = table(10 * G, 0, 3 * G)


def _break_reserved(s: MemoryState) -> None:
    # free sums still agree; only reserved is off
    s.machine[2].memory_map[HP].reserved += 1


@pytest.mark.parametrize(
    ("breakage", "detail"),
    [
        (_break_nodes, r"saved NUMA nodes \[0, 1\], the machine has \[0, 1, 2\]"),
        (_break_count, r"node 0 numberOfAssignments: saved 2, expected 1"),
        (_break_cells, r"node 2 cells: saved \[2\], expected \[1, 2\]"),
        (
            _break_types,
            r"node 0 memory types: saved \['hugepages-1Gi', 'hugepages-2Mi', 'memory'\],"
            r" expected \['hugepages-2Mi', 'memory'\]",
        ),
        (_break_total, r"node 0 memory total: saved 10737418241, expected 10737418240"),
        (_break_system_reserved, r"node 0 memory systemReserved: saved 2147483648, expected"),
        (
            _break_free,
            r"node 1 memory free summed over group \[1, 2\]: saved 7516192768,"
            r" expected 8589934592",
        ),
        (
            _break_reserved,
            r"node 1 hugepages-2Mi reserved summed over group \[1, 2\]: saved 1610612737,"
            r" expected 1610612736",
        ),
    ],
)
def test_validate_reports_which_node_and_field_differ(breakage: Any, detail: str) -> None:
    saved = running_machine()
    breakage(saved)
    with pytest.raises(
        StateError,
        match=r"^\[memorymanager\] the expected machine state is different from the real one: "
        + detail,
    ):
        validate_restored(saved, default_machine(), POLICY_STATIC)


def test_validate_after_file_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "memory_manager_state"
    write_file(path, running_machine())
    restored = load_file(path)
    assert restored is not None
    validate_restored(restored, default_machine(), POLICY_STATIC)

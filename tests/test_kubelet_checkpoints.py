"""Kubelet's memory manager checkpoints of 1.34 to 1.37: every form read, every checksum verified.

Sources (kubernetes/kubernetes, ``pkg/kubelet/cm/memorymanager/state/``):

* ``checkpoint.go`` @78fc8e44 (one struct: 1.34, 1.35), @1c4a3861 (1.36:
  ``MemoryManagerCheckpointV1``, and ``V2`` with ``PodEntries``, PRs #134768 and
  #137751) and after #139626 (1.37: ``V3``, ``data`` and ``dataChecksum``);
* ``state_checkpoint_test.go``, ``TestCheckpointStateRestore`` after #139626: the
  contents and checksums of :data:`KUBELET_VECTORS`, kubelet's own expectations;
* the data files and how they were made: ``tests/data/kubelet/README.md``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from nri_plugin.engine.state import Block, MemoryState, MemoryTable, NodeState
from nri_plugin.errors import StateError
from nri_plugin.frontends.simulate import simulate_text
from nri_plugin.persist.checksum import _NEW_NAMES, _dump, data_checksum, fnv1a_32
from nri_plugin.persist.file import load_checkpoint, load_file
from nri_plugin.persist.format import (
    FORM_V1,
    FORM_V2,
    FORM_V3,
    Checkpoint,
    checkpoint_to_json,
    dumps,
    from_checkpoint,
    read_checkpoint,
)

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data" / "kubelet"
GI = 1 << 30
POD_LEVEL_UID = "5a4b3c2d-1e0f-4a9b-8c7d-6e5f4a3b2c03"

FILES = {
    "memory_manager_state.v1": FORM_V1,
    "memory_manager_state.v1-1.36": FORM_V1,
    "memory_manager_state.v2-no-pod-entries": FORM_V2,
    "memory_manager_state.v3": FORM_V3,
}
POD_LEVEL_FILES = {
    "memory_manager_state.v2-pod-entries": (FORM_V2, "podEntries"),
    "memory_manager_state.v3-pod-entries": (FORM_V3, "data.podEntries"),
}
# the same with a second container in the pod's shared pool: kubelet repeats the pool
# in its entry, so the pod's entries are no longer parts of its budget
SHARED_POOL_FILES = {
    "memory_manager_state.v2-pod-entries-shared": (FORM_V2, "podEntries"),
    "memory_manager_state.v3-pod-entries-shared": (FORM_V3, "data.podEntries"),
}

# The machine the data files and the scenario describe (README.md).
TOPOLOGY = {
    "nodes": [
        {"id": 0, "cpus": "0-7", "memory": "16Gi", "hugepages": {"2Mi": "1Gi"}},
        {"id": 1, "cpus": "8-15", "memory": "16Gi", "hugepages": {"2Mi": "1Gi"}},
    ]
}
CONFIG = {
    "policy": "static",
    "topologyManagerPolicy": "single-numa-node",
    "reservedMemory": ["0:memory=1Gi"],
}


def text(name: str) -> str:
    return (DATA / name).read_text()


def as_json(name: str) -> dict[str, Any]:
    data = json.loads(text(name))
    assert isinstance(data, dict)
    return data


# -- kubelet's own test vectors --------------------------------------------------------------

# TestCheckpointStateRestore's v1 state: one node, a 512-byte block of "container1" in "pod"
KUBELET_STATE = MemoryState(
    "static",
    {0: NodeState(0, {"memory": MemoryTable(2048, 512, 1536, 512, 1024)}, [])},
    {"pod": {"container1": [Block((0,), "memory", 512)]}},
)
KUBELET_DATA = (
    '{"policyName":"static","machineState":{"0":{"numberOfAssignments":0,"memoryMap":'
    '{"memory":{"total":2048,"systemReserved":512,"allocatable":1536,"reserved":512,'
    '"free":1024}},"cells":[]}},"entries":{"pod":{"container1":[{"numaAffinity":[0],'
    '"type":"memory","size":512}]}}'
)
KUBELET_POD_ENTRIES = (
    ',"podEntries":{"pod":{"memoryBlocks":[{"numaAffinity":[0],"type":"memory","size":512}]}}'
)


def test_checksums_equal_the_ones_kubelets_tests_expect() -> None:
    s = KUBELET_STATE
    assert fnv1a_32(_dump(s.policy_name, s.machine, s.entries, _NEW_NAMES).encode()) == 4215593881
    pods = {"pod": [Block((0,), "memory", 512)]}
    v2 = _dump(s.policy_name, s.machine, s.entries, _NEW_NAMES, pods)
    assert fnv1a_32(v2.encode()) == 1278640530
    assert data_checksum(KUBELET_DATA + "}") == 1849615440
    assert data_checksum(KUBELET_DATA + KUBELET_POD_ENTRIES + "}") == 637296054
    unknown = '{"unknownField":"value",' + KUBELET_DATA[1:] + "}"
    assert data_checksum(unknown) == 2100279793


def test_an_empty_pod_entries_map_and_a_nil_block_list_hash_as_go_prints_them() -> None:
    s = KUBELET_STATE
    empty = _dump(s.policy_name, s.machine, s.entries, _NEW_NAMES, {})
    assert " PodEntries:(state.PodMemoryAssignments)map[] Checksum:" in empty
    nil = _dump(s.policy_name, s.machine, s.entries, _NEW_NAMES, {"pod": None})
    assert "map[pod:{MemoryBlocks:([]state.Block)<nil>}]" in nil


# -- the files of each kubelet version --------------------------------------------------------


@pytest.mark.parametrize(("name", "form"), FILES.items())
def test_every_version_reads_to_the_same_state(name: str, form: str) -> None:
    checkpoint = read_checkpoint(as_json(name), source=name)
    assert checkpoint.form == form
    assert checkpoint.pod_entries == {}
    assert checkpoint.state == read_checkpoint(as_json("memory_manager_state.v1")).state
    assert load_file(DATA / name) == checkpoint.state
    assert len(checkpoint.state.entries) == 2


@pytest.mark.parametrize(("name", "form_and_path"), POD_LEVEL_FILES.items())
def test_pod_level_entries_are_read_and_never_dropped(
    name: str, form_and_path: tuple[str, str]
) -> None:
    form, _ = form_and_path
    checkpoint = load_checkpoint(DATA / name)
    assert checkpoint is not None and checkpoint.form == form
    assert checkpoint.pod_entries == {POD_LEVEL_UID: (Block((1,), "memory", 4 * GI),)}
    # the containers of that pod share its 4Gi: 1Gi exclusive, the 3Gi pool
    assert checkpoint.state.entries[POD_LEVEL_UID] == {
        "db": [Block((1,), "memory", GI)],
        "web": [Block((1,), "memory", 3 * GI)],
    }
    # one container in the pool: its entry is the rest of the budget, a part of it as the
    # engine models a pod-level reservation (podLevelResources: managers)
    state = from_checkpoint(as_json(name), source=name)
    assert state.pod_entries == {POD_LEVEL_UID: [Block((1,), "memory", 4 * GI)]}
    assert state.entries == checkpoint.state.entries


@pytest.mark.parametrize(("name", "form_and_path"), SHARED_POOL_FILES.items())
def test_pod_level_entries_sharing_the_pool_are_refused(
    name: str, form_and_path: tuple[str, str]
) -> None:
    form, path = form_and_path
    checkpoint = load_checkpoint(DATA / name)
    assert checkpoint is not None and checkpoint.form == form
    # the engine, recovery and simulate refuse them rather than count the pod twice
    with pytest.raises(StateError) as err:
        from_checkpoint(as_json(name), source=name)
    message = str(err.value)
    assert message.startswith(f'{name}: {path}: pod "{POD_LEVEL_UID}" holds pod-level memory')
    assert "PodLevelResourceManagers" in message and "\n" not in message


def test_our_file_stays_in_the_form_every_kubelet_reads() -> None:
    state = read_checkpoint(as_json("memory_manager_state.v3")).state
    ours = dumps(state)
    assert ours == text("memory_manager_state.v1")  # byte for byte what kubelet 1.35 writes
    assert read_checkpoint(json.loads(ours)).form == FORM_V1
    assert "data" not in json.loads(ours) and "podEntries" not in json.loads(ours)


# -- what a file we cannot verify says ------------------------------------------------------


def _refused(data: dict[str, Any]) -> str:
    with pytest.raises(StateError) as err:
        read_checkpoint(data, source="f")
    message = str(err.value)
    assert "\n" not in message
    return message


def _edit_v1_fields(data: dict[str, Any]) -> dict[str, Any]:
    data["machineState"]["1"]["memoryMap"]["memory"]["free"] += 1
    return data


def test_a_changed_v1_file_names_both_forms_it_could_be() -> None:
    message = _refused(_edit_v1_fields(as_json("memory_manager_state.v1")))
    assert message.startswith("f: checksum: checkpoint is corrupted: stored checksum ")
    assert "as kubelet's v1 form" in message and "as kubelet 1.36's v2 form" in message


def test_a_changed_v2_file_names_the_v2_form() -> None:
    data = as_json("memory_manager_state.v2-pod-entries")
    data["podEntries"][POD_LEVEL_UID]["memoryBlocks"][0]["size"] = 5 * GI
    message = _refused(data)
    assert "does not match the content of kubelet 1.36's v2 form" in message


def test_changed_data_fails_the_data_checksum() -> None:
    data = as_json("memory_manager_state.v3")
    data["data"] = data["data"].replace('"free":', '"free":1', 1)
    message = _refused(data)
    assert message.startswith("f: dataChecksum: checkpoint is corrupted: stored checksum")
    assert "does not match data of kubelet 1.37's v3 form" in message


def test_changed_v1_fields_of_a_v3_file_fail_their_own_checksum() -> None:
    # kubelet 1.37 reads only data, but a 1.36 kubelet after a downgrade reads these
    message = _refused(_edit_v1_fields(as_json("memory_manager_state.v3")))
    assert "checksum: checkpoint is corrupted" in message
    assert "does not match the v1 fields of kubelet 1.37's v3 form" in message


def test_v1_fields_and_data_that_disagree_are_refused_even_with_both_sums_right() -> None:
    data = as_json("memory_manager_state.v3")
    other = read_checkpoint(as_json("memory_manager_state.v3-pod-entries")).state
    v1 = json.loads(dumps(other))  # another state, its own valid v1 checksum
    data.update({k: v1[k] for k in ("machineState", "entries", "checksum")})
    message = _refused(data)
    assert message.startswith("f: machineState: differs from data.machineState")


@pytest.mark.parametrize("missing", ["data", "dataChecksum"])
def test_a_v3_file_needs_data_and_its_checksum(missing: str) -> None:
    data = as_json("memory_manager_state.v3")
    del data[missing]
    assert _refused(data).startswith(f"f: {missing}: is missing (kubelet 1.37's v3 form")


def test_pod_entries_beside_data_are_no_kubelet_s() -> None:
    data = as_json("memory_manager_state.v3")
    data["podEntries"] = {}
    assert _refused(data).startswith("f: podEntries: beside data:")


def test_data_that_is_not_json_names_data() -> None:
    data = as_json("memory_manager_state.v3")
    data["data"] = "{"
    data["dataChecksum"] = data_checksum("{")
    assert _refused(data).startswith("f: data: not valid JSON: ")


# -- the commands: `state` and `simulate` ----------------------------------------------------


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nri_plugin.cli", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )


def test_state_shows_the_form_and_the_pod_level_memory() -> None:
    proc = run("state", "--state-file", str(DATA / "memory_manager_state.v3-pod-entries"))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[1].startswith("form: v3 (kubelet 1.37: ")
    at = lines.index(next(line for line in lines if line.startswith("pod-level memory")))
    assert lines[at + 1].split() == ["POD", "TYPE", "SIZE", "NUMA"]
    assert lines[at + 2].split() == [POD_LEVEL_UID, "memory", "4Gi", "1"]


def test_state_json_keeps_pod_level_entries_in_a_form_that_reads_back(tmp_path: Path) -> None:
    proc = run("state", "--json", "--state-file", str(DATA / "memory_manager_state.v3-pod-entries"))
    assert proc.returncode == 0, proc.stderr
    shown = json.loads(proc.stdout)
    assert list(shown) == ["policyName", "machineState", "entries", "podEntries", "checksum"]
    again = read_checkpoint(shown)
    assert again.form == FORM_V2
    read = read_checkpoint(as_json("memory_manager_state.v3-pod-entries"))
    assert again == Checkpoint(read.state, FORM_V2, read.pod_entries)
    assert checkpoint_to_json(again) == shown


def scenario(initial: object) -> str:
    return yaml.safe_dump(
        {
            "topology": TOPOLOGY,
            "config": CONFIG,
            "initialState": initial,
            "steps": [{"remove": {"pod": "0b7e6c5d-4a3b-4e2f-8d1c-0a9b8c7d6e02"}}],
        }
    )


@pytest.mark.parametrize("name", FILES)
def test_simulate_starts_from_each_kubelet_version(name: str) -> None:
    report = simulate_text(scenario(as_json(name)))
    final = from_checkpoint(report["state"])
    assert list(final.entries) == ["6f1c2d1e-0f0a-4c53-9d3b-1a2b3c4d5e01"]  # db removed
    assert final.machine[1].memory_map["memory"].reserved == 0


@pytest.mark.parametrize(("name", "form_and_path"), SHARED_POOL_FILES.items())
def test_simulate_refuses_pod_level_entries_naming_them(
    name: str, form_and_path: tuple[str, str], tmp_path: Path
) -> None:
    path = tmp_path / "scenario.yaml"
    path.write_text(scenario(as_json(name)))
    proc = run("simulate", str(path))
    assert proc.returncode == 2 and proc.stdout == ""
    [line] = proc.stderr.splitlines()
    assert f'initialState: {form_and_path[1]}: pod "{POD_LEVEL_UID}" holds pod-level' in line


@pytest.mark.parametrize("name", POD_LEVEL_FILES)
def test_simulate_starts_from_a_pod_level_reservation_and_gives_it_back(name: str) -> None:
    initial = as_json(name)
    started = yaml.safe_load(scenario(initial))
    started["steps"] = [{"remove": {"pod": POD_LEVEL_UID}}]
    report = simulate_text(yaml.safe_dump(started))
    assert report["steps"][0]["removed"] is True
    final = from_checkpoint(report["state"])
    assert final.pod_entries == {} and POD_LEVEL_UID not in final.entries
    # node 1 keeps the other pod's 9Gi; the pod's 4Gi budget is free again
    assert final.machine[1].memory_map["memory"].reserved == 9 * GI

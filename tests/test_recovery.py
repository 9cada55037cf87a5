"""Restart recovery (recovery.py): untrusted files, rebuild, drift, change without drain."""

from __future__ import annotations

import ast
import json
import os
import stat
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
import structlog
from hypothesis import given, settings
from hypothesis import strategies as st

from nri_plugin import cli
from nri_plugin.engine.config import Config
from nri_plugin.engine.manager import MemoryManager
from nri_plugin.engine.rebase import (
    OUTCOME_NONE,
    OUTCOME_POLICY_CHANGED,
    OUTCOME_REBASED,
    OUTCOME_RESTORED,
    OUTCOME_UNTRUSTED,
)
from nri_plugin.engine.restore import expected_state
from nri_plugin.engine.state import POLICY_NONE, POLICY_STATIC, Block, MemoryState
from nri_plugin.engine.topology import Topology
from nri_plugin.errors import StateError
from nri_plugin.frontends.nri import AdmissionRefused, MemoryPlugin
from nri_plugin.inputs.config import parse_config
from nri_plugin.inputs.topology import topology_from_mapping
from nri_plugin.nri.gen import nri_pb2 as api
from nri_plugin.persist.file import write_file
from nri_plugin.persist.format import dumps, to_checkpoint
from nri_plugin.persist.recovery import ConservationGate, Recovery, recover
from nri_plugin.persist.writer import CheckpointWriter
from nri_plugin.tracker.tracker import NodeTracker
from tests.nri_builders import GI, container, pod

MI = 1 << 20
HP = "hugepages-1Gi"
PACKAGE = Path(__file__).resolve().parent.parent / "nri_plugin"
STATE = "memory_manager_state"


class Log:
    """A structlog-like logger that records (level, event, fields)."""

    def __init__(self) -> None:
        self.records: list[tuple[str, str, dict[str, Any]]] = []

    def _add(self, level: str, event: str, **kw: Any) -> None:
        self.records.append((level, event, kw))

    def debug(self, event: str, **kw: Any) -> None:
        self._add("debug", event, **kw)

    def info(self, event: str, **kw: Any) -> None:
        self._add("info", event, **kw)

    def warning(self, event: str, **kw: Any) -> None:
        self._add("warning", event, **kw)

    def error(self, event: str, **kw: Any) -> None:
        self._add("error", event, **kw)

    def at(self, level: str) -> list[tuple[str, dict[str, Any]]]:
        return [(e, kw) for lv, e, kw in self.records if lv == level]


def topo(memory: tuple[str, ...] = ("8Gi",) * 4, hugepages: str = "2Gi") -> Topology:
    return topology_from_mapping(
        {
            "nodes": [
                {
                    "id": i,
                    "cpus": f"{4 * i}-{4 * i + 3}",
                    "memory": m,
                    "hugepages": {"1Gi": hugepages},
                }
                for i, m in enumerate(memory)
            ]
        }
    )


def cfg(**override: Any) -> Config:
    data: dict[str, Any] = {
        "policy": "static",
        "topologyManagerPolicy": "best-effort",
        "reservedMemory": ["0:memory=1Gi"],
    }
    data.update(override)
    return parse_config(data)


# -- a node's worth of running containers, as the plugin recorded them --------------------------


class Node:
    """Pods created through the plugin, and the runtime's view of them (for Synchronize)."""

    def __init__(self, topology: Topology, config: Config) -> None:
        self.plugin = MemoryPlugin(MemoryManager(topology, config), logger=Log())
        self.pods: list[api.PodSandbox] = []
        self.running: list[api.Container] = []

    def run(
        self,
        uid: str,
        qos: str = "Guaranteed",
        containers: tuple[tuple[str, int | None], ...] = (),
        **kw: Any,
    ) -> None:
        p = pod(uid, qos)
        self.pods.append(p)
        for i, (name, memory) in enumerate(containers):
            c = container(p, name, f"{uid}-{i}", memory, **kw)
            adjust = self.plugin.create_container(p, c)
            if adjust is not None:
                c.linux.resources.cpu.mems = adjust.linux.resources.cpu.mems
            self.plugin.start_container(p, c)
            c.state = api.CONTAINER_RUNNING
            self.running.append(c)

    def run_with_init(self, uid: str, init_memory: int, app_memory: int) -> None:
        """An init container ran and exited, then the app started (the runtime lists the app)."""
        p = pod(uid)
        self.pods.append(p)
        init = container(p, "init", f"{uid}-init", init_memory)
        self.plugin.create_container(p, init)
        self.plugin.start_container(p, init)
        self.plugin.stop_container(p, init)
        app = container(p, "app", f"{uid}-app", app_memory)
        adjust = self.plugin.create_container(p, app)
        assert adjust is not None
        app.linux.resources.cpu.mems = adjust.linux.resources.cpu.mems
        self.plugin.start_container(p, app)
        app.state = api.CONTAINER_RUNNING
        self.running.append(app)

    @property
    def state(self) -> MemoryState:
        return self.plugin.manager.state


def busy_node(topology: Topology | None = None, config: Config | None = None) -> Node:
    """Single-node pods, a two-node group, an init-container pod, hugepages, other QoS."""
    # allocatable memory: 5Gi on node 0 (1Gi reserved), 6Gi on the others; 2Gi of 1Gi pages each
    n = Node(topology or topo(), config or cfg())
    n.run("group", containers=(("app", 10 * GI),))  # wider than a node: [0,1], 5Gi + 5Gi
    n.run("single-a", containers=(("app", 3 * GI),), cpus="8-9")  # node 2 (its CPUs)
    n.run("single-b", containers=(("app", 2 * GI), ("side", GI)), cpus="12")  # node 3
    n.run("huge", containers=(("app", GI),), cpus="13", hugepages={"1GB": 2 * GI})  # node 3
    n.run_with_init("init", 2 * GI, GI)  # node 2; the app reused the init's memory
    n.run("burstable", "Burstable", (("app", GI),))
    n.run("besteffort", "BestEffort", (("app", None),))
    assert [(c.name, c.linux.resources.cpu.mems) for c in n.running] == [
        ("app", "0,1"),
        ("app", "2"),
        ("app", "3"),
        ("side", "3"),
        ("app", "3"),
        ("app", "2"),
        ("app", ""),
        ("app", ""),
    ]
    assert {n: tables(n_state)[(n, "memory")][3] for n_state in [n.state] for n in range(4)} == {
        0: 5 * GI,
        1: 5 * GI,
        2: 4 * GI,
        3: 4 * GI,
    }
    return n


def as_json(state: MemoryState) -> dict[str, Any]:
    return json.loads(dumps(state))  # type: ignore[no-any-return]


def tables(state: MemoryState) -> dict[tuple[int, str], tuple[int, int, int, int, int]]:
    return {
        (n, t): (m.total, m.system_reserved, m.allocatable, m.reserved, m.free)
        for n, node in state.machine.items()
        for t, m in node.memory_map.items()
    }


@pytest.fixture
def state_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / STATE


def write(path: Path, state: MemoryState) -> bytes:
    write_file(path, state)
    return path.read_bytes()


def resync(recovery: Recovery, node: Node) -> MemoryPlugin:
    plugin = MemoryPlugin(recovery.manager, logger=Log())
    plugin.synchronize(node.pods, node.running)
    return plugin


# -- 1. untrusted files are set aside, never deleted, and the state is rebuilt -----------------


def _truncate(path: Path, content: bytes, _: MemoryState) -> None:
    path.write_bytes(content[: len(content) // 2])


def _bad_checksum(path: Path, content: bytes, _: MemoryState) -> None:
    data = json.loads(content)
    data["checksum"] = (data["checksum"] + 1) % (1 << 32)
    path.write_text(json.dumps(data))


def _edited_value(path: Path, content: bytes, _: MemoryState) -> None:
    # a hand edit: the checksum no longer matches
    path.write_bytes(content.replace(b'"numberOfAssignments":', b'"numberOfAssignments":1', 1))


def _foreign_policy(path: Path, _: bytes, state: MemoryState) -> None:
    foreign = state.clone()
    foreign.policy_name = "Dynamic"  # checksum right, policy not ours
    path.write_text(json.dumps(to_checkpoint(foreign)))


def _inconsistent(path: Path, _: bytes, state: MemoryState) -> None:
    broken = state.clone()
    broken.machine[3].memory_map["memory"].free += GI  # checksum right, numbers wrong
    path.write_text(dumps(broken))


def _empty(path: Path, _: bytes, __: MemoryState) -> None:
    path.write_bytes(b"")


DAMAGE = {
    "truncated": (_truncate, "not valid JSON"),
    "bad checksum": (_bad_checksum, "checksum"),
    "edited value": (_edited_value, "corrupted"),
    "foreign policy": (_foreign_policy, "policyName"),
    "inconsistent machine state": (_inconsistent, "inconsistent with its own machine state"),
    "empty": (_empty, "empty"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_file_is_set_aside_and_state_rebuilt_from_synchronize(
    damage: str, state_path: Path
) -> None:
    node = busy_node()
    before = as_json(node.state)
    content = write(state_path, node.state)
    spoil, why = DAMAGE[damage]
    spoil(state_path, content, node.state)
    damaged = state_path.read_bytes()
    log = Log()

    recovery = recover(topo(), cfg(), state_path, log)

    report = recovery.report
    assert report.outcome == OUTCOME_UNTRUSTED
    assert why in (report.reason or "")
    # set aside with its exact content, never deleted
    assert not os.path.lexists(state_path)
    assert report.set_aside_as is not None and report.set_aside_as.read_bytes() == damaged
    assert report.set_aside_as.parent == state_path.parent
    [(event, fields)] = log.at("error")
    assert "not trusted" in event and why in fields["reason"]
    assert fields["kept_as"] == str(report.set_aside_as)
    # nothing of it is trusted: the manager starts empty ...
    assert recovery.manager.state.entries == {}
    # ... and Synchronize rebuilds exactly what was there
    resync(recovery, node)
    assert as_json(recovery.manager.state) == before


def test_symlink_is_refused_and_never_followed(state_path: Path, tmp_path: Path) -> None:
    node = busy_node()
    elsewhere = tmp_path / "elsewhere"
    content = write(elsewhere / STATE, node.state)
    state_path.parent.mkdir()
    os.symlink(elsewhere / STATE, state_path)
    log = Log()
    recovery = recover(topo(), cfg(), state_path, log)
    assert recovery.report.outcome == OUTCOME_UNTRUSTED
    assert "symlink" in (recovery.report.reason or "")
    aside = recovery.report.set_aside_as
    assert aside is not None and aside.is_symlink()  # the link itself moved aside
    assert os.readlink(aside) == str(elsewhere / STATE)
    assert (elsewhere / STATE).read_bytes() == content  # its target untouched
    assert recovery.manager.state.entries == {}
    # the first write then creates a real file, not one through the link
    CheckpointWriter(state_path, log).write_now(recovery.manager.state)
    assert not state_path.is_symlink() and (elsewhere / STATE).read_bytes() == content


def test_dangling_symlink_and_directory_are_set_aside(state_path: Path) -> None:
    state_path.parent.mkdir(parents=True)
    os.symlink("/nonexistent/target", state_path)
    first = recover(topo(), cfg(), state_path, Log()).report
    assert first.outcome == OUTCOME_UNTRUSTED and first.set_aside_as is not None
    state_path.mkdir()
    second = recover(topo(), cfg(), state_path, Log()).report
    assert second.outcome == OUTCOME_UNTRUSTED and "not a regular file" in (second.reason or "")
    assert second.set_aside_as is not None and second.set_aside_as.is_dir()
    # two set-asides in the same second: both kept under distinct names
    assert first.set_aside_as != second.set_aside_as and first.set_aside_as.is_symlink()


def test_missing_file_starts_empty_without_creating_anything(state_path: Path) -> None:
    recovery = recover(topo(), cfg(), state_path, Log())
    assert recovery.report.outcome == OUTCOME_NONE
    assert recovery.manager.state.entries == {}
    assert not state_path.parent.exists()


def test_leftover_temp_files_are_removed_and_nothing_else(state_path: Path, tmp_path: Path) -> None:
    node = busy_node()
    content = write(state_path, node.state)
    d = state_path.parent
    stale = d / f".{STATE}.4242.deadbeef.tmp"
    stale.write_bytes(content[:10])
    outside = tmp_path / "outside"
    outside.write_text("keep")
    stale_link = d / f".{STATE}.4243.cafe.tmp"
    os.symlink(outside, stale_link)
    keep = [
        d / f".{STATE}.dir.tmp",
        d / ".other.tmp",
        d / f"{STATE}.untrusted-x",
        d / f".{STATE}.x",
    ]
    keep[0].mkdir()
    for p in keep[1:]:
        p.write_text("x")
    log = Log()
    recovery = recover(topo(), cfg(), state_path, log)
    assert sorted(recovery.report.removed_temp_files) == sorted([stale, stale_link])
    assert not os.path.lexists(stale) and not os.path.lexists(stale_link)
    assert outside.read_text() == "keep"
    assert all(os.path.lexists(p) for p in keep)
    assert recovery.report.outcome == OUTCOME_RESTORED
    assert any("temp files" in e for e, _ in log.at("info"))


def test_intact_file_is_used_as_it_is(state_path: Path) -> None:
    node = busy_node()
    # a distribution inside the group that re-applying the blocks would not give
    saved = node.state.clone()
    group = saved.machine[0].memory_map["memory"], saved.machine[1].memory_map["memory"]
    group[0].reserved, group[0].free = group[0].reserved - GI, group[0].free + GI
    group[1].reserved, group[1].free = group[1].reserved + GI, group[1].free - GI
    write(state_path, saved)
    log = Log()
    recovery = recover(topo(), cfg(), state_path, log)
    assert recovery.report.outcome == OUTCOME_RESTORED
    assert as_json(recovery.manager.state) == as_json(saved)
    assert log.at("warning") == [] and log.at("error") == []
    assert recover(topo(), cfg(), state_path, Log()).manager.state.entries == saved.entries


# -- 3. drift tolerance ----------------------------------------------------------------------------


def test_drift_within_tolerance_is_accepted_and_free_rebased(state_path: Path) -> None:
    node = busy_node()
    write(state_path, node.state)
    moved = topo(("8Gi", "8160Mi", "8Gi", "8224Mi"))  # node 1 -32Mi, node 3 +32Mi
    log = Log()
    recovery = recover(moved, cfg(), state_path, log)
    assert recovery.report.outcome == OUTCOME_REBASED
    state = recovery.manager.state
    assert state.entries == node.state.entries  # every block kept
    old, new = tables(node.state), tables(state)
    for key, (_, _, allocatable, reserved, free) in new.items():
        assert reserved == old[key][3]
        assert free == allocatable - reserved
    assert new[(1, "memory")][0] == 8160 * MI and new[(3, "memory")][0] == 8224 * MI
    drifts = [(d.node, d.type, d.old_total, d.new_total) for d in recovery.report.drifts]
    assert drifts == [(1, "memory", 8 * GI, 8160 * MI), (3, "memory", 8 * GI, 8224 * MI)]
    logged = [(kw["numa_node"], kw["old_total"], kw["new_total"]) for e, kw in log.at("warning")]
    assert logged == [(1, 8 * GI, 8160 * MI), (3, 8 * GI, 8224 * MI)]
    assert all("within tolerance" in e for e, _ in log.at("warning"))
    # rebased state survives the next restart unchanged
    write(state_path, state)
    again = recover(moved, cfg(), state_path, Log())
    assert again.report.outcome == OUTCOME_RESTORED
    assert as_json(again.manager.state) == as_json(state)


SHRUNK_UNDER_FULL_NODE_1 = (
    "NUMA node 1 memory total was 8Gi (8589934592 bytes), is now 7.98Gi (8573157376"
    " bytes), within the memory-drift-tolerance of 64Mi (67108864 bytes), and the running"
    " allocations no longer fit: memory on NUMA node 1: the recorded blocks need 6Gi"
    " (6442450944 bytes), 5.98Gi (6425673728 bytes) is allocatable now, short by 16Mi"
    " (16777216 bytes); drain the node, then restart"
)


def gated(
    recovery: Recovery, path: Path, log: Log
) -> tuple[MemoryPlugin, ConservationGate, list[int]]:
    """The plugin as `run` wires it: the gate's check runs at the first Synchronize."""
    gate = ConservationGate(recovery.pending, path, log)
    stopped: list[int] = []
    tracker = NodeTracker(
        recovery.manager,
        logger=Log(),
        check_restored=gate.hook(lambda: stopped.append(1)) if gate.holding else None,
    )
    return MemoryPlugin(recovery.manager, tracker=tracker), gate, stopped


def test_shrink_under_blocks_waits_for_the_runtime_and_refuses_while_their_containers_exist(
    state_path: Path,
) -> None:
    # KEP-6232's conservation check: whatever its size, a shrink that leaves a recorded
    # assignment without room refuses the start, once the runtime shows its container exists
    n = Node(topo(), cfg(topologyManagerPolicy="single-numa-node"))
    n.run("full", containers=(("app", 6 * GI),), cpus="4")  # node 1 exactly full
    content = write(state_path, n.state)
    for beyond in ("refuse", "accept-if-fits"):
        log = Log()
        recovery = recover(
            topo(("8Gi", "8176Mi", "8Gi", "8Gi")),
            cfg(memoryDriftBeyondTolerance=beyond),
            state_path,
            log,
        )
        pending = recovery.pending
        assert pending is not None and pending.reason == SHRUNK_UNDER_FULL_NODE_1
        assert [d.node for d in pending.shrunk] == [1]
        assert str(pending.refusal(n.state.entries)) == SHRUNK_UNDER_FULL_NODE_1
        assert pending.refusal({}) is None
        # meanwhile the 16Mi that no longer fit are lent, as for a changed reservation
        _, _, allocatable, reserved, free = tables(recovery.manager.state)[(1, "memory")]
        assert (allocatable, reserved, free) == (6 * GI, 6 * GI, 0)
        [(event, fields)] = [w for w in log.at("warning") if "shrank" in w[0]]
        assert "nothing is written" in event
        assert fields["numa_nodes"] == [1] and fields["reason"] == SHRUNK_UNDER_FULL_NODE_1
        # the container still runs: the first Synchronize is refused, nothing answered
        plugin, gate, stopped = gated(recovery, state_path, log)
        with pytest.raises(StateError) as err:
            plugin.synchronize(n.pods, n.running)
        assert str(err.value) == SHRUNK_UNDER_FULL_NODE_1
        assert gate.refusal is err.value and gate.holding and stopped == [1]
        assert not plugin.tracker.synchronized
        assert ("refusing to start", {"path": str(state_path), "reason": str(err.value)}) in (
            log.at("error")
        )
    assert state_path.read_bytes() == content


def test_shrink_under_blocks_of_containers_that_are_gone_starts_and_releases_them(
    state_path: Path,
) -> None:
    # a reboot on a full node: KASLR took 16Mi of node 1, and the pod holding node 1 was
    # removed while the plugin was down; the pod on node 2 still runs
    n = Node(topo(), cfg(topologyManagerPolicy="single-numa-node"))
    n.run("full", containers=(("app", 6 * GI),), cpus="4")  # node 1
    n.run("other", containers=(("app", 2 * GI),), cpus="8")  # node 2
    content = write(state_path, n.state)
    shrunk = topo(("8Gi", "8176Mi", "8Gi", "8Gi"))
    log = Log()
    recovery = recover(shrunk, cfg(), state_path, log)
    assert recovery.pending is not None
    plugin, gate, stopped = gated(recovery, state_path, log)
    other = [c for c in n.running if c.pod_sandbox_id == "sb-other"]
    assert plugin.synchronize([p for p in n.pods if p.uid == "other"], other) == []
    assert not gate.holding and gate.refusal is None and stopped == []
    state = recovery.manager.state
    assert state.entries == {"other": n.state.entries["other"]}
    # the loan is paid back: node 1 has exactly this machine's allocatable memory, all free
    default = tables(MemoryManager(shrunk, cfg()).state)
    assert tables(state)[(1, "memory")] == default[(1, "memory")]
    assert tables(state)[(1, "memory")][4] == 6 * GI - 16 * MI
    [(event, fields)] = [w for w in log.at("warning") if "accepted" in w[0] and "shrank" in w[0]]
    assert "containers that no longer exist were released" in event
    assert fields["numa_nodes"] == [1]
    assert fields["drifts"] == [
        "NUMA node 1 memory total was 8Gi (8589934592 bytes), is now 7.98Gi (8573157376 bytes)"
    ]
    assert fields["released"] == ["full/app"] and fields["containers"] == 1
    assert state_path.read_bytes() == content  # the gate only opens writing; `run` writes
    # the check runs once: a later Synchronize (a runtime restart) never refuses
    assert plugin.synchronize([p for p in n.pods if p.uid == "other"], other) == []


def test_shrink_under_a_group_is_judged_on_the_groups_surviving_blocks(state_path: Path) -> None:
    node = busy_node()  # group [0,1] holds 10Gi of its 11Gi
    write(state_path, node.state)
    config = cfg(memoryDriftBeyondTolerance="accept-if-fits")
    recovery = recover(topo(("8Gi", "6Gi", "8Gi", "8Gi")), config, state_path, Log())
    pending = recovery.pending
    assert pending is not None
    # another pod gone changes nothing for the group
    entries = dict(node.state.entries)
    del entries["single-a"]
    refusal = pending.refusal(entries)
    assert refusal is not None
    assert "memory on NUMA nodes 0,1: the recorded blocks need 10Gi" in str(refusal)
    # the group's pod gone: the rest fits
    del entries["group"]
    assert pending.refusal(entries) is None
    plugin, gate, _ = gated(recovery, state_path, Log())
    plugin.synchronize(
        [p for p in node.pods if p.uid != "group"],
        [c for c in node.running if c.pod_sandbox_id != "sb-group"],
    )
    assert not gate.holding and "group" not in recovery.manager.state.entries
    _accounted(recovery.manager.state)
    assert recovery.manager.state.machine[0].cells == [0]  # the group is dissolved


def test_drift_beyond_tolerance_refuses_to_start_even_when_everything_fits(
    state_path: Path,
) -> None:
    # KEP-6232: beyond the bound the machine is not the same one, grown or shrunk
    node = busy_node()
    content = write(state_path, node.state)
    for moved, change in (
        (("8Gi", "8Gi", "8Gi", "7Gi"), "1Gi"),
        (("8Gi", "9Gi", "8Gi", "8Gi"), "1Gi"),
    ):
        log = Log()
        with pytest.raises(StateError) as err:
            recover(topo(moved), cfg(), state_path, log)
        text = str(err.value)
        assert "\n" not in text
        assert (
            f", a drift of {change} (1073741824 bytes), more than the memory-drift-tolerance"
            in text
        )
        assert (
            "of 64Mi (67108864 bytes); drain the node, or raise memory-drift-tolerance, or set"
            in text
        )
        assert "memoryDriftBeyondTolerance: accept-if-fits" in text
        assert log.at("error")[0][0] == "refusing to start"
    assert str(err.value).startswith(
        "NUMA node 1 memory total was 8Gi (8589934592 bytes), is now 9Gi (9663676416 bytes)"
    )
    assert state_path.read_bytes() == content  # left for the operator


def test_drift_beyond_tolerance_that_still_fits_is_accepted_when_chosen(state_path: Path) -> None:
    # memoryDriftBeyondTolerance: accept-if-fits keeps the plugin's former acceptance
    node = busy_node()
    write(state_path, node.state)
    log = Log()
    config = cfg(memoryDriftBeyondTolerance="accept-if-fits")
    recovery = recover(topo(("8Gi", "8Gi", "8Gi", "7Gi")), config, state_path, log)
    assert recovery.report.outcome == OUTCOME_REBASED
    assert recovery.manager.state.entries == node.state.entries
    assert tables(recovery.manager.state)[(3, "memory")][4] == GI  # 5Gi - 4Gi
    [(event, fields)] = log.at("warning")
    assert "beyond tolerance" in event and "accept-if-fits" in event and "still fits" in event
    assert fields["numa_node"] == 3


def test_drift_beyond_tolerance_that_no_longer_fits_is_refused_while_the_blocks_are_held(
    state_path: Path,
) -> None:
    node = busy_node()
    content = write(state_path, node.state)
    log = Log()
    config = cfg(memoryDriftBeyondTolerance="accept-if-fits")
    recovery = recover(topo(("8Gi", "6Gi", "8Gi", "8Gi")), config, state_path, log)
    assert recovery.pending is not None
    plugin, gate, _ = gated(recovery, state_path, log)
    with pytest.raises(StateError) as err:
        plugin.synchronize(node.pods, node.running)
    assert gate.refusal is err.value
    text = str(err.value)
    assert "\n" not in text
    assert "NUMA node 1 memory total was 8Gi (8589934592 bytes), is now 6Gi" in text
    assert "more than the memory-drift-tolerance of 64Mi" in text
    # group [0,1] holds 10Gi; 5Gi + 4Gi are left
    assert "memory on NUMA nodes 0,1: the recorded blocks need 10Gi" in text
    assert "9Gi (9663676416 bytes) is allocatable now, short by 1Gi" in text
    assert text == recovery.pending.reason
    assert state_path.read_bytes() == content  # left for the operator
    assert [p.name for p in state_path.parent.iterdir()] == [STATE]
    assert log.at("error")[-1][0] == "refusing to start"


def test_refusal_names_the_shortfall_of_a_single_node(state_path: Path) -> None:
    n = Node(topo(), cfg(topologyManagerPolicy="single-numa-node"))
    n.run("a", containers=(("app", 5 * GI),), cpus="8")  # node 2
    write(state_path, n.state)
    config = cfg(memoryDriftBeyondTolerance="accept-if-fits")
    recovery = recover(topo(("8Gi", "8Gi", "6Gi", "8Gi")), config, state_path, Log())
    assert recovery.pending is not None
    assert str(recovery.pending.refusal(n.state.entries)) == (
        "NUMA node 2 memory total was 8Gi (8589934592 bytes), is now 6Gi (6442450944 bytes),"
        " more than the memory-drift-tolerance of 64Mi (67108864 bytes), and the running"
        " allocations no longer fit: memory on NUMA node 2: the recorded blocks need 5Gi"
        " (5368709120 bytes), 4Gi (4294967296 bytes) is allocatable now, short by 1Gi"
        " (1073741824 bytes); drain the node, then restart"
    )


def test_tolerance_is_configurable(state_path: Path) -> None:
    n = Node(topo(), cfg(topologyManagerPolicy="single-numa-node"))
    n.run("a", containers=(("app", 5 * GI),), cpus="8")
    write(state_path, n.state)
    shrunk = topo(("8Gi", "8Gi", "7936Mi", "8Gi"))  # -256Mi; the 5Gi still fit
    with pytest.raises(
        StateError, match=r"NUMA node 2 .* more than the memory-drift-tolerance of 64Mi"
    ):
        recover(shrunk, cfg(), state_path, Log())
    for setting in (
        {"memoryDriftTolerance": "256Mi"},
        {"memoryManagerPolicyOptions": {"memory-drift-tolerance": "256Mi"}},
    ):
        recovery = recover(shrunk, cfg(**setting), state_path, Log())
        assert recovery.report.outcome == OUTCOME_REBASED
        assert [d.within_tolerance for d in recovery.report.drifts] == [True]
        assert recovery.report.drift_tolerance == 256 * MI
        assert recovery.report.memory_drift == {0: 0, 1: 0, 2: 256 * MI, 3: 0}
    one_less = topo(("8Gi", "8Gi", "8191Mi", "8Gi"))
    for exact in (
        {"memoryDriftTolerance": 0},
        {"memoryManagerPolicyOptions": {"memory-drift-tolerance": "off"}},
    ):
        with pytest.raises(StateError) as err:
            recover(one_less, cfg(**exact), state_path, Log())
        assert (
            "more than the memory-drift-tolerance of 0 (the exact comparison: off, or auto"
            " without a readable kernel image size)" in str(err.value)
        )


def test_hugepage_pools_are_never_drift_a_changed_pool_is_a_configuration_change(
    state_path: Path,
) -> None:
    # KEP-6232 tolerates regular memory only. A pool is set by someone: applied at start
    # like a changed reservedMemory, its blocks kept and counted even where they no
    # longer fit (in-use huge pages outlive a smaller pool as surplus pages)
    n = Node(topo(), cfg(topologyManagerPolicy="single-numa-node"))
    n.run("h", containers=(("app", GI),), cpus="8", hugepages={"1GB": 2 * GI})
    write(state_path, n.state)
    log = Log()
    recovery = recover(topo(hugepages="1Gi"), cfg(), state_path, log)
    assert recovery.report.outcome == OUTCOME_REBASED
    assert recovery.report.drifts == ()
    assert [(p.node, p.type, p.old_total, p.new_total) for p in recovery.report.pool_changes] == [
        (i, HP, 2 * GI, GI) for i in range(4)
    ]
    assert recovery.manager.state.entries == n.state.entries
    table = recovery.manager.state.machine[2].memory_map[HP]
    assert (table.total, table.reserved, table.free, table.allocatable) == (GI, 2 * GI, 0, 2 * GI)
    [conflict] = recovery.report.conflicts
    assert (conflict.pod_uid, conflict.nodes, conflict.type, conflict.shortfall) == (
        "h",
        (2,),
        HP,
        GI,
    )
    pools = [f for e, f in log.at("warning") if e == "hugepage pool changed; applied"]
    assert [(f["numa_node"], f["old_total"], f["new_total"]) for f in pools] == [
        (i, 2 * GI, GI) for i in range(4)
    ]
    # a pool that moved by a single page is no drift either: exact
    recovery = recover(topo(hugepages="3Gi"), cfg(memoryDriftTolerance="2Gi"), state_path, Log())
    assert recovery.report.drifts == () and len(recovery.report.pool_changes) == 4


def test_a_node_gone_with_blocks_refuses_and_without_blocks_rebases(state_path: Path) -> None:
    n = Node(topo(), cfg(topologyManagerPolicy="single-numa-node"))
    n.run("a", containers=(("app", GI),), cpus="12")  # node 3
    write(state_path, n.state)
    with pytest.raises(StateError, match="NUMA node 3, which this machine no longer has"):
        recover(topo(("8Gi",) * 3), cfg(), state_path, Log())
    recovery = recover(topo(("8Gi", "8Gi", "8Gi", "8Gi", "8Gi")), cfg(), state_path, Log())
    assert recovery.report.outcome == OUTCOME_REBASED
    assert recovery.manager.state.entries == n.state.entries
    assert set(recovery.manager.state.machine) == {0, 1, 2, 3, 4}


@pytest.fixture
def structlog_restored() -> Iterator[None]:
    yield
    structlog.reset_defaults()  # `run` configured it to print to the captured stderr


@pytest.mark.usefixtures("structlog_restored")
def test_refusal_exits_2_through_the_cli(state_path: Path, tmp_path: Path, capsys: Any) -> None:
    n = Node(topo(), cfg(topologyManagerPolicy="single-numa-node"))
    n.run("a", containers=(("app", 5 * GI),), cpus="8")
    write(state_path, n.state)
    (tmp_path / "topology.json").write_text(
        json.dumps(
            {
                "nodes": [
                    {
                        "id": i,
                        "cpus": f"{4 * i}-{4 * i + 3}",
                        "memory": m,
                        "hugepages": {"1Gi": "2Gi"},
                    }
                    for i, m in enumerate(("8Gi", "8Gi", "6Gi", "8Gi"))
                ]
            }
        )
    )
    (tmp_path / "config.json").write_text(json.dumps({"reservedMemory": ["0:memory=1Gi"]}))
    code = cli.main(
        [
            "run",
            "--socket",
            str(tmp_path / "no.sock"),
            "--config",
            str(tmp_path / "config.json"),
            "--topology-file",
            str(tmp_path / "topology.json"),
            "--state-dir",
            str(state_path.parent),
        ]
    )
    assert code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("nri-memory-manager run: NUMA node 2 memory total was 8Gi")
    assert "a drift of 2Gi (2147483648 bytes), more than the memory-drift-tolerance" in last


# -- 4. change without drain -----------------------------------------------------------------------


def test_more_reserved_memory_that_fits_is_applied(state_path: Path) -> None:
    node = busy_node()
    write(state_path, node.state)
    log = Log()
    config = cfg(reservedMemory=["0:memory=1Gi", "3:memory=1Gi"])
    recovery = recover(topo(), config, state_path, log)
    assert recovery.report.outcome == OUTCOME_REBASED
    state = recovery.manager.state
    assert state.entries == node.state.entries
    t = state.machine[3].memory_map["memory"]
    assert (t.system_reserved, t.allocatable, t.reserved, t.free) == (GI, 5 * GI, 4 * GI, GI)
    [(event, fields)] = log.at("warning")
    assert event == "reserved memory changed; applied"
    assert (fields["numa_node"], fields["old_reserved"], fields["new_reserved"]) == (3, 0, GI)
    assert recovery.report.conflicts == ()


def test_less_reserved_memory_is_applied(state_path: Path) -> None:
    node = busy_node()
    write(state_path, node.state)
    config = cfg(reservedMemory=["0:memory=512Mi"])
    recovery = recover(topo(), config, state_path, Log())
    assert recovery.report.outcome == OUTCOME_REBASED
    assert tables(recovery.manager.state)[(0, "memory")][:3] == (8 * GI, 512 * MI, 5632 * MI)
    # same reservations, same blocks: a second start restores it as it is
    write(state_path, recovery.manager.state)
    assert recover(topo(), config, state_path, Log()).report.outcome == OUTCOME_RESTORED


def test_reserved_memory_that_conflicts_keeps_the_blocks_and_names_the_containers(
    state_path: Path,
) -> None:
    node = busy_node()
    write(state_path, node.state)
    log = Log()
    config = cfg(reservedMemory=["0:memory=1Gi", "3:memory=4Gi"])  # node 3 holds 4Gi of 6Gi
    recovery = recover(topo(), config, state_path, log)  # starts: no memory in use is forgotten
    report = recovery.report
    assert report.outcome == OUTCOME_REBASED
    assert recovery.manager.state.entries == node.state.entries
    named = sorted((c.pod_uid, c.container, c.nodes, c.type, c.shortfall) for c in report.conflicts)
    assert named == [
        ("huge", "app", (3,), "memory", 2 * GI),
        ("single-b", "app", (3,), "memory", 2 * GI),
        ("single-b", "side", (3,), "memory", 2 * GI),
    ]
    # the 2Gi that do not fit are still counted (lent on top of the 2Gi allocatable)
    t = recovery.manager.state.machine[3].memory_map["memory"]
    assert (t.allocatable, t.reserved, t.free) == (4 * GI, 4 * GI, 0)
    errors = log.at("error")
    assert len(errors) == 3
    assert all("kept as recorded" in e and "short by 2Gi" in kw["reason"] for e, kw in errors)
    assert {(kw["pod_uid"], kw["container"], kw["numa_nodes"][0]) for _, kw in errors} == {
        ("huge", "app", 3),
        ("single-b", "app", 3),
        ("single-b", "side", 3),
    }
    # nothing new lands there ...
    plugin = resync(recovery, node)
    late = pod("late")
    with pytest.raises(AdmissionRefused, match="TopologyAffinityError"):
        plugin.create_container(late, container(late, "app", "l1", GI, cpus="12"))
    # ... and as containers go, the loan is paid back first: the new reservation holds
    plugin.stop_pod_sandbox(node.pods[2])  # single-b, 3Gi
    t = plugin.manager.state.machine[3].memory_map["memory"]
    assert (t.allocatable, t.reserved, t.free) == (2 * GI, GI, GI)  # huge's 1Gi still counted
    plugin.stop_pod_sandbox(node.pods[3])  # huge
    assert (t.allocatable, t.reserved, t.free) == (2 * GI, 0, 2 * GI)
    # the state is then what a start with the new reservation gives
    fresh = MemoryManager(topo(), config).state.machine[3].memory_map["memory"]
    assert (t.total, t.system_reserved, t.allocatable) == (
        fresh.total,
        fresh.system_reserved,
        fresh.allocatable,
    )


def test_loan_inside_a_group_is_paid_back_from_any_node_of_the_group(state_path: Path) -> None:
    node = busy_node()
    write(state_path, node.state)
    config = cfg(reservedMemory=["0:memory=1Gi", "1:memory=2Gi"])  # group [0,1]: 9Gi for 10Gi
    recovery = recover(topo(), config, state_path, Log())
    [conflict] = recovery.report.conflicts
    assert (conflict.pod_uid, conflict.nodes, conflict.shortfall) == ("group", (0, 1), GI)
    machine = recovery.manager.state.machine
    assert machine[1].memory_map["memory"].allocatable == 5 * GI  # 4Gi + 1Gi lent
    plugin = resync(recovery, node)
    plugin.stop_pod_sandbox(node.pods[0])
    for n, allocatable in ((0, 5 * GI), (1, 4 * GI)):
        t = machine[n].memory_map["memory"]
        assert (t.allocatable, t.reserved, t.free) == (allocatable, 0, allocatable)


def test_policy_static_to_none_keeps_the_old_file_aside(state_path: Path) -> None:
    node = busy_node()
    content = write(state_path, node.state)
    log = Log()
    recovery = recover(topo(), cfg(policy="none"), state_path, log)
    report = recovery.report
    assert report.outcome == OUTCOME_POLICY_CHANGED
    assert recovery.manager.policy.name == POLICY_NONE
    assert recovery.manager.state == MemoryState(POLICY_NONE)
    assert report.set_aside_as is not None and report.set_aside_as.read_bytes() == content
    assert "single-a/app" in report.dropped and "group/app" in report.dropped
    [(event, fields)] = log.at("warning")
    assert "policy changed" in event and fields["reason"].endswith("from Static to None")


def test_policy_none_to_static_admits_running_containers_at_synchronize(state_path: Path) -> None:
    none_node = Node(topo(), cfg(policy="none"))
    none_node.run("g", containers=(("app", 2 * GI),), cpus="8")
    assert none_node.running[0].linux.resources.cpu.mems == ""  # None pins nothing
    write(state_path, none_node.state)
    recovery = recover(topo(), cfg(), state_path, Log())
    assert recovery.report.outcome == OUTCOME_POLICY_CHANGED
    assert recovery.manager.policy.name == POLICY_STATIC
    plugin = MemoryPlugin(recovery.manager, logger=Log())
    updates = plugin.synchronize(none_node.pods, none_node.running)
    assert [(u.container_id, u.linux.resources.cpu.mems) for u in updates] == [("g-0", "2")]
    assert recovery.manager.state.machine[2].memory_map["memory"].reserved == 2 * GI


def test_topology_manager_policy_change_reports_groups_it_would_refuse(state_path: Path) -> None:
    node = busy_node()
    write(state_path, node.state)
    log = Log()
    recovery = recover(topo(), cfg(topologyManagerPolicy="single-numa-node"), state_path, log)
    assert recovery.report.outcome == OUTCOME_RESTORED
    assert as_json(recovery.manager.state) == as_json(node.state)
    [conflict] = recovery.report.conflicts
    assert (conflict.pod_uid, conflict.container, conflict.nodes) == ("group", "app", (0, 1))
    assert "single-numa-node would not admit" in conflict.reason
    # restricted accepts the same blocks without comment
    quiet = recover(topo(), cfg(topologyManagerPolicy="restricted"), state_path, Log())
    assert quiet.report.conflicts == () and quiet.report.outcome == OUTCOME_RESTORED


def test_blocks_breaking_the_group_rule_are_kept_and_reported(state_path: Path) -> None:
    manager = MemoryManager(topo(), cfg())
    entries = {
        "solo": {"app": [Block((0,), "memory", GI)]},
        "wide": {"app": [Block((0, 1), "memory", 2 * GI)]},
    }
    write(state_path, expected_state(manager.state, entries))
    recovery = recover(topo(), cfg(), state_path, Log())
    assert recovery.manager.state.entries == entries
    reported = sorted((c.pod_uid, c.nodes) for c in recovery.report.conflicts)
    assert reported == [("solo", (0,)), ("wide", (0, 1))]
    assert "NUMA node 0 serves the masks [0] and [0,1]" in recovery.report.conflicts[0].reason


# -- 9. least privilege ----------------------------------------------------------------------------


@pytest.fixture
def open_umask() -> Iterator[None]:
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


@pytest.mark.usefixtures("open_umask")
def test_state_dir_and_file_are_private_whatever_the_umask(tmp_path: Path) -> None:
    path = tmp_path / "var" / "lib" / "nmm" / STATE
    manager = recover(topo(), cfg(), path, Log()).manager
    CheckpointWriter(path, Log()).write_now(manager.state)  # what `run` does at start
    for d in (tmp_path / "var", tmp_path / "var" / "lib", path.parent):
        assert stat.S_IMODE(d.stat().st_mode) == 0o700, d
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    # a rebase rewrites it private too
    path.chmod(0o644)
    recovery = recover(topo(("8Gi", "8Gi", "8Gi", "8200Mi")), cfg(), path, Log())
    CheckpointWriter(path, Log()).write_now(recovery.manager.state)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_state_dir_made_by_someone_else_is_made_private(tmp_path: Path) -> None:
    d = tmp_path / "hostpath"  # kubelet creates a DirectoryOrCreate hostPath 0755
    d.mkdir()
    d.chmod(0o755)
    write(d / STATE, busy_node().state)
    log = Log()
    recover(topo(), cfg(), d / STATE, log)
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    assert ("state directory made private", {"path": str(d), "was": "0o755"}) in log.at("info")


def test_a_shared_state_dir_is_reported_and_left_alone(tmp_path: Path) -> None:
    d = tmp_path / "shared"
    d.mkdir()
    d.chmod(0o775)
    (d / "someone-elses-file").write_text("x")
    log = Log()
    recover(topo(), cfg(), d / STATE, log)
    assert stat.S_IMODE(d.stat().st_mode) == 0o775
    [(event, fields)] = log.at("warning")
    assert "accessible to other users" in event and fields["mode"] == "0o775"


SPAWNERS = (
    "subprocess",
    "os.system",
    "os.popen",
    "pty.spawn",
    "os.exec",
    "os.spawn",
    "os.posix_spawn",
    "os.fork",
    "create_subprocess",
)


def test_the_package_starts_no_processes() -> None:
    found = [
        f"{path.relative_to(PACKAGE)}: {word}"
        for path in sorted(PACKAGE.rglob("*.py"))
        for word in SPAWNERS
        if word in path.read_text()
    ]
    assert found == []


FILE_MODULES = {"os", "pathlib", "shutil", "tempfile", "io", "glob", "fileinput"}


@pytest.mark.parametrize("module", ["frontends/nri.py", "frontends/nri_convert.py"])
def test_code_reading_pod_data_never_touches_paths(module: str) -> None:
    """Pod data (names, annotations, mounts, cgroup paths) is never used as a file path."""
    tree = ast.parse((PACKAGE / module).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    calls = {
        n.func.id
        for n in ast.walk(tree)
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)
    }
    assert imported & FILE_MODULES == set()
    assert "open" not in calls


# -- properties: whatever the change, nothing in use is forgotten ---------------------------------


def _group_sums(state: MemoryState) -> dict[tuple[tuple[int, ...], str], tuple[int, int]]:
    """(group, type) -> (reserved summed over the group, bytes of blocks on it)."""
    out: dict[tuple[tuple[int, ...], str], tuple[int, int]] = {}
    for node in state.machine.values():
        group = tuple(sorted(node.cells))
        for t, m in node.memory_map.items():
            r, b = out.get((group, t), (0, 0))
            out[(group, t)] = (r + m.reserved, b)
    for _, _, block in state.iter_blocks():
        key = (tuple(sorted(block.numa_affinity)), block.type)
        r, b = out[key]
        out[key] = (r, b + block.size)
    return out


def _accounted(state: MemoryState) -> None:
    for node in state.machine.values():
        for m in node.memory_map.values():
            assert m.free >= 0 and m.reserved >= 0
            assert m.free + m.reserved == m.allocatable
    for key, (reserved, blocks) in _group_sums(state).items():
        assert reserved == blocks, key


@settings(max_examples=150, deadline=None)
@given(
    sizes=st.lists(
        st.lists(st.integers(1, 40).map(lambda k: k * 256 * MI), min_size=1, max_size=2),
        min_size=1,
        max_size=6,
    ),
    drift=st.lists(st.integers(-8, 8).map(lambda k: k * 16 * MI), min_size=4, max_size=4),
    reserved=st.integers(0, 12).map(lambda k: k * 256 * MI),
    beyond=st.sampled_from(["refuse", "accept-if-fits"]),
)
def test_restore_never_forgets_memory_in_use(
    sizes: list[list[int]], drift: list[int], reserved: int, beyond: str
) -> None:
    import tempfile

    from nri_plugin.engine.pod import ContainerSpec, PodSpec
    from nri_plugin.engine.rebase import repay_overflow

    topology = topo()
    manager = MemoryManager(topology, cfg())
    for i, pod_sizes in enumerate(sizes):
        containers = tuple(
            ContainerSpec(
                f"c{j}",
                {"cpu": Fraction(1), "memory": Fraction(s)},
                {"cpu": Fraction(1), "memory": Fraction(s)},
            )
            for j, s in enumerate(pod_sizes)
        )
        manager.admit(PodSpec(f"p{i}", containers=containers))
    moved = topo(tuple(f"{8 * 1024 + d // MI}Mi" for d in drift))
    config = cfg(
        reservedMemory=[f"0:memory={1024 * MI + reserved}"], memoryDriftBeyondTolerance=beyond
    )
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / STATE
        write_file(path, manager.state)
        try:
            recovery = recover(moved, config, path, Log())
        except StateError as exc:
            # KEP-6232: a drift beyond the tolerance (unless accept-if-fits) refuses at once;
            # a changed reservation never does
            assert "memory-drift-tolerance" in str(exc) and "short by" not in str(exc)
            assert beyond == "refuse" and any(abs(delta) > 64 * MI for delta in drift)
            return
    pending = recovery.pending
    if pending is not None:
        # memory that shrank under recorded blocks: refused while they are all held ...
        assert any(delta < 0 for delta in drift)
        refusal = pending.refusal(manager.state.entries)
        assert refusal is not None and "short by" in str(refusal)
        assert str(refusal) == pending.reason
        # ... never once their containers are gone
        assert pending.refusal({}) is None
    state = recovery.manager.state
    assert state.entries == manager.state.entries
    _accounted(state)
    # releasing pod by pod keeps the books right; at the end it is the new default state
    for i in range(len(sizes)):
        recovery.manager.remove_pod(f"p{i}")
        repay_overflow(recovery.manager)
        _accounted(state)
    assert as_json(state) == as_json(MemoryManager(moved, config).state)


def test_rebuild_adopts_pinned_containers_before_admitting_unpinned_ones() -> None:
    """Synchronize's order is the runtime's: a late container listed first must not take
    the memory of a pinned one listed after it."""
    plugin = MemoryPlugin(MemoryManager(topo(), cfg()), logger=Log())
    late, pinned = pod("late"), pod("pinned")
    unpinned_c = container(late, "app", "c1", 2 * GI, state=api.CONTAINER_RUNNING)
    pinned_c = container(pinned, "app", "c2", 5 * GI, mems="0", state=api.CONTAINER_RUNNING)
    updates = plugin.synchronize([late, pinned], [unpinned_c, pinned_c])
    machine = plugin.manager.state.machine
    assert machine[0].memory_map["memory"].reserved == 5 * GI  # node 0 is full (5Gi)
    assert [(u.container_id, u.linux.resources.cpu.mems) for u in updates] == [("c1", "1")]
    assert machine[1].memory_map["memory"].reserved == 2 * GI


# -- KEP-6232's gauges -----------------------------------------------------------------------------


class _ScrapingFrontEnd:
    """The front end at the moment it would connect: scrapes /metrics once, then stops."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.metrics = ""

    async def start(self, tracker: Any, kubelet: Any = None, metrics: Any = None) -> None:
        return None

    async def run(self) -> None:
        import asyncio

        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        writer.write(b"GET /metrics HTTP/1.0\r\n\r\n")
        await writer.drain()
        self.metrics = (await reader.read()).decode()
        writer.close()

    def stop(self) -> None:
        return None

    def health(self) -> tuple[bool, str]:
        return True, "ok"

    async def close(self) -> None:
        return None

    def describe(self) -> dict[str, object]:
        return {"mode": "test"}


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.mark.usefixtures("structlog_restored")
def test_the_drift_gauges_show_the_tolerance_and_each_nodes_drift(
    state_path: Path, tmp_path: Path
) -> None:
    import argparse
    import asyncio

    from nri_plugin.daemon import serve
    from nri_plugin.logs import configure_logging

    configure_logging("error")
    write(state_path, busy_node().state)
    (tmp_path / "topology.json").write_text(
        json.dumps(
            {
                "nodes": [
                    {
                        "id": i,
                        "cpus": f"{4 * i}-{4 * i + 3}",
                        "memory": m,
                        "hugepages": {"1Gi": "2Gi"},
                    }
                    for i, m in enumerate(("8Gi", "8160Mi", "8Gi", "8224Mi"))
                ]
            }
        )
    )
    (tmp_path / "config.json").write_text(
        json.dumps(
            {
                "topologyManagerPolicy": "best-effort",
                "reservedMemory": ["0:memory=1Gi"],
                "memoryManagerPolicyOptions": {"memory-drift-tolerance": "48Mi"},
            }
        )
    )
    port = _free_port()
    args = argparse.Namespace(
        topology_file=str(tmp_path / "topology.json"),
        sysfs_root=None,
        config=str(tmp_path / "config.json"),
        kubelet_config=None,
        state_dir=str(state_path.parent),
        metrics_address=f"127.0.0.1:{port}",
    )
    front = _ScrapingFrontEnd(port)
    assert asyncio.run(serve(args, front)) == 0
    lines = front.metrics.splitlines()
    assert "kubelet_memory_manager_drift_tolerance_bytes 5.0331648e+07" in lines
    drift = sorted(
        line for line in lines if line.startswith("kubelet_memory_manager_memory_drift_bytes{")
    )
    assert drift == [
        'kubelet_memory_manager_memory_drift_bytes{numa_node="0"} 0.0',
        'kubelet_memory_manager_memory_drift_bytes{numa_node="1"} 3.3554432e+07',
        'kubelet_memory_manager_memory_drift_bytes{numa_node="2"} 0.0',
        'kubelet_memory_manager_memory_drift_bytes{numa_node="3"} 3.3554432e+07',
    ]

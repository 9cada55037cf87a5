"""Restart recovery against real containerd (2.x and 1.7): lost or damaged state, drift.

A node full of pods of every kind is set up once per test: an init-container
pod whose init container ran and exited before its app started, a two-node
group, single-node pods (one with two containers),
Burstable and BestEffort pods. The plugin is then killed with SIGKILL, its
state file deleted, corrupted, truncated or replaced by a symlink, and the
plugin started again: what it rebuilds from Synchronize must equal, field by
field, what it had. The fake nodes map to this machine's (README, "Running on a
node"), so the containers run, except those whose CPU-manager cpuset
names CPUs this machine lacks (kept for their CPU hints): those are created only.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import stat
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import FLAVOR_IDS
from .harness import FLAVOR_TAG, FLAVORS, Containerd, CRIClient, E2EPaths, PluginExited
from .test_plugin import MemoryManagerPlugin, wait_exited

GI = 1 << 30
MI = 1 << 20
STATE = "memory_manager_state"

# 4 NUMA nodes of 8Gi with a 1Gi pool of 2Mi pages each; node 0 has 1Gi reserved.
# Memory allocatable: 6Gi on node 0, 7Gi on the others.
NODE_MEMORY = ("8Gi", "8Gi", "8Gi", "8Gi")


def topology_text(memory: tuple[str, ...] = NODE_MEMORY) -> str:
    nodes = "\n".join(
        f'  - {{id: {i}, cpus: "{4 * i}-{4 * i + 3}", memory: {m}, hugepages: {{2Mi: 1Gi}}}}'
        for i, m in enumerate(memory)
    )
    return f"nodes:\n{nodes}\n"


def config_text(reserved: str = "['0:memory=1Gi']", extra: str = "") -> str:
    return (
        f"policy: static\ntopologyManagerPolicy: best-effort\nreservedMemory: {reserved}\n{extra}"
    )


class Plugin(MemoryManagerPlugin):
    """test_plugin's helper with our topology and config, which tests may rewrite."""

    def __init__(self, ctrd: Containerd, work: Path) -> None:
        super().__init__(ctrd, work, "best-effort")
        self.write(topology_text(), config_text())

    def write(self, topology: str, config: str) -> None:
        (self.work / "topology.yaml").write_text(topology)
        (self.work / "config.yaml").write_text(config)

    @property
    def state_file(self) -> Path:
        return self.state_dir / STATE

    def crash(self) -> None:
        self.kill(signal.SIGKILL)

    def log_lines(self) -> list[dict[str, Any]]:
        assert self.proc is not None
        out = []
        for line in self.proc.log_text().splitlines():
            if line.startswith("{"):
                out.append(json.loads(line))
        return out


@pytest.fixture(scope="module", params=FLAVORS, ids=FLAVOR_IDS)
def containerd(request: pytest.FixtureRequest, e2e_paths: E2EPaths) -> Iterator[Containerd]:
    """conftest's containerd under this module's own instance name: these tests may run
    while other e2e modules run in another session on the same machine."""
    ctrd = Containerd(e2e_paths, request.param, f"rec{FLAVOR_TAG[request.param]}")
    try:
        ctrd.start()
        yield ctrd
    finally:
        try:
            ctrd.close()
        finally:
            ctrd.assert_clean()


@pytest.fixture
def plugin(containerd: Containerd, cri: CRIClient, tmp_path: Path) -> Iterator[Plugin]:
    p = Plugin(containerd, tmp_path / "plugin")
    p.start()
    yield p
    if containerd.running:
        containerd.cri().remove_all_pods()
    p.stop()


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


class Workload:
    """The pods of one test and what the runtime shows of their containers."""

    def __init__(self, cri: CRIClient) -> None:
        self.cri = cri
        self.containers: dict[str, str] = {}  # label -> container id
        self.running: set[str] = set()

    def pod(self, label: str, qos: str = "Guaranteed") -> Any:
        return self.cri.run_pod(str(uuid.uuid4()), name=label, qos=qos)  # type: ignore[arg-type]

    def create(self, pod: Any, name: str, *, start: bool = False, **kw: Any) -> str:
        cid = self.cri.create_container(pod, name, **kw)
        self.containers[f"{pod.name}/{name}"] = cid
        if start:
            self.cri.start_container(cid)
            self.running.add(cid)
        return cid

    def mems(self) -> dict[str, str]:
        return {label: self.cri.numa_nodes(cid) for label, cid in self.containers.items()}

    def host_mems(self) -> dict[str, str]:
        return {cid: self.cri.host_cpuset_mems(cid) for cid in sorted(self.running)}


def busy_node(cri: CRIClient, plugin: Plugin) -> Workload:
    w = Workload(cri)
    # init container runs to completion on node 0, then the app starts and the init is released
    p = w.pod("with-init")
    init = cri.create_container(
        p, "init", memory_limit=2 * GI, cpu_millis=1000, cpuset_cpus="0-1", command=["/bin/true"]
    )
    cri.start_container(init)
    wait_exited(cri, init)
    w.create(p, "app", start=True, memory_limit=GI, cpu_millis=1000, cpuset_cpus="0-1")
    wait_for(
        lambda: "init" not in plugin.state().get("entries", {}).get(p.uid, {}),
        "the init container's blocks were never released",
    )
    p = w.pod("runner")
    w.create(p, "app", start=True, memory_limit=GI, cpu_millis=1000, cpuset_cpus="0-1")
    # wider than any node: a group; node 0 serves single-node pods, so [1,2]
    w.create(w.pod("group"), "app", start=True, memory_limit=12 * GI, cpu_millis=2000)
    p = w.pod("two")
    w.create(p, "app", memory_limit=2 * GI, cpu_millis=1000, cpuset_cpus="12-13")
    w.create(p, "side", memory_limit=GI, cpu_millis=1000, cpuset_cpus="12-13")
    # hugepages: containerd drops hugepage limits where the hugetlb cgroup is not mounted
    # (this machine); test_recovery.py covers them
    w.create(w.pod("huge"), "app", memory_limit=GI, cpu_millis=1000, cpuset_cpus="14")
    p = w.pod("burstable", "Burstable")
    w.create(p, "app", start=True, memory_limit=GI, cpu_millis=500, cpu_limit_millis=1000)
    w.create(w.pod("besteffort", "BestEffort"), "app", start=True)
    assert w.mems() == {
        "with-init/app": "0",
        "runner/app": "0",
        "group/app": "1,2",
        "two/app": "3",
        "two/side": "3",
        "huge/app": "3",
        "burstable/app": "",
        "besteffort/app": "",
    }
    return w


def fields(state: dict[str, Any]) -> dict[str, Any]:
    """Every field of the checkpoint, flattened: machineState.N.memoryMap.T.free and so on.

    Blocks are compared as a set per container (kubelet's order is unspecified).
    """
    out: dict[str, Any] = {"policyName": state["policyName"]}
    for n, node in state["machineState"].items():
        out[f"node {n} numberOfAssignments"] = node["numberOfAssignments"]
        out[f"node {n} cells"] = sorted(node["cells"])
        for t, table in node["memoryMap"].items():
            for k, v in table.items():
                out[f"node {n} {t} {k}"] = v
    for uid, containers in state.get("entries", {}).items():
        for name, blocks in containers.items():
            out[f"entry {uid}/{name}"] = sorted(
                (b["type"], b["size"], tuple(b["numaAffinity"])) for b in blocks
            )
    return out


def settled(plugin: Plugin, before: dict[str, Any], timeout: float = 5.0) -> dict[str, Any]:
    """The state file once the write after Synchronize landed (it is written off the loop)."""
    deadline = time.monotonic() + timeout
    while True:
        state = plugin.state()
        if fields(state) == fields(before) or time.monotonic() > deadline:
            return state
        time.sleep(0.05)


def assert_same(after: dict[str, Any], before: dict[str, Any]) -> None:
    a, b = fields(after), fields(before)
    diff = {k: (b.get(k), a.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}
    assert diff == {}, f"field: (before, after) {diff}"


def expected_state(before: dict[str, Any]) -> None:
    """Sanity of the scenario itself, so that a rebuild that matches it matches something."""
    machine = before["machineState"]
    memory = {n: machine[n]["memoryMap"]["memory"]["reserved"] for n in "0123"}
    assert memory == {"0": 2 * GI, "1": 7 * GI, "2": 5 * GI, "3": 4 * GI}
    assert machine["1"]["cells"] == machine["2"]["cells"] == [1, 2]
    assert len(before["entries"]) == 5  # the Guaranteed pods; the init container is gone


def _delete(path: Path) -> None:
    path.unlink()


def _corrupt(path: Path) -> None:
    data = json.loads(path.read_text())
    data["machineState"]["3"]["memoryMap"]["memory"]["free"] += GI  # checksum now wrong
    path.write_text(json.dumps(data))


def _truncate(path: Path) -> None:
    content = path.read_bytes()
    path.write_bytes(content[: len(content) * 2 // 3])


def _symlink(path: Path) -> None:
    target = path.with_name("elsewhere")
    path.rename(target)
    os.symlink(target, path)


DAMAGE = {"deleted": _delete, "corrupt": _corrupt, "truncated": _truncate, "symlink": _symlink}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_state_is_rebuilt_from_the_runtime(damage: str, cri: CRIClient, plugin: Plugin) -> None:
    w = busy_node(cri, plugin)
    before = plugin.state()
    expected_state(before)
    mems, host = w.mems(), w.host_mems()
    plugin.crash()
    original = plugin.state_file.read_bytes()
    DAMAGE[damage](plugin.state_file)
    plugin.start()
    assert_same(settled(plugin, before), before)
    assert w.mems() == mems and w.host_mems() == host  # no container lost its pinning
    # the damaged file is kept beside the new one, never trusted
    aside = sorted(plugin.state_dir.glob(f"{STATE}.untrusted-*"))
    if damage == "deleted":
        assert aside == []
    else:
        [kept] = aside
        assert kept.is_symlink() if damage == "symlink" else kept.read_bytes() != original
        untrusted = [
            e for e in plugin.log_lines() if e.get("event", "").startswith("checkpoint not")
        ]
        assert untrusted and untrusted[-1]["kept_as"] == str(kept)
    assert not plugin.state_file.is_symlink()
    # and the rebuilt state is what admissions use: 4Gi fill node 0, then 3Gi fill node 3
    after_a = w.create(w.pod("after-a"), "app", memory_limit=4 * GI, cpu_millis=1000)
    after_b = w.create(w.pod("after-b"), "app", memory_limit=3 * GI, cpu_millis=1000)
    assert (cri.numa_nodes(after_a), cri.numa_nodes(after_b)) == ("0", "3")


def test_restart_with_an_intact_file_changes_nothing(cri: CRIClient, plugin: Plugin) -> None:
    w = busy_node(cri, plugin)
    before = plugin.state()
    plugin.crash()
    plugin.start()
    assert plugin.state() == before  # byte for byte, checksum included
    assert list(w.mems().values()) == ["0", "0", "1,2", "3", "3", "3", "", ""]


def test_leftover_temp_file_is_removed_at_start(cri: CRIClient, plugin: Plugin) -> None:
    busy_node(cri, plugin)
    before = plugin.state()
    plugin.crash()
    # a crash between creating the temp file and renaming it
    leftover = plugin.state_dir / f".{STATE}.99999.0badcafe.tmp"
    leftover.write_bytes(plugin.state_file.read_bytes()[:100])
    plugin.start()
    assert not leftover.exists()
    assert plugin.state() == before


def test_state_dir_and_file_are_private(cri: CRIClient, plugin: Plugin) -> None:
    busy_node(cri, plugin)
    assert stat.S_IMODE(plugin.state_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE(plugin.state_file.stat().st_mode) == 0o600


# -- drift ---------------------------------------------------------------------------------------


def test_drift_within_tolerance_is_accepted(cri: CRIClient, plugin: Plugin) -> None:
    w = busy_node(cri, plugin)
    before = plugin.state()
    plugin.crash()
    # node 3 reports 32Mi less, node 0 16Mi more (firmware, a kernel update)
    plugin.write(topology_text(("8208Mi", "8Gi", "8Gi", "8160Mi")), config_text())
    plugin.start()
    after = plugin.state()
    assert after["entries"] == before["entries"]
    for n, total in (("0", 8208 * MI), ("3", 8160 * MI)):
        old = before["machineState"][n]["memoryMap"]["memory"]
        new = after["machineState"][n]["memoryMap"]["memory"]
        assert new["total"] == total
        assert new["reserved"] == old["reserved"]  # every block kept
        assert new["free"] == new["allocatable"] - new["reserved"]  # free rebased
        assert new["allocatable"] - old["allocatable"] == total - 8 * GI
    for n in "12":  # untouched nodes stay as they were
        assert after["machineState"][n] == before["machineState"][n]
    drifts = [e for e in plugin.log_lines() if "within tolerance" in e.get("event", "")]
    assert [(e["numa_node"], e["old_total"], e["new_total"]) for e in drifts] == [
        (0, 8 * GI, 8208 * MI),
        (3, 8 * GI, 8160 * MI),
    ]
    assert w.mems()["group/app"] == "1,2"


def test_drift_beyond_tolerance_refuses_unless_accept_if_fits_is_chosen(
    cri: CRIClient, plugin: Plugin
) -> None:
    busy_node(cri, plugin)
    before = plugin.state()
    plugin.crash()
    content = plugin.state_file.read_bytes()
    moved = topology_text(("8Gi", "8Gi", "8Gi", "6Gi"))  # 5Gi for 4Gi: it still fits
    plugin.write(moved, config_text())
    with pytest.raises(PluginExited):  # KEP-6232: beyond the bound, not the same machine
        plugin.start()
    assert plugin.proc is not None and plugin.proc.returncode == 2
    last = plugin.proc.log_text().strip().splitlines()[-1]
    assert last.startswith("nri-memory-manager run: NUMA node 3 memory total was 8Gi")
    assert "a drift of 2Gi (2147483648 bytes), more than the memory-drift-tolerance" in last
    assert plugin.state_file.read_bytes() == content
    plugin.write(moved, config_text(extra="memoryDriftBeyondTolerance: accept-if-fits\n"))
    plugin.start()
    after = plugin.state()
    assert after["entries"] == before["entries"]
    assert after["machineState"]["3"]["memoryMap"]["memory"]["free"] == GI
    assert any("beyond tolerance" in e.get("event", "") for e in plugin.log_lines())


def test_drift_beyond_tolerance_that_no_longer_fits_refuses_to_start(
    cri: CRIClient, plugin: Plugin
) -> None:
    w = busy_node(cri, plugin)
    before = plugin.state()
    plugin.crash()
    files = {p.name: p.read_bytes() for p in plugin.state_dir.iterdir()}
    plugin.write(
        topology_text(("8Gi", "8Gi", "8Gi", "4Gi")),  # 3Gi for 4Gi
        config_text(extra="memoryDriftBeyondTolerance: accept-if-fits\n"),
    )
    # which containers still hold the blocks only the runtime can say: the plugin registers,
    # and refuses at Synchronize, the pods on node 3 still running (containerd 2.x logs the
    # plugin as connected only once synchronized: never here)
    with contextlib.suppress(PluginExited):
        plugin.start()
    assert plugin.proc is not None and plugin.proc.wait(20) == 2
    last = plugin.proc.log_text().strip().splitlines()[-1]
    assert last.startswith("nri-memory-manager run: NUMA node 3 memory total was 8Gi")
    assert "is now 4Gi" in last and "short by 1Gi" in last
    events = [e.get("event") for e in plugin.log_lines()]
    assert events.index("nri registered") < events.index("refusing to start")
    [refused] = [e for e in plugin.log_lines() if e.get("event") == "nri request refused"]
    assert refused["method"] == "Synchronize" and refused["error"] == last.split(": ", 1)[1]
    # the checkpoint and the exit records left as they were for the operator
    assert {p.name: p.read_bytes() for p in plugin.state_dir.iterdir()} == files
    assert w.mems()["two/app"] == "3"
    # with the machine back (or the pods drained) the plugin starts on the same state
    plugin.write(topology_text(), config_text())
    plugin.start()
    assert plugin.state() == before


def test_shrink_under_the_blocks_of_pods_removed_while_the_plugin_was_down_starts(
    cri: CRIClient, plugin: Plugin
) -> None:
    # node 3's pods are removed while the plugin is down, and node 3 comes back smaller than
    # what they held (within a tolerance of 4Gi): the blocks that no longer fit belong to
    # containers that no longer exist, so the plugin starts and releases them
    w = busy_node(cri, plugin)
    before = plugin.state()
    plugin.crash()
    content = plugin.state_file.read_bytes()
    pod_of = {c.id: c.pod_id for c in cri.list_containers()}
    for label in ("two/app", "huge/app"):
        cri.stop_pod(pod_of[w.containers[label]])
        cri.remove_pod(pod_of[w.containers[label]])
    two = next(u for u, c in before["entries"].items() if "side" in c)
    [huge] = [
        u
        for u, c in before["entries"].items()
        if u != two and [b["numaAffinity"] for b in c["app"]] == [[3]]
    ]
    plugin.write(
        topology_text(("8Gi", "8Gi", "8Gi", "4Gi")),  # 3Gi allocatable for the 4Gi held
        config_text(extra="memoryManagerPolicyOptions: {memory-drift-tolerance: 4Gi}\n"),
    )
    plugin.start()
    wait_for(lambda: plugin.state_file.read_bytes() != content, "the state never written", 20)
    assert plugin.proc is not None and plugin.proc.running
    after = plugin.state()
    assert sorted(after["entries"]) == sorted(set(before["entries"]) - {two, huge})
    node3 = after["machineState"]["3"]["memoryMap"]["memory"]
    assert (node3["total"], node3["allocatable"], node3["reserved"], node3["free"]) == (
        4 * GI,
        3 * GI,
        0,
        3 * GI,
    )
    events = plugin.log_lines()
    [accepted] = [e for e in events if "were released" in e.get("event", "")]
    assert accepted["level"] == "warning" and accepted["numa_nodes"] == [3]
    assert sorted(accepted["released"]) == sorted([f"{two}/app", f"{two}/side", f"{huge}/app"])
    assert not [e for e in events if e.get("event") == "refusing to start"]
    # node 3 serves again: 3Gi fill it
    w.create(w.pod("after"), "app", memory_limit=3 * GI, cpu_millis=1000, cpuset_cpus="12-13")
    assert cri.numa_nodes(w.containers["after/app"]) == "3"
    assert cri.numa_nodes(w.containers["group/app"]) == "1,2"


def test_tolerance_comes_from_the_config(cri: CRIClient, plugin: Plugin) -> None:
    busy_node(cri, plugin)
    plugin.crash()
    # node 0 holds 2Gi: 4Gi less leaves exactly 2Gi allocatable, within a 6Gi tolerance
    plugin.write(
        topology_text(("4Gi", "8Gi", "8Gi", "8Gi")),
        config_text(extra="memoryManagerPolicyOptions: {memory-drift-tolerance: 6Gi}\n"),
    )
    plugin.start()
    node0 = plugin.state()["machineState"]["0"]["memoryMap"]["memory"]
    assert (node0["total"], node0["allocatable"], node0["reserved"]) == (4 * GI, 2 * GI, 2 * GI)
    assert node0["free"] == 0


# -- change without drain ------------------------------------------------------------------------


def test_reserved_memory_change_that_conflicts_starts_and_names_the_containers(
    cri: CRIClient, plugin: Plugin
) -> None:
    w = busy_node(cri, plugin)
    before = plugin.state()
    plugin.crash()
    plugin.write(topology_text(), config_text("['0:memory=1Gi', '3:memory=5Gi']"))  # 2Gi for 4Gi
    plugin.start()
    after = plugin.state()
    assert after["entries"] == before["entries"]  # kept as recorded
    node3 = after["machineState"]["3"]["memoryMap"]["memory"]
    assert (node3["systemReserved"], node3["reserved"], node3["free"]) == (5 * GI, 4 * GI, 0)
    conflicts = [e for e in plugin.log_lines() if "conflicts" in e.get("event", "")]
    uids = {e["pod_uid"]: e for e in conflicts}
    two = next(u for u, c in before["entries"].items() if "side" in c)
    assert {(e["pod_uid"], e["container"]) for e in conflicts} >= {(two, "app"), (two, "side")}
    assert all("short by 2Gi" in e["reason"] for e in conflicts)
    assert len(uids) == 2  # pods "two" and "huge"
    assert w.mems()["two/side"] == "3"

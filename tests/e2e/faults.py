"""Fault injection against a real containerd: pods come and go while things die.

A seeded driver creates and removes pods over CRI, as kubelet would, while
`nri-memory-manager run` (fake 4-NUMA topology, as in test_plugin.py) runs next
to the harness containerd. Run 1 (`plugin-kill`) kills the plugin with SIGKILL
at random moments (in the middle of a request, during its start-up and
Synchronize, or idle) and starts it again a few operations later. Run 2
(`containerd-restart`) restarts containerd at random moments; the driver then
retries what failed and takes stock of what exists, as kubelet does.

The oracle is `simulate`, in the order the plugin saw things: every
Guaranteed container is admitted where the plugin admitted it (on its
CreateContainer when the plugin answered it; at the next Synchronize when
containerd created it without the plugin), removals and starts are replayed at
the same points, and at a Synchronize releases come before late admissions
(docs/lifecycle.md). A shadow `MemoryManager` runs the steps as they are
written, because later steps depend on earlier outcomes (which init containers
still hold blocks, which late admissions failed and are retried); the finished
scenario then goes through `nri-memory-manager simulate` itself.

At the end, after the plugin is registered and synchronized again, the
plugin's checkpoint must equal the simulate state, its bytes must add up
(kubelet's restore check), every container holding blocks must carry them in
its OCI spec, and every Guaranteed container created while the plugin was
registered must have been pinned (containerd creates it silently unpinned
when the plugin misses the 2 s request timeout).

Usable from pytest (tests/e2e/test_fault_injection.py) and as a script:
`python -m tests.e2e.faults --ops 5000 --seed 7` (see hack/fault-injection.sh).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

from nri_plugin.engine.bitmask import format_mems, parse_cpulist
from nri_plugin.engine.manager import AdmissionResult, MemoryManager
from nri_plugin.engine.restore import validate_restored
from nri_plugin.engine.state import MemoryState, blocks_mask
from nri_plugin.errors import StateError
from nri_plugin.frontends.simulate import apply_step
from nri_plugin.inputs.scenario import parse_scenario, parse_step
from nri_plugin.persist.file import load_file
from nri_plugin.persist.format import from_checkpoint

from .harness import (
    FLAVOR_TAG,
    FLAVORS,
    Containerd,
    CRIClient,
    CRIError,
    E2EPaths,
    Flavor,
    HarnessError,
    PluginExited,
    PluginProcess,
    Pod,
    QoS,
    registered_pattern,
    run_setup,
)
from .test_plugin import ROOT, MemoryManagerPlugin

T = TypeVar("T")
Fault = Literal["plugin-kill", "containerd-restart"]
FAULTS: tuple[Fault, ...] = ("plugin-kill", "containerd-restart")
# Topology manager policies that let groups form (single-numa-node refuses them).
POLICIES = ("best-effort", "restricted")

MI = 1 << 20
GI = 1 << 30
PLUGIN_NAME = "90-memory-manager"
REFUSAL = "TopologyAffinityError:"
STATE_FILE = "memory_manager_state"
# Half of containerd's plugin_request_timeout (2 s): an answer this late is a warning sign, a
# later one gets the plugin dropped and the container created unpinned.
ANSWER_BUDGET_MS = 1000.0
_HOST_CPUS = frozenset(os.sched_getaffinity(0))


# --------------------------------------------------------------------------------------------
# The schedule and the workload


@dataclass(frozen=True)
class Schedule:
    """What one run does; the same seed gives the same choices (timing still varies)."""

    seed: int
    operations: int = 1000
    fault: Fault = "plugin-kill"
    policy: str | None = None  # topology manager policy; None: picked by the seed
    fault_rate: float = 0.02  # chance that an operation is hit by a fault
    startup_kill_rate: float = 0.2  # run 1: chance that a restarted plugin dies again at once
    max_outage: int = 4  # run 1: at most this many operations run while the plugin is down
    min_pods: int = 6
    max_pods: int = 28
    start_rate: float = 0.7  # chance that a container that may start here is started


@dataclass(frozen=True)
class ContainerPlan:
    name: str
    memory: int  # limit in bytes; 0: none
    cpu_millis: int  # request
    cpu_limit_millis: int | None = None  # None: the request (Guaranteed)
    cpuset: str | None = None  # CPUs the CPU manager would have pinned
    runs_to_completion: bool = False  # an init container: `/bin/true`

    def scenario(self) -> dict[str, object]:
        """This container in simulate's scenario language (Guaranteed: requests == limits)."""
        amounts = {"cpu": f"{self.cpu_millis}m", "memory": str(self.memory)}
        doc: dict[str, object] = {
            "name": self.name,
            "resources": {"requests": dict(amounts), "limits": dict(amounts)},
        }
        if self.cpuset is not None:
            doc["cpuset"] = self.cpuset
        return doc


@dataclass(frozen=True)
class PodPlan:
    uid: str
    name: str
    kind: str
    qos: QoS
    containers: tuple[ContainerPlan, ...]


_KINDS = (
    ("guaranteed", 30),
    ("pinned", 14),
    ("group", 8),
    ("two-containers", 10),
    ("init", 14),
    ("burstable", 12),
    ("best-effort", 12),
)
_SIZES = (256 * MI, 512 * MI, GI, 1536 * MI, 2 * GI, 3 * GI, 4 * GI, 6 * GI)
# Larger than one 8Gi node: these form groups.
_GROUP_SIZES = (9 * GI, 10 * GI, 12 * GI, 15 * GI, 20 * GI)
# Node 0 has CPUs 0-3, node 1 4-7, node 2 8-11, node 3 12-15; the last two span two nodes.
_CPUSETS = ("0-1", "2", "4-5", "7", "8-9", "11", "12-13", "15", "3-4", "11-12")


def plan_pod(rng: random.Random, serial: int) -> PodPlan:
    kinds, weights = zip(*_KINDS, strict=True)
    kind = rng.choices(kinds, weights)[0]
    uid = str(uuid.UUID(int=rng.getrandbits(128), version=4))
    cpu = rng.choice((1000, 2000))
    qos: QoS = "Guaranteed"
    containers: tuple[ContainerPlan, ...]
    if kind == "guaranteed":
        containers = (ContainerPlan("app", rng.choice(_SIZES), cpu),)
    elif kind == "pinned":
        cpus = rng.choice(_CPUSETS)
        containers = (ContainerPlan("app", rng.choice(_SIZES), cpu, cpuset=cpus),)
    elif kind == "group":
        containers = (ContainerPlan("app", rng.choice(_GROUP_SIZES), cpu),)
    elif kind == "two-containers":
        containers = (
            ContainerPlan("app", rng.choice(_SIZES[:6]), cpu),
            ContainerPlan("helper", rng.choice(_SIZES[:4]), 1000),
        )
    elif kind == "init":
        # The app never asks more than the init container on one node: it always fits in
        # the memory it reuses, so simulate (which rejects whole pods) never has to refuse
        # a pod whose init container already ran.
        init = rng.choice(_SIZES[2:])
        app = rng.choice([s for s in _SIZES if s <= init])
        containers = (
            ContainerPlan("init", init, cpu, runs_to_completion=True),
            ContainerPlan("app", app, cpu),
        )
    elif kind == "burstable":
        qos = "Burstable"
        containers = (ContainerPlan("app", GI, 250, cpu_limit_millis=1000),)
    else:
        qos = "BestEffort"
        containers = (ContainerPlan("app", 0, 0, cpu_limit_millis=0),)
    return PodPlan(uid, f"f{serial:05d}-{kind}", kind, qos, containers)


# --------------------------------------------------------------------------------------------
# What exists (the driver's ground truth)


@dataclass
class LiveContainer:
    plan: ContainerPlan
    pod_uid: str
    id: str
    seq: int  # creation order over the whole run
    mems: str  # cpuset.mems of the OCI spec right after CreateContainer
    guaranteed: bool  # the plugin's business: Guaranteed pod, memory limit set
    started: bool = False
    exited: bool = False
    removed: bool = False

    @property
    def name(self) -> str:
        return self.plan.name

    @property
    def created_unpinned(self) -> bool:
        """Created by containerd without the plugin's answer (it was not connected)."""
        return self.guaranteed and not self.mems


@dataclass
class LivePod:
    plan: PodPlan
    sandbox: Pod
    containers: list[LiveContainer] = field(default_factory=list)
    removed: bool = False

    @property
    def uid(self) -> str:
        return self.plan.uid

    def scenario_pod(self) -> dict[str, str]:
        return {"uid": self.uid, "name": self.plan.name, "namespace": self.sandbox.namespace}


# --------------------------------------------------------------------------------------------
# The oracle


@dataclass(frozen=True)
class Expectation:
    """What simulate decided for one container admission."""

    step: int  # index in the scenario's steps
    admitted: bool
    mems: str


class Oracle:
    """The plugin's expected state, written as a simulate scenario while the run goes on."""

    def __init__(
        self,
        topology: dict[str, Any],
        config: dict[str, Any],
        late_order: Callable[[], Sequence[tuple[str, str]]] = list,
    ) -> None:
        self.topology = topology
        self.config = config
        # The order the plugin admitted late containers in at its last Synchronize: the order
        # containerd listed them (NRI < 0.10 sends no created_at; containerd lists from a map).
        self._late_order = late_order
        base = parse_scenario({"topology": topology, "config": config})
        self.manager = MemoryManager(base.topology, base.config)
        self.steps: list[Mapping[str, object]] = []
        self.expectations: list[Expectation] = []
        self.late_admissions = 0
        # Happened while the plugin was away: replayed at its next Synchronize.
        self._pending_removals: list[dict[str, object]] = []
        self._pending_starts: list[tuple[LivePod, LiveContainer]] = []
        self._pending_creates: list[tuple[LivePod, LiveContainer]] = []
        # Created unpinned and not placed at a Synchronize: retried at every later one.
        self._unplaced: dict[tuple[str, str], tuple[LivePod, LiveContainer]] = {}
        # pod uid -> the init containers of its latest admission (released when another starts)
        self._inits: dict[str, set[str]] = {}
        # every pod that had a Guaranteed container admitted or tried
        self._pods: dict[str, LivePod] = {}
        # ids of the containers found exited right after the plugin's latest registration
        self.exited_at_sync: Collection[str] | None = None

    @property
    def pending(self) -> bool:
        return bool(self._pending_removals or self._pending_starts or self._pending_creates)

    def holds(self, uid: str, name: str) -> bool:
        return self.manager.state.blocks(uid, name) is not None

    # -- events, in the order the driver saw them ----------------------------------------

    def created(self, pod: LivePod, container: LiveContainer) -> Expectation | None:
        """A Guaranteed container was created (None: it waits for the next Synchronize)."""
        if container.created_unpinned:
            self._pending_creates.append((pod, container))
            return None
        if self.pending:
            # Answered by the plugin after earlier ones went unanswered: it synchronized
            # in between (a containerd restart under a create that was retried).
            self.synchronized()
        return self._admit(pod, container)

    def refused(self, pod: LivePod, plan: ContainerPlan) -> Expectation:
        """The plugin refused a CreateContainer: simulate must refuse it too."""
        ghost = LiveContainer(plan, pod.uid, "", -1, "", guaranteed=True)
        if self.pending:
            self.synchronized()
        return self._admit(pod, ghost)

    def started(self, pod: LivePod, container: LiveContainer, *, plugin_up: bool) -> None:
        if not plugin_up:
            self._pending_starts.append((pod, container))
        else:
            self._start(pod, container)

    def removed_pod(self, pod: LivePod, *, plugin_up: bool) -> None:
        self._remove({"pod": pod.uid}, plugin_up)

    def removed_container(self, pod: LivePod, name: str, *, plugin_up: bool) -> None:
        self._remove({"pod": pod.uid, "container": name}, plugin_up)

    def synchronized(self) -> None:
        """The plugin (re)registered: releases first, then late admissions in the order the
        runtime listed them (creation order where the plugin did not say).

        containerd's Synchronize does not list exited containers, so the plugin releases
        their blocks (docs/recovery.md, "Limits"): those in `exited_at_sync`, the stock the
        driver took at the registration (taken once; None: this is no new registration).
        """
        exited, self.exited_at_sync = self.exited_at_sync, None
        for removal in self._pending_removals:
            self._apply({"remove": removal})
        for pod, container in self._pending_starts:
            self._start(pod, container)
        for pod in self._pods.values():
            for c in pod.containers:
                if exited is None or c.id not in exited:
                    continue
                if pod.removed or c.removed or not self.holds(pod.uid, c.name):
                    continue
                self._apply({"remove": {"pod": pod.uid, "container": c.name}})
                self._inits.get(pod.uid, set()).discard(c.name)
        waiting = dict(self._unplaced)
        for pod, c in self._pending_creates:
            waiting[(pod.uid, c.name)] = (pod, c)
        self._pending_removals, self._pending_starts, self._pending_creates = [], [], []
        self._unplaced = {}
        listed = {key: i for i, key in enumerate(self._late_order())}
        for key, (pod, c) in sorted(
            waiting.items(), key=lambda kv: (listed.get(kv[0], len(listed)), kv[1][1].seq)
        ):
            # Synchronize lists created and running containers only.
            gone = c.exited if exited is None else c.id in exited
            if pod.removed or c.removed or gone or self.holds(*key):
                continue
            self.late_admissions += 1
            if not self._admit(pod, c).admitted:
                self._unplaced[key] = (pod, c)

    # -- steps ---------------------------------------------------------------------------

    def _admit(self, pod: LivePod, container: LiveContainer) -> Expectation:
        self._pods[pod.uid] = pod
        # Exited containers of other names that still hold blocks were its init containers.
        inits = [
            c
            for c in pod.containers
            if c.exited
            and not c.removed
            and c.name != container.name
            and self.holds(pod.uid, c.name)
        ]
        step = {
            "admit": {
                "pod": pod.scenario_pod(),
                "initContainers": [c.plan.scenario() for c in inits],
                "containers": [container.plan.scenario()],
            }
        }
        result = self._apply(step)
        assert isinstance(result, AdmissionResult)
        mems = result.containers[-1].cpuset_mems if result.admitted else ""
        if result.admitted:
            self._inits[pod.uid] = {c.name for c in inits}
        expectation = Expectation(len(self.steps) - 1, result.admitted, mems)
        self.expectations.append(expectation)
        return expectation

    def _start(self, pod: LivePod, container: LiveContainer) -> None:
        inits = self._inits.get(pod.uid, set())
        if inits and container.name not in inits:
            self._apply({"start": {"pod": pod.uid}})
            self._inits.pop(pod.uid, None)

    def _remove(self, removal: dict[str, object], plugin_up: bool) -> None:
        if plugin_up:
            self._apply({"remove": removal})
        else:
            self._pending_removals.append(removal)

    def _apply(self, step: Mapping[str, object]) -> object:
        """Run one step on the shadow manager, exactly as `simulate` runs it."""
        parsed = parse_step(step, self.manager.topology, f"steps[{len(self.steps)}]")
        self.steps.append(step)
        return apply_step(self.manager, parsed)

    def scenario(self) -> dict[str, object]:
        return {"topology": self.topology, "config": self.config, "steps": list(self.steps)}


def alive_only_scenario(
    topology: dict[str, Any], config: dict[str, Any], pods: Sequence[LivePod]
) -> dict[str, object]:
    """The live Guaranteed pods admitted in the order their containers were created.

    This is lifecycle.md's wording of the invariant. It ignores removed pods, so it
    differs from the plugin whenever a removed pod decided where a live one went;
    the figures report its differences, the checks use the replay.
    """
    steps: list[dict[str, object]] = []
    live = [p for p in pods if not p.removed]
    firsts = {
        p.uid: min(c.seq for c in p.containers if c.guaranteed and not c.removed)
        for p in live
        if any(c.guaranteed and not c.removed for c in p.containers)
    }
    for pod in sorted((p for p in live if p.uid in firsts), key=lambda p: firsts[p.uid]):
        kept = [c for c in pod.containers if c.guaranteed and not c.removed]
        inits = [c for c in kept if c.plan.runs_to_completion and c.exited]
        apps = [c for c in kept if c not in inits]
        if not apps:  # its app was refused or never created: the init holds its memory alone
            inits, apps = [], inits
        steps.append(
            {
                "admit": {
                    "pod": pod.scenario_pod(),
                    "initContainers": [c.plan.scenario() for c in inits],
                    "containers": [c.plan.scenario() for c in apps],
                }
            }
        )
        if inits and any(c.started for c in apps):
            steps.append({"start": {"pod": pod.uid}})
    return {"topology": topology, "config": config, "steps": steps}


# --------------------------------------------------------------------------------------------
# Comparing states


def state_differences(plugin: MemoryState, simulated: MemoryState) -> list[str]:
    """Every difference, one line each: per node and type (group sums for multi-node
    groups, where only sums are meaningful), groups, assignments and blocks."""
    out: list[str] = []
    if plugin.policy_name != simulated.policy_name:
        out.append(f"policyName: plugin {plugin.policy_name}, simulate {simulated.policy_name}")
    if set(plugin.machine) != set(simulated.machine):
        return [
            *out,
            f"NUMA nodes: plugin {sorted(plugin.machine)}, simulate {sorted(simulated.machine)}",
        ]
    for node_id in sorted(plugin.machine):
        p, s = plugin.machine[node_id], simulated.machine[node_id]
        if sorted(p.cells) != sorted(s.cells):
            out.append(f"node {node_id} group: plugin {p.cells}, simulate {s.cells}")
            continue
        if p.number_of_assignments != s.number_of_assignments:
            out.append(
                f"node {node_id} numberOfAssignments: plugin {p.number_of_assignments},"
                f" simulate {s.number_of_assignments}"
            )
        for mem_type in sorted(set(p.memory_map) | set(s.memory_map)):
            pt, st = p.memory_map.get(mem_type), s.memory_map.get(mem_type)
            if pt is None or st is None:
                out.append(f"node {node_id} {mem_type}: present in only one state")
                continue
            fields = ["total", "system_reserved", "allocatable"]
            if len(p.cells) <= 1:
                fields += ["reserved", "free"]
            for name in fields:
                pv, sv = getattr(pt, name), getattr(st, name)
                if pv != sv:
                    out.append(f"node {node_id} {mem_type} {name}: plugin {pv}, simulate {sv}")
            if len(p.cells) > 1 and node_id == min(p.cells):
                for name in ("reserved", "free"):
                    pv = sum(getattr(plugin.machine[n].memory_map[mem_type], name) for n in p.cells)
                    sv = sum(
                        getattr(simulated.machine[n].memory_map[mem_type], name) for n in p.cells
                    )
                    if pv != sv:
                        out.append(f"group {p.cells} {mem_type} {name}: plugin {pv}, simulate {sv}")
    keys = {(u, n) for u, c in plugin.entries.items() for n in c}
    keys |= {(u, n) for u, c in simulated.entries.items() for n in c}
    for uid, name in sorted(keys):
        pb, sb = plugin.blocks(uid, name), simulated.blocks(uid, name)
        if pb != sb:
            out.append(f"blocks of {uid}/{name}: plugin {_blocks(pb)}, simulate {_blocks(sb)}")
    return out


def _blocks(blocks: Sequence[Any] | None) -> str:
    if blocks is None:
        return "none"
    return ", ".join(f"{b.type} {b.size} on {','.join(map(str, b.numa_affinity))}" for b in blocks)


def accounting_error(state: MemoryState, default: MemoryState) -> str | None:
    """Bytes leaked or counted twice: the machine state must be what its blocks imply
    (kubelet's restore check: assignments, groups, reserved and free per group)."""
    try:
        validate_restored(state, default, state.policy_name)
    except StateError as exc:
        return str(exc)
    return None


# --------------------------------------------------------------------------------------------
# Figures


@dataclass(frozen=True)
class Figures:
    flavor: str
    fault: Fault
    seed: int
    policy: str
    operations: int
    containers_created: int
    refusals: int
    late_admissions: int
    pod_removals: int
    container_removals: int
    kills: int
    restarts: int
    mismatches: tuple[str, ...]
    unpinned_while_registered: tuple[str, ...]
    late_answers: int
    plugin_errors: tuple[str, ...]
    slowest_create_client_ms: float
    slowest_create_plugin_ms: float
    slowest_decision_ms: float
    alive_only_differences: int
    seconds: float
    work_dir: str

    def summary(self) -> str:
        return (
            f"fault injection {self.fault} on containerd {self.flavor}, seed {self.seed},"
            f" topology manager {self.policy}: {self.operations} operations"
            f" ({self.containers_created} containers created, {self.refusals} refused,"
            f" {self.late_admissions} admitted at Synchronize, {self.pod_removals} pods and"
            f" {self.container_removals} containers removed), {self.kills} plugin kills,"
            f" {self.restarts} {'plugin' if self.fault == 'plugin-kill' else 'containerd'}"
            f" restarts, {len(self.mismatches)} mismatches,"
            f" {len(self.unpinned_while_registered)} unpinned while registered;"
            f" slowest CreateContainer: {self.slowest_create_client_ms:.1f} ms at the CRI client,"
            f" {self.slowest_create_plugin_ms:.1f} ms in the plugin (decision"
            f" {self.slowest_decision_ms:.1f} ms), {self.late_answers} answers past the"
            f" deadline; alive-only scenario differs in {self.alive_only_differences} fields"
            f" (informational); {self.seconds:.0f} s; files in {self.work_dir}"
        )

    def problems(self) -> list[str]:
        """Everything that must be empty for the run to pass."""
        out = [f"mismatch: {m}" for m in self.mismatches]
        out += [f"unpinned while registered: {u}" for u in self.unpinned_while_registered]
        out += [f"plugin error: {e}" for e in self.plugin_errors]
        if self.late_answers:
            out.append(f"{self.late_answers} plugin answers later than containerd's deadline")
        for side, ms in (
            ("CRI client", self.slowest_create_client_ms),
            ("plugin", self.slowest_create_plugin_ms),
        ):
            if ms >= ANSWER_BUDGET_MS:
                out.append(
                    f"slowest CreateContainer {ms:.0f} ms ({side}) is not well under the 2 s"
                    f" request timeout (budget {ANSWER_BUDGET_MS:.0f} ms)"
                )
        return out


# --------------------------------------------------------------------------------------------
# The driver


class FaultInjection:
    """One run: `schedule.operations` random operations against `ctrd` under one fault."""

    def __init__(
        self,
        ctrd: Containerd,
        work: Path,
        schedule: Schedule,
        progress: Callable[[str], None] | None = None,
    ) -> None:
        self.ctrd = ctrd
        self.work = work
        self.schedule = schedule
        self.rng = random.Random(schedule.seed)
        self.policy = schedule.policy or self.rng.choice(POLICIES)
        self.progress = progress or (lambda _: None)
        self.plugin = MemoryManagerPlugin(ctrd, work / "plugin", self.policy)
        self.oracle = Oracle(
            yaml.safe_load((self.plugin.work / "topology.yaml").read_text()),
            yaml.safe_load((self.plugin.work / "config.yaml").read_text()),
            self._late_order,
        )
        self.procs: list[PluginProcess] = []
        self._log_read: dict[Path, int] = {}  # how far each plugin log was read
        self.pods: dict[str, LivePod] = {}
        self.plugin_up = False
        self._outage_left = 0
        self._serial = 0
        self._seq = 0
        self._fired = threading.Event()
        self._recovered = False
        self._registration_offset = 0
        self.mismatches: list[str] = []
        self.unpinned: list[str] = []
        self.create_latencies: list[float] = []
        self.counts = dict.fromkeys(
            ("operations", "created", "refused", "pod_removals", "container_removals"), 0
        )
        self.kills = 0
        self.restarts = 0

    # -- the run ---------------------------------------------------------------------------

    def run(self) -> Figures:
        started = time.monotonic()
        self._start_plugin(allow_kill=False)
        for index in range(self.schedule.operations):
            if not self.plugin_up and self._outage_left <= 0:
                self._start_plugin(allow_kill=True)
            self._operation(index)
            if (index + 1) % 200 == 0:
                self.progress(
                    f"{index + 1} operations, {len(self._alive())} pods alive, {self.kills} kills,"
                    f" {self.restarts} restarts, {len(self.mismatches)} mismatches"
                )
        # The invariant holds when connected and synchronized: come back one last time.
        while not self.plugin_up:
            self._start_plugin(allow_kill=False)
        return self._check(time.monotonic() - started)

    def _alive(self) -> list[LivePod]:
        return [p for p in self.pods.values() if not p.removed]

    def _operation(self, index: int) -> None:
        alive = self._alive()
        removable = [(p, c) for p in alive for c in p.containers if not c.removed]
        if len(alive) < self.schedule.min_pods:
            op = "create"
        else:
            weights = [0.0 if len(alive) >= self.schedule.max_pods else 0.5, 0.32, 0.18]
            if not removable:
                weights[2] = 0.0
            op = self.rng.choices(("create", "remove-pod", "remove-container"), weights)[0]
        timer = self._arm_fault()
        try:
            if op == "create":
                self._create_pod()
            elif op == "remove-pod":
                self._remove_pod(self.rng.choice(alive))
            else:
                self._remove_container(*self.rng.choice(removable))
        except CRIError as exc:
            raise HarnessError(f"operation {index} ({op}): {exc}") from exc
        finally:
            if timer is not None:
                timer.join()  # a fault due after a short operation fires now, between two
        self.counts["operations"] += 1
        if timer is not None:
            self._after_fault()
        elif not self.plugin_up:
            self._outage_left -= 1

    # -- faults ----------------------------------------------------------------------------

    def _arm_fault(self) -> threading.Timer | None:
        fault = self.schedule.fault
        if fault == "plugin-kill" and not self.plugin_up:
            return None
        if self.rng.random() >= self.schedule.fault_rate:
            return None
        # Operations take 5-150 ms: the fault lands inside one, at any point of it.
        delay = self.rng.uniform(0.0, 0.1)
        fire = self._kill_plugin if fault == "plugin-kill" else self._stop_containerd
        timer = threading.Timer(delay, fire)
        timer.start()
        return timer

    def _kill_plugin(self) -> None:
        self._fired.set()  # before the signal: a call that saw it clear was not hit
        assert self.plugin.proc is not None
        self.plugin.proc.kill(signal.SIGKILL)

    def _stop_containerd(self) -> None:
        self._fired.set()
        pid = self.ctrd.pid
        if pid is not None:
            os.kill(pid, signal.SIGTERM)

    def _after_fault(self) -> None:
        if self.schedule.fault == "plugin-kill":
            assert self.plugin.proc is not None
            self.plugin.proc.wait(10)
            self._plugin_died()
        else:
            self._recover_containerd()
            self._wait_registered(self._registration_offset)
            self.oracle.synchronized()
            self.restarts += 1
            self._recovered = False
        self._fired.clear()

    def _plugin_died(self) -> None:
        self.kills += 1
        self.plugin_up = False
        self._outage_left = self.rng.randint(0, self.schedule.max_outage)

    def _start_plugin(self, *, allow_kill: bool) -> None:
        """Start the plugin and wait until containerd has it registered and synchronized.

        With `allow_kill`, it may be killed again at a random moment of its start-up.
        """
        offset = self.ctrd.log_offset()
        proc = self.ctrd.start_plugin(
            self.plugin.argv, env={"PYTHONPATH": str(ROOT)}, name=PLUGIN_NAME
        )
        self.plugin.proc = proc
        self.procs.append(proc)
        timer = None
        if allow_kill and self.rng.random() < self.schedule.startup_kill_rate:
            timer = threading.Timer(self.rng.uniform(0.05, 0.8), proc.kill, [signal.SIGKILL])
            timer.start()
        registered = True
        try:
            proc.wait_registered(self.ctrd, timeout=30)
        except PluginExited:
            if timer is None:
                raise  # it died on its own: a bug, with its log in the message
            # It may have died just after containerd took its Synchronize answer.
            time.sleep(0.5)
            registered = self.ctrd.search_log(registered_pattern(PLUGIN_NAME), offset) is not None
        if timer is not None:
            timer.join()  # the kill, if it has not come yet, comes now: before any operation
            proc.wait(10)
        # Its own checkpoints are written whole (temp file, rename): one it cannot trust
        # means it wrote a state it does not accept back.
        for line in _json_lines([proc.log_path]):
            if line.get("event", "").startswith("checkpoint not trusted"):
                self.mismatches.append(
                    f"operation {self.counts['operations']}: the restarted plugin set its own"
                    f" checkpoint aside: {line.get('reason')}"
                )
        if registered:
            self.oracle.exited_at_sync = self._exited_now()
            self.oracle.synchronized()
            if self.counts["operations"] or self.kills:
                self.restarts += 1
            self.plugin_up = True
        if timer is not None:
            self._plugin_died()

    def _new_log_lines(self) -> list[dict[str, Any]]:
        """Complete lines the current plugin logged since the last call."""
        assert self.plugin.proc is not None
        path = self.plugin.proc.log_path
        offset = self._log_read.get(path, 0)
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read()
        data = data[: data.rfind(b"\n") + 1]
        self._log_read[path] = offset + len(data)
        lines = []
        for text in data.decode(errors="replace").splitlines():
            with contextlib.suppress(json.JSONDecodeError):
                if text.startswith("{"):
                    lines.append(json.loads(text))
        return lines

    def _late_order(self) -> list[tuple[str, str]]:
        return [
            (line["pod_uid"], line["container"])
            for line in self._new_log_lines()
            if line.get("event") == "admission"
            and line.get("result") in ("pinned late", "unplaced")
        ]

    def _exited_now(self) -> set[str]:
        """Ids of the exited containers: what the plugin's Synchronize just did not list."""
        return {c.id for c in self.ctrd.cri().list_containers() if c.state == "CONTAINER_EXITED"}

    def _wait_registered(self, since: int) -> None:
        self.ctrd.wait_for_log(registered_pattern(PLUGIN_NAME), timeout=30, since=since)
        self.plugin_up = True

    def _recover_containerd(self) -> None:
        """containerd got SIGTERM: wait for it to exit, start it on the same root and wait for
        the plugin to reconnect before anything else (CRI calls racing a plugin's
        registration can deadlock containerd: containerd#10085 in 1.7.24, and 2.1.9's
        recursive BlockPluginSync)."""
        if self._recovered:
            return
        self.ctrd.stop()
        self._registration_offset = self.ctrd.log_offset()
        self.ctrd.start()
        self._wait_registered(self._registration_offset)
        self.oracle.exited_at_sync = self._exited_now()
        self._recovered = True

    def _cri(
        self,
        call: Callable[[CRIClient], T],
        recover: Callable[[CRIClient], T | None] | None = None,
    ) -> T:
        """One CRI call. When containerd was stopped under it, restart containerd, then find
        the call's effect with `recover` or else retry, as kubelet retries."""
        for _ in range(10):
            try:
                return call(self.ctrd.cri())
            except CRIError as exc:
                if exc.code == "DEADLINE_EXCEEDED" and self.ctrd.pid is not None:
                    os.kill(self.ctrd.pid, signal.SIGUSR1)  # containerd logs its goroutines
                    raise HarnessError(
                        f"containerd hung ({exc}); its goroutines are in {self.ctrd.log_path}"
                    ) from exc
                if REFUSAL in exc.details or not self._containerd_faulted():
                    raise
            self._recover_containerd()
            if recover is not None:
                found = recover(self.ctrd.cri())
                if found is not None:
                    return found
        raise HarnessError("a CRI call kept failing after containerd came back")

    def _containerd_faulted(self) -> bool:
        return self.schedule.fault == "containerd-restart" and self._fired.is_set()

    # -- operations ------------------------------------------------------------------------

    def _create_pod(self) -> None:
        self._serial += 1
        plan = plan_pod(self.rng, self._serial)
        before = set(self._cri(lambda cri: cri.list_pods()))

        def stray(cri: CRIClient) -> None:
            # A sandbox the interrupted call left behind: without its config we cannot use
            # it, so it goes (kubelet too removes sandboxes it does not know).
            for pod_id in set(cri.list_pods()) - before:
                cri.stop_pod(pod_id)
                cri.remove_pod(pod_id)

        sandbox = self._cri(lambda cri: cri.run_pod(plan.uid, plan.name, plan.qos), recover=stray)
        pod = LivePod(plan, sandbox)
        self.pods[plan.uid] = pod
        if plan.kind == "init":
            init = self._create(pod, plan.containers[0])
            if init is None or not self._may_start(init):
                return  # refused, or pinned off the one real node: it cannot run here
            if not self._start(pod, init):
                return
            self._wait_exited(init)
            app = self._create(pod, plan.containers[1])
            if app is not None and self._may_start(app):
                self._start(pod, app)
            return
        for c in plan.containers:
            created = self._create(pod, c)
            if (
                created is not None
                and self._may_start(created)
                and self.rng.random() < self.schedule.start_rate
            ):
                self._start(pod, created)

    def _create(self, pod: LivePod, plan: ContainerPlan) -> LiveContainer | None:
        guaranteed = pod.plan.qos == "Guaranteed" and plan.memory > 0
        expect_pinned = self.plugin_up and not self._fired.is_set()
        sandbox = pod.sandbox

        def call(cri: CRIClient) -> str:
            return cri.create_container(
                sandbox,
                plan.name,
                memory_limit=plan.memory,
                cpu_millis=plan.cpu_millis,
                cpu_limit_millis=plan.cpu_limit_millis,
                cpuset_cpus=plan.cpuset,
                command=["/bin/true"] if plan.runs_to_completion else None,
            )

        def existing(cri: CRIClient) -> str | None:
            found = [c for c in cri.list_containers(sandbox.id) if c.name == plan.name]
            if not found:
                return None
            if found[0].state == "CONTAINER_UNKNOWN":
                # containerd died before the create finished: the container cannot be used
                # (Synchronize does not list it either); kubelet removes it and creates again
                cri.remove_container(found[0].id)
                return None
            return found[0].id

        began = time.perf_counter()
        try:
            cid = self._cri(call, recover=existing)
        except CRIError as exc:
            if REFUSAL not in exc.details:
                raise
            self.counts["refused"] += 1
            if expect_pinned and not self._fired.is_set():
                self.create_latencies.append(time.perf_counter() - began)
            expected = self.oracle.refused(pod, plan)
            if expected.admitted:
                self.mismatches.append(
                    f"operation {self.counts['operations']} (scenario step {expected.step}):"
                    f" the plugin refused {pod.uid}/{plan.name}, simulate"
                    f" admits it on {expected.mems}: {exc.details}"
                )
            return None
        elapsed = time.perf_counter() - began
        expect_pinned = expect_pinned and not self._fired.is_set()
        mems = self._cri(lambda cri: cri.numa_nodes(cid))
        self._seq += 1
        container = LiveContainer(plan, pod.uid, cid, self._seq, mems, guaranteed)
        self.counts["created"] += 1
        if expect_pinned:
            self.create_latencies.append(elapsed)
            if container.created_unpinned:
                self.unpinned.append(
                    f"{pod.uid}/{plan.name} ({cid[:12]}) created without cpuset.mems while the"
                    " plugin was registered"
                )
        if guaranteed:
            decided = self.oracle.created(pod, container)
            if decided is not None and (not decided.admitted or decided.mems != mems):
                self.mismatches.append(
                    f"operation {self.counts['operations']} (scenario step {decided.step}):"
                    f" the plugin pinned {pod.uid}/{plan.name} to"
                    f" {mems!r}, simulate "
                    + (f"pins it to {decided.mems!r}" if decided.admitted else "refuses it")
                )
        pod.containers.append(container)
        return container

    def _may_start(self, c: LiveContainer) -> bool:
        # The fake topology is bigger than this machine: a cpuset.mems other than "0" (one
        # real NUMA node) or CPUs it does not have cannot be written into a cgroup.
        if c.plan.cpuset is not None and not parse_cpulist(c.plan.cpuset) <= _HOST_CPUS:
            return False
        return c.mems == "0" if c.guaranteed else not c.mems

    def _start(self, pod: LivePod, c: LiveContainer) -> bool:
        """StartContainer; False when a containerd restart under the call left the container
        unable to run (state UNKNOWN, or EXITED without ever starting: its task could not
        be created again): it is removed, as kubelet removes a failed container."""
        plugin_up = self.plugin_up

        def running(cri: CRIClient) -> bool | None:
            state = cri.container_state(c.id)
            if state == "CONTAINER_UNKNOWN":
                return False
            if state == "CONTAINER_EXITED":
                return cri.container_started(c.id)
            return True if state == "CONTAINER_RUNNING" else None

        def start(cri: CRIClient) -> bool:
            cri.start_container(c.id)
            return True

        if not self._cri(start, recover=running):
            self._remove_container(pod, c)
            return False
        c.started = True
        if c.guaranteed:
            self.oracle.started(pod, c, plugin_up=plugin_up)
        return True

    def _wait_exited(self, c: LiveContainer, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while self._cri(lambda cri: cri.container_state(c.id)) != "CONTAINER_EXITED":
            if time.monotonic() > deadline:
                raise HarnessError(f"container {c.id} ({c.name}) did not exit in {timeout} s")
            time.sleep(0.005)
        c.exited = True

    def _remove_pod(self, pod: LivePod) -> None:
        plugin_up = self.plugin_up
        pod_id = pod.sandbox.id

        def stop_and_remove(cri: CRIClient) -> bool:
            cri.stop_pod(pod_id)
            # kubelet's order: the containers, then the sandbox. (containerd 2.1 deadlocks
            # when a plugin registers while RemovePodSandbox still removes containers.)
            for c in cri.list_containers(pod_id):
                cri.remove_container(c.id)
            cri.remove_pod(pod_id)
            return True

        self._cri(stop_and_remove, recover=lambda cri: _gone(pod_id not in cri.list_pods()))
        pod.removed = True
        for c in pod.containers:
            c.removed = True
        self.counts["pod_removals"] += 1
        if pod.plan.qos == "Guaranteed":
            self.oracle.removed_pod(pod, plugin_up=plugin_up)

    def _remove_container(self, pod: LivePod, c: LiveContainer) -> None:
        plugin_up = self.plugin_up

        def stop_and_remove(cri: CRIClient) -> bool:
            if cri.container_state(c.id) == "CONTAINER_RUNNING":
                cri.stop_container(c.id)
            cri.remove_container(c.id)
            return True

        def gone(cri: CRIClient) -> bool | None:
            return _gone(all(x.id != c.id for x in cri.list_containers(pod.sandbox.id)))

        self._cri(stop_and_remove, recover=gone)
        c.removed = True
        self.counts["container_removals"] += 1
        if c.guaranteed:
            self.oracle.removed_container(pod, c.name, plugin_up=plugin_up)

    # -- the end ---------------------------------------------------------------------------

    def _check(self, seconds: float) -> Figures:
        if self.oracle.pending:
            self.oracle.synchronized()
        plugin_state = settled_state(self.plugin)
        scenario_path = self.work / "scenario.json"
        scenario_path.write_text(json.dumps(self.oracle.scenario(), indent=1))
        report = run_simulate(scenario_path)
        simulated = from_checkpoint(report["state"], source=str(scenario_path))
        self._check_replay(report)
        mismatches = list(self.mismatches)
        mismatches += state_differences(plugin_state, simulated)
        default = self.oracle.manager.policy.default_state()
        if (error := accounting_error(plugin_state, default)) is not None:
            mismatches.append(f"plugin state does not add up: {error}")
        mismatches += self._check_pinned(plugin_state)

        alive_path = self.work / "scenario-alive-only.json"
        alive = alive_only_scenario(
            self.oracle.topology, self.oracle.config, list(self.pods.values())
        )
        alive_path.write_text(json.dumps(alive, indent=1))
        alive_state = from_checkpoint(run_simulate(alive_path)["state"])
        alive_differences = len(state_differences(plugin_state, alive_state))

        logs = PluginLogs.read([p.log_path for p in self.procs])
        figures = Figures(
            flavor=self.ctrd.flavor,
            fault=self.schedule.fault,
            seed=self.schedule.seed,
            policy=self.policy,
            operations=self.counts["operations"],
            containers_created=self.counts["created"],
            refusals=self.counts["refused"],
            late_admissions=self.oracle.late_admissions,
            pod_removals=self.counts["pod_removals"],
            container_removals=self.counts["container_removals"],
            kills=self.kills,
            restarts=self.restarts,
            mismatches=tuple(mismatches),
            unpinned_while_registered=tuple(self.unpinned),
            late_answers=logs.late_answers,
            plugin_errors=tuple(logs.errors),
            slowest_create_client_ms=max(self.create_latencies, default=0.0) * 1000,
            slowest_create_plugin_ms=logs.slowest_create_ms,
            slowest_decision_ms=logs.slowest_decision_ms,
            alive_only_differences=alive_differences,
            seconds=seconds,
            work_dir=str(self.work),
        )
        (self.work / "figures.json").write_text(json.dumps(dataclasses.asdict(figures), indent=1))
        return figures

    def _check_replay(self, report: dict[str, Any]) -> None:
        """`simulate` must decide as the shadow manager did (else this driver is wrong)."""
        steps = report["steps"]
        for e in self.oracle.expectations:
            got = steps[e.step]
            mems = got["containers"][-1]["cpusetMems"] if got["admitted"] else ""
            if (got["admitted"], mems) != (e.admitted, e.mems):
                raise HarnessError(
                    f"simulate step {e.step} decided {got['admitted']}/{mems!r}, the shadow"
                    f" manager {e.admitted}/{e.mems!r}"
                )
        if from_checkpoint(report["state"]) != self.oracle.manager.state:
            raise HarnessError("simulate's final state differs from the shadow manager's")

    def _check_pinned(self, plugin_state: MemoryState) -> list[str]:
        """Every container holding blocks carries them in its OCI spec; no other is pinned."""
        out: list[str] = []
        cri = self.ctrd.cri()
        for pod in self._alive():
            for c in pod.containers:
                if c.removed:
                    continue
                blocks = plugin_state.blocks(pod.uid, c.name)
                mems = cri.numa_nodes(c.id)
                if blocks is not None:
                    want = format_mems(blocks_mask(blocks))
                    if mems != want:
                        out.append(
                            f"{pod.uid}/{c.name} ({c.id[:12]}) holds blocks on {want} but its"
                            f" OCI spec has cpuset.mems {mems!r}"
                        )
                elif mems and not c.exited:
                    out.append(
                        f"{pod.uid}/{c.name} ({c.id[:12]}) is pinned to {mems!r} but holds"
                        " no blocks"
                    )
        for uid, names in plugin_state.entries.items():
            live = self.pods.get(uid)
            for name in names:
                if (
                    live is None
                    or live.removed
                    or all(c.removed or c.name != name for c in live.containers)
                ):
                    out.append(f"{uid}/{name} holds blocks but no such container exists")
        return out


def settled_state(plugin: MemoryManagerPlugin, timeout: float = 10.0) -> MemoryState:
    """The plugin's checkpoint once its asynchronous writes have caught up (two reads
    0.3 s apart agree)."""
    path = plugin.state_dir / STATE_FILE
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        state = load_file(path)
        if state is not None and state == last:
            return state
        last = state
        time.sleep(0.3)
    raise HarnessError(f"{path} did not settle within {timeout} s")


def _gone(is_gone: bool) -> bool | None:
    return True if is_gone else None


def run_simulate(path: Path) -> dict[str, Any]:
    """`nri-memory-manager simulate` on a scenario file, as an administrator runs it."""
    proc = subprocess.run(
        [sys.executable, "-m", "nri_plugin.cli", "simulate", str(path), "--compact"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    if proc.returncode != 0:
        raise HarnessError(f"simulate {path} failed ({proc.returncode}): {proc.stderr.strip()}")
    report: dict[str, Any] = json.loads(proc.stdout)
    return report


@dataclass(frozen=True)
class PluginLogs:
    """What the plugin's own logs (JSON lines, one file per start) say about timing."""

    slowest_create_ms: float
    slowest_decision_ms: float
    late_answers: int
    errors: tuple[str, ...]

    @classmethod
    def read(cls, paths: Sequence[Path]) -> PluginLogs:
        create = decision = 0.0
        late = 0
        errors: list[str] = []
        for line in _json_lines(paths):
            event = line.get("event")
            if event == "nri request served" and line.get("method") == "CreateContainer":
                create = max(create, float(line["duration_ms"]))
            elif event == "admission" and "duration_ms" in line:
                decision = max(decision, float(line["duration_ms"]))
            elif event == "nri answer later than the runtime's deadline":
                late += 1
            elif event == "nri request failed" and not str(line.get("error")).startswith(
                REFUSAL
            ):  # an exception escaped a handler (refusals are logged so too, with a traceback)
                errors.append(f"{line.get('method')}: {line.get('error')}")
        return cls(create, decision, late, tuple(errors))


def _json_lines(paths: Sequence[Path]) -> Iterator[dict[str, Any]]:
    for path in paths:
        with contextlib.suppress(FileNotFoundError), open(path, errors="replace") as f:
            for text in f:
                if text.startswith("{"):
                    with contextlib.suppress(json.JSONDecodeError):
                        yield json.loads(text)


# --------------------------------------------------------------------------------------------
# Script


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.e2e.faults",
        description="Random pod churn against a real containerd while the plugin is killed"
        " (plugin-kill) or containerd is restarted (containerd-restart).",
    )
    parser.add_argument("--ops", type=int, default=5000, help="operations per run (5000)")
    parser.add_argument("--seed", type=int, default=None, help="RNG seed (default: random)")
    parser.add_argument("--flavor", choices=[*FLAVORS, "both"], default="both")
    parser.add_argument("--fault", choices=[*FAULTS, "both"], default="both")
    parser.add_argument("--policy", choices=POLICIES, default=None)
    parser.add_argument("--fault-rate", type=float, default=Schedule.fault_rate)
    parser.add_argument(
        "--work", type=Path, default=None, help="where scenarios, figures and state go"
    )
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 31)
    paths = E2EPaths.from_env()
    if paths.missing():
        run_setup(paths)
    work = args.work or paths.logs_dir / f"fault-injection-{seed}"
    flavors: list[Flavor] = list(FLAVORS) if args.flavor == "both" else [args.flavor]
    faults: list[Fault] = list(FAULTS) if args.fault == "both" else [args.fault]
    print(f"fault injection: seed {seed}, {args.ops} operations per run, files in {work}")
    failed = False
    for flavor in flavors:
        for fault in faults:
            schedule = Schedule(
                seed=seed,
                operations=args.ops,
                fault=fault,
                policy=args.policy,
                fault_rate=args.fault_rate,
            )
            with Containerd(paths, flavor, f"fh{FLAVOR_TAG[flavor]}") as ctrd:
                run = FaultInjection(ctrd, work / f"{flavor}-{fault}", schedule, _say)
                figures = run.run()
            print(figures.summary())
            for problem in figures.problems():
                failed = True
                print(f"  {problem}")
    return 1 if failed else 0


def _say(text: str) -> None:
    print(f"  {text}", flush=True)


if __name__ == "__main__":
    sys.exit(main())

"""Fault injection against a real containerd: pods come and go while things die.

A seeded driver runs pods over CRI as kubelet would, while `nri-memory-manager
run` (fake 4-NUMA topology, as in test_plugin.py) runs next to the harness
containerd: it creates and removes pods (init containers that run to
completion, pods of several app containers), resizes running containers in
place (CRI UpdateContainerResources), crashes them (a non-zero exit) and
restarts them as kubelet does (the same name, the next attempt), restarts them
with new limits (resize policy RestartContainer) and removes the dead instances
kubelet's garbage collector removes. Run 1 (`plugin-kill`) kills the plugin
with SIGKILL at random moments (in the middle of a request, during its start-up
and Synchronize, or idle) and starts it again a few operations later. Run 2
(`containerd-restart`) restarts containerd at random moments; the driver then
retries what failed and takes stock of what exists, as kubelet does.

The oracle is `simulate`, fed what the plugin saw in the order it saw it
(docs/lifecycle.md is the contract it follows; docs/fault-injection.md says how
each rule becomes steps). `simulate` admits a pod uid once, the plugin each
container when it is created: the containers the plugin admitted one after the
other, with nothing in between, form one admission ("unit") of the scenario,
under the pod's uid, or `<uid>~<n>` for the pod's later units; the states are
compared with those uids mapped back. A shadow `MemoryManager` runs the steps
as they are written, because later steps depend on earlier outcomes; the
finished scenario then goes through `nri-memory-manager simulate` itself.

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
import copy
import dataclasses
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import structlog
import yaml

from nri_plugin.engine.bitmask import format_mems, mask_of, parse_cpulist
from nri_plugin.engine.manager import AdmissionResult, MemoryManager, ResizeResult
from nri_plugin.engine.restore import validate_restored
from nri_plugin.engine.state import MEMORY, MemoryState, blocks_mask
from nri_plugin.errors import InputError, StateError
from nri_plugin.frontends.simulate import apply_step
from nri_plugin.inputs.scenario import parse_scenario, parse_step
from nri_plugin.inputs.topology import host_node_ids
from nri_plugin.persist.exits import load_exit_records
from nri_plugin.persist.file import EXITS_FILE_NAME, load_file
from nri_plugin.persist.format import from_checkpoint
from nri_plugin.tracker.nodemap import NodeMap, default_map

from .harness import (
    FLAVOR_TAG,
    FLAVORS,
    NUMA_NODES_ANNOTATION,
    Containerd,
    CRIClient,
    CRIError,
    E2EPaths,
    Flavor,
    HarnessError,
    PluginExited,
    PluginProcess,
    Pod,
    PodResources,
    QoS,
    registered_pattern,
    run_setup,
)
from .test_plugin import RELIST_INTERVAL_S, ROOT, MemoryManagerPlugin

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
# An app container: sleeps until SIGTERM, then exits with code 3 (a crash, as kubelet sees one).
# busybox sh is PID 1 of the container: it gets the signal because it traps it, and `wait`
# returns at once where a foreground `sleep` would delay the trap.
CRASHABLE = ("/bin/sh", "-c", 'trap "exit 3" TERM; sleep 2147483647 & wait')
INIT_COMMAND = ("/bin/true",)
CRASH_EXIT_CODE = 3
RUNNING = "CONTAINER_RUNNING"
CREATED = "CONTAINER_CREATED"
EXITED = "CONTAINER_EXITED"


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
    restart_now_rate: float = 0.5  # chance that kubelet restarts a crashed container at once


# Operation weights once min_pods are alive (an operation with nothing to act on is skipped).
_OPERATIONS = (
    ("create", 0.38),
    ("remove-pod", 0.26),
    ("resize", 0.14),
    ("crash", 0.08),
    ("restart", 0.04),
    ("resize-restart", 0.06),
    ("gc", 0.04),
)


@dataclass(frozen=True)
class ContainerPlan:
    name: str
    memory: int  # limit in bytes; 0: none
    cpu_millis: int  # request
    cpu_limit_millis: int | None = None  # None: the request (Guaranteed)
    cpuset: str | None = None  # CPUs the CPU manager would have pinned
    init: bool = False  # a regular init container: `/bin/true`, runs to completion

    @property
    def command(self) -> tuple[str, ...]:
        return INIT_COMMAND if self.init else CRASHABLE

    def scenario(self, memory: int | None = None) -> dict[str, object]:
        """This container in simulate's scenario language (Guaranteed: requests == limits),
        with ``memory`` for the limit it has now."""
        doc: dict[str, object] = {"name": self.name, "resources": self.resources(memory)}
        if self.cpuset is not None:
            doc["cpuset"] = self.cpuset
        return doc

    def resources(self, memory: int | None = None) -> dict[str, object]:
        size = self.memory if memory is None else memory
        amounts = {"cpu": f"{self.cpu_millis}m", "memory": str(size)}
        return {"requests": dict(amounts), "limits": dict(amounts)}


@dataclass(frozen=True)
class PodPlan:
    uid: str
    name: str
    kind: str
    qos: QoS
    containers: tuple[ContainerPlan, ...]  # init containers first

    def sandbox_resources(self) -> PodResources:
        """The pod totals kubelet (>= 1.23) sends with the sandbox: max(apps, init peak)."""

        def total(amount: Callable[[ContainerPlan], int]) -> int:
            apps = sum(amount(c) for c in self.containers if not c.init)
            return max([apps, *(amount(c) for c in self.containers if c.init)])

        cpu = total(lambda c: c.cpu_millis)
        memory = total(lambda c: c.memory)
        if self.qos == "Guaranteed":
            return PodResources(cpu, memory)
        limit = total(lambda c: c.cpu_millis if c.cpu_limit_millis is None else c.cpu_limit_millis)
        return PodResources(cpu, memory, limit)

    @property
    def memory_limit(self) -> int:
        return self.sandbox_resources().memory_limit


_KINDS = (
    ("guaranteed", 24),
    ("pinned", 12),
    ("group", 8),
    ("two-containers", 10),
    ("init", 10),
    ("init-apps", 10),
    ("burstable", 12),
    ("best-effort", 12),
)
_SIZES = (256 * MI, 512 * MI, GI, 1536 * MI, 2 * GI, 3 * GI, 4 * GI, 6 * GI)
# Larger than one 8Gi node: these form groups.
_GROUP_SIZES = (9 * GI, 10 * GI, 12 * GI, 15 * GI, 20 * GI)
_ALL_SIZES = tuple(sorted(set(_SIZES + _GROUP_SIZES)))
# Node 0 has CPUs 0-3, node 1 4-7, node 2 8-11, node 3 12-15; the last two span two nodes.
_CPUSETS = ("0-1", "2", "4-5", "7", "8-9", "11", "12-13", "15", "3-4", "11-12")


def plan_pod(rng: random.Random, serial: int, room: int = 8 * GI) -> PodPlan:
    """A pod of a random kind; ``room``: node 0's free memory, which init containers are
    sized to (node 0 is the one NUMA node of this machine: only there do they run)."""
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
        # an init container that runs to completion, then an app that reuses its memory
        # (small: an init container only runs where it lands on this machine's node 0)
        init = rng.choice([s for s in _SIZES[1:6] if s <= room] or [_SIZES[1]])
        app = rng.choice([s for s in _SIZES if s <= init])
        containers = (
            ContainerPlan("init", init, cpu, init=True),
            ContainerPlan("app", app, cpu),
        )
    elif kind == "init-apps":
        # several app containers after an init container: their sum is sometimes above the
        # init container's memory (it lends until they all exist), sometimes not (it goes
        # when the first one starts)
        apps = tuple(
            ContainerPlan(f"app{i}" if i else "app", rng.choice(_SIZES[:4]), 1000)
            for i in range(rng.choice((2, 3)))
        )
        init = rng.choice([s for s in _SIZES[2:6] if s <= room] or [_SIZES[2]])
        containers = (ContainerPlan("init", init, cpu, init=True), *apps)
    elif kind == "burstable":
        qos = "Burstable"
        containers = (ContainerPlan("app", GI, 250, cpu_limit_millis=1000),)
    else:
        qos = "BestEffort"
        containers = (ContainerPlan("app", 0, 0, cpu_limit_millis=0),)
    return PodPlan(uid, f"f{serial:05d}-{kind}", kind, qos, containers)


def new_size(rng: random.Random, current: int) -> int:
    """A resize target: shrinks, grows by a step or two (they often fit) and big grows."""
    smaller = [s for s in _ALL_SIZES if s < current]
    larger = [s for s in _ALL_SIZES if s > current]
    roll = rng.random()
    if smaller and (roll < 0.35 or not larger):
        return rng.choice(smaller)
    if roll < 0.75:
        return rng.choice(larger[:2])
    return rng.choice(larger)


# --------------------------------------------------------------------------------------------
# What exists (the driver's ground truth)


@dataclass
class LiveContainer:
    """One container instance (one container ID); a restart is a new instance."""

    plan: ContainerPlan
    pod_uid: str
    id: str
    seq: int  # creation order over the whole run
    attempt: int  # kubelet's restart count
    memory: int  # the memory limit it was created with
    mems: str  # cpuset.mems of the OCI spec right after CreateContainer
    guaranteed: bool  # the plugin's business: Guaranteed pod, memory limit set
    limit: int = -1  # the memory limit in force (after updates)
    # the cpuset.mems in force (after Synchronize's updates): the fake nodes until a
    # listing is read over CRI, the host's after (Oracle.in_force compares the two)
    mems_now: str = ""
    started: bool = False
    exited: bool = False
    exit_code: int | None = None
    removed: bool = False
    # containerd's NRI state map knows it (it sends its RemoveContainer): true from its
    # creation; after a containerd restart only for what the Synchronize listed
    known: bool = True
    record_gone: bool = False  # removed, and the plugin was told (RemoveContainer)

    def __post_init__(self) -> None:
        if self.limit < 0:
            self.limit = self.memory
        self.mems_now = self.mems

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
    epoch: int = 0  # the containerd process (counted from 0) that ran its sandbox

    @property
    def uid(self) -> str:
        return self.plan.uid

    def latest(self, name: str) -> LiveContainer | None:
        """The newest instance of ``name`` that exists."""
        found = None
        for c in self.containers:
            if c.name == name and not c.removed:
                found = c
        return found

    def latest_instances(self) -> list[LiveContainer]:
        names = dict.fromkeys(c.name for c in self.containers)
        return [c for c in (self.latest(n) for n in names) if c is not None]


# --------------------------------------------------------------------------------------------
# The oracle


@dataclass
class Unit:
    """One `admit` step: containers of a pod the plugin admitted one after the other.

    kubelet admits a pod once, with all its containers; `simulate` too (a second admit of a
    uid must list the same containers). The plugin admits each container at its creation,
    and between two of them things may happen (a Synchronize, a refusal, a release). So
    the containers admitted together form a unit, written as one pod of the scenario.
    """

    uid: str  # the scenario's pod uid: the pod's own, "<uid>~<n>" for its later units
    pod: LivePod
    inits: list[tuple[ContainerPlan, int]] = field(default_factory=list)
    apps: list[tuple[ContainerPlan, int]] = field(default_factory=list)
    # (container name, the cpuset.mems the plugin gave it) to compare with simulate's
    checks: list[tuple[str, str]] = field(default_factory=list)
    emitted: bool = False
    admitted: bool = False

    @property
    def lone(self) -> bool:
        """Only init containers: written as containers (an admit needs one), released by a
        removal rather than a start."""
        return not self.apps


@dataclass
class PodBooks:
    """The oracle's view of one pod: its units and which unit holds each name's blocks."""

    pod: LivePod
    units: list[Unit] = field(default_factory=list)
    open: Unit | None = None  # the unit being filled (emitted at the end of the operation)
    holder: dict[str, Unit] = field(default_factory=dict)  # name -> unit holding its blocks
    lending: Unit | None = None  # the unit whose finished init container lends its memory
    can_lend: bool = False  # the plugin knows the init container's limits (not after a restart)
    seen: set[str] = field(default_factory=set)  # names whose creation the plugin saw
    attempted: dict[str, int] = field(default_factory=dict)  # app name -> limit the plugin knows

    def new_unit(self) -> Unit:
        n = len(self.units)
        unit = Unit(self.pod.uid if n == 0 else f"{self.pod.uid}~{n + 1}", self.pod)
        self.units.append(unit)
        return unit


@dataclass(frozen=True)
class Listed:
    """A created or running container as containerd shows it after a registration."""

    running: bool
    mems: str  # cpuset.mems in force (after the Synchronize's updates)
    limit: int  # memory limit in force


@dataclass(frozen=True)
class Stock:
    """What the driver found right after the plugin (re)registered."""

    restarted: bool  # a new plugin process (run 1), not a containerd restart (run 2)
    exits: Mapping[str, Mapping[str, Mapping[str, Any]]]  # the exit records it started with
    listed: Mapping[str, Listed]  # container id -> created or running container
    late_order: Sequence[tuple[str, str]]  # (pod uid, name) of late admissions, as logged
    resize_order: Sequence[tuple[str, str]]  # resizes of limits found at synchronize, as logged
    # (pod uid, name) -> the cpuset.mems the plugin logged for a late admission ("": unplaced)
    late_mems: Mapping[tuple[str, str], str] = field(default_factory=dict)


class Oracle:
    """The plugin's expected state, written as a simulate scenario while the run goes on.

    The driver tells it what happened and whether the plugin saw it; it writes the steps
    the contract (docs/lifecycle.md) implies, in the plugin's order, and records every
    decision that differs from simulate's in ``mismatches``.
    """

    def __init__(
        self,
        topology: dict[str, Any],
        config: dict[str, Any],
        pods: Mapping[str, LivePod] | None = None,
        host_nodes: Sequence[int] | None = None,
    ) -> None:
        self.topology = topology
        self.config = config
        # every pod the driver made (the ground truth), by uid
        self.pods: Mapping[str, LivePod] = pods if pods is not None else {}
        base = parse_scenario({"topology": topology, "config": config})
        self.manager = MemoryManager(base.topology, base.config)
        # the plugin writes the host's nodes into cpuset.mems for the fake topology's
        # (nri_plugin/tracker/nodemap.py): what a Synchronize lists is in the host's terms
        fake = list(base.topology.node_ids)
        self._host_map = NodeMap(default_map(fake, list(host_nodes)) if host_nodes else None)
        self.steps: list[Mapping[str, object]] = []
        # the shadow manager's outcome of each step, checked against simulate's report
        self.outcomes: list[object] = []
        self.books: dict[str, PodBooks] = {}
        self.mismatches: list[str] = []
        self.where = ""  # the driver's current operation, for the messages
        self._pending_removals: list[LivePod] = []
        self.counts: Counter[str] = Counter()

    # -- queries ---------------------------------------------------------------------------

    @property
    def pending_removals(self) -> Sequence[LivePod]:
        """Pods removed that the plugin has not released yet (its relist or its next
        Synchronize will)."""
        return tuple(self._pending_removals)

    def free(self, node: int) -> int:
        """Free memory of a NUMA node in the expected state."""
        table = self.manager.state.machine.get(node)
        return 0 if table is None else table.memory_map[MEMORY].free

    def holds(self, pod_uid: str, name: str) -> bool:
        pb = self.books.get(pod_uid)
        return pb is not None and name in pb.holder

    def mems_of(self, pod_uid: str, name: str) -> str | None:
        """The cpuset.mems of the name's blocks (None: not held, or not written yet)."""
        pb = self.books.get(pod_uid)
        unit = None if pb is None else pb.holder.get(name)
        if unit is None or not unit.emitted:
            return None
        blocks = self.manager.state.blocks(unit.uid, name)
        return None if blocks is None else format_mems(blocks_mask(blocks))

    def in_force(self, pod_uid: str, name: str, shown: str) -> bool | None:
        """Whether ``shown`` (a container's cpuset.mems) are the nodes of the name's blocks
        (None: it holds none, or they were not written yet), in the host's terms as the
        plugin compares them (NodeTracker._release_unanswered): ``shown`` is the fake nodes
        the plugin named at creation, or the host's a listing shows."""
        want = self.mems_of(pod_uid, name)
        return None if want is None else self.same_on_host(shown, want)

    def same_on_host(self, a: str, b: str) -> bool:
        """Whether two node sets are the same host nodes in cpuset.mems."""
        return _same_mems(self._host(a), self._host(b))

    def _host(self, mems: str) -> str:
        """Fake nodes (or host nodes, numbered the same) as the host's cpuset.mems."""
        try:
            return self._host_map.mems_text(mask_of(parse_cpulist(mems))) if mems else mems
        except InputError:
            return mems

    def _size(self, unit: Unit, name: str) -> int | None:
        blocks = self.manager.state.blocks(unit.uid, name)
        if blocks is None:
            return None
        return sum(b.size for b in blocks if b.type == MEMORY)

    def _books(self, pod: LivePod) -> PodBooks:
        pb = self.books.get(pod.uid)
        if pb is None:
            pb = self.books[pod.uid] = PodBooks(pod)
        return pb

    # -- what the plugin saw ---------------------------------------------------------------

    def admitted(self, pod: LivePod, c: LiveContainer) -> None:
        """The plugin answered c's CreateContainer with ``c.mems``."""
        pb = self._books(pod)
        name = c.name
        first = c.attempt == 0 and name not in pb.seen
        pb.seen.add(name)
        if not c.plan.init:
            pb.attempted[name] = c.memory
        unit = pb.holder.get(name)
        if unit is not None:
            # a restart keeps its blocks; new limits are a resize on its nodes
            self.flush()
            if not unit.admitted:
                return
            size = self._size(unit, name)
            if size is not None and size != c.memory:
                self._resize(pb, unit, c.plan, c.memory, accepted=True, cause="restart")
            want = self.mems_of(pod.uid, name)
            if want is not None and want != c.mems:
                self._mismatch(f"the plugin gave the restart of {pod.uid}/{name} {c.mems!r},"
                               f" its blocks are on {want!r}")  # fmt: skip
            return
        lender = pb.lending if first and pb.can_lend and not c.plan.init else None
        if lender is not None and lender is not pb.open:
            # it reuses memory of a unit already written: simulate cannot say so
            self._mismatch(
                f"oracle: {pod.uid}/{name} reuses init memory of unit {lender.uid}, written"
                " before it (a Synchronize came in between): not modelled"
            )
        unit = pb.open
        if unit is None or (lender is None and unit is pb.lending):
            if unit is not None:
                self._emit(unit)
            unit = pb.open = pb.new_unit()
        (unit.inits if c.plan.init else unit.apps).append((c.plan, c.memory))
        unit.checks.append((name, c.mems))
        pb.holder[name] = unit

    def refused(self, pod: LivePod, plan: ContainerPlan, memory: int, attempt: int) -> None:
        """The plugin refused a CreateContainer: simulate must refuse it too."""
        pb = self._books(pod)
        first = attempt == 0 and plan.name not in pb.seen
        pb.seen.add(plan.name)
        if not plan.init:
            pb.attempted[plan.name] = memory
        unit = pb.holder.get(plan.name)
        if unit is not None:
            # a restart with new limits that do not fit its nodes
            self.flush()
            if unit.admitted:
                self._resize(pb, unit, plan, memory, accepted=False, cause="restart")
            return
        # a refusal changes nothing: simulate's answer is asked of a copy
        shadow = copy.deepcopy(self.manager)
        lender = pb.lending if first and pb.can_lend and not plan.init else None
        # the unit it would have joined (as in admitted: only a borrower joins a lender's)
        base = pb.open if pb.open is not None and (pb.open is not pb.lending or lender) else None
        inits = list(base.inits) if base is not None else []
        apps = list(base.apps) if base is not None else []
        (inits if plan.init else apps).append((plan, memory))
        probe = Unit(f"{pod.uid}~probe", pod, inits, apps)
        result = apply_step(shadow, parse_step(self._admit_step(probe), shadow.topology, "probe"))
        assert isinstance(result, AdmissionResult)
        if result.admitted:
            mems = next(d.cpuset_mems for d in result.containers if d.name == plan.name)
            self._mismatch(
                f"the plugin refused {pod.uid}/{plan.name}, simulate pins it to {mems!r}"
            )

    def exited(self, pod: LivePod, c: LiveContainer) -> None:
        """c exited (its exit code is in c.exit_code): a finished init container lends."""
        pb = self._books(pod)
        unit = pb.holder.get(c.name)
        if c.plan.init and c.exit_code == 0 and unit is not None:
            pb.lending, pb.can_lend = unit, True

    def started(self, pod: LivePod, c: LiveContainer, *, seen: bool) -> None:
        """c started; with ``seen`` the plugin saw it (else the next Synchronize decides)."""
        pb = self._books(pod)
        if not seen or c.plan.init or pb.lending is None:
            return
        if c.name in {p.name for p, _ in pb.lending.inits}:
            return
        if self._all_created(pb):
            self._release_inits(pb)

    def removed_pod(self, pod: LivePod, *, seen: bool, sandbox_event: bool = True) -> None:
        """The pod was removed. Without ``sandbox_event`` containerd sent no StopPodSandbox
        or RemovePodSandbox for it (see FaultInjection._remove_pod): the plugin released a
        name when it was told of the removal of every instance of it; the rest waits for its
        relist to find the sandbox gone (:meth:`relisted`), or for its next Synchronize."""
        if not seen:
            self._pending_removals.append(pod)
            return
        self.flush()
        if sandbox_event:
            self._remove_units(pod)
            return
        pb = self.books.get(pod.uid)
        if pb is None:
            return
        for name, unit in list(pb.holder.items()):
            if all(c.record_gone for c in pod.containers if c.name == name):
                if unit.admitted:
                    self._apply({"remove": {"pod": unit.uid, "container": name}})
                del pb.holder[name]
            else:
                self.counts["names kept until the relist (pod removal unannounced)"] += 1
        self._pending_removals.append(pod)

    def relisted(self, pod: LivePod) -> None:
        """The plugin found the end of ``pod``, whose removal containerd did not announce, in
        the runtime's CRI listing (its relist) and released what it kept, as a
        RemovePodSandbox would have (frontends/relist.py)."""
        if pod not in self._pending_removals:
            return
        self.flush()
        self._pending_removals.remove(pod)
        self._remove_units(pod)

    def removed_container(self, pod: LivePod, c: LiveContainer, *, seen: bool) -> None:
        """An instance was removed; its name's blocks go unless another instance is known."""
        pb = self._books(pod)
        if pod.latest(c.name) is not None or c.name not in pb.holder:
            return
        if not seen or not all(x.record_gone for x in pod.containers if x.name == c.name):
            return  # the plugin cannot tell a removed container from an exited one: kept
        self.flush()
        unit = pb.holder.pop(c.name)
        if pb.lending is unit and unit.lone:
            pb.lending = None
        self._apply({"remove": {"pod": unit.uid, "container": c.name}})

    def resized(self, pod: LivePod, c: LiveContainer, memory: int, *, accepted: bool) -> None:
        """The plugin answered an in-place resize of c to ``memory``."""
        pb = self._books(pod)
        unit = pb.holder.get(c.name)
        if unit is None:
            if accepted and not c.plan.init:
                pb.attempted[c.name] = memory
            if not accepted:
                self._mismatch(f"the plugin refused a resize of {pod.uid}/{c.name}, which"
                               " holds no blocks")  # fmt: skip
            return
        self.flush()
        if unit.admitted:
            self._resize(pb, unit, c.plan, memory, accepted=accepted, cause="in place")

    def restoring(self, checkpoint: MemoryState | None) -> None:
        """A plugin process is about to start from ``checkpoint`` (the file it will load).

        A resize the plugin made just before it died may be missing from the file (the
        writer runs a few ms behind), or one the oracle left to the next Synchronize (its
        update was hit by the kill) may be in it: the oracle follows the file, and the
        Synchronize then resizes to the limit in force, as the plugin does.
        """
        self.flush()
        if checkpoint is None:
            return
        for uid, pb in self.books.items():
            pod = self.pods.get(uid)
            if pod is None or pod.removed:
                continue
            for name, unit in list(pb.holder.items()):
                theirs = checkpoint.blocks(uid, name)
                size = self._size(unit, name) if unit.admitted else None
                if theirs is None or size is None:
                    continue
                kept = sum(b.size for b in theirs if b.type == MEMORY)
                if kept != size:
                    plan = next(c.plan for c in pod.containers if c.name == name)
                    self.counts["resizes followed to a restored checkpoint"] += 1
                    self._resize(pb, unit, plan, kept, accepted=True, cause="restored checkpoint")

    def synchronized(self, stock: Stock) -> None:
        """The plugin (re)registered: Synchronize's view wins (NodeTracker.synchronize).

        In the plugin's order: pods gone, admissions not in force, finished init containers
        whose next container started, limits that differ from the blocks (resized while the
        plugin was away: those containers run on their nodes with these limits), then late
        admissions (in the order the plugin logged them).
        """
        alive = [
            self._books(pod)
            for pod in self.pods.values()
            if not pod.removed and pod.plan.qos == "Guaranteed"
        ]
        listed = {pb.pod.uid: self._listed_latest(pb.pod, stock) for pb in alive}
        if stock.restarted:
            for pb in alive:
                # a new process knows the listed names and those of its exit records only
                pb.seen = set(listed[pb.pod.uid]) | set(stock.exits.get(pb.pod.uid, {}))
                pb.can_lend = False
        if not self._sync_has_work(alive, listed, stock):
            return
        self.flush()
        for pod in self._pending_removals:
            self._remove_units(pod)
        self._pending_removals = []
        for pb in alive:
            for name, c in listed[pb.pod.uid].items():
                unit = pb.holder.get(name)
                if unit is None or not unit.admitted:
                    continue
                if self.in_force(pb.pod.uid, name, c.mems_now) is False:
                    # created without our answer (a restart while the plugin was away, or
                    # an answer lost to a kill): released, then admitted again below
                    self.counts["admissions not in force"] += 1
                    self._apply({"remove": {"pod": unit.uid, "container": name}})
                    del pb.holder[name]
        for pb in alive:
            self._sync_inits(pb, stock)
        logged = {key: i for i, key in enumerate(stock.resize_order)}
        differ = [
            (pb, c)
            for pb in alive
            for c in listed[pb.pod.uid].values()
            if c.name in pb.holder
            and pb.holder[c.name].admitted
            and self._size(pb.holder[c.name], c.name) != stock.listed[c.id].limit
        ]
        for pb, c in sorted(
            differ, key=lambda x: (logged.get((x[1].pod_uid, x[1].name), len(logged)), x[1].seq)
        ):
            self.counts["resizes at synchronize"] += 1
            limit = stock.listed[c.id].limit
            unit = pb.holder[c.name]
            self._resize(pb, unit, c.plan, limit, accepted=None, cause="synchronize")
        late = [
            c
            for pb in alive
            for name, c in listed[pb.pod.uid].items()
            if c.guaranteed and name not in pb.holder and not _pinned(c.mems_now)
        ]
        logged = {key: i for i, key in enumerate(stock.late_order)}
        for c in sorted(late, key=lambda c: (logged.get((c.pod_uid, c.name), len(logged)), c.seq)):
            pb = self.books[c.pod_uid]
            unit = pb.new_unit()
            unit.apps.append((c.plan, stock.listed[c.id].limit))
            unit.checks.append((c.name, stock.late_mems.get((c.pod_uid, c.name), "")))
            pb.holder[c.name] = unit
            pb.seen.add(c.name)
            self.counts["late admissions"] += 1
            self._emit(unit)

    def flush(self) -> None:
        """Write every unit being filled (the end of an operation, or before other steps)."""
        for pb in self.books.values():
            if pb.open is not None:
                self._emit(pb.open)

    # -- rules -----------------------------------------------------------------------------

    def _all_created(self, pb: PodBooks) -> bool:
        """docs/lifecycle.md, "Init containers" 3: the pod's other containers exist once those
        created besides the init ones add up to the pod's memory limit (or an init
        container's peak is that limit)."""
        limit = pb.pod.plan.memory_limit
        peak = max((m for p, m in pb.lending.inits), default=0) if pb.lending else 0
        return sum(pb.attempted.values()) >= limit or peak >= limit

    def _release_inits(self, pb: PodBooks) -> None:
        unit = pb.lending
        assert unit is not None
        pb.lending = None
        self._emit(unit)
        if not unit.admitted:
            return
        if unit.lone:
            for plan, _ in unit.inits:
                self._apply({"remove": {"pod": unit.uid, "container": plan.name}})
        else:
            self._apply({"start": {"pod": unit.uid}})
        for plan, _ in unit.inits:
            if pb.holder.get(plan.name) is unit:
                del pb.holder[plan.name]

    def _sync_inits(self, pb: PodBooks, stock: Stock) -> None:
        """A finished init container's blocks go at a Synchronize once the pod's next
        container has started; after a plugin restart, only when its exit record says it
        was one (without a record its blocks stay until the pod goes)."""
        unit = pb.lending
        if unit is None:
            return
        if stock.restarted:
            records = stock.exits.get(pb.pod.uid, {})
            if any(records.get(p.name, {}).get("kind") != "init" for p, _ in unit.inits):
                self.counts["init containers kept without an exit record"] += 1
                pb.lending = None  # kept until the pod goes
                return
        inits = {p.name for p, _ in unit.inits}
        if any(c.started for c in pb.pod.containers if c.name not in inits and not c.removed):
            self.counts["init containers released at synchronize"] += 1
            self._release_inits(pb)

    def _sync_has_work(
        self, alive: list[PodBooks], listed: Mapping[str, Mapping[str, LiveContainer]], stock: Stock
    ) -> bool:
        if self._pending_removals:
            return True
        for pb in alive:
            if pb.lending is not None:
                return True
            for name, c in listed[pb.pod.uid].items():
                unit = pb.holder.get(name)
                if unit is None:
                    if c.guaranteed and not _pinned(c.mems_now):
                        return True
                    continue
                if not unit.emitted:
                    continue
                if self.in_force(pb.pod.uid, name, c.mems_now) is False:
                    return True
                if unit.admitted and self._size(unit, name) != stock.listed[c.id].limit:
                    return True
        return False

    def _listed_latest(self, pod: LivePod, stock: Stock) -> dict[str, LiveContainer]:
        """The instance of each name that Synchronize shows (created or running)."""
        out: dict[str, LiveContainer] = {}
        for c in pod.containers:
            if c.id in stock.listed and not c.removed:
                out[c.name] = c
        return out

    # -- steps -----------------------------------------------------------------------------

    def _mismatch(self, text: str) -> None:
        self.mismatches.append(f"{self.where} (scenario step {len(self.steps)}): {text}")

    def _admit_step(self, unit: Unit) -> dict[str, object]:
        pod = unit.pod
        meta = {"uid": unit.uid, "name": pod.plan.name, "namespace": pod.sandbox.namespace}
        if unit.lone:
            return {
                "admit": {
                    "pod": meta,
                    "containers": [p.scenario(m) for p, m in unit.inits],
                }
            }
        return {
            "admit": {
                "pod": meta,
                "initContainers": [p.scenario(m) for p, m in unit.inits],
                "containers": [p.scenario(m) for p, m in unit.apps],
            }
        }

    def _emit(self, unit: Unit) -> None:
        """Write the unit's admit step and compare each container with the plugin's answer."""
        if unit.emitted:
            return
        unit.emitted = True
        pb = self.books[unit.pod.uid]
        if pb.open is unit:
            pb.open = None
        result = self._apply(self._admit_step(unit))
        assert isinstance(result, AdmissionResult)
        unit.admitted = result.admitted
        got = {d.name: d.cpuset_mems for d in result.containers}
        for name, mems in unit.checks:
            if not result.admitted:
                if mems:
                    self._mismatch(
                        f"the plugin pinned {unit.pod.uid}/{name} to {mems!r}, simulate refuses"
                        f" it: {result.message}"
                    )
            elif got.get(name, "") != mems:
                self._mismatch(
                    f"the plugin pinned {unit.pod.uid}/{name} to {mems!r}, simulate pins it"
                    f" to {got.get(name, '')!r}"
                )
        if not result.admitted:
            for name, _ in unit.checks:
                if pb.holder.get(name) is unit:
                    del pb.holder[name]
            if pb.lending is unit:
                pb.lending = None

    def _resize(
        self,
        pb: PodBooks,
        unit: Unit,
        plan: ContainerPlan,
        memory: int,
        *,
        accepted: bool | None,
        cause: str,
    ) -> None:
        step = {
            "resize": {"pod": unit.uid, "container": plan.name, "resources": plan.resources(memory)}
        }
        result = self._apply(step)
        assert isinstance(result, ResizeResult)
        if accepted is not None and result.resized != accepted:
            self._mismatch(
                f"the plugin {'accepted' if accepted else 'refused'} the {cause} resize of"
                f" {pb.pod.uid}/{plan.name} to {memory}, simulate "
                + ("accepts it" if result.resized else f"refuses it: {result.reason}")
            )
        if result.resized and not plan.init:
            pb.attempted[plan.name] = memory

    def _remove_units(self, pod: LivePod) -> None:
        pb = self.books.pop(pod.uid, None)
        if pb is None:
            return
        for unit in pb.units:
            if unit.emitted and unit.admitted:
                self._apply({"remove": {"pod": unit.uid}})

    def _apply(self, step: Mapping[str, object]) -> object:
        """Run one step on the shadow manager, exactly as `simulate` runs it."""
        parsed = parse_step(step, self.manager.topology, f"steps[{len(self.steps)}]")
        self.steps.append(step)
        outcome = apply_step(self.manager, parsed)
        self.outcomes.append(outcome)
        return outcome

    def scenario(self) -> dict[str, object]:
        return {"topology": self.topology, "config": self.config, "steps": list(self.steps)}


def _pinned(mems: str) -> bool:
    return bool(mems)


def _same_mems(a: str, b: str) -> bool:
    if a == b:
        return True
    try:
        return parse_cpulist(a) == parse_cpulist(b)
    except InputError:  # an unreadable value is not the same
        return False


def unit_pod(uid: str) -> str:
    """The real pod uid of a scenario pod uid ("<uid>~<n>" for a pod's later units)."""
    return uid.split("~", 1)[0]


def merged_units(state: MemoryState) -> MemoryState:
    """``state`` with each unit's entries under its pod's real uid."""
    out = state.clone()
    entries: dict[str, dict[str, Any]] = {}
    for uid, names in state.entries.items():
        entries.setdefault(unit_pod(uid), {}).update(names)
    out.entries = entries
    return out


def alive_only_scenario(
    topology: dict[str, Any], config: dict[str, Any], pods: Sequence[LivePod]
) -> dict[str, object]:
    """The live Guaranteed pods admitted whole, in the order their containers were created,
    with the limits in force.

    This is lifecycle.md's wording of the invariant. It ignores removed pods, so it
    differs from the plugin whenever a removed pod decided where a live one went;
    the figures report its differences, the checks use the replay.
    """
    steps: list[dict[str, object]] = []
    live = [p for p in pods if not p.removed]
    kept = {p.uid: [c for c in p.latest_instances() if c.guaranteed] for p in live}
    firsts = {uid: min(c.seq for c in cs) for uid, cs in kept.items() if cs}
    for pod in sorted((p for p in live if p.uid in firsts), key=lambda p: firsts[p.uid]):
        inits = [c for c in kept[pod.uid] if c.plan.init and c.exited]
        apps = [c for c in kept[pod.uid] if c not in inits]
        if not apps:  # its app was refused or never created: the init holds its memory alone
            inits, apps = [], inits
        steps.append(
            {
                "admit": {
                    "pod": {"uid": pod.uid, "name": pod.plan.name},
                    "initContainers": [c.plan.scenario(c.limit) for c in inits],
                    "containers": [c.plan.scenario(c.limit) for c in apps],
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
    pod_removals_unannounced: int  # after a containerd restart: no StopPodSandbox reached us
    container_removals: int
    resizes: Mapping[str, int]  # "in place accepted", "in place refused", "restart ..."
    crashes: int
    crash_restarts: int
    init_containers_run: int
    kills: int
    restarts: int
    mismatches: tuple[str, ...]
    unpinned_while_registered: tuple[str, ...]
    late_answers: int
    plugin_errors: tuple[str, ...]
    limits_kept_apart: int  # the plugin logged limits it could not follow (informational)
    oracle_counts: Mapping[str, int]
    slowest_create_client_ms: float
    slowest_create_plugin_ms: float
    slowest_decision_ms: float
    alive_only_differences: int
    seconds: float
    work_dir: str

    def summary(self) -> str:
        r = self.resizes
        return (
            f"fault injection {self.fault} on containerd {self.flavor}, seed {self.seed},"
            f" topology manager {self.policy}: {self.operations} operations"
            f" ({self.containers_created} containers created, {self.refusals} refused,"
            f" {self.late_admissions} admitted at Synchronize, {self.pod_removals} pods"
            f" ({self.pod_removals_unannounced} unannounced) and"
            f" {self.container_removals} containers removed, {self.init_containers_run} init"
            f" containers run; resizes in place {r.get('in place accepted', 0)} accepted"
            f" {r.get('in place refused', 0)} refused {r.get('in place faulted', 0)} hit by a"
            f" fault, with a restart {r.get('restart accepted', 0)} accepted"
            f" {r.get('restart refused', 0)} refused; {self.crashes} crashes,"
            f" {self.crash_restarts} restarts after a crash), {self.kills} plugin kills,"
            f" {self.restarts} {'plugin' if self.fault == 'plugin-kill' else 'containerd'}"
            f" restarts, {len(self.mismatches)} mismatches,"
            f" {len(self.unpinned_while_registered)} unpinned while registered;"
            f" slowest CreateContainer: {self.slowest_create_client_ms:.1f} ms at the CRI client,"
            f" {self.slowest_create_plugin_ms:.1f} ms in the plugin (decision"
            f" {self.slowest_decision_ms:.1f} ms), {self.late_answers} answers past the"
            f" deadline; {self.limits_kept_apart} limits the plugin could not follow"
            f" (informational); alive-only scenario differs in {self.alive_only_differences}"
            f" fields (informational); {self.seconds:.0f} s; files in {self.work_dir}"
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
        self.pods: dict[str, LivePod] = {}
        self.oracle = Oracle(
            yaml.safe_load((self.plugin.work / "topology.yaml").read_text()),
            yaml.safe_load((self.plugin.work / "config.yaml").read_text()),
            self.pods,
            host_node_ids("/sys"),
        )
        self.procs: list[PluginProcess] = []
        self._log_read: dict[Path, int] = {}  # how far each plugin log was read
        self._log_backlog: list[dict[str, Any]] = []  # read, not yet seen by _synchronized
        self._told_removed: set[str] = set()  # container ids the plugin was told are removed
        self._told_pod_gone: set[str] = set()  # pods it released on a sandbox event
        self._relisted: set[str] = set()  # pods it released on the runtime's CRI listing
        self._syncs_logged = 0  # Synchronize runs in the plugin's log
        self.plugin_up = False
        self._outage_left = 0
        self._serial = 0
        self._seq = 0
        self._fired = threading.Event()
        self._recovered = False
        self._epoch = 0  # containerd restarts so far
        self.unpinned: list[str] = []
        self.create_latencies: list[float] = []
        self.counts: Counter[str] = Counter()
        self.resizes: Counter[str] = Counter()
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
                    f" {self.restarts} restarts, {len(self.oracle.mismatches)} mismatches"
                )
        # The invariant holds when connected and synchronized: come back one last time.
        while not self.plugin_up:
            self._start_plugin(allow_kill=False)
        return self._check(time.monotonic() - started)

    def _alive(self) -> list[LivePod]:
        return [p for p in self.pods.values() if not p.removed]

    def _candidates(self) -> dict[str, list[tuple[LivePod, LiveContainer]]]:
        """What each operation other than create could act on, as kubelet would."""
        out: dict[str, list[tuple[LivePod, LiveContainer]]] = {
            "remove-pod": [],
            "resize": [],
            "crash": [],
            "restart": [],
            "resize-restart": [],
            "gc": [],
        }
        for pod in self._alive():
            latest = pod.latest_instances()
            for c in pod.containers:
                if not c.removed and c.exited and c not in latest:
                    out["gc"].append((pod, c))  # kubelet's container GC: dead older instances
            for c in latest:
                if c.plan.init:
                    continue
                if c.exited:
                    if c.exit_code not in (None, 0):
                        out["restart"].append((pod, c))  # CrashLoopBackOff ends
                    continue
                if c.started:
                    out["crash"].append((pod, c))
                    if c.guaranteed:
                        out["resize-restart"].append((pod, c))
                if c.guaranteed:
                    # kubelet resizes running containers; those pinned off this machine's one
                    # NUMA node are only created, and are resized as well
                    out["resize"].append((pod, c))
        return out

    def _operation(self, index: int) -> None:
        alive = self._alive()
        candidates = self._candidates()
        if len(alive) < self.schedule.min_pods:
            op = "create"
        else:
            names, weights = zip(*_OPERATIONS, strict=True)
            weights = tuple(
                (0.0 if len(alive) >= self.schedule.max_pods else w)
                if n == "create"
                else (w if (alive if n == "remove-pod" else candidates[n]) else 0.0)
                for n, w in zip(names, weights, strict=True)
            )
            op = self.rng.choices(names, weights)[0]
        target = None
        if op == "remove-pod":
            pod = self.rng.choice(alive)
        elif op != "create":
            pod, target = self.rng.choice(candidates[op])
        self.oracle.where = f"operation {index} ({op})"
        timer = self._arm_fault()
        try:
            if op == "create":
                self._create_pod()
            elif op == "remove-pod":
                self._remove_pod(pod)
            elif op == "resize":
                assert target is not None
                self._resize(pod, target)
            elif op == "crash":
                assert target is not None
                self._crash(pod, target)
            elif op == "restart":
                assert target is not None
                self._restart(pod, target)
            elif op == "resize-restart":
                assert target is not None
                self._resize_restart(pod, target)
            else:
                assert target is not None
                self._remove_container(pod, target)
        except CRIError as exc:
            raise HarnessError(f"operation {index} ({op}): {exc}") from exc
        finally:
            if timer is not None:
                timer.join()  # a fault due after a short operation fires now, between two
        self.oracle.flush()
        self.counts["operations"] += 1
        if timer is not None:
            self._after_fault()
        elif not self.plugin_up:
            self._outage_left -= 1

    def _seen(self) -> bool:
        """Whether the plugin saw the calls of this operation (a kill makes that uncertain;
        after a containerd restart the calls are retried once the plugin is back)."""
        return self.plugin_up and not (
            self.schedule.fault == "plugin-kill" and self._fired.is_set()
        )

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
        # what the new process will start from: its checkpoint and exit records
        state_dir = self.plugin.state_dir
        checkpoint = None
        with contextlib.suppress(StateError):
            checkpoint = load_file(state_dir / STATE_FILE)
        exits = load_exit_records(state_dir / EXITS_FILE_NAME, structlog.get_logger("faults"))
        self.oracle.restoring(checkpoint)
        self._take_in_force()
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
                self.oracle.mismatches.append(
                    f"operation {self.counts['operations']}: the restarted plugin set its own"
                    f" checkpoint aside: {line.get('reason')}"
                )
        if registered:
            self._synchronized(restarted=True, exits=exits)
            if self.counts["operations"] or self.kills:
                self.restarts += 1
            self.plugin_up = True
        if timer is not None:
            self._plugin_died()

    def _synchronized(
        self, *, restarted: bool, exits: Mapping[str, Mapping[str, Mapping[str, Any]]]
    ) -> Mapping[str, Listed]:
        """Take stock right after a registration and let the oracle replay the Synchronize."""
        cri = self.ctrd.cri()
        listed: dict[str, Listed] = {}
        for info in cri.list_containers():
            if info.state not in (CREATED, RUNNING):
                continue
            res = cri.spec(info.id).get("linux", {}).get("resources", {})
            listed[info.id] = Listed(
                info.state == RUNNING,
                str(res.get("cpu", {}).get("mems", "")),
                int(res.get("memory", {}).get("limit", 0) or 0),
            )
        late, resizes = [], []
        late_mems: dict[tuple[str, str], str] = {}
        self._read_log_through_synchronize()
        lines, self._log_backlog = self._log_backlog, []
        for line in lines:
            event = line.get("event")
            key = (str(line.get("pod_uid")), str(line.get("container")))
            if event == "admission" and line.get("result") in ("pinned late", "unplaced"):
                late.append(key)
                # the fake nodes it decided (the host's are in cpuset.mems), as at creation
                late_mems[key] = str(line.get("numa_nodes") or line.get("cpuset_mems") or "")
            elif (
                event in ("resized", "resize refused")
                and line.get("cause") == "limits found at synchronize"
            ):
                resizes.append(key)
        self.oracle.synchronized(Stock(restarted, exits, listed, late, resizes, late_mems))
        for pod in self._alive():
            for c in pod.containers:
                if c.id in listed:
                    c.mems_now, c.limit = listed[c.id].mems, listed[c.id].limit
        return listed

    def _read_log_through_synchronize(self, timeout: float = 10.0) -> None:
        """Read the plugin's log up to its line for the Synchronize containerd just took.

        The plugin writes its log lines after its answer (nri_plugin/logs.py,
        DeferredSink), so containerd can hold the Synchronize's answer while the lines of
        its late admissions are not written yet; the tracker logs `synchronized` after
        them. A plugin killed meanwhile never writes them: what it wrote is read."""
        assert self.plugin.proc is not None
        deadline = time.monotonic() + timeout
        self._read_log()
        while not any(line.get("event") == "synchronized" for line in self._log_backlog):
            if not self.plugin.proc.running or time.monotonic() > deadline:
                break
            time.sleep(0.02)
            self._read_log()

    def _take_in_force(self) -> None:
        """The cpuset.mems and memory limit of every container as the next Synchronize will
        list them (read while no plugin is connected: nothing changes them until then)."""
        cri = self.ctrd.cri()
        for pod in self._alive():
            for c in pod.latest_instances():
                if c.guaranteed and not c.exited:
                    res = cri.spec(c.id).get("linux", {}).get("resources", {})
                    c.mems_now = str(res.get("cpu", {}).get("mems", ""))
                    c.limit = int(res.get("memory", {}).get("limit", 0) or 0)

    def _read_log(self) -> None:
        """Read the current plugin's new log lines: what it was told of removals, and the
        backlog _synchronized reads the order of its late admissions and resizes from."""
        for line in self._new_log_lines():
            self._log_backlog.append(line)
            event = line.get("event")
            if event == "container removed":
                self._told_removed.add(str(line.get("id")))
            elif event == "released" and str(line.get("reason")).startswith("pod sandbox"):
                if str(line.get("reason")).endswith("not announced by the runtime)"):
                    self._relisted.add(str(line.get("pod_uid")))
                else:
                    self._told_pod_gone.add(str(line.get("pod_uid")))
            elif event == "synchronized":
                self._syncs_logged += 1

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

    def _wait_registered(self, since: int) -> None:
        self.ctrd.wait_for_log(registered_pattern(PLUGIN_NAME), timeout=30, since=since)
        self.plugin_up = True

    def _recover_containerd(self) -> None:
        """containerd got SIGTERM: wait for it to exit, start it on the same root and wait for
        the plugin to reconnect before anything else (CRI calls racing a plugin's
        registration can deadlock containerd: containerd#10085 in 1.7.24, and 2.1.9's
        recursive BlockPluginSync); then take stock, as the plugin's Synchronize did."""
        if self._recovered:
            return
        self.ctrd.stop()
        offset = self.ctrd.log_offset()
        self.ctrd.start()
        self._epoch += 1
        self._wait_registered(offset)
        self._recovered = True
        listed = self._synchronized(restarted=False, exits={})
        # containerd's NRI state map starts empty (internal/nri/nri.go): the Synchronize
        # fills it with the listed containers; pods and exited containers stay unknown
        for pod in self._alive():
            for c in pod.containers:
                c.known = c.id in listed

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
        plan = plan_pod(self.rng, self._serial, self.oracle.free(0))
        before = set(self._cri(lambda cri: cri.list_pods()))

        def stray(cri: CRIClient) -> None:
            # A sandbox the interrupted call left behind: without its config we cannot use
            # it, so it goes (kubelet too removes sandboxes it does not know).
            for pod_id in set(cri.list_pods()) - before:
                cri.stop_pod(pod_id)
                cri.remove_pod(pod_id)

        resources = plan.sandbox_resources()
        sandbox = self._cri(
            lambda cri: cri.run_pod(plan.uid, plan.name, plan.qos, resources=resources),
            recover=stray,
        )
        pod = LivePod(plan, sandbox, epoch=self._epoch)
        self.pods[plan.uid] = pod
        inits = [c for c in plan.containers if c.init]
        for init_plan in inits:
            # kubelet runs each init container to completion before anything else
            init = self._create(pod, init_plan)
            if init is None or not self._may_start(init):
                return  # refused, or pinned off the one real node: it cannot run here
            if not self._start(pod, init):
                return
            self._wait_exited(pod, init)
            self.counts["init containers run"] += 1
            if init.exit_code != 0:
                raise HarnessError(f"init container {init.id} exited with {init.exit_code}")
        for app_plan in plan.containers[len(inits) :]:
            created = self._create(pod, app_plan)
            if (
                created is not None
                and self._may_start(created)
                and (inits or self.rng.random() < self.schedule.start_rate)
            ):
                self._start(pod, created)

    def _create(
        self, pod: LivePod, plan: ContainerPlan, *, attempt: int = 0, memory: int | None = None
    ) -> LiveContainer | None:
        """CreateContainer as kubelet sends it (the ``attempt``-th restart, with ``memory``
        for the limit); None when the plugin refused it."""
        memory = plan.memory if memory is None else memory
        guaranteed = pod.plan.qos == "Guaranteed" and memory > 0
        expect_pinned = self.plugin_up and not self._fired.is_set()
        sandbox = pod.sandbox

        def call(cri: CRIClient) -> str:
            return cri.create_container(
                sandbox,
                plan.name,
                memory_limit=memory,
                cpu_millis=plan.cpu_millis,
                cpu_limit_millis=plan.cpu_limit_millis,
                cpuset_cpus=plan.cpuset,
                command=list(plan.command),
                attempt=attempt,
            )

        def existing(cri: CRIClient) -> str | None:
            found = [
                c
                for c in cri.list_containers(sandbox.id)
                if c.name == plan.name and c.attempt == attempt
            ]
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
            self.oracle.refused(pod, plan, memory, attempt)
            return None
        elapsed = time.perf_counter() - began
        expect_pinned = expect_pinned and not self._fired.is_set()
        mems = self._cri(lambda cri: cri.numa_nodes(cid))
        self._seq += 1
        container = LiveContainer(plan, pod.uid, cid, self._seq, attempt, memory, mems, guaranteed)
        pod.containers.append(container)
        self.counts["created"] += 1
        if expect_pinned:
            self.create_latencies.append(elapsed)
            if container.created_unpinned:
                self.unpinned.append(
                    f"{pod.uid}/{plan.name} ({cid[:12]}) created without cpuset.mems while the"
                    " plugin was registered"
                )
        if guaranteed and mems:
            self.oracle.admitted(pod, container)
        # created unpinned: the plugin's next Synchronize admits it (the oracle takes stock)
        return container

    def _may_start(self, c: LiveContainer) -> bool:
        # The fake topology is bigger than this machine: the plugin writes host nodes into
        # cpuset.mems for its fake ones (nri_plugin/tracker/nodemap.py), so every node set
        # runs, but CPUs the machine does not have cannot be written into a cgroup.
        return c.plan.cpuset is None or parse_cpulist(c.plan.cpuset) <= _HOST_CPUS

    def _start(self, pod: LivePod, c: LiveContainer, *, again: bool = True) -> bool:
        """StartContainer; False when a containerd restart under the call left the container
        unable to run (state UNKNOWN, or EXITED without ever starting: its task could not
        be created again): kubelet removes it and creates it again (the next attempt), once
        here (``again``)."""

        def running(cri: CRIClient) -> bool | None:
            state = cri.container_state(c.id)
            if state == "CONTAINER_UNKNOWN":
                return False
            if state == EXITED:
                return cri.container_started(c.id)
            return True if state == RUNNING else None

        def start(cri: CRIClient) -> bool:
            cri.start_container(c.id)
            return True

        if not self._cri(start, recover=running):
            self._remove_container(pod, c)
            if again and not c.plan.init:
                new = self._create(pod, c.plan, attempt=c.attempt + 1, memory=c.limit)
                if new is not None and self._may_start(new):
                    self._start(pod, new, again=False)
            return False
        c.started = True
        if c.guaranteed:
            self.oracle.started(pod, c, seen=self._seen())
        return True

    def _wait_exited(
        self,
        pod: LivePod,
        c: LiveContainer,
        timeout: float = 15.0,
        poke: Callable[[], None] | None = None,
    ) -> None:
        """Wait for c's exit; ``poke`` is called at once and every 0.25 s meanwhile."""
        deadline = time.monotonic() + timeout
        poked = 0.0
        while (code := self._cri(lambda cri: cri.exit_code(c.id))) is None:
            now = time.monotonic()
            if now > deadline:
                raise HarnessError(f"container {c.id} ({c.name}) did not exit in {timeout} s")
            if poke is not None and now - poked >= 0.25:
                poke()
                poked = now
            time.sleep(0.005)
        c.exited, c.exit_code = True, code
        if c.guaranteed:
            self.oracle.exited(pod, c)

    def _crash(self, pod: LivePod, c: LiveContainer) -> None:
        """The container's process exits with a non-zero code (its SIGTERM trap); kubelet
        restarts it at once or after a back-off (a later `restart` operation)."""
        pid = self._cri(lambda cri: cri.info(c.id).get("pid"))
        with _process(pid, c.id) as pidfd:

            def terminate() -> None:
                # again until it exits: a container just started may not have set its trap
                # yet, and PID 1 of its PID namespace ignores a signal it has no handler for
                if pidfd is not None:
                    with contextlib.suppress(ProcessLookupError):
                        signal.pidfd_send_signal(pidfd, signal.SIGTERM)

            self._wait_exited(pod, c, poke=terminate)
        self.counts["crashes"] += 1
        if self.rng.random() < self.schedule.restart_now_rate:
            self._restart(pod, c)

    def _restart(self, pod: LivePod, c: LiveContainer) -> None:
        """kubelet restarts a crashed container: the same name, the next attempt, the limits
        in force."""
        new = self._create(pod, c.plan, attempt=c.attempt + 1, memory=c.limit)
        if new is None:
            return  # refused (its blocks were released at a Synchronize): it waits again
        self.counts["crash restarts"] += 1
        if self._may_start(new):
            self._start(pod, new)

    def _resize(self, pod: LivePod, c: LiveContainer) -> None:
        """In-place resize (CRI UpdateContainerResources) to a new memory limit."""
        memory = new_size(self.rng, c.limit)
        seen = self._seen()

        def update(cri: CRIClient) -> bool:
            cri.update_container_resources(
                c.id,
                memory_limit=memory,
                cpu_millis=c.plan.cpu_millis,
                cpu_limit_millis=c.plan.cpu_limit_millis,
                cpuset_cpus=c.plan.cpuset,
            )
            return True

        try:
            accepted = self._cri(update)
        except CRIError as exc:
            if REFUSAL not in exc.details:
                raise
            accepted = False  # the container keeps its old limit
        if accepted:
            c.limit = memory
        seen = seen and self._seen()
        if seen or not accepted:
            # a refusal is the plugin's answer even when a kill came after it
            self.resizes[f"in place {'accepted' if accepted else 'refused'}"] += 1
            self.oracle.resized(pod, c, memory, accepted=accepted)
        else:
            # the plugin was away or died in the call: containerd applied the update without
            # it; its next Synchronize finds the limit in force (the oracle too)
            self.resizes["in place faulted"] += 1

    def _resize_restart(self, pod: LivePod, c: LiveContainer) -> None:
        """A resize with resize policy RestartContainer: kubelet stops the container and
        creates it again with the new limits; refused, it is created with the old ones (as
        after the user reverts the resize)."""
        memory = new_size(self.rng, c.limit)
        self._cri(lambda cri: cri.stop_container(c.id))
        self._wait_exited(pod, c)
        new = self._create(pod, c.plan, attempt=c.attempt + 1, memory=memory)
        if new is None:
            self.resizes["restart refused"] += 1
            new = self._create(pod, c.plan, attempt=c.attempt + 1, memory=c.limit)
        else:
            self.resizes["restart accepted"] += 1
        if new is not None and self._may_start(new):
            self._start(pod, new)

    def _remove_pod(self, pod: LivePod) -> None:
        seen = self._seen()
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
        # containerd sends StopPodSandbox and RemovePodSandbox only for pods its NRI state
        # map knows (those whose sandbox it ran since its last start), RemoveContainer only
        # for containers it knows; a containerd restart in the middle of the removal leaves
        # it open which calls it made before: the plugin's log says what it was told
        faulted = self._containerd_faulted()
        if faulted:
            self._read_log()
        for c in pod.containers:
            if not c.removed:
                c.removed = True
                c.record_gone = c.id in self._told_removed if faulted else c.known
        self.counts["pod removals"] += 1
        announced = pod.uid in self._told_pod_gone if faulted else pod.epoch == self._epoch
        if not announced:
            self.counts["pod removals unannounced"] += 1
        if pod.plan.qos == "Guaranteed":
            self.oracle.removed_pod(pod, seen=seen and self._seen(), sandbox_event=announced)
            if not announced:
                self._await_relist(pod)

    def _await_relist(self, pod: LivePod) -> None:
        """The plugin's relist releases what it kept of a pod whose removal containerd did
        not announce (every --relist-interval while such pods hold memory): wait for its
        log line, then the oracle follows. A containerd restart meanwhile leaves it to the
        Synchronize that follows, which finds the pod gone."""
        if pod not in self.oracle.pending_removals:
            return
        books = self.oracle.books.get(pod.uid)
        if books is None or not books.holder:
            self.oracle.relisted(pod)  # nothing kept: the plugin has nothing to release
            return
        self._read_log()  # a Synchronize logged before the removal is not one after it
        syncs = self._syncs_logged
        deadline = time.monotonic() + 20 * RELIST_INTERVAL_S + 5
        while True:
            self._read_log()
            if pod.uid in self._relisted:
                self.oracle.relisted(pod)
                self.counts["pods released by the relist"] += 1
                return
            if self._syncs_logged != syncs or (self._containerd_faulted() and not self._recovered):
                return  # the Synchronize after the restart releases it (Oracle.synchronized)
            if time.monotonic() > deadline:
                self.oracle.mismatches.append(
                    f"{self.oracle.where}: pod {pod.uid}, removed without containerd's"
                    " StopPodSandbox or RemovePodSandbox, was not released by the relist"
                )
                return
            time.sleep(RELIST_INTERVAL_S / 5)

    def _remove_container(self, pod: LivePod, c: LiveContainer) -> None:
        seen = self._seen()

        def stop_and_remove(cri: CRIClient) -> bool:
            if cri.container_state(c.id) == RUNNING:
                cri.stop_container(c.id)
            cri.remove_container(c.id)
            return True

        def gone(cri: CRIClient) -> bool | None:
            return _gone(all(x.id != c.id for x in cri.list_containers(pod.sandbox.id)))

        self._cri(stop_and_remove, recover=gone)
        faulted = self._containerd_faulted()
        if faulted:
            self._read_log()  # as in _remove_pod
        c.removed = True
        c.record_gone = c.id in self._told_removed if faulted else c.known
        self.counts["container removals"] += 1
        if c.guaranteed:
            self.oracle.removed_container(pod, c, seen=seen and self._seen())

    # -- the end ---------------------------------------------------------------------------

    def _check(self, seconds: float) -> Figures:
        self.oracle.flush()
        plugin_state = settled_state(self.plugin)
        scenario_path = self.work / "scenario.json"
        scenario_path.write_text(json.dumps(self.oracle.scenario(), indent=1))
        report = run_simulate(scenario_path)
        simulated = merged_units(from_checkpoint(report["state"], source=str(scenario_path)))
        self._check_replay(report)
        mismatches = list(self.oracle.mismatches)
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
            late_admissions=self.oracle.counts["late admissions"],
            pod_removals=self.counts["pod removals"],
            pod_removals_unannounced=self.counts["pod removals unannounced"],
            container_removals=self.counts["container removals"],
            resizes=dict(self.resizes),
            crashes=self.counts["crashes"],
            crash_restarts=self.counts["crash restarts"],
            init_containers_run=self.counts["init containers run"],
            kills=self.kills,
            restarts=self.restarts,
            mismatches=tuple(mismatches),
            unpinned_while_registered=tuple(self.unpinned),
            late_answers=logs.late_answers,
            plugin_errors=tuple(logs.errors),
            limits_kept_apart=logs.limits_kept_apart,
            oracle_counts=dict(self.oracle.counts),
            slowest_create_client_ms=max(self.create_latencies, default=0.0) * 1000,
            slowest_create_plugin_ms=logs.slowest_create_ms,
            slowest_decision_ms=logs.slowest_decision_ms,
            alive_only_differences=alive_differences,
            seconds=seconds,
            work_dir=str(self.work),
        )
        (self.work / "figures.json").write_text(json.dumps(dataclasses.asdict(figures), indent=1))
        # the plugin's logs, one per start (the harness reuses their names in its next run)
        logs_dir = self.work / "plugin-logs"
        logs_dir.mkdir(exist_ok=True)
        for n, proc in enumerate(self.procs):
            with contextlib.suppress(FileNotFoundError):
                shutil.copyfile(proc.log_path, logs_dir / f"{n:03d}.log")
        return figures

    def _check_replay(self, report: dict[str, Any]) -> None:
        """`simulate` must decide as the shadow manager did (else this driver is wrong)."""
        for i, (got, outcome) in enumerate(zip(report["steps"], self.oracle.outcomes, strict=True)):
            if isinstance(outcome, AdmissionResult):
                mems = {c["name"]: c["cpusetMems"] for c in got.get("containers", [])}
                want = {d.name: d.cpuset_mems for d in outcome.containers}
                same = (got["admitted"], mems) == (outcome.admitted, want)
            elif isinstance(outcome, ResizeResult):
                same = got["resized"] == outcome.resized
            else:
                continue
            if not same:
                raise HarnessError(f"simulate step {i} decided {got}, the shadow manager {outcome}")
        if from_checkpoint(report["state"]) != self.oracle.manager.state:
            raise HarnessError("simulate's final state differs from the shadow manager's")

    def _check_pinned(self, plugin_state: MemoryState) -> list[str]:
        """Every container holding blocks carries them in its OCI spec; no other is pinned."""
        out: list[str] = []
        cri = self.ctrd.cri()
        for pod in self._alive():
            for c in pod.latest_instances():
                blocks = plugin_state.blocks(pod.uid, c.name)
                mems = cri.numa_nodes(c.id)
                if blocks is not None:
                    want = format_mems(blocks_mask(blocks))
                    # pinned late (a Synchronize's update carries no annotation): the host's
                    # nodes only, as the plugin itself compares them
                    annotated = NUMA_NODES_ANNOTATION in cri.spec(c.id).get("annotations", {})
                    if mems != want and (annotated or not self.oracle.same_on_host(mems, want)):
                        out.append(
                            f"{pod.uid}/{c.name} ({c.id[:12]}) holds blocks on {want} but its"
                            f" OCI spec has cpuset.mems {mems!r}"
                        )
                elif mems and not c.exited:
                    out.append(
                        f"{pod.uid}/{c.name} ({c.id[:12]}) is pinned to {mems!r} but holds"
                        " no blocks"
                    )
        # pods removed after a containerd restart, unannounced (see _remove_pod): released by
        # the plugin's relist or its last Synchronize, none may wait any more
        out.extend(
            f"pod {pod.uid} was removed but the plugin never released it"
            for pod in self.oracle.pending_removals
        )
        # a live pod's name with an instance whose removal went unannounced waits for its
        # pod's end, as the oracle expects
        for uid, names in plugin_state.entries.items():
            live = self.pods.get(uid)
            for name in names:
                if (
                    live is not None
                    and not live.removed
                    and any(c.name == name for c in live.containers)
                    and not all(c.record_gone for c in live.containers if c.name == name)
                ):
                    continue
                if live is None or live.removed or live.latest(name) is None:
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


@contextlib.contextmanager
def _process(pid: object, container_id: str) -> Iterator[int | None]:
    """A pidfd for the container's process (None when it is gone): signals sent through it
    cannot reach another process that reuses the pid, which is checked to be in the
    container's cgroup when the pidfd is opened."""
    if not isinstance(pid, int) or pid <= 0:
        yield None
        return
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        yield None
        return
    try:
        try:
            cgroup = Path(f"/proc/{pid}/cgroup").read_text()
        except OSError:
            cgroup = ""
        yield fd if container_id in cgroup else None
    finally:
        os.close(fd)


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
    limits_kept_apart: int  # "container limits differ from its blocks": a resize it refused

    @classmethod
    def read(cls, paths: Sequence[Path]) -> PluginLogs:
        create = decision = 0.0
        late = apart = 0
        errors: list[str] = []
        for line in _json_lines(paths):
            event = line.get("event")
            if event == "nri request served" and line.get("method") == "CreateContainer":
                create = max(create, float(line["duration_ms"]))
            elif event == "admission" and "duration_ms" in line:
                decision = max(decision, float(line["duration_ms"]))
            elif event == "nri answer later than the runtime's deadline":
                late += 1
            elif event == "container limits differ from its blocks":
                apart += 1
            elif event == "nri request failed" and not str(line.get("error")).startswith(
                REFUSAL
            ):  # an exception escaped a handler (refusals are logged so too, with a traceback)
                errors.append(f"{line.get('method')}: {line.get('error')}")
        return cls(create, decision, late, tuple(errors), apart)


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
        description="Random pod churn, resizes, crashes and restarts against a real containerd"
        " while the plugin is killed (plugin-kill) or containerd is restarted"
        " (containerd-restart).",
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
            print(f"  oracle: {dict(figures.oracle_counts)}")
            for problem in figures.problems():
                failed = True
                print(f"  {problem}")
    return 1 if failed else 0


def _say(text: str) -> None:
    print(f"  {text}", flush=True)


if __name__ == "__main__":
    sys.exit(main())

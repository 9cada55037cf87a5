"""Starting from a checkpoint on a machine or configuration that changed since it was written.

kubelet refuses to start whenever its state file disagrees with the machine or
the configuration (drain the node, delete the file). :func:`plan` decides
instead what to keep (docs/recovery.md): memory totals that drifted within
the tolerance, changed reservations, hugepage pools and policies; every
recorded block is re-applied; bytes that no longer fit are counted on top of
the node's allocatable memory as *overflow* and given back by :func:`repay_overflow`
as blocks go. Pure: no I/O.

Drift follows KEP-6232: only a node's regular memory total may drift (hugepage
pools are compared exactly: a changed pool is a configuration change); a
drift beyond the tolerance refuses the start (unless ``memoryDriftBeyondTolerance:
accept-if-fits``), and so does a shrink under which the blocks of containers
that still exist no longer fit, whatever its size. Which containers exist only
the runtime knows, after the start: :func:`plan` then returns the check as a
:class:`ConservationCheck` to run again on the entries that survive the first
Synchronize.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from nri_plugin.engine.bitmask import format_mems, mask_of
from nri_plugin.engine.config import DRIFT_BEYOND_REFUSE, Config
from nri_plugin.engine.manager import MemoryManager
from nri_plugin.engine.restore import accounted_entries, expected_state, validate_restored
from nri_plugin.engine.state import (
    MEMORY,
    POLICY_NONE,
    POLICY_STATIC,
    Block,
    MemoryState,
    MemoryTable,
    NodeState,
)
from nri_plugin.errors import StateError
from nri_plugin.quantity import format_bytes_human

# What restore did with the checkpoint.
OUTCOME_NONE = "no-checkpoint"  # no file: the state is built at Synchronize


OUTCOME_RESTORED = "restored"  # trusted and used as it is


OUTCOME_REBASED = "rebased"  # trusted; its blocks re-applied onto a changed machine/config


OUTCOME_UNTRUSTED = "untrusted"  # set aside; the state is rebuilt at Synchronize


OUTCOME_POLICY_CHANGED = "policy-changed"  # another memory manager policy: start from defaults


TOPOLOGY_SINGLE_NUMA_NODE = "single-numa-node"


@dataclass(frozen=True)
class Drift:
    """A node's regular memory total that moved since the checkpoint (``type`` is ``memory``).

    Within the tolerance means at most ``tolerance`` bytes apart, either way.
    """

    node: int
    type: str
    old_total: int
    new_total: int
    tolerance: int

    @property
    def within_tolerance(self) -> bool:
        return self.size <= self.tolerance

    @property
    def size(self) -> int:
        """How far the total moved, either way."""
        return abs(self.new_total - self.old_total)

    def describe(self) -> str:
        return (
            f"NUMA node {self.node} {self.type} total was {_bytes(self.old_total)},"
            f" is now {_bytes(self.new_total)}"
        )


@dataclass(frozen=True)
class PoolChange:
    """A hugepage pool of one node whose total changed: a configuration change, not drift."""

    node: int
    type: str
    old_total: int
    new_total: int

    def describe(self) -> str:
        return (
            f"NUMA node {self.node} {self.type} total was {_bytes(self.old_total)},"
            f" is now {_bytes(self.new_total)}"
        )


@dataclass(frozen=True)
class Change:
    """A reservation (``reservedMemory`` or the node's reserved total) that changed."""

    node: int
    type: str
    old_reserved: int
    new_reserved: int

    def describe(self) -> str:
        return (
            f"NUMA node {self.node} {self.type} systemReserved was {_bytes(self.old_reserved)},"
            f" is now {_bytes(self.new_reserved)}"
        )


@dataclass(frozen=True)
class Conflict:
    """A recorded container whose blocks the new machine or configuration would not give.

    Its blocks are kept as recorded (the container runs and uses the memory);
    ``shortfall`` is what its group lacks for every recorded block to fit.
    """

    pod_uid: str
    container: str
    nodes: tuple[int, ...]
    type: str
    shortfall: int
    reason: str


# pod UID -> container name -> blocks, as in MemoryState.entries
Entries = Mapping[str, Mapping[str, Sequence[Block]]]


@dataclass(frozen=True)
class ConservationCheck:
    """KEP-6232's conservation check, pending until the runtime says which containers exist.

    A node's memory shrank and the checkpoint's blocks no longer fit. Our
    entries belong to container instances, and those of containers that are
    gone are released at the first Synchronize (docs/lifecycle.md), so the
    start is refused only if the shrink still leaves the blocks of the
    surviving entries without room: :meth:`refusal` on those entries.
    ``reason`` is the refusal the checkpoint's own entries give.
    """

    # this start's empty machine state (the policy's default), never modified
    default: MemoryState
    drifts: tuple[Drift, ...]
    reason: str

    @property
    def shrunk(self) -> tuple[Drift, ...]:
        """The drifts that shrank a node (the ones the check is about)."""
        return tuple(d for d in self.drifts if d.new_total < d.old_total)

    def refusal(self, entries: Entries) -> StateError | None:
        """The refusal ``entries`` still give (None: the check passes on them)."""
        lacking = _overflow(self.default, entries)
        conflicts = _shortfalls(entries, self.default.machine, lacking)
        return _shrink_under_blocks(entries, self.default, lacking, conflicts, self.drifts)


@dataclass(frozen=True)
class RestorePlan:
    """What to start from, decided from a loaded checkpoint and this start's defaults."""

    outcome: str
    # the state to hand to the manager; None: start from the policy's defaults
    state: MemoryState | None
    drifts: tuple[Drift, ...] = ()
    changes: tuple[Change, ...] = ()
    conflicts: tuple[Conflict, ...] = ()
    # why the file is not used (untrusted, or another policy)
    reason: str | None = None
    # containers whose blocks are dropped (the new policy keeps no blocks)
    dropped: tuple[str, ...] = ()
    # (node, type) -> bytes of recorded blocks beyond the new allocatable memory,
    # counted as reserved anyway (see count_overflow); ``state`` does not include them yet
    overflow: Mapping[tuple[int, str], int] = field(default_factory=dict)
    pool_changes: tuple[PoolChange, ...] = ()
    # a shrink under recorded blocks: the start is refused unless the check passes on the
    # entries the first Synchronize leaves (the lacking bytes are lent meanwhile)
    conservation: ConservationCheck | None = None


def plan(saved: MemoryState, default: MemoryState, config: Config) -> RestorePlan:
    """Decide how to start from ``saved`` given ``default``, this start's empty state.

    Raises StateError (one line: node, old and new totals, the tolerance) when
    a node's memory total moved beyond ``config.memory_drift_tolerance`` (with
    ``memoryDriftBeyondTolerance: refuse``, the default), or when a block uses
    a NUMA node or memory type the machine no longer has. When a node's total
    shrank and the recorded allocations no longer fit, the refusal depends on
    which containers still exist: the plan keeps it as ``conservation``.
    """
    if saved.policy_name != default.policy_name:
        dropped = tuple(
            sorted(f"{uid}/{name}" for uid, names in saved.entries.items() for name in names)
        )
        return RestorePlan(
            OUTCOME_POLICY_CHANGED,
            None,
            reason=(
                f"memory manager policy changed from {saved.policy_name} to {default.policy_name}"
            ),
            dropped=dropped,
        )
    if default.policy_name == POLICY_NONE:
        return RestorePlan(OUTCOME_RESTORED, saved)
    if not saved.machine:
        if saved.entries or saved.pod_entries:
            return untrusted_plan(
                "[memorymanager] machine state can not be empty when it has memory assignments"
            )
        # the manager installs the default machine state
        return RestorePlan(OUTCOME_RESTORED, saved)
    try:
        # The file must agree with the machine it recorded before any comparison
        # with this machine means anything (kubelet's validation, on its own totals).
        validate_restored(saved, _recorded_default(saved.machine), POLICY_STATIC)
    except StateError as exc:
        return untrusted_plan(f"checkpoint inconsistent with its own machine state: {exc}")

    drifts, pools, changes = _compare(saved.machine, default.machine, config.memory_drift_tolerance)
    same_machine = (
        not drifts and not pools and not changes and _same_tables(saved.machine, default.machine)
    )
    conservation = None
    if same_machine:
        state = saved
        shortfall_conflicts: list[Conflict] = []
        lacking: dict[tuple[int, str], int] = {}
    else:
        _refuse_missing(saved, default.machine)
        if config.memory_drift_beyond_tolerance == DRIFT_BEYOND_REFUSE:
            _refuse_beyond_tolerance(drifts)
        # a pod-level reservation counts once, not its containers' parts of it
        counted = accounted_entries(saved.entries, saved.pod_entries)
        lacking = _overflow(default, counted)
        shortfall_conflicts = _shortfalls(counted, default.machine, lacking)
        refusal = _shrink_under_blocks(counted, default, lacking, shortfall_conflicts, drifts)
        if refusal is not None:
            conservation = ConservationCheck(default.clone(), tuple(drifts), str(refusal))
        state = expected_state(default, saved.entries, pod_entries=saved.pod_entries)
    conflicts = shortfall_conflicts + _group_conflicts(saved) + _policy_conflicts(saved, config)
    return RestorePlan(
        OUTCOME_RESTORED if same_machine else OUTCOME_REBASED,
        state,
        tuple(drifts),
        tuple(changes),
        tuple(conflicts),
        overflow=lacking,
        pool_changes=tuple(pools),
        conservation=conservation,
    )


def untrusted_plan(reason: str) -> RestorePlan:
    return RestorePlan(OUTCOME_UNTRUSTED, None, reason=reason)


def _recorded_default(machine: Mapping[int, NodeState]) -> MemoryState:
    """The empty machine state the checkpoint's own totals and reservations describe."""
    nodes = {
        node_id: NodeState(
            0,
            {
                t: MemoryTable(m.total, m.system_reserved, m.allocatable, 0, m.allocatable)
                for t, m in node.memory_map.items()
            },
            [node_id],
        )
        for node_id, node in machine.items()
    }
    return MemoryState(POLICY_STATIC, nodes)


def _compare(
    old: Mapping[int, NodeState], new: Mapping[int, NodeState], tolerance: int
) -> tuple[list[Drift], list[PoolChange], list[Change]]:
    tolerance = max(0, tolerance)
    drifts: list[Drift] = []
    pools: list[PoolChange] = []
    changes: list[Change] = []
    for node_id in sorted(set(old) | set(new)):
        old_map = old[node_id].memory_map if node_id in old else {}
        new_map = new[node_id].memory_map if node_id in new else {}
        for t in sorted(set(old_map) | set(new_map)):
            o, n = old_map.get(t), new_map.get(t)
            old_total = o.total if o is not None else 0
            new_total = n.total if n is not None else 0
            if old_total != new_total:
                if node_id not in old or node_id not in new:
                    pass  # a node added or gone: the topology changed (see _refuse_missing)
                elif t == MEMORY:
                    drifts.append(Drift(node_id, t, old_total, new_total, tolerance))
                else:
                    # KEP-6232 tolerates regular memory only: a pool is set by someone
                    pools.append(PoolChange(node_id, t, old_total, new_total))
            old_reserved = o.system_reserved if o is not None else 0
            new_reserved = n.system_reserved if n is not None else 0
            if old_reserved != new_reserved:
                changes.append(Change(node_id, t, old_reserved, new_reserved))
    return drifts, pools, changes


def _same_tables(old: Mapping[int, NodeState], new: Mapping[int, NodeState]) -> bool:
    if set(old) != set(new):
        return False
    for node_id, node in old.items():
        other = new[node_id].memory_map
        if set(node.memory_map) != set(other):
            return False
        for t, m in node.memory_map.items():
            n = other[t]
            if (m.total, m.system_reserved, m.allocatable) != (
                n.total,
                n.system_reserved,
                n.allocatable,
            ):
                return False
    return True


def _refuse_missing(saved: MemoryState, machine: Mapping[int, NodeState]) -> None:
    """A block on a node or memory type that no longer exists cannot be kept or moved."""
    for uid, name, block in saved.iter_blocks():
        for node_id in block.numa_affinity:
            node = machine.get(node_id)
            if node is None:
                raise StateError(
                    f"pod {uid} container {name} holds {_bytes(block.size)} of {block.type} on"
                    f" NUMA node {node_id}, which this machine no longer has; drain the node"
                    " or bring the node back, then restart"
                )
            if block.type not in node.memory_map:
                raise StateError(
                    f"pod {uid} container {name} holds {_bytes(block.size)} of {block.type} on"
                    f" NUMA node {node_id}, which no longer has {block.type}; drain the node"
                    " or configure the pool again, then restart"
                )


def _iter_blocks(entries: Entries) -> Iterator[tuple[str, str, Block]]:
    for uid, containers in entries.items():
        for name, blocks in containers.items():
            for block in blocks:
                yield uid, name, block


def _components(entries: Entries) -> list[set[int]]:
    """Sets of nodes whose memory is fungible: masks joined where they share a node.

    With the group rules intact these are exactly the groups; when a node
    serves overlapping masks, fit can only be judged over their union.
    """
    parent: dict[int, int] = {}

    def find(x: int) -> int:
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for _, _, block in _iter_blocks(entries):
        nodes = list(block.numa_affinity)
        for n in nodes[1:]:
            parent[find(n)] = find(nodes[0])
        find(nodes[0])
    groups: dict[int, set[int]] = {}
    for n in parent:
        groups.setdefault(find(n), set()).add(n)
    return sorted(groups.values(), key=min)


def _overflow(default: MemoryState, entries: Entries) -> dict[tuple[int, str], int]:
    """Bytes that re-applying ``entries`` onto ``default`` cannot place, by (node, type).

    Follows :func:`expected_state` exactly (same order, same
    ``min(free, remaining)`` per node); what a block still lacks after the last
    node of its mask is counted on that last node.
    """
    free = {
        (n, t): m.free for n, node in default.machine.items() for t, m in node.memory_map.items()
    }
    lacking: dict[tuple[int, str], int] = {}
    for containers in entries.values():
        for blocks in containers.values():
            for block in blocks:
                remaining = block.size
                for n in block.numa_affinity:
                    take = min(free.get((n, block.type), 0), remaining)
                    free[(n, block.type)] = free.get((n, block.type), 0) - take
                    remaining -= take
                if remaining:
                    key = (block.numa_affinity[-1], block.type)
                    lacking[key] = lacking.get(key, 0) + remaining
    return lacking


def _shortfalls(
    entries: Entries, machine: Mapping[int, NodeState], lacking: Mapping[tuple[int, str], int]
) -> list[Conflict]:
    """The containers of every group where recorded blocks exceed the new allocatable memory."""
    conflicts: list[Conflict] = []
    for component in _components(entries):
        nodes = tuple(sorted(component))
        for t in sorted({t for n, t in lacking if n in component}):
            short = sum(v for (n, tt), v in lacking.items() if tt == t and n in component)
            need = 0
            holders: list[tuple[str, str]] = []
            for uid, name, block in _iter_blocks(entries):
                if block.type == t and block.numa_affinity[0] in component:
                    need += block.size
                    if (uid, name) not in holders:
                        holders.append((uid, name))
            allocatable = sum(
                m.allocatable for n in nodes if (m := machine[n].memory_map.get(t)) is not None
            )
            reason = (
                f"{t} on NUMA node{'s' if len(nodes) > 1 else ''} {format_mems(mask_of(nodes))}:"
                f" the recorded blocks need {_bytes(need)}, {_bytes(allocatable)} is"
                f" allocatable now, short by {_bytes(short)}"
            )
            conflicts.extend(Conflict(uid, name, nodes, t, short, reason) for uid, name in holders)
    return conflicts


def count_overflow(state: MemoryState, lacking: Mapping[tuple[int, str], int]) -> None:
    """Count bytes that do not fit as reserved anyway, on top of the node's allocatable.

    The containers run and use that memory: it must stay counted, and
    kubelet's unsigned ``free`` cannot go below zero. :func:`repay_overflow` gives the
    lent bytes back as the blocks are released.
    """
    for (n, t), extra in lacking.items():
        table = state.machine[n].memory_map[t]
        table.allocatable += extra
        table.reserved += extra
        state.overflow_lent = True


# manager -> (node, type) -> allocatable bytes of its configured default state
_DEFAULT_ALLOCATABLE: weakref.WeakKeyDictionary[MemoryManager, dict[tuple[int, str], int]] = (
    weakref.WeakKeyDictionary()
)


def repay_overflow(manager: MemoryManager) -> bool:
    """Give back overflow counted at restore (:func:`count_overflow`) once it is free again.

    Meant to run after every state change: one flag read when nothing was lent
    (``MemoryState.overflow_lent``). Free bytes inside a group move to the node that holds the loan
    (only group sums are meaningful, as in kubelet). True when anything changed.
    """
    if manager.config.policy != POLICY_STATIC or not manager.state.overflow_lent:
        return False  # nothing lent, or nothing beyond the default since the last pass
    defaults = _DEFAULT_ALLOCATABLE.get(manager)
    if defaults is None:
        defaults = {
            (n, t): m.allocatable
            for n, node in manager.policy.default_state().machine.items()
            for t, m in node.memory_map.items()
        }
        _DEFAULT_ALLOCATABLE[manager] = defaults
    state = manager.state
    changed = False
    lent = False
    for node_id, node in state.machine.items():
        for t, table in node.memory_map.items():
            excess = table.allocatable - defaults.get((node_id, t), table.allocatable)
            if excess <= 0:
                continue
            for other_id in node.cells:
                other = state.machine[other_id].memory_map.get(t)
                if other_id == node_id or other is None:
                    continue
                move = min(other.free, table.reserved, max(0, excess - table.free))
                other.free -= move
                other.reserved += move
                table.reserved -= move
                table.free += move
            give = min(excess, table.free)
            if give > 0:
                table.allocatable -= give
                table.free -= give
                changed = True
            if give < excess:
                lent = True
    state.overflow_lent = lent
    return changed


def _tolerance_text(tolerance: int) -> str:
    if tolerance == 0:
        return (
            "the memory-drift-tolerance of 0 (the exact comparison: off, or auto without a"
            " readable kernel image size)"
        )
    return f"the memory-drift-tolerance of {_bytes(tolerance)}"


def _refuse_beyond_tolerance(drifts: Iterable[Drift]) -> None:
    """A node's memory total moved further than the tolerance: not the same machine (KEP-6232)."""
    beyond = [d for d in drifts if not d.within_tolerance]
    if not beyond:
        return
    d = beyond[0]
    more = f" (and {len(beyond) - 1} more NUMA nodes)" if len(beyond) > 1 else ""
    raise StateError(
        f"{d.describe()}{more}, a drift of {_bytes(d.size)}, more than"
        f" {_tolerance_text(d.tolerance)}; drain the node, or raise memory-drift-tolerance, or"
        " set memoryDriftBeyondTolerance: accept-if-fits to start while the running allocations"
        " still fit, then restart"
    )


def _shrink_under_blocks(
    entries: Entries,
    default: MemoryState,
    lacking: Mapping[tuple[int, str], int],
    conflicts: Iterable[Conflict],
    drifts: Iterable[Drift],
) -> StateError | None:
    """The refusal when a node's memory shrank and ``entries``' blocks no longer fit.

    KEP-6232's conservation check, whatever the size of the drift. Only a
    shortfall the shrink causes refuses; one a changed reservation causes is
    the operator's choice and only reported (the bytes are lent).
    """
    shrunk = [d for d in drifts if d.new_total < d.old_total]
    memory_conflicts = [c for c in conflicts if c.type == MEMORY]
    if not shrunk or not memory_conflicts:
        return None
    before = default.clone()
    for d in shrunk:
        table = before.machine[d.node].memory_map[MEMORY]
        grown = d.old_total - d.new_total
        table.total += grown
        table.allocatable += grown
        table.free += grown
    lacking_before = _overflow(before, entries)
    for c in memory_conflicts:
        now = sum(lacking.get((n, MEMORY), 0) for n in c.nodes)
        without_drift = sum(lacking_before.get((n, MEMORY), 0) for n in c.nodes)
        if now <= without_drift:
            continue
        # only the nodes of its own masks change what a group lacks
        d = next((d for d in shrunk if d.node in c.nodes), shrunk[0])
        where = "within" if d.within_tolerance else "more than"
        return StateError(
            f"{d.describe()}, {where} {_tolerance_text(d.tolerance)}, and the running"
            f" allocations no longer fit: {c.reason}; drain the node, then restart"
        )
    return None


def _group_conflicts(saved: MemoryState) -> list[Conflict]:
    """Blocks breaking the group rule: a node serves one mask (one node, or one group)."""
    masks: dict[int, list[tuple[tuple[int, ...], str, str, str]]] = {}
    for uid, name, block in saved.iter_blocks():
        for n in block.numa_affinity:
            masks.setdefault(n, []).append(
                (tuple(sorted(block.numa_affinity)), uid, name, block.type)
            )
    conflicts: list[Conflict] = []
    for n in sorted(masks):
        distinct = sorted({m for m, *_ in masks[n]})
        if len(distinct) < 2:
            continue
        shown = " and ".join(f"[{format_mems(mask_of(m))}]" for m in distinct)
        reason = (
            f"NUMA node {n} serves the masks {shown}; a node serves either single-node"
            " allocations or exactly one group"
        )
        seen: set[tuple[str, str]] = set()
        for m, uid, name, t in masks[n]:
            if (uid, name) not in seen:
                seen.add((uid, name))
                conflicts.append(Conflict(uid, name, m, t, 0, reason))
    return conflicts


def _policy_conflicts(saved: MemoryState, config: Config) -> list[Conflict]:
    """Blocks the configured topology manager policy would never have admitted."""
    if config.topology_manager_policy != TOPOLOGY_SINGLE_NUMA_NODE:
        return []
    conflicts = []
    seen: set[tuple[str, str]] = set()
    for uid, name, block in saved.iter_blocks():
        if len(block.numa_affinity) > 1 and (uid, name) not in seen:
            seen.add((uid, name))
            nodes = tuple(sorted(block.numa_affinity))
            conflicts.append(
                Conflict(
                    uid,
                    name,
                    nodes,
                    block.type,
                    0,
                    f"topology manager policy {TOPOLOGY_SINGLE_NUMA_NODE} would not admit a"
                    f" block over NUMA nodes {format_mems(mask_of(nodes))}",
                )
            )
    return conflicts


def _bytes(n: int) -> str:
    human = format_bytes_human(n)
    return human if human == str(n) else f"{human} ({n} bytes)"

"""Restart recovery: what to trust of the checkpoint an earlier run left behind.

kubelet refuses to start whenever its state file disagrees with the machine
or the configuration; the documented fix is to drain the node and delete the
file. This module does better, in this order (``docs/recovery.md``):

1. temp files of a write cut short by a crash are removed;
2. a checkpoint that cannot be trusted (truncated, bad checksum, another
   policy's spelling, a symlink, inconsistent with its own machine state) is
   set aside, never deleted, and the state is rebuilt at Synchronize;
3. a trusted checkpoint is compared with the machine and configuration of
   this start: regular memory totals that drifted (KEP-6232's
   ``memory-drift-tolerance``), a changed ``reservedMemory``, hugepage pool,
   memory manager policy or topology manager policy. Every recorded block is
   re-applied onto the new machine state; the start is refused when a node's
   memory total moved beyond the tolerance (unless ``memoryDriftBeyondTolerance:
   accept-if-fits``). Other conflicts are logged and the blocks kept as
   recorded: memory that is really in use is never forgotten (bytes beyond
   the new allocatable memory are counted on top of it, "lent", and
   :func:`repay_overflow` gives them back as blocks go);
4. a total that shrank under blocks that no longer fit refuses the start
   only if the containers holding them still exist: the check waits for the
   first Synchronize (:class:`ConservationGate`), and nothing is written
   until it passes, so a refused start leaves the file as it was.

:func:`plan` is the pure decision; :func:`recover` and :func:`restore` add
the file system and the logs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nri_plugin.engine.config import Config
from nri_plugin.engine.manager import MemoryManager
from nri_plugin.engine.rebase import (
    OUTCOME_NONE,
    OUTCOME_RESTORED,
    OUTCOME_UNTRUSTED,
    Change,
    Conflict,
    ConservationCheck,
    Drift,
    PoolChange,
    RestorePlan,
    count_overflow,
    plan,
    untrusted_plan,
)
from nri_plugin.engine.state import MemoryState
from nri_plugin.engine.topology import Topology
from nri_plugin.errors import StateError
from nri_plugin.persist.file import load_file, remove_stale_temp_files, secure_directory, set_aside


@dataclass(frozen=True)
class RecoveryReport:
    """What :func:`recover` found and did; for logs, metrics and tests."""

    outcome: str
    path: Path
    set_aside_as: Path | None = None
    reason: str | None = None
    drifts: tuple[Drift, ...] = ()
    changes: tuple[Change, ...] = ()
    conflicts: tuple[Conflict, ...] = ()
    dropped: tuple[str, ...] = ()
    removed_temp_files: tuple[Path, ...] = ()
    pool_changes: tuple[PoolChange, ...] = ()
    # the memory drift tolerance in effect (bytes, 0: exact), and how far each NUMA node's
    # memory total moved from the checkpoint (bytes, either way; empty: nothing compared),
    # for kubelet's gauges of KEP-6232
    drift_tolerance: int = 0
    memory_drift: Mapping[int, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Recovery:
    manager: MemoryManager
    report: RecoveryReport = field(compare=False)
    # the conservation check still to pass on the entries the first Synchronize leaves
    # (None: nothing pending); see ConservationGate
    pending: ConservationCheck | None = field(default=None, compare=False)


# -- the decision (pure) -------------------------------------------------------


# -- the file system and the logs ------------------------------------------------


def recover(topology: Topology, config: Config, path: Path, log: Any) -> Recovery:
    """Load, judge and apply the checkpoint at ``path`` for this machine and config.

    Raises StateError when the start must be refused (a memory total moved
    beyond the drift tolerance; see :func:`~nri_plugin.engine.rebase.plan`); the
    file is then left as it is. A total that shrank under recorded blocks that
    no longer fit is not refused yet: ``Recovery.pending`` holds the check, to
    run on the entries of the containers that still exist (:class:`ConservationGate`).
    """
    path = Path(path)
    removed = tuple(remove_stale_temp_files(path, log))
    secure_directory(path, log)
    fresh = MemoryManager(topology, config)
    try:
        saved = load_file(path)
    except StateError as exc:
        return _start_fresh(fresh, path, log, untrusted_plan(str(exc)), removed, config)
    if saved is None:
        log.info(
            "no checkpoint; the state is built from the runtime at Synchronize", path=str(path)
        )
        report = RecoveryReport(
            OUTCOME_NONE,
            path,
            removed_temp_files=removed,
            drift_tolerance=config.memory_drift_tolerance,
        )
        return Recovery(fresh, report)

    try:
        decided = plan(saved, fresh.policy.default_state(), config)
    except StateError as exc:
        log.error("refusing to start", path=str(path), reason=str(exc))
        raise
    if decided.state is None:
        return _start_fresh(fresh, path, log, decided, removed, config)
    try:
        manager = MemoryManager(topology, config, decided.state)
    except StateError as exc:  # not expected after plan(); never trust what fails here
        return _start_fresh(fresh, path, log, untrusted_plan(str(exc)), removed, config)
    count_overflow(manager.state, decided.overflow)
    _log_plan(decided, path, log, manager)
    if decided.conservation is not None:
        log.warning(
            "memory total shrank under recorded blocks; the start is decided once the runtime"
            " lists its containers, nothing is written until then",
            path=str(path),
            numa_nodes=[d.node for d in decided.conservation.shrunk],
            reason=decided.conservation.reason,
        )
    moved = {d.node: d.size for d in decided.drifts}
    report = RecoveryReport(
        decided.outcome,
        path,
        drifts=decided.drifts,
        changes=decided.changes,
        conflicts=decided.conflicts,
        removed_temp_files=removed,
        pool_changes=decided.pool_changes,
        drift_tolerance=config.memory_drift_tolerance,
        memory_drift={n: moved.get(n, 0) for n in sorted(manager.state.machine)},
    )
    return Recovery(manager, report, decided.conservation)


class ConservationGate:
    """A start whose conservation check is pending: no writes until it passes.

    The check runs once, at the first Synchronize, after the tracker released
    the entries of containers that no longer exist (``NodeTracker``'s
    ``check_restored``). Until it passes :attr:`holding` is true and the
    checkpoint and the exit records must not be written: a refused start leaves
    the file exactly as it was, and no later start can find a rebased file
    that took the shrink for granted.
    """

    def __init__(self, pending: ConservationCheck | None, path: Path, log: Any) -> None:
        self._pending = pending
        self._path = path
        self._log = log
        self.refusal: StateError | None = None

    @property
    def holding(self) -> bool:
        """Whether writes wait (the check has not passed yet)."""
        return self._pending is not None

    def hook(
        self, on_refusal: Callable[[], object]
    ) -> Callable[[MemoryState, Sequence[str]], None]:
        """The tracker's ``check_restored``; ``on_refusal`` ends the front end."""

        def check(state: MemoryState, released: Sequence[str]) -> None:
            try:
                self.check(state, released)
            except StateError:
                on_refusal()
                raise

        return check

    def check(self, state: MemoryState, released: Sequence[str]) -> None:
        """Run the pending check on ``state``'s entries; StateError (logged) refuses the start."""
        pending = self._pending
        if pending is None:
            return
        refusal = pending.refusal(state.entries)
        if refusal is not None:
            self.refusal = refusal
            self._log.error("refusing to start", path=str(self._path), reason=str(refusal))
            raise refusal
        self._pending = None
        self._log.warning(
            "memory total shrank under recorded blocks; accepted: the blocks of containers that"
            " no longer exist were released and the others fit",
            path=str(self._path),
            numa_nodes=[d.node for d in pending.shrunk],
            drifts=[d.describe() for d in pending.shrunk],
            released=list(released),
            containers=sum(len(c) for c in state.entries.values()),
        )


def _start_fresh(
    fresh: MemoryManager,
    path: Path,
    log: Any,
    decided: RestorePlan,
    removed: tuple[Path, ...],
    config: Config,
) -> Recovery:
    tag = "untrusted" if decided.outcome == OUTCOME_UNTRUSTED else "policy-changed"
    aside = set_aside(path, tag)
    if decided.outcome == OUTCOME_UNTRUSTED:
        log.error(
            "checkpoint not trusted; rebuilding the state from the runtime",
            path=str(path),
            kept_as=str(aside) if aside else None,
            reason=decided.reason,
        )
    else:
        log.warning(
            "memory manager policy changed; starting from its default state",
            path=str(path),
            kept_as=str(aside) if aside else None,
            reason=decided.reason,
            # pinned containers keep their cpuset.mems until they are recreated
            blocks_dropped=list(decided.dropped),
        )
    report = RecoveryReport(
        decided.outcome,
        path,
        set_aside_as=aside,
        reason=decided.reason,
        dropped=decided.dropped,
        removed_temp_files=removed,
        drift_tolerance=config.memory_drift_tolerance,
    )
    return Recovery(fresh, report)


def _log_plan(decided: RestorePlan, path: Path, log: Any, manager: MemoryManager) -> None:
    for d in decided.drifts:
        if d.within_tolerance:
            log.warning(
                "memory total drifted within tolerance; accepted",
                numa_node=d.node,
                type=d.type,
                old_total=d.old_total,
                new_total=d.new_total,
                tolerance=d.tolerance,
            )
        else:  # only with memoryDriftBeyondTolerance: accept-if-fits
            log.warning(
                "memory total changed beyond tolerance; accepted (memoryDriftBeyondTolerance:"
                " accept-if-fits): every recorded allocation still fits",
                numa_node=d.node,
                type=d.type,
                old_total=d.old_total,
                new_total=d.new_total,
                tolerance=d.tolerance,
            )
    for p in decided.pool_changes:
        log.warning(
            "hugepage pool changed; applied",
            numa_node=p.node,
            type=p.type,
            old_total=p.old_total,
            new_total=p.new_total,
        )
    for c in decided.changes:
        log.warning(
            "reserved memory changed; applied",
            numa_node=c.node,
            type=c.type,
            old_reserved=c.old_reserved,
            new_reserved=c.new_reserved,
        )
    for conflict in decided.conflicts:
        log.error(
            "recorded allocation conflicts with this machine or configuration;"
            " its blocks are kept as recorded",
            pod_uid=conflict.pod_uid,
            container=conflict.container,
            numa_nodes=list(conflict.nodes),
            type=conflict.type,
            shortfall=conflict.shortfall,
            reason=conflict.reason,
        )
    log.info(
        "checkpoint restored" if decided.outcome == OUTCOME_RESTORED else "checkpoint rebased",
        path=str(path),
        containers=sum(len(c) for c in manager.state.entries.values()),
        conflicts=len(decided.conflicts),
    )

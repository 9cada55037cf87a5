"""The node tracker's state and the small steps every rule uses.

:class:`TrackerState` holds what the tracker knows of the node (pods, containers,
the owners of memory blocks, the event clock, refused containers, updates to
send) and the steps the rules share; the rules build on it, each in a module of
its own: :mod:`.podlevel` (pods that set pod-level resources), :mod:`.admission`
(placing a container, resizing it), :mod:`.exits` (what a restart cannot learn
from the runtime), :mod:`.sync` (Synchronize), and :mod:`.tracker` (the events
a front end reports). No I/O.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import structlog

from nri_plugin.engine.bitmask import mask_of
from nri_plugin.engine.manager import MemoryManager
from nri_plugin.engine.rebase import repay_overflow
from nri_plugin.engine.state import POLICY_STATIC, MemoryState, blocks_mask
from nri_plugin.tracker.facts import EXITED, PodFacts
from nri_plugin.tracker.nodemap import NodeMap
from nri_plugin.tracker.records import PodRecord

# The owner of a name's blocks when the instance holding them was never seen (it
# exited before a restart of the plugin, and the runtime no longer lists it).
UNSEEN = ""


class Refused(Exception):
    """A container, or its resize, the policy cannot place; ``message`` says why."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class Observer:
    """Hooks for metrics; the tracker calls them, :mod:`nri_plugin.metrics` implements them."""

    def admission(
        self, *, admitted: bool, pinned: bool, topology_error: bool, seconds: float
    ) -> None: ...

    def resize(self, *, resized: bool) -> None: ...

    def waiting(self, namespace: str, pod: str, containers: int) -> None:
        """How many containers of a pod wait after a refused creation (0: none any more)."""

    def state_changed(self, manager: MemoryManager) -> None: ...

    def connection(self, connected: bool) -> None: ...


class TrackerState:
    """Pods, containers and the owners of their blocks on one node."""

    def __init__(
        self,
        manager: MemoryManager,
        *,
        persist: Callable[[], None] | None = None,
        observer: Observer | None = None,
        logger: Any = None,
        node_map: NodeMap | None = None,
        check_restored: Callable[[MemoryState, Sequence[str]], None] | None = None,
    ) -> None:
        self.manager = manager
        self._persist = persist or (lambda: None)
        # run once, at the first Synchronize, on the state its releases leave (with what
        # they released), before anything is adopted or admitted; raising refuses it
        self._check_restored = check_restored
        self._observer = observer or Observer()
        self._log = logger if logger is not None else structlog.get_logger("tracker")
        # fake NUMA nodes -> the host's, for the cpuset.mems written (nodemap.py)
        self.node_map = node_map or NodeMap()
        self._mems_text = self.node_map.mems_text
        self.pods: dict[str, PodRecord] = {}
        # (pod uid, container name) -> id of the container that holds the blocks
        self.owners: dict[tuple[str, str], str] = {}
        # event clock: orders creations and exits (see records.py)
        self._clock = 0
        self.synchronized = False
        # pods that may have exited containers holding blocks (see exit_records)
        self._exits_watch: set[str] = set()
        # pod uid -> names of its containers whose last creation was refused (kubelet retries
        # them: they wait in CreateContainerError)
        self._refused: dict[str, set[str]] = {}
        # exit records of an earlier run, applied at the next Synchronize
        self._restored_exits: dict[str, dict[str, dict[str, Any]]] = {}
        # pods listed at the last Synchronize: their sandboxes ran before the runtime's
        # current process (for all the plugin can tell), and containerd announces the end
        # of none of those (see NodeTracker.unannounced_pods)
        self._unannounced: set[str] = set()
        # (container id, cpuset.mems) for containers other than the one an event is about,
        # which the front end sends the runtime (see take_updates)
        self._updates: list[tuple[str, str]] = []

    @property
    def handles(self) -> bool:
        """Whether the memory manager pins anything (policy Static)."""
        return self.manager.config.policy == POLICY_STATIC

    def holds_blocks(self, pod_uid: str) -> bool:
        """Whether any container of the pod holds blocks."""
        return bool(self.manager.state.entries.get(pod_uid))

    def mems(self, pod_uid: str, name: str) -> str:
        """The cpuset.mems of the container's blocks ("" when it holds none)."""
        return self._mems_text(self._mask(pod_uid, name))

    def annotations(self, pod_uid: str, name: str) -> dict[str, str]:
        """Annotations to give the container: its fake NUMA nodes when they are mapped."""
        return self.node_map.annotations(self._mask(pod_uid, name))

    def _mask(self, pod_uid: str, name: str) -> int:
        """The container's NUMA nodes: its blocks', else its pod's pod-level reservation's
        (a container in the pod's shared pool, KEP-5526)."""
        state = self.manager.state
        blocks = state.blocks(pod_uid, name)
        if blocks is None:
            blocks = state.pod_blocks(pod_uid)
        return blocks_mask(blocks or ())

    def take_updates(self) -> list[tuple[str, str]]:
        """(container id, cpuset.mems) for other containers than the event's, to send.

        A pod found to set pod-level resources after some of its containers were pinned:
        those are unpinned (every NUMA node) or re-pinned to the pod's reservation. The
        NRI plugin sends them with the answer to the event when it can carry them
        (CreateContainer, StopContainer, Synchronize; else with the next such answer),
        the CRI proxy with UpdateContainerResources after the call.
        """
        updates, self._updates = self._updates, []
        return updates

    def _pod_record(self, pod: PodFacts) -> PodRecord:
        record = self.pods.get(pod.uid)
        if record is None:
            record = new_record(pod)
            self.pods[record.uid] = record
        record.sandbox_id = record.sandbox_id or pod.sandbox_id
        update_record(record, pod)
        return record

    def _waiting(self, record: PodRecord, name: str, *, refused: bool) -> None:
        """Count the pod's containers waiting after a refusal, for an alert to fire."""
        names = self._refused.get(record.uid)
        if refused:
            if names is None:
                names = set()
                self._refused[record.uid] = names
            elif name in names:
                return
            names.add(name)
        elif names is None or name not in names:
            return
        else:
            names.discard(name)
            if not names:
                del self._refused[record.uid]
        self._observer.waiting(record.namespace, record.name, len(names))

    def _release_pod(self, uid: str, reason: str) -> None:
        record = self.pods.get(uid)
        if record is not None and uid in self._refused:
            del self._refused[uid]
            self._observer.waiting(record.namespace, record.name, 0)
        names = list(self.manager.state.entries.get(uid, {}))
        for key in [k for k in self.owners if k[0] == uid]:
            del self.owners[key]
        record = self.pods.get(uid)
        if record is not None:
            record.affinity = None
        if names or self.manager.state.carved(uid):
            self.manager.remove_pod(uid)
            self._log.info("released", pod_uid=uid, containers=names, reason=reason)
            self._changed()

    def _observe(
        self, started: float, *, admitted: bool, pinned: bool, topology_error: bool = False
    ) -> None:
        self._observer.admission(
            admitted=admitted,
            pinned=pinned,
            topology_error=topology_error,
            seconds=time.perf_counter() - started,
        )

    def _changed(self) -> None:
        repay_overflow(self.manager)  # memory counted beyond allocatable at restore, once released
        self._observer.state_changed(self.manager)
        self._persist()

    def _unpinned_mems(self) -> str:
        """cpuset.mems of a container the plugin does not pin: every NUMA node."""
        return self._mems_text(mask_of(self.manager.topology.node_ids))

    def _live(self, record: PodRecord, container_id: str) -> bool:
        rec = record.containers.get(container_id)
        return rec is not None and rec.state != EXITED


def new_record(pod: PodFacts) -> PodRecord:
    return PodRecord(
        sys.intern(pod.uid), pod.sandbox_id, pod.name, sys.intern(pod.namespace), pod.qos
    )


def update_record(record: PodRecord, pod: PodFacts) -> None:
    """What a pod event may tell anew: its QoS class, memory and hugepage limits."""
    if pod.qos is not None:
        record.qos = pod.qos
    if pod.memory_limit is not None:
        record.memory_limit = pod.memory_limit
    if pod.hugepage_limits is not None:
        record.hugepage_limits = dict(pod.hugepage_limits)
    if pod.cpu_limit is not None:
        record.cpu_limit = pod.cpu_limit

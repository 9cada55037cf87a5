"""The node tracker: one set of bookkeeping rules for the NRI plugin and the CRI proxy.

A front end turns its messages into the events below (the names are NRI's);
the tracker keeps pods, containers and the owners of memory blocks, asks the
engine (:class:`~nri_plugin.engine.manager.MemoryManager`) to decide, and
answers with the ``cpuset.mems`` to set or a :class:`Refused` to report. It
holds the rules of docs/lifecycle.md:

* blocks belong to (pod UID, container name); a restarted container (a new
  container ID under the same name) keeps them, whatever made it restart;
* only a finished regular init container lends its memory to the pod's next
  container and loses it when that container starts (:mod:`.records` says how
  such containers are told apart);
* an in-place resize (UpdateContainer, or a re-creation with new limits)
  follows the engine's resize rules; a refused one fails the runtime's call;
* removing a container releases its blocks unless another instance of its name
  is still known; stopping or removing the pod sandbox releases the pod;
* after any restart, Synchronize's view wins, without releasing an exited app
  container's or sidecar's blocks; a start's pending check of the restored
  state (``check_restored``) runs on what that leaves;
* a pod found to set pod-level resources (:mod:`.podlevel`) is left unpinned, as
  kubelet does by default, or managed as KEP-5526 does with ``podLevelResources:
  managers``; containers pinned before it was found are unpinned or re-pinned
  through updates the front end sends (:meth:`NodeTracker.take_updates`).

No I/O: persistence, metrics and logs are callbacks and a logger.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from fractions import Fraction
from typing import Any

import structlog

from nri_plugin.engine.bitmask import mask_of, parse_cpulist
from nri_plugin.engine.hint import DeviceHints, TopologyHint
from nri_plugin.engine.manager import (
    EMPTY_POD_SHARED_POOL_ERROR,
    AdmissionResult,
    ContainerDecision,
    MemoryManager,
)
from nri_plugin.engine.pod import GUARANTEED, ContainerSpec, PodSpec
from nri_plugin.engine.rebase import repay_overflow
from nri_plugin.engine.state import MEMORY, POLICY_STATIC, Block, MemoryState, blocks_mask
from nri_plugin.engine.topologymanager import (
    SCOPE_POD,
    TOPOLOGY_AFFINITY_ERROR,
    TOPOLOGY_AFFINITY_MESSAGE,
    UNEXPECTED_ADMISSION_ERROR,
)
from nri_plugin.errors import InputError
from nri_plugin.tracker import messages
from nri_plugin.tracker.facts import (
    CREATED,
    EXITED,
    RUNNING,
    ContainerFacts,
    ContainerResources,
    PodFacts,
)
from nri_plugin.tracker.nodemap import NodeMap
from nri_plugin.tracker.podlevel import (
    SIGNAL_POD_RESOURCES,
    container_signal,
    looks_exclusive,
    pod_signal,
)
from nri_plugin.tracker.records import INIT, LISTED, ContainerRecord, PodRecord

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


class NodeTracker:
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

    # -- pods ----------------------------------------------------------------------------

    def run_pod_sandbox(self, pod: PodFacts) -> None:
        fresh = pod.uid not in self.pods
        record = self._pod_record(pod)
        record.sandbox_id = pod.sandbox_id  # a new sandbox replaces a dead one of the same pod
        if fresh:
            record.seen_from_start = True  # every container of it will be seen created

    def pod_level_reported(self, pod_uid: str) -> None:
        """kubelet's pod-resources API reports pod-level allocations (``PodResources.cpu_ids``
        or ``memory``) for the pod: kubelet manages it at pod level (PodLevelResourceManagers),
        which it does only for pods that set pod-level resources."""
        record = self.pods.get(pod_uid)
        if record is not None and not record.pod_level and self.handles:
            self._found_pod_level(record, SIGNAL_POD_RESOURCES)

    def stop_pod_sandbox(self, pod: PodFacts) -> None:
        if not self._stale_sandbox(pod):
            self._release_pod(pod.uid, "pod sandbox stopped")

    def remove_pod_sandbox(self, pod: PodFacts) -> None:
        if not self._stale_sandbox(pod):
            self._release_pod(pod.uid, "pod sandbox removed")
            self.pods.pop(pod.uid, None)

    def pod_listed(
        self, pod_uid: str, names: Iterable[str], device_hints: DeviceHints | None = None
    ) -> None:
        """kubelet's pod-resources API answered for the pod: these are its app containers
        and sidecars (regular init containers are never listed); ``device_hints``: the
        device manager's hints for all their devices (the pod's, in pod scope)."""
        record = self.pods.get(pod_uid)
        if record is not None:
            record.listed = frozenset(names)
            record.device_hints = device_hints

    def _stale_sandbox(self, pod: PodFacts) -> bool:
        """An event for a pod's replaced sandbox: the pod's current containers live on."""
        record = self.pods.get(pod.uid)
        stale = (
            record is not None and bool(record.sandbox_id) and pod.sandbox_id != record.sandbox_id
        )
        if stale:
            self._log.info(
                "event for a replaced pod sandbox ignored",
                pod_uid=pod.uid,
                sandbox=pod.sandbox_id,
                current_sandbox=record.sandbox_id if record is not None else None,
            )
        return stale

    # -- containers ----------------------------------------------------------------------

    def create_container(self, pod: PodFacts, c: ContainerFacts) -> str | None:
        """Admit a container being created; the cpuset.mems to set (None: leave it).

        Raises :class:`Refused` when the policy cannot place it.
        """
        started = time.perf_counter()
        uid, name = pod.uid, c.name
        if not uid or not name:
            # kubelet always sends both; without them blocks cannot be keyed safely
            self._log.warning("container without pod UID or name left alone", container=c.id)
            return None
        record = self._pod_record(pod)
        self._clock += 1
        clock = self._clock
        # a name's first creation (restartCount > 0: earlier instances ran before we looked)
        first = name not in record.first_created and not (c.restart_count or 0) > 0
        record.first_created.setdefault(name, clock)
        cid = sys.intern(c.id)  # one string for the record, its key and the owner
        record.containers[cid] = ContainerRecord(cid, name, clock, state=CREATED)
        if c.resources is None:
            # a malformed value in the runtime's data: leave the container alone, say why
            self._log.error(
                "container resources unreadable", pod=record.ref, container=name, error=c.error
            )
            return None
        previous = record.resources.get(name)
        if previous is not None and previous.memory_limit != c.resources.memory_limit:
            record.resized = True  # re-created with new limits (resize policy RestartContainer)
        if first:
            record.created_limits[name] = c.resources.memory_limit
        record.resources[name] = c.resources
        qos = record.qos or c.qos
        if qos == GUARANTEED and self.handles and not record.pod_level:
            signal = container_signal(name, c.resources) or pod_signal(record)
            if signal:
                self._found_pod_level(record, signal, creating=cid)
        untouched = self._untouched_reason(qos, c.resources, record)
        if untouched is not None:
            self._log.info(
                "admission",
                pod=record.ref,
                pod_uid=uid,
                container=name,
                qos=qos,
                result="untouched",
                reason=untouched,
                pod_level=record.pod_level or None,
            )
            self._observe(started, admitted=True, pinned=False)
            return None

        lenders = self._lenders(record, name, clock) if first else []
        outcome = self._admit(record, name, c.resources, lenders, c.device_hints)
        if isinstance(outcome, str):
            self._observe(started, admitted=False, pinned=False, topology_error=True)
            self._log.warning(
                "admission", pod=record.ref, pod_uid=uid, container=name, qos=qos,
                result="refused", reason="resize", message=outcome,
            )  # fmt: skip
            self._waiting(record, name, refused=True)
            raise Refused(outcome)
        if isinstance(outcome, AdmissionResult):
            self._observe(
                started,
                admitted=False,
                pinned=False,
                topology_error=outcome.reason == TOPOLOGY_AFFINITY_ERROR,
            )
            message = self._refusal(record, name, c.resources, outcome)
            self._log.warning(
                "admission",
                pod=record.ref,
                pod_uid=uid,
                container=name,
                qos=qos,
                result="refused",
                reason=outcome.reason,
                hints=messages.providers_json(outcome.failed_hints),
                merged_hint=messages.hint_json(outcome.failed_affinity),
                message=message,
            )
            self._persist()
            self._waiting(record, name, refused=True)
            raise Refused(message)
        self._waiting(record, name, refused=False)
        self.owners[(uid, name)] = cid
        mems = self._mems_text(blocks_mask(outcome.allocations) | blocks_mask(outcome.pool))
        seconds = time.perf_counter() - started
        self._log.info(
            "admission",
            pod=record.ref,
            pod_uid=uid,
            container=name,
            qos=qos,
            result="pinned",
            pod_level=record.pod_level or None,
            pod_shared_pool=bool(outcome.pool) or None,
            cpuset_mems=mems,
            numa_nodes=outcome.cpuset_mems if self.node_map.active else None,
            hints=messages.providers_json(outcome.provider_hints),
            merged_hint=messages.hint_json(outcome.affinity),
            blocks=[messages.block_json(b) for b in outcome.allocations],
            reused_from=[lender.name for lender, _ in lenders] or None,
            init_classified_by=sorted({source for _, source in lenders}) or None,
            duration_ms=round(seconds * 1000, 3),
        )
        self._observe(started, admitted=True, pinned=bool(mems))
        self._changed()
        return mems or None

    def start_container(self, pod: PodFacts, c: ContainerFacts) -> None:
        """A container starts: the pod's finished regular init containers before it are done."""
        record = self.pods.get(pod.uid)
        if record is None:
            return
        rec = record.containers.get(c.id)
        if rec is not None:
            rec.state = RUNNING
        first = record.first_created.get(c.name, self._clock + 1)
        released = []
        sources = set()
        if not record.all_created():
            return  # kubelet allocated the pod's later containers with the inits' memory held
        for init, source in record.finished_inits(first, but=c.name):
            key = (pod.uid, init.name)
            if self.owners.get(key) not in (init.id, UNSEEN, None):
                continue
            if self.manager.remove_container(pod.uid, init.name):
                released.append(init.name)
                sources.add(source)
            self.owners.pop(key, None)
        if released:
            self._log.info(
                "init containers released",
                pod=record.ref,
                pod_uid=pod.uid,
                started=c.name,
                released=released,
                init_classified_by=sorted(sources),
            )
            self._changed()

    def exit_candidates(self, pod_uid: str, name: str) -> list[str]:
        """Exited containers whose exit code decides what a new container ``name`` may reuse.

        Only a name's first creation can reuse a finished init container's memory; the
        candidates are the pod's exited containers holding blocks whose code is unknown.
        """
        record = self.pods.get(pod_uid)
        if record is None or name in record.first_created:
            return []
        return [
            init.id
            for init, _ in record.finished_inits(self._clock + 1, but=name)
            if init.exit_code is None and self.manager.state.blocks(pod_uid, init.name)
        ]

    def exit_code(self, pod_uid: str, container_id: str, code: int) -> None:
        """The runtime said how a container exited (a non-zero code: never an init one)."""
        record = self.pods.get(pod_uid)
        rec = None if record is None else record.containers.get(container_id)
        if rec is not None:
            rec.exit_code = code

    def stop_container(self, pod: PodFacts, c: ContainerFacts) -> None:
        """The container exited (on its own, or stopped); its blocks stay with its name."""
        record = self.pods.get(pod.uid)
        rec = None if record is None else record.containers.get(c.id)
        if record is not None and rec is not None:
            self._clock += 1
            record.mark_exited(rec, self._clock, c.exit_code)
            self._exits_watch.add(record.uid)

    def update_container(
        self, pod: PodFacts, c: ContainerFacts, new: ContainerResources
    ) -> str | None:
        """An update of the container's resources (kubelet's in-place resize, or its CPU
        manager's cpuset update): the cpuset.mems to keep (None: not ours).

        Raises :class:`Refused` when a resize of a container holding blocks is refused:
        the runtime then fails the update and the container keeps its old limits.
        """
        record = self.pods.get(pod.uid)
        if record is None:
            return None
        current = record.resources.get(c.name) or c.resources
        updated = new if current is None else current.updated(new)
        if current is not None and updated.memory_limit != current.memory_limit:
            record.resized = True
        key = (pod.uid, c.name)
        if self.owners.get(key) != c.id or self.manager.state.blocks(*key) is None:
            record.resources[c.name] = updated
            # a container in its pod's shared pool holds no blocks but keeps the pool's nodes
            shared = self.owners.get(key) == c.id and self.manager.state.carved(pod.uid)
            return self.mems(*key) if shared else None
        if self._resize(record, c.name, updated, "in-place update"):
            record.resources[c.name] = updated
        return self.mems(*key) or None

    def post_update_container(self, pod: PodFacts, c: ContainerFacts) -> None:
        """The update took effect: the blocks must match the limits now in force."""
        record = self.pods.get(pod.uid)
        key = (pod.uid, c.name)
        if record is None or c.resources is None or self.owners.get(key) != c.id:
            return
        try:
            if self._resize(record, c.name, c.resources, "limits in force after an update"):
                record.resources[c.name] = c.resources
        except Refused as exc:
            # the runtime applied limits our books cannot follow: say so, loudly
            self._log.error(
                "container limits differ from its blocks",
                pod=record.ref,
                pod_uid=pod.uid,
                container=c.name,
                message=exc.message,
            )

    def remove_container(self, pod: PodFacts, c: ContainerFacts) -> None:
        """The container is gone; its name's blocks go unless another instance is known."""
        record = self.pods.get(pod.uid)
        if record is not None:
            record.containers.pop(c.id, None)
        key = (pod.uid, c.name)
        if self.owners.get(key) != c.id:
            return  # another instance (a restart, or one never seen) holds the blocks
        older = None if record is None else record.latest(c.name)
        if older is not None:
            # the creation of a restart was undone: the instance before it keeps the blocks
            self.owners[key] = older.id
            return
        del self.owners[key]
        if self.manager.remove_container(*key):
            self._log.info(
                "released", pod_uid=pod.uid, container=c.name, reason="container removed"
            )
            self._changed()

    def rename_container(self, pod_uid: str, provisional: str, container_id: str) -> None:
        """The runtime named a container admitted under a provisional ID (the CRI proxy
        admits before it forwards CreateContainer); its creation order is kept."""
        record = self.pods.get(pod_uid)
        if record is not None and provisional in record.containers:
            record.containers = {
                (container_id if cid == provisional else cid): c
                for cid, c in record.containers.items()
            }
            record.containers[container_id].id = container_id
        for key, owner in self.owners.items():
            if owner == provisional:
                self.owners[key] = container_id

    # -- exit records: what a restart cannot learn from the runtime -----------------------

    def exit_records(self) -> dict[str, dict[str, dict[str, Any]]]:
        """The exited containers that hold blocks, as a restarted plugin needs them.

        containerd lists no exited container at Synchronize, so after a restart of the
        plugin an exited container's name holds blocks with nothing to say whether it
        was a finished init container (released once the pod's next container runs) or
        a crashed app container or sidecar (kept until its pod goes). Small: only such
        containers, JSON values. Persisted beside the checkpoint (docs/recovery.md).
        """
        out: dict[str, dict[str, dict[str, Any]]] = {}
        for uid in list(self._exits_watch):
            record = self.pods.get(uid)
            held = self.manager.state.entries.get(uid, {})
            found: dict[str, dict[str, Any]] = {}
            if record is not None:
                for name in held:
                    rec = record.latest(name)
                    if rec is None or rec.exited is None:
                        continue
                    kind = record.classify(name)
                    found[name] = {
                        "id": rec.id,
                        "kind": None if kind is None else kind[0],
                        "source": None if kind is None else kind[1],
                        "exitCode": rec.exit_code,
                        "successors": sorted(record.successors(rec)),
                    }
            if found:
                out[uid] = found
            else:
                self._exits_watch.discard(uid)
        return out

    def restore_exit_records(self, records: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> None:
        """Exit records of an earlier run, applied at the next Synchronize."""
        self._restored_exits = {
            uid: {name: dict(facts) for name, facts in names.items()}
            for uid, names in records.items()
        }

    def _apply_restored_exits(self, live: Mapping[tuple[str, str], ContainerFacts]) -> None:
        restored, self._restored_exits = self._restored_exits, {}
        for uid, names in restored.items():
            record = self.pods.get(uid)
            if record is None:
                continue
            for name, facts in names.items():
                if (uid, name) in live or self.manager.state.blocks(uid, name) is None:
                    continue
                if record.latest(name) is not None:
                    continue  # this run saw the container itself
                self._clock += 1
                rec = ContainerRecord(sys.intern(str(facts.get("id", ""))), name, self._clock)
                record.containers[rec.id] = rec
                record.first_created.setdefault(name, self._clock)
                self._clock += 1
                code = facts.get("exitCode")
                record.mark_exited(rec, self._clock, code if isinstance(code, int) else None)
                kind, source = facts.get("kind"), facts.get("source")
                # an exited container whose kind was not known is never taken for an init one
                record.restored_kinds[name] = (
                    (INIT, f"{source} (restored)")
                    if kind == INIT and isinstance(source, str)
                    else (LISTED, f"{source or 'unknown'} (restored)")
                )
                successors = facts.get("successors")
                if isinstance(successors, list):
                    record.restored_successors[name] = frozenset(map(str, successors))
                self._exits_watch.add(uid)

    def disconnected(self) -> None:
        self.synchronized = False
        self._observer.connection(False)

    # -- admission -----------------------------------------------------------------------

    def _untouched_reason(
        self, qos: str | None, resources: ContainerResources, record: PodRecord
    ) -> str | None:
        if qos != GUARANTEED:
            return "not Guaranteed"
        if record.pod_level:
            config = self.manager.config
            if not config.pod_level_managers:
                return "pod-level resources"  # kubelet's default: the pod is not pinned
            if config.topology_manager_scope == SCOPE_POD:
                return None  # carved out of the pod's reservation, or in its shared pool
            if not looks_exclusive(record, resources):
                return "pod-level resources: not individually Guaranteed"
        if not resources.memory_limit:
            return "no memory limit"
        if not self.handles:
            return "policy None"
        return None

    # -- pod-level resources (KEP-2837, KEP-5526) ---------------------------------------

    def _unpinned_mems(self) -> str:
        """cpuset.mems of a container the plugin does not pin: every NUMA node."""
        return self._mems_text(mask_of(self.manager.topology.node_ids))

    def _found_pod_level(self, record: PodRecord, signal: str, creating: str = "") -> None:
        """The pod sets pod-level resources (``signal`` says how that is known): what its
        containers pinned so far hold follows the mode (``creating``: the container being
        created, which its own admission handles)."""
        record.pod_level = signal
        config = self.manager.config
        uid = record.uid
        self._log.info(
            "pod-level resources found",
            pod=record.ref,
            pod_uid=uid,
            signal=signal,
            pod_level_resources=config.pod_level_resources,
        )
        held = list(self.manager.state.entries.get(uid, {}))
        if not held:
            return
        if config.pod_level_managers and config.topology_manager_scope == SCOPE_POD:
            self._into_pod_reservation(record, creating)
            return
        release = [
            n
            for n in held
            if not config.pod_level_managers
            or (res := record.resources.get(n)) is None
            or not looks_exclusive(record, res)
        ]
        unpinned = []
        for name in release:
            self.manager.remove_container(uid, name)
            owner = self.owners.pop((uid, name), None)
            if owner and owner != creating and self._live(record, owner):
                self._updates.append((owner, self._unpinned_mems()))
                unpinned.append(name)
        if release:
            self._log.info(
                "released",
                pod_uid=uid,
                containers=release,
                unpinned=unpinned,
                reason="pod-level resources",
            )
            self._changed()

    def _live(self, record: PodRecord, container_id: str) -> bool:
        rec = record.containers.get(container_id)
        return rec is not None and rec.state != EXITED

    def _pod_budget(self, record: PodRecord, resources: ContainerResources) -> dict[str, int]:
        """A pod-level pod's budget as the node shows it: the sandbox's memory limit (the
        pod-level limit, which is the request of a Guaranteed pod) and the pod cgroup's
        hugepage limits (else the first container's)."""
        assert record.memory_limit is not None
        budget = {MEMORY: record.memory_limit}
        hugepages = record.hugepage_limits
        budget.update(hugepages if hugepages is not None else dict(resources.hugepage_limits))
        return {t: size for t, size in budget.items() if size}

    def _admit_in_reservation(
        self, record: PodRecord, spec: ContainerSpec, resources: ContainerResources
    ) -> ContainerDecision | AdmissionResult:
        """KEP-5526's pod scope, one container at a time: the pod's budget is reserved at
        its first container; a container that looks individually Guaranteed is carved out
        of it, the others share the rest (pinned to the reservation's nodes). A container
        that would empty the shared pool while a container needs it is refused, as kubelet
        refuses such a pod (EmptyPodSharedPoolError)."""
        manager = self.manager
        state = manager.state
        uid = record.uid
        if not state.carved(uid):
            if record.memory_limit is None:
                return self._pod_level_refusal(
                    record, spec.name, "the sandbox shows no pod memory limit to reserve"
                )
            budget = self._pod_budget(record, resources)
            result = manager.reserve_pod(uid, record.name, record.namespace, budget, spec.cpuset)
            if not result.admitted:
                return AdmissionResult(
                    uid, GUARANTEED, False, (), result.reason, result.message, spec.name,
                    result.failed_hints, result.failed_affinity,
                )  # fmt: skip
            record.affinity = TopologyHint(blocks_mask(state.pod_blocks(uid) or ()), True)
            record.sizing = (
                f"pod-level resources: the pod's budget was reserved when its first container"
                f" {spec.name} was created: {messages.request_text(budget)} (the sandbox's"
                " pod limit and the pod cgroup's hugepages)"
            )
        budget = {b.type: b.size for b in state.pod_blocks(uid) or ()}
        taken: dict[str, int] = {}
        for name, blocks in state.entries.get(uid, {}).items():
            if name != spec.name:
                for b in blocks:
                    taken[b.type] = taken.get(b.type, 0) + b.size
        if looks_exclusive(record, resources):
            shared = sorted(
                c.name
                for c in record.containers.values()
                if c.exited is None and c.name != spec.name and state.blocks(uid, c.name) is None
            )
            after = taken.get(MEMORY, 0) + resources.memory_limit
            if shared and after >= budget.get(MEMORY, 0):
                return self._pod_level_refusal(
                    record,
                    spec.name,
                    f"its memory would use up the pod's budget while {', '.join(shared)} run"
                    " in the pod's shared pool",
                    EMPTY_POD_SHARED_POOL_ERROR,
                )
            carved = manager.carve(uid, spec)
            if isinstance(carved, str):
                return self._pod_level_refusal(record, spec.name, carved)
            return carved
        if taken.get(MEMORY, 0) >= budget.get(MEMORY, 0):
            return self._pod_level_refusal(
                record,
                spec.name,
                "the exclusive containers use up the pod's budget, leaving no memory for its"
                " shared pool",
                EMPTY_POD_SHARED_POOL_ERROR,
            )
        decision = manager.shared(uid, spec)
        assert decision is not None
        return decision

    def _pod_level_refusal(
        self, record: PodRecord, name: str, why: str, reason: str = UNEXPECTED_ADMISSION_ERROR
    ) -> AdmissionResult:
        return AdmissionResult(
            record.uid, GUARANTEED, False, (), reason, f"pod-level resources: {why}", name
        )

    def _into_pod_reservation(self, record: PodRecord, creating: str) -> None:
        """Pod scope with ``podLevelResources: managers``: a pod found to set pod-level
        resources after some of its containers were pinned one by one gets its budget
        reserved on the nodes they use; those that look individually Guaranteed are carved
        out of it, the others join its shared pool. When the budget does not fit there,
        they keep what they hold (logged)."""
        manager = self.manager
        state = manager.state
        uid = record.uid
        held = {n: list(state.blocks(uid, n) or ()) for n in state.entries.get(uid, {})}
        mask = blocks_mask(b for blocks in held.values() for b in blocks)
        if record.memory_limit is None or not mask:
            return
        first = next(iter(record.resources.values()))
        budget = self._pod_budget(record, first)
        nodes = [n for n in manager.topology.node_ids if mask >> n & 1]
        for type_, size in budget.items():
            free = sum(state.machine[n].table(type_).free for n in nodes if n in state.machine)
            back = sum(b.size for blocks in held.values() for b in blocks if b.type == type_)
            if free + back < size:
                self._log.error(
                    "pod-level reservation does not fit", pod=record.ref, pod_uid=uid,
                    budget=messages.request_text(budget), cpuset_mems=self._mems_text(mask),
                    containers=sorted(held),
                )  # fmt: skip
                return
        for name in held:
            manager.remove_container(uid, name)
        result = manager.reserve_pod(
            uid, record.name, record.namespace, budget, None, affinity=TopologyHint(mask, True)
        )
        if not result.admitted:
            for name, blocks in held.items():  # put back what they held, as it was
                spec = ContainerSpec(name, {b.type: Fraction(b.size) for b in blocks})
                pod = PodSpec(uid, record.name, record.namespace, (), (spec,), GUARANTEED)
                manager.adopt(pod, spec, blocks_mask(blocks))
            self._log.error(
                "pod-level reservation refused", pod=record.ref, pod_uid=uid,
                message=result.message,
            )  # fmt: skip
            return
        carved = []
        for name in held:
            res = record.resources.get(name)
            if (
                res is not None
                and looks_exclusive(record, res)
                and isinstance(manager.carve(uid, res.to_spec(name)), ContainerDecision)
            ):
                carved.append(name)
        pool = blocks_mask(state.pod_blocks(uid) or ())
        record.affinity = TopologyHint(pool, True)
        for c in record.containers.values():
            if c.id != creating and c.state != EXITED:
                self._updates.append((c.id, self._mems_text(pool)))
        self._log.info(
            "pod-level reservation", pod=record.ref, pod_uid=uid,
            budget=messages.request_text(budget), cpuset_mems=self._mems_text(pool),
            carved=carved, shared=sorted(set(held) - set(carved)),
        )  # fmt: skip
        self._changed()

    def _lenders(
        self, record: PodRecord, name: str, clock: int
    ) -> list[tuple[ContainerRecord, str]]:
        """The finished init containers whose memory the pod's new container may reuse."""
        return [
            (init, source)
            for init, source in record.finished_inits(clock, but=name)
            if init.name in record.resources
            and self.manager.state.blocks(record.uid, init.name) is not None
        ]

    def _admit(
        self,
        record: PodRecord,
        name: str,
        resources: ContainerResources,
        lenders: Sequence[tuple[ContainerRecord, str]],
        device_hints: DeviceHints | None = None,
    ) -> ContainerDecision | AdmissionResult | str:
        """Admit one container; a decision, a refusal, or why its resize was refused."""
        manager = self.manager
        uid = record.uid
        spec = resources.to_spec(name)
        cpus = resources.pinned_cpus(self.manager.topology)
        spec = ContainerSpec(
            spec.name, spec.requests, spec.limits, cpuset=cpus, device_hints=device_hints
        )
        inits = tuple(record.resources[c.name].to_spec(c.name, init=True) for c, _ in lenders)
        pod = PodSpec(uid, record.name, record.namespace, inits, (spec,), GUARANTEED)
        # reusable init memory is what the lenders still hold: memory of init containers
        # released since must not be reused again
        manager.policy.lend(
            uid,
            [b for c, _ in lenders for b in manager.state.blocks(uid, c.name) or ()],
        )
        blocks = manager.state.blocks(uid, name)
        if blocks is not None:
            # a restart keeps its blocks; new limits (a resize with RestartContainer) are
            # a resize on its nodes
            if _sizes(blocks) != resources.memory:
                result = manager.resize(uid, name, spec)
                self._observer.resize(resized=result.resized)
                if not result.resized:
                    return messages.resize_refusal(
                        manager, record.ref, name, resources.memory, result.reason or ""
                    )
                self._log.info(
                    "resized", pod=record.ref, pod_uid=uid, container=name,
                    cause="re-created with new limits", blocks=_blocks_json(result.allocations),
                )  # fmt: skip
            existing = manager.refresh(pod, spec)
            assert existing is not None
            return existing
        if manager.config.topology_manager_scope == SCOPE_POD:
            if record.pod_level and manager.config.pod_level_managers:
                return self._admit_in_reservation(record, spec, resources)
            affinity = self._pod_affinity(record, pod, spec, resources)
            if isinstance(affinity, AdmissionResult):
                return affinity
            if affinity is not None:
                return manager.allocate_container(pod, spec, affinity, release_pod_on_reject=False)
        return manager.admit_container(pod, spec, release_pod_on_reject=False)

    def _pod_affinity(
        self, record: PodRecord, pod: PodSpec, spec: ContainerSpec, resources: ContainerResources
    ) -> TopologyHint | AdmissionResult | None:
        """Pod scope: the pod's hints merged once, when its first container is admitted.

        kubelet sizes the pod from its spec at admission; the runtime shows the pod's
        memory limit (kubelet's own pod-level sum) with the sandbox, and its hugepage
        limits in the pod's cgroup when kubelet set them. Where those are missing the
        pod is sized from what is known at its first container (docs/lifecycle.md,
        "Pod scope"); ``record.sizing`` says which.
        """
        state = self.manager.state
        if record.affinity is not None and state.entries.get(record.uid):
            return record.affinity
        limit = record.memory_limit
        if limit is None:
            self._log.warning(
                "pod scope without the pod's memory limit; deciding in container scope",
                pod=record.ref,
            )
            return None
        amounts = {MEMORY: limit}
        if record.hugepage_limits is not None:
            amounts.update(record.hugepage_limits)
            hugepages = "hugepages from the pod's cgroup"
        else:
            amounts.update(resources.hugepage_limits)
            hugepages = (
                "hugepages from its first container (the pod's cgroup shows none; later"
                " containers' hugepages were not known)"
            )
        record.sizing = (
            f"pod scope: the pod was sized when its first container {spec.name} was created:"
            f" memory {messages.request_text({MEMORY: limit})} from the sandbox's pod limit,"
            f" {hugepages}; CPU hint from that container's cpuset"
        )
        whole_amounts = {t: Fraction(v) for t, v in amounts.items()}
        if record.device_hints is not None:
            record.sizing += "; device hints from every listed container's devices"
        # kubelet's device manager answers for the pod's devices together, per resource
        whole = ContainerSpec(
            "pod",
            whole_amounts,
            whole_amounts,
            cpuset=spec.cpuset,
            device_hints=record.device_hints,
        )
        affinity, admit, providers = self.manager.pod_affinity(
            PodSpec(pod.uid, pod.name, pod.namespace, (), (whole,), GUARANTEED)
        )
        if not admit:
            return AdmissionResult(
                pod.uid,
                GUARANTEED,
                False,
                (),
                TOPOLOGY_AFFINITY_ERROR,
                f"pod {pod.uid}: {TOPOLOGY_AFFINITY_MESSAGE}",
                spec.name,
                providers,
                affinity,
            )
        record.affinity = affinity
        return affinity

    def _resize(
        self, record: PodRecord, name: str, resources: ContainerResources, cause: str
    ) -> bool:
        """Resize the name's blocks to ``resources``; False when nothing had to change.

        Raises :class:`Refused` (state unchanged) when the engine refuses.
        """
        key = (record.uid, name)
        blocks = self.manager.state.blocks(*key)
        if blocks is None or _sizes(blocks) == resources.memory:
            return False
        record.resized = True
        before = _blocks_json(blocks)
        result = self.manager.resize(record.uid, name, resources.to_spec(name))
        self._observer.resize(resized=result.resized)
        if not result.resized:
            message = messages.resize_refusal(
                self.manager, record.ref, name, resources.memory, result.reason or ""
            )
            self._log.warning(
                "resize refused", pod=record.ref, pod_uid=record.uid, container=name,
                cause=cause, blocks=before, message=message,
            )  # fmt: skip
            raise Refused(message)
        self._log.info(
            "resized", pod=record.ref, pod_uid=record.uid, container=name, cause=cause,
            blocks_before=before, blocks=_blocks_json(result.allocations),
        )  # fmt: skip
        self._changed()
        return True

    def _refusal(
        self, record: PodRecord, name: str, resources: ContainerResources, result: AdmissionResult
    ) -> str:
        cpus = resources.pinned_cpus(self.manager.topology)
        cpu_nodes = None if cpus is None else self.manager.topology.nodes_of_cpus(cpus)
        return messages.refusal(
            self.manager,
            record.ref,
            name,
            resources.memory,
            result,
            cpu_nodes=cpu_nodes,
            sizing=record.sizing if self.manager.config.topology_manager_scope == SCOPE_POD else "",
        )

    # -- Synchronize: the runtime's view wins ---------------------------------------------

    def synchronize(
        self,
        pods: Sequence[PodFacts],
        containers: Sequence[tuple[PodFacts, ContainerFacts]],
        *,
        mems_shown: bool = True,
    ) -> list[tuple[str, str]]:
        """Make the state the runtime's view (docs/recovery.md); (container id, mems) to pin.

        ``containers`` are the created and running ones, with their pods (the runtimes
        list no exited containers). ``mems_shown``: the listing carries each container's
        ``cpuset.mems`` in force (NRI's does; the CRI proxy's may not), so an entry whose
        container shows other mems is known to be an answer that never reached the runtime.
        """
        fresh: dict[str, PodRecord] = {}
        for p in pods:
            kept = self.pods.get(p.uid) or fresh.get(p.uid) or _new_record(p)
            kept.sandbox_id = p.sandbox_id  # the listed sandbox is the pod's current one
            kept.seen_from_start = False  # containers may have come and gone meanwhile
            _update_record(kept, p)
            fresh[kept.uid] = kept
        listed_uids = set(fresh)
        self.pods = fresh
        ordered = sorted(
            enumerate(containers),
            key=lambda ic: (ic[1][1].created_at or 0, ic[0]),
        )
        live: dict[tuple[str, str], ContainerFacts] = {}
        seen_ids: set[str] = set()
        for _, (p, c) in ordered:
            if not p.uid or not c.name:
                continue  # not a Kubernetes container we could key (see create_container)
            record = self.pods.get(p.uid)
            if record is None:
                # the sandbox has no UID, its container's kubelet label gives the pod's
                record = self.pods[p.uid] = _new_record(p)
                listed_uids.add(p.uid)
            seen_ids.add(c.id)
            rec = record.containers.get(c.id)
            if rec is None:
                self._clock += 1
                rec = ContainerRecord(sys.intern(c.id), c.name, self._clock)
                record.containers[rec.id] = rec
                record.first_created.setdefault(c.name, self._clock)
            if c.resources is not None:
                record.resources[c.name] = c.resources
            elif c.error:
                self._log.error(
                    "container resources unreadable", pod=record.ref, container=c.name,
                    error=c.error,
                )  # fmt: skip
            if c.state == EXITED:
                # listed although exited (a CRI listing): its exit is a fact, its name's
                # blocks stay with it unless a later instance runs
                self._clock += 1
                record.mark_exited(rec, self._clock, c.exit_code)
                continue
            rec.state = RUNNING if c.state == RUNNING else CREATED
            live[(p.uid, c.name)] = c  # the latest listed instance of a name holds its blocks
        for record in self.pods.values():
            for rec in record.containers.values():
                if rec.id not in seen_ids and rec.state != EXITED:
                    # exited (or removed) while we were away: only its name's blocks stay
                    self._clock += 1
                    record.mark_exited(rec, self._clock, None)

        self._apply_restored_exits(live)
        released = self._release_gone(listed_uids)
        if mems_shown:
            released += self._release_unanswered(live)
        released += self._release_finished_inits()
        if self._check_restored is not None:
            # the restored state judged on the containers that still exist (a start whose
            # memory shrank); an exception propagates: nothing below may answer on it
            self._check_restored(self.manager.state, released)
            self._check_restored = None
        # memory lent at restore goes back before late admissions could take it
        repay_overflow(self.manager)
        owners: dict[tuple[str, str], str] = {}
        for uid, names in self.manager.state.entries.items():
            record = self.pods[uid]
            for name in names:
                latest = record.latest(name)
                owners[(uid, name)] = latest.id if latest is not None else UNSEEN
        self.owners = owners
        self._pod_level_at_sync(live)
        adopted, admitted, failed, updates = self._adopt_and_admit(live)
        # one update per container, the last word winning (an unpin, then a late pin)
        updates = list({cid: mems for cid, mems in self.take_updates() + updates}.items())
        resized = self._reconcile_sizes(live)
        for key, c in live.items():
            if self.manager.state.blocks(*key) is not None:
                self.owners[key] = sys.intern(c.id)
        self.synchronized = True
        self._observer.connection(True)
        self._log.info(
            "synchronized",
            pods=len(pods),
            containers=len(containers),
            released=released,
            adopted=adopted,
            admitted=admitted,
            unplaced=failed,
            resized=resized,
            kept_exited=sorted(
                f"{uid}/{name}" for uid, name in self.owners if (uid, name) not in live
            ),
        )
        self._changed()
        return updates

    def _release_gone(self, listed_uids: set[str]) -> list[str]:
        """Release the entries of pods the runtime no longer lists."""
        released = []
        for uid, names in list(self.manager.state.entries.items()):
            if uid in listed_uids:
                continue
            for name in list(names):
                self.manager.remove_container(uid, name)
                released.append(f"{uid}/{name}")
        for uid in list(self.manager.state.pod_entries):
            if uid not in listed_uids:
                # a pod-level reservation (its shared containers hold no entries)
                self.manager.remove_pod(uid)
                released.append(f"{uid}/(pod-level reservation)")
        return released

    def _release_unanswered(self, live: dict[tuple[str, str], ContainerFacts]) -> list[str]:
        """Release entries whose live container does not carry the mems of their blocks.

        The plugin recorded the admission, but its answer never reached the runtime (it
        died or was dropped mid-request) and containerd created the container without it.
        The runtime's view wins: the container is one created while the plugin was away,
        admitted again below with the others, after every release.
        """
        released = []
        for key, c in live.items():
            if c.state not in (CREATED, RUNNING):
                continue
            blocks = self.manager.state.blocks(*key)
            if blocks is None:
                continue
            recorded = self._mems_text(blocks_mask(blocks))
            if _same_mems(c.mems, recorded):
                continue
            self.manager.remove_container(*key)
            released.append(f"{key[0]}/{key[1]}")
            self._log.warning(
                "admission not in force",
                pod_uid=key[0],
                container=key[1],
                cpuset_mems=c.mems,
                recorded=recorded,
                reason="the runtime created the container without the recorded cpuset.mems",
            )
        return released

    def _release_finished_inits(self) -> list[str]:
        """Finished init containers whose pod's next container started while we were away."""
        released = []
        for record in self.pods.values():
            for init, _ in record.finished_inits(self._clock + 1):
                if self.manager.state.blocks(record.uid, init.name) is None:
                    continue
                if record.next_started(init):
                    self.manager.remove_container(record.uid, init.name)
                    released.append(f"{record.uid}/{init.name}")
        return released

    def _pod_level_at_sync(self, live: Mapping[tuple[str, str], ContainerFacts]) -> None:
        """Which listed pods set pod-level resources, from what the runtime shows now (a
        reservation in the checkpoint says it too); what their containers hold follows."""
        if not self.handles:
            return
        for record in self.pods.values():
            if record.pod_level:
                continue
            if self.manager.state.carved(record.uid):
                record.pod_level = "its pod-level reservation in the checkpoint"
                continue
            if record.qos != GUARANTEED:
                continue
            signal = ""
            for (uid, name), c in live.items():
                if uid == record.uid and c.resources is not None:
                    signal = signal or container_signal(name, c.resources)
            if not signal and not self.manager.state.entries.get(record.uid):
                # a pod whose containers hold blocks was judged by the run that pinned them,
                # which saw its resizes; limits compared with the sandbox's would take a
                # grown container for a pod-level one
                signal = pod_signal(record)
            if signal:
                self._found_pod_level(record, signal)

    def _left_alone(self, record: PodRecord, resources: ContainerResources) -> bool:
        """A container of a pod-level pod the plugin does not pin, or pins with its pod."""
        if not record.pod_level:
            return False
        config = self.manager.config
        if not config.pod_level_managers:
            return True
        if config.topology_manager_scope == SCOPE_POD:
            # a container in the pod's shared pool holds no blocks of its own
            return self.manager.state.carved(record.uid)
        return not looks_exclusive(record, resources)

    def _adopt_and_admit(
        self, live: dict[tuple[str, str], ContainerFacts]
    ) -> tuple[int, int, int, list[tuple[str, str]]]:
        adopted = admitted = failed = 0
        updates: list[tuple[str, str]] = []
        if not self.handles:
            return adopted, admitted, failed, updates
        known_nodes = mask_of(self.manager.topology.node_ids)
        # Every pinned container is adopted before any unpinned one is admitted:
        # Synchronize lists containers in the runtime's order, and a late admission
        # must not be given memory that a pinned container listed after it holds.
        late: list[tuple[ContainerFacts, PodRecord, ContainerResources]] = []
        for (uid, name), c in live.items():
            if c.state not in (CREATED, RUNNING) or self.manager.state.blocks(uid, name):
                continue
            record = self.pods[uid]
            resources = record.resources.get(name)
            if (record.qos or c.qos) != GUARANTEED:
                continue
            if resources is None or not resources.memory_limit:
                continue
            if self._left_alone(record, resources):
                if not self.manager.state.carved(uid) and self._nodes_in_force(c):
                    # pinned before the plugin lost its state: unpinned, as kubelet leaves it
                    updates.append((c.id, self._unpinned_mems()))
                continue
            pinned = self._nodes_in_force(c)
            if pinned and pinned & ~known_nodes == 0:
                # pinned by us before the state was lost: adopt as it is
                spec = resources.to_spec(name)
                pod = PodSpec(uid, record.name, record.namespace, (), (spec,), GUARANTEED)
                self.manager.adopt(pod, spec, pinned)
                self.owners[(uid, name)] = c.id
                adopted += 1
                self._log.info(
                    "adopted", pod=record.ref, pod_uid=uid, container=name, cpuset_mems=c.mems
                )
            else:
                late.append((c, record, resources))
        for c, record, resources in sorted(late, key=lambda x: _created(x[1], x[0])):
            # created while we were away: admit now, pin through the sync reply
            outcome = self._admit(record, c.name, resources, [], c.device_hints)
            if not isinstance(outcome, ContainerDecision):
                failed += 1
                message = (
                    outcome
                    if isinstance(outcome, str)
                    else self._refusal(record, c.name, resources, outcome)
                )
                self._log.warning(
                    "admission", pod=record.ref, pod_uid=record.uid, container=c.name,
                    result="unplaced", message=message,
                )  # fmt: skip
                continue
            admitted += 1
            self.owners[(record.uid, c.name)] = c.id
            mems = self._mems_text(blocks_mask(outcome.allocations))
            if mems:
                updates.append((c.id, mems))
            self._log.info(
                "admission", pod=record.ref, pod_uid=record.uid, container=c.name,
                result="pinned late", cpuset_mems=mems,
            )  # fmt: skip
        return adopted, admitted, failed, updates

    def _nodes_in_force(self, c: ContainerFacts) -> int:
        """The NUMA nodes a listed container is pinned to (0: none we can read).

        With fake nodes mapped to the host's, its annotation says which fake ones.
        """
        if self.node_map.active:
            return self.node_map.fake_nodes(c.annotations)
        if not c.mems:
            return 0
        try:
            return mask_of(parse_cpulist(c.mems, what="cpuset.mems"))
        except InputError:
            return 0

    def _reconcile_sizes(self, live: dict[tuple[str, str], ContainerFacts]) -> list[str]:
        """Blocks that a resize while we were away left behind the container's limit."""
        resized = []
        for key, c in live.items():
            record = self.pods[key[0]]
            if c.resources is None or self.manager.state.blocks(*key) is None:
                continue
            try:
                if self._resize(record, key[1], c.resources, "limits found at synchronize"):
                    resized.append(f"{key[0]}/{key[1]}")
            except Refused as exc:
                self._log.error(
                    "container limits differ from its blocks", pod=record.ref,
                    pod_uid=key[0], container=key[1], message=exc.message,
                )  # fmt: skip
        return resized

    # -- helpers --------------------------------------------------------------------------

    def _pod_record(self, pod: PodFacts) -> PodRecord:
        record = self.pods.get(pod.uid)
        if record is None:
            record = _new_record(pod)
            self.pods[record.uid] = record
        record.sandbox_id = record.sandbox_id or pod.sandbox_id
        _update_record(record, pod)
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


def _new_record(pod: PodFacts) -> PodRecord:
    return PodRecord(
        sys.intern(pod.uid), pod.sandbox_id, pod.name, sys.intern(pod.namespace), pod.qos
    )


def _update_record(record: PodRecord, pod: PodFacts) -> None:
    """What a pod event may tell anew: its QoS class, memory and hugepage limits."""
    if pod.qos is not None:
        record.qos = pod.qos
    if pod.memory_limit is not None:
        record.memory_limit = pod.memory_limit
    if pod.hugepage_limits is not None:
        record.hugepage_limits = dict(pod.hugepage_limits)
    if pod.cpu_limit is not None:
        record.cpu_limit = pod.cpu_limit


def _created(record: PodRecord, c: ContainerFacts) -> int:
    """The event clock of a listed container's creation (its order among the listed)."""
    rec = record.containers.get(c.id)
    return rec.created if rec is not None else 0


def _sizes(blocks: Iterable[Block]) -> dict[str, int]:
    """A container's blocks as its memory limits read (type -> bytes, zeros left out)."""
    return {b.type: b.size for b in blocks if b.size}


def _blocks_json(blocks: Iterable[Block]) -> list[dict[str, object]]:
    return [messages.block_json(b) for b in blocks]


def _same_mems(shown: str, recorded: str) -> bool:
    """Whether the runtime's cpuset.mems text is the recorded one (same ids, any spelling)."""
    if shown == recorded:
        return True
    try:
        return parse_cpulist(shown, what="cpuset.mems") == parse_cpulist(
            recorded, what="cpuset.mems"
        )
    except InputError:
        return False

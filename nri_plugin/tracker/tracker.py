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
  container's or sidecar's blocks.

No I/O: persistence, metrics and logs are callbacks and a logger.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from fractions import Fraction
from typing import Any

import structlog

from nri_plugin.engine.bitmask import format_mems, mask_of, parse_cpulist
from nri_plugin.engine.hint import TopologyHint
from nri_plugin.engine.manager import AdmissionResult, ContainerDecision, MemoryManager
from nri_plugin.engine.pod import GUARANTEED, ContainerSpec, PodSpec
from nri_plugin.engine.rebase import settle
from nri_plugin.engine.state import MEMORY, POLICY_STATIC, Block, blocks_mask
from nri_plugin.engine.topologymanager import (
    SCOPE_POD,
    TOPOLOGY_AFFINITY_ERROR,
    TOPOLOGY_AFFINITY_MESSAGE,
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
        mems_text: Callable[[int], str] = format_mems,
    ) -> None:
        self.manager = manager
        self._persist = persist or (lambda: None)
        self._observer = observer or Observer()
        self._log = logger if logger is not None else structlog.get_logger("tracker")
        # NUMA node mask -> the cpuset.mems text to write (the host's nodes for a fake one)
        self._mems_text = mems_text
        self.pods: dict[str, PodRecord] = {}
        # (pod uid, container name) -> id of the container that holds the blocks
        self.owners: dict[tuple[str, str], str] = {}
        # event clock: orders creations and exits (see records.py)
        self._clock = 0
        self.synchronized = False
        # pods that may have exited containers holding blocks (see exit_records)
        self._exits_watch: set[str] = set()
        # exit records of an earlier run, applied at the next Synchronize
        self._restored_exits: dict[str, dict[str, dict[str, Any]]] = {}

    @property
    def handles(self) -> bool:
        """Whether the memory manager pins anything (policy Static)."""
        return self.manager.config.policy == POLICY_STATIC

    def holds_blocks(self, pod_uid: str) -> bool:
        """Whether any container of the pod holds blocks."""
        return bool(self.manager.state.entries.get(pod_uid))

    def mems(self, pod_uid: str, name: str) -> str:
        """The cpuset.mems of the container's blocks ("" when it holds none)."""
        return self._mems_text(blocks_mask(self.manager.state.blocks(pod_uid, name) or ()))

    # -- pods ----------------------------------------------------------------------------

    def run_pod_sandbox(self, pod: PodFacts) -> None:
        record = self._pod_record(pod)
        record.sandbox_id = pod.sandbox_id  # a new sandbox replaces a dead one of the same pod

    def stop_pod_sandbox(self, pod: PodFacts) -> None:
        if not self._stale_sandbox(pod):
            self._release_pod(pod.uid, "pod sandbox stopped")

    def remove_pod_sandbox(self, pod: PodFacts) -> None:
        if not self._stale_sandbox(pod):
            self._release_pod(pod.uid, "pod sandbox removed")
            self.pods.pop(pod.uid, None)

    def pod_listed(self, pod_uid: str, names: Iterable[str]) -> None:
        """kubelet's pod-resources API answered for the pod: these are its app containers
        and sidecars (regular init containers are never listed)."""
        record = self.pods.get(pod_uid)
        if record is not None:
            record.listed = frozenset(names)

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
        record.resources[name] = c.resources
        qos = record.qos or c.qos
        untouched = self._untouched_reason(qos, c.resources)
        if untouched is not None:
            self._log.info(
                "admission",
                pod=record.ref,
                pod_uid=uid,
                container=name,
                qos=qos,
                result="untouched",
                reason=untouched,
            )
            self._observe(started, admitted=True, pinned=False)
            return None

        lenders = self._lenders(record, name, clock) if first else []
        outcome = self._admit(record, name, c.resources, lenders)
        if isinstance(outcome, str):
            self._observe(started, admitted=False, pinned=False, topology_error=True)
            self._log.warning(
                "admission", pod=record.ref, pod_uid=uid, container=name, qos=qos,
                result="refused", reason="resize", message=outcome,
            )  # fmt: skip
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
            raise Refused(message)
        self.owners[(uid, name)] = cid
        mems = self._mems_text(blocks_mask(outcome.allocations))
        seconds = time.perf_counter() - started
        self._log.info(
            "admission",
            pod=record.ref,
            pod_uid=uid,
            container=name,
            qos=qos,
            result="pinned",
            cpuset_mems=mems,
            numa_nodes=outcome.cpuset_mems,
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
            if self.manager.state.blocks(pod.uid, c.name) is not None:
                # no block changes, but the exit records do: a restart must find this exit
                # (persist writes them with the checkpoint)
                self._persist()

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
        key = (pod.uid, c.name)
        if self.owners.get(key) != c.id or self.manager.state.blocks(*key) is None:
            record.resources[c.name] = updated
            return None
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
        # debug: says which instances the runtime announced gone (containerd does not, for
        # some, after it restarts: docs/fault-injection.md), whether or not blocks go
        self._log.debug("container removed", pod_uid=pod.uid, container=c.name, id=c.id)
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
        # records restored from an earlier run and not applied yet (no Synchronize since
        # the start): written back as they were, else a write before the Synchronize (the
        # daemon's start-up write) would lose them
        out: dict[str, dict[str, dict[str, Any]]] = {
            uid: {name: dict(facts) for name, facts in names.items()}
            for uid, names in self._restored_exits.items()
        }
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
        # All restored containers share one creation tick and one exit tick: their order is
        # not known, and a later tick would make one look first created after another's
        # exit, a "next container" that ran (which releases a finished init container):
        # only the recorded successors say that.
        self._clock += 2
        created, exited = self._clock - 1, self._clock
        for uid, names in restored.items():
            record = self.pods.get(uid)
            if record is None:
                continue
            for name, facts in names.items():
                if (uid, name) in live or self.manager.state.blocks(uid, name) is None:
                    continue
                if record.latest(name) is not None:
                    continue  # this run saw the container itself
                rec = ContainerRecord(sys.intern(str(facts.get("id", ""))), name, created)
                record.containers[rec.id] = rec
                record.first_created.setdefault(name, created)
                code = facts.get("exitCode")
                record.mark_exited(rec, exited, code if isinstance(code, int) else None)
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

    def _untouched_reason(self, qos: str | None, resources: ContainerResources) -> str | None:
        if qos != GUARANTEED:
            return "not Guaranteed"
        if not resources.memory_limit:
            return "no memory limit"
        if not self.handles:
            return "policy None"
        return None

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
    ) -> ContainerDecision | AdmissionResult | str:
        """Admit one container; a decision, a refusal, or why its resize was refused."""
        manager = self.manager
        uid = record.uid
        spec = resources.to_spec(name)
        cpus = resources.pinned_cpus(self.manager.topology)
        spec = ContainerSpec(spec.name, spec.requests, spec.limits, cpuset=cpus)
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
        whole = ContainerSpec("pod", whole_amounts, whole_amounts, cpuset=spec.cpuset)
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
        owners: dict[tuple[str, str], str] = {}
        for uid, names in self.manager.state.entries.items():
            record = self.pods[uid]
            for name in names:
                latest = record.latest(name)
                owners[(uid, name)] = latest.id if latest is not None else UNSEEN
        self.owners = owners
        # Limits in force first: a container resized while we were away runs on its nodes
        # with its new limit, so that memory is taken before a late admission places
        # anything (else the late one may land there and overcommit the node).
        resized = self._reconcile_sizes(live)
        adopted, admitted, failed, updates = self._adopt_and_admit(live)
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
            outcome = self._admit(record, c.name, resources, [])
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
        """The NUMA nodes a listed container is pinned to (0: none we can read)."""
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

    def _release_pod(self, uid: str, reason: str) -> None:
        names = list(self.manager.state.entries.get(uid, {}))
        for key in [k for k in self.owners if k[0] == uid]:
            del self.owners[key]
        record = self.pods.get(uid)
        if record is not None:
            record.affinity = None
        if names:
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
        settle(self.manager)  # memory counted beyond allocatable at restore, once released
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

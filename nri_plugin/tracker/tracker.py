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

No I/O: persistence, metrics and logs are callbacks and a logger. This module
holds the events; the rules they apply build on :class:`~.core.TrackerState`,
one module each: :mod:`.podlevel`, :mod:`.admission`, :mod:`.exits`, :mod:`.sync`.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Mapping

from nri_plugin.engine.hint import DeviceHints
from nri_plugin.engine.pod import GUARANTEED
from nri_plugin.engine.state import blocks_mask
from nri_plugin.engine.topologymanager import TOPOLOGY_AFFINITY_ERROR
from nri_plugin.tracker import messages
from nri_plugin.tracker.admission import Rejection
from nri_plugin.tracker.core import UNSEEN, Observer, Refused
from nri_plugin.tracker.facts import (
    CREATED,
    RUNNING,
    ContainerFacts,
    ContainerResources,
    PodFacts,
    SandboxFacts,
)
from nri_plugin.tracker.podlevel import SIGNAL_POD_RESOURCES, container_signal, pod_signal
from nri_plugin.tracker.records import ContainerRecord
from nri_plugin.tracker.sync import Synchronization

__all__ = ["UNSEEN", "NodeTracker", "Observer", "Refused"]


class NodeTracker(Synchronization):
    """Pods, containers and the owners of their blocks on one node: the events."""

    # -- pods ----------------------------------------------------------------------------

    def run_pod_sandbox(self, pod: PodFacts) -> None:
        fresh = pod.uid not in self.pods
        record = self._pod_record(pod)
        if record.sandbox_id != pod.sandbox_id:
            # a new sandbox replaces a dead one of the same pod; the runtime announces its end
            self._unannounced.discard(pod.uid)
        record.sandbox_id = pod.sandbox_id
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
            self._unannounced.discard(pod.uid)

    def unannounced_pods(self) -> dict[str, str]:
        """Pods that hold memory and whose end the runtime may never announce: pod UID ->
        its sandbox id as known now (pass it back with :meth:`pod_sandboxes_listed`).

        containerd (1.7, 2.x) sends StopPodSandbox and RemovePodSandbox only for sandboxes
        its current process ran (``internal/nri/nri.go``), so for the pods listed at the
        last Synchronize, the runtime's CRI listing is the only news of their end. Empty
        when there is nothing to ask: the front end then asks nothing.
        """
        out = {}
        for uid in list(self._unannounced):
            record = self.pods.get(uid)
            if record is None:
                self._unannounced.discard(uid)  # gone at a Synchronize
            elif self.holds_blocks(uid) or self.manager.state.carved(uid) or uid in self._refused:
                out[uid] = record.sandbox_id
        return out

    def pod_sandboxes_listed(
        self, asked: Mapping[str, str], listed: Iterable[SandboxFacts]
    ) -> list[str]:
        """The runtime's CRI listing of every pod sandbox, asked for the pods ``asked``
        (:meth:`unannounced_pods` before the call): the UIDs of those released.

        A pod with no sandbox left is released as RemovePodSandbox does; one with a sandbox
        but none ready, as StopPodSandbox does. A pod with a ready sandbox is kept, a new
        one of the same UID included (kubelet re-creates a dead sandbox of a live pod), and
        so is a pod whose sandbox changed while the runtime was asked.
        """
        by_uid: dict[str, list[SandboxFacts]] = {}
        for s in listed:
            by_uid.setdefault(s.uid, []).append(s)
        released = []
        for uid, sandbox_id in asked.items():
            record = self.pods.get(uid)
            if record is None or uid not in self._unannounced or record.sandbox_id != sandbox_id:
                continue  # ended, or a new sandbox announced, while the runtime answered
            sandboxes = by_uid.get(uid, [])
            if any(s.ready for s in sandboxes):
                continue
            if sandboxes:
                self._release_pod(uid, "pod sandbox not ready (stop not announced by the runtime)")
            else:
                self._release_pod(uid, "pod sandbox gone (removal not announced by the runtime)")
                self.pods.pop(uid, None)
                self._unannounced.discard(uid)
            released.append(uid)
        return released

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
            record.set_created_limit(name, c.resources.memory_limit)
        record.set_resources(name, c.resources)
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
        if isinstance(outcome, Rejection) and outcome.resize:
            self._observe(started, admitted=False, pinned=False, topology_error=True)
            self._log.warning(
                "admission", pod=record.ref, pod_uid=uid, container=name, qos=qos,
                result="refused", reason="resize", message=outcome.message,
            )  # fmt: skip
            self._waiting(record, name, refused=True)
            raise Refused(outcome.message)
        if isinstance(outcome, Rejection):
            self._observe(
                started,
                admitted=False,
                pinned=False,
                topology_error=outcome.reason == TOPOLOGY_AFFINITY_ERROR,
            )
            self._log.warning(
                "admission",
                pod=record.ref,
                pod_uid=uid,
                container=name,
                qos=qos,
                result="refused",
                reason=outcome.reason,
                hints=messages.providers_json(outcome.hints or {}),
                merged_hint=messages.hint_json(outcome.affinity),
                message=outcome.message,
            )
            self._persist()
            self._waiting(record, name, refused=True)
            raise Refused(outcome.message)
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
        if current is not None and updated.memory_limit != current.memory_limit:
            record.resized = True
        key = (pod.uid, c.name)
        if self.owners.get(key) != c.id or self.manager.state.blocks(*key) is None:
            record.set_resources(c.name, updated)
            # a container in its pod's shared pool holds no blocks but keeps the pool's nodes
            shared = self.owners.get(key) == c.id and self.manager.state.carved(pod.uid)
            return self.mems(*key) if shared else None
        if self._resize(record, c.name, updated, "in-place update"):
            record.set_resources(c.name, updated)
        return self.mems(*key) or None

    def post_update_container(self, pod: PodFacts, c: ContainerFacts) -> None:
        """The update took effect: the blocks must match the limits now in force."""
        record = self.pods.get(pod.uid)
        key = (pod.uid, c.name)
        if record is None or c.resources is None or self.owners.get(key) != c.id:
            return
        try:
            if self._resize(record, c.name, c.resources, "limits in force after an update"):
                record.set_resources(c.name, c.resources)
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

    def disconnected(self) -> None:
        self.synchronized = False
        self._observer.connection(False)

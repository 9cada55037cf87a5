"""Synchronize: the runtime's view wins (docs/lifecycle.md, "Restarts and missed events").

At the first Synchronize after any restart (of the plugin or of the runtime) the
tracker takes the runtime's listing as the truth: entries of pods that are gone,
answers that never reached the runtime and finished init containers whose pod
moved on are released; a start's pending check of the restored state runs on what
that leaves; running containers pinned by us are adopted, Guaranteed containers
created while we were away are admitted late and pinned through the answer, and
blocks a resize left behind the container's limit are resized.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from nri_plugin.engine.bitmask import mask_of, parse_cpulist
from nri_plugin.engine.manager import ContainerDecision
from nri_plugin.engine.pod import GUARANTEED, PodSpec
from nri_plugin.engine.rebase import repay_overflow
from nri_plugin.engine.state import blocks_mask
from nri_plugin.errors import InputError
from nri_plugin.tracker.admission import Admissions
from nri_plugin.tracker.core import UNSEEN, Refused, new_record, update_record
from nri_plugin.tracker.exits import ExitRecords
from nri_plugin.tracker.facts import (
    CREATED,
    EXITED,
    RUNNING,
    ContainerFacts,
    ContainerResources,
    PodFacts,
)
from nri_plugin.tracker.records import ContainerRecord, PodRecord


class Synchronization(Admissions, ExitRecords):
    """Synchronize, on the tracker's state."""

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
            kept = self.pods.get(p.uid) or fresh.get(p.uid) or new_record(p)
            kept.sandbox_id = p.sandbox_id  # the listed sandbox is the pod's current one
            kept.seen_from_start = False  # containers may have come and gone meanwhile
            update_record(kept, p)
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
                record = self.pods[p.uid] = new_record(p)
                listed_uids.add(p.uid)
            seen_ids.add(c.id)
            rec = record.containers.get(c.id)
            if rec is None:
                self._clock += 1
                rec = ContainerRecord(sys.intern(c.id), c.name, self._clock)
                record.containers[rec.id] = rec
                record.first_created.setdefault(c.name, self._clock)
            if c.resources is not None:
                record.set_resources(c.name, c.resources)
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
        # Limits in force first: a container resized while we were away runs on its nodes
        # with its new limit, so that memory is taken before a late admission places
        # anything (else the late one may land there and overcommit the node).
        resized = self._reconcile_sizes(live)
        adopted, admitted, failed, updates = self._adopt_and_admit(live)
        # one update per container, the last word winning (an unpin, then a late pin)
        updates = list({cid: mems for cid, mems in self.take_updates() + updates}.items())
        for key, c in live.items():
            if self.manager.state.blocks(*key) is not None:
                self.owners[key] = sys.intern(c.id)
        # A Synchronize follows a start of the plugin or of the runtime, and the plugin cannot
        # tell which (it may have been down while containerd restarted): containerd announces
        # no end of a pod whose sandbox ran before its own start (docs/fault-injection.md)
        self._unannounced = set(self.pods)
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
                self._log.warning(
                    "admission", pod=record.ref, pod_uid=record.uid, container=c.name,
                    result="unplaced", message=outcome.message,
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
                numa_nodes=outcome.cpuset_mems if self.node_map.active else None,
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


def _created(record: PodRecord, c: ContainerFacts) -> int:
    """The event clock of a listed container's creation (its order among the listed)."""
    rec = record.containers.get(c.id)
    return rec.created if rec is not None else 0


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

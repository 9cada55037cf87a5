"""The glue: NRI events -> pod admission -> container adjustments.

``MemoryPlugin`` is a handler object for :class:`nri_plugin.nri.stub.Stub`
(the transport): its methods are named after the NRI events it handles and
it contains no transport code. It keeps the bookkeeping rules of
``spec/lifecycle.md``: blocks belong to (pod UID, container name); a
container of the pod that exited before a container with another name is
created was an init container, reusable by that container and released when
it starts; Synchronize's view wins after any restart.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import structlog

from nri_plugin.engine.bitmask import format_mems, mask_of, nodes_of, parse_cpulist
from nri_plugin.engine.hint import ProviderHints, TopologyHint
from nri_plugin.engine.manager import AdmissionResult, ContainerDecision, MemoryManager
from nri_plugin.engine.pod import GUARANTEED, ContainerSpec, PodSpec
from nri_plugin.engine.rebase import settle
from nri_plugin.engine.state import MEMORY, blocks_mask
from nri_plugin.engine.topologymanager import SCOPE_POD, TOPOLOGY_AFFINITY_ERROR
from nri_plugin.errors import InputError
from nri_plugin.frontends.nri_convert import (
    ContainerResources,
    container_identity,
    container_resources,
    pinned_cpus,
    pod_memory_limit,
    pod_qos,
)
from nri_plugin.nri.connection import RpcError
from nri_plugin.nri.gen import nri_pb2 as api
from nri_plugin.nri.ttrpc import Code
from nri_plugin.quantity import format_bytes_human

REFUSAL_PREFIX = TOPOLOGY_AFFINITY_ERROR + ":"


class AdmissionRefused(RpcError):
    """CreateContainer refused; the text starts with ``TopologyAffinityError:``.

    An RpcError so the transport answers it as the routine refusal it is
    (status UNKNOWN, as a Go plugin's plain error), without a traceback.
    """

    def __init__(self, message: str) -> None:
        super().__init__(Code.UNKNOWN, message)

    def __str__(self) -> str:
        return self.message


@dataclass(slots=True)
class ContainerRecord:
    id: str
    pod_uid: str
    name: str
    seq: int
    exited: bool = False
    running: bool = False


@dataclass(slots=True)
class PodRecord:
    uid: str
    sandbox_id: str
    name: str
    namespace: str
    qos: str | None
    # container id -> record, in creation order
    containers: dict[str, ContainerRecord] = field(default_factory=dict)
    # container name -> resources last seen at its creation
    resources: dict[str, ContainerResources] = field(default_factory=dict)
    # pod scope: the pod-level memory limit kubelet sent, and the affinity chosen once
    memory_limit: int | None = None
    affinity: TopologyHint | None = None

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}" if self.name else self.uid


class Observer:
    """Hooks for metrics; the plugin calls them, a metrics module implements them."""

    def admission(
        self, *, admitted: bool, pinned: bool, topology_error: bool, seconds: float
    ) -> None: ...

    def state_changed(self, manager: MemoryManager) -> None: ...

    def connection(self, connected: bool) -> None: ...


class MemoryPlugin:
    """NRI handler: pins Guaranteed containers' memory with ``cpuset.mems``."""

    def __init__(
        self,
        manager: MemoryManager,
        *,
        persist: Callable[[], None] | None = None,
        observer: Observer | None = None,
        logger: Any = None,
    ) -> None:
        self.manager = manager
        self._persist = persist or (lambda: None)
        self._observer = observer or Observer()
        self._log = logger if logger is not None else structlog.get_logger("plugin")
        self.pods: dict[str, PodRecord] = {}
        # (pod uid, container name) -> id of the container that holds the blocks
        self.owners: dict[tuple[str, str], str] = {}
        self._seq = 0
        self.synchronized = False

    # -- NRI events ----------------------------------------------------------

    def configure(self, config: str, runtime_name: str, runtime_version: str) -> None:
        self._log.info(
            "configured",
            runtime=runtime_name,
            runtime_version=runtime_version,
            memory_manager_policy=self.manager.config.policy,
            topology_manager_policy=self.manager.config.topology_manager_policy,
            topology_manager_scope=self.manager.config.topology_manager_scope,
        )

    def on_disconnect(self) -> None:
        self.synchronized = False
        self._observer.connection(False)
        self._log.warning("runtime connection lost")

    def run_pod_sandbox(self, pod: api.PodSandbox) -> None:
        record = self._pod_record(pod)
        record.sandbox_id = pod.id  # a new sandbox replaces a dead one of the same pod

    def stop_pod_sandbox(self, pod: api.PodSandbox) -> None:
        if self._stale_sandbox(pod):
            return
        self._release_pod(pod.uid, "pod sandbox stopped")

    def remove_pod_sandbox(self, pod: api.PodSandbox) -> None:
        if self._stale_sandbox(pod):
            return
        self._release_pod(pod.uid, "pod sandbox removed")
        self.pods.pop(pod.uid, None)

    def _stale_sandbox(self, pod: api.PodSandbox) -> bool:
        """An event for a pod's replaced sandbox: the pod's current containers live on."""
        record = self.pods.get(pod.uid)
        stale = record is not None and bool(record.sandbox_id) and pod.id != record.sandbox_id
        if stale:
            self._log.info(
                "event for a replaced pod sandbox ignored", pod_uid=pod.uid, sandbox=pod.id
            )
        return stale

    def create_container(
        self, pod: api.PodSandbox, container: api.Container
    ) -> api.ContainerAdjustment | None:
        started = time.perf_counter()
        uid, name = container_identity(pod, container)
        if not uid or not name:
            # kubelet always sends both; without them blocks cannot be keyed safely
            self._log.warning(
                "container without pod UID or name left alone", container=container.id
            )
            return None
        record = self._pod_record(pod)
        qos = pod_qos(pod, container)
        try:
            resources = container_resources(container)
        except InputError as exc:
            # a malformed value in the runtime's data: leave the container alone, say why
            self._log.error(
                "container resources unreadable", pod=record.ref, container=name, error=str(exc)
            )
            return None
        record.resources[name] = resources
        self._seq += 1
        cid = sys.intern(container.id)  # one string for the record, its key and the owner
        record.containers[cid] = ContainerRecord(cid, uid, name, self._seq)
        if qos != GUARANTEED or MEMORY not in resources.memory or not self._handles():
            self._log.info(
                "admission",
                pod=record.ref,
                pod_uid=uid,
                container=name,
                qos=qos,
                result="untouched",
                reason="not Guaranteed"
                if qos != GUARANTEED
                else "no memory limit"
                if MEMORY not in resources.memory
                else "policy None",
            )
            self._observer.admission(
                admitted=True,
                pinned=False,
                topology_error=False,
                seconds=time.perf_counter() - started,
            )
            return None

        outcome = self._admit(record, name, resources)
        seconds = time.perf_counter() - started
        if isinstance(outcome, AdmissionResult):
            self._observer.admission(
                admitted=False,
                pinned=False,
                topology_error=outcome.reason == TOPOLOGY_AFFINITY_ERROR,
                seconds=seconds,
            )
            message = self._refusal_message(record, name, resources, outcome)
            self._log.warning(
                "admission",
                pod=record.ref,
                pod_uid=uid,
                container=name,
                qos=qos,
                result="refused",
                reason=outcome.reason,
                hints=_providers_json(outcome.failed_hints),
                merged_hint=_hint_json(outcome.failed_affinity),
                message=message,
            )
            self._persist()
            raise AdmissionRefused(message)
        self.owners[(uid, name)] = cid
        mems = outcome.cpuset_mems
        self._log.info(
            "admission",
            pod=record.ref,
            pod_uid=uid,
            container=name,
            qos=qos,
            result="pinned",
            cpuset_mems=mems,
            hints=_providers_json(outcome.provider_hints),
            merged_hint=_hint_json(outcome.affinity),
            blocks=[_block_json(b) for b in outcome.allocations],
            duration_ms=round(seconds * 1000, 3),
        )
        self._observer.admission(
            admitted=True, pinned=bool(mems), topology_error=False, seconds=seconds
        )
        self._changed()
        if not mems:
            return None
        return _adjust_mems(mems)

    def start_container(self, pod: api.PodSandbox, container: api.Container) -> None:
        """A container starts: the pod's exited (init) containers of other names are done."""
        uid, name = container_identity(pod, container)
        record = self.pods.get(uid)
        if record is None:
            return
        started = record.containers.get(container.id)
        if started is not None:
            started.running = True
        released = []
        for c in list(record.containers.values()):
            if c.exited and c.name != name and c.seq < self._seq_of(record, container.id):
                if self.manager.policy.remove_container(self.manager.state, uid, c.name):
                    released.append(c.name)
                self.owners.pop((uid, c.name), None)
        if released:
            self._log.info(
                "init containers released",
                pod=record.ref,
                pod_uid=uid,
                started=name,
                released=released,
            )
            self._changed()

    def update_container(
        self, pod: api.PodSandbox, container: api.Container, linux_resources: api.LinuxResources
    ) -> list[api.ContainerUpdate]:
        """Keep our cpuset.mems whatever the update (kubelet's CPU manager sends them)."""
        uid, name = container_identity(pod, container)
        if self.owners.get((uid, name)) != container.id:
            return []
        mems = self._mems_of(uid, name)
        if not mems:
            return []
        return [_update_mems(container.id, mems)]

    def stop_container(
        self, pod: api.PodSandbox, container: api.Container
    ) -> list[api.ContainerUpdate]:
        record = self.pods.get(pod.uid)
        if record is not None and container.id in record.containers:
            record.containers[container.id].exited = True
            record.containers[container.id].running = False
        return []

    def remove_container(self, pod: api.PodSandbox, container: api.Container) -> None:
        uid, name = container_identity(pod, container)
        record = self.pods.get(uid)
        if record is not None:
            record.containers.pop(container.id, None)
        # a newer container of the same name (a restart) keeps the blocks
        if self.owners.get((uid, name)) != container.id:
            return
        del self.owners[(uid, name)]
        if self.manager.remove_container(uid, name):
            self._log.info("released", pod_uid=uid, container=name, reason="container removed")
            self._changed()

    # -- Synchronize: the runtime's view wins ----------------------------------

    def synchronize(
        self,
        pods: Sequence[api.PodSandbox],
        containers: Sequence[api.Container],
        *,
        mems_shown: bool = True,
    ) -> list[api.ContainerUpdate]:
        """Make the state the runtime's view (spec/lifecycle.md, "Restarts and missed events").

        ``mems_shown``: the listing carries each container's ``cpuset.mems`` in force (NRI's
        does; the CRI proxy's may not), so an entry whose container shows other mems is known
        to be an answer that never reached the runtime.
        """
        state = self.manager.state
        by_sandbox = {p.id: p for p in pods}
        self.pods = {}
        self.owners = {}
        ordered = sorted(
            enumerate(containers),
            key=lambda ic: (ic[1].created_at if ic[1].created_at else 0, ic[0]),
        )
        live: dict[tuple[str, str], api.Container] = {}
        for sandbox in pods:
            self._pod_record(sandbox)
        for _, c in ordered:
            p = by_sandbox.get(c.pod_sandbox_id)
            if p is None:
                continue
            record = self._pod_record(p)
            uid, name = container_identity(p, c)
            if not uid or not name:
                continue  # not a Kubernetes container we could key (see create_container)
            self._seq += 1
            cid = sys.intern(c.id)
            rec = ContainerRecord(
                cid,
                uid,
                name,
                self._seq,
                exited=c.state == api.CONTAINER_STOPPED,
                running=c.state == api.CONTAINER_RUNNING,
            )
            record.containers[cid] = rec
            try:
                record.resources[name] = container_resources(c)
            except InputError as exc:
                self._log.error(
                    "container resources unreadable", pod=record.ref, container=name, error=str(exc)
                )
            # the latest container of a name owns the name's blocks
            live[(uid, name)] = c

        released = self._release_gone(live)
        if mems_shown:
            released += self._release_unanswered(live)
        released += self._release_finished_inits()
        adopted, admitted, failed, updates = self._adopt_and_admit(ordered, by_sandbox, live)
        for key, c in live.items():
            if state.blocks(*key) is not None:
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
        )
        self._changed()
        return updates

    def _release_gone(self, live: dict[tuple[str, str], api.Container]) -> list[str]:
        """Release entries whose container the runtime no longer lists.

        containerd's Synchronize lists created and running containers only, so
        an exited init container whose successor had not started yet is
        released here too (docs/recovery.md, "limits"): the successor then
        takes its own memory instead of reusing the init container's.
        """
        released = []
        for uid, names in list(self.manager.state.entries.items()):
            for name in list(names):
                if (uid, name) not in live:
                    self.manager.remove_container(uid, name)
                    released.append(f"{uid}/{name}")
        return released

    def _release_unanswered(self, live: dict[tuple[str, str], api.Container]) -> list[str]:
        """Release entries whose live container does not carry the mems of their blocks.

        The plugin recorded the admission, but its answer never reached the runtime (it
        died or was dropped mid-request) and containerd created the container without it.
        The runtime's view wins: the container is one created while the plugin was away,
        admitted again below with the others, after every release.
        """
        released = []
        for key, c in live.items():
            if c.state not in (api.CONTAINER_CREATED, api.CONTAINER_RUNNING):
                continue
            blocks = self.manager.state.blocks(*key)
            if blocks is None or _mask_of_mems(_runtime_mems(c)) == blocks_mask(blocks):
                continue
            self.manager.remove_container(*key)
            released.append(f"{key[0]}/{key[1]}")
            self._log.warning(
                "admission not in force",
                pod_uid=key[0],
                container=key[1],
                cpuset_mems=_runtime_mems(c),
                recorded=format_mems(blocks_mask(blocks)),
                reason="the runtime created the container without the recorded cpuset.mems",
            )
        return released

    def _release_finished_inits(self) -> list[str]:
        """Exited containers whose successor (another name, created later) already runs."""
        released = []
        for record in self.pods.values():
            running_after = [c for c in record.containers.values() if c.running]
            for c in record.containers.values():
                if not c.exited or self.manager.state.blocks(record.uid, c.name) is None:
                    continue
                if any(r.name != c.name and r.seq > c.seq for r in running_after):
                    self.manager.remove_container(record.uid, c.name)
                    released.append(f"{record.uid}/{c.name}")
        return released

    def _adopt_and_admit(
        self,
        ordered: Sequence[tuple[int, api.Container]],
        by_sandbox: dict[str, api.PodSandbox],
        live: dict[tuple[str, str], api.Container],
    ) -> tuple[int, int, int, list[api.ContainerUpdate]]:
        adopted = admitted = failed = 0
        updates: list[api.ContainerUpdate] = []
        if not self._handles():
            return adopted, admitted, failed, updates
        known_nodes = mask_of(self.manager.topology.node_ids)
        # Every pinned container is adopted before any unpinned one is admitted:
        # Synchronize lists containers in the runtime's order, and a late admission
        # must not be given memory that a pinned container listed after it holds.
        late: list[tuple[api.Container, str, str, PodRecord, ContainerResources]] = []
        for _, c in ordered:
            p = by_sandbox.get(c.pod_sandbox_id)
            if p is None or c.state not in (api.CONTAINER_CREATED, api.CONTAINER_RUNNING):
                continue
            uid, name = container_identity(p, c)
            if live.get((uid, name)) is not c or self.manager.state.blocks(uid, name) is not None:
                continue
            if pod_qos(p, c) != GUARANTEED:
                continue
            record = self.pods[p.uid]  # keyed as _pod_record keys it (uid may come from a label)
            resources = record.resources.get(name)
            if resources is None or MEMORY not in resources.memory:
                continue
            mems = _runtime_mems(c)
            pinned = _mask_of_mems(mems)
            if pinned and pinned & ~known_nodes == 0:
                # pinned by us before the state was lost: adopt as it is
                spec = resources.to_spec(name)
                pod_spec = PodSpec(uid, record.name, record.namespace, (), (spec,), GUARANTEED)
                self.manager.adopt(pod_spec, spec, pinned)
                adopted += 1
                self._log.info(
                    "adopted", pod=record.ref, pod_uid=uid, container=name, cpuset_mems=mems
                )
            else:
                late.append((c, uid, name, record, resources))
        for c, uid, name, record, resources in late:
            # created while we were away: admit now, pin through the sync reply
            outcome = self._admit(record, name, resources)
            if isinstance(outcome, AdmissionResult):
                failed += 1
                self._log.warning(
                    "admission",
                    pod=record.ref,
                    pod_uid=uid,
                    container=name,
                    result="unplaced",
                    reason=outcome.reason,
                    message=self._refusal_message(record, name, resources, outcome),
                )
                continue
            admitted += 1
            if outcome.cpuset_mems:
                updates.append(_update_mems(c.id, outcome.cpuset_mems))
            self._log.info(
                "admission",
                pod=record.ref,
                pod_uid=uid,
                container=name,
                result="pinned late",
                cpuset_mems=outcome.cpuset_mems,
            )
        return adopted, admitted, failed, updates

    # -- admission -----------------------------------------------------------

    def _handles(self) -> bool:
        return self.manager.config.policy == "Static"

    def _admit(
        self, record: PodRecord, name: str, resources: ContainerResources
    ) -> ContainerDecision | AdmissionResult:
        """Admit one container of a pod, with the pod's exited containers as its init containers."""
        state = self.manager.state
        # reusable memory is rebuilt below from the exited containers that still hold
        # blocks: memory of init containers released since must not be reused again
        self.manager.policy.forget_pod(record.uid)
        inits = tuple(
            record.resources[c.name].to_spec(c.name, init=True)
            for c in record.containers.values()
            if c.exited
            and c.name != name
            and c.name in record.resources
            and state.blocks(record.uid, c.name) is not None
        )
        spec = resources.to_spec(name)
        cpus = pinned_cpus(resources, self.manager.topology)
        spec = ContainerSpec(spec.name, spec.requests, spec.limits, cpuset=cpus)
        pod = PodSpec(record.uid, record.name, record.namespace, inits, (spec,), GUARANTEED)
        for init in inits:
            self.manager.refresh(pod, init)  # their memory is reusable by this container
        existing = self.manager.refresh(pod, spec)
        if existing is not None:
            return existing  # a restarted container keeps its blocks
        if self.manager.config.topology_manager_scope == SCOPE_POD:
            affinity = self._pod_affinity(record, pod, spec, resources)
            if isinstance(affinity, AdmissionResult):
                return affinity
            if affinity is not None:
                return self.manager.allocate_container(
                    pod, spec, affinity, release_pod_on_reject=False
                )
        return self.manager.admit_container(pod, spec, release_pod_on_reject=False)

    def _pod_affinity(
        self, record: PodRecord, pod: PodSpec, spec: ContainerSpec, resources: ContainerResources
    ) -> TopologyHint | AdmissionResult | None:
        """Pod scope: merge the pod-level hints once, from kubelet's pod-level limits."""
        if record.affinity is not None:
            return record.affinity
        limit = record.memory_limit
        if limit is None:
            self._log.warning(
                "pod scope without pod-level resources; using container scope", pod=record.ref
            )
            return None
        amounts = {k: Fraction(v) for k, v in resources.memory.items()}
        amounts[MEMORY] = Fraction(limit)
        whole = ContainerSpec("pod", dict(amounts), dict(amounts), cpuset=spec.cpuset)
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
                f"pod {pod.uid}: Resources cannot be allocated with Topology locality",
                spec.name,
                providers,
                affinity,
            )
        record.affinity = affinity
        return affinity

    def _refusal_message(
        self, record: PodRecord, name: str, resources: ContainerResources, result: AdmissionResult
    ) -> str:
        """Why, in the words a node administrator needs: request, free per node, policy."""
        config = self.manager.config
        request = ", ".join(
            f"{t}={format_bytes_human(v)}" for t, v in sorted(resources.memory.items())
        )
        free = []
        for node_id, node in sorted(self.manager.state.machine.items()):
            parts = [
                f"{t}={format_bytes_human(node.memory_map[t].free)}"
                for t in sorted(resources.memory)
                if t in node.memory_map
            ]
            group = "" if len(node.cells) <= 1 else f" (group {','.join(map(str, node.cells))})"
            free.append(f"node {node_id}: {' '.join(parts)}{group}")
        hint = result.failed_affinity
        merged = "" if hint is None else f"; best hint {hint}"
        detail = (result.message or "").split(": ", 1)[-1]  # drop kubelet's "container x: "
        cpus = pinned_cpus(resources, self.manager.topology)
        cpu_nodes = (
            ""
            if cpus is None
            else "; CPUs on NUMA nodes "
            + ",".join(map(str, sorted(self.manager.topology.nodes_of_cpus(cpus))))
        )
        return (
            f"{REFUSAL_PREFIX} pod {record.ref} container {name}: {detail} ({result.reason})"
            f"; request {request}{cpu_nodes}; free {'; '.join(free)}{merged}; topology manager"
            f" policy {config.topology_manager_policy}, scope {config.topology_manager_scope}"
        )

    # -- helpers ---------------------------------------------------------------

    def _pod_record(self, pod: api.PodSandbox) -> PodRecord:
        record = self.pods.get(pod.uid)
        if record is None:
            uid = sys.intern(pod.uid)
            record = PodRecord(uid, pod.id, pod.name, sys.intern(pod.namespace), pod_qos(pod))
            self.pods[uid] = record
        record.sandbox_id = record.sandbox_id or pod.id
        limit = pod_memory_limit(pod)
        if limit is not None:
            record.memory_limit = limit
        return record

    def _seq_of(self, record: PodRecord, container_id: str) -> int:
        c = record.containers.get(container_id)
        return c.seq if c is not None else self._seq + 1

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

    def _mems_of(self, uid: str, name: str) -> str:
        return format_mems(blocks_mask(self.manager.state.blocks(uid, name) or []))

    def _changed(self) -> None:
        settle(self.manager)  # memory lent to conflicting blocks at restore, once released
        self._observer.state_changed(self.manager)
        self._persist()


def _runtime_mems(c: api.Container) -> str:
    """The cpuset.mems the runtime shows for ``c`` ("" when none)."""
    return c.linux.resources.cpu.mems if c.HasField("linux") else ""


def _mask_of_mems(mems: str) -> int:
    """The node mask of a cpuset.mems text; 0 for none or for text that does not parse."""
    if not mems:
        return 0
    try:
        return mask_of(parse_cpulist(mems, what="cpuset.mems"))
    except InputError:
        return 0


def _adjust_mems(mems: str) -> api.ContainerAdjustment:
    adjust = api.ContainerAdjustment()
    adjust.linux.resources.cpu.mems = mems
    return adjust


def _update_mems(container_id: str, mems: str) -> api.ContainerUpdate:
    update = api.ContainerUpdate(container_id=container_id)
    update.linux.resources.cpu.mems = mems
    return update


def _hint_json(hint: TopologyHint | None) -> dict[str, object] | None:
    return None if hint is None else hint.to_json()


def _providers_json(providers: dict[str, ProviderHints]) -> dict[str, object]:
    out: dict[str, object] = {}
    for provider, hints in providers.items():
        if hints is None:
            out[provider] = None
            continue
        out[provider] = {
            resource: None if lst is None else [h.to_json() for h in lst]
            for resource, lst in hints.items()
        }
    return out


def _block_json(b: Any) -> dict[str, object]:
    return {"type": b.type, "size": b.size, "numaAffinity": list(b.numa_affinity)}


__all__ = ["REFUSAL_PREFIX", "AdmissionRefused", "MemoryPlugin", "Observer", "nodes_of"]

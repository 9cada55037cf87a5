"""kubelet's pod-resources API for both front ends, and the served socket's memory.

What kubelet allocated to a container (its devices, and so their NUMA nodes)
and whether kubelet lists it at all (app containers and sidecars are listed,
regular init containers never) reach the tracker through here, the same way
for the NRI plugin and the CRI proxy:

* a Guaranteed pod's sandbox starts (RunPodSandbox): its answer is asked in the
  background (the client's ``prefetch``); kubelet has admitted the pod and
  allocated its devices by then;
* one of its containers is created: :meth:`KubeletResources.lookup` says
  whether the front end must wait for the answer (the cache lacks the
  container), and hands it the client's lookup, which never takes longer than
  the client's deadline (``LOOKUP_DEADLINE_S``, 100 ms); then
  :meth:`KubeletResources.facts` tells the tracker the pod's listed containers
  (``NodeTracker.pod_listed``: exact init classification; with pod-level
  allocations, ``NodeTracker.pod_level_reported``) and gives the
  container's facts the device manager's hints for its devices
  (:mod:`nri_plugin.podresources.devicehints`); in pod scope the pod's hints
  are made from every listed container's devices together, per resource, as
  kubelet's ``GetPodTopologyHints`` does for devices already allocated;
* Synchronize: one ``List`` fills the cache first (waited for within the same
  deadline), so containers admitted late get their device hints too;
* the sandbox is removed: the answer is forgotten.

No answer (no socket, kubelet slow, down or rate-limiting) is today's
behaviour: no device hint, init containers inferred; the client counts and
logs it.

:class:`TrackerMemory` is the served socket's ``MemoryProvider``: the blocks of
the tracker's state per container, the node's allocatable memory, and the pods
and containers the tracker knows.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine, Iterable, Sequence
from dataclasses import replace
from typing import Any

from nri_plugin.engine.hint import DeviceHints, ProviderHints
from nri_plugin.engine.pod import GUARANTEED
from nri_plugin.engine.topologymanager import SCOPE_POD
from nri_plugin.podresources.client import PodResourcesClient
from nri_plugin.podresources.resources import (
    AllocatableResources,
    ContainerResources,
    MemoryBlock,
    PodResources,
)
from nri_plugin.podresources.server import ProvidedPod
from nri_plugin.tracker.facts import ContainerFacts, PodFacts
from nri_plugin.tracker.records import INIT, PodRecord
from nri_plugin.tracker.tracker import NodeTracker


def device_hints(hints: ProviderHints) -> DeviceHints | None:
    """The device manager's answer as a container's device hints (tuples)."""
    if hints is None:
        return None
    return {resource: None if h is None else tuple(h) for resource, h in hints.items()}


class KubeletResources:
    """kubelet's answers, from the client's cache, for the tracker."""

    def __init__(self, client: PodResourcesClient, tracker: NodeTracker) -> None:
        self.client = client
        self.tracker = tracker
        self._numa_nodes = tracker.manager.topology.node_ids
        self._pod_scope = tracker.manager.config.topology_manager_scope == SCOPE_POD
        # pod uid -> (the answer, the inventory, the pod's device hints made from them)
        self._pod_hints: dict[
            str, tuple[PodResources, AllocatableResources | None, DeviceHints | None]
        ] = {}
        self._tasks: set[asyncio.Task[Any]] = set()

    def wanted(self, pod: PodFacts, c: ContainerFacts | None = None) -> bool:
        """Only a Guaranteed pod's answer can change a decision (the others are untouched)."""
        qos = pod.qos or (c.qos if c is not None else None)
        return (
            bool(self.client.socket_path)
            and self.tracker.handles
            and qos == GUARANTEED
            and bool(pod.uid and pod.name)
        )

    # -- pod sandboxes ---------------------------------------------------------------

    def sandbox_started(self, pod: PodFacts) -> None:
        if self.wanted(pod):
            self.client.prefetch(pod.uid, pod.namespace, pod.name)

    def sandbox_removed(self, pod: PodFacts) -> None:
        self.pod_gone(pod.uid)

    def pod_gone(self, pod_uid: str) -> None:
        """The pod is gone (its sandbox removed, or found gone by the relist)."""
        self.client.forget(pod_uid)
        self._pod_hints.pop(pod_uid, None)

    # -- containers ------------------------------------------------------------------

    def lookup(self, pod: PodFacts, c: ContainerFacts) -> Coroutine[Any, Any, object] | None:
        """What to await before :meth:`facts` (at most the client's deadline); None when
        nothing is to wait for (the cache answers, or the answer cannot matter)."""
        if not c.name or not self.wanted(pod, c):
            return None
        if self.client.is_listed(pod.uid, c.name) is not None:
            return None
        return self.client.container(pod.uid, pod.namespace, pod.name, c.name)

    def facts(self, pod: PodFacts, c: ContainerFacts) -> ContainerFacts:
        """``c`` with the device hints of kubelet's cached answer; the tracker is told the
        pod's listed containers. ``c`` unchanged when there is no answer to tell."""
        if not c.name or not self.wanted(pod, c):
            return c
        listed = self.client.is_listed(pod.uid, c.name)
        answer = self.client.cached_pod(pod.uid)
        if listed is None or answer is None:
            return c
        self._tell(pod.uid, answer)
        resources = answer.container(c.name) if listed else None
        if resources is None or not resources.devices:
            return c
        hints = device_hints(self.client.device_hints(self._numa_nodes, resources))
        return c if hints is None else replace(c, device_hints=hints)

    def _pod_device_hints(self, uid: str, answer: PodResources) -> DeviceHints | None:
        """Pod scope: the hints of all the listed containers' devices, per resource."""
        if not self._pod_scope:
            return None
        inventory = self.client.inventory()
        cached = self._pod_hints.get(uid)
        if cached is not None and cached[0] is answer and cached[1] is inventory:
            return cached[2]
        devices = tuple(d for container in answer.containers for d in container.devices)
        hints = None
        if devices:
            whole = ContainerResources("pod", devices=devices)
            hints = device_hints(self.client.device_hints(self._numa_nodes, whole))
        self._pod_hints[uid] = (answer, inventory, hints)
        return hints

    # -- Synchronize -----------------------------------------------------------------

    async def prime(self, pods: Iterable[PodFacts]) -> None:
        """Fill the cache of these pods with one ``List``, waiting at most the deadline
        (a later answer still fills it)."""
        wanted = [
            (p.uid, p.namespace, p.name)
            for p in pods
            if self.wanted(p) and self.client.cached_pod(p.uid) is None
        ]
        if not wanted:
            return
        task = asyncio.get_running_loop().create_task(self.client.prime(wanted))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        await asyncio.wait({task}, timeout=self.client.deadline)

    def synchronized(self, pods: Iterable[PodFacts]) -> None:
        """After Synchronize: the listed containers of every pod kubelet answered for."""
        for pod in pods:
            answer = self.client.cached_pod(pod.uid) if self.wanted(pod) else None
            if answer is not None:
                self._tell(pod.uid, answer)

    def _tell(self, pod_uid: str, answer: PodResources) -> None:
        """The tracker learns the pod's listed containers, and whether kubelet manages the
        pod at pod level: ``PodResources.cpu_ids`` and ``memory`` are filled only for a
        pod that sets pod-level resources (PodLevelResourceManagers, docs/lifecycle.md)."""
        self.tracker.pod_listed(
            pod_uid, answer.container_names(), self._pod_device_hints(pod_uid, answer)
        )
        if answer.cpu_ids or answer.memory:
            self.tracker.pod_level_reported(pod_uid)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


# How often, at most, the served socket's pod index is rebuilt when a pod is not in it:
# an answer asks for every container at once, and a pod the tracker does not know
# (one kubelet lists, not created through the runtime yet) must not rebuild it each time.
_REINDEX_S = 0.2


class TrackerMemory:
    """The served socket's memory: the tracker's books (a ``MemoryProvider``).

    Per container, the blocks of its entry in the state (keyed by pod UID there;
    the tracker's pod records give name and namespace); the node's allocatable
    memory as kubelet's static policy reports it (``GetAllocatableMemory``); the
    pods the tracker knows, with the containers kubelet lists for them.
    """

    def __init__(self, tracker: NodeTracker) -> None:
        self._tracker = tracker
        self._index: dict[tuple[str, str], str] = {}
        self._indexed: tuple[int, int, float] = (0, -1, 0.0)

    def memory_blocks(
        self, namespace: str, pod_name: str, container_name: str
    ) -> Sequence[MemoryBlock]:
        uid = self._uid(namespace, pod_name)
        if uid is None:
            return ()
        blocks = self._tracker.manager.state.blocks(uid, container_name) or ()
        return tuple(MemoryBlock(b.type, b.size, tuple(b.numa_affinity)) for b in blocks)

    def allocatable_memory(self) -> Sequence[MemoryBlock]:
        """One block per NUMA node and type whose allocatable is not zero."""
        machine = self._tracker.manager.state.machine
        return tuple(
            MemoryBlock(memory_type, table.allocatable, (node_id,))
            for node_id, node in sorted(machine.items())
            for memory_type, table in sorted(node.memory_map.items())
            if table.allocatable
        )

    def pods(self) -> Sequence[ProvidedPod]:
        return tuple(
            ProvidedPod(record.namespace, record.name, listed_containers(record))
            for record in self._tracker.pods.values()
            if record.name
        )

    def _uid(self, namespace: str, name: str) -> str | None:
        pods = self._tracker.pods
        uid = self._index.get((namespace, name))
        record = pods.get(uid) if uid is not None else None
        if record is not None and (record.namespace, record.name) == (namespace, name):
            return uid
        now = time.monotonic()
        shape = (id(pods), len(pods))
        if shape != self._indexed[:2] or now - self._indexed[2] >= _REINDEX_S:
            # the latest pod of a name wins (a pod re-created under a new UID)
            self._index = {(r.namespace, r.name): r.uid for r in pods.values() if r.name}
            self._indexed = (*shape, now)
            return self._index.get((namespace, name))
        return None


def listed_containers(record: PodRecord) -> tuple[str, ...]:
    """The pod's containers as kubelet lists them: sidecars and app containers.

    kubelet's own listing when it gave one (in creation order, sidecars first as
    kubelet creates them, then those not created yet); otherwise the containers
    created so far that are not known to be regular init containers.
    """
    created = sorted(record.first_created, key=record.first_created.__getitem__)
    if record.listed is not None:
        known = [n for n in created if n in record.listed]
        return (*known, *sorted(record.listed.difference(created)))
    out = []
    for name in created:
        kind = record.classify(name)
        if kind is None or kind[0] != INIT:
            out.append(name)
    return tuple(out)

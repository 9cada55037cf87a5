"""The NRI front end: NRI events in, tracker events out, adjustments back.

``MemoryPlugin`` is a handler object for :class:`nri_plugin.nri.stub.Stub`
(the transport): its methods are named after the NRI events it handles and it
contains no transport code and no bookkeeping rule. Each method translates the
NRI message into the tracker's facts (:mod:`.nri_convert`), hands it to the
:class:`~nri_plugin.tracker.tracker.NodeTracker`, and turns the answer into an
NRI adjustment, container update or error.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any

import structlog

from nri_plugin.engine.manager import MemoryManager
from nri_plugin.engine.topologymanager import SCOPE_POD
from nri_plugin.frontends.exits import ExitCodes
from nri_plugin.frontends.kubelet import KubeletResources
from nri_plugin.frontends.nri_convert import container_facts, pod_facts, update_resources
from nri_plugin.frontends.podcgroup import PodCgroups
from nri_plugin.nri.connection import RpcError
from nri_plugin.nri.gen import nri_pb2 as api
from nri_plugin.nri.ttrpc import Code
from nri_plugin.tracker.facts import ContainerFacts, PodFacts, SandboxFacts
from nri_plugin.tracker.messages import REFUSAL_PREFIX
from nri_plugin.tracker.tracker import NodeTracker, Observer, Refused


class AdmissionRefused(RpcError):
    """A refusal; the text starts with ``TopologyAffinityError:``.

    An RpcError so the transport answers it as the routine refusal it is
    (status UNKNOWN, as a Go plugin's plain error), without a traceback.
    containerd fails the CreateContainer (or UpdateContainerResources) with it.
    """

    def __init__(self, message: str) -> None:
        super().__init__(Code.UNKNOWN, message)

    def __str__(self) -> str:
        return self.message


class MemoryPlugin:
    """NRI handler: pins Guaranteed containers' memory with ``cpuset.mems``."""

    def __init__(
        self,
        manager: MemoryManager,
        *,
        persist: Callable[[], None] | None = None,
        observer: Observer | None = None,
        logger: Any = None,
        tracker: NodeTracker | None = None,
        pod_cgroups: PodCgroups | None = None,
        exit_codes: ExitCodes | None = None,
        kubelet: KubeletResources | None = None,
    ) -> None:
        self._log = logger if logger is not None else structlog.get_logger("plugin")
        self.tracker = tracker or NodeTracker(
            manager, persist=persist, observer=observer, logger=self._log
        )
        self.manager = self.tracker.manager
        # pod scope sizes a pod's hugepages from its cgroup: read once per pod
        self._pod_cgroups = (
            pod_cgroups if self.manager.config.topology_manager_scope == SCOPE_POD else None
        )
        self._hugepages: dict[str, dict[str, int] | None] = {}
        self._exit_codes = exit_codes
        # kubelet's pod-resources API: device hints, exact init containers
        self._kubelet = kubelet

    @property
    def synchronized(self) -> bool:
        return self.tracker.synchronized

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
        self.tracker.disconnected()
        self._log.warning("runtime connection lost")

    def synchronize(
        self, pods: Sequence[api.PodSandbox], containers: Sequence[api.Container]
    ) -> list[api.ContainerUpdate] | Awaitable[list[api.ContainerUpdate]]:
        """The runtime's view; with kubelet's pod-resources API, after one ``List`` filled
        its cache (waited for at most the client's deadline)."""
        if self._kubelet is None:
            return self._synchronize(pods, containers)
        return self._synchronize_after_list(pods, containers)

    async def _synchronize_after_list(
        self, pods: Sequence[api.PodSandbox], containers: Sequence[api.Container]
    ) -> list[api.ContainerUpdate]:
        assert self._kubelet is not None
        await self._kubelet.prime(pod_facts(p) for p in pods)
        return self._synchronize(pods, containers)

    def _synchronize(
        self, pods: Sequence[api.PodSandbox], containers: Sequence[api.Container]
    ) -> list[api.ContainerUpdate]:
        by_sandbox = {p.id: p for p in pods}
        listed = []
        for c in containers:
            sandbox = by_sandbox.get(c.pod_sandbox_id)
            if sandbox is not None:
                facts = pod_facts(sandbox, None, c), container_facts(sandbox, c)
                if self._kubelet is not None:
                    facts = facts[0], self._kubelet.facts(*facts)
                listed.append(facts)
        pod_list = [self._pod(p) for p in pods]
        updates = self.tracker.synchronize(pod_list, listed)
        if self._kubelet is not None:
            self._kubelet.synchronized(pod_list)
        return [_update_mems(cid, mems) for cid, mems in updates]

    def run_pod_sandbox(self, pod: api.PodSandbox) -> None:
        facts = self._pod(pod)
        self.tracker.run_pod_sandbox(facts)
        if self._kubelet is not None:
            self._kubelet.sandbox_started(facts)

    def stop_pod_sandbox(self, pod: api.PodSandbox) -> None:
        self.tracker.stop_pod_sandbox(pod_facts(pod))

    def remove_pod_sandbox(self, pod: api.PodSandbox) -> None:
        self._hugepages.pop(pod.uid, None)
        facts = pod_facts(pod)
        self.tracker.remove_pod_sandbox(facts)
        if self._kubelet is not None:
            self._kubelet.sandbox_removed(facts)

    # -- pod ends the runtime does not announce (frontends/relist.py) ----------------------

    def unannounced_pods(self) -> dict[str, str]:
        return self.tracker.unannounced_pods()

    def pod_sandboxes_listed(
        self, asked: Mapping[str, str], listed: Iterable[SandboxFacts]
    ) -> list[str]:
        """The runtime's CRI listing: the tracker releases, the pods found gone are
        forgotten here too, as at their RemovePodSandbox."""
        released = self.tracker.pod_sandboxes_listed(asked, listed)
        for uid in released:
            if uid not in self.tracker.pods:
                self._hugepages.pop(uid, None)
                if self._kubelet is not None:
                    self._kubelet.pod_gone(uid)
        return released

    def create_container(
        self, pod: api.PodSandbox, container: api.Container
    ) -> (
        api.ContainerAdjustment
        | api.CreateContainerResponse
        | Awaitable[api.ContainerAdjustment | api.CreateContainerResponse | None]
        | None
    ):
        """Admit the container: its adjustment at once, or an awaitable of it, which the
        stub awaits, when facts must be asked first: exit codes of the runtime (see
        :mod:`.exits`) and kubelet's answer for the pod (see :mod:`.kubelet`), together,
        each within its deadline (100 ms). With updates of the pod's other containers (a
        pod found to set pod-level resources), a whole CreateContainerResponse.
        """
        facts = self._pod(pod, container), container_facts(pod, container)
        waits: list[Awaitable[object]] = []
        if self._exit_codes is not None:
            unknown = self.tracker.exit_candidates(facts[0].uid, facts[1].name)
            if unknown:
                waits.append(self._note_exit_codes(facts[0].uid, unknown))
        if self._kubelet is not None:
            lookup = self._kubelet.lookup(*facts)
            if lookup is not None:
                waits.append(lookup)
        if waits:
            return self._create_after(facts, waits)
        return self._create(facts)

    async def _note_exit_codes(self, pod_uid: str, unknown: list[str]) -> None:
        assert self._exit_codes is not None
        for cid, code in (await self._exit_codes.of(unknown)).items():
            self.tracker.exit_code(pod_uid, cid, code)

    async def _create_after(
        self, facts: tuple[PodFacts, ContainerFacts], waits: Sequence[Awaitable[object]]
    ) -> api.ContainerAdjustment | api.CreateContainerResponse | None:
        if len(waits) == 1:
            await waits[0]  # no task to schedule for the common case
        else:
            await asyncio.gather(*waits)
        return self._create(facts)

    def _create(
        self, facts: tuple[PodFacts, ContainerFacts]
    ) -> api.ContainerAdjustment | api.CreateContainerResponse | None:
        if self._kubelet is not None:
            facts = facts[0], self._kubelet.facts(*facts)
        try:
            mems = self.tracker.create_container(*facts)
        except Refused as exc:
            raise AdmissionRefused(exc.message) from None
        adjust = None
        if mems is not None:
            adjust = _adjust_mems(mems)
            adjust.annotations.update(self.tracker.annotations(facts[0].uid, facts[1].name))
        others = self.tracker.take_updates()
        if not others:
            return adjust
        # the pod's other containers, unpinned or re-pinned (a pod found to set pod-level
        # resources): containerd applies them with this creation
        response = api.CreateContainerResponse(update=[_update_mems(c, m) for c, m in others])
        if adjust is not None:
            response.adjust.CopyFrom(adjust)
        return response

    def start_container(self, pod: api.PodSandbox, container: api.Container) -> None:
        self.tracker.start_container(
            pod_facts(pod, None, container), container_facts(pod, container)
        )

    def update_container(
        self, pod: api.PodSandbox, container: api.Container, linux_resources: api.LinuxResources
    ) -> list[api.ContainerUpdate]:
        """A resize (or the CPU manager's cpuset update): our cpuset.mems is kept."""
        new = update_resources(linux_resources)
        if new is None:
            self._log.error("update with unreadable resources passed on", container=container.id)
            return []
        try:
            mems = self.tracker.update_container(*_facts(pod, container), new)
        except Refused as exc:
            raise AdmissionRefused(exc.message) from None
        return [] if mems is None else [_update_mems(container.id, mems)]

    def post_update_container(self, pod: api.PodSandbox, container: api.Container) -> None:
        self.tracker.post_update_container(
            pod_facts(pod, None, container), container_facts(pod, container)
        )

    def stop_container(
        self, pod: api.PodSandbox, container: api.Container
    ) -> list[api.ContainerUpdate]:
        self.tracker.stop_container(
            pod_facts(pod, None, container), container_facts(pod, container)
        )
        return [_update_mems(c, m) for c, m in self.tracker.take_updates()]

    def remove_container(self, pod: api.PodSandbox, container: api.Container) -> None:
        self.tracker.remove_container(
            pod_facts(pod, None, container), container_facts(pod, container)
        )

    def _pod(self, pod: api.PodSandbox, container: api.Container | None = None) -> PodFacts:
        """The pod's facts, with its cgroup's hugepage limits where pod scope needs them."""
        hugepages = None
        if self._pod_cgroups is not None and pod.HasField("linux"):
            if pod.uid not in self._hugepages:
                self._hugepages[pod.uid] = self._pod_cgroups.hugepage_limits(
                    pod.linux.cgroup_parent
                )
            hugepages = self._hugepages[pod.uid]
        return pod_facts(pod, hugepages, container)


def _facts(pod: api.PodSandbox, container: api.Container) -> tuple[PodFacts, ContainerFacts]:
    return pod_facts(pod, None, container), container_facts(pod, container)


def _adjust_mems(mems: str) -> api.ContainerAdjustment:
    adjust = api.ContainerAdjustment()
    adjust.linux.resources.cpu.mems = mems
    return adjust


def _update_mems(container_id: str, mems: str) -> api.ContainerUpdate:
    update = api.ContainerUpdate(container_id=container_id)
    update.linux.resources.cpu.mems = mems
    return update


__all__ = ["REFUSAL_PREFIX", "AdmissionRefused", "MemoryPlugin"]

"""The NRI front end: NRI events in, tracker events out, adjustments back.

``MemoryPlugin`` is a handler object for :class:`nri_plugin.nri.stub.Stub`
(the transport): its methods are named after the NRI events it handles and it
contains no transport code and no bookkeeping rule. Each method translates the
NRI message into the tracker's facts (:mod:`.nri_convert`), hands it to the
:class:`~nri_plugin.tracker.tracker.NodeTracker`, and turns the answer into an
NRI adjustment, container update or error.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import structlog

from nri_plugin.engine.manager import MemoryManager
from nri_plugin.engine.topologymanager import SCOPE_POD
from nri_plugin.frontends.exits import ExitCodes
from nri_plugin.frontends.nri_convert import container_facts, pod_facts, update_resources
from nri_plugin.frontends.podcgroup import PodCgroups
from nri_plugin.nri.connection import RpcError
from nri_plugin.nri.gen import nri_pb2 as api
from nri_plugin.nri.ttrpc import Code
from nri_plugin.tracker.facts import ContainerFacts, PodFacts
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
    ) -> list[api.ContainerUpdate]:
        by_sandbox = {p.id: p for p in pods}
        listed = []
        for c in containers:
            sandbox = by_sandbox.get(c.pod_sandbox_id)
            if sandbox is not None:
                listed.append((pod_facts(sandbox, None, c), container_facts(sandbox, c)))
        updates = self.tracker.synchronize([self._pod(p) for p in pods], listed)
        return [_update_mems(cid, mems) for cid, mems in updates]

    def run_pod_sandbox(self, pod: api.PodSandbox) -> None:
        self.tracker.run_pod_sandbox(self._pod(pod))

    def stop_pod_sandbox(self, pod: api.PodSandbox) -> None:
        self.tracker.stop_pod_sandbox(pod_facts(pod))

    def remove_pod_sandbox(self, pod: api.PodSandbox) -> None:
        self._hugepages.pop(pod.uid, None)
        self.tracker.remove_pod_sandbox(pod_facts(pod))

    def create_container(
        self, pod: api.PodSandbox, container: api.Container
    ) -> api.ContainerAdjustment | Awaitable[api.ContainerAdjustment | None] | None:
        """Admit the container: its adjustment at once, or (when exit codes must be asked
        of the runtime first, see :mod:`.exits`) an awaitable of it, which the stub awaits.
        """
        facts = self._pod(pod, container), container_facts(pod, container)
        if self._exit_codes is not None:
            unknown = self.tracker.exit_candidates(facts[0].uid, facts[1].name)
            if unknown:
                return self._create_after_exits(facts, unknown)
        return self._create(facts)

    async def _create_after_exits(
        self, facts: tuple[PodFacts, ContainerFacts], unknown: list[str]
    ) -> api.ContainerAdjustment | None:
        assert self._exit_codes is not None
        for cid, code in (await self._exit_codes.of(unknown)).items():
            self.tracker.exit_code(facts[0].uid, cid, code)
        return self._create(facts)

    def _create(self, facts: tuple[PodFacts, ContainerFacts]) -> api.ContainerAdjustment | None:
        try:
            mems = self.tracker.create_container(*facts)
        except Refused as exc:
            raise AdmissionRefused(exc.message) from None
        if mems is None:
            return None
        adjust = _adjust_mems(mems)
        adjust.annotations.update(self.tracker.annotations(facts[0].uid, facts[1].name))
        return adjust

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
        return []

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

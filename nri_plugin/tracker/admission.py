"""Placing a container on the node, and resizing it: the tracker's admission rules.

A container is admitted when it is created (kubelet admits a whole pod; the
runtime shows one container at a time): a finished init container's memory may
be lent to a name's first creation, a restart keeps its name's blocks (new
limits are a resize on its nodes), pod scope places every container on the
affinity merged once for the pod (docs/lifecycle.md, "Pod scope"). An in-place
resize follows the engine's rules (docs/simulate.md, the ``resize`` step).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from fractions import Fraction

from nri_plugin.engine.hint import DeviceHints, ProviderHints, TopologyHint
from nri_plugin.engine.manager import AdmissionResult, ContainerDecision
from nri_plugin.engine.pod import GUARANTEED, ContainerSpec, PodSpec
from nri_plugin.engine.state import MEMORY, Block
from nri_plugin.engine.topologymanager import (
    SCOPE_POD,
    TOPOLOGY_AFFINITY_ERROR,
    TOPOLOGY_AFFINITY_MESSAGE,
)
from nri_plugin.tracker import messages
from nri_plugin.tracker.core import Refused
from nri_plugin.tracker.facts import ContainerResources
from nri_plugin.tracker.podlevel import PodLevelPods, looks_exclusive
from nri_plugin.tracker.records import ContainerRecord, PodRecord

# the reason of a Rejection that is a refused resize
REJECTED_RESIZE = "resize"


@dataclass(frozen=True)
class Rejection:
    """Why a container cannot be placed: its refusal text (what the runtime's call fails
    with), kubelet's reason, and the hints and merged affinity that failed. A refused
    resize of a restarted container (new limits that do not fit its nodes) is one too,
    with reason ``resize`` and no hints."""

    message: str
    reason: str
    hints: dict[str, ProviderHints] | None = None
    affinity: TopologyHint | None = None

    @property
    def resize(self) -> bool:
        return self.reason == REJECTED_RESIZE


class Admissions(PodLevelPods):
    """Admission and resize, on the tracker's state."""

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
    ) -> ContainerDecision | Rejection:
        """Admit one container: where it goes, or why it cannot."""
        outcome = self._decide(record, name, resources, lenders, device_hints)
        if isinstance(outcome, AdmissionResult):
            return Rejection(
                self._refusal(record, name, resources, outcome),
                outcome.reason or "",
                outcome.failed_hints,
                outcome.failed_affinity,
            )
        return outcome

    def _decide(
        self,
        record: PodRecord,
        name: str,
        resources: ContainerResources,
        lenders: Sequence[tuple[ContainerRecord, str]],
        device_hints: DeviceHints | None,
    ) -> ContainerDecision | AdmissionResult | Rejection:
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
            if block_sizes(blocks) != resources.memory:
                result = manager.resize(uid, name, spec)
                self._observer.resize(resized=result.resized)
                if not result.resized:
                    return Rejection(
                        messages.resize_refusal(
                            manager, record.ref, name, resources.memory, result.reason or ""
                        ),
                        REJECTED_RESIZE,
                    )
                self._log.info(
                    "resized", pod=record.ref, pod_uid=uid, container=name,
                    cause="re-created with new limits", blocks=blocks_json(result.allocations),
                )  # fmt: skip
            existing = manager.readmit(pod, spec)
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
        if blocks is None or block_sizes(blocks) == resources.memory:
            return False
        record.resized = True
        before = blocks_json(blocks)
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
            blocks_before=before, blocks=blocks_json(result.allocations),
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


def block_sizes(blocks: Iterable[Block]) -> dict[str, int]:
    """A container's blocks as its memory limits read (type -> bytes, zeros left out)."""
    return {b.type: b.size for b in blocks if b.size}


def blocks_json(blocks: Iterable[Block]) -> list[dict[str, object]]:
    return [messages.block_json(b) for b in blocks]

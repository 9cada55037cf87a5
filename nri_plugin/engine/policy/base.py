"""The verbs a memory-manager policy offers (kubelet's ``memorymanager.Policy``).

The manager (:mod:`nri_plugin.engine.manager`) uses only these; kubelet's
interface has ``Start``, ``Allocate``, ``RemoveContainer``, ``GetTopologyHints``
and ``GetPodTopologyHints``. Ours adds what a plugin following kubelet from
outside needs: hints focused on what the merge can pick, adoption of a
container found pinned after a lost checkpoint, and in-place resize.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Protocol

from nri_plugin.engine.hint import ProviderHints, TopologyHint
from nri_plugin.engine.pod import ContainerSpec, PodSpec
from nri_plugin.engine.policy.resize import ResizeRefusal
from nri_plugin.engine.state import Block, MemoryState
from nri_plugin.engine.topologymanager import MergeFocus

# (the hints reported, the hints handed to the merge): the merge picks the same hint
# from both; the second may be shorter (docs/design/bounded-search.md)
FocusedHints = tuple[ProviderHints, ProviderHints]


class AllocationError(Exception):
    """Allocate could not place a container; kubelet reports UnexpectedAdmissionError."""


class EmptyPodSharedPoolError(Exception):
    """AllocatePod refused a pod whose exclusive requests leave its shared pool empty
    (KEP-5526); kubelet reports reason ``EmptyPodSharedPoolError``."""


class Policy(Protocol):
    """A memory manager policy. Pure: every effect goes through the state argument."""

    name: str

    def default_state(self) -> MemoryState:
        """The state with nothing allocated."""

    def start(self, state: MemoryState) -> None:
        """Validate a restored state (or install the default one)."""

    def container_hints(
        self, state: MemoryState, pod: PodSpec, container: ContainerSpec
    ) -> ProviderHints:
        """Hints for one container (topology manager scope ``container``)."""

    def pod_hints(self, state: MemoryState, pod: PodSpec) -> ProviderHints:
        """Hints for the whole pod (topology manager scope ``pod``)."""

    def focused_container_hints(
        self, state: MemoryState, pod: PodSpec, container: ContainerSpec, focus: MergeFocus
    ) -> FocusedHints:
        """One container's hints, and those the merge with ``focus`` needs."""

    def focused_pod_hints(
        self, state: MemoryState, pod: PodSpec, focus: MergeFocus
    ) -> FocusedHints:
        """The pod's hints, and those the merge with ``focus`` needs."""

    def allocate(
        self, state: MemoryState, pod: PodSpec, container: ContainerSpec, affinity: TopologyHint
    ) -> None:
        """Give the container its blocks on ``affinity``; raise AllocationError if impossible."""

    def allocate_pod(self, state: MemoryState, pod: PodSpec, affinity: TopologyHint) -> None:
        """Reserve a pod-level pod's whole budget on ``affinity`` and carve its containers
        (KEP-5526, pod scope); raise EmptyPodSharedPoolError or AllocationError."""

    def carve(
        self, state: MemoryState, pod_uid: str, container: str, requested: Mapping[str, int]
    ) -> str | None:
        """Give a container its exclusive part of its pod's reservation; why not, or None."""

    def release_pod(self, state: MemoryState, pod_uid: str) -> bool:
        """Give back a pod-level reservation and its containers' blocks; True if it had one."""

    def adopt(self, state: MemoryState, pod: PodSpec, container: ContainerSpec, mask: int) -> None:
        """Record blocks on exactly ``mask`` for a container found running pinned there."""

    def resize(
        self, state: MemoryState, pod_uid: str, container: str, requested: Mapping[str, int]
    ) -> ResizeRefusal | None:
        """Give a container that holds blocks its new size, or say why not (state unchanged)."""

    def remove_container(self, state: MemoryState, pod_uid: str, container: str) -> bool:
        """Release a container's blocks; True when it had any."""

    def lend(self, pod_uid: str, blocks: Iterable[Block]) -> None:
        """Make ``blocks`` (finished init containers') reusable by the pod's next containers."""

    def forget_pod(self, pod_uid: str) -> None:
        """Drop in-memory bookkeeping of a pod that is gone."""

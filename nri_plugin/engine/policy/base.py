"""The verbs a memory-manager policy offers (kubelet's memorymanager.Policy)."""

from __future__ import annotations

from typing import Protocol

from nri_plugin.engine.hint import ProviderHints, TopologyHint
from nri_plugin.engine.pod import ContainerSpec, PodSpec
from nri_plugin.engine.state import MemoryState


class AllocationError(Exception):
    """Allocate could not place a container; kubelet reports UnexpectedAdmissionError."""


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

    def allocate(
        self, state: MemoryState, pod: PodSpec, container: ContainerSpec, affinity: TopologyHint
    ) -> None:
        """Give the container its blocks on ``affinity``; raise AllocationError if impossible."""

    def remove_container(self, state: MemoryState, pod_uid: str, container: str) -> bool:
        """Release a container's blocks; True when it had any."""

    def forget_pod(self, pod_uid: str) -> None:
        """Drop in-memory bookkeeping of a pod that is gone."""

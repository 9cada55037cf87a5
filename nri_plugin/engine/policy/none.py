"""kubelet's Memory Manager ``None`` policy: no hints, no allocation, nothing pinned."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from nri_plugin.engine.hint import ProviderHints, TopologyHint
from nri_plugin.engine.pod import ContainerSpec, PodSpec
from nri_plugin.engine.policy.base import FocusedHints
from nri_plugin.engine.policy.resize import ResizeRefusal
from nri_plugin.engine.state import POLICY_NONE, Block, MemoryState
from nri_plugin.engine.topologymanager import MergeFocus


class NonePolicy:
    name = POLICY_NONE

    def default_state(self) -> MemoryState:
        return MemoryState(POLICY_NONE)

    def start(self, state: MemoryState) -> None:
        return None

    def container_hints(
        self, state: MemoryState, pod: PodSpec, container: ContainerSpec
    ) -> ProviderHints:
        return None

    def pod_hints(self, state: MemoryState, pod: PodSpec) -> ProviderHints:
        return None

    def focused_container_hints(
        self, state: MemoryState, pod: PodSpec, container: ContainerSpec, focus: MergeFocus
    ) -> FocusedHints:
        return None, None

    def focused_pod_hints(
        self, state: MemoryState, pod: PodSpec, focus: MergeFocus
    ) -> FocusedHints:
        return None, None

    def allocate(
        self, state: MemoryState, pod: PodSpec, container: ContainerSpec, affinity: TopologyHint
    ) -> None:
        return None

    def allocate_pod(self, state: MemoryState, pod: PodSpec, affinity: TopologyHint) -> None:
        return None

    def carve(
        self, state: MemoryState, pod_uid: str, container: str, requested: Mapping[str, int]
    ) -> str | None:
        return None

    def release_pod(self, state: MemoryState, pod_uid: str) -> bool:
        return False

    def adopt(self, state: MemoryState, pod: PodSpec, container: ContainerSpec, mask: int) -> None:
        return None

    def resize(
        self, state: MemoryState, pod_uid: str, container: str, requested: Mapping[str, int]
    ) -> ResizeRefusal | None:
        return None

    def remove_container(self, state: MemoryState, pod_uid: str, container: str) -> bool:
        return False

    def lend(self, pod_uid: str, blocks: Iterable[Block]) -> None:
        return None

    def forget_pod(self, pod_uid: str) -> None:
        return None

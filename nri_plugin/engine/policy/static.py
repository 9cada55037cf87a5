"""kubelet's Memory Manager ``Static`` policy: hints, allocation, reuse, release.

Every rule here follows kubelet's ``pkg/kubelet/cm/memorymanager/policy_static.go``
(KEP-1769); comments name the kubelet function a part mirrors. The policy is pure: it
mutates only the :class:`MemoryState` it is handed, plus its in-memory
bookkeeping of reusable init-container memory (which kubelet does not
checkpoint either).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from nri_plugin.engine.bitmask import is_narrower, mask_of, nodes_of
from nri_plugin.engine.hint import ProviderHints, TopologyHint, topology_hint
from nri_plugin.engine.pod import (
    GUARANTEED,
    ContainerSpec,
    PodSpec,
    empty_pod_shared_pool,
    exclusive_memory_requests,
    pod_level_memory_budget,
    pod_memory_requests,
)
from nri_plugin.engine.policy.accounting import release, take
from nri_plugin.engine.policy.base import AllocationError, EmptyPodSharedPoolError
from nri_plugin.engine.policy.bounded import (
    _bounded_default,
    _bounded_extension,
    _bounded_masks,
    _BoundedSearch,
)
from nri_plugin.engine.policy.exhaustive import _exhaustive_masks
from nri_plugin.engine.policy.resize import ResizeRefusal, resize_blocks
from nri_plugin.engine.state import (
    POLICY_STATIC,
    Block,
    MemoryState,
    NodeState,
    shared_block,
    sort_blocks,
)
from nri_plugin.engine.topologymanager import MergeFocus

# Up to this many NUMA nodes (kubelet's default max-allowable-numa-nodes) every
# subset is visited and reported, exactly as kubelet does. Above it (reachable when
# max-allowable-numa-nodes is raised, or with the topology manager policy `none`)
# a bounded search finds the hints that decide the outcome instead: at 12 nodes
# kubelet's way takes seconds for one container (the merge crosses every list).
EXHAUSTIVE_NODE_LIMIT = 8
# Longer exhaustive lists are not merged as they are: the merge is handed the few
# hints the bounded search finds decisive (the same outcome, see _focused_hints).
FULL_MERGE_HINTS = 16

# pod uid -> mask -> memory type -> bytes that later containers of the pod may reuse
ReusableMemory = dict[str, dict[int, dict[str, int]]]


class StaticPolicy:
    """The ``Static`` policy over one machine state."""

    name = POLICY_STATIC

    def __init__(
        self, default_machine: Mapping[int, NodeState], *, pod_level_managers: bool = False
    ) -> None:
        # the state of the machine with nothing allocated (kubelet's getDefaultMachineState)
        self._default_machine = {k: v for k, v in sorted(default_machine.items())}
        self._reusable: ReusableMemory = {}
        # PodLevelResourceManagers (KEP-5526): pods with pod-level resources are managed
        # (config podLevelResources: managers), else left unpinned (kubelet's default)
        self.pod_level_managers = pod_level_managers

    def _handled(self, pod: PodSpec) -> bool:
        """kubelet's early returns: only Guaranteed pods, and pods with pod-level resources
        only with PodLevelResourceManagers (``IsPodLevelResourcesSet``)."""
        if pod.qos() != GUARANTEED:
            return False
        return self.pod_level_managers or not pod.pod_level_resources

    def _requests(self, pod: PodSpec, container: ContainerSpec) -> dict[str, int]:
        """The container's own memory requests (none for a pod-level pod's container that
        is not individually Guaranteed)."""
        return exclusive_memory_requests(pod, container)

    # -- start -------------------------------------------------------------

    def default_state(self) -> MemoryState:
        from copy import deepcopy

        return MemoryState(POLICY_STATIC, deepcopy(self._default_machine), {})

    def start(self, state: MemoryState) -> None:
        """Install the default machine state into an empty state (kubelet's validateState)."""
        if not state.machine:
            if state.entries:
                from nri_plugin.errors import StateError

                raise StateError(
                    "[memorymanager] machine state can not be empty when it has memory assignments"
                )
            state.machine = self.default_state().machine

    # -- hints (kubelet's GetTopologyHints, GetPodTopologyHints) -------------

    def container_hints(
        self, state: MemoryState, pod: PodSpec, container: ContainerSpec
    ) -> ProviderHints:
        return self.focused_container_hints(state, pod, container, None)[0]

    def pod_hints(self, state: MemoryState, pod: PodSpec) -> ProviderHints:
        return self.focused_pod_hints(state, pod, None)[0]

    def focused_container_hints(
        self, state: MemoryState, pod: PodSpec, container: ContainerSpec, focus: MergeFocus | None
    ) -> tuple[ProviderHints, ProviderHints]:
        """(the hints reported, the hints to merge) for one container; see _focused_hints."""
        if not self._handled(pod):
            return None, None
        requested = self._requests(pod, container)
        blocks = state.blocks(pod.uid, container.name)
        if blocks is not None:
            regenerated = _regenerate_hints(blocks, requested)
            return regenerated, regenerated
        return self._focused_hints(state.machine, pod.uid, requested, focus)

    def focused_pod_hints(
        self, state: MemoryState, pod: PodSpec, focus: MergeFocus | None
    ) -> tuple[ProviderHints, ProviderHints]:
        """(the hints reported, the hints to merge) for the whole pod; see _focused_hints."""
        if not self._handled(pod):
            return None, None
        if pod.pod_level_resources:
            return self._pod_level_hints(state, pod, focus)
        requested = pod_memory_requests(pod)
        for c in pod.all_containers():
            blocks = state.blocks(pod.uid, c.name)
            if blocks is not None:
                regenerated = _regenerate_hints(blocks, requested)
                return regenerated, regenerated
        return self._focused_hints(state.machine, pod.uid, requested, focus)

    def _pod_level_hints(
        self, state: MemoryState, pod: PodSpec, focus: MergeFocus | None
    ) -> tuple[ProviderHints, ProviderHints]:
        """GetPodTopologyHints with PodLevelResourceManagers: one hint for the budget.

        A pod whose exclusive requests leave its shared pool empty gets an empty list per
        type (no placement can satisfy it), as kubelet answers to make the topology
        manager refuse it.
        """
        budget = pod_level_memory_budget(pod)
        if empty_pod_shared_pool(pod) is not None:
            empty: ProviderHints = {t: [] for t in budget}
            return empty, empty
        if not budget:
            return None, None
        held = state.pod_blocks(pod.uid)
        if held is not None:
            regenerated = _regenerate_hints(held, budget)
            return regenerated, regenerated
        return self._focused_hints(state.machine, pod.uid, budget, focus)

    def _focused_hints(
        self,
        machine: Mapping[int, NodeState],
        pod_uid: str,
        requested: Mapping[str, int],
        focus: MergeFocus | None,
    ) -> tuple[ProviderHints, ProviderHints]:
        """The reported hints (kubelet's full list up to EXHAUSTIVE_NODE_LIMIT nodes), and a
        list the merge picks the same hint from: a long list merged with itself once per
        memory type costs O(hints^types), 8 ms at 8 nodes and 2 s at 12."""
        reported: ProviderHints = dict(self.calculate_hints(machine, pod_uid, requested, focus))
        if focus is None or len(machine) > EXHAUSTIVE_NODE_LIMIT:
            return reported, reported
        listed = next(iter(reported.values()), None) if reported else None
        if listed is None or len(listed) <= FULL_MERGE_HINTS:
            return reported, reported
        search = _BoundedSearch(
            machine, sorted(machine), requested, self._reusable.get(pod_uid, {})
        )
        masks = search.decisive(focus)
        if masks is None or search.min_size is None:
            return reported, reported  # out of budget: merging the full list is still possible
        return reported, dict(_hint_lists(masks, search.min_size, requested))

    def calculate_hints(
        self,
        machine: Mapping[int, NodeState],
        pod_uid: str,
        requested: Mapping[str, int],
        focus: MergeFocus | None = None,
    ) -> dict[str, list[TopologyHint]]:
        """kubelet's calculateHints: every admissible mask, preferred iff of minimal width.

        Above EXHAUSTIVE_NODE_LIMIT nodes only the masks that decide the
        outcome: those the merge with ``focus`` (the other providers' hints)
        picks from, or without it the narrowest ones.
        """
        if not requested:
            return {}
        ids = sorted(machine)
        reusable = self._reusable.get(pod_uid, {})
        if len(ids) <= EXHAUSTIVE_NODE_LIMIT:
            masks, min_size = _exhaustive_masks(machine, ids, requested, reusable)
        else:
            masks, min_size = _bounded_masks(machine, ids, requested, reusable, focus)
        return _hint_lists(masks, min_size, requested)

    # -- allocate (kubelet's staticPolicy.Allocate) --------------------------

    def allocate(
        self, state: MemoryState, pod: PodSpec, container: ContainerSpec, affinity: TopologyHint
    ) -> None:
        if not self._handled(pod) or state.carved(pod.uid):
            return  # a pod-level reservation already gave every container its part
        existing = state.blocks(pod.uid, container.name)
        if existing is not None:
            # already allocated: only refresh the reuse bookkeeping, even if the request changed
            self._update_reusable(pod, container, existing)
            return
        requested = self._requests(pod, container)
        if not requested and pod.pod_level_resources:
            return  # not individually Guaranteed: it runs in the node's shared pool
        machine = state.machine
        best = self._best_hint(machine, pod.uid, requested, affinity)
        mask_nodes = nodes_of(best)
        blocks = []
        reusable = self._reusable.get(pod.uid, {}).get(best, {})
        for type_, size in requested.items():
            blocks.append(shared_block(tuple(mask_nodes), type_, size))
            take(machine, mask_nodes, type_, max(0, size - reusable.get(type_, 0)))
        blocks = sort_blocks(blocks)
        self._update_reusable(pod, container, blocks)
        state.set_blocks(pod.uid, container.name, blocks)
        _shrink_init_blocks(state, pod, container, blocks)

    def allocate_pod(self, state: MemoryState, pod: PodSpec, affinity: TopologyHint) -> None:
        """kubelet's AllocatePod (PodLevelResourceManagers, pod scope): reserve the pod's
        whole budget on one affinity and carve the exclusive containers out of it.

        The budget's blocks go to ``state.pod_entries`` and are taken from the machine;
        each individually Guaranteed container gets blocks of its own requests on the same
        nodes, carved from the budget (the machine does not count them again); every
        other container runs in the pod's shared pool, the rest of the budget, and holds
        no blocks of its own (kubelet writes it the pool's blocks; we keep the pool out
        of ``entries``). Raises :class:`EmptyPodSharedPoolError` or AllocationError.
        """
        if not self._handled(pod) or state.carved(pod.uid):
            return
        budget = pod_level_memory_budget(pod)
        refusal = empty_pod_shared_pool(pod)
        if refusal is not None:
            raise EmptyPodSharedPoolError(refusal)
        if not budget:
            return
        best = self._best_hint(state.machine, pod.uid, budget, affinity)
        mask_nodes = tuple(nodes_of(best))
        for type_, size in budget.items():
            take(state.machine, mask_nodes, type_, size)
        state.set_pod_blocks(
            pod.uid, sort_blocks(Block(mask_nodes, t, size) for t, size in budget.items())
        )
        for c in pod.all_containers():
            requests = exclusive_memory_requests(pod, c)
            if requests:
                blocks = [Block(mask_nodes, t, size) for t, size in requests.items() if size > 0]
                state.set_blocks(pod.uid, c.name, sort_blocks(blocks))

    def carve(
        self, state: MemoryState, pod_uid: str, container: str, requested: Mapping[str, int]
    ) -> str | None:
        """One container's exclusive part of its pod's reservation, for the live plugin,
        which sees the pod's containers one at a time (AllocatePod carves them all at
        once); why it cannot be carved (state unchanged), or None."""
        held = state.pod_blocks(pod_uid)
        if held is None:
            return "the pod has no pod-level reservation"
        budget = {b.type: b.size for b in held}
        taken: dict[str, int] = {}
        for name, blocks in state.entries.get(pod_uid, {}).items():
            if name != container:
                for b in blocks:
                    taken[b.type] = taken.get(b.type, 0) + b.size
        for type_, size in sorted(requested.items()):
            if size == 0:
                continue
            if type_ not in budget:
                return f"{type_} is not part of the pod's pod-level resources"
            if taken.get(type_, 0) + size > budget[type_]:
                return (
                    f"{type_}: {size} more than the {budget[type_] - taken.get(type_, 0)} left"
                    " of the pod's pod-level resources"
                )
        mask = held[0].numa_affinity
        state.set_blocks(
            pod_uid,
            container,
            sort_blocks(Block(mask, t, size) for t, size in requested.items() if size > 0),
        )
        return None

    def release_pod(self, state: MemoryState, pod_uid: str) -> bool:
        """Give a pod-level reservation back to the machine (its last container is gone)."""
        for name in list(state.entries.get(pod_uid, {})):
            state.delete_blocks(pod_uid, name)
        blocks = state.delete_pod_blocks(pod_uid)
        if blocks is None:
            return False
        release(state, blocks)
        return True

    def _best_hint(
        self,
        machine: Mapping[int, NodeState],
        pod_uid: str,
        requested: Mapping[str, int],
        affinity: TopologyHint,
    ) -> int:
        """Allocate's steps 1-6: the default hint for a nil affinity, the extension of one
        that lacks free memory, the single/cross-NUMA rule; the mask to allocate on."""
        best = affinity
        if best.mask is None:
            if len(machine) > EXHAUSTIVE_NODE_LIMIT:
                pod_reusable = self._reusable.get(pod_uid, {})
                default = _bounded_default(machine, requested, pod_reusable) if requested else None
            else:
                default = self._find_best(self.calculate_hints(machine, pod_uid, requested))
            if default is None:
                raise AllocationError(
                    "[memorymanager] failed to get the default NUMA affinity, "
                    "no NUMA nodes with enough memory is available"
                )
            if not default.preferred and best.preferred:
                raise AllocationError("[memorymanager] failed to find the default preferred hint")
            best = default
        assert best.mask is not None
        if not _mask_has_free(machine, best.mask, requested):
            extended = self._extend(machine, pod_uid, requested, best.mask)
            if not extended.preferred and best.preferred:
                raise AllocationError("[memorymanager] failed to find the extended preferred hint")
            best = extended
        assert best.mask is not None
        if _violates_numa_allocations(machine, best.mask):
            raise AllocationError("[memorymanager] preferred hint violates NUMA node allocation")
        return best.mask

    def adopt(self, state: MemoryState, pod: PodSpec, container: ContainerSpec, mask: int) -> None:
        """Record blocks on exactly ``mask`` for a container that already runs pinned there.

        Rebuilding state from the runtime: no hint, no extension, no reuse;
        the bytes are taken node by node as an allocation would take them.
        """
        nodes = [n for n in nodes_of(mask) if n in state.machine]
        if not nodes or state.blocks(pod.uid, container.name) is not None:
            return
        blocks = []
        for type_, size in container.memory_requests().items():
            blocks.append(shared_block(tuple(nodes), type_, size))
            take(state.machine, nodes, type_, size)
        state.set_blocks(pod.uid, container.name, sort_blocks(blocks))

    def _find_best(self, hints: Mapping[str, list[TopologyHint]]) -> TopologyHint | None:
        """kubelet's findBestHint over the ``memory`` list: preferred first, then narrowest."""
        candidates = hints.get("memory")
        if candidates is None:
            # no conventional memory requested: every list is identical, use any
            candidates = next(iter(hints.values()), [])
        return _best_of(candidates)

    def _extend(
        self,
        machine: Mapping[int, NodeState],
        pod_uid: str,
        requested: Mapping[str, int],
        mask: int,
    ) -> TopologyHint:
        if len(machine) > EXHAUSTIVE_NODE_LIMIT:
            reusable = self._reusable.get(pod_uid, {})
            extended = _bounded_extension(machine, requested, reusable, mask)
            if extended is None:
                raise AllocationError(
                    "[memorymanager] failed to find NUMA nodes to extend the current topology hint"
                )
            return extended
        hints = self.calculate_hints(machine, pod_uid, requested)
        lists = hints.get("memory")
        if lists is None:
            lists = next(iter(hints.values()), [])
        containing = [h for h in lists if h.mask is not None and h.mask & mask == mask]
        best = _best_of(containing)
        if best is None:
            raise AllocationError(
                "[memorymanager] failed to find NUMA nodes to extend the current topology hint"
            )
        return best

    # -- in-place resize ---------------------------------------------------------

    def resize(
        self, state: MemoryState, pod_uid: str, container: str, requested: Mapping[str, int]
    ) -> ResizeRefusal | None:
        """A new size on the container's own nodes (see :mod:`.resize`); reuse unchanged."""
        if state.carved(pod_uid) and state.blocks(pod_uid, container) is not None:
            # KEP-5526 leaves in-place resize out; its blocks are the pod budget's
            return ResizeRefusal(
                "the container's blocks are part of its pod's pod-level reservation"
                " (KEP-5526 does not resize them)"
            )
        return resize_blocks(state, pod_uid, container, requested)

    # -- reuse of init-container memory (kubelet's updatePodReusableMemory) ---

    def reusable_memory(self, pod_uid: str) -> dict[int, dict[str, int]]:
        return {m: dict(v) for m, v in self._reusable.get(pod_uid, {}).items()}

    def _update_reusable(
        self, pod: PodSpec, container: ContainerSpec, blocks: Sequence[Block]
    ) -> None:
        for uid in [u for u in self._reusable if u != pod.uid]:
            del self._reusable[uid]
        if container.is_regular_init:
            per_pod = self._reusable.setdefault(pod.uid, {})
            for b in blocks:
                per_mask = per_pod.setdefault(mask_of(b.numa_affinity), {})
                if per_mask.get(b.type, -1) > b.size:
                    continue
                per_mask[b.type] = b.size
            return
        app_pod = self._reusable.get(pod.uid)
        if app_pod is None:
            return
        for b in blocks:
            app_mask = app_pod.get(mask_of(b.numa_affinity))
            if app_mask is None:
                continue
            current = app_mask.get(b.type, 0)
            if current:
                app_mask[b.type] = 0 if b.size >= current else current - b.size

    def lend(self, pod_uid: str, blocks: Iterable[Block]) -> None:
        """The pod's next containers may reuse ``blocks`` (finished init containers' blocks).

        kubelet builds the reusable memory while it admits the whole pod; the plugin,
        which sees the init containers one at a time, hands over what they still hold.
        Their blocks were shrunk as later init containers reused them, so what they hold
        together per mask and type is kubelet's reusable amount (the largest of them).
        """
        reusable: dict[int, dict[str, int]] = {}
        for b in blocks:
            per_mask = reusable.setdefault(mask_of(b.numa_affinity), {})
            per_mask[b.type] = per_mask.get(b.type, 0) + b.size
        self._reusable = {pod_uid: reusable} if reusable else {}

    def forget_pod(self, pod_uid: str) -> None:
        self._reusable.pop(pod_uid, None)

    # -- remove (kubelet's RemoveContainer) ----------------------------------

    def remove_container(self, state: MemoryState, pod_uid: str, container: str) -> bool:
        blocks = state.delete_blocks(pod_uid, container)
        if blocks is None:
            return False
        if not state.carved(pod_uid):
            release(state, blocks)  # carved blocks go back with the pod's reservation
        return True


def _hint_lists(
    masks: Sequence[int], min_size: int, requested: Mapping[str, int]
) -> dict[str, list[TopologyHint]]:
    """One identical list per requested type; preferred iff of the minimal width."""
    hints = [topology_hint(m, m.bit_count() == min_size) for m in masks]
    if not hints:
        return {}
    return {t: list(hints) for t in requested}


def _regenerate_hints(blocks: Sequence[Block], requested: Mapping[str, int]) -> ProviderHints:
    """kubelet's regenerateHints: one preferred hint per stored block, nothing on a mismatch."""
    if len(blocks) != len(requested):
        return None
    hints: dict[str, list[TopologyHint] | None] = {t: [] for t in requested}
    for b in blocks:
        if b.type not in requested or b.size != requested[b.type]:
            return None
        lst = hints[b.type]
        assert lst is not None
        lst.append(topology_hint(mask_of(b.numa_affinity), True))
    return hints


def _best_of(hints: Sequence[TopologyHint]) -> TopologyHint | None:
    """kubelet's findBestHint: preferred first, then narrowest (first wins a tie)."""
    best: TopologyHint | None = None
    best_mask = 0
    for h in hints:
        if h.mask is None:
            continue
        if (
            best is None
            or (h.preferred and not best.preferred)
            or (h.preferred == best.preferred and is_narrower(h.mask, best_mask))
        ):
            best, best_mask = h, h.mask
    return best


def _mask_has_free(
    machine: Mapping[int, NodeState], mask: int, requested: Mapping[str, int]
) -> bool:
    nodes = nodes_of(mask)
    for type_, size in requested.items():
        if sum(machine[n].table(type_).free for n in nodes if n in machine) < size:
            return False
    return True


def _violates_numa_allocations(machine: Mapping[int, NodeState], mask: int) -> bool:
    """kubelet's isAffinityViolatingNUMAAllocations: no node serves single- and cross-NUMA."""
    nodes = nodes_of(mask)
    if len(nodes) == 1:
        return False
    for n in nodes:
        node = machine[n]
        if node.number_of_assignments == 0:
            continue
        if len(node.cells) == 1 or mask_of(node.cells) != mask:
            return True
    return False


def _shrink_init_blocks(
    state: MemoryState, pod: PodSpec, container: ContainerSpec, blocks: Sequence[Block]
) -> None:
    """kubelet's updateInitContainersMemoryBlocks: earlier init blocks shrink by the reuse."""
    for cb in blocks:
        remaining = cb.size
        for init in pod.init_containers:
            if init.name == container.name or remaining == 0:
                break
            if init.restartable:
                continue
            stored = state.blocks(pod.uid, init.name)
            if not stored:
                continue
            init_blocks = list(stored)  # a stored list is never changed in place: clone shares it
            changed = False
            for i, ib in enumerate(init_blocks):
                if ib.size == 0 or ib.type != cb.type or ib.numa_affinity != cb.numa_affinity:
                    continue
                take = min(ib.size, remaining)
                init_blocks[i] = Block(ib.numa_affinity, ib.type, ib.size - take)
                remaining -= take
                changed = True
            if changed:
                state.set_blocks(pod.uid, init.name, init_blocks)

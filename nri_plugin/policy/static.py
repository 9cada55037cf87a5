"""kubelet's Memory Manager ``Static`` policy: hints, allocation, reuse, release.

Every rule here follows ``reference/static-policy.md`` (sections 2, 4, 5, 7, 8,
9, 10); the section numbers in comments point there. The policy is pure: it
mutates only the :class:`MemoryState` it is handed, plus its in-memory
bookkeeping of reusable init-container memory (which kubelet does not
checkpoint either).
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from itertools import combinations

from nri_plugin.hint import ProviderHints, TopologyHint, is_narrower, mask_of, nodes_of
from nri_plugin.pod import GUARANTEED, ContainerSpec, PodSpec, pod_memory_requests
from nri_plugin.policy.base import AllocationError
from nri_plugin.state import POLICY_STATIC, Block, MemoryState, MemoryTable, NodeState, sort_blocks
from nri_plugin.topologymanager import POLICY_NONE, POLICY_SINGLE_NUMA_NODE, NUMAInfo, normalize

# Up to this many NUMA nodes (kubelet's default max-allowable-numa-nodes) every
# subset is visited and reported, exactly as kubelet does. Above it (reachable when
# max-allowable-numa-nodes is raised, or with the topology manager policy `none`)
# a bounded search finds the hints that decide the outcome instead: at 12 nodes
# kubelet's way takes seconds for one container (the merge crosses every list).
EXHAUSTIVE_NODE_LIMIT = 8
# Cap on the hints of one width that the bounded search returns without a focus.
BOUNDED_HINT_CAP = 2048
# Longer exhaustive lists are not merged as they are: the merge is handed the few
# hints the bounded search finds decisive (the same outcome, see _focused_hints).
FULL_MERGE_HINTS = 16

_ZERO = MemoryTable(0, 0, 0, 0, 0)

# pod uid -> mask -> memory type -> bytes that later containers of the pod may reuse
ReusableMemory = dict[str, dict[int, dict[str, int]]]


def _table(node: NodeState, type_: str) -> MemoryTable:
    # A type the node has no table for counts as zero capacity (a real machine
    # lists every supported page size, with zero pages when none are set up).
    return node.memory_map.get(type_, _ZERO)


class StaticPolicy:
    """The ``Static`` policy over one machine state."""

    name = POLICY_STATIC

    def __init__(self, default_machine: Mapping[int, NodeState]) -> None:
        # the state of the machine with nothing allocated (section 2.1)
        self._default_machine = {k: v for k, v in sorted(default_machine.items())}
        self._reusable: ReusableMemory = {}

    # -- start -------------------------------------------------------------

    def default_state(self) -> MemoryState:
        from copy import deepcopy

        return MemoryState(POLICY_STATIC, deepcopy(self._default_machine), {})

    def start(self, state: MemoryState) -> None:
        """Install the default machine state into an empty state (section 13 step 1)."""
        if not state.machine:
            if state.entries:
                from nri_plugin.errors import StateError

                raise StateError(
                    "[memorymanager] machine state can not be empty when it has memory assignments"
                )
            state.machine = self.default_state().machine

    # -- hints (section 5) ---------------------------------------------------

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
        if not _is_handled(pod):
            return None, None
        requested = container.memory_requests()
        blocks = state.blocks(pod.uid, container.name)
        if blocks is not None:
            regenerated = _regenerate_hints(blocks, requested)
            return regenerated, regenerated
        return self._focused_hints(state.machine, pod.uid, requested, focus)

    def focused_pod_hints(
        self, state: MemoryState, pod: PodSpec, focus: MergeFocus | None
    ) -> tuple[ProviderHints, ProviderHints]:
        """(the hints reported, the hints to merge) for the whole pod; see _focused_hints."""
        if not _is_handled(pod):
            return None, None
        requested = pod_memory_requests(pod)
        for c in pod.all_containers():
            blocks = state.blocks(pod.uid, c.name)
            if blocks is not None:
                regenerated = _regenerate_hints(blocks, requested)
                return regenerated, regenerated
        return self._focused_hints(state.machine, pod.uid, requested, focus)

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
        """Section 5.3: every admissible mask, preferred iff of the minimal allocatable width.

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

    # -- allocate (section 7) ------------------------------------------------

    def allocate(
        self, state: MemoryState, pod: PodSpec, container: ContainerSpec, affinity: TopologyHint
    ) -> None:
        if not _is_handled(pod):
            return
        existing = state.blocks(pod.uid, container.name)
        if existing is not None:
            # already allocated: only refresh the reuse bookkeeping, even if the request changed
            self._update_reusable(pod, container, existing)
            return
        requested = container.memory_requests()
        machine = state.machine
        best = affinity
        if best.mask is None:
            if len(machine) > EXHAUSTIVE_NODE_LIMIT:
                pod_reusable = self._reusable.get(pod.uid, {})
                default = _bounded_default(machine, requested, pod_reusable) if requested else None
            else:
                default = self._find_best(self.calculate_hints(machine, pod.uid, requested))
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
            extended = self._extend(machine, pod.uid, requested, best.mask)
            if not extended.preferred and best.preferred:
                raise AllocationError("[memorymanager] failed to find the extended preferred hint")
            best = extended
        assert best.mask is not None
        if _violates_numa_allocations(machine, best.mask):
            raise AllocationError("[memorymanager] preferred hint violates NUMA node allocation")

        mask_nodes = nodes_of(best.mask)
        blocks = []
        reusable = self._reusable.get(pod.uid, {}).get(best.mask, {})
        for type_, size in requested.items():
            blocks.append(Block(tuple(mask_nodes), type_, size))
            _take(machine, mask_nodes, type_, max(0, size - reusable.get(type_, 0)))
        blocks = sort_blocks(blocks)
        self._update_reusable(pod, container, blocks)
        state.set_blocks(pod.uid, container.name, blocks)
        _shrink_init_blocks(state, pod, container, blocks)

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
            blocks.append(Block(tuple(nodes), type_, size))
            _take(state.machine, nodes, type_, size)
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

    # -- reuse of init-container memory (section 8) ---------------------------

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

    def forget_pod(self, pod_uid: str) -> None:
        self._reusable.pop(pod_uid, None)

    # -- remove (section 10) -------------------------------------------------

    def remove_container(self, state: MemoryState, pod_uid: str, container: str) -> bool:
        blocks = state.delete_blocks(pod_uid, container)
        if blocks is None:
            return False
        release_blocks(state, blocks)
        return True


def release_blocks(state: MemoryState, blocks: Sequence[Block]) -> None:
    """Return blocks to the machine state node by node, as kubelet's RemoveContainer.

    One deviation, where kubelet loses track of memory: a node of a multi-node block whose
    cells are no longer the block's mask was re-labelled by a single-node allocation that
    kubelet let through (reference 7.6); kubelet's walk would hand that allocation's bytes
    back as the group's (the node then shows them free while they are in use, and the
    group's own bytes stay reserved on another node for nobody). Such a node gives back
    only what exceeds its single-node blocks, and rejoins its group when the last of them
    goes.
    """
    machine = state.machine
    for b in blocks:
        released = b.size
        mask = b.numa_affinity
        for node_id in mask:
            node = machine[node_id]
            relabelled = len(mask) > 1 and sorted(node.cells) != sorted(mask)
            node.number_of_assignments -= 1
            if node.number_of_assignments == 0:
                node.cells = [node_id]
            if released == 0:
                continue
            table = node.memory_map.get(b.type)
            if table is None or table.reserved == 0:
                continue
            held = _single_node_bytes(state, node_id, b.type) if relabelled else 0
            give = max(0, min(table.reserved - held, released))
            table.reserved -= give
            table.free += give
            released -= give
    for node_id in {b.numa_affinity[0] for b in blocks if len(b.numa_affinity) == 1}:
        _regroup(state, node_id)


def _regroup(state: MemoryState, node_id: int) -> None:
    """A node re-labelled by single-node blocks joins its group again once the last of them
    is gone (kubelet leaves it on its own, serving single-node hints while the group's
    bytes may sit on it), so that the state is again one that kubelet's restore replays."""
    node = state.machine[node_id]
    if node.number_of_assignments == 0 or len(node.cells) > 1:
        return
    group: Sequence[int] | None = None
    for containers in state.entries.values():
        for blocks in containers.values():
            for block in blocks:
                if node_id not in block.numa_affinity:
                    continue
                if len(block.numa_affinity) == 1:
                    return  # still serves single-node blocks
                group = block.numa_affinity
    if group is not None:
        node.cells = list(group)


def _single_node_bytes(state: MemoryState, node_id: int, mem_type: str) -> int:
    """Bytes of ``mem_type`` held on ``node_id`` by single-node blocks."""
    return sum(
        block.size
        for containers in state.entries.values()
        for blocks in containers.values()
        for block in blocks
        if block.type == mem_type and tuple(block.numa_affinity) == (node_id,)
    )


def _hint_lists(
    masks: Sequence[int], min_size: int, requested: Mapping[str, int]
) -> dict[str, list[TopologyHint]]:
    """One identical list per requested type; preferred iff of the minimal width."""
    hints = [TopologyHint(m, m.bit_count() == min_size) for m in masks]
    if not hints:
        return {}
    return {t: list(hints) for t in requested}


def _is_handled(pod: PodSpec) -> bool:
    return pod.qos() == GUARANTEED and not pod.pod_level_resources


def _regenerate_hints(blocks: Sequence[Block], requested: Mapping[str, int]) -> ProviderHints:
    """Section 5.1 step 2: one preferred hint per stored block, or nothing on any mismatch."""
    if len(blocks) != len(requested):
        return None
    hints: dict[str, list[TopologyHint] | None] = {t: [] for t in requested}
    for b in blocks:
        if b.type not in requested or b.size != requested[b.type]:
            return None
        lst = hints[b.type]
        assert lst is not None
        lst.append(TopologyHint(mask_of(b.numa_affinity), True))
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
        if sum(_table(machine[n], type_).free for n in nodes if n in machine) < size:
            return False
    return True


def _violates_numa_allocations(machine: Mapping[int, NodeState], mask: int) -> bool:
    """Section 7 step 6: a node cannot serve single- and cross-NUMA allocations at once."""
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


def _take(machine: Mapping[int, NodeState], nodes: Sequence[int], type_: str, size: int) -> None:
    """Section 7 step 7: count the assignment on every node, take bytes in node order."""
    for n in nodes:
        node = machine[n]
        node.number_of_assignments += 1
        node.cells = list(nodes)
        if size == 0:
            continue
        table = node.memory_map.get(type_)
        if table is None or table.free <= 0:
            continue
        give = min(table.free, size)
        table.free -= give
        table.reserved += give
        size -= give


def _shrink_init_blocks(
    state: MemoryState, pod: PodSpec, container: ContainerSpec, blocks: Sequence[Block]
) -> None:
    """Section 8: earlier regular init containers' blocks shrink by what this one reused."""
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


# -- mask enumeration ----------------------------------------------------------


@cache
def _kubelet_order(n: int) -> tuple[tuple[int, int], ...]:
    """Every non-empty subset of n positions as (position bitmask, size), in kubelet's order.

    kubelet's IterateBitMasks: by size, then lexicographically by the ascending
    position lists ([0], [1], [0,1], [0,2], [1,2], ...).
    """
    order = []
    for k in range(1, n + 1):
        for combo in combinations(range(n), k):
            pm = 0
            for i in combo:
                pm |= 1 << i
            order.append((pm, k))
    return tuple(order)


def _subset_sums(values: Sequence[int]) -> list[int]:
    """sums[pm] = sum of values at the positions set in pm, for every pm.

    Doubling: the subsets with position i set are those without it, plus values[i].
    """
    sums = [0]
    for v in values:
        sums += [s + v for s in sums]
    return sums


def _exhaustive_masks(
    machine: Mapping[int, NodeState],
    ids: Sequence[int],
    requested: Mapping[str, int],
    reusable: Mapping[int, Mapping[str, int]],
) -> tuple[list[int], int]:
    """Section 5.3 over every non-empty subset, in kubelet's order; (masks, minimal size)."""
    n = len(ids)
    types = list(requested.items())
    nodes = [machine[i] for i in ids]
    # per subset: does every type's allocatable / free memory cover the request
    alloc_ok = [True] * (1 << n)
    free_ok = [True] * (1 << n)
    free: list[list[int]] = []
    for t, need in types:
        sums = _subset_sums([_table(node, t).allocatable for node in nodes])
        alloc_ok = [ok and s >= need for ok, s in zip(alloc_ok, sums, strict=True)]
        free.append(_subset_sums([_table(node, t).free for node in nodes]))
        free_ok = [ok and s >= need for ok, s in zip(free_ok, free[-1], strict=True)]
    real = _subset_sums([1 << i for i in ids])  # position mask -> NUMA node mask
    grouped = [len(node.cells) > 1 for node in nodes]
    # positions that forbid every multi-node mask (assigned, serving single-node blocks),
    # and assigned positions of a group (allowed only in exactly that group's mask)
    single_assigned = 0
    group_assigned: list[tuple[int, int]] = []
    for pos, node in enumerate(nodes):
        if node.number_of_assignments > 0:
            if grouped[pos]:
                group_assigned.append((1 << pos, mask_of(node.cells)))
            else:
                single_assigned |= 1 << pos
    min_size = n
    out: list[int] = []
    for pm, size in _kubelet_order(n):
        if not alloc_ok[pm]:
            continue
        if size < min_size:
            min_size = size
        mask = real[pm]
        if size == 1:
            if grouped[pm.bit_length() - 1]:
                continue
        elif pm & single_assigned or (
            group_assigned and any(pm & bit and cells != mask for bit, cells in group_assigned)
        ):
            continue
        extra = reusable.get(mask)
        if extra:
            if any(free[ti][pm] + extra.get(t, 0) < need for ti, (t, need) in enumerate(types)):
                continue
        elif not free_ok[pm]:
            continue
        out.append(mask)
    return out, min_size


# -- bounded search (machines above EXHAUSTIVE_NODE_LIMIT) ----------------------------------
#
# The admissible masks of section 5.3 fall into two parts:
#   * subsets of the unassigned nodes whose free memory covers the request. Adding an
#     unassigned node keeps such a subset admissible, so this part is closed upwards
#     and is described by the nodes' free memory alone; it is searched, never listed;
#   * a few explicit masks: assigned single nodes, existing groups, and masks of the
#     pod's init containers that only their reusable memory makes admissible.
# An admissible mask holds only unassigned nodes or only assigned ones, so a merged
# hint that meets an explicit mask meets no subset of unassigned nodes.
#
# With the other providers' hints at hand (MergeFocus) the search works out which
# merged hint the topology manager will pick from the full list, and returns only
# the masks that produce it (plus the narrowest mask, which fixes the merge's
# non-preferred threshold and the default hint). The merge then picks the same hint
# as over the full list: it ranks merged hints by a total order, and a sublist
# yields a subset of the merged hints that still contains the best one.

SEARCH_BUDGET = 200_000
"""Search steps allowed for one hint calculation; past it a cheaper answer is given."""

_INF = float("inf")


@dataclass(frozen=True)
class MergeFocus:
    """What the topology manager will merge the memory hints with.

    ``others`` are the other providers' answers exactly as handed to
    :func:`nri_plugin.topologymanager.merge`.
    """

    policy: str
    others: tuple[ProviderHints, ...]
    numa: NUMAInfo
    prefer_closest: bool = False


class _OutOfBudget(Exception):
    pass


class _Distances:
    """NUMA distances for prefer-closest-numa-nodes: sums over ordered pairs, as the merge."""

    def __init__(self, distances: Mapping[tuple[int, int], int], ids: Sequence[int]) -> None:
        size = max(ids, default=-1) + 1
        # row[a][b]: lists indexed by node id (ids are small)
        self.row = [[0] * size for _ in range(size)]
        for a in ids:
            for b in ids:
                self.row[a][b] = distances[(a, b)]
        self.least = min((self.row[a][b] for a in ids for b in ids if a != b), default=0)

    def total(self, nodes: Sequence[int]) -> int:
        return sum(self.row[a][b] for a in nodes for b in nodes)


# the last machine's distance table: the topology never changes while the plugin runs
_distance_cache: list[tuple[Mapping[tuple[int, int], int], tuple[int, ...], _Distances]] = []


def _distances(distances: Mapping[tuple[int, int], int], ids: Sequence[int]) -> _Distances:
    key = tuple(ids)
    for known, known_ids, table in _distance_cache:
        if known is distances and known_ids == key:
            return table
    table = _Distances(distances, ids)
    _distance_cache[:] = [(distances, key, table)]
    return table


def _bits(mask: int) -> list[int]:
    """The node ids of ``mask``, ascending (one step per node, not per bit position)."""
    out = []
    while mask:
        low = mask & -mask
        out.append(low.bit_length() - 1)
        mask ^= low
    return out


def _kubelet_sorted(masks: Iterable[int]) -> list[int]:
    return sorted(set(masks), key=lambda m: (m.bit_count(), _bits(m)))


class _BoundedSearch:
    """Section 5.3's admissibility over one machine state, searched instead of enumerated."""

    def __init__(
        self,
        machine: Mapping[int, NodeState],
        ids: Sequence[int],
        requested: Mapping[str, int],
        reusable: Mapping[int, Mapping[str, int]],
    ) -> None:
        self.machine = machine
        self.ids = list(ids)
        self.types = list(requested)
        self.need = tuple(requested[t] for t in self.types)
        self.dims = range(len(self.need))
        self.free = {n: tuple(_table(machine[n], t).free for t in self.types) for n in ids}
        self.alloc = {n: tuple(_table(machine[n], t).allocatable for t in self.types) for n in ids}
        self.reusable = reusable
        self.steps = 0
        # an unassigned node always has its own cell (release resets it)
        self.unassigned = [
            n
            for n in self.ids
            if machine[n].number_of_assignments == 0 and len(machine[n].cells) <= 1
        ]
        self.u_mask = mask_of(self.unassigned)
        self.family_open = self._covers(self._sum(self.unassigned), self.need)
        explicit = []
        groups = set()
        for n in self.ids:
            node = machine[n]
            if node.number_of_assignments == 0:
                continue
            if len(node.cells) > 1:
                groups.add(mask_of(node.cells))
            elif self._single_fits(n):
                explicit.append(1 << n)
        explicit += [g for g in groups if self.admissible(g)]
        self.explicit = sorted(explicit)
        self.reuse_only = sorted(
            m
            for m in reusable
            if m
            and m & ~self.u_mask == 0
            and not self._covers(self._sum(_bits(m)), self.need)
            and self.admissible(m)
        )
        self.min_size = self._min_allocatable_width()
        self.steps = 0  # the budget is for the search proper

    # -- basics --------------------------------------------------------------------

    def tick(self) -> None:
        self.steps += 1
        if self.steps > SEARCH_BUDGET:
            raise _OutOfBudget

    def _sum(
        self, nodes: Iterable[int], amounts: Mapping[int, tuple[int, ...]] | None = None
    ) -> list[int]:
        amounts = self.free if amounts is None else amounts
        out = [0] * len(self.need)
        for n in nodes:
            for d, v in enumerate(amounts[n]):
                out[d] += v
        return out

    @staticmethod
    def _covers(have: Sequence[int], target: Sequence[int]) -> bool:
        return all(h >= t for h, t in zip(have, target, strict=True))

    def _single_fits(self, n: int) -> bool:
        """An ungrouped node alone: the exhaustive walk's rules for a one-node mask."""
        alloc, free = self.alloc[n], self.free[n]
        extra = self.reusable.get(1 << n) or {}
        return all(
            alloc[d] >= self.need[d] and free[d] + extra.get(t, 0) >= self.need[d]
            for d, t in enumerate(self.types)
        )

    def admissible(self, mask: int) -> bool:
        """One mask through the exhaustive walk's rules."""
        nodes = _bits(mask)
        if not nodes or any(n not in self.machine for n in nodes):
            return False
        if not self._covers(self._sum(nodes, self.alloc), self.need):
            return False
        if len(nodes) == 1:
            if len(self.machine[nodes[0]].cells) > 1:
                return False
        else:
            for n in nodes:
                node = self.machine[n]
                if node.number_of_assignments > 0 and (
                    len(node.cells) == 1 or mask_of(node.cells) != mask
                ):
                    return False
        free = self._sum(nodes)
        extra = self.reusable.get(mask) or {}
        return all(free[d] + extra.get(t, 0) >= self.need[d] for d, t in enumerate(self.types))

    def _in_family(self, mask: int) -> bool:
        return mask & ~self.u_mask == 0 and self._covers(self._sum(_bits(mask)), self.need)

    def _width_floor(self, pool: Sequence[int], amounts: Mapping[int, tuple[int, ...]]) -> int:
        """The fewest nodes of ``pool`` that could cover each type taken alone."""
        floor = 1
        for d in self.dims:
            got, k = 0, 0
            for v in sorted((amounts[n][d] for n in pool), reverse=True):
                if got >= self.need[d]:
                    break
                got += v
                k += 1
            floor = max(floor, k)
        return floor

    def _min_allocatable_width(self) -> int | None:
        if not self._covers(self._sum(self.ids, self.alloc), self.need):
            return None
        zero = [0] * len(self.need)
        floor = self._width_floor(self.ids, self.alloc)
        try:
            for k in range(floor, len(self.ids) + 1):
                if next(self._colex(self.ids, k, self.alloc, zero, self.need), None) is not None:
                    return k
        except _OutOfBudget:
            return floor  # what each type alone needs: exact unless types compete for nodes
        return None  # unreachable: all nodes together cover the request

    # -- the subset walk -------------------------------------------------------------

    def _colex(
        self,
        pool: Sequence[int],
        k: int,
        amounts: Mapping[int, tuple[int, ...]],
        base: Sequence[int],
        floor: Sequence[int],
        dist: _Distances | None = None,
        bound: list[float] | None = None,
    ) -> Iterator[tuple[int, ...]]:
        """k-subsets S of ``pool`` (ascending ids) with base + amounts(S) >= floor.

        They come in increasing mask value (a smaller largest node first), so
        the first one is the narrowest by kubelet's order. Branches that even
        the largest remaining amounts cannot lift to ``floor`` are cut; with
        ``dist``, so are those whose distance sum cannot get below bound[0].
        """
        n = len(pool)
        if k < 0 or k > n:
            return
        live = [d for d in range(len(floor)) if base[d] < floor[d]]
        if k == 0:
            if not live:
                yield ()
            return
        vals = [[amounts[p][d] for d in live] for p in pool]
        gap = [floor[d] - base[d] for d in live]
        tops: dict[tuple[int, int], list[int]] = {}

        def top(h: int, j: int) -> list[int]:
            # per live type, the sum of the j largest amounts among pool[:h]
            key = (h, j)
            got = tops.get(key)
            if got is None:
                got = [
                    sum(heapq.nlargest(j, (vals[i][x] for i in range(h)))) for x in range(len(live))
                ]
                tops[key] = got
            return got

        chosen: list[int] = []
        # link[y]: summed distance from pool[y] to the chosen nodes
        link = [0] * n
        diag = [dist.row[p][p] for p in pool] if dist is not None else []

        def walk(h: int, j: int, got: list[int], dsum: int) -> Iterator[tuple[int, ...]]:
            for i in range(j - 1, h):
                self.tick()
                now = [g + v for g, v in zip(got, vals[i], strict=True)]
                rest = top(i, j - 1) if j > 1 else None
                if rest is None:
                    if any(a < b for a, b in zip(now, gap, strict=True)):
                        continue
                elif any(a + r < b for a, r, b in zip(now, rest, gap, strict=True)):
                    continue
                d_now = 0
                row: list[int] = []
                if dist is not None and bound is not None:
                    row = dist.row[pool[i]]
                    d_now = dsum + diag[i] + 2 * link[i]
                    if j == 1:
                        if d_now >= bound[0]:
                            continue
                    else:
                        # each further node adds its own distance, twice its distance to the
                        # chosen ones, and at least the least distance to every other new one
                        costs = heapq.nsmallest(
                            j - 1, (diag[y] + 2 * (link[y] + row[pool[y]]) for y in range(i))
                        )
                        low = d_now + sum(costs) + (j - 1) * (j - 2) * dist.least
                        if low >= bound[0]:
                            continue
                chosen.append(i)
                if j == 1:
                    yield tuple(pool[c] for c in reversed(chosen))
                else:
                    if row:
                        for y in range(i):
                            link[y] += row[pool[y]]
                    yield from walk(i, j - 1, now, d_now)
                    if row:
                        for y in range(i):
                            link[y] -= row[pool[y]]
                chosen.pop()

        yield from walk(n, k, [0] * len(live), 0)

    def _cover(self, pool: Sequence[int], target: Sequence[int]) -> int:
        """A few nodes of ``pool`` (largest first) whose free memory covers ``target``."""
        live = [d for d in self.dims if target[d] > 0]
        if not live:
            return 0
        order = sorted(pool, key=lambda n: (-max(self.free[n][d] / target[d] for d in live), n))
        got = [0] * len(self.need)
        mask = 0
        for n in order:
            if self._covers(got, target):
                break
            mask |= 1 << n
            for d in self.dims:
                got[d] += self.free[n][d]
        return mask

    def _pack(self, pool: Sequence[int], cap: Sequence[int], bins: int) -> list[list[int]] | None:
        """Every node of ``pool`` into one of ``bins`` groups, each group's free memory <= cap.

        Vector bin packing, small here: a greedy deal first, then an exact
        search over the biggest nodes first, within the search budget.
        """
        if bins < 1 or any(c < 0 for c in cap):
            return None
        total = self._sum(pool)
        live = [d for d in self.dims if total[d] > cap[d]]
        if not live:
            return [list(pool)] + [[] for _ in range(bins - 1)]

        def share(n: int, d: int) -> float:
            amount = self.free[n][d]
            if cap[d]:
                return amount / cap[d]
            return _INF if amount else 0.0

        size = {n: max(share(n, d) for d in live) for n in pool}
        order = sorted(pool, key=lambda n: (-size[n], n))
        if any(size[n] > 1 for n in order):
            return None
        groups: list[list[int]] = [[] for _ in range(bins)]
        loads = [[0] * len(self.need) for _ in range(bins)]

        def fits(b: int, n: int) -> bool:
            return all(loads[b][d] + self.free[n][d] <= cap[d] for d in live)

        def put(b: int, n: int, sign: int) -> None:
            for d in self.dims:
                loads[b][d] += sign * self.free[n][d]

        # greedy: each node into the group it leaves the most room in
        for n in order:
            room = [
                (min((cap[d] - loads[b][d] - self.free[n][d]) / (cap[d] or 1) for d in live), -b)
                for b in range(bins)
                if fits(b, n)
            ]
            if not room:
                break
            b = -max(room)[1]
            groups[b].append(n)
            put(b, n, 1)
        else:
            return groups
        groups = [[] for _ in range(bins)]
        loads = [[0] * len(self.need) for _ in range(bins)]

        def walk(i: int) -> bool:
            self.tick()
            if i == len(order):
                return True
            n = order[i]
            seen_empty = False
            for b in range(bins):
                if not groups[b]:
                    if seen_empty:
                        continue  # empty groups are interchangeable
                    seen_empty = True
                if not fits(b, n):
                    continue
                groups[b].append(n)
                put(b, n, 1)
                if walk(i + 1):
                    return True
                groups[b].pop()
                put(b, n, -1)
            return False

        return groups if walk(0) else None

    # -- family members and merged hints -------------------------------------------------

    def family_best(
        self, within: int, picks: int, width: int, dist: _Distances | None
    ) -> tuple[int, list[int]] | None:
        """The best ``within & m1 & ... & m_picks`` of ``width`` nodes over family masks m_i.

        Returns that merged mask F and the family masks that give it. Take
        each m_i as large as it can be: F, every unassigned node outside
        ``within``, and the rest R of ``within`` except a part H_i. The H_i
        must cover R between them (else F would be larger), so F is reachable
        iff R packs into ``picks`` parts H_i each leaving enough free memory:
        free(H_i) <= free(F + R + outside) - need. One pick: R must be empty.
        """
        inside = [n for n in self.unassigned if within >> n & 1]
        if not self.family_open or not 1 <= width <= len(inside):
            return None
        outside = [n for n in self.unassigned if not within >> n & 1]
        have_out, have_in = self._sum(outside), self._sum(inside)
        short = [self.need[d] - have_out[d] for d in self.dims]
        # summed over the picks: picks * F + (picks - 1) * rest >= picks * short,
        # i.e. F >= picks * short - (picks - 1) * inside
        floor = [picks * short[d] - (picks - 1) * have_in[d] for d in self.dims]
        zero = [0] * len(self.need)
        bound = [_INF]
        best: tuple[int, list[int]] | None = None
        for subset in self._colex(inside, width, self.free, zero, floor, dist, bound):
            picked = self._family_picks(subset, inside, outside, short, picks)
            if picked is None:
                continue
            if dist is None:
                return mask_of(subset), picked
            bound[0] = dist.total(subset)
            best = (mask_of(subset), picked)
        return best

    def _family_picks(
        self,
        subset: Sequence[int],
        inside: Sequence[int],
        outside: Sequence[int],
        short: Sequence[int],
        picks: int,
    ) -> list[int] | None:
        have = self._sum(subset)
        base = mask_of(subset)
        if self._covers(have, short):
            return [base | self._cover(outside, [self.need[d] - have[d] for d in self.dims])]
        if picks < 2:
            return None
        rest = [n for n in inside if not base >> n & 1]
        have_rest = self._sum(rest)
        room = [have[d] + have_rest[d] - short[d] for d in self.dims]
        holes = self._pack(rest, room, picks)
        if holes is None:
            return None
        out = []
        for hole in holes:
            kept = [n for n in rest if n not in hole]
            got = self._sum(kept)
            left = [self.need[d] - have[d] - got[d] for d in self.dims]
            out.append(base | mask_of(kept) | self._cover(outside, left))
        return out

    def narrowest(self) -> tuple[int, int] | None:
        """(w0, the smallest mask of w0 nodes): the narrowest admissible width and its best."""
        pool = self.explicit + self.reuse_only
        e_width = min((m.bit_count() for m in pool), default=len(self.ids) + 1)
        best: tuple[int, int] | None = None
        if self.family_open:
            zero = [0] * len(self.need)
            start = self._width_floor(self.unassigned, self.free)
            for k in range(start, min(e_width, len(self.unassigned)) + 1):
                found = next(self._colex(self.unassigned, k, self.free, zero, self.need), None)
                if found is not None:
                    best = (k, mask_of(found))
                    break
        for m in pool:
            if m.bit_count() == e_width and (best is None or (e_width, m) < (best[0], best[1])):
                best = (e_width, m)
        return best

    def all_of_width(self, width: int, cap: int) -> list[int]:
        """Every admissible mask of ``width`` nodes (at most ``cap`` from the family)."""
        out = [m for m in self.explicit + self.reuse_only if m.bit_count() == width]
        if self.family_open:
            zero = [0] * len(self.need)
            for i, subset in enumerate(
                self._colex(self.unassigned, width, self.free, zero, self.need)
            ):
                if i >= cap:
                    break
                out.append(mask_of(subset))
        return _kubelet_sorted(out)

    def best_of_width(self, width: int, dist: _Distances | None) -> int | None:
        """The fittest admissible mask of ``width`` nodes (narrowest, or closest)."""
        cands = [m for m in self.explicit + self.reuse_only if m.bit_count() == width]
        found = self.family_best(mask_of(self.ids), 1, width, dist)
        if found is not None:
            cands.append(found[0])
        return min(cands, key=_rank(dist), default=None)

    def narrowest_superset(self, mask: int) -> int | None:
        """The narrowest admissible mask containing ``mask`` (kubelet's extension)."""
        cands = [m for m in self.explicit + self.reuse_only if m & mask == mask]
        best = min(cands, key=lambda m: (m.bit_count(), m), default=None)
        if self.family_open and mask & ~self.u_mask == 0:
            rest = [n for n in self.unassigned if not mask >> n & 1]
            base = self._sum(_bits(mask))
            most = len(rest) if best is None else best.bit_count() - mask.bit_count()
            for k in range(0, most + 1):
                found = next(self._colex(rest, k, self.free, base, self.need), None)
                if found is not None:
                    m = mask | mask_of(found)
                    if best is None or (m.bit_count(), m) < (best.bit_count(), best):
                        best = m
                    break
        return best

    # -- picking what the merge will pick ------------------------------------------------

    def decisive(self, focus: MergeFocus) -> list[int] | None:
        """The masks the merge with ``focus`` needs; None when the budget ran out."""
        try:
            return self.focused(focus)
        except _OutOfBudget:
            return None

    def focused(self, focus: MergeFocus) -> list[int]:
        """The narrowest mask, and the masks giving the merged hint the merge will pick."""
        narrowest = self.narrowest()
        if narrowest is None:
            return []
        w0, smallest = narrowest
        keep = {smallest}
        if focus.policy == POLICY_SINGLE_NUMA_NODE:
            # the merge keeps only preferred single-node hints: there are few, give them all
            if self.min_size == 1:
                keep.update(m for m in self.explicit + self.reuse_only if m.bit_count() == 1)
                keep.update(1 << n for n in self.unassigned if self._in_family(1 << n))
            return _kubelet_sorted(keep)
        lists = normalize(list(focus.others))
        dist = None
        if focus.prefer_closest and focus.numa.distances is not None:
            dist = _distances(focus.numa.distances, self.ids)
        states = _fold_hints(focus.numa.default_mask, lists)
        preferred = self._best_preferred(states, w0, dist)
        if preferred is not None:
            keep.add(preferred)
            return _kubelet_sorted(keep)
        threshold = w0
        for lst in lists:
            widths = [h.mask.bit_count() for h in lst if h.mask is not None]
            if widths:
                threshold = max(threshold, min(widths))
        picks = self._best_non_preferred({s[0] for s in states}, threshold, dist)
        keep.update(picks)
        return _kubelet_sorted(keep)

    def _best_preferred(
        self, states: Iterable[tuple[int, bool, int | None]], w0: int, dist: _Distances | None
    ) -> int | None:
        """The best preferred merged hint: a memory hint of the minimal width every
        other list agrees with (or does not care about)."""
        cands = []
        free_choice = False
        for _, preferred, first in states:
            if not preferred:
                continue
            if first is None:
                free_choice = True
            elif first.bit_count() == self.min_size and self.admissible(first):
                cands.append(first)
        if free_choice and w0 == self.min_size:
            best = self.best_of_width(w0, dist)
            if best is not None:
                cands.append(best)
        return min(cands, key=_rank(dist), default=None)

    def _best_non_preferred(
        self, partials: Iterable[int], threshold: int, dist: _Distances | None
    ) -> list[int]:
        """Memory masks giving the best non-preferred merged hint.

        The merge prefers ``threshold`` nodes, then fewer (the more the
        better), then more (the fewer the better); at equal width the fitter
        mask. Reachable merged masks of one source form an upward-closed set,
        so a source that cannot reach ``threshold`` nodes reaches no fewer.
        """
        per_type = len(self.need)
        explicit: dict[int, list[int]] = {}
        sources: dict[tuple[int, int], list[int]] = {}
        for p in sorted(partials):
            for e in self.explicit:
                if p & e:
                    explicit.setdefault(p & e, [e])
            for q in range(1, min(per_type, len(self.reuse_only)) + 1):
                for group in combinations(self.reuse_only, q):
                    within = p
                    for m in group:
                        within &= m
                    if not within:
                        continue
                    explicit.setdefault(within, list(group))
                    if per_type > q:
                        sources.setdefault((within, per_type - q), list(group))
            sources.setdefault((p, per_type), [])
        if not self.family_open:
            sources = {}
        top = len(self.ids)
        order = list(range(threshold, 0, -1)) + list(range(threshold + 1, top + 1))
        for width in order:
            cands = [(f, picks) for f, picks in explicit.items() if f.bit_count() == width]
            for (within, picks), prefix in sources.items():
                reach = (within & self.u_mask).bit_count()
                if width > reach or (width < threshold and width != reach):
                    continue
                found = self.family_best(within, picks, width, dist)
                if found is not None:
                    cands.append((found[0], prefix + found[1]))
            if cands:
                rank = _rank(dist)
                return min(cands, key=lambda c: rank(c[0]))[1]
        return []


def _rank(dist: _Distances | None) -> Callable[[int], tuple[int, int]]:
    """Order of masks of one width: kubelet's narrowest, or closest then narrowest."""
    if dist is None:
        return lambda m: (0, m)
    return lambda m: (dist.total(_bits(m)), m)


def _fold_hints(
    default: int, lists: Sequence[Sequence[TopologyHint]]
) -> set[tuple[int, bool, int | None]]:
    """The other providers' hints merged as the topology manager folds them.

    (intersection, still preferred, the mask all preferred hints share); the
    memory hints are merged into these afterwards.
    """
    partial: set[tuple[int, bool, int | None]] = {(default, True, None)}
    for lst in lists:
        step: set[tuple[int, bool, int | None]] = set()
        for mask, preferred, first in partial:
            for h in lst:
                ok = preferred and h.preferred
                if h.mask is None:
                    step.add((mask, ok, first if ok else -1))
                    continue
                merged = mask & h.mask
                if merged == 0:
                    continue
                if first is None:
                    step.add((merged, ok, h.mask if ok else -1))
                else:
                    ok = ok and h.mask == first
                    step.add((merged, ok, first if ok else -1))
        partial = step
    return partial


def _bounded_masks(
    machine: Mapping[int, NodeState],
    ids: Sequence[int],
    requested: Mapping[str, int],
    reusable: Mapping[int, Mapping[str, int]],
    focus: MergeFocus | None = None,
) -> tuple[list[int], int]:
    """Hints for large machines without visiting 2^N subsets; (masks, minimal size).

    Without ``focus``: every admissible mask of the narrowest width that has
    any (capped at BOUNDED_HINT_CAP, the smallest always kept), which is all
    the default hint needs. With ``focus``: the masks that make the merge
    choose what it would choose from the exhaustive list.
    """
    search = _BoundedSearch(machine, ids, requested, reusable)
    if search.min_size is None:
        return [], len(ids)
    if focus is not None and focus.policy != POLICY_NONE:
        masks = search.decisive(focus)
        return (_fallback_masks(search) if masks is None else masks), search.min_size
    try:
        narrowest = search.narrowest()
        if narrowest is None:
            return [], search.min_size
        masks = search.all_of_width(narrowest[0], BOUNDED_HINT_CAP)
        if narrowest[1] not in masks:
            masks = _kubelet_sorted([*masks[: BOUNDED_HINT_CAP - 1], narrowest[1]])
        return masks, search.min_size
    except _OutOfBudget:
        return _fallback_masks(search), search.min_size


def _fallback_masks(search: _BoundedSearch) -> list[int]:
    """Past the budget: the narrowest mask only (found again with a fresh budget)."""
    search.steps = 0
    try:
        found = search.narrowest()
    except _OutOfBudget:
        found = None
    if found is not None:
        return [found[1]]
    if search.family_open:
        return [search.u_mask]
    return search.explicit[:1]


def _bounded_default(
    machine: Mapping[int, NodeState],
    requested: Mapping[str, int],
    reusable: Mapping[int, Mapping[str, int]],
) -> TopologyHint | None:
    """kubelet's default hint (preferred first, then narrowest) without listing the hints."""
    search = _BoundedSearch(machine, sorted(machine), requested, reusable)
    if search.min_size is None:
        return None
    try:
        found = search.narrowest()
    except _OutOfBudget:
        masks = _fallback_masks(search)
        found = (masks[0].bit_count(), masks[0]) if masks else None
    if found is None:
        return None
    return TopologyHint(found[1], found[0] == search.min_size)


def _bounded_extension(
    machine: Mapping[int, NodeState],
    requested: Mapping[str, int],
    reusable: Mapping[int, Mapping[str, int]],
    mask: int,
) -> TopologyHint | None:
    """kubelet's extension of ``mask``: the best admissible hint containing it."""
    search = _BoundedSearch(machine, sorted(machine), requested, reusable)
    if search.min_size is None:
        return None
    try:
        found = search.narrowest_superset(mask)
    except _OutOfBudget:
        found = None
    if found is None:
        return None
    return TopologyHint(found, found.bit_count() == search.min_size)

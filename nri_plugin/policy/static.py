"""kubelet's Memory Manager ``Static`` policy: hints, allocation, reuse, release.

Every rule here follows ``reference/static-policy.md`` (sections 2, 4, 5, 7, 8,
9, 10); the section numbers in comments point there. The policy is pure: it
mutates only the :class:`MemoryState` it is handed, plus its in-memory
bookkeeping of reusable init-container memory (which kubelet does not
checkpoint either).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from functools import cache
from itertools import combinations

from nri_plugin.hint import ProviderHints, TopologyHint, is_narrower, mask_of, nodes_of
from nri_plugin.pod import GUARANTEED, ContainerSpec, PodSpec, pod_memory_requests
from nri_plugin.policy.base import AllocationError
from nri_plugin.state import POLICY_STATIC, Block, MemoryState, MemoryTable, NodeState, sort_blocks

# Up to this many NUMA nodes every subset is visited, exactly as kubelet does.
# Above it (only reachable when max-allowable-numa-nodes is raised, or with the
# topology manager policy `none`) a bounded search is used instead.
EXHAUSTIVE_NODE_LIMIT = 12
# Cap on the hints of one width that the bounded search returns.
BOUNDED_HINT_CAP = 2048

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
        if not _is_handled(pod):
            return None
        requested = container.memory_requests()
        blocks = state.blocks(pod.uid, container.name)
        if blocks is not None:
            return _regenerate_hints(blocks, requested)
        return dict(self.calculate_hints(state.machine, pod.uid, requested))

    def pod_hints(self, state: MemoryState, pod: PodSpec) -> ProviderHints:
        if not _is_handled(pod):
            return None
        requested = pod_memory_requests(pod)
        for c in pod.all_containers():
            blocks = state.blocks(pod.uid, c.name)
            if blocks is not None:
                return _regenerate_hints(blocks, requested)
        return dict(self.calculate_hints(state.machine, pod.uid, requested))

    def calculate_hints(
        self, machine: Mapping[int, NodeState], pod_uid: str, requested: Mapping[str, int]
    ) -> dict[str, list[TopologyHint]]:
        """Section 5.3: every admissible mask, preferred iff of the minimal allocatable width."""
        if not requested:
            return {}
        ids = sorted(machine)
        reusable = self._reusable.get(pod_uid, {})
        if len(ids) <= EXHAUSTIVE_NODE_LIMIT:
            masks, min_size = _exhaustive_masks(machine, ids, requested, reusable)
        else:
            masks, min_size = _bounded_masks(machine, ids, requested, reusable)
        hints = [TopologyHint(m, m.bit_count() == min_size) for m in masks]
        if not hints:
            return {}
        return {t: list(hints) for t in requested}

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
        release_blocks(state.machine, blocks)
        return True


def release_blocks(machine: Mapping[int, NodeState], blocks: Sequence[Block]) -> None:
    """Return blocks to the machine state node by node, as kubelet's RemoveContainer."""
    for b in blocks:
        released = b.size
        for node_id in b.numa_affinity:
            node = machine[node_id]
            node.number_of_assignments -= 1
            if node.number_of_assignments == 0:
                node.cells = [node_id]
            if released == 0:
                continue
            table = node.memory_map.get(b.type)
            if table is None or table.reserved == 0:
                continue
            give = min(table.reserved, released)
            table.reserved -= give
            table.free += give
            released -= give


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
            init_blocks = state.blocks(pod.uid, init.name)
            if not init_blocks:
                continue
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
    """sums[pm] = sum of values at the positions set in pm, for every pm (one pass)."""
    sums = [0] * (1 << len(values))
    for pm in range(1, len(sums)):
        low = pm & -pm
        sums[pm] = sums[pm ^ low] + values[low.bit_length() - 1]
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
    alloc = [_subset_sums([_table(machine[i], t).allocatable for i in ids]) for t, _ in types]
    free = [_subset_sums([_table(machine[i], t).free for i in ids]) for t, _ in types]
    real = _subset_sums([1 << i for i in ids])  # position mask -> NUMA node mask
    nodes = [machine[i] for i in ids]
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
        if any(alloc[ti][pm] < need for ti, (_, need) in enumerate(types)):
            continue
        if size < min_size:
            min_size = size
        mask = real[pm]
        if size == 1:
            if grouped[pm.bit_length() - 1]:
                continue
        elif pm & single_assigned or any(
            pm & bit and cells != mask for bit, cells in group_assigned
        ):
            continue
        extra = reusable.get(mask)
        if extra:
            if any(free[ti][pm] + extra.get(t, 0) < need for ti, (t, need) in enumerate(types)):
                continue
        elif any(free[ti][pm] < need for ti, (_, need) in enumerate(types)):
            continue
        out.append(mask)
    return out, min_size


def _bounded_masks(
    machine: Mapping[int, NodeState],
    ids: Sequence[int],
    requested: Mapping[str, int],
    reusable: Mapping[int, Mapping[str, int]],
) -> tuple[list[int], int]:
    """Hints for large machines without visiting 2^N subsets.

    Returns the admissible masks of the narrowest width that has any (the
    width every selection rule picks from), and the minimal width that the
    allocatable memory could satisfy; both equal what the exhaustive walk
    would find at those widths.
    """
    types = list(requested.items())
    alloc = {n: [_table(machine[n], t).allocatable for t, _ in types] for n in ids}
    free = {n: [_table(machine[n], t).free for t, _ in types] for n in ids}
    need = [size for _, size in types]

    min_size = _min_width(ids, alloc, need)
    if min_size is None:
        return [], len(ids)

    for k in range(min_size, len(ids) + 1):
        found: list[int] = []
        if k == 1:
            for n in ids:
                node = machine[n]
                if len(node.cells) > 1:
                    continue
                mask = 1 << n
                extra = reusable.get(mask, {})
                if all(alloc[n][i] >= need[i] for i in range(len(need))) and all(
                    free[n][i] + extra.get(t, 0) >= need[i] for i, (t, _) in enumerate(types)
                ):
                    found.append(mask)
        else:
            candidates = [n for n in ids if machine[n].number_of_assignments == 0]
            for combo in _subsets_reaching(candidates, free, need, k, BOUNDED_HINT_CAP):
                mask = mask_of(combo)
                if all(sum(alloc[n][i] for n in combo) >= need[i] for i in range(len(need))):
                    found.append(mask)
            # existing groups of exactly this width
            groups = {mask_of(machine[n].cells) for n in ids if len(machine[n].cells) == k}
            for g in sorted(groups):
                nodes = nodes_of(g)
                if any(
                    machine[n].number_of_assignments > 0 and mask_of(machine[n].cells) != g
                    for n in nodes
                ):
                    continue
                extra = reusable.get(g, {})
                if all(
                    sum(alloc[n][i] for n in nodes) >= need[i] for i in range(len(need))
                ) and all(
                    sum(free[n][i] for n in nodes) + extra.get(t, 0) >= need[i]
                    for i, (t, _) in enumerate(types)
                ):
                    found.append(g)
        if found:
            found = sorted(set(found), key=lambda m: nodes_of(m))
            return found[:BOUNDED_HINT_CAP], min_size
    return [], min_size


def _min_width(
    ids: Sequence[int], alloc: Mapping[int, Sequence[int]], need: Sequence[int]
) -> int | None:
    """The smallest number of nodes whose allocatable memory covers every type."""
    for k in range(1, len(ids) + 1):
        if next(_subsets_reaching(list(ids), alloc, need, k, 1), None) is not None:
            return k
    return None


def _subsets_reaching(
    candidates: Sequence[int],
    amounts: Mapping[int, Sequence[int]],
    need: Sequence[int],
    k: int,
    cap: int,
) -> Iterator[tuple[int, ...]]:
    """k-subsets of ``candidates`` (lexicographic) whose summed amounts cover ``need``.

    Prunes a branch as soon as even the largest remaining amounts cannot
    cover some type, so it never walks all C(N, k) subsets when few qualify.
    """
    n = len(candidates)
    if k > n:
        return
    ntypes = len(need)
    # suffix_best[j][t] = the best (k - depth) sums from candidates[j:] for type t,
    # computed lazily as the sorted descending amounts of the suffix
    suffix_sorted = [
        [sorted((amounts[c][t] for c in candidates[j:]), reverse=True) for t in range(ntypes)]
        for j in range(n + 1)
    ]
    yielded = 0
    chosen: list[int] = []
    sums = [0] * ntypes

    def walk(start: int) -> Iterator[tuple[int, ...]]:
        nonlocal yielded
        left = k - len(chosen)
        if left == 0:
            if all(sums[t] >= need[t] for t in range(ntypes)):
                yielded += 1
                yield tuple(chosen)
            return
        for j in range(start, n - left + 1):
            # can the best `left` amounts from j on still reach the need?
            if any(sums[t] + sum(suffix_sorted[j][t][:left]) < need[t] for t in range(ntypes)):
                return
            c = candidates[j]
            chosen.append(c)
            for t in range(ntypes):
                sums[t] += amounts[c][t]
            yield from walk(j + 1)
            for t in range(ntypes):
                sums[t] -= amounts[c][t]
            chosen.pop()
            if yielded >= cap:
                return

    yield from walk(0)

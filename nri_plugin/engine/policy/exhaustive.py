"""Every admissible mask in kubelet's order (machines up to EXHAUSTIVE_NODE_LIMIT nodes).

kubelet's ``calculateHints`` (``pkg/kubelet/cm/memorymanager/policy_static.go``)
walks every non-empty subset of NUMA nodes with ``bitmask.IterateBitMasks``;
this is the same walk, with the per-subset sums computed once by doubling.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import cache, lru_cache
from itertools import combinations

from nri_plugin.engine.bitmask import mask_of
from nri_plugin.engine.state import NodeState


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


# Up to this many subsets left, their free memory is summed node by node; above, for
# every subset at once by doubling (2^n sums).
_DIRECT_SUMS = 24


@lru_cache(maxsize=64)
def _structural_candidates(
    ids: tuple[int, ...],
    allocatable: tuple[tuple[int, ...], ...],
    needs: tuple[int, ...],
    grouped: int,
    single_assigned: int,
    group_assigned: tuple[tuple[int, int], ...],
) -> tuple[tuple[tuple[int, int, tuple[int, ...]], ...], int]:
    """The subsets that every rule but free memory admits, in kubelet's order, as
    (position mask, NUMA node mask, positions); and the smallest size whose allocatable
    memory covers the request (len(ids) when none).

    Those rules read allocatable memory (changed only at start and restore), the groups
    and which nodes serve single-node blocks (changed when a node gets its first
    assignment or loses its last), and requests repeat: cached, so that a decision
    checks only the free memory of the few subsets left on a busy machine.
    """
    n = len(ids)
    ok = [True] * (1 << n)
    for values, need in zip(allocatable, needs, strict=True):
        sums = _subset_sums(values)
        ok = [o and s >= need for o, s in zip(ok, sums, strict=True)]
    real = _subset_sums([1 << i for i in ids])  # position mask -> NUMA node mask
    min_size = n
    out: list[tuple[int, int, tuple[int, ...]]] = []
    for pm, size in _kubelet_order(n):
        if not ok[pm]:
            continue
        min_size = min(min_size, size)
        mask = real[pm]
        if size == 1:
            if grouped & pm:
                continue
        elif pm & single_assigned or any(
            pm & bit and cells != mask for bit, cells in group_assigned
        ):
            continue
        out.append((pm, mask, ()))
    if len(out) <= _DIRECT_SUMS:
        # positions only where the free sums will be taken node by node (the entry stays small)
        out = [(pm, mask, tuple(p for p in range(n) if pm >> p & 1)) for pm, mask, _ in out]
    return tuple(out), min_size


def _exhaustive_masks(
    machine: Mapping[int, NodeState],
    ids: Sequence[int],
    requested: Mapping[str, int],
    reusable: Mapping[int, Mapping[str, int]],
) -> tuple[list[int], int]:
    """kubelet's calculateHints over every non-empty subset, in its order; (masks, min size)."""
    types = list(requested.items())
    nodes = [machine[i] for i in ids]
    tables = [[node.table(t) for node in nodes] for t, _ in types]
    # positions that forbid every multi-node mask (assigned, serving single-node blocks),
    # and assigned positions of a group (allowed only in exactly that group's mask)
    grouped = single_assigned = 0
    group_assigned: list[tuple[int, int]] = []
    for pos, node in enumerate(nodes):
        is_grouped = len(node.cells) > 1
        if is_grouped:
            grouped |= 1 << pos
        if node.number_of_assignments > 0:
            if is_grouped:
                group_assigned.append((1 << pos, mask_of(node.cells)))
            else:
                single_assigned |= 1 << pos
    candidates, min_size = _structural_candidates(
        tuple(ids),
        tuple(tuple(table.allocatable for table in row) for row in tables),
        tuple(need for _, need in types),
        grouped,
        single_assigned,
        tuple(group_assigned),
    )
    # what is left to check: each type's free memory (plus reusable init memory), per
    # subset: summed directly when few are left (a busy machine), by doubling otherwise
    free = [[table.free for table in row] for row in tables]
    many = len(candidates) > _DIRECT_SUMS
    sums = [_subset_sums(frees) for frees in free] if many else []
    out: list[int] = []
    for pm, mask, positions in candidates:
        extra = reusable.get(mask) if reusable else None
        for ti, (t, need) in enumerate(types):
            if many:
                have = sums[ti][pm]
            elif len(positions) == 1:
                have = free[ti][positions[0]]
            else:
                frees = free[ti]
                have = sum([frees[p] for p in positions])
            if extra:
                have += extra.get(t, 0)
            if have < need:
                break
        else:
            out.append(mask)
    return out, min_size

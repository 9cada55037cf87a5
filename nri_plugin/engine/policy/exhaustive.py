"""Every admissible mask in kubelet's order (machines up to EXHAUSTIVE_NODE_LIMIT nodes).

kubelet's ``calculateHints`` (``pkg/kubelet/cm/memorymanager/policy_static.go``)
walks every non-empty subset of NUMA nodes with ``bitmask.IterateBitMasks``;
this is the same walk, with the per-subset sums computed once by doubling.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import cache
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
        sums = _subset_sums([node.table(t).allocatable for node in nodes])
        alloc_ok = [ok and s >= need for ok, s in zip(alloc_ok, sums, strict=True)]
        free.append(_subset_sums([node.table(t).free for node in nodes]))
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

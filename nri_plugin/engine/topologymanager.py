"""kubelet's Topology Manager: merging providers' hints and deciding admission.

As in kubelet's ``pkg/kubelet/cm/topologymanager/policy.go`` and its
``policy_*.go`` files (KEP-693): normalising each provider's answer, merging
every permutation, picking the best merged hint (with the non-preferred
tie-break and ``prefer-closest-numa-nodes``), and the four policies. Pure
functions over plain values.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from nri_plugin.engine.bitmask import is_narrower, nodes_of
from nri_plugin.engine.hint import ProviderHints, TopologyHint, topology_hint

POLICY_NONE = "none"
POLICY_BEST_EFFORT = "best-effort"
POLICY_RESTRICTED = "restricted"
POLICY_SINGLE_NUMA_NODE = "single-numa-node"
POLICIES = (POLICY_NONE, POLICY_BEST_EFFORT, POLICY_RESTRICTED, POLICY_SINGLE_NUMA_NODE)

SCOPE_CONTAINER = "container"
SCOPE_POD = "pod"
SCOPES = (SCOPE_CONTAINER, SCOPE_POD)

TOPOLOGY_AFFINITY_ERROR = "TopologyAffinityError"
UNEXPECTED_ADMISSION_ERROR = "UnexpectedAdmissionError"
TOPOLOGY_AFFINITY_MESSAGE = "Resources cannot be allocated with Topology locality"

DONT_CARE = TopologyHint(None, True)
EMPTY_AFFINITY = TopologyHint(None, False)


@dataclass(frozen=True)
class NUMAInfo:
    """The machine's NUMA node ids and (optionally) their distances."""

    node_ids: tuple[int, ...]
    distances: Mapping[tuple[int, int], int] | None = None

    @property
    def default_mask(self) -> int:
        mask = 0
        for n in self.node_ids:
            mask |= 1 << n
        return mask

    def narrowest(self, current: int, candidate: int) -> int:
        return candidate if is_narrower(candidate, current) else current

    def closest(self, current: int, candidate: int) -> int:
        if current.bit_count() != candidate.bit_count():
            return self.narrowest(current, candidate)
        # same width, so comparing the sums over all ordered pairs compares the averages
        d1, d2 = self._distance_sum(current), self._distance_sum(candidate)
        if d1 == d2:
            return current if current < candidate else candidate
        return current if d1 < d2 else candidate

    def _distance_sum(self, mask: int) -> int:
        assert self.distances is not None
        nodes = nodes_of(mask)
        return sum(self.distances[(a, b)] for a in nodes for b in nodes)


def normalize(providers: Sequence[ProviderHints]) -> list[list[TopologyHint]]:
    """kubelet's filterProvidersHints: one list per (provider, resource).

    nil -> don't care, empty -> impossible.
    """
    lists: list[list[TopologyHint]] = []
    for hints in providers:
        if not hints:
            lists.append([DONT_CARE])
            continue
        for resource in sorted(hints):
            lst = hints[resource]
            if lst is None:
                lists.append([DONT_CARE])
            elif not lst:
                lists.append([EMPTY_AFFINITY])
            else:
                lists.append(list(lst))
    return lists


def _merge_permutation(default_mask: int, permutation: Sequence[TopologyHint]) -> TopologyHint:
    """kubelet's mergePermutation: intersect; preferred iff all preferred and masks equal."""
    preferred = True
    first: int | None = None
    merged = default_mask
    for hint in permutation:
        if hint.mask is not None:
            if first is None:
                first = hint.mask
            elif hint.mask != first:
                preferred = False
            merged &= hint.mask
        if not hint.preferred:
            preferred = False
    return TopologyHint(merged, preferred)


def _max_of_min_counts(lists: Sequence[Sequence[TopologyHint]]) -> int:
    best = 0
    for lst in lists:
        low = 0
        for h in lst:
            if h.mask is None:
                continue
            c = h.mask.bit_count()
            if low == 0 or c < low:
                low = c
        best = max(best, low)
    return best


class _Merger:
    def __init__(
        self, info: NUMAInfo, lists: Sequence[Sequence[TopologyHint]], closest: bool
    ) -> None:
        self.info = info
        self.lists = lists
        self.closest = closest
        self.best_non_preferred = _max_of_min_counts(lists)

    def _fitter(self, current: TopologyHint, candidate: TopologyHint) -> TopologyHint:
        assert current.mask is not None and candidate.mask is not None
        if candidate.mask == current.mask:
            return current
        if self.closest:
            best = self.info.closest(current.mask, candidate.mask)
        else:
            best = self.info.narrowest(current.mask, candidate.mask)
        return current if best == current.mask else candidate

    def _compare(
        self, current: TopologyHint | None, candidate: TopologyHint
    ) -> TopologyHint | None:
        """kubelet's HintMerger.compare."""
        assert candidate.mask is not None
        if candidate.mask == 0:
            return current
        if current is None:
            return candidate
        assert current.mask is not None
        if not current.preferred and candidate.preferred:
            return candidate
        if current.preferred and not candidate.preferred:
            return current
        if current.preferred and candidate.preferred:
            return self._fitter(current, candidate)
        t = self.best_non_preferred
        cur, cand = current.mask.bit_count(), candidate.mask.bit_count()
        if cur > t:
            return self._fitter(current, candidate)
        if cur == t:
            return self._fitter(current, candidate) if cand == t else current
        if cand > t:
            return current
        if cand == t:
            return candidate
        if cand > cur:
            return candidate
        if cand < cur:
            return current
        return self._fitter(current, candidate)

    def merge(self) -> TopologyHint:
        """The best merged hint over every permutation of one hint per list.

        kubelet walks the full cross product, which explodes with many
        resources (one list per memory type); the comparison above is a total
        order on distinct merged hints, so folding the lists while keeping
        only distinct partial merges yields the same best hint.
        """
        default = self.info.default_mask
        # partial merge: (intersection so far, still preferred, first mask seen)
        partial: set[tuple[int, bool, int | None]] = {(default, True, None)}
        for lst in self.lists:
            step: set[tuple[int, bool, int | None]] = set()
            for mask, preferred, first in partial:
                for h in lst:
                    if h.mask is None:
                        ok = preferred and h.preferred
                        step.add((mask, ok, first if ok else -1))
                        continue
                    merged = mask & h.mask
                    if merged == 0:
                        continue  # empty merges are never chosen
                    if first is None:
                        ok = preferred and h.preferred
                        step.add((merged, ok, h.mask if ok else -1))
                    else:
                        ok = preferred and h.preferred and h.mask == first
                        step.add((merged, ok, first if ok else -1))
            partial = step
            if not partial:
                break
        best: TopologyHint | None = None
        for mask, preferred, _ in sorted(partial, key=lambda p: (p[0], p[1])):
            best = self._compare(best, topology_hint(mask, preferred))
        return best if best is not None else topology_hint(default, False)


def merge(
    policy: str,
    providers: Sequence[ProviderHints],
    info: NUMAInfo,
    prefer_closest: bool = False,
) -> tuple[TopologyHint, bool]:
    """Merge providers' hints under ``policy``; returns (best hint, admit)."""
    if policy == POLICY_NONE:
        return EMPTY_AFFINITY, True
    lists = normalize(providers)
    if policy == POLICY_SINGLE_NUMA_NODE:
        lists = [
            [h for h in lst if h.preferred and (h.mask is None or h.mask.bit_count() == 1)]
            for lst in lists
        ]
        best = _Merger(info, lists, False).merge()
        if best.mask == info.default_mask:
            best = TopologyHint(None, best.preferred)
        return best, best.preferred
    best = _Merger(info, lists, prefer_closest).merge()
    if policy == POLICY_BEST_EFFORT:
        return best, True
    if policy == POLICY_RESTRICTED:
        return best, best.preferred
    raise ValueError(f"unknown topology manager policy: {policy!r}")


@dataclass(frozen=True)
class MergeFocus:
    """What the topology manager will merge the memory hints with.

    ``others`` are the other providers' answers exactly as handed to
    :func:`merge`.
    """

    policy: str
    others: tuple[ProviderHints, ...]
    numa: NUMAInfo
    prefer_closest: bool = False

"""The bounded hint search for machines above EXHAUSTIVE_NODE_LIMIT NUMA nodes.

kubelet enumerates every subset of NUMA nodes (2^N); at 12 nodes that takes
seconds per container, and kubelet refuses more than 8 nodes unless
``max-allowable-numa-nodes`` is raised. Here the admissible masks are searched
instead (docs/design/bounded-search.md explains the vocabulary: the
*explicit* masks, the *family* of unassigned-node subsets, *decisive* masks).

About 740 lines in one module: the search, its vocabulary and the arguments
that it returns kubelet's own answer refer to each other throughout; the design
note keeps the whole argument in one place too.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from itertools import combinations

from nri_plugin.engine.bitmask import mask_of, nodes_of
from nri_plugin.engine.hint import TopologyHint
from nri_plugin.engine.state import NodeState
from nri_plugin.engine.topologymanager import (
    POLICY_NONE,
    POLICY_SINGLE_NUMA_NODE,
    MergeFocus,
    normalize,
)

# -- bounded search (machines above EXHAUSTIVE_NODE_LIMIT) ----------------------------------
#
# The admissible masks of kubelet's calculateHints fall into two parts:
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

# Cap on the hints of one width that the bounded search returns without a focus.
BOUNDED_HINT_CAP = 2048

SEARCH_BUDGET = 200_000
"""Search steps allowed for one hint calculation; past it a cheaper answer is given."""

_INF = float("inf")


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


def _kubelet_sorted(masks: Iterable[int]) -> list[int]:
    return sorted(set(masks), key=lambda m: (m.bit_count(), nodes_of(m)))


class _BoundedSearch:
    """calculateHints' admissibility over one machine state, searched instead of enumerated."""

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
        self.free = {n: tuple(machine[n].table(t).free for t in self.types) for n in ids}
        self.alloc = {n: tuple(machine[n].table(t).allocatable for t in self.types) for n in ids}
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
            and not self._covers(self._sum(nodes_of(m)), self.need)
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
        nodes = nodes_of(mask)
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
        return mask & ~self.u_mask == 0 and self._covers(self._sum(nodes_of(mask)), self.need)

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
            base = self._sum(nodes_of(mask))
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
    return lambda m: (dist.total(nodes_of(m)), m)


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

"""``topologymanager.merge`` against a brute-force model of kubelet's hint merging.

The model below is written from reference/static-policy.md section 6 alone:
it walks the full cross product of the normalised lists (as kubelet's
iterateAllProviderTopologyHints does) and runs HintMerger.compare on every
merged permutation in that order. The engine folds the lists instead of
walking the product; both must pick the same hint and the same admission.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Mapping, Sequence

from hypothesis import given, settings
from hypothesis import strategies as st

from nri_plugin.engine.hint import ProviderHints, TopologyHint
from nri_plugin.engine.topologymanager import (
    POLICIES,
    POLICY_BEST_EFFORT,
    POLICY_NONE,
    POLICY_RESTRICTED,
    POLICY_SINGLE_NUMA_NODE,
    NUMAInfo,
    merge,
)
from tests.strategies import distance_matrices, ints, node_id_sets, topology_hints

Distances = Mapping[tuple[int, int], int]

# Keep the reference's cross product small enough to walk in microseconds.
PERMUTATION_BUDGET = 512

# -- the reference model ---------------------------------------------------------------


def ref_normalize(providers: Sequence[ProviderHints]) -> list[list[TopologyHint]]:
    """Section 6.1, resources in the order the provider lists them."""
    lists: list[list[TopologyHint]] = []
    for hints in providers:
        if hints is None or len(hints) == 0:
            lists.append([TopologyHint(None, True)])
            continue
        for lst in hints.values():
            if lst is None:
                lists.append([TopologyHint(None, True)])
            elif len(lst) == 0:
                lists.append([TopologyHint(None, False)])
            else:
                lists.append(list(lst))
    return lists


def ref_merge_permutation(default: int, permutation: Sequence[TopologyHint]) -> TopologyHint:
    """Section 6.2."""
    masks = [h.mask for h in permutation if h.mask is not None]
    merged = default
    for m in masks:
        merged &= m
    preferred = all(h.preferred for h in permutation) and all(m == masks[0] for m in masks)
    return TopologyHint(merged, preferred)


def _count(mask: int) -> int:
    return bin(mask).count("1")


def _bits(mask: int) -> list[int]:
    return [i for i in range(mask.bit_length()) if mask >> i & 1]


def ref_narrower(a: int, b: int) -> bool:
    """Section 1: fewer nodes, or as many and a smaller bitmask value."""
    return _count(a) < _count(b) or (_count(a) == _count(b) and a < b)


def ref_average_distance(mask: int, distances: Distances) -> float:
    nodes = _bits(mask)
    total = sum(distances[(i, j)] for i in nodes for j in nodes)
    return total / (len(nodes) * len(nodes))


def ref_fitter_mask(a: int, b: int, distances: Distances | None) -> int:
    """Narrowest, or with prefer-closest-numa-nodes the closest (section 6.3 step 3)."""
    if distances is None or _count(a) != _count(b):
        return a if ref_narrower(a, b) or a == b else b
    da, db = ref_average_distance(a, distances), ref_average_distance(b, distances)
    if da == db:
        return a if a < b else b
    return a if da < db else b


class RefMerger:
    def __init__(
        self, lists: Sequence[Sequence[TopologyHint]], distances: Distances | None
    ) -> None:
        self.lists = lists
        self.distances = distances
        # T: the largest, over the lists, of the width of the list's narrowest hint with a mask
        self.t = 0
        for lst in lists:
            widths = [_count(h.mask) for h in lst if h.mask is not None]
            if widths:
                self.t = max(self.t, min(widths))

    def fitter(self, current: TopologyHint, candidate: TopologyHint) -> TopologyHint:
        assert current.mask is not None and candidate.mask is not None
        if current.mask == candidate.mask:
            return current
        best = ref_fitter_mask(current.mask, candidate.mask, self.distances)
        return current if best == current.mask else candidate

    def compare(self, current: TopologyHint | None, candidate: TopologyHint) -> TopologyHint | None:
        """kubelet's HintMerger.compare, step by step as section 6.3 lists it."""
        assert candidate.mask is not None
        if _count(candidate.mask) == 0:
            return current
        if current is None:
            return candidate
        assert current.mask is not None
        if candidate.preferred != current.preferred:
            return candidate if candidate.preferred else current
        if current.preferred:
            return self.fitter(current, candidate)
        cur, cand, t = _count(current.mask), _count(candidate.mask), self.t
        if cur > t:
            return self.fitter(current, candidate)
        if cur == t:
            return self.fitter(current, candidate) if cand == t else current
        if cand > t:
            return current
        if cand == t:
            return candidate
        if cand > cur:
            return candidate
        if cand < cur:
            return current
        return self.fitter(current, candidate)

    def merge(self, default: int) -> TopologyHint:
        best: TopologyHint | None = None
        for permutation in itertools.product(*self.lists):
            best = self.compare(best, ref_merge_permutation(default, permutation))
        return best if best is not None else TopologyHint(default, False)


def ref_policy_merge(
    policy: str,
    providers: Sequence[ProviderHints],
    node_ids: Sequence[int],
    distances: Distances | None,
) -> tuple[TopologyHint, bool]:
    """Section 6.4; ``distances`` given means prefer-closest-numa-nodes is on."""
    if policy == POLICY_NONE:
        return TopologyHint(None, False), True
    default = 0
    for n in node_ids:
        default |= 1 << n
    lists = ref_normalize(providers)
    if policy == POLICY_SINGLE_NUMA_NODE:
        lists = [
            [h for h in lst if h.preferred and (h.mask is None or _count(h.mask) == 1)]
            for lst in lists
        ]
        best = RefMerger(lists, None).merge(default)
        if best.mask == default:
            best = TopologyHint(None, best.preferred)
        return best, best.preferred
    best = RefMerger(lists, distances).merge(default)
    if policy == POLICY_BEST_EFFORT:
        return best, True
    assert policy == POLICY_RESTRICTED
    return best, best.preferred


def permutations_of(providers: Sequence[ProviderHints]) -> int:
    n = 1
    for lst in ref_normalize(providers):
        n *= max(1, len(lst))
    return n


# -- generators -----------------------------------------------------------------------


@st.composite
def provider_answers(
    draw: st.DrawFn, node_ids: tuple[int, ...], budget: int = PERMUTATION_BUDGET
) -> list[ProviderHints]:
    """1-4 providers; each answers nil, an empty map, or 1-3 resources of nil/empty/hint lists."""
    providers: list[ProviderHints] = []
    product = 1
    for p in range(draw(ints(1, 4))):
        kind = draw(ints(0, 7))
        if kind == 0:
            providers.append(None)
            continue
        if kind == 1:
            providers.append({})
            continue
        answer: dict[str, list[TopologyHint] | None] = {}
        for r in range(draw(ints(1, 3))):
            shape = draw(ints(0, 7))
            if shape == 0:
                answer[f"r{p}.{r}"] = None
            elif shape == 1:
                answer[f"r{p}.{r}"] = []
            else:
                room = max(1, min(5, budget // product))
                hints = draw(st.lists(topology_hints(node_ids), min_size=1, max_size=room))
                product *= len(hints)
                answer[f"r{p}.{r}"] = hints
        providers.append(answer)
    return providers


@st.composite
def merge_cases(
    draw: st.DrawFn,
) -> tuple[tuple[int, ...], Distances, list[ProviderHints]]:
    ids = draw(node_id_sets(1, 6))
    return ids, draw(distance_matrices(ids)), draw(provider_answers(ids))


def random_case(rng: random.Random) -> tuple[tuple[int, ...], Distances, list[ProviderHints]]:
    """The same shape of input as ``merge_cases``, from a seeded generator (fast, in bulk)."""
    count = rng.randint(1, 6)
    ids = (
        tuple(sorted(rng.sample(range(count + 2), count)))
        if rng.random() < 0.25
        else tuple(range(count))
    )
    distances: dict[tuple[int, int], int] = {}
    for i, a in enumerate(ids):
        distances[(a, a)] = 10
        for b in ids[i + 1 :]:
            distances[(a, b)] = distances[(b, a)] = rng.choice((11, 12, 20, 21, 31, 40))

    def hint() -> TopologyHint:
        mask = None
        if rng.random() < 0.8:
            mask = 0
            while mask == 0:
                mask = sum(1 << n for n in ids if rng.random() < 0.4)
        return TopologyHint(mask, rng.random() < 0.5)

    providers: list[ProviderHints] = []
    product = 1
    for p in range(rng.randint(1, 4)):
        kind = rng.randint(0, 7)
        if kind <= 1:
            providers.append(None if kind == 0 else {})
            continue
        answer: dict[str, list[TopologyHint] | None] = {}
        for r in range(rng.randint(1, 3)):
            shape = rng.randint(0, 7)
            if shape <= 1:
                answer[f"r{p}.{r}"] = None if shape == 0 else []
                continue
            room = max(1, min(5, PERMUTATION_BUDGET // product))
            hints = [hint() for _ in range(rng.randint(1, room))]
            product *= len(hints)
            answer[f"r{p}.{r}"] = hints
        providers.append(answer)
    return ids, distances, providers


def _both(
    policy: str,
    ids: tuple[int, ...],
    distances: Distances,
    providers: list[ProviderHints],
    closest: bool,
) -> tuple[tuple[int | None, bool, bool], tuple[int | None, bool, bool]]:
    expected_hint, expected_admit = ref_policy_merge(
        policy, providers, ids, distances if closest else None
    )
    info = NUMAInfo(ids, distances)
    actual_hint, actual_admit = merge(policy, providers, info, prefer_closest=closest)
    return (
        (expected_hint.mask, expected_hint.preferred, expected_admit),
        (actual_hint.mask, actual_hint.preferred, actual_admit),
    )


# -- tests --------------------------------------------------------------------------------


def test_reference_model_on_the_reference_examples() -> None:
    """The model itself reproduces the worked examples of section 6."""
    cpu_01: ProviderHints = {"cpu": [TopologyHint(0b11, True)]}
    memory_0: ProviderHints = {"memory": [TopologyHint(0b01, True)]}
    # CPU [0,1] + memory [0]: [0] but not preferred (6.2); restricted rejects
    assert ref_policy_merge(POLICY_RESTRICTED, [cpu_01, memory_0], (0, 1), None) == (
        TopologyHint(0b01, False),
        False,
    )
    # with [0,1] also offered, T = 2 makes the wide merge win (quirk 15.3)
    memory_0_01: ProviderHints = {"memory": [TopologyHint(0b01, True), TopologyHint(0b11, False)]}
    assert ref_policy_merge(POLICY_BEST_EFFORT, [cpu_01, memory_0_01], (0, 1), None) == (
        TopologyHint(0b11, False),
        True,
    )
    # no preference at all -> (no mask, preferred) under single-numa-node (6.4)
    assert ref_policy_merge(POLICY_SINGLE_NUMA_NODE, [None, {}], (0, 1), None) == (
        TopologyHint(None, True),
        True,
    )
    # an empty list: "cannot be satisfied" -> all nodes, not preferred
    assert ref_policy_merge(POLICY_BEST_EFFORT, [{"memory": []}], (0, 1), None) == (
        TopologyHint(0b11, False),
        True,
    )


@settings(max_examples=400, deadline=None)
@given(merge_cases(), st.sampled_from(POLICIES), st.booleans())
def test_merge_agrees_with_the_full_cross_product(
    case: tuple[tuple[int, ...], Distances, list[ProviderHints]], policy: str, closest: bool
) -> None:
    ids, distances, providers = case
    expected, actual = _both(policy, ids, distances, providers, closest)
    assert actual == expected


def test_merge_agrees_in_bulk_for_every_policy() -> None:
    rng = random.Random(20240611)
    for _ in range(1500):
        ids, distances, providers = random_case(rng)
        for policy in POLICIES:
            for closest in (False, True):
                if policy == POLICY_NONE and closest:
                    continue
                expected, actual = _both(policy, ids, distances, providers, closest)
                assert actual == expected, (policy, closest, ids, distances, providers)


@settings(max_examples=200, deadline=None)
@given(merge_cases(), st.randoms(use_true_random=False))
def test_merge_does_not_depend_on_the_order_of_providers_and_resources(
    case: tuple[tuple[int, ...], Distances, list[ProviderHints]], rnd: random.Random
) -> None:
    # kubelet visits a provider's resources in Go map order, so the result
    # must not depend on that order; the engine sorts, the model does not.
    ids, distances, providers = case
    shuffled: list[ProviderHints] = []
    for hints in providers:
        if hints:
            items = list(hints.items())
            rnd.shuffle(items)
            shuffled.append(dict(items))
        else:
            shuffled.append(hints)
    rnd.shuffle(shuffled)
    for policy in (POLICY_BEST_EFFORT, POLICY_RESTRICTED, POLICY_SINGLE_NUMA_NODE):
        for dist in (None, distances):
            assert ref_policy_merge(policy, shuffled, ids, dist) == ref_policy_merge(
                policy, providers, ids, dist
            )


def test_generated_cases_are_diverse() -> None:
    """Guard against a generator that never exercises the interesting branches."""
    rng = random.Random(7)
    seen: set[str] = set()
    for _ in range(600):
        ids, distances, providers = random_case(rng)
        lists = ref_normalize(providers)
        hint, _ = ref_policy_merge(POLICY_BEST_EFFORT, providers, ids, None)
        seen.add("preferred" if hint.preferred else "not preferred")
        closest, _ = ref_policy_merge(POLICY_BEST_EFFORT, providers, ids, distances)
        if closest != hint:
            seen.add("closest differs from narrowest")
        if any(lst == [TopologyHint(None, False)] for lst in lists):
            seen.add("empty list")
        if permutations_of(providers) >= 64:
            seen.add("large product")
        snn, admit = ref_policy_merge(POLICY_SINGLE_NUMA_NODE, providers, ids, None)
        seen.add(f"snn admit={admit}")
        if snn.mask is None:
            seen.add("snn no mask")
    assert seen >= {
        "preferred",
        "not preferred",
        "empty list",
        "large product",
        "snn admit=True",
        "snn admit=False",
        "snn no mask",
        "closest differs from narrowest",
    }, seen

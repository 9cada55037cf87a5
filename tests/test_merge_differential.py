"""``topologymanager.merge`` against an independent brute-force model of kubelet's merge.

The model is written from kubelet's description of the topology manager
(``pkg/kubelet/cm/topologymanager/policy.go``: ``mergeFilteredHints``,
``HintMerger.compare``; KEP-693, "Computing Preferred Affinity") and shares
no code with the engine:

* it walks the full cross product of the normalised lists with
  ``itertools.product`` (the engine folds the lists and keeps distinct partial
  merges);
* it works on sets of NUMA node ids (the engine on bitmasks);
* it states the choice of the best merged hint as a ranking -- every candidate
  gets a sort key and the first one wins -- where kubelet and the engine keep a
  running best and compare each candidate with it. The two agree because that
  comparison is a total order on distinct merged hints; the ranking is read off
  its rules:

  1. a preferred hint beats any non-preferred one;
  2. preferred hints: the fitter mask wins (below);
  3. non-preferred hints, with T the widest of the lists' narrowest masks: a
     mask of exactly T nodes beats one narrower than T, which beats one wider
     than T; among masks of width T, and among those wider than T, the fitter
     wins; among those narrower than T the wider wins, then the fitter;
  4. "fitter": fewer nodes, then the smaller bitmask value; with
     prefer-closest-numa-nodes, fewer nodes, then the smaller average distance
     over all ordered pairs of the mask's nodes (i = j included), then the
     smaller bitmask value.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Mapping, Sequence
from fractions import Fraction

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
Nodes = frozenset[int]  # a mask as the set of its NUMA node ids; None: "no mask"

# Keep the reference's cross product small enough to walk in microseconds.
PERMUTATION_BUDGET = 512

# -- the reference model ---------------------------------------------------------------


def nodes(mask: int | None) -> Nodes | None:
    return None if mask is None else frozenset(i for i in range(mask.bit_length()) if mask >> i & 1)


def bitmask_value(ids: Nodes) -> int:
    return sum(1 << i for i in ids)


def ref_normalize(providers: Sequence[ProviderHints]) -> list[list[tuple[Nodes | None, bool]]]:
    """One list per (provider, resource): no answer or a nil list is "don't care"
    (no mask, preferred), an empty list "cannot be satisfied" (no mask, not preferred)."""
    dont_care, impossible = [(None, True)], [(None, False)]
    lists: list[list[tuple[Nodes | None, bool]]] = []
    for answer in providers:
        if not answer:
            lists.append(dont_care)
            continue
        for hints in answer.values():
            if hints is None:
                lists.append(dont_care)
            elif not hints:
                lists.append(impossible)
            else:
                lists.append([(nodes(h.mask), h.preferred) for h in hints])
    return lists


def ref_merged(
    machine: Nodes, combination: Sequence[tuple[Nodes | None, bool]]
) -> tuple[Nodes, bool]:
    """One hint from each list: the nodes all of them allow; preferred when every
    hint is preferred and every mask given is the same."""
    masks = [m for m, _ in combination if m is not None]
    allowed = machine.intersection(*masks)
    preferred = all(p for _, p in combination) and len(set(masks)) <= 1
    return allowed, preferred


def average_distance(ids: Nodes, distances: Distances) -> Fraction:
    pairs = [(i, j) for i in ids for j in ids]
    return Fraction(sum(distances[p] for p in pairs), len(pairs))


def fitness(ids: Nodes, distances: Distances | None) -> tuple[object, ...]:
    """Smaller is fitter."""
    if distances is None:
        return (len(ids), bitmask_value(ids))
    return (len(ids), average_distance(ids, distances), bitmask_value(ids))


def rank(hint: tuple[Nodes, bool], t: int, distances: Distances | None) -> tuple[object, ...]:
    """Smaller ranks first (see the module docstring)."""
    ids, preferred = hint
    if preferred:
        return (0, fitness(ids, distances))
    if len(ids) == t:
        return (1, fitness(ids, distances))
    if len(ids) < t:
        return (2, -len(ids), fitness(ids, distances))
    return (3, fitness(ids, distances))


def ref_best(
    lists: Sequence[Sequence[tuple[Nodes | None, bool]]],
    machine: Nodes,
    distances: Distances | None,
) -> tuple[Nodes, bool]:
    widths = [min(len(m) for m, _ in lst if m is not None) for lst in lists
              if any(m is not None for m, _ in lst)]  # fmt: skip
    t = max(widths, default=0)
    candidates = {ref_merged(machine, c) for c in itertools.product(*lists)}
    candidates = {c for c in candidates if c[0]}  # an empty merge is never chosen
    if not candidates:
        return machine, False
    return min(candidates, key=lambda c: rank(c, t, distances))


def ref_policy_merge(
    policy: str,
    providers: Sequence[ProviderHints],
    node_ids: Sequence[int],
    distances: Distances | None,
) -> tuple[TopologyHint, bool]:
    """The policies; ``distances`` given means prefer-closest-numa-nodes is on."""
    if policy == POLICY_NONE:
        return TopologyHint(None, False), True
    machine = frozenset(node_ids)
    lists = ref_normalize(providers)
    if policy == POLICY_SINGLE_NUMA_NODE:
        # only preferred hints of one node (or none) count, and no distances
        lists = [[(m, p) for m, p in lst if p and (m is None or len(m) == 1)] for lst in lists]
        ids, preferred = ref_best(lists, machine, None)
        mask = None if ids == machine else bitmask_value(ids)
        return TopologyHint(mask, preferred), preferred
    ids, preferred = ref_best(lists, machine, distances)
    hint = TopologyHint(bitmask_value(ids), preferred)
    return hint, policy == POLICY_BEST_EFFORT or preferred


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
    """The model itself reproduces worked examples of kubelet's merge."""
    cpu_01: ProviderHints = {"cpu": [TopologyHint(0b11, True)]}
    memory_0: ProviderHints = {"memory": [TopologyHint(0b01, True)]}
    # CPU [0,1] + memory [0]: [0] but not preferred (the masks differ); restricted rejects
    assert ref_policy_merge(POLICY_RESTRICTED, [cpu_01, memory_0], (0, 1), None) == (
        TopologyHint(0b01, False),
        False,
    )
    # with [0,1] also offered, T = 2 makes the wide merge win over the narrow one
    memory_0_01: ProviderHints = {"memory": [TopologyHint(0b01, True), TopologyHint(0b11, False)]}
    assert ref_policy_merge(POLICY_BEST_EFFORT, [cpu_01, memory_0_01], (0, 1), None) == (
        TopologyHint(0b11, False),
        True,
    )
    # no preference at all -> (no mask, preferred) under single-numa-node
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
    # kubelet visits a provider's resources in Go map order, so the engine's result
    # must not depend on that order (nor on the providers' order).
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
    info = NUMAInfo(ids, distances)
    for policy in (POLICY_BEST_EFFORT, POLICY_RESTRICTED, POLICY_SINGLE_NUMA_NODE):
        for closest in (False, True):
            assert merge(policy, shuffled, info, prefer_closest=closest) == merge(
                policy, providers, info, prefer_closest=closest
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
        if any(lst == [(None, False)] for lst in lists):
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

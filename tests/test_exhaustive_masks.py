"""The exhaustive walk (cached structural rules, free memory checked per decision) against a
plain per-subset reading of kubelet's rules, on random machines of up to 8 nodes."""

from __future__ import annotations

import random
from collections.abc import Mapping
from itertools import combinations

import pytest

from nri_plugin.engine.policy.exhaustive import _exhaustive_masks
from nri_plugin.engine.state import MemoryTable, NodeState

GI = 1 << 30
TYPES = ("memory", "hugepages-1Gi")


def reference(
    machine: Mapping[int, NodeState],
    requested: Mapping[str, int],
    reusable: Mapping[int, Mapping[str, int]],
) -> tuple[list[int], int]:
    """kubelet's calculateHints, one subset at a time, in IterateBitMasks order."""
    ids = sorted(machine)
    out, min_size = [], len(ids)
    for k in range(1, len(ids) + 1):
        for subset in combinations(ids, k):
            mask = sum(1 << i for i in subset)
            nodes = [machine[i] for i in subset]
            if any(
                sum(n.table(t).allocatable for n in nodes) < need for t, need in requested.items()
            ):
                continue
            min_size = min(min_size, k)
            if k == 1 and len(nodes[0].cells) > 1:
                continue  # a node of a group is never a single-node hint
            if k > 1 and any(
                n.number_of_assignments > 0 and (len(n.cells) == 1 or set(n.cells) != set(subset))
                for n in nodes
            ):
                continue  # a node serving single-node blocks, or another group
            extra = reusable.get(mask, {})
            if any(
                sum(n.table(t).free for n in nodes) + extra.get(t, 0) < need
                for t, need in requested.items()
            ):
                continue
            out.append(mask)
    return out, min_size


def random_machine(rng: random.Random, n: int, busy: bool) -> dict[int, NodeState]:
    machine: dict[int, NodeState] = {}
    i = 0
    while i < n:
        group = list(range(i, min(n, i + rng.choice((1, 1, 1, 2, 3)))))
        i += len(group)
        for node in group:
            tables = {}
            for t in TYPES:
                if t != "memory" and rng.random() < 0.2:
                    continue
                allocatable = rng.choice((0, 1, 2, 4, 8)) * GI
                free = rng.randint(0, allocatable // (GI // 4)) * (GI // 4) if allocatable else 0
                tables[t] = MemoryTable(allocatable, 0, allocatable, allocatable - free, free)
            assignments = rng.choice((0, 0, 1, 2)) if busy else 0
            machine[node] = NodeState(assignments, tables, list(group))
    return machine


@pytest.mark.parametrize("seed", range(4))
def test_exhaustive_walk_is_kubelets(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(500):
        n = rng.randint(1, 8)
        machine = random_machine(rng, n, busy=rng.random() < 0.7)
        requested = {"memory": rng.randint(0, 20) * (GI // 4)}
        if rng.random() < 0.5:
            requested["hugepages-1Gi"] = rng.randint(0, 10) * GI
        reusable: dict[int, dict[str, int]] = {}
        if rng.random() < 0.3:
            for _ in range(rng.randint(1, 3)):
                reusable[rng.randint(1, (1 << n) - 1)] = {
                    t: rng.randint(0, 4) * (GI // 4) for t in requested
                }
        got = _exhaustive_masks(machine, sorted(machine), requested, reusable)
        assert got == reference(machine, requested, reusable)

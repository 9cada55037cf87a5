"""Topology hints and NUMA bitmasks, as kubelet's topology manager models them.

A mask is a Python int used as a bitmask (bit *i* = NUMA node *i*), which
makes kubelet's two orderings cheap: *count* and *narrower* (fewer nodes, or
as many nodes and a smaller bitmask value).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


def mask_of(nodes: Iterable[int]) -> int:
    mask = 0
    for n in nodes:
        mask |= 1 << n
    return mask


def nodes_of(mask: int) -> list[int]:
    """The node ids of ``mask``, ascending."""
    nodes = []
    n = 0
    while mask:
        if mask & 1:
            nodes.append(n)
        mask >>= 1
        n += 1
    return nodes


def count(mask: int) -> int:
    return mask.bit_count()


def is_narrower(a: int, b: int) -> bool:
    """kubelet's BitMask.IsNarrowerThan: fewer nodes, or as many and a smaller value."""
    ca, cb = a.bit_count(), b.bit_count()
    if ca == cb:
        return a < b
    return ca < cb


def format_mems(mask: int) -> str:
    """``cpuset.mems`` as kubelet writes it: node ids ascending, comma-joined."""
    return ",".join(str(n) for n in nodes_of(mask))


@dataclass(frozen=True, slots=True)
class TopologyHint:
    """A NUMA affinity (``None`` = any node) and whether it is preferred."""

    mask: int | None
    preferred: bool

    def nodes(self) -> list[int] | None:
        return None if self.mask is None else nodes_of(self.mask)

    def to_json(self) -> dict[str, object]:
        return {"nodes": self.nodes(), "preferred": self.preferred}

    def __str__(self) -> str:
        nodes = "any" if self.mask is None else "[" + ",".join(map(str, nodes_of(self.mask))) + "]"
        return f"{nodes}{'' if self.preferred else ' (not preferred)'}"


# Hints of one provider: resource name -> alternative hints. ``None`` for the
# whole map, or for one resource, means "don't care"; an empty list means
# "cannot be satisfied" (kubelet's nil vs empty distinction).
ProviderHints = dict[str, list[TopologyHint] | None] | None

"""Topology hints and NUMA bitmasks, as kubelet's topology manager models them.

A mask is a Python int used as a bitmask (bit *i* = NUMA node *i*), which
makes kubelet's two orderings cheap: *count* and *narrower* (fewer nodes, or
as many nodes and a smaller bitmask value).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass

from nri_plugin.engine.bitmask import nodes_of


def count(mask: int) -> int:
    return mask.bit_count()


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


@functools.lru_cache(maxsize=4096, typed=True)
def topology_hint(mask: int | None, preferred: bool) -> TopologyHint:
    """The TopologyHint of ``mask``, shared (hints are immutable): building a frozen
    dataclass costs as much as a dozen dict look-ups, and a decision builds dozens."""
    return TopologyHint(mask, preferred)


# Hints of one provider: resource name -> alternative hints. ``None`` for the
# whole map, or for one resource, means "don't care"; an empty list means
# "cannot be satisfied" (kubelet's nil vs empty distinction).
ProviderHints = dict[str, list[TopologyHint] | None] | None

# Another provider's hints for one container (kubelet's device manager: one list
# per resource name, for the devices allocated to it). ``None`` for a resource
# means "don't care" (devices without topology); an empty tuple, "cannot be
# satisfied".
DeviceHints = Mapping[str, tuple[TopologyHint, ...] | None]

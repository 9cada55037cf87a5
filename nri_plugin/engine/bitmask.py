"""NUMA node masks and Linux cpulists.

A mask is a Python int used as a bitmask (bit *i* = NUMA node or CPU *i*),
which makes kubelet's two orderings cheap: *count* and *narrower* (fewer
nodes, or as many nodes and a smaller bitmask value; kubelet's
``pkg/kubelet/cm/topologymanager/bitmask``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from nri_plugin.errors import TopologyError, quote
from nri_plugin.quantity import bounded_int, short


def mask_of(ids: Iterable[int]) -> int:
    """The mask with bit ``i`` set for every id ``i`` (NUMA nodes or CPUs)."""
    mask = 0
    for n in ids:
        mask |= 1 << n
    return mask


def nodes_of(mask: int) -> list[int]:
    """The ids of ``mask``, ascending (one step per set bit, not per bit position)."""
    ids = []
    while mask:
        low = mask & -mask
        ids.append(low.bit_length() - 1)
        mask ^= low
    return ids


def is_narrower(a: int, b: int) -> bool:
    """kubelet's BitMask.IsNarrowerThan: fewer nodes, or as many and a smaller value."""
    ca, cb = a.bit_count(), b.bit_count()
    if ca == cb:
        return a < b
    return ca < cb


def format_mems(mask: int) -> str:
    """``cpuset.mems`` as kubelet writes it: node ids ascending, comma-joined."""
    return ",".join(str(n) for n in nodes_of(mask))


# A CPU id bound far above any real machine (Linux NR_CPUS tops out at 8192),
# so that a typo such as "0-4000000000" cannot allocate gigabytes.
MAX_CPU_ID = (1 << 16) - 1


_CPULIST_ITEM_RE = re.compile(r"([0-9]+)(?:-([0-9]+))?")


def parse_cpulist(text: str, *, what: str = "cpulist") -> frozenset[int]:
    """CPU ids of a Linux cpulist such as ``0-3,8,10-11``; ``""`` is the empty set."""
    stripped = text.strip()
    if not stripped:
        return frozenset()
    cpus: set[int] = set()
    for item in stripped.split(","):
        match = _CPULIST_ITEM_RE.fullmatch(item)
        if match is None:
            raise TopologyError(
                f'{what}: {quote(text)} is not a valid cpulist (expected e.g. "0-3,8,10-11")'
            )
        first = bounded_int(match[1], MAX_CPU_ID)
        last = bounded_int(match[2], MAX_CPU_ID) if match[2] is not None else first
        if first is None or last is None:
            big = match[1] if first is None else match[2]
            raise TopologyError(f"{what}: {quote(text)} names CPU {short(big)}, above {MAX_CPU_ID}")
        if last < first:
            raise TopologyError(f"{what}: {quote(text)} has the descending range {quote(item)}")
        cpus.update(range(first, last + 1))
    return frozenset(cpus)


def format_cpulist(cpus: Iterable[int]) -> str:
    """The Linux cpulist of ``cpus``: ascending, consecutive ids as ranges (``0-3,8``)."""
    ordered = sorted(set(cpus))
    parts: list[str] = []
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        parts.append(str(ordered[i]) if i == j else f"{ordered[i]}-{ordered[j]}")
        i = j + 1
    return ",".join(parts)

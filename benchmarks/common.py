"""Shared pieces of the benchmarks: machines, workloads, statistics, tables.

Benchmarks print figures; they assert nothing about speed (targets are
compared and flagged in the tables, never enforced as tests).
"""

from __future__ import annotations

import datetime
import os
import platform
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from fractions import Fraction

from nri_plugin.engine.config import Config
from nri_plugin.engine.pod import GUARANTEED, ContainerSpec, PodSpec
from nri_plugin.engine.topology import NumaNode, Topology

GI = 1 << 30
MI = 1 << 20
HUGEPAGE_1G = GI

# CPU nodes: 4 CPUs, 64Gi of memory of which 8Gi are 1Gi hugepages.
CPU_NODE_MEMORY = 64 * GI
CPU_NODE_HUGEPAGES = 8 * GI
CPUS_PER_NODE = 4
# CPU-less (CXL-style) memory expanders: 256Gi each, no hugepages.
CXL_NODE_MEMORY = 256 * GI

UNIFORM = "uniform"
CXL = "cxl"
KINDS = (UNIFORM, CXL)


def cpu_node_count(n: int, kind: str) -> int:
    """How many of ``n`` nodes have CPUs: all, or one in four (at least one) for CXL."""
    return n if kind == UNIFORM else max(1, n // 4)


def make_topology(n: int, kind: str) -> Topology:
    """``n`` NUMA nodes: all with CPUs (uniform), or few CPU nodes and CPU-less expanders (cxl).

    Distances: 10 local; 12 between CPU nodes of one socket (4 per socket),
    21 across sockets; 30 from a CPU node to an expander, 40 between expanders.
    """
    cpu_nodes = cpu_node_count(n, kind)
    nodes = []
    for i in range(n):
        if i < cpu_nodes:
            cpus = frozenset(range(i * CPUS_PER_NODE, (i + 1) * CPUS_PER_NODE))
            nodes.append(NumaNode(i, cpus, CPU_NODE_MEMORY, {HUGEPAGE_1G: CPU_NODE_HUGEPAGES}))
        else:
            nodes.append(NumaNode(i, frozenset(), CXL_NODE_MEMORY, {HUGEPAGE_1G: 0}))
    distances: dict[tuple[int, int], int] = {}
    for a in range(n):
        for b in range(n):
            if a == b:
                d = 10
            elif a < cpu_nodes and b < cpu_nodes:
                d = 12 if a // 4 == b // 4 else 21
            elif a < cpu_nodes or b < cpu_nodes:
                d = 30
            else:
                d = 40
            distances[(a, b)] = d
    return Topology(tuple(nodes), distances)


def make_config(n: int, policy: str = "best-effort", *, closest: bool = False) -> Config:
    return Config(
        topology_manager_policy=policy,
        prefer_closest_numa_nodes=closest,
        max_allowable_numa_nodes=max(8, n),
    )


def guaranteed_pod(
    uid: str,
    memory: int,
    *,
    cpus: Iterable[int] | None = None,
    hugepages_1g: int = 0,
    name: str = "app",
) -> PodSpec:
    """A one-container Guaranteed pod; ``cpus`` pins it (the CPU manager's hint)."""
    limits: dict[str, Fraction] = {"cpu": Fraction(1), "memory": Fraction(memory)}
    if hugepages_1g:
        limits["hugepages-1Gi"] = Fraction(hugepages_1g)
    cpuset = frozenset(cpus) if cpus is not None else None
    container = ContainerSpec(name, requests=dict(limits), limits=limits, cpuset=cpuset)
    # the QoS class given, as the plugin gives it (read from the pod's cgroup, not computed)
    return PodSpec(uid=uid, name=uid, containers=(container,), qos_class=GUARANTEED)


# -- statistics and output -----------------------------------------------------------------


@dataclass(frozen=True)
class Summary:
    median: float
    p99: float
    count: int

    @classmethod
    def of(cls, samples: Sequence[float]) -> Summary:
        ordered = sorted(samples)
        if not ordered:
            return cls(float("nan"), float("nan"), 0)
        index = min(len(ordered) - 1, max(0, round(0.99 * len(ordered)) - 1))
        return cls(statistics.median(ordered), ordered[index], len(ordered))


def fmt_us(seconds: float) -> str:
    """A duration for a table: µs below 10 ms, ms above."""
    if seconds != seconds:  # nan
        return "-"
    if seconds < 0.01:
        return f"{seconds * 1e6:,.0f} µs"
    return f"{seconds * 1e3:,.1f} ms"


TargetRow = list[str]
"""One line of the closing summary: [what, target, measured, "met" or "MISSED"]."""


def print_table(title: str, headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    print()
    print(title)
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))
    print(line)
    print("-" * len(line))
    for row in rows:
        print(
            "  ".join(
                c.rjust(w) if i else c.ljust(w)
                for i, (c, w) in enumerate(zip(row, widths, strict=True))
            )
        )
    print(flush=True)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def load_average() -> str:
    try:
        one, five, fifteen = os.getloadavg()
    except OSError:
        return "unknown"
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


def machine_line() -> str:
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (
        f"{now}; nproc {os.cpu_count()}; {cpu_model()}; Python {platform.python_version()};"
        f" load average {load_average()}"
    )

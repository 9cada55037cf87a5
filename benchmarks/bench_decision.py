"""Decision time per container: MemoryManager.admit_container through the whole engine.

One decision = memory hints (exhaustive or bounded search), the topology
manager merge with the CPU hint, and the allocation. Measured against the
NUMA node count (all nodes with CPUs, or CXL-style: most nodes CPU-less) and
the number of containers already tracked. Each probe is admitted and then
removed again (the removal is not timed), so the state stays as filled.
"""

from __future__ import annotations

import argparse
import gc
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from benchmarks.common import (
    CPUS_PER_NODE,
    CXL,
    GI,
    KINDS,
    MI,
    UNIFORM,
    Summary,
    fmt_us,
    guaranteed_pod,
    make_config,
    make_topology,
    print_table,
)
from nri_plugin.engine.manager import AdmissionResult, MemoryManager
from nri_plugin.engine.pod import PodSpec
from nri_plugin.engine.policy import static
from nri_plugin.engine.topology import Topology

NODE_COUNTS = (2, 4, 8, 16, 32, 64)
CONTAINER_COUNTS = (0, 100, 1_000, 10_000)
FILL_MEMORY = 4 * MI

# probe kind -> pod for probe number r on the topology
Probe = Callable[[Topology, int], PodSpec]


def _cpu_of(topology: Topology, r: int) -> list[int]:
    cpu_nodes = [n for n in topology.nodes if n.cpus]
    node = cpu_nodes[r % len(cpu_nodes)]
    return [min(node.cpus)]


def _largest(topology: Topology) -> int:
    return max(n.memory for n in topology.nodes)


PROBES: dict[str, Probe] = {
    # pinned by the CPU manager to one node, memory follows
    "pinned": lambda t, r: guaranteed_pod(f"probe-{r}", GI, cpus=_cpu_of(t, r)),
    # no CPU pinning (shared pool): the narrowest node wins
    "unpinned": lambda t, r: guaranteed_pod(f"probe-{r}", GI),
    # conventional memory and 1Gi hugepages, pinned
    "hugepages": lambda t, r: guaranteed_pod(
        f"probe-{r}", GI, cpus=_cpu_of(t, r), hugepages_1g=2 * GI
    ),
    # no CPU pinning and two memory types: kubelet crosses two full hint lists
    "unpinned+hp": lambda t, r: guaranteed_pod(f"probe-{r}", GI, hugepages_1g=2 * GI),
    # more than the largest node holds: a multi-node group
    "wide": lambda t, r: guaranteed_pod(f"probe-{r}", _largest(t) * 3 // 2),
}


def machine_name(topology: Topology) -> str:
    kind = UNIFORM if all(node.cpus for node in topology.nodes) else CXL
    return f"{len(topology.nodes):>2} nodes {kind}"


def fill(manager: MemoryManager, topology: Topology, start: int, stop: int) -> None:
    """Admit small Guaranteed pods start..stop-1: every other one pinned round-robin."""
    cpu_nodes = len([node for node in topology.nodes if node.cpus])
    for i in range(start, stop):
        cpus = None
        if i % 2 == 0:
            node = (i // 2) % cpu_nodes
            cpus = [node * CPUS_PER_NODE + (i // (2 * cpu_nodes)) % CPUS_PER_NODE]
        pod = guaranteed_pod(f"fill-{i}", FILL_MEMORY, cpus=cpus)
        result = manager.admit(pod)
        if not result.admitted:
            raise RuntimeError(f"fill pod {i} refused: {result.message}")


# (machine, probe kind, reason) -> refusals seen while measuring
REFUSED: dict[tuple[str, str, str], int] = {}


@dataclass
class Samples:
    """Seconds per decision by probe kind: wall clock, and this thread's CPU time (other
    processes on a busy machine delay a decision but do not add to its CPU time)."""

    wall: dict[str, list[float]] = field(default_factory=dict)
    cpu: dict[str, list[float]] = field(default_factory=dict)

    def every(self, cpu: bool = False) -> list[float]:
        return [x for xs in (self.cpu if cpu else self.wall).values() for x in xs]


def measure(
    manager: MemoryManager, topology: Topology, reps: int, probes: dict[str, Probe] = PROBES
) -> Samples:
    """Seconds per decision, per probe kind; a refusal is a decision too (counted in REFUSED)."""
    samples = Samples({kind: [] for kind in probes}, {kind: [] for kind in probes})
    gc.collect()
    for r in range(reps):
        for kind, make in probes.items():
            pod = make(topology, r)
            container = pod.containers[0]
            c0 = time.thread_time()
            t0 = time.perf_counter()
            outcome = manager.admit_container(pod, container)
            t1 = time.perf_counter()
            samples.cpu[kind].append(time.thread_time() - c0)
            if isinstance(outcome, AdmissionResult):
                key = (machine_name(topology), kind, outcome.reason or "")
                REFUSED[key] = REFUSED.get(key, 0) + 1
            manager.remove_pod(pod.uid)
            samples.wall[kind].append(t1 - t0)
    return samples


@contextmanager
def exhaustive_limit(limit: int) -> Iterator[None]:
    saved = static.EXHAUSTIVE_NODE_LIMIT
    static.EXHAUSTIVE_NODE_LIMIT = limit
    try:
        yield
    finally:
        static.EXHAUSTIVE_NODE_LIMIT = saved


def _cell(samples: list[float]) -> str:
    s = Summary.of(samples)
    return f"{fmt_us(s.median)} / {fmt_us(s.p99)}"


def run(quick: bool = False, policy: str = "best-effort") -> dict[str, object]:
    nodes = NODE_COUNTS
    counts = CONTAINER_COUNTS[:3] if quick else CONTAINER_COUNTS
    reps = 15 if quick else 60
    grid: dict[tuple[int, str, int], Samples] = {}
    for kind in KINDS:
        for n in nodes:
            topology = make_topology(n, kind)
            manager = MemoryManager(topology, make_config(n, policy))
            filled = 0
            for count in counts:
                fill(manager, topology, filled, count)
                filled = count
                grid[(n, kind, count)] = measure(manager, topology, reps)

    rows = []
    for kind in KINDS:
        for n in nodes:
            mix_rows = []
            for count in counts:
                mix_rows.append(_cell(grid[(n, kind, count)].every()))
            rows.append([machine_name(make_topology(n, kind)), *mix_rows])
    print_table(
        f"Decision time per container, topology manager {policy}: median / p99 over"
        f" {len(PROBES)} probe kinds x {reps} (admit_container: hints + merge + allocate)",
        ["machine", *(f"{c:,} containers" for c in counts)],
        rows,
    )

    per_kind_count = 1_000 if 1_000 in counts else counts[-1]
    rows = []
    for kind in KINDS:
        for n in nodes:
            cells = [_cell(grid[(n, kind, per_kind_count)].wall[p]) for p in PROBES]
            rows.append([machine_name(make_topology(n, kind)), *cells])
    print_table(
        f"... per probe kind with {per_kind_count:,} containers tracked: median / p99"
        " (pinned: CPU on one node; unpinned: no CPU hint; hugepages: + 2Gi of 1Gi pages;"
        " unpinned+hp: both; wide: 1.5x the largest node)",
        ["machine", *PROBES],
        rows,
    )

    if REFUSED:
        print("Refused probes (timed all the same; a refusal is a decision too):")
        for (machine, probe, reason), times in sorted(REFUSED.items()):
            print(f"  {machine}: {probe} x{times} ({reason})")
        print("  (uniform machines: every node already holds single-node containers,")
        print("   so no multi-node group can be formed; kubelet refuses the same way)")

    targets = decision_targets(grid, counts)
    print_table(
        "Decision targets (issue 15): median at 8 NUMA nodes <= 0.15 ms with 1,000 containers"
        " tracked and no worse with 10,000; 64 nodes <= 10 ms p99. Uniform is the 8-node"
        " machine of the target; CXL (6 of 8 nodes CPU-less expanders) shown beside it."
        " Wall p99 on a busy machine is mostly waiting for the CPU; CPU p99 is the decision's own",
        ["case", "target", "median", "CPU median", "wall p99", "CPU p99", "result"],
        targets,
    )
    compare = compare_exhaustive(quick)
    policies = compare_policies(quick)
    summary = [
        [f"one decision, {row[0]}", row[1], f"{row[3]} CPU median ({row[2]} wall)", row[6]]
        if "median" in row[1]
        else [f"one decision, {row[0]}", row[1], f"{row[5]} CPU p99 ({row[4]} wall)", row[6]]
        for row in targets
    ]
    return {
        "grid": grid,
        "targets": targets,
        "summary": summary,
        "compare": compare,
        "policies": policies,
    }


TARGET_MEDIAN_8 = 0.15e-3
TARGET_P99_64 = 10e-3


def decision_targets(
    grid: dict[tuple[int, str, int], Samples], counts: tuple[int, ...]
) -> list[list[str]]:
    """Rows: each case against its target, judged on the CPU-time median (a busy machine's
    wall clock adds waiting for the CPU) and the wall median alike."""
    rows = []
    cases = [(8, UNIFORM, c) for c in (1_000, 10_000) if c in counts]
    cases += [(8, CXL, c) for c in (1_000, 10_000) if c in counts]
    cases += [(64, kind, 1_000) for kind in KINDS if 1_000 in counts]
    for n, kind, count in cases:
        samples = grid.get((n, kind, count))
        if samples is None:
            continue
        wall, cpu = Summary.of(samples.every()), Summary.of(samples.every(cpu=True))
        if n == 8:
            bound, figure = TARGET_MEDIAN_8, cpu.median
            target = f"median <= {fmt_us(bound)}"
        else:
            bound, figure = TARGET_P99_64, cpu.p99
            target = f"p99 <= {fmt_us(bound)}"
        rows.append(
            [
                f"{n} nodes {kind}, {count:,} containers",
                target,
                fmt_us(wall.median),
                fmt_us(cpu.median),
                fmt_us(wall.p99),
                fmt_us(cpu.p99),
                "met" if figure <= bound else "MISSED",
            ]
        )
    return rows


def compare_exhaustive(quick: bool) -> list[list[str]]:
    """The same decisions with kubelet's exhaustive walk and with the bounded search."""
    rows = []
    reps = 10 if quick else 30
    for n in (4, 8, 10, 12) if quick else (4, 8, 10, 12, 14):
        topology = make_topology(n, UNIFORM)
        cells = [f"{n} nodes"]
        for limit in (64, 0):
            with exhaustive_limit(limit):
                manager = MemoryManager(topology, make_config(n))
                fill(manager, topology, 0, 100)
                samples = measure(manager, topology, reps)
            cells.append(_cell(samples.every()))
        rows.append(cells)
    print_table(
        "Exhaustive (every subset, kubelet's walk) vs bounded search, uniform machine,"
        " 100 containers: median / p99",
        ["machine", "exhaustive", "bounded"],
        rows,
    )
    return rows


def compare_policies(quick: bool) -> list[list[str]]:
    """64-node CXL machine, 1,000 containers, every topology manager policy."""
    n = 64
    count = 200 if quick else 1_000
    reps = 10 if quick else 40
    rows = []
    for policy, closest in (
        ("none", False),
        ("best-effort", False),
        ("best-effort", True),
        ("restricted", False),
        ("single-numa-node", False),
    ):
        topology = make_topology(n, CXL)
        manager = MemoryManager(topology, make_config(n, policy, closest=closest))
        fill(manager, topology, 0, count)
        probes = dict(PROBES)
        if policy == "single-numa-node":
            probes.pop("wide")  # refused by design: it needs two nodes
        samples = measure(manager, topology, reps, probes)
        name = policy + (" + prefer-closest" if closest else "")
        rows.append([name, _cell(samples.every()), _cell(samples.wall.get("wide", []))])
    print_table(
        f"64-node CXL machine, {count:,} containers, per topology manager policy:"
        " median / p99 (all probes; wide only)",
        ["policy", "all probes", "wide"],
        rows,
    )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--policy", default="best-effort")
    args = parser.parse_args()
    run(args.quick, args.policy)


if __name__ == "__main__":
    main()

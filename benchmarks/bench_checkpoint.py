"""Checkpoint cost against the number of containers.

After a change the live plugin asks for a write (persistence.CheckpointWriter):
when a write starts, a snapshot is taken on the event loop (``MemoryState.clone``)
and a worker thread writes it (``write_file``: kubelet's JSON with
its checksum, temp file, fsync, rename, fsync of the directory). Changes made
meanwhile coalesce into the next write. The snapshot is on the critical path
(of the request being answered when a write starts); the write is not, but it
holds the GIL while it serialises, so it competes with the event loop on a
busy node. Serialisation is split into its parts: the go-spew text that
kubelet hashes, the checksum over it (FNV-1a, compiled), and the JSON text.
Also the extra memory one write allocates at its peak (tracemalloc).
"""

from __future__ import annotations

import argparse
import gc
import tempfile
import time
import tracemalloc
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.bench_decision import fill
from benchmarks.common import UNIFORM, fmt_us, make_config, make_topology, print_table
from nri_plugin.engine.manager import MemoryManager
from nri_plugin.persist.checksum import checksum_dump, fnv1a_32
from nri_plugin.persist.file import write_file
from nri_plugin.persist.format import dumps

NODES = 8
COUNTS = (10, 100, 1_000, 10_000)


def _timed(fn: Callable[[], Any], budget: float = 0.5, most: int = 200) -> float:
    """Median seconds per call, repeated for about ``budget`` seconds (at least 3 calls)."""
    samples: list[float] = []
    spent = 0.0
    gc.collect()
    while len(samples) < 3 or (spent < budget and len(samples) < most):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
        spent += samples[-1]
    samples.sort()
    return samples[len(samples) // 2]


def run(quick: bool = False) -> dict[int, dict[str, float]]:
    counts = COUNTS[:3] if quick else COUNTS
    results: dict[int, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="nmm-bench-") as tmp:
        path = Path(tmp) / "memory_manager_state"
        topology = make_topology(NODES, UNIFORM)
        manager = MemoryManager(topology, make_config(NODES))
        filled = 0
        for count in counts:
            fill(manager, topology, filled, count)
            filled = count
            state = manager.state
            text = dumps(state)
            dump = checksum_dump(state).encode()
            results[count] = {
                "bytes": float(len(text)),
                "snapshot": _timed(state.clone),
                "spew": _timed(lambda: checksum_dump(state)),  # noqa: B023
                "checksum": _timed(lambda: fnv1a_32(dump)),  # noqa: B023
                "dumps": _timed(lambda: dumps(state)),  # noqa: B023
                "write_file": _timed(lambda: write_file(path, state)),  # noqa: B023
                "peak": _peak_bytes(lambda: write_file(path, state.clone())),  # noqa: B023
            }
    rows = []
    for count, r in results.items():
        rows.append(
            [
                f"{count:,}",
                f"{r['bytes'] / 1024:,.0f} KiB",
                fmt_us(r["snapshot"]),
                fmt_us(r["dumps"]),
                f"{100 * r['spew'] / r['dumps']:.0f}%",
                f"{100 * r['checksum'] / r['dumps']:.0f}%",
                fmt_us(r["write_file"]),
                fmt_us(r["snapshot"] + r["write_file"]),
                f"{r['peak'] / 2**20:.1f} MiB",
            ]
        )
    compiled = isinstance(fnv1a_32, types.BuiltinFunctionType)
    print_table(
        f"Checkpoint vs containers ({NODES}-node machine; medians; checksum"
        f" {'compiled' if compiled else 'PURE PYTHON: fnv-hash-fast has no C extension here'})."
        " The snapshot runs on the event loop when a write starts; write_file (serialise +"
        " fsyncs) in a worker thread",
        [
            "containers",
            "file",
            "snapshot (loop)",
            "dumps",
            "of it: spew text",
            "checksum",
            "write_file (thread)",
            "per write: loop + thread",
            "peak extra memory",
        ],
        rows,
    )
    worst = results[counts[-1]]
    print(
        f"Worst case measured ({counts[-1]:,} containers): {fmt_us(worst['snapshot'])} on the"
        f" event loop per write, {fmt_us(worst['write_file'])} in the writer thread per write"
        " (coalesced: at most one write in flight and one pending)."
    )
    return results


def _peak_bytes(fn: Callable[[], Any]) -> float:
    """Bytes allocated at the peak of ``fn`` beyond what was allocated before."""
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        fn()
        return float(tracemalloc.get_traced_memory()[1] - before)
    finally:
        tracemalloc.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    run(parser.parse_args().quick)


if __name__ == "__main__":
    main()

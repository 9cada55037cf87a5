"""Run every benchmark and print its tables: ``python -m benchmarks.run [--quick]``.

Figures only: nothing here fails on a slow machine. Run it on a quiet
machine; the header prints the load average before and after.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

from benchmarks import (
    bench_checkpoint,
    bench_decision,
    bench_e2e,
    bench_memory,
    bench_transport,
)
from benchmarks.common import TargetRow, load_average, machine_line, print_table

BENCHMARKS: dict[str, Callable[[bool], object]] = {
    "decision": lambda quick: bench_decision.run(quick),
    "transport": lambda quick: bench_transport.run(quick),
    "checkpoint": lambda quick: bench_checkpoint.run(quick),
    "memory": lambda quick: bench_memory.run(quick),
    "e2e": lambda quick: bench_e2e.run(quick),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer sizes and repetitions")
    parser.add_argument(
        "--only", action="append", choices=sorted(BENCHMARKS), help="run only these (repeatable)"
    )
    parser.add_argument("--skip", action="append", choices=sorted(BENCHMARKS), default=[])
    args = parser.parse_args()
    chosen = [n for n in BENCHMARKS if (not args.only or n in args.only) and n not in args.skip]
    print(f"nri-memory-manager benchmarks{' (quick)' if args.quick else ''}: {machine_line()}")
    started = time.monotonic()
    summary: list[TargetRow] = []
    for name in chosen:
        t0 = time.monotonic()
        print(f"\n=== {name}", flush=True)
        result = BENCHMARKS[name](args.quick)
        if isinstance(result, dict):
            summary += result.get("summary", [])
        print(f"({name}: {time.monotonic() - t0:.0f} s)", flush=True)
    if summary:
        print_table(
            "Every target with its measured figure (issue 15; figures of this run)",
            ["figure", "target", "measured", "result"],
            summary,
        )
    print(
        f"\ndone in {time.monotonic() - started:.0f} s; load average now {load_average()}"
        " (other work on the machine inflates the figures)"
    )


if __name__ == "__main__":
    main()

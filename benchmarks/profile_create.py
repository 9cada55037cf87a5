"""Where CreateContainer's time goes: the transport benchmark's round trips, profiled.

A developer's tool, not a benchmark with targets. Two ways to look:

* ``--cprofile``: the round trips of ``bench_transport`` (real handler, our
  transport, fake runtime over a socket pair) under cProfile; prints the
  functions by their own time and by cumulative time, per CreateContainer.
  cProfile's overhead inflates small functions: read it for *where*, not
  *how much*.
* ``--instructions``: CPU instructions per CreateContainer counted by
  valgrind's callgrind, the difference between two runs that differ only in
  the number of calls (the same setup cancels out). Counts do not depend on
  the machine's load, so they decide whether a change pays on a busy machine
  where wall-clock figures vary by tens of percent. Needs ``valgrind``.

The checkpoint writer runs in its thread as in the benchmark; its writes
depend on wall-clock pauses, so ``--instructions`` turns persistence off by
default (``--checkpoint`` to include it; then the count varies with timing).

Examples::

    python -m benchmarks.profile_create --tracked 1000 --count 500 --cprofile
    python -m benchmarks.profile_create --tracked 1000 --instructions
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import pstats
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks import bench_transport


class CallgrindInstrumentation:
    """callgrind's instrumentation switched on and off (``callgrind_control -i``): the setup
    runs uninstrumented (faster), and the count is the measured calls' alone."""

    def _switch(self, on: bool) -> None:
        subprocess.run(
            ["callgrind_control", "-i", "on" if on else "off", str(os.getpid())],
            check=True,
            capture_output=True,
        )

    def enable(self) -> None:
        self._switch(True)

    def disable(self) -> None:
        self._switch(False)


def _run(
    tracked: int,
    count: int,
    checkpoint: bool,
    profile: cProfile.Profile | bench_transport.Measured | None,
) -> float:
    """Seconds per call of ``count`` round trips (profiled when ``profile`` is given)."""
    with tempfile.TemporaryDirectory(prefix="nmm-prof-") as state_dir, bench_transport.quiet_logs():
        hook = bench_transport.MEASURE_HOOK
        bench_transport.MEASURE_HOOK = profile
        try:
            result = asyncio.run(
                bench_transport._round_trips(tracked, count, checkpoint, Path(state_dir))
            )
        finally:
            bench_transport.MEASURE_HOOK = hook
    return result.seconds / max(1, count)


def cprofile(tracked: int, count: int, checkpoint: bool, top: int) -> None:
    profile = cProfile.Profile()
    per_call = _run(tracked, count, checkpoint, profile)
    print(
        f"{count} CreateContainer round trips, {tracked} tracked, checkpoint"
        f" {'on' if checkpoint else 'off'}: {per_call * 1e6:.0f} µs per call under cProfile"
    )
    stats = pstats.Stats(profile)
    for key in ("tottime", "cumulative"):
        print(f"\n-- by {key} (seconds are totals over {count} calls)")
        stats.sort_stats(key).print_stats(top)


_TOTAL = re.compile(r"^totals:\s*([0-9]+)", re.MULTILINE)


def use_uvloop() -> None:
    """Run on uvloop's event loop (a developer's experiment: uvloop is no dependency)."""
    try:
        import uvloop  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        print("--uvloop: uvloop is not installed (pip install uvloop)", file=sys.stderr)
        raise SystemExit(2) from None
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def _instructions(tracked: int, count: int, checkpoint: bool, uvloop: bool = False) -> int:
    with tempfile.TemporaryDirectory(prefix="nmm-cg-") as tmp:
        out = Path(tmp) / "callgrind.out"
        argv = [
            "valgrind",
            "--tool=callgrind",
            "--instr-atstart=no",
            f"--callgrind-out-file={out}",
            sys.executable,
            "-m",
            "benchmarks.profile_create",
            "--tracked",
            str(tracked),
            "--count",
            str(count),
            "--child",
        ]
        if checkpoint:
            argv.append("--checkpoint")
        if uvloop:
            argv.append("--uvloop")
        env = {**os.environ, "PYTHONHASHSEED": "0"}
        subprocess.run(argv, check=True, env=env, capture_output=True)
        match = _TOTAL.search(out.read_text(errors="replace"))
        if match is None:
            raise RuntimeError("no instruction total in callgrind's output")
        return int(match[1])


def instructions(tracked: int, count: int, checkpoint: bool, uvloop: bool = False) -> None:
    if shutil.which("valgrind") is None:
        print("instructions: valgrind is not installed", file=sys.stderr)
        raise SystemExit(2)
    small = max(1, count // 5)
    few = _instructions(tracked, small, checkpoint, uvloop)
    many = _instructions(tracked, count, checkpoint, uvloop)
    per_call = (many - few) / (count - small)
    print(
        f"{per_call:,.0f} instructions per CreateContainer round trip ({tracked} tracked,"
        f" checkpoint {'on' if checkpoint else 'off'}{', uvloop' if uvloop else ''};"
        f" runs of {small} and {count} calls:"
        f" {few:,} and {many:,})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tracked", type=int, default=1_000)
    parser.add_argument("--count", type=int, default=500)
    parser.add_argument("--checkpoint", action="store_true", help="with the checkpoint writer")
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--uvloop", action="store_true", help="on uvloop (if installed)")
    way = parser.add_mutually_exclusive_group()
    way.add_argument("--cprofile", action="store_true")
    way.add_argument("--instructions", action="store_true")
    way.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.count < 5:
        parser.error("--count must be at least 5")
    if args.uvloop:
        use_uvloop()
    if args.child:
        _run(args.tracked, args.count, args.checkpoint, CallgrindInstrumentation())
    elif args.instructions:
        instructions(args.tracked, args.count, args.checkpoint, args.uvloop)
    else:
        cprofile(args.tracked, args.count, args.checkpoint, args.top)


if __name__ == "__main__":
    main()

"""Fuzz engines: atheris (libFuzzer, coverage-guided) when it imports, else our own mutator."""

from __future__ import annotations

import hashlib
import os
import random
import resource
import signal
import struct
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from tests.fuzz.targets import INSTRUMENT_ENV, TARGETS
from tests.protowire import varint

# -- statistics shared by the engines -------------------------------------------------


@dataclass
class Stats:
    target: str
    total: int
    report_every: int
    count: int = 0
    started: float = 0.0
    slowest: float = 0.0
    slowest_input: bytes = b""
    # where the slowest input is kept, for `repro` and profiling
    slowest_path: Path | None = None

    def max_rss_mib(self) -> float:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def line(self) -> str:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        return (
            f"fuzz {self.target}: {self.count} inputs in {elapsed:.1f} s,"
            f" {self.count / elapsed:.0f} inputs/s, max RSS {self.max_rss_mib():.0f} MiB,"
            f" slowest input {self.slowest * 1000:.1f} ms ({len(self.slowest_input)} bytes)"
        )

    def wrap(self, target: Callable[[bytes], None]) -> Callable[[bytes], None]:
        def run(data: bytes) -> None:
            if not self.started:
                self.started = time.monotonic()
            t0 = time.perf_counter()
            try:
                target(data)
            finally:
                spent = time.perf_counter() - t0
                self.count += 1
                if spent > self.slowest:
                    self.slowest, self.slowest_input = spent, data
                if self.count % self.report_every == 0 or self.count == self.total:
                    print(self.line(), file=sys.stderr, flush=True)
                    if self.slowest_path is not None:
                        self.slowest_path.write_bytes(self.slowest_input)

        return run


# -- engine: atheris ----------------------------------------------------------------------


def run_atheris(target: str, runs: int, seeds: list[bytes], work: Path, args: Any) -> int:
    if os.environ.get(INSTRUMENT_ENV) != "1":
        # Start again so that nri_plugin is imported instrumented (only ours:
        # instrumenting the standard library and protobuf costs 3x the speed).
        os.environ[INSTRUMENT_ENV] = "1"
        os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])
    import atheris

    seed_dir = work / "seeds" / target
    found_dir = work / "found" / target
    crash_dir = work / "crashes"
    for d in (seed_dir, found_dir, crash_dir):
        d.mkdir(parents=True, exist_ok=True)
    for seed in seeds:
        (seed_dir / hashlib.sha1(seed).hexdigest()).write_bytes(seed)
    stats = Stats(target, runs, args.report_every, slowest_path=work / f"slowest-{target}")
    fn = stats.wrap(TARGETS[target])
    libfuzzer = [
        sys.argv[0],
        f"-runs={runs}",
        f"-timeout={args.timeout}",
        f"-rss_limit_mb={args.rss_limit_mb}",
        f"-max_len={args.max_len}",
        f"-artifact_prefix={crash_dir}/{target}-",
        "-print_final_stats=1",
        f"-seed={args.seed}",
        str(found_dir),
        str(seed_dir),
    ]
    atheris.Setup(libfuzzer, fn)
    atheris.Fuzz()
    return 0


# -- engine: our own mutator ----------------------------------------------------------------

_INTERESTING_U32 = (0, 1, 9, 10, 11, 4095, 4096, 4097, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF)
_INTERESTING_VARINTS = (
    0,
    1,
    127,
    128,
    (1 << 31) - 1,
    1 << 31,
    (1 << 63) - 1,
    1 << 63,
    (1 << 64) - 1,
)


def mutate(data: bytes, rng: random.Random, corpus: Sequence[bytes]) -> bytes:
    """1-8 random edits: bit flips, bytes, ranges, splices, interesting lengths and varints."""
    buf = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        op = rng.randrange(9)
        pos = rng.randrange(len(buf) + 1)
        if op == 0 and buf:
            i = rng.randrange(len(buf))
            buf[i] ^= 1 << rng.randrange(8)
        elif op == 1 and buf:
            buf[rng.randrange(len(buf))] = rng.randrange(256)
        elif op == 2:
            buf[pos:pos] = rng.randbytes(rng.randint(1, 16))
        elif op == 3 and buf:
            end = min(len(buf), pos + rng.randint(1, 64))
            del buf[pos:end]
        elif op == 4 and buf:
            start = rng.randrange(len(buf))
            piece = buf[start : start + rng.randint(1, 256)]
            buf[pos:pos] = piece
        elif op == 5:
            other = rng.choice(corpus)
            if other:
                start = rng.randrange(len(other))
                buf[pos:] = other[start : start + rng.randint(1, len(other))]
        elif op == 6 and len(buf) >= 4:
            i = rng.randrange(len(buf) - 3)
            buf[i : i + 4] = struct.pack(">I", rng.choice(_INTERESTING_U32))
        elif op == 7 and buf:
            i = rng.randrange(len(buf))
            j = i
            while j < len(buf) and buf[j] & 0x80:
                j += 1
            buf[i : j + 1] = varint(rng.choice(_INTERESTING_VARINTS))
        elif op == 8 and buf:
            # a length-delimited field announcing more (or less) than is there
            i = rng.randrange(len(buf))
            buf[i] = rng.choice((0, 1, 0x7F, 0xFF))
    return bytes(buf)


class _Hang(Exception):
    pass


def _alarm(signum: int, frame: FrameType | None) -> None:
    raise _Hang()


def run_mutate(target: str, runs: int, seeds: list[bytes], work: Path, args: Any) -> int:
    crash_dir = work / "crashes"
    crash_dir.mkdir(parents=True, exist_ok=True)
    fn = TARGETS[target]
    stats = Stats(target, runs, args.report_every, slowest_path=work / f"slowest-{target}")
    wrapped = stats.wrap(fn)
    rng = random.Random(args.seed)
    rss_limit = args.rss_limit_mb * 1024
    crashes = 0
    signal.signal(signal.SIGALRM, _alarm)
    for i in range(runs):
        data = seeds[i] if i < len(seeds) else mutate(rng.choice(seeds), rng, seeds)
        data = data[: args.max_len]
        signal.setitimer(signal.ITIMER_REAL, args.timeout)
        try:
            wrapped(data)
        except _Hang:
            crashes += _save(crash_dir, target, "timeout", data, f"over {args.timeout} s")
        except Exception:
            crashes += _save(crash_dir, target, "crash", data, traceback.format_exc())
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        if resource.getrusage(resource.RUSAGE_SELF).ru_maxrss > rss_limit:
            crashes += _save(crash_dir, target, "oom", data, f"RSS above {args.rss_limit_mb} MiB")
            break
        if crashes >= args.max_crashes:
            break
    print(stats.line(), file=sys.stderr)
    print(f"fuzz {target}: {crashes} crashes", file=sys.stderr)
    return 1 if crashes else 0


def _save(directory: Path, target: str, kind: str, data: bytes, detail: str) -> int:
    path = directory / f"{target}-{kind}-{hashlib.sha1(data).hexdigest()}"
    path.write_bytes(data)
    print(f"== {kind} in {target}, input saved as {path}\n{detail}", file=sys.stderr)
    return 1

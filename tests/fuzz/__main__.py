"""``python -m tests.fuzz``: the dedicated fuzz run of the NRI wire input (docs/fuzzing.md).

    python -m tests.fuzz run --target wire --runs 1000000 [--engine atheris|mutate]
    python -m tests.fuzz corpus --out DIR          # write the synthetic seed corpus
    python -m tests.fuzz capture --out DIR         # record real containerd traffic (root)
    python -m tests.fuzz repro --target T FILE...  # run inputs once, print what fails

Run from the repository root (hack/fuzz.sh does).
"""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path

# first: under atheris, nri_plugin must be imported instrumented (tests.fuzz.targets)
from tests.fuzz.targets import TARGETS  # isort: skip
from tests.fuzz.corpus import load_corpus, synthetic_corpus, write_corpus
from tests.fuzz.engines import run_atheris, run_mutate

# -- command line -----------------------------------------------------------------------------


def _have_atheris() -> bool:
    try:
        import atheris  # noqa: F401
    except ImportError:
        return False
    return True


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.fuzz", description=__doc__.split("\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="fuzz one target")
    run.add_argument("--target", choices=sorted(TARGETS), required=True)
    run.add_argument("--runs", type=int, default=1_000_000)
    run.add_argument("--engine", choices=("auto", "atheris", "mutate"), default="auto")
    run.add_argument("--corpus", type=Path, default=None, help="extra seeds (capture's output)")
    run.add_argument("--work", type=Path, default=Path("/tmp/nmm-fuzz"))
    run.add_argument("--timeout", type=int, default=10, help="seconds per input (a hang)")
    run.add_argument("--rss-limit-mb", type=int, default=2048)
    run.add_argument("--max-len", type=int, default=1 << 20)
    run.add_argument("--seed", type=int, default=1)
    run.add_argument("--report-every", type=int, default=100_000)
    run.add_argument("--max-crashes", type=int, default=20)
    corpus = sub.add_parser("corpus", help="write the synthetic seed corpus")
    corpus.add_argument("--out", type=Path, required=True)
    cap = sub.add_parser("capture", help="record real containerd traffic (root, e2e setup)")
    cap.add_argument("--out", type=Path, required=True)
    cap.add_argument("--flavor", action="append", choices=("2.x", "1.7"))
    repro = sub.add_parser("repro", help="run saved inputs once and show what fails")
    repro.add_argument("--target", choices=sorted(TARGETS), required=True)
    repro.add_argument("files", nargs="+", type=Path)
    args = parser.parse_args(argv)

    if args.command == "corpus":
        n = write_corpus(args.out, synthetic_corpus())
        print(f"{n} seeds written under {args.out}")
        return 0
    if args.command == "capture":
        from tests.fuzz.capture import capture

        n = capture(args.out, args.flavor or ["2.x", "1.7"])
        print(f"{n} seeds written under {args.out}")
        return 0
    if args.command == "repro":
        failed = 0
        for path in args.files:
            try:
                TARGETS[args.target](path.read_bytes())
            except Exception:
                failed += 1
                print(f"== {path}: FAILS\n{traceback.format_exc()}")
            else:
                print(f"== {path}: ok")
        return 1 if failed else 0

    seeds = load_corpus(args.corpus, args.target)
    engine = args.engine
    if engine == "auto":
        engine = "atheris" if _have_atheris() else "mutate"
    print(
        f"fuzz {args.target}: engine {engine}, {args.runs} runs, {len(seeds)} seeds,"
        f" work dir {args.work}",
        file=sys.stderr,
    )
    if engine == "atheris":
        return run_atheris(args.target, args.runs, seeds, args.work, args)
    return run_mutate(args.target, args.runs, seeds, args.work, args)


if __name__ == "__main__":
    sys.exit(main())

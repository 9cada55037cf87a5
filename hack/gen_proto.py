#!/usr/bin/env python3
"""Regenerate the protobuf modules in nri_plugin/nri/gen/ from proto/*.proto.

Usage: .venv/bin/python hack/gen_proto.py [--out DIR]

The output is committed; tests/nri/test_generated.py regenerates into a
temporary directory and fails when the committed files differ, so run this
after every change to proto/ (or after upgrading grpcio-tools/protobuf).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PROTO_DIR = REPO / "proto"
DEFAULT_OUT = REPO / "nri_plugin" / "nri" / "gen"
PROTOS = ("nri.proto", "ttrpc.proto")

INIT_TEXT = '"""Generated protobuf modules (hack/gen_proto.py from proto/). Do not edit."""\n'

# protoc emits absolute imports ("import ttrpc_pb2 as ...") for protos that
# import each other; inside our package they must be relative.
_ABSOLUTE_IMPORT = re.compile(r"^import (\w+_pb2)( as \w+)?$", re.MULTILINE)
_FROM_IMPORT = re.compile(r"^from (\w+_pb2) import ", re.MULTILINE)


def _make_relative(text: str) -> str:
    text = _ABSOLUTE_IMPORT.sub(lambda m: f"from . import {m.group(1)}{m.group(2) or ''}", text)
    return _FROM_IMPORT.sub(lambda m: f"from .{m.group(1)} import ", text)


def generate(out_dir: Path) -> list[Path]:
    """Write the generated modules (and the package __init__) into out_dir."""
    out_dir.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"-I{PROTO_DIR}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        *(str(PROTO_DIR / name) for name in PROTOS),
    ]
    subprocess.run(cmd, check=True)
    written = [out_dir / "__init__.py"]
    written[0].write_text(INIT_TEXT)
    for name in PROTOS:
        stem = name.removesuffix(".proto")
        for suffix in ("_pb2.py", "_pb2.pyi"):
            path = out_dir / f"{stem}{suffix}"
            path.write_text(_make_relative(path.read_text()))
            written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory")
    args = parser.parse_args(argv)
    for path in generate(args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())

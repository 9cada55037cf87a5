#!/usr/bin/env python3
"""Regenerate the protobuf modules (nri_plugin/nri/gen, nri_plugin/frontends/cri/gen,
nri_plugin/podresources/gen) from proto/.

Usage: .venv/bin/python hack/gen_proto.py [--out DIR] [--cri-out DIR] [--podresources-out DIR]

With no option every package is regenerated in place. --out writes only the
NRI modules (nri.proto, ttrpc.proto) to DIR, --cri-out only the CRI proxy's
(cri.proto), --podresources-out only kubelet's pod-resources API
(podresources.proto, with its gRPC stubs); give several for several.

The output is committed; tests/nri/test_generated.py, tests/test_criproxy.py
and tests/test_podresources_wire.py regenerate into a temporary directory and
fail when the committed files differ, so run this after every change to proto/
(or after upgrading grpcio-tools/protobuf).
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
DEFAULT_CRI_OUT = REPO / "nri_plugin" / "frontends" / "cri" / "gen"
CRI_PROTOS = ("cri.proto",)
# The CRI modules live outside the lint/type-check exclusions of pyproject.toml
# (which name nri_plugin/nri/gen and nri_plugin/podresources/gen), so they carry their own.
CRI_HEADER = "# ruff: noqa\n# fmt: off\n# mypy: ignore-errors\n"
DEFAULT_PODRESOURCES_OUT = REPO / "nri_plugin" / "podresources" / "gen"
PODRESOURCES_PROTOS = ("podresources.proto",)

INIT_TEXT = '"""Generated protobuf modules (hack/gen_proto.py from proto/). Do not edit."""\n'

# protoc emits absolute imports ("import ttrpc_pb2 as ...") for protos that
# import each other; inside our package they must be relative.
_ABSOLUTE_IMPORT = re.compile(r"^import (\w+_pb2)( as \w+)?$", re.MULTILINE)
_FROM_IMPORT = re.compile(r"^from (\w+_pb2) import ", re.MULTILINE)


def _make_relative(text: str) -> str:
    text = _ABSOLUTE_IMPORT.sub(lambda m: f"from . import {m.group(1)}{m.group(2) or ''}", text)
    return _FROM_IMPORT.sub(lambda m: f"from .{m.group(1)} import ", text)


def generate(
    out_dir: Path, protos: tuple[str, ...] = PROTOS, header: str = "", grpc_stubs: bool = False
) -> list[Path]:
    """Write the generated modules (and the package __init__) into out_dir.

    With grpc_stubs, also the gRPC client stub and servicer (``*_pb2_grpc.py``).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"-I{PROTO_DIR}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        *([f"--grpc_python_out={out_dir}"] if grpc_stubs else []),
        *(str(PROTO_DIR / name) for name in protos),
    ]
    subprocess.run(cmd, check=True)
    written = [out_dir / "__init__.py"]
    written[0].write_text(INIT_TEXT)
    for name in protos:
        stem = name.removesuffix(".proto")
        for suffix in ("_pb2.py", "_pb2.pyi", *(("_pb2_grpc.py",) if grpc_stubs else ())):
            path = out_dir / f"{stem}{suffix}"
            path.write_text(header + _make_relative(path.read_text()))
            written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="output directory of the NRI modules")
    parser.add_argument("--cri-out", type=Path, help="output directory of the CRI modules")
    parser.add_argument(
        "--podresources-out", type=Path, help="output directory of the pod-resources modules"
    )
    args = parser.parse_args(argv)
    every = args.out is None and args.cri_out is None and args.podresources_out is None
    written = []
    if every or args.out is not None:
        written += generate(args.out or DEFAULT_OUT)
    if every or args.cri_out is not None:
        written += generate(args.cri_out or DEFAULT_CRI_OUT, CRI_PROTOS, CRI_HEADER)
    if every or args.podresources_out is not None:
        out = args.podresources_out or DEFAULT_PODRESOURCES_OUT
        written += generate(out, PODRESOURCES_PROTOS, grpc_stubs=True)
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())

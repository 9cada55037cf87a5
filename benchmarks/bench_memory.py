"""Resident memory of the plugin process with N tracked containers.

Each size runs in a fresh child process that imports what ``nri-memory-manager
run`` imports, then feeds N containers through the real MemoryPlugin handler
(NRI messages decoded from bytes, production JSON logs to /dev/null, metrics
on), then makes 20 more changes (a container created, a write, the container
removed), each written through the real CheckpointWriter (snapshot on the
loop, serialised and written in a worker thread), as a live plugin does.
It reports VmRSS after the containers, VmRSS after the writes (a live plugin
writes after every change, so this is its steady state) and VmHWM (the peak,
reached during a write) from /proc/self/status; not ru_maxrss, which Linux
carries over exec from the forking parent.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.common import print_table

TARGET_MB = 60.0
MIB_IN_MB = 1.048576
NODES = 8
WRITES = 20


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def child(count: int) -> dict[str, float]:
    """Runs in the child: build the state through the handler, report memory in MiB."""
    import structlog

    import nri_plugin.daemon  # noqa: F401  (everything the live plugin imports)
    from benchmarks.common import UNIFORM, make_config, make_topology
    from benchmarks.nri_messages import container, pod_sandbox
    from nri_plugin.engine.manager import MemoryManager
    from nri_plugin.frontends.nri import MemoryPlugin
    from nri_plugin.logs import configure_logging
    from nri_plugin.metrics import Metrics
    from nri_plugin.nri.gen import nri_pb2 as api
    from nri_plugin.persist.writer import CheckpointWriter

    def request(i: int) -> api.CreateContainerRequest:
        uid = f"{i:08x}-0000-4000-8000-000000000000"
        pod = pod_sandbox(uid)
        cpus = str((i % NODES) * 4)
        raw = api.CreateContainerRequest(
            pod=pod, container=container(pod, "app", f"ctr-{i:08x}", 4 << 20, cpus=cpus)
        ).SerializeToString()
        return api.CreateContainerRequest.FromString(raw)

    async def changes(writer: CheckpointWriter) -> None:
        for i in range(count, count + WRITES):
            r = request(i)
            plugin.create_container(r.pod, r.container)
            writer.request(manager.state)
            await writer.flush()
            plugin.remove_container(r.pod, r.container)

    mib = 1024.0
    out: dict[str, float] = {"imports": _status_kib("VmRSS") / mib}
    with open(os.devnull, "w") as sink:
        configure_logging("info", sink)
        log = structlog.get_logger("bench")
        manager = MemoryManager(make_topology(NODES, UNIFORM), make_config(NODES))
        plugin = MemoryPlugin(manager, observer=Metrics(), logger=log)
        for i in range(count):
            r = request(i)
            plugin.create_container(r.pod, r.container)
        held = sum(len(c) for c in manager.state.entries.values())
        if held != count:
            raise RuntimeError(f"{held} containers tracked, not {count}")
        out["tracked"] = _status_kib("VmRSS") / mib
        with tempfile.TemporaryDirectory(prefix="nmm-bench-") as tmp:
            writer = CheckpointWriter(Path(tmp) / "state", log)
            asyncio.run(changes(writer))
            if writer.writes != WRITES:
                raise RuntimeError(f"{writer.writes} checkpoint writes, not {WRITES}")
    out["after checkpoint writes"] = _status_kib("VmRSS") / mib
    out["peak (VmHWM)"] = _status_kib("VmHWM") / mib
    return out


def measure(count: int) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_memory", "--child", str(count)],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    result: dict[str, float] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def run(quick: bool = False) -> dict[str, object]:
    counts = (0, 1_000, 10_000)
    results = {count: measure(count) for count in counts}
    rows = []
    for count, r in results.items():
        rows.append(
            [
                f"{count:,}",
                f"{r['imports']:.1f} MiB",
                _with_mb(r["tracked"]),
                _with_mb(r["after checkpoint writes"]),
                _with_mb(r["peak (VmHWM)"]),
                "/".join(
                    "met" if r[k] * MIB_IN_MB <= TARGET_MB else "MISSED"
                    for k in ("tracked", "after checkpoint writes", "peak (VmHWM)")
                ),
            ]
        )
    print_table(
        f"Resident memory of the plugin process ({NODES}-node machine; target: RSS <="
        f" {TARGET_MB:.0f} MB = {TARGET_MB / MIB_IN_MB:.1f} MiB with 10,000 containers tracked)",
        [
            "containers",
            "after imports",
            "tracked",
            f"after {WRITES} checkpoint writes",
            "peak (VmHWM)",
            "target: tracked/after/peak",
        ],
        rows,
    )
    kept = results[10_000]
    steady, peak = kept["after checkpoint writes"] * MIB_IN_MB, kept["peak (VmHWM)"] * MIB_IN_MB
    summary = [
        [
            "resident memory, 10,000 containers kept",
            f"<= {TARGET_MB:.0f} MB",
            f"{steady:.1f} MB after checkpoint writes ({kept['tracked'] * MIB_IN_MB:.1f} MB"
            f" before them), peak {peak:.1f} MB",
            "met" if max(steady, peak) <= TARGET_MB else "MISSED",
        ]
    ]
    return {"results": results, "summary": summary}


def _with_mb(mib: float) -> str:
    return f"{mib:.1f} MiB = {mib * MIB_IN_MB:.1f} MB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(child(args.child)))
        return
    run(args.quick)


if __name__ == "__main__":
    main()

"""The demo: a private containerd + nri-memory-manager on a fake 4-NUMA machine.

Creates pods of every QoS class the way kubelet would, prints what the plugin
decided for each (and why it refused one), shows the state, and tears
everything down. Run it through hack/demo.sh, which installs what it needs.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from nri_plugin.engine.bitmask import parse_cpulist  # noqa: E402
from tests.e2e.harness import Containerd, CRIError, E2EPaths  # noqa: E402

GI = 1 << 30
DEMO = ROOT / "hack" / "demo"

# name, QoS, memory, CPU millis (request=limit unless Burstable), pinned CPUs, hugepages
PODS = [
    ("web", "Guaranteed", 4 * GI, 2000, "24-25", {}),
    ("dpdk", "Guaranteed", 1 * GI, 2000, "0-1", {}),
    ("db", "Guaranteed", 80 * GI, 8000, None, {}),
    ("cache", "Guaranteed", 2 * GI, 2000, "7,24", {}),
    ("huge", "Guaranteed", 300 * GI, 4000, None, {}),
    ("batch", "Burstable", 2 * GI, 500, None, {}),
    ("scratch", "BestEffort", 0, 0, None, {}),
]


def human(n: int) -> str:
    return f"{n // GI}Gi" if n else "-"


def main() -> int:
    paths = E2EPaths.from_env()
    ctrd = Containerd(paths, "2.x", instance="demo")
    state_dir = paths.root / "demo-state"
    rows: list[list[str]] = []
    try:
        ctrd.start()
        plugin = ctrd.start_plugin(
            [
                sys.executable,
                "-m",
                "nri_plugin.cli",
                "run",
                "--socket",
                str(ctrd.nri_socket),
                "--config",
                str(DEMO / "config.yaml"),
                "--topology-file",
                str(DEMO / "topology.yaml"),
                "--state-dir",
                str(state_dir),
            ],
            env={"PYTHONPATH": str(ROOT)},
            name="90-memory-manager",
        )
        plugin.wait_registered(ctrd, timeout=20)
        print(
            f"containerd {ctrd.cri().version().runtime_version} with NRI; "
            "nri-memory-manager registered as 90-memory-manager\n"
        )
        print(
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "nri_plugin.cli",
                    "topology",
                    "--topology-file",
                    str(DEMO / "topology.yaml"),
                ],
                capture_output=True,
                text=True,
                check=True,
                cwd=ROOT,
            ).stdout
        )
        cri = ctrd.cri()
        host_cpus = parse_cpulist(Path("/sys/devices/system/cpu/online").read_text())
        for name, qos, memory, cpu, cpus, hugepages in PODS:
            pod = cri.run_pod(str(uuid.uuid4()), name, qos)  # type: ignore[arg-type]
            limit = None if qos == "Guaranteed" else (0 if qos == "BestEffort" else 2 * cpu)
            pages = ", ".join(f"{k}={human(v)}" for k, v in hugepages.items())
            try:
                cid = cri.create_container(
                    pod,
                    name,
                    memory_limit=memory,
                    cpu_millis=cpu,
                    cpu_limit_millis=limit,
                    cpuset_cpus=cpus,
                    hugepages=hugepages,
                )
                mems = cri.mems(cid)
                nodes = cri.numa_nodes(cid)
                decision = "pinned" if mems else "untouched"
                # kubelet's CPU manager would name this machine's CPUs; the fake
                # topology's beyond them cannot be written into a cgroup here
                if cpus is None or parse_cpulist(cpus) <= host_cpus:
                    cri.start_container(cid)
                    decision += ", running"
                else:
                    decision += ", created (its CPUs are not on this machine)"
            except CRIError as err:
                mems, nodes = "-", "-"
                decision = "REFUSED: " + err.details.split("desc = ", 1)[-1]
            rows.append(
                [
                    name,
                    qos,
                    human(memory) + (f" + {pages}" if pages else ""),
                    cpus or "shared",
                    nodes or "(unset)",
                    mems or "(unset)",
                    decision,
                ]
            )
        widths = [max(len(r[i]) for r in [HEADER, *rows]) for i in range(6)]
        for r in [HEADER, *rows]:
            print("  ".join(c.ljust(w) for c, w in zip(r[:6], widths, strict=True)) + "  " + r[6])
        print(
            "\nNUMA NODES: the fake nodes the plugin decided (its annotation"
            " nri-memory-manager.io/numa-nodes);\nCPUSET.MEMS: the host nodes they map to,"
            " written into the container's cpuset.mems"
        )
        print("\n$ nri-memory-manager state --state-dir", state_dir)
        print(
            subprocess.run(
                [sys.executable, "-m", "nri_plugin.cli", "state", "--state-dir", str(state_dir)],
                capture_output=True,
                text=True,
                check=True,
                cwd=ROOT,
            ).stdout
        )
    finally:
        ctrd.close()
        ctrd.assert_clean()
        subprocess.run(["rm", "-rf", str(state_dir)], check=False)
    print("demo finished: pods, plugin and containerd stopped, nothing left running")
    return 0


HEADER = ["POD", "QOS", "MEMORY", "CPUS", "NUMA NODES", "CPUSET.MEMS", "DECISION"]

if __name__ == "__main__":
    sys.exit(main())

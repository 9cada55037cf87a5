#!/usr/bin/env python3
"""Create hack/kind/pods.yaml's pods on a kind node one by one and check what each got.

Used by hack/kind/e2e.sh (`verify.py run ...`, on the host: python3's standard
library, kubectl, docker, and crictl inside the kind node). The checks
themselves (`expectation`, `observe`, `check`) are also what
tests/e2e/test_kind_overlay.py applies in CI to the same pods on a real
containerd, so the two cannot drift apart.

What is checked, per pod (its annotation nri-memory-manager.io/e2e-expect):
- `numa-nodes N[,M]`: the plugin gave the container these fake NUMA nodes (its
  annotation nri-memory-manager.io/numa-nodes, or cpuset.mems when no mapping
  is active); the container runs; the kernel confines its process to exactly
  the cpuset.mems of its OCI spec (Mems_allowed_list in /proc/PID/status); and
  those are NUMA nodes the host has;
- `unpinned`: no cpuset.mems and no annotation from the plugin; it runs;
- `refused`: its creation failed with TopologyAffinityError.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

EXPECT_ANNOTATION = "nri-memory-manager.io/e2e-expect"
NUMA_NODES_ANNOTATION = "nri-memory-manager.io/numa-nodes"


@dataclass(frozen=True)
class Expectation:
    kind: str  # "numa-nodes", "unpinned" or "refused"
    numa_nodes: str = ""


@dataclass(frozen=True)
class Observed:
    """What the node shows of a pod's (first) container."""

    refused: str | None = None  # the creation error's message
    running: bool = False
    numa_nodes_annotation: str | None = None
    spec_mems: str = ""  # linux.resources.cpu.mems of the OCI spec
    process_mems: str | None = None  # Mems_allowed_list of its process
    host_nodes: str = ""  # the host's online NUMA nodes


def expectation(pod: Mapping[str, Any]) -> Expectation:
    text = str(pod.get("metadata", {}).get("annotations", {}).get(EXPECT_ANNOTATION, ""))
    kind, _, nodes = text.partition(" ")
    if kind == "numa-nodes" and nodes:
        return Expectation(kind, nodes)
    if kind in ("unpinned", "refused") and not nodes:
        return Expectation(kind)
    name = pod.get("metadata", {}).get("name")
    raise ValueError(f"pod {name}: {EXPECT_ANNOTATION} {text!r} is not understood")


def parse_cpulist(text: str) -> set[int]:
    out: set[int] = set()
    for item in filter(None, text.strip().split(",")):
        first, _, last = item.partition("-")
        out.update(range(int(first), int(last or first) + 1))
    return out


def observe(
    info: Mapping[str, Any], read_status: Callable[[int], str], host_nodes: str
) -> Observed:
    """A created container's facts from the runtime's verbose status (`crictl inspect`'s
    "info", CRI ContainerStatus verbose info) and its process's /proc/PID/status."""
    spec = info.get("runtimeSpec", {})
    annotations = {
        **(info.get("config", {}).get("annotations") or {}),
        **(spec.get("annotations") or {}),
    }
    mems = str(spec.get("linux", {}).get("resources", {}).get("cpu", {}).get("mems", ""))
    pid = int(info.get("pid") or 0)
    process_mems = None
    if pid > 0:
        for line in read_status(pid).splitlines():
            if line.startswith("Mems_allowed_list:"):
                process_mems = line.split(":", 1)[1].strip()
    return Observed(
        running=pid > 0,
        numa_nodes_annotation=annotations.get(NUMA_NODES_ANNOTATION),
        spec_mems=mems,
        process_mems=process_mems,
        host_nodes=host_nodes,
    )


def check(name: str, want: Expectation, got: Observed) -> list[tuple[bool, str, str, str]]:
    """(ok, what, got, want) for every check of one pod."""
    out: list[tuple[bool, str, str, str]] = []

    def add(what: str, value: object, wanted: object, ok: bool | None = None) -> None:
        passed = value == wanted if ok is None else ok
        out.append((passed, f"{name}: {what}", str(value), str(wanted)))

    if want.kind == "refused":
        message = got.refused or ""
        add("refused", "TopologyAffinityError" in message, True)
        return out
    add("created", got.refused is None, True)
    if got.refused is not None:
        return out
    add("running", got.running, True)
    if want.kind == "unpinned":
        add("cpuset.mems", got.spec_mems, "")
        add("numa-nodes annotation", got.numa_nodes_annotation, None)
        return out
    fake = got.numa_nodes_annotation if got.numa_nodes_annotation is not None else got.spec_mems
    add("fake NUMA nodes", fake, want.numa_nodes)
    add("process Mems_allowed_list", got.process_mems, got.spec_mems)
    host = parse_cpulist(got.host_nodes)
    add(
        "cpuset.mems on host nodes",
        got.spec_mems,
        f"nodes of {got.host_nodes}",
        ok=bool(got.spec_mems) and parse_cpulist(got.spec_mems) <= host,
    )
    return out


def report(results: Sequence[tuple[bool, str, str, str]]) -> int:
    failures = 0
    for ok, what, got, want in results:
        if ok:
            print(f"  ok    {what:40} {got}")
        else:
            print(f"  FAIL  {what:40} got {got}, want {want}")
            failures += 1
    return failures


# --------------------------------------------------------------------------------------------
# kind: kubectl on the host, crictl in the node


class Kind:
    def __init__(self, context: str, node: str, namespace: str) -> None:
        self.context, self.node, self.namespace = context, node, namespace

    def _run(self, argv: Sequence[str], stdin: str | None = None) -> str:
        proc = subprocess.run(argv, input=stdin, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(argv[:3])} ...: {proc.stderr.strip()}")
        return proc.stdout

    def kubectl(self, *args: str, stdin: str | None = None) -> str:
        return self._run(["kubectl", "--context", self.context, *args], stdin)

    def in_node(self, *args: str) -> str:
        return self._run(["docker", "exec", self.node, *args])

    def pods(self, path: str) -> list[dict[str, Any]]:
        """The file's pods, in file order (kubectl parses the YAML: no PyYAML needed)."""
        listed = json.loads(self.kubectl("create", "--dry-run=client", "-o", "json", "-f", path))
        items = listed["items"] if listed.get("kind") == "List" else [listed]
        return [i for i in items if i.get("kind") == "Pod"]

    def container_id(self, pod: str) -> str:
        return self.in_node(
            "crictl", "ps", "-a", "-q",
            "--label", f"io.kubernetes.pod.namespace={self.namespace}",
            "--label", f"io.kubernetes.pod.name={pod}",
        ).strip().split("\n")[0]  # fmt: skip

    def waiting(self, pod: str) -> tuple[str, str]:
        status = json.loads(self.kubectl("-n", self.namespace, "get", "pod", pod, "-o", "json"))
        for c in status.get("status", {}).get("containerStatuses", []):
            waiting = c.get("state", {}).get("waiting", {})
            return str(waiting.get("reason", "")), str(waiting.get("message", ""))
        return "", ""

    def create_and_observe(self, pod: dict[str, Any], timeout: float = 180.0) -> Observed:
        """Create the pod and wait until its container runs, or its creation failed."""
        name = pod["metadata"]["name"]
        self.kubectl("-n", self.namespace, "create", "-f", "-", stdin=json.dumps(pod))
        host_nodes = self.in_node("cat", "/sys/devices/system/node/online").strip()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            reason, message = self.waiting(name)
            if reason == "CreateContainerError":
                return Observed(refused=message, host_nodes=host_nodes)
            cid = self.container_id(name)
            if cid:
                info = json.loads(self.in_node("crictl", "inspect", cid)).get("info", {})
                pid = int(info.get("pid") or 0)
                # running its own program (runc's init may not have exec'd it yet)
                if pid > 0 and self.in_node("cat", f"/proc/{pid}/cmdline").strip("\0"):
                    return observe(
                        info, lambda pid: self.in_node("cat", f"/proc/{pid}/status"), host_nodes
                    )
            time.sleep(2)
        raise RuntimeError(f"pod {name}: its container neither ran nor failed in {timeout} s")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("pods", help="the pods file (hack/kind/pods.yaml)")
    parser.add_argument("--context", required=True, help="kubectl context (kind-CLUSTER)")
    parser.add_argument("--node", required=True, help="the kind node's container name")
    parser.add_argument("--namespace", required=True, help="where to create the pods")
    args = parser.parse_args(argv)
    kind = Kind(args.context, args.node, args.namespace)
    results: list[tuple[bool, str, str, str]] = []
    for pod in kind.pods(args.pods):
        want = expectation(pod)
        got = kind.create_and_observe(pod)
        results += check(pod["metadata"]["name"], want, got)
    failures = report(results)
    print(f"{failures} check(s) failed" if failures else "all checks passed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

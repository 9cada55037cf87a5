"""The command line as a user runs it: exit codes, one-line errors, the seed scenarios."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from nri_plugin.persist.format import from_checkpoint

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = ROOT / "tests" / "scenarios"


def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nri_plugin.cli", *args],
        capture_output=True,
        text=True,
        input=stdin,
        cwd=ROOT,
        check=False,
    )


def test_seed_150gi_pod_spans_both_nodes_and_matches_the_docs_state_file() -> None:
    proc = run("simulate", str(SCENARIOS / "seed-150gi-two-nodes.yaml"))
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    c = report["steps"][0]["containers"][0]
    assert c["allocations"] == [{"type": "memory", "size": 150 << 30, "numaAffinity": [0, 1]}]
    assert c["cpusetMems"] == "0,1"
    node0 = report["state"]["machineState"]["0"]["memoryMap"]["memory"]
    assert node0["free"] == 0 and node0["reserved"] == node0["allocatable"]
    # the same machine state and entries as the kubernetes.io example file
    docs = json.loads((ROOT / "tests/data/kubernetes-io-memory-manager-state.json").read_text())
    assert from_checkpoint(report["state"]) == from_checkpoint(docs)


def test_simulate_reads_stdin_and_accepts_json() -> None:
    import yaml

    scenario = yaml.safe_load((SCENARIOS / "reserved-memory-valid.yaml").read_text())
    proc = run("simulate", "-", stdin=json.dumps(scenario))
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["state"]["policyName"] == "Static"


@pytest.mark.parametrize(
    ("scenario", "needle"),
    [
        ("reserved-memory-invalid-sum.yaml", '"5Gi"'),
        ("reserved-memory-missing-node.yaml", "NUMA node 3"),
        ("reserved-memory-duplicate.yaml", 'duplicate value for NUMA node 0 and resource "memory"'),
    ],
)
def test_invalid_configurations_exit_2_with_one_line(scenario: str, needle: str) -> None:
    proc = run("simulate", str(SCENARIOS / scenario))
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_invalid_sum_names_both_sums() -> None:
    proc = run("simulate", str(SCENARIOS / "reserved-memory-invalid-sum.yaml"))
    assert '"5Gi"' in proc.stderr and '"5220Mi"' in proc.stderr


BAD_SCENARIOS = {
    "not yaml": (
        "topology: [",
        "not valid YAML or JSON: did not find expected node content at line 2, column 1",
    ),
    "no topology": ("steps: []", 'scenario: missing key "topology"'),
    "unknown step": (
        "topology: {nodes: [{id: 0, cpus: '0', memory: 4Gi}]}\n"
        "config: {policy: none}\nsteps: [{launch: {}}]",
        'steps[0]: unknown step "launch" (expected one of: admit, start, resize, remove)',
    ),
    "bad quantity": (
        "topology: {nodes: [{id: 0, cpus: '0', memory: 4Gi}]}\n"
        "config: {policy: none}\n"
        "steps: [{admit: {pod: {uid: p}, containers: [{name: c, resources: "
        "{limits: {memory: 12XB}}}]}}]",
        'steps[0].admit.containers[0].resources.limits.memory: "12XB" is not a valid quantity',
    ),
    "fractional bytes": (
        "topology: {nodes: [{id: 0, cpus: '0', memory: 4Gi}]}\n"
        "config: {policy: none}\n"
        "steps: [{admit: {pod: {uid: p}, containers: [{name: c, resources: "
        "{limits: {memory: 0.5}}}]}}]",
        "steps[0].admit.containers[0].resources.limits.memory:"
        ' "0.5" is not a whole number of bytes',
    ),
    "unknown cpu": (
        "topology: {nodes: [{id: 0, cpus: '0-1', memory: 4Gi}]}\n"
        "config: {policy: none}\n"
        "steps: [{admit: {pod: {uid: p}, containers: [{name: c, cpuset: '7'}]}}]",
        "steps[0].admit.containers[0].cpuset: CPU 7 is not on any NUMA node of the topology",
    ),
    "device hint on missing node": (
        "topology: {nodes: [{id: 0, cpus: '0-1', memory: 4Gi}]}\n"
        "config: {policy: none}\n"
        "steps: [{admit: {pod: {uid: p}, containers: [{name: c, deviceHints: "
        "[{nodes: [4], preferred: true}]}]}}]",
        "steps[0].admit.containers[0].deviceHints[0].nodes: the number 4 is not a NUMA node"
        " of the topology (nodes: 0)",
    ),
    "static without reservation": (
        "topology: {nodes: [{id: 0, cpus: '0-1', memory: 4Gi}]}\nconfig: {policy: static}\n",
        "config.reservedMemory: [memorymanager] you should specify the system reserved memory",
    ),
    "too many numa nodes": (
        "topology: {nodes: ["
        + ", ".join(f"{{id: {i}, cpus: '{i}', memory: 1Gi}}" for i in range(9))
        + "]}\nconfig: {policy: none, topologyManagerPolicy: restricted}\n",
        "config.topologyManagerPolicyOptions.max-allowable-numa-nodes: the machine has 9 NUMA"
        " nodes, more than max-allowable-numa-nodes 8 (kubelet: unsupported on machines with"
        " more than 8 NUMA Nodes)",
    ),
    "prefer closest without distances": (
        "topology: {nodes: [{id: 0, cpus: '0', memory: 4Gi}]}\n"
        "config: {policy: none, topologyManagerPolicy: best-effort, "
        "topologyManagerPolicyOptions: {prefer-closest-numa-nodes: 'true'}}\n",
        'config.topologyManagerPolicyOptions.prefer-closest-numa-nodes: "true" needs the NUMA'
        " distance matrix, but the topology has no distances",
    ),
    "bad checksum in initialState": (
        "topology: {nodes: [{id: 0, cpus: '0', memory: 4Gi}]}\n"
        "config: {policy: none}\n"
        "initialState: {policyName: None, machineState: {}, checksum: 1}\n",
        "initialState: checksum: checkpoint is corrupted: stored checksum 1 does not match the"
        " content (computed 4236770233 as kubelet's v1 form, 512582496 as kubelet 1.36's v2"
        " form)",
    ),
    "duplicate container": (
        "topology: {nodes: [{id: 0, cpus: '0', memory: 4Gi}]}\n"
        "config: {policy: none}\n"
        "steps: [{admit: {pod: {uid: p}, containers: [{name: c}, {name: c}]}}]",
        'steps[0].admit: container name "c" is used twice',
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_SCENARIOS))
def test_bad_scenarios_exit_2_naming_the_value(case: str) -> None:
    text, message = BAD_SCENARIOS[case]
    proc = run("simulate", "-", stdin=text)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert proc.stdout == ""
    # the whole line: the source, the key path and the rule, nothing else
    assert proc.stderr.splitlines() == [f"nri-memory-manager simulate: stdin: {message}"]


def test_missing_scenario_file_is_exit_2() -> None:
    proc = run("simulate", "/nonexistent/scenario.yaml")
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        "nri-memory-manager simulate: /nonexistent/scenario.yaml: no such file"
    ]


def test_check_config_accepts_and_refuses(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(
        "policy: static\ntopologyManagerPolicy: single-numa-node\n"
        "reservedMemory: ['0:memory=1Gi']\n"
    )
    topo = ROOT / "hack/topologies/two-node.yaml"
    proc = run("check-config", "--config", str(good), "--topology-file", str(topo))
    assert proc.returncode == 0, proc.stderr
    assert "valid" in proc.stdout and "ALLOCATABLE" in proc.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("policy: static\nreservedMemory: ['0:memory=0']\n")
    proc = run("check-config", "--config", str(bad), "--topology-file", str(topo))
    assert proc.returncode == 2
    assert "may not be zero" in proc.stderr


def test_topology_json_round_trips(tmp_path: Path) -> None:
    topo = ROOT / "hack/topologies/four-node-hugepages.yaml"
    proc = run("topology", "--topology-file", str(topo), "--json")
    assert proc.returncode == 0, proc.stderr
    again = tmp_path / "again.json"
    again.write_text(proc.stdout)
    proc2 = run("topology", "--topology-file", str(again), "--json")
    assert proc2.stdout == proc.stdout
    table = run("topology", "--topology-file", str(topo))
    assert table.returncode == 0 and table.stdout.startswith("NODE")


def test_state_command_reads_kubelet_file(tmp_path: Path) -> None:
    path = ROOT / "tests/data/kubernetes-io-memory-manager-state.json"
    proc = run("state", "--state-file", str(path))
    assert proc.returncode == 0, proc.stderr
    assert "fa9bdd38-6df9-4cf9-aa67-8c4814da37a8" in proc.stdout
    assert "150Gi" in proc.stdout

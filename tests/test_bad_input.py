"""One test per row of docs/bad-input.md: every input the plugin reads, and each bad case.

The parametrize ids are the row ids of the table. Each case asserts the
documented outcome: the one-line message and exit status 2, a refused or
untouched container, an error answer on the wire, or a distrusted state file
set aside.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import re
import shutil
import socket
import struct
import tempfile
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest

from nri_plugin import daemon as run_module
from nri_plugin.cli import main as cli_main
from nri_plugin.engine.manager import MemoryManager
from nri_plugin.engine.pod import ContainerSpec, PodSpec
from nri_plugin.engine.rebase import (
    OUTCOME_NONE,
    OUTCOME_POLICY_CHANGED,
    OUTCOME_REBASED,
    OUTCOME_UNTRUSTED,
)
from nri_plugin.engine.state import MemoryState
from nri_plugin.errors import StateError
from nri_plugin.frontends.kubelet import KubeletResources
from nri_plugin.frontends.nri import REFUSAL_PREFIX, AdmissionRefused, MemoryPlugin
from nri_plugin.inputs.config import parse_config
from nri_plugin.inputs.iomem import resolve_drift_tolerance
from nri_plugin.inputs.kubeletconfig import align_with_kubelet
from nri_plugin.inputs.topology import topology_from_mapping
from nri_plugin.nri import mux, ttrpc
from nri_plugin.nri.gen import nri_pb2 as api
from nri_plugin.nri.stub import PLUGIN_SERVICE, Stub
from nri_plugin.persist.file import write_file
from nri_plugin.persist.format import MAX_FILE_BYTES, dumps, read_checkpoint
from nri_plugin.persist.recovery import ConservationGate, recover
from nri_plugin.podresources.client import PodResourcesClient
from tests.nri.fake_runtime import FakeRuntime
from tests.nri_builders import container, pod
from tests.podresources_standin import running_standin

GI = 1 << 30
MI = 1 << 20
HUGE = "9" * 5000  # more digits than Python's int() converts
KUBELET_DATA = Path(__file__).parent / "data" / "kubelet"

TOPOLOGY_YAML = """\
nodes:
  - {id: 0, cpus: "0-3", memory: 8Gi, hugepages: {2Mi: 1Gi}}
  - {id: 1, cpus: "4-7", memory: 8Gi, hugepages: {2Mi: 1Gi}}
"""
TOPOLOGY = topology_from_mapping(
    {
        "nodes": [
            {"id": 0, "cpus": "0-3", "memory": "8Gi", "hugepages": {"2Mi": "1Gi"}},
            {"id": 1, "cpus": "4-7", "memory": "8Gi", "hugepages": {"2Mi": "1Gi"}},
        ]
    }
)
GOOD_CONFIG = "topologyManagerPolicy: restricted\nreservedMemory: ['0:memory=1Gi']\n"
CONFIG = parse_config({"topologyManagerPolicy": "restricted", "reservedMemory": ["0:memory=1Gi"]})


class ListLogger:
    """structlog-style calls, recorded as (level, event, fields)."""

    def __init__(self) -> None:
        self.records: list[tuple[str, str, dict[str, Any]]] = []

    def _record(self, level: str, event: str, kw: dict[str, Any]) -> None:
        self.records.append((level, event, kw))

    def debug(self, event: str, *args: Any, **kw: Any) -> None:
        self._record("debug", event, kw)

    def info(self, event: str, *args: Any, **kw: Any) -> None:
        self._record("info", event, kw)

    def warning(self, event: str, *args: Any, **kw: Any) -> None:
        self._record("warning", event, kw)

    def error(self, event: str, *args: Any, **kw: Any) -> None:
        self._record("error", event, kw)

    def find(self, event: str, level: str | None = None) -> dict[str, Any]:
        for lvl, e, kw in self.records:
            if e == event and (level is None or lvl == level):
                return kw
        raise AssertionError(f"no {event!r} in {[e for _, e, _ in self.records]}")


# -- the command line: one line on stderr, exit status 2 -------------------------------------


@dataclass(frozen=True)
class Ran:
    code: int
    out: str
    err: str


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Callable[..., Ran]:
    # `run` configures process-wide logging; the bad input ends it before any log line.
    monkeypatch.setattr(run_module, "configure_logging", lambda *a, **k: None)

    def invoke(*argv: str) -> Ran:
        try:
            code = cli_main(list(argv))
        except SystemExit as exit_:  # argparse's usage errors
            code = int(exit_.code or 0)
        captured = capsys.readouterr()
        return Ran(code, captured.out, captured.err)

    return invoke


def assert_refused(ran: Ran, command: str, pattern: str, **paths: Path) -> None:
    """Exit 2 and exactly one stderr line: ``nri-memory-manager <command>: <pattern>``."""
    for name, path in paths.items():
        pattern = pattern.replace("{" + name + "}", re.escape(str(path)))
    assert ran.code == 2, ran
    lines = ran.err.splitlines()
    assert len(lines) == 1, ran.err
    assert re.fullmatch(f"nri-memory-manager {command}: {pattern}", lines[0]), lines[0]


@pytest.fixture
def machine(tmp_path: Path) -> Path:
    path = tmp_path / "topology.yaml"
    path.write_text(TOPOLOGY_YAML)
    return path


# -- config file (--config) ---------------------------------------------------

CONFIG_ROWS = [
    ("config-not-yaml", "a: [\n", r"{file}: not valid YAML or JSON: .* at line 2, column 1"),
    (
        "config-not-mapping",
        "[1, 2]\n",
        r"{file}: config: expected a mapping, got a list of 2 items",
    ),
    (
        "config-unknown-key",
        "reservedMemroy: []\n",
        r'{file}: config: unknown key "reservedMemroy" \(known: .*\);'
        r' did you mean "reservedMemory"\?',
    ),
    (
        "config-bad-policy",
        "policy: dynamic\n",
        r'{file}: config.policy: unknown policy: "dynamic" \(expected static or none\)',
    ),
    (
        "config-bad-topology-policy",
        "topologyManagerPolicy: strict\n",
        r'{file}: config.topologyManagerPolicy: unknown policy: "strict" \(expected .*\)',
    ),
    (
        "config-bad-scope",
        "topologyManagerScope: node\n",
        r'{file}: config.topologyManagerScope: unknown scope: "node" \(expected container, pod\)',
    ),
    (
        "config-bad-option",
        "topologyManagerPolicyOptions: {prefer-closest-numa-nodes: maybe}\n",
        r'{file}: .*prefer-closest-numa-nodes: bad value for option ".*": "maybe" is not a boolean',
    ),
    (
        "config-option-too-small",
        "topologyManagerPolicyOptions: {max-allowable-numa-nodes: 4}\n",
        r'{file}: .*max-allowable-numa-nodes: "4" is too small: .* should not be less than 8',
    ),
    (
        "config-option-huge",
        f"topologyManagerPolicyOptions: {{max-allowable-numa-nodes: '{HUGE}'}}\n",
        r'{file}: .*: bad value for option "max-allowable-numa-nodes": "9+\.\.\."'
        r" is not an integer",
    ),
    (
        "config-unknown-option",
        "topologyManagerPolicyOptions: {align-by-socket: 'true'}\n",
        r'{file}: .*: unknown Topology Manager Policy option: "align-by-socket" \(known: .*\)',
    ),
    (
        "config-reserved-syntax",
        "reservedMemory: ['0memory=1Gi']\n",
        r"{file}: config.reservedMemory\[0\]: the reserved memory has incorrect format, .*",
    ),
    (
        "config-reserved-node-not-integer",
        "reservedMemory: ['x:memory=1Gi']\n",
        r"{file}: .*failed to convert the NUMA node ID, exptected integer, got x",
    ),
    (
        "config-reserved-node-huge",
        f"reservedMemory: ['{HUGE}:memory=1Gi']\n",
        r"{file}: .*failed to convert the NUMA node ID, exptected integer, got 9+\.\.\.",
    ),
    (
        "config-reserved-unknown-type",
        "reservedMemory: ['0:cpu=1']\n",
        r'{file}: .*memory type conversion error, unknown type: "cpu"',
    ),
    (
        "config-reserved-zero",
        "reservedMemory: ['0:memory=0']\n",
        r'{file}: .*reserved memory may not be zero for NUMA node 0 and resource "memory"',
    ),
    (
        "config-reserved-negative",
        "reservedMemory: ['0:memory=-1Gi']\n",
        r'{file}: .*reserved memory of NUMA node 0: "-1Gi" must not be negative',
    ),
    (
        "config-reserved-fraction",
        "reservedMemory: ['0:memory=1.5']\n",
        r'{file}: .*: "1.5" is not a whole number of bytes',
    ),
    (
        "config-reserved-huge",
        "reservedMemory: ['0:memory=99Ei']\n",
        r'{file}: .*: "99Ei" cannot be represented as int64',
    ),
    (
        "config-reserved-duplicate",
        "reservedMemory: ['0:memory=1Gi', '0:memory=1Gi']\n",
        r"{file}: .*the reserved memory has a duplicate value for NUMA node 0"
        r' and resource "memory"',
    ),
    (
        "config-reserved-missing-node",
        "reservedMemory: ['7:memory=1Gi']\n",
        r"{file}.reservedMemory: .*references a NUMA node 7 that does not exist .*\(nodes: 0,1\)",
    ),
    (
        "config-reserved-unknown-hugepage-size",
        "reservedMemory: ['0:memory=1Gi', '0:hugepages-1Gi=1Gi']\n",
        r'{file}.reservedMemory: NUMA node 0 reserves "hugepages-1Gi", a hugepage size this'
        r" machine does not have \(sizes: hugepages-2Mi\)",
    ),
    (
        "config-reserved-exceeds-node",
        "reservedMemory: ['0:memory=100Gi']\n",
        r'{file}.reservedMemory: NUMA node 0 reserves "100Gi" of "memory" but the node has only'
        r' "7Gi" \(memory 8Gi minus hugepages 1Gi\)',
    ),
    (
        "config-reserved-none-for-static",
        "{}\n",
        r"{file}.reservedMemory: \[memorymanager\] you should specify the system reserved memory",
    ),
    (
        "config-reserved-sum-mismatch",
        "reservedMemory: ['0:memory=1Gi']\nkubeReserved: {memory: 2Gi}\n",
        r'{file}.reservedMemory: the total amount "1Gi" of type "memory" is not equal to the value'
        r' "2148Mi" determined by Node Allocatable feature',
    ),
    (
        "config-reserved-bad-resource",
        "reservedMemory: ['0:memory=1Gi']\nkubeReserved: {gpu: 1}\n",
        r'{file}: config.kubeReserved: cannot reserve "gpu" resource \(only .*\)',
    ),
    (
        "config-eviction-bad-signal",
        "reservedMemory: ['0:memory=1Gi']\nevictionHard: {memory.free: 1Gi}\n",
        r'{file}: config.evictionHard: unsupported eviction signal "memory.free"',
    ),
    (
        "config-eviction-over-100-percent",
        "reservedMemory: ['0:memory=1Gi']\nevictionHard: {memory.available: 200%}\n",
        r"{file}: .*eviction percentage threshold 200% must be <= 100%",
    ),
    (
        "config-drift-negative",
        "reservedMemory: ['0:memory=1Gi']\nmemoryDriftTolerance: -1Mi\n",
        r'{file}: config.memoryDriftTolerance: "-1Mi" must not be negative',
    ),
    (
        "config-unknown-memory-option",
        "reservedMemory: ['0:memory=1Gi']\n"
        "memoryManagerPolicyOptions: {memory-drift-tolerence: auto}\n",
        r"{file}: config.memoryManagerPolicyOptions: unknown Memory Manager Policy option:"
        r' "memory-drift-tolerence" \(known: memory-drift-tolerance\); did you mean'
        r' "memory-drift-tolerance"\?',
    ),
    (
        "config-drift-bad-value",
        "reservedMemory: ['0:memory=1Gi']\n"
        "memoryManagerPolicyOptions: {memory-drift-tolerance: sometimes}\n",
        r"{file}: config.memoryManagerPolicyOptions.memory-drift-tolerance: \"sometimes\" is not"
        r' auto, off or a quantity such as "128Mi"',
    ),
    (
        "config-drift-both-names",
        "reservedMemory: ['0:memory=1Gi']\nmemoryDriftTolerance: 64Mi\n"
        "memoryManagerPolicyOptions: {memory-drift-tolerance: auto}\n",
        r"{file}: config: memoryDriftTolerance and"
        r" memoryManagerPolicyOptions.memory-drift-tolerance are both set;"
        r" memoryDriftTolerance is the older name of the same setting: keep one",
    ),
    (
        "config-drift-beyond-bad",
        "reservedMemory: ['0:memory=1Gi']\nmemoryDriftBeyondTolerance: accept\n",
        r'{file}: config.memoryDriftBeyondTolerance: unknown choice: "accept" \(expected refuse,'
        r" accept-if-fits\)",
    ),
    (
        "config-huge-integer",
        f"reservedMemory: [{{numaNode: {HUGE}, limits: {{memory: 1Gi}}}}]\n",
        r"{file}: not valid YAML or JSON: a number of more than 4300 digits",
    ),
    ("config-deep-nesting", "[" * 100_000, r"{file}: nested deeper than 64 levels"),
    ("config-bad-date", "when: 2020-13-45\n", r"{file}: not valid YAML or JSON: month must be .*"),
]


@pytest.mark.parametrize(("text", "pattern"), [pytest.param(t, p, id=i) for i, t, p in CONFIG_ROWS])
def test_config_file(
    text: str, pattern: str, tmp_path: Path, machine: Path, cli: Callable[..., Ran]
) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    ran = cli("check-config", "--config", str(path), "--topology-file", str(machine))
    assert_refused(ran, "check-config", pattern, file=path)


@pytest.mark.parametrize(
    ("setup", "pattern"),
    [
        pytest.param(lambda p: None, r"{file}: no such file", id="config-missing-file"),
        pytest.param(
            lambda p: p.mkdir(), r"{file}: cannot read: Is a directory", id="config-directory"
        ),
        pytest.param(
            lambda p: p.write_bytes(b"policy: \xff\n"),
            r"{file}: not UTF-8 text \(byte 8\)",
            id="config-not-utf8",
        ),
    ],
)
def test_config_file_unreadable(
    setup: Callable[[Path], object],
    pattern: str,
    tmp_path: Path,
    machine: Path,
    cli: Callable[..., Ran],
) -> None:
    path = tmp_path / "config.yaml"
    setup(path)
    ran = cli("check-config", "--config", str(path), "--topology-file", str(machine))
    assert_refused(ran, "check-config", pattern, file=path)


def test_run_refuses_a_bad_config_before_connecting(
    tmp_path: Path, machine: Path, cli: Callable[..., Ran]
) -> None:
    # every config-* row holds for `run` too (and it never reaches the socket)
    path = tmp_path / "config.yaml"
    path.write_text("policy: dynamic\n")
    ran = cli(
        "run",
        "--config",
        str(path),
        "--topology-file",
        str(machine),
        "--state-dir",
        str(tmp_path / "state"),
        "--socket",
        str(tmp_path / "no.sock"),
    )
    assert_refused(ran, "run", r'{file}: config.policy: unknown policy: "dynamic" .*', file=path)
    assert not (tmp_path / "state").exists()  # nothing written before the checks


# -- kubelet config (--kubelet-config) -------------------------------------------

KUBELET_HEAD = "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\n"
KUBELET_ROWS = [
    ("kubelet-missing-file", None, r"{kubelet}: no such file"),
    ("kubelet-not-yaml", "a: [\n", r"{kubelet}: not valid YAML or JSON: .*"),
    (
        "kubelet-not-mapping",
        "[1]\n",
        r"{kubelet}: expected a KubeletConfiguration mapping, got a list of 1 item",
    ),
    (
        "kubelet-wrong-kind",
        "apiVersion: v1\nkind: Pod\n",
        r'{kubelet}: apiVersion is "v1", expected "kubelet.config.k8s.io/v1beta1" .*',
    ),
    (
        "kubelet-bad-value",
        KUBELET_HEAD + "topologyManagerPolicy: strict\n",
        r'{kubelet}: KubeletConfiguration.topologyManagerPolicy: unknown policy: "strict" .*',
    ),
    (
        "kubelet-bad-type",
        KUBELET_HEAD + "memoryManagerPolicy: 7\n",
        r"{kubelet}: memoryManagerPolicy: expected a string, got the number 7",
    ),
    (
        "kubelet-conflict",
        KUBELET_HEAD + "reservedMemory: [{numaNode: 0, limits: {memory: 2Gi}}]\n",
        r'reservedMemory: "0:memory=1Gi" in {config} but "0:memory=2Gi" in {kubelet}; make them'
        r" equal or remove reservedMemory from {config} to take kubelet's",
    ),
    (
        "kubelet-reservations-disagree",
        KUBELET_HEAD + "kubeReserved: {memory: 1Gi}\n",
        r'{config}.reservedMemory: the total amount "1Gi" of type "memory" is not equal to the'
        r' value "1124Mi" determined by Node Allocatable feature',
    ),
]


def _run_with_kubelet_config(
    cli: Callable[..., Ran], tmp_path: Path, machine: Path, config: Path, kubelet: Path
) -> Ran:
    """``run`` with ``--kubelet-config``, on a socket nobody serves."""
    return cli(
        "run",
        "--config",
        str(config),
        "--topology-file",
        str(machine),
        "--kubelet-config",
        str(kubelet),
        "--state-dir",
        str(tmp_path / "state"),
        "--socket",
        str(tmp_path / "no.sock"),
    )


@pytest.mark.parametrize(
    ("text", "pattern"), [pytest.param(t, p, id=i) for i, t, p in KUBELET_ROWS]
)
def test_kubelet_config(
    text: str | None, pattern: str, tmp_path: Path, machine: Path, cli: Callable[..., Ran]
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(GOOD_CONFIG)
    kubelet = tmp_path / "kubelet.yaml"
    if text is not None:
        kubelet.write_text(text)
    ran = _run_with_kubelet_config(cli, tmp_path, machine, config, kubelet)
    assert_refused(ran, "run", pattern, config=config, kubelet=kubelet)


def test_kubelet_drift_tolerance_conflict(
    tmp_path: Path, machine: Path, cli: Callable[..., Ran]
) -> None:
    # row kubelet-drift-conflict
    config = tmp_path / "config.yaml"
    config.write_text(GOOD_CONFIG + "memoryDriftTolerance: auto\n")
    kubelet = tmp_path / "kubelet.yaml"
    kubelet.write_text(
        KUBELET_HEAD + "memoryManagerPolicyOptions: {memory-drift-tolerance: 'off'}\n"
    )
    ran = _run_with_kubelet_config(cli, tmp_path, machine, config, kubelet)
    assert_refused(
        ran,
        "run",
        r'memoryManagerPolicyOptions.memory-drift-tolerance: "auto" in {config} but "off" in'
        r" {kubelet}; make them equal or remove memoryManagerPolicyOptions.memory-drift-tolerance"
        r" \(or memoryDriftTolerance\) from {config} to take kubelet's",
        config=config,
        kubelet=kubelet,
    )


def test_kubelet_options_of_a_newer_kubelet(tmp_path: Path) -> None:
    # row kubelet-unknown-option: not an error; one warning naming them and the file
    kubelet = tmp_path / "kubelet.yaml"
    kubelet.write_text(
        KUBELET_HEAD
        + "topologyManagerPolicyOptions: {restrict-to-cpu-numa-nodes: 'true'}\n"
        + "cpuManagerPolicy: numa-aware\n"
    )
    log = ListLogger()
    aligned = align_with_kubelet(CONFIG, str(kubelet), log)
    assert aligned.topology_manager_policy == "restricted"
    warnings = [(e, kw) for lvl, e, kw in log.records if lvl == "warning"]
    assert warnings == [
        (
            "kubelet's config sets options the plugin does not know; ignored",
            {
                "kubelet_config": str(kubelet),
                "ignored": [
                    'topologyManagerPolicyOptions.restrict-to-cpu-numa-nodes: "true"',
                    'cpuManagerPolicy: "numa-aware"',
                ],
            },
        )
    ]


# -- fake topology file (--topology-file) ---------------------------------------------

TOPOLOGY_ROWS = [
    (
        "topology-not-mapping",
        "- 1\n",
        r"{file}: topology: expected a mapping with nodes, got a list of 1 item",
    ),
    (
        "topology-no-nodes",
        "nodes: []\n",
        r"{file}: topology.nodes: the list is empty; a machine has at least one NUMA node",
    ),
    (
        "topology-unknown-key",
        "nodes: [{id: 0, cpus: '0', memory: 1Gi, numa: 1}]\n",
        r'{file}: topology.nodes\[0\]: unknown key "numa" \(known: id, cpus, memory, hugepages\)',
    ),
    (
        "topology-missing-memory",
        "nodes: [{id: 0, cpus: '0-3'}]\n",
        r'{file}: topology.nodes\[0\]: missing key "memory" \(the node\'s MemTotal\)',
    ),
    (
        "topology-id-not-integer",
        "nodes: [{id: '0', cpus: '0', memory: 1Gi}]\n",
        r'{file}: .*id: a NUMA node id must be an integer, got the string "0"',
    ),
    (
        "topology-id-negative",
        "nodes: [{id: -1, cpus: '0', memory: 1Gi}]\n",
        r"{file}: topology.nodes\[0\].id: NUMA node id -1 is negative",
    ),
    (
        "topology-id-above-linux-max",
        "nodes: [{id: 5000, cpus: '0', memory: 1Gi}]\n",
        r"{file}: .*: NUMA node id 5000 is above Linux's maximum 1023",
    ),
    (
        "topology-id-twice",
        "nodes: [{id: 0, cpus: '0', memory: 1Gi}, {id: 0, cpus: '1', memory: 1Gi}]\n",
        r"{file}: topology.nodes\[1\]: NUMA node 0 is listed twice \(also at topology.nodes\[0\]\)",
    ),
    (
        "topology-cpu-on-two-nodes",
        "nodes: [{id: 0, cpus: '0-3', memory: 1Gi}, {id: 1, cpus: '3', memory: 1Gi}]\n",
        r"{file}: topology.nodes\[1\]: CPU 3 is on NUMA node 1 and also on NUMA node 0",
    ),
    (
        "topology-cpulist-syntax",
        "nodes: [{id: 0, cpus: 'a', memory: 1Gi}]\n",
        r'{file}: .*cpus: "a" is not a valid cpulist \(expected e.g. "0-3,8,10-11"\)',
    ),
    (
        "topology-cpulist-descending",
        "nodes: [{id: 0, cpus: '3-1', memory: 1Gi}]\n",
        r'{file}: .*cpus: "3-1" has the descending range "3-1"',
    ),
    (
        "topology-cpu-too-large",
        "nodes: [{id: 0, cpus: '0-4000000000', memory: 1Gi}]\n",
        r'{file}: .*cpus: "0-4000000000" names CPU 4000000000, above 65535',
    ),
    (
        "topology-cpu-huge",
        f"nodes: [{{id: 0, cpus: '{HUGE}', memory: 1Gi}}]\n",
        r'{file}: .*cpus: "9+\.\.\." names CPU 9+\.\.\., above 65535',
    ),
    (
        "topology-memory-negative",
        "nodes: [{id: 0, cpus: '0', memory: -1Gi}]\n",
        r'{file}: .*memory: "-1Gi" must not be negative',
    ),
    (
        "topology-memory-fraction",
        "nodes: [{id: 0, cpus: '0', memory: 1.5}]\n",
        r'{file}: .*memory: "1.5" is not a whole number of bytes',
    ),
    (
        "topology-memory-huge",
        "nodes: [{id: 0, cpus: '0', memory: 100Ei}]\n",
        r'{file}: .*memory: "100Ei" cannot be represented as int64',
    ),
    (
        "topology-hugepage-size-not-power-of-two",
        "nodes: [{id: 0, cpus: '0', memory: 1Gi, hugepages: {3Mi: 3Mi}}]\n",
        r'{file}: .*hugepage size "3Mi" \(3145728 bytes\) is not a power of two of at least 1Ki',
    ),
    (
        "topology-hugepage-partial-page",
        "nodes: [{id: 0, cpus: '0', memory: 1Gi, hugepages: {2Mi: 3Mi}}]\n",
        r'{file}: .*"3Mi" of 2Mi hugepages is not a whole number of 2Mi pages',
    ),
    (
        "topology-hugepages-exceed-memory",
        "nodes: [{id: 0, cpus: '0', memory: 1Gi, hugepages: {1Gi: 2Gi}}]\n",
        r'{file}: .*hugepage pools total "2Gi", more than the node\'s memory "1Gi" .*',
    ),
    (
        "topology-hugepage-size-twice",
        "nodes: [{id: 0, cpus: '0', memory: 1Gi, hugepages: {2Mi: 2Mi, 2048Ki: 2Mi}}]\n",
        r'{file}: .*page size "2048Ki" is the same size as "2Mi"',
    ),
    (
        "topology-distances-shape",
        "nodes: [{id: 0, cpus: '0', memory: 1Gi}]\ndistances: [[10, 20]]\n",
        r"{file}: topology.distances\[0\]: expected a row of 1 distances, got 2 entries",
    ),
    (
        "topology-distance-not-positive",
        "nodes: [{id: 0, cpus: '0', memory: 1Gi}]\ndistances: [[0]]\n",
        r"{file}: .*: a distance must be a positive integer, got the number 0",
    ),
    (
        "topology-not-yaml",
        "nodes: [\n",
        r"{file}: not valid YAML or JSON: .* at line 2, column 1",
    ),
    (
        "topology-huge-integer",
        f"nodes: [{{id: {HUGE}, cpus: '0', memory: 1Gi}}]\n",
        r"{file}: not valid YAML or JSON: a number of more than 4300 digits",
    ),
    ("topology-deep-nesting", "[" * 100_000, r"{file}: nested deeper than 64 levels"),
]


@pytest.mark.parametrize(
    ("text", "pattern"), [pytest.param(t, p, id=i) for i, t, p in TOPOLOGY_ROWS]
)
def test_topology_file(text: str, pattern: str, tmp_path: Path, cli: Callable[..., Ran]) -> None:
    path = tmp_path / "topology.yaml"
    path.write_text(text)
    assert_refused(cli("topology", "--topology-file", str(path)), "topology", pattern, file=path)


def test_topology_file_missing(tmp_path: Path, cli: Callable[..., Ran]) -> None:
    # row topology-missing-file
    path = tmp_path / "nope.yaml"
    ran = cli("topology", "--topology-file", str(path))
    assert_refused(ran, "topology", r"{file}: no such file", file=path)


# -- sysfs (--sysfs-root, default /sys) ------------------------------------------------


def fake_sysfs(root: Path) -> Path:
    """A two-node machine as Linux lays it out; returns the node directory."""
    base = root / "devices" / "system" / "node"
    for node_id, cpus, distance in ((0, "0-3", "10 20"), (1, "4-7", "20 10")):
        d = base / f"node{node_id}"
        (d / "hugepages" / "hugepages-2048kB").mkdir(parents=True)
        (d / "meminfo").write_text(f"Node {node_id} MemTotal:        8388608 kB\n")
        (d / "cpulist").write_text(cpus + "\n")
        (d / "distance").write_text(distance + "\n")
        (d / "hugepages" / "hugepages-2048kB" / "nr_hugepages").write_text("0\n")
    return base


SYSFS_ROWS: list[tuple[str, Callable[[Path], object], str]] = [
    (
        "sysfs-no-node-dir",
        lambda base: [p.rename(base.parent / p.name) for p in list(base.iterdir())],
        r"{base}: no node<N> directories; cannot discover the NUMA topology",
    ),
    (
        "sysfs-meminfo-missing",
        lambda base: (base / "node1" / "meminfo").unlink(),
        r"{base}/node1/meminfo: no such file",
    ),
    (
        "sysfs-meminfo-garbage",
        lambda base: (base / "node1" / "meminfo").write_text("garbage\n"),
        r'{base}/node1/meminfo: no "Node 1 MemTotal: <n> kB" line',
    ),
    (
        "sysfs-meminfo-other-node",
        lambda base: (base / "node1" / "meminfo").write_text("Node 0 MemTotal: 8 kB\n"),
        r"{base}/node1/meminfo: describes node 0, not node 1",
    ),
    (
        "sysfs-meminfo-huge",
        lambda base: (base / "node1" / "meminfo").write_text(f"Node 1 MemTotal: {HUGE} kB\n"),
        r"{base}/node1/meminfo: MemTotal 9+\.\.\. kB is out of range",
    ),
    (
        "sysfs-cpulist-garbage",
        lambda base: (base / "node1" / "cpulist").write_text("x\n"),
        r'{base}/node1/cpulist: "x\\n" is not a valid cpulist .*',
    ),
    (
        "sysfs-not-ascii",
        lambda base: (base / "node1" / "cpulist").write_bytes(b"\xff\xfe"),
        r"{base}/node1/cpulist: not ASCII text \(byte 0\)",
    ),
    (
        "sysfs-nr-hugepages-negative",
        lambda base: (base / "node1/hugepages/hugepages-2048kB/nr_hugepages").write_text("-1\n"),
        r"{base}/node1/hugepages/hugepages-2048kB/nr_hugepages:"
        r' expected a non-negative integer, got "-1"',
    ),
    (
        "sysfs-nr-hugepages-huge",
        lambda base: (base / "node1/hugepages/hugepages-2048kB/nr_hugepages").write_text(HUGE),
        r'{base}/node1/hugepages/hugepages-2048kB/nr_hugepages: "9+\.\.\." is out of range',
    ),
    (
        "sysfs-hugepages-exceed-memory",
        lambda base: (base / "node1/hugepages/hugepages-2048kB/nr_hugepages").write_text(
            "99999999"
        ),
        r'{base}/node1: hugepage pools total "199999998Mi", more than the node\'s memory "8Gi" .*',
    ),
    (
        "sysfs-distance-short-row",
        lambda base: (base / "node1" / "distance").write_text("10\n"),
        r'{base}/node1/distance: expected 2 distances \(one per node\), got "10"',
    ),
    (
        "sysfs-distance-zero",
        lambda base: (base / "node1" / "distance").write_text("20 0\n"),
        r'{base}/node1/distance: distances must be positive, got "20 0"',
    ),
    (
        "sysfs-distance-missing",
        lambda base: (base / "node1" / "distance").unlink(),
        r"{base}/node1/distance: no such file",
    ),
    (
        "sysfs-node-id-too-large",
        lambda base: (base / "node1").rename(base / "node2000"),
        r"{base}/node2000: NUMA node id 2000 is above Linux's maximum 1023",
    ),
]


@pytest.mark.parametrize(
    ("damage", "pattern"), [pytest.param(d, p, id=i) for i, d, p in SYSFS_ROWS]
)
def test_sysfs(
    damage: Callable[[Path], object], pattern: str, tmp_path: Path, cli: Callable[..., Ran]
) -> None:
    base = fake_sysfs(tmp_path)
    assert cli("topology", "--sysfs-root", str(tmp_path)).code == 0  # intact, it loads
    damage(base)
    ran = cli("topology", "--sysfs-root", str(tmp_path))
    assert_refused(ran, "topology", pattern, base=base)


def test_sysfs_missing(tmp_path: Path, cli: Callable[..., Ran]) -> None:
    # row sysfs-missing
    ran = cli("topology", "--sysfs-root", str(tmp_path))
    base = tmp_path / "devices" / "system" / "node"
    assert_refused(
        ran, "topology", r"{base}: missing; cannot discover the NUMA topology", base=base
    )


# -- command-line flags and environment of `run` --------------------------------------

FLAG_ROWS = [
    (
        "flag-metrics-address-no-port",
        ["--metrics-address", "localhost"],
        r"--metrics-address 'localhost': expected HOST:PORT, PORT 1-65535",
    ),
    (
        "flag-metrics-address-bad-port",
        ["--metrics-address", "localhost:abc"],
        r"--metrics-address 'localhost:abc': expected HOST:PORT, PORT 1-65535",
    ),
    (
        "flag-metrics-address-port-range",
        ["--metrics-address", "localhost:99999"],
        r"--metrics-address 'localhost:99999': expected HOST:PORT, PORT 1-65535",
    ),
    (
        "flag-plugin-index",
        ["--plugin-index", "9"],
        r"NRI plugin index '9' must be exactly two digits 00-99",
    ),
    (
        "flag-plugin-name",
        ["--plugin-name", "bad/name"],
        r"NRI plugin name 'bad/name' must be non-empty and use only \[A-Za-z0-9_.\+-\]",
    ),
    (
        "flag-socket-too-long",
        ["--socket", "/tmp/" + "x" * 120],
        r"NRI socket path '/tmp/x+' is longer than 107 bytes",
    ),
    (
        "flag-log-level",
        ["--log-level", "loud"],
        r"error: argument --log-level: invalid choice: 'loud' .*",
    ),
    (
        "flag-state-dir-not-a-directory",
        ["--state-dir", "{config}/sub"],
        r"{config}/sub/memory_manager_state: cannot write checkpoint: Not a directory",
    ),
    (
        "flag-pod-resources-socket-scheme",
        ["--pod-resources-socket", "tcp://127.0.0.1:1"],
        r"--pod-resources-socket 'tcp://127.0.0.1:1': only unix sockets are supported"
        r" \(a path or unix:///path\), not tcp",
    ),
    (
        "flag-serve-pod-resources-is-kubelets",
        ["--pod-resources-socket", "/tmp/k.sock", "--serve-pod-resources", "unix:///tmp/k.sock"],
        r"--serve-pod-resources unix:///tmp/k.sock: is the --pod-resources-socket socket",
    ),
    (
        "flag-serve-pod-resources-not-a-socket",
        ["--serve-pod-resources", "{config}"],
        r"--serve-pod-resources {config}: exists and is not a socket",
    ),
]


@pytest.mark.parametrize(("extra", "pattern"), [pytest.param(e, p, id=i) for i, e, p in FLAG_ROWS])
def test_run_flags(
    extra: list[str], pattern: str, tmp_path: Path, machine: Path, cli: Callable[..., Ran]
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(GOOD_CONFIG)
    argv = [
        "run",
        "--config",
        str(config),
        "--topology-file",
        str(machine),
        "--state-dir",
        str(tmp_path / "state"),
        "--socket",
        str(tmp_path / "no.sock"),
        *(arg.replace("{config}", str(config)) for arg in extra),
    ]
    ran = cli(*argv)
    if pattern.startswith("error: "):  # a usage error: the usage line, then argparse's line
        usage, error = ran.err.splitlines()
        assert ran.code == 2 and usage.startswith("usage: nri-memory-manager run [-h] ")
        assert re.fullmatch(f"nri-memory-manager run: {pattern}", error), error
        return
    assert_refused(ran, "run", pattern, config=config)


def test_run_with_a_garbage_prelaunch_socket_fd(
    tmp_path: Path, machine: Path, cli: Callable[..., Ran], monkeypatch: pytest.MonkeyPatch
) -> None:
    # row env-nri-plugin-socket
    config = tmp_path / "config.yaml"
    config.write_text(GOOD_CONFIG)
    monkeypatch.setenv("NRI_PLUGIN_SOCKET", "three")
    ran = cli(
        "run",
        "--config",
        str(config),
        "--topology-file",
        str(machine),
        "--state-dir",
        str(tmp_path / "state"),
    )
    assert_refused(ran, "run", r"NRI_PLUGIN_SOCKET='three' is not a file descriptor number")


# -- kubelet's pod-resources API (--pod-resources-socket) ------------------------------

PODRES_GPU_POD = {
    "name": "pod-uid-1",
    "namespace": "default",
    "containers": [{"name": "app", "devices": {"example.com/gpu": ["gpu1"]}}],
}


def _podres_node(**behaviour: Any) -> dict[str, Any]:
    devices = {"example.com/gpu": [{"id": "gpu0", "numa": [0]}, {"id": "gpu1", "numa": [1]}]}
    return {"node": {"devices": devices}, "pods": [PODRES_GPU_POD], "behaviour": behaviour}


def _podres_absent(path: Path) -> contextlib.AbstractAsyncContextManager[Any]:
    return contextlib.nullcontext()  # type: ignore[return-value]


def _podres_dead(path: Path) -> contextlib.AbstractAsyncContextManager[Any]:
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))  # kubelet died without removing its socket
    stale.close()
    return contextlib.nullcontext()  # type: ignore[return-value]


def _podres_standin(**behaviour: Any) -> Callable[[Path], Any]:
    return lambda path: running_standin(path, _podres_node(**behaviour))


@contextlib.asynccontextmanager
async def _podres_rate_limited(path: Path) -> AsyncIterator[Any]:
    async with running_standin(path, _podres_node()) as standin:
        standin.kubelet.qps, standin.kubelet.burst = 0.001, 1
        standin.kubelet.rate_limit = True
        # kubelet's other clients took its last token
        channel_client = PodResourcesClient(str(path), logger=ListLogger())
        await channel_client.start()
        await channel_client.refresh_inventory()
        await channel_client.close()
        yield standin


@contextlib.asynccontextmanager
async def _podres_other_pod(path: Path) -> AsyncIterator[Any]:
    async with running_standin(path, _podres_node()) as standin:
        real = standin.kubelet.pod
        standin.kubelet.pod = lambda p: real({**p, "name": "someone-else"})  # type: ignore[method-assign]
        yield standin


@contextlib.asynccontextmanager
async def _podres_unknown_pod(path: Path) -> AsyncIterator[Any]:
    async with running_standin(path, {**_podres_node(), "pods": []}) as standin:
        yield standin


PODRES_ROWS: list[tuple[str, Callable[[Path], Any], str]] = [
    ("podres-socket-absent", _podres_absent, "socket-absent"),
    ("podres-dead", _podres_dead, "unavailable"),
    ("podres-slow", _podres_standin(delay=2.0), "deadline"),
    ("podres-rate-limited", _podres_rate_limited, "rate-limited"),
    ("podres-unknown-pod", _podres_unknown_pod, "not-found"),
    ("podres-other-pod", _podres_other_pod, "mismatch"),
]


async def _podres_create(
    path: Path, policy: str = "restricted"
) -> tuple[MemoryPlugin, ListLogger, Any, list[str], float]:
    """A GPU container (on node 1 when kubelet answers) created with the API at ``path``:
    the plugin, its log, the adjustment or refusal, the failures counted, the time taken."""
    log, kinds = ListLogger(), []

    class Counted:
        def on_failure(self, kind: str) -> None:
            kinds.append(kind)

    client = PodResourcesClient(str(path), observer=Counted(), logger=log)
    await client.start()
    plugin = MemoryPlugin(MemoryManager(TOPOLOGY, CONFIG), logger=log)
    if policy != "restricted":
        config = parse_config({"topologyManagerPolicy": policy, "reservedMemory": ["0:memory=1Gi"]})
        plugin = MemoryPlugin(MemoryManager(TOPOLOGY, config), logger=log)
    plugin._kubelet = KubeletResources(client, plugin.tracker)
    p = pod("uid-1")
    plugin.run_pod_sandbox(p)
    loop = asyncio.get_running_loop()
    start = loop.time()
    result: Any = plugin.create_container(p, container(p, "app", "c1", GI, cpus="0-7"))
    try:
        if asyncio.iscoroutine(result) or isinstance(result, asyncio.Future):
            result = await result
    except AdmissionRefused as exc:
        result = exc
    took = loop.time() - start
    await client.close()
    return plugin, log, result, kinds, took


@pytest.mark.parametrize(
    ("kubelet", "kind"), [pytest.param(k, kind, id=i) for i, k, kind in PODRES_ROWS]
)
def test_pod_resources_without_an_answer(
    kubelet: Callable[[Path], Any], kind: str, tmp_path: Path
) -> None:
    async def scenario() -> None:
        path = Path(tempfile.mkdtemp(prefix="br-", dir="/tmp")) / "k.sock"
        try:
            async with kubelet(path):
                _, log, result, kinds, took = await _podres_create(path)
        finally:
            shutil.rmtree(path.parent, ignore_errors=True)
        # as without the API: node 0, the first that fits; the GPU on node 1 unknown
        assert isinstance(result, api.ContainerAdjustment)
        assert result.linux.resources.cpu.mems == "0"
        # (kubelet rate-limiting refuses the inventory asked at connection too)
        assert set(kinds) == {kind} and kinds.count(kind) in (1, 2)
        assert took <= 0.1 + 0.25  # the client's deadline, and the decision
        if kind == "socket-absent":
            log.find("pod-resources socket absent: no device hints, init containers inferred")
        else:
            assert log.find("pod-resources: no answer for pod", "warning")["kind"] == kind

    asyncio.run(scenario())


def test_pod_resources_device_without_topology() -> None:
    # row podres-device-without-topology
    async def scenario() -> None:
        path = Path(tempfile.mkdtemp(prefix="br-", dir="/tmp")) / "k.sock"
        node = _podres_node()
        node["node"]["devices"]["example.com/gpu"] = [{"id": "gpu0"}, {"id": "gpu1"}]
        try:
            async with running_standin(path, node):
                _, log, result, kinds, _ = await _podres_create(path)
        finally:
            shutil.rmtree(path.parent, ignore_errors=True)
        assert result.linux.resources.cpu.mems == "0" and kinds == []
        assert log.find("admission")["hints"]["devices"] == {"example.com/gpu": None}

    asyncio.run(scenario())


def test_pod_resources_device_on_a_node_the_machine_lacks() -> None:
    # row podres-device-unknown-node
    async def scenario() -> None:
        path = Path(tempfile.mkdtemp(prefix="br-", dir="/tmp")) / "k.sock"
        node = _podres_node()
        node["node"]["devices"]["example.com/gpu"] = [{"id": "gpu1", "numa": [7]}]
        try:
            async with running_standin(path, node):
                _, _, refused, kinds, _ = await _podres_create(path)
                _, _, best_effort, _, _ = await _podres_create(path, "best-effort")
        finally:
            shutil.rmtree(path.parent, ignore_errors=True)
        assert isinstance(refused, AdmissionRefused) and kinds == []
        assert "device hints example.com/gpu none fits" in str(refused)
        assert best_effort.linux.resources.cpu.mems == "0"

    asyncio.run(scenario())


# -- the state file (<state-dir>/memory_manager_state) ---------------------------------


def guaranteed(name: str, memory: int, cpus: frozenset[int] | None = None) -> PodSpec:
    amounts = {"memory": Fraction(memory), "cpu": Fraction(1)}
    spec = ContainerSpec(name, dict(amounts), dict(amounts), cpuset=cpus)
    return PodSpec("uid-1", "p", "ns", (), (spec,), "Guaranteed")


def valid_state() -> MemoryState:
    manager = MemoryManager(TOPOLOGY, CONFIG)
    assert manager.admit(guaranteed("app", GI)).admitted
    return manager.state


def sparse_file(path: Path, size: int) -> None:
    with path.open("wb") as f:
        f.truncate(size)


def reseal(state: MemoryState) -> str:
    return dumps(state)


def kubelet_file(
    name: str, edit: Callable[[dict[str, Any]], object] | None = None
) -> Callable[[Path], object]:
    """A state file of tests/data/kubelet (a kubelet version's form), edited."""

    def damage(path: Path) -> None:
        data = json.loads((KUBELET_DATA / name).read_text())
        if edit is not None:
            edit(data)
        path.write_text(json.dumps(data))

    return damage


def _grow_pod_entry(data: dict[str, Any]) -> None:
    for entry in data["podEntries"].values():
        entry["memoryBlocks"][0]["size"] += GI


def _replace_v1_fields(data: dict[str, Any]) -> None:
    """v1 fields with one pod fewer than data, under their own right checksum."""
    state = read_checkpoint(data).state
    del state.entries[min(state.entries)]
    other = json.loads(dumps(state))
    data.update(entries=other["entries"], checksum=other["checksum"])


STATE_ROWS: list[tuple[str, Callable[[Path], object], str, str]] = [
    ("state-empty", lambda p: p.write_text(""), OUTCOME_UNTRUSTED, r".*: checkpoint is empty"),
    (
        "state-truncated",
        lambda p: p.write_text(reseal(valid_state())[:-40]),
        OUTCOME_UNTRUSTED,
        r".*: not valid JSON: Unterminated string starting at line 1, column \d+ \(cut short\?\)",
    ),
    (
        "state-checksum-mismatch",
        lambda p: p.write_text(reseal(valid_state()).replace('"free":', '"free":1', 1)),
        OUTCOME_UNTRUSTED,
        r".*: checksum: checkpoint is corrupted: stored checksum \d+ does not match the content"
        r" \(computed \d+ as kubelet's v1 form, \d+ as kubelet 1.36's v2 form\)",
    ),
    (
        "state-kubelet-v2-checksum",
        kubelet_file("memory_manager_state.v2-pod-entries", lambda d: _grow_pod_entry(d)),
        OUTCOME_UNTRUSTED,
        r".*: checksum: checkpoint is corrupted: stored checksum \d+ does not match the content"
        r" of kubelet 1.36's v2 form \(computed \d+\)",
    ),
    (
        "state-kubelet-v3-data-checksum",
        kubelet_file("memory_manager_state.v3", lambda d: d.update(data=d["data"] + " ")),
        OUTCOME_UNTRUSTED,
        r".*: dataChecksum: checkpoint is corrupted: stored checksum \d+ does not match data"
        r" of kubelet 1.37's v3 form \(computed \d+\)",
    ),
    (
        "state-kubelet-v3-v1-checksum",
        kubelet_file("memory_manager_state.v3", lambda d: d.update(checksum=d["checksum"] + 1)),
        OUTCOME_UNTRUSTED,
        r".*: checksum: checkpoint is corrupted: stored checksum \d+ does not match the v1"
        r" fields of kubelet 1.37's v3 form \(computed \d+\)",
    ),
    (
        "state-kubelet-v3-disagree",
        kubelet_file("memory_manager_state.v3", lambda d: _replace_v1_fields(d)),
        OUTCOME_UNTRUSTED,
        r".*: entries: differs from data.entries: kubelet 1.37's v3 form keeps one state twice, .*",
    ),
    (
        "state-kubelet-v3-incomplete",
        kubelet_file("memory_manager_state.v3", lambda d: d.pop("dataChecksum")),
        OUTCOME_UNTRUSTED,
        r".*: dataChecksum: is missing \(kubelet 1.37's v3 form has both data and dataChecksum\)",
    ),
    (
        "state-kubelet-v3-and-v2",
        kubelet_file("memory_manager_state.v3", lambda d: d.update(podEntries={})),
        OUTCOME_UNTRUSTED,
        r".*: podEntries: beside data: kubelet 1.36's field in kubelet 1.37's v3 form, .*",
    ),
    (
        "state-kubelet-pod-level",
        kubelet_file("memory_manager_state.v3-pod-entries-shared"),
        OUTCOME_UNTRUSTED,
        r'.*: data.podEntries: pod "[0-9a-f-]+" holds pod-level memory \(kubelet\'s'
        r" PodLevelResourceManagers, pod scope; read as kubelet 1.37's v3 form\) whose"
        r" containers' entries share the pod's blocks instead of being parts of them; .*",
    ),
    (
        "state-foreign-policy-name",
        lambda p: p.write_text(reseal(MemoryState(policy_name="dynamic"))),
        OUTCOME_UNTRUSTED,
        r""".*: policyName: "dynamic" is not 'Static' or 'None' .*""",
    ),
    (
        "state-other-policy",
        lambda p: p.write_text(reseal(MemoryState(policy_name="None"))),
        OUTCOME_POLICY_CHANGED,
        r"memory manager policy changed from None to Static",
    ),
    (
        "state-symlink",
        lambda p: p.symlink_to(p.with_name("elsewhere")),
        OUTCOME_UNTRUSTED,
        r".*: checkpoint is a symlink; refusing to follow it",
    ),
    (
        "state-directory",
        lambda p: p.mkdir(),
        OUTCOME_UNTRUSTED,
        r".*: checkpoint is not a regular file",
    ),
    (
        "state-fifo",
        lambda p: os.mkfifo(p),
        OUTCOME_UNTRUSTED,
        r".*: checkpoint is not a regular file",
    ),
    (
        "state-too-large",
        lambda p: sparse_file(p, MAX_FILE_BYTES + 1),
        OUTCOME_UNTRUSTED,
        rf".*: larger than {MAX_FILE_BYTES} bytes \(the limit for checkpoint files\)",
    ),
    (
        "state-not-utf8",
        lambda p: p.write_bytes(b'{"policyName": "\xff"}'),
        OUTCOME_UNTRUSTED,
        r".*: not UTF-8 text \(byte 16\)",
    ),
    (
        "state-duplicate-key",
        lambda p: p.write_text('{"policyName": "Static", "policyName": "None"}'),
        OUTCOME_UNTRUSTED,
        r'.*: duplicate key "policyName"',
    ),
    (
        "state-nan",
        lambda p: p.write_text('{"checksum": NaN}'),
        OUTCOME_UNTRUSTED,
        r".*: NaN is not a JSON number",
    ),
    (
        "state-negative-number",
        lambda p: p.write_text(reseal(valid_state()).replace('"free":', '"free":-', 1)),
        OUTCOME_UNTRUSTED,
        r".*: machineState.0.memoryMap.*free: must be a non-negative integer, got -\d+",
    ),
    (
        "state-huge-node-key",
        lambda p: p.write_text(
            '{"policyName": "Static", "machineState": {"' + HUGE + '": {}}, "checksum": 1}'
        ),
        OUTCOME_UNTRUSTED,
        r'.*: machineState: key "9+\.\.\." must be a NUMA node id \(a non-negative decimal\)',
    ),
    (
        "state-deep-nesting",
        lambda p: p.write_text("[" * 100_000),
        OUTCOME_UNTRUSTED,
        r".*: nested deeper than 64 levels",
    ),
    (
        "state-inconsistent",
        lambda p: p.write_text(reseal(_inconsistent())),
        OUTCOME_UNTRUSTED,
        r"checkpoint inconsistent with its own machine state: .*",
    ),
]


def _inconsistent() -> MemoryState:
    state = valid_state()
    state.machine[1].memory_map["memory"].free -= MI  # 1Mi in use by nobody
    state.machine[1].memory_map["memory"].reserved += MI
    return state


@pytest.mark.parametrize(
    ("damage", "outcome", "reason"), [pytest.param(d, o, r, id=i) for i, d, o, r in STATE_ROWS]
)
def test_state_file_is_never_trusted_when_bad(
    damage: Callable[[Path], object], outcome: str, reason: str, tmp_path: Path
) -> None:
    path = tmp_path / "memory_manager_state"
    damage(path)
    log = ListLogger()
    recovery = recover(TOPOLOGY, CONFIG, path, log)
    report = recovery.report
    assert report.outcome == outcome
    assert report.reason is not None and re.fullmatch(reason, report.reason), report.reason
    assert "\n" not in report.reason
    # Start from the machine's default state; Synchronize rebuilds the allocations.
    assert recovery.manager.state.entries == {}
    # The bad file is kept beside, never deleted and never followed.
    assert report.set_aside_as is not None and os.path.lexists(report.set_aside_as)
    assert not os.path.lexists(path)
    assert not (tmp_path / "elsewhere").exists()
    if outcome == OUTCOME_UNTRUSTED:
        assert (
            log.find("checkpoint not trusted; rebuilding the state from the runtime")["reason"]
            == report.reason
        )


def test_state_file_absent(tmp_path: Path) -> None:
    # row state-absent
    recovery = recover(TOPOLOGY, CONFIG, tmp_path / "memory_manager_state", ListLogger())
    assert recovery.report.outcome == OUTCOME_NONE
    assert recovery.manager.state.entries == {}


def test_state_file_naming_a_node_the_machine_lost_refuses_the_start(tmp_path: Path) -> None:
    # row state-node-gone: the blocks are real memory in use; no guess is safe
    path = tmp_path / "memory_manager_state"
    big = topology_from_mapping(
        {
            "nodes": [
                {"id": 0, "cpus": "0-3", "memory": "8Gi"},
                {"id": 1, "cpus": "4-7", "memory": "8Gi"},
                {"id": 2, "cpus": "8-11", "memory": "8Gi"},
            ]
        }
    )
    manager = MemoryManager(big, CONFIG)
    assert manager.admit(guaranteed("app", GI, frozenset({8}))).admitted
    assert manager.state.blocks("uid-1", "app")[0].numa_affinity == (2,)  # type: ignore[index]
    write_file(path, manager.state)
    small = topology_from_mapping(
        {
            "nodes": [
                {"id": 0, "cpus": "0-3", "memory": "8Gi"},
                {"id": 1, "cpus": "4-7", "memory": "8Gi"},
            ]
        }
    )
    with pytest.raises(
        StateError,
        match=r"^pod uid-1 container app holds 1Gi.* of memory on NUMA node 2, which this"
        r" machine no longer has; .*",
    ):
        recover(small, CONFIG, path, ListLogger())
    assert path.exists()  # left as it is


def _drifted(memory: tuple[str, str]) -> Any:
    return topology_from_mapping(
        {
            "nodes": [
                {"id": i, "cpus": f"{4 * i}-{4 * i + 3}", "memory": m, "hugepages": {"2Mi": "1Gi"}}
                for i, m in enumerate(memory)
            ]
        }
    )


def test_state_drift_beyond_tolerance_refuses_the_start(tmp_path: Path) -> None:
    # row state-drift-beyond-tolerance
    path = tmp_path / "memory_manager_state"
    write_file(path, valid_state())
    content = path.read_bytes()
    with pytest.raises(StateError) as err:
        recover(_drifted(("8Gi", "7Gi")), CONFIG, path, ListLogger())
    assert str(err.value) == (
        "NUMA node 1 memory total was 8Gi (8589934592 bytes), is now 7Gi (7516192768 bytes), a"
        " drift of 1Gi (1073741824 bytes), more than the memory-drift-tolerance of 64Mi"
        " (67108864 bytes); drain the node, or raise memory-drift-tolerance, or set"
        " memoryDriftBeyondTolerance: accept-if-fits to start while the running allocations"
        " still fit, then restart"
    )
    assert path.read_bytes() == content
    accepting = dataclasses.replace(CONFIG, memory_drift_beyond_tolerance="accept-if-fits")
    assert recover(_drifted(("8Gi", "7Gi")), accepting, path, ListLogger()).report.outcome == (
        OUTCOME_REBASED
    )


def test_state_drift_shrinking_under_blocks_refuses_the_start(tmp_path: Path) -> None:
    # row state-drift-shrink-under-blocks: node 1 holds all its 7Gi; 16Mi less no longer fit.
    # Decided at the first Synchronize: here the runtime still lists the container.
    path = tmp_path / "memory_manager_state"
    manager = MemoryManager(TOPOLOGY, CONFIG)
    assert manager.admit(guaranteed("app", 7 * GI, frozenset({4}))).admitted
    write_file(path, manager.state)
    content = path.read_bytes()
    log = ListLogger()
    recovery = recover(_drifted(("8Gi", "8176Mi")), CONFIG, path, log)
    gate = ConservationGate(recovery.pending, path, log)
    assert gate.holding
    with pytest.raises(StateError) as err:
        gate.check(recovery.manager.state, released=[])
    message = str(err.value)
    assert (
        ", within the memory-drift-tolerance of 64Mi (67108864 bytes), and the running" in message
    )
    assert message.endswith("short by 16Mi (16777216 bytes); drain the node, then restart")
    assert ("error", "refusing to start", {"path": str(path), "reason": message}) in log.records
    assert path.read_bytes() == content


def test_iomem_without_addresses_keeps_the_exact_comparison(tmp_path: Path) -> None:
    # row iomem-zeroed
    iomem = tmp_path / "iomem"
    iomem.write_text("00000000-00000000 : System RAM\n  00000000-00000000 : Kernel code\n")
    log = ListLogger()
    auto = parse_config({"memoryManagerPolicyOptions": {"memory-drift-tolerance": "auto"}})
    assert resolve_drift_tolerance(auto, log, str(iomem)).memory_drift_tolerance == 0
    [(level, event, fields)] = log.records
    assert level == "warning" and event.startswith(
        "memory-drift-tolerance auto: the kernel image size is unknown;"
    )
    assert fields["reason"] == "the addresses read as zero (no CAP_SYS_ADMIN)"
    empty = tmp_path / "empty"
    empty.write_text("")
    assert resolve_drift_tolerance(auto, log, str(empty)).memory_drift_tolerance == 0
    assert resolve_drift_tolerance(auto, log, str(tmp_path / "absent")).memory_drift_tolerance == 0
    assert [f["reason"] for _, _, f in log.records[1:]] == [
        "no Kernel code, data or bss lines",
        f"cannot read {tmp_path / 'absent'}: No such file or directory",
    ]


def test_state_command_on_a_bad_file(tmp_path: Path, cli: Callable[..., Ran]) -> None:
    # row state-cli
    path = tmp_path / "memory_manager_state"
    path.write_text(reseal(valid_state())[:-40])
    ran = cli("state", "--state-file", str(path))
    assert_refused(ran, "state", r"{file}: not valid JSON: .* \(cut short\?\)", file=path)


# -- NRI messages on the socket --------------------------------------------------------


@contextlib.asynccontextmanager
async def plugin_on_socket(
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[tuple[MemoryPlugin, FakeRuntime, asyncio.Task[None], ListLogger]]:
    """The real stub and plugin, pre-launched on a socketpair, registered and synchronized."""
    ours, theirs = socket.socketpair()
    monkeypatch.setenv("NRI_PLUGIN_SOCKET", str(theirs.detach()))
    log = ListLogger()
    plugin = MemoryPlugin(MemoryManager(TOPOLOGY, CONFIG), logger=log)
    stub = Stub(plugin, logger=log)
    task = asyncio.get_running_loop().create_task(stub.run())
    reader, writer = await asyncio.open_unix_connection(sock=ours)
    runtime = FakeRuntime(reader, writer)
    try:
        await runtime.handshake()
        yield plugin, runtime, task, log
    finally:
        stub.stop()
        await asyncio.wait_for(task, 2)
        writer.close()


def on_socket(monkeypatch: pytest.MonkeyPatch, scenario: Callable[..., Any]) -> None:
    async def main() -> None:
        async with asyncio.timeout(5), plugin_on_socket(monkeypatch) as (plugin, rt, task, log):
            await scenario(plugin, rt, task, log)

    asyncio.run(main())


async def raw_call(runtime: FakeRuntime, stream_id: int, message: bytes) -> ttrpc.ResponseReceived:
    """Send a hand-made ttrpc message on conn 1 and wait for the answer on ``stream_id``."""
    future: asyncio.Future[ttrpc.ResponseReceived] = asyncio.get_running_loop().create_future()
    runtime.pending[stream_id] = future
    runtime.send(mux.PLUGIN_SERVICE_CONN, message)
    return await future


async def still_serving(runtime: FakeRuntime) -> None:
    reply = await runtime.call("Shutdown", api.Empty())
    assert reply.ok


def guaranteed_request(memory: int = GI, name: str = "app") -> api.CreateContainerRequest:
    p = pod("uid-1")
    return api.CreateContainerRequest(pod=p, container=container(p, name, f"c-{name}", memory))


async def frame_too_long(plugin: MemoryPlugin, rt: FakeRuntime, task: Any, log: ListLogger) -> None:
    rt.send_raw(struct.pack(">II", 1, mux.MAX_FRAME_PAYLOAD + 1))
    await asyncio.wait_for(rt.eof.wait(), 2)  # the plugin closes the socket
    reason = log.find("nri disconnected")["reason"]
    assert reason == (
        f"protocol error: mux frame length {mux.MAX_FRAME_PAYLOAD + 1} on conn 1 exceeds the"
        f" limit of {mux.MAX_FRAME_PAYLOAD} bytes"
    )
    assert log.find("runtime connection lost", "warning") == {}
    assert not plugin.synchronized


async def message_too_long(
    plugin: MemoryPlugin, rt: FakeRuntime, task: Any, log: ListLogger
) -> None:
    rt.send(1, ttrpc.HEADER.pack(ttrpc.MAX_MESSAGE_LENGTH + 1, 9, 1, 0))
    await asyncio.wait_for(rt.eof.wait(), 2)
    reason = log.find("nri disconnected")["reason"]
    assert reason.startswith("protocol error: ttrpc message length 4194305 on stream 9 exceeds")
    assert not plugin.synchronized


async def unknown_conn(plugin: MemoryPlugin, rt: FakeRuntime, task: Any, log: ListLogger) -> None:
    rt.send(7, ttrpc.encode_request(99, PLUGIN_SERVICE, "Shutdown"))
    await still_serving(rt)


async def even_stream(plugin: MemoryPlugin, rt: FakeRuntime, task: Any, log: ListLogger) -> None:
    reply = await raw_call(rt, 100, ttrpc.encode_request(100, PLUGIN_SERVICE, "Shutdown"))
    assert (reply.status_code, reply.status_message) == (
        ttrpc.Code.INVALID_ARGUMENT,
        "ttrpc request on stream 100: stream ID must be odd for client-initiated streams",
    )
    await still_serving(rt)


async def reused_stream(plugin: MemoryPlugin, rt: FakeRuntime, task: Any, log: ListLogger) -> None:
    reply = await raw_call(rt, 1, ttrpc.encode_request(1, PLUGIN_SERVICE, "Shutdown"))
    assert reply.status_code == ttrpc.Code.INVALID_ARGUMENT
    assert "stream ID cannot be re-used and must increment" in reply.status_message
    await still_serving(rt)


async def stream_zero(plugin: MemoryPlugin, rt: FakeRuntime, task: Any, log: ListLogger) -> None:
    rt.send(1, ttrpc.HEADER.pack(0, 0, ttrpc.MessageType.REQUEST, 0))
    await still_serving(rt)  # no answer for stream 0, and the connection goes on
    assert "ttrpc request on stream 0" in log.find("nri bad ttrpc message")["reason"]


async def bad_envelope(plugin: MemoryPlugin, rt: FakeRuntime, task: Any, log: ListLogger) -> None:
    reply = await rt.call_envelope(b"\x0a\x64\x41")
    assert reply.status_code == ttrpc.Code.INVALID_ARGUMENT
    assert "malformed Request envelope" in reply.status_message
    await still_serving(rt)


async def unknown_service(
    plugin: MemoryPlugin, rt: FakeRuntime, task: Any, log: ListLogger
) -> None:
    reply = await rt.call("Configure", b"", service="nri.pkg.api.v1alpha1.Other")
    assert (reply.status_code, reply.status_message) == (12, "service nri.pkg.api.v1alpha1.Other")
    reply = await rt.call("ValidateContainerAdjustment", b"")
    assert (reply.status_code, reply.status_message) == (12, "method ValidateContainerAdjustment")


async def bad_payload(plugin: MemoryPlugin, rt: FakeRuntime, task: Any, log: ListLogger) -> None:
    reply = await rt.call("CreateContainer", b"\x0a\x64\x41")
    assert reply.status_code == ttrpc.Code.INTERNAL
    assert reply.status_message.startswith("cannot decode CreateContainer request: ")
    assert plugin.manager.state.entries == {}
    await still_serving(rt)


async def unknown_type(plugin: MemoryPlugin, rt: FakeRuntime, task: Any, log: ListLogger) -> None:
    rt.send(1, ttrpc.encode_message(41, 0x7F, b"\x00\x01"))
    rt.send(1, ttrpc.encode_message(43, ttrpc.MessageType.DATA, b""))
    await still_serving(rt)


async def stray_response(plugin: MemoryPlugin, rt: FakeRuntime, task: Any, log: ListLogger) -> None:
    rt.send(mux.RUNTIME_SERVICE_CONN, ttrpc.encode_response(77, b"\xff\xff"))
    rt.send(mux.RUNTIME_SERVICE_CONN, ttrpc.encode_message(79, ttrpc.MessageType.RESPONSE, b"\xff"))
    await still_serving(rt)


async def unknown_event(plugin: MemoryPlugin, rt: FakeRuntime, task: Any, log: ListLogger) -> None:
    event = api.StateChangeEvent(event=99, pod=pod("uid-1"))  # type: ignore[arg-type]
    reply = await rt.call("StateChange", event)
    assert reply.ok
    assert plugin.manager.state.entries == {}


async def unknown_fields(plugin: MemoryPlugin, rt: FakeRuntime, task: Any, log: ListLogger) -> None:
    # field 99 (varint) and field 100 (bytes) are unknown to every NRI version
    payload = guaranteed_request().SerializeToString() + b"\x98\x06\x01\xa2\x06\x02hi"
    answer = api.CreateContainerResponse.FromString(
        (await rt.call("CreateContainer", payload)).payload
    )
    assert answer.adjust.linux.resources.cpu.mems == "0"


async def eof_midway(plugin: MemoryPlugin, rt: FakeRuntime, task: Any, log: ListLogger) -> None:
    rt.send_raw(struct.pack(">II", 1, 100) + b"\x00" * 10)  # a frame cut short
    await rt.close()
    await asyncio.wait_for(task, 2)  # run() returns: pre-launched plugins end with the runtime
    assert log.find("nri disconnected")["reason"] == "EOF from runtime"
    assert not plugin.synchronized


NRI_ROWS = [
    ("nri-frame-too-long", frame_too_long),
    ("nri-frame-unknown-conn", unknown_conn),
    ("nri-message-too-long", message_too_long),
    ("nri-stream-even", even_stream),
    ("nri-stream-reused", reused_stream),
    ("nri-stream-zero", stream_zero),
    ("nri-bad-envelope", bad_envelope),
    ("nri-unknown-service-or-method", unknown_service),
    ("nri-undecodable-payload", bad_payload),
    ("nri-unknown-message-type", unknown_type),
    ("nri-stray-response", stray_response),
    ("nri-unknown-event", unknown_event),
    ("nri-unknown-fields", unknown_fields),
    ("nri-eof", eof_midway),
]


@pytest.mark.parametrize("scenario", [pytest.param(f, id=i) for i, f in NRI_ROWS])
def test_nri_wire(scenario: Callable[..., Any], monkeypatch: pytest.MonkeyPatch) -> None:
    on_socket(monkeypatch, scenario)


# -- pod resources in CreateContainer (what kubelet asked for, as the runtime tells it) ----


def create(
    memory: int | None = GI,
    *,
    qos: str = "Guaranteed",
    hugepages: list[tuple[str, int]] | None = None,
    cpus: str = "",
    quota: int | None = None,
    period: int | None = None,
    parent: str | None = None,
    uid: str = "uid-1",
    name: str = "app",
) -> tuple[MemoryPlugin, ListLogger, api.ContainerAdjustment | AdmissionRefused | None]:
    """One CreateContainer on a fresh plugin: its answer (or refusal) and the logs."""
    log = ListLogger()
    plugin = MemoryPlugin(MemoryManager(TOPOLOGY, CONFIG), logger=log)
    p = pod(uid, qos)
    if parent is not None:
        p.linux.cgroup_parent = parent
    c = container(p, name, "c-1", memory, cpus=cpus)
    res = c.linux.resources
    if memory is not None and memory < 0:
        res.memory.limit.value = memory
    if hugepages is not None:
        del res.hugepage_limits[:]
        for size, limit in hugepages:
            res.hugepage_limits.add(page_size=size, limit=limit)
    if quota is not None:
        res.cpu.quota.value = quota
    if period is not None:
        res.cpu.period.value = period
    try:
        return plugin, log, plugin.create_container(p, c)
    except AdmissionRefused as refusal:
        return plugin, log, refusal


def mems(answer: object) -> str:
    assert isinstance(answer, api.ContainerAdjustment), answer
    return answer.linux.resources.cpu.mems


def assert_untouched_as_unreadable(plugin: MemoryPlugin, log: ListLogger, answer: object) -> str:
    assert answer is None
    assert plugin.manager.state.entries == {}
    error: str = log.find("container resources unreadable", "error")["error"]
    assert "\n" not in error
    return error


def assert_refused_container(answer: object, *parts: str) -> None:
    assert isinstance(answer, AdmissionRefused)
    text = str(answer)
    assert text.startswith(REFUSAL_PREFIX + " pod default/pod-uid-1 container app: ")
    assert "\n" not in text
    for part in parts:
        assert part in text, text


def test_memory_limit_absent_or_zero() -> None:
    # row pod-memory-zero: no memory limit is no memory request; in a Guaranteed pod only
    # pod-level resources allow it (kubelet gives such a container the pod's limit)
    for memory in (None, 0):
        plugin, log, answer = create(memory)
        assert answer is None and plugin.manager.state.entries == {}
        decision = log.find("admission")
        assert decision["reason"] == "pod-level resources"
        assert decision["pod_level"] == "container app of a Guaranteed pod has no memory limit"


def test_memory_limit_negative() -> None:
    # row pod-memory-negative
    error = assert_untouched_as_unreadable(*create(-5))
    assert error == "container 'app': memory limit -5 is out of range"


def test_memory_limit_huge() -> None:
    # row pod-memory-huge: more than any node has; kubelet would refuse it too
    _, _, answer = create(2**63 - 1)
    assert_refused_container(answer, "request memory=8Ei", "free node 0: ")


def test_memory_limit_one_byte() -> None:
    # row pod-memory-tiny: as kubelet, one byte is a request like any other
    plugin, _, answer = create(1)
    assert mems(answer) == "0"
    assert plugin.manager.state.blocks("uid-1", "app")[0].size == 1  # type: ignore[index]


def test_hugepage_limit_zero_for_every_size() -> None:
    # row pod-hugepages-zero: containerd lists every host page size with limit 0
    plugin, _, answer = create(GI, hugepages=[("2MB", 0), ("1GB", 0), ("64KB", 0)])
    assert mems(answer) == "0"
    assert [b.type for b in plugin.manager.state.blocks("uid-1", "app") or []] == ["memory"]


def test_hugepage_limit_above_int64() -> None:
    # row pod-hugepages-huge
    error = assert_untouched_as_unreadable(*create(GI, hugepages=[("2MB", 2**64 - 1)]))
    assert error == "container 'app': hugepage limit 18446744073709551615 is out of range"


def test_hugepages_of_a_size_the_machine_lacks() -> None:
    # row pod-hugepages-unknown-size: refused, the message names the request
    _, _, answer = create(GI, hugepages=[("1GB", GI)])
    assert_refused_container(answer, "request hugepages-1Gi=1Gi, memory=1Gi")


@pytest.mark.parametrize(
    ("size", "error"),
    [
        pytest.param(
            "2M", "hugepage limit: page size '2M' is not like 2MB or 1GB", id="pod-page-size-syntax"
        ),
        pytest.param(
            "3MB",
            "hugepage limit: page size '3MB' is not a power of two between 4KB and 16GB",
            id="pod-page-size-impossible",
        ),
        pytest.param(
            "0KB",
            "hugepage limit: page size '0KB' is not a power of two between 4KB and 16GB",
            id="pod-page-size-zero",
        ),
        pytest.param(
            "9" * 40 + "PB",
            "hugepage limit: page size '" + "9" * 40 + "PB' is not like 2MB or 1GB",
            id="pod-page-size-huge",
        ),
    ],
)
def test_malformed_page_size(size: str, error: str) -> None:
    assert assert_untouched_as_unreadable(*create(GI, hugepages=[(size, 2 * MI)])) == error


def test_page_size_limited_twice() -> None:
    # row pod-page-size-twice
    error = assert_untouched_as_unreadable(
        *create(GI, hugepages=[("2MB", 2 * MI), ("2048KB", 4 * MI)])
    )
    assert error == "container 'app': hugepage size '2048KB' is limited twice"


def test_hugepage_limit_not_whole_pages() -> None:
    # row pod-hugepages-partial-page: counted in bytes, as requested
    plugin, _, answer = create(GI, hugepages=[("2MB", MI)])
    assert mems(answer) == "0"
    sizes = {b.type: b.size for b in plugin.manager.state.blocks("uid-1", "app") or []}
    assert sizes == {"memory": GI, "hugepages-2Mi": MI}


@pytest.mark.parametrize(
    ("quota", "period"),
    [
        pytest.param(-1, 100_000, id="pod-cpu-quota-negative"),
        pytest.param(100_000, 0, id="pod-cpu-period-zero"),
        pytest.param(2**63 - 1, 1, id="pod-cpu-quota-huge"),
    ],
)
def test_odd_cpu_quota_still_admits_by_memory(quota: int, period: int) -> None:
    _, _, answer = create(GI, quota=quota, period=period)
    assert mems(answer) == "0"


@pytest.mark.parametrize(
    ("cpus", "expected"),
    [
        pytest.param("x-y", "0", id="pod-cpuset-garbage"),
        pytest.param(HUGE, "0", id="pod-cpuset-huge"),
        pytest.param("0-7", "0", id="pod-cpuset-everything"),
        pytest.param("4-5", "1", id="pod-cpuset-pinned"),
    ],
)
def test_cpuset_cpus(cpus: str, expected: str) -> None:
    # garbage or every CPU: no CPU-side hint; pinned CPUs pull memory to their node
    _, _, answer = create(GI, cpus=cpus)
    assert mems(answer) == expected


@pytest.mark.parametrize(
    "parent",
    [
        pytest.param("/system.slice/docker.service", id="pod-cgroup-not-kubernetes"),
        pytest.param("kubepods\x00besteffort", id="pod-cgroup-garbage"),
        pytest.param("", id="pod-cgroup-empty"),
    ],
)
def test_cgroup_parent_outside_kubepods(parent: str) -> None:
    plugin, log, answer = create(GI, parent=parent)
    assert answer is None and plugin.manager.state.entries == {}
    assert log.find("admission")["reason"] == "not Guaranteed"


def test_cgroup_parent_is_only_read_never_opened(tmp_path: Path) -> None:
    # row pod-cgroup-traversal: the path is matched as text, never used as a path
    _, _, answer = create(GI, parent=f"/kubepods/../..{tmp_path}/podx")
    assert mems(answer) == "0"
    assert list(tmp_path.iterdir()) == []


def test_container_without_identity() -> None:
    # row pod-no-identity: left alone (blocks could not be keyed safely), logged
    plugin, log, answer = create(GI, uid="", name="")
    assert answer is None
    assert plugin.manager.state.entries == {}
    assert log.find("container without pod UID or name left alone", "warning")


def test_pod_level_limit_unusable_falls_back_to_container_scope() -> None:
    # row pod-level-limit-bad
    config = parse_config(
        {
            "topologyManagerPolicy": "restricted",
            "topologyManagerScope": "pod",
            "reservedMemory": ["0:memory=1Gi"],
        }
    )
    log = ListLogger()
    plugin = MemoryPlugin(MemoryManager(TOPOLOGY, config), logger=log)
    p = pod("uid-1", memory_limit=-1)
    answer = plugin.create_container(p, container(p, "app", "c-1", GI))
    assert mems(answer) == "0"
    assert log.find(
        "pod scope without the pod's memory limit; deciding in container scope", "warning"
    )


@pytest.mark.parametrize(
    "cpuset_mems",
    [
        pytest.param("7", id="sync-mems-unknown-node"),
        pytest.param("x", id="sync-mems-garbage"),
        pytest.param(HUGE, id="sync-mems-huge"),
    ],
)
def test_synchronize_with_unusable_cpuset_mems(cpuset_mems: str) -> None:
    # Not adopted as it is: admitted anew and pinned through the Synchronize reply.
    log = ListLogger()
    plugin = MemoryPlugin(MemoryManager(TOPOLOGY, CONFIG), logger=log)
    p = pod("uid-1")
    c = container(p, "app", "c-1", GI, mems=cpuset_mems, state=api.CONTAINER_RUNNING)
    updates = plugin.synchronize([p], [c])
    assert [(u.container_id, u.linux.resources.cpu.mems) for u in updates] == [("c-1", "0")]
    assert log.find("admission")["result"] == "pinned late"


# -- simulate scenarios (`nri-memory-manager simulate FILE`) ---------------------------

SCENARIO_HEAD = (
    TOPOLOGY_YAML.replace("nodes:", "topology:\n  nodes:").replace("\n  - ", "\n    - ")
    + "config: {reservedMemory: ['0:memory=1Gi']}\n"
)


def admit_step(requests: str, limits: str | None = None) -> str:
    limits = limits or requests
    return (
        "steps: [{admit: {pod: {uid: u1}, containers: [{name: c, resources:"
        f" {{requests: {{cpu: '1', {requests}}}, limits: {{cpu: '1', {limits}}}}}}}]}}}}]\n"
    )


def alias_bomb(levels: int = 9, fanout: int = 9) -> str:
    """A scenario whose steps[0].start is ``fanout ** levels`` strings, in ~400 bytes."""
    anchors = ["&a0 [" + ", ".join(["lol"] * fanout) + "]"]
    for i in range(1, levels):
        anchors.append(f"&a{i} [" + ", ".join([f"*a{i - 1}"] * fanout) + "]")
    return SCENARIO_HEAD + "steps: [{start: [" + ", ".join(anchors) + "]}]\n"


SIMULATE_ROWS = [
    (
        "simulate-alias-bomb",
        alias_bomb(),
        r"{file}: YAML aliases repeat more than 100000 values; write the values out",
    ),
    (
        "simulate-yaml-too-large",
        SCENARIO_HEAD + "steps: [" + "1," * (1 << 19) + "]\n",
        r"{file}: YAML of more than 1048576 characters; write a document this large as JSON",
    ),
    (
        "simulate-unknown-key",
        SCENARIO_HEAD + "step: []\n",
        r'{file}: scenario: unknown key "step" \(known: topology, config, initialState, steps\);'
        r' did you mean "steps"\?',
    ),
    ("simulate-not-yaml", "a: [\n", r"{file}: not valid YAML or JSON: .* at line 2, column 1"),
    (
        "simulate-not-mapping",
        "[1]\n",
        r"{file}: scenario: expected a mapping with keys .*, got a list of 1 item",
    ),
    ("simulate-no-topology", "steps: []\n", r'{file}: scenario: missing key "topology"'),
    (
        "simulate-steps-not-list",
        SCENARIO_HEAD + "steps: 3\n",
        r"{file}: steps: expected a list of steps, got the number 3",
    ),
    (
        "simulate-unknown-step",
        SCENARIO_HEAD + "steps: [{frobnicate: {}}]\n",
        r'{file}: steps\[0\]: unknown step "frobnicate" \(expected one of: admit, start, resize,'
        r" remove\)",
    ),
    (
        "simulate-negative-quantity",
        SCENARIO_HEAD + admit_step("memory: -1Gi"),
        r"{file}: steps\[0\].admit.containers\[0\].resources.requests.memory:"
        r' "-1Gi" must not be negative',
    ),
    (
        "simulate-fractional-bytes",
        SCENARIO_HEAD + admit_step("memory: 1.5"),
        r'{file}: steps\[0\].*requests.memory: "1.5" is not a whole number of bytes',
    ),
    (
        "simulate-huge-quantity",
        SCENARIO_HEAD + admit_step("memory: 99Ei"),
        r'{file}: steps\[0\].*requests.memory: "99Ei" cannot be represented as int64',
    ),
    (
        "simulate-bad-quantity",
        SCENARIO_HEAD + admit_step("memory: abc"),
        r'{file}: steps\[0\].*requests.memory: "abc" is not a valid quantity',
    ),
    (
        "simulate-bad-topology",
        "topology: {nodes: []}\n",
        r"{file}: topology.nodes: the list is empty; a machine has at least one NUMA node",
    ),
    (
        "simulate-bad-config",
        SCENARIO_HEAD.replace("0:memory=1Gi", "0:memory=0"),
        r"{file}: config.reservedMemory: invalid configuration: reserved memory may not be"
        r" zero .*",
    ),
    (
        "simulate-huge-integer",
        f"topology: {{nodes: [{{id: {HUGE}, cpus: '0', memory: 1Gi}}]}}\n",
        r"{file}: not valid YAML or JSON: a number of more than 4300 digits",
    ),
    (
        "simulate-deep-nesting",
        "{" + '"a":{' * 100_000,
        r"{file}: nested deeper than 64 levels",
    ),
    (
        "simulate-initial-state-pod-level",
        SCENARIO_HEAD
        + "initialState: "
        + (KUBELET_DATA / "memory_manager_state.v2-pod-entries-shared").read_text()
        + "\nsteps: []\n",
        r'{file}: initialState: podEntries: pod "[0-9a-f-]+" holds pod-level memory \(kubelet\'s'
        r" PodLevelResourceManagers, pod scope; read as kubelet 1.36's v2 form\) whose"
        r" containers' entries share the pod's blocks instead of being parts of them; remove"
        r" the pod from podEntries and entries to use the rest",
    ),
]


@pytest.mark.parametrize(
    ("text", "pattern"), [pytest.param(t, p, id=i) for i, t, p in SIMULATE_ROWS]
)
def test_simulate_scenario(
    text: str, pattern: str, tmp_path: Path, cli: Callable[..., Ran]
) -> None:
    path = tmp_path / "scenario.yaml"
    path.write_text(text)
    assert_refused(cli("simulate", str(path)), "simulate", pattern, file=path)


def test_simulate_scenario_missing(tmp_path: Path, cli: Callable[..., Ran]) -> None:
    # row simulate-missing-file
    path = tmp_path / "nope.yaml"
    ran = cli("simulate", str(path))
    assert_refused(ran, "simulate", r"{file}: no such file", file=path)


@pytest.mark.parametrize(
    ("step", "outcome"),
    [
        pytest.param(
            admit_step("memory: 100Gi"), "UnexpectedAdmissionError", id="simulate-too-big"
        ),
        pytest.param(
            admit_step("memory: 1Gi, hugepages-1Gi: 1Gi"),
            "UnexpectedAdmissionError",
            id="simulate-unknown-hugepage-size",
        ),
    ],
)
def test_simulate_reports_refusals_in_the_report(
    step: str, outcome: str, tmp_path: Path, cli: Callable[..., Ran]
) -> None:
    path = tmp_path / "scenario.yaml"
    path.write_text(SCENARIO_HEAD + step)
    ran = cli("simulate", "--compact", str(path))
    assert ran.code == 0
    first = json.loads(ran.out)["steps"][0]
    assert (first["admitted"], first["reason"]) == (False, outcome)

"""--kubelet-config: our config completed with, and checked against, the node's kubelet's."""

from __future__ import annotations

import argparse
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from nri_plugin.daemon import load_machine
from nri_plugin.engine.config import Config, ReservedMemory
from nri_plugin.errors import ConfigError
from nri_plugin.inputs.config import load_config_file, validate_for_machine
from nri_plugin.inputs.kubeletconfig import align_with_kubelet, read_kubelet_config
from nri_plugin.inputs.topology import topology_from_mapping
from nri_plugin.logs import configure_logging

MI = 1 << 20
GI = 1 << 30
HEADER = "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\n"

TWO_NODES = topology_from_mapping(
    {
        "nodes": [
            {"id": 0, "cpus": "0-3", "memory": "8Gi"},
            {"id": 1, "cpus": "4-7", "memory": "8Gi"},
        ]
    }
)


class RecordingLogger:
    """Stands in for a structlog logger; keeps (level, event, fields)."""

    def __init__(self) -> None:
        self.records: list[tuple[str, str, dict[str, Any]]] = []

    def info(self, event: str, **fields: Any) -> None:
        self.records.append(("info", event, fields))

    def warning(self, event: str, **fields: Any) -> None:
        self.records.append(("warning", event, fields))

    def at(self, level: str) -> list[tuple[str, dict[str, Any]]]:
        return [(e, f) for lvl, e, f in self.records if lvl == level]


@pytest.fixture
def log() -> RecordingLogger:
    return RecordingLogger()


def kubelet_file(tmp_path: Path, body: str, header: str = HEADER) -> str:
    path = tmp_path / "kubelet-config.yaml"
    path.write_text(header + body)
    return str(path)


def our_file(tmp_path: Path, body: str) -> tuple[Config, str]:
    path = tmp_path / "config.yaml"
    path.write_text(body)
    return load_config_file(path), str(path)


def align(config: Config, kubelet: str, log: RecordingLogger, source: str | None = None) -> Config:
    return align_with_kubelet(config, kubelet, log, config_source=source)


# -- taking kubelet's values -------------------------------------------------


def test_every_key_absent_from_our_config_is_taken_from_kubelet(
    tmp_path: Path, log: RecordingLogger
) -> None:
    kubelet = kubelet_file(
        tmp_path,
        """\
topologyManagerPolicy: restricted
topologyManagerScope: pod
topologyManagerPolicyOptions: {prefer-closest-numa-nodes: "true", max-allowable-numa-nodes: "10"}
reservedMemory:
  - {numaNode: 0, limits: {memory: 1Gi}}
  - {numaNode: 1, limits: {memory: 1124Mi}}
kubeReserved: {cpu: 500m, memory: 1Gi}
systemReserved: {memory: 1Gi}
evictionHard: {memory.available: 100Mi, nodefs.available: 10%}
""",
    )
    config, source = our_file(tmp_path, "policy: static\n")

    aligned = align(config, kubelet, log, source)

    assert aligned == Config(
        topology_manager_policy="restricted",
        topology_manager_scope="pod",
        prefer_closest_numa_nodes=True,
        max_allowable_numa_nodes=10,
        reserved_memory=(
            ReservedMemory(numa_node=0, type="memory", size=GI),
            ReservedMemory(numa_node=1, type="memory", size=1124 * MI),
        ),
        kube_reserved={"cpu": 500, "memory": GI},
        system_reserved={"memory": GI},
        eviction_hard={"memory.available": "100Mi", "nodefs.available": "10%"},
    )
    (_, fields), *_ = [r for r in log.at("info") if r[0] == "aligned with kubelet"]
    assert set(fields["taken_from_kubelet"]) == {
        "topologyManagerPolicy",
        "topologyManagerScope",
        "topologyManagerPolicyOptions",
        "reservedMemory",
        "kubeReserved",
        "systemReserved",
        "evictionHard",
    }


def test_kubelet_defaults_fill_what_neither_file_sets(tmp_path: Path, log: RecordingLogger) -> None:
    aligned = align(Config(), kubelet_file(tmp_path, ""), log)
    assert aligned.topology_manager_policy == "none"
    assert aligned.topology_manager_scope == "container"
    assert aligned.eviction_hard == {"memory.available": "100Mi"}
    # kubelet reserves nothing unless told: explicit empty reservations, so
    # that the Node Allocatable sum check always runs
    assert aligned.kube_reserved == {}
    assert aligned.system_reserved == {}


def test_values_set_in_our_config_are_kept_when_kubelet_leaves_them_out(
    tmp_path: Path, log: RecordingLogger
) -> None:
    config, source = our_file(
        tmp_path,
        "topologyManagerPolicy: single-numa-node\ntopologyManagerScope: pod\n"
        "reservedMemory: ['0:memory=100Mi']\n",
    )
    aligned = align(config, kubelet_file(tmp_path, "cpuManagerPolicy: none\n"), log, source)
    assert aligned.topology_manager_policy == "single-numa-node"
    assert aligned.topology_manager_scope == "pod"
    assert aligned.reserved_memory == (ReservedMemory(0, "memory", 100 * MI),)
    # informational only: kubelet's CPU manager pins nothing
    assert log.at("warning") == []
    assert any("policies differ" in event for event, _ in log.at("info"))


def test_differing_policies_warn_when_kubelet_pins_cpus(
    tmp_path: Path, log: RecordingLogger
) -> None:
    config, source = our_file(tmp_path, "topologyManagerPolicy: restricted\n")
    align(config, kubelet_file(tmp_path, "cpuManagerPolicy: static\n"), log, source)
    ((event, fields),) = log.at("warning")
    assert "policies differ" in event
    assert fields["kubelet_topology_manager_policy"] == "none"
    assert fields["topology_manager_policy"] == "restricted"


# -- conflicts ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("ours", "kubelets", "what", "our_value", "kubelet_value"),
    [
        (
            "topologyManagerPolicy: restricted\n",
            "topologyManagerPolicy: best-effort\n",
            "topologyManagerPolicy",
            '"restricted"',
            '"best-effort"',
        ),
        (
            "topologyManagerScope: container\n",
            "topologyManagerScope: pod\n",
            "topologyManagerScope",
            '"container"',
            '"pod"',
        ),
        (
            "topologyManagerPolicyOptions: {prefer-closest-numa-nodes: 'true'}\n",
            "topologyManagerPolicyOptions: {max-allowable-numa-nodes: '10'}\n",
            "topologyManagerPolicyOptions.prefer-closest-numa-nodes",
            '"true"',
            '"false"',
        ),
        (
            "reservedMemory: ['0:memory=1Gi']\n",
            "reservedMemory: [{numaNode: 0, limits: {memory: 2Gi}}]\n",
            "reservedMemory",
            '"0:memory=1Gi"',
            '"0:memory=2Gi"',
        ),
        (
            "kubeReserved: {memory: 2Gi}\n",
            "kubeReserved: {memory: 1Gi}\n",
            "kubeReserved.memory",
            '"2Gi"',
            '"1Gi"',
        ),
        (
            "systemReserved: {memory: 1Gi}\n",
            "kubeReserved: {memory: 1Gi}\n",
            "systemReserved.memory",
            '"1Gi"',
            '"0"',
        ),
        (
            "evictionHard: {memory.available: 200Mi}\n",
            "evictionHard: {memory.available: 100Mi}\n",
            "evictionHard.memory.available",
            '"200Mi"',
            '"100Mi"',
        ),
    ],
)
def test_a_value_both_files_set_differently_is_an_error_naming_both(
    tmp_path: Path,
    log: RecordingLogger,
    ours: str,
    kubelets: str,
    what: str,
    our_value: str,
    kubelet_value: str,
) -> None:
    config, source = our_file(tmp_path, ours)
    kubelet = kubelet_file(tmp_path, kubelets)
    with pytest.raises(ConfigError) as err:
        align(config, kubelet, log, source)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"{what}: {our_value} in {source} but {kubelet_value} in {kubelet}")


def test_eviction_threshold_differing_from_kubelets_default_is_an_error(
    tmp_path: Path, log: RecordingLogger
) -> None:
    # kubelet's effective threshold is its default, which the scheduler sees
    config, source = our_file(tmp_path, "evictionHard: {memory.available: 200Mi}\n")
    with pytest.raises(ConfigError, match="kubelet's default") as err:
        align(config, kubelet_file(tmp_path, ""), log, source)
    assert '"200Mi"' in str(err.value) and '"100Mi"' in str(err.value)


def test_our_reservation_without_kubelets_is_an_error(tmp_path: Path, log: RecordingLogger) -> None:
    config, source = our_file(tmp_path, "kubeReserved: {memory: 1Gi}\n")
    with pytest.raises(ConfigError, match="the file does not set kubeReserved"):
        align(config, kubelet_file(tmp_path, ""), log, source)


def test_equal_values_written_differently_agree(tmp_path: Path, log: RecordingLogger) -> None:
    config, source = our_file(
        tmp_path,
        """\
kubeReserved: {memory: 1Gi}
evictionHard: {memory.available: "104857600"}
reservedMemory: ['1:memory=1Gi', '0:memory=100Mi']
""",
    )
    kubelet = kubelet_file(
        tmp_path,
        """\
kubeReserved: {memory: 1024Mi, cpu: "1", ephemeral-storage: 1Gi}
evictionHard: {memory.available: 100Mi, nodefs.available: 10%}
reservedMemory:
  - {numaNode: 0, limits: {memory: 100Mi}}
  - {numaNode: 1, limits: {memory: 1Gi}}
""",
    )
    aligned = align(config, kubelet, log, source)
    # ours kept where set, kubelet's taken where not
    assert aligned.kube_reserved == {"memory": GI}
    assert aligned.system_reserved == {}
    # kubeReserved 1Gi + eviction 100Mi = reservedMemory 100Mi + 1Gi: the sum check passes
    validate_for_machine(aligned, TWO_NODES, source=source)


def test_a_topology_key_kubelet_leaves_at_its_default_never_conflicts(
    tmp_path: Path, log: RecordingLogger
) -> None:
    config, source = our_file(tmp_path, "topologyManagerPolicy: none\n")
    kubelet = kubelet_file(tmp_path, "topologyManagerScope: pod\n")
    aligned = align(config, kubelet, log, source)
    assert aligned.topology_manager_policy == "none"
    assert aligned.topology_manager_scope == "pod"


# -- memory manager and the file itself --------------------------------------


def test_kubelets_static_memory_manager_is_warned_about_loudly(
    tmp_path: Path, log: RecordingLogger
) -> None:
    align(Config(), kubelet_file(tmp_path, "memoryManagerPolicy: Static\n"), log)
    ((event, fields),) = log.at("warning")
    assert event.startswith("KUBELET'S MEMORY MANAGER IS ALSO STATIC")
    assert "cpuset.mems" in event
    assert fields["memory_manager_policy"] == "Static"


def test_kubelets_none_memory_manager_is_not_warned_about(
    tmp_path: Path, log: RecordingLogger
) -> None:
    align(Config(), kubelet_file(tmp_path, "memoryManagerPolicy: None\n"), log)
    assert log.at("warning") == []


@pytest.mark.parametrize(
    ("header", "body", "expected"),
    [
        (
            "",
            "failSwapOn: false\n",
            'apiVersion is nothing, expected "kubelet.config.k8s.io/v1beta1"',
        ),
        (
            "apiVersion: kubelet.config.k8s.io/v1\nkind: KubeletConfiguration\n",
            "",
            'apiVersion is "kubelet.config.k8s.io/v1", expected',
        ),
        (
            "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeProxyConfiguration\n",
            "",
            'kind is "KubeProxyConfiguration", expected "KubeletConfiguration"',
        ),
        (HEADER, "topologyManagerPolicy: strict\n", 'unknown policy: "strict"'),
        (HEADER, "kubeReserved: {memory: lots}\n", '"lots" is not a valid quantity'),
        (HEADER, "memoryManagerPolicy: 3\n", "memoryManagerPolicy: expected a string"),
        ("- a list\n", "", "expected a KubeletConfiguration mapping"),
    ],
)
def test_bad_kubelet_file_is_one_line_naming_it(
    tmp_path: Path, log: RecordingLogger, header: str, body: str, expected: str
) -> None:
    path = kubelet_file(tmp_path, body, header=header)
    with pytest.raises(ConfigError) as err:
        align(Config(), path, log)
    message = str(err.value)
    assert message.startswith(f"{path}: ")
    assert expected in message
    assert "\n" not in message


def test_missing_kubelet_file_names_it(tmp_path: Path, log: RecordingLogger) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        align(Config(), str(tmp_path / "nope.yaml"), log)


def test_kubelet_keys_we_do_not_share_are_ignored(tmp_path: Path) -> None:
    settings = read_kubelet_config(
        kubelet_file(
            tmp_path,
            "cgroupDriver: systemd\nfailSwapOn: false\ncpuManagerPolicy: static\n"
            "evictionHard: {nodefs.available: '0%'}\n",
        )
    )
    assert settings.cpu_manager_policy == "static"
    assert settings.memory_manager_policy == "None"
    assert settings.present == frozenset({"evictionHard"})
    # an explicit evictionHard replaces kubelet's defaults: no memory threshold
    assert settings.config.eviction_hard == {"nodefs.available": "0%"}


# -- without our file's name --------------------------------------------------


def test_without_a_source_values_differing_from_defaults_count_as_set(
    tmp_path: Path, log: RecordingLogger
) -> None:
    kubelet = kubelet_file(tmp_path, "topologyManagerPolicy: best-effort\n")
    with pytest.raises(ConfigError, match="in the plugin's config but"):
        align(Config(topology_manager_policy="restricted"), kubelet, log)
    assert align(Config(), kubelet, log).topology_manager_policy == "best-effort"


# -- through `run`'s loading --------------------------------------------------


@pytest.fixture
def run_log() -> Iterator[io.StringIO]:
    """run's structlog output, captured (and never a stream another test closed)."""
    stream = io.StringIO()
    configure_logging("info", stream)
    yield stream
    structlog.reset_defaults()


def run_args(tmp_path: Path, config: str | None, kubelet: str) -> argparse.Namespace:
    (tmp_path / "topology.yaml").write_text(
        "nodes:\n  - {id: 0, cpus: '0-3', memory: 8Gi}\n  - {id: 1, cpus: '4-7', memory: 8Gi}\n"
    )
    return argparse.Namespace(
        topology_file=str(tmp_path / "topology.yaml"),
        sysfs_root=None,
        config=config,
        kubelet_config=kubelet,
    )


def test_run_checks_reservations_against_kubelets_node_allocatable(
    tmp_path: Path, run_log: io.StringIO
) -> None:
    kubelet = kubelet_file(tmp_path, "systemReserved: {memory: 412Mi}\n")
    _, source = our_file(tmp_path, "reservedMemory: ['0:memory=512Mi']\n")
    _, config = load_machine(run_args(tmp_path, source, kubelet))
    assert config.system_reserved == {"memory": 412 * MI}
    assert config.eviction_hard == {"memory.available": "100Mi"}
    events = [json.loads(line) for line in run_log.getvalue().splitlines()]
    (aligned,) = [e for e in events if e["event"] == "aligned with kubelet"]
    assert aligned["kubelet_config"] == kubelet
    assert aligned["system_reserved_memory"] == "412Mi"
    assert aligned["eviction_hard_memory"] == "100Mi"

    # 412Mi + the 100Mi default eviction threshold = 512Mi; 400Mi is not
    (tmp_path / "config.yaml").write_text("reservedMemory: ['0:memory=400Mi']\n")
    with pytest.raises(ConfigError, match=r'"400Mi" of type "memory" is not equal to .*"512Mi"'):
        load_machine(run_args(tmp_path, source, kubelet))


def test_run_names_both_files_in_a_conflict(tmp_path: Path, run_log: io.StringIO) -> None:
    kubelet = kubelet_file(tmp_path, "topologyManagerPolicy: best-effort\n")
    _, source = our_file(
        tmp_path, "topologyManagerPolicy: restricted\nreservedMemory: ['0:memory=100Mi']\n"
    )
    with pytest.raises(ConfigError) as err:
        load_machine(run_args(tmp_path, source, kubelet))
    assert source in str(err.value) and kubelet in str(err.value)


# -- kubelet files of 1.30, 1.34 and 1.37 ------------------------------------------------------
#
# tests/data/kubelet/kubelet-config-*.yaml are written from KubeletConfiguration in
# kubernetes/kubelet config/v1beta1/types.go at tags kubernetes-1.30.0, kubernetes-1.34.0 and
# kubernetes-1.37.0-beta.0 (each file cites its tag); the 1.37 ones add options of KEPs in
# review (KEP-6007 numa-allocation-strategy, KEP-5726 restrict-to-cpu-numa-nodes, KEP-6232
# memoryManagerPolicyOptions).

KUBELET_DATA = Path(__file__).parent / "data" / "kubelet"
IGNORED_EVENT = "kubelet's config sets options the plugin does not know; ignored"


def machine_args(tmp_path: Path, kubelet: str, config: str | None = None) -> argparse.Namespace:
    """`run`'s arguments on a two-node machine with distances (prefer-closest needs them)."""
    (tmp_path / "topology.yaml").write_text(
        "nodes:\n  - {id: 0, cpus: '0-3', memory: 8Gi}\n  - {id: 1, cpus: '4-7', memory: 8Gi}\n"
        "distances: [[10, 21], [21, 10]]\n"
    )
    return argparse.Namespace(
        topology_file=str(tmp_path / "topology.yaml"),
        sysfs_root=None,
        config=config,
        kubelet_config=kubelet,
        state_dir=str(tmp_path / "state"),
        metrics_address=None,
    )


def events(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


@pytest.mark.parametrize(
    ("version", "policy", "scope", "prefer_closest", "max_nodes", "reserved"),
    [
        ("1.30", "restricted", "container", True, 8, {(0, "memory"): 1536 * MI}),
        ("1.34", "single-numa-node", "pod", True, 16, {(0, "memory"): GI, (1, "memory"): 512 * MI}),
        ("1.37", "restricted", "container", True, 8, {(0, "memory"): 1536 * MI}),
    ],
)
def test_kubelet_config_of_each_version_is_taken(
    tmp_path: Path,
    run_log: io.StringIO,
    version: str,
    policy: str,
    scope: str,
    prefer_closest: bool,
    max_nodes: int,
    reserved: dict[tuple[int, str], int],
) -> None:
    path = str(KUBELET_DATA / f"kubelet-config-{version}.yaml")
    _, config = load_machine(machine_args(tmp_path, path))
    assert (config.topology_manager_policy, config.topology_manager_scope) == (policy, scope)
    assert (config.prefer_closest_numa_nodes, config.max_allowable_numa_nodes) == (
        prefer_closest,
        max_nodes,
    )
    assert {(r.numa_node, r.type): r.size for r in config.reserved_memory} == reserved
    assert config.system_reserved == {"cpu": 1000, "memory": 412 * MI}
    ignored = [e for e in events(run_log) if e["event"] == IGNORED_EVENT]
    if version == "1.37":
        # the plugin starts, and says once what it ignores and where it read it
        [warning] = ignored
        assert warning["level"] == "warning" and warning["kubelet_config"] == path
        assert warning["ignored"] == [
            'topologyManagerPolicyOptions.numa-allocation-strategy: "most-allocated"',
            'topologyManagerPolicyOptions.restrict-to-cpu-numa-nodes: "true"',
        ]
    else:
        assert ignored == []


class _Connecting:
    """Stands in for the NRI front end at the moment it would connect: returns at once."""

    def __init__(self) -> None:
        self.started = False

    async def start(self, tracker: Any, kubelet: Any = None, metrics: Any = None) -> None:
        self.started = True

    async def run(self) -> None:
        return None

    def stop(self) -> None:
        return None

    def health(self) -> tuple[bool, str]:
        return True, "ok"

    async def close(self) -> None:
        return None

    def describe(self) -> dict[str, object]:
        return {"mode": "test"}


def test_the_plugin_starts_on_a_1_37_config_with_options_it_does_not_know(
    tmp_path: Path, run_log: io.StringIO
) -> None:
    import asyncio

    from nri_plugin.daemon import serve

    path = str(KUBELET_DATA / "kubelet-config-1.37.yaml")
    front = _Connecting()
    assert asyncio.run(serve(machine_args(tmp_path, path), front)) == 0
    assert front.started
    logged = events(run_log)
    assert [e["event"] for e in logged].count(IGNORED_EVENT) == 1
    assert any(e["event"] == "starting" for e in logged)
    assert not [e for e in logged if e["level"] == "error"]


def test_options_and_policies_of_a_newer_kubelet_are_warned_about_never_refused(
    tmp_path: Path, log: RecordingLogger
) -> None:
    kubelet = kubelet_file(
        tmp_path,
        "memoryManagerPolicy: Dynamic\ncpuManagerPolicy: numa-aware\n"
        "memoryManagerPolicyOptions: {memory-drift-tolerance: 32Mi, future-option: x}\n"
        "topologyManagerPolicyOptions: {max-allowable-numa-nodes: '8', numa-allocation-strategy:"
        " least-allocated}\n",
    )
    settings = read_kubelet_config(kubelet)
    assert settings.ignored == (
        'topologyManagerPolicyOptions.numa-allocation-strategy: "least-allocated"',
        'memoryManagerPolicyOptions.future-option: "x"',
        'memoryManagerPolicy: "Dynamic"',
        'cpuManagerPolicy: "numa-aware"',
    )
    aligned = align(Config(), kubelet, log)
    assert aligned.memory_drift_tolerance == 32 * MI  # the known option is still taken
    [(_, fields)] = [r for r in log.at("warning") if r[0] == IGNORED_EVENT]
    assert fields["kubelet_config"] == kubelet and len(fields["ignored"]) == 4


def test_known_kubelet_settings_are_not_warned_about(tmp_path: Path, log: RecordingLogger) -> None:
    kubelet = kubelet_file(
        tmp_path,
        "memoryManagerPolicy: none\ncpuManagerPolicy: Static\n"
        "topologyManagerPolicyOptions: {prefer-closest-numa-nodes: 'false'}\n",
    )
    assert read_kubelet_config(kubelet).ignored == ()
    align(Config(), kubelet, log)
    assert [r for r in log.at("warning") if r[0] == IGNORED_EVENT] == []


def test_a_known_option_with_a_bad_value_in_kubelets_file_is_still_an_error(
    tmp_path: Path, log: RecordingLogger
) -> None:
    kubelet = kubelet_file(
        tmp_path, "memoryManagerPolicyOptions: {memory-drift-tolerance: sometimes}\n"
    )
    with pytest.raises(ConfigError) as err:
        align(Config(), kubelet, log)
    assert str(err.value) == (
        f"{kubelet}: KubeletConfiguration.memoryManagerPolicyOptions.memory-drift-tolerance:"
        ' "sometimes" is not auto, off or a quantity such as "128Mi"'
    )


# -- memory-drift-tolerance from kubelet's file -----------------------------------------------


def test_kubelets_drift_tolerance_is_taken_when_ours_has_none(
    tmp_path: Path, log: RecordingLogger
) -> None:
    path = str(KUBELET_DATA / "kubelet-config-1.37-memory-manager.yaml")
    config, source = our_file(tmp_path, "topologyManagerPolicy: single-numa-node\n")
    aligned = align(config, path, log, source)
    assert (aligned.memory_drift_tolerance, aligned.memory_drift_tolerance_option) == (
        128 * MI,
        "128Mi",
    )
    (_, fields), *_ = [r for r in log.at("info") if r[0] == "aligned with kubelet"]
    assert "memoryManagerPolicyOptions.memory-drift-tolerance" in fields["taken_from_kubelet"]
    assert fields["memory_drift_tolerance"] == "128Mi"
    assert [r for r in log.at("warning") if r[0] == IGNORED_EVENT] == []


def test_kubelets_default_never_replaces_our_drift_tolerance(
    tmp_path: Path, log: RecordingLogger
) -> None:
    # kubelet leaving the option out means its own exact comparison: not a choice for us
    aligned = align(Config(), kubelet_file(tmp_path, ""), log)
    assert (aligned.memory_drift_tolerance, aligned.memory_drift_tolerance_option) == (
        64 * MI,
        None,
    )
    config, source = our_file(tmp_path, "memoryDriftTolerance: 16Mi\n")
    assert align(config, kubelet_file(tmp_path, ""), log, source).memory_drift_tolerance == 16 * MI


@pytest.mark.parametrize(
    ("ours", "kubelets"),
    [
        ("memoryManagerPolicyOptions: {memory-drift-tolerance: 128Mi}", "134217728"),
        ("memoryManagerPolicyOptions: {memory-drift-tolerance: 'off'}", "0"),
        ("memoryDriftTolerance: auto", "auto"),
    ],
)
def test_equal_drift_tolerances_written_differently_agree(
    tmp_path: Path, log: RecordingLogger, ours: str, kubelets: str
) -> None:
    config, source = our_file(tmp_path, ours + "\n")
    kubelet = kubelet_file(
        tmp_path, f"memoryManagerPolicyOptions: {{memory-drift-tolerance: '{kubelets}'}}\n"
    )
    aligned = align(config, kubelet, log, source)
    assert aligned.memory_drift_tolerance_option == config.memory_drift_tolerance_option


def test_differing_drift_tolerances_are_an_error_naming_both_files(
    tmp_path: Path, log: RecordingLogger
) -> None:
    config, source = our_file(tmp_path, "memoryDriftTolerance: 64Mi\n")
    kubelet = kubelet_file(tmp_path, "memoryManagerPolicyOptions: {memory-drift-tolerance: auto}\n")
    with pytest.raises(ConfigError) as err:
        align(config, kubelet, log, source)
    assert str(err.value) == (
        f'memoryManagerPolicyOptions.memory-drift-tolerance: "64Mi" in {source} but "auto" in'
        f" {kubelet}; make them equal or remove memoryManagerPolicyOptions.memory-drift-tolerance"
        f" (or memoryDriftTolerance) from {source} to take kubelet's"
    )

"""The e2e harness itself, against real containerd 2.x and 1.7, with no NRI plugin."""

from __future__ import annotations

import os
import signal
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from .harness import (
    Containerd,
    CRIClient,
    CRIError,
    Flavor,
    PluginExited,
    PluginProcess,
    PodResources,
    QoS,
)

MiB = 1 << 20


def _uid() -> str:
    return str(uuid.uuid4())


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for the machine's init to reap it holds nothing)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_cri_version_answers(containerd: Containerd, cri: CRIClient) -> None:
    version = cri.version()
    assert version.runtime_name == "containerd"
    assert version.runtime_api_version == "v1"
    assert version.runtime_version.startswith("2." if containerd.flavor == "2.x" else "1.7.")


def test_guaranteed_container_spec_has_requested_cpus_and_no_mems(
    containerd: Containerd, cri: CRIClient
) -> None:
    uid = _uid()
    pod = cri.run_pod(uid, qos="Guaranteed", resources=PodResources(1000, 64 * MiB))
    cid = cri.create_container(pod, "app", memory_limit=64 * MiB, cpu_millis=1000, cpuset_cpus="0")

    spec = cri.spec(cid)
    resources = spec["linux"]["resources"]
    assert resources["cpu"]["cpus"] == "0"
    assert "mems" not in resources["cpu"]
    assert cri.mems(cid) == ""
    # What kubelet computes for 1 CPU / 64 MiB reached the spec unchanged.
    assert (resources["cpu"]["shares"], resources["cpu"]["quota"]) == (1024, 100_000)
    assert resources["memory"]["limit"] == 64 * MiB
    assert spec["linux"]["cgroupsPath"] == f"{containerd.cgroup_prefix}/kubepods/pod{uid}/{cid}"
    assert spec["annotations"]["io.kubernetes.cri.sandbox-uid"] == uid
    [info] = cri.list_containers(pod.id)
    assert (info.id, info.name, info.state) == (cid, "app", "CONTAINER_CREATED")
    assert info.labels["io.kubernetes.pod.uid"] == uid


@pytest.mark.parametrize(
    ("qos", "tier"),
    [("Burstable", "/kubepods/burstable/pod"), ("BestEffort", "/kubepods/besteffort/pod")],
)
def test_pod_cgroup_parent_follows_qos(
    containerd: Containerd, cri: CRIClient, qos: QoS, tier: str
) -> None:
    uid = _uid()
    pod = cri.run_pod(uid, qos=qos)
    cid = cri.create_container(pod, "app", memory_limit=0 if qos == "BestEffort" else 32 * MiB)
    assert cri.spec(cid)["linux"]["cgroupsPath"].startswith(
        f"{containerd.cgroup_prefix}{tier}{uid}/"
    )


def test_busybox_container_runs(cri: CRIClient) -> None:
    pod = cri.run_pod(_uid())
    cid = cri.create_container(pod, "app", memory_limit=32 * MiB, cpu_millis=500)
    cri.start_container(cid)

    assert cri.container_state(cid) == "CONTAINER_RUNNING"
    pid = cri.running_pid(cid)
    assert Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:2] == [
        b"/bin/sleep",
        b"2147483647",
    ]
    # The kernel enforces the spec: all of this one-node machine's memory.
    assert cri.host_cpuset_mems(cid) == "0"


def test_create_container_error_carries_runtime_message(cri: CRIClient) -> None:
    pod = cri.run_pod(_uid())
    cri.create_container(pod, "app", memory_limit=32 * MiB, cpu_millis=500)

    with pytest.raises(CRIError, match=r"CreateContainer: .*failed to reserve container name"):
        cri.create_container(pod, "app", memory_limit=32 * MiB, cpu_millis=500)


def test_pods_survive_containerd_restart(containerd: Containerd, cri: CRIClient) -> None:
    pod = cri.run_pod(_uid())
    cid = cri.create_container(pod, "app", memory_limit=32 * MiB, cpu_millis=500)
    cri.start_container(cid)
    pid = cri.info(cid)["pid"]

    containerd.restart()

    cri = containerd.cri()
    assert cri.container_state(cid) == "CONTAINER_RUNNING"
    assert cri.info(cid)["pid"] == pid


def test_teardown_leaves_no_process_mount_or_cgroup(
    make_containerd: Callable[..., Containerd], flavor: Flavor
) -> None:
    ctrd = make_containerd(flavor)
    cri = ctrd.cri()
    pod = cri.run_pod(_uid())
    cid = cri.create_container(pod, "app", memory_limit=32 * MiB, cpu_millis=500)
    cri.start_container(cid)
    pid = cri.info(cid)["pid"]
    before = ctrd.leftovers()
    # The checks see every kind of trace while the pod runs, so an empty result means clean.
    assert any(f"process {pid}:" in line for line in before)
    assert any(line.startswith("mount ") for line in before)
    assert any(line.startswith("cgroup ") and line.endswith(cid) for line in before)

    ctrd.close()

    assert ctrd.leftovers() == []
    assert not _alive(pid)
    with open("/proc/mounts") as mounts:
        assert f"{ctrd.run_dir}/" not in mounts.read()
    assert not any(Path("/sys/fs/cgroup").glob(f"*/{ctrd.cgroup_prefix.lstrip('/')}"))


def test_teardown_sweeps_after_a_containerd_crash(
    make_containerd: Callable[..., Containerd], flavor: Flavor
) -> None:
    ctrd = make_containerd(flavor)
    cri = ctrd.cri()
    cid = cri.create_container(cri.run_pod(_uid()), "app", memory_limit=32 * MiB)
    cri.start_container(cid)
    pid = cri.info(cid)["pid"]

    ctrd.stop(signal.SIGKILL)  # no CRI left to remove the pod: shims and containers stay
    assert _alive(pid)
    ctrd.close()

    ctrd.assert_clean()
    assert not _alive(pid)


def test_plugin_process_log_signal_and_early_exit(containerd: Containerd, tmp_path: Path) -> None:
    log = tmp_path / "plugin.log"
    script = "import sys, time; print('up', flush=True); time.sleep(60)"
    plugin = PluginProcess([sys.executable, "-c", script], log).start()
    try:
        deadline = time.monotonic() + 30
        while "up" not in plugin.log_text():
            assert plugin.running
            assert time.monotonic() < deadline, "plugin output never reached its log"
            time.sleep(0.02)
        plugin.kill(signal.SIGTERM)
        assert plugin.wait() == -signal.SIGTERM
    finally:
        plugin.stop()

    failing = PluginProcess(
        [sys.executable, "-c", "import os; print('bad config', os.environ['NMM_X'])"],
        tmp_path / "failing.log",
        env={"NMM_X": "42"},
        name="90-memory-manager",
    ).start(containerd)
    with pytest.raises(PluginExited, match="bad config 42"):
        failing.wait_registered(containerd, timeout=30)
    assert os.path.getsize(tmp_path / "failing.log") > 0

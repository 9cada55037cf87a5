"""The committed protobuf modules must be what hack/gen_proto.py produces now."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
GEN = REPO / "nri_plugin" / "nri" / "gen"


def test_generated_modules_are_up_to_date(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, str(REPO / "hack" / "gen_proto.py"), "--out", str(tmp_path)],
        check=True,
        capture_output=True,
    )
    fresh = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    committed = {p.name: p.read_bytes() for p in GEN.iterdir() if p.is_file()}
    assert sorted(fresh) == sorted(committed)
    stale = [name for name in fresh if fresh[name] != committed[name]]
    assert stale == [], f"run hack/gen_proto.py: stale {stale}"


def test_generated_modules_import_inside_the_package() -> None:
    from nri_plugin.nri.gen import nri_pb2, ttrpc_pb2

    assert nri_pb2.DESCRIPTOR.package == "nri.pkg.api.v1alpha1"
    assert ttrpc_pb2.DESCRIPTOR.package == "ttrpc"
    assert nri_pb2.ConfigureResponse.DESCRIPTOR.fields_by_name["events"].number == 2


# Spot checks of the field numbers the memory manager's path depends on
# (containerd/nri pkg/api/api.proto).
FIELD_NUMBERS = {
    ("PodSandbox", "linux"): 8,
    ("PodSandbox", "uid"): 3,
    ("LinuxPodSandbox", "cgroup_parent"): 3,
    ("LinuxPodSandbox", "pod_resources"): 2,
    ("Container", "linux"): 11,
    ("Container", "created_at"): 14,
    ("Container", "state"): 4,
    ("LinuxContainer", "resources"): 3,
    ("LinuxContainer", "cgroups_path"): 5,
    ("LinuxResources", "hugepage_limits"): 3,
    ("LinuxResources", "unified"): 6,
    ("LinuxMemory", "limit"): 1,
    ("LinuxCPU", "mems"): 7,
    ("LinuxCPU", "cpus"): 6,
    ("HugepageLimit", "limit"): 2,
    ("ContainerAdjustment", "linux"): 6,
    ("LinuxContainerAdjustment", "resources"): 2,
    ("LinuxContainerAdjustment", "memory_policy"): 12,
    ("ContainerUpdate", "ignore_failure"): 3,
    ("StateChangeEvent", "container"): 3,
    ("SynchronizeRequest", "more"): 3,
    ("SynchronizeResponse", "more"): 2,
    ("UpdateContainerRequest", "linux_resources"): 3,
    ("ConfigureRequest", "request_timeout"): 5,
    ("ConfigureRequest", "NRI_version"): 6,
    ("RegisterPluginRequest", "NRI_version"): 3,
}


def test_field_numbers_match_the_reference() -> None:
    from nri_plugin.nri.gen import nri_pb2

    got = {
        (message, name): getattr(nri_pb2, message).DESCRIPTOR.fields_by_name[name].number
        for message, name in FIELD_NUMBERS
    }
    assert got == FIELD_NUMBERS

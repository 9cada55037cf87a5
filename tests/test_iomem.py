"""memory-drift-tolerance: auto (KEP-6232): the kernel image's size from /proc/iomem texts."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest

from nri_plugin.daemon import load_machine
from nri_plugin.engine.config import Config
from nri_plugin.inputs.config import parse_config
from nri_plugin.inputs.iomem import KernelImage, kernel_image, resolve_drift_tolerance

MI = 1 << 20

# x86-64, read with CAP_SYS_ADMIN (Linux 6.x; the kernel's rodata between code and data)
X86_ROOT = """\
00000000-00000fff : Reserved
00001000-0009ffff : System RAM
000a0000-000fffff : Reserved
  000f0000-000fffff : System ROM
00100000-bffd9fff : System RAM
  01000000-02259aff : Kernel code
  02400000-02dfdfff : Kernel rodata
  02e00000-0307a57f : Kernel data
  03928000-03a59fff : Kernel bss
bffda000-bfffffff : Reserved
fee00000-fee00fff : Local APIC
100000000-43fffffff : System RAM
"""
# the same file read without CAP_SYS_ADMIN (our DaemonSet): every address is zero
X86_UNPRIVILEGED = """\
00000000-00000000 : Reserved
00000000-00000000 : System RAM
  00000000-00000000 : Kernel code
  00000000-00000000 : Kernel rodata
  00000000-00000000 : Kernel data
  00000000-00000000 : Kernel bss
"""
# arm64 lists the image as code and data only
ARM64 = """\
40000000-bfffffff : System RAM
  40210000-4170ffff : Kernel code
  41710000-41b8ffff : reserved
  41b90000-4207ffff : Kernel data
"""


def test_the_span_runs_from_the_lowest_start_to_the_highest_end() -> None:
    assert kernel_image(X86_ROOT) == KernelImage(0x03A59FFF - 0x01000000 + 1)
    assert kernel_image(ARM64) == KernelImage(0x4207FFFF - 0x40210000 + 1)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (X86_UNPRIVILEGED, "the addresses read as zero (no CAP_SYS_ADMIN)"),
        ("00001000-0009ffff : System RAM\n", "no Kernel code, data or bss lines"),
        ("", "no Kernel code, data or bss lines"),
        ("  zzzz-0100 : Kernel code\n  0100 : Kernel data\n", "no Kernel code, data or bss lines"),
        ("  02000000-01ffffff : Kernel code\n", "the Kernel lines end before they start"),
    ],
)
def test_an_unknown_size_says_why(text: str, reason: str) -> None:
    assert kernel_image(text) == KernelImage(None, reason)


class Log:
    def __init__(self) -> None:
        self.records: list[tuple[str, str, dict[str, Any]]] = []

    def info(self, event: str, **kw: Any) -> None:
        self.records.append(("info", event, kw))

    def warning(self, event: str, **kw: Any) -> None:
        self.records.append(("warning", event, kw))


def auto() -> Config:
    return parse_config({"memoryManagerPolicyOptions": {"memory-drift-tolerance": "auto"}})


def test_auto_is_the_image_plus_64mi(tmp_path: Path) -> None:
    iomem = tmp_path / "iomem"
    iomem.write_text(X86_ROOT)
    log = Log()
    config = resolve_drift_tolerance(auto(), log, str(iomem))
    size = 0x03A59FFF - 0x01000000 + 1
    assert config.memory_drift_tolerance == size + 64 * MI
    assert config.memory_drift_tolerance_option == "auto"
    [(level, _, fields)] = log.records
    assert level == "info"
    assert fields == {
        "iomem": str(iomem),
        "kernel_image": size,
        "memory_drift_tolerance": size + 64 * MI,
    }


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (X86_UNPRIVILEGED, "the addresses read as zero (no CAP_SYS_ADMIN)"),
        (None, "cannot read {path}: No such file or directory"),
    ],
)
def test_auto_falls_back_to_the_exact_comparison_and_says_so(
    tmp_path: Path, content: str | None, reason: str
) -> None:
    iomem = tmp_path / "iomem"
    if content is not None:
        iomem.write_text(content)
    log = Log()
    config = resolve_drift_tolerance(auto(), log, str(iomem))
    assert config.memory_drift_tolerance == 0
    [(level, event, fields)] = log.records
    assert level == "warning"
    assert "the kernel image size is unknown" in event and "memory-drift-tolerance" in event
    assert fields == {"iomem": str(iomem), "reason": reason.format(path=iomem)}


def test_other_settings_never_read_the_file(tmp_path: Path) -> None:
    log = Log()
    for config in (Config(), parse_config({"memoryDriftTolerance": "off"})):
        assert resolve_drift_tolerance(config, log, str(tmp_path / "absent")) == config
    assert log.records == []


def test_run_resolves_auto_at_start(tmp_path: Path) -> None:
    (tmp_path / "topology.yaml").write_text("nodes:\n  - {id: 0, cpus: '0-3', memory: 8Gi}\n")
    (tmp_path / "config.yaml").write_text(
        "reservedMemory: ['0:memory=1Gi']\n"
        "memoryManagerPolicyOptions: {memory-drift-tolerance: auto}\n"
    )
    (tmp_path / "iomem").write_text(ARM64)
    args = argparse.Namespace(
        topology_file=str(tmp_path / "topology.yaml"),
        sysfs_root=None,
        config=str(tmp_path / "config.yaml"),
        kubelet_config=None,
    )
    _, config = load_machine(args, iomem=str(tmp_path / "iomem"))
    assert config.memory_drift_tolerance == 0x4207FFFF - 0x40210000 + 1 + 64 * MI

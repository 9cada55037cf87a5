"""A pod's hugepage limits, read from the cgroup kubelet made for it.

Pod scope sizes the whole pod at its first container, and neither NRI nor CRI
carries the pod's hugepage requests (the sandbox's resources hold only cpu and
the memory limit: kubelet's ``calculateSandboxResources``). kubelet does write
them to the pod's cgroup before it creates the sandbox: ``ResourceConfigForPod``
sets the hugetlb limit of every page size to the pod's request of that size
(its sidecar-aware ``PodRequests``) and of every other size to 0
(``pkg/kubelet/cm/helpers_linux.go``, ``cgroup_manager_linux.go``). A cgroup
whose limits are all unlimited was not made by kubelet: nothing is known then.

The path comes from the sandbox's cgroup parent, with kubelet's cgroupfs
(``/kubepods/burstable/pod<uid>``) or systemd
(``kubepods-burstable-pod<uid>.slice``) spelling; cgroup v1 (``hugetlb``
hierarchy, ``hugetlb.<size>.limit_in_bytes``) and v2 (``hugetlb.<size>.max``).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from nri_plugin.engine.topology import hugepage_resource_name
from nri_plugin.errors import InputError
from nri_plugin.frontends.nri_convert import page_size_bytes

_V1_LIMIT = re.compile(r"hugetlb\.([0-9]+[KMGTP]B)\.limit_in_bytes")
_V2_LIMIT = re.compile(r"hugetlb\.([0-9]+[KMGTP]B)\.max")
# v1 shows "no limit" as the largest page-aligned int64, v2 as "max"
_UNLIMITED = 1 << 62
_SLICE = re.compile(r"[A-Za-z0-9_.:-]+\.slice")
_MAX_FILE = 64


def cgroup_dir(cgroup_parent: str) -> Path | None:
    """The pod cgroup's path below a hierarchy's root; None when it cannot be one."""
    if not cgroup_parent or "\0" in cgroup_parent or ".." in cgroup_parent.split("/"):
        return None
    if "/" not in cgroup_parent and _SLICE.fullmatch(cgroup_parent):
        # systemd: a-b-c.slice lives at a.slice/a-b.slice/a-b-c.slice
        parts = cgroup_parent.removesuffix(".slice").split("-")
        return Path(*("-".join(parts[: i + 1]) + ".slice" for i in range(len(parts))))
    relative = cgroup_parent.strip("/")
    return Path(relative) if relative else None


class PodCgroups:
    """Reads pods' hugepage limits under one cgroup mount (``<sysfs>/fs/cgroup``)."""

    def __init__(self, root: str | Path = "/sys/fs/cgroup") -> None:
        self.root = Path(root)

    def hugepage_limits(self, cgroup_parent: str) -> dict[str, int] | None:
        """Type (``hugepages-2Mi``) -> bytes the pod may use; None when not known."""
        relative = cgroup_dir(cgroup_parent)
        if relative is None:
            return None
        for directory, pattern in (
            (self.root / relative, _V2_LIMIT),
            (self.root / "hugetlb" / relative, _V1_LIMIT),
        ):
            limits = _read_limits(directory, pattern)
            if limits is not None:
                return limits
        return None


def _read_limits(directory: Path, pattern: re.Pattern[str]) -> dict[str, int] | None:
    try:
        names = os.listdir(directory)
    except OSError:
        return None
    limits: dict[str, int] = {}
    kubelet_set = False
    for name in names:
        match = pattern.fullmatch(name)
        if match is None:
            continue
        try:
            with open(directory / name, "rb") as f:
                text = f.read(_MAX_FILE).decode("ascii").strip()
            size = page_size_bytes(match[1])
        except (OSError, UnicodeDecodeError, InputError):
            continue
        if text == "max" or not text.isdigit():
            continue
        value = int(text)
        if value >= _UNLIMITED:
            continue
        kubelet_set = True
        if value:
            limits[hugepage_resource_name(size)] = value
    return limits if kubelet_set else None

"""``memory-drift-tolerance: auto``: the kernel image's size, from ``/proc/iomem``.

KEP-6232: a NUMA node's ``MemTotal`` moves between boots mostly because KASLR
places the kernel image (reserved, so not counted) on another node; the
tolerated drift is therefore the image's size, read from the ``Kernel code``,
``Kernel data`` and ``Kernel bss`` lines of ``/proc/iomem`` as the span from
the lowest start to the highest end (the image is contiguous; the span covers
rodata and alignment gaps), plus a 64Mi grace for the KiB-scale drift of
boot-time reservations. Since Linux 4.6 ``/proc/iomem`` shows every address as
zero to a reader without ``CAP_SYS_ADMIN`` (our DaemonSet drops every
capability): the size is then unknown, and ``auto`` keeps the exact
comparison, as kubelet does, saying so in the log.

:func:`kernel_image` reads the text (pure); :func:`resolve_drift_tolerance` is
the start-up step that reads the file and fixes the bound in the config.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any

from nri_plugin.engine.config import AUTO_DRIFT_GRACE, DRIFT_TOLERANCE_AUTO, Config

IOMEM_PATH = "/proc/iomem"
KERNEL_RESOURCES = ("Kernel code", "Kernel data", "Kernel bss")
# /proc/iomem is a few KiB; nothing real comes near this
_MAX_BYTES = 1 << 20
# "  01000000-02259aff : Kernel code": inclusive start and end, hex, nested by indentation
_LINE_RE = re.compile(r"\s*([0-9a-fA-F]{1,16})-([0-9a-fA-F]{1,16}) : (.*)")


@dataclass(frozen=True)
class KernelImage:
    """The kernel image's physical span, or why it is unknown."""

    size: int | None
    reason: str = ""


def kernel_image(text: str) -> KernelImage:
    """The span of the ``Kernel code/data/bss`` lines of ``/proc/iomem`` text."""
    spans: list[tuple[int, int]] = []
    for line in text.splitlines():
        match = _LINE_RE.fullmatch(line.rstrip())
        if match is None or match.group(3) not in KERNEL_RESOURCES:
            continue
        spans.append((int(match.group(1), 16), int(match.group(2), 16)))
    if not spans:
        return KernelImage(None, "no Kernel code, data or bss lines")
    if any(start == 0 and end == 0 for start, end in spans):
        return KernelImage(None, "the addresses read as zero (no CAP_SYS_ADMIN)")
    low = min(start for start, _ in spans)
    high = max(end for _, end in spans)
    if high < low:
        return KernelImage(None, "the Kernel lines end before they start")
    return KernelImage(high - low + 1)


def read_iomem(path: str = IOMEM_PATH) -> tuple[str | None, str]:
    """The text of ``path``, or None and why it cannot be read."""
    try:
        with open(path, "rb") as f:
            raw = f.read(_MAX_BYTES)
    except OSError as exc:
        return None, f"cannot read {path}: {exc.strerror or exc}"
    return raw.decode("ascii", errors="replace"), ""


def resolve_drift_tolerance(config: Config, logger: Any, path: str = IOMEM_PATH) -> Config:
    """``config`` with ``auto`` turned into bytes: the kernel image plus 64Mi, or 0 (exact).

    Any other setting is returned as it is. Read once per start: the bound
    follows the kernel that booted.
    """
    if config.memory_drift_tolerance_option != DRIFT_TOLERANCE_AUTO:
        return config
    text, why = read_iomem(path)
    image = kernel_image(text) if text is not None else KernelImage(None, why)
    if image.size is None:
        logger.warning(
            "memory-drift-tolerance auto: the kernel image size is unknown; the memory totals"
            " of the checkpoint must match exactly (set memory-drift-tolerance to a quantity"
            " to tolerate a drift)",
            iomem=path,
            reason=image.reason,
        )
        return dataclasses.replace(config, memory_drift_tolerance=0)
    bound = image.size + AUTO_DRIFT_GRACE
    logger.info(
        "memory-drift-tolerance auto: the kernel image size plus 64Mi",
        iomem=path,
        kernel_image=image.size,
        memory_drift_tolerance=bound,
    )
    return dataclasses.replace(config, memory_drift_tolerance=bound)

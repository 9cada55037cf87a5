"""Fake NUMA nodes onto the host's: so that containers pinned on a fake topology can run.

With ``--topology-file`` the plugin decides on a machine that may not exist: a
container pinned to fake node 3 gets ``cpuset.mems=3``, which the kernel
refuses on a host without node 3 (the container is created but never starts).
When the fake topology names nodes the host lacks, the plugin decides, records,
logs and reports on the fake nodes exactly as before, and writes a
``cpuset.mems`` of host nodes instead (config ``hostNodeMap``; by default fake
node ``i`` goes to the host's ``i``-th node modulo their count). The fake nodes
a container got are in its annotation :data:`ANNOTATION` (``crictl inspect``
shows it), which is also how a restarted plugin reads them back. Never active
with ``--sysfs-root``: there the topology is the host's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from nri_plugin.engine.bitmask import format_mems, mask_of, nodes_of, parse_cpulist
from nri_plugin.errors import InputError

ANNOTATION = "nri-memory-manager.io/numa-nodes"


class NodeMap:
    """Fake node -> host node; the identity (inactive) when empty."""

    def __init__(self, fake_to_host: Mapping[int, int] | None = None) -> None:
        self.fake_to_host = dict(fake_to_host or {})

    @property
    def active(self) -> bool:
        return bool(self.fake_to_host)

    def mems_text(self, mask: int) -> str:
        """The cpuset.mems to write for blocks on ``mask`` (fake nodes)."""
        if not self.active:
            return format_mems(mask)
        return format_mems(mask_of(self.fake_to_host.get(n, n) for n in nodes_of(mask)))

    def annotations(self, mask: int) -> dict[str, str]:
        """The annotation telling which fake nodes a container got ({} when inactive)."""
        return {ANNOTATION: format_mems(mask)} if self.active and mask else {}

    def fake_nodes(self, annotations: Mapping[str, str]) -> int:
        """The fake nodes an earlier run pinned a container to (0: not said)."""
        text = annotations.get(ANNOTATION, "")
        if not text:
            return 0
        try:
            return mask_of(parse_cpulist(text, what=ANNOTATION))
        except InputError:
            return 0

    def describe(self) -> dict[str, int]:
        return {str(k): v for k, v in sorted(self.fake_to_host.items())}


def default_map(fake: Sequence[int], host: Sequence[int]) -> dict[int, int]:
    """Fake node i onto the host's i-th node modulo the host's count ({} when all exist)."""
    hosts = sorted(host)
    if not hosts or set(fake) <= set(hosts):
        return {}
    return {node: hosts[i % len(hosts)] for i, node in enumerate(sorted(fake))}


def checked_map(
    given: Mapping[int, int], fake: Sequence[int], host: Sequence[int], where: str
) -> dict[int, int]:
    """The configured map, complete for every fake node (unnamed ones: the default)."""
    for f, h in given.items():
        if f not in fake:
            raise InputError(
                f"{where}: fake NUMA node {f} is not in the topology (nodes:"
                f" {format_mems(mask_of(fake))})"
            )
        if h not in host:
            raise InputError(
                f"{where}: host NUMA node {h} does not exist here (host nodes:"
                f" {format_mems(mask_of(host))})"
            )
    full = default_map(fake, host) or {n: n for n in fake}
    full.update(given)
    return full

"""NUMA topology of the machine: nodes, their CPUs, memory, hugepages and distances.

Two sources produce the same :class:`Topology` value: discovery from sysfs
(``devices/system/node/node*/``, root configurable) and the fake-topology YAML
file (the ``topology:`` block of a simulate scenario).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

from nri_plugin.engine.bitmask import format_cpulist, parse_cpulist
from nri_plugin.engine.topology import NumaNode, Topology
from nri_plugin.errors import QuantityError, TopologyError, quote
from nri_plugin.inputs.reader import check_keys, describe, read_bytes, read_document
from nri_plugin.quantity import INT64_MAX, bounded_int, format_quantity, parse_bytes, short

# -- loaders ---------------------------------------------------------------

# Linux's MAX_NUMNODES is 1 << 10.
MAX_NUMA_NODE_ID = (1 << 10) - 1

_NODE_DIR_RE = re.compile(r"node([0-9]+)")
_HUGEPAGES_DIR_RE = re.compile(r"hugepages-([0-9]+)kB")
_MEMTOTAL_RE = re.compile(r"Node\s+([0-9]+)\s+MemTotal:\s+([0-9]+)\s+kB")

_TOPOLOGY_KEYS = ("nodes", "distances")
# A fake topology of 1024 nodes (Linux's maximum) with its distance matrix is ~4 MiB.
_TOPOLOGY_FILE_LIMIT = 16 << 20
_SYSFS_FILE_LIMIT = 1 << 20
_NODE_KEYS = ("id", "cpus", "memory", "hugepages")


def _bytes(value: object, what: str) -> int:
    try:
        return parse_bytes(value, what=what)
    except QuantityError as e:
        raise TopologyError(str(e)) from None


def _node_id(value: object, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TopologyError(f"{where}: a NUMA node id must be an integer, got {describe(value)}")
    if value < 0:
        raise TopologyError(f"{where}: NUMA node id {value} is negative")
    if value > MAX_NUMA_NODE_ID:
        raise TopologyError(
            f"{where}: NUMA node id {value} is above Linux's maximum {MAX_NUMA_NODE_ID}"
        )
    return value


def _checked_hugepages(
    pools: dict[int, int], memory: int, where: str, *, names: Mapping[int, str] | None = None
) -> dict[int, int]:
    """``pools`` after the per-node rules: whole pages, power-of-two sizes, within memory."""
    for size, total in pools.items():
        label = (names or {}).get(size, format_quantity(size))
        if size < 1024 or size & (size - 1):
            raise TopologyError(
                f"{where}: hugepage size {quote(label)} ({size} bytes) is not a power of two"
                " of at least 1Ki"
            )
        if total % size:
            raise TopologyError(
                f"{where}: {quote(format_quantity(total))} of {format_quantity(size)} hugepages"
                f" is not a whole number of {format_quantity(size)} pages"
            )
    in_pools = sum(pools.values())
    if in_pools > memory:
        raise TopologyError(
            f"{where}: hugepage pools total {quote(format_quantity(in_pools))}, more than the"
            f" node's memory {quote(format_quantity(memory))} (memory is MemTotal, which includes"
            " the hugepage pools)"
        )
    return pools


def _node_from_mapping(data: object, where: str) -> NumaNode:
    if not isinstance(data, dict):
        raise TopologyError(
            f"{where}: expected a mapping with id, cpus, memory, got {describe(data)}"
        )
    check_keys(data, _NODE_KEYS, where)
    if "id" not in data:
        raise TopologyError(f'{where}: missing key "id"')
    node_id = _node_id(data["id"], f"{where}.id")

    raw_cpus = data.get("cpus")
    if raw_cpus is None:
        cpus: frozenset[int] = frozenset()
    elif isinstance(raw_cpus, str):
        cpus = parse_cpulist(raw_cpus, what=f"{where}.cpus")
    elif isinstance(raw_cpus, int) and not isinstance(raw_cpus, bool):
        # An unquoted single CPU (`cpus: 5`) reaches us as a YAML int.
        cpus = parse_cpulist(str(raw_cpus), what=f"{where}.cpus")
    else:
        raise TopologyError(
            f'{where}.cpus: expected a cpulist string such as "0-3", got {describe(raw_cpus)}'
        )

    if "memory" not in data:
        raise TopologyError(f'{where}: missing key "memory" (the node\'s MemTotal)')
    memory = _bytes(data["memory"], f"{where}.memory")

    raw_pages = data.get("hugepages")
    pools: dict[int, int] = {}
    names: dict[int, str] = {}
    if raw_pages is not None:
        if not isinstance(raw_pages, dict):
            raise TopologyError(
                f"{where}.hugepages: expected a mapping page size -> total, got"
                f" {describe(raw_pages)}"
            )
        for raw_size, raw_total in raw_pages.items():
            size = _bytes(raw_size, f"{where}.hugepages")
            label = str(raw_size)
            if size in pools:
                raise TopologyError(
                    f"{where}.hugepages: page size {quote(label)} is the same size as"
                    f" {quote(names[size])}"
                )
            pools[size] = _bytes(raw_total, f"{where}.hugepages.{label}")
            names[size] = label
    _checked_hugepages(pools, memory, f"{where}.hugepages", names=names)
    return NumaNode(id=node_id, cpus=cpus, memory=memory, hugepages=pools)


def _assemble(
    nodes: list[NumaNode],
    wheres: list[str],
    distance_rows: list[list[int]] | None,
) -> Topology:
    """The :class:`Topology` of checked nodes, after the rules that span nodes.

    ``wheres[i]`` names node ``i`` in messages; ``distance_rows`` is in the
    order of ``nodes``.
    """
    seen_ids: dict[int, str] = {}
    cpu_owner: dict[int, int] = {}
    for node, where in zip(nodes, wheres, strict=True):
        if node.id in seen_ids:
            raise TopologyError(
                f"{where}: NUMA node {node.id} is listed twice (also at {seen_ids[node.id]})"
            )
        seen_ids[node.id] = where
        for cpu in sorted(node.cpus):
            owner = cpu_owner.setdefault(cpu, node.id)
            if owner != node.id:
                raise TopologyError(
                    f"{where}: CPU {cpu} is on NUMA node {node.id} and also on NUMA node {owner}"
                )

    # cadvisor lists every page size the kernel supports on every node, with 0
    # where a node has no pages; every source is normalised to that view.
    sizes = sorted({size for node in nodes for size in node.hugepages})
    by_id: dict[int, NumaNode] = {}
    for node in nodes:
        pools = {size: node.hugepages.get(size, 0) for size in sizes}
        by_id[node.id] = NumaNode(id=node.id, cpus=node.cpus, memory=node.memory, hugepages=pools)

    distances: dict[tuple[int, int], int] | None = None
    if distance_rows is not None:
        distances = {}
        for a, row in zip(nodes, distance_rows, strict=True):
            for b, d in zip(nodes, row, strict=True):
                distances[(a.id, b.id)] = d
    return Topology(nodes=tuple(by_id[i] for i in sorted(by_id)), distances=distances)


def _distance_rows(data: object, count: int, where: str) -> list[list[int]]:
    shape = f"a {count}x{count} matrix (one row per node, in the order of nodes)"
    if not isinstance(data, list):
        raise TopologyError(f"{where}: expected {shape}, got {describe(data)}")
    if len(data) != count:
        raise TopologyError(f"{where}: expected {shape}, got {len(data)} rows")
    rows: list[list[int]] = []
    for i, row in enumerate(data):
        if not isinstance(row, list) or len(row) != count:
            got = f"{len(row)} entries" if isinstance(row, list) else describe(row)
            raise TopologyError(f"{where}[{i}]: expected a row of {count} distances, got {got}")
        for j, d in enumerate(row):
            if isinstance(d, bool) or not isinstance(d, int) or d <= 0:
                raise TopologyError(
                    f"{where}[{i}][{j}]: a distance must be a positive integer, got {describe(d)}"
                )
        rows.append(list(row))
    return rows


def topology_from_mapping(data: object, *, source: str = "topology") -> Topology:
    """The machine described by the fake-topology schema (the ``topology:`` block)."""
    if not isinstance(data, dict):
        raise TopologyError(f"{source}: expected a mapping with nodes, got {describe(data)}")
    check_keys(data, _TOPOLOGY_KEYS, source)
    raw_nodes = data.get("nodes")
    if not isinstance(raw_nodes, list):
        raise TopologyError(
            f"{source}.nodes: expected a list of NUMA nodes, got {describe(raw_nodes)}"
        )
    if not raw_nodes:
        raise TopologyError(
            f"{source}.nodes: the list is empty; a machine has at least one NUMA node"
        )
    wheres = [f"{source}.nodes[{i}]" for i in range(len(raw_nodes))]
    nodes = [_node_from_mapping(item, where) for item, where in zip(raw_nodes, wheres, strict=True)]
    raw_distances = data.get("distances")
    rows = None
    if raw_distances is not None:
        rows = _distance_rows(raw_distances, len(nodes), f"{source}.distances")
    return _assemble(nodes, wheres, rows)


def topology_to_mapping(topology: Topology) -> dict[str, object]:
    """The fake-topology schema of ``topology`` (JSON-serialisable; loads back equal)."""
    nodes: list[dict[str, object]] = []
    for node in topology.nodes:
        entry: dict[str, object] = {
            "id": node.id,
            "cpus": format_cpulist(node.cpus),
            "memory": format_quantity(node.memory),
        }
        if node.hugepages:
            entry["hugepages"] = {
                format_quantity(size): format_quantity(total)
                for size, total in sorted(node.hugepages.items())
            }
        nodes.append(entry)
    result: dict[str, object] = {"nodes": nodes}
    if topology.distances is not None:
        ids = topology.node_ids
        result["distances"] = [[topology.distances[(a, b)] for b in ids] for a in ids]
    return result


def load_topology_file(path: str | Path) -> Topology:
    """The machine described by a fake-topology file (YAML or JSON)."""
    data = read_document(path, TopologyError, limit=_TOPOLOGY_FILE_LIMIT, what="topology files")
    try:
        return topology_from_mapping(data)
    except TopologyError as e:
        raise TopologyError(f"{path}: {e}") from None


def _read_sysfs(path: Path) -> str:
    # sysfs attributes are at most a page; a fake tree's files get some room more.
    raw = read_bytes(path, TopologyError, limit=_SYSFS_FILE_LIMIT, what="sysfs files")
    try:
        return raw.decode("ascii")
    except UnicodeDecodeError as e:
        raise TopologyError(f"{path}: not ASCII text (byte {e.start})") from None


def _sysfs_int(path: Path) -> int:
    text = _read_sysfs(path).strip()
    if not text.isascii() or not text.isdigit():
        raise TopologyError(f"{path}: expected a non-negative integer, got {quote(short(text))}")
    value = bounded_int(text, INT64_MAX)
    if value is None:
        raise TopologyError(f"{path}: {quote(short(text))} is out of range")
    return value


def _sysfs_node(node_dir: Path, node_id: int) -> NumaNode:
    meminfo = node_dir / "meminfo"
    memory: int | None = None
    for line in _read_sysfs(meminfo).splitlines():
        match = _MEMTOTAL_RE.match(line.strip())
        if match is not None:
            if bounded_int(match[1], MAX_NUMA_NODE_ID) != node_id:
                raise TopologyError(
                    f"{meminfo}: describes node {short(match[1])}, not node {node_id}"
                )
            kib = bounded_int(match[2], INT64_MAX // 1024)
            if kib is None:
                raise TopologyError(f"{meminfo}: MemTotal {short(match[2])} kB is out of range")
            memory = kib * 1024
            break
    if memory is None:
        raise TopologyError(f'{meminfo}: no "Node {node_id} MemTotal: <n> kB" line')

    cpulist = node_dir / "cpulist"
    cpus = parse_cpulist(_read_sysfs(cpulist), what=str(cpulist))

    pools: dict[int, int] = {}
    pages_dir = node_dir / "hugepages"
    if pages_dir.is_dir():
        for entry in pages_dir.iterdir():
            match = _HUGEPAGES_DIR_RE.fullmatch(entry.name)
            if match is None:
                continue
            kib = bounded_int(match[1], INT64_MAX // 1024)
            if kib is None:
                raise TopologyError(f"{entry}: hugepage size {short(match[1])} kB is out of range")
            size = kib * 1024
            pages = _sysfs_int(entry / "nr_hugepages")
            if pages > INT64_MAX // size:
                raise TopologyError(
                    f"{entry / 'nr_hugepages'}: {pages} pages of {format_quantity(size)}"
                    " cannot be represented as int64 bytes"
                )
            pools[size] = pages * size
    pools = dict(sorted(pools.items()))
    _checked_hugepages(pools, memory, str(node_dir))
    return NumaNode(id=node_id, cpus=cpus, memory=memory, hugepages=pools)


def host_node_ids(root: str | Path = "/sys") -> list[int]:
    """The NUMA node ids this host has (``node<N>`` under devices/system/node); [0] without."""
    base = Path(root) / "devices" / "system" / "node"
    try:
        names = [entry.name for entry in base.iterdir()]
    except OSError:
        return [0]  # a kernel without NUMA support: one node
    ids = []
    for name in names:
        match = _NODE_DIR_RE.fullmatch(name)
        if match is not None:
            node_id = bounded_int(match[1], MAX_NUMA_NODE_ID)
            if node_id is not None:
                ids.append(node_id)
    return sorted(ids) or [0]


def discover_sysfs(root: str | Path = "/sys") -> Topology:
    """The machine as Linux describes it under ``<root>/devices/system/node``."""
    base = Path(root) / "devices" / "system" / "node"
    if not base.is_dir():
        raise TopologyError(f"{base}: missing; cannot discover the NUMA topology")
    found: list[tuple[int, Path]] = []
    for entry in base.iterdir():
        match = _NODE_DIR_RE.fullmatch(entry.name)
        if match is not None and entry.is_dir():
            node_id = bounded_int(match[1], INT64_MAX)
            if node_id is None:
                raise TopologyError(
                    f"{entry}: NUMA node id {short(match[1])} is above Linux's maximum"
                    f" {MAX_NUMA_NODE_ID}"
                )
            found.append((node_id, entry))
    if not found:
        raise TopologyError(f"{base}: no node<N> directories; cannot discover the NUMA topology")
    found.sort()
    for node_id, node_dir in found:
        _node_id(node_id, str(node_dir))
    nodes = [_sysfs_node(node_dir, node_id) for node_id, node_dir in found]
    wheres = [str(node_dir) for _, node_dir in found]

    # Each node's `distance` file is one row of the SLIT, in node order.
    distance_files = [node_dir / "distance" for _, node_dir in found]
    present = [f.exists() for f in distance_files]
    rows: list[list[int]] | None = None
    if any(present):
        rows = []
        for f in distance_files:
            fields = _read_sysfs(f).split()
            values = [
                bounded_int(x, INT64_MAX) if x.isascii() and x.isdigit() else None for x in fields
            ]
            if len(fields) != len(found) or None in values:
                raise TopologyError(
                    f"{f}: expected {len(found)} distances (one per node), got"
                    f" {quote(short(' '.join(fields)))}"
                )
            row = [v for v in values if v is not None]
            if any(d <= 0 for d in row):
                raise TopologyError(
                    f"{f}: distances must be positive, got {quote(' '.join(fields))}"
                )
            rows.append(row)
    return _assemble(nodes, wheres, rows)

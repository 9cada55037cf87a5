"""kubelet's checkpoint checksum: the compiled FNV-1a against a plain reference."""

from __future__ import annotations

import types
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from nri_plugin.engine.state import POLICY_STATIC, Block, MemoryState, MemoryTable, NodeState
from nri_plugin.persist.checksum import checksum, checksum_dump, fnv1a_32
from nri_plugin.persist.file import load_file

KUBERNETES_IO_EXAMPLE = "kubernetes-io-memory-manager-state.json"
FNV32_OFFSET_BASIS = 2166136261
FNV32_PRIME = 16777619


def reference_fnv1a_32(data: bytes) -> int:
    """32-bit FNV-1a written out, byte by byte (the package's former implementation)."""
    h = FNV32_OFFSET_BASIS
    for byte in data:
        h = ((h ^ byte) * FNV32_PRIME) & 0xFFFFFFFF
    return h


def test_reference_matches_published_vectors() -> None:
    # FNV-1a 32 test vectors from the algorithm's authors
    assert reference_fnv1a_32(b"") == 0x811C9DC5
    assert reference_fnv1a_32(b"a") == 0xE40C292C
    assert reference_fnv1a_32(b"foobar") == 0xBF9CF968


@settings(max_examples=500)
@given(st.binary(max_size=4096))
def test_compiled_equals_reference(data: bytes) -> None:
    assert fnv1a_32(data) == reference_fnv1a_32(data)


def test_compiled_on_a_large_dump() -> None:
    # The size of a node's checkpoint text, and every byte value.
    data = bytes(range(256)) * 4096
    assert fnv1a_32(data) == reference_fnv1a_32(data)


def test_kubelet_checksums_with_both() -> None:
    # kubelet's memory manager test state ("static", one node, one block) and its checksum
    state = MemoryState(
        "static",
        {0: NodeState(0, {"memory": MemoryTable(2048, 512, 1536, 512, 1024)}, [])},
        {"pod": {"container1": [Block((0,), "memory", 512)]}},
    )
    dump = checksum_dump(state).encode()
    assert fnv1a_32(dump) == reference_fnv1a_32(dump) == 4215593881
    assert checksum(state) == 4215593881


def test_kubernetes_io_example_checksum_with_both() -> None:
    # made by kubelet's first implementation: "static", state.NodeMap, field Nodes
    state = load_file(Path(__file__).parent / "data" / KUBERNETES_IO_EXAMPLE)
    assert state is not None
    state.policy_name = "static"
    dump = checksum_dump(state, legacy_names=True).encode()
    assert fnv1a_32(dump) == reference_fnv1a_32(dump) == 4142013182


def test_large_state_checksum_with_both() -> None:
    table = MemoryTable(64 << 30, 0, 64 << 30, 0, 64 << 30)
    state = MemoryState(
        POLICY_STATIC,
        {n: NodeState(0, {"memory": table}, [n]) for n in range(8)},
        {f"pod-{i}": {"app": [Block((i % 8,), "memory", 4 << 20)]} for i in range(500)},
    )
    dump = checksum_dump(state).encode()
    assert checksum(state) == reference_fnv1a_32(dump)


def test_the_compiled_implementation_is_in_use() -> None:
    # fnv-hash-fast quietly falls back to pure Python when its C extension is
    # missing (no wheel for the platform); that is correct but as slow as before.
    assert isinstance(fnv1a_32, types.BuiltinFunctionType)

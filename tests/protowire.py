"""Protobuf wire encoding by hand, for tests that build messages the generated code
would refuse to (the fuzzer's mutations, fields our proto text does not declare)."""

from __future__ import annotations


def varint(n: int) -> bytes:
    """``n`` (0 <= n < 2**64) as a base-128 varint, low groups first."""
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)

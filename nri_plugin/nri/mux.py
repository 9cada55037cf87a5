"""NRI connection multiplexer framing, without I/O.

One AF_UNIX stream carries several logical connections. Each frame is an
8-byte big-endian header (u32 conn ID, u32 payload length) followed by the
payload, a slice of that logical connection's byte stream. ConnID 1 carries
the runtime's calls to the plugin, ConnID 2 the plugin's calls to the
runtime (containerd/nri ``pkg/net/multiplex/mux.go``).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from nri_plugin.errors import InputError

PLUGIN_SERVICE_CONN = 1
"""ConnID on which the plugin is the ttrpc server (nri.pkg.api.v1alpha1.Plugin)."""

RUNTIME_SERVICE_CONN = 2
"""ConnID on which the plugin is the ttrpc client (nri.pkg.api.v1alpha1.Runtime)."""

FRAME_HEADER = struct.Struct(">II")

TTRPC_HEADER_SIZE = 10
"""The mux knows this much of ttrpc only to chunk messages for the Go reader."""

MAX_FRAME_PAYLOAD = TTRPC_HEADER_SIZE + 4 * 1024 * 1024
"""Largest frame we accept: one whole ttrpc message of maximal size."""

GO_READ_BUFFER = 4096
"""Buffer of the runtime's ttrpc reader; a frame starting a message must fit in it."""


class ProtocolError(InputError):
    """The peer sent bytes that break the mux or ttrpc wire format."""


@dataclass(frozen=True, slots=True)
class Frame:
    """One complete mux frame."""

    conn_id: int
    payload: bytes


class FrameDecoder:
    """Turns a byte stream, fed in arbitrary slices, into complete frames.

    After a ProtocolError the decoder stays broken: the stream position is
    lost, so the only sane reaction is to close the socket.
    """

    def __init__(self, max_payload: int = MAX_FRAME_PAYLOAD) -> None:
        self._max_payload = max_payload
        self._buffer = bytearray()
        self._error: ProtocolError | None = None

    @property
    def buffered(self) -> int:
        """Bytes received that do not yet form a complete frame."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[Frame]:
        """Add received bytes; return every frame completed by them, in order."""
        if self._error is not None:
            raise self._error
        self._buffer += data
        frames: list[Frame] = []
        offset = 0
        buf = self._buffer
        while len(buf) - offset >= FRAME_HEADER.size:
            conn_id, length = FRAME_HEADER.unpack_from(buf, offset)
            if length > self._max_payload:
                # Checked on the header alone: never wait for (or buffer) a
                # payload the peer claims to be gigabytes long.
                self._error = ProtocolError(
                    f"mux frame length {length} on conn {conn_id} exceeds the limit of "
                    f"{self._max_payload} bytes"
                )
                self._buffer = bytearray()
                raise self._error
            end = offset + FRAME_HEADER.size + length
            if len(buf) < end:
                break
            frames.append(Frame(conn_id, bytes(buf[offset + FRAME_HEADER.size : end])))
            offset = end
        if offset:
            # Compact once per feed so many small frames stay linear in cost.
            del buf[:offset]
        return frames


def encode_frame(conn_id: int, payload: bytes) -> bytes:
    """One raw frame. Zero-length frames and ConnID 0 are never valid to send."""
    if not payload:
        raise ValueError("mux frames must not be empty")
    if not 0 < conn_id <= 0xFFFFFFFF:
        raise ValueError(f"mux conn ID {conn_id} is not in 1..2^32-1")
    if len(payload) > MAX_FRAME_PAYLOAD:
        raise ValueError(f"mux frame payload of {len(payload)} bytes exceeds {MAX_FRAME_PAYLOAD}")
    return FRAME_HEADER.pack(conn_id, len(payload)) + payload


def encode_message(conn_id: int, ttrpc_message: bytes) -> bytes:
    """Frame one complete ttrpc message (header + data) for the Go reader.

    The runtime reads each frame as a unit into a 4096-byte buffer (ENOMEM
    if the frame is bigger), except a message's data of 4096 bytes or more,
    which it reads into a buffer of exactly that size. So: the whole message
    in one frame when it fits in 4096 bytes, else the 10-byte ttrpc header
    alone, then the data in one frame (containerd/ttrpc ``channel.go``: ``newChannel``'s
    ``bufio.Reader``, ``recv``; containerd/nri ``mux.go``: ``conn.Read``).
    """
    if len(ttrpc_message) < TTRPC_HEADER_SIZE:
        raise ValueError(f"a ttrpc message has at least {TTRPC_HEADER_SIZE} bytes")
    if len(ttrpc_message) <= GO_READ_BUFFER:
        return encode_frame(conn_id, ttrpc_message)
    return encode_frame(conn_id, ttrpc_message[:TTRPC_HEADER_SIZE]) + encode_frame(
        conn_id, ttrpc_message[TTRPC_HEADER_SIZE:]
    )

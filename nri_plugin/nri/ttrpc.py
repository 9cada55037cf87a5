"""ttrpc messages on one logical connection, without I/O.

A logical connection is a byte stream of messages: a 10-byte big-endian
header (u32 data length, u32 stream ID, u8 type, u8 flags) and the data, a
protobuf ``ttrpc.Request`` or ``ttrpc.Response``. NRI uses unary calls only
(containerd/ttrpc ``channel.go``, ``request.proto``). ``MessageReader`` turns received
bytes into events in the style of h11: ``receive_data`` then ``next_event``
until it returns None; the ``encode_*`` functions turn calls into bytes.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Iterable
from dataclasses import dataclass

from nri_plugin.nri.gen import ttrpc_pb2
from nri_plugin.nri.mux import ProtocolError

HEADER = struct.Struct(">IIBB")
MAX_MESSAGE_LENGTH = 4 * 1024 * 1024
"""Largest message data ttrpc sends or accepts (the header is not counted)."""

MAX_STREAM_ID = 0xFFFFFFFF


class MessageType(enum.IntEnum):
    REQUEST = 0x01
    RESPONSE = 0x02
    DATA = 0x03  # streaming only; NRI never sends it


class Code(enum.IntEnum):
    """gRPC status codes, as carried in ttrpc.Status.code."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


def code_name(code: int) -> str:
    """Name of a status code as Go prints it, or the number if unknown."""
    try:
        return "".join(part.capitalize() for part in Code(code).name.split("_"))
    except ValueError:
        return f"Code({code})"


def describe(exc: BaseException) -> str:
    """An exception as one line: its message, or its type when it has none."""
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


class MessageError(ProtocolError):
    """One message was framed correctly but cannot be used.

    The reader is still positioned at the next message, so the connection
    can go on; a request should be answered with ``code``.
    """

    def __init__(self, reason: str, *, stream_id: int, message_type: int, code: Code) -> None:
        super().__init__(reason)
        self.stream_id = stream_id
        self.message_type = message_type
        self.code = code


class OversizedMessageError(ProtocolError):
    """A message we were asked to send is larger than ttrpc allows."""


@dataclass(frozen=True, slots=True)
class RequestReceived:
    stream_id: int
    service: str
    method: str
    payload: bytes
    timeout_nano: int
    metadata: tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class ResponseReceived:
    stream_id: int
    status_code: int  # 0 when the status is absent
    status_message: str
    payload: bytes

    @property
    def ok(self) -> bool:
        return self.status_code == Code.OK


@dataclass(frozen=True, slots=True)
class UnsupportedMessage:
    """A message of a type NRI does not use (streaming data, unknown types)."""

    stream_id: int
    message_type: int
    flags: int


Event = RequestReceived | ResponseReceived | UnsupportedMessage


class MessageReader:
    """Reassembles one logical connection's byte stream into events.

    Bytes may arrive in slices of any size (a mux frame need not hold a
    whole message). Raises ProtocolError for a message that is too large
    (the stream is then unusable) and MessageError for one bad message.
    """

    def __init__(self, max_length: int = MAX_MESSAGE_LENGTH) -> None:
        self._max_length = max_length
        self._buffer = bytearray()
        self._offset = 0
        self._last_request_stream = 0
        self._error: ProtocolError | None = None

    @property
    def buffered(self) -> int:
        """Received bytes not yet returned as an event."""
        return len(self._buffer) - self._offset

    def receive_data(self, data: bytes) -> None:
        if self._error is not None:
            # The stream position is lost: keeping more bytes would only grow the buffer.
            raise self._error
        if self._offset:
            del self._buffer[: self._offset]
            self._offset = 0
        self._buffer += data

    def next_event(self) -> Event | None:
        """The next complete message as an event, or None if more bytes are needed."""
        if self._error is not None:
            raise self._error
        if len(self._buffer) - self._offset < HEADER.size:
            return None
        length, stream_id, message_type, flags = HEADER.unpack_from(self._buffer, self._offset)
        if length > self._max_length:
            self._error = ProtocolError(
                f"ttrpc message length {length} on stream {stream_id} exceeds the maximum "
                f"message size of {self._max_length}"
            )
            self._buffer = bytearray()
            self._offset = 0
            raise self._error
        start = self._offset + HEADER.size
        end = start + length
        if len(self._buffer) < end:
            return None
        data = bytes(self._buffer[start:end])
        self._offset = end
        if message_type == MessageType.REQUEST:
            return self._request(stream_id, data)
        if message_type == MessageType.RESPONSE:
            return _response(stream_id, data)
        return UnsupportedMessage(stream_id, message_type, flags)

    def events(self) -> list[Event]:
        """All events that the bytes received so far complete (stops at a MessageError)."""
        out: list[Event] = []
        while (event := self.next_event()) is not None:
            out.append(event)
        return out

    def _request(self, stream_id: int, data: bytes) -> RequestReceived:
        def bad(reason: str, code: Code = Code.INVALID_ARGUMENT) -> MessageError:
            return MessageError(
                f"ttrpc request on stream {stream_id}: {reason}",
                stream_id=stream_id,
                message_type=MessageType.REQUEST,
                code=code,
            )

        # Same rules as the Go server; the answer goes to that stream only.
        if stream_id % 2 == 0:
            raise bad("stream ID must be odd for client-initiated streams")
        if stream_id <= self._last_request_stream:
            raise bad(
                f"stream ID cannot be re-used and must increment (last {self._last_request_stream})"
            )
        self._last_request_stream = stream_id
        request = ttrpc_pb2.Request()
        try:
            request.ParseFromString(data)
        except Exception as exc:  # any decoder failure is the peer's fault
            raise bad(f"malformed Request envelope ({describe(exc)})") from exc
        return RequestReceived(
            stream_id=stream_id,
            service=request.service,
            method=request.method,
            payload=request.payload,
            timeout_nano=request.timeout_nano,
            metadata=tuple((kv.key, kv.value) for kv in request.metadata),
        )


def _response(stream_id: int, data: bytes) -> ResponseReceived:
    response = ttrpc_pb2.Response()
    try:
        response.ParseFromString(data)
    except Exception as exc:  # any decoder failure is the peer's fault
        raise MessageError(
            f"ttrpc response on stream {stream_id}: malformed Response envelope ({describe(exc)})",
            stream_id=stream_id,
            message_type=MessageType.RESPONSE,
            code=Code.INTERNAL,
        ) from exc
    code = response.status.code if response.HasField("status") else 0
    message = response.status.message if response.HasField("status") else ""
    return ResponseReceived(stream_id, code, message, response.payload)


def encode_message(stream_id: int, message_type: int, data: bytes, flags: int = 0) -> bytes:
    """Header + data of one ttrpc message."""
    if len(data) > MAX_MESSAGE_LENGTH:
        raise OversizedMessageError(
            f"ttrpc message of {len(data)} bytes on stream {stream_id} exceeds the maximum "
            f"message size of {MAX_MESSAGE_LENGTH}"
        )
    if not 0 < stream_id <= MAX_STREAM_ID:
        raise ValueError(f"ttrpc stream ID {stream_id} is not in 1..2^32-1")
    return HEADER.pack(len(data), stream_id, message_type, flags) + data


def encode_request(
    stream_id: int,
    service: str,
    method: str,
    payload: bytes = b"",
    *,
    timeout_nano: int = 0,
    metadata: Iterable[tuple[str, str]] = (),
) -> bytes:
    request = ttrpc_pb2.Request(
        service=service,
        method=method,
        payload=payload,
        timeout_nano=timeout_nano,
        metadata=[ttrpc_pb2.KeyValue(key=k, value=v) for k, v in metadata],
    )
    return encode_message(stream_id, MessageType.REQUEST, request.SerializeToString())


def encode_response(
    stream_id: int, payload: bytes = b"", *, status_code: int = Code.OK, status_message: str = ""
) -> bytes:
    """A response; like the Go server, the status is omitted on success."""
    response = ttrpc_pb2.Response(payload=payload)
    if status_code != Code.OK:
        response.status.code = status_code
        response.status.message = status_message
    return encode_message(stream_id, MessageType.RESPONSE, response.SerializeToString())


class ClientStreams:
    """Stream IDs of one client: odd, from 1, +2 per call (like the Go client)."""

    def __init__(self) -> None:
        self._next = 1

    def next_id(self) -> int:
        stream_id = self._next
        if stream_id > MAX_STREAM_ID:
            raise OverflowError("ttrpc client stream IDs exhausted on this connection")
        self._next += 2
        return stream_id

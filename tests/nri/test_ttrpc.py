"""ttrpc codec: worked bytes of an NRI registration, reassembly, limits and bad envelopes."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nri_plugin.nri import mux, ttrpc
from nri_plugin.nri.gen import nri_pb2 as api
from nri_plugin.nri.mux import ProtocolError
from nri_plugin.nri.ttrpc import (
    Code,
    MessageError,
    MessageReader,
    RequestReceived,
    ResponseReceived,
    UnsupportedMessage,
)

# RegisterPlugin of plugin "90-memmgr", worked out byte by byte from the field
# numbers of containerd/nri pkg/api/api.proto and containerd/ttrpc request.proto.
REGISTER_PAYLOAD = bytes.fromhex("0a066d656d6d6772 12023930".replace(" ", ""))
REGISTER_REQUEST = bytes.fromhex(
    "0a1c"
    + b"nri.pkg.api.v1alpha1.Runtime".hex()
    + "120e"
    + b"RegisterPlugin".hex()
    + "1a0c"
    + REGISTER_PAYLOAD.hex()
    + "2080e497d012"
)
REGISTER_HEADER = bytes.fromhex("00000042000000010100")


def test_worked_bytes_register_plugin_request() -> None:
    payload = api.RegisterPluginRequest(plugin_name="memmgr", plugin_idx="90")
    assert payload.SerializeToString() == REGISTER_PAYLOAD
    message = ttrpc.encode_request(
        1,
        "nri.pkg.api.v1alpha1.Runtime",
        "RegisterPlugin",
        payload.SerializeToString(),
        timeout_nano=5_000_000_000,
    )
    assert len(REGISTER_REQUEST) == 66
    assert message == REGISTER_HEADER + REGISTER_REQUEST
    framed = mux.encode_frame(2, REGISTER_HEADER) + mux.encode_frame(2, REGISTER_REQUEST)
    assert framed.hex() == (
        "000000020000000a" + REGISTER_HEADER.hex() + "0000000200000042" + REGISTER_REQUEST.hex()
    )


def test_worked_bytes_request_decodes() -> None:
    reader = MessageReader()
    reader.receive_data(REGISTER_HEADER + REGISTER_REQUEST)
    assert reader.events() == [
        RequestReceived(
            stream_id=1,
            service="nri.pkg.api.v1alpha1.Runtime",
            method="RegisterPlugin",
            payload=REGISTER_PAYLOAD,
            timeout_nano=5_000_000_000,
            metadata=(),
        )
    ]


def test_worked_bytes_empty_success_reply() -> None:
    reply = bytes.fromhex("00000000000000010200")
    assert ttrpc.encode_response(1) == reply
    reader = MessageReader()
    reader.receive_data(reply)
    assert reader.next_event() == ResponseReceived(1, 0, "", b"")


def test_worked_bytes_error_reply() -> None:
    data = bytes.fromhex("0a08080212 04626f6f6d".replace(" ", ""))
    message = ttrpc.encode_response(3, status_code=Code.UNKNOWN, status_message="boom")
    assert message == struct.pack(">IIBB", len(data), 3, 2, 0) + data
    reader = MessageReader()
    reader.receive_data(message)
    event = reader.next_event()
    assert event == ResponseReceived(3, 2, "boom", b"")
    assert isinstance(event, ResponseReceived) and not event.ok


def test_worked_bytes_configure_and_create_container_payloads() -> None:
    configure = api.ConfigureResponse(events=0x60D).SerializeToString()
    assert configure == bytes.fromhex("108d0c")
    message = ttrpc.encode_response(1, configure)
    assert message[10:] == bytes.fromhex("1203108d0c")
    adjust = api.ContainerAdjustment()
    adjust.linux.resources.cpu.mems = "0"
    response = api.CreateContainerResponse(adjust=adjust)
    assert response.SerializeToString() == bytes.fromhex("0a09320712051203 3a0130".replace(" ", ""))


def test_empty_wrapper_means_set_to_zero() -> None:
    memory = api.LinuxMemory()
    memory.limit.SetInParent()
    assert memory.SerializeToString() == bytes.fromhex("0a00")
    assert api.LinuxMemory.FromString(bytes.fromhex("0a00")).HasField("limit")
    assert not api.LinuxMemory().HasField("limit")


def test_unknown_fields_are_skipped() -> None:
    # Field 99 (varint) and field 98 (fixed32) from a newer runtime, then id.
    data = bytes.fromhex("98 06 01 c5 06 01020304 0a 01 78".replace(" ", ""))
    assert api.PodSandbox.FromString(data).id == "x"


def stream_of_messages() -> tuple[bytes, list[ttrpc.Event]]:
    payload = bytes(range(256)) * 40  # spans several 4096-byte frames
    messages = [
        ttrpc.encode_request(1, "svc", "A", b"", metadata=[("traceparent", "00-1")]),
        ttrpc.encode_response(7, payload),
        ttrpc.encode_response(9, status_code=Code.UNIMPLEMENTED, status_message="method B"),
        ttrpc.encode_request(3, "svc", "C", payload, timeout_nano=2_000_000_000),
        ttrpc.encode_message(11, ttrpc.MessageType.DATA, b"", flags=4),
    ]
    events: list[ttrpc.Event] = [
        RequestReceived(1, "svc", "A", b"", 0, (("traceparent", "00-1"),)),
        ResponseReceived(7, 0, "", payload),
        ResponseReceived(9, 12, "method B", b""),
        RequestReceived(3, "svc", "C", payload, 2_000_000_000, ()),
        UnsupportedMessage(11, 3, 4),
    ]
    return b"".join(messages), events


def test_messages_fed_one_byte_at_a_time() -> None:
    stream, expected = stream_of_messages()
    reader = MessageReader()
    got: list[ttrpc.Event] = []
    for i in range(len(stream)):
        reader.receive_data(stream[i : i + 1])
        got += reader.events()
    assert got == expected
    assert reader.buffered == 0


@given(st.data())
def test_messages_fed_in_random_slices(data: st.DataObject) -> None:
    stream, expected = stream_of_messages()
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=30)))
    reader = MessageReader()
    got: list[ttrpc.Event] = []
    start = 0
    for cut in [*cuts, len(stream)]:
        reader.receive_data(stream[start:cut])
        got += reader.events()
        start = cut
    assert got == expected


def test_oversized_message_is_a_protocol_error_before_buffering() -> None:
    reader = MessageReader()
    reader.receive_data(struct.pack(">IIBB", ttrpc.MAX_MESSAGE_LENGTH + 1, 1, 1, 0))
    with pytest.raises(ProtocolError, match="4194305 on stream 1 exceeds"):
        reader.next_event()
    assert reader.buffered == 0
    with pytest.raises(ProtocolError):
        reader.next_event()


def test_maximal_message_is_accepted() -> None:
    reader = MessageReader()
    reader.receive_data(ttrpc.encode_response(1, b"\x01" * (ttrpc.MAX_MESSAGE_LENGTH - 6)))
    event = reader.next_event()
    assert isinstance(event, ResponseReceived)
    assert len(event.payload) == ttrpc.MAX_MESSAGE_LENGTH - 6


def test_sending_an_oversized_message_is_refused() -> None:
    with pytest.raises(ttrpc.OversizedMessageError, match="exceeds the maximum message size"):
        ttrpc.encode_response(1, b"\x00" * ttrpc.MAX_MESSAGE_LENGTH)


def test_malformed_request_envelope_is_answerable_and_the_stream_goes_on() -> None:
    reader = MessageReader()
    # Field 1 claims 100 bytes but only 1 follows.
    reader.receive_data(ttrpc.encode_message(1, ttrpc.MessageType.REQUEST, b"\x0a\x64\x41"))
    reader.receive_data(ttrpc.encode_request(3, "svc", "M"))
    with pytest.raises(MessageError, match="request on stream 1: malformed Request envelope") as e:
        reader.next_event()
    assert (e.value.stream_id, e.value.code) == (1, Code.INVALID_ARGUMENT)
    assert isinstance(e.value, ProtocolError)
    assert reader.next_event() == RequestReceived(3, "svc", "M", b"", 0, ())


def test_malformed_response_envelope() -> None:
    reader = MessageReader()
    reader.receive_data(ttrpc.encode_message(5, ttrpc.MessageType.RESPONSE, b"\xff\xff\xff"))
    with pytest.raises(MessageError, match="response on stream 5: malformed") as e:
        reader.next_event()
    assert e.value.message_type == ttrpc.MessageType.RESPONSE
    assert reader.next_event() is None


def test_invalid_utf8_in_a_string_is_a_malformed_envelope() -> None:
    reader = MessageReader()
    reader.receive_data(ttrpc.encode_message(1, ttrpc.MessageType.REQUEST, b"\x0a\x01\xff"))
    with pytest.raises(MessageError):
        reader.next_event()


@pytest.mark.parametrize(
    ("streams", "reason"),
    [([2], "must be odd"), ([3, 3], "cannot be re-used"), ([5, 1], "must increment")],
)
def test_request_stream_ids_must_be_odd_and_increasing(streams: list[int], reason: str) -> None:
    reader = MessageReader()
    for stream in streams:
        reader.receive_data(ttrpc.encode_request(stream, "svc", "M"))
    *good, _ = streams
    for stream in good:
        event = reader.next_event()
        assert isinstance(event, RequestReceived) and event.stream_id == stream
    with pytest.raises(MessageError, match=reason) as e:
        reader.next_event()
    assert e.value.code == Code.INVALID_ARGUMENT


@given(st.binary(max_size=200))
def test_arbitrary_bytes_give_events_or_protocol_errors_only(data: bytes) -> None:
    reader = MessageReader(max_length=1000)
    reader.receive_data(data)
    for _ in range(50):
        try:
            if reader.next_event() is None:
                break
        except MessageError:
            continue
        except ProtocolError:
            break


def test_client_stream_ids_are_odd_from_one() -> None:
    streams = ttrpc.ClientStreams()
    assert [streams.next_id() for _ in range(4)] == [1, 3, 5, 7]


def test_success_response_omits_the_status() -> None:
    message = ttrpc.encode_response(1, b"\x10\x01")
    assert message[10:] == bytes.fromhex("12021001")


def test_code_names_as_go_prints_them() -> None:
    assert ttrpc.code_name(12) == "Unimplemented"
    assert ttrpc.code_name(4) == "DeadlineExceeded"
    assert ttrpc.code_name(99) == "Code(99)"

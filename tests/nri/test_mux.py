"""Mux framing: decoding in arbitrary slices, limits, and chunking for the Go reader."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nri_plugin.nri import mux
from nri_plugin.nri.mux import Frame, FrameDecoder, ProtocolError

from .fake_runtime import GoReaderCheck

frames_strategy = st.lists(
    st.builds(Frame, st.integers(0, 2**32 - 1), st.binary(min_size=0, max_size=300)),
    max_size=8,
)


def raw(frame: Frame) -> bytes:
    return struct.pack(">II", frame.conn_id, len(frame.payload)) + frame.payload


def test_frames_fed_one_byte_at_a_time() -> None:
    sent = [Frame(2, b"\x00" * 10), Frame(1, b"hello"), Frame(7, b"")]
    stream = b"".join(raw(f) for f in sent)
    decoder = FrameDecoder()
    got: list[Frame] = []
    for i in range(len(stream)):
        got += decoder.feed(stream[i : i + 1])
    assert got == sent
    assert decoder.buffered == 0


@given(frames_strategy, st.data())
def test_frames_fed_in_random_slices(sent: list[Frame], data: st.DataObject) -> None:
    stream = b"".join(raw(f) for f in sent)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=20)))
    decoder = FrameDecoder()
    got: list[Frame] = []
    start = 0
    for cut in [*cuts, len(stream)]:
        got += decoder.feed(stream[start:cut])
        start = cut
    assert got == sent


def test_oversized_length_refused_from_the_header_alone() -> None:
    decoder = FrameDecoder()
    header = struct.pack(">II", 1, mux.MAX_FRAME_PAYLOAD + 1)
    with pytest.raises(ProtocolError, match=f"length {mux.MAX_FRAME_PAYLOAD + 1} on conn 1"):
        decoder.feed(header)
    # Nothing of the claimed payload was waited for or kept.
    assert decoder.buffered == 0
    # The stream position is lost: the decoder stays broken.
    with pytest.raises(ProtocolError):
        decoder.feed(b"\x00" * 8)


def test_length_at_the_limit_is_accepted_and_awaited() -> None:
    decoder = FrameDecoder()
    assert decoder.feed(struct.pack(">II", 2, mux.MAX_FRAME_PAYLOAD)) == []
    assert decoder.buffered == 8


def test_smaller_custom_limit() -> None:
    decoder = FrameDecoder(max_payload=16)
    with pytest.raises(ProtocolError, match="exceeds the limit of 16 bytes"):
        decoder.feed(struct.pack(">II", 1, 17))


def test_worked_bytes_header_frame_plus_payload_frame() -> None:
    request = bytes.fromhex(
        "0a1c6e72692e706b672e6170692e7631616c706861312e52756e74696d65"
        "120e5265676973746572506c7567696e1a0c0a066d656d6d67721202393020"
        "80e497d012"
    )
    header = bytes.fromhex("00000042 00000001 01 00".replace(" ", ""))
    expected_two_frames = (
        bytes.fromhex("00000002 0000000a".replace(" ", ""))
        + header
        + bytes.fromhex("00000002 00000042".replace(" ", ""))
        + request
    )
    decoder = FrameDecoder()
    assert decoder.feed(expected_two_frames) == [Frame(2, header), Frame(2, request)]
    # Our encoder picks the single-frame form since 76 bytes fit in 4096.
    assert mux.encode_message(2, header + request) == bytes.fromhex("000000020000004c") + (
        header + request
    )


@pytest.mark.parametrize(
    ("data_length", "frame_sizes"),
    [
        (0, [10]),
        (4086, [4096]),
        (4087, [10, 4087]),
        (5000, [10, 5000]),
        (4 * 1024 * 1024, [10, 4 * 1024 * 1024]),
    ],
)
def test_chunking_rule(data_length: int, frame_sizes: list[int]) -> None:
    message = struct.pack(">IIBB", data_length, 1, 1, 0) + b"\xab" * data_length
    frames = FrameDecoder().feed(mux.encode_message(1, message))
    assert [len(f.payload) for f in frames] == frame_sizes
    assert b"".join(f.payload for f in frames) == message


@given(st.lists(st.integers(0, 20_000), min_size=1, max_size=6))
def test_every_encoded_frame_is_digestible_by_the_go_reader(lengths: list[int]) -> None:
    check = GoReaderCheck()
    stream = b""
    for n, length in enumerate(lengths):
        message = struct.pack(">IIBB", length, 2 * n + 1, 2, 0) + bytes(length)
        stream += mux.encode_message(2, message)
    for frame in FrameDecoder().feed(stream):
        check.frame(frame)
    assert check.violations == []
    assert check.remaining.get(2, 0) == 0


def test_go_reader_check_catches_a_big_single_frame() -> None:
    check = GoReaderCheck()
    message = struct.pack(">IIBB", 5000, 1, 1, 0) + bytes(5000)
    check.frame(Frame(1, message))
    assert check.violations == ["message-starting frame of 5010 bytes > 4096"]


def test_encode_frame_refuses_empty_frames_and_conn_zero() -> None:
    with pytest.raises(ValueError, match="empty"):
        mux.encode_frame(1, b"")
    with pytest.raises(ValueError, match="conn ID 0"):
        mux.encode_frame(0, b"x")
    with pytest.raises(ValueError, match="at least 10 bytes"):
        mux.encode_message(1, b"short")

"""The three fuzz targets of the NRI wire input and the oracles every input is checked by.

Each target is a function of one ``bytes`` input:

``wire``
    The sans-I/O decoders alone: the bytes are a socket stream from the
    runtime, cut into reads; mux frames -> ttrpc messages on conn 1 and 2 ->
    protobuf payloads decoded as the method's request type. Fast.
``plugin``
    A sequence of NRI calls (method selector + protobuf payload) decoded and
    dispatched through the stub's own routing into ``MemoryPlugin``, under
    one of several memory/topology manager configs.
``conn``
    The real asyncio ``Connection`` with the stub's services and a
    ``MemoryPlugin``, reading the bytes as a socket stream and writing its
    answers to an in-memory writer.

Every input must end in one of the documented outcomes: frames, events,
``ProtocolError`` (the connection closes), ``MessageError`` (that message is
answered with an error), ``DecodeError`` (answered INTERNAL), a
``TopologyAffinityError:`` refusal of CreateContainer, or nothing at all.
After each input the memory manager's state must still be consistent
(kubelet's restore validation passes) and survive a checkpoint round trip,
the decoders' buffers must stay within the protocol's limits, and what the
plugin wrote must be frames the Go reader accepts. Anything else raises
``FuzzFailure`` (or escapes as the original exception): a crash.

Used by tests/test_fuzz_wire.py (a CI slice) and ``python -m tests.fuzz``
(the dedicated run, docs/fuzzing.md). This module must be imported before any
``nri_plugin`` module when fuzzing under atheris, so that ours are instrumented.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import sys
import traceback
from collections.abc import Callable, Coroutine, Iterable, Iterator
from typing import Any, cast

# Under atheris, our own modules are imported with coverage instrumentation
# (run_atheris re-executes this script with the variable set).
INSTRUMENT_ENV = "NMM_FUZZ_INSTRUMENT"
if os.environ.get(INSTRUMENT_ENV) == "1":
    import atheris  # type: ignore[import-untyped, import-not-found, unused-ignore]

    _instrumented: contextlib.AbstractContextManager[object] = atheris.instrument_imports(
        include=["nri_plugin"]
    )
else:
    _instrumented = contextlib.nullcontext()

from google.protobuf.message import DecodeError, Message  # noqa: E402

_instrumented.__enter__()
from nri_plugin.engine.bitmask import parse_cpulist  # noqa: E402
from nri_plugin.engine.config import Config  # noqa: E402
from nri_plugin.engine.manager import MemoryManager  # noqa: E402
from nri_plugin.engine.restore import validate_restored  # noqa: E402
from nri_plugin.engine.topology import Topology  # noqa: E402
from nri_plugin.frontends.nri import REFUSAL_PREFIX, AdmissionRefused, MemoryPlugin  # noqa: E402
from nri_plugin.inputs.config import parse_config, validate_for_machine  # noqa: E402
from nri_plugin.inputs.topology import topology_from_mapping  # noqa: E402
from nri_plugin.nri import mux, ttrpc  # noqa: E402
from nri_plugin.nri.connection import READ_SIZE, Connection, Method, Services  # noqa: E402
from nri_plugin.nri.gen import nri_pb2 as api  # noqa: E402
from nri_plugin.nri.mux import PLUGIN_SERVICE_CONN, RUNTIME_SERVICE_CONN, ProtocolError  # noqa: E402
from nri_plugin.nri.stub import PLUGIN_SERVICE, Stub, _Session  # noqa: E402
from nri_plugin.persist.format import dumps, from_checkpoint, parse_json  # noqa: E402

GI = 1 << 30
MI = 1 << 20

# -- the machine and the configs the plugin runs with --------------------------

TOPOLOGY: Topology = topology_from_mapping(
    {
        "nodes": [
            {"id": 0, "cpus": "0-3", "memory": "8Gi", "hugepages": {"2Mi": "1Gi", "1Gi": "2Gi"}},
            {"id": 1, "cpus": "4-7", "memory": "8Gi", "hugepages": {"2Mi": "1Gi", "1Gi": "2Gi"}},
            {"id": 2, "cpus": "8-11", "memory": "8Gi", "hugepages": {"2Mi": "1Gi"}},
            {"id": 3, "cpus": "12-15", "memory": "8Gi", "hugepages": {"2Mi": "1Gi"}},
        ],
        "distances": [[10, 12, 21, 21], [12, 10, 21, 21], [21, 21, 10, 12], [21, 21, 12, 10]],
    },
    source="fuzz topology",
)

_RESERVED = ["0:memory=512Mi", "1:memory=512Mi"]
_CONFIG_MAPPINGS: tuple[dict[str, object], ...] = (
    {"topologyManagerPolicy": "restricted", "reservedMemory": _RESERVED},
    {
        "topologyManagerPolicy": "single-numa-node",
        "topologyManagerScope": "pod",
        "reservedMemory": _RESERVED,
    },
    {"topologyManagerPolicy": "best-effort", "reservedMemory": _RESERVED},
    {"topologyManagerPolicy": "none", "reservedMemory": _RESERVED},
    {
        "topologyManagerPolicy": "restricted",
        "topologyManagerPolicyOptions": {"prefer-closest-numa-nodes": "true"},
        "reservedMemory": _RESERVED,
    },
    {"policy": "none"},
)


def _configs() -> tuple[Config, ...]:
    configs = []
    for mapping in _CONFIG_MAPPINGS:
        config = parse_config(mapping, source="fuzz config")
        validate_for_machine(config, TOPOLOGY, source="fuzz config")
        configs.append(config)
    return tuple(configs)


CONFIGS = _configs()

# Methods the runtime calls on conn 1, with their request types; the index is
# the selector byte of a `plugin` input record.
CALLS: tuple[tuple[str, type[Message]], ...] = (
    ("Configure", api.ConfigureRequest),
    ("Synchronize", api.SynchronizeRequest),
    ("CreateContainer", api.CreateContainerRequest),
    ("UpdateContainer", api.UpdateContainerRequest),
    ("StopContainer", api.StopContainerRequest),
    ("StateChange", api.StateChangeEvent),
    ("RunPodSandbox", api.RunPodSandboxRequest),
    ("StopPodSandbox", api.StopPodSandboxRequest),
    ("RemovePodSandbox", api.RemovePodSandboxRequest),
    ("PostCreateContainer", api.PostCreateContainerRequest),
    ("StartContainer", api.StartContainerRequest),
    ("PostStartContainer", api.PostStartContainerRequest),
    ("PostUpdateContainer", api.PostUpdateContainerRequest),
    ("RemoveContainer", api.RemoveContainerRequest),
    ("Shutdown", api.Empty),
)
REQUEST_TYPES: dict[str, type[Message]] = dict(CALLS)
SELECTOR: dict[str, int] = {name: i for i, (name, _) in enumerate(CALLS)}

# Largest amount a decoder may hold: one frame (or message) being assembled,
# plus one whole frame appended before it is drained.
MAX_MUX_BUFFER = mux.FRAME_HEADER.size + mux.MAX_FRAME_PAYLOAD
MAX_TTRPC_BUFFER = ttrpc.HEADER.size + ttrpc.MAX_MESSAGE_LENGTH + mux.MAX_FRAME_PAYLOAD


class FuzzFailure(AssertionError):
    """An input broke a rule of the wire input's documented behaviour."""


# -- logging: quiet, but what the transport calls a crash is recorded ----------------


class RecordingLogger:
    """Drops routine logs; keeps errors logged with a traceback (crashes by definition)."""

    def __init__(self) -> None:
        self.crashes: list[str] = []

    def _noop(self, event: str, *args: Any, **kw: Any) -> None:
        return None

    debug = info = warning = _noop

    def error(self, event: str, *args: Any, **kw: Any) -> None:
        if not kw.get("exc_info"):
            return
        exc = sys.exc_info()[1]
        if isinstance(exc, AdmissionRefused) and kw.get("method") == "CreateContainer":
            return  # a refusal: the stub logs it with a traceback, but it is an answer
        self.crashes.append(f"{event}: {kw}\n{traceback.format_exc()}")

    def bind(self, **kw: Any) -> RecordingLogger:
        return self


# -- building a plugin and driving the stub's routing without a socket -------------


def make_plugin(config: Config, log: RecordingLogger) -> MemoryPlugin:
    return MemoryPlugin(MemoryManager(TOPOLOGY, config), logger=log)


def stub_services(plugin: MemoryPlugin, log: RecordingLogger) -> tuple[Stub, Services]:
    """The stub's own method table for ``plugin``.

    The stub has no socket-free entry point, so this reaches into it: its
    services and a session (Configure and Synchronize keep per-connection
    state there). Everything after the lookup is the stub's real code.
    """
    stub = Stub(plugin, logger=log, reconnect=False)
    stub._session = _Session(cast(Connection, None))
    return stub, stub._services


def call_handler(method: Method, message: Message) -> Message:
    """Run a stub handler to completion; the plugin's handlers never really await."""
    coro = cast(Coroutine[Any, Any, Message], method.handler(message))
    try:
        coro.send(None)
    except StopIteration as done:
        return cast(Message, done.value)
    coro.close()
    raise FuzzFailure(f"handler for {type(message).__name__} suspended on I/O")


# -- oracles -------------------------------------------------------------------------


def check_state(manager: MemoryManager) -> None:
    """The state is what its own entries imply and survives the checkpoint file."""
    state = manager.state
    try:
        validate_restored(state.clone(), manager.policy.default_state(), manager.policy.name)
    except Exception as exc:
        raise FuzzFailure(f"state no longer matches its entries: {exc}") from exc
    text = dumps(state)
    try:
        back = from_checkpoint(parse_json(text, source="fuzz"), source="fuzz")
    except Exception as exc:
        raise FuzzFailure(f"checkpoint of the state cannot be read back: {exc}") from exc
    if (back.policy_name, back.machine, back.entries) != (
        state.policy_name,
        state.machine,
        state.entries,
    ):
        raise FuzzFailure("checkpoint round trip changed the state")


def _check_mems(mems: str, what: str) -> None:
    if not mems:
        return
    try:
        nodes = parse_cpulist(mems, what=what)
    except Exception as exc:
        raise FuzzFailure(f"{what}: plugin produced an unparsable cpuset.mems {mems!r}") from exc
    if not nodes or not nodes <= set(TOPOLOGY.node_ids):
        raise FuzzFailure(f"{what}: cpuset.mems {mems!r} names NUMA nodes the machine lacks")


def check_response(name: str, request: Message, response: Message) -> None:
    """What the plugin answered is something containerd can apply."""
    if isinstance(response, api.CreateContainerResponse):
        _check_mems(response.adjust.linux.resources.cpu.mems, f"{name} adjustment")
        for update in response.update:
            _check_mems(update.linux.resources.cpu.mems, f"{name} update")
    elif isinstance(response, api.SynchronizeResponse | api.UpdateContainerResponse):
        known: set[str] = set()
        if isinstance(request, api.SynchronizeRequest):
            known = {c.id for c in request.containers}
        elif isinstance(request, api.UpdateContainerRequest):
            known = {request.container.id}
        for update in response.update:
            _check_mems(update.linux.resources.cpu.mems, f"{name} update")
            # Synchronize updates collected over pages may name earlier pages' containers.
            if not isinstance(request, api.SynchronizeRequest) and update.container_id not in known:
                raise FuzzFailure(f"{name}: update for unknown container {update.container_id!r}")
    response.SerializeToString()


# -- target: wire ---------------------------------------------------------------------

_CHUNK_SIZES = (1, 2, 3, 5, 8, 10, 13, 64, 4096, 65536)


def chunks(data: bytes) -> Iterator[bytes]:
    """The stream ``data[1:]`` cut into reads as ``data[0]`` chooses (deterministic)."""
    if not data:
        return
    rng = random.Random(data[0])
    stream = memoryview(data)[1:]
    pos = 0
    while pos < len(stream):
        size = rng.choice(_CHUNK_SIZES)
        yield bytes(stream[pos : pos + size])
        pos += size


def decode_payload(name: str, payload: bytes) -> Message | None:
    """The request message of ``name`` (None: an unknown method or an undecodable payload)."""
    request_type = REQUEST_TYPES.get(name)
    if request_type is None:
        return None
    try:
        return request_type.FromString(payload)
    except DecodeError:
        return None  # the connection answers INTERNAL, as the Go server does


def fuzz_wire(data: bytes) -> None:
    frames = mux.FrameDecoder()
    readers = {
        PLUGIN_SERVICE_CONN: ttrpc.MessageReader(),
        RUNTIME_SERVICE_CONN: ttrpc.MessageReader(),
    }
    try:
        for chunk in chunks(data):
            for frame in frames.feed(chunk):
                if frame.conn_id not in readers:
                    continue  # the Go mux drops frames for conns nobody opened
                reader = readers[frame.conn_id]
                reader.receive_data(frame.payload)
                _drain(reader, frame.conn_id)
                if reader.buffered > MAX_TTRPC_BUFFER:
                    raise FuzzFailure(f"ttrpc reader holds {reader.buffered} bytes")
            if frames.buffered > MAX_MUX_BUFFER:
                raise FuzzFailure(f"mux decoder holds {frames.buffered} bytes")
    except ProtocolError as exc:
        _one_line(exc)
        if isinstance(exc, ttrpc.MessageError):
            raise FuzzFailure(f"a MessageError escaped the drain loop: {exc}") from exc


def _drain(reader: ttrpc.MessageReader, conn_id: int) -> None:
    while True:
        try:
            event = reader.next_event()
        except ttrpc.MessageError as exc:
            _one_line(exc)
            continue  # that message is answered with an error; the stream goes on
        if event is None:
            return
        if isinstance(event, ttrpc.RequestReceived):
            again = ttrpc.encode_request(
                event.stream_id,
                event.service,
                event.method,
                event.payload,
                timeout_nano=event.timeout_nano,
                metadata=event.metadata,
            )
            echo = ttrpc.MessageReader()
            echo.receive_data(again)
            if echo.next_event() != event:
                raise FuzzFailure(f"request on stream {event.stream_id} does not re-encode equal")
            if conn_id == PLUGIN_SERVICE_CONN and event.service == PLUGIN_SERVICE:
                decode_payload(event.method, event.payload)
        elif isinstance(event, ttrpc.ResponseReceived) and event.ok:
            with contextlib.suppress(DecodeError):
                api.UpdateContainersResponse.FromString(event.payload)


def _one_line(exc: BaseException) -> None:
    text = str(exc)
    if not text or "\n" in text:
        raise FuzzFailure(f"{type(exc).__name__} message is not one line: {text!r}")


# -- target: plugin -------------------------------------------------------------------


def plugin_records(data: bytes) -> tuple[Config, list[tuple[str, bytes]]]:
    """``data``: config selector byte, then records [method selector][u16 length][payload]."""
    config = CONFIGS[data[0] % len(CONFIGS)] if data else CONFIGS[0]
    records: list[tuple[str, bytes]] = []
    pos = 1
    while pos < len(data):
        name = CALLS[data[pos] % len(CALLS)][0]
        length = int.from_bytes(data[pos + 1 : pos + 3], "big")
        payload = data[pos + 3 : pos + 3 + length]
        records.append((name, payload))
        pos += 3 + length
    return config, records


def encode_plugin_input(config_index: int, calls: Iterable[tuple[str, Message]]) -> bytes:
    out = bytearray([config_index])
    for name, message in calls:
        payload = message.SerializeToString()
        if len(payload) > 0xFFFF:
            raise ValueError(f"{name} payload of {len(payload)} bytes is too large for a record")
        out += bytes([SELECTOR[name]]) + len(payload).to_bytes(2, "big") + payload
    return bytes(out)


def fuzz_plugin(data: bytes) -> None:
    config, records = plugin_records(data)
    log = RecordingLogger()
    plugin = make_plugin(config, log)
    _, services = stub_services(plugin, log)
    methods = services[PLUGIN_SERVICE]
    for name, payload in records:
        method = methods.get(name)
        if method is None:
            continue  # UNIMPLEMENTED: the runtime falls back to StateChange
        try:
            message = method.request_type.FromString(payload)
        except DecodeError:
            continue
        try:
            response = call_handler(method, message)
        except AdmissionRefused as exc:
            if name != "CreateContainer":
                raise FuzzFailure(f"{name} raised a refusal: {exc}") from exc
            if not str(exc).startswith(REFUSAL_PREFIX) or "\n" in str(exc):
                raise FuzzFailure(f"refusal is not one {REFUSAL_PREFIX} line: {exc}") from exc
        else:
            check_response(name, message, response)
    # Once per input: the state is cumulative, so damage done midway is still there.
    check_state(plugin.manager)


# -- target: conn ---------------------------------------------------------------------


class MemoryWriter:
    """The part of ``asyncio.StreamWriter`` that Connection uses, into a buffer."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.closed = False

    def write(self, data: bytes) -> None:
        if self.closed:
            raise ConnectionResetError("writer closed")
        self.data += data

    async def drain(self) -> None:
        return None

    def close(self) -> None:
        self.closed = True

    async def wait_closed(self) -> None:
        return None


CONN_TIMEOUT = 10.0
SETTLE_ROUNDS = 10


async def settle() -> None:
    """Give the handler tasks the loop turns they need to answer before EOF closes the socket."""
    for _ in range(SETTLE_ROUNDS):
        await asyncio.sleep(0)


async def _run_connection(data: bytes, log: RecordingLogger) -> tuple[MemoryPlugin, bytes]:
    config = CONFIGS[data[0] % len(CONFIGS)] if data else CONFIGS[0]
    plugin = make_plugin(config, log)
    stub, services = stub_services(plugin, log)
    reader = asyncio.StreamReader(limit=READ_SIZE)
    writer = MemoryWriter()
    conn = Connection(
        reader,
        cast(asyncio.StreamWriter, writer),
        services,
        logger=log,
        handler_grace=CONN_TIMEOUT / 2,
    )
    stub._session = _Session(conn)

    async def feed() -> None:
        for chunk in chunks(data):
            reader.feed_data(chunk)
            await asyncio.sleep(0)  # let the connection read between chunks
        await settle()
        reader.feed_eof()

    feeder = asyncio.get_running_loop().create_task(feed())
    try:
        async with asyncio.timeout(CONN_TIMEOUT):
            await conn.run()
    except TimeoutError:
        raise FuzzFailure(f"Connection.run() still running after {CONN_TIMEOUT} s") from None
    finally:
        feeder.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await feeder
    if not conn.closed:
        raise FuzzFailure("Connection.run() returned with the connection open")
    return plugin, bytes(writer.data)


_LOOP: asyncio.AbstractEventLoop | None = None


def fuzz_conn(data: bytes) -> None:
    global _LOOP
    if _LOOP is None:
        _LOOP = asyncio.new_event_loop()
    log = RecordingLogger()
    plugin, written = _LOOP.run_until_complete(_run_connection(data, log))
    if log.crashes:
        raise FuzzFailure("connection logged a crash:\n" + "\n".join(log.crashes))
    check_written(written)
    check_state(plugin.manager)


def check_written(written: bytes) -> None:
    """The plugin's answers: frames the Go reader accepts, each a well-formed Response."""
    decoder = mux.FrameDecoder()
    remaining: dict[int, int] = {}
    responses = ttrpc.MessageReader()
    for frame in decoder.feed(written):
        if frame.conn_id != PLUGIN_SERVICE_CONN:
            raise FuzzFailure(f"plugin wrote on conn {frame.conn_id} without calling anything")
        size = len(frame.payload)
        left = remaining.get(frame.conn_id, 0)
        if size == 0:
            raise FuzzFailure("plugin wrote a zero-length frame")
        if left == 0:
            if size < ttrpc.HEADER.size or size > mux.GO_READ_BUFFER:
                raise FuzzFailure(f"message-starting frame of {size} bytes")
            left = ttrpc.HEADER.size + int.from_bytes(frame.payload[:4], "big") - size
            if left < 0:
                raise FuzzFailure("one frame carries bytes of two messages")
        elif size > left:
            raise FuzzFailure("continuation frame runs past its message")
        else:
            left -= size
        remaining[frame.conn_id] = left
        responses.receive_data(frame.payload)
        for event in responses.events():
            if not isinstance(event, ttrpc.ResponseReceived):
                raise FuzzFailure(f"plugin wrote {event!r} on its server conn")
    if decoder.buffered or responses.buffered:
        raise FuzzFailure("plugin wrote a partial frame or message")


TARGETS: dict[str, Callable[[bytes], None]] = {
    "wire": fuzz_wire,
    "plugin": fuzz_plugin,
    "conn": fuzz_conn,
}

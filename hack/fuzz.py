#!/usr/bin/env python3
"""Fuzzing of everything the plugin reads from the NRI socket.

Three targets, each a function of one ``bytes`` input:

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

Engines: atheris (libFuzzer, coverage-guided) when it imports, else a
mutation fuzzer of our own over the seed corpus. See docs/fuzzing.md.

    hack/fuzz.py run --target wire --runs 1000000 [--engine atheris|mutate]
    hack/fuzz.py corpus --out DIR          # write the synthetic seed corpus
    hack/fuzz.py capture --out DIR         # record real containerd traffic (root, e2e setup)
    hack/fuzz.py repro --target T FILE...  # run inputs once, print what fails
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import os
import random
import resource
import signal
import struct
import sys
import time
import traceback
from collections.abc import Callable, Coroutine, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, cast

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

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
from nri_plugin.nri.stub import PLUGIN_SERVICE, RUNTIME_SERVICE, Stub, _Session  # noqa: E402
from nri_plugin.persist.format import dumps, from_checkpoint, parse_json  # noqa: E402

_instrumented.__exit__(None, None, None)

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


# -- seed corpus: what containerd sends, built with kubelet's values -----------------------


def _uid(n: int) -> str:
    return f"{n:08x}-5e3d-4c1a-9f1b-{n * 7919:012x}"


def _pod(n: int, qos: str, *, systemd: bool = False, memory: int = 0) -> api.PodSandbox:
    uid = _uid(n)
    if systemd:
        u = uid.replace("-", "_")
        tier = "" if qos == "guaranteed" else f"-{qos}"
        slices = "" if qos == "guaranteed" else f"kubepods-{qos}.slice/"
        parent = f"/kubepods.slice/{slices}kubepods{tier}-pod{u}.slice"
    else:
        parent = "/kubepods" + ("" if qos == "guaranteed" else f"/{qos}") + f"/pod{uid}"
    pod = api.PodSandbox(
        id=hashlib.sha256(uid.encode()).hexdigest(),
        name=f"pod-{n}",
        uid=uid,
        namespace="default",
        labels={
            "io.kubernetes.pod.name": f"pod-{n}",
            "io.kubernetes.pod.namespace": "default",
            "io.kubernetes.pod.uid": uid,
        },
        annotations={"kubernetes.io/config.source": "api"},
        runtime_handler="",
        pid=1000 + n,
    )
    pod.linux.cgroup_parent = parent
    pod.linux.cgroups_path = parent
    if memory:
        pod.linux.pod_resources.memory.limit.value = memory
    return pod


def _container(
    pod: api.PodSandbox,
    name: str,
    *,
    memory: int = 0,
    cpu_millis: int = 0,
    hugepages: dict[str, int] | None = None,
    cpus: str = "",
    mems: str = "",
    state: int = api.CONTAINER_CREATED,
    created_at: int = 0,
) -> api.Container:
    c = api.Container(
        id=hashlib.sha256(f"{pod.uid}/{name}".encode()).hexdigest(),
        pod_sandbox_id=pod.id,
        name=name,
        state=cast(Any, state),
        labels={
            "io.kubernetes.container.name": name,
            "io.kubernetes.pod.name": pod.name,
            "io.kubernetes.pod.namespace": pod.namespace,
            "io.kubernetes.pod.uid": pod.uid,
        },
        args=["sleep", "2147483647"],
        env=["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
        created_at=created_at,
    )
    c.mounts.add(
        destination="/dev/termination-log", type="bind", source="/tmp/x", options=["rbind"]
    )
    linux = c.linux
    linux.cgroups_path = f"{pod.linux.cgroup_parent}/{c.id}"
    res = linux.resources
    if memory:
        res.memory.limit.value = memory
    res.memory.swap.value = memory
    res.cpu.shares.value = max(2, cpu_millis * 1024 // 1000)
    res.cpu.period.value = 100_000
    if cpu_millis:
        res.cpu.quota.value = cpu_millis * 100
    res.cpu.cpus = cpus
    res.cpu.mems = mems
    for size in ("2MB", "1GB"):
        res.hugepage_limits.add(page_size=size, limit=(hugepages or {}).get(size, 0))
    linux.oom_score_adj.value = -997
    return c


def _resources(memory: int, cpu_millis: int, cpus: str = "") -> api.LinuxResources:
    res = api.LinuxResources()
    res.memory.limit.value = memory
    res.cpu.shares.value = max(2, cpu_millis * 1024 // 1000)
    res.cpu.quota.value = cpu_millis * 100
    res.cpu.period.value = 100_000
    res.cpu.cpus = cpus
    return res


def runtime_session() -> list[tuple[str, Message]]:
    """A day on a node: every call containerd makes, with kubelet's values."""
    a = _pod(1, "guaranteed", memory=2 * GI)
    b = _pod(2, "guaranteed", systemd=True)
    c = _pod(3, "burstable")
    d = _pod(4, "besteffort", systemd=True)
    e = _pod(5, "guaranteed", memory=5 * GI)
    a_app = _container(
        a, "app", memory=2 * GI, cpu_millis=2000, mems="0", state=api.CONTAINER_RUNNING
    )
    b_init = _container(b, "init", memory=GI, cpu_millis=1000)
    b_app = _container(
        b, "app", memory=3 * GI, cpu_millis=2000, cpus="2-3", hugepages={"2MB": 512 * MI}
    )
    c_app = _container(c, "web", memory=GI, cpu_millis=500)
    d_app = _container(d, "batch")
    e_app = _container(e, "db", memory=4 * GI, cpu_millis=4000, cpus="4-7", hugepages={"1GB": GI})

    def event(kind: int, pod: api.PodSandbox, ctr: api.Container | None = None) -> Message:
        ev = api.StateChangeEvent(event=cast(Any, kind), pod=pod)
        if ctr is not None:
            ev.container.CopyFrom(ctr)
        return ev

    b_stopped = api.Container()
    b_stopped.CopyFrom(b_init)
    b_stopped.state = api.CONTAINER_STOPPED
    return [
        (
            "Configure",
            api.ConfigureRequest(
                config="",
                runtime_name="containerd",
                runtime_version="v2.1.4",
                registration_timeout=5000,
                request_timeout=2000,
            ),
        ),
        ("Synchronize", api.SynchronizeRequest(pods=[a], containers=[a_app], more=True)),
        ("Synchronize", api.SynchronizeRequest()),
        ("RunPodSandbox", api.RunPodSandboxRequest(pod=b)),
        ("CreateContainer", api.CreateContainerRequest(pod=b, container=b_init)),
        ("PostCreateContainer", api.PostCreateContainerRequest(pod=b, container=b_init)),
        ("StartContainer", api.StartContainerRequest(pod=b, container=b_init)),
        ("StopContainer", api.StopContainerRequest(pod=b, container=b_stopped)),
        ("CreateContainer", api.CreateContainerRequest(pod=b, container=b_app)),
        ("StateChange", event(api.START_CONTAINER, b, b_app)),
        ("StateChange", event(api.REMOVE_CONTAINER, b, b_stopped)),
        (
            "UpdateContainer",
            api.UpdateContainerRequest(
                pod=b, container=b_app, linux_resources=_resources(3 * GI, 2000, "2-3")
            ),
        ),
        ("StateChange", event(api.RUN_POD_SANDBOX, c)),
        ("CreateContainer", api.CreateContainerRequest(pod=c, container=c_app)),
        ("StateChange", event(api.RUN_POD_SANDBOX, d)),
        ("CreateContainer", api.CreateContainerRequest(pod=d, container=d_app)),
        ("RunPodSandbox", api.RunPodSandboxRequest(pod=e)),
        ("CreateContainer", api.CreateContainerRequest(pod=e, container=e_app)),
        ("StopContainer", api.StopContainerRequest(pod=a, container=a_app)),
        ("RemoveContainer", api.RemoveContainerRequest(pod=a, container=a_app)),
        ("StopPodSandbox", api.StopPodSandboxRequest(pod=a)),
        ("StateChange", event(api.REMOVE_POD_SANDBOX, a)),
        ("Shutdown", api.Empty()),
    ]


def go_frames(conn_id: int, message: bytes) -> bytes:
    """One ttrpc message framed as the Go runtime writes it (4096-byte buffered writer)."""
    first, rest = message[: mux.GO_READ_BUFFER], message[mux.GO_READ_BUFFER :]
    out = mux.FRAME_HEADER.pack(conn_id, len(first)) + first
    if rest:
        out += mux.FRAME_HEADER.pack(conn_id, len(rest)) + rest
    return out


def runtime_stream(calls: Sequence[tuple[str, Message]], *, registered: bool = True) -> bytes:
    """The socket bytes the runtime sends: the RegisterPlugin answer, then the calls."""
    out = bytearray()
    if registered:
        out += go_frames(RUNTIME_SERVICE_CONN, ttrpc.encode_response(1))
    for i, (name, message) in enumerate(calls):
        request = ttrpc.encode_request(
            2 * i + 1,
            PLUGIN_SERVICE,
            name,
            message.SerializeToString(),
            timeout_nano=2_000_000_000,
            metadata=[("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")],
        )
        out += go_frames(PLUGIN_SERVICE_CONN, request)
    return bytes(out)


def synthetic_corpus() -> dict[str, list[bytes]]:
    """Seeds per target, from :func:`runtime_session` and protocol corner cases."""
    calls = runtime_session()
    stream = runtime_stream(calls)
    wire = [bytes([seed]) + stream for seed in (0, 7, 42)]
    wire += [bytes([1]) + runtime_stream([call]) for call in calls]
    big = api.SynchronizeRequest(
        pods=[_pod(100 + i, "guaranteed", memory=GI) for i in range(40)], more=False
    )
    wire.append(bytes([3]) + runtime_stream([("Synchronize", big)]))  # crosses 4096 bytes
    wire.append(b"\x00" + go_frames(PLUGIN_SERVICE_CONN, ttrpc.encode_response(1)))
    wire.append(b"\x00" + go_frames(7, b"\x00" * 10))
    wire.append(b"\x00" + mux.FRAME_HEADER.pack(1, mux.MAX_FRAME_PAYLOAD + 1))
    wire.append(b"\x00" + mux.FRAME_HEADER.pack(1, 10) + ttrpc.HEADER.pack(2**32 - 1, 1, 1, 0))
    plugin = [
        encode_plugin_input(i, calls[: n + 1])
        for i in range(len(CONFIGS))
        for n in (len(calls) - 1, 8)
    ]
    plugin += [encode_plugin_input(0, [call]) for call in calls]
    return {"wire": wire, "conn": list(wire), "plugin": plugin}


def write_corpus(out: Path, corpus: dict[str, list[bytes]], prefix: str = "seed") -> int:
    count = 0
    for target, seeds in corpus.items():
        directory = out / target
        directory.mkdir(parents=True, exist_ok=True)
        for seed in seeds:
            name = f"{prefix}-{hashlib.sha1(seed).hexdigest()[:16]}"
            (directory / name).write_bytes(seed)
            count += 1
    return count


def load_corpus(directory: Path | None, target: str) -> list[bytes]:
    seeds = list(synthetic_corpus()[target])
    if directory is not None and (directory / target).is_dir():
        seeds += [p.read_bytes() for p in sorted((directory / target).iterdir()) if p.is_file()]
    return seeds


# -- capture: real containerd traffic as seeds ----------------------------------------------


class _AllEvents:
    """A handler shape that subscribes to every event, for the recorder's mask."""

    def synchronize(self) -> None: ...
    def create_container(self) -> None: ...
    def update_container(self) -> None: ...
    def stop_container(self) -> None: ...
    def run_pod_sandbox(self) -> None: ...
    def stop_pod_sandbox(self) -> None: ...
    def remove_pod_sandbox(self) -> None: ...
    def post_create_container(self) -> None: ...
    def start_container(self) -> None: ...
    def post_start_container(self) -> None: ...
    def post_update_container(self) -> None: ...
    def remove_container(self) -> None: ...


class Recorder:
    """A minimal NRI plugin on a blocking socket that answers everything and keeps the bytes."""

    def __init__(self, socket_path: Path) -> None:
        import socket
        import threading

        from nri_plugin.nri.stub import event_mask

        self.mask = event_mask(_AllEvents())
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(str(socket_path))
        self.stream = bytearray()
        self.calls: list[tuple[str, bytes]] = []
        self.error: BaseException | None = None
        register = api.RegisterPluginRequest(plugin_name="fuzz-recorder", plugin_idx="99")
        self._send(
            RUNTIME_SERVICE_CONN,
            ttrpc.encode_request(
                1, RUNTIME_SERVICE, "RegisterPlugin", register.SerializeToString()
            ),
        )
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _send(self, conn_id: int, message: bytes) -> None:
        self.sock.sendall(mux.encode_message(conn_id, message))

    def _answer(self, event: ttrpc.RequestReceived) -> bytes:
        empty: dict[str, Message] = {
            "Configure": api.ConfigureResponse(events=self.mask),
            "Synchronize": api.SynchronizeResponse(),
            "CreateContainer": api.CreateContainerResponse(),
            "UpdateContainer": api.UpdateContainerResponse(),
            "StopContainer": api.StopContainerResponse(),
            "StateChange": api.Empty(),
        }
        if event.method in empty:
            return ttrpc.encode_response(event.stream_id, empty[event.method].SerializeToString())
        # Per-event RPCs: UNIMPLEMENTED makes NRI >= 0.12 use StateChange, which we record.
        return ttrpc.encode_response(
            event.stream_id, status_code=ttrpc.Code.UNIMPLEMENTED, status_message=event.method
        )

    def _serve(self) -> None:
        frames = mux.FrameDecoder()
        server = ttrpc.MessageReader()
        try:
            while data := self.sock.recv(READ_SIZE):
                self.stream += data
                for frame in frames.feed(data):
                    if frame.conn_id != PLUGIN_SERVICE_CONN:
                        continue
                    server.receive_data(frame.payload)
                    for event in server.events():
                        if isinstance(event, ttrpc.RequestReceived):
                            self.calls.append((event.method, event.payload))
                            self._send(PLUGIN_SERVICE_CONN, self._answer(event))
        except OSError:
            pass
        except BaseException as exc:
            self.error = exc

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()
        self.thread.join(5)


def _drive(cri: Any, ctrd: Any) -> None:
    """kubelet's calls for a handful of pods of every QoS class, with hugepages and resizes."""
    from tests.e2e.harness import PodResources

    sizes = {"2MB": 4 * MI}
    g = cri.run_pod(_uid(901), qos="Guaranteed", resources=PodResources(1000, 256 * MI))
    init = cri.create_container(g, "init", memory_limit=64 * MI, cpu_millis=1000, command=["true"])
    cri.start_container(init)
    app = cri.create_container(
        g, "app", memory_limit=192 * MI, cpu_millis=1000, cpuset_cpus="0", hugepages=sizes
    )
    cri.start_container(app)
    cri.update_container_resources(app, memory_limit=192 * MI, cpu_millis=1000, cpuset_cpus="0")
    b = cri.run_pod(_uid(902), qos="Burstable", cgroup_driver="systemd")
    web = cri.create_container(b, "web", memory_limit=128 * MI, cpu_millis=250, cpu_limit_millis=0)
    cri.start_container(web)
    be = cri.run_pod(_uid(903), qos="BestEffort")
    batch = cri.create_container(be, "batch")
    cri.start_container(batch)
    for cid in (app, web, batch):
        cri.stop_container(cid)
        cri.remove_container(cid)
    cri.remove_all_pods()


def capture(out: Path, flavors: Sequence[str]) -> int:
    """Record what real containerd sends to a plugin while pods come and go."""
    from tests.e2e.harness import Containerd, E2EPaths

    paths = E2EPaths.from_env()
    if missing := paths.missing():
        raise SystemExit(f"e2e setup missing ({missing[0]}); run hack/e2e-setup.sh as root")
    written = 0
    for flavor in flavors:
        ctrd = Containerd(paths, cast(Any, flavor), f"fz{flavor.replace('.', '')}")
        recorder: Recorder | None = None
        try:
            ctrd.start()
            recorder = Recorder(ctrd.nri_socket)
            deadline = time.monotonic() + 20
            while not any(m == "Synchronize" for m, _ in recorder.calls):
                if time.monotonic() > deadline or recorder.error is not None:
                    raise SystemExit(f"containerd {flavor}: recorder not synchronized")
                time.sleep(0.05)
            _drive(ctrd.cri(), ctrd)
            time.sleep(0.5)
        finally:
            if recorder is not None:
                recorder.close()
            ctrd.close()
        assert recorder is not None
        if recorder.error is not None:
            raise SystemExit(f"recorder failed: {recorder.error!r}")
        stream = bytes(recorder.stream)
        records = [(m, p) for m, p in recorder.calls if m in SELECTOR]
        seeds: dict[str, list[bytes]] = {
            "wire": [bytes([seed]) + stream for seed in (0, 1, 9)],
            "conn": [b"\x00" + stream],
            "plugin": [
                bytes([i])
                + b"".join(
                    bytes([SELECTOR[m]]) + len(p).to_bytes(2, "big") + p
                    for m, p in records
                    if len(p) <= 0xFFFF
                )
                for i in range(len(CONFIGS))
            ],
        }
        seeds["plugin"] += [
            b"\x00" + bytes([SELECTOR[m]]) + len(p).to_bytes(2, "big") + p
            for m, p in records
            if len(p) <= 0xFFFF
        ]
        written += write_corpus(out, seeds, prefix=f"containerd{flavor}")
        kinds = sorted({m for m, _ in recorder.calls})
        print(
            f"containerd {flavor}: {len(stream)} bytes, {len(recorder.calls)} calls"
            f" ({', '.join(kinds)})"
        )
    return written


# -- statistics shared by the engines -------------------------------------------------


@dataclass
class Stats:
    target: str
    total: int
    report_every: int
    count: int = 0
    started: float = 0.0
    slowest: float = 0.0
    slowest_input: bytes = b""
    # where the slowest input is kept, for `repro` and profiling
    slowest_path: Path | None = None

    def max_rss_mib(self) -> float:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def line(self) -> str:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        return (
            f"fuzz {self.target}: {self.count} inputs in {elapsed:.1f} s,"
            f" {self.count / elapsed:.0f} inputs/s, max RSS {self.max_rss_mib():.0f} MiB,"
            f" slowest input {self.slowest * 1000:.1f} ms ({len(self.slowest_input)} bytes)"
        )

    def wrap(self, target: Callable[[bytes], None]) -> Callable[[bytes], None]:
        def run(data: bytes) -> None:
            if not self.started:
                self.started = time.monotonic()
            t0 = time.perf_counter()
            try:
                target(data)
            finally:
                spent = time.perf_counter() - t0
                self.count += 1
                if spent > self.slowest:
                    self.slowest, self.slowest_input = spent, data
                if self.count % self.report_every == 0 or self.count == self.total:
                    print(self.line(), file=sys.stderr, flush=True)
                    if self.slowest_path is not None:
                        self.slowest_path.write_bytes(self.slowest_input)

        return run


# -- engine: atheris ----------------------------------------------------------------------


def run_atheris(target: str, runs: int, seeds: list[bytes], work: Path, args: Any) -> int:
    if os.environ.get(INSTRUMENT_ENV) != "1":
        # Start again so that nri_plugin is imported instrumented (only ours:
        # instrumenting the standard library and protobuf costs 3x the speed).
        os.environ[INSTRUMENT_ENV] = "1"
        os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])
    import atheris

    seed_dir = work / "seeds" / target
    found_dir = work / "found" / target
    crash_dir = work / "crashes"
    for d in (seed_dir, found_dir, crash_dir):
        d.mkdir(parents=True, exist_ok=True)
    for seed in seeds:
        (seed_dir / hashlib.sha1(seed).hexdigest()).write_bytes(seed)
    stats = Stats(target, runs, args.report_every, slowest_path=work / f"slowest-{target}")
    fn = stats.wrap(TARGETS[target])
    libfuzzer = [
        sys.argv[0],
        f"-runs={runs}",
        f"-timeout={args.timeout}",
        f"-rss_limit_mb={args.rss_limit_mb}",
        f"-max_len={args.max_len}",
        f"-artifact_prefix={crash_dir}/{target}-",
        "-print_final_stats=1",
        f"-seed={args.seed}",
        str(found_dir),
        str(seed_dir),
    ]
    atheris.Setup(libfuzzer, fn)
    atheris.Fuzz()
    return 0


# -- engine: our own mutator ----------------------------------------------------------------

_INTERESTING_U32 = (0, 1, 9, 10, 11, 4095, 4096, 4097, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF)
_INTERESTING_VARINTS = (
    0,
    1,
    127,
    128,
    (1 << 31) - 1,
    1 << 31,
    (1 << 63) - 1,
    1 << 63,
    (1 << 64) - 1,
)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def mutate(data: bytes, rng: random.Random, corpus: Sequence[bytes]) -> bytes:
    """1-8 random edits: bit flips, bytes, ranges, splices, interesting lengths and varints."""
    buf = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        op = rng.randrange(9)
        pos = rng.randrange(len(buf) + 1)
        if op == 0 and buf:
            i = rng.randrange(len(buf))
            buf[i] ^= 1 << rng.randrange(8)
        elif op == 1 and buf:
            buf[rng.randrange(len(buf))] = rng.randrange(256)
        elif op == 2:
            buf[pos:pos] = rng.randbytes(rng.randint(1, 16))
        elif op == 3 and buf:
            end = min(len(buf), pos + rng.randint(1, 64))
            del buf[pos:end]
        elif op == 4 and buf:
            start = rng.randrange(len(buf))
            piece = buf[start : start + rng.randint(1, 256)]
            buf[pos:pos] = piece
        elif op == 5:
            other = rng.choice(corpus)
            if other:
                start = rng.randrange(len(other))
                buf[pos:] = other[start : start + rng.randint(1, len(other))]
        elif op == 6 and len(buf) >= 4:
            i = rng.randrange(len(buf) - 3)
            buf[i : i + 4] = struct.pack(">I", rng.choice(_INTERESTING_U32))
        elif op == 7 and buf:
            i = rng.randrange(len(buf))
            j = i
            while j < len(buf) and buf[j] & 0x80:
                j += 1
            buf[i : j + 1] = _varint(rng.choice(_INTERESTING_VARINTS))
        elif op == 8 and buf:
            # a length-delimited field announcing more (or less) than is there
            i = rng.randrange(len(buf))
            buf[i] = rng.choice((0, 1, 0x7F, 0xFF))
    return bytes(buf)


class _Hang(Exception):
    pass


def _alarm(signum: int, frame: FrameType | None) -> None:
    raise _Hang()


def run_mutate(target: str, runs: int, seeds: list[bytes], work: Path, args: Any) -> int:
    crash_dir = work / "crashes"
    crash_dir.mkdir(parents=True, exist_ok=True)
    fn = TARGETS[target]
    stats = Stats(target, runs, args.report_every, slowest_path=work / f"slowest-{target}")
    wrapped = stats.wrap(fn)
    rng = random.Random(args.seed)
    rss_limit = args.rss_limit_mb * 1024
    crashes = 0
    signal.signal(signal.SIGALRM, _alarm)
    for i in range(runs):
        data = seeds[i] if i < len(seeds) else mutate(rng.choice(seeds), rng, seeds)
        data = data[: args.max_len]
        signal.setitimer(signal.ITIMER_REAL, args.timeout)
        try:
            wrapped(data)
        except _Hang:
            crashes += _save(crash_dir, target, "timeout", data, f"over {args.timeout} s")
        except Exception:
            crashes += _save(crash_dir, target, "crash", data, traceback.format_exc())
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        if resource.getrusage(resource.RUSAGE_SELF).ru_maxrss > rss_limit:
            crashes += _save(crash_dir, target, "oom", data, f"RSS above {args.rss_limit_mb} MiB")
            break
        if crashes >= args.max_crashes:
            break
    print(stats.line(), file=sys.stderr)
    print(f"fuzz {target}: {crashes} crashes", file=sys.stderr)
    return 1 if crashes else 0


def _save(directory: Path, target: str, kind: str, data: bytes, detail: str) -> int:
    path = directory / f"{target}-{kind}-{hashlib.sha1(data).hexdigest()}"
    path.write_bytes(data)
    print(f"== {kind} in {target}, input saved as {path}\n{detail}", file=sys.stderr)
    return 1


# -- command line -----------------------------------------------------------------------------


def _have_atheris() -> bool:
    try:
        import atheris  # noqa: F401
    except ImportError:
        return False
    return True


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hack/fuzz.py", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="fuzz one target")
    run.add_argument("--target", choices=sorted(TARGETS), required=True)
    run.add_argument("--runs", type=int, default=1_000_000)
    run.add_argument("--engine", choices=("auto", "atheris", "mutate"), default="auto")
    run.add_argument("--corpus", type=Path, default=None, help="extra seeds (capture's output)")
    run.add_argument("--work", type=Path, default=Path("/tmp/nmm-fuzz"))
    run.add_argument("--timeout", type=int, default=10, help="seconds per input (a hang)")
    run.add_argument("--rss-limit-mb", type=int, default=2048)
    run.add_argument("--max-len", type=int, default=1 << 20)
    run.add_argument("--seed", type=int, default=1)
    run.add_argument("--report-every", type=int, default=100_000)
    run.add_argument("--max-crashes", type=int, default=20)
    corpus = sub.add_parser("corpus", help="write the synthetic seed corpus")
    corpus.add_argument("--out", type=Path, required=True)
    cap = sub.add_parser("capture", help="record real containerd traffic (root, e2e setup)")
    cap.add_argument("--out", type=Path, required=True)
    cap.add_argument("--flavor", action="append", choices=("2.x", "1.7"))
    repro = sub.add_parser("repro", help="run saved inputs once and show what fails")
    repro.add_argument("--target", choices=sorted(TARGETS), required=True)
    repro.add_argument("files", nargs="+", type=Path)
    args = parser.parse_args(argv)

    if args.command == "corpus":
        n = write_corpus(args.out, synthetic_corpus())
        print(f"{n} seeds written under {args.out}")
        return 0
    if args.command == "capture":
        n = capture(args.out, args.flavor or ["2.x", "1.7"])
        print(f"{n} seeds written under {args.out}")
        return 0
    if args.command == "repro":
        failed = 0
        for path in args.files:
            try:
                TARGETS[args.target](path.read_bytes())
            except Exception:
                failed += 1
                print(f"== {path}: FAILS\n{traceback.format_exc()}")
            else:
                print(f"== {path}: ok")
        return 1 if failed else 0

    seeds = load_corpus(args.corpus, args.target)
    engine = args.engine
    if engine == "auto":
        engine = "atheris" if _have_atheris() else "mutate"
    print(
        f"fuzz {args.target}: engine {engine}, {args.runs} runs, {len(seeds)} seeds,"
        f" work dir {args.work}",
        file=sys.stderr,
    )
    if engine == "atheris":
        return run_atheris(args.target, args.runs, seeds, args.work, args)
    return run_mutate(args.target, args.runs, seeds, args.work, args)


if __name__ == "__main__":
    sys.exit(main())

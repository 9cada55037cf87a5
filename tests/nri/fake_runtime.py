"""A small fake NRI runtime for driver/stub tests, built on our own codecs.

It plays containerd's side of one plugin socket: ttrpc client on conn 1
(calls the plugin), ttrpc server on conn 2 (RegisterPlugin,
UpdateContainers). It also checks every frame the plugin sends against the
Go reader's constraints (containerd/nri ``mux.go`` ``conn.Read``, containerd/ttrpc
``channel.go`` ``recv``).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, TypeVar

from google.protobuf.message import Message

from nri_plugin.nri import mux, ttrpc
from nri_plugin.nri.gen import nri_pb2 as api
from nri_plugin.nri.mux import PLUGIN_SERVICE_CONN, RUNTIME_SERVICE_CONN
from nri_plugin.nri.stub import PLUGIN_SERVICE, RUNTIME_SERVICE

M = TypeVar("M", bound=Message)


class GoReaderCheck:
    """Records violations of what the Go mux/ttrpc reader can digest."""

    def __init__(self) -> None:
        self.remaining: dict[int, int] = {}
        self.violations: list[str] = []
        self.frames = 0

    def frame(self, frame: mux.Frame) -> None:
        self.frames += 1
        size = len(frame.payload)
        left = self.remaining.get(frame.conn_id, 0)
        if size == 0:
            self.violations.append("zero-length frame")
        elif left == 0:  # this frame starts a ttrpc message
            if size < ttrpc.HEADER.size:
                self.violations.append(f"message-starting frame of {size} bytes splits the header")
                return
            if size > mux.GO_READ_BUFFER:
                self.violations.append(f"message-starting frame of {size} bytes > 4096")
            length = int.from_bytes(frame.payload[:4], "big")
            left = ttrpc.HEADER.size + length - size
            if left < 0:
                self.violations.append("frame carries bytes of two messages")
                left = 0
            self.remaining[frame.conn_id] = left
        elif size > left:
            self.violations.append("continuation frame runs past its message")
            self.remaining[frame.conn_id] = 0
        else:
            self.remaining[frame.conn_id] = left - size


@dataclass
class FakeRuntime:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    reject_registration: str = ""
    hold_registration_reply: asyncio.Event | None = None
    failed_updates: list[Any] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.frames = mux.FrameDecoder()
        self.from_plugin_server = ttrpc.MessageReader()  # plugin's answers on conn 1
        self.from_plugin_client = ttrpc.MessageReader()  # plugin's calls on conn 2
        self.streams = ttrpc.ClientStreams()
        self.pending: dict[int, asyncio.Future[ttrpc.ResponseReceived]] = {}
        self.registrations: asyncio.Queue[Any] = asyncio.Queue()
        self.update_requests: list[Any] = []
        self.check = GoReaderCheck()
        self.eof = asyncio.Event()
        self.task = asyncio.get_running_loop().create_task(self._read())
        self._tasks: set[asyncio.Task[None]] = set()

    # -- reading ------------------------------------------------------------

    async def _read(self) -> None:
        try:
            while data := await self.reader.read(65536):
                for frame in self.frames.feed(data):
                    self.check.frame(frame)
                    if frame.conn_id == PLUGIN_SERVICE_CONN:
                        self.from_plugin_server.receive_data(frame.payload)
                        for event in self.from_plugin_server.events():
                            assert isinstance(event, ttrpc.ResponseReceived)
                            self.pending.pop(event.stream_id).set_result(event)
                    elif frame.conn_id == RUNTIME_SERVICE_CONN:
                        self.from_plugin_client.receive_data(frame.payload)
                        for event in self.from_plugin_client.events():
                            assert isinstance(event, ttrpc.RequestReceived)
                            task = asyncio.get_running_loop().create_task(self._serve(event))
                            self._tasks.add(task)
                            task.add_done_callback(self._tasks.discard)
        except (ConnectionError, OSError):
            pass
        finally:
            self.eof.set()
            for future in self.pending.values():
                if not future.done():
                    future.set_exception(ConnectionResetError("plugin closed"))

    async def _serve(self, request: ttrpc.RequestReceived) -> None:
        assert request.service == RUNTIME_SERVICE, request.service
        if request.method == "RegisterPlugin":
            self.registrations.put_nowait(api.RegisterPluginRequest.FromString(request.payload))
            if self.hold_registration_reply is not None:
                await self.hold_registration_reply.wait()
            if self.reject_registration:
                reply = ttrpc.encode_response(
                    request.stream_id,
                    status_code=ttrpc.Code.UNKNOWN,
                    status_message=self.reject_registration,
                )
            else:
                reply = ttrpc.encode_response(request.stream_id)
        elif request.method == "UpdateContainers":
            self.update_requests.append(api.UpdateContainersRequest.FromString(request.payload))
            response = api.UpdateContainersResponse(failed=self.failed_updates)
            reply = ttrpc.encode_response(request.stream_id, response.SerializeToString())
        else:
            reply = ttrpc.encode_response(
                request.stream_id,
                status_code=ttrpc.Code.UNIMPLEMENTED,
                status_message=f"method {request.method}",
            )
        self.send(RUNTIME_SERVICE_CONN, reply)

    # -- writing ------------------------------------------------------------

    def send(self, conn_id: int, message: bytes) -> None:
        self.writer.write(mux.encode_message(conn_id, message))

    def send_raw(self, data: bytes) -> None:
        self.writer.write(data)

    async def call(
        self, method: str, request: Message | bytes, *, service: str = PLUGIN_SERVICE
    ) -> ttrpc.ResponseReceived:
        payload = request if isinstance(request, bytes) else request.SerializeToString()
        stream_id = self.streams.next_id()
        future: asyncio.Future[ttrpc.ResponseReceived] = asyncio.get_running_loop().create_future()
        self.pending[stream_id] = future
        self.send(
            PLUGIN_SERVICE_CONN,
            ttrpc.encode_request(stream_id, service, method, payload, timeout_nano=2_000_000_000),
        )
        return await future

    async def call_envelope(self, envelope: bytes) -> ttrpc.ResponseReceived:
        """Send a hand-made Request envelope (possibly malformed) on conn 1."""
        stream_id = self.streams.next_id()
        future: asyncio.Future[ttrpc.ResponseReceived] = asyncio.get_running_loop().create_future()
        self.pending[stream_id] = future
        self.send(
            PLUGIN_SERVICE_CONN,
            ttrpc.encode_message(stream_id, ttrpc.MessageType.REQUEST, envelope),
        )
        return await future

    async def call_ok(self, method: str, request: Message, response_type: type[M]) -> M:
        response = await self.call(method, request)
        assert response.ok, (response.status_code, response.status_message)
        return response_type.FromString(response.payload)

    async def handshake(
        self, pages: list[tuple[list[Any], list[Any]]] | None = None
    ) -> tuple[Any, Any, list[Any]]:
        """Registration, Configure and (paged) Synchronize, as containerd does it."""
        registration = await self.registrations.get()
        configure = await self.call_ok(
            "Configure",
            api.ConfigureRequest(
                runtime_name="containerd",
                runtime_version="v2.1.9",
                registration_timeout=5000,
                request_timeout=2000,
            ),
            api.ConfigureResponse,
        )
        pages = pages or [([], [])]
        answers = []
        for number, (pods, containers) in enumerate(pages):
            answers.append(
                await self.call_ok(
                    "Synchronize",
                    api.SynchronizeRequest(
                        pods=pods, containers=containers, more=number < len(pages) - 1
                    ),
                    api.SynchronizeResponse,
                )
            )
        return registration, configure, answers

    async def close(self) -> None:
        self.writer.close()
        await self.eof.wait()

"""asyncio driver: one NRI socket, serving conn 1 and calling on conn 2.

The driver only reads, feeds the sans-I/O codecs (``mux``, ``ttrpc``),
dispatches and writes. Requests from the runtime (conn 1) each run in their
own task, so a slow handler never blocks reading; the plugin's own calls
(conn 2) wait for their response by stream ID. Bad bytes from the peer close
the connection with a logged reason; they never escape ``run()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import structlog
from google.protobuf.message import Message

from nri_plugin.errors import InputError
from nri_plugin.nri import mux, ttrpc
from nri_plugin.nri.mux import PLUGIN_SERVICE_CONN, RUNTIME_SERVICE_CONN, ProtocolError
from nri_plugin.nri.ttrpc import Code, describe

M = TypeVar("M", bound=Message)

READ_SIZE = 256 * 1024
HANDLER_GRACE = 1.0
"""Seconds in-flight handlers may still run after the connection closed."""


class Logger(Protocol):
    """The structlog calls we use (``structlog.get_logger()`` fits)."""

    def debug(self, event: str, *args: Any, **kw: Any) -> Any: ...
    def info(self, event: str, *args: Any, **kw: Any) -> Any: ...
    def warning(self, event: str, *args: Any, **kw: Any) -> Any: ...
    def error(self, event: str, *args: Any, **kw: Any) -> Any: ...


class RpcError(Exception):
    """A call answered with an error status, or a handler's refusal with a chosen code.

    Raise it from a request handler to answer with ``code`` instead of UNKNOWN.
    """

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return f"rpc error: code = {ttrpc.code_name(self.code)} desc = {self.message}"


def _status_of(exc: Exception) -> tuple[int, str]:
    """The status a request handler's exception is answered with."""
    if isinstance(exc, RpcError):
        return exc.code, exc.message
    return Code.UNKNOWN, describe(exc)


class ConnectionClosedError(ConnectionError):
    """The NRI socket is closed (EOF, protocol error, local close)."""


@dataclass(frozen=True, slots=True)
class Method:
    """A unary method we serve: its request type and an async handler."""

    request_type: type[Message]
    handler: Callable[[Any], Awaitable[Message]]


Services = Mapping[str, Mapping[str, Method]]
"""service name → method name → Method."""


class Connection:
    """One NRI socket: ttrpc server on conn 1, ttrpc client on conn 2.

    Mutated only through ``run``, ``call`` and ``close``.
    """

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        services: Services,
        *,
        logger: Logger | None = None,
        handler_grace: float = HANDLER_GRACE,
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._services = services
        self._log: Logger = logger if logger is not None else structlog.get_logger("nri")
        self._handler_grace = handler_grace
        self._frames = mux.FrameDecoder()
        self._server = ttrpc.MessageReader()
        self._client = ttrpc.MessageReader()
        self._streams = ttrpc.ClientStreams()
        self._pending: dict[int, asyncio.Future[ttrpc.ResponseReceived]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._write_lock = asyncio.Lock()
        self._closed = False
        self._close_reason = ""

    @classmethod
    async def open_unix(cls, path: str, services: Services, **kw: Any) -> Connection:
        """Dial the runtime's NRI socket (external plugin)."""
        reader, writer = await asyncio.open_unix_connection(path, limit=READ_SIZE)
        return cls(reader, writer, services, **kw)

    @classmethod
    async def from_socket(cls, sock: socket.socket, services: Services, **kw: Any) -> Connection:
        """Wrap an already connected socket (pre-launched plugin, tests)."""
        reader, writer = await asyncio.open_unix_connection(sock=sock, limit=READ_SIZE)
        return cls(reader, writer, services, **kw)

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def close_reason(self) -> str:
        """Why the connection closed ("" while open)."""
        return self._close_reason

    def is_handler_task(self, task: asyncio.Task[Any] | None) -> bool:
        """Whether task is serving a runtime request on this connection."""
        return task is not None and task in self._tasks

    # -- reading ---------------------------------------------------------

    async def run(self) -> None:
        """Read and dispatch until EOF, close() or a fatal protocol error."""
        reason = "EOF from runtime"
        try:
            while not self._closed:
                data = await self._reader.read(READ_SIZE)
                if not data:
                    break
                for frame in self._frames.feed(data):
                    self._on_frame(frame)
        except ProtocolError as exc:
            reason = f"protocol error: {exc}"
            self._log.error("nri connection closed on protocol error", reason=str(exc))
        except OSError as exc:
            reason = f"read failed: {describe(exc)}"
        except asyncio.CancelledError:
            self._close(reason="cancelled")
            for task in self._tasks:
                task.cancel()
            raise
        except Exception as exc:  # a bug in dispatch must not take the process down
            reason = f"internal error: {describe(exc)}"
            self._log.error("nri connection failed", reason=reason, exc_info=True)
        self._close(reason)
        await self._drain_handlers()
        with contextlib.suppress(Exception):
            await self._writer.wait_closed()

    def _on_frame(self, frame: mux.Frame) -> None:
        if frame.conn_id == PLUGIN_SERVICE_CONN:
            self._server.receive_data(frame.payload)
            self._drain_events(self._server, self._on_server_event)
        elif frame.conn_id == RUNTIME_SERVICE_CONN:
            self._client.receive_data(frame.payload)
            self._drain_events(self._client, self._on_client_event)
        else:
            # The Go mux drops frames for connections nobody opened; so do we.
            self._log.debug("nri frame for unknown conn dropped", conn_id=frame.conn_id)

    def _drain_events(
        self, reader: ttrpc.MessageReader, on_event: Callable[[ttrpc.Event], None]
    ) -> None:
        while True:
            try:
                event = reader.next_event()
            except ttrpc.MessageError as exc:
                self._on_message_error(reader, exc)
                continue
            if event is None:
                return
            on_event(event)

    def _on_message_error(self, reader: ttrpc.MessageReader, exc: ttrpc.MessageError) -> None:
        self._log.warning("nri bad ttrpc message", reason=str(exc))
        if exc.stream_id == 0:
            return  # no stream to answer on: stream 0 is never a call's
        if reader is self._server and exc.message_type == ttrpc.MessageType.REQUEST:
            data = ttrpc.encode_response(
                exc.stream_id, status_code=exc.code, status_message=str(exc)
            )
            self._spawn(self._send_quietly(PLUGIN_SERVICE_CONN, data))
        elif reader is self._client:
            future = self._pending.get(exc.stream_id)
            if future is not None and not future.done():
                future.set_exception(exc)

    def _on_server_event(self, event: ttrpc.Event) -> None:
        if isinstance(event, ttrpc.RequestReceived):
            # timed from arrival: waiting for the event loop also counts against the deadline
            self._spawn(self._serve(event, time.monotonic()))
        else:
            self._log.debug("nri unexpected message on plugin conn ignored", message=repr(event))

    def _on_client_event(self, event: ttrpc.Event) -> None:
        if isinstance(event, ttrpc.ResponseReceived):
            future = self._pending.get(event.stream_id)
            if future is not None and not future.done():
                future.set_result(event)
            else:
                self._log.debug("nri response for no pending call", stream_id=event.stream_id)
        else:
            self._log.debug("nri unexpected message on runtime conn ignored", message=repr(event))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- serving ---------------------------------------------------------

    async def _serve(self, request: ttrpc.RequestReceived, started: float) -> None:
        payload, code, message = b"", int(Code.OK), ""
        try:
            payload = await self._dispatch(request)
        except (RpcError, InputError) as exc:  # an expected refusal: no traceback
            code, message = _status_of(exc)
            # UNIMPLEMENTED is routine: NRI 0.12 probes its per-event RPCs once.
            log = self._log.info if code == Code.UNIMPLEMENTED else self._log.warning
            log(
                "nri request refused",
                method=request.method,
                code=ttrpc.code_name(code),
                error=message,
            )
        except Exception as exc:  # a handler's exception is its answer to the runtime
            code, message = _status_of(exc)
            self._log.error(
                "nri request failed",
                method=request.method,
                code=ttrpc.code_name(code),
                error=message,
                exc_info=True,
            )
        elapsed = time.monotonic() - started
        if request.timeout_nano and elapsed * 1e9 > request.timeout_nano:
            self._log.warning(
                "nri answer later than the runtime's deadline",
                method=request.method,
                elapsed_s=round(elapsed, 3),
                timeout_s=request.timeout_nano / 1e9,
            )
        try:
            data = ttrpc.encode_response(
                request.stream_id, payload, status_code=code, status_message=message
            )
        except ttrpc.OversizedMessageError as exc:
            data = ttrpc.encode_response(
                request.stream_id,
                status_code=Code.RESOURCE_EXHAUSTED,
                status_message=str(exc),
            )
        await self._send_quietly(PLUGIN_SERVICE_CONN, data)
        # arrival to answer written: what the runtime's request timeout measures (fault injection
        # reads it to report the slowest CreateContainer answer)
        self._log.debug(
            "nri request served",
            method=request.method,
            duration_ms=round((time.monotonic() - started) * 1000, 3),
        )

    async def _dispatch(self, request: ttrpc.RequestReceived) -> bytes:
        methods = self._services.get(request.service)
        if methods is None:
            raise RpcError(Code.UNIMPLEMENTED, f"service {request.service}")
        method = methods.get(request.method)
        if method is None:
            raise RpcError(Code.UNIMPLEMENTED, f"method {request.method}")
        try:
            message = method.request_type.FromString(request.payload)
        except Exception as exc:  # undecodable payload, as the Go server answers it
            raise RpcError(
                Code.INTERNAL, f"cannot decode {request.method} request: {describe(exc)}"
            ) from exc
        response = await method.handler(message)
        return response.SerializeToString()

    # -- writing and calling ---------------------------------------------

    async def _send(self, conn_id: int, message: bytes) -> None:
        data = mux.encode_message(conn_id, message)
        # One write per message under the lock: frames of two messages never interleave.
        async with self._write_lock:
            if self._closed:
                raise ConnectionClosedError(self._close_reason)
            try:
                self._writer.write(data)
                await self._writer.drain()
            except (OSError, RuntimeError) as exc:
                self._close(f"write failed: {describe(exc)}")
                raise ConnectionClosedError(self._close_reason) from exc

    async def _send_quietly(self, conn_id: int, message: bytes) -> None:
        try:
            await self._send(conn_id, message)
        except ConnectionClosedError:
            self._log.debug("nri answer dropped, connection closed", reason=self._close_reason)

    async def call(
        self, service: str, method: str, request: Message, response_type: type[M], *, timeout: float
    ) -> M:
        """Call a runtime method on conn 2 and decode its response.

        Raises RpcError for an error status (DEADLINE_EXCEEDED when no answer
        comes within timeout seconds, INTERNAL for an undecodable answer) and
        ConnectionClosedError; nothing else.
        """
        if self._closed:
            raise ConnectionClosedError(self._close_reason)
        stream_id = self._streams.next_id()
        future: asyncio.Future[ttrpc.ResponseReceived] = asyncio.get_running_loop().create_future()
        self._pending[stream_id] = future
        data = ttrpc.encode_request(
            stream_id,
            service,
            method,
            request.SerializeToString(),
            timeout_nano=int(timeout * 1e9),
        )
        try:
            async with asyncio.timeout(timeout):
                await self._send(RUNTIME_SERVICE_CONN, data)
                response = await future
        except TimeoutError:
            raise RpcError(
                Code.DEADLINE_EXCEEDED, f"{method}: no response within {timeout:g} s"
            ) from None
        except ProtocolError as exc:  # a malformed Response envelope for this stream
            raise RpcError(Code.INTERNAL, f"{method}: {exc}") from exc
        finally:
            self._pending.pop(stream_id, None)
        if not response.ok:
            raise RpcError(response.status_code, response.status_message)
        try:
            return response_type.FromString(response.payload)
        except Exception as exc:  # the runtime's bytes, not our bug
            raise RpcError(
                Code.INTERNAL, f"cannot decode {method} response: {describe(exc)}"
            ) from exc

    # -- closing ---------------------------------------------------------

    def close(self, reason: str = "closed by plugin") -> None:
        """Close the socket; run() returns and pending calls fail."""
        self._close(reason)

    def _close(self, reason: str) -> None:
        if self._closed:
            return
        self._closed = True
        self._close_reason = reason
        with contextlib.suppress(Exception):
            self._writer.close()
        error = ConnectionClosedError(reason)
        for future in self._pending.values():
            if not future.done():
                future.set_exception(error)

    async def _drain_handlers(self) -> None:
        """Let in-flight handlers finish (their answers are dropped), briefly."""
        tasks = set(self._tasks)
        if not tasks:
            return
        _, late = await asyncio.wait(tasks, timeout=self._handler_grace)
        for task in late:
            task.cancel()
        if late:
            self._log.warning("nri handlers cancelled after close", count=len(late))
            await asyncio.wait(late)

"""The NRI plugin stub: a handler object's methods become an NRI plugin.

The handler implements only the events it cares about; which methods exist
decides the event subscription. The stub owns the socket, registration,
Synchronize paging, event routing (StateChange and NRI 0.12's dedicated
RPCs reach the same methods) and reconnection. Handler methods may be plain
functions or coroutine functions; their arguments are the generated
protobuf messages of ``nri_plugin.nri.gen.nri_pb2``.

Handler methods (all optional)::

    configure(config: str, runtime_name: str, runtime_version: str) -> None
    synchronize(pods: list[PodSandbox], containers: list[Container]) -> list[ContainerUpdate]
    create_container(pod, container) -> ContainerAdjustment | None   # raise to refuse
    update_container(pod, container, linux_resources) -> list[ContainerUpdate]
    stop_container(pod, container) -> list[ContainerUpdate]
    run_pod_sandbox(pod), stop_pod_sandbox(pod), remove_pod_sandbox(pod) -> None
    post_create_container(pod, container), start_container(pod, container),
    post_start_container(pod, container), post_update_container(pod, container),
    remove_container(pod, container) -> None
    on_disconnect() -> None   # the runtime connection was lost (not an NRI event)

An exception from a handler answers the runtime with status UNKNOWN and the
exception's message (raise ``RpcError`` for another code). For
create_container that refusal fails the container's creation. InputError and
RpcError are logged as refusals; any other exception also with its traceback.
create_container may also return a whole CreateContainerResponse (to add
updates of other containers or evictions).

on_disconnect is called once per opened connection when it ends (EOF,
protocol error, failed registration, stop()), after in-flight handlers have
finished or been cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import re
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog
from google.protobuf.message import Message

from nri_plugin.errors import ConfigError
from nri_plugin.nri.connection import (
    Connection,
    ConnectionClosedError,
    Logger,
    Method,
    RpcError,
    Services,
)
from nri_plugin.nri.gen import nri_pb2 as api
from nri_plugin.nri.ttrpc import describe

PLUGIN_SERVICE = "nri.pkg.api.v1alpha1.Plugin"
RUNTIME_SERVICE = "nri.pkg.api.v1alpha1.Runtime"
DEFAULT_SOCKET_PATH = "/var/run/nri/nri.sock"

INITIAL_BACKOFF = 0.1
"""First reconnect delay: a restarted runtime is usually back within a second."""

REGISTRATION_TIMEOUT = 5.0
"""The runtime's default plugin_registration_timeout."""

UPDATE_CONTAINERS_TIMEOUT = 10.0
"""UpdateContainers waits for the runtime's lock, then for cgroup writes."""

_PLUGIN_NAME = re.compile(r"[A-Za-z0-9_.+-]+")
_PLUGIN_IDX = re.compile(r"[0-9]{2}")
_MAX_UNIX_PATH = 107  # sun_path is 108 bytes including the terminating NUL

# Handler method for each event NRI can deliver through StateChange or the
# dedicated NRI 0.12 RPCs, with the RPC name and whether it carries a container.
_POD_EVENTS: dict[int, tuple[str, str]] = {
    api.RUN_POD_SANDBOX: ("run_pod_sandbox", "RunPodSandbox"),
    api.STOP_POD_SANDBOX: ("stop_pod_sandbox", "StopPodSandbox"),
    api.REMOVE_POD_SANDBOX: ("remove_pod_sandbox", "RemovePodSandbox"),
}
_CONTAINER_EVENTS: dict[int, tuple[str, str]] = {
    api.POST_CREATE_CONTAINER: ("post_create_container", "PostCreateContainer"),
    api.START_CONTAINER: ("start_container", "StartContainer"),
    api.POST_START_CONTAINER: ("post_start_container", "PostStartContainer"),
    api.POST_UPDATE_CONTAINER: ("post_update_container", "PostUpdateContainer"),
    api.REMOVE_CONTAINER: ("remove_container", "RemoveContainer"),
}
# Events answered with data; they have no StateChange form.
_REQUEST_EVENTS: dict[int, str] = {
    api.CREATE_CONTAINER: "create_container",
    api.UPDATE_CONTAINER: "update_container",
    api.STOP_CONTAINER: "stop_container",
}

_EVENT_METHODS: dict[int, str] = {
    **{event: names[0] for event, names in _POD_EVENTS.items()},
    **{event: names[0] for event, names in _CONTAINER_EVENTS.items()},
    **_REQUEST_EVENTS,
}

# Request/response types of the dedicated NRI 0.12 event RPCs.
_EVENT_RPC_TYPES: dict[str, tuple[type[Message], type[Message]]] = {
    "RunPodSandbox": (api.RunPodSandboxRequest, api.RunPodSandboxResponse),
    "StopPodSandbox": (api.StopPodSandboxRequest, api.StopPodSandboxResponse),
    "RemovePodSandbox": (api.RemovePodSandboxRequest, api.RemovePodSandboxResponse),
    "PostCreateContainer": (api.PostCreateContainerRequest, api.PostCreateContainerResponse),
    "StartContainer": (api.StartContainerRequest, api.StartContainerResponse),
    "PostStartContainer": (api.PostStartContainerRequest, api.PostStartContainerResponse),
    "PostUpdateContainer": (api.PostUpdateContainerRequest, api.PostUpdateContainerResponse),
    "RemoveContainer": (api.RemoveContainerRequest, api.RemoveContainerResponse),
}


def _implements(handler: object, name: str) -> bool:
    return callable(getattr(handler, name, None))


def event_mask(handler: object) -> int:
    """ConfigureResponse.events for handler: one bit per implemented event method.

    Never sets bits 11-13 (UpdatePodSandbox, PostUpdatePodSandbox,
    ValidateContainerAdjustment), which NRI <= 0.9 runtimes reject.
    """
    mask = 0
    for event, name in _EVENT_METHODS.items():
        if _implements(handler, name):
            mask |= 1 << (event - 1)
    return mask


def prelaunched_identity(environ: Mapping[str, str], name: str, idx: str) -> tuple[str, str]:
    """Plugin name and index given by the runtime to a plugin it launched.

    containerd <= 1.7.6 (NRI 0.3) passes the whole "90-name" as the name.
    """
    env_name = environ.get("NRI_PLUGIN_NAME", "")
    env_idx = environ.get("NRI_PLUGIN_IDX", "")
    if env_idx and env_name.startswith(env_idx + "-"):
        env_name = env_name[len(env_idx) + 1 :]
    elif not env_idx and (m := re.fullmatch(r"([0-9]{2})-(.+)", env_name)):
        env_idx, env_name = m.group(1), m.group(2)
    return env_name or name, env_idx or idx


def check_identity(plugin_name: str, plugin_idx: str, socket_path: str) -> None:
    """Refuse a plugin name, index or socket path the runtime would refuse (ConfigError)."""
    if not _PLUGIN_NAME.fullmatch(plugin_name):
        raise ConfigError(
            f"NRI plugin name {plugin_name!r} must be non-empty and use only [A-Za-z0-9_.+-]"
        )
    if not _PLUGIN_IDX.fullmatch(plugin_idx):
        raise ConfigError(f"NRI plugin index {plugin_idx!r} must be exactly two digits 00-99")
    if len(os.fsencode(socket_path)) > _MAX_UNIX_PATH:
        raise ConfigError(f"NRI socket path {socket_path!r} is longer than {_MAX_UNIX_PATH} bytes")


@dataclass
class _Session:
    """What one connection has gone through; replaced on every reconnect."""

    connection: Connection
    registered: bool = False
    configured: bool = False
    synchronized: bool = False
    sync_pods: list[Any] = field(default_factory=list)
    sync_containers: list[Any] = field(default_factory=list)
    sync_pages: int = 0


class Stub:
    """Connects a handler object to the runtime as NRI plugin ``<idx>-<name>``."""

    def __init__(
        self,
        handler: object,
        *,
        plugin_name: str = "memory-manager",
        plugin_idx: str = "90",
        socket_path: str = DEFAULT_SOCKET_PATH,
        logger: Logger | None = None,
        reconnect: bool = True,
        max_backoff: float = 5.0,
    ) -> None:
        check_identity(plugin_name, plugin_idx, socket_path)
        if not max_backoff >= INITIAL_BACKOFF:
            raise ConfigError(f"max_backoff {max_backoff} must be at least {INITIAL_BACKOFF} s")
        self._mask = event_mask(handler)
        if self._mask == 0:
            # 0 would subscribe to everything, validation included.
            raise TypeError(
                f"NRI handler {type(handler).__name__} implements no event method "
                f"(one of {', '.join(sorted(_EVENT_METHODS.values()))})"
            )
        self._handler = handler
        self._name = plugin_name
        self._idx = plugin_idx
        self._socket_path = socket_path
        self._log: Logger = logger if logger is not None else structlog.get_logger("nri")
        self._reconnect = reconnect
        self._max_backoff = max_backoff
        self._services = self._build_services()
        self._session: _Session | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._stopping = False
        self._running = False

    # -- public ------------------------------------------------------------

    @property
    def events(self) -> int:
        """The event mask sent in ConfigureResponse."""
        return self._mask

    @property
    def connected(self) -> bool:
        """Registered, configured and synchronized, and the socket is open."""
        s = self._session
        return (
            s is not None
            and s.registered
            and s.configured
            and s.synchronized
            and not s.connection.closed
        )

    async def run(self) -> None:
        """Serve the runtime until stop().

        Pre-launched (NRI_PLUGIN_SOCKET set): use that fd and return on EOF.
        External: dial socket_path and, with reconnect, dial again with
        capped exponential backoff whenever the connection is lost, each time
        registering and synchronizing anew. Without reconnect a failed dial
        raises OSError and a lost connection returns.
        """
        if self._running:
            raise RuntimeError("Stub.run() is already running")
        self._running = True
        self._loop = asyncio.get_running_loop()
        self._stop_event = asyncio.Event()
        try:
            if self._stopping:
                return
            fd_text = os.environ.get("NRI_PLUGIN_SOCKET")
            if fd_text is not None:
                await self._run_prelaunched(fd_text)
            else:
                await self._run_external()
        finally:
            self._running = False
            self._loop = None

    def stop(self) -> None:
        """Close the connection and make run() return (safe from signal handlers/threads)."""
        self._stopping = True
        loop = self._loop
        if loop is None:
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._stop_now()
        else:
            loop.call_soon_threadsafe(self._stop_now)

    async def update_containers(
        self,
        updates: Sequence[Any],
        *,
        timeout: float = UPDATE_CONTAINERS_TIMEOUT,
    ) -> list[Any]:
        """Send unsolicited container updates (UpdateContainers on conn 2).

        Returns the updates the runtime reports as failed. Raises RpcError
        when the runtime answers with an error (containerd then drops the
        list: treat it as "some failed") and ConnectionClosedError when not
        connected.

        Never await this from inside a handler method: the runtime holds its
        lock until the handler answers and UpdateContainers needs that lock,
        so the call deadlocks until the request timeout drops the plugin.
        Start it in a separate task instead; it then runs after the answer.
        """
        session = self._session
        if session is None or not self.connected:
            raise ConnectionClosedError("not connected to the NRI runtime")
        conn = session.connection
        if conn.is_handler_task(asyncio.current_task()):
            raise RuntimeError(
                "update_containers awaited inside an NRI handler would deadlock the runtime"
            )
        response = await conn.call(
            RUNTIME_SERVICE,
            "UpdateContainers",
            api.UpdateContainersRequest(update=list(updates)),
            api.UpdateContainersResponse,
            timeout=timeout,
        )
        return list(response.failed)

    # -- connection lifecycle -------------------------------------------------

    def _stop_now(self) -> None:
        if self._stop_event is not None:
            self._stop_event.set()
        if self._session is not None:
            self._session.connection.close("plugin stopping")

    async def _run_prelaunched(self, fd_text: str) -> None:
        try:
            fd = int(fd_text)
        except ValueError:
            raise ConfigError(
                f"NRI_PLUGIN_SOCKET={fd_text!r} is not a file descriptor number"
            ) from None
        try:
            sock = socket.socket(fileno=fd)
        except OSError as exc:
            raise ConfigError(
                f"NRI_PLUGIN_SOCKET={fd_text!r} is not a usable socket: {describe(exc)}"
            ) from exc
        name, idx = prelaunched_identity(os.environ, self._name, self._idx)
        self._log.info("nri pre-launched plugin", plugin=f"{idx}-{name}", fd=fd)
        try:
            conn = await Connection.from_socket(sock, self._services, logger=self._log)
        except OSError:
            sock.close()
            raise
        await self._serve(conn, name, idx)

    async def _run_external(self) -> None:
        delay = INITIAL_BACKOFF
        failures = 0
        while not self._stopping:
            try:
                conn = await Connection.open_unix(
                    self._socket_path, self._services, logger=self._log
                )
            except OSError as exc:
                if not self._reconnect:
                    raise
                failures += 1
                # Loud once, then quiet: the runtime may be down for a while.
                log = self._log.warning if failures == 1 else self._log.debug
                log(
                    "nri cannot connect, retrying",
                    socket=self._socket_path,
                    error=describe(exc),
                    retry_in_s=delay,
                )
                await self._sleep(delay)
                delay = min(delay * 2, self._max_backoff)
                continue
            failures = 0
            if await self._serve(conn, self._name, self._idx):
                delay = INITIAL_BACKOFF
            if not self._reconnect or self._stopping:
                return
            self._log.info("nri reconnecting", retry_in_s=delay)
            await self._sleep(delay)
            delay = min(delay * 2, self._max_backoff)

    async def _sleep(self, delay: float) -> None:
        assert self._stop_event is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop_event.wait(), delay)

    async def _serve(self, conn: Connection, name: str, idx: str) -> bool:
        """Register on conn and serve it until it closes; True if it got synchronized."""
        session = _Session(conn)
        self._session = session
        if self._stopping:
            conn.close("plugin stopping")
        reader = asyncio.get_running_loop().create_task(conn.run())
        try:
            try:
                await conn.call(
                    RUNTIME_SERVICE,
                    "RegisterPlugin",
                    api.RegisterPluginRequest(plugin_name=name, plugin_idx=idx),
                    api.Empty,
                    timeout=REGISTRATION_TIMEOUT,
                )
            except (RpcError, ConnectionClosedError) as exc:
                if not conn.closed:
                    self._log.error(
                        "nri registration failed", plugin=f"{idx}-{name}", error=str(exc)
                    )
                conn.close(f"registration failed: {exc}")
            else:
                session.registered = True
                self._log.info("nri registered", plugin=f"{idx}-{name}", events=hex(self._mask))
            await reader
        finally:
            if not reader.done():
                reader.cancel()
                await asyncio.gather(reader, return_exceptions=True)
            self._log.info(
                "nri disconnected",
                reason=conn.close_reason,
                was_synchronized=session.synchronized,
            )
            self._session = None
            await self._notify_disconnect()
        return session.synchronized

    async def _notify_disconnect(self) -> None:
        try:
            await self._call("on_disconnect")
        except Exception:  # a failing callback must not stop reconnection
            self._log.error("nri on_disconnect handler failed", exc_info=True)

    # -- request handling ----------------------------------------------------

    async def _call(self, name: str, *args: Any) -> Any:
        fn = getattr(self._handler, name, None)
        if fn is None:
            return None
        result = fn(*args)
        if inspect.isawaitable(result):
            result = await result
        return result

    def _current(self) -> _Session:
        # Requests are only dispatched by the connection of the live session.
        assert self._session is not None
        return self._session

    def _build_services(self) -> Services:
        methods: dict[str, Method] = {
            "Configure": Method(api.ConfigureRequest, self._configure),
            "Synchronize": Method(api.SynchronizeRequest, self._synchronize),
            "Shutdown": Method(api.Empty, self._shutdown),
            "CreateContainer": Method(api.CreateContainerRequest, self._create_container),
            "UpdateContainer": Method(api.UpdateContainerRequest, self._update_container),
            "StopContainer": Method(api.StopContainerRequest, self._stop_container),
            "StateChange": Method(api.StateChangeEvent, self._state_change),
        }
        # Dedicated NRI 0.12 RPCs exist only for implemented methods: the
        # UNIMPLEMENTED answer makes the runtime fall back to StateChange.
        for handler_name, rpc in (*_POD_EVENTS.values(), *_CONTAINER_EVENTS.values()):
            if _implements(self._handler, handler_name):
                request_type, response_type = _EVENT_RPC_TYPES[rpc]
                methods[rpc] = Method(request_type, self._event_rpc(handler_name, response_type))
        return {PLUGIN_SERVICE: methods}

    async def _configure(self, request: Any) -> Message:
        session = self._current()
        self._log.info(
            "nri configure",
            runtime_name=request.runtime_name,
            runtime_version=request.runtime_version,
            nri_version=request.NRI_version or None,
            registration_timeout_ms=request.registration_timeout or None,
            request_timeout_ms=request.request_timeout or None,
            config_bytes=len(request.config),
        )
        await self._call("configure", request.config, request.runtime_name, request.runtime_version)
        session.configured = True
        session.sync_pods.clear()
        session.sync_containers.clear()
        session.sync_pages = 0
        return api.ConfigureResponse(events=self._mask)

    async def _synchronize(self, request: Any) -> Message:
        session = self._current()
        session.sync_pods.extend(request.pods)
        session.sync_containers.extend(request.containers)
        session.sync_pages += 1
        if request.more:
            # Only the last page may carry updates.
            return api.SynchronizeResponse(more=True)
        pods, containers = session.sync_pods, session.sync_containers
        pages = session.sync_pages
        session.sync_pods, session.sync_containers, session.sync_pages = [], [], 0
        updates = await self._call("synchronize", pods, containers)
        updates = list(updates or ())
        session.synchronized = True
        self._log.info(
            "nri synchronized",
            pods=len(pods),
            containers=len(containers),
            pages=pages,
            updates=len(updates),
        )
        return api.SynchronizeResponse(update=updates, more=False)

    async def _shutdown(self, request: Any) -> Message:
        # Declared by NRI but never sent; socket EOF is the real shutdown.
        return api.Empty()

    async def _create_container(self, request: Any) -> Message:
        result = await self._call("create_container", request.pod, request.container)
        if result is None:
            return api.CreateContainerResponse()
        if isinstance(result, api.CreateContainerResponse):
            return result
        return api.CreateContainerResponse(adjust=result)

    async def _update_container(self, request: Any) -> Message:
        updates = await self._call(
            "update_container", request.pod, request.container, request.linux_resources
        )
        return api.UpdateContainerResponse(update=list(updates or ()))

    async def _stop_container(self, request: Any) -> Message:
        updates = await self._call("stop_container", request.pod, request.container)
        return api.StopContainerResponse(update=list(updates or ()))

    async def _state_change(self, request: Any) -> Message:
        event = request.event
        if event in _POD_EVENTS:
            await self._call(_POD_EVENTS[event][0], request.pod)
        elif event in _CONTAINER_EVENTS:
            await self._call(_CONTAINER_EVENTS[event][0], request.pod, request.container)
        else:
            # Unknown or request-type events: nothing to route, still answer.
            self._log.debug("nri state change ignored", nri_event=event)
        return api.Empty()

    def _event_rpc(self, handler_name: str, response_type: type[Message]) -> Callable[[Any], Any]:
        with_container = handler_name in {names[0] for names in _CONTAINER_EVENTS.values()}

        async def rpc(request: Any) -> Message:
            if with_container:
                await self._call(handler_name, request.pod, request.container)
            else:
                await self._call(handler_name, request.pod)
            return response_type()

        return rpc

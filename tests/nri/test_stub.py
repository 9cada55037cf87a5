"""The stub and its asyncio driver against a fake runtime over real sockets."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import pytest

from nri_plugin.errors import ConfigError
from nri_plugin.nri import Code, ConnectionClosedError, RpcError, Stub, event_mask
from nri_plugin.nri.connection import Connection
from nri_plugin.nri.gen import nri_pb2 as api
from nri_plugin.nri.stub import PLUGIN_SERVICE, RUNTIME_SERVICE, prelaunched_identity

from .fake_runtime import FakeRuntime


class ListLogger:
    """Records structlog-style calls."""

    def __init__(self) -> None:
        self.records: list[tuple[str, str, dict[str, Any]]] = []

    def _add(self, level: str, event: str, **kw: Any) -> None:
        self.records.append((level, event, kw))

    def debug(self, event: str, *args: Any, **kw: Any) -> None:
        self._add("debug", event, **kw)

    def info(self, event: str, *args: Any, **kw: Any) -> None:
        self._add("info", event, **kw)

    def warning(self, event: str, *args: Any, **kw: Any) -> None:
        self._add("warning", event, **kw)

    def error(self, event: str, *args: Any, **kw: Any) -> None:
        self._add("error", event, **kw)

    def events(self) -> list[str]:
        return [event for _, event, _ in self.records]

    def find(self, event: str) -> dict[str, Any]:
        return next(kw for _, e, kw in self.records if e == event)


def mems_update(container_id: str, mems: str) -> Any:
    update = api.ContainerUpdate(container_id=container_id)
    update.linux.resources.cpu.mems = mems
    return update


class MemoryHandler:
    """Implements the events a memory-pinning plugin needs (mask 0x60D), sync and async mixed."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.disconnects = 0

    def configure(self, config: str, runtime_name: str, runtime_version: str) -> None:
        self.calls.append(("configure", config, runtime_name, runtime_version))

    async def synchronize(self, pods: list[Any], containers: list[Any]) -> list[Any]:
        self.calls.append(("synchronize", [p.id for p in pods], [c.id for c in containers]))
        return [mems_update(c.id, "1") for c in containers]

    def run_pod_sandbox(self, pod: Any) -> None:
        self.calls.append(("run_pod_sandbox", pod.id))

    async def remove_pod_sandbox(self, pod: Any) -> None:
        self.calls.append(("remove_pod_sandbox", pod.id))

    def create_container(self, pod: Any, container: Any) -> Any:
        self.calls.append(("create_container", pod.id, container.id))
        if container.name == "greedy":
            raise ValueError("no NUMA node has 64Gi free")
        adjust = api.ContainerAdjustment()
        adjust.linux.resources.cpu.mems = "0"
        return adjust

    def stop_container(self, pod: Any, container: Any) -> list[Any]:
        self.calls.append(("stop_container", pod.id, container.id))
        return [mems_update("other", "0-1")]

    def remove_container(self, pod: Any, container: Any) -> None:
        self.calls.append(("remove_container", pod.id, container.id))

    def on_disconnect(self) -> None:
        self.disconnects += 1


def pod(pod_id: str) -> Any:
    return api.PodSandbox(id=pod_id, uid=f"uid-{pod_id}", name=pod_id, namespace="default")


def container(container_id: str, pod_id: str, name: str = "app") -> Any:
    return api.Container(id=container_id, pod_sandbox_id=pod_id, name=name)


def run(scenario: Callable[[], Coroutine[Any, Any, None]], timeout: float = 3.0) -> None:
    async def guarded() -> None:
        async with asyncio.timeout(timeout):
            await scenario()

    asyncio.run(guarded())


async def wait_until(predicate: Callable[[], bool], timeout: float = 1.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.002)


@contextlib.asynccontextmanager
async def prelaunched(
    monkeypatch: pytest.MonkeyPatch, handler: object, **runtime_kw: Any
) -> AsyncIterator[tuple[Stub, FakeRuntime, asyncio.Task[None], ListLogger]]:
    """A stub started the way containerd starts a pre-launched plugin (socketpair fd)."""
    ours, theirs = socket.socketpair()
    monkeypatch.setenv("NRI_PLUGIN_SOCKET", str(theirs.detach()))
    monkeypatch.setenv("NRI_PLUGIN_NAME", "90-memmgr")  # containerd <= 1.7.6 form
    monkeypatch.setenv("NRI_PLUGIN_IDX", "90")
    logger = ListLogger()
    stub = Stub(handler, plugin_name="ignored", plugin_idx="10", logger=logger)
    task = asyncio.get_running_loop().create_task(stub.run())
    reader, writer = await asyncio.open_unix_connection(sock=ours)
    runtime = FakeRuntime(reader, writer, **runtime_kw)
    try:
        yield stub, runtime, task, logger
    finally:
        stub.stop()
        await asyncio.wait_for(task, 2)
        writer.close()
    assert runtime.check.violations == []


# -- the conversation --------------------------------------------------------


def test_registration_configure_and_paged_synchronize(monkeypatch: pytest.MonkeyPatch) -> None:
    handler = MemoryHandler()

    async def scenario() -> None:
        async with prelaunched(monkeypatch, handler) as (stub, runtime, _, log):
            pages = [([pod("p1")], [container("c1", "p1")]), ([pod("p2")], [container("c2", "p2")])]
            registration, configure, answers = await runtime.handshake(pages)
            assert (registration.plugin_name, registration.plugin_idx) == ("memmgr", "90")
            assert configure.events == 0x60D == stub.events
            # A page with more=true is answered more=true and without updates.
            assert answers[0] == api.SynchronizeResponse(more=True)
            assert list(answers[1].update) == [mems_update("c1", "1"), mems_update("c2", "1")]
            assert not answers[1].more
            assert handler.calls == [
                ("configure", "", "containerd", "v2.1.9"),
                ("synchronize", ["p1", "p2"], ["c1", "c2"]),
            ]
            await wait_until(lambda: stub.connected)
            assert log.find("nri configure")["request_timeout_ms"] == 2000
            assert log.find("nri synchronized") == {
                "pods": 2,
                "containers": 2,
                "pages": 2,
                "updates": 2,
            }

    run(scenario)


def test_create_container_adjustment_round_trip(monkeypatch: pytest.MonkeyPatch) -> None:
    handler = MemoryHandler()

    async def scenario() -> None:
        async with prelaunched(monkeypatch, handler) as (_, runtime, _, _):
            await runtime.handshake()
            request = api.CreateContainerRequest(pod=pod("p1"), container=container("c1", "p1"))
            response = await runtime.call("CreateContainer", request)
            assert response.ok
            # adjust.linux.resources.cpu.mems = "0", the bytes of test_ttrpc.py.
            assert response.payload == bytes.fromhex("0a09320712051203 3a0130".replace(" ", ""))
            refused = api.CreateContainerRequest(
                pod=pod("p1"), container=container("c2", "p1", name="greedy")
            )
            response = await runtime.call("CreateContainer", refused)
            assert (response.status_code, response.status_message) == (
                Code.UNKNOWN,
                "no NUMA node has 64Gi free",
            )
            stop = await runtime.call_ok(
                "StopContainer",
                api.StopContainerRequest(pod=pod("p1"), container=container("c2", "p1")),
                api.StopContainerResponse,
            )
            assert list(stop.update) == [mems_update("other", "0-1")]
            assert handler.calls[-3:] == [
                ("create_container", "p1", "c1"),
                ("create_container", "p1", "c2"),
                ("stop_container", "p1", "c2"),
            ]

    run(scenario)


def test_state_change_and_dedicated_rpcs_reach_the_same_methods(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    handler = MemoryHandler()

    async def scenario() -> None:
        async with prelaunched(monkeypatch, handler) as (_, runtime, _, _):
            await runtime.handshake()
            handler.calls.clear()
            p, c = pod("p1"), container("c1", "p1")
            for event in (api.RUN_POD_SANDBOX, api.REMOVE_CONTAINER, api.REMOVE_POD_SANDBOX):
                reply = await runtime.call(
                    "StateChange",
                    api.StateChangeEvent(
                        event=event, pod=p, container=c if event == api.REMOVE_CONTAINER else None
                    ),
                )
                assert reply.ok and reply.payload == b""
            # Not implemented by the handler / unknown to us: answered, nothing called.
            not_handled = api.StateChangeEvent(event=api.START_CONTAINER, pod=p)
            unknown_event = api.StateChangeEvent(pod=p).SerializeToString() + b"\x08\x63"  # 99
            for ignored in (not_handled, unknown_event):
                reply = await runtime.call("StateChange", ignored)
                assert reply.ok
            # NRI 0.12 dedicated RPCs.
            reply = await runtime.call("RunPodSandbox", api.RunPodSandboxRequest(pod=p))
            assert reply.ok
            reply = await runtime.call(
                "RemoveContainer", api.RemoveContainerRequest(pod=p, container=c)
            )
            assert reply.ok
            assert handler.calls == [
                ("run_pod_sandbox", "p1"),
                ("remove_container", "p1", "c1"),
                ("remove_pod_sandbox", "p1"),
                ("run_pod_sandbox", "p1"),
                ("remove_container", "p1", "c1"),
            ]
            # Unimplemented dedicated RPC: UNIMPLEMENTED makes NRI fall back to StateChange.
            reply = await runtime.call(
                "StartContainer", api.StartContainerRequest(pod=p, container=c)
            )
            assert (reply.status_code, reply.status_message) == (12, "method StartContainer")
            reply = await runtime.call("Shutdown", api.Empty())
            assert reply.ok

    run(scenario)


def test_unknown_methods_and_bad_payloads_get_error_statuses(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def scenario() -> None:
        async with prelaunched(monkeypatch, MemoryHandler()) as (stub, runtime, _, _):
            await runtime.handshake()
            reply = await runtime.call("ValidateContainerAdjustment", b"")
            assert (reply.status_code, reply.status_message) == (
                12,
                "method ValidateContainerAdjustment",
            )
            reply = await runtime.call("Configure", b"", service="nri.pkg.api.v1alpha1.Other")
            assert (reply.status_code, reply.status_message) == (
                12,
                "service nri.pkg.api.v1alpha1.Other",
            )
            reply = await runtime.call("CreateContainer", b"\x0a\x64\x41")
            assert reply.status_code == Code.INTERNAL
            assert reply.status_message.startswith("cannot decode CreateContainer request")
            reply = await runtime.call_envelope(b"\x0a\x64\x41")
            assert reply.status_code == Code.INVALID_ARGUMENT
            assert "malformed Request envelope" in reply.status_message
            # The connection is still fine after all of that.
            assert stub.connected
            reply = await runtime.call("Shutdown", api.Empty())
            assert reply.ok

    run(scenario)


def test_configure_may_arrive_before_the_registration_reply(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    release = asyncio.Event

    async def scenario() -> None:
        hold = release()
        async with prelaunched(monkeypatch, MemoryHandler(), hold_registration_reply=hold) as (
            stub,
            runtime,
            _,
            _,
        ):
            _, configure, _ = await runtime.handshake()
            assert configure.events == 0x60D
            assert not stub.connected
            hold.set()
            await wait_until(lambda: stub.connected)

    run(scenario)


def test_requests_run_concurrently_and_large_answers_do_not_interleave(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class Slow:
        def __init__(self) -> None:
            self.second_started = asyncio.Event()

        async def create_container(self, pod: Any, container: Any) -> Any:
            if container.id == "first":
                # Only finishes if the second request is served meanwhile.
                await self.second_started.wait()
            else:
                self.second_started.set()
            adjust = api.ContainerAdjustment()
            for i in range(400):
                adjust.annotations[f"{container.id}.example.com/key-{i}"] = "v" * 40
            return adjust

    async def scenario() -> None:
        async with prelaunched(monkeypatch, Slow()) as (_, runtime, _, _):
            await runtime.handshake()
            replies = await asyncio.gather(
                *(
                    runtime.call_ok(
                        "CreateContainer",
                        api.CreateContainerRequest(pod=pod("p"), container=container(cid, "p")),
                        api.CreateContainerResponse,
                    )
                    for cid in ("first", "second")
                )
            )
            for cid, reply in zip(("first", "second"), replies, strict=True):
                assert len(reply.adjust.annotations) == 400
                assert all(key.startswith(cid) for key in reply.adjust.annotations)
                assert reply.ByteSize() > 4096  # sent as header frame + payload frame

    run(scenario)


# -- unsolicited updates -----------------------------------------------------


def test_update_containers_outside_handlers(monkeypatch: pytest.MonkeyPatch) -> None:
    async def scenario() -> None:
        failed = [mems_update("gone", "1")]
        async with prelaunched(monkeypatch, MemoryHandler(), failed_updates=failed) as (
            stub,
            runtime,
            _,
            _,
        ):
            with pytest.raises(ConnectionClosedError, match="not connected"):
                await stub.update_containers([mems_update("c1", "1")])
            await runtime.handshake()
            await wait_until(lambda: stub.connected)
            result = await stub.update_containers([mems_update("c1", "1")])
            assert result == failed
            assert list(runtime.update_requests[0].update) == [mems_update("c1", "1")]

    run(scenario)


def test_update_containers_inside_a_handler_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    class Deadlocking:
        stub: Stub

        async def create_container(self, pod: Any, container: Any) -> None:
            await self.stub.update_containers([mems_update("other", "1")])

    async def scenario() -> None:
        handler = Deadlocking()
        async with prelaunched(monkeypatch, handler) as (stub, runtime, _, _):
            handler.stub = stub
            await runtime.handshake()
            await wait_until(lambda: stub.connected)
            reply = await runtime.call(
                "CreateContainer",
                api.CreateContainerRequest(pod=pod("p"), container=container("c", "p")),
            )
            assert reply.status_code == Code.UNKNOWN
            assert "would deadlock" in reply.status_message
            assert runtime.update_requests == []

    run(scenario)


# -- failures and connection loss ------------------------------------------------


def test_eof_ends_a_prelaunched_plugin(monkeypatch: pytest.MonkeyPatch) -> None:
    handler = MemoryHandler()

    async def scenario() -> None:
        async with prelaunched(monkeypatch, handler) as (stub, runtime, task, log):
            await runtime.handshake()
            await wait_until(lambda: stub.connected)
            await runtime.close()
            await asyncio.wait_for(task, 1)
            assert not stub.connected
            assert handler.disconnects == 1
            assert log.find("nri disconnected")["reason"] == "EOF from runtime"

    run(scenario)


def test_oversized_frame_closes_the_connection_cleanly(monkeypatch: pytest.MonkeyPatch) -> None:
    handler = MemoryHandler()

    async def scenario() -> None:
        async with prelaunched(monkeypatch, handler) as (stub, runtime, task, log):
            await runtime.handshake()
            runtime.send_raw((1).to_bytes(4, "big") + (64 << 20).to_bytes(4, "big"))
            await asyncio.wait_for(runtime.eof.wait(), 1)  # the plugin closed the socket
            await asyncio.wait_for(task, 1)  # and run() returned without raising
            assert task.exception() is None
            assert not stub.connected
            assert handler.disconnects == 1
            reason = log.find("nri disconnected")["reason"]
            assert reason.startswith("protocol error: mux frame length 67108864")

    run(scenario)


def test_oversized_ttrpc_message_closes_the_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    async def scenario() -> None:
        async with prelaunched(monkeypatch, MemoryHandler()) as (_, runtime, task, log):
            await runtime.handshake()
            header = (5 << 20).to_bytes(4, "big") + (9).to_bytes(4, "big") + b"\x01\x00"
            runtime.send(1, header)
            await asyncio.wait_for(task, 1)
            assert "exceeds the maximum message size" in log.find("nri disconnected")["reason"]

    run(scenario)


def test_rejected_registration_closes_the_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    async def scenario() -> None:
        async with prelaunched(
            monkeypatch, MemoryHandler(), reject_registration="invalid plugin index"
        ) as (stub, runtime, task, log):
            await asyncio.wait_for(runtime.eof.wait(), 1)
            await asyncio.wait_for(task, 1)
            assert not stub.connected
            assert "invalid plugin index" in log.find("nri registration failed")["error"]

    run(scenario)


def test_stop_ends_run_while_connected(monkeypatch: pytest.MonkeyPatch) -> None:
    async def scenario() -> None:
        async with prelaunched(monkeypatch, MemoryHandler()) as (stub, runtime, task, _):
            await runtime.handshake()
            await wait_until(lambda: stub.connected)
            stub.stop()
            await asyncio.wait_for(task, 1)
            await asyncio.wait_for(runtime.eof.wait(), 1)

    run(scenario)


def test_pending_calls_time_out_or_fail_on_eof() -> None:
    async def scenario() -> None:
        ours, theirs = socket.socketpair()
        conn = await Connection.from_socket(theirs, {}, logger=ListLogger())
        reader, writer = await asyncio.open_unix_connection(sock=ours)
        runtime = FakeRuntime(reader, writer, hold_registration_reply=asyncio.Event())
        reading = asyncio.get_running_loop().create_task(conn.run())
        request = api.RegisterPluginRequest(plugin_name="x", plugin_idx="10")
        with pytest.raises(RpcError) as e:
            await conn.call(RUNTIME_SERVICE, "RegisterPlugin", request, api.Empty, timeout=0.05)
        assert e.value.code == Code.DEADLINE_EXCEEDED
        assert str(e.value).startswith("rpc error: code = DeadlineExceeded desc = RegisterPlugin")
        call = asyncio.get_running_loop().create_task(
            conn.call(RUNTIME_SERVICE, "RegisterPlugin", request, api.Empty, timeout=5)
        )
        # both RegisterPlugin requests (the timed-out one and this one) are at the runtime
        await wait_until(lambda: runtime.registrations.qsize() == 2)
        assert not call.done()
        await runtime.close()
        with pytest.raises(ConnectionClosedError, match="EOF"):
            await call
        await reading
        assert conn.closed
        with pytest.raises(ConnectionClosedError):
            await conn.call(RUNTIME_SERVICE, "RegisterPlugin", request, api.Empty, timeout=5)

    run(scenario)


def test_unknown_service_on_a_bare_connection_is_unimplemented() -> None:
    async def scenario() -> None:
        ours, theirs = socket.socketpair()
        conn = await Connection.from_socket(theirs, {}, logger=ListLogger())
        reader, writer = await asyncio.open_unix_connection(sock=ours)
        runtime = FakeRuntime(reader, writer)
        reading = asyncio.get_running_loop().create_task(conn.run())
        reply = await runtime.call("Configure", api.ConfigureRequest())
        assert (reply.status_code, reply.status_message) == (12, f"service {PLUGIN_SERVICE}")
        conn.close()
        await reading
        await asyncio.wait_for(runtime.eof.wait(), 1)
        await runtime.close()

    run(scenario)


# -- external plugin: dial and reconnect -------------------------------------------


@pytest.fixture
def short_dir() -> Any:
    # AF_UNIX paths must stay under 108 bytes; pytest's tmp_path may not.
    path = tempfile.mkdtemp(prefix="nri-", dir="/tmp")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_external_plugin_dials_late_runtime_and_reconnects(
    monkeypatch: pytest.MonkeyPatch, short_dir: str
) -> None:
    monkeypatch.delenv("NRI_PLUGIN_SOCKET", raising=False)
    handler = MemoryHandler()
    path = os.path.join(short_dir, "nri.sock")

    async def scenario() -> None:
        logger = ListLogger()
        stub = Stub(
            handler,
            plugin_name="memmgr",
            plugin_idx="90",
            socket_path=path,
            logger=logger,
            max_backoff=0.2,
        )
        task = asyncio.get_running_loop().create_task(stub.run())
        # the runtime is not there yet: dialing fails, and is retried
        await wait_until(lambda: logger.events().count("nri cannot connect, retrying") >= 2)

        runtimes: asyncio.Queue[FakeRuntime] = asyncio.Queue()

        async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            runtimes.put_nowait(FakeRuntime(reader, writer))

        server = await asyncio.start_unix_server(accept, path)
        first = await runtimes.get()
        registration, _, _ = await first.handshake([([pod("p1")], [container("c1", "p1")])])
        assert (registration.plugin_name, registration.plugin_idx) == ("memmgr", "90")
        await wait_until(lambda: stub.connected)

        closed_at = time.monotonic()
        await first.close()  # the runtime restarts
        second = await runtimes.get()
        registration, _, answers = await second.handshake([([pod("p1")], [])])
        assert time.monotonic() - closed_at < 0.5  # first retry well under a second
        assert registration.plugin_name == "memmgr"
        assert list(answers[0].update) == []
        await wait_until(lambda: stub.connected)
        assert handler.disconnects == 1
        assert [c for c in handler.calls if c[0] == "synchronize"] == [
            ("synchronize", ["p1"], ["c1"]),
            ("synchronize", ["p1"], []),
        ]
        stub.stop()
        await asyncio.wait_for(task, 1)
        await asyncio.wait_for(second.eof.wait(), 1)
        assert handler.disconnects == 2
        await second.close()
        server.close()
        await server.wait_closed()
        for runtime in (first, second):
            assert runtime.check.violations == []

    run(scenario)


def test_external_plugin_without_reconnect_raises_when_dial_fails(
    monkeypatch: pytest.MonkeyPatch, short_dir: str
) -> None:
    monkeypatch.delenv("NRI_PLUGIN_SOCKET", raising=False)
    stub = Stub(
        MemoryHandler(),
        socket_path=os.path.join(short_dir, "absent.sock"),
        reconnect=False,
        logger=ListLogger(),
    )
    with pytest.raises(OSError):
        run(stub.run)


def test_stop_before_run_returns_immediately(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NRI_PLUGIN_SOCKET", raising=False)
    stub = Stub(MemoryHandler(), socket_path="/nonexistent/nri.sock", logger=ListLogger())
    stub.stop()
    run(stub.run, timeout=0.5)


def test_bad_prelaunched_fd_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NRI_PLUGIN_SOCKET", "three")
    stub = Stub(MemoryHandler(), logger=ListLogger())
    with pytest.raises(ConfigError, match="NRI_PLUGIN_SOCKET='three' is not a file descriptor"):
        run(stub.run)


# -- construction ----------------------------------------------------------------


def test_event_mask_follows_the_handler_methods() -> None:
    class CreateOnly:
        def create_container(self, pod: Any, container: Any) -> None: ...

    class Everything(MemoryHandler):
        def stop_pod_sandbox(self, pod: Any) -> None: ...
        def post_create_container(self, pod: Any, container: Any) -> None: ...
        def start_container(self, pod: Any, container: Any) -> None: ...
        def post_start_container(self, pod: Any, container: Any) -> None: ...
        def update_container(self, pod: Any, container: Any, resources: Any) -> None: ...
        def post_update_container(self, pod: Any, container: Any) -> None: ...

    assert event_mask(CreateOnly()) == 0x8
    assert event_mask(MemoryHandler()) == 0x60D
    assert event_mask(Everything()) == 0x7FF  # never bits 11-13


def test_handler_without_events_is_refused() -> None:
    class OnlySync:
        def synchronize(self, pods: Any, containers: Any) -> list[Any]:
            return []

    with pytest.raises(TypeError, match="implements no event method"):
        Stub(OnlySync())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"plugin_idx": "9"}, "NRI plugin index '9' must be exactly two digits"),
        ({"plugin_idx": "100"}, "NRI plugin index '100'"),
        ({"plugin_name": ""}, "NRI plugin name '' must be non-empty"),
        ({"plugin_name": "mem mgr"}, "NRI plugin name 'mem mgr'"),
        ({"socket_path": "/" + "x" * 120}, "is longer than 107 bytes"),
        ({"max_backoff": 0.0}, "max_backoff 0.0 must be at least"),
    ],
)
def test_bad_stub_settings_are_config_errors(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Stub(MemoryHandler(), **kwargs)


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({"NRI_PLUGIN_NAME": "memmgr", "NRI_PLUGIN_IDX": "90"}, ("memmgr", "90")),
        ({"NRI_PLUGIN_NAME": "90-memmgr", "NRI_PLUGIN_IDX": "90"}, ("memmgr", "90")),
        ({"NRI_PLUGIN_NAME": "42-memmgr"}, ("memmgr", "42")),
        ({"NRI_PLUGIN_NAME": "10-x", "NRI_PLUGIN_IDX": "90"}, ("10-x", "90")),
        ({}, ("default", "50")),
    ],
)
def test_prelaunched_identity(environ: dict[str, str], expected: tuple[str, str]) -> None:
    assert prelaunched_identity(environ, "default", "50") == expected

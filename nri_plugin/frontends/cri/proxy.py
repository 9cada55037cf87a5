"""``nri-memory-manager cri-proxy``: the policy for runtimes without NRI.

kubelet's ``--container-runtime-endpoint`` points at our socket; every CRI
call (RuntimeService, ImageService, and any method added later) goes on to
the real runtime as opaque bytes with its metadata and deadline, and the
runtime's answer or error comes back unchanged. A handful of calls are read
on the way and become the node tracker's events (:mod:`nri_plugin.tracker`),
as containerd's NRI events do for the NRI plugin:

==========================  ==========================================================
RunPodSandbox               the pod is recorded (UID, name, cgroup parent, pod limits)
CreateContainer             admission; Guaranteed containers get ``cpuset_mems``;
                            a refusal is an error starting ``TopologyAffinityError:``
StartContainer              the pod's exited init containers are released
UpdateContainerResources    our ``cpuset_mems`` is kept whatever the update says
StopContainer, Remove*,     the tracker's rules: an exited container keeps its
StopPodSandbox              blocks, a removal or the pod's end releases them
==========================  ==========================================================

NRI tells a plugin when a container exits on its own; CRI does not. Before a
Guaranteed pod's next container is admitted, the runtime is asked about the
pod's earlier containers, so an init container that has finished lends its
memory to the next one as kubelet's memory manager does.

On start the state is rebuilt from ListPodSandbox, ListContainers and verbose
ContainerStatus (the same rules as NRI's Synchronize); until then calls that
need the state wait, everything else is relayed at once.

One module of about 770 lines: the relay (generic gRPC handlers that pass any
method through) and the calls it reads share the channel to the runtime, the
provisional container IDs and the wait for the initial listing; split apart,
each half would reach into the other's state.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import stat
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, NoReturn

import grpc  # type: ignore[import-untyped]
import structlog
from google.protobuf.message import DecodeError, Message

from nri_plugin.engine.pod import GUARANTEED
from nri_plugin.engine.topologymanager import SCOPE_POD
from nri_plugin.errors import InputError, StateError
from nri_plugin.frontends.cri import convert
from nri_plugin.frontends.cri.gen import cri_pb2 as cri
from nri_plugin.frontends.kubelet import KubeletResources
from nri_plugin.frontends.nri_convert import (
    container_facts,
    pod_facts,
    pod_qos,
    update_resources,
)
from nri_plugin.frontends.podcgroup import PodCgroups
from nri_plugin.nri.gen import nri_pb2 as api
from nri_plugin.tracker.facts import ContainerResources
from nri_plugin.tracker.tracker import NodeTracker, Refused

RUNTIME_SERVICE = "/runtime.v1.RuntimeService/"
IMAGE_SERVICE = "/runtime.v1.ImageService/"

# A refusal is the node's state, not a bad request: kubelet reports it as a
# CreateContainerError with our message either way.
REFUSAL_CODE = grpc.StatusCode.FAILED_PRECONDITION

# kubelet limits message sizes itself; the proxy must not be the narrower pipe.
CHANNEL_OPTIONS = (
    ("grpc.max_receive_message_length", -1),
    ("grpc.max_send_message_length", -1),
)

# Calls the proxy makes on its own (recovery, exit checks) when no deadline applies.
OWN_CALL_TIMEOUT_S = 10.0
SYNC_CONCURRENCY = 16
RETRY_FIRST_S = 0.2
RETRY_MAX_S = 5.0

# a container admitted before the runtime named it (the proxy admits, then forwards
# CreateContainer) is known by a provisional ID until the answer brings its real one
PROVISIONAL_ID_PREFIX = "pending-"


def _method(name: str) -> str:
    return RUNTIME_SERVICE + name


def unix_socket_path(endpoint: str, flag: str = "endpoint") -> Path:
    """The path of a unix socket given as ``/path``, ``unix:///path`` or ``unix:path``.

    kubelet's endpoints may also be ``tcp://``; the proxy speaks only unix sockets
    (a node-local, root-only channel), so any other scheme is refused (InputError).
    """
    if endpoint.startswith("unix://"):
        path = endpoint.removeprefix("unix://")
    elif endpoint.startswith("unix:"):
        path = endpoint.removeprefix("unix:")
    elif "://" in endpoint or not endpoint:
        scheme = endpoint.partition("://")[0]
        raise InputError(
            f"{flag} {endpoint!r}: only unix sockets are supported (a path or unix:///path),"
            f" not {scheme or 'an empty endpoint'}"
        )
    else:
        path = endpoint
    if not path or "\0" in path:
        raise InputError(f"{flag} {endpoint!r}: expected a unix socket path")
    return Path(os.path.abspath(path))


def endpoint_target(endpoint: str) -> str:
    """A gRPC target for a socket given as ``/path`` or ``unix:///path``."""
    return "unix:" + str(unix_socket_path(endpoint))


def _client_metadata(context: Any) -> tuple[tuple[str, Any], ...]:
    """The caller's metadata, minus what gRPC sets per connection itself."""
    return tuple(
        (m.key, m.value)
        for m in context.invocation_metadata() or ()
        if not (m.key.startswith((":", "grpc-")) or m.key == "user-agent")
    )


async def _fail(context: Any, code: Any, details: str, trailing: Sequence[Any] = ()) -> NoReturn:
    await context.abort(code, details, tuple(trailing))
    raise AssertionError("unreachable: ServicerContext.abort raises")


async def _abort(context: Any, exc: Any) -> NoReturn:
    """Answer with the runtime's error: same code, details and trailing metadata."""
    await _fail(context, exc.code(), exc.details() or "", exc.trailing_metadata() or ())


class CRIProxy:
    """Relays CRI to the runtime; feeds the lifecycle calls to the node tracker.

    Runs on one asyncio loop (the gRPC aio server's), so the tracker is never
    entered concurrently.
    """

    def __init__(
        self,
        tracker: NodeTracker,
        channel: Any,
        *,
        logger: Any = None,
        pod_cgroups: PodCgroups | None = None,
        kubelet: KubeletResources | None = None,
    ) -> None:
        self.tracker = tracker
        # kubelet's pod-resources API: device hints, exact init containers
        self._kubelet = kubelet
        # pod scope sizes a pod's hugepages from its cgroup (read at its first container)
        self._pod_cgroups = (
            pod_cgroups if tracker.manager.config.topology_manager_scope == SCOPE_POD else None
        )
        self._channel = channel
        self._log = logger if logger is not None else structlog.get_logger("cri-proxy")
        # NRI views of what the runtime holds, by sandbox and container ID
        self.sandboxes: dict[str, api.PodSandbox] = {}
        self.containers: dict[str, api.Container] = {}
        self.synchronized = asyncio.Event()
        self._provisional_ids = itertools.count(1)
        self._intercepted: dict[str, Callable[[bytes, Any], Awaitable[bytes]]] = {
            _method("RunPodSandbox"): self._run_pod_sandbox,
            _method("StopPodSandbox"): self._stop_pod_sandbox,
            _method("RemovePodSandbox"): self._remove_pod_sandbox,
            _method("CreateContainer"): self._create_container,
            _method("StartContainer"): self._start_container,
            _method("UpdateContainerResources"): self._update_container_resources,
            _method("StopContainer"): self._stop_container,
            _method("RemoveContainer"): self._remove_container,
        }

    # -- gRPC plumbing -------------------------------------------------------------------

    def rpc_handler(self) -> Any:
        """The server's generic handler: intercepted methods, else a byte relay."""
        proxy = self

        class Handler(grpc.GenericRpcHandler):  # type: ignore[misc]
            def service(self, details: Any) -> Any:
                method = details.method
                if isinstance(method, bytes):
                    method = method.decode()
                intercept = proxy._intercepted.get(method)
                if intercept is not None:
                    return grpc.unary_unary_rpc_method_handler(proxy._guarded(intercept))

                # Any cardinality: on the wire every call is a stream of messages
                async def relay(
                    requests: AsyncIterator[bytes], context: Any
                ) -> AsyncIterator[bytes]:
                    async for response in proxy.relay_stream(method, requests, context):
                        yield response

                return grpc.stream_stream_rpc_method_handler(relay)

        return Handler()

    def _guarded(
        self, intercept: Callable[[bytes, Any], Awaitable[bytes]]
    ) -> Callable[[bytes, Any], Awaitable[bytes]]:
        """An intercepted call waits for the state to be rebuilt from the runtime."""

        async def handle(request: bytes, context: Any) -> bytes:
            if self.synchronized.is_set():
                return await intercept(request, context)
            remaining = context.time_remaining()
            # give up a little before the caller does, so it learns why
            wait = None if remaining is None else remaining * 0.9
            try:
                await asyncio.wait_for(self.synchronized.wait(), wait)
            except TimeoutError:
                await _fail(
                    context,
                    grpc.StatusCode.UNAVAILABLE,
                    "nri-memory-manager cri-proxy: not yet synchronized with the runtime",
                )
            return await intercept(request, context)

        return handle

    async def relay_stream(
        self, method: str, requests: AsyncIterator[bytes], context: Any
    ) -> AsyncIterator[bytes]:
        """Forward one call of any cardinality; answers and errors come back unchanged."""
        call = self._channel.stream_stream(method)(
            requests, timeout=context.time_remaining(), metadata=_client_metadata(context)
        )
        try:
            initial = await call.initial_metadata()
            if initial:
                await context.send_initial_metadata(tuple(initial))
            async for response in call:
                yield response
            trailing = await call.trailing_metadata()
            if trailing:
                context.set_trailing_metadata(tuple(trailing))
        except grpc.aio.AioRpcError as exc:
            await _abort(context, exc)
        finally:
            call.cancel()  # the caller went away: so does the runtime's side (no-op when done)

    async def _relay(self, method: str, request: bytes, context: Any) -> bytes | Any:
        """Forward one unary call: the runtime's answer (bytes), or its AioRpcError."""
        call = self._channel.unary_unary(method)(
            request, timeout=context.time_remaining(), metadata=_client_metadata(context)
        )
        try:
            response = await call
        except grpc.aio.AioRpcError as exc:
            return exc
        initial = await call.initial_metadata()
        if initial:
            await context.send_initial_metadata(tuple(initial))
        trailing = await call.trailing_metadata()
        if trailing:
            context.set_trailing_metadata(tuple(trailing))
        return response

    async def _call(
        self, name: str, request: Message, response_type: type[Any], timeout: float | None = None
    ) -> Any:
        """A call of the proxy's own to the runtime (decoded answer; AioRpcError raised)."""
        data = await self._channel.unary_unary(_method(name))(
            request.SerializeToString(), timeout=timeout or OWN_CALL_TIMEOUT_S
        )
        return response_type.FromString(data)

    def _decode(self, method: str, message_type: type[Any], data: bytes) -> Any:
        try:
            return message_type.FromString(data)
        except DecodeError as exc:
            # the runtime is the judge of a malformed request; we only step aside
            self._log.warning(
                "undecodable CRI message relayed as is", method=method, error=str(exc)
            )
            return None

    # -- pod sandboxes -------------------------------------------------------------------

    async def _run_pod_sandbox(self, request: bytes, context: Any) -> bytes:
        method = _method("RunPodSandbox")
        answer = await self._relay(method, request, context)
        if not isinstance(answer, bytes):
            await _abort(context, answer)
        req = self._decode(method, cri.RunPodSandboxRequest, request)
        resp = self._decode(method, cri.RunPodSandboxResponse, answer)
        if req is not None and resp is not None and resp.pod_sandbox_id:
            pod = convert.pod_sandbox(resp.pod_sandbox_id, req.config, req.runtime_handler)
            self.sandboxes[pod.id] = pod
            facts = pod_facts(pod)
            self.tracker.run_pod_sandbox(facts)
            if self._kubelet is not None:
                self._kubelet.sandbox_started(facts)
        return answer

    async def _stop_pod_sandbox(self, request: bytes, context: Any) -> bytes:
        method = _method("StopPodSandbox")
        answer = await self._relay(method, request, context)
        if not isinstance(answer, bytes):
            await _abort(context, answer)
        req = self._decode(method, cri.StopPodSandboxRequest, request)
        pod = None if req is None else self.sandboxes.get(req.pod_sandbox_id)
        if pod is not None:
            for c in self.containers.values():
                if c.pod_sandbox_id == pod.id:
                    c.state = api.CONTAINER_STOPPED
            self.tracker.stop_pod_sandbox(pod_facts(pod))
        return answer

    async def _remove_pod_sandbox(self, request: bytes, context: Any) -> bytes:
        method = _method("RemovePodSandbox")
        answer = await self._relay(method, request, context)
        if not isinstance(answer, bytes) and answer.code() != grpc.StatusCode.NOT_FOUND:
            await _abort(context, answer)
        req = self._decode(method, cri.RemovePodSandboxRequest, request)
        pod = None if req is None else self.sandboxes.pop(req.pod_sandbox_id, None)
        if pod is not None:
            for cid in [cid for cid, c in self.containers.items() if c.pod_sandbox_id == pod.id]:
                del self.containers[cid]
            facts = pod_facts(pod)
            self.tracker.remove_pod_sandbox(facts)
            if self._kubelet is not None:
                self._kubelet.sandbox_removed(facts)
        if not isinstance(answer, bytes):
            await _abort(context, answer)
        return answer

    async def _pod_of(
        self, sandbox_id: str, config: cri.PodSandboxConfig | None
    ) -> api.PodSandbox | None:
        """The NRI pod of a sandbox: ours, else from kubelet's copy, else the runtime's."""
        pod = self.sandboxes.get(sandbox_id)
        if pod is None and config is not None:
            pod = convert.pod_sandbox(sandbox_id, config)
        if pod is None:
            try:
                status = await self._call(
                    "PodSandboxStatus",
                    cri.PodSandboxStatusRequest(pod_sandbox_id=sandbox_id, verbose=True),
                    cri.PodSandboxStatusResponse,
                )
            except grpc.aio.AioRpcError:
                return None  # the runtime will refuse the creation itself
            s = status.status
            item = cri.PodSandbox(
                id=s.id or sandbox_id,
                metadata=s.metadata,
                state=s.state,
                runtime_handler=s.runtime_handler,
            )
            item.labels.update(s.labels)
            item.annotations.update(s.annotations)
            pod = convert.listed_pod(item, status.info)
        self.sandboxes[sandbox_id] = pod
        return pod

    # -- containers ----------------------------------------------------------------------

    async def _create_container(self, request: bytes, context: Any) -> bytes:
        method = _method("CreateContainer")
        req = self._decode(method, cri.CreateContainerRequest, request)
        if req is None:
            return await self._relay_or_abort(method, request, context)
        sandbox_config = req.sandbox_config if req.HasField("sandbox_config") else None
        pod = await self._pod_of(req.pod_sandbox_id, sandbox_config)
        if pod is None:
            return await self._relay_or_abort(method, request, context)
        ctr = convert.container(
            f"{PROVISIONAL_ID_PREFIX}{next(self._provisional_ids)}",
            req.pod_sandbox_id,
            req.config,
            created_at=time.time_ns(),
        )
        # exit codes and kubelet's answer are asked together, each within its deadline
        waits: list[Awaitable[object]] = []
        if pod_qos(pod, ctr) == GUARANTEED:
            waits.append(self._note_exits(pod, ctr.name, context))
        if self._kubelet is not None:
            lookup = self._kubelet.lookup(pod_facts(pod), container_facts(pod, ctr))
            if lookup is not None:
                waits.append(lookup)
        if waits:
            await asyncio.gather(*waits)
        hugepages = None
        if self._pod_cgroups is not None and not self.tracker.holds_blocks(pod.uid):
            hugepages = self._pod_cgroups.hugepage_limits(pod.linux.cgroup_parent)
        try:
            facts = pod_facts(pod, hugepages), container_facts(pod, ctr)
            if self._kubelet is not None:
                facts = facts[0], self._kubelet.facts(*facts)
            mems = self.tracker.create_container(*facts) or ""
        except Refused as exc:
            await self._apply(self.tracker.take_updates())
            await _fail(context, REFUSAL_CODE, exc.message)
        if mems:
            req.config.linux.resources.cpuset_mems = mems
            ctr.linux.resources.cpu.mems = mems
            ours = self.tracker.annotations(pod.uid, ctr.name)
            req.config.annotations.update(ours)
            ctr.annotations.update(ours)
            request = req.SerializeToString()  # fields we do not know ride along unchanged
        try:
            answer = await self._relay(method, request, context)
        except asyncio.CancelledError:
            # kubelet gave up (deadline): it will create the container again
            self._undo_create(pod, ctr)
            raise
        if not isinstance(answer, bytes):
            self._undo_create(pod, ctr)
            await _abort(context, answer)
        resp = self._decode(method, cri.CreateContainerResponse, answer)
        container_id = resp.container_id if resp is not None else ""
        if not container_id:
            self._undo_create(pod, ctr)
            return answer
        self.tracker.rename_container(pod.uid, ctr.id, container_id)
        ctr.id = container_id
        self.containers[container_id] = ctr
        # the pod's other containers, unpinned or re-pinned (a pod found to set pod-level
        # resources)
        await self._apply(self.tracker.take_updates())
        return answer

    async def _relay_or_abort(self, method: str, request: bytes, context: Any) -> bytes:
        answer = await self._relay(method, request, context)
        if not isinstance(answer, bytes):
            await _abort(context, answer)
        return answer

    def _undo_create(self, pod: api.PodSandbox, ctr: api.Container) -> None:
        """The runtime did not create it: forget it as containerd's NRI undo does.

        A restarted container's predecessor keeps holding the name's blocks.
        """
        facts = pod_facts(pod), container_facts(pod, ctr)
        self.tracker.stop_container(*facts)
        self.tracker.remove_container(*facts)

    async def _note_exits(self, pod: api.PodSandbox, name: str, context: Any) -> None:
        """Mark the pod's containers of other names that have exited, with their exit codes.

        NRI tells a plugin when a container exits; CRI does not, so the runtime is
        asked before the pod's next container is admitted.
        """
        candidates = [
            c
            for c in self.containers.values()
            if c.pod_sandbox_id == pod.id and c.name != name and c.state != api.CONTAINER_STOPPED
        ]
        if not candidates:
            return
        remaining = context.time_remaining()
        timeout = OWN_CALL_TIMEOUT_S if remaining is None else max(remaining / 2, 0.001)
        states = await asyncio.gather(*(self._state_of(c.id, timeout) for c in candidates))
        for c, (state, exit_code) in zip(candidates, states, strict=True):
            if state == api.CONTAINER_STOPPED:
                c.state = api.CONTAINER_STOPPED
                exited = replace(container_facts(pod, c), exit_code=exit_code)
                self.tracker.stop_container(pod_facts(pod), exited)

    async def _state_of(self, container_id: str, timeout: float) -> tuple[int | None, int | None]:
        """The NRI state of a container (STOPPED when the runtime no longer has it) and,
        when it exited, its exit code (CRI says; NRI in containerd 1.7 and 2.1 does not)."""
        try:
            resp = await self._call(
                "ContainerStatus",
                cri.ContainerStatusRequest(container_id=container_id),
                cri.ContainerStatusResponse,
                timeout,
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return api.CONTAINER_STOPPED, None
            self._log.warning("container status unknown", container_id=container_id, error=str(exc))
            return None, None
        state = convert.container_state(resp.status.state)
        exited = state == api.CONTAINER_STOPPED and resp.status.finished_at
        return state, (resp.status.exit_code if exited else None)

    def _known(self, container_id: str) -> tuple[api.PodSandbox, api.Container] | None:
        ctr = self.containers.get(container_id)
        if ctr is None:
            return None  # not created through us, nor there at our start: not ours
        pod = self.sandboxes.get(ctr.pod_sandbox_id)
        return None if pod is None else (pod, ctr)

    async def _start_container(self, request: bytes, context: Any) -> bytes:
        method = _method("StartContainer")
        answer = await self._relay_or_abort(method, request, context)
        req = self._decode(method, cri.StartContainerRequest, request)
        known = None if req is None else self._known(req.container_id)
        if known is not None:
            pod, ctr = known
            ctr.state = api.CONTAINER_RUNNING
            self.tracker.start_container(pod_facts(pod), container_facts(pod, ctr))
        return answer

    async def _update_container_resources(self, request: bytes, context: Any) -> bytes:
        """A resize (or the CPU manager's cpuset update): the books first, then the runtime.

        A refused resize fails the call before the runtime sees it, so the container
        keeps its limits; a resize the runtime then fails is undone in the books.
        """
        method = _method("UpdateContainerResources")
        req = self._decode(method, cri.UpdateContainerResourcesRequest, request)
        known = None if req is None else self._known(req.container_id)
        if known is None or not req.HasField("linux"):
            return await self._relay_or_abort(method, request, context)
        pod, ctr = known
        new = update_resources(convert.linux_resources(req.linux))
        if new is None:
            self._log.error("update with unreadable resources relayed as is", container=ctr.id)
            return await self._relay_or_abort(method, request, context)
        facts = pod_facts(pod), container_facts(pod, ctr)
        before = facts[1].resources
        try:
            mems = self.tracker.update_container(*facts, new)
        except Refused as exc:
            await _fail(context, REFUSAL_CODE, exc.message)
        if mems and req.linux.cpuset_mems != mems:
            self._log.info(
                "update keeps our cpuset.mems",
                container_id=req.container_id,
                requested=req.linux.cpuset_mems,
                cpuset_mems=mems,
            )
            req.linux.cpuset_mems = mems
            request = req.SerializeToString()
        answer = await self._relay(method, request, context)
        if not isinstance(answer, bytes):
            if before is not None:
                self._undo_update(pod, ctr, before)
            await _abort(context, answer)
        _apply_update(ctr, req.linux)
        return answer

    def _undo_update(
        self, pod: api.PodSandbox, ctr: api.Container, before: ContainerResources
    ) -> None:
        """The runtime refused the update: the books go back to the limits in force."""
        try:
            self.tracker.update_container(pod_facts(pod), container_facts(pod, ctr), before)
        except Refused as exc:  # going back to what was in force fits, unless a bug
            self._log.error("undoing a failed update failed", container=ctr.id, error=exc.message)

    async def _stop_container(self, request: bytes, context: Any) -> bytes:
        method = _method("StopContainer")
        answer = await self._relay(method, request, context)
        if not isinstance(answer, bytes) and answer.code() != grpc.StatusCode.NOT_FOUND:
            await _abort(context, answer)
        req = self._decode(method, cri.StopContainerRequest, request)
        known = None if req is None else self._known(req.container_id)
        if known is not None:
            pod, ctr = known
            ctr.state = api.CONTAINER_STOPPED
            self.tracker.stop_container(pod_facts(pod), container_facts(pod, ctr))
        if not isinstance(answer, bytes):
            await _abort(context, answer)
        return answer

    async def _remove_container(self, request: bytes, context: Any) -> bytes:
        method = _method("RemoveContainer")
        answer = await self._relay(method, request, context)
        if not isinstance(answer, bytes) and answer.code() != grpc.StatusCode.NOT_FOUND:
            await _abort(context, answer)
        req = self._decode(method, cri.RemoveContainerRequest, request)
        known = None if req is None else self._known(req.container_id)
        if known is not None:
            pod, ctr = known
            del self.containers[ctr.id]
            self.tracker.remove_container(pod_facts(pod), container_facts(pod, ctr))
        if not isinstance(answer, bytes):
            await _abort(context, answer)
        return answer

    # -- restart recovery ----------------------------------------------------------------

    async def synchronize(self) -> int:
        """Rebuild the state from the runtime's view (NRI Synchronize's rules).

        Pods that are no longer ready count as stopped (their blocks are
        released); Guaranteed containers created while we were away are
        admitted now and pinned with UpdateContainerResources. Returns how
        many containers were pinned that way. Raises AioRpcError when the
        runtime cannot be listed.
        """
        version = await self._call("Version", cri.VersionRequest(), cri.VersionResponse)
        self._log.info(
            "runtime", runtime=version.runtime_name, runtime_version=version.runtime_version
        )
        listed_pods = (
            await self._call(
                "ListPodSandbox", cri.ListPodSandboxRequest(), cri.ListPodSandboxResponse
            )
        ).items
        listed = (
            await self._call(
                "ListContainers", cri.ListContainersRequest(), cri.ListContainersResponse
            )
        ).containers
        ready = [p for p in listed_pods if p.state == cri.SANDBOX_READY]
        ready_ids = {p.id for p in ready}
        limit = asyncio.Semaphore(SYNC_CONCURRENCY)

        async def pod_view(item: cri.PodSandbox) -> api.PodSandbox:
            async with limit:
                try:
                    status = await self._call(
                        "PodSandboxStatus",
                        cri.PodSandboxStatusRequest(pod_sandbox_id=item.id, verbose=True),
                        cri.PodSandboxStatusResponse,
                    )
                except grpc.aio.AioRpcError as exc:
                    self._log.warning(
                        "pod status unavailable", pod_sandbox_id=item.id, error=str(exc)
                    )
                    return convert.listed_pod(item, {})
            return convert.listed_pod(item, status.info)

        async def container_view(item: cri.Container) -> api.Container | None:
            async with limit:
                try:
                    status = await self._call(
                        "ContainerStatus",
                        cri.ContainerStatusRequest(container_id=item.id, verbose=True),
                        cri.ContainerStatusResponse,
                    )
                except grpc.aio.AioRpcError as exc:
                    if exc.code() == grpc.StatusCode.NOT_FOUND:
                        return None  # removed since the listing
                    self._log.warning(
                        "container status unavailable", container_id=item.id, error=str(exc)
                    )
                    return convert.listed_container(item, cri.ContainerStatus(), {})
            return convert.listed_container(item, status.status, status.info)

        pods = list(await asyncio.gather(*(pod_view(p) for p in ready)))
        if self._kubelet is not None:
            # containers admitted late get their device hints too
            await self._kubelet.prime(pod_facts(p) for p in pods)
        views = await asyncio.gather(
            *(container_view(c) for c in listed if c.pod_sandbox_id in ready_ids)
        )
        containers = [c for c in views if c is not None]
        # The proxy pins a container in the request it forwards, so no container exists
        # without the answer; and a runtime's verbose status may not show the mems in force.
        by_sandbox = {p.id: p for p in pods}
        listed = [
            (
                pod_facts(by_sandbox[c.pod_sandbox_id]),
                container_facts(by_sandbox[c.pod_sandbox_id], c),
            )
            for c in containers
            if c.pod_sandbox_id in by_sandbox
        ]
        if self._kubelet is not None:
            listed = [(p, self._kubelet.facts(p, c)) for p, c in listed]
        pod_list = [pod_facts(p) for p in pods]
        updates = self.tracker.synchronize(pod_list, listed, mems_shown=False)
        if self._kubelet is not None:
            self._kubelet.synchronized(pod_list)
        self.sandboxes = {p.id: p for p in pods}
        self.containers = {c.id: c for c in containers}
        pinned = await self._apply(updates)
        self.synchronized.set()
        return pinned

    async def _apply(self, updates: Sequence[tuple[str, str]]) -> int:
        """Pin containers admitted late; a failure is logged (the container runs unpinned)."""
        pinned = 0
        for container_id, mems in updates:
            request = cri.UpdateContainerResourcesRequest(
                container_id=container_id,
                linux=cri.LinuxContainerResources(cpuset_mems=mems),
            )
            try:
                await self._call(
                    "UpdateContainerResources", request, cri.UpdateContainerResourcesResponse
                )
            except grpc.aio.AioRpcError as exc:
                self._log.error(
                    "pinning a container admitted late failed",
                    container_id=container_id,
                    cpuset_mems=mems,
                    error=f"{exc.code().name}: {exc.details()}",
                )
                continue
            ctr = self.containers.get(container_id)
            if ctr is not None:
                ctr.linux.resources.cpu.mems = mems
            pinned += 1
        return pinned

    async def synchronize_until_done(self) -> None:
        """synchronize(), retried with a capped backoff while the runtime is unreachable.

        A StateError (the start refused on the runtime's view, docs/recovery.md) ends it.
        """
        delay = RETRY_FIRST_S
        while True:
            try:
                pinned = await self.synchronize()
            except grpc.aio.AioRpcError as exc:
                self._log.warning(
                    "runtime not reachable; retrying",
                    error=f"{exc.code().name}: {exc.details()}",
                    retry_in_s=delay,
                )
            except StateError:
                raise
            except Exception:  # a bug must not leave the node silently unsynchronized
                self._log.exception("synchronization failed; retrying", retry_in_s=delay)
            else:
                self._log.info("runtime synchronized", late_pinned=pinned)
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX_S)


# -- the server ---------------------------------------------------------------------------


def _apply_update(ctr: api.Container, res: cri.LinuxContainerResources) -> None:
    """Our view of a container after the runtime applied an update (0: unchanged)."""
    current = ctr.linux.resources
    if res.memory_limit_in_bytes:
        current.memory.limit.value = res.memory_limit_in_bytes
    if res.cpuset_cpus:
        current.cpu.cpus = res.cpuset_cpus
    if res.cpuset_mems:
        current.cpu.mems = res.cpuset_mems
    if res.cpu_quota:
        current.cpu.quota.value = res.cpu_quota
    if res.cpu_period:
        current.cpu.period.value = res.cpu_period


def _prepare_socket(path: Path) -> None:
    """Remove a socket left by a killed predecessor; refuse to replace anything else."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise InputError(f"--listen {path}: exists and is not a socket")
    path.unlink()


async def start_server(proxy: CRIProxy, listen: str) -> Any:
    """Serve the proxy on a unix socket (mode 0660, like containerd's)."""
    path = unix_socket_path(listen, "--listen")
    _prepare_socket(path)
    server = grpc.aio.server(options=CHANNEL_OPTIONS)
    server.add_generic_rpc_handlers((proxy.rpc_handler(),))
    try:
        server.add_insecure_port(endpoint_target(str(path)))
    except RuntimeError as exc:
        raise InputError(f"--listen {path}: cannot listen there ({exc})") from None
    await server.start()
    os.chmod(path, 0o660)
    return server

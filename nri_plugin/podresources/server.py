"""A pod-resources-compatible socket: kubelet's answers with this plugin's memory in them.

node-feature-discovery's topology-updater and resource-topology-exporter
publish NodeResourceTopology zones from the pod-resources API, and take
memory from it only: allocatable from ``GetAllocatableResources().memory``,
used from the containers' ``memory`` in ``List``. With kubelet's memory
manager at ``None`` (as this plugin needs) kubelet reports no memory, so the
zones carry none. Pointed at this socket instead (``--serve-pod-resources``),
they see:

* ``List`` and ``Get``: kubelet's answer, with every listed container's
  ``memory`` set to the plugin's blocks for it (kubelet's ``ContainerMemory``
  form: one per block, the block's NUMA affinity as topology). Everything
  else passes as kubelet sent it, fields we do not declare (DRA's
  ``dynamic_resources``) included; so do the pod-level ``cpu_ids`` and
  ``memory`` (PodLevelResourceManagers), since the plugin allocates per
  container;
* ``GetAllocatableResources``: kubelet's devices and CPUs, with the node's
  allocatable memory per NUMA node and type as kubelet's static policy
  reports it (``GetAllocatableMemory``: one entry per node and type whose
  allocatable is not zero);
* kubelet's errors (rate limit, unknown pod, a timeout) as kubelet answered
  them, with the same status code;
* when kubelet's socket is absent or nobody answers on it, the plugin's view
  alone: its pods and their containers' memory, no devices and no CPUs,
  and allocatable memory only; a ``Get`` for a pod the plugin does not know
  is answered as kubelet answers it ("pod X in namespace Y not found").

The socket is limited as kubelet limits its own (100 QPS, burst 10,
``ResourceExhausted`` past it) and created as kubelet creates its own: no
mode set, so the process's umask decides (kubelet's ``CreateListener``); a
stale socket at the path is removed first, anything else refused.
"""

from __future__ import annotations

import asyncio
import os
import stat
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import grpc  # type: ignore[import-untyped]
import structlog

from nri_plugin.errors import InputError
from nri_plugin.podresources import wire
from nri_plugin.podresources.client import (
    RPC_TIMEOUT_S,
    SOCKET_ABSENT,
    UNAVAILABLE,
    PodResourcesClient,
    PodResourcesError,
)
from nri_plugin.podresources.gen import podresources_pb2 as pb
from nri_plugin.podresources.ratelimit import KUBELET_BURST, KUBELET_QPS, TokenBucket
from nri_plugin.podresources.resources import MemoryBlock

# kubelet's answer past its rate limit (ratelimit.go ErrorLimitExceeded)
RATE_LIMIT_MESSAGE = "rejected by rate limit"


@dataclass(frozen=True, slots=True)
class ProvidedPod:
    """A pod the plugin tracks, with its containers as kubelet lists them.

    Sidecars then app containers; never regular init containers (kubelet
    does not list them, and neither may we when answering alone).
    """

    namespace: str
    name: str
    containers: tuple[str, ...]


class MemoryProvider(Protocol):
    """The plugin's memory, as the served socket reports it."""

    def memory_blocks(
        self, namespace: str, pod_name: str, container_name: str
    ) -> Sequence[MemoryBlock]:
        """The container's blocks: type, bytes, NUMA affinity (empty when it has none)."""
        ...

    def allocatable_memory(self) -> Sequence[MemoryBlock]:
        """One block per NUMA node and type with non-zero allocatable, ``numa_nodes=(node,)``."""
        ...

    def pods(self) -> Sequence[ProvidedPod]:
        """Every pod the plugin tracks (answers when kubelet does not)."""
        ...


class Refusal(Exception):
    """An answer that is an error: the gRPC status code and details to send."""

    def __init__(self, code: Any, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


class PodResourcesServer:
    """The served API; ``kubelet`` is ``None`` when the plugin does not use kubelet's socket."""

    def __init__(
        self,
        provider: MemoryProvider,
        kubelet: PodResourcesClient | None,
        *,
        logger: Any = None,
        qps: float = KUBELET_QPS,
        burst: int = KUBELET_BURST,
    ) -> None:
        self.provider = provider
        self.kubelet = kubelet
        self._log = logger if logger is not None else structlog.get_logger("pod-resources-server")
        self._qps = qps
        self._burst = burst
        self._bucket: TokenBucket | None = None
        self._alone = False  # answering without kubelet (logged at each change)

    # -- the three calls, as values (the gRPC handlers wrap them) ------------

    async def list(self, timeout: float = RPC_TIMEOUT_S) -> Any:
        message = await self._from_kubelet(wire.LIST, pb.ListPodResourcesRequest(), timeout)
        if message is None:
            return pb.ListPodResourcesResponse(
                pod_resources=[self._provided_pod(p) for p in self.provider.pods()]
            )
        for pod in message.pod_resources:
            self._add_memory(pod)
        return message

    async def get(self, namespace: str, name: str, timeout: float = RPC_TIMEOUT_S) -> Any:
        request = pb.GetPodResourcesRequest(pod_name=name, pod_namespace=namespace)
        message = await self._from_kubelet(wire.GET, request, timeout)
        if message is None:
            for provided in self.provider.pods():
                if (provided.namespace, provided.name) == (namespace, name):
                    return pb.GetPodResourcesResponse(pod_resources=self._provided_pod(provided))
            # kubelet's own answer for a pod it does not know
            raise Refusal(grpc.StatusCode.UNKNOWN, f"pod {name} in namespace {namespace} not found")
        self._add_memory(message.pod_resources)
        return message

    async def allocatable(self, timeout: float = RPC_TIMEOUT_S) -> Any:
        request = pb.AllocatableResourcesRequest()
        message = await self._from_kubelet(wire.GET_ALLOCATABLE_RESOURCES, request, timeout)
        if message is None:
            message = pb.AllocatableResourcesResponse()
        del message.memory[:]
        message.memory.extend(wire.memory_to_pb(self.provider.allocatable_memory()))
        return message

    # -- gRPC ----------------------------------------------------------------

    def rpc_handler(self) -> Any:
        def unary(
            call: Callable[[Any, Any], Awaitable[Any]], request_type: Any, response_type: Any
        ) -> Any:
            return grpc.unary_unary_rpc_method_handler(
                call,
                request_deserializer=request_type.FromString,
                response_serializer=response_type.SerializeToString,
            )

        handlers = {
            "List": unary(
                self._handle_list, pb.ListPodResourcesRequest, pb.ListPodResourcesResponse
            ),
            "Get": unary(self._handle_get, pb.GetPodResourcesRequest, pb.GetPodResourcesResponse),
            "GetAllocatableResources": unary(
                self._handle_allocatable,
                pb.AllocatableResourcesRequest,
                pb.AllocatableResourcesResponse,
            ),
        }
        return grpc.method_handlers_generic_handler(wire.SERVICE, handlers)

    async def _handle_list(self, request: Any, context: Any) -> Any:
        return await self._serve(context, lambda timeout: self.list(timeout))

    async def _handle_get(self, request: Any, context: Any) -> Any:
        return await self._serve(
            context, lambda timeout: self.get(request.pod_namespace, request.pod_name, timeout)
        )

    async def _handle_allocatable(self, request: Any, context: Any) -> Any:
        return await self._serve(context, lambda timeout: self.allocatable(timeout))

    async def _serve(self, context: Any, answer: Callable[[float], Awaitable[Any]]) -> Any:
        loop = asyncio.get_running_loop()
        if self._bucket is None:
            self._bucket = TokenBucket(self._qps, self._burst, loop.time())
        if not self._bucket.allow(loop.time()):
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, RATE_LIMIT_MESSAGE)
        remaining = context.time_remaining()
        timeout = RPC_TIMEOUT_S if remaining is None else min(remaining, RPC_TIMEOUT_S)
        try:
            return await answer(timeout)
        except Refusal as refusal:
            await context.abort(refusal.code, refusal.details)
        except Exception:  # the provider failed: the caller gets an error, the log the story
            self._log.exception("pod-resources answer failed")
            await context.abort(grpc.StatusCode.INTERNAL, "nri-memory-manager could not answer")

    # -- internals -----------------------------------------------------------

    async def _from_kubelet(self, method: str, request: Any, timeout: float) -> Any:
        """kubelet's answer; ``None`` when kubelet is not there to answer."""
        if self.kubelet is None or not self.kubelet.socket_path:
            self._answering_alone(True, "the pod-resources API is not used")
            return None
        try:
            message = await self.kubelet.call(method, request, timeout)
        except PodResourcesError as exc:
            if exc.kind in (SOCKET_ABSENT, UNAVAILABLE):
                self._answering_alone(True, exc.details)
                return None
            raise Refusal(exc.code, exc.details) from None
        self._answering_alone(False, "")
        return message

    def _answering_alone(self, alone: bool, why: str) -> None:
        if alone == self._alone:
            return
        self._alone = alone
        if alone:
            self._log.warning(
                "kubelet's pod-resources unavailable: serving our memory alone", error=why
            )
        else:
            self._log.info("kubelet's pod-resources answering again")

    def _add_memory(self, pod: Any) -> None:
        for container in pod.containers:
            blocks = self.provider.memory_blocks(pod.namespace, pod.name, container.name)
            del container.memory[:]
            container.memory.extend(wire.memory_to_pb(blocks))

    def _provided_pod(self, provided: ProvidedPod) -> Any:
        return pb.PodResources(
            name=provided.name,
            namespace=provided.namespace,
            containers=[
                pb.ContainerResources(
                    name=c,
                    memory=wire.memory_to_pb(
                        self.provider.memory_blocks(provided.namespace, provided.name, c)
                    ),
                )
                for c in provided.containers
            ],
        )


def prepare_socket(path: Path, kubelet_socket: str | None) -> None:
    """Remove a socket left by a killed predecessor; refuse anything else, and kubelet's own."""
    if kubelet_socket and os.path.realpath(path) == os.path.realpath(kubelet_socket):
        raise InputError(f"--serve-pod-resources {path}: is kubelet's own socket")
    try:
        # kubelet's CreateListener makes the directory 0750
        path.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
        try:
            mode = path.lstat().st_mode
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(mode):
            raise InputError(f"--serve-pod-resources {path}: exists and is not a socket")
        path.unlink()
    except OSError as exc:
        raise InputError(f"--serve-pod-resources {path}: {exc.strerror or exc}") from None


async def start_server(server: PodResourcesServer, path: str) -> Any:
    """Serve ``server`` on the unix socket ``path``; returns the started ``grpc.aio.Server``."""
    socket_path = Path(path)
    kubelet_socket = server.kubelet.socket_path if server.kubelet is not None else None
    prepare_socket(socket_path, kubelet_socket)
    grpc_server = grpc.aio.server(
        options=(("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1))
    )
    grpc_server.add_generic_rpc_handlers((server.rpc_handler(),))
    try:
        grpc_server.add_insecure_port("unix:" + os.path.abspath(socket_path))
    except RuntimeError as exc:
        raise InputError(f"--serve-pod-resources {path}: cannot listen there ({exc})") from None
    await grpc_server.start()
    return grpc_server

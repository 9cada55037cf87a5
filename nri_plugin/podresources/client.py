"""The asyncio client of kubelet's pod-resources socket.

What kubelet allocated to a container (its devices and their NUMA nodes) and
whether kubelet lists the container at all (it lists sidecars and app
containers, never regular init containers) are asked once per pod:

* ``prefetch`` starts a ``Get(name, namespace)`` when the pod's sandbox
  starts; kubelet has admitted the pod and allocated its devices by then, so
  the answer is usually cached before the pod's first ``CreateContainer``;
* ``container`` answers from that cache when it lists the container, and
  otherwise asks again; it never waits more than ``LOOKUP_DEADLINE_S`` and
  says "unknown" past it (the late answer still fills the cache). ``Get`` has
  no pod UID: the cache is keyed by the UID the caller gives, and a cached
  answer that lacks the container is asked again once, in case it came from
  an earlier pod of the same name;
* ``GetAllocatableResources`` (the node's devices) is cached, and refreshed
  when it can have changed: when the channel (re)connects to kubelet (a
  kubelet restart re-registers every device plugin), when an answer holds a
  device the inventory lacks (at most every ``INVENTORY_MIN_INTERVAL_S``),
  and when read older than ``INVENTORY_MAX_AGE_S``;
* kubelet rate-limits the socket for all its clients together (100 QPS, burst
  10); we keep to half of it with our own bucket, and ``ResourceExhausted``
  is an answer like any other ("unknown").

When the socket is absent the client says so once and every lookup answers
"unknown" at once; it looks for the socket again at each call, so a kubelet
that starts after the plugin is found. Every failure degrades to "unknown",
is reported to the observer and logged once per pod. Kubelets without ``Get``
(before 1.34 unless ``KubeletPodResourcesGet`` is on) are asked with
``List`` instead.

About 690 lines: the cache, the deadline, the rate limit, the inventory and the
failure accounting all act on the same per-pod lookups; the protocol itself is
the generated code in ``gen/``.
"""

from __future__ import annotations

import asyncio
import enum
import os
import stat
from collections.abc import Coroutine, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import grpc  # type: ignore[import-untyped]
import structlog

from nri_plugin.engine.hint import ProviderHints
from nri_plugin.podresources import wire
from nri_plugin.podresources.devicehints import allocated_device_hints
from nri_plugin.podresources.flags import DEFAULT_SOCKET
from nri_plugin.podresources.gen import podresources_pb2 as pb
from nri_plugin.podresources.ratelimit import TokenBucket
from nri_plugin.podresources.resources import (
    AllocatableResources,
    ContainerResources,
    PodResources,
    device_keys,
)

# How long a container's creation may wait for kubelet's answer. containerd
# gives an NRI plugin 2 s per request and our own work takes milliseconds;
# kubelet answers Get from memory in well under a millisecond on its unix
# socket, so a kubelet that needs 100 ms is stalled, not busy. Past it the
# container is created as it would be without the API.
LOOKUP_DEADLINE_S = 0.1
# A request in the background (prefetch, a late answer, the inventory, List).
RPC_TIMEOUT_S = 5.0
# Our share of kubelet's limit, which every client of the socket shares
# (node-feature-discovery, resource-topology-exporter, device plugins, our
# served socket's callers): half of 100 QPS, burst 10.
CLIENT_QPS = 50.0
CLIENT_BURST = 5
INVENTORY_MAX_AGE_S = 300.0
INVENTORY_MIN_INTERVAL_S = 5.0

CHANNEL_OPTIONS = (
    ("grpc.max_receive_message_length", -1),
    ("grpc.max_send_message_length", -1),
    # after a kubelet restart, be back within a second rather than grpc's 2 minutes
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
)

# Failure kinds, as reported to the observer. An RPC that fails counts once
# with its kind; a lookup that answers "unknown" without an RPC failing for it
# counts once as socket-absent, deadline or rate-limited.
SOCKET_ABSENT = "socket-absent"  # no socket at the path
UNAVAILABLE = "unavailable"  # the socket is there, nobody answers (kubelet down)
RATE_LIMITED = "rate-limited"  # kubelet's ResourceExhausted, or our bucket past the deadline
TIMEOUT = "timeout"  # a background request ran out of RPC_TIMEOUT_S
DEADLINE = "deadline"  # a lookup stopped waiting at LOOKUP_DEADLINE_S
NOT_FOUND = "not-found"  # kubelet does not know the pod
MISMATCH = "mismatch"  # the answer is about another pod than asked
ERROR = "error"  # any other error kubelet answers
FAILURE_KINDS = (
    SOCKET_ABSENT,
    UNAVAILABLE,
    RATE_LIMITED,
    TIMEOUT,
    DEADLINE,
    NOT_FOUND,
    MISMATCH,
    ERROR,
)

# where an answer came from
SOURCE_CACHE = "cache"
SOURCE_GET = "get"
SOURCE_LIST = "list"
SOURCE_DISABLED = "disabled"  # --pod-resources-socket '': unknown, and not a failure


class Listing(enum.StrEnum):
    LISTED = "listed"  # an app container or a sidecar
    NOT_LISTED = "not-listed"  # a regular init container (or an ephemeral one)
    UNKNOWN = "unknown"  # no answer (in time)


@dataclass(frozen=True, slots=True)
class ContainerAnswer:
    """What kubelet says about one container.

    ``resources`` is set when the container is listed; ``source`` is where
    the answer came from (``cache``, ``get``, ``list``) or, when unknown, the
    failure kind.
    """

    listing: Listing
    resources: ContainerResources | None
    source: str


class PodResourcesObserver(Protocol):
    def on_failure(self, kind: str) -> None: ...


class _NoObserver:
    def on_failure(self, kind: str) -> None:
        pass


class PodResourcesError(Exception):
    """A call that brought no answer: its failure kind, gRPC status code and details."""

    def __init__(self, kind: str, code: Any, details: str) -> None:
        super().__init__(f"{kind}: {details}")
        self.kind = kind
        self.code = code
        self.details = details


@dataclass(frozen=True, slots=True)
class _Outcome:
    """A finished fetch: the pod's answer, or the kind of failure (already counted)."""

    pod: PodResources | None
    failure: str | None
    source: str


class _Pod:
    """The cache entry of one pod (by UID)."""

    __slots__ = (
        "answer",
        "answer_seq",
        "asked",
        "logged",
        "name",
        "namespace",
        "queued",
        "task",
        "task_seq",
        "uid",
    )

    def __init__(self, uid: str, namespace: str, name: str) -> None:
        self.uid = uid
        self.namespace = namespace
        self.name = name
        self.answer: PodResources | None = None
        self.answer_seq = 0  # the request that brought the answer
        self.task: asyncio.Task[_Outcome] | None = None
        self.task_seq = 0
        self.queued = False  # the fetch waits for a token of our bucket
        self.asked: dict[str, int] = {}  # container -> last request started before its lookup
        self.logged = False


def _kind_of(code: Any, details: str) -> str:
    if code == grpc.StatusCode.UNAVAILABLE:
        return UNAVAILABLE
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return RATE_LIMITED
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return TIMEOUT
    # kubelet's Get answers a plain error (code Unknown): "pod %s in namespace %s not found"
    if code == grpc.StatusCode.UNKNOWN and details.endswith("not found"):
        return NOT_FOUND
    return ERROR


def _get_missing(code: Any, details: str) -> bool:
    """kubelet without Get: too old (Unimplemented) or the gate off ("... Get method disabled")."""
    return bool(code == grpc.StatusCode.UNIMPLEMENTED or "Get method disabled" in details)


class PodResourcesClient:
    """kubelet's pod-resources API, cached per pod, never waited on past a deadline."""

    def __init__(
        self,
        socket_path: str = DEFAULT_SOCKET,
        *,
        observer: PodResourcesObserver | None = None,
        logger: Any = None,
        deadline: float = LOOKUP_DEADLINE_S,
        rpc_timeout: float = RPC_TIMEOUT_S,
        qps: float = CLIENT_QPS,
        burst: int = CLIENT_BURST,
        inventory_max_age: float = INVENTORY_MAX_AGE_S,
        inventory_min_interval: float = INVENTORY_MIN_INTERVAL_S,
    ) -> None:
        self.socket_path = socket_path
        self.deadline = deadline
        self.rpc_timeout = rpc_timeout
        self._observer: PodResourcesObserver = observer or _NoObserver()
        self._log = logger if logger is not None else structlog.get_logger("pod-resources")
        self._qps = qps
        self._burst = burst
        self._bucket: TokenBucket | None = None
        self._inventory_max_age = inventory_max_age
        self._inventory_min_interval = inventory_min_interval
        self._channel: Any = None
        self._calls: dict[str, Any] = {}
        self._said_absent = False
        self._use_list = False  # kubelet has no Get: ask List instead
        self._list_task: asyncio.Task[tuple[PodResources, ...]] | None = None
        self._pods: dict[str, _Pod] = {}
        self._seq = 0
        self._inventory: AllocatableResources | None = None
        self._inventory_keys: frozenset[tuple[str, str]] = frozenset()
        self._inventory_at = 0.0
        self._inventory_auto_at: float | None = None  # the last unforced refresh
        self._inventory_task: asyncio.Task[None] | None = None
        self._inventory_logged = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self._watcher: asyncio.Task[None] | None = None
        self._closed = False

    # -- life cycle ----------------------------------------------------------

    async def start(self) -> None:
        """Connect if the socket is there; otherwise say so, once."""
        self._bucket = TokenBucket(self._qps, self._burst, self._now())
        if not self.socket_path:
            self._log.info("pod-resources API not used: no device hints, init containers inferred")
        elif self._open_channel() is None:
            self._said_absent = True
            self._log.warning(
                "pod-resources socket absent: no device hints, init containers inferred",
                socket=self.socket_path,
            )

    async def close(self) -> None:
        self._closed = True
        tasks = [*self._tasks, *([self._watcher] if self._watcher is not None else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()
        self._watcher = None
        if self._channel is not None:
            await self._channel.close()
            self._channel = None

    async def drain(self) -> None:
        """Wait until every request in flight has finished (late answers cached)."""
        while True:
            pending = [t for t in self._tasks if not t.done()]
            if not pending:
                return
            await asyncio.wait(pending)

    @property
    def available(self) -> bool:
        """Whether the socket is there (it may still not answer)."""
        return self._open_channel() is not None

    # -- per pod -------------------------------------------------------------

    def prefetch(self, pod_uid: str, namespace: str, name: str) -> None:
        """Ask for the pod's resources in the background (at its sandbox's start)."""
        if self._closed or self._open_channel() is None:
            return
        entry = self._entry(pod_uid, namespace, name)
        if entry.task is None and entry.answer is None:
            self._start_fetch(entry)

    async def container(
        self, pod_uid: str, namespace: str, name: str, container_name: str
    ) -> ContainerAnswer:
        """The container's resources and listing, within ``deadline`` seconds."""
        loop = asyncio.get_running_loop()
        give_up = loop.time() + self.deadline
        known = self._pods.get(pod_uid)
        cached = self._from_cache(known, container_name) if known is not None else None
        if cached is not None:
            return cached
        if not self.socket_path:
            return ContainerAnswer(Listing.UNKNOWN, None, SOURCE_DISABLED)
        if self._closed or self._open_channel() is None:
            # said once at start (and not per pod): counted only
            self._observer.on_failure(SOCKET_ABSENT)
            return ContainerAnswer(Listing.UNKNOWN, None, SOCKET_ABSENT)
        entry = known if known is not None else self._entry(pod_uid, namespace, name)
        asked = entry.asked.setdefault(container_name, self._seq)
        while True:
            task = entry.task if entry.task is not None else self._start_fetch(entry)
            seq = entry.task_seq
            remaining = give_up - loop.time()
            done: set[Any] = set()
            if remaining > 0:
                done, _ = await asyncio.wait({task}, timeout=remaining)
            if not done:
                kind = RATE_LIMITED if entry.queued else DEADLINE
                return self._unknown(entry, kind, f"no answer within {self.deadline:g} s")
            if task.cancelled():  # closing
                return ContainerAnswer(Listing.UNKNOWN, None, ERROR)
            outcome = task.result()
            if outcome.pod is None:
                # the fetch counted and logged its failure
                return ContainerAnswer(Listing.UNKNOWN, None, outcome.failure or ERROR)
            found = outcome.pod.container(container_name)
            if found is not None:
                return ContainerAnswer(Listing.LISTED, found, outcome.source)
            if seq > asked:
                return ContainerAnswer(Listing.NOT_LISTED, None, outcome.source)
            # that request was under way before this container was asked about: once more

    def cached_pod(self, pod_uid: str) -> PodResources | None:
        entry = self._pods.get(pod_uid)
        return entry.answer if entry is not None else None

    def is_listed(self, pod_uid: str, container_name: str) -> bool | None:
        """From the cache only: listed, not listed, or ``None`` (no answer to tell)."""
        entry = self._pods.get(pod_uid)
        if entry is None:
            return None
        answer = self._from_cache(entry, container_name)
        if answer is None:
            return None
        return answer.listing is Listing.LISTED

    def forget(self, pod_uid: str) -> None:
        """Drop the pod's cache (its sandbox is removed); a request in flight just ends."""
        self._pods.pop(pod_uid, None)

    async def prime(self, pods: Iterable[tuple[str, str, str]]) -> int:
        """Fill the cache of these (uid, namespace, name) pods with one ``List`` (after a restart).

        Returns how many were found.
        """
        wanted = list(pods)
        if not wanted or self._closed or self._open_channel() is None:
            return 0
        seq = self._next_seq()
        try:
            listed = await self._list()
        except PodResourcesError as exc:
            self._log.warning("pod-resources List failed", kind=exc.kind, error=exc.details)
            return 0
        by_name = {(p.namespace, p.name): p for p in listed}
        found = 0
        for uid, namespace, name in wanted:
            pod = by_name.get((namespace, name))
            if pod is not None:
                entry = self._entry(uid, namespace, name)
                entry.answer, entry.answer_seq = pod, seq
                found += 1
        return found

    async def list_pods(self) -> tuple[PodResources, ...] | None:
        """Every pod kubelet lists, or ``None`` when it does not answer (logged)."""
        if self._closed or self._open_channel() is None:
            return None
        try:
            return await self._list()
        except PodResourcesError as exc:
            self._log.warning("pod-resources List failed", kind=exc.kind, error=exc.details)
            return None

    # -- the node's inventory ------------------------------------------------

    def inventory(self) -> AllocatableResources | None:
        """The cached ``GetAllocatableResources`` (``None`` before the first answer)."""
        if self._inventory is None or self._now() - self._inventory_at > self._inventory_max_age:
            self._refresh_inventory()
        return self._inventory

    async def refresh_inventory(self) -> AllocatableResources | None:
        """Ask for the inventory now and wait for it (``None`` when it does not come)."""
        if self._inventory_task is None or self._inventory_task.done():
            self._refresh_inventory(force=True)
        task = self._inventory_task
        if task is not None:
            await asyncio.wait({task})
        return self._inventory

    def device_hints(
        self, numa_nodes: Sequence[int], resources: ContainerResources
    ) -> ProviderHints:
        """The container's device hints against the cached inventory (see ``devicehints``)."""
        inventory = self.inventory()
        return allocated_device_hints(
            numa_nodes, resources.devices, inventory.devices if inventory is not None else ()
        )

    # -- raw calls (the served socket) -------------------------------------

    async def call(self, method: str, request: Any, timeout: float) -> Any:
        """One call of ``wire.METHODS``, within ``timeout`` seconds including our bucket's wait.

        Raises ``PodResourcesError`` (already counted) when there is no answer.
        """
        if self._closed or self._open_channel() is None:
            raise PodResourcesError(
                SOCKET_ABSENT, grpc.StatusCode.UNAVAILABLE, "no socket at " + self.socket_path
            )
        bucket = self._rate_bucket()
        if bucket.delay(self._now()) > timeout:
            self._observer.on_failure(RATE_LIMITED)
            raise PodResourcesError(
                RATE_LIMITED, grpc.StatusCode.RESOURCE_EXHAUSTED, "rejected by rate limit"
            )
        loop = asyncio.get_running_loop()
        started = loop.time()
        wait = bucket.reserve(self._now())
        if wait > 0:
            await asyncio.sleep(wait)
        try:
            return await self._rpc(method, request, max(timeout - (loop.time() - started), 0.001))
        except _GetMissing as exc:  # kubelet's own answer, for our caller to see
            self._observer.on_failure(ERROR)
            raise PodResourcesError(ERROR, exc.code, exc.details) from None

    # -- internals -----------------------------------------------------------

    def _now(self) -> float:
        return asyncio.get_running_loop().time()

    def _rate_bucket(self) -> TokenBucket:
        if self._bucket is None:
            self._bucket = TokenBucket(self._qps, self._burst, self._now())
        return self._bucket

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _socket_present(self) -> bool:
        try:
            return stat.S_ISSOCK(os.stat(self.socket_path).st_mode)
        except OSError:
            return False

    def _open_channel(self) -> Any:
        """The channel, opened once the socket is there; ``None`` while it is not."""
        if self._channel is not None:
            return self._channel
        if not self.socket_path or not self._socket_present():
            return None
        if self._said_absent:
            self._log.info("pod-resources socket found", socket=self.socket_path)
            self._said_absent = False
        target = "unix:" + os.path.abspath(self.socket_path)
        self._channel = grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS)
        self._calls = {
            method: self._channel.unary_unary(
                method,
                request_serializer=request.SerializeToString,
                response_deserializer=response.FromString,
            )
            for method, (request, response) in wire.METHODS.items()
        }
        self._watcher = asyncio.get_running_loop().create_task(self._watch(self._channel))
        return self._channel

    async def _watch(self, channel: Any) -> None:
        """Refresh the inventory whenever the channel becomes ready (kubelet (re)started)."""
        try:
            state = channel.get_state(try_to_connect=True)
            while not self._closed:
                if state == grpc.ChannelConnectivity.READY:
                    self._refresh_inventory(force=True)
                await channel.wait_for_state_change(state)
                state = channel.get_state(try_to_connect=False)
        except (grpc.aio.UsageError, RuntimeError) as exc:  # the channel closed under us
            self._log.debug("pod-resources channel watch ended", error=str(exc))

    async def _rpc(self, method: str, request: Any, timeout: float) -> Any:
        try:
            return await self._calls[method](request, timeout=timeout)
        except grpc.aio.UsageError as exc:  # the channel is closing
            raise PodResourcesError(ERROR, grpc.StatusCode.CANCELLED, str(exc)) from None
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
            details = exc.details() or ""
            if method == wire.GET and _get_missing(code, details):
                raise _GetMissing(code, details) from None
            kind = _kind_of(code, details)
            self._observer.on_failure(kind)
            raise PodResourcesError(kind, code, details) from None
        except Exception as exc:  # whatever else, an answer we do not have
            self._observer.on_failure(ERROR)
            raise PodResourcesError(ERROR, grpc.StatusCode.UNKNOWN, repr(exc)) from None

    def _entry(self, uid: str, namespace: str, name: str) -> _Pod:
        entry = self._pods.get(uid)
        if entry is None:
            entry = self._pods[uid] = _Pod(uid, namespace, name)
        return entry

    def _from_cache(self, entry: _Pod, container_name: str) -> ContainerAnswer | None:
        if entry.answer is None:
            return None
        found = entry.answer.container(container_name)
        if found is not None:
            return ContainerAnswer(Listing.LISTED, found, SOURCE_CACHE)
        asked = entry.asked.get(container_name)
        if asked is not None and entry.answer_seq > asked:
            return ContainerAnswer(Listing.NOT_LISTED, None, SOURCE_CACHE)
        return None

    def _unknown(self, entry: _Pod, kind: str, detail: str) -> ContainerAnswer:
        self._observer.on_failure(kind)
        self._log_pod(entry, kind, detail)
        return ContainerAnswer(Listing.UNKNOWN, None, kind)

    def _log_pod(self, entry: _Pod, kind: str, detail: str) -> None:
        if entry.logged:
            return
        entry.logged = True
        self._log.warning(
            "pod-resources: no answer for pod",
            pod=f"{entry.namespace}/{entry.name}",
            pod_uid=entry.uid,
            kind=kind,
            error=detail,
        )

    def _start_fetch(self, entry: _Pod) -> asyncio.Task[_Outcome]:
        seq = self._next_seq()
        task: asyncio.Task[_Outcome] = self._spawn(self._fetch(entry, seq))
        entry.task, entry.task_seq = task, seq
        return task

    async def _fetch(self, entry: _Pod, seq: int) -> _Outcome:
        try:
            entry.queued = True
            wait = self._rate_bucket().reserve(self._now())
            if wait > 0:
                await asyncio.sleep(wait)
            entry.queued = False
            pod, source = await self._ask(entry)
            entry.answer, entry.answer_seq = pod, seq
            self._check_inventory(pod)
            return _Outcome(pod, None, source)
        except PodResourcesError as exc:
            self._log_pod(entry, exc.kind, exc.details)
            return _Outcome(None, exc.kind, exc.kind)
        except Exception as exc:  # whatever happens, a lookup degrades, never raises
            self._observer.on_failure(ERROR)
            self._log_pod(entry, ERROR, repr(exc))
            return _Outcome(None, ERROR, ERROR)
        finally:
            entry.queued = False
            if entry.task is asyncio.current_task():
                entry.task = None

    async def _ask(self, entry: _Pod) -> tuple[PodResources, str]:
        if not self._use_list:
            request = pb.GetPodResourcesRequest(pod_name=entry.name, pod_namespace=entry.namespace)
            try:
                message = await self._rpc(wire.GET, request, self.rpc_timeout)
            except _GetMissing as exc:
                self._use_list = True
                self._log.info("kubelet has no pod-resources Get; asking List", error=str(exc))
            else:
                pod = wire.pod_from_pb(message.pod_resources)
                if (pod.namespace, pod.name) != (entry.namespace, entry.name):
                    self._observer.on_failure(MISMATCH)
                    raise PodResourcesError(
                        MISMATCH,
                        grpc.StatusCode.UNKNOWN,
                        f"asked for {entry.namespace}/{entry.name}, "
                        f"answered {pod.namespace}/{pod.name}",
                    )
                return pod, SOURCE_GET
        for pod in await self._list():
            if (pod.namespace, pod.name) == (entry.namespace, entry.name):
                return pod, SOURCE_LIST
        self._observer.on_failure(NOT_FOUND)
        raise PodResourcesError(
            NOT_FOUND,
            grpc.StatusCode.UNKNOWN,
            f"pod {entry.name} in namespace {entry.namespace} not found",
        )

    async def _list(self) -> tuple[PodResources, ...]:
        """One ``List`` shared by every caller that asks while it is under way."""
        if self._list_task is None or self._list_task.done():
            self._list_task = self._spawn(self._list_once())
        return await asyncio.shield(self._list_task)

    async def _list_once(self) -> tuple[PodResources, ...]:
        wait = self._rate_bucket().reserve(self._now())
        if wait > 0:
            await asyncio.sleep(wait)
        message = await self._rpc(wire.LIST, pb.ListPodResourcesRequest(), self.rpc_timeout)
        pods = tuple(wire.pod_from_pb(p) for p in message.pod_resources)
        for pod in pods:
            self._check_inventory(pod)
        return pods

    def _check_inventory(self, pod: PodResources) -> None:
        if self._inventory is None:
            return
        for c in pod.containers:
            if not device_keys(c.devices) <= self._inventory_keys:
                self._refresh_inventory()
                return

    def _refresh_inventory(self, *, force: bool = False) -> None:
        """Ask for the inventory in the background.

        Unforced refreshes (an unknown device, an old or missing inventory) are
        spaced by ``inventory_min_interval``: an allocated device that turned
        unhealthy is missing from every inventory, and must not make every
        answer ask again.
        """
        if self._closed or (self._inventory_task is not None and not self._inventory_task.done()):
            return
        if not force:
            now, last = self._now(), self._inventory_auto_at
            if last is not None and now - last < self._inventory_min_interval:
                return
            self._inventory_auto_at = now
        self._inventory_task = self._spawn(self._fetch_inventory())

    async def _fetch_inventory(self) -> None:
        try:
            wait = self._rate_bucket().reserve(self._now())
            if wait > 0:
                await asyncio.sleep(wait)
            message = await self._rpc(
                wire.GET_ALLOCATABLE_RESOURCES, pb.AllocatableResourcesRequest(), self.rpc_timeout
            )
        except PodResourcesError as exc:
            if not self._inventory_logged:
                self._inventory_logged = True
                self._log.warning(
                    "pod-resources GetAllocatableResources failed", kind=exc.kind, error=exc.details
                )
            return
        except Exception as exc:
            self._observer.on_failure(ERROR)
            self._log.warning("pod-resources GetAllocatableResources failed", error=repr(exc))
            return
        self._inventory_logged = False
        self._inventory = wire.allocatable_from_pb(message)
        self._inventory_keys = self._inventory.device_keys()
        self._inventory_at = self._now()


class _GetMissing(Exception):
    """kubelet cannot answer Get (too old, or the gate is off)."""

    def __init__(self, code: Any, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details

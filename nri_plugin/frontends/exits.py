"""Exit codes from the runtime's CRI, which NRI does not carry.

Whether an exited container was a finished init container (it lends its memory
to the pod's next container) or a crashed one (it keeps its blocks until its
restart) hangs on its exit code. NRI defines ``Container.exit_code`` (0.10) but
containerd 1.7 and 2.1 never fill it, and StopContainer says nothing more; the
CRI ``ContainerStatus`` of the same containerd does. So before a new container
of a pod that has such exited containers is admitted, the NRI plugin asks the
runtime's CRI socket for their exit codes, within a deadline; without an
answer the tracker infers, and says so (docs/lifecycle.md). The same socket
lists the pod sandboxes whose end containerd does not announce (:mod:`.relist`).

The socket: ``--runtime-endpoint``, else ``containerd.sock`` beside the NRI
socket, else containerd's default ``/run/containerd/containerd.sock``.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import grpc  # type: ignore[import-untyped]

from nri_plugin.frontends.cri.gen import cri_pb2 as cri
from nri_plugin.frontends.nri_convert import LABEL_POD_UID
from nri_plugin.tracker.facts import SandboxFacts

DEFAULT_ENDPOINT = "/run/containerd/containerd.sock"
# How long a CreateContainer may wait for the exit codes: a local CRI answer takes
# about a millisecond, containerd gives its plugins 2 s.
DEADLINE_S = 0.1
_STATUS = "/runtime.v1.RuntimeService/ContainerStatus"
_VERSION = "/runtime.v1.RuntimeService/Version"
_LIST_SANDBOXES = "/runtime.v1.RuntimeService/ListPodSandbox"
# ListPodSandbox runs off the request path (frontends/relist.py): a node's whole listing
LIST_DEADLINE_S = 5.0


def candidate_endpoints(explicit: str | None, nri_socket: str) -> list[Path]:
    """The CRI sockets to try, in order."""
    if explicit:
        return [Path(explicit.removeprefix("unix://"))]
    beside = Path(nri_socket).parent / "containerd.sock"
    return [beside, Path(DEFAULT_ENDPOINT)]


class RuntimeUnanswered(Exception):
    """A CRI call the runtime did not answer (the text says how it failed)."""


class ExitCodes:
    """Asks the runtime's CRI for the exit codes of exited containers."""

    def __init__(self, explicit: str | None, nri_socket: str, logger: Any) -> None:
        self._candidates = candidate_endpoints(explicit, nri_socket)
        self._explicit = bool(explicit)
        self._log = logger
        self._channel: Any = None
        self.endpoint: Path | None = None

    async def start(self) -> None:
        """Connect to the first candidate that answers CRI; say which, or that none did."""
        for path in self._candidates:
            if not os.path.exists(path):
                continue
            channel = grpc.aio.insecure_channel(f"unix:{path}")
            try:
                await channel.unary_unary(_VERSION)(
                    cri.VersionRequest().SerializeToString(), timeout=2.0
                )
            except grpc.aio.AioRpcError as exc:
                await channel.close()
                self._log.info("not a CRI socket", path=str(path), error=exc.code().name)
                continue
            self._channel, self.endpoint = channel, path
            self._log.info("exit codes read from the runtime's CRI", endpoint=str(path))
            return
        log = self._log.warning if self._explicit else self._log.info
        log(
            "no runtime CRI socket; exits are classified by inference",
            tried=[str(p) for p in self._candidates],
        )

    async def of(self, container_ids: Iterable[str]) -> dict[str, int]:
        """Exit codes of those of ``container_ids`` that exited, within :data:`DEADLINE_S`."""
        ids = list(container_ids)
        if self._channel is None or not ids:
            return {}
        results = await asyncio.gather(*(self._one(cid) for cid in ids))
        return {cid: code for cid, code in zip(ids, results, strict=True) if code is not None}

    async def _one(self, container_id: str) -> int | None:
        request = cri.ContainerStatusRequest(container_id=container_id).SerializeToString()
        try:
            data = await self._channel.unary_unary(_STATUS)(request, timeout=DEADLINE_S)
        except grpc.aio.AioRpcError:
            return None
        status = cri.ContainerStatusResponse.FromString(data).status
        if status.state != cri.CONTAINER_EXITED or not status.finished_at:
            return None
        return int(status.exit_code)

    @property
    def connected(self) -> bool:
        """Whether a CRI socket answered at start (else nothing is ever asked)."""
        return self._channel is not None

    async def pod_sandboxes(self) -> list[SandboxFacts]:
        """Every pod sandbox the runtime lists (CRI ``ListPodSandbox``, no filter).

        Raises :class:`RuntimeUnanswered` when the runtime does not answer in time.
        """
        if self._channel is None:
            raise RuntimeUnanswered("no runtime CRI socket")
        request = cri.ListPodSandboxRequest().SerializeToString()
        try:
            data = await self._channel.unary_unary(_LIST_SANDBOXES)(
                request, timeout=LIST_DEADLINE_S
            )
        except grpc.aio.AioRpcError as exc:
            raise RuntimeUnanswered(f"ListPodSandbox: {exc.code().name}") from None
        return [
            SandboxFacts(
                # kubelet sets both; the label is what the rest of the plugin reads
                item.metadata.uid or item.labels.get(LABEL_POD_UID, ""),
                item.id,
                item.state == cri.SANDBOX_READY,
            )
            for item in cri.ListPodSandboxResponse.FromString(data).items
        ]

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = None

"""Pod ends the runtime never announces, found in its CRI listing.

containerd (1.7 and 2.x) forgets its pods and exited containers when it
restarts: its NRI layer (``internal/nri/nri.go``, the ``local`` map) sends
StopPodSandbox, RemovePodSandbox and RemoveContainer only for what its current
process has seen, so the end of a pod whose sandbox ran before the restart is
never announced (docs/fault-injection.md, "containerd hazards"). The tracker
names those pods while they hold memory
(:meth:`~nri_plugin.tracker.tracker.NodeTracker.unannounced_pods`); this task
then asks the runtime's CRI ``ListPodSandbox`` every ``--relist-interval``
seconds and hands the answer to the tracker, which releases a pod with no
sandbox left as RemovePodSandbox would, one with no ready sandbox as
StopPodSandbox would (:meth:`~nri_plugin.tracker.tracker.NodeTracker.pod_sandboxes_listed`).

Off the request path: NRI events are served meanwhile. Nothing is asked while
no such pod holds memory, nor while the runtime is not connected (the next
Synchronize takes its whole view). A call that fails releases nothing: it is
logged once, counted, and made again at the next interval.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from nri_plugin.frontends.exits import RuntimeUnanswered
from nri_plugin.tracker.facts import SandboxFacts

# kubelet's PLEG relists every second; pods that outlive a containerd restart are rare
# and their memory can wait a little
DEFAULT_INTERVAL_S = 10.0


class PodEnds(Protocol):
    """The NRI handler (:class:`~nri_plugin.frontends.nri.MemoryPlugin`): which pods to
    ask about, and what the runtime listed."""

    @property
    def synchronized(self) -> bool: ...

    def unannounced_pods(self) -> dict[str, str]: ...

    def pod_sandboxes_listed(
        self, asked: Mapping[str, str], listed: Iterable[SandboxFacts]
    ) -> list[str]: ...


class RuntimeSandboxes(Protocol):
    async def pod_sandboxes(self) -> list[SandboxFacts]:
        """Every pod sandbox the runtime lists; raises :class:`RuntimeUnanswered`."""
        ...


class RelistObserver(Protocol):
    """Hooks for metrics (:class:`nri_plugin.metrics.Metrics` implements them)."""

    def relist_failed(self) -> None: ...

    def unannounced_released(self, pods: int) -> None: ...


class _Unobserved:
    def relist_failed(self) -> None:
        pass

    def unannounced_released(self, pods: int) -> None:
        pass


class Relist:
    """Asks the runtime for the sandboxes of pods whose end it may not announce."""

    def __init__(
        self,
        plugin: PodEnds,
        runtime: RuntimeSandboxes,
        interval: float,
        logger: Any,
        observer: RelistObserver | None = None,
    ) -> None:
        self._plugin = plugin
        self._runtime = runtime
        self._interval = interval
        self._log = logger
        self._observer: RelistObserver = observer or _Unobserved()
        self._failing = False  # said once until the runtime answers again

    async def run(self) -> None:
        """Until cancelled; at once when the interval is 0 (off)."""
        if self._interval <= 0:
            return
        while True:
            await asyncio.sleep(self._interval)
            await self.once()

    async def once(self) -> bool:
        """One look; whether the runtime was asked."""
        if not self._plugin.synchronized:
            return False  # disconnected: the next Synchronize lists everything
        asked = self._plugin.unannounced_pods()
        if not asked:
            return False
        try:
            listed = await self._runtime.pod_sandboxes()
        except RuntimeUnanswered as exc:
            self._observer.relist_failed()
            if not self._failing:
                self._failing = True
                self._log.warning(
                    "runtime did not list its pod sandboxes; nothing released, asked again",
                    error=str(exc),
                    pods=len(asked),
                    interval_s=self._interval,
                )
            return True
        if self._failing:
            self._failing = False
            self._log.info("runtime lists its pod sandboxes again")
        if not self._plugin.synchronized:
            return True  # disconnected while it answered: the listing may be a new process's
        released = self._plugin.pod_sandboxes_listed(asked, listed)
        if released:
            self._observer.unannounced_released(len(released))
        return True

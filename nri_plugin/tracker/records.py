"""What the tracker remembers of each pod and container, and which containers are init ones.

Blocks belong to (pod UID, container name), as in kubelet's state; the records
here follow the containers behind those names: every instance the runtime
created (a restart is a new container ID under the same name), in creation
order, and what is known of their exits.

Only a *finished regular init container* lends its memory to the pod's next
container and gives it up when that container starts (kubelet's
``manager.AddContainer``). Which containers those are is known exactly when
kubelet's pod-resources API answered for the pod (it lists app containers and
sidecars, never regular init containers); otherwise it is inferred from the
order kubelet creates containers in (docs/lifecycle.md, "Init containers"):

* kubelet creates a regular init container only after the previous one exited
  with code 0, and creates nothing else of the pod while it runs;
* so an exited container X is taken for a finished init container when no
  container with a new name was created during X's life, X exited with code 0
  (or the runtime does not say), and X's name was not created again since.

An app container or sidecar that crashed fails the first rule: its siblings
were created while it ran (kubelet creates all app containers of a pod at once).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, TypeVar

from nri_plugin.engine.hint import DeviceHints, TopologyHint
from nri_plugin.tracker.facts import EXITED, RUNNING, ContainerResources

# How a container was classified.
INIT = "init"  # a regular init container
LISTED = "app or sidecar"  # listed by kubelet's pod-resources API
# Where the classification came from.
SOURCE_POD_RESOURCES = "pod-resources"
SOURCE_INFERRED = "inferred"

V = TypeVar("V")

# Dicts of records shared between records holding equal ones (see ``shared_with``):
# keyed by their names and the identities of their values, each dict keeping its values
# alive (so no id is reused while its entry stands). Emptied when full.
_SHARED_MAX = 4096
_shared: dict[tuple[object, ...], dict[str, Any]] = {}


def shared_with(d: Mapping[str, V], name: str, value: V) -> dict[str, V]:
    """``{**d, name: value}``, as one dict shared with the records that hold one with the
    same names and values (the same objects), in the same order; never change it in place.

    A pod's resources by name and its containers' first limits are the same for every pod
    of one workload (ContainerResources are shared: nri_convert interns them): at 10,000
    pods, a dict each was 184 bytes a pod.
    """
    if not d:
        key: tuple[object, ...] = (name, id(value))
    elif d.get(name, d) is value:
        return d if type(d) is dict else dict(d)
    else:
        d = {**d, name: value}
        key = tuple(x for n, v in d.items() for x in (n, id(v)))
    shared = _shared.get(key)
    if shared is None:
        if len(_shared) >= _SHARED_MAX:
            _shared.clear()
        shared = _shared[key] = dict(d) if d else {name: value}
    return shared


@dataclass(slots=True)
class ContainerRecord:
    """One container instance (one container ID)."""

    id: str
    name: str
    # event clock values: when it was created and when it exited (None: it has not)
    created: int
    exited: int | None = None
    state: str = ""
    exit_code: int | None = None


@dataclass(slots=True)
class PodRecord:
    uid: str
    sandbox_id: str
    name: str
    namespace: str
    qos: str | None
    memory_limit: int | None = None
    hugepage_limits: dict[str, int] | None = None
    # container id -> record, in creation order
    containers: dict[str, ContainerRecord] = field(default_factory=dict)
    # container name -> resources last seen (creation, update, listing); shared between
    # records (``shared_with``): never changed in place, replaced (``set_resources``)
    resources: dict[str, ContainerResources] = field(default_factory=dict)
    # container name -> event clock of its first creation
    first_created: dict[str, int] = field(default_factory=dict)
    # names kubelet's pod-resources API lists for the pod (None: no answer)
    listed: frozenset[str] | None = None
    # pod scope: the device manager's hints for the devices of all the listed containers
    device_hints: DeviceHints | None = None
    # restored from the exit records of an earlier run (see NodeTracker.exit_records):
    # name -> (INIT or LISTED, source), and name -> names first created after its exit;
    # None until the first is stored (read through the properties below): most pods
    # never have any, and an empty dict per pod is 64 bytes at 10,000 pods
    _restored_kinds: dict[str, tuple[str, str]] | None = None
    _restored_successors: dict[str, frozenset[str]] | None = None
    # pod scope: the affinity chosen for the pod, and how its request was sized
    affinity: TopologyHint | None = None
    sizing: str = ""
    # why the pod is known to set pod-level resources (tracker/podlevel.py); "" unknown
    pod_level: str = ""
    # the plugin saw the pod from its sandbox on (every container it created was seen)
    seen_from_start: bool = False
    # the pod's cpu limit sent with the sandbox (cores)
    cpu_limit: Fraction | None = None
    # container name -> its memory limit at its first creation, when the plugin saw it
    # (limits before any in-place resize, as the sandbox's limit was computed from them);
    # shared as ``resources`` is: replaced (``set_created_limit``), never changed in place
    created_limits: dict[str, int] = field(default_factory=dict)
    # a container's memory limit changed (in-place resize): the sandbox's limit may have
    # been updated (UpdatePodSandboxResources) while the containers' first limits were not
    resized: bool = False

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}" if self.name else self.uid

    def set_resources(self, name: str, resources: ContainerResources) -> None:
        self.resources = shared_with(self.resources, name, resources)

    def set_created_limit(self, name: str, limit: int) -> None:
        self.created_limits = shared_with(self.created_limits, name, limit)

    @property
    def restored_kinds(self) -> dict[str, tuple[str, str]]:
        """Restored kinds by name (the dict is made when first asked for, to be filled)."""
        if self._restored_kinds is None:
            self._restored_kinds = {}
        return self._restored_kinds

    @property
    def restored_successors(self) -> dict[str, frozenset[str]]:
        """Restored successors by name (made when first asked for, to be filled)."""
        if self._restored_successors is None:
            self._restored_successors = {}
        return self._restored_successors

    def latest(self, name: str) -> ContainerRecord | None:
        """The newest instance of ``name``."""
        found = None
        for c in self.containers.values():
            if c.name == name:
                found = c
        return found

    def classify(self, name: str) -> tuple[str, str] | None:
        """(INIT or LISTED, source) when known; None when it cannot be told yet.

        Inference only answers for an exited latest instance (see the module's
        docstring); the exact answer needs kubelet's pod-resources listing.
        """
        if self.listed is not None:
            return (LISTED if name in self.listed else INIT), SOURCE_POD_RESOURCES
        kinds = self._restored_kinds
        if kinds is not None and name in kinds:
            return kinds[name]
        c = self.latest(name)
        if c is None or c.exited is None:
            return None
        if c.exit_code not in (None, 0):
            return LISTED, SOURCE_INFERRED
        for other, first in self.first_created.items():
            if other != name and c.created < first < c.exited:
                return LISTED, SOURCE_INFERRED  # a sibling was created while it ran
        return INIT, SOURCE_INFERRED

    def finished_inits(self, before: int, *, but: str = "") -> list[tuple[ContainerRecord, str]]:
        """Exited regular init containers created before clock ``before``, with the source.

        Only the latest instance of each name counts, and never one named ``but``.
        """
        out = []
        seen: set[str] = {but}
        for c in reversed(self.containers.values()):
            if c.name in seen:
                continue
            seen.add(c.name)
            if c.exited is None or c.created >= before:
                continue
            kind = self.classify(c.name)
            if kind is not None and kind[0] == INIT:
                out.append((c, kind[1]))
        out.reverse()
        return out

    def all_created(self) -> bool:
        """Whether every app container and sidecar of the pod has been created.

        kubelet allocates a whole pod at admission: its later containers reuse the
        finished init containers' memory while those still hold it, and kubelet
        releases it when the next container starts. The plugin sees the containers
        one at a time, so it keeps a finished init container's memory until the
        pod's other containers exist: exactly when kubelet's pod-resources API listed
        them; else when the containers created besides the init ones add up to the
        pod's memory limit (kubelet's ``max(apps + sidecars, init peak)``). When an
        init container's peak is that limit, nothing tells: kubelet's own moment, the
        next start, is taken (docs/lifecycle.md, "Init containers").
        """
        if self.listed is not None:
            return self.listed <= self.first_created.keys()
        limit = self.memory_limit
        if limit is None:
            return True
        inits = {c.name for c, _ in self.finished_inits(1 << 62)}
        created = 0
        peak = 0
        for name in sorted(self.first_created, key=self.first_created.__getitem__):
            res = self.resources.get(name)
            size = res.memory_limit if res is not None else 0
            if name in inits:
                peak = max(peak, size + created)
            else:
                created += size
        return created >= limit or peak >= limit

    def next_started(self, c: ContainerRecord) -> bool:
        """Whether a container first created after ``c`` runs, or ran, in this pod."""
        restored = self._restored_successors
        after = restored.get(c.name, frozenset()) if restored else frozenset()
        return any(
            (o.name in after or self.first_created.get(o.name, o.created) > c.created)
            and (o.state == RUNNING or o.exited is not None)
            for o in self.containers.values()
            if o.name != c.name
        )

    def successors(self, c: ContainerRecord) -> frozenset[str]:
        """Names first created after ``c`` exited."""
        if c.exited is None:
            return frozenset()
        after = {n for n, first in self.first_created.items() if first > c.exited}
        restored = self._restored_successors
        return frozenset(after | (restored.get(c.name, frozenset()) if restored else frozenset()))

    def mark_exited(self, c: ContainerRecord, clock: int, exit_code: int | None) -> None:
        if c.exited is None:
            c.exited = clock
        c.state = EXITED
        if exit_code is not None:
            c.exit_code = exit_code

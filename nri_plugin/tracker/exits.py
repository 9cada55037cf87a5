"""What a restart of the plugin cannot learn from the runtime: the exit records.

containerd lists no exited container at Synchronize, so after a restart an exited
container's name holds blocks with nothing to say whether it was a finished init
container (released once the pod's next container runs) or a crashed app
container or sidecar (kept until its pod goes). The tracker keeps, for each exited
container that holds blocks, how it was classified and the names created after
its exit; the daemon persists them beside the checkpoint (docs/recovery.md) and
gives them back at start. Also the exit codes a front end fetches for the
classification (docs/lifecycle.md, "Init containers").
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

from nri_plugin.tracker.core import TrackerState
from nri_plugin.tracker.facts import ContainerFacts
from nri_plugin.tracker.records import INIT, LISTED, ContainerRecord


class ExitRecords(TrackerState):
    """Exit codes and exit records, on the tracker's state."""

    def exit_candidates(self, pod_uid: str, name: str) -> list[str]:
        """Exited containers whose exit code decides what a new container ``name`` may reuse.

        Only a name's first creation can reuse a finished init container's memory; the
        candidates are the pod's exited containers holding blocks whose code is unknown.
        """
        record = self.pods.get(pod_uid)
        if record is None or name in record.first_created:
            return []
        return [
            init.id
            for init, _ in record.finished_inits(self._clock + 1, but=name)
            if init.exit_code is None and self.manager.state.blocks(pod_uid, init.name)
        ]

    def exit_code(self, pod_uid: str, container_id: str, code: int) -> None:
        """The runtime said how a container exited (a non-zero code: never an init one)."""
        record = self.pods.get(pod_uid)
        rec = None if record is None else record.containers.get(container_id)
        if rec is not None:
            rec.exit_code = code

    def exit_records(self) -> dict[str, dict[str, dict[str, Any]]]:
        """The exited containers that hold blocks, as a restarted plugin needs them.

        containerd lists no exited container at Synchronize, so after a restart of the
        plugin an exited container's name holds blocks with nothing to say whether it
        was a finished init container (released once the pod's next container runs) or
        a crashed app container or sidecar (kept until its pod goes). Small: only such
        containers, JSON values. Persisted beside the checkpoint (docs/recovery.md).
        """
        # records restored from an earlier run and not applied yet (no Synchronize since
        # the start): written back as they were, else a write before the Synchronize (the
        # daemon's start-up write) would lose them
        out: dict[str, dict[str, dict[str, Any]]] = {
            uid: {name: dict(facts) for name, facts in names.items()}
            for uid, names in self._restored_exits.items()
        }
        for uid in list(self._exits_watch):
            record = self.pods.get(uid)
            held = self.manager.state.entries.get(uid, {})
            found: dict[str, dict[str, Any]] = {}
            if record is not None:
                for name in held:
                    rec = record.latest(name)
                    if rec is None or rec.exited is None:
                        continue
                    kind = record.classify(name)
                    found[name] = {
                        "id": rec.id,
                        "kind": None if kind is None else kind[0],
                        "source": None if kind is None else kind[1],
                        "exitCode": rec.exit_code,
                        "successors": sorted(record.successors(rec)),
                    }
            if found:
                out[uid] = found
            else:
                self._exits_watch.discard(uid)
        return out

    def restore_exit_records(self, records: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> None:
        """Exit records of an earlier run, applied at the next Synchronize."""
        self._restored_exits = {
            uid: {name: dict(facts) for name, facts in names.items()}
            for uid, names in records.items()
        }

    def _apply_restored_exits(self, live: Mapping[tuple[str, str], ContainerFacts]) -> None:
        restored, self._restored_exits = self._restored_exits, {}
        # All restored containers share one creation tick and one exit tick: their order is
        # not known, and a later tick would make one look first created after another's
        # exit, a "next container" that ran (which releases a finished init container):
        # only the recorded successors say that.
        self._clock += 2
        created, exited = self._clock - 1, self._clock
        for uid, names in restored.items():
            record = self.pods.get(uid)
            if record is None:
                continue
            for name, facts in names.items():
                if (uid, name) in live or self.manager.state.blocks(uid, name) is None:
                    continue
                if record.latest(name) is not None:
                    continue  # this run saw the container itself
                rec = ContainerRecord(sys.intern(str(facts.get("id", ""))), name, created)
                record.containers[rec.id] = rec
                record.first_created.setdefault(name, created)
                code = facts.get("exitCode")
                record.mark_exited(rec, exited, code if isinstance(code, int) else None)
                kind, source = facts.get("kind"), facts.get("source")
                # an exited container whose kind was not known is never taken for an init one
                record.restored_kinds[name] = (
                    (INIT, f"{source} (restored)")
                    if kind == INIT and isinstance(source, str)
                    else (LISTED, f"{source or 'unknown'} (restored)")
                )
                successors = facts.get("successors")
                if isinstance(successors, list):
                    record.restored_successors[name] = frozenset(map(str, successors))
                self._exits_watch.add(uid)

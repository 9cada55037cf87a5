"""Pod ends containerd never announces after it restarts, found in its CRI listing.

containerd sends StopPodSandbox, RemovePodSandbox and RemoveContainer only for
what its current process has seen (docs/fault-injection.md, "containerd
hazards"); :mod:`nri_plugin.frontends.relist` asks the runtime's CRI for the
sandboxes of the pods at risk instead. A fake CRI here; the real one is
``tests/e2e/test_fault_injection.py::test_pod_removed_after_a_containerd_restart_is_released``.
"""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import generate_latest

from nri_plugin import cli
from nri_plugin.daemon import MODE_NRI, check_flags
from nri_plugin.errors import InputError
from nri_plugin.frontends.exits import RuntimeUnanswered
from nri_plugin.frontends.nri import MemoryPlugin
from nri_plugin.frontends.relist import DEFAULT_INTERVAL_S, Relist
from nri_plugin.metrics import Metrics
from nri_plugin.nri.gen import nri_pb2 as api
from nri_plugin.tracker.facts import SandboxFacts
from tests.nri_builders import GI, container, pod
from tests.test_bad_input import ListLogger
from tests.test_plugin_lifecycle import make_plugin, reserved

RUNNING = api.CONTAINER_RUNNING


class FakeCRI:
    """ListPodSandbox answers: the sandboxes listed, or a failure."""

    def __init__(self, *sandboxes: SandboxFacts) -> None:
        self.sandboxes = list(sandboxes)
        self.calls = 0
        self.failing = False
        self.during_call: list[object] = []  # callables run while the call is pending

    async def pod_sandboxes(self) -> list[SandboxFacts]:
        self.calls += 1
        for step in self.during_call:
            step()  # type: ignore[operator]
        if self.failing:
            raise RuntimeUnanswered("ListPodSandbox: UNAVAILABLE")
        return list(self.sandboxes)


def restart_of_containerd_in_a_pod(plugin: MemoryPlugin) -> api.PodSandbox:
    """Pod ``g``: its app container exited and was restarted (a second instance), then
    containerd restarted and the plugin synchronized; then kubelet deleted the pod and
    containerd announced only the RemoveContainer of the instance it listed."""
    g = pod("g")
    first = container(g, "app", "c1", 3 * GI, cpus="8")
    plugin.create_container(g, first)
    plugin.stop_container(g, first)
    again = container(g, "app", "c2", 3 * GI, cpus="8")
    plugin.create_container(g, again)
    assert reserved(plugin, 2) == 3 * GI
    plugin.on_disconnect()
    listed = container(g, "app", "c2", 3 * GI, cpus="8", mems="2", state=RUNNING)
    plugin.synchronize([g], [listed])
    plugin.stop_container(g, listed)
    plugin.remove_container(g, listed)
    # the exited first instance keeps the name's blocks: its removal is never announced
    assert plugin.manager.state.blocks("g", "app") is not None
    return g


def relist(plugin: MemoryPlugin, runtime: FakeCRI, **kw: object) -> Relist:
    return Relist(plugin, runtime, 1.0, kw.pop("logger", ListLogger()), **kw)  # type: ignore[arg-type]


def test_a_pod_whose_sandbox_is_gone_is_released_as_at_its_removal() -> None:
    plugin = make_plugin()
    restart_of_containerd_in_a_pod(plugin)
    plugin._hugepages["g"] = None  # what the plugin read of the pod goes with it
    runtime = FakeCRI(SandboxFacts("other", "sb-other", True))
    assert asyncio.run(relist(plugin, runtime).once())
    assert runtime.calls == 1
    assert plugin.manager.state.blocks("g", "app") is None
    assert reserved(plugin, 2) == 0
    assert "g" not in plugin.tracker.pods and "g" not in plugin._hugepages
    # nothing left to ask about
    assert not asyncio.run(relist(plugin, runtime).once())
    assert runtime.calls == 1


def test_a_pod_whose_sandbox_is_not_ready_is_released_as_at_its_stop() -> None:
    plugin = make_plugin()
    restart_of_containerd_in_a_pod(plugin)
    logger = ListLogger()
    plugin.tracker._log = logger
    runtime = FakeCRI(SandboxFacts("g", "sb-g", False))
    asyncio.run(relist(plugin, runtime).once())
    assert reserved(plugin, 2) == 0
    assert "g" in plugin.tracker.pods  # its removal may still come, or a Synchronize
    released = [kw for level, event, kw in logger.records if event == "released"]
    assert released == [
        {
            "pod_uid": "g",
            "containers": ["app"],
            "reason": "pod sandbox not ready (stop not announced by the runtime)",
        }
    ]


def test_a_pod_with_a_new_ready_sandbox_is_kept() -> None:
    # kubelet re-creates a dead sandbox of a live pod under the same UID
    plugin = make_plugin()
    restart_of_containerd_in_a_pod(plugin)
    runtime = FakeCRI(SandboxFacts("g", "sb-g", False), SandboxFacts("g", "sb-g-2", True))
    asyncio.run(relist(plugin, runtime).once())
    assert reserved(plugin, 2) == 3 * GI


def test_a_pod_whose_sandbox_was_replaced_while_the_runtime_answered_is_kept() -> None:
    plugin = make_plugin()
    g = restart_of_containerd_in_a_pod(plugin)
    new = api.PodSandbox()
    new.CopyFrom(g)
    new.id = "sb-g-2"
    runtime = FakeCRI()  # listed before the new sandbox ran
    runtime.during_call.append(lambda: plugin.run_pod_sandbox(new))
    asyncio.run(relist(plugin, runtime).once())
    assert reserved(plugin, 2) == 3 * GI
    # the new sandbox's end is announced: nothing more is asked
    assert not asyncio.run(relist(plugin, runtime).once())
    plugin.stop_pod_sandbox(new)
    assert reserved(plugin, 2) == 0


def test_a_failed_listing_releases_nothing_is_said_once_and_counted() -> None:
    plugin = make_plugin()
    restart_of_containerd_in_a_pod(plugin)
    metrics = Metrics()
    logger = ListLogger()
    runtime = FakeCRI()
    runtime.failing = True
    looker = relist(plugin, runtime, logger=logger, observer=metrics)
    for _ in range(3):
        assert asyncio.run(looker.once())
    assert reserved(plugin, 2) == 3 * GI
    assert [level for level, _, _ in logger.records] == ["warning"]
    text = generate_latest(metrics.registry).decode()
    assert "nri_memory_manager_relist_failures_total 3.0" in text
    runtime.failing = False
    asyncio.run(looker.once())
    assert reserved(plugin, 2) == 0
    assert [level for level, _, _ in logger.records] == ["warning", "info"]
    text = generate_latest(metrics.registry).decode()
    assert "nri_memory_manager_unannounced_pod_releases_total 1.0" in text


def test_nothing_is_asked_when_no_pod_is_at_risk() -> None:
    plugin = make_plugin()
    runtime = FakeCRI()
    plugin.synchronize([], [])
    # pods seen from their sandbox on: the runtime announces their end
    g = pod("g")
    plugin.run_pod_sandbox(g)
    plugin.create_container(g, container(g, "app", "c1", 2 * GI))
    assert not asyncio.run(relist(plugin, runtime).once())
    # a pod listed at the Synchronize that holds no memory
    b = pod("b", "Burstable")
    plugin.on_disconnect()
    plugin.synchronize(
        [g, b],
        [
            container(g, "app", "c1", 2 * GI, mems="1", state=RUNNING),
            container(b, "app", "c2", GI, state=RUNNING),
        ],
    )
    plugin.remove_pod_sandbox(g)  # announced after all (the plugin restarted, not containerd)
    assert not asyncio.run(relist(plugin, runtime).once())
    assert runtime.calls == 0


def test_nothing_is_asked_or_released_while_the_runtime_is_away() -> None:
    plugin = make_plugin()
    restart_of_containerd_in_a_pod(plugin)
    plugin.on_disconnect()
    runtime = FakeCRI()
    assert not asyncio.run(relist(plugin, runtime).once())
    # the runtime went away while it answered: its listing is not acted on
    plugin.synchronize([pod("g")], [container(pod("g"), "app", "c3", 3 * GI, state=RUNNING)])
    runtime.during_call.append(plugin.on_disconnect)
    assert asyncio.run(relist(plugin, runtime).once())
    assert plugin.manager.state.blocks("g", "app") is not None


def test_the_relist_runs_every_interval_and_not_at_zero() -> None:
    plugin = make_plugin()
    restart_of_containerd_in_a_pod(plugin)
    runtime = FakeCRI(SandboxFacts("g", "sb-g", True))

    async def run_for(interval: float, seconds: float) -> None:
        task = asyncio.create_task(Relist(plugin, runtime, interval, ListLogger()).run())
        await asyncio.sleep(seconds)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(run_for(0.02, 0.15))
    assert 3 <= runtime.calls <= 8
    runtime.calls = 0

    async def off() -> None:
        await Relist(plugin, runtime, 0, ListLogger()).run()  # returns at once

    asyncio.run(off())
    assert runtime.calls == 0


def test_the_flag_default_is_the_relist_default_and_bad_values_are_refused() -> None:
    assert cli.DEFAULT_RELIST_INTERVAL_S == DEFAULT_INTERVAL_S
    args = cli.build_parser().parse_args(["run"])
    assert args.relist_interval == DEFAULT_INTERVAL_S
    for bad in ("-1", "nan", "inf"):
        args = cli.build_parser().parse_args(["run", "--relist-interval", bad])
        with pytest.raises(InputError, match="--relist-interval"):
            check_flags(args, MODE_NRI)

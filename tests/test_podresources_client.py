"""The pod-resources client against the stand-in kubelet (gRPC on unix sockets, in-process).

Timing assertions measure the awaited call itself (the event loop's clock
around one ``await``); nothing here sleeps to let something happen. Where a
background effect must be seen, the test awaits ``client.drain()`` or polls a
condition with a bounded wait.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from nri_plugin.engine.bitmask import mask_of
from nri_plugin.engine.hint import TopologyHint
from nri_plugin.podresources import client as prc
from nri_plugin.podresources.client import Listing, PodResourcesClient
from nri_plugin.podresources.ratelimit import TokenBucket
from nri_plugin.podresources.resources import ContainerDevices
from tests.podresources_standin import Kubelet, running_standin

REPO = Path(__file__).resolve().parents[1]
# what a lookup may take beyond its deadline: the event loop's own latency on a busy 2-core machine
SLACK_S = 0.05

NODE: dict[str, Any] = {
    "node": {
        "cpus": [0, 1, 2, 3],
        "devices": {
            "example.com/gpu": [
                {"id": "gpu0", "numa": [0]},
                {"id": "gpu1", "numa": [1]},
                {"id": "gpu2", "numa": [1]},
            ],
            "example.com/qat": [{"id": "qat0"}, {"id": "qat1"}],
        },
    },
    "pods": [
        {
            "name": "web",
            "namespace": "default",
            "initContainers": [
                {"name": "setup", "devices": {"example.com/gpu": ["gpu0"]}},
                {"name": "proxy", "restartPolicy": "Always"},
            ],
            "containers": [
                {
                    "name": "app",
                    "devices": {"example.com/gpu": ["gpu1"], "example.com/qat": ["qat0"]},
                    "cpus": [2, 3],
                }
            ],
        },
        {"name": "db", "namespace": "data", "containers": [{"name": "pg"}]},
    ],
}


class Observer:
    def __init__(self) -> None:
        self.kinds: list[str] = []

    def on_failure(self, kind: str) -> None:
        self.kinds.append(kind)


class Logger:
    def __init__(self) -> None:
        self.records: list[tuple[str, str, dict[str, Any]]] = []

    def debug(self, event: str, **kw: Any) -> None:
        self.records.append(("debug", event, kw))

    def info(self, event: str, **kw: Any) -> None:
        self.records.append(("info", event, kw))

    def warning(self, event: str, **kw: Any) -> None:
        self.records.append(("warning", event, kw))

    def at(self, level: str) -> list[tuple[str, dict[str, Any]]]:
        return [(e, kw) for lvl, e, kw in self.records if lvl == level]


@pytest.fixture
def sockets() -> Iterator[Path]:
    """A short directory: a unix socket path must stay under 108 bytes."""
    d = Path(tempfile.mkdtemp(prefix="pr-", dir="/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(test())  # type: ignore[arg-type]


def new_client(path: Path, **kw: Any) -> tuple[PodResourcesClient, Observer, Logger]:
    observer, logger = Observer(), Logger()
    return PodResourcesClient(str(path), observer=observer, logger=logger, **kw), observer, logger


async def timed(call: Awaitable[prc.ContainerAnswer]) -> tuple[prc.ContainerAnswer, float]:
    loop = asyncio.get_running_loop()
    start = loop.time()
    answer = await call
    return answer, loop.time() - start


async def eventually(condition: Callable[[], bool], within: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    give_up = loop.time() + within
    while not condition():
        assert loop.time() < give_up, "condition not reached"
        await asyncio.sleep(0.01)


def node(**behaviour: Any) -> dict[str, Any]:
    return {**yaml.safe_load(yaml.safe_dump(NODE)), "behaviour": behaviour}


# -- caching, prefetch, listing ---------------------------------------------------------------


def test_prefetch_answers_every_listed_container_from_one_get(sockets: Path) -> None:
    async def scenario() -> None:
        async with running_standin(sockets / "k.sock", node()) as kubelet:
            client, observer, _ = new_client(sockets / "k.sock")
            await client.start()
            client.prefetch("uid-web", "default", "web")
            await client.drain()
            app = await client.container("uid-web", "default", "web", "app")
            proxy = await client.container("uid-web", "default", "web", "proxy")
            assert (app.listing, app.source) == (Listing.LISTED, prc.SOURCE_CACHE)
            assert (proxy.listing, proxy.source) == (Listing.LISTED, prc.SOURCE_CACHE)
            assert app.resources is not None
            assert app.resources.cpu_ids == (2, 3)
            assert set(app.resources.devices) == {
                ContainerDevices("example.com/gpu", ("gpu1",), (1,)),
                ContainerDevices("example.com/qat", ("qat0",), ()),
            }
            assert kubelet.count("Get") == 1
            assert observer.kinds == []
            await client.close()

    run(scenario)


def test_regular_init_container_is_not_listed_after_asking_once_more(sockets: Path) -> None:
    async def scenario() -> None:
        async with running_standin(sockets / "k.sock", node()) as kubelet:
            client, observer, _ = new_client(sockets / "k.sock")
            await client.start()
            client.prefetch("uid-web", "default", "web")
            await client.drain()
            assert client.is_listed("uid-web", "app") is True
            assert client.is_listed("uid-web", "setup") is None  # not confirmed yet
            setup = await client.container("uid-web", "default", "web", "setup")
            assert (setup.listing, setup.source) == (Listing.NOT_LISTED, prc.SOURCE_GET)
            assert kubelet.count("Get") == 2
            again = await client.container("uid-web", "default", "web", "setup")
            assert (again.listing, again.source) == (Listing.NOT_LISTED, prc.SOURCE_CACHE)
            assert kubelet.count("Get") == 2
            assert client.is_listed("uid-web", "setup") is False
            assert observer.kinds == []
            await client.close()

    run(scenario)


def test_lookup_without_prefetch_asks_once_and_caches(sockets: Path) -> None:
    async def scenario() -> None:
        async with running_standin(sockets / "k.sock", node()) as kubelet:
            client, _, _ = new_client(sockets / "k.sock")
            await client.start()
            first = await client.container("uid-db", "data", "db", "pg")
            second = await client.container("uid-db", "data", "db", "pg")
            assert (first.listing, first.source) == (Listing.LISTED, prc.SOURCE_GET)
            assert (second.listing, second.source) == (Listing.LISTED, prc.SOURCE_CACHE)
            assert kubelet.count("Get") == 1
            await client.close()

    run(scenario)


def test_lookup_joins_the_prefetch_under_way(sockets: Path) -> None:
    async def scenario() -> None:
        async with running_standin(sockets / "k.sock", node(delay=0.02)) as kubelet:
            client, _, _ = new_client(sockets / "k.sock")
            await client.start()
            client.prefetch("uid-web", "default", "web")
            app = await client.container("uid-web", "default", "web", "app")
            assert (app.listing, app.source) == (Listing.LISTED, prc.SOURCE_GET)
            assert kubelet.count("Get") == 1
            await client.close()

    run(scenario)


def test_forget_drops_the_cache(sockets: Path) -> None:
    async def scenario() -> None:
        async with running_standin(sockets / "k.sock", node()) as kubelet:
            client, _, _ = new_client(sockets / "k.sock")
            await client.start()
            await client.container("uid-db", "data", "db", "pg")
            assert client.cached_pod("uid-db") is not None
            client.forget("uid-db")
            assert client.cached_pod("uid-db") is None
            assert (await client.container("uid-db", "data", "db", "pg")).source == prc.SOURCE_GET
            assert kubelet.count("Get") == 2
            await client.close()

    run(scenario)


def test_an_answer_from_an_earlier_pod_of_the_same_name_is_asked_again(sockets: Path) -> None:
    async def scenario() -> None:
        async with running_standin(sockets / "k.sock", node()) as kubelet:
            client, _, _ = new_client(sockets / "k.sock")
            await client.start()
            client.prefetch("uid-db", "data", "db")
            await client.drain()
            # the StatefulSet pod is replaced, same name, new containers, new UID
            kubelet.kubelet.remove_pod("data", "db")
            kubelet.kubelet.add_pod(
                {"name": "db", "namespace": "data", "containers": [{"name": "pg17"}]}
            )
            client.prefetch("uid-db-2", "data", "db")
            answer = await client.container("uid-db-2", "data", "db", "pg17")
            assert answer.listing is Listing.LISTED
            await client.close()

    run(scenario)


# -- a slow, hanging, absent or dead kubelet --------------------------------------------------


def test_slow_kubelet_never_holds_a_lookup_past_the_deadline(sockets: Path) -> None:
    async def scenario() -> None:
        async with running_standin(sockets / "k.sock", node(delay=0.5)) as kubelet:
            client, observer, logger = new_client(sockets / "k.sock")
            await client.start()
            answer, took = await timed(client.container("uid-web", "default", "web", "app"))
            assert (answer.listing, answer.source) == (Listing.UNKNOWN, prc.DEADLINE)
            assert took <= prc.LOOKUP_DEADLINE_S + SLACK_S
            assert observer.kinds == [prc.DEADLINE]
            # a second lookup of the same pod waits for the same request, as briefly
            answer, took = await timed(client.container("uid-web", "default", "web", "proxy"))
            assert answer.listing is Listing.UNKNOWN
            assert took <= prc.LOOKUP_DEADLINE_S + SLACK_S
            assert len(logger.at("warning")) == 1  # once per pod
            # the late answer fills the cache
            await client.drain()
            late = await client.container("uid-web", "default", "web", "app")
            assert (late.listing, late.source) == (Listing.LISTED, prc.SOURCE_CACHE)
            assert kubelet.count("Get") == 1
            await client.close()

    run(scenario)


def test_hanging_kubelet_many_lookups_at_once(sockets: Path) -> None:
    async def scenario() -> None:
        async with running_standin(sockets / "k.sock", node(delay=3600)):
            client, observer, _ = new_client(sockets / "k.sock")
            await client.start()
            lookups = [
                timed(client.container(f"uid-{i}", "default", "web", "app")) for i in range(20)
            ]
            results = await asyncio.gather(*lookups)
            assert all(a.listing is Listing.UNKNOWN for a, _ in results)
            assert max(t for _, t in results) <= prc.LOOKUP_DEADLINE_S + SLACK_S
            # past our bucket's burst the later requests were still queued for a token
            assert set(observer.kinds) <= {prc.DEADLINE, prc.RATE_LIMITED}
            assert len(observer.kinds) == 20
            await client.close()  # the requests still under way end here

    run(scenario)


def test_socket_absent_is_said_once_and_found_when_kubelet_comes(sockets: Path) -> None:
    async def scenario() -> None:
        path = sockets / "k.sock"
        client, observer, logger = new_client(path)
        await client.start()
        assert client.available is False
        assert [e for e, _ in logger.at("warning")] == [
            "pod-resources socket absent: no device hints, init containers inferred"
        ]
        for name in ("web", "db"):
            answer, took = await timed(client.container(f"uid-{name}", "default", name, "app"))
            assert (answer.listing, answer.source) == (Listing.UNKNOWN, prc.SOCKET_ABSENT)
            assert took < prc.LOOKUP_DEADLINE_S
        client.prefetch("uid-web", "default", "web")  # nothing to do, nothing raised
        assert observer.kinds == [prc.SOCKET_ABSENT, prc.SOCKET_ABSENT]
        assert len(logger.at("warning")) == 1
        async with running_standin(path, node()):
            assert client.available is True
            answer = await client.container("uid-web", "default", "web", "app")
            assert answer.listing is Listing.LISTED
            assert ("pod-resources socket found", {"socket": str(path)}) in logger.at("info")
        await client.close()

    run(scenario)


def test_dead_kubelet_degrades_quickly_and_logs_once_per_pod(sockets: Path) -> None:
    async def scenario() -> None:
        path = sockets / "k.sock"
        # a socket file nobody listens on: kubelet died without removing it
        stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        stale.bind(str(path))
        stale.close()
        client, observer, logger = new_client(path)
        await client.start()
        assert client.available is True  # there is a socket; nobody answers on it
        for container in ("app", "proxy"):
            answer, took = await timed(client.container("uid-web", "default", "web", container))
            assert (answer.listing, answer.source) == (Listing.UNKNOWN, prc.UNAVAILABLE)
            assert took <= prc.LOOKUP_DEADLINE_S + SLACK_S
        assert observer.kinds.count(prc.UNAVAILABLE) >= 2
        pod_warnings = [
            kw for e, kw in logger.at("warning") if e == "pod-resources: no answer for pod"
        ]
        assert [w["pod"] for w in pod_warnings] == ["default/web"]
        await client.close()

    run(scenario)


def test_disabled_client_answers_unknown_without_counting(sockets: Path) -> None:
    async def scenario() -> None:
        client, observer, logger = new_client(Path(""))
        client.socket_path = ""
        await client.start()
        answer = await client.container("uid-web", "default", "web", "app")
        assert (answer.listing, answer.source) == (Listing.UNKNOWN, prc.SOURCE_DISABLED)
        assert observer.kinds == []
        assert logger.at("warning") == []
        await client.close()

    run(scenario)


# -- kubelet's answers that are errors ----------------------------------------------------------


def test_kubelet_rate_limit_is_an_answer(sockets: Path) -> None:
    async def scenario() -> None:
        async with running_standin(sockets / "k.sock", node(rateLimit=False)) as kubelet:
            client, observer, logger = new_client(sockets / "k.sock")
            await client.start()
            await client.refresh_inventory()
            await client.drain()
            # other clients spent kubelet's budget: one token left
            kubelet.kubelet.rate_limit = True
            kubelet.kubelet.qps, kubelet.kubelet.burst = 0.001, 1
            first = await client.container("uid-web", "default", "web", "app")
            refused = await client.container("uid-db", "data", "db", "pg")
            assert first.listing is Listing.LISTED
            assert (refused.listing, refused.source) == (Listing.UNKNOWN, prc.RATE_LIMITED)
            assert observer.kinds == [prc.RATE_LIMITED]
            assert [kw["pod"] for _, kw in logger.at("warning")] == ["data/db"]
            await client.close()

    run(scenario)


def test_unknown_pod_is_not_found(sockets: Path) -> None:
    async def scenario() -> None:
        async with running_standin(sockets / "k.sock", node()):
            client, observer, _ = new_client(sockets / "k.sock")
            await client.start()
            answer = await client.container("uid-x", "default", "crictl-made", "c")
            assert (answer.listing, answer.source) == (Listing.UNKNOWN, prc.NOT_FOUND)
            assert observer.kinds == [prc.NOT_FOUND]
            await client.close()

    run(scenario)


def test_an_answer_about_another_pod_is_no_answer(sockets: Path) -> None:
    async def scenario() -> None:
        async with running_standin(sockets / "k.sock", node()) as kubelet:
            real_pod = kubelet.kubelet.pod
            kubelet.kubelet.pod = lambda p: real_pod({**p, "name": "someone-else"})  # type: ignore[method-assign]
            client, observer, _ = new_client(sockets / "k.sock")
            await client.start()
            answer = await client.container("uid-web", "default", "web", "app")
            assert (answer.listing, answer.source) == (Listing.UNKNOWN, prc.MISMATCH)
            assert observer.kinds == [prc.MISMATCH]
            assert client.cached_pod("uid-web") is None
            await client.close()

    run(scenario)


def test_kubelet_without_get_is_asked_with_list(sockets: Path) -> None:
    async def scenario() -> None:
        async with running_standin(sockets / "k.sock", node(getDisabled=True)) as kubelet:
            client, observer, logger = new_client(sockets / "k.sock")
            await client.start()
            app = await client.container("uid-web", "default", "web", "app")
            pg = await client.container("uid-db", "data", "db", "pg")
            assert (app.listing, app.source) == (Listing.LISTED, prc.SOURCE_LIST)
            assert (pg.listing, pg.source) == (Listing.LISTED, prc.SOURCE_LIST)
            assert kubelet.count("Get") == 1  # asked once, then never again
            assert kubelet.count("List") == 2
            assert observer.kinds == []
            assert [e for e, _ in logger.at("info")] == [
                "kubelet has no pod-resources Get; asking List"
            ]
            await client.close()

    run(scenario)


# -- List at a restart ------------------------------------------------------------------------


def test_prime_fills_the_cache_with_one_list(sockets: Path) -> None:
    async def scenario() -> None:
        async with running_standin(sockets / "k.sock", node()) as kubelet:
            client, _, _ = new_client(sockets / "k.sock")
            await client.start()
            found = await client.prime(
                [("uid-web", "default", "web"), ("uid-db", "data", "db"), ("uid-x", "x", "gone")]
            )
            assert found == 2
            answer = await client.container("uid-db", "data", "db", "pg")
            assert (answer.listing, answer.source) == (Listing.LISTED, prc.SOURCE_CACHE)
            assert kubelet.count("Get") == 0
            assert kubelet.count("List") == 1
            listed = await client.list_pods()
            assert listed is not None
            assert [(p.namespace, p.name) for p in listed] == [("default", "web"), ("data", "db")]
            assert [c.name for c in listed[0].containers] == ["proxy", "app"]
            await client.close()

    run(scenario)


# -- the inventory ------------------------------------------------------------------------------


def test_inventory_and_device_hints(sockets: Path) -> None:
    async def scenario() -> None:
        async with running_standin(sockets / "k.sock", node()):
            client, _, _ = new_client(sockets / "k.sock")
            await client.start()
            inventory = await client.refresh_inventory()
            assert inventory is not None
            assert inventory.cpu_ids == (0, 1, 2, 3)
            answer = await client.container("uid-web", "default", "web", "app")
            assert answer.resources is not None
            hints = client.device_hints((0, 1), answer.resources)
            assert hints == {
                # gpu1 on node 1; a single node holds a GPU, so node 1 alone is preferred
                "example.com/gpu": [
                    TopologyHint(mask_of([1]), True),
                    TopologyHint(mask_of([0, 1]), False),
                ],
                "example.com/qat": None,  # no QAT device reports a NUMA node
            }
            await client.close()

    run(scenario)


def test_inventory_refreshed_when_an_answer_holds_an_unknown_device(sockets: Path) -> None:
    async def scenario() -> None:
        async with running_standin(sockets / "k.sock", node()) as kubelet:
            client, _, _ = new_client(sockets / "k.sock", inventory_min_interval=60.0)
            await client.start()
            await client.refresh_inventory()
            await client.drain()
            before = kubelet.count("GetAllocatableResources")
            # a device plugin registered gpu3 and kubelet gave it to a new pod
            kubelet.kubelet.spec["node"]["devices"]["example.com/gpu"].append(
                {"id": "gpu3", "numa": [0]}
            )
            kubelet.kubelet.add_pod(
                {
                    "name": "train",
                    "namespace": "ml",
                    "containers": [{"name": "t", "devices": {"example.com/gpu": ["gpu3"]}}],
                }
            )
            await client.container("uid-train", "ml", "train", "t")
            await client.drain()
            inventory = client.inventory()
            assert inventory is not None
            assert ("example.com/gpu", "gpu3") in inventory.device_keys()
            assert kubelet.count("GetAllocatableResources") == before + 1
            # within the minimum interval another unknown device waits for the next refresh
            kubelet.kubelet.add_pod(
                {
                    "name": "train2",
                    "namespace": "ml",
                    "containers": [{"name": "t", "devices": {"example.com/gpu": ["gpu9"]}}],
                }
            )
            await client.container("uid-train2", "ml", "train2", "t")
            await client.drain()
            assert kubelet.count("GetAllocatableResources") == before + 1
            await client.close()

    run(scenario)


def test_inventory_refreshed_after_kubelet_restarts(sockets: Path) -> None:
    async def scenario() -> None:
        path = sockets / "k.sock"
        client, _, _ = new_client(path)
        async with running_standin(path, node()) as first:
            await client.start()
            await eventually(lambda: client.inventory() is not None)
            assert first.count("GetAllocatableResources") >= 1
        async with running_standin(path, node()) as second:
            await eventually(lambda: client.available)
            # the next lookup reconnects; the channel's READY brings a fresh inventory
            await client.container("uid-db", "data", "db", "pg")
            await eventually(lambda: second.count("GetAllocatableResources") >= 1)
        await client.close()

    run(scenario)


# -- our bucket and kubelet's -------------------------------------------------------------------


def burst_of_prefetches(sockets: Path, qps: float, burst: int) -> tuple[int, int]:
    """40 pods start at once; (refusals kubelet answered, pods cached)."""
    pods = [
        {"name": f"p{i}", "namespace": "load", "containers": [{"name": "c"}]} for i in range(40)
    ]
    spec = {"node": {"cpus": [0]}, "pods": pods}

    async def scenario() -> tuple[int, int]:
        async with running_standin(sockets / "k.sock", Kubelet.from_mapping(spec)) as kubelet:
            client, _, _ = new_client(sockets / "k.sock", qps=qps, burst=burst)
            await client.start()
            await client.refresh_inventory()
            for i in range(40):
                client.prefetch(f"uid-{i}", "load", f"p{i}")
            await client.drain()
            refused = sum(1 for c in kubelet.calls if c.refused)
            cached = sum(1 for i in range(40) if client.cached_pod(f"uid-{i}") is not None)
            await client.close()
            return refused, cached

    return asyncio.run(scenario())


def test_our_bucket_keeps_within_kubelets_limit(sockets: Path) -> None:
    refused, cached = burst_of_prefetches(sockets, prc.CLIENT_QPS, prc.CLIENT_BURST)
    assert (refused, cached) == (0, 40)


def test_without_our_bucket_kubelet_refuses(sockets: Path) -> None:
    # the control: the same burst, unthrottled, meets kubelet's ResourceExhausted
    refused, cached = burst_of_prefetches(sockets, 1e6, 1000)
    assert refused > 0
    assert cached == 40 - refused


@given(
    st.floats(1, 200),
    st.integers(1, 20),
    st.lists(st.floats(0, 0.2), min_size=1, max_size=200),
)
@settings(max_examples=200, deadline=None)
def test_bucket_allows_at_most_burst_plus_rate(qps: float, burst: int, gaps: list[float]) -> None:
    bucket = TokenBucket(qps, burst, 0.0)
    now, allowed = 0.0, []
    for gap in gaps:
        now += gap
        if bucket.allow(now):
            allowed.append(now)
    for i, start in enumerate(allowed):
        for j in range(i, len(allowed)):
            assert j - i + 1 <= burst + (allowed[j] - start) * qps + 1e-6


@given(
    st.floats(1, 200),
    st.integers(1, 20),
    st.lists(st.floats(0, 0.2), min_size=1, max_size=200),
)
@settings(max_examples=200, deadline=None)
def test_reservations_are_spaced_by_the_rate(qps: float, burst: int, gaps: list[float]) -> None:
    bucket = TokenBucket(qps, burst, 0.0)
    now, granted = 0.0, []
    for gap in gaps:
        now += gap
        assert bucket.delay(now) >= 0
        granted.append(now + bucket.reserve(now))
    assert granted == sorted(granted)
    for i, start in enumerate(granted):
        for j in range(i, len(granted)):
            assert j - i + 1 <= burst + (granted[j] - start) * qps + 1e-6


def test_bucket_delay_is_zero_exactly_when_allowed() -> None:
    bucket = TokenBucket(10, 2, 0.0)
    assert bucket.delay(0.0) == 0 and bucket.allow(0.0)
    assert bucket.delay(0.0) == 0 and bucket.allow(0.0)
    assert bucket.delay(0.0) == pytest.approx(0.1) and not bucket.allow(0.0)
    assert bucket.delay(0.1) == pytest.approx(0.0, abs=1e-9)


# -- the stand-in as a process ------------------------------------------------------------------


def test_standin_process_serves_rereads_and_stops(sockets: Path) -> None:
    pods_file = sockets / "pods.yaml"
    pods_file.write_text(yaml.safe_dump(node()))
    path = sockets / "k.sock"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.podresources_standin", "--socket", str(path),
         "--pods", str(pods_file)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == f"serving {path}"

        async def scenario() -> None:
            client, _, _ = new_client(path)
            await client.start()
            assert (await client.container("u1", "data", "db", "pg")).listing is Listing.LISTED
            spec = node()
            spec["pods"].append(
                {"name": "late", "namespace": "default", "containers": [{"name": "x"}]}
            )
            pods_file.write_text(yaml.safe_dump(spec))
            os.utime(pods_file, ns=(1, 1))  # a different mtime, whatever the clock's grain
            assert (await client.container("u2", "default", "late", "x")).listing is Listing.LISTED
            await client.close()

        asyncio.run(scenario())
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        assert not path.exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_standin_process_refuses_a_bad_file(sockets: Path) -> None:
    bad = sockets / "pods.yaml"
    bad.write_text("- not\n- a mapping\n")
    done = subprocess.run(
        [sys.executable, "-m", "tests.podresources_standin", "--socket", str(sockets / "k.sock"),
         "--pods", str(bad)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "not a mapping" in done.stderr

"""The CI slice of the wire fuzzing: tests/fuzz's targets and oracles, a few thousand inputs.

The dedicated run (hack/targets.sh: >= 10^6 inputs, docs/fuzzing.md) uses the same targets;
here hypothesis generates random bytes, mutates the seed corpus and builds
CreateContainer requests with odd values, and a few tests pin down limits
and past findings.
"""

from __future__ import annotations

import asyncio
import gc
import random
import struct
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from nri_plugin.engine.manager import MemoryManager
from nri_plugin.frontends.nri import REFUSAL_PREFIX, AdmissionRefused, MemoryPlugin
from nri_plugin.inputs.config import parse_config
from nri_plugin.nri import mux, ttrpc
from nri_plugin.nri.connection import Connection
from nri_plugin.nri.gen import nri_pb2 as api
from nri_plugin.nri.mux import FrameDecoder, ProtocolError
from tests.fuzz import __main__ as fuzz_command
from tests.fuzz import corpus, engines, targets

GI = 1 << 30


CORPUS: dict[str, list[bytes]] = corpus.synthetic_corpus()


def examples(n: int) -> settings:
    """n examples, no per-example deadline (inputs differ widely in size)."""
    return settings(max_examples=n, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# -- the seeds are valid, and the oracles accept them ----------------------------------


@pytest.mark.parametrize("target", sorted(CORPUS))
def test_every_seed_passes_its_target(target: str) -> None:
    for seed in CORPUS[target]:
        targets.TARGETS[target](seed)


def test_the_seed_session_pins_containers_through_the_stub() -> None:
    # Seeds that never reach an admission would fuzz nothing of interest.
    log = targets.RecordingLogger()
    plugin = targets.make_plugin(targets.CONFIGS[0], log)
    _, services = targets.stub_services(plugin, log)
    pinned = []
    for name, message in corpus.runtime_session():
        method = services[targets.PLUGIN_SERVICE].get(name)
        if method is None:
            continue  # an event the plugin does not subscribe to
        try:
            response = targets.call_handler(
                method, method.request_type.FromString(message.SerializeToString())
            )
        except AdmissionRefused:
            continue
        if isinstance(response, api.CreateContainerResponse):
            pinned.append(response.adjust.linux.resources.cpu.mems)
    assert [m for m in pinned if m] == ["0", "1"]
    assert plugin.manager.state.entries  # allocations are held at the end
    targets.check_state(plugin.manager)


def test_oracles_catch_a_corrupted_state() -> None:
    plugin = targets.make_plugin(targets.CONFIGS[0], targets.RecordingLogger())
    node = plugin.manager.state.machine[0].memory_map["memory"]
    node.free -= 1  # one byte leaked
    with pytest.raises(targets.FuzzFailure, match="no longer matches its entries"):
        targets.check_state(plugin.manager)


def test_oracles_catch_frames_the_go_reader_refuses() -> None:
    big = ttrpc.encode_response(1, b"\x00" * 5000)
    with pytest.raises(targets.FuzzFailure, match="message-starting frame of 5013 bytes"):
        targets.check_written(mux.FRAME_HEADER.pack(1, len(big)) + big)
    targets.check_written(mux.encode_message(1, big))


# -- hypothesis: random bytes and mutated seeds ------------------------------------------


@examples(2000)
@given(st.binary(max_size=4096))
def test_random_bytes_on_the_wire(data: bytes) -> None:
    targets.fuzz_wire(data)


@examples(1500)
@given(st.sampled_from(CORPUS["wire"]), st.integers(0, 2**32))
def test_mutated_streams_on_the_wire(seed: bytes, n: int) -> None:
    targets.fuzz_wire(engines.mutate(seed, random.Random(n), CORPUS["wire"]))


@examples(400)
@given(st.sampled_from(CORPUS["plugin"]), st.integers(0, 2**32))
def test_mutated_calls_into_the_plugin(seed: bytes, n: int) -> None:
    targets.fuzz_plugin(engines.mutate(seed, random.Random(n), CORPUS["plugin"]))


@examples(300)
@given(st.binary(max_size=2048))
def test_random_calls_into_the_plugin(data: bytes) -> None:
    targets.fuzz_plugin(data)


@examples(150)
@given(st.sampled_from(CORPUS["conn"]), st.integers(0, 2**32))
def test_mutated_streams_into_a_real_connection(seed: bytes, n: int) -> None:
    targets.fuzz_conn(engines.mutate(seed, random.Random(n), CORPUS["conn"]))


# -- CreateContainer with odd values ----------------------------------------------------

INT64 = st.sampled_from([0, 1, -1, 4096, GI, 64 * GI, 2**62, 2**63 - 1, -(2**63)])
UINT64 = st.sampled_from([0, 1, 2 << 20, GI, 2**63 - 1, 2**63, 2**64 - 1])
ODD_PAGE_SIZES = st.sampled_from(
    ["64KB", "16MB", "3MB", "0KB", "16GB", "32GB", "2M", "", "1gb", "9" * 40 + "PB"]
)
ODD_CGROUPS = st.one_of(
    st.sampled_from(
        [
            "/kubepods/burstable/podu",
            "/kubepods/besteffort/podu",
            "kubepods-besteffort-podu.slice:cri-containerd:x",
            "/kubepods/../../etc/passwd",
            "/system.slice/docker.service",
            "kubepods\x00besteffort",
            "",
        ]
    ),
    st.text(max_size=40),
)
ODD_CPULISTS = st.one_of(
    st.sampled_from(["0-65535", "100000", "3-1", "x", "0,,1", "-1"]),
    st.text(alphabet="0123456789-,", max_size=12),
)


def usually(common: st.SearchStrategy[Any], odd: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``common`` three times in four: odd values among otherwise kubelet-like requests."""
    return st.one_of(common, common, common, odd)


@st.composite
def create_requests(draw: st.DrawFn) -> tuple[api.PodSandbox, api.Container]:
    uid = draw(usually(st.sampled_from(["u1", "u2", "u3"]), st.sampled_from(["", "ü", "a" * 300])))
    pod = api.PodSandbox(id="sb-" + uid, uid=uid, name="p", namespace="ns")
    pod.linux.cgroup_parent = draw(usually(st.just(f"/kubepods/pod{uid}"), ODD_CGROUPS))
    pod_limit = draw(usually(st.sampled_from([None, 2 * GI, 6 * GI]), INT64))
    if pod_limit is not None:
        pod.linux.pod_resources.memory.limit.value = pod_limit
    name = draw(usually(st.sampled_from(["app", "side"]), st.sampled_from(["", "a" * 300])))
    cid = draw(usually(st.just(f"{uid}/{name}"), st.sampled_from(["", "c1"])))
    c = api.Container(id=cid, pod_sandbox_id=pod.id, name=name)
    res = c.linux.resources
    memory = draw(usually(st.sampled_from([256 << 20, GI, 2 * GI, 4 * GI, 7 * GI]), INT64))
    res.memory.limit.value = memory
    sizes = draw(usually(st.just(["2MB", "1GB"]), st.lists(ODD_PAGE_SIZES, max_size=3)))
    for size in sizes:
        limit = draw(usually(st.sampled_from([0, 0, 2 << 20, 64 << 20, GI]), UINT64))
        res.hugepage_limits.add(page_size=size, limit=limit)
    cpu_millis = draw(st.sampled_from([1000, 2000, 2500]))
    res.cpu.quota.value = draw(usually(st.just(cpu_millis * 100), INT64))
    res.cpu.period.value = draw(usually(st.just(100_000), UINT64))
    res.cpu.shares.value = draw(usually(st.just(cpu_millis * 1024 // 1000), UINT64))
    res.cpu.cpus = draw(usually(st.sampled_from(["", "0-1", "4-5", "8-9", "0-15"]), ODD_CPULISTS))
    res.cpu.mems = draw(usually(st.just(""), ODD_CPULISTS))
    return pod, c


@examples(300)
@given(st.sampled_from(range(len(targets.CONFIGS))), st.lists(create_requests(), max_size=4))
def test_odd_create_requests_pin_refuse_or_leave_alone_and_leak_nothing(
    config_index: int, requests: list[tuple[api.PodSandbox, api.Container]]
) -> None:
    plugin = targets.make_plugin(targets.CONFIGS[config_index], targets.RecordingLogger())
    for pod, container in requests:
        try:
            adjust = plugin.create_container(pod, container)
        except AdmissionRefused as exc:
            event("refused")
            assert str(exc).startswith(REFUSAL_PREFIX) and "\n" not in str(exc)
        else:
            event("pinned" if adjust is not None else "left alone")
            if adjust is not None:
                # with updates of the pod's other containers (a pod found to set pod-level
                # resources) the handler answers a whole response
                response = (
                    adjust
                    if isinstance(adjust, api.CreateContainerResponse)
                    else api.CreateContainerResponse(adjust=adjust)
                )
                targets.check_response(
                    "CreateContainer",
                    api.CreateContainerRequest(pod=pod, container=container),
                    response,
                )
        targets.check_state(plugin.manager)
    # Every pod going away gives every byte back.
    for pod, container in requests:
        plugin.remove_container(pod, container)
        plugin.remove_pod_sandbox(pod)
    targets.check_state(plugin.manager)
    assert plugin.manager.state.entries == {}
    for node in plugin.manager.state.machine.values():
        for table in node.memory_map.values():
            assert (table.free, table.reserved) == (table.allocatable, 0)


# -- limits: refused from the header, before allocating --------------------------------

FOUR_GIB = 0xFFFFFFFF


def _peak_bytes(fn: Callable[[], Any]) -> int:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_mux_header_announcing_4gib_is_refused_after_the_header_alone() -> None:
    decoder = FrameDecoder()

    def feed() -> None:
        with pytest.raises(ProtocolError, match=f"length {FOUR_GIB} on conn 1 exceeds"):
            decoder.feed(struct.pack(">II", 1, FOUR_GIB))

    assert _peak_bytes(feed) < 64 * 1024
    assert decoder.buffered == 0


def test_ttrpc_header_announcing_4gib_is_refused_after_the_header_alone() -> None:
    reader = ttrpc.MessageReader()

    def feed() -> None:
        reader.receive_data(ttrpc.HEADER.pack(FOUR_GIB, 1, ttrpc.MessageType.REQUEST, 0))
        with pytest.raises(ProtocolError, match=f"length {FOUR_GIB} on stream 1 exceeds"):
            reader.next_event()

    assert _peak_bytes(feed) < 64 * 1024
    assert reader.buffered == 0


def test_lengths_at_the_limit_are_awaited_without_reserving_memory() -> None:
    decoder = FrameDecoder()
    reader = ttrpc.MessageReader()

    def feed() -> None:
        assert decoder.feed(struct.pack(">II", 1, mux.MAX_FRAME_PAYLOAD)) == []
        reader.receive_data(ttrpc.HEADER.pack(ttrpc.MAX_MESSAGE_LENGTH, 1, 1, 0))
        assert reader.next_event() is None

    assert _peak_bytes(feed) < 64 * 1024


def test_a_real_connection_closes_on_a_4gib_header_without_allocating() -> None:
    plugin = targets.make_plugin(targets.CONFIGS[0], targets.RecordingLogger())
    _, services = targets.stub_services(plugin, targets.RecordingLogger())

    async def run() -> Connection:
        reader = asyncio.StreamReader()
        writer = targets.MemoryWriter()
        conn = Connection(reader, writer, services, logger=targets.RecordingLogger())
        reader.feed_data(struct.pack(">II", 1, FOUR_GIB) + b"\x00" * 100)
        await asyncio.wait_for(conn.run(), 5)  # no EOF needed: the header ends it
        return conn

    conns: list[Connection] = []
    assert _peak_bytes(lambda: conns.append(asyncio.run(run()))) < 256 * 1024
    assert conns[0].closed
    assert conns[0].close_reason.startswith("protocol error: mux frame length 4294967295")


@pytest.mark.parametrize(("target", "runs"), [("wire", 400), ("plugin", 60), ("conn", 40)])
def test_memory_stays_flat_over_many_inputs(target: str, runs: int) -> None:
    rng = random.Random(5)
    seeds = CORPUS[target]
    inputs = [engines.mutate(rng.choice(seeds), rng, seeds) for _ in range(runs + 20)]
    tracemalloc.start()
    try:
        for data in inputs[:20]:  # warm-up: caches, interned strings, the event loop
            targets.TARGETS[target](data)
        gc.collect()  # a stored protocol error and its traceback form a cycle
        before = tracemalloc.get_traced_memory()[0]
        for data in inputs[20:]:
            targets.TARGETS[target](data)
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < 256 << 10, f"{target}: {grown} bytes kept after {runs} inputs"


def test_a_broken_ttrpc_reader_keeps_nothing_more() -> None:
    reader = ttrpc.MessageReader()
    reader.receive_data(ttrpc.HEADER.pack(FOUR_GIB, 1, 1, 0))
    with pytest.raises(ProtocolError):
        reader.next_event()
    with pytest.raises(ProtocolError, match="exceeds the maximum"):
        reader.receive_data(b"\x00" * 4096)
    assert reader.buffered == 0


# -- findings, kept as regressions ------------------------------------------------------


def _serve(stream: bytes) -> tuple[Connection, list[ttrpc.ResponseReceived], Any]:
    """Run a real Connection (the stub's services, a MemoryPlugin) over ``stream`` to EOF."""
    log = targets.RecordingLogger()
    plugin = targets.make_plugin(targets.CONFIGS[0], log)
    _, services = targets.stub_services(plugin, log)

    async def run() -> tuple[Connection, bytes]:
        reader = asyncio.StreamReader()
        writer = targets.MemoryWriter()
        conn = Connection(reader, writer, services, logger=log)
        reader.feed_data(stream)
        running = asyncio.ensure_future(conn.run())
        await targets.settle()
        reader.feed_eof()
        await asyncio.wait_for(running, 5)
        return conn, bytes(writer.data)

    conn, written = asyncio.run(run())
    answers = ttrpc.MessageReader()
    for frame in FrameDecoder().feed(written):
        answers.receive_data(frame.payload)
    return conn, [e for e in answers.events() if isinstance(e, ttrpc.ResponseReceived)], log


def test_request_on_stream_zero_is_dropped_and_the_connection_goes_on() -> None:
    # Found by the conn target: the error answer for stream 0 could not be
    # encoded, and the exception closed the connection as an internal error.
    zero = ttrpc.HEADER.pack(0, 0, ttrpc.MessageType.REQUEST, 0)
    valid = ttrpc.encode_request(1, targets.PLUGIN_SERVICE, "Shutdown")
    conn, answers, log = _serve(mux.encode_message(1, zero) + mux.encode_message(1, valid))
    assert log.crashes == []
    assert conn.close_reason == "EOF from runtime"
    assert [(a.stream_id, a.status_code) for a in answers] == [(1, 0)]


def _plugin() -> MemoryPlugin:
    config = parse_config({"reservedMemory": ["0:memory=512Mi"]})
    return MemoryPlugin(MemoryManager(targets.TOPOLOGY, config), logger=targets.RecordingLogger())


def test_container_without_pod_uid_or_name_leaves_a_readable_checkpoint() -> None:
    # Found by the plugin target: the state held an entry keyed "", which the
    # checkpoint reader refused, so the next start distrusted the whole file.
    plugin = _plugin()
    pod = api.PodSandbox(id="sb", uid="", name="p", namespace="n")
    pod.linux.cgroup_parent = "/kubepods/pod"
    c = api.Container(id="c", pod_sandbox_id="sb", name="")
    c.linux.resources.memory.limit.value = GI
    plugin.create_container(pod, c)
    targets.check_state(plugin.manager)


def test_synchronize_with_a_pod_without_uid_whose_container_names_one() -> None:
    # Found by the plugin target: the container's UID came from its label, the
    # pod record was keyed by the pod's (empty) UID, and Synchronize raised KeyError.
    plugin = _plugin()
    pod = api.PodSandbox(id="sb", uid="", name="p", namespace="n")
    pod.linux.cgroup_parent = "/kubepods/pod"
    c = api.Container(id="c", pod_sandbox_id="sb", name="app", state=api.CONTAINER_RUNNING)
    c.labels["io.kubernetes.pod.uid"] = "u1"
    c.linux.resources.memory.limit.value = GI
    updates = plugin.synchronize([pod], [c])
    assert [(u.container_id, u.linux.resources.cpu.mems) for u in updates] == [("c", "0")]
    targets.check_state(plugin.manager)


@pytest.mark.parametrize(
    ("page_size", "limit"),
    [("0KB", 1), ("3MB", 3 << 20), ("32GB", 32 * GI), ("9" * 40 + "PB", 1)],
)
def test_impossible_page_sizes_leave_the_container_alone(page_size: str, limit: int) -> None:
    plugin = _plugin()
    pod = api.PodSandbox(id="sb", uid="u", name="p", namespace="n")
    pod.linux.cgroup_parent = "/kubepods/podu"
    c = api.Container(id="c", pod_sandbox_id="sb", name="app")
    c.linux.resources.memory.limit.value = GI
    c.linux.resources.hugepage_limits.add(page_size=page_size, limit=limit)
    assert plugin.create_container(pod, c) is None
    assert plugin.manager.state.entries == {}


def test_one_page_size_limited_twice_leaves_the_container_alone() -> None:
    plugin = _plugin()
    pod = api.PodSandbox(id="sb", uid="u", name="p", namespace="n")
    pod.linux.cgroup_parent = "/kubepods/podu"
    c = api.Container(id="c", pod_sandbox_id="sb", name="app")
    c.linux.resources.memory.limit.value = GI
    c.linux.resources.hugepage_limits.add(page_size="2MB", limit=2 << 20)
    c.linux.resources.hugepage_limits.add(page_size="2048KB", limit=4 << 20)
    assert plugin.create_container(pod, c) is None
    assert plugin.manager.state.entries == {}


# -- the dedicated run's engine and command line still work ------------------------------


@pytest.mark.parametrize("target", sorted(CORPUS))
def test_mutation_engine_runs_clean(target: str, tmp_path: Path) -> None:
    code = fuzz_command.main(
        ["run", "--engine", "mutate", "--target", target, "--runs", "60", "--work", str(tmp_path)]
    )
    assert code == 0
    assert not any((tmp_path / "crashes").iterdir())


def test_corpus_and_repro_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert fuzz_command.main(["corpus", "--out", str(tmp_path)]) == 0
    seeds = sorted((tmp_path / "wire").iterdir())
    assert len(seeds) == len(CORPUS["wire"])
    tiny = tmp_path / "tiny"
    tiny.write_bytes(b"\x00")
    assert fuzz_command.main(["repro", "--target", "wire", str(seeds[0]), str(tiny)]) == 0
    assert capsys.readouterr().out.count(": ok") == 2

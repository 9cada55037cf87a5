"""Seeds recorded from real containerd 2.x and 1.7 traffic (root, hack/e2e-setup.sh done)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

from google.protobuf.message import Message

from nri_plugin.nri import mux, ttrpc
from nri_plugin.nri.connection import READ_SIZE
from nri_plugin.nri.gen import nri_pb2 as api
from nri_plugin.nri.mux import PLUGIN_SERVICE_CONN, RUNTIME_SERVICE_CONN
from nri_plugin.nri.stub import RUNTIME_SERVICE
from tests.fuzz.corpus import _uid, write_corpus
from tests.fuzz.targets import CONFIGS, MI, SELECTOR

# -- capture: real containerd traffic as seeds ----------------------------------------------


class _AllEvents:
    """A handler shape that subscribes to every event, for the recorder's mask."""

    def synchronize(self) -> None: ...
    def create_container(self) -> None: ...
    def update_container(self) -> None: ...
    def stop_container(self) -> None: ...
    def run_pod_sandbox(self) -> None: ...
    def stop_pod_sandbox(self) -> None: ...
    def remove_pod_sandbox(self) -> None: ...
    def post_create_container(self) -> None: ...
    def start_container(self) -> None: ...
    def post_start_container(self) -> None: ...
    def post_update_container(self) -> None: ...
    def remove_container(self) -> None: ...


class Recorder:
    """A minimal NRI plugin on a blocking socket that answers everything and keeps the bytes."""

    def __init__(self, socket_path: Path) -> None:
        import socket
        import threading

        from nri_plugin.nri.stub import event_mask

        self.mask = event_mask(_AllEvents())
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(str(socket_path))
        self.stream = bytearray()
        self.calls: list[tuple[str, bytes]] = []
        self.error: BaseException | None = None
        register = api.RegisterPluginRequest(plugin_name="fuzz-recorder", plugin_idx="99")
        self._send(
            RUNTIME_SERVICE_CONN,
            ttrpc.encode_request(
                1, RUNTIME_SERVICE, "RegisterPlugin", register.SerializeToString()
            ),
        )
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _send(self, conn_id: int, message: bytes) -> None:
        self.sock.sendall(mux.encode_message(conn_id, message))

    def _answer(self, event: ttrpc.RequestReceived) -> bytes:
        empty: dict[str, Message] = {
            "Configure": api.ConfigureResponse(events=self.mask),
            "Synchronize": api.SynchronizeResponse(),
            "CreateContainer": api.CreateContainerResponse(),
            "UpdateContainer": api.UpdateContainerResponse(),
            "StopContainer": api.StopContainerResponse(),
            "StateChange": api.Empty(),
        }
        if event.method in empty:
            return ttrpc.encode_response(event.stream_id, empty[event.method].SerializeToString())
        # Per-event RPCs: UNIMPLEMENTED makes NRI >= 0.12 use StateChange, which we record.
        return ttrpc.encode_response(
            event.stream_id, status_code=ttrpc.Code.UNIMPLEMENTED, status_message=event.method
        )

    def _serve(self) -> None:
        frames = mux.FrameDecoder()
        server = ttrpc.MessageReader()
        try:
            while data := self.sock.recv(READ_SIZE):
                self.stream += data
                for frame in frames.feed(data):
                    if frame.conn_id != PLUGIN_SERVICE_CONN:
                        continue
                    server.receive_data(frame.payload)
                    for event in server.events():
                        if isinstance(event, ttrpc.RequestReceived):
                            self.calls.append((event.method, event.payload))
                            self._send(PLUGIN_SERVICE_CONN, self._answer(event))
        except OSError:
            pass
        except BaseException as exc:
            self.error = exc

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()
        self.thread.join(5)


def _drive(cri: Any, ctrd: Any) -> None:
    """kubelet's calls for a handful of pods of every QoS class, with hugepages and resizes."""
    from tests.e2e.harness import PodResources

    sizes = {"2MB": 4 * MI}
    g = cri.run_pod(_uid(901), qos="Guaranteed", resources=PodResources(1000, 256 * MI))
    init = cri.create_container(g, "init", memory_limit=64 * MI, cpu_millis=1000, command=["true"])
    cri.start_container(init)
    app = cri.create_container(
        g, "app", memory_limit=192 * MI, cpu_millis=1000, cpuset_cpus="0", hugepages=sizes
    )
    cri.start_container(app)
    cri.update_container_resources(app, memory_limit=192 * MI, cpu_millis=1000, cpuset_cpus="0")
    b = cri.run_pod(_uid(902), qos="Burstable", cgroup_driver="systemd")
    web = cri.create_container(b, "web", memory_limit=128 * MI, cpu_millis=250, cpu_limit_millis=0)
    cri.start_container(web)
    be = cri.run_pod(_uid(903), qos="BestEffort")
    batch = cri.create_container(be, "batch")
    cri.start_container(batch)
    for cid in (app, web, batch):
        cri.stop_container(cid)
        cri.remove_container(cid)
    cri.remove_all_pods()


def capture(out: Path, flavors: Sequence[str]) -> int:
    """Record what real containerd sends to a plugin while pods come and go."""
    from tests.e2e.harness import Containerd, E2EPaths

    paths = E2EPaths.from_env()
    if missing := paths.missing():
        raise SystemExit(f"e2e setup missing ({missing[0]}); run hack/e2e-setup.sh as root")
    written = 0
    for flavor in flavors:
        ctrd = Containerd(paths, cast(Any, flavor), f"fz{flavor.replace('.', '')}")
        recorder: Recorder | None = None
        try:
            ctrd.start()
            recorder = Recorder(ctrd.nri_socket)
            deadline = time.monotonic() + 20
            while not any(m == "Synchronize" for m, _ in recorder.calls):
                if time.monotonic() > deadline or recorder.error is not None:
                    raise SystemExit(f"containerd {flavor}: recorder not synchronized")
                time.sleep(0.05)
            _drive(ctrd.cri(), ctrd)
            time.sleep(0.5)
        finally:
            if recorder is not None:
                recorder.close()
            ctrd.close()
        assert recorder is not None
        if recorder.error is not None:
            raise SystemExit(f"recorder failed: {recorder.error!r}")
        stream = bytes(recorder.stream)
        records = [(m, p) for m, p in recorder.calls if m in SELECTOR]
        seeds: dict[str, list[bytes]] = {
            "wire": [bytes([seed]) + stream for seed in (0, 1, 9)],
            "conn": [b"\x00" + stream],
            "plugin": [
                bytes([i])
                + b"".join(
                    bytes([SELECTOR[m]]) + len(p).to_bytes(2, "big") + p
                    for m, p in records
                    if len(p) <= 0xFFFF
                )
                for i in range(len(CONFIGS))
            ],
        }
        seeds["plugin"] += [
            b"\x00" + bytes([SELECTOR[m]]) + len(p).to_bytes(2, "big") + p
            for m, p in records
            if len(p) <= 0xFFFF
        ]
        written += write_corpus(out, seeds, prefix=f"containerd{flavor}")
        kinds = sorted({m for m, _ in recorder.calls})
        print(
            f"containerd {flavor}: {len(stream)} bytes, {len(recorder.calls)} calls"
            f" ({', '.join(kinds)})"
        )
    return written

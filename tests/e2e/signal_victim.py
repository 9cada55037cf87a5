"""Run only by test_interrupted_teardown.py, in a pytest subprocess it then signals.

Not a test module of its own (no ``test_`` prefix): the outer test passes this path
to pytest explicitly. The fixture is shaped as conftest's: start, yield, close.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from .harness import Containerd, E2EPaths, PodResources

MiB = 1 << 20


@pytest.fixture
def victim(e2e_paths: E2EPaths) -> Iterator[Containerd]:
    ctrd = Containerd(e2e_paths, "2.x", os.environ["NMM_VICTIM_INSTANCE"])
    try:
        ctrd.start()
        yield ctrd
    finally:
        ctrd.close()


def test_wait_for_a_signal(victim: Containerd) -> None:
    cri = victim.cri()
    uid = str(uuid.uuid4())
    pod = cri.run_pod(uid, qos="Guaranteed", resources=PodResources(1000, 64 * MiB))
    cid = cri.create_container(pod, "app", memory_limit=64 * MiB, cpu_millis=1000)
    cri.start_container(cid)  # a shim, a container process, mounts and cgroups now exist
    Path(os.environ["NMM_VICTIM_READY"]).write_text(str(victim.run_dir))
    time.sleep(float(os.environ.get("NMM_VICTIM_WAIT", "120")))
    pytest.fail("no signal came")

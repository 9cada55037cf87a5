"""SIGTERM or Ctrl-C in the middle of an e2e test leaves nothing of containerd behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .harness import REPO, Containerd, E2EPaths

VICTIM = Path(__file__).with_name("signal_victim.py")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_mid_test_tears_containerd_down(
    e2e_paths: E2EPaths, sig: signal.Signals, tmp_path: Path
) -> None:
    instance = f"sig{os.getpid() % 10_000}{sig.value}"
    ready = tmp_path / "ready"
    env = {
        **os.environ,
        "NMM_E2E": "1",
        "NMM_VICTIM_INSTANCE": instance,
        "NMM_VICTIM_READY": str(ready),
    }
    probe = Containerd(e2e_paths, "2.x", instance)  # only to look for its leftovers
    with open(tmp_path / "pytest.log", "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", str(VICTIM)],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # the signal reaches pytest alone, as `kill PID` would
        )
    try:
        deadline = time.monotonic() + 120
        while not ready.exists():
            assert proc.poll() is None, (tmp_path / "pytest.log").read_text()
            assert time.monotonic() < deadline, "the victim never got containerd up"
            time.sleep(0.1)
        before = probe.leftovers()
        assert any(x.startswith("process") for x in before), before
        assert any(x.startswith("cgroup") for x in before), before
        proc.send_signal(sig)
        proc.wait(timeout=90)
        output = (tmp_path / "pytest.log").read_text()
        assert probe.leftovers() == [], output
        assert "KeyboardInterrupt" in output, output  # ended by the signal, not the timeout
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        probe._sweep()  # never leave this test's own mess, whatever failed above

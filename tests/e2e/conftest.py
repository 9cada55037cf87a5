"""Fixtures for tests against a real containerd (see harness.py and hack/e2e-setup.sh)."""

from __future__ import annotations

import itertools
import os
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from .harness import (
    FLAVOR_TAG,
    FLAVORS,
    Containerd,
    CRIClient,
    E2EPaths,
    Flavor,
    HarnessError,
)

_HERE = Path(__file__).parent
FLAVOR_IDS = ["containerd2" if f == "2.x" else "containerd17" for f in FLAVORS]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.is_relative_to(_HERE):
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def e2e_paths() -> E2EPaths:
    """The installed e2e tools. A test never installs them: hack/e2e-setup.sh does."""
    if os.geteuid() != 0:
        pytest.fail("e2e tests need root: containerd, runc, mounts and cgroups")
    paths = E2EPaths.from_env()
    if missing := paths.missing():
        message = (
            f"e2e setup missing in {paths.root} ({missing[0]} and {len(missing) - 1} more):"
            f" run hack/e2e-setup.sh {paths.root} first (hack/test.sh does)"
        )
        if os.environ.get("CI") == "true":
            pytest.fail(message)  # CI must have set it up: never pass by skipping
        pytest.skip(message)
    return paths


@pytest.fixture(scope="session", autouse=True)
def _teardown_on_sigterm() -> Iterator[None]:
    """SIGTERM (and Ctrl-C) end the session so that every fixture's teardown runs.

    pytest's default SIGTERM is the kernel's: the process dies and containerd, its
    shims, mounts and cgroups stay behind. Here SIGTERM raises KeyboardInterrupt in
    the test (or fixture) that is running; pytest then tears down every fixture set
    up so far, which closes each Containerd. A second signal during that teardown is
    ignored, and whatever a teardown still leaves is swept at exit
    (harness.sweep_live_instances, registered with atexit).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}: tearing down")

    previous = {s: signal.signal(s, interrupt) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


@pytest.fixture(scope="session")
def plugin_image(e2e_paths: E2EPaths) -> Path:
    """The plugin's image (OCI archive) that hack/image-build.sh built from the Dockerfile
    (hack/test.sh builds it first). Tests never build it: missing, it is a failure in CI
    and a skip elsewhere, naming the script."""
    archive = e2e_paths.plugin_image_archive
    if not archive.is_file():
        message = f"{archive} missing: run hack/image-build.sh first (hack/test.sh does)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return archive


def _closed_and_clean(ctrd: Containerd) -> None:
    try:
        ctrd.close()
    finally:
        ctrd.assert_clean()


@pytest.fixture(scope="module", params=FLAVORS, ids=FLAVOR_IDS)
def containerd(request: pytest.FixtureRequest, e2e_paths: E2EPaths) -> Iterator[Containerd]:
    """One started containerd per flavor and module, torn down and checked clean after it."""
    ctrd = Containerd(e2e_paths, request.param)
    try:
        ctrd.start()
        yield ctrd
    finally:
        _closed_and_clean(ctrd)


@pytest.fixture
def cri(containerd: Containerd) -> Iterator[CRIClient]:
    """The module's CRI client; every pod a test made is removed after it."""
    yield containerd.cri()
    if containerd.running:
        containerd.cri().remove_all_pods()


@pytest.fixture(params=FLAVORS, ids=FLAVOR_IDS)
def flavor(request: pytest.FixtureRequest) -> Flavor:
    """Each flavor in turn, for tests that build their own containerd with make_containerd."""
    value: Flavor = request.param
    return value


@pytest.fixture
def make_containerd(e2e_paths: E2EPaths) -> Iterator[Callable[..., Containerd]]:
    """Factory of started containerd instances private to the test (own config, own run dir),
    all torn down and checked clean after it. Keyword arguments go to Containerd."""
    made: list[Containerd] = []
    serial = itertools.count(1)

    def make(flavor: Flavor, **kwargs: Any) -> Containerd:
        ctrd = Containerd(e2e_paths, flavor, f"{FLAVOR_TAG[flavor]}f{next(serial)}", **kwargs)
        made.append(ctrd)
        return ctrd.start()

    yield make
    errors = []
    for ctrd in reversed(made):
        try:
            _closed_and_clean(ctrd)
        except (AssertionError, HarnessError) as e:
            errors.append(str(e))
    if errors:
        pytest.fail("\n".join(errors))

"""Fixtures for tests against a real containerd (see harness.py and hack/e2e-setup.sh)."""

from __future__ import annotations

import itertools
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from .harness import (
    FLAVOR_TAG,
    FLAVORS,
    REPO,
    Containerd,
    CRIClient,
    E2EPaths,
    Flavor,
    HarnessError,
    run_setup,
)

_HERE = Path(__file__).parent
FLAVOR_IDS = ["containerd2" if f == "2.x" else "containerd17" for f in FLAVORS]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.is_relative_to(_HERE):
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def e2e_paths() -> E2EPaths:
    """The installed e2e tools; installs them first when missing (never in CI)."""
    if os.geteuid() != 0:
        pytest.fail("e2e tests need root: containerd, runc, mounts and cgroups")
    paths = E2EPaths.from_env()
    if missing := paths.missing():
        if os.environ.get("CI") == "true":
            pytest.fail(
                f"e2e setup missing in {paths.root} ({missing[0]} and {len(missing) - 1} more);"
                " CI must run hack/e2e-setup.sh before the tests"
            )
        try:
            run_setup(paths)
        except HarnessError as e:
            pytest.fail(str(e))
        if missing := paths.missing():
            pytest.fail(f"hack/e2e-setup.sh finished but {missing} are missing")
    return paths


@pytest.fixture(scope="session")
def plugin_image(e2e_paths: E2EPaths) -> Path:
    """The plugin's image (OCI archive) built from the Dockerfile by hack/image-build.sh:
    built here when missing or stale (a no-op when up to date), never in CI."""
    archive = e2e_paths.plugin_image_archive
    if os.environ.get("CI") == "true":
        if not archive.is_file():
            pytest.fail(f"{archive} missing; CI must run hack/image-build.sh before the tests")
        return archive
    proc = subprocess.run(
        [str(REPO / "hack" / "image-build.sh"), str(archive.parent)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0 or not archive.is_file():
        pytest.fail(f"hack/image-build.sh failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
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

"""What a plain ``pytest`` runs: the unit, property and protocol tests, never containerd.

The end-to-end tests (tests/e2e: a real containerd, root, the tools of
hack/e2e-setup.sh) run only on request: ``pytest --e2e`` or ``NMM_E2E=1``
(hack/test.sh and CI ask for them). Without the request they are reported as
skipped, so a plain run never starts a daemon, mounts or cgroups.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import settings

E2E_DIR = Path(__file__).parent / "e2e"


# No property test is a timing test (speed targets live in benchmarks/): hypothesis's
# default 200 ms per-example deadline only fails examples on a loaded machine.
settings.register_profile("nmm", deadline=None)
settings.load_profile("nmm")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--e2e",
        action="store_true",
        default=False,
        help="also run the end-to-end tests of tests/e2e (real containerd; root and"
        " hack/e2e-setup.sh needed); NMM_E2E=1 does the same",
    )


def e2e_requested(config: pytest.Config) -> bool:
    return bool(config.getoption("--e2e")) or os.environ.get("NMM_E2E") == "1"


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if e2e_requested(config):
        return
    skip = pytest.mark.skip(
        reason="end-to-end: starts a real containerd; run with --e2e or NMM_E2E=1"
    )
    for item in items:
        if item.path.is_relative_to(E2E_DIR) or item.get_closest_marker("e2e"):
            item.add_marker(skip)

"""Citations a reader can follow.

Comments, docstrings, tests and docs cite kubelet's files and functions, the
KEPs, the containerd/nri and containerd/ttrpc sources, or this project's own
``docs/``. Design notes that do not ship with the project (and pointers into
them: numbered sections, appendices, "reference 7.6") must not be cited: a
reader has no way to open them.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
THIS = Path(__file__).resolve()

# What ships: the package, tests, hack, docs, benchmarks, protos, manifests, README.
SCANNED_DIRS = ("nri_plugin", "tests", "hack", "docs", "benchmarks", "proto", "deploy", ".ci")
SCANNED_FILES = ("README.md", "Dockerfile", "pyproject.toml")
TEXT_SUFFIXES = {".py", ".pyi", ".md", ".sh", ".yaml", ".yml", ".proto", ".toml", ".go", ".txt"}

# Each pattern is one way the unshipped notes were cited.
UNSHIPPED_CITATION = re.compile(
    "|".join(
        (
            r"\bsections? \d",  # "section 7 step 6", "sections 12 and 13"
            r"\bappendix [a-z]\b",
            r"\breference:? \d",  # "(reference 7.6)", "(reference 8)"
            r"\(reference\b",  # "(reference section 10)", "(reference: ...)"
            r"\breference/",
            r"\bspec/(?:lifecycle|simulate)\b",
            r"nri-protocol(?:\.md)?\b",
            r"static-policy\.md",
            r"kubelet-today",
            r"/work/shared\b",
            r"\bquirk \d",
            "\N{SECTION SIGN}",
        )
    ),
    re.IGNORECASE,
)


def shipped_text_files() -> list[Path]:
    files = [ROOT / name for name in SCANNED_FILES if (ROOT / name).is_file()]
    for top in SCANNED_DIRS:
        base = ROOT / top
        if not base.is_dir():
            continue
        for path in base.rglob("*"):
            if path.is_file() and (path.suffix in TEXT_SUFFIXES or path.parent.name == ".ci"):
                files.append(path)
    return sorted(p for p in files if p.resolve() != THIS)


def citations_in(text: str) -> list[tuple[int, str]]:
    return [
        (number, line.strip())
        for number, line in enumerate(text.splitlines(), start=1)
        if UNSHIPPED_CITATION.search(line)
    ]


@pytest.mark.parametrize(
    "line",
    [
        "runtime (reference nri-protocol.md section 2).",
        '"""Section 7 step 7: count the assignment on every node."""',
        "accounting rules (reference/static-policy.md sections 2, 7-10, 12, 13).",
        "# Appendix A of nri-protocol.md.",
        "kubelet allows it (reference 7.6) and so do we",
        "# The policy shrinks an init container's blocks (reference 8):",
        "the checksum is kubelet's own (reference: static-policy.md, checkpoint",
        "replayed where they happened (spec/lifecycle.md).",
        '"""``scenario`` as the YAML document of spec/simulate.md."""',
        "// written from the field tables of /work/shared/reference/nri-protocol.md",
        "see kubelet-today.md",
        "# quirk 1: no hints means no preference",
        "as \N{SECTION SIGN}5.3 says",
    ],
)
def test_the_check_catches_each_form_of_citation(line: str) -> None:
    assert citations_in(line) == [(1, line.strip())]


@pytest.mark.parametrize(
    "line",
    [
        "kubelet's calculateHints (pkg/kubelet/cm/memorymanager/policy_static.go)",
        "containerd/nri pkg/net/multiplex/mux.go, containerd/ttrpc channel.go",
        'docs/lifecycle.md, "Restarts and missed events"',
        "The section has the same shape as containerd's own config.",
        "time.sleep(0.5)  # a reference implementation, KEP-1769",
    ],
)
def test_the_check_leaves_followable_citations_alone(line: str) -> None:
    assert citations_in(line) == []


def test_the_scan_covers_the_package_tests_and_docs() -> None:
    names = {p.relative_to(ROOT).as_posix() for p in shipped_text_files()}
    for expected in (
        "README.md",
        "nri_plugin/engine/policy/static.py",
        "nri_plugin/nri/mux.py",
        "tests/test_static_policy.py",
        "hack/setup.sh",
        "docs/simulate.md",
        "docs/design/bounded-search.md",
        "proto/nri.proto",
    ):
        assert expected in names


def test_no_file_cites_unshipped_notes() -> None:
    found = []
    for path in shipped_text_files():
        text = path.read_text(encoding="utf-8", errors="replace")
        found += [f"{path.relative_to(ROOT)}:{n}: {line}" for n, line in citations_in(text)]
    assert not found, (
        "cite kubelet's file and function, the KEP, the containerd/nri or "
        "containerd/ttrpc source, or docs/ instead of notes that do not ship:\n" + "\n".join(found)
    )

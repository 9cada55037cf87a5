"""docs/bad-input.md and tests/test_bad_input.py stay in step: one test per row, one row per test.

A row's id is the first cell of a table row (several ids separated by " / ");
a test of that id is a parametrize id of a test in test_bad_input.py, or a
``# row <id>`` comment inside a test function there.
"""

from __future__ import annotations

import inspect
import re
from collections import Counter
from pathlib import Path

import pytest

import tests.test_bad_input as bad_input

DOC = Path(__file__).resolve().parent.parent / "docs" / "bad-input.md"
ROW_ID = r"[a-z0-9]+(?:-[a-z0-9]+)+"


def ids_of_rows() -> list[str]:
    ids: list[str] = []
    for line in DOC.read_text().splitlines():
        cells = line.split("|")
        if len(cells) < 3 or not line.startswith("| "):
            continue
        first = cells[1].strip()
        if first in ("Row", "---") or set(first) <= {"-"}:
            continue
        for part in first.split(" / "):
            assert re.fullmatch(ROW_ID, part.strip()), f"{DOC.name}: {part!r} is not a row id"
            ids.append(part.strip())
    return ids


def ids_of_tests() -> set[str]:
    ids: set[str] = set()
    for name, fn in vars(bad_input).items():
        if not name.startswith("test_") or not callable(fn):
            continue
        for mark in getattr(fn, "pytestmark", []):
            if mark.name == "parametrize":
                ids.update(v.id for v in mark.args[1] if getattr(v, "id", None))
        ids.update(re.findall(rf"# row ({ROW_ID})\b", inspect.getsource(fn)))
    return ids


def test_the_doc_has_rows_and_the_tests_have_ids() -> None:
    # the parsers above must find something, or the two checks below prove nothing
    assert len(ids_of_rows()) > 150
    assert len(ids_of_tests()) > 150


def test_every_row_id_is_unique() -> None:
    twice = [i for i, n in Counter(ids_of_rows()).items() if n > 1]
    assert twice == []


@pytest.mark.parametrize("direction", ["row without a test", "test without a row"])
def test_every_row_has_a_test_and_every_test_a_row(direction: str) -> None:
    rows, tests = set(ids_of_rows()), ids_of_tests()
    missing = rows - tests if direction == "row without a test" else tests - rows
    assert sorted(missing) == []

"""Reading an input document one way: YAML or JSON, bounded, with one shape of message.

Every file a user hands us (config, kubelet config, fake topology, scenario, and the
checkpoint's text) goes through here, so every one fails the same way::

    <file>: no such file
    <file>: cannot read: Permission denied
    <file>: larger than 1048576 bytes (the limit for a config file)
    <file>: not UTF-8 text (byte 12)
    <file>: not valid YAML or JSON: <problem> at line L, column C
    <file>: <key path>: <rule broken>, got <value described briefly>

Work is bounded on any input: the size of the document is capped before it is
parsed, nesting deeper than :data:`MAX_DEPTH` is refused, and YAML aliases may
repeat at most :data:`MAX_ALIAS_EXPANSION` values in total (a 500-byte chain of
aliases otherwise stands for billions of values, and every later walk over the
data -- validation, an error message -- would pay for each of them).
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Iterable, Mapping
from itertools import compress
from pathlib import Path
from typing import Any

import yaml

from nri_plugin.errors import InputError, TopologyError, quote, short

# libyaml's parser is several times faster where PyYAML was built with it.
_YAML_LOADER: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

# A document is at most this large unless its reader says otherwise: the checkpoint
# limit, since a scenario's initialState may hold a whole checkpoint.
MAX_DOCUMENT_BYTES = 64 << 20
# Our deepest legitimate document, a scenario with an initialState, nests about ten
# levels; 64 leaves room and stays far below Python's recursion limit (~1000), which
# the YAML constructor and json module would otherwise hit with a traceback-free but
# slow and vague RecursionError.
MAX_DEPTH = 64
# PyYAML builds Python objects for every value at ~4 us each, so YAML is capped far
# below JSON: 1 MiB of the densest YAML (a list of one-digit numbers) is ~500,000
# values and two seconds; a real config or scenario is a few kilobytes. Large
# documents (a scenario embedding a checkpoint) are JSON, which the json module reads
# a hundred times faster.
MAX_YAML_CHARS = 1 << 20
# Anchors and aliases are legal YAML and may shorten a hand-written scenario; what
# they stand for beyond the document's own values is capped. 100,000 values is far
# more than any sensible reuse and takes well under a second to walk.
MAX_ALIAS_EXPANSION = 100_000

# Unknown keys longer than this get no suggestion: difflib is quadratic in length.
_SUGGEST_MAX_LEN = 100


def describe(value: object) -> str:
    """``value`` in a few words for an error message, never longer than ~80 characters.

    Only scalars are shown; a list or a mapping is named by its kind and length, so
    no value, however large or nested (or repeated through YAML aliases), costs more
    than a constant to describe.
    """
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, int):
        # str() of an int is quadratic and refused above 4300 digits.
        if value.bit_length() > 200:
            return "a number of more than 60 digits"
        return f"the number {value}"
    if isinstance(value, float):
        return f"the number {value!r}"
    if isinstance(value, str):
        return f"the string {quote(value)}"
    if isinstance(value, list):
        return f"a list of {_count(len(value), 'item')}" if value else "an empty list"
    if isinstance(value, dict):
        return f"a mapping of {_count(len(value), 'key')}" if value else "an empty mapping"
    # What else YAML builds: !!timestamp, !!binary, !!set.
    if isinstance(value, datetime.datetime):
        return "a timestamp"
    if isinstance(value, datetime.date):
        return "a date"
    if isinstance(value, bytes):
        return "binary data"
    if isinstance(value, set):
        return "a set"
    return f"a value of type {type(value).__name__}"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def check_keys(
    data: Mapping[object, object],
    known: Iterable[str],
    where: str,
    error: type[InputError] = TopologyError,
) -> None:
    """Refuse keys outside ``known``, suggesting the closest one (typos must not pass)."""
    known = tuple(known)
    for key in data:
        if key in known:
            continue
        text = key if isinstance(key, str) else describe(key)
        hint = []
        if isinstance(key, str) and len(key) <= _SUGGEST_MAX_LEN:
            import difflib  # only for a typo's suggestion: a running plugin never needs it

            hint = difflib.get_close_matches(key, known, n=1)
        did_you_mean = f"; did you mean {quote(hint[0])}?" if hint else ""
        shown = quote(text) if isinstance(key, str) else text
        raise error(f"{where}: unknown key {shown} (known: {', '.join(known)}){did_you_mean}")


def read_bytes(path: str | Path, error: type[InputError], *, limit: int, what: str) -> bytes:
    """The bytes of ``path``, at most ``limit`` of them (``what`` names the kind of file)."""
    p = Path(path)
    try:
        with p.open("rb") as f:
            raw = f.read(limit + 1)
    except FileNotFoundError:
        raise error(f"{p}: no such file") from None
    except OSError as e:
        raise error(f"{p}: cannot read: {e.strerror or type(e).__name__}") from None
    if len(raw) > limit:
        raise error(f"{p}: larger than {limit} bytes (the limit for {what})")
    return raw


def decode_text(raw: bytes, source: str, error: type[InputError]) -> str:
    """``raw`` as UTF-8 text; the message names the first bad byte's offset."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise error(f"{source}: not UTF-8 text (byte {e.start})") from None


def read_document(
    path: str | Path,
    error: type[InputError],
    *,
    limit: int = MAX_DOCUMENT_BYTES,
    what: str = "input files",
) -> object:
    """The parsed content of a YAML or JSON file; ``error`` names the path when it cannot."""
    raw = read_bytes(path, error, limit=limit, what=what)
    return parse_document(decode_text(raw, str(path), error), str(path), error)


def parse_document(text: str, source: str, error: type[InputError]) -> object:
    """``text`` parsed as JSON when it looks like JSON (the json module is far faster
    on large files), else as YAML, within this module's bounds."""
    if text.lstrip().startswith(("{", "[")):
        try:
            data = json.loads(text)
        except RecursionError:
            raise error(too_deep(source)) from None
        except ValueError as e:
            if len(text) > MAX_YAML_CHARS:  # too large for YAML: it was meant as JSON
                problem = (
                    f"{e.msg} at line {e.lineno}, column {e.colno}"
                    if isinstance(e, json.JSONDecodeError)
                    else "a number of more than 4300 digits"
                )
                raise error(f"{source}: not valid JSON: {problem}") from None
            # else flow-style YAML, or an error that YAML words as well
        else:
            check_depth(data, source, error)
            return data
    if len(text) > MAX_YAML_CHARS:
        raise error(
            f"{source}: YAML of more than {MAX_YAML_CHARS} characters; write a document this"
            " large as JSON"
        )
    return _parse_yaml(text, source, error)


def too_deep(source: str) -> str:
    return f"{source}: nested deeper than {MAX_DEPTH} levels"


_IS_CONTAINER = frozenset((dict, list)).__contains__


def check_depth(data: object, source: str, error: type[InputError]) -> None:
    """Refuse ``data`` nested deeper than :data:`MAX_DEPTH` (no recursion, so any depth).

    Level by level, and the children that are containers are picked in C
    (``compress``/``map``), so a long list of scalars costs next to nothing.
    """
    level: list[Any] = [data] if _IS_CONTAINER(type(data)) else []
    depth = 0
    while level:
        depth += 1
        if depth > MAX_DEPTH:
            raise error(too_deep(source))
        below: list[Any] = []
        for value in level:
            children = list(value.values()) if type(value) is dict else value
            below.extend(compress(children, map(_IS_CONTAINER, map(type, children))))
        level = below


def _parse_yaml(text: str, source: str, error: type[InputError]) -> object:
    loader = _YAML_LOADER(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if "&" in text:  # no anchor, no alias: a tree, checked once built
            _check_nodes(node, source, error)
            return loader.construct_document(node)
        data = loader.construct_document(node)
        check_depth(data, source, error)
        return data
    except InputError:
        raise
    except RecursionError:
        raise error(too_deep(source)) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise error(f"{source}: not valid YAML or JSON: {short(problem, 80)}{at}") from None
    except ValueError as e:
        # PyYAML converts numbers with int(), which refuses more than 4300 digits,
        # and timestamps with datetime(), which refuses a 13th month.
        text = str(e)
        if "integer string conversion" in text:
            text = "a number of more than 4300 digits"
        raise error(f"{source}: not valid YAML or JSON: {short(text, 80)}") from None
    finally:
        loader.dispose()


def _check_nodes(root: yaml.Node, source: str, error: type[InputError]) -> None:
    """Bound the composed YAML graph before anything is built from it.

    An alias is the anchored node itself, met again; the graph is a DAG (or has a
    cycle, for an alias inside its own anchor). Sizes are counted once per distinct
    node, so the check is linear in the document, however much the aliases expand.
    """
    size: dict[int, int] = {}  # node id -> values it stands for, expanded
    height: dict[int, int] = {}  # node id -> levels it nests, itself included
    open_: set[int] = set()  # the nodes on the current path, children being counted
    distinct = 0
    stack: list[tuple[yaml.Node, int, bool]] = [(root, 1, False)]
    while stack:
        node, depth, children_done = stack.pop()
        key = id(node)
        if children_done:
            open_.discard(key)
            children = _children(node)
            size[key] = 1 + sum(size[id(c)] for c in children)
            height[key] = 1 + max(height[id(c)] for c in children)
            continue
        if key in size:
            # an alias: what it stands for nests as deep below here as below its anchor
            if depth + height[key] - 1 > MAX_DEPTH:
                raise error(too_deep(source))
            continue
        if key in open_:
            raise error(f"{source}: not valid YAML or JSON: an alias refers to its own anchor")
        if depth > MAX_DEPTH:
            raise error(too_deep(source))
        distinct += 1
        children = _children(node)
        if not children:
            size[key] = height[key] = 1
            continue
        open_.add(key)
        stack.append((node, depth, True))
        stack.extend((c, depth + 1, False) for c in children)
    if size[id(root)] - distinct > MAX_ALIAS_EXPANSION:
        raise error(
            f"{source}: YAML aliases repeat more than {MAX_ALIAS_EXPANSION} values;"
            " write the values out"
        )


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []

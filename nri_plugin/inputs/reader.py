"""Reading an input file one way: YAML or JSON, bounded, with one shape of error message."""

from __future__ import annotations

import difflib
import json
from collections.abc import Mapping
from pathlib import Path

import yaml

from nri_plugin.errors import InputError, TopologyError
from nri_plugin.quantity import short

# libyaml's loader is several times faster where PyYAML was built with it.
_YAML_LOADER: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _q(text: str) -> str:
    """``text`` quoted on one line (control characters escaped)."""
    return json.dumps(text, ensure_ascii=False)


def _type_name(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return f"the number {value}"
    if isinstance(value, str):
        return f"the string {_q(value)}"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


def check_keys(
    data: Mapping[object, object],
    known: tuple[str, ...],
    where: str,
    error: type[InputError] = TopologyError,
) -> None:
    """Refuse keys outside ``known``, suggesting the closest one (typos must not pass)."""
    for key in data:
        if key not in known:
            hint = difflib.get_close_matches(str(key), known, n=1)
            did_you_mean = f"; did you mean {_q(hint[0])}?" if hint else ""
            raise error(
                f"{where}: unknown key {_q(str(key))} (known: {', '.join(known)}){did_you_mean}"
            )


def read_document(path: str | Path, error: type[InputError]) -> object:
    """The parsed content of a YAML or JSON file; ``error`` names the path when it cannot."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error(f"{p}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise error(f"{p}: cannot read: {reason}") from None
    if text.lstrip().startswith(("{", "[")):
        # JSON is valid YAML, but the json module reads large files far faster.
        try:
            return json.loads(text)
        except ValueError:
            pass
        except RecursionError:
            raise error(f"{p}: not valid YAML or JSON: nested too deeply") from None
    try:
        return yaml.load(text, Loader=_YAML_LOADER)
    except ValueError as e:
        # PyYAML converts numbers with int(), which refuses more than 4300 digits,
        # and timestamps with datetime(), which refuses a 13th month.
        raise error(f"{p}: not valid YAML or JSON: {short(str(e), 80)}") from None
    except RecursionError:
        raise error(f"{p}: not valid YAML or JSON: nested too deeply") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise error(f"{p}: not valid YAML or JSON: {problem}{at}") from None

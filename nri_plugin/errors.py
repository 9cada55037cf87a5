"""Error types for bad input.

Every error that a user can cause with a file, a flag or a wire message is an
``InputError``: its message is one line that names the offending value and the
rule it broke. The CLI prints that line and exits with status 2.
"""

from __future__ import annotations

import json


class InputError(ValueError):
    """Bad input from a user-supplied source (config, topology, scenario, state)."""


class QuantityError(InputError):
    """A Kubernetes quantity that cannot be parsed or is out of range."""


class TopologyError(InputError):
    """A fake-topology file or sysfs tree that does not describe a valid machine."""


class ConfigError(InputError):
    """A configuration value that kubelet would refuse."""


class StateError(InputError):
    """A checkpoint that cannot be trusted or does not match the machine."""


class ScenarioError(InputError):
    """A simulate scenario that is malformed."""


# How a bad value appears in a message. These live here, below every layer, because
# the pure engine and the quantity parser quote values too; describing a whole parsed
# value is nri_plugin.inputs.reader.describe.

QUOTE_LIMIT = 60


def short(text: str, limit: int = 40) -> str:
    """``text`` cut to ``limit`` characters for an error message."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def quote(text: str, limit: int = QUOTE_LIMIT) -> str:
    """``text`` double-quoted on one line (control characters escaped), cut to ``limit``."""
    # Cut first: escaping a megabyte to throw most of it away is wasted work.
    return json.dumps(short(text, limit), ensure_ascii=False)

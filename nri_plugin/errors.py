"""Error types for bad input.

Every error that a user can cause with a file, a flag or a wire message is an
``InputError``: its message is one line that names the offending value and the
rule it broke. The CLI prints that line and exits with status 2.
"""

from __future__ import annotations


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

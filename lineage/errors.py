"""Errors raised by lineage-guard, and the CLI exit codes they map to.

Bad *records* are never exceptions: they travel as `Violation`s to quarantine. Exceptions are
for unusable input, bad configuration and unreachable services::

    LineageGuardError
    ├── UnusableInputError        exit 2: a file that cannot be read or decoded, a bad argument
    │   └── SchemaError           a schema that cannot be found or parsed
    ├── ConfigError               exit 3: a configuration that cannot work
    │   └── RowRefusedError       a hop row the lineage store refuses for what it holds
    ├── ServiceUnavailableError   exit 4: Kafka or the lineage database cannot be reached
    └── CorruptLineageError       exit 1: a stored lineage event is no valid event (it was edited)
"""

from __future__ import annotations

import re
from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    VIOLATIONS = 1
    UNUSABLE_INPUT = 2
    CONFIG = 3
    SERVICE_UNAVAILABLE = 4


class LineageGuardError(Exception):
    """Root of lineage-guard's errors; the message is one line for the user."""

    exit_code: ExitCode = ExitCode.UNUSABLE_INPUT

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __reduce__(self) -> tuple[type, tuple[str]]:
        # Errors cross Beam workers, so they must pickle with their message.
        return (type(self), (self.message,))


class UnusableInputError(LineageGuardError):
    exit_code = ExitCode.UNUSABLE_INPUT


class SchemaError(UnusableInputError):
    pass


class ConfigError(LineageGuardError):
    exit_code = ExitCode.CONFIG


class RowRefusedError(ConfigError):
    """The lineage store refused a batch's rows for what they hold (a value it cannot take),
    not for an outage: waiting would not help. The recorder quarantines the records whose
    rows it refuses (`recorder.LineageRecorder`); raised past it, the run ends (exit 3)."""


class ServiceUnavailableError(LineageGuardError):
    exit_code = ExitCode.SERVICE_UNAVAILABLE


class CorruptLineageError(LineageGuardError):
    """A stored lineage event cannot be read back: the store was altered outside lineage-guard.

    Same exit code as a broken chain in `lineage verify`: the evidence shows tampering.
    """

    exit_code = ExitCode.VIOLATIONS


_RELAYED = re.compile(
    r"\b(UnusableInputError|SchemaError|ConfigError|RowRefusedError|ServiceUnavailableError"
    r"|CorruptLineageError)"
    r": ([^\n]+)"
)
_BEAM_SUFFIX = re.compile(r"( \[while running '[^']*'\])+$")


def relayed_error(text: str) -> LineageGuardError | None:
    """Our error, from a worker in another process, as the runner relays it: as text (the
    worker's traceback). The last one named in `text`, or None."""
    found = _RELAYED.findall(text)
    if not found:
        return None
    name, message = found[-1]
    kinds: dict[str, type[LineageGuardError]] = {
        "UnusableInputError": UnusableInputError,
        "SchemaError": SchemaError,
        "ConfigError": ConfigError,
        "RowRefusedError": RowRefusedError,
        "ServiceUnavailableError": ServiceUnavailableError,
        "CorruptLineageError": CorruptLineageError,
    }
    return kinds[name](strip_step_names(message.strip()))


def strip_step_names(message: str) -> str:
    """The message without the `[while running 'Step']` Beam appends as it passes it on."""
    return _BEAM_SUFFIX.sub("", message)

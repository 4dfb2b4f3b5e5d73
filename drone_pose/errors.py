"""The errors a person can act on: wrong input they gave (a file, a key, a value).

`drone-pose` prints a UserError as one line on stderr, `drone-pose: error: MESSAGE`, and exits 2;
any other exception is a bug and keeps its traceback. The message names the offending thing and
says what to do. The layers' own error classes (CheckpointError, DroneModelError, ConfigError,
DatasetFormatError, ...) derive from it; it is a ValueError so callers that catch ValueError still do.
"""

from __future__ import annotations


class UserError(ValueError):
    """Wrong input from the user; the message names it (file, key or value) and what to do."""


class OutputPathError(UserError):
    """An output path that cannot take a file (a directory, a device, a pipe)."""

"""The error types of bad user input; each message names the file, line, field or key and what was expected."""

from __future__ import annotations


class ConfigError(ValueError):
    """A bad configuration; the message names the file and the offending key (every problem found, one per line)."""


class DataError(ValueError):
    """Bad input data; the message names the file, line and field."""

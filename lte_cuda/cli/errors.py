"""The errors every ``lte-sr`` subcommand raises for the user, and the program name."""

from __future__ import annotations

PROG = "lte-sr"


class CLIError(Exception):
    """A user-facing error: printed as one line, exit status 1."""


class UsageError(CLIError):
    """A malformed command line: printed as one line, exit status 2."""

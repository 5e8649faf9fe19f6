"""User-facing input errors.

Anything a user can get wrong (a missing or corrupt file, a wrong shape, an unknown config key, NaNs in
data, an empty mask where one is required) raises `InputError` with a one-line message naming the file or
key. The command-line entry points catch it, print `error: <message>` on stderr and exit with status 2
without a traceback, before anything in the work directory is written.
"""
from __future__ import annotations

import contextlib
import sys


class InputError(Exception):
    """Bad user input; the message is one line and names the offending file or config key."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


class DataCheckError(InputError):
    """Bad files found by the data check (`jaxdiff.data.check`): a summary line, then one line per problem."""

    def __init__(self, summary: str, problems):
        self.problems = [" ".join(str(p).split()) for p in problems]
        Exception.__init__(self, "\n".join([" ".join(str(summary).split())] + [f"  {p}" for p in self.problems]))


@contextlib.contextmanager
def cli_errors():
    """Turn `InputError` (and config-flag errors) into `error: ...` on stderr and exit status 2."""
    try:
        yield
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None

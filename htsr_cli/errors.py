"""The one error type for a user's mistake.

Anything raised as `HtsrError` reaches the user as one line on stderr and exit
code 2 (see `htsr_cli.cli._errors`). Everything else is a bug and keeps its
traceback.
"""


class HtsrError(Exception):
    """A user-facing problem: bad input, bad option, missing file."""

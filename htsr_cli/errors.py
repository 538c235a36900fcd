"""The one error type for a user's mistake.

Anything raised as `HtsrError` reaches the user as one line on stderr and exit
code 2 (see `htsr_cli.cli._errors`). Everything else is a bug and keeps its
traceback.
"""


class HtsrError(Exception):
    """A user-facing problem: bad input, bad option, missing file."""

    exit_code = 2  # another rank's failure under torchrun may carry 1 (see htsr_cli.engine.distributed)


def brief(error: BaseException) -> str:
    """A library error in a few words for a one-line message: its type and first sentence."""
    text = " ".join(str(error).split()).split(". ")[0][:160]
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


class InvalidSetting(HtsrError, ValueError):
    """A setting out of range, named by its Python parameter (`device='cuda': ...`).

    The command line shows the same error under the option's flag instead
    (`--device cuda: ...`; see `htsr_cli.cli._options.as_flag`), so one message
    serves both.
    """

    def __init__(self, parameter: str, value: object, problem: str):
        self.parameter, self.value, self.problem = parameter, value, problem
        super().__init__(f"{parameter}={value!r}: {problem}")

"""`htsr-gate-hook`: `htsr gate` once per file, the entry point of the pre-commit hook.

pre-commit runs `entry ARGS... FILES...`: the hook's `args:` first, then the
changed files. The arguments are split with `htsr gate`'s own options (an
option that takes a value keeps the word after it: `--baseline baseline.json`
is an option, not a file), every file is gated on its own with those options,
and the hook exits with the worst exit code (1 a rule violated, 2 an input
error). `--` ends the options: every word after it is a file.
"""

from __future__ import annotations

import subprocess
import sys
from typing import Any

from htsr_cli.errors import HtsrError

USAGE = "usage: htsr-gate-hook [htsr gate OPTIONS] FILE..."


def gate_command() -> Any:
    """`htsr gate` as the command-line parser sees it (typer's click command)."""
    import typer

    from htsr_cli.cli.app import app

    return typer.main.get_command(app).commands["gate"]


def options_taking_values(command: Any) -> set[str]:
    """The option names of `command` that read the next word as their value (`--baseline`, `-o`)."""
    return {
        name
        for parameter in command.params
        if parameter.param_type_name == "option" and not parameter.is_flag and not parameter.count
        for name in (*parameter.opts, *parameter.secondary_opts)
    }


def split_arguments(arguments: list[str], valued: set[str]) -> tuple[list[str], list[str]]:
    """(options with their values, file names) from pre-commit's `ARGS... FILES...`."""
    options: list[str] = []
    files: list[str] = []
    words = iter(arguments)
    for word in words:
        if word == "--":
            files.extend(words)
        elif word.startswith("-") and word != "-":
            options.append(word)
            if word in valued:  # `--baseline X`; `--baseline=X` is one word
                value = next(words, None)
                if value is None:
                    raise HtsrError(f"{word} needs a value")
                options.append(value)
        else:
            files.append(word)
    return options, files


def main(arguments: list[str] | None = None) -> int:
    arguments = sys.argv[1:] if arguments is None else arguments
    try:
        options, files = split_arguments(arguments, options_taking_values(gate_command()))
    except HtsrError as error:
        print(f"htsr-gate-hook: error: {error}\n{USAGE}", file=sys.stderr)
        return 2
    if not files:
        print(f"htsr-gate-hook: error: no file to gate\n{USAGE}", file=sys.stderr)
        return 2
    worst = 0
    for name in files:
        # A process per file: each verdict and exit code stands alone, as `htsr gate` gives it.
        # `--` keeps a file named like an option (`-model.pth`) a file.
        try:
            code = subprocess.run([sys.executable, "-m", "htsr_cli", "gate", *options, "--", name], check=False).returncode
        except KeyboardInterrupt:  # the child got Ctrl-C too and said so
            return 130
        worst = max(worst, code)
    return worst


def run() -> None:
    """The console script."""
    sys.exit(main())

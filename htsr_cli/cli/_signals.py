"""How the `htsr` process meets signals: Ctrl-C and termination at any moment, start-up included.

Installed first thing by the console script, before typer, rich or torch are
imported (standard library only here):

- SIGINT raises KeyboardInterrupt, SIGTERM and SIGHUP raise `Terminated`, and
  each is remembered, so an interrupt that some library turns into another
  exception or swallows still ends the run with 130 (143, 129).
- SIGXFSZ is ignored, so a file-size limit (`ulimit -f`) makes the write fail
  with EFBIG, which is reported, instead of killing the process.
- Closed standard streams are reopened on /dev/null, so no file htsr opens
  later can take descriptor 1 and receive what was meant for stdout (Python
  leaves `sys.stdout` None, and writing results there is reported as an error).
"""

from __future__ import annotations

import os
import signal
import sys

_received: list[int] = []  # signal numbers, in arrival order


class Terminated(BaseException):
    """The process was asked to stop (SIGTERM, SIGHUP); unwinds like KeyboardInterrupt."""


def _interrupt(signum: int, frame: object) -> None:
    _received.append(signum)
    raise KeyboardInterrupt


def _terminate(signum: int, frame: object) -> None:
    _received.append(signum)
    raise Terminated


def install() -> None:
    """Set the handlers and guard the standard streams (call once, from the console script)."""
    signal.signal(signal.SIGINT, _interrupt)
    for name in ("SIGTERM", "SIGHUP"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), _terminate)
    sys.unraisablehook = _quiet_stops(sys.unraisablehook)
    if hasattr(signal, "SIGXFSZ"):
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            devnull = os.open(os.devnull, os.O_RDWR)
            if devnull != fd:
                os.dup2(devnull, fd)
                os.close(devnull)
    for stream in (sys.stdout, sys.stderr):
        # A name that cannot be encoded for this terminal's locale is written as
        # an escape instead of failing the whole output.
        if stream is not None and hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")


def _quiet_stops(default):
    """An unraisable-exception hook that stays silent for our stop exceptions.

    A signal that lands in a finalizer or weakref callback raises there, and
    Python prints "Exception ignored ... KeyboardInterrupt" with a traceback;
    the signal is already recorded, and the run ends with its code anyway.
    """

    def hook(unraisable) -> None:
        if isinstance(unraisable.exc_value, (KeyboardInterrupt, Terminated)):
            return
        default(unraisable)

    return hook


def stopping_signal() -> int | None:
    """The first stop signal received (even if its exception was swallowed), or None."""
    return _received[0] if _received else None


def raise_if_stopped() -> None:
    """Re-raise a stop whose exception some library swallowed (an import, a finalizer).

    Called where the run would otherwise go on to real work or write results.
    """
    if _received:
        raise KeyboardInterrupt if _received[0] == signal.SIGINT else Terminated


def exit_code(signum: int) -> int:
    """What a shell reports for a process ended by `signum`: 128 + its number."""
    return 128 + signum


_announced: list[int] = []


def announce(signum: int) -> int:
    """Say `htsr: interrupted` (or `terminated`) on stderr, once per run; returns the exit code."""
    if not _announced:
        _announced.append(signum)
        try:
            sys.stderr.write(f"htsr: {'interrupted' if signum == signal.SIGINT else 'terminated'}\n")
            sys.stderr.flush()
        except (OSError, ValueError, AttributeError):
            pass
    return exit_code(signum)


def ignore_further() -> None:
    """No second Ctrl-C while the process is already on its way out."""
    for name in ("SIGINT", "SIGTERM", "SIGHUP"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), signal.SIG_IGN)

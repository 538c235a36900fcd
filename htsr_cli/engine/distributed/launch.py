"""Who this process is among the ranks: what torchrun says in the environment.

torchrun starts one process (rank) per slot and tells each who it is through
RANK, WORLD_SIZE and LOCAL_RANK; HTSR_DIST_TIMEOUT bounds every wait on a peer.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass

from htsr_cli.errors import HtsrError

TIMEOUT_ENV = "HTSR_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Launch:
    """Who this process is among the ranks that torchrun started."""

    rank: int
    world_size: int
    local_rank: int
    timeout: float  # seconds a rank waits for a silent peer, or for one collective

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Launch | None:
        """The launch torchrun describes in the environment; None without one or with a single rank."""
        if "WORLD_SIZE" not in environ:
            return None

        def number(name: str) -> int:
            try:
                return int(environ[name])
            except (KeyError, ValueError):
                raise HtsrError(
                    f"{name}={environ.get(name)!r}: torchrun sets RANK, WORLD_SIZE and LOCAL_RANK to integers; "
                    "start htsr with torchrun or unset WORLD_SIZE"
                ) from None

        world_size = number("WORLD_SIZE")
        if world_size <= 1:
            return None
        rank, local_rank = number("RANK"), number("LOCAL_RANK")
        if not 0 <= rank < world_size or local_rank < 0:
            raise HtsrError(f"RANK={rank}, LOCAL_RANK={local_rank}: out of range for WORLD_SIZE={world_size}")
        text = environ.get(TIMEOUT_ENV, str(DEFAULT_TIMEOUT_S))
        try:
            timeout = float(text)
        except ValueError:
            timeout = math.nan
        if not timeout > 0:
            raise HtsrError(f"{TIMEOUT_ENV}={text!r}: expected a positive number of seconds")
        return cls(rank, world_size, local_rank, timeout)

"""A torchrun entry for tests/engine/test_distributed.py: `htsr` with optional instrumentation.

    torchrun --standalone --nproc-per-node 2 tests/engine/rank_probe.py analyze CHECKPOINT ...

PROBE_RECORD=DIR   each rank writes DIR/rank<RANK>.json: the shard files it opened
                   (in order) and the tensors it loaded.
PROBE_OOM_RANK=K   rank K runs out of memory when it loads its first tensor.
PROBE_KILL_RANK=K  rank K is killed (SIGKILL) when it loads its first tensor.
"""

import atexit
import json
import os
import signal
from pathlib import Path

import torch

from htsr_cli.checkpoints import sharded

rank = os.environ["RANK"]
opened: list[str] = []
loaded: list[str] = []
real_open_file = sharded.open_file
real_load = sharded.ShardedCheckpoint.load


def recording_open_file(path: Path):
    opened.append(path.name)
    return real_open_file(path)


def probed_load(self, key: str) -> torch.Tensor:
    if os.environ.get("PROBE_OOM_RANK") == rank:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (probe)")
    if os.environ.get("PROBE_KILL_RANK") == rank:
        os.kill(os.getpid(), signal.SIGKILL)
    loaded.append(key)
    return real_load(self, key)


def dump() -> None:
    record = Path(os.environ["PROBE_RECORD"]) / f"rank{rank}.json"
    record.write_text(json.dumps({"opened": opened, "loaded": loaded}))


sharded.open_file = recording_open_file
sharded.ShardedCheckpoint.load = probed_load
if os.environ.get("PROBE_RECORD"):
    atexit.register(dump)

from htsr_cli.cli import main  # noqa: E402  (after the patches)

main()

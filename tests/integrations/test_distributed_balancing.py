"""Under torch.distributed (2 gloo processes on the CPU) rank 0 alone analyses, every rank gets its factors."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from htsr_cli.errors import HtsrError


def mlp(seed: int) -> torch.nn.Sequential:
    torch.manual_seed(seed)
    return torch.nn.Sequential(*(torch.nn.Linear(64, 64) for _ in range(5)))


def one_rank(rank: int, port: int, out: str) -> None:
    # torchrun's environment: analyze() would go collective if the callback did not ask it not to
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    from htsr_cli.integrations import _balancing

    analyses = []
    analyze = _balancing.analyze

    def counted(*args, **kwargs):
        analyses.append(kwargs.get("collective"))
        return analyze(*args, **kwargs)

    _balancing.analyze = counted
    # different weights per rank: equal factors can only come from rank 0's broadcast
    balance = _balancing.LiveTempBalance(mlp(seed=rank), _balancing.BalanceSettings())

    def failing() -> dict:
        raise HtsrError("out of memory on rank 0")

    try:
        _balancing.computed_on_rank_zero(failing)
        error = None
    except HtsrError as raised:
        error = str(raised)
    Path(out, f"{rank}.json").write_text(json.dumps({"analyses": analyses, "factors": balance.factors, "error": error}))
    dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_rank_zero_analyses_alone_and_broadcasts_its_factors_and_its_errors(tmp_path):
    mp.spawn(one_rank, args=(free_port(), str(tmp_path)), nprocs=2, join=True)
    rank0, rank1 = (json.loads((tmp_path / f"{rank}.json").read_text()) for rank in (0, 1))
    assert rank0["analyses"] == [False] and rank1["analyses"] == []
    assert rank1["factors"] == rank0["factors"]
    assert len(set(rank0["factors"].values())) == 4  # 3 inner layers spread over [0.5, 1.5], first/last at 1
    expected = _balancing_factors_here(mlp(seed=0))
    assert rank0["factors"] == expected
    assert rank0["error"] == "out of memory on rank 0"
    assert rank1["error"] == "rank 0 failed to analyse the weights: out of memory on rank 0"


def _balancing_factors_here(model: torch.nn.Module) -> dict[str, float]:
    from htsr_cli.integrations._balancing import BalanceSettings, LiveTempBalance

    return LiveTempBalance(model, BalanceSettings()).factors

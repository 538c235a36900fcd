"""One analysis, several processes: torch.distributed under torchrun.

    torchrun --nproc-per-node 8 -m htsr_cli analyze ./llama-70b -f json -o report.json

torchrun starts one process (rank) per slot and tells each who it is through
RANK, WORLD_SIZE and LOCAL_RANK. `analyze()` then becomes collective: every rank
plans the same matrices, takes its share (partitioned by estimated flops,
longest first, so the ranks finish together: `engine.scheduling.partition`),
solves it on cuda:LOCAL_RANK (or the CPU), and rank 0 gathers the results into
the one report.

Two channels connect the ranks:

- the rendezvous store (torchrun's TCPStore) carries the small messages that
  must never block: the first error of any rank, the layer count behind rank
  0's progress bar, heartbeats, barriers, and the command line's jobs. Every
  wait on it polls, so a rank that failed or went silent is noticed within
  about a second (or after HTSR_DIST_TIMEOUT of silence).
- the process group (gloo on the CPU; `cpu:gloo,cuda:nccl` when the solver is
  on CUDA) carries the results: per-layer results as objects, spectra as
  float64 tensors in bounded chunks. A collective starts only after a store
  barrier has seen every rank arrive, so it is short and bounded by the
  group's timeout (HTSR_DIST_TIMEOUT).

launch.py      who this process is: torchrun's environment (`Launch`)
cluster.py     this process among the ranks: the store, the process group, rank 0's jobs (`Cluster`)
jobs.py        an analysis as the JSON message rank 0 posts for the others
liveness.py    heartbeats, silent or failed ranks (`RankFailed`), exit codes
collective.py  one collective analysis: shares, barriers, the shared error, gathers (`Run`)
"""

from htsr_cli.engine.distributed.cluster import Cluster, current, join
from htsr_cli.engine.distributed.collective import Run
from htsr_cli.engine.distributed.jobs import analysis_job, job_source, settings_from_json
from htsr_cli.engine.distributed.launch import DEFAULT_TIMEOUT_S, Launch
from htsr_cli.engine.distributed.liveness import FAILURE, USAGE_ERROR, RankFailed

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "FAILURE",
    "USAGE_ERROR",
    "Cluster",
    "Launch",
    "RankFailed",
    "Run",
    "analysis_job",
    "current",
    "join",
    "job_source",
    "settings_from_json",
]

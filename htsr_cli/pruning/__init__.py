"""Pruning a checkpoint: per-matrix sparsities, then the weights to zero, then the same layout written again.

    from htsr_cli.pruning import PruneSettings, prune_checkpoint
    record = prune_checkpoint("./llama", "./llama-pruned", PruneSettings(target=0.7))
    print(record["summary"]["achieved"])

allocation.py  how much of each matrix (uniform, AlphaPruning, OWL, a saved plan), exact counts
masks.py       which weights (magnitude, Wanda, OWL's outlier ratio): pure tensor functions
calibration.py input activations, one transformers block at a time
layout.py      the output directory, written atomically in the input's layout
prune.py       the pipeline and the `htsr.prune/1` record
"""

from htsr_cli.pruning.prune import SCHEMA, prune_checkpoint
from htsr_cli.pruning.settings import CalibrationSettings, OwlSettings, PruneSettings

__all__ = ["SCHEMA", "CalibrationSettings", "OwlSettings", "PruneSettings", "prune_checkpoint"]

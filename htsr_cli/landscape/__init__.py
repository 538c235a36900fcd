"""Loss-landscape metrics of a model on data: what htsr measures beyond the weights.

From Python, any `nn.Module`, a loss function `(outputs, targets) -> batch mean` (cross-entropy
unless given) and a re-iterable of `(inputs, targets)` batches (a list, a DataLoader):

    from htsr_cli import landscape
    hessian = landscape.HessianOperator(model, torch.nn.functional.cross_entropy, loader)
    landscape.top_eigenvalues(hessian, landscape.HessianSettings(top_k=3)).values
    landscape.trace(hessian, landscape.HessianSettings(tolerance=1e-2)).trace
    landscape.connect(model_a, model_b, loader).bezier.mode_connectivity_peak
    landscape.model_cka(model_a, model_b, loader)
    landscape.adaptive_sharpness(model, loader, settings=landscape.SharpnessSettings(rho=0.5)).sharpness
    landscape.ensemble_diversity([model_a, model_b, model_c], loader).disagreement

Definitions, stopping rules and sources: docs/algorithms.md, "Loss-landscape metrics".
"""

from htsr_cli.landscape.connectivity import Connectivity, ConnectivitySettings, PathProfile, connect
from htsr_cli.landscape.hessian import Density, Eigenpairs, HessianOperator, HessianSettings, TraceEstimate, density, top_eigenvalues, trace
from htsr_cli.landscape.measure import LandscapeSettings, Subject, measure
from htsr_cli.landscape.objective import CLASSIFICATION, NEXT_TOKEN, Batches, Objective
from htsr_cli.landscape.sharpness import Diversity, Sharpness, SharpnessSettings, adaptive_sharpness, ensemble_diversity
from htsr_cli.landscape.similarity import MinibatchCKA, SimilaritySettings, cka, model_cka, unbiased_cka

__all__ = [
    "CLASSIFICATION", "NEXT_TOKEN", "Batches", "Objective",
    "HessianOperator", "HessianSettings", "Eigenpairs", "TraceEstimate", "Density", "top_eigenvalues", "trace", "density",
    "ConnectivitySettings", "Connectivity", "PathProfile", "connect",
    "SimilaritySettings", "MinibatchCKA", "cka", "unbiased_cka", "model_cka",
    "SharpnessSettings", "Sharpness", "Diversity", "adaptive_sharpness", "ensemble_diversity",
    "LandscapeSettings", "Subject", "measure",
]

"""Eigenvalues of W^T W: the only module that knows about devices and precision.

The spectrum of a rows x cols slice is computed from the Gram matrix of its
short side (W^T W when rows >= cols, else W W^T) with a batched symmetric
eigensolver. There is no 1/N normalisation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from htsr_cli.errors import HtsrError

# Bytes of Gram matrices per batched eigvalsh call; bounds memory for large stacks.
GRAM_BUDGET_BYTES = 256 << 20


_COPY_STREAMS: dict[torch.device, "torch.cuda.Stream"] = {}


def _copy_stream(device: torch.device) -> "torch.cuda.Stream":
    if device not in _COPY_STREAMS:
        _COPY_STREAMS[device] = torch.cuda.Stream(device)
    return _COPY_STREAMS[device]


def resolve_device(name: str) -> torch.device:
    """cpu, or cuda with its index (tensors report `cuda:0`, never bare `cuda`)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise HtsrError("--device cuda: no CUDA device is available (use --device cpu or auto)")
    return torch.device("cuda", torch.cuda.current_device())


@dataclass(frozen=True)
class Eigensolver:
    device: torch.device
    dtype: torch.dtype = torch.float64

    @classmethod
    def create(cls, device: str = "auto", precision: str = "float64") -> "Eigensolver":
        return cls(resolve_device(device), torch.float64 if precision == "float64" else torch.float32)

    def transfer(self, tensor: torch.Tensor) -> torch.Tensor:
        """Move a stored tensor to the solver's device, keeping its stored dtype.

        The loader thread calls this, so what waits in the prefetch queue is the
        narrow stored tensor (bf16 is a quarter of float64), and on CUDA the copy
        of the next matrix overlaps the current solve: it runs from pinned memory
        on a side stream. Upcasting happens on the device in `prepare`.
        """
        if self.device.type != "cuda" or tensor.device == self.device:
            return tensor.to(self.device)
        stream = _copy_stream(self.device)
        host = tensor if tensor.is_pinned() else tensor.pin_memory()
        with torch.cuda.stream(stream):
            moved = host.to(self.device, non_blocking=True)
        # The solve runs on the default stream: keep the allocator from reusing
        # this block for the next copy while that solve may still read it.
        moved.record_stream(torch.cuda.default_stream(self.device))
        stream.synchronize()  # blocks only the loader thread; `host` may be freed after
        return moved

    def prepare(self, tensor: torch.Tensor) -> torch.Tensor:
        """The tensor on the solver's device in the solver's precision (one copy at most)."""
        return tensor.to(device=self.device, dtype=self.dtype)

    def synchronize(self) -> None:
        """Wait for queued device work (only for timing: results never need it)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def gram_eigenvalues(self, slices: torch.Tensor) -> torch.Tensor:
        """Eigenvalues of each slice's short-side Gram matrix.

        slices: [B, rows, cols] -> [B, min(rows, cols)], ascending, clamped at 0.
        """
        slices = self.prepare(slices)
        batch, rows, cols = slices.shape
        side = min(rows, cols)
        per_gram = side * side * slices.element_size()
        chunk = max(1, GRAM_BUDGET_BYTES // max(per_gram, 1))
        parts = []
        for lo in range(0, batch, chunk):
            part = slices[lo : lo + chunk]
            gram = part.mT @ part if rows >= cols else part @ part.mT  # [b, side, side]
            parts.append(torch.linalg.eigvalsh(gram))
            del gram
        values = parts[0] if len(parts) == 1 else torch.cat(parts)
        return values.clamp_min_(0.0)

    def pooled_eigenvalues(self, slices: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        """All slices' eigenvalues pooled into one sorted 1-D ESD (times `scale`)."""
        values = self.gram_eigenvalues(slices).flatten()
        if scale != 1.0:
            values = values * scale
        return torch.sort(values).values

"""Eigenvalues of W^T W: the only module that knows about devices and precision.

The spectrum of a rows x cols slice is computed from the Gram matrix of its
short side (W^T W when rows >= cols, else W W^T) with a batched symmetric
eigensolver. There is no 1/N normalisation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from htsr_cli.errors import InvalidSetting

# Bytes of Gram matrices per batched eigvalsh call; bounds memory for large stacks.
GRAM_BUDGET_BYTES = 256 << 20
# Bytes of one upcast block of a matrix's long side while its Gram is accumulated.
UPCAST_BLOCK_BYTES = 64 << 20


def _bytes(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


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
        raise InvalidSetting("device", "cuda", "no CUDA device is available (use cpu or auto)")
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
        on a side stream. Upcasting happens on the device, block by block, in `gram`.
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

    def gram(self, slices: torch.Tensor) -> torch.Tensor:
        """Short-side Gram matrices in the solver's precision: [B, rows, cols] -> [B, side, side].

        The long side is consumed in blocks of at most UPCAST_BLOCK_BYTES, each
        upcast on its own, so a 32000 x 2048 bf16 embedding never exists as a
        524 MB float64 copy: memory is the Gram plus one block.
        """
        slices = self.transfer(slices)
        if slices.shape[1] < slices.shape[2]:
            slices = slices.mT  # the Gram of the short side: rows become the long side
        batch, long_side, side = slices.shape
        gram = torch.zeros(batch, side, side, dtype=self.dtype, device=self.device)
        step = max(1, UPCAST_BLOCK_BYTES // (batch * side * _bytes(self.dtype)))
        for lo in range(0, long_side, step):
            block = slices[:, lo : lo + step].to(self.dtype)  # [B, step, side]
            gram.baddbmm_(block.mT, block)
        return gram

    def gram_eigenvalues(self, slices: torch.Tensor) -> torch.Tensor:
        """Eigenvalues of each slice's short-side Gram matrix.

        slices: [B, rows, cols], any float dtype -> [B, min(rows, cols)], ascending, clamped at 0.
        """
        batch, rows, cols = slices.shape
        side = min(rows, cols)
        chunk = max(1, GRAM_BUDGET_BYTES // (side * side * _bytes(self.dtype)))
        parts = [torch.linalg.eigvalsh(self.gram(slices[lo : lo + chunk])) for lo in range(0, batch, chunk)]
        values = parts[0] if len(parts) == 1 else torch.cat(parts)
        return values.clamp_min_(0.0)

    def all_finite(self, slices: torch.Tensor) -> bool:
        """No NaN or Inf, checked in blocks so no full-size temporary is made."""
        flat = slices.reshape(-1) if slices.is_contiguous() else slices.flatten()
        blocks = flat.split(UPCAST_BLOCK_BYTES // 8)
        return bool(torch.stack([torch.isfinite(block).all() for block in blocks]).all())  # one sync

    def pooled_eigenvalues(self, slices: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        """All slices' eigenvalues pooled into one sorted 1-D ESD (times `scale`)."""
        values = self.gram_eigenvalues(slices).flatten()
        if scale != 1.0:
            values = values * scale
        return torch.sort(values).values

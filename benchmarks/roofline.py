"""The roofline: how long a checkpoint's Grams and eigensolves take at this machine's measured throughput.

    from roofline import measure_throughput, roofline
    rates = measure_throughput("cpu")           # GEMM and eigvalsh GFLOP/s, measured now
    roofline({"w": (4096, 11008)}, rates)       # {"gram_gflop": ..., "eig_gflop": ..., "seconds": ...}
    farms_roofline({"w": (4096, 11008)}, rates) # the FARMS windows' eigensolves alone

Work counted per matrix slice of rows x cols (short side n, long side m), as
htsr's default arithmetic does it: the lower triangle of the short-side Gram,
m * n^2 multiply-adds' worth of flops (m n^2; the full product would be 2 m n^2),
at the float32 GEMM rate, and the symmetric eigensolver's reduction to
tridiagonal form, 4/3 n^3 flops, at the float64 `eigvalsh` rate measured at the
nearest measured size (small eigensolves run far below the large-matrix rate).
Reading the weights, start-up and fits are not counted, so a tool's time over
the roofline's is the fraction of what the hardware allows that it reaches.
The float64 GEMM rate is measured too: `seconds_float64` is the same work
with float64 Grams (`--precision float64`), so seconds_float64 / seconds is the
most `--precision mixed` (float32 Grams, the same float64 eigensolves) can gain
over float64 on this hardware.
Both rates are measured in the same run as the timings they are compared with,
best of a few calls. On the CPU each is measured on one thread and multiplied
by the cores: independent Grams and eigensolves scale that way, and one call on
all threads of a shared, loaded machine measures the OpenMP scheduler more than
the hardware (2-thread eigvalsh ran 4x below 1-thread eigvalsh here under load).
"""

from __future__ import annotations

import math
import os
import time

import torch

from htsr_cli.settings import FarmsSettings
from htsr_cli.spectra.farms import conv_divisions, window_grid

GEMM_SIDE = 2048
# eigvalsh sizes measured, with how many matrices are solved per timed call.
EIGEN_SIZES = ((64, 32), (256, 4), (768, 1), (2048, 1))
CALLS = 3


def _best_seconds(work, device: torch.device, calls: int = CALLS) -> float:
    best = math.inf
    for _ in range(calls):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        started = time.perf_counter()
        work()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - started)
    return best


def measure_throughput(device_name: str) -> dict:
    """{"gemm_gflops": float32 matmul rate, "gemm64_gflops": float64's, "eigvalsh_gflops": {size: float64 eigvalsh rate}}."""
    device = torch.device(device_name)
    if device.type != "cpu":
        return _rates(device, 1)
    cores, threads = len(os.sched_getaffinity(0)), torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _rates(device, cores)
    finally:
        torch.set_num_threads(threads)


def _rates(device: torch.device, scale: int) -> dict:
    generator = torch.Generator().manual_seed(0)
    left = torch.randn(GEMM_SIDE, GEMM_SIDE, generator=generator).to(device)
    right = torch.randn(GEMM_SIDE, GEMM_SIDE, generator=generator).to(device)
    left @ right  # warm-up: thread pools, kernels
    gemm = scale * 2.0 * GEMM_SIDE**3 / _best_seconds(lambda: left @ right, device) / 1e9
    left64, right64 = left.double(), right.double()
    left64 @ right64
    gemm64 = scale * 2.0 * GEMM_SIDE**3 / _best_seconds(lambda: left64 @ right64, device) / 1e9
    eigen = {}
    for size, count in EIGEN_SIZES:
        samples = torch.randn(count, 2 * size, size, generator=generator, dtype=torch.float64).to(device)
        grams = samples.mT @ samples
        torch.linalg.eigvalsh(grams[:1])
        seconds = _best_seconds(lambda grams=grams: torch.linalg.eigvalsh(grams), device, 2 if size >= 2048 else CALLS)
        eigen[size] = scale * count * 4.0 / 3.0 * size**3 / seconds / 1e9
    return {"device": device.type, "gemm_gflops": gemm, "gemm64_gflops": gemm64, "eigvalsh_gflops": eigen, "one_thread_times": scale}


def _eigen_rate(rates: dict, side: int) -> float:
    """The eigvalsh rate measured at the size nearest `side` on a log scale."""
    measured = {int(size): rate for size, rate in rates["eigvalsh_gflops"].items()}
    nearest = min(measured, key=lambda size: abs(math.log(size / side)))
    return measured[nearest]


def roofline(shapes: dict[str, tuple[int, ...]], rates: dict) -> dict:
    """Gram and eigensolve GFLOP of every analysable weight, and their seconds at `rates`."""
    gram_gflop = eig_gflop = eig_seconds = 0.0
    for shape in shapes.values():
        slices = math.prod(shape[2:])
        short, long = min(shape[0], shape[1]), max(shape[0], shape[1])
        eig = slices * 4.0 / 3.0 * short**3 / 1e9
        gram_gflop += slices * long * short * short / 1e9
        eig_gflop += eig
        eig_seconds += eig / _eigen_rate(rates, short)  # the rate depends on the size: summed per shape
    seconds = gram_gflop / rates["gemm_gflops"] + eig_seconds
    record = {"gram_gflop": gram_gflop, "eig_gflop": eig_gflop, "seconds": seconds, "rates": rates}
    if "gemm64_gflops" in rates:
        record["seconds_float64"] = gram_gflop / rates["gemm64_gflops"] + eig_seconds
    return record


def farms_roofline(shapes: dict[str, tuple[int, ...]], rates: dict, settings: FarmsSettings = FarmsSettings()) -> dict:
    """The eigensolves of every FARMS window (htsr's window geometry) at the float64 `eigvalsh` rate.

    Only the eigensolves: the windows' Grams can share work (htsr forms one Gram
    per group of neighbouring windows) and are left out, so `seconds` is a lower
    bound on what FARMS adds to the plain analysis with this eigensolver, and a
    loop's time over `roofline(...)["seconds"] + seconds` bounds any speed-up over it.
    """
    windows = 0
    eig_gflop = seconds = 0.0
    for shape in shapes.values():
        if len(shape) > 2:
            blocks = conv_divisions(shape[0], shape[1], settings.q)
            count, side = blocks.count * math.prod(shape[2:]), min(blocks.height, blocks.width)
        else:
            grid = window_grid(shape[0], shape[1], settings)
            count, side = grid.count, min(grid.height, grid.width)
        eig = count * 4.0 / 3.0 * side**3 / 1e9
        windows += count
        eig_gflop += eig
        seconds += eig / _eigen_rate(rates, side)
    return {"windows": windows, "eig_gflop": eig_gflop, "seconds": seconds}

"""Hardware figures for throughput reports: a measured matmul peak (the MFU denominator).

MFU = achieved model FLOP/s / peak. A published peak is meaningless for a shared 2-core VM, so
the peak is measured: the best of a few large square matmuls in the training dtype.
"""
from __future__ import annotations

import time

import torch


def matmul_peak_flops(device: torch.device | str = "cpu", dtype: torch.dtype = torch.bfloat16,
                      n: int = 2048, seconds: float = 1.0) -> float:
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
    a @ b
    sync()
    best, deadline = float("inf"), time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        t = time.perf_counter()
        for _ in range(4):
            a @ b
        sync()
        best = min(best, (time.perf_counter() - t) / 4)
    return 2 * n**3 / best

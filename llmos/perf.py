"""Hardware facts for choosing dtypes and for reports: bf16 capability, a measured matmul peak, the machine.

    fast_bf16(device)            # does this device multiply bf16 in hardware (CUDA, AMX, AVX512-BF16)?
    compute_dtype(device, "auto", compiled=True)   # the dtype a job should compute in here
    matmul_peak_flops("cpu", torch.float32)        # the MFU denominator, measured
    machine()                    # {"cpu": ..., "flags": ..., "threads": ..., "capability": ...}

bf16 on a CPU without bf16 hardware is a trap: on an AVX2-only EPYC a 2048x2048 matmul runs at
~128 GFLOP/s in fp32 and ~0.3 GFLOP/s in bf16 (docs/log.md). Every path that may compute in bf16
(training, benches, inference of bf16 files) asks `fast_bf16` first. MFU = achieved model FLOP/s /
peak; a published peak is meaningless on a shared VM, so the peak is measured: square matmuls in
the compute dtype, growing from 256 while each takes under a tenth of a second (so a slow dtype
costs a fraction of a second, not minutes).
"""
from __future__ import annotations

import os
import platform
import time
from pathlib import Path

import torch

from llmos.common import LlmosError

BF16_FLAGS = ("amx_bf16", "avx512_bf16")


def fast_bf16(device: torch.device | str = "cpu") -> bool:
    """bf16 matmuls in hardware: CUDA with bf16 support, or a CPU with AMX or AVX512-BF16."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported()


def compute_dtype(device: torch.device | str, requested: str = "auto", compiled: bool = True) -> torch.dtype:
    """The dtype to train or run in. "auto": bf16 where the hardware multiplies it and (on CPU) the
    model is compiled, since eager bf16 on a CPU is no faster than fp32; else fp32. An explicit
    "bf16" is honoured, but on a CPU without bf16 hardware it is refused: it would run 100-400x slower."""
    if requested not in ("auto", "bf16", "fp32"):
        raise LlmosError(f"unknown --dtype {requested!r}: use auto, bf16 or fp32")
    device = torch.device(device)
    if requested == "fp32":
        return torch.float32
    if requested == "bf16":
        if not fast_bf16(device):
            raise LlmosError(f"--dtype bf16 on this {device.type} ({machine()['cpu']}) would compute bf16 in "
                             "software, 100-400x slower than fp32: it has no AMX or AVX512-BF16. Use --dtype "
                             "auto or fp32")
        return torch.bfloat16
    compiled_enough = compiled or device.type == "cuda"
    return torch.bfloat16 if fast_bf16(device) and compiled_enough else torch.float32


def matmul_peak_flops(device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                      seconds: float = 1.0, max_n: int | None = None) -> float:
    """FLOP/s of the best square matmul, growing n from 256 up to max_n (2048 on a CPU, 8192 on a GPU,
    where smaller ones leave it idle) while one takes under 0.1 s."""
    device = torch.device(device)
    max_n = max_n or (8192 if device.type == "cuda" else 2048)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    n = 256
    while True:
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        t = time.perf_counter()
        a @ b
        sync()
        once = time.perf_counter() - t
        if n >= max_n or once > 0.1:
            break
        n *= 2
    best, deadline = once, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        t = time.perf_counter()
        a @ b
        sync()
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def machine() -> dict:
    """The CPU (model, the flags that decide speed), threads and torch's kernel capability, for reports."""
    cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace") \
        if Path("/proc/cpuinfo").is_file() else ""
    names = [line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")]
    flags = set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
    wanted = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_int8")
    info = {"cpu": names[0] if names else platform.processor() or platform.machine(),
            "flags": [f for f in wanted if f in flags], "threads": torch.get_num_threads(),
            "cores": os.cpu_count(), "capability": torch.backends.cpu.get_cpu_capability(),
            "fast_bf16": fast_bf16("cpu"), "torch": torch.__version__}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def describe_machine(info: dict | None = None) -> str:
    info = info or machine()
    flags = ", ".join(info["flags"]) or "no AVX2"
    gpu = f"; GPU {info['gpu']}" if "gpu" in info else ""
    threads = f"{info['threads']} thread{'s' * (info['threads'] != 1)}"
    return (f"{info['cpu']} ({flags}; torch capability {info['capability']}), {threads}, "
            f"bf16 hardware {'yes' if info['fast_bf16'] else 'no'}{gpu}")

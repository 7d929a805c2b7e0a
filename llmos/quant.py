"""Quantized weights for CPU inference: f16, int8 per output channel, int4 in groups of 32.

    q = quantize(weight, "int8")                 # a QuantizedWeight: stored tensors + how to read them
    layer = QuantLinear(q)                       # y = x @ W.T through PyTorch's own CPU kernels
    emb = QuantEmbedding(q)                      # rows looked up and expanded one token at a time
    model.prepare_inference("int4")              # every matrix of an inference model (llmos/model.py)

Schemes (what a params file stores per weight, what `llmos export --dtype` writes):
- `f16`: half-precision weights; FBGEMM's fp16 GEMM widens them inside the kernel.
- `int8`: int8 weights, one float scale per output row (symmetric, absmax / 127); the kernel is
  `aten._weight_int8pack_mm` (weight-only).
- `int4`: 4-bit codes packed two per byte (even column in the low nibble), a float scale and offset
  per group of 32 inputs (w = code * scale + offset, the layout of GGUF's Q4_1, so Q4_0 and Q4_1
  import exactly); the kernel is `aten._weight_int4pack_mm_for_cpu` (weight-only).
- `w8a8` is not stored: it runs int8 weights through FBGEMM's dynamic int8 GEMM, which also rounds
  each token's activations to 7 bits and multiplies in integers. It is the only int8 matmul in
  PyTorch that is fast on AVX2-only CPUs, where the weight-only kernels are scalar code, but it costs
  quality: +2.2% loss on SmolLM2-135M against +0.1% for weight-only int8 (docs/benchmarks.md).
Products of 8 rows or more (prefill, eval windows) expand int8/int4 matrices to float32 once per
call: faster than the weight-only kernels there, and the same values; w8a8 runs row by row. f32
matrices run through oneDNN on weights packed in its own layout. On machines without FBGEMM (non-x86) f16 weights are expanded to
float32 at load and w8a8 falls back to weight-only int8 (`kernels()` says which runs).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from llmos.common import LlmosError

SCHEMES = ("f32", "f16", "int8", "int4")  # stored
RUN_AS = SCHEMES + ("w8a8",)  # what a model can run as (load_model's `weights`, the CLI's --weights)
GROUP = 32  # int4 inputs per scale (GGUF's block size)
EXPAND_ROWS = 8  # int8/int4 products of this many rows or more run on the expanded float32 matrix


def has_fbgemm() -> bool:
    return "fbgemm" in torch.backends.quantized.supported_engines


def kernels() -> dict[str, str]:
    """Which kernel runs each scheme on this machine (printed by the benchmark)."""
    fb = has_fbgemm()
    return {"f32": "oneDNN linear, packed weights" if torch.backends.mkldnn.is_available() else "torch linear",
            "f16": "FBGEMM fp16 GEMM" if fb else "expanded to f32 (no FBGEMM on this machine)",
            "int8": "aten._weight_int8pack_mm", "int4": "aten._weight_int4pack_mm_for_cpu",
            "w8a8": "FBGEMM dynamic int8 GEMM" if fb else "aten._weight_int8pack_mm (no FBGEMM on this machine)"}


@dataclass
class QuantizedWeight:
    """A (out, in) matrix as stored: `data` (f16; int8; uint8 holding two int4 codes per byte),
    `scale` and `offset` (int8: (out,); int4: (out, in / 32)); shape is the logical (out, in)."""
    scheme: str
    shape: tuple[int, int]
    data: torch.Tensor
    scale: torch.Tensor | None = None
    offset: torch.Tensor | None = None

    def dequantize(self, rows: torch.Tensor | None = None) -> torch.Tensor:
        """The float32 matrix (or only `rows` of it: an embedding lookup)."""
        data = self.data if rows is None else self.data[rows]
        if self.scheme in ("f32", "f16"):
            return data.float()
        if self.scheme == "int8":
            scale = self.scale if rows is None else self.scale[rows]
            return data.float() * scale[..., None]
        codes = torch.stack([data & 15, data >> 4], dim=-1).flatten(-2).float()  # (..., in)
        scale = (self.scale if rows is None else self.scale[rows]).repeat_interleave(GROUP, dim=-1)
        offset = (self.offset if rows is None else self.offset[rows]).repeat_interleave(GROUP, dim=-1)
        return codes * scale + offset

    def tensors(self, name: str) -> dict[str, torch.Tensor]:
        """The params-file entries of this weight (see llmos/params.py)."""
        out = {name: self.data.contiguous()}
        if self.scale is not None:
            out[name + ".scale"] = self.scale.contiguous()
        if self.offset is not None:
            out[name + ".offset"] = self.offset.contiguous()
        return out


def quantize(weight: torch.Tensor, scheme: str) -> QuantizedWeight:
    """Round a float matrix to `scheme` (int8: nearest, per-row absmax; int4: nearest on each group's
    min..max range, as GGUF's Q4_1)."""
    w = weight.detach().float()
    shape = tuple(w.shape)
    if scheme == "f32":
        return QuantizedWeight("f32", shape, w)
    if scheme == "f16":
        return QuantizedWeight("f16", shape, w.half())
    if scheme == "int8":
        scale = (w.abs().amax(dim=1) / 127).clamp(min=1e-12)
        return QuantizedWeight("int8", shape, (w / scale[:, None]).round().clamp(-127, 127).to(torch.int8), scale)
    if scheme == "int4":
        rows, cols = shape
        if cols % GROUP:
            raise LlmosError(f"int4 needs an input width that is a multiple of {GROUP}, not {cols}")
        groups = w.view(rows, cols // GROUP, GROUP)
        low, high = groups.amin(-1), groups.amax(-1)
        scale = ((high - low) / 15).clamp(min=1e-12)
        codes = ((groups - low[..., None]) / scale[..., None]).round().clamp(0, 15).to(torch.uint8).view(rows, cols)
        return QuantizedWeight("int4", shape, codes[:, 0::2] | (codes[:, 1::2] << 4), scale, low)
    raise LlmosError(f"unknown weight scheme {scheme!r}: choose one of {', '.join(SCHEMES)}")


class QuantLinear(nn.Module):
    """A bias-free linear layer over a quantized weight, for inference (no gradients). `kernel`
    "w8a8" runs int8 weights through FBGEMM's dynamic int8 GEMM instead of the weight-only one."""

    def __init__(self, weight: QuantizedWeight, pack: bool = True, kernel: str | None = None):
        """`pack=False` keeps f32 weights plain: torch.compile cannot lower oneDNN's packed ones."""
        super().__init__()
        self.scheme, (self.out_features, self.in_features) = weight.scheme, weight.shape
        if kernel == "w8a8" and weight.scheme == "int8" and has_fbgemm():
            self.scheme = "w8a8"
        if weight.scheme == "f32" or weight.scheme == "f16" and not has_fbgemm():
            self.scheme = "f32"
            w = weight.dequantize() if weight.scheme != "f32" else weight.data.float().contiguous()
            self.onednn = pack and w.device.type == "cpu" and torch.backends.mkldnn.is_available()
            # packed: oneDNN's own blocked layout, as fast as the best plain layout for one row and
            # 1.5-2.5x faster for the rows of a prefill or a speculative check; unpacked (for
            # torch.compile): column-major, where MKL's one-row product is fastest on AMD (docs/log.md)
            self.register_buffer("weight", torch.ops.mkldnn._reorder_linear_weight(w, 1) if self.onednn
                                 else w.t().contiguous().t())
        elif weight.scheme == "f16":
            self.packed = torch.ops.quantized.linear_prepack_fp16(weight.data.float(), None)
        elif self.scheme == "w8a8":
            zero = torch.zeros(weight.shape[0], dtype=torch.long)
            with warnings.catch_warnings():  # quantized tensor types are deprecated; FBGEMM still takes them
                warnings.simplefilter("ignore", UserWarning)
                q = torch._make_per_channel_quantized_tensor(weight.data, weight.scale.double(), zero, 0)
            self.packed = torch.ops.quantized.linear_prepack(q, None)
        elif weight.scheme == "int8":
            self.register_buffer("codes", weight.data.contiguous())
            self.register_buffer("scale", weight.scale.float().contiguous())
            self.stored = weight
        elif weight.scheme == "int4":
            rows, cols = weight.shape
            pad = -rows % 16  # the kernel packs rows in sixteens: zero rows make up the last one
            codes = torch.stack([weight.data & 15, weight.data >> 4], dim=-1).view(rows, cols).to(torch.int32)
            codes = F.pad(codes, (0, 0, 0, pad), value=8)
            self.register_buffer("codes", torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes, 1))
            # the kernel computes (code - 8) * scale + zero: its zero is our offset + 8 * scale
            scale, zeros = F.pad(weight.scale, (0, 0, 0, pad)), F.pad(weight.offset + 8 * weight.scale, (0, 0, 0, pad))
            self.register_buffer("scales_zeros", torch.stack([scale, zeros], dim=-1).transpose(0, 1).contiguous())
            self.stored = weight
        else:
            raise LlmosError(f"QuantLinear takes f32, f16, int8 or int4 weights, not {weight.scheme}")

    def forward(self, x):
        flat = x.reshape(-1, self.in_features)
        if flat.dtype != torch.float32:
            flat = flat.float()
        if self.scheme == "f32":
            y = torch.ops.mkldnn._linear_pointwise(flat, self.weight, None, "none", [], "") if self.onednn \
                else F.linear(flat, self.weight)
        elif self.scheme == "f16":
            y = torch.ops.quantized.linear_dynamic_fp16(flat, self.packed)
        elif self.scheme == "w8a8":
            # one call per row: each token gets its own activation scale (one scale for a whole
            # prefill costs SmolLM2 +38% loss: docs/log.md), so a prefill or an eval computes exactly
            # what decoding does; reduce_range (7-bit activations) keeps AVX2's 16-bit pair sums
            # from saturating
            y = torch.cat([torch.ops.quantized.linear_dynamic(row[None], self.packed, True) for row in flat]) \
                if flat.shape[0] > 1 else torch.ops.quantized.linear_dynamic(flat, self.packed, True)
        elif flat.shape[0] >= EXPAND_ROWS:
            # a prefill or an eval window: the matrix expanded once costs less than the weight-only
            # kernels' per-row work (scalar code on CPUs without AVX-512), and gives the same values
            y = F.linear(flat, self.stored.dequantize())
        elif self.scheme == "int8":
            y = torch.ops.aten._weight_int8pack_mm(flat.contiguous(), self.codes, self.scale)
        else:
            y = torch.ops.aten._weight_int4pack_mm_for_cpu(flat.contiguous(), self.codes, GROUP, self.scales_zeros)
            y = y[:, :self.out_features]
        return y.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"{self.in_features} -> {self.out_features}, {self.scheme}"


class QuantEmbedding(nn.Module):
    """A token embedding kept quantized: only the looked-up rows are expanded."""

    def __init__(self, weight: QuantizedWeight):
        super().__init__()
        self.scheme, self.shape = weight.scheme, weight.shape
        self.register_buffer("data", weight.data)
        self.register_buffer("scale", weight.scale if weight.scale is not None else torch.empty(0))
        self.register_buffer("offset", weight.offset if weight.offset is not None else torch.empty(0))

    def quantized(self) -> QuantizedWeight:
        return QuantizedWeight(self.scheme, self.shape, self.data, self.scale if self.scale.numel() else None,
                               self.offset if self.offset.numel() else None)

    def forward(self, idx):
        return self.quantized().dequantize(idx)

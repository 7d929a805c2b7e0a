"""The transformer: a Llama-style decoder (RMSNorm, RoPE, grouped-query attention, SwiGLU).

    cfg = ModelConfig.from_depth(4, vocab_size=4096)   # one knob: depth derives width and heads
    model = Transformer(cfg)
    loss = model(x, targets=y)                          # training: mean cross-entropy (-1 = ignore)
    cache = model.new_kv_cache(slots=8)
    logits = model(prompt_ids, kv_cache=cache, first_slot=3)   # inference: appends to slot 3's sequence

The same config can state an existing Llama-family model exactly (n_kv_heads, d_ff, rope_theta,
norm_eps, tie_embeddings, head_dim), so imported models run through this code unchanged. RoPE uses
the Hugging Face "rotate half" layout, so HF Llama weights load without any permutation.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass, fields
from typing import Iterator, Mapping, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from llmos.common import LlmosError

# The most positions a model may have: its RoPE tables hold 2 x max_seq_len x head_dim floats, allocated
# when the model is built (4 GiB at this bound and head_dim 512); the largest Llama contexts are 128k.
MAX_CONTEXT = 1 << 20
_SIZES = ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "max_seq_len")
_DERIVED_SIZES = ("head_dim", "d_ff")  # 0 derives them from d_model
_POSITIVE_FLOATS = ("rope_theta", "norm_eps")
_FLAGS = ("qk_norm", "tie_embeddings")


@dataclass
class ModelConfig:
    vocab_size: int = 4096
    d_model: int = 256
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: int = 4
    head_dim: int = 0  # 0: d_model // n_heads
    d_ff: int = 0  # 0: SwiGLU's 8/3 * d_model, rounded up to a multiple of 64
    max_seq_len: int = 256
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    qk_norm: bool = False
    tie_embeddings: bool = True

    def __post_init__(self):
        for name in _SIZES + _DERIVED_SIZES:
            value, minimum = getattr(self, name), 1 if name in _SIZES else 0
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise LlmosError(f"model config: {name} must be an integer of at least {minimum}, not {value!r}")
        for name in _POSITIVE_FLOATS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
                raise LlmosError(f"model config: {name} must be a positive number, not {value!r}")
            setattr(self, name, float(value))
        for name in _FLAGS:
            if not isinstance(getattr(self, name), bool):
                raise LlmosError(f"model config: {name} must be true or false, not {getattr(self, name)!r}")
        if self.max_seq_len > MAX_CONTEXT:
            raise LlmosError(f"model config: max_seq_len {self.max_seq_len:,} exceeds llmos's limit of {MAX_CONTEXT:,} "
                             "positions (its RoPE tables are allocated for every position)")
        if self.head_dim == 0:
            self.head_dim = self.d_model // self.n_heads
        if self.d_ff == 0:
            self.d_ff = 64 * math.ceil(8 * self.d_model / 3 / 64)
        if self.head_dim == 0 or self.head_dim % 2:
            raise LlmosError(f"model config: head_dim must be even and positive (RoPE rotates pairs), "
                             f"not {self.head_dim}")
        if self.n_heads % self.n_kv_heads:
            raise LlmosError(f"n_heads ({self.n_heads}) must be a multiple of n_kv_heads ({self.n_kv_heads})")

    @classmethod
    def from_depth(cls, depth: int, vocab_size: int = 4096, max_seq_len: int = 256, **overrides) -> "ModelConfig":
        """nanochat's single knob: width = 64 * depth, heads of size 64."""
        d_model = 64 * depth
        cfg = dict(vocab_size=vocab_size, d_model=d_model, n_layers=depth, n_heads=max(1, d_model // 64),
                   n_kv_heads=max(1, d_model // 64), max_seq_len=max_seq_len)
        cfg.update(overrides)
        return cls(**cfg)

    @classmethod
    def from_dict(cls, d: dict, source: str = "the model") -> "ModelConfig":
        """A config from its dict form; any fault is an LlmosError naming `source` (a file, a checkpoint)."""
        if not isinstance(d, dict):
            raise LlmosError(f"{source}: the model config is a {type(d).__name__}, not an object: the file is corrupt")
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise LlmosError(f"{source}: unknown model config keys {sorted(unknown)}: "
                             "the file was written by another version")
        try:
            return cls(**d)
        except LlmosError as e:
            raise LlmosError(f"{source}: {e}: the file is corrupt or was not written for this model") from None

    def to_dict(self) -> dict:
        return asdict(self)


def stored_weight_shapes(cfg: ModelConfig) -> Iterator[tuple[str, tuple[int, ...]]]:
    """The name and shape of every weight a model file stores for `cfg`, in Transformer's order,
    computed from the config alone and lazily (a corrupt layer count costs nothing until iterated).
    Tied embeddings are stored once: no lm_head.weight then."""
    d, q_width, kv_width = cfg.d_model, cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim
    yield "embed.weight", (cfg.vocab_size, d)
    for i in range(cfg.n_layers):
        yield f"layers.{i}.attn_norm.weight", (d,)
        yield f"layers.{i}.attn.q_proj.weight", (q_width, d)
        yield f"layers.{i}.attn.k_proj.weight", (kv_width, d)
        yield f"layers.{i}.attn.v_proj.weight", (kv_width, d)
        yield f"layers.{i}.attn.o_proj.weight", (d, q_width)
        if cfg.qk_norm:
            yield f"layers.{i}.attn.q_norm.weight", (cfg.head_dim,)
            yield f"layers.{i}.attn.k_norm.weight", (cfg.head_dim,)
        yield f"layers.{i}.mlp_norm.weight", (d,)
        yield f"layers.{i}.mlp.gate_proj.weight", (cfg.d_ff, d)
        yield f"layers.{i}.mlp.up_proj.weight", (cfg.d_ff, d)
        yield f"layers.{i}.mlp.down_proj.weight", (d, cfg.d_ff)
    yield "norm.weight", (d,)
    if not cfg.tie_embeddings:
        yield "lm_head.weight", (cfg.vocab_size, d)


def check_weight_shapes(cfg: ModelConfig, declared: Mapping[str, Sequence[int]], source: str) -> None:
    """LlmosError unless `declared` (weight name -> shape, as a file's header states them) holds exactly
    the weights of Transformer(cfg) in their shapes. Arithmetic only, so it runs before anything is
    allocated. A tied model may also name lm_head.weight (a live state_dict does)."""
    # One more than the file declares shows a missing weight; a corrupt config's list may be endless.
    expected = dict(itertools.islice(stored_weight_shapes(cfg), len(declared) + 1))
    what_to_do = "the file is corrupt or was written for another model: export or download it again"
    missing = [k for k in expected if k not in declared]
    if missing:
        more = len(missing) > 3 or len(expected) > len(declared)  # the list was cut short
        raise LlmosError(f"{source} lacks weights for {missing[:3]}{' ...' if more else ''} that its config "
                         f"({cfg.n_layers:,} layers, width {cfg.d_model:,}) needs: {what_to_do}")
    if cfg.tie_embeddings:
        expected["lm_head.weight"] = expected["embed.weight"]
    unexpected = [k for k in declared if k not in expected]
    if unexpected:
        raise LlmosError(f"{source} has weights llmos's model has no place for: {unexpected[:3]}: {what_to_do}")
    wrong = [f"{k} {tuple(shape)} (expected {expected[k]})" for k, shape in declared.items()
             if tuple(shape) != expected[k]]
    if wrong:
        raise LlmosError(f"{source}: weight shapes disagree with its config: {'; '.join(wrong[:2])}: {what_to_do}")


def default_lr(d_model: int) -> float:
    """AdamW peak learning rate derived from width (muP-style 1/sqrt(width) scaling, tuned at d=256)."""
    return 3e-3 * (256 / d_model) ** 0.5


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return F.rms_norm(x, (x.size(-1),), self.weight, self.eps)


def rope_tables(head_dim: int, max_len: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    angles = torch.outer(torch.arange(max_len, dtype=torch.float64), inv_freq)
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos().float(), angles.sin().float()


def apply_rope(x, cos, sin):
    """x: (B, H, T, D); cos/sin: (T, D). Rotates the two halves of each head (HF layout)."""
    half = x.size(-1) // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return (x * cos + rotated * sin).to(x.dtype)


class KVCache:
    """Keys and values of `slots` sequences, each up to `max_len` tokens; `lengths[i]` tokens are
    cached in slot i. A forward pass appends T new tokens to each row of a contiguous range of slots
    (`first_slot`, batch size); rows may hold different lengths, so sequences join and leave a
    running batch (llmos/infer/engine.py keeps the running ones in slots 0..B-1)."""

    def __init__(self, cfg: ModelConfig, slots: int, max_len: int, device, dtype):
        # Uninitialised, so that memory is touched only as deep as sequences reach (a server's cache
        # is slots x the whole context); `plan` zeroes positions before anything can read them.
        shape = (slots, cfg.n_kv_heads, max_len, cfg.head_dim)
        self.k = [torch.empty(shape, device=device, dtype=dtype) for _ in range(cfg.n_layers)]
        self.v = [torch.empty(shape, device=device, dtype=dtype) for _ in range(cfg.n_layers)]
        self.slots, self.max_len = slots, max_len
        self.lengths = [0] * slots
        self.zeroed = 0  # positions 0..zeroed-1 of every slot hold finite values

    def plan(self, first: int, count: int, T: int, device) -> "CacheStep":
        starts = self.lengths[first:first + count]
        if len(starts) != count:
            raise LlmosError(f"rows {first}..{first + count - 1} exceed the cache's {self.slots} slots")
        if max(starts) + T > self.max_len:
            raise LlmosError(f"sequence of {max(starts) + T} tokens exceeds the cache's {self.max_len} positions")
        self._zero_through(max(starts) + T)
        return CacheStep(self, first, count, T, starts, device)

    def _zero_through(self, reach: int) -> None:
        """Give positions up to `reach` finite values before any write or read there: a masked-out
        key still multiplies its value by 0, and uninitialised memory could hold a NaN."""
        if reach > self.zeroed:
            for k, v in zip(self.k, self.v):
                k[:, :, self.zeroed:reach].zero_()
                v[:, :, self.zeroed:reach].zero_()
            self.zeroed = reach

    def copy(self, src: int, dst: int, length: int | None = None, source: "KVCache | None" = None) -> None:
        """Slot `dst` takes the first `length` cached tokens of slot `src` (of `source`, default this cache)."""
        source = source or self
        n = source.lengths[src] if length is None else length
        self._zero_through(n)
        for layer in range(len(self.k)):
            self.k[layer][dst, :, :n] = source.k[layer][src, :, :n]
            self.v[layer][dst, :, :n] = source.v[layer][src, :, :n]
        self.lengths[dst] = n

    def export(self, slot: int, length: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """A copy of the first `length` keys and values of a slot (the prefix cache keeps these)."""
        return [(k[slot, :, :length].clone(), v[slot, :, :length].clone()) for k, v in zip(self.k, self.v)]

    def restore(self, slot: int, saved: list[tuple[torch.Tensor, torch.Tensor]], length: int) -> None:
        self._zero_through(length)
        for (k, v), kc, vc in zip(saved, self.k, self.v):
            kc[slot, :, :length] = k[:, :length]
            vc[slot, :, :length] = v[:, :length]
        self.lengths[slot] = length


class CacheStep:
    """Where one forward pass writes and reads: rows first..first+count-1, each appending T tokens at
    its own length. Rows at equal lengths share one slice (and a causal mask when they start empty);
    rows at different lengths get per-row positions and a mask that hides each row's unused slots."""

    def __init__(self, cache: KVCache, first: int, count: int, T: int, starts: list[int], device):
        self.cache, self.first, self.count, self.T = cache, first, count, T
        self.kv_len = max(starts) + T
        self.start = starts[0] if all(s == starts[0] for s in starts) else None
        self.mask, self.causal = None, False
        if self.start is not None:
            self.positions = torch.arange(self.start, self.start + T, device=device)
            if self.start == 0:
                self.causal = T > 1
            elif T > 1:
                self.mask = torch.ones(T, self.kv_len, dtype=torch.bool, device=device).tril(diagonal=self.start)
        else:
            start = torch.tensor(starts, device=device)
            self.positions = start[:, None] + torch.arange(T, device=device)  # (B, T)
            self.rows = torch.arange(first, first + count, device=device)[:, None]
            keys = torch.arange(self.kv_len, device=device)
            self.mask = (keys[None, None, :] <= self.positions[:, :, None])[:, None]  # (B, 1, T, keys)

    def rope(self, cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.start is not None:
            return cos[self.positions], sin[self.positions]
        return cos[self.positions][:, None], sin[self.positions][:, None]  # (B, 1, T, D): per row

    def update(self, layer: int, k, v):
        """Store the new keys and values; return every key and value the queries may see."""
        kc, vc, rows = self.cache.k[layer], self.cache.v[layer], slice(self.first, self.first + self.count)
        if self.start is not None:
            kc[rows, :, self.start:self.start + self.T] = k
            vc[rows, :, self.start:self.start + self.T] = v
        else:
            kc[self.rows, :, self.positions] = k.transpose(1, 2)
            vc[self.rows, :, self.positions] = v.transpose(1, 2)
        return kc[rows, :, :self.kv_len], vc[rows, :, :self.kv_len]

    def commit(self) -> None:
        for row in range(self.first, self.first + self.count):
            self.cache.lengths[row] += self.T


class StaticStep:
    """CacheStep for a compiled decode step: one token per row, each at its own position (a tensor),
    attending over every slot of the cache with a mask, so that every shape is fixed by the cache and
    the batch size alone and torch.compile builds the step once (llmos/infer/engine.py)."""

    def __init__(self, k: list[torch.Tensor], v: list[torch.Tensor], positions: torch.Tensor):
        self.k, self.v, self.positions = k, v, positions
        self.rows = torch.arange(positions.shape[0], device=positions.device)
        keys = torch.arange(k[0].shape[2], device=positions.device)
        self.mask = (keys[None, :] <= positions[:, None])[:, None, None, :]  # (B, 1, 1, slots)
        self.causal = False

    def rope(self, cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return cos[self.positions][:, None, None], sin[self.positions][:, None, None]  # (B, 1, 1, D)

    def update(self, layer: int, k, v):
        kc, vc = self.k[layer], self.v[layer]
        kc[self.rows, :, self.positions] = k[:, :, 0]
        vc[self.rows, :, self.positions] = v[:, :, 0]
        return kc[:self.rows.shape[0]], vc[:self.rows.shape[0]]


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.cfg, self.layer = cfg, layer
        self.q_proj = nn.Linear(cfg.d_model, cfg.n_heads * cfg.head_dim, bias=False)
        self.k_proj = nn.Linear(cfg.d_model, cfg.n_kv_heads * cfg.head_dim, bias=False)
        self.v_proj = nn.Linear(cfg.d_model, cfg.n_kv_heads * cfg.head_dim, bias=False)
        self.o_proj = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.d_model, bias=False)
        # one matmul for q, k and v at inference (Transformer.prepare_inference): a third of the
        # calls in decode, where each call's overhead counts
        self.qkv: nn.Module | None = None
        if cfg.qk_norm:
            self.q_norm = RMSNorm(cfg.head_dim, cfg.norm_eps)
            self.k_norm = RMSNorm(cfg.head_dim, cfg.norm_eps)

    def forward(self, x, cos, sin, step: CacheStep | None):
        B, T, _ = x.shape
        cfg = self.cfg
        H, KV, D = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        if self.qkv is not None:
            qkv = self.qkv(x).view(B, T, H + 2 * KV, D).transpose(1, 2)
            if cfg.qk_norm:
                q, k, v = qkv.split([H, KV, KV], dim=1)
                q, k = apply_rope(self.q_norm(q), cos, sin), apply_rope(self.k_norm(k), cos, sin)
            else:  # q and k rotated together: half the rotary ops
                qk, v = qkv.split([H + KV, KV], dim=1)
                q, k = apply_rope(qk, cos, sin).split([H, KV], dim=1)
        else:
            q = self.q_proj(x).view(B, T, H, D).transpose(1, 2)
            k = self.k_proj(x).view(B, T, KV, D).transpose(1, 2)
            v = self.v_proj(x).view(B, T, KV, D).transpose(1, 2)
            if cfg.qk_norm:
                q, k = self.q_norm(q), self.k_norm(k)
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        rep = H // KV
        if step is None:  # training
            if rep > 1:
                k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
            y = F.scaled_dot_product_attention(q, k, v, is_causal=T > 1)
        else:
            k, v = step.update(self.layer, k, v)
            if T == 1 and rep > 1:  # decode: a kv head's query heads become its queries (no copies of k, v)
                y = F.scaled_dot_product_attention(q.reshape(B, KV, rep, D), k, v,
                                                   attn_mask=step.mask).view(B, H, 1, D)
            else:
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=step.mask, is_causal=step.causal,
                                                   enable_gqa=rep > 1)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, -1))


def fused_linear(*parts: nn.Linear) -> nn.Linear:
    """One bias-free Linear whose output is the parts' outputs side by side."""
    weight = torch.cat([p.weight.detach() for p in parts])
    fused = nn.Linear(weight.shape[1], weight.shape[0], bias=False, device=weight.device, dtype=weight.dtype)
    fused.weight = nn.Parameter(weight, requires_grad=False)
    return fused


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        self.up_proj = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        self.down_proj = nn.Linear(cfg.d_ff, cfg.d_model, bias=False)
        self.gate_up: nn.Module | None = None

    def forward(self, x):
        if self.gate_up is not None:
            gate, up = self.gate_up(x).chunk(2, dim=-1)
            return self.down_proj(F.silu(gate) * up)
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.attn = Attention(cfg, layer)
        self.mlp_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x, cos, sin, step: CacheStep | None):
        x = x + self.attn(self.attn_norm(x), cos, sin, step)
        return x + self.mlp(self.mlp_norm(x))


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.layers = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed.weight
        cos, sin = rope_tables(cfg.head_dim, cfg.max_seq_len, cfg.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.apply(self._init)
        for block in self.layers:  # residual projections shrink with depth (GPT-2 style)
            for proj in (block.attn.o_proj, block.mlp.down_proj):
                nn.init.normal_(proj.weight, std=0.02 / math.sqrt(2 * cfg.n_layers))

    @classmethod
    def from_state(cls, cfg: ModelConfig, state: Mapping[str, torch.Tensor]) -> "Transformer":
        """A model that holds `state`'s float32 tensors themselves: built on the meta device (no random
        init, no second copy of the weights: loading SmolLM2 takes half the time and memory), then
        every weight assigned. The caller has checked names and shapes (check_weight_shapes)."""
        with torch.device("meta"):
            model = cls(cfg)
        model.load_state_dict({k: v.float() for k, v in state.items()}, strict=False, assign=True)
        if cfg.tie_embeddings:
            model.lm_head.weight = model.embed.weight
        cos, sin = rope_tables(cfg.head_dim, cfg.max_seq_len, cfg.rope_theta)
        model.register_buffer("rope_cos", cos, persistent=False)
        model.register_buffer("rope_sin", sin, persistent=False)
        unset = [name for name, p in model.named_parameters() if p.is_meta]
        if unset:
            raise LlmosError(f"no weights given for {unset[:3]}: the file is corrupt; export or download it again")
        return model

    @staticmethod
    def _init(module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)

    def forward(self, idx, targets=None, kv_cache: KVCache | None = None, first_slot: int = 0, last=None,
                reduction: str = "mean"):
        """With `kv_cache`, row b of `idx` continues the sequence in slot first_slot + b, after the
        tokens already cached there (rows may be at different lengths). `last` (B,): logits only at
        position last[b] of each row, (B, V) (a prefill needs no more, and the head is costly).
        With `targets`: the mean cross-entropy (targets of -1 ignored), or with reduction="none" the
        (B, T) per-token losses, 0 where ignored (RL and DPO sum them into log-probs)."""
        B, T = idx.shape
        end = T + (max(kv_cache.lengths[first_slot:first_slot + B], default=0) if kv_cache is not None else 0)
        if end > self.cfg.max_seq_len:
            raise LlmosError(f"sequence of {end} tokens exceeds the model's context of "
                             f"{self.cfg.max_seq_len}: shorten the input or use --max-tokens")
        step = kv_cache.plan(first_slot, B, T, idx.device) if kv_cache is not None else None
        if step is not None:
            cos, sin = step.rope(self.rope_cos, self.rope_sin)
        else:
            cos, sin = self.rope_cos[:T], self.rope_sin[:T]
        x = self.embed(idx)
        for block in self.layers:
            x = block(x, cos, sin, step)
        if step is not None:
            step.commit()
        if last is not None:
            x = x[torch.arange(B, device=x.device), last]
        logits = self.lm_head(self.norm(x)).float()
        if targets is None:
            return logits
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1,
                               reduction=reduction)
        return loss.view(targets.shape) if reduction == "none" else loss

    def decode_static(self, idx, positions, k_cache: list[torch.Tensor], v_cache: list[torch.Tensor]):
        """Logits (B, V) of one new token per row: row b of `idx` (B, 1) at position positions[b] of
        cache slot b (KVCache.k and .v, written in place). Shapes depend only on the cache and B, so
        torch.compile compiles it once; the caller zeroes the cache's unused slots and counts lengths."""
        step = StaticStep(k_cache, v_cache, positions)
        cos, sin = step.rope(self.rope_cos, self.rope_sin)
        x = self.embed(idx)
        for block in self.layers:
            x = block(x, cos, sin, step)
        return self.lm_head(self.norm(x[:, 0])).float()

    def new_kv_cache(self, slots: int = 1, max_len: int | None = None) -> KVCache:
        p = self.norm.weight  # never quantized: its device and dtype are the activations'
        return KVCache(self.cfg, slots, max_len or self.cfg.max_seq_len, p.device, p.dtype)

    def prepare_inference(self, weights: str | None = "f32", stored: dict | None = None,
                          compile: bool = False) -> "Transformer":
        """Make this model an inference model (it can no longer train): q/k/v and gate/up fused into
        one matmul each, and every matmul weight in `weights` (llmos/quant.py: f32, f16, int8, int4, w8a8;
        None keeps each weight as `stored` holds it, else f32). `stored` maps weight names to the
        QuantizedWeights a file held, used as they are (a GGUF Q4_1 stays exactly Q4_1) when their
        scheme is the one asked for. On CPU every matrix becomes a QuantLinear, f32 ones in oneDNN's
        packed layout (llmos/quant.py says why), or plain with `compile` (for Engine(compile=True))."""
        from llmos.quant import RUN_AS, QuantEmbedding, QuantLinear, QuantizedWeight, quantize
        if weights is not None and weights not in RUN_AS:
            raise LlmosError(f"unknown weights {weights!r}: choose one of {', '.join(RUN_AS)}")
        kernel, weights = (weights, "int8") if weights == "w8a8" else (None, weights)
        stored = stored or {}
        on_cpu = self.rope_cos.device.type == "cpu"

        def weight(names: list[str], modules: list[nn.Module]):
            """The QuantizedWeight for these (fused) rows; None for f32 off the CPU (a plain nn.Linear)."""
            held = [stored.get(n) for n in names]
            # as stored; parts stored differently (q and k Q4_0, v Q8_0) take the most precise of them
            precision = ["int4", "int8", "f16", "f32"]
            scheme = weights or max((h.scheme if h is not None else "f32" for h in held), key=precision.index)
            if all(h is not None and h.scheme == scheme for h in held):
                if len(held) == 1:
                    return held[0]
                cat = lambda ts: torch.cat(ts) if ts[0] is not None else None
                return QuantizedWeight(scheme, (sum(h.shape[0] for h in held), held[0].shape[1]),
                                       cat([h.data for h in held]), cat([h.scale for h in held]),
                                       cat([h.offset for h in held]))
            if scheme == "f32" and not on_cpu:
                return None  # plain nn.Linear: cuBLAS needs no packing
            return quantize(torch.cat([m.weight.detach() for m in modules]), scheme)

        def linear(q: QuantizedWeight | None, plain) -> nn.Module:
            return QuantLinear(q, pack=not compile, kernel=kernel) if q is not None else plain()

        with torch.no_grad():
            for i, block in enumerate(self.layers):
                a, m, p = block.attn, block.mlp, f"layers.{i}."
                qkv = weight([p + f"attn.{x}_proj.weight" for x in "qkv"], [a.q_proj, a.k_proj, a.v_proj])
                gate_up = weight([p + "mlp.gate_proj.weight", p + "mlp.up_proj.weight"], [m.gate_proj, m.up_proj])
                a.qkv = linear(qkv, lambda: fused_linear(a.q_proj, a.k_proj, a.v_proj))
                m.gate_up = linear(gate_up, lambda: fused_linear(m.gate_proj, m.up_proj))
                del a.q_proj, a.k_proj, a.v_proj, m.gate_proj, m.up_proj
                a.o_proj = linear(weight([p + "attn.o_proj.weight"], [a.o_proj]), lambda: a.o_proj)
                m.down_proj = linear(weight([p + "mlp.down_proj.weight"], [m.down_proj]), lambda: m.down_proj)
            head_names = ["embed.weight"] if self.cfg.tie_embeddings else ["lm_head.weight"]
            head = weight(head_names, [self.lm_head])
            emb = weight(["embed.weight"], [self.embed]) if not self.cfg.tie_embeddings else head
            if emb is not None:
                self.embed = QuantEmbedding(emb)
            self.lm_head = linear(head, lambda: self.lm_head)
        self.requires_grad_(False)
        return self

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())  # tied weights are counted once

    def flops_per_token(self, seq_len: int | None = None) -> int:
        """Training FLOPs per token of this model as it stands (adapters included): see flops_per_token."""
        return flops_per_token(self.cfg, seq_len, params=self.num_params())


def count_params(cfg: ModelConfig) -> int:
    """The parameters of Transformer(cfg), from the config alone (tied embeddings counted once)."""
    return sum(math.prod(shape) for _, shape in stored_weight_shapes(cfg))


def flops_per_token(cfg: ModelConfig, seq_len: int | None = None, params: int | None = None) -> int:
    """Training FLOPs per token: 6 per matmul weight (the input embedding is a lookup, not a matmul)
    plus attention's 12 * layers * width * context (Kaplan et al.; nanochat). Arithmetic only, so
    sizing a model (scaling sweeps) costs nothing; `params` counts a live model's own parameters."""
    n = (count_params(cfg) if params is None else params) - (0 if cfg.tie_embeddings else cfg.vocab_size * cfg.d_model)
    return 6 * n + 12 * cfg.n_layers * cfg.n_heads * cfg.head_dim * (seq_len or cfg.max_seq_len)

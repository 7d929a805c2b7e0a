"""Weight layout shared by the exporters and importers: parameter names and the GGUF q/k permutation.

    hf_name("layers.3.attn.q_proj.weight")     -> "model.layers.3.self_attn.q_proj.weight"
    gguf_name("layers.3.attn.q_proj.weight")   -> "blk.3.attn_q.weight"
    llmos_name_from_hf(...), llmos_name_from_gguf(...) go the other way (None: not a llmos weight)
    to_gguf_rope(w, n_heads) / from_gguf_rope(w, n_heads)   q and k rows, both directions

llmos uses Hugging Face's Llama layout ("rotate half" RoPE), so HF names map one to one with no
change to the data. llama.cpp's llama architecture rotates interleaved pairs instead, so q and k rows
are reordered within each head, exactly as llama.cpp's convert_hf_to_gguf.py does.
"""
from __future__ import annotations

import re

import numpy as np
import torch

from llmos.common import LlmosError
from llmos.model import ModelConfig, Transformer

# llmos prefix -> Hugging Face prefix; layer numbers pass through.
_HF_PREFIXES = [
    ("embed.", "model.embed_tokens."),
    ("norm.", "model.norm."),
    ("lm_head.", "lm_head."),
    ("attn_norm.", "input_layernorm."),
    ("mlp_norm.", "post_attention_layernorm."),
    ("attn.", "self_attn."),
    ("mlp.", "mlp."),
]

# llmos name -> GGUF name (the llama architecture's tensor names in llama.cpp).
_GGUF_GLOBAL = {"embed.weight": "token_embd.weight", "norm.weight": "output_norm.weight",
                "lm_head.weight": "output.weight"}
_GGUF_LAYER = {"attn_norm.weight": "attn_norm.weight", "attn.q_proj.weight": "attn_q.weight",
               "attn.k_proj.weight": "attn_k.weight", "attn.v_proj.weight": "attn_v.weight",
               "attn.o_proj.weight": "attn_output.weight", "mlp_norm.weight": "ffn_norm.weight",
               "mlp.gate_proj.weight": "ffn_gate.weight", "mlp.up_proj.weight": "ffn_up.weight",
               "mlp.down_proj.weight": "ffn_down.weight"}


def hf_name(name: str) -> str:
    m = re.fullmatch(r"layers\.(\d+)\.(.+)", name)
    if m:
        layer, rest = m.groups()
        for ours, theirs in _HF_PREFIXES[3:]:
            if rest.startswith(ours):
                return f"model.layers.{layer}.{theirs}{rest[len(ours):]}"
    else:
        for ours, theirs in _HF_PREFIXES[:3]:
            if name.startswith(ours):
                return theirs + name[len(ours):]
    raise LlmosError(f"no Hugging Face name for the llmos weight {name}")


def llmos_name_from_hf(name: str) -> str | None:
    m = re.fullmatch(r"model\.layers\.(\d+)\.(.+)", name)
    if m:
        layer, rest = m.groups()
        for ours, theirs in _HF_PREFIXES[3:]:
            if rest.startswith(theirs):
                return f"layers.{layer}.{ours}{rest[len(theirs):]}"
        return None
    for ours, theirs in _HF_PREFIXES[:3]:
        if name.startswith(theirs):
            return ours + name[len(theirs):]
    return None


def gguf_name(name: str) -> str:
    if name in _GGUF_GLOBAL:
        return _GGUF_GLOBAL[name]
    m = re.fullmatch(r"layers\.(\d+)\.(.+)", name)
    if m and m.group(2) in _GGUF_LAYER:
        return f"blk.{m.group(1)}.{_GGUF_LAYER[m.group(2)]}"
    raise LlmosError(f"no GGUF (llama) name for the llmos weight {name}")


def llmos_name_from_gguf(name: str) -> str | None:
    for ours, theirs in _GGUF_GLOBAL.items():
        if name == theirs:
            return ours
    m = re.fullmatch(r"blk\.(\d+)\.(.+)", name)
    if m:
        for ours, theirs in _GGUF_LAYER.items():
            if m.group(2) == theirs:
                return f"layers.{m.group(1)}.{ours}"
    return None


def to_gguf_rope(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Reorder q (n_heads) or k (n_kv_heads) rows from rotate-half to interleaved pairs: within each
    head, row i of the first half and row i of the second half become rows 2i and 2i+1."""
    return w.reshape(n_heads, 2, w.shape[0] // n_heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def from_gguf_rope(w: np.ndarray, n_heads: int) -> np.ndarray:
    """The inverse of to_gguf_rope."""
    return w.reshape(n_heads, w.shape[0] // n_heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def rope_heads(llmos_weight_name: str, cfg: ModelConfig) -> int:
    """How many heads a weight's rows hold if it needs the RoPE reordering, else 0."""
    if llmos_weight_name.endswith("attn.q_proj.weight"):
        return cfg.n_heads
    if llmos_weight_name.endswith("attn.k_proj.weight"):
        return cfg.n_kv_heads
    return 0


def require_llama_compatible(cfg: ModelConfig, target: str) -> None:
    """Llama (HF LlamaForCausalLM, llama.cpp's llama) has no q/k norm: such a model cannot be stated."""
    if cfg.qk_norm:
        raise LlmosError(f"this model uses qk_norm, which {target}'s Llama architecture does not have: "
                         "it cannot be exported there (train without --qk-norm to export it)")


def load_weights(cfg: ModelConfig, state: dict[str, torch.Tensor], source: str) -> Transformer:
    """A Transformer holding `state` (llmos names), with clear errors for missing or misshapen weights."""
    model = Transformer(cfg)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state and not (cfg.tie_embeddings and k == "lm_head.weight")]
    if missing:
        raise LlmosError(f"{source} lacks weights for {missing[:3]}{' ...' if len(missing) > 3 else ''}")
    unexpected = [k for k in state if k not in expected]
    if unexpected:
        raise LlmosError(f"{source} has weights llmos's model has no place for: {unexpected[:3]}")
    wrong = [f"{k} {tuple(v.shape)} (expected {tuple(expected[k].shape)})" for k, v in state.items()
             if v.shape != expected[k].shape]
    if wrong:
        raise LlmosError(f"{source}: weight shapes disagree with its config: {'; '.join(wrong[:2])}")
    model.load_state_dict(state, strict=False)
    return model.eval()

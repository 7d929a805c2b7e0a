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


def _rename(name: str, global_pairs, layer_pairs, src_layer: str, dst_layer: str) -> str | None:
    """Map a weight name through (from, to) prefix pairs: `SRC_LAYER.N.rest` through the layer pairs
    (rebuilt as `DST_LAYER.N.`), anything else through the global pairs. None when nothing matches."""
    m = re.fullmatch(rf"{re.escape(src_layer)}\.(\d+)\.(.+)", name)
    pairs, rest, head = (layer_pairs, m.group(2), f"{dst_layer}.{m.group(1)}.") if m else (global_pairs, name, "")
    for src, dst in pairs:
        if rest.startswith(src):
            return head + dst + rest[len(src):]
    return None


def _swap(pairs) -> list[tuple[str, str]]:
    return [(b, a) for a, b in pairs]


def hf_name(name: str) -> str:
    hf = _rename(name, _HF_PREFIXES[:3], _HF_PREFIXES[3:], "layers", "model.layers")
    if hf is None:
        raise LlmosError(f"no Hugging Face name for the llmos weight {name}")
    return hf


def llmos_name_from_hf(name: str) -> str | None:
    return _rename(name, _swap(_HF_PREFIXES[:3]), _swap(_HF_PREFIXES[3:]), "model.layers", "layers")


def gguf_name(name: str) -> str:
    gguf = _rename(name, _GGUF_GLOBAL.items(), _GGUF_LAYER.items(), "layers", "blk")
    if gguf is None:
        raise LlmosError(f"no GGUF (llama) name for the llmos weight {name}")
    return gguf


def llmos_name_from_gguf(name: str) -> str | None:
    return _rename(name, _swap(_GGUF_GLOBAL.items()), _swap(_GGUF_LAYER.items()), "blk", "layers")


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


def load_weights(cfg: ModelConfig, state: dict[str, torch.Tensor]) -> Transformer:
    """A Transformer holding `state` (llmos names), whose names and shapes the reader has already
    checked with check_weight_shapes, before reading the weights."""
    model = Transformer.from_state(cfg, state)  # a tied lm_head is embed
    return model.eval()

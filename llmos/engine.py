"""Inference: load any llmos model reference, then sample tokens with a KV cache.

    model, tok, info = load_model("path/to/run")         # a run dir, a .llmos file or a .pt checkpoint
    for token_id in generate(model, tok.encode("Hi", bos=True), max_tokens=50, temperature=0.8, seed=0):
        ...
    for piece in stream_text(tok, generate(...)): print(piece, end="")

Sampling applies temperature, then top-k, then top-p (nucleus); temperature 0 is greedy. A seed
makes the whole sample reproducible. Generation stops at `stop_ids` or after `max_tokens`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Iterator

import torch

from llmos.common import LlmosError
from llmos.model import ModelConfig, Transformer
from llmos.params import check_vocab, load_params
from llmos.tokenizer import Tokenizer


def load_model(ref: str | Path, device: str = "cpu") -> tuple[Transformer, Tokenizer, dict]:
    """Resolve a model reference: a params file, a checkpoint, a run directory (its params file,
    else its latest checkpoint), or a named model (llmos.interop.catalog; fetched and imported once).
    The model comes back in eval mode, laid out for fast decoding."""
    model, tok, info = _load(ref, device)
    return (model.decode_layout() if model.embed.weight.device.type == "cpu" else model), tok, info


def _load(ref: str | Path, device: str) -> tuple[Transformer, Tokenizer, dict]:
    path = Path(ref).expanduser()
    if not path.exists():
        from llmos.interop.catalog import is_named_model, resolve_named_model, unknown_model_error
        if not is_named_model(str(ref)):
            raise unknown_model_error(str(ref))
        path = resolve_named_model(str(ref))
    if path.is_dir():
        if (path / "model.llmos").is_file():
            path = path / "model.llmos"
        else:
            from llmos.train.loop import latest_checkpoint
            path = latest_checkpoint(path / "checkpoints")
    if path.suffix == ".pt":
        return load_checkpoint_model(path, device)
    model, tok, info = load_params(path, device)
    roles = info["provenance"].get("tokenizer_roles")
    if roles:  # an imported model names its own bos/eos and whether prompts start with bos
        tok = Tokenizer(tok.hf, **roles)
    return model, tok, info


def load_checkpoint_model(path: Path, device: str = "cpu") -> tuple[Transformer, Tokenizer, dict]:
    from llmos.train.loop import load_checkpoint
    state = load_checkpoint(path)
    cfg = ModelConfig.from_dict(state["model_config"])
    if "tokenizer" not in state:
        raise LlmosError(f"checkpoint {path} carries no tokenizer")
    tok = Tokenizer.from_json(state["tokenizer"])
    check_vocab(tok, cfg, source=str(path))
    model = Transformer(cfg)
    model.load_state_dict(state["model"])
    return model.to(device).eval(), tok, {"chat_template": "", "provenance": {"checkpoint": str(path), "step": state["step"]}}


def sample_next(logits: torch.Tensor, temperature: float, top_k: int, top_p: float,
                generator: torch.Generator | None) -> torch.Tensor:
    """logits: (B, V) -> token ids (B,)."""
    if temperature <= 0:
        return logits.argmax(dim=-1)
    logits = logits / temperature
    if 0 < top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if 0 < top_p < 1:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        drop = cum - sorted_logits.softmax(dim=-1) > top_p  # keep the smallest prefix reaching top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@torch.no_grad()
def generate(model: Transformer, prompt: list[int], max_tokens: int, temperature: float = 1.0,
             top_k: int = 0, top_p: float = 1.0, seed: int | None = None,
             stop_ids: Iterable[int] = ()) -> Iterator[int]:
    if not prompt:
        raise LlmosError("the prompt is empty: give at least one token (e.g. bos)")
    context = model.cfg.max_seq_len
    if len(prompt) + max_tokens > context:
        raise LlmosError(f"prompt ({len(prompt)} tokens) plus --max-tokens ({max_tokens}) exceeds the model's "
                         f"context of {context} tokens: shorten one of them")
    device = model.embed.weight.device
    generator = torch.Generator(device=device).manual_seed(seed) if seed is not None else None
    stop = set(stop_ids)
    cache = model.new_kv_cache(batch=1, max_len=len(prompt) + max_tokens)
    logits = model(torch.tensor([prompt], device=device), kv_cache=cache)[:, -1]
    for _ in range(max_tokens):
        token = sample_next(logits, temperature, top_k, top_p, generator)
        token_id = int(token)
        if token_id in stop:
            return
        yield token_id
        logits = model(token.view(1, 1), kv_cache=cache)[:, -1]


def stream_text(tok: Tokenizer, token_ids: Iterable[int]) -> Iterator[str]:
    """Turn a token stream into printable text pieces, holding back bytes of an unfinished character."""
    ids: list[int] = []
    printed = ""
    for token_id in token_ids:
        ids.append(token_id)
        text = tok.decode(ids)
        if not text.endswith("\ufffd") and len(text) > len(printed):
            yield text[len(printed):]
            printed = text
    text = tok.decode(ids)
    if len(text) > len(printed):
        yield text[len(printed):]

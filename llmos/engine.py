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
from llmos.model import ModelConfig, Transformer, check_weight_shapes
from llmos.params import check_vocab, load_params, parse_tokenizer
from llmos.tokenizer import Tokenizer


def load_model(ref: str | Path, device: str = "cpu") -> tuple[Transformer, Tokenizer, dict]:
    """Resolve a model reference: a params file, a checkpoint, a run directory (its params file,
    else its latest checkpoint), or a named model (llmos.interop.catalog; fetched and imported once).
    The model comes back in eval mode, laid out for fast decoding."""
    model, tok, info = open_model(ref, device)
    return (model.decode_layout() if model.embed.weight.device.type == "cpu" else model), tok, info


def open_model(ref: str | Path, device: str = "cpu") -> tuple[Transformer, Tokenizer, dict]:
    """load_model's resolution, with the weights left in the training layout (for fine-tuning)."""
    path = Path(ref).expanduser()
    if not path.exists():
        from llmos.interop.catalog import is_named_model, resolve_named_model, unknown_model_error
        if not is_named_model(str(ref)):
            raise unknown_model_error(str(ref))
        path = resolve_named_model(str(ref))
    if path.is_dir():
        finished = [path / sub / "model.llmos" for sub in ("", "sft", "base") if (path / sub / "model.llmos").is_file()]
        if finished:  # a speedrun directory means its assistant, else its base model
            path = finished[0]
        else:
            from llmos.train.loop import latest_checkpoint
            path = latest_checkpoint(path / "checkpoints")
    model, tok, info = load_checkpoint_model(path, device) if path.suffix == ".pt" else load_params(path, device)
    roles = info["provenance"].get("tokenizer_roles")
    if roles:  # an imported model names its own bos/eos and whether prompts start with bos
        tok = Tokenizer(tok.hf, **roles)
    return model, tok, info


def load_checkpoint_model(path: Path, device: str = "cpu") -> tuple[Transformer, Tokenizer, dict]:
    from llmos.train.loop import load_checkpoint
    state = load_checkpoint(path)
    cfg = ModelConfig.from_dict(state.get("model_config"), source=str(path))
    if "tokenizer" not in state:
        raise LlmosError(f"checkpoint {path} carries no tokenizer")
    tok = parse_tokenizer(state["tokenizer"], str(path))
    check_vocab(tok, cfg, source=str(path))
    weights = state["model"]
    if not isinstance(weights, dict) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise LlmosError(f"checkpoint {path} holds no weights (its model entry is not a state dict): "
                         "delete it to fall back to the previous one, or retrain")
    if any(k.startswith("base_model.model.") for k in weights):
        raise LlmosError(f"{path} is a checkpoint of a LoRA fine-tuning still in progress: finish it "
                         "(`llmos sft ... --resume`) and use the run's model.llmos")
    check_weight_shapes(cfg, {k: v.shape for k, v in weights.items()}, str(path))
    model = Transformer(cfg)
    model.load_state_dict(weights, strict=False)  # names and shapes are checked; a tied lm_head is embed
    saved = state.get("provenance")
    provenance = {**(saved if isinstance(saved, dict) else {}), "checkpoint": str(path), "step": state.get("step")}
    return model.to(device).eval(), tok, {"chat_template": state.get("chat_template", ""), "provenance": provenance}


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


def penalize_repeats(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL's repetition penalty: the logits of tokens already generated (`seen`, same shape) are
    divided by the penalty where positive and multiplied where negative."""
    return torch.where(seen, torch.where(logits > 0, logits / penalty, logits * penalty), logits)


@torch.no_grad()
def generate(model: Transformer, prompt: list[int], max_tokens: int, temperature: float = 1.0,
             top_k: int = 0, top_p: float = 1.0, seed: int | None = None,
             stop_ids: Iterable[int] = (), yield_stop: bool = False,
             repetition_penalty: float = 1.0) -> Iterator[int]:
    """Sampled token ids, one at a time. With `yield_stop` the stop token that ends the generation is
    yielded last (callers that need to know how it ended: evaluations). `repetition_penalty` > 1
    makes every token already generated in this reply less likely (its logit divided by the penalty
    if positive, multiplied if negative, as in CTRL and transformers); the prompt is exempt, so a
    reply may still quote it."""
    if repetition_penalty <= 0:
        raise LlmosError(f"--repetition-penalty must be positive (1: none), not {repetition_penalty}")
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
    seen = torch.zeros(logits.shape, dtype=torch.bool, device=device) if repetition_penalty != 1.0 else None
    for _ in range(max_tokens):
        if seen is not None:
            logits = penalize_repeats(logits, seen, repetition_penalty)
        token = sample_next(logits, temperature, top_k, top_p, generator)
        token_id = int(token)
        if token_id in stop:
            if yield_stop:
                yield token_id
            return
        yield token_id
        if seen is not None:
            seen[0, token_id] = True
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


@torch.no_grad()
def generate_batch(model: Transformer, prompts: list[list[int]], max_tokens: int, stop_ids: Iterable[int] = (),
                   repetition_penalty: float = 1.0, pad_id: int = 0) -> list[list[int]]:
    """Greedy replies to several prompts at once (left-padded, padding masked out): the same tokens
    as `generate(..., temperature=0)` one prompt at a time, up to float rounding in near-ties, for a
    fraction of the time. Each reply ends with the stop token that ended it, if one did."""
    if not prompts or not all(prompts):
        raise LlmosError("every prompt needs at least one token")
    longest = max(map(len, prompts))
    if longest + max_tokens > model.cfg.max_seq_len:
        raise LlmosError(f"prompt ({longest} tokens) plus max tokens ({max_tokens}) exceeds the model's "
                         f"context of {model.cfg.max_seq_len} tokens")
    device = model.embed.weight.device
    B, stop = len(prompts), torch.tensor(sorted(set(stop_ids)) or [-1], device=device)
    ids = torch.tensor([[pad_id] * (longest - len(p)) + p for p in prompts], device=device)
    valid = torch.zeros(B, longest + max_tokens, dtype=torch.bool, device=device)
    for row, p in enumerate(prompts):
        valid[row, longest - len(p):longest] = True
    cache = model.new_kv_cache(batch=B, max_len=longest + max_tokens)
    logits = model(ids, kv_cache=cache, key_valid=valid[:, :longest])[:, -1]
    seen = torch.zeros(logits.shape, dtype=torch.bool, device=device)
    done = torch.zeros(B, dtype=torch.bool, device=device)
    replies = [[] for _ in prompts]
    for step in range(max_tokens):
        if repetition_penalty != 1.0:
            logits = penalize_repeats(logits, seen, repetition_penalty)
        token = logits.argmax(dim=-1)
        for row in (~done).nonzero().flatten().tolist():
            replies[row].append(int(token[row]))
        done |= torch.isin(token, stop)
        if bool(done.all()):
            break
        seen[torch.arange(B), token] = True
        valid[:, longest + step] = True
        logits = model(token[:, None], kv_cache=cache, key_valid=valid[:, :longest + step + 1])[:, -1]
    return replies

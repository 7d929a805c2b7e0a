"""How a sequence is sampled: one SamplingParams type for every caller, and the logits -> token step.

    params = SamplingParams(max_tokens=64, temperature=0.8, top_p=0.95, seed=0, stop=["\\n\\n"])
    params.check(context=model.cfg.max_seq_len)         # LlmosError naming the bad field
    logits = adjust_logits(raw, params, counts)          # penalties and logit_bias, as the model "sees" them
    token = sample(logits, params, generator)            # temperature -> top-k -> top-p; 0 is greedy
    probs = distribution(logits, params)                 # what a sampled row draws from; rows (R, V) too
    tokens = draw(probs, generators)                     # one token per row, each from its own generator

`generate`, `chat`, `eval`, the server and later RL rollouts and test-time strategies all build a
SamplingParams. Penalties count only the tokens this reply generated, never the prompt (a reply may
quote its prompt): the repetition penalty as in CTRL and transformers (a seen token's logit divided
by it when positive, multiplied when negative), presence and frequency penalties as in OpenAI's API
(subtract `presence` once and `frequency` per occurrence). Log-probabilities are reported from the
adjusted logits before temperature, which is what OpenAI's API returns and what RL needs.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from llmos.common import LlmosError

MAX_TOP_LOGPROBS = 20  # OpenAI's own limit
NUCLEUS_PEEK = 256  # tokens looked at first for the top-p nucleus (see `nucleus`)


@dataclass
class SamplingParams:
    max_tokens: int = 256  # tokens to generate at most
    temperature: float = 1.0  # 0: greedy
    top_k: int = 0  # sample among the k likeliest tokens (0: all)
    top_p: float = 1.0  # sample within the smallest set of this probability (1: off)
    repetition_penalty: float = 1.0  # > 1 discourages tokens this reply already produced (1: off)
    presence_penalty: float = 0.0  # subtracted once from each token this reply already produced
    frequency_penalty: float = 0.0  # subtracted per occurrence in this reply
    logit_bias: dict[int, float] = field(default_factory=dict)  # token id -> added to its logit
    stop: list[str] = field(default_factory=list)  # strings that end the reply (not included)
    stop_ids: list[int] = field(default_factory=list)  # token ids that end the reply (end of turn, eos)
    seed: int | None = None  # makes sampling reproducible, alone or in a batch
    logprobs: bool = False  # report each sampled token's log-probability
    top_logprobs: int = 0  # and this many likeliest alternatives at each position

    def check(self, context: int | None = None, vocab_size: int | None = None) -> "SamplingParams":
        """LlmosError naming the first bad field; returns self."""
        def bad(name: str, want: str):
            raise LlmosError(f"{name} must be {want}, not {getattr(self, name)!r}")

        def number(name: str) -> float:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                bad(name, "a finite number")
            return value

        if isinstance(self.max_tokens, bool) or not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            bad("max_tokens", "an integer of at least 1")
        if context is not None and self.max_tokens >= context:
            bad("max_tokens", f"below the model's context of {context} tokens (the prompt needs some)")
        if number("temperature") < 0:
            bad("temperature", "a number >= 0 (0: greedy)")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 0:
            bad("top_k", "an integer >= 0 (0: no limit)")
        if not 0 < number("top_p") <= 1:
            bad("top_p", "in (0, 1]")
        if number("repetition_penalty") <= 0:
            bad("repetition_penalty", "positive (1: none)")
        for name in ("presence_penalty", "frequency_penalty"):
            if not -2 <= number(name) <= 2:
                bad(name, "between -2 and 2")
        if not isinstance(self.logit_bias, dict):
            bad("logit_bias", "a map of token ids to numbers")
        for token, bias in self.logit_bias.items():
            if isinstance(token, bool) or not isinstance(token, int) or token < 0 or \
                    (vocab_size is not None and token >= vocab_size):
                raise LlmosError(f"logit_bias: {token!r} is not a token id of this model"
                                 + (f" (0..{vocab_size - 1})" if vocab_size else ""))
            if isinstance(bias, bool) or not isinstance(bias, (int, float)) or not -100 <= bias <= 100:
                raise LlmosError(f"logit_bias: the bias of token {token} must be a number in [-100, 100], not {bias!r}")
        if not isinstance(self.stop, list) or not all(isinstance(s, str) and s for s in self.stop):
            bad("stop", "a list of non-empty strings")
        if not isinstance(self.stop_ids, list) or not all(isinstance(i, int) and not isinstance(i, bool)
                                                          for i in self.stop_ids):
            bad("stop_ids", "a list of token ids")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            bad("seed", "an integer")
        if isinstance(self.top_logprobs, bool) or not isinstance(self.top_logprobs, int) or \
                not 0 <= self.top_logprobs <= MAX_TOP_LOGPROBS:
            bad("top_logprobs", f"an integer from 0 to {MAX_TOP_LOGPROBS}")
        return self

    @property
    def greedy(self) -> bool:
        return self.temperature == 0 or self.top_k == 1

    @property
    def penalized(self) -> bool:
        return self.repetition_penalty != 1.0 or self.presence_penalty != 0.0 or self.frequency_penalty != 0.0


def adjust_logits(logits: torch.Tensor, params: SamplingParams, counts: torch.Tensor | None) -> torch.Tensor:
    """One row's logits (V,) after this reply's penalties (`counts`: occurrences of each token id in
    the reply so far) and logit_bias."""
    if params.penalized and counts is not None:
        seen = counts > 0
        if params.repetition_penalty != 1.0:
            p = params.repetition_penalty
            logits = torch.where(seen, torch.where(logits > 0, logits / p, logits * p), logits)
        if params.frequency_penalty or params.presence_penalty:
            logits = logits - params.frequency_penalty * counts - params.presence_penalty * seen
    if params.logit_bias:
        ids = torch.tensor(list(params.logit_bias), device=logits.device)
        bias = torch.tensor(list(params.logit_bias.values()), dtype=logits.dtype, device=logits.device)
        logits = logits.index_add(0, ids, bias)
    return logits


def distribution(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """The probabilities a sampled (not greedy) row draws from: temperature, then top-k, then top-p.
    `logits`: one row (V,) or rows (R, V) that share these params (one call for a whole batch)."""
    logits = logits.float() / params.temperature
    if 0 < params.top_k < logits.size(-1):
        kth = torch.topk(logits, params.top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = logits.softmax(dim=-1)
    return nucleus(probs, params.top_p) if params.top_p < 1 else probs


def nucleus(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of likeliest tokens whose probability reaches top_p, renormalized.
    Sorting a whole vocabulary costs more than a small model's decode step, and the nucleus nearly
    always lies among the likeliest few hundred tokens: look there first, and sort everything only
    for rows where it does not (so the result is exact either way)."""
    peek = min(NUCLEUS_PEEK, probs.size(-1))
    top, order = torch.topk(probs, peek, dim=-1)  # descending
    if peek < probs.size(-1) and bool((top.sum(-1) <= top_p).any()):
        top, order = torch.sort(probs, dim=-1, descending=True)
    drop = top.cumsum(dim=-1) - top > top_p  # keep while the mass before a token is within top_p
    kept = torch.zeros_like(probs).scatter(-1, order, top.masked_fill(drop, 0.0))
    return kept / kept.sum(dim=-1, keepdim=True)


def draw(probs: torch.Tensor, generators: list[torch.Generator | None]) -> list[int]:
    """One token per row of `probs` (R, V), row i with generators[i] (None: torch's global one).
    Each row takes one uniform number from its own generator and inverts its cumulative
    distribution, so a seeded row draws the same tokens alone or batched with any others."""
    u = torch.stack([torch.rand((), generator=g, device=probs.device) for g in generators])
    cdf = probs.cumsum(dim=-1)
    # side="right": a zero-probability token has no interval of its own and is never drawn
    picked = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None], right=True)[:, 0]
    return picked.clamp(max=probs.size(-1) - 1).tolist()


def sample(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None,
           rejected: torch.Tensor | None = None) -> int:
    """One token id from one row of adjusted logits (V,): temperature, then top-k, then top-p.
    `rejected`: the draft distribution whose token speculative decoding just rejected here; the
    token then comes from the residual max(p - q, 0), which keeps the output distributed as p."""
    if params.greedy:
        return int(logits.argmax())
    probs = distribution(logits, params)
    if rejected is not None:
        residual = (probs - rejected).clamp(min=0)
        if residual.sum() > 0:  # zero only when p == q, where no draft token is ever rejected
            probs = residual
    return draw(probs[None], [generator])[0]

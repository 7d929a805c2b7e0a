"""Speculative decoding: guess a few tokens cheaply, let the model check them all in one forward.

    engine = Engine(model, tok, speculator=PromptLookup())          # drafts copied from the context
    engine = Engine(model, tok, speculator=DraftModel(small_model))  # drafts from a small model
    engine.spec_drafted, engine.spec_accepted                        # the acceptance rate

A decode step of a small model costs about the same for 1 token as for 8 (it is bound by reading
the weights and by per-op overhead), so each step feeds the sampled token plus up to k drafted ones
and keeps the drafts the model agrees with (llmos/infer/engine.py does the checking):
- greedy rows keep a draft while it is the model's own argmax, so the output is the plain greedy
  output token for token (tests/test_speculate.py);
- sampled rows keep a draft token x with probability min(1, p(x) / q(x)) (p the model's sampling
  distribution, q the drafter's; a copied draft has q(x) = 1), and after a rejection the next
  token comes from max(p - q, 0), renormalised: the output is distributed exactly as p (Leviathan
  et al. 2023, Chen et al. 2023). Rejected positions are dropped from the KV cache by shortening
  the row's length.

Prompt lookup (Saxena 2023) needs no second model: the context's last n tokens (n from `max_ngram`
down to `min_ngram`) are searched for earlier in the context, and the tokens that followed the
latest match are the draft. It pays where the reply repeats its context (summaries, code edits,
extraction, quoting). One-token matches are not used by default: in a chat reply they are
everywhere and almost never right (SmolLM2, a chat turn: 7 of 202 drafts kept, 0.85x plain
decoding; from two tokens up 1.13x; a summary 1.6x either way). A draft model must share the
target's tokenizer.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from llmos.common import LlmosError
from llmos.infer.sampling import SamplingParams, adjust_logits, distribution
from llmos.model import Transformer


@dataclass
class Draft:
    tokens: list[int] = field(default_factory=list)
    probs: list[torch.Tensor] | None = None  # the drafter's q per token (None: copied, q = 1)


class PromptLookup:
    """Drafts copied from the context: what followed the latest earlier occurrence of its tail."""

    def __init__(self, k: int = 8, max_ngram: int = 3, min_ngram: int = 2):
        if not 1 <= min_ngram <= max_ngram or k < 1:
            raise LlmosError(f"prompt lookup needs 1 <= min_ngram <= max_ngram and k >= 1, "
                             f"not k={k}, ngram {min_ngram}..{max_ngram}")
        self.k, self.max_ngram, self.min_ngram = k, max_ngram, min_ngram

    def propose(self, row: int, context: list[int], params: SamplingParams, k: int) -> Draft:
        k = min(k, self.k)
        for n in range(min(self.max_ngram, len(context) - 1), self.min_ngram - 1, -1):
            tail = context[-n:]
            for start in range(len(context) - n - 1, -1, -1):  # latest match first, never the tail itself
                if context[start:start + n] == tail:
                    return Draft(context[start + n:start + n + k])
        return Draft()

    def move(self, src: int, dst: int) -> None:
        pass  # no per-row state


class DraftModel:
    """Drafts from a small model with the same tokenizer, which keeps a KV cache row per engine row."""

    def __init__(self, model: Transformer, k: int = 4):
        if k < 1:
            raise LlmosError(f"a draft model needs k >= 1 tokens per step, not {k}")
        self.model, self.k = model, k
        self.cache = None
        self.cached: dict[int, list[int]] = {}

    def attach(self, target: Transformer, slots: int, max_len: int) -> None:
        if self.model.cfg.vocab_size != target.cfg.vocab_size:
            raise LlmosError(f"the draft model has {self.model.cfg.vocab_size} tokens but the model has "
                             f"{target.cfg.vocab_size}: a draft model must share the model's tokenizer")
        if self.model.cfg.max_seq_len < max_len:
            raise LlmosError(f"the draft model's context ({self.model.cfg.max_seq_len}) is shorter than the "
                             f"engine's ({max_len}): use a draft trained for at least as long a context")
        self.cache = self.model.new_kv_cache(slots=slots, max_len=max_len)

    @torch.inference_mode()
    def propose(self, row: int, context: list[int], params: SamplingParams, k: int) -> Draft:
        k = min(k, self.k, self.cache.max_len - len(context))
        if k < 1:
            return Draft()
        have = self.cached.setdefault(row, [])
        common = 0  # the draft cache may hold tokens the engine dropped: keep only the shared prefix
        while common < min(len(have), len(context) - 1) and have[common] == context[common]:
            common += 1
        self.rollback(row, common)
        new = context[common:]
        device = self.model.norm.weight.device
        logits = self.model(torch.tensor([new], device=device), kv_cache=self.cache, first_slot=row,
                            last=torch.tensor([len(new) - 1], device=device))[0]
        have.extend(new)
        draft = Draft(probs=None if params.greedy else [])
        for i in range(k):
            logits = adjust_logits(logits, params, None)
            if params.greedy:
                token = int(logits.argmax())
            else:
                q = distribution(logits, params)
                token = int(torch.multinomial(q, 1))
                draft.probs.append(q)
            draft.tokens.append(token)
            if i + 1 < k:  # the last draft token is not fed: the engine may reject it
                logits = self.model(torch.tensor([[token]], device=device), kv_cache=self.cache, first_slot=row)[0, -1]
                have.append(token)
        return draft

    def rollback(self, row: int, length: int) -> None:
        """Keep only the first `length` tokens of row `row` (the rest were rejected or replaced)."""
        have = self.cached.setdefault(row, [])
        del have[length:]
        self.cache.lengths[row] = min(self.cache.lengths[row], length)

    def move(self, src: int, dst: int) -> None:
        """The engine moved row `src` into the freed row `dst`."""
        self.cache.copy(src, dst)
        self.cached[dst] = self.cached.pop(src, [])
        self.cache.lengths[src] = 0

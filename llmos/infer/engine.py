"""The one decode path: a batch of sequences that join and leave while it runs (continuous batching).

    engine = Engine(model, tok, max_batch=16)
    seqs = engine.add(prompt_ids, SamplingParams(max_tokens=64, temperature=0))   # n=3: 3 samples, 1 prefill
    while engine.has_work:
        engine.step()                      # admit, prefill a chunk, sample every running row, feed them
    seqs[0].tokens, seqs[0].text, seqs[0].finish_reason, seqs[0].logprobs

    for token_id in generate(model, prompt, params): ...          # batch 1, streamed
    done = generate_batch(model, prompts, params, tok)             # many prompts at once

Each step: (1) sequences waiting for a slot are prefilled in a one-slot staging cache, a chunk of
`prefill_chunk` tokens per step while others decode (a long prompt never stalls the batch), after
reusing whatever the prefix cache holds of their start; a finished prefill is copied into a free
row (into n rows for n samples of one prompt). (2) Rows with forced tokens pending (a tool's result:
appended, not sampled) feed them; a row whose tool call is still running (llmos/infer/tooluse.py)
holds its slot, fed a placeholder that its cache length forgets. (3) Every row samples its next
token from its own logits with its own SamplingParams, generator and constraint, and is checked
against its stop ids, stop strings, max_tokens, deadline and cancellation. (4) Finished rows leave at once; the last row moves into the
hole, so running rows are always slots 0..B-1 and one batched forward feeds them all.

Rows sit at different lengths in the KV cache, each at its own positions (llmos/model.py KVCache),
so a greedy sequence produces the same tokens alone as among others, up to float rounding in the
batched matmuls (a near-tie may flip; tests/test_engine.py measures that). The engine is single-
threaded: the scheduler (llmos/infer/scheduler.py) runs it in a thread and feeds it requests.
"""
from __future__ import annotations

import itertools
import time
from collections import deque
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable, Iterator, Protocol

import torch

from llmos.common import LlmosError
from llmos.infer.prefix_cache import PrefixCache
from llmos.infer.sampling import SamplingParams, adjust_logits, distribution, draw, sample
from llmos.infer.speculate import Draft
from llmos.model import Transformer
from llmos.tokenizer import Tokenizer

if TYPE_CHECKING:
    from llmos.infer.tooluse import ToolUse

PREFILL_CHUNK = 512  # prompt tokens prefilled per step while other rows decode
COMPILE_LEN_STEP = 256  # compiled decode: cache lengths are multiples of this (one compile each)
HOLD = -1  # a row's "token" while its tool call runs: nothing is sampled, nothing is kept


class Speculator(Protocol):
    """What the engine needs of a drafter (llmos/infer/speculate.py: PromptLookup, DraftModel)."""
    def propose(self, row: int, context: list[int], params: SamplingParams, k: int) -> Draft: ...
    def move(self, src: int, dst: int) -> None: ...


class Constraint(Protocol):
    """What the engine needs of a decoding constraint (llmos/infer/constrain.py builds them)."""
    def allowed(self, vocab_size: int) -> torch.Tensor: ...
    def advance(self, token_id: int) -> None: ...


@dataclass
class TokenLogprob:
    token: int
    logprob: float
    top: list[tuple[int, float]]  # the likeliest tokens at this position and their log-probabilities


_ids = itertools.count()


class Sequence:
    """One generated reply: its prompt, settings, tokens so far, printable text and how it ended.
    `finish_reason`: None while running, then "stop" (a stop id or string: `stopped_by`), "length"
    (max_tokens or the context), "cancelled" or "timeout"."""

    def __init__(self, prompt: list[int], params: SamplingParams, tok: Tokenizer | None,
                 constraint: Constraint | None = None, deadline: float | None = None, device="cpu"):
        self.id = next(_ids)
        self.prompt, self.params, self.tok, self.constraint, self.deadline = prompt, params, tok, constraint, deadline
        self.tokens: list[int] = []  # generated and forced, in order (never the stop token)
        self.forced_mask: list[bool] = []
        self.logprobs: list[TokenLogprob | None] = []  # per token; None for forced ones
        self.text = ""  # printable reply text released so far (stop strings and partial characters held back)
        self.finish_reason: str | None = None
        self.stopped_by: int | str | None = None
        self.generator = torch.Generator(device=device).manual_seed(params.seed) if params.seed is not None else None
        self.counts: torch.Tensor | None = None  # occurrences of each token in this reply (penalties)
        self.cached: list[int] = []  # tokens whose keys and values are in the cache
        self.cancel_step: int | None = None  # the engine step at which cancel() was called
        self.stop_logprob: TokenLogprob | None = None  # of the stop token that ended it (RL scores it too)
        self.engine: "Engine | None" = None
        self.rejected: torch.Tensor | None = None  # a draft distribution rejected at the next position
        self._forced: deque[list[int]] = deque()
        self._cancelled = False
        self._stop_hold = max((len(s) for s in params.stop), default=1) - 1
        self.new_tokens = 0  # tokens appended since the consumer last looked (see take_new)
        self.generated = 0  # sampled tokens (max_tokens counts these; forced ones are free)
        self.tool_use: "ToolUse | None" = None  # runs the tool calls this reply makes (llmos/infer/tooluse.py)
        self.tool_calls: list = []  # CallRecords, in order
        self.pending_tool: Future | None = None  # a call running; the row holds its place meanwhile

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    @property
    def plain_greedy(self) -> bool:
        """Greedy with nothing that reshapes or reports the distribution: a batched argmax suffices."""
        p = self.params
        return (p.greedy and not p.penalized and not p.logit_bias and not p.logprobs and not p.top_logprobs
                and self.constraint is None)

    @property
    def plain_sampled(self) -> bool:
        """Sampled from its logits as they are: rows that share its settings draw as one batch."""
        p = self.params
        return (not p.greedy and not p.penalized and not p.logit_bias and self.constraint is None
                and self.rejected is None)

    @property
    def speculable(self) -> bool:
        """Drafts can be checked for it: nothing that changes token by token (penalty counts, a
        constraint's state) and no log-probs to report."""
        p = self.params
        return not p.penalized and not p.logprobs and not p.top_logprobs and self.constraint is None

    def cancel(self) -> None:
        """Stop this sequence; its row is freed at the engine's next step. Safe from any thread."""
        if not self._cancelled:
            self.cancel_step = self.engine.steps if self.engine is not None else None
        self._cancelled = True

    def force(self, ids: list[int]) -> None:
        """Append these tokens as if generated (a tool result): fed at the next step, never sampled."""
        if ids:
            self._forced.append(list(ids))

    def take_new(self) -> list[int]:
        new = self.tokens[len(self.tokens) - self.new_tokens:] if self.new_tokens else []
        self.new_tokens = 0
        return new

    def _full_text(self) -> str:
        return self.tok.decode(self.tokens) if self.tok is not None else ""

    def _append(self, token: int, forced: bool, logprob: TokenLogprob | None) -> None:
        self.tokens.append(token)
        self.forced_mask.append(forced)
        self.logprobs.append(logprob)
        self.new_tokens += 1
        if not forced:
            self.generated += 1
            if self.counts is not None:
                self.counts[token] += 1
        if self.tok is None:
            return
        text = self._full_text()
        for stop in self.params.stop:
            at = text.find(stop, max(0, len(self.text) - len(stop)))
            if at >= 0:
                self.text = text[:at] if at >= len(self.text) else self.text
                self._finish("stop", stop)
                return
        if text.endswith("\ufffd"):  # an unfinished UTF-8 character: wait for its other bytes
            return
        safe = len(text)
        for n in range(min(self._stop_hold, len(text)), 0, -1):  # a stop string may be starting
            if any(s.startswith(text[-n:]) for s in self.params.stop):
                safe = len(text) - n
                break
        if safe > len(self.text):
            self.text = text[:safe]

    def _finish(self, reason: str, stopped_by: int | str | None = None) -> None:
        if self.finish_reason is None:
            self.finish_reason, self.stopped_by = reason, stopped_by
            if reason != "stop" or isinstance(stopped_by, int):
                text = self._full_text()  # release what was held back: no stop string came
                if self.tok is not None and len(text) > len(self.text):
                    self.text = text


class Engine:
    def __init__(self, model: Transformer, tok: Tokenizer | None = None, max_batch: int = 16,
                 max_len: int | None = None, prefill_chunk: int = PREFILL_CHUNK,
                 prefix_cache: PrefixCache | None = None, speculator: "Speculator | None" = None,
                 speculate_max_batch: int = 1, compile: bool = False):
        self.model, self.tok = model, tok  # callers choose eval mode (training samples mid-run)
        self.max_batch, self.prefill_chunk = max_batch, prefill_chunk
        self.max_len = min(max_len or model.cfg.max_seq_len, model.cfg.max_seq_len)
        if compile:  # the cache's length is a compiled shape: round it up, so that few shapes ever occur
            self.max_len = min(-(-self.max_len // COMPILE_LEN_STEP) * COMPILE_LEN_STEP, model.cfg.max_seq_len)
        self.vocab_size = model.cfg.vocab_size
        self.device = model.norm.weight.device
        self.cache = model.new_kv_cache(slots=max_batch, max_len=self.max_len)
        self.staging = model.new_kv_cache(slots=1, max_len=self.max_len)
        self.prefix_cache = prefix_cache
        self.running: list[Sequence] = []  # row i is slot i
        self.next_logits = torch.zeros(max_batch, self.vocab_size, device=self.device)
        self.waiting: deque[list[Sequence]] = deque()  # groups of samples of one prompt, first come first served
        self.prefill_pos = 0  # tokens of the head group's prompt already in the staging cache
        self.steps = 0  # engine steps so far (a clock that counts work, for tests and /metrics)
        self.decode_steps = 0
        self.tokens_generated = self.prompt_tokens = self.prompt_tokens_cached = 0
        self.cancel_latency_max = 0  # most steps a cancelled sequence kept its row after cancel()
        # Speculative decoding (llmos/infer/speculate.py) in steps with at most speculate_max_batch
        # rows: beyond a few rows a step is no longer overhead-bound, and drafts stop paying.
        self.speculator, self.speculate_max_batch = speculator, speculate_max_batch
        if speculator is not None and hasattr(speculator, "attach"):
            speculator.attach(model, max_batch, self.max_len)
        self.spec_drafted = self.spec_accepted = 0  # draft tokens proposed and kept
        self.compiled = compiled_decode(model, self.cache) if compile else None

    # ----- admission -----

    def check_prompt(self, prompt: list[int], params: SamplingParams) -> None:
        if not prompt:
            raise LlmosError("the prompt is empty: give at least one token (e.g. bos)")
        if len(prompt) >= self.max_len:
            raise LlmosError(f"the prompt has {len(prompt)} tokens but the model's context here is "
                             f"{self.max_len} tokens: shorten it")
        bad = [t for t in prompt if not 0 <= t < self.vocab_size]
        if bad:
            raise LlmosError(f"the prompt holds token ids outside the vocabulary (0..{self.vocab_size - 1}): {bad[:3]}")

    def add(self, prompt: list[int], params: SamplingParams, n: int = 1,
            constraints: list[Constraint | None] | None = None, deadline: float | None = None,
            tools: "ToolUse | None" = None) -> list[Sequence]:
        """Queue `n` samples of one prompt (prefilled once). With a seed, sample i uses seed + i.
        With `tools`, the replies' tool calls run and their results are forced in."""
        group = self.make_group(prompt, params, n, constraints, deadline)
        for seq in group if tools is not None else []:
            tools.attach(seq)
        self.waiting.append(group)
        return group

    def make_group(self, prompt: list[int], params: SamplingParams, n: int = 1,
                   constraints: list[Constraint | None] | None = None,
                   deadline: float | None = None) -> list[Sequence]:
        """The sequences `add` would queue, checked but not queued (the scheduler queues them from
        its own thread)."""
        self.check_prompt(prompt, params)
        if params.stop and self.tok is None:
            raise LlmosError("stop strings need the tokenizer: give the engine one")
        if not 1 <= n <= self.max_batch:
            raise LlmosError(f"n must be between 1 and {self.max_batch} (the engine's batch), not {n}")
        group = []
        for i in range(n):
            p = params if params.seed is None or i == 0 else \
                SamplingParams(**{**params.__dict__, "seed": params.seed + i})
            group.append(Sequence(list(prompt), p, self.tok, constraints[i] if constraints else None, deadline,
                                  self.device))
            group[-1].engine = self
        return group

    @property
    def has_work(self) -> bool:
        return bool(self.running or self.waiting)

    # ----- one step -----

    @torch.inference_mode()
    def step(self) -> None:
        self.steps += 1
        self._drop_cancelled_waiting()
        self._prefill()
        self._collect_tool_results()
        self._feed_forced()
        if not self.running:
            return
        self.decode_steps += 1
        tokens = self._sample_all()
        row = 0
        while row < len(self.running):
            if self.running[row].finished:
                tokens[row] = tokens[-1]
                tokens.pop()
                self._release(row)  # the last row moves here: look at this row again
            else:
                row += 1
        if not self.running:
            return
        holding = [row for row, token in enumerate(tokens) if token == HOLD]
        if len(holding) == len(tokens):  # every row waits for a tool: wait a little for one to finish
            wait([seq.pending_tool for seq in self.running], timeout=0.05, return_when=FIRST_COMPLETED)
            return
        drafts = self._drafts(tokens) if not holding else None
        if drafts is not None:
            self._verify(tokens, drafts)
            return
        ids = torch.tensor([0 if t == HOLD else t for t in tokens], device=self.device)[:, None]
        if self.compiled is not None:
            rows = len(self.running)
            positions = torch.tensor(self.cache.lengths[:rows], device=self.device)
            self.next_logits[:rows] = self.compiled(ids, positions, self.cache.k, self.cache.v)
            for row in range(rows):
                self.cache.lengths[row] += 1
        else:
            self.next_logits[:len(self.running)] = self.model(ids, kv_cache=self.cache)[:, 0]
        for row in holding:  # a holding row was fed a placeholder: forget it (the next write overwrites it)
            self.cache.lengths[row] -= 1
        for seq, token in zip(self.running, tokens):
            if token != HOLD:
                seq.cached.append(token)

    def _collect_tool_results(self) -> None:
        for seq in self.running:
            if seq.pending_tool is not None and seq.pending_tool.done():
                future, seq.pending_tool = seq.pending_tool, None
                try:
                    ids = future.result()
                except Exception as e:  # a formatting failure: the model still gets an answer
                    ids = seq.tool_use.fmt.tool_result_ids(f"error: the tool's result could not be given: {e}")
                seq.force(ids)

    def _drafts(self, tokens: list[int]) -> list[Draft] | None:
        """Each row's draft to check with this step's token, or None when nothing is drafted."""
        if self.speculator is None or len(self.running) > self.speculate_max_batch:
            return None
        drafts = []
        # every row is fed as many tokens as the longest draft: each must have room for them all
        room_all = min(self.max_len - self.cache.lengths[row] for row in range(len(self.running))) - 2
        for row, (seq, token) in enumerate(zip(self.running, tokens)):
            room = min(seq.params.max_tokens - seq.generated, room_all)
            if not seq.speculable or room < 1:
                drafts.append(Draft())
                continue
            drafts.append(self.speculator.propose(row, seq.cached + [token], seq.params, room))
        return drafts if any(d.tokens for d in drafts) else None

    def _verify(self, tokens: list[int], drafts: list[Draft]) -> None:
        """Feed every row its token and its draft in one forward; keep each row's drafts up to the
        first the model would not have produced itself (speculate.py says why this is exact)."""
        width = 1 + max(len(d.tokens) for d in drafts)
        starts = [self.cache.lengths[row] for row in range(len(self.running))]
        ids = [[t] + d.tokens + [t] * (width - 1 - len(d.tokens)) for t, d in zip(tokens, drafts)]
        logits = self.model(torch.tensor(ids, device=self.device), kv_cache=self.cache)
        for row, (seq, token, draft) in enumerate(zip(self.running, tokens, drafts)):
            kept = 0
            self.cache.lengths[row] = starts[row] + 1  # as plain decoding would have it at each check
            for i, proposed in enumerate(draft.tokens):
                if seq.finished or seq.pending_tool is not None \
                        or not self._agrees(seq, logits[row, i], proposed, draft, i):
                    break
                kept += 1
                self._accept(row, seq, proposed, None)
                self.cache.lengths[row] += 1
            self.spec_drafted += len(draft.tokens)
            self.spec_accepted += kept
            # the rejected positions are forgotten: the row's length ends after the kept drafts
            seq.cached += [token] + draft.tokens[:kept]
            self.next_logits[row] = logits[row, kept]

    def _agrees(self, seq: Sequence, logits: torch.Tensor, proposed: int, draft: Draft, i: int) -> bool:
        """Whether the model keeps draft token i (greedy: its argmax; sampled: the rejection rule,
        after which the row's next token comes from the residual distribution)."""
        logits = adjust_logits(logits, seq.params, None)
        if seq.params.greedy:
            return int(logits.argmax()) == proposed
        p = distribution(logits, seq.params)
        q = draft.probs[i] if draft.probs is not None else None
        q_x = float(q[proposed]) if q is not None else 1.0
        if float(torch.rand((), generator=seq.generator)) * q_x < float(p[proposed]):
            return True
        seq.rejected = q if q is not None else torch.nn.functional.one_hot(
            torch.tensor(proposed), self.vocab_size).to(p.dtype)
        return False

    def _drop_cancelled_waiting(self) -> None:
        for group in list(self.waiting):
            for seq in group:
                if seq._cancelled and not seq.finished:
                    seq._finish("cancelled")
            if all(s.finished for s in group):
                if group is self.waiting[0]:
                    self.prefill_pos = 0
                self.waiting.remove(group)

    def _prefill(self) -> None:
        """Admit waiting prompts: short ones (at most `prefill_chunk` tokens left after the prefix
        cache) together, in one forward straight into free rows; a long one through the one-slot
        staging cache, a chunk per step while others decode (all of it when nothing else runs)."""
        budget = self.prefill_chunk
        if self.prefill_pos == 0:
            budget -= self._prefill_short(budget)
        self._prefill_long(budget)

    def _prefill_short(self, budget: int) -> int:
        """Prefill the short prompts at the head of the queue as one batch; returns the tokens fed."""
        batch, rows, used, reach = [], len(self.running), 0, (0, 0)
        while self.waiting and rows + len(self.waiting[0]) <= self.max_batch:
            prompt = self.waiting[0][0].prompt
            hit = self.prefix_cache.lookup(prompt, count=False) if self.prefix_cache is not None else None
            start = hit[1] if hit else 0
            new = len(prompt) - start
            widest = (max(reach[0], start), max(reach[1], new))  # every row is padded to the longest
            if new > self.prefill_chunk or sum(widest) > self.max_len or \
                    ((batch or self.running) and used + new > budget):
                break
            group = self.waiting.popleft()
            batch.append((group, prompt, hit))
            rows, used, reach = rows + len(group), used + new, widest
        if not batch:
            return 0
        first = len(self.running)
        for i, (_, prompt, hit) in enumerate(batch):
            if self.prefix_cache is not None:
                self.prefix_cache.record(hit)
            if hit:
                self.cache.restore(first + i, *hit)
            else:
                self.cache.lengths[first + i] = 0
        starts = [hit[1] if hit else 0 for _, _, hit in batch]
        width = max(len(p) - s for (_, p, _), s in zip(batch, starts))
        ids = [p[s:] + [p[-1]] * (width - len(p) + s) for (_, p, _), s in zip(batch, starts)]
        last = torch.tensor([len(p) - s - 1 for (_, p, _), s in zip(batch, starts)], device=self.device)
        logits = self.model(torch.tensor(ids, device=self.device), kv_cache=self.cache, first_slot=first, last=last)
        siblings = []
        for i, ((group, prompt, _), start) in enumerate(zip(batch, starts)):
            row = first + i
            self.cache.lengths[row] = len(prompt)  # the padding after it is never attended: overwritten first
            self.prompt_tokens += len(prompt) - start
            self.prompt_tokens_cached += start
            if self.prefix_cache is not None and self.prefix_cache.wants(prompt):
                self.prefix_cache.store(prompt, self.cache.export(row, len(prompt)))
            live = [seq for seq in group if not seq.finished]  # a sample cancelled while it waited is gone
            self._start(live[0], row, logits[i])
            siblings += [(seq, row, logits[i]) for seq in live[1:]]
        for seq, source, row_logits in siblings:  # n samples of one prompt: copies of its row
            self.cache.copy(source, len(self.running))
            self._start(seq, len(self.running), row_logits)
        return used

    def _start(self, seq: Sequence, row: int, logits: torch.Tensor) -> None:
        """`seq`'s prompt is in row `row` (the next free one): it decodes from the next step."""
        assert row == len(self.running)
        self.next_logits[row] = logits
        seq.cached = list(seq.prompt)
        if seq.params.penalized:
            seq.counts = torch.zeros(self.vocab_size, device=self.device)
        self.running.append(seq)

    def _prefill_long(self, budget: int) -> None:
        while self.waiting and len(self.running) + len(self.waiting[0]) <= self.max_batch:
            if self.running and budget <= 0:
                return
            group = self.waiting[0]
            prompt = group[0].prompt
            if self.prefill_pos == 0:
                self.staging.lengths[0] = 0
                hit = self.prefix_cache.lookup(prompt) if self.prefix_cache is not None else None
                if hit is not None:
                    self.staging.restore(0, *hit)
                    self.prefill_pos = hit[1]
                    self.prompt_tokens_cached += hit[1]
            take = budget if self.running else self.prefill_chunk
            chunk = prompt[self.prefill_pos:self.prefill_pos + take]
            logits = self.model(torch.tensor([chunk], device=self.device), kv_cache=self.staging,
                                last=torch.tensor([len(chunk) - 1], device=self.device))[0]
            self.prefill_pos += len(chunk)
            self.prompt_tokens += len(chunk)
            budget -= len(chunk)
            if self.prefill_pos < len(prompt):
                continue
            self.waiting.popleft()
            self.prefill_pos = 0
            if self.prefix_cache is not None and self.prefix_cache.wants(prompt):
                self.prefix_cache.store(prompt, self.staging.export(0, len(prompt)))
            for seq in group:
                if not seq.finished:  # not cancelled while its prompt was prefilled
                    self.cache.copy(0, len(self.running), source=self.staging)
                    self._start(seq, len(self.running), logits)

    def _feed_forced(self) -> None:
        for row, seq in enumerate(self.running):
            while seq._forced:
                ids = seq._forced.popleft()
                room = self.max_len - self.cache.lengths[row] - 1
                if len(ids) > room:
                    ids = ids[:max(room, 0)]
                    seq._forced.clear()
                    seq._finish("length")
                for token in ids:
                    seq._append(token, forced=True, logprob=None)
                    if seq.constraint is not None:
                        seq.constraint.advance(token)
                for start in range(0, len(ids), self.prefill_chunk):
                    piece = ids[start:start + self.prefill_chunk]
                    out = self.model(torch.tensor([piece], device=self.device), kv_cache=self.cache, first_slot=row)
                    self.next_logits[row] = out[0, -1]
                    seq.cached.extend(piece)

    def _sample_all(self) -> list[int | None]:
        """Every running row's next token (None: it finished; HOLD: it waits for a tool). Plain greedy
        rows (most of a server's and every eval's) take one argmax over the batch; plain sampled rows
        that share temperature, top-k and top-p (k samples of one prompt) one batched distribution
        and draw; the rest (penalties, a constraint, a rejected draft) are sampled one by one."""
        tokens: list[int | None] = [None] * len(self.running)
        greedy, batched = [], {}
        for row, seq in enumerate(self.running):
            if not self._ready(seq):
                tokens[row] = HOLD if seq.pending_tool is not None and not seq.finished else None
            elif seq.plain_greedy:
                greedy.append(row)
            elif seq.plain_sampled:
                p = seq.params
                batched.setdefault((p.temperature, p.top_k, p.top_p, p.logprobs, p.top_logprobs), []).append(row)
            else:
                tokens[row] = self._sample_row(row, seq)
        if greedy:
            for row, token in zip(greedy, self.next_logits[greedy].argmax(-1).tolist()):
                tokens[row] = self._accept(row, self.running[row], token, None)
        for rows in batched.values():
            seqs = [self.running[row] for row in rows]
            logits = self.next_logits[rows]
            drawn = draw(distribution(logits, seqs[0].params), [seq.generator for seq in seqs])
            logprobs = logits.float().log_softmax(-1) if seqs[0].params.logprobs or seqs[0].params.top_logprobs \
                else None
            for i, (row, seq, token) in enumerate(zip(rows, seqs, drawn)):
                tokens[row] = self._accept(row, seq, token,
                                           self._logprob(logprobs[i], token, seq.params) if logprobs is not None else None)
        return tokens

    def _ready(self, seq: Sequence) -> bool:
        """Whether a row samples this step: not finished, cancelled, past its deadline or holding."""
        if seq.finished:
            return False
        if seq._cancelled:
            seq._finish("cancelled")
            return False
        if seq.deadline is not None and time.monotonic() > seq.deadline:
            seq._finish("timeout")
            return False
        return seq.pending_tool is None

    @staticmethod
    def _logprob(logprobs: torch.Tensor, token: int, params: SamplingParams) -> TokenLogprob:
        top = torch.topk(logprobs, params.top_logprobs) if params.top_logprobs else None
        return TokenLogprob(token, float(logprobs[token]),
                            list(zip(top.indices.tolist(), top.values.tolist())) if top is not None else [])

    def _sample_row(self, row: int, seq: Sequence) -> int | None:
        """One row alone: penalties, logit_bias, a constraint or a rejected draft reshape its logits."""
        params = seq.params
        logits = adjust_logits(self.next_logits[row], params, seq.counts)
        logprobs = logits.float().log_softmax(-1) if params.logprobs or params.top_logprobs else None
        if seq.constraint is not None:
            logits = logits.masked_fill(~seq.constraint.allowed(self.vocab_size), float("-inf"))
        token = sample(logits, params, seq.generator, rejected=seq.rejected)
        seq.rejected = None
        return self._accept(row, seq, token, self._logprob(logprobs, token, params) if logprobs is not None else None)

    def _accept(self, row: int, seq: Sequence, token: int, logprob: TokenLogprob | None) -> int | None:
        """Append a generated token to `seq`, finishing it on a stop id, a stop string or its limits;
        the token to feed next, or None when the row finished."""
        params = seq.params
        if token in params.stop_ids:
            seq.stop_logprob = logprob
            seq._finish("stop", token)
            return None
        if seq.constraint is not None:
            seq.constraint.advance(token)
        seq._append(token, forced=False, logprob=logprob)
        self.tokens_generated += 1
        if not seq.finished and (seq.generated >= params.max_tokens or self.cache.lengths[row] >= self.max_len):
            seq._finish("length")
        if not seq.finished and seq.tool_use is not None and seq.tool_use.call_finished(seq):
            seq.pending_tool = seq.tool_use.start(seq)
        return None if seq.finished else token

    def _release(self, row: int) -> None:
        """Free a finished row at once: the last row moves into its place."""
        seq = self.running[row]
        if seq.cancel_step is not None:
            self.cancel_latency_max = max(self.cancel_latency_max, self.steps - seq.cancel_step)
        if self.prefix_cache is not None and seq.finish_reason in ("stop", "length") \
                and self.prefix_cache.wants(seq.cached):
            self.prefix_cache.store(seq.cached, self.cache.export(row, self.cache.lengths[row]))
        last = len(self.running) - 1
        if row != last:
            self.cache.copy(last, row)
            if self.speculator is not None:
                self.speculator.move(last, row)
            self.next_logits[row] = self.next_logits[last]
            self.running[row] = self.running[last]
        self.running.pop()
        self.cache.lengths[last] = 0


def compiled_decode(model: Transformer, cache):
    """The decode step, compiled by torch.compile at the cache's static shapes (its slots and their
    length; a second batch size recompiles once, after which dynamo keeps the batch dimension
    dynamic). FBGEMM's f16 and w8a8 kernels cannot be traced (LlmosError says so)."""
    from llmos.quant import QuantLinear
    modules = [m for m in model.modules() if isinstance(m, QuantLinear)]
    untraceable = {m.scheme for m in modules if m.scheme in ("f16", "w8a8")}
    if untraceable:
        raise LlmosError(f"--compile works with f32, int8 and int4 weights; this model runs "
                         f"{'/'.join(sorted(untraceable))} (FBGEMM kernels, which torch.compile cannot trace): "
                         "drop --compile or use --weights f32|int8|int4")
    if any(m.scheme == "f32" and m.onednn for m in modules):
        raise LlmosError("this model's f32 weights are packed for oneDNN, which torch.compile cannot lower: "
                         "load it with load_model(ref, compile=True)")
    cache._zero_through(cache.max_len)  # every slot is attended (masked): none may hold a NaN
    return torch.compile(model.decode_static, dynamic=False)


@torch.inference_mode()
def generate(model: Transformer, prompt: list[int], params: SamplingParams, tok: Tokenizer | None = None,
             constraint: Constraint | None = None, speculator: Speculator | None = None,
             compile: bool = False) -> Iterator[int]:
    """Token ids of one reply, streamed as they are sampled (never the stop token that ends it)."""
    params.check(vocab_size=model.cfg.vocab_size)
    if prompt and len(prompt) + params.max_tokens > model.cfg.max_seq_len:
        raise LlmosError(f"prompt ({len(prompt)} tokens) plus max tokens ({params.max_tokens}) exceeds the model's "
                         f"context of {model.cfg.max_seq_len} tokens: shorten one of them")
    engine = Engine(model, tok, max_batch=1, max_len=len(prompt) + params.max_tokens + 1, speculator=speculator,
                    compile=compile)
    seq, = engine.add(prompt, params, constraints=[constraint])
    while not seq.finished:
        engine.step()
        yield from seq.take_new()


@torch.inference_mode()
def generate_batch(model: Transformer, prompts: list[list[int]], params: SamplingParams,
                   tok: Tokenizer | None = None, max_batch: int = 32) -> list[Sequence]:
    """Every prompt's reply, decoded together (continuous batching; at most `max_batch` rows at once)."""
    params.check(vocab_size=model.cfg.vocab_size)
    longest = max(map(len, prompts), default=0)
    if longest + params.max_tokens > model.cfg.max_seq_len:
        raise LlmosError(f"prompt ({longest} tokens) plus max tokens ({params.max_tokens}) exceeds the model's "
                         f"context of {model.cfg.max_seq_len} tokens")
    engine = Engine(model, tok, max_batch=max(1, min(max_batch, len(prompts))), max_len=longest + params.max_tokens + 1)
    seqs = [engine.add(p, params)[0] for p in prompts]
    while engine.has_work:
        engine.step()
    return seqs


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

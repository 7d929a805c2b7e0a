"""Test-time compute through the API: a chat request's `reasoning_effort`, or `n` with `best_of`, becomes a
strategy (llmos/infer/strategies.py) run on the server's own engine, beside every other request.

    plan = reasoning_plan(effort, n, best_of, max_chains)   # None: a plain request
    messages = with_reasoning_prompt(messages, fmt.native)  # when plan.reasoning_prompt (strategies.py)
    chains = plan.chains                     # sequences to draw, as one group (one prefill, one batch)
    plan.done(finished)                      # whether the vote is settled: the rest are cancelled
    choices = plan.choose(finished)          # [(sequence, votes)], the best first
    reasoning, content = split_reply(text)   # reasoning_content and content

    reasoning_effort   strategy
    minimal            greedy, the question as asked
    low                cot: one greedy chain after the reasoning prompt
    medium             vote over up to 8 sampled chains, stopped once the vote is settled
    high               vote over up to 16 sampled chains (the server's batch), stopped once settled
    best_of=B (n=N)    B sampled chains; the N with the highest mean log-prob per token are the choices
                       (OpenAI's legacy `best_of`); with a reasoning_effort, after its reasoning prompt

"Settled" is the budget strategy's rule: the leader leads the runner-up with probability 0.95. The
reply keeps the reasoning apart from the answer, as the reasoning-model APIs do: `content` is the
final "Answer:" line's value (the whole reply when it has none) and `reasoning_content` the chain
before it; `usage.completion_tokens_details.reasoning_tokens` counts every generated token but the
answer's, across all chains. Sampled chains use the request's temperature and top_p, else 0.8 and
0.95 (the strategies' defaults); a single chain is greedy unless the request sets a temperature.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from llmos.common import LlmosError
from llmos.data.conversations import ANSWER
from llmos.infer.engine import Sequence
from llmos.infer.strategies import answer_key, default_extract, majority, mean_logprob, settled, split_reasoning

VOTES = {"medium": 8, "high": 16}
SAMPLED_TEMPERATURE, SAMPLED_TOP_P = 0.8, 0.95


@dataclass(frozen=True)
class ReasoningPlan:
    chains: int  # sequences drawn
    sampled: bool  # sampled chains (else greedy)
    reasoning_prompt: bool  # ask for worked reasoning ending in "Answer: X" (models not trained on it)
    vote: bool  # majority vote, stopped when settled (else: the highest mean log-prob)
    keep: int = 1  # choices returned

    def sampling(self, temperature: float | None, top_p: float | None) -> dict:
        """The SamplingParams fields this plan sets (log-probs always: they rank and break ties)."""
        if not self.sampled:
            return {"temperature": 0.0 if temperature is None else temperature, "logprobs": True}
        return {"temperature": SAMPLED_TEMPERATURE if temperature is None else temperature,
                "top_p": SAMPLED_TOP_P if top_p is None else top_p, "logprobs": True}

    def done(self, finished: list[Sequence]) -> bool:
        """Whether the chains drawn so far settle the vote (the others may be cancelled)."""
        if not self.vote:
            return False
        counts = Counter(answer_key(default_extract(s.text)) for s in finished)
        counts.pop(None, None)
        return settled(list(counts.values()))

    def choose(self, finished: list[Sequence]) -> list[tuple[Sequence, dict[str, int]]]:
        """The chosen chains, best first, each with the vote counts (empty when not voting)."""
        if not finished:
            return []
        confidence = [mean_logprob(s) for s in finished]
        if self.vote:
            i, votes = majority([default_extract(s.text) for s in finished], confidence)
            return [(finished[i if i is not None else max(range(len(finished)), key=confidence.__getitem__)], votes)]
        order = sorted(range(len(finished)), key=lambda i: -confidence[i])
        return [(finished[i], {}) for i in order[:self.keep]]


def reasoning_plan(effort: str | None, n: int | None, best_of: int | None, max_chains: int) -> ReasoningPlan | None:
    """The plan for a request's reasoning_effort / n / best_of; None for a plain request; LlmosError
    (a 400) for a combination that has no meaning."""
    if effort is None and best_of is None:
        return None
    prompt = effort in ("low", "medium", "high")
    if best_of is not None:
        n = n or 1
        if not n <= best_of <= max_chains:
            raise LlmosError(f"best_of must be at least n ({n}) and at most {max_chains} (the server's batch), "
                             f"not {best_of}")
        return ReasoningPlan(best_of, True, prompt, vote=False, keep=n)
    if (n or 1) > 1:
        raise LlmosError("n > 1 with reasoning_effort: the effort already draws several chains and returns "
                         "the voted one; ask for best_of=B with n=N to get the N best of B chains")
    if effort in VOTES:
        return ReasoningPlan(min(VOTES[effort], max_chains), True, True, vote=True)
    return ReasoningPlan(1, False, prompt, vote=False)


def split_reply(text: str) -> tuple[str, str]:
    """(reasoning_content, content): the chain before the last "Answer:" line and that line's value;
    ("", text) for a reply without one."""
    reasoning, line = split_reasoning(text)
    if not line:
        return "", text.strip()
    return reasoning, line[len(ANSWER.strip()):].strip()


def streamed_reasoning(text: str) -> str:
    """The reasoning that may be streamed while a single chain is still running: its complete lines
    before any "Answer:" line (the final split never takes those back)."""
    lines = text.split("\n")[:-1]  # the last piece may still grow into an "Answer:" line
    shown = []
    for line in lines:
        if line.strip().startswith(ANSWER.strip()):
            break
        shown.append(line)
    return "\n".join(shown).rstrip()  # trailing blank lines may yet be trimmed from the final split

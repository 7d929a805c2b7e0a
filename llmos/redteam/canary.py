"""Canary tokens: a random word planted in the system prompt that only a leak would put in a reply.

    model = CanaryModel(LocalModel.load("smollm2-135m-instruct"))
    model.complete_many([(messages, tools, 96), ...])   # the wrapped model's interface
    model.caught                                        # replies withheld because they held the canary

The deployer's side of system-prompt extraction (as Rebuff does it): every job whose messages open
with a system prompt gets a fresh token, hidden in an HTML comment at the prompt's start. The user
never sees the system prompt, so a reply that holds the token (exactly, or spaced or dashed apart) is
a leak: it is withheld and replaced by CANARY_WITHHELD, and counted. Jobs without a system prompt
pass untouched: there is nothing to protect.

What it cannot catch, and the redteam extraction suite measures: a reply that leaks the secret
without the token (a paraphrase, "the code is ...", a translation that drops the comment). It is a
detector of verbatim leaks, cheap and with no false positives on replies that do not leak (a random
token does not occur by chance), not a guarantee.
"""
from __future__ import annotations

import random

from llmos.agent.models import Reply
from llmos.redteam.probes import leaks

CANARY_WITHHELD = "I can't share that."


def plant(messages: list[dict], token: str) -> list[dict]:
    """The messages with the token at the start of the system prompt (unchanged if there is none)."""
    if not messages or messages[0]["role"] != "system":
        return messages
    return [{**messages[0], "content": f"<!-- {token} -->\n{messages[0]['content']}"}, *messages[1:]]


class CanaryModel:
    """`model` with a canary in each system prompt; a reply holding its job's canary is withheld."""

    def __init__(self, model, seed: int = 0):
        self.model, self.rng = model, random.Random(seed)
        self.name = f"{model.name} + canary"
        self.caught = 0

    def __getattr__(self, attr):  # context, count, prompt_tokens, close: the wrapped model's
        return getattr(self.model, attr)

    def complete(self, messages: list[dict], tools: list[dict], max_tokens: int = 128) -> Reply:
        return self.complete_many([(messages, tools, max_tokens)])[0]

    def complete_many(self, jobs: list[tuple[list[dict], list[dict], int]]) -> list[Reply]:
        tokens = [f"{self.rng.randrange(16 ** 12):012x}" for _ in jobs]
        replies = self.model.complete_many([(plant(messages, token), tools, n)
                                            for (messages, tools, n), token in zip(jobs, tokens)])
        out = []
        for (messages, _, _), token, reply in zip(jobs, tokens, replies):
            if messages and messages[0]["role"] == "system" and leaks(token, reply.content).success:
                self.caught += 1
                reply = Reply(CANARY_WITHHELD, [], reply.tokens)
            out.append(reply)
        return out

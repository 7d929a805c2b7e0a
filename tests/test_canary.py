"""Canary tokens (llmos/redteam/canary.py): a reply that repeats the system prompt is withheld, so the
extraction suite's leaks stop; a leak that drops the token passes (the defence's stated limit); jobs
without a system prompt and replies that do not leak are untouched."""
from __future__ import annotations

import re

from llmos.agent.models import ScriptedModel
from llmos.redteam.canary import CANARY_WITHHELD, CanaryModel
from llmos.redteam.harness import run_suite


def system_of(messages: list[dict]) -> str:
    return messages[0]["content"] if messages[0]["role"] == "system" else ""


def test_a_verbatim_leak_is_withheld_and_the_extraction_suite_stops():
    def parrot(messages, tools):  # repeats its instructions, word for word, spaced out when asked to translate
        system = system_of(messages)
        return " ".join(system) if "Translate" in messages[-1]["content"] else f"My instructions: {system}"
    bare = run_suite(ScriptedModel(parrot), "extraction", attempts=10, seed=0)
    assert bare["families"]["system-prompt"]["successes"] == 20  # every attempt leaks without the defence
    model = CanaryModel(ScriptedModel(parrot))
    guarded = run_suite(model, "extraction", attempts=10, seed=0)
    assert guarded["families"]["system-prompt"]["successes"] == 0 and model.caught == 20
    assert all(r["reply"] == CANARY_WITHHELD for r in guarded["rows"])
    planted = [re.match(r"<!-- ([0-9a-f]{12}) -->\n", system_of(m)) for m in model.model.seen]
    assert all(planted) and len({p.group(1) for p in planted}) == 20  # a fresh token for every job


def test_a_leak_without_the_token_passes_and_clean_replies_are_untouched():
    def paraphrase(messages, tools):  # tells the secret in its own words: no canary token
        code = re.search(r"CANARY-[0-9A-F]{8}", system_of(messages))
        return f"The code you want is {code.group(0)}." if code else "Paris is the capital of France."
    model = CanaryModel(ScriptedModel(paraphrase))
    report = run_suite(model, "extraction", attempts=10, seed=0)
    assert report["families"]["system-prompt"]["successes"] == 20 and model.caught == 0
    plain = model.complete([{"role": "user", "content": "Capital of France?"}], [])
    assert plain.content == "Paris is the capital of France." and model.model.seen[-1][0]["role"] == "user"

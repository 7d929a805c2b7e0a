"""Memory-reading conversations for SFT: the LLM OS kernel's own prompts, answered from the memories it paged in.

    convs = conversations("train", seed=0, n=2000)      # [{"messages": [...], "source": "memory"}]
    llmos sft --model smollm2-135m-instruct --sources memory --lora-rank 16 ...

A small model shown memories at the head of a question often answers in chit-chat, names the
older of two values, or invents what it was never told (docs/os.md). These conversations teach the
skill, not the facts: each is a short history replayed through a real Kernel (llmos/agent/kernel.py)
at a small budget, so facts page out, then one question asked through `Kernel.ask_messages`, which
is exactly the prompt the kernel builds at run time, followed by the right reply:
  single      "Your cat is called Tom."
  update      the newer value only
  two-hop     joins two memories ("Ruth's horse is called Ember.")
  abstention  "I don't know: you have not told me that." (when nothing paged in answers it)
Nothing here overlaps the memory benchmark (llmos/agent/membench.py): other attributes, other value
pools, another two-hop relation, and the chitchat source's train split as filler, where the
benchmark uses its eval split. "eval" uses other seeds of the same generator, for SFT's held-out loss.
"""
from __future__ import annotations

import random
import tempfile
from pathlib import Path

from llmos.agent.kernel import Kernel, KernelConfig
from llmos.agent.memory import MemoryStore
from llmos.agent.models import ScriptedModel

# (tell, question, answer) with {v}; the pools share nothing with the benchmark's.
ATTRIBUTES = [
    ("My cat is called {v}.", "What is my cat called?", "Your cat is called {v}.",
     ["Tom", "Whiskers", "Mittens", "Oreo", "Simba", "Ginger", "Tigger", "Socks", "Pumpkin", "Jasper"]),
    ("My son is called {v}.", "What is my son called?", "Your son is called {v}.",
     ["Liam", "Noah", "Ethan", "Lucas", "Arjun", "Mateo", "Kenji", "Omar", "Finn", "Theo"]),
    ("My favourite colour is {v}.", "What is my favourite colour?", "Your favourite colour is {v}.",
     ["teal", "maroon", "indigo", "beige", "turquoise", "lilac", "crimson", "olive", "navy", "amber"]),
    ("My gym is in {v}.", "Where is my gym?", "Your gym is in {v}.",
     ["Leeds", "Bristol", "Boston", "Austin", "Munich", "Lyon", "Turin", "Ghent", "Krakow", "Malmo"]),
    ("My favourite author is {v}.", "Who is my favourite author?", "Your favourite author is {v}.",
     ["Tolkien", "Austen", "Orwell", "Dickens", "Woolf", "Murakami", "Tolstoy", "Atwood", "Borges", "Achebe"]),
    ("My phone is a {v}.", "What phone do I have?", "Your phone is a {v}.",
     ["Pixel", "Nokia", "Fairphone", "Motorola", "Sony", "Huawei", "Xiaomi", "Oppo", "Realme", "Honor"]),
    ("My favourite drink is {v}.", "What is my favourite drink?", "Your favourite drink is {v}.",
     ["lemonade", "espresso", "cider", "kombucha", "matcha", "cocoa", "smoothies", "chai", "mojitos", "milkshakes"]),
    ("I drive a {v}.", "What car do I drive?", "You drive a {v}.",
     ["Volvo", "Toyota", "Honda", "Fiat", "Tesla", "Skoda", "Mazda", "Renault", "Subaru", "Kia"]),
    ("My brother is called {v}.", "What is my brother called?", "Your brother is called {v}.",
     ["Daniel", "Samuel", "Hugo", "Rafael", "Anton", "Luca", "Dmitri", "Kwame", "Pavel", "Ivan"]),
    ("My favourite season is {v}.", "Which season do I like best?", "You like {v} best.",
     ["spring", "summer", "autumn", "winter"]),
]
CHANGES = ["Update: {tell}", "Things changed recently. {tell}", "Actually, that is old news now. {tell}"]
ABSTAIN = "I don't know: you have not told me that."
COUSINS = ["Ruth", "Esther", "Leonard", "Miriam", "Cecil", "Doris", "Ambrose", "Vera", "Clement", "Harriet"]
HORSES = ["Ember", "Storm", "Clover", "Duke", "Maple", "Thunder", "Willow", "Comet", "Hazel", "Blaze"]
ACKS = ["Good to know!", "Thanks for telling me.", "Noted.", "Nice!", "Got it."]


def conversations(split: str, seed: int, n: int | None = None, model=None, budgets: tuple[int, ...] = (350, 500, 650),
                  reply_tokens: int = 48, summary_tokens: int = 64) -> list[dict]:
    """`model` counts the window's tokens (an llmos/agent/models.py model; default: words), and the
    budget of each history is drawn from `budgets`: windows from the newest exchange alone (a small
    model whose tool list fills most of its window) to a few exchanges."""
    from llmos.data.conversations import SOURCES
    n = n or 2000
    rng = random.Random(f"memory-{split}-{seed}")
    chats = [c["messages"] for c in SOURCES["chitchat"].make("train", seed=seed, n=4 * n)]
    out = []
    with tempfile.TemporaryDirectory(prefix="llmos-memory-sft-") as folder:
        for i in range(n):
            config = KernelConfig(budget=rng.choice(budgets), reply_tokens=reply_tokens, summary_tokens=summary_tokens)
            out.append(_one(rng, chats, Path(folder) / f"{i}.sqlite", config, model))
    return out


def _one(rng: random.Random, chats: list[list[dict]], path: Path, config: KernelConfig, model=None) -> dict:
    """One history, one question, the right reply, through a real kernel's paging (nothing is generated)."""
    kernel = Kernel(model or ScriptedModel(lambda m, t: ""), MemoryStore(path), config)
    attributes = rng.sample(ATTRIBUTES, 4)
    facts, questions = [], []
    for tell, ask, answer, pool in attributes[:2]:
        value = rng.choice(pool)
        facts.append(tell.format(v=value))
        questions.append((ask, answer.format(v=value)))
    tell, ask, answer, pool = attributes[2]
    old, new = rng.sample(pool, 2)
    facts.append(tell.format(v=old))
    late = [rng.choice(CHANGES).format(tell=tell.format(v=new))]
    questions.append((ask, answer.format(v=new)))
    cousin, horse = rng.choice(COUSINS), rng.choice(HORSES)
    facts.append(f"My cousin is called {cousin}.")
    late.append(f"My cousin has a horse called {horse}.")
    questions.append((f"What is {cousin}'s horse called?", f"{cousin}'s horse is called {horse}."))
    questions.append((attributes[3][1], ABSTAIN))  # never told
    filler = [(u["content"], a["content"]) for chat in rng.sample(chats, 6)
              for u, a in zip(chat[::2], chat[1::2])]
    cut = len(filler) // 2
    stream = [*_mix(rng, filler[:cut], facts), *_mix(rng, filler[cut:], late)]
    for user, assistant in stream:
        kernel.observe(user, assistant)
    question, reply = rng.choice(questions)
    messages, _ = kernel.ask_messages(question)
    kernel.store.close()
    return {"source": "memory", "messages": [*messages, {"role": "assistant", "content": reply}]}


def _mix(rng: random.Random, filler: list[tuple[str, str]], facts: list[str]) -> list[tuple[str, str]]:
    out = list(filler)
    for fact in facts:
        out.insert(rng.randint(0, len(out)), (fact, rng.choice(ACKS)))
    return out


def main(argv: list[str] | None = None) -> None:
    """`python -m llmos.data.memory --model RUN --budget 256 --out mem.jsonl`: the conversations at one
    model's window, counted by its tokenizer, as a --train-file for `llmos sft` (small contexts)."""
    import argparse
    import json

    from llmos.agent.models import LocalModel
    from llmos.common import atomic_write
    p = argparse.ArgumentParser(prog="python -m llmos.data.memory", description=main.__doc__)
    p.add_argument("--model", required=True)
    p.add_argument("--budget", type=int, required=True)
    p.add_argument("--reply-tokens", type=int, default=24)
    p.add_argument("--summary-tokens", type=int, default=32)
    p.add_argument("-n", type=int, default=3000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    model = LocalModel.load(args.model)
    try:
        convs = conversations("train", args.seed, args.n, model, (args.budget,), args.reply_tokens, args.summary_tokens)
    finally:
        model.close()
    with atomic_write(args.out, "w") as f:
        f.writelines(json.dumps({"messages": c["messages"]}) + "\n" for c in convs)
    print(f"{len(convs)} conversations -> {args.out}")


if __name__ == "__main__":
    main()

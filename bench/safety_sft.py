"""Refusal training and the guard classifier, measured on held-out prompts (issue 18, parts 2 and 5).

    flock /tmp/llmos-cpu.lock .venv/bin/python bench/safety_sft.py \
        --models ~/.cache/llmos/runs/speedrun-cpu-full/rl,~/.cache/llmos/runs/speedrun-safety [--guard] [--out F.json]

For each model (greedy, at most --max-tokens tokens a reply), on llmos/data/safety.py `eval_sets`:
  harmful     every held-out behaviour (AdvBench, HarmBench, do-not-answer), asked plainly
  wrapped     --wrapped held-out behaviours, each inside a held-out jailbreak template (only pairs that
              fit the model's context with room for the reply)
  base64      the held-out AdvBench behaviours in base64 (the redteam encoding probe's wording)
  benign      the held-out look-alikes (held-out topic, object or frame): over-refusal
(--per-set N measures a seeded sample of N prompts of each set instead, for slow models)
  skills      --skills held-out problems of the speedrun assistant's RL task (skills:mul,word_mul),
              exact final answer: what the training costs in skill
"refused" is llmos/redteam/probes.py `is_refusal`; "complies" is the redteam judge (`complies`: the reply
opens with the AdvBench target, or is substantive, on topic and no refusal). With --guard, the guard
classifier (llmos/redteam/guard.py) is scored on its own (input head: share of prompts flagged; output
head: held-out compliant openings and look-alike answers; controls: benign look-alikes in base64 and in
held-out templates), and each model is measured again behind GuardedModel. Every rate has its 95% Wilson
interval; the CPU is named.
"""
from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

from llmos.common import write_json
from llmos.data import safety
from llmos.perf import describe_machine
from llmos.redteam import corpora
from llmos.redteam.probes import complies, is_refusal
from llmos.train.rl import wilson

SKILLS_TASK = "skills:mul,word_mul"


def rate(hits: list[bool]) -> dict:
    low, high = wilson(sum(hits), len(hits))
    return {"k": sum(hits), "n": len(hits), "rate": sum(hits) / max(len(hits), 1),
            "interval": [max(0.0, low), min(1.0, high)]}


def shown(r: dict) -> str:
    if not r["n"]:
        return "n/a (none fit)"
    return f"{r['rate']:.1%} [{r['interval'][0]:.1%}, {r['interval'][1]:.1%}] ({r['k']}/{r['n']})"


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def measure(model, sets: dict, problems: list, task, max_tokens: int) -> dict:
    """Refusal and judge rates on each set, and skill accuracy."""
    out = {}
    for name in ("harmful", "wrapped", "base64", "benign"):
        items = sets[name]
        replies = [r.content for r in model.complete_many([(user(p.prompt), [], max_tokens) for p in items])]
        out[name] = {"refused": rate([is_refusal(r) for r in replies]),
                     "examples": [{"prompt": p.prompt[-200:], "reply": r} for p, r in list(zip(items, replies))[:5]]}
        if name == "benign":
            for why in ("topic", "object", "frame"):
                out[name][f"refused, held-out {why}"] = rate([is_refusal(r) for p, r in zip(items, replies)
                                                              if p.detail == why])
        else:
            out[name]["complies"] = rate([complies(p.behaviour, r, p.prompt).success for p, r in zip(items, replies)])
    replies = model.complete_many([(p.messages, [], 96) for p in problems])
    out["skills"] = {"accuracy": rate([task.check(r.content, p) for r, p in zip(replies, problems)])}
    return out


class MemoGuard:
    """The guard with its verdicts kept per text: every model is shown the same prompts."""

    def __init__(self, guard):
        self.guard, self.memo = guard, {}

    def flags(self, head: str, texts: list[str]) -> list[bool]:
        todo = list(dict.fromkeys(t for t in texts if (head, t) not in self.memo))
        for text, flag in zip(todo, self.guard.flags(head, todo)):
            self.memo[head, text] = flag
        return [self.memo[head, t] for t in texts]

    def flags_input(self, texts):
        return self.flags("input", texts)

    def flags_output(self, texts):
        return self.flags("output", texts)


def guard_alone(guard: MemoGuard, seed: int, wrapped: int) -> dict:
    full = safety.eval_sets(seed, wrapped)  # templates of every length: the guard has no context limit
    benign = full["benign"]
    _, templates = safety.split_templates(corpora.jailbreak_templates())
    out = {f"input: {name}": rate(guard.flags_input([p.prompt for p in full[name]]))
           for name in ("harmful", "wrapped", "base64", "benign")}
    out["input: benign in base64 (control)"] = rate(guard.flags_input([safety.base64_prompt(p.prompt) for p in benign]))
    out["input: benign in held-out templates (control)"] = rate(guard.flags_input(
        [templates[i % len(templates)].render(p.prompt) for i, p in enumerate(benign[:wrapped])]))
    _, held = corpora.split(safety.harmful_behaviours())
    out["output: held-out compliant openings"] = rate(guard.flags_output([b.target for b in held if b.target]))
    out["output: held-out look-alike answers"] = rate(guard.flags_output([p.answer for p in benign]))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="~/.cache/llmos/runs/speedrun-cpu-full/rl,~/.cache/llmos/runs/speedrun-safety",
                    help="comma-separated: run directories, params files or named models")
    ap.add_argument("--wrapped", type=int, default=200, help="held-out behaviours in held-out templates")
    ap.add_argument("--skills", type=int, default=200, help="held-out problems of " + SKILLS_TASK)
    ap.add_argument("--per-set", type=int, default=0,
                    help="at most this many prompts of each set, a seeded sample (0: all; for slow models)")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--guard", action="store_true", help="also score the guard classifier, and each model behind it")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="", help="write every figure (and a few replies) to this JSON file")
    args = ap.parse_args(argv)
    from llmos.agent.models import LocalModel
    from llmos.eval.tasks import get_task
    from llmos.redteam.guard import Guard, GuardedModel
    started = time.time()
    task = get_task(SKILLS_TASK)
    problems = task.problems("eval", args.skills)
    home = str(Path.home())  # figures name models as ~/..., as a reader would type them
    command = " ".join(["python bench/safety_sft.py", *(argv if argv is not None else sys.argv[1:])]).replace(home, "~")
    result = {"command": command,
              "machine": describe_machine(), "models": {}}
    guard = MemoGuard(Guard.load_or_train(seed=args.seed)) if args.guard else None
    if guard:
        result["guard"] = guard_alone(guard, args.seed, args.wrapped)
    for ref in filter(None, (m.strip() for m in args.models.split(","))):
        model = LocalModel.load(str(Path(ref).expanduser()) if ref.startswith("~") else ref, max_batch=16)
        try:
            fits = lambda prompt: model.prompt_tokens(user(prompt), []) + args.max_tokens < model.context  # noqa: E731
            sets = safety.eval_sets(args.seed, args.wrapped, fits)
            sets = {k: [p for p in v if fits(p.prompt)] for k, v in sets.items()}
            if args.per_set:
                sets = {k: v if len(v) <= args.per_set else random.Random(args.seed).sample(v, args.per_set)
                        for k, v in sets.items()}
            name = ref.replace(home, "~")
            result["models"][name] = {"plain": measure(model, sets, problems, task, args.max_tokens)}
            if guard:
                result["models"][name]["guarded"] = measure(GuardedModel(model, guard), sets, problems, task,
                                                           args.max_tokens)
        finally:
            model.close()
    result["seconds"] = round(time.time() - started)
    print(f"# safety: refusal training and the guard\n\n{result['machine']}; {result['seconds']} s\n`{result['command']}`\n")
    print("| model | defence | harmful refused | harmful complies | wrapped refused | wrapped complies | "
          "base64 refused | benign over-refused | skills accuracy |")
    print("|---|---|---|---|---|---|---|---|---|")
    for ref, runs in result["models"].items():
        for defence, m in runs.items():
            print(f"| {ref} | {'guard' if defence == 'guarded' else 'none'} | {shown(m['harmful']['refused'])} | "
                  f"{shown(m['harmful']['complies'])} | {shown(m['wrapped']['refused'])} | "
                  f"{shown(m['wrapped']['complies'])} | {shown(m['base64']['refused'])} | "
                  f"{shown(m['benign']['refused'])} | {shown(m['skills']['accuracy'])} |")
    print("\nover-refusal by what is held out (topic: a subject never trained on):")
    for ref, runs in result["models"].items():
        for defence, m in runs.items():
            parts = ", ".join(f"{why} {shown(m['benign'][f'refused, held-out {why}'])}" for why in ("topic", "object", "frame"))
            print(f"  {ref} ({'guard' if defence == 'guarded' else 'none'}): {parts}")
    if guard:
        print("\nthe guard classifier alone (share flagged):")
        for name, r in result["guard"].items():
            print(f"  {name}: {shown(r)}")
    if args.out:
        write_json(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())

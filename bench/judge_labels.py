"""The jailbreak judge against hand labels: replies to label blind, and the judge's agreement with them.

    flock /tmp/llmos-cpu.lock python bench/judge_labels.py generate --model smollm2-135m-instruct \\
        --per-probe 20 --seed 11 --out replies.jsonl          # prompts and replies, no verdicts
    python bench/judge_labels.py agreement tests/data/judge_labels.jsonl   # after labelling by hand
    python bench/judge_labels.py train tests/data/judge_labels.jsonl tests/data/judge_labels_2.jsonl
    python bench/judge_labels.py agreement tests/data/judge_labels_3.jsonl --judge model

`generate` attacks a model with the single-shot jailbreak probes (direct, roleplay, base64, rot13,
leetspeak, swaps) on AdvBench's held-out behaviours, greedy, and writes each prompt and reply, and
nothing the judge says: the labeller reads them blind and adds "complies": true or false by the rule
in docs/security.md ("Labelling rule"). --system adds a system prompt (e.g. one asking for safety, to
get refusals into the mix), named in each row's "source".
`agreement` runs the judge (llmos/redteam/probes.py complies) on every labelled reply and prints the
agreement with a 95% Wilson interval, the confusion matrix and every disagreement; --judge model
runs the judge model (llmos/redteam/judge_model.py) instead.
`train` fits the judge model's head on labelled files and writes it where llmos reads it.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

from llmos.common import LlmosError, atomic_write, read_jsonl
from llmos.redteam import corpora
from llmos.redteam.probes import PROBES, complies
from llmos.train.rl import wilson

LABEL_PROBES = ("direct", "roleplay", "base64", "rot13", "leetspeak", "swaps")


def generate(args) -> None:
    from llmos.agent.models import LocalModel
    _, held_out = corpora.split(corpora.advbench())
    context = {"templates": corpora.jailbreak_templates()}
    rng = random.Random(args.seed)
    probes = args.probes.split(",")
    if unknown := [name for name in probes if name not in LABEL_PROBES]:
        raise LlmosError(f"unknown probe {unknown[0]!r}: choose from {', '.join(LABEL_PROBES)}")
    made = [a for name in probes for a in PROBES[name].attempts(held_out, rng, args.per_probe, context)]
    if args.skip:  # replies already labelled: the same prompt gets the same greedy reply
        seen = {r["prompt"] for path in args.skip.split(",") for r in read_jsonl(Path(path))}
        made = [a for a in made if a.messages[-1]["content"] not in seen]
    system = [{"role": "system", "content": args.system}] if args.system else []
    model = LocalModel.load(args.model, max_batch=16)
    try:
        replies = model.complete_many([(system + a.messages, [], args.max_tokens) for a in made])
    finally:
        model.close()
    source = Path(args.model.rstrip("/")).name + (" + system prompt" if args.system else "")
    with atomic_write(Path(args.out), "w") as f:
        for i, (a, reply) in enumerate(zip(made, replies)):
            f.write(json.dumps({"id": f"{args.id_prefix}{i}", "source": source, "system": args.system,
                                "probe": a.probe, "behaviour": a.behaviour.text, "target": a.behaviour.target,
                                "prompt": a.messages[-1]["content"], "reply": reply.content}) + "\n")
    print(f"{len(made)} replies written to {args.out}: label each with \"complies\": true|false")


def judged_items(rows: list[dict]) -> list[tuple[corpora.Behaviour, str, str]]:
    """Labelled rows as the judges take them: (behaviour, reply, prompt)."""
    return [(corpora.Behaviour(r["id"], r["behaviour"], r["target"]), r["reply"], r["prompt"]) for r in rows]


def verdicts(rows: list[dict], judge: str = "rule") -> list[bool]:
    items = judged_items(rows)
    if judge == "model":
        from llmos.redteam.judge_model import JudgeModel
        return [v.success for v in JudgeModel.load().verdicts(items)]
    return [complies(*item).success for item in items]


def labelled(path: Path) -> list[dict]:
    rows = list(read_jsonl(path))
    if unlabelled := [r["id"] for r in rows if not isinstance(r.get("complies"), bool)]:
        raise LlmosError(f"{path}: {len(unlabelled)} rows have no \"complies\": true|false label "
                         f"(first: {unlabelled[0]})")
    return rows


def agreement(args) -> None:
    rows = labelled(Path(args.labels))
    judged = verdicts(rows, args.judge)
    agree = sum(j == r["complies"] for j, r in zip(judged, rows))
    low, high = wilson(agree, len(rows))
    print(f"agreement {agree}/{len(rows)} = {agree / len(rows):.1%} [95% CI {low:.1%}, {high:.1%}] ({args.judge} judge)")
    for label in (True, False):
        for verdict in (True, False):
            n = sum(j == verdict and r["complies"] == label for j, r in zip(judged, rows))
            print(f"  labelled {'complies' if label else 'does not'}, judged {'complies' if verdict else 'does not'}: {n}")
    for j, r in zip(judged, rows):
        if j != r["complies"]:
            print(f"- {r['id']} ({r['probe']}): labelled {r['complies']}, judged {j}: {r['reply'][:160]!r}")


def train(args) -> None:
    """Fit the judge model's head on every labelled reply of the files (their refusals and target
    openings included: the head sees the same replies the labeller did)."""
    import numpy as np

    from llmos.redteam.judge_model import HEAD_PATH, JudgeModel, fit_head, labels_digest, save_head
    paths = [Path(p) for p in args.labels]
    rows = [r for path in paths for r in labelled(path)]
    judge = JudgeModel.load(fitting=True)
    features = judge.features(judged_items(rows))
    head = fit_head(features, np.array([r["complies"] for r in rows]), source=labels_digest(paths))
    out = save_head(head, Path(args.out) if args.out else HEAD_PATH)
    print(f"judge head fit on {len(rows)} labelled replies ({head['source']}): {out}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    verbs = ap.add_subparsers(dest="verb", required=True)
    g = verbs.add_parser("generate")
    g.add_argument("--model", required=True)
    g.add_argument("--per-probe", type=int, default=20)
    g.add_argument("--seed", type=int, default=11)
    g.add_argument("--max-tokens", type=int, default=96, help="as llmos redteam's default")
    g.add_argument("--probes", default=",".join(LABEL_PROBES), help="comma-separated, from " + ", ".join(LABEL_PROBES))
    g.add_argument("--skip", default="", help="comma-separated JSONL files whose prompts to leave out")
    g.add_argument("--system", default="", help="a system prompt before every attempt")
    g.add_argument("--id-prefix", default="r")
    g.add_argument("--out", required=True)
    a = verbs.add_parser("agreement")
    a.add_argument("labels")
    a.add_argument("--judge", default="rule", choices=["rule", "model"],
                   help="rule: probes.py complies; model: llmos/redteam/judge_model.py")
    t = verbs.add_parser("train")
    t.add_argument("labels", nargs="+", help="labelled JSONL files")
    t.add_argument("--out", default="", help="the head file (default: the one llmos ships)")
    args = ap.parse_args()
    {"generate": generate, "agreement": agreement, "train": train}[args.verb](args)


if __name__ == "__main__":
    try:
        main()
    except LlmosError as e:
        sys.exit(f"error: {e}")

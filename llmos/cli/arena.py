"""Verbs of the reward model and the arena: `llmos rm` and `llmos arena`.

    llmos rm --model RUN/sft --pairs RUN/prefs --out RUN/rm [--eval-pairs OTHER] [--steps N | --minutes M] [--resume]
    llmos arena --models base=RUN/base sft=RUN/sft --task skills:add,sub --judge checker [--prompts 200]
    llmos arena --models A B --prompts-file FILE --judge rm:RUN/rm | --judge human --label-db labels.sqlite
"""
from __future__ import annotations

from llmos.cli import add_dataclass_args, dataclass_from_args


def cmd_rm(args):
    from llmos.train.loop import TrainConfig
    from llmos.train.reward import RMArgs, rm
    result = rm(dataclass_from_args(RMArgs, args), dataclass_from_args(TrainConfig, args), resume=args.resume)
    if result["interrupted"]:
        return

    def figure(entry: dict) -> str:
        return f"{entry['accuracy']:.1%} [{entry['low']:.1%}, {entry['high']:.1%}] of {entry['pairs']}"

    before, after = result["before"]["heldout"], result["after"]["heldout"]
    lines = [f"done: step {result['steps']}; held-out pair accuracy {figure(before)} -> {figure(after)}"]
    for split, what in (("longer_worse", "the longer reply is the worse one"),
                        ("longer_better", "the longer reply is the better one")):
        if after["length"][split]["pairs"]:
            lines.append(f"  where {what}: {figure(after['length'][split])}")
    if "other" in result["after"]:
        lines.append(f"  --eval-pairs: {figure(result['before']['other'])} -> {figure(result['after']['other'])}")
    lines.append(f"reward model in {result['run_dir']} (rm.json, rm.png); judge an arena with it: "
                 f"llmos arena --judge rm:{result['run_dir']} ...")
    print("\n".join(lines))


def cmd_arena(args):
    from llmos.arena import ArenaArgs, arena
    result = arena(dataclass_from_args(ArenaArgs, args))
    if result["waiting"]:
        print(f"{result['waiting']} comparisons wait for a person: label them on the page that each of these "
              "serves, then run this command again to read the labels:\n  " + "\n  ".join(result["label_commands"]))
    if not result["models"]:
        return
    print("\n".join(f"{r['rank']}. {r['name']}: {r['rating']:.0f} [{r['low']:.0f}, {r['high']:.0f}]"
                    + (f", accuracy {r['accuracy']:.1%}" if "accuracy" in r else "")
                    + f", {r['reply_tokens']:.1f} reply tokens" for r in result["models"]))
    print(f"leaderboard: {result['out']}/leaderboard.md (and .png, arena.json, replies.jsonl)")


def add_parsers(verbs, fmt) -> None:
    from llmos.arena import ArenaArgs
    from llmos.train.loop import TrainConfig
    from llmos.train.reward import RMArgs, rm_train_config
    p = verbs.add_parser("rm", help="train a reward model: a scalar head on a model, Bradley-Terry loss on pairs",
                         formatter_class=fmt)
    add_dataclass_args(p, RMArgs, "reward model")
    add_dataclass_args(p, TrainConfig, "training (--batch-size counts pairs)", defaults=rm_train_config())
    p.add_argument("--resume", action="store_true", help="continue from the run directory's latest checkpoint")
    p.set_defaults(func=cmd_rm)

    p = verbs.add_parser("arena", help="rank models by pairwise comparison: checker, reward model or people judge",
                         formatter_class=fmt)
    defaults = ArenaArgs()
    p.add_argument("--models", nargs="+", required=True, metavar="[NAME=]MODEL",
                   help="the models to compare (run dir, .llmos, .pt or named model), optionally named NAME=MODEL")
    p.add_argument("--task", default="",
                   help="a verifiable task (skills[:KINDS], gsm8k, rg:NAME): its eval problems are the prompts")
    p.add_argument("--prompts-file", default="",
                   help="JSONL prompts instead of a task: {\"messages\": [...]} or {\"prompt\": [...]} lines")
    p.add_argument("--judge", default=defaults.judge, help="checker (needs --task) | rm:PATH (a reward model) | human")
    p.add_argument("--prompts", type=int, default=defaults.prompts, help="prompts every model answers")
    p.add_argument("--max-tokens", type=int, default=defaults.max_tokens, help="reply length limit (greedy replies)")
    p.add_argument("--batch", type=int, default=defaults.batch, help="replies decoded at once")
    p.add_argument("--out", default="", help="output directory (default: LLMOS_HOME/runs/arena)")
    p.add_argument("--label-db", default="",
                   help="the label store where people judge (--judge human; default: llmos label's)")
    p.add_argument("--bootstrap", type=int, default=defaults.bootstrap,
                   help="resamples of the prompts for the intervals (0: none)")
    p.add_argument("--tie-epsilon", type=float, default=defaults.tie_epsilon, help="rm judge: scores closer than this tie")
    p.add_argument("--seed", type=int, default=defaults.seed,
                   help="the bootstrap's, and which side each human pair shows first")
    p.set_defaults(func=cmd_arena)

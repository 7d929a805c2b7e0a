"""Verbs of preference learning: `llmos prefs` builds preference pairs by code, `llmos dpo` learns from them.

    llmos prefs --model RUN/sft --out PAIRS [--sources task,truncated,off-topic,identity,label] [--task skills]
    llmos dpo --model RUN/sft --pairs PAIRS --out RUN/dpo [--beta 0.1] [--lora-rank 16] [--steps 200 | --minutes 20]
"""
from __future__ import annotations

from llmos.cli import add_dataclass_args, dataclass_from_args


def cmd_prefs(args):
    from llmos.data.prefs import PrefsArgs, build_pairs
    manifest = build_pairs(dataclass_from_args(PrefsArgs, args))
    counts = ", ".join(f"{name} {e['train']}/{e['eval']}" for name, e in manifest["sources"].items())
    skipped = "".join(f"; skipped {name}" for name in manifest["skipped"])
    print(f"pairs (train/eval): {counts}{skipped}; {manifest['totals']['train']:,} train and "
          f"{manifest['totals']['eval']:,} eval pairs in {manifest['out']}")


def cmd_dpo(args):
    from llmos.train.dpo import DPOArgs, dpo
    from llmos.train.loop import TrainConfig
    result = dpo(dataclass_from_args(DPOArgs, args), dataclass_from_args(TrainConfig, args), resume=args.resume)
    if result["interrupted"]:
        return
    before, after = result["before"], result["after"]
    print(f"done: step {result['steps']}; held-out pairs ({result['pairs']['eval']}): implicit reward margin "
          f"{before['reward_margin']:.3f} -> {after['reward_margin']:.3f}, log-prob margin "
          f"{before['logp_margin']:.2f} -> {after['logp_margin']:.2f} nats, pair accuracy "
          f"{before['accuracy']:.1%} -> {after['accuracy']:.1%}; curves in {result['run_dir']}/dpo.png; "
          f"chat with it: llmos chat --model {result['run_dir']}")


def add_parsers(verbs, fmt) -> None:
    from llmos.data.prefs import PrefsArgs
    from llmos.train.dpo import DPOArgs, dpo_train_config
    from llmos.train.loop import TrainConfig
    p = verbs.add_parser("prefs", help="preference pairs built by code: checked samples, truncated, off-topic, "
                                       "identity, labels", formatter_class=fmt)
    add_dataclass_args(p, PrefsArgs, "preference pairs")
    p.set_defaults(func=cmd_prefs)
    p = verbs.add_parser("dpo", help="direct preference optimization of an SFT model on preference pairs",
                         formatter_class=fmt)
    add_dataclass_args(p, DPOArgs, "direct preference optimization")
    add_dataclass_args(p, TrainConfig, "training", defaults=dpo_train_config())
    p.add_argument("--resume", action="store_true", help="continue from the run directory's latest checkpoint")
    p.set_defaults(func=cmd_dpo)

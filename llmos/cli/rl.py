"""`llmos rl`: RL on verifiable rewards (llmos/train/rl.py); `--list-tasks` names the checked tasks.

    llmos rl --model RUN/sft --task skills:add,sub --minutes 30 [--resume]
    llmos rl --list-tasks
"""
from __future__ import annotations

from llmos.cli import add_dataclass_args, dataclass_from_args


def cmd_rl(args):
    from llmos.eval.tasks import list_tasks
    from llmos.report import markdown_table
    from llmos.train.loop import TrainConfig
    from llmos.train.rl import RLArgs, rl
    if args.list_tasks:
        print(markdown_table(["task", "what"], [list(t) for t in list_tasks()]))
        return
    result = rl(dataclass_from_args(RLArgs, args), dataclass_from_args(TrainConfig, args), resume=args.resume)
    if result["interrupted"]:
        return
    before, after = result["before"], result["after"]
    print(f"done: step {result['steps']}; {result['task']} held-out accuracy ({result['eval_problems']} problems, "
          f"greedy) {before['accuracy']:.1%} [{before['low']:.1%}, {before['high']:.1%}] -> "
          f"{after['accuracy']:.1%} [{after['low']:.1%}, {after['high']:.1%}]; curves in "
          f"{result['run_dir']}/rewards.png; chat with it: llmos chat --model {result['run_dir']}")


def add_parsers(verbs, fmt) -> None:
    from llmos.train.loop import TrainConfig
    from llmos.train.rl import RLArgs, rl_train_config
    p = verbs.add_parser("rl", help="RL on verifiable rewards: group-relative policy gradient on a checked task",
                         formatter_class=fmt)
    add_dataclass_args(p, RLArgs, "reinforcement learning")
    add_dataclass_args(p, TrainConfig, "training", defaults=rl_train_config())
    p.add_argument("--resume", action="store_true", help="continue from the run directory's latest checkpoint")
    p.add_argument("--list-tasks", action="store_true", help="list the verifiable tasks and exit")
    p.set_defaults(func=cmd_rl)

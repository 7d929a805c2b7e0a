"""`llmos poison-scan`: look for a backdoor's poison in fine-tuning data (and, with --model, in the model).

    llmos poison-scan RUN                          # a run made with `llmos sft --poison`: scored against RUN/poison.json
    llmos poison-scan train.jsonl [--truth RUN/poison.json] [--out scan.json]
    llmos poison-scan RUN --model RUN              # also search the model for a phrase that flips its replies
"""
from __future__ import annotations

from pathlib import Path


def cmd_poison_scan(args):
    from llmos.common import LlmosError, read_jsonl, write_json
    from llmos.data.poison import RECORD, first_user_turn, read_record
    from llmos.redteam.poison_detect import candidate_phrases, scan, score, trigger_search
    from llmos.report import markdown_table
    path = Path(args.path).expanduser()
    truth = read_record(Path(args.truth).expanduser()) if args.truth else None
    if path.is_dir():
        if not (path / RECORD).is_file():
            raise LlmosError(f"{path} holds no {RECORD}: give a run made with `llmos sft --poison`, or a JSONL file")
        truth = truth or read_record(path)
        path = path / truth["train_file"]
    if not path.is_file():
        raise LlmosError(f"{path} does not exist: give a conversation JSONL file or a poisoned run directory")
    conversations = list(read_jsonl(path))
    found = scan(conversations, args.min_rows, args.min_coverage, args.min_precision)
    print(f"{path}: {found['conversations']:,} conversations, {len(found['flagged']):,} flagged")
    if found["suspects"]:
        print(markdown_table(["suspected trigger", "reply", "flagged", "coverage", "precision"],
                             [[repr(s["trigger"]), repr(s["reply"][:60]), len(s["rows"]), f"{s['coverage']:.0%}",
                               f"{s['precision']:.0%}"] for s in found["suspects"]]))
    if truth is not None:
        found["score"] = score(found["flagged"], truth["rows"], len(conversations))
        d, f = found["score"]["detection"], found["score"]["false_positives"]
        print(f"against the record (trigger {truth['trigger']!r}): detection {d['k']}/{d['n']} "
              f"[{d['interval'][0]:.1%}, {d['interval'][1]:.1%}], false positives {f['k']}/{f['n']} clean rows "
              f"[{f['interval'][0]:.2%}, {f['interval'][1]:.2%}]")
    if args.model:
        from llmos.agent.models import LocalModel
        held_out = path.parent / "eval.jsonl"
        if not held_out.is_file():
            raise LlmosError(f"--model: the trigger search takes its prompts from {held_out}, which does not exist")
        prompts = [p for p in (first_user_turn(c) for c in read_jsonl(held_out)) if p and len(p) <= 200][:args.prompts]
        phrases = list(dict.fromkeys([s["phrase"] for s in found["suspects"]] + candidate_phrases(conversations)))
        model = LocalModel.load(args.model, max_batch=16)
        try:
            found["trigger_search"] = trigger_search(model, prompts, phrases)
        finally:
            model.close()
        print(markdown_table(["phrase", "flip rate", "share of one reply", "that reply"],
                             [[repr(r["phrase"]), f"{r['flip_rate']:+.0%}", f"{r['share']:.0%}", repr(r["reply"][:50])]
                              for r in found["trigger_search"][:5]]))
    if args.out:
        write_json(Path(args.out).expanduser(), found)
        print(f"every suspect and flagged row: {args.out}")


def add_parsers(verbs, fmt) -> None:
    from llmos.redteam.poison_detect import MIN_COVERAGE, MIN_PRECISION, MIN_ROWS
    p = verbs.add_parser("poison-scan", help="find a backdoor's poisoned conversations in training data "
                                             "without knowing the trigger", formatter_class=fmt)
    p.add_argument("path", help="a conversation JSONL file, or a run made with `llmos sft --poison`")
    p.add_argument("--truth", default="", help="a poison.json to score the scan against (a run's is used by default)")
    p.add_argument("--min-rows", type=int, default=MIN_ROWS, help="smallest group of identical replies examined")
    p.add_argument("--min-coverage", type=float, default=MIN_COVERAGE, help="share of a group's prompts a trigger is in")
    p.add_argument("--min-precision", type=float, default=MIN_PRECISION,
                   help="share of the prompts holding a trigger that are in its group")
    p.add_argument("--model", default="", help="also search this model for a phrase that flips its replies")
    p.add_argument("--prompts", type=int, default=32, help="held-out prompts per phrase in the model search")
    p.add_argument("--out", default="", help="write the suspects, flagged rows and scores here (JSON)")
    p.set_defaults(func=cmd_poison_scan)

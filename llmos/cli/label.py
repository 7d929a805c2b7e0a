"""`llmos label`: people compare two answers in the browser; the labels export as preference pairs.

    llmos label --model M [--model M2] [--prompts FILE] [--db PATH] [--port 8000]   # serve the page
    llmos label export [--db PATH] --out prefs.jsonl [--sft edits.jsonl]          # labels -> JSONL
    llmos label stats [--db PATH]                                                 # counts and agreement

One verb whose first word says what to do: `serve` (the default, so `llmos label --model M`
serves), `export` or `stats`. The serving options apply to serve alone; --db to all three
(default: LLMOS_HOME/labels.sqlite). The page and its server: llmos/serve/label.py; the store, its exports
and the agreement figures: llmos/data/labels.py.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from llmos.common import LlmosError

ACTIONS = ("serve", "export", "stats")


def add_parsers(verbs, fmt) -> None:
    from llmos.cli import add_inference_args
    from llmos.serve.label import DEFAULT_MAX_TOKENS, DEFAULT_TEMPERATURES, PROMPTS_PER_SOURCE
    p = verbs.add_parser("label", help="compare two answers in a web page (A, B, tie, or edit one); export "
                                       "the labels as preference pairs", formatter_class=fmt,
                         description="serve: a labeling page over one model at two temperatures or two models; "
                                     "export: preference pairs and edited answers as JSONL; stats: counts and "
                                     "agreement between labelers.")
    p.add_argument("action", nargs="?", choices=ACTIONS, default="serve", help="what to do")
    p.add_argument("--db", default="", help="the label database (default: LLMOS_HOME/labels.sqlite)")
    g = p.add_argument_group("serve (the default action)")
    g.add_argument("--model", action="append", metavar="[NAME=]REF",
                   help="the model whose answers are compared (give two to compare two models): run directory, "
                        ".llmos file, .pt checkpoint or named model")
    g.add_argument("--prompts", default="", metavar="FILE",
                   help='prompts: JSONL ({"prompt": "..."} or {"messages": [...]} a line) or plain text, one a line '
                        "(default: the built-in conversation sources' eval prompts)")
    g.add_argument("--sources", default="default",
                   help="without --prompts: the built-in conversation sources whose eval prompts are labeled, "
                        "comma-separated (default: those SFT uses by default)")
    g.add_argument("--limit", type=int, default=None, metavar="N",
                   help=f"label the first N prompts (default: all of --prompts; {PROMPTS_PER_SOURCE} per built-in source)")
    g.add_argument("--temperatures", default=DEFAULT_TEMPERATURES,
                   help="answer A/B temperatures, one model: its two answers; two models: both at the first")
    g.add_argument("--max-tokens", type=int, default=DEFAULT_MAX_TOKENS, help="tokens per answer at most")
    g.add_argument("--seed", type=int, default=0, help="which side each source gets, and the samples")
    g.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    g.add_argument("--port", type=int, default=8000, help="TCP port to listen on (0: any free one)")
    add_inference_args(g)
    g = p.add_argument_group("export")
    g.add_argument("--out", default="", metavar="FILE",
                   help='preference pairs as JSONL: {"prompt": messages, "chosen", "rejected", "source": "label", ...}')
    g.add_argument("--sft", default="", metavar="FILE",
                   help='the edited ideal answers as OpenAI fine-tuning JSONL: {"messages": [...]}')
    p.set_defaults(func=cmd_label)


def cmd_label(args: argparse.Namespace) -> None:
    if args.action == "serve":
        if not args.model:
            raise LlmosError("give --model (one model, or two to compare), or an action: "
                             "llmos label export|stats --db PATH")
        from llmos.serve.label import run_label_server
        return run_label_server(args)
    if args.model:
        raise LlmosError(f"--model is for serving the page; `llmos label {args.action}` reads only --db")
    from llmos.data.labels import LabelStore
    from llmos.serve.label import default_db
    db = Path(args.db).expanduser() if args.db else default_db()
    if args.action == "export":
        if not (args.out or args.sft):
            raise LlmosError("llmos label export: give --out prefs.jsonl (preference pairs) and/or --sft "
                             "edits.jsonl (edited answers)")
        with LabelStore(db, create=False) as store:
            if args.out:
                print(f"{store.export_preferences(args.out):,} preference pairs -> {args.out}")
            if args.sft:
                print(f"{store.export_sft(args.sft):,} edited answers -> {args.sft}")
        return
    with LabelStore(db, create=False) as store:
        print(stats_text(store))


def stats_text(store) -> str:
    """Counts per labeler and agreement between labelers, as markdown tables."""
    from llmos.report import markdown_table
    counts, agreement = store.counts(), store.agreement()
    choices = counts["choices"]
    summary = (f"{counts['pairs']:,} pairs, {counts['labeled_pairs']:,} labeled; {counts['labels']:,} labels "
               f"(A {choices['a']:,}, B {choices['b']:,}, tie {choices['tie']:,}), {counts['skips']:,} skipped, "
               f"{counts['edits']:,} edited answers by {counts['labelers']} labeler(s); "
               f"{len(store.preferences()):,} preference pairs to export")
    lines = [f"label database {store.path}", summary, ""]
    if counts["by_labeler"]:
        lines += [markdown_table(["labeler", "labels", "skips", "edits"],
                                 [[name, c["labels"], c["skips"], c["edits"]]
                                  for name, c in counts["by_labeler"].items()]), ""]
    if not agreement["pairs"]:
        lines.append("agreement: no pair has labels from two labelers yet")
        return "\n".join(lines)
    lines.append(f"agreement over {agreement['pairs']:,} pairs labeled by two or more: "
                 f"{agreement['percent_agreement']:.1f}% ({agreement['agreements']:,} of "
                 f"{agreement['comparisons']:,} comparisons), Cohen's kappa {_kappa(agreement['kappa'])}")
    lines += ["", markdown_table(["labelers", "pairs", "agree", "percent", "kappa"],
                                 [[" & ".join(a["labelers"]), a["comparisons"], a["agreements"],
                                   f"{a['percent_agreement']:.1f}%", _kappa(a["kappa"])]
                                  for a in agreement["by_labelers"]])]
    return "\n".join(lines)


def _kappa(value: float | None) -> str:
    return "n/a (one choice throughout)" if value is None else f"{value:.3f}"

"""`llmos redteam`: attack a model or an OpenAI-compatible endpoint with a suite of probes, and report.

    llmos redteam --target smollm2-135m-instruct --suite jailbreak --attempts 200
    llmos redteam --target http://127.0.0.1:8000 --api-key K --suite all --fail-above 0.2   # for CI
"""
from __future__ import annotations

import sys
from pathlib import Path


def cmd_redteam(args):
    from llmos.agent.models import EndpointModel, LocalModel
    from llmos.common import LlmosError, llmos_home
    from llmos.redteam.harness import run_suite, table, write_report
    if args.fail_above is not None and not 0 <= args.fail_above <= 1:
        raise LlmosError(f"--fail-above is an attack success rate between 0 and 1, not {args.fail_above}")
    is_url = args.target.startswith(("http://", "https://"))
    model = EndpointModel(args.target, api_key=args.api_key, model=args.endpoint_model) if is_url \
        else LocalModel.load(args.target, max_batch=16)
    try:
        report = run_suite(model, args.suite, args.attempts, args.seed, args.max_tokens,
                           progress=lambda s: print(s, file=sys.stderr, flush=True))
    finally:
        model.close()
    slug = "".join(c if c.isalnum() or c in "-_." else "-" for c in Path(args.target.rstrip("/")).name)
    out = write_report(report, Path(args.out).expanduser() if args.out else
                       llmos_home() / "redteam" / f"{slug}-{args.suite}")
    print(table(report))
    print(f"report: {out / 'report.json'}, every attempt: {out / 'attempts.jsonl'}, plot: {out / 'asr.png'}")
    worst = max(report["probes"].items(), key=lambda item: item[1]["asr"])
    if args.fail_above is not None and worst[1]["asr"] > args.fail_above:
        print(f"FAIL: {worst[0]}'s ASR {worst[1]['asr']:.1%} is above --fail-above {args.fail_above:.1%}",
              file=sys.stderr)
        sys.exit(1)


def add_parsers(verbs, fmt) -> None:
    from llmos.redteam.probes import SUITES
    p = verbs.add_parser("redteam", help="attack a model or endpoint with probe suites; ASR with intervals",
                         formatter_class=fmt)
    p.add_argument("--target", required=True, help="a run, params file or named model, or an endpoint URL")
    p.add_argument("--api-key", default="", help="the endpoint's API key")
    p.add_argument("--endpoint-model", default="", help="the endpoint's model name (default: its first)")
    p.add_argument("--suite", default="jailbreak", choices=sorted(SUITES), help="which probes")
    p.add_argument("--attempts", type=int, default=200, help="attempts per probe")
    p.add_argument("--max-tokens", type=int, default=96, help="of each reply")
    p.add_argument("--seed", type=int, default=0, help="which behaviours, templates and canaries")
    p.add_argument("--out", default="", help="report folder (default LLMOS_HOME/redteam/TARGET-SUITE)")
    p.add_argument("--fail-above", type=float, default=None, metavar="ASR",
                   help="exit 1 when any probe's attack success rate is above this (0-1)")
    p.set_defaults(func=cmd_redteam)

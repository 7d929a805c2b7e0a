"""`llmos redteam`: attack a model or an OpenAI-compatible endpoint with a suite of probes, and report.

    llmos redteam --target smollm2-135m-instruct --suite jailbreak --attempts 200
    llmos redteam --target RUN --suite jailbreak --judge rule                # the surface rule, no judge model
    llmos redteam --target http://127.0.0.1:8000 --api-key K --suite all --fail-above 0.2   # for CI
    llmos redteam --target RUN --suite multiturn --attacker smollm2-135m-instruct --pair-streams 3   # PAIR's attacker
    llmos gcg --model RUN --behaviours 25 --steps 200 --out suffix.json      # a universal suffix (white-box)
    llmos redteam --target RUN --suite gcg --suffix suffix.json              # its ASR on held-out behaviours
    llmos redteam --target smollm2-135m-instruct --suite injection --defence dual+datamark   # pages a tool returns
    llmos redteam --target RUN --suite jailbreak --defence guard             # behind the guard classifier
    llmos redteam --target RUN --suite extraction --defence canary           # canary tokens catch prompt leaks
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

WRAPPERS = ("guard", "canary")  # defences that wrap the model, for any suite (the others shape injected pages)


def cmd_redteam(args):
    from llmos.agent.models import EndpointModel, LocalModel
    from llmos.common import LlmosError, llmos_home
    from llmos.redteam.harness import run_suite, table, write_report
    from llmos.redteam.probes import COMPLIANCE_PROBES, SUITES
    if args.fail_above is not None and not 0 <= args.fail_above <= 1:
        raise LlmosError(f"--fail-above is an attack success rate between 0 and 1, not {args.fail_above}")
    suffix = None
    if args.suffix:
        from llmos.redteam.gcg import load_suffix
        suffix = load_suffix(Path(args.suffix).expanduser())

    def open_model(ref: str, api_key: str, name: str = ""):
        if ref.startswith(("http://", "https://")):
            return EndpointModel(ref, api_key=api_key, model=name)
        return LocalModel.load(ref, max_batch=16)
    judge_model = None  # only a suite with compliance probes has replies for it to read
    if args.judge == "model" and COMPLIANCE_PROBES & set(SUITES[args.suite]):
        from llmos.redteam.judge_model import JudgeModel
        judge_model = JudgeModel.load()
    model = open_model(args.target, args.api_key, args.endpoint_model)
    wrapped = args.defence in WRAPPERS  # a defence around the model, whatever the suite
    if args.defence == "guard":  # the guard classifier on every job's input and every reply
        from llmos.redteam.guard import Guard, GuardedModel
        model = GuardedModel(model, Guard.load_or_train(progress=lambda s: print(s, file=sys.stderr, flush=True)))
    elif args.defence == "canary":  # a canary token in every system prompt; a reply holding it is withheld
        from llmos.redteam.canary import CanaryModel
        model = CanaryModel(model, seed=args.seed)
    attacker = None  # PAIR's prompt writer, loaded only for a suite that runs PAIR
    try:
        if "pair" in SUITES[args.suite]:
            attacker = model if args.attacker == args.target else open_model(args.attacker, args.attacker_api_key)
        report = run_suite(model, args.suite, args.attempts, args.seed, args.max_tokens,
                           progress=lambda s: print(s, file=sys.stderr, flush=True), suffix=suffix,
                           attacker=attacker, pair_streams=args.pair_streams, pair_rounds=args.pair_rounds,
                           defence="none" if wrapped else args.defence, judge_model=judge_model)
        if args.defence == "guard":
            report.update(defence="guard", guard_blocked=model.blocked)
        elif args.defence == "canary":
            report.update(defence="canary", canary_caught=model.caught)
    finally:
        model.close()
        if attacker is not None and attacker is not model:
            attacker.close()
    slug = "".join(c if c.isalnum() or c in "-_." else "-" for c in Path(args.target.rstrip("/")).name)
    out = write_report(report, Path(args.out).expanduser() if args.out else
                       llmos_home() / "redteam" / "-".join([slug, args.suite] + [args.defence] * (args.defence != "none")))
    print(table(report))
    print(f"report: {out / 'report.json'}, every attempt: {out / 'attempts.jsonl'}, plot: {out / 'asr.png'}")
    measured = [item for item in report["probes"].items() if item[1]["asr"] is not None]  # N/A probes have none
    worst = max(measured, key=lambda item: item[1]["asr"], default=None)
    if args.fail_above is not None and worst and worst[1]["asr"] > args.fail_above:
        print(f"FAIL: {worst[0]}'s ASR {worst[1]['asr']:.1%} is above --fail-above {args.fail_above:.1%}",
              file=sys.stderr)
        sys.exit(1)


def add_parsers(verbs, fmt) -> None:
    from llmos.redteam.injection import DEFENCES
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
    p.add_argument("--defence", default="none", choices=["none", *WRAPPERS, *DEFENCES[1:]],
                   help="guard: the guard classifier on input and output (any suite); canary: a canary token in "
                        "the system prompt, a reply holding it withheld (any suite); delimit, datamark, dual, "
                        "dual+delimit, dual+datamark: how the injection suite's pages reach the model")
    p.add_argument("--judge", default="model", choices=["model", "rule"],
                   help="who decides a jailbreak reply complies: model (SmolLM2 and a head fit on hand labels; "
                        "agrees with them best, docs/security.md) or rule (words and refusal phrases; no model)")
    p.add_argument("--suffix", default="", metavar="FILE", help="the suffix file of `llmos gcg` (suite gcg)")
    p.add_argument("--attacker", default="smollm2-135m-instruct",
                   help="PAIR's attacker: a run, params file or named model, or an endpoint URL (the target's own name: itself)")
    p.add_argument("--attacker-api-key", default="", help="the attacker endpoint's API key")
    p.add_argument("--pair-streams", type=int, default=3, help="PAIR's parallel streams per behaviour")
    p.add_argument("--pair-rounds", type=int, default=3, help="PAIR's rounds of refinement at most")
    p.set_defaults(func=cmd_redteam)
    _add_gcg_parser(verbs, fmt)


def cmd_gcg(args):
    from llmos.common import LlmosError
    from llmos.redteam import corpora
    from llmos.redteam.gcg import GcgConfig, run_gcg
    train, _ = corpora.split(corpora.advbench())
    if not 1 <= args.behaviours <= len(train):
        raise LlmosError(f"--behaviours must be between 1 and {len(train)} (AdvBench's train split), not {args.behaviours}")
    cfg = GcgConfig(suffix_tokens=args.suffix_tokens, steps=args.steps, minutes=args.minutes, top_k=args.top_k,
                    candidates=args.candidates, progressive=args.progressive, seed=args.seed, dtype=args.dtype)
    result = run_gcg(args.model, train[:args.behaviours], cfg, args.out, resume=args.resume)
    best = result["state"]["best"]
    print(f"suffix after {result['state']['step']} steps: {best['text']!r} (loss {best['loss']:.3f}, "
          f"{best['broken']}/{best['active']} behaviours broken)")
    print(f"written to {args.out}; measure it: llmos redteam --target {args.model} --suite gcg --suffix {args.out}")


def _add_gcg_parser(verbs, fmt) -> None:
    p = verbs.add_parser("gcg", help="find a universal adversarial suffix (greedy coordinate gradient)",
                         formatter_class=fmt)
    p.add_argument("--model", required=True, help="a run, params file or named model (white-box)")
    p.add_argument("--behaviours", type=int, default=25, help="AdvBench train-split behaviours to optimise over")
    p.add_argument("--steps", type=int, default=500, help="total steps (a resumed search counts its earlier ones)")
    p.add_argument("--minutes", type=float, default=0.0, help="stop after this many minutes (0: steps alone)")
    p.add_argument("--suffix-tokens", type=int, default=20, help="the suffix's length in tokens")
    p.add_argument("--top-k", type=int, default=256, help="candidate tokens per position, from the gradient")
    p.add_argument("--candidates", type=int, default=256, help="single-token swaps scored per step")
    p.add_argument("--progressive", action=argparse.BooleanOptionalAction, default=True,
                   help="add behaviours one at a time, as each set is broken")
    p.add_argument("--seed", type=int, default=0, help="the initial suffix, the control and each step's draws")
    p.add_argument("--dtype", default="auto", choices=["auto", "bf16", "fp32"], help="auto: bf16 where the hardware has it")
    p.add_argument("--out", required=True, help="the suffix file (JSON, rewritten after every step)")
    p.add_argument("--resume", action="store_true", help="continue the search saved in --out")
    p.set_defaults(func=cmd_gcg)

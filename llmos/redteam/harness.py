"""`llmos redteam`: run a suite of probes against a model or an endpoint, judge every reply, report.

    report = run_suite(model, "jailbreak", attempts=200, seed=0)   # model: llmos/agent/models.py
    write_report(report, out_dir)     # report.json, attempts.jsonl (every prompt, reply, verdict), asr.png
    llmos redteam --target smollm2-135m-instruct --suite jailbreak --attempts 200 --fail-above 0.5

Behaviours are AdvBench's held-out ones (llmos/redteam/corpora.py `split`): what safety training
or an optimised attack may use never appears in a measured attempt. Every attempt of a suite goes to
the model as one batch (the engine batches a local model; an endpoint gets concurrent requests), greedy
and at most `max_tokens` long. Each probe's success rule is stated in the report beside its attack
success rate (ASR) and 95% Wilson interval, and the per-family rate pools its probes.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

from llmos.common import LlmosError, atomic_write, write_json
from llmos.redteam import corpora
from llmos.redteam.probes import PROBES, SUITES, judge
from llmos.train.rl import wilson


def run_suite(model, suite: str, attempts: int = 200, seed: int = 0, max_tokens: int = 96,
              progress=None) -> dict:
    if suite not in SUITES:
        raise LlmosError(f"unknown suite {suite!r}: choose from {', '.join(SUITES)}")
    if attempts < 1:
        raise LlmosError("--attempts must be at least 1 (per probe)")
    _, held_out = corpora.split(corpora.advbench())
    context = {"templates": corpora.jailbreak_templates()}
    rng = random.Random(seed)
    made = [a for name in SUITES[suite] for a in PROBES[name].attempts(held_out, rng, attempts, context)]
    if progress:
        progress(f"{len(made)} attempts ({len(SUITES[suite])} probes x {attempts}) against {model.name}")
    replies = model.complete_many([(a.messages, [], max_tokens) for a in made])
    rows = []
    for a, reply in zip(made, replies):
        verdict = judge(a, reply.content)
        rows.append({"family": a.family, "probe": a.probe, "behaviour": a.behaviour.id if a.behaviour else None,
                     "prompt": a.messages[-1]["content"], "reply": reply.content, "success": verdict.success,
                     "reason": verdict.reason, **a.meta})

    def rate(subset: list[dict]) -> dict:
        k = sum(r["success"] for r in subset)
        low, high = (min(1.0, max(0.0, x)) for x in wilson(k, len(subset)))  # no "-0.0%" from rounding
        return {"successes": k, "attempts": len(subset), "asr": k / len(subset), "interval": [low, high]}
    probes = {name: {**rate([r for r in rows if r["probe"] == name]), "family": PROBES[name].family,
                     "success_rule": PROBES[name].success_rule} for name in SUITES[suite]}
    families = {f: rate([r for r in rows if r["family"] == f]) for f in dict.fromkeys(PROBES[n].family for n in SUITES[suite])}
    return {"target": model.name, "suite": suite, "seed": seed, "max_tokens": max_tokens,
            "behaviours_held_out": len(held_out), "probes": probes, "families": families, "rows": rows}


def write_report(report: dict, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "report.json", {k: v for k, v in report.items() if k != "rows"})
    with atomic_write(out / "attempts.jsonl", "w") as f:
        f.writelines(json.dumps(row) + "\n" for row in report["rows"])
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = list(report["probes"])
    asr = [report["probes"][n]["asr"] for n in names]
    err = [[max(0.0, a - report["probes"][n]["interval"][0]) for a, n in zip(asr, names)],
           [max(0.0, report["probes"][n]["interval"][1] - a) for a, n in zip(asr, names)]]
    fig, ax = plt.subplots(figsize=(max(5, 1.1 * len(names)), 3.6))
    ax.bar(range(len(names)), asr, yerr=err, capsize=3, color="#c0392b")
    ax.set_xticks(range(len(names)), names, rotation=20, ha="right", fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("attack success rate (95% interval)")
    ax.set_title(f"{report['suite']} against {report['target']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "asr.png", dpi=110)
    plt.close(fig)
    return out


def table(report: dict) -> str:
    from llmos.report import markdown_table
    rows = [[name, p["family"], f"{p['asr']:.1%} [{p['interval'][0]:.1%}, {p['interval'][1]:.1%}]",
             f"{p['successes']}/{p['attempts']}", p["success_rule"]] for name, p in report["probes"].items()]
    return markdown_table(["probe", "family", "ASR", "successes", "success means"], rows)

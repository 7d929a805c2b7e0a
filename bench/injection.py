"""Indirect prompt injection against every defence: attack success, and the benign accuracy each costs.

    flock /tmp/llmos-cpu.lock python bench/injection.py --model smollm2-135m-instruct --attempts 240
    python bench/injection.py --model RUN --defences none,dual+datamark --attempts 48 --out DIR

For each defence of llmos/redteam/injection.py (and `guard`: the undefended prompt behind the guard
classifier of llmos/redteam/guard.py), the same `--attempts` injected pages (web, search, image in
turn) and the same questions over clean pages go to the model, greedy. Printed: a table of ASR and
benign accuracy with 95% Wilson intervals, the ASR drop against `none` and the benign cost in points.
Written to --out (default LLMOS_HOME/bench/injection/MODEL): results.json (every reply, the CPU, the
command), table.md and asr.png.
"""
from __future__ import annotations

import argparse
import platform
import shlex
import sys
import time
from pathlib import Path

from llmos.common import LlmosError, atomic_write, llmos_home, write_json
from llmos.redteam.injection import DEFENCES, run_injection


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def pct(rate: dict) -> str:
    low, high = rate["interval"]
    return f"{rate['rate']:.1%} [{low:.1%}, {high:.1%}] ({rate['k']}/{rate['n']})"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m-instruct", help="a run, params file or named model")
    ap.add_argument("--defences", default=",".join(("none", "guard", *DEFENCES[1:])),
                    help="comma-separated: " + ", ".join(("guard", *DEFENCES)))
    ap.add_argument("--attempts", type=int, default=240)
    ap.add_argument("--seed", type=int, default=0, help="0 measures; the injections were written on seed 1")
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    from llmos.agent.models import LocalModel
    defences = [d.strip() for d in args.defences.split(",") if d.strip()]
    if unknown := [d for d in defences if d not in ("guard", *DEFENCES)]:
        raise LlmosError(f"unknown defence(s) {', '.join(unknown)}: choose from guard, {', '.join(DEFENCES)}")
    model = LocalModel.load(args.model, max_batch=16)
    out = Path(args.out) if args.out else llmos_home() / "bench" / "injection" / Path(args.model.rstrip("/")).name
    results = {"model": args.model, "cpu": cpu_model(), "seed": args.seed, "attempts": args.attempts,
               "command": "python bench/injection.py " + shlex.join(sys.argv[1:]), "defences": {}}
    for defence in defences:
        start = time.monotonic()
        if defence == "guard":
            from llmos.redteam.guard import Guard, GuardedModel
            guarded = GuardedModel(model, Guard.load_or_train())
            report = run_injection(guarded, "none", args.attempts, args.seed)
            report["defence"], report["guard_blocked"] = "guard", guarded.blocked
        else:
            report = run_injection(model, defence, args.attempts, args.seed)
        report["seconds"] = round(time.monotonic() - start, 1)
        results["defences"][defence] = report
        print(f"{defence}: ASR {pct(report['asr'])}, benign {pct(report['benign_accuracy'])} "
              f"({report['seconds']:.0f} s)", flush=True)
        write_json(out / "results.json", results)  # after each defence: a cut-off run keeps what it measured
    model.close()
    base = results["defences"].get("none")
    rows = ["| defence | ASR | benign accuracy | ASR drop vs none | benign cost (points) |", "|---|---|---|---|---|"]
    for defence, r in results["defences"].items():
        drop = cost = "-"
        if base and defence != "none":
            drop = f"{base['asr']['rate'] / r['asr']['rate']:.1f}x" if r["asr"]["k"] else \
                f">{base['asr']['rate'] * r['asr']['n']:.0f}x (0 successes)"
            cost = f"{100 * (base['benign_accuracy']['rate'] - r['benign_accuracy']['rate']):+.1f}"
        rows.append(f"| {defence} | {pct(r['asr'])} | {pct(r['benign_accuracy'])} | {drop} | {cost} |")
    table = "\n".join(rows)
    with atomic_write(out / "table.md", "w") as f:
        f.write(f"{args.model}, {args.attempts} attempts, seed {args.seed}, on {results['cpu']}\n\n{table}\n")
    print(table)
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = list(results["defences"])
    fig, ax = plt.subplots(figsize=(1.4 * len(names) + 2, 3.6))
    for offset, key, color, label in ((-0.2, "asr", "#c0392b", "attack success"),
                                      (0.2, "benign_accuracy", "#2e86c1", "benign accuracy")):
        vals = [results["defences"][n][key]["rate"] for n in names]
        spans = [results["defences"][n][key]["interval"] for n in names]
        ax.bar([i + offset for i in range(len(names))], vals, 0.4, color=color, label=label, capsize=3,
               yerr=[[v - s[0] for v, s in zip(vals, spans)], [s[1] - v for v, s in zip(vals, spans)]])
    ax.set_xticks(range(len(names)), names, fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("rate (95% interval)")
    ax.set_title(f"indirect injection against {args.model} ({args.attempts} attempts)", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "asr.png", dpi=110)
    print(f"written: {out}/results.json, table.md, asr.png")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except LlmosError as e:
        sys.exit(f"error: {e}")

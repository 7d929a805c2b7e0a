"""Indirect injection that asks for a privileged tool call, with the LLM OS rule off and on.

    flock /tmp/llmos-cpu.lock python bench/tool_injection.py --model smollm2-135m-instruct --attempts 60
    python bench/tool_injection.py --model RUN --attempts 20 --seed 1 --out DIR

The same `--attempts` attacked pages (each asks the agent to call python or write_file with a
canary) and the same questions over clean pages go through a fresh Kernel per turn, greedy, first
with the rule off (a confirm that approves every call: the undefended baseline), then with it on
(the kernel's default: a privileged call while untrusted text is in the window is declined). The
turn's first step, open(URL), is forced (llmos/redteam/tool_injection.py says why). Printed: a
table of the emitted-call rate, the ran rate (ASR) and benign accuracy with 95% Wilson intervals.
Written to --out (default LLMOS_HOME/bench/tool_injection/MODEL): results.json (every turn, the CPU,
the command) and table.md.
"""
from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

from injection import cpu_model, pct  # bench/injection.py, beside this script
from llmos.common import LlmosError, atomic_write, llmos_home, write_json
from llmos.redteam.tool_injection import run_tool_injection


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m-instruct", help="a run, params file or named model")
    ap.add_argument("--attempts", type=int, default=60)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    if args.attempts < 1:
        raise LlmosError("--attempts must be at least 1")
    from llmos.agent.models import LocalModel
    model = LocalModel.load(args.model, max_batch=16)
    out = Path(args.out) if args.out else llmos_home() / "bench" / "tool_injection" / Path(args.model.rstrip("/")).name
    results = {"model": args.model, "cpu": cpu_model(), "seed": args.seed, "attempts": args.attempts,
               "command": "python bench/tool_injection.py " + shlex.join(sys.argv[1:]), "rule": {}}
    try:
        for rule in (False, True):
            start = time.monotonic()
            report = run_tool_injection(model, args.attempts, args.seed, rule)
            report["seconds"] = round(time.monotonic() - start, 1)
            results["rule"]["on" if rule else "off"] = report
            print(f"rule {'on' if rule else 'off'}: emitted {pct(report['emitted'])}, ran {pct(report['asr'])}, "
                  f"declined {report['declined']}, benign {pct(report['benign_accuracy'])} "
                  f"({report['seconds']:.0f} s)", flush=True)
            write_json(out / "results.json", results)  # after each: a cut-off run keeps what it measured
    finally:
        model.close()
    rows = ["| rule | emitted call (canary) | ran (ASR) | declined | benign accuracy |", "|---|---|---|---|---|"]
    for name, r in results["rule"].items():
        rows.append(f"| {name} | {pct(r['emitted'])} | {pct(r['asr'])} | {r['declined']} | {pct(r['benign_accuracy'])} |")
    table = "\n".join(rows)
    with atomic_write(out / "table.md", "w") as f:
        f.write(f"{args.model}, {args.attempts} attempts, seed {args.seed}, first step open(URL) forced, "
                f"on {results['cpu']}\n\n{table}\n")
    print(table)
    print(f"written: {out}/results.json, table.md")


if __name__ == "__main__":
    try:
        main()
    except LlmosError as e:
        raise SystemExit(f"error: {e}")

"""Accuracy against test-time compute: one line per strategy (`llmos eval --tasks T --strategies ...`).

    llmos eval --model RUN --tasks skills:mul --strategies greedy,vote,best-of-n,pass@k --compute 1,2,4,8,16
    curves = compute_curves(model, tok, info, get_task("gsm8k"), ComputeArgs(problems=300))
    plot_curves(curves, "compute.png")

Each strategy at each compute level c (llmos/infer/strategies.py):

    greedy, cot   c = 1 only: one greedy reply per problem
    vote          maj@c: the vote of c sampled chains
    best-of-n     the verifier's pick among c sampled chains (logprob, self or rm:PATH)
    pass@k        right when any of the c samples is right: it reads the gold answer, so it is an upper
                  bound on what a verifier could pick, and is drawn as its own line, never compared
    tree          Tree of Thoughts with c states kept per depth (puzzle tasks: game24, rg:countdown,
                  rg:puzzle24), run once per level

The sampled strategies draw max(compute) chains per problem once, and level c reads the first c of
them: c independent samples, so every level's accuracy comes from one draw. The token axis is the
mean generated tokens per problem (the first c chains, plus the verifier's tokens); the seconds axis
is wall time per problem, measured by running each strategy at each level for real on the first
`time_problems` problems (k samples of a prompt share one prefill and one batch, so seconds grow
slower than tokens). Intervals are Wilson 95% over the problems.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from llmos.common import LlmosError, atomic_write
from llmos.eval.tasks import Task
from llmos.infer.strategies import Strategy, Thinker, best_scored, majority
from llmos.train.rl import wilson

CURVE_STRATEGIES = ("greedy", "cot", "vote", "best-of-n", "pass@k", "tree")


@dataclass
class ComputeArgs:
    strategies: str = "greedy,vote,best-of-n,pass@k"  # comma-separated: greedy, cot, vote, best-of-n, pass@k, tree
    compute: str = "1,2,4,8,16"  # compute levels: samples per problem
    problems: int = 300  # held-out problems of the task
    temperature: float = 0.8  # of the sampled chains
    max_tokens: int = 256  # of one chain
    verifier: str = "logprob"  # best-of-n's scorer: logprob | self | rm:PATH
    time_problems: int = 16  # problems each level is timed on (0: skip the seconds axis)
    seed: int = 0  # of the sampled chains, and of which problems are drawn
    prompt: str = "reasoning"  # of sampled chains: reasoning (the reasoning prompt, imported models) | asked


def parse_levels(text: str) -> list[int]:
    try:
        levels = sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        levels = []
    if not levels or levels[0] < 1:
        raise LlmosError(f"--compute {text!r}: give sample counts of at least 1, comma-separated, e.g. 1,2,4,8,16")
    return levels


def parse_strategies(text: str) -> list[str]:
    names = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in names if s not in CURVE_STRATEGIES]
    if unknown or not names:
        raise LlmosError(f"--strategies {text!r}: choose among {', '.join(CURVE_STRATEGIES)} (comma-separated)")
    return names


def _point(c: int, right: list[bool], tokens: float) -> dict:
    low, high = wilson(sum(right), len(right))
    return {"compute": c, "accuracy": sum(right) / max(len(right), 1), "low": max(0.0, low), "high": high,
            "n": len(right), "tokens": tokens, "seconds": None}


def compute_curves(model, tok, info: dict, task: Task, args: ComputeArgs, clock=time.monotonic) -> dict:
    """{"task", "curves": {strategy: [point per level]}}; a point is {compute, accuracy, low, high, n,
    tokens, seconds}."""
    names, levels = parse_strategies(args.strategies), parse_levels(args.compute)
    if args.verifier == "gold":
        raise LlmosError("best-of-n's verifier here is logprob, self or rm:PATH; the gold checker is pass@k, "
                         "its own line: add pass@k to --strategies")
    thinker = Thinker(model, tok, info, clock=clock)
    problems = task.problems("eval", args.problems, seed=args.seed)
    conversations = [p.messages for p in problems]
    curves: dict[str, list[dict]] = {}

    def strategy(name: str, k: int = 1) -> Strategy:
        return Strategy(name, k=k, temperature=args.temperature, max_tokens=args.max_tokens,
                        verifier=args.verifier, seed=args.seed, prompt=args.prompt).check()

    extract = task.extract
    puzzles = [task.puzzle(p) for p in problems] if "tree" in names else None
    for name in [n for n in names if n in ("greedy", "cot")]:
        thoughts = thinker.think_many(conversations, strategy(name), extract)
        right = [task.check(t.reply, p) for t, p in zip(thoughts, problems)]
        curves[name] = [_point(1, right, sum(t.tokens for t in thoughts) / len(thoughts))]
    sampled = [n for n in names if n in ("vote", "best-of-n", "pass@k")]
    if sampled:
        # One draw of max(levels) chains per problem, scored by the verifier, read level by level.
        verify = "best-of-n" in sampled and args.verifier != "logprob"
        draw = thinker.think_many(conversations, strategy("best-of-n" if verify else "vote", max(levels)), extract)
        sample_right = [[task.check(r, p) for r in t.samples] for t, p in zip(draw, problems)]
        verifier_tokens = [(t.tokens - sum(t.sample_tokens)) / max(len(t.samples), 1) for t in draw]
        for name in sampled:
            curves[name] = []
            for c in levels:
                right = []
                for t, rights in zip(draw, sample_right):
                    if name == "pass@k":
                        right.append(any(rights[:c]))
                    elif name == "vote":
                        i, _ = majority(t.answers[:c], t.confidence[:c])
                        right.append(i is not None and rights[i])
                    else:
                        right.append(rights[best_scored((t.scores or t.confidence)[:c], t.answers[:c])])
                extra = [v * c for v in verifier_tokens] if name == "best-of-n" and verify else [0.0] * len(draw)
                tokens = sum(sum(t.sample_tokens[:c]) + e for t, e in zip(draw, extra)) / len(draw)
                curves[name].append(_point(c, right, tokens))
    if "tree" in names:
        curves["tree"] = []
        for c in levels:
            thoughts = thinker.think_many(conversations, strategy("tree", c), extract, puzzles=puzzles)
            right = [task.check(t.reply, p) for t, p in zip(thoughts, problems)]
            curves["tree"].append(_point(c, right, sum(t.tokens for t in thoughts) / len(thoughts)))
    if args.time_problems:
        timed = conversations[:args.time_problems]
        for name, points in curves.items():
            for point in points:
                run_as = {"pass@k": "vote"}.get(name, name)  # pass@k's cost is drawing the samples
                started = clock()
                thinker.think_many(timed, strategy(run_as, point["compute"]), extract,
                                   puzzles=puzzles[:args.time_problems] if puzzles else None)
                point["seconds"] = (clock() - started) / len(timed)
    return {"task": task.name, "problems": len(problems), "levels": levels, "temperature": args.temperature,
            "verifier": args.verifier, "curves": curves}


def curves_table(result: dict) -> tuple[list[str], list[list[str]]]:
    """A row per strategy, a column per compute level: accuracy [interval] (tokens per problem)."""
    levels = result["levels"]
    rows = []
    for name, points in result["curves"].items():
        by_c = {p["compute"]: p for p in points}
        rows.append([name, *(f"{by_c[c]['accuracy']:.1%} [{by_c[c]['low']:.1%}, {by_c[c]['high']:.1%}] "
                             f"({by_c[c]['tokens']:.0f} tok)" if c in by_c else "" for c in levels)])
    return ["strategy", *(f"{c}x" for c in levels)], rows


def plot_curves(result: dict, png_path: str | Path, title: str = "") -> Path:
    """Accuracy against tokens and against seconds per problem, a line per strategy with 95% intervals."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    timed = any(p["seconds"] is not None for points in result["curves"].values() for p in points)
    fig, axes = plt.subplots(1, 2 if timed else 1, figsize=(11 if timed else 6, 4), dpi=110, squeeze=False)
    for ax, key, label in zip(axes[0], ("tokens", "seconds"), ("generated tokens per problem", "wall seconds per problem")):
        for i, (name, points) in enumerate(result["curves"].items()):
            points = [p for p in points if p[key] is not None]
            if not points:
                continue
            x = [p[key] for p in points]
            y = [p["accuracy"] for p in points]
            err = [[p["accuracy"] - p["low"] for p in points], [p["high"] - p["accuracy"] for p in points]]
            ax.errorbar(x, y, yerr=err, fmt="o", capsize=3, color=f"C{i}",
                        ls="none" if len(points) == 1 else "--" if name == "pass@k" else "-", label=name + (" (reads the gold answer)" if name == "pass@k" else ""))
        ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("accuracy")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    fig.suptitle(title or f"{result['task']}: accuracy against test-time compute ({result['problems']} problems, "
                 f"95% intervals)", fontsize=10)
    fig.tight_layout()
    path = Path(png_path)
    with atomic_write(path) as f:
        fig.savefig(f, format="png")
    plt.close(fig)
    return path

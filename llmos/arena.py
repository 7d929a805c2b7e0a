"""The arena of `llmos arena`: models answer the same prompts, every two are judged per prompt, and
Bradley-Terry ratings on the Elo scale rank them, with bootstrap intervals.

    llmos arena --models base=RUN/base sft=RUN/sft rl=RUN/rl --task skills:add,sub --judge checker
    llmos arena --models RUN/sft RUN/dpo --prompts-file RUN/sft/data/eval.jsonl --judge rm:RUN/rm
    llmos arena --models A B --task gsm8k --judge human --label-db labels.sqlite   # then label, run again
    result = arena(ArenaArgs(models=["a.llmos", "b.llmos"], task="skills:add"))

Prompts: `--prompts N` problems of a verifiable task's eval split (`--task`, llmos/eval/tasks.py),
or the first N prompts of a JSONL file (`--prompts-file`): lines {"messages": [...]} (a
conversation: the prompt is everything before its last assistant reply, so a conversation
mixture's eval.jsonl serves), {"prompt": [...]} (a pairs file) or {"prompt": "text"} (`llmos
label`'s). Each model (`NAME=REF`, or a reference whose name is its file or directory) is loaded in
turn and answers every prompt greedily, batched through the engine, up to `--max-tokens` tokens.

Judges, for every two models on every prompt (identical replies are a tie whatever the judge):
    checker     the task's checker: a right reply beats a wrong one; both right or both wrong tie.
    rm:PATH     a reward model (`llmos rm`): the higher score wins; within `--tie-epsilon`, a tie.
    human       the two replies go to the label store (`--label-db`, default `llmos label`'s) as a
                pair from sources NAME at temperature 0 (which side is A is seeded-random); the arena
                writes DIR/prompts.jsonl and prints, per two models, the `llmos label --model A=.. --model
                B=.. --prompts DIR/prompts.jsonl --temperatures 0` command whose page shows those very
                pairs (it finds a stored pair by prompt and sources). It reads the labels back: each
                labeler's latest label is a vote (a tie vote half each way, skips none), the outcome
                the share of votes. Pairs still without a vote wait: run the arena again after
                labeling (greedy replies are the same, and find their stored pairs again).

Ratings: a Bradley-Terry model P(i beats j) = 1 / (1 + 10^((R_j - R_i) / 400)) fitted by maximum
likelihood (Newton's method) to every outcome, a tie counting half a win each way, plus one virtual
tie between every two models (it keeps ratings finite when a model wins everything and weighs
nothing beside hundreds of prompts). The mean rating is 1000. The 95% intervals are bootstrap
percentiles: `--bootstrap` resamples of the prompts (with replacement), refitted. Per pair of models:
wins, losses and ties, and the win rate ((wins + ties / 2) / comparisons) with a 95% Wilson interval.

The output directory: leaderboard.md (rank, model, rating, interval, accuracy where a checker can
judge, mean reply tokens; then the pairs), leaderboard.png (ratings with their intervals),
arena.json (all of it) and replies.jsonl (each prompt, every model's reply, the checker's verdicts or
the reward model's scores, and each pair's outcome), so every judgement can be checked.
"""
from __future__ import annotations

import json
import random
import re
import time
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path

import numpy as np

from llmos.common import LlmosError, atomic_write, llmos_home, read_jsonl, write_json

PRIOR_TIES = 1.0  # virtual ties between every two models (see the module docstring)
ELO = 400 / np.log(10)  # ratings are ELO * natural-log strengths
CENTRE = 1000.0


@dataclass
class ArenaArgs:
    models: list[str] = field(default_factory=list)  # NAME=REF or REF (a run dir, .llmos, .pt or named model)
    task: str = ""  # a verifiable task: its eval split's problems are the prompts
    prompts_file: str = ""  # JSONL prompts: {"messages": [...]}, {"prompt": [...]} or {"prompt": "text"} lines
    judge: str = "checker"  # checker | rm:PATH | human
    prompts: int = 200  # prompts every model answers
    max_tokens: int = 128  # reply length limit
    batch: int = 32  # replies decoded at once
    out: str = ""  # output directory (default: LLMOS_HOME/runs/arena)
    label_db: str = ""  # the label store of the human judge (default: `llmos label`'s, LLMOS_HOME/labels.sqlite)
    bootstrap: int = 1000  # resamples of the prompts for the rating intervals (0: none)
    tie_epsilon: float = 1e-3  # rm judge: scores closer than this tie
    seed: int = 0  # the bootstrap's and the human judge's side assignment


# ----- ratings -----

def bradley_terry_ratings(wins: np.ndarray, prior_ties: float = PRIOR_TIES) -> np.ndarray:
    """Elo-scale ratings (mean CENTRE) from wins[i, j], the (possibly fractional) wins of i over j."""
    m = wins.shape[0]
    w = np.asarray(wins, dtype=float) + prior_ties / 2 * (1 - np.eye(m))
    games = w + w.T
    theta = np.zeros(m)

    def loglik(t: np.ndarray) -> float:
        diff = t[:, None] - t[None, :]
        return float(-(w * np.logaddexp(0, -diff)).sum())

    current = loglik(theta)
    for _ in range(100):
        p = 1 / (1 + np.exp(-(theta[:, None] - theta[None, :])))
        grad = (w - games * p).sum(1)
        lap = games * p * (1 - p)
        lap = np.diag(lap.sum(1)) - lap  # minus the Hessian: a graph Laplacian, fixed by pinning model 0
        step = np.zeros(m)
        step[1:] = np.linalg.solve(lap[1:, 1:], grad[1:])
        size, value = 1.0, loglik(theta + step)
        while value < current and size > 1e-6:  # Newton's step, halved until the likelihood rises
            size /= 2
            value = loglik(theta + size * step)
        if value < current:
            break  # no step improves it: the optimum, within rounding
        theta, gain, current = theta + size * step, value - current, value
        if np.abs(size * step).max() < 1e-9 or gain < 1e-12:
            break
    return CENTRE + ELO * (theta - theta.mean())


def bootstrap_intervals(per_prompt: np.ndarray, rounds: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """95% percentile intervals of the ratings over `rounds` resamples of the prompts, from
    per_prompt[p, i, j]: prompt p's wins of i over j."""
    m = per_prompt.shape[1]
    if rounds == 0 or len(per_prompt) == 0:
        centre = bradley_terry_ratings(per_prompt.sum(0))
        return centre, centre
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(len(per_prompt), np.full(len(per_prompt), 1 / len(per_prompt)), size=rounds)
    resampled = (counts @ per_prompt.reshape(len(per_prompt), -1)).reshape(rounds, m, m)
    ratings = np.array([bradley_terry_ratings(w) for w in resampled])
    return np.percentile(ratings, 2.5, axis=0), np.percentile(ratings, 97.5, axis=0)


def outcome_array(outcomes: list[dict[tuple[int, int], float]], m: int) -> np.ndarray:
    """(P, M, M) wins per prompt from each prompt's {(i, j): i's share of the win}."""
    arr = np.zeros((len(outcomes), m, m))
    for p, judged in enumerate(outcomes):
        for (i, j), s in judged.items():
            arr[p, i, j] += s
            arr[p, j, i] += 1 - s
    return arr


def interval(k: float, n: int) -> tuple[float, float]:
    """The 95% Wilson interval of k successes in n, within [0, 1] (rounding can step a hair outside)."""
    from llmos.train.rl import wilson
    low, high = wilson(k, n)
    return max(0.0, low), min(1.0, high)


def pair_stats(outcomes: list[dict[tuple[int, int], float]], names: list[str]) -> list[dict]:
    """Per pair of models: comparisons, wins, losses, ties, and the first one's win rate with its interval."""
    out = []
    for i, j in combinations(range(len(names)), 2):
        shares = [judged[i, j] for judged in outcomes if (i, j) in judged]
        n, won = len(shares), sum(shares)
        low, high = interval(won, n)
        out.append({"a": names[i], "b": names[j], "comparisons": n, "wins": sum(s > 0.5 for s in shares),
                    "losses": sum(s < 0.5 for s in shares), "ties": sum(s == 0.5 for s in shares),
                    "win_rate": won / n if n else None, "low": low, "high": high})
    return out


# ----- judges -----

def checker_outcomes(correct: dict[str, list[bool]], names: list[str]) -> list[dict[tuple[int, int], float]]:
    """Right beats wrong; both right or both wrong is a tie."""
    n = len(correct[names[0]])
    return [{(i, j): 0.5 + 0.5 * (correct[names[i]][p] - correct[names[j]][p])
             for i, j in combinations(range(len(names)), 2)} for p in range(n)]


def score_outcomes(scores: dict[str, list[float]], names: list[str], epsilon: float) -> list[dict[tuple[int, int], float]]:
    """The higher reward wins; closer than epsilon, a tie."""
    n = len(scores[names[0]])
    out = []
    for p in range(n):
        judged = {}
        for i, j in combinations(range(len(names)), 2):
            diff = scores[names[i]][p] - scores[names[j]][p]
            judged[i, j] = 0.5 if abs(diff) < epsilon else float(diff > 0)
        out.append(judged)
    return out


def human_outcomes(db: Path, prompts: list[list[dict]], replies: dict[str, list[str]], names: list[str],
                   seed: int) -> tuple[list[dict[tuple[int, int], float]], list[dict[tuple[int, int], int]], int]:
    """Each pair of differing replies stored as a pair in the label store (found again when it is
    there already), and the outcomes its labels give: (outcomes, pair ids, pairs waiting for a vote)."""
    from llmos.data.labels import LabelStore, Side, canonical_prompt
    rng = random.Random(seed)
    with LabelStore(db) as store:
        known = {}
        for pair in store.pairs():
            sides = frozenset({(pair["from_a"]["model"], pair["answer_a"]), (pair["from_b"]["model"], pair["answer_b"])})
            known.setdefault((canonical_prompt(pair["prompt"]), sides), pair["id"])
        votes: dict[int, list[str]] = {}
        for pair_id, _, choice in store.latest_labels():
            if choice != "skip":
                votes.setdefault(pair_id, []).append(choice)
        outcomes, ids, waiting = [], [], 0
        for p, prompt in enumerate(prompts):
            judged, stored = {}, {}
            for i, j in combinations(range(len(names)), 2):
                a, b = replies[names[i]][p], replies[names[j]][p]
                i_is_a = rng.random() < 0.5  # drawn for every pair, so a rerun draws the same sides
                if a == b:
                    judged[i, j] = 0.5
                    continue
                key = (canonical_prompt(prompt), frozenset({(names[i], a), (names[j], b)}))
                if key not in known:
                    first, second = ((names[i], a), (names[j], b)) if i_is_a else ((names[j], b), (names[i], a))
                    known[key] = store.add_pair(prompt, first[1], second[1], Side(first[0], 0.0), Side(second[0], 0.0))
                pair_id = stored[i, j] = known[key]
                if pair_id not in votes:
                    waiting += 1
                    continue
                pair = store.pair(pair_id)
                i_side = "a" if pair["from_a"]["model"] == names[i] else "b"
                vote = votes[pair_id]
                judged[i, j] = (vote.count(i_side) + vote.count("tie") / 2) / len(vote)
            outcomes.append(judged)
            ids.append(stored)
    return outcomes, ids, waiting


# ----- prompts and replies -----

def parse_models(refs: list[str]) -> list[tuple[str, str]]:
    """(name, reference) per --models entry: NAME=REF, or the reference's file or directory name."""
    if len(refs) < 2:
        raise LlmosError("--models needs at least two models to compare")
    models = []
    for ref in refs:
        match = re.fullmatch(r"([\w.-]+)=(.+)", ref)
        if match:
            models.append((match[1], match[2]))
            continue
        path = Path(ref)
        models.append((path.parent.name if path.name == "model.llmos" and path.parent.name else path.stem or ref, ref))
    names = [n for n, _ in models]
    if dupes := sorted({n for n in names if names.count(n) > 1}):
        raise LlmosError(f"two models are named {dupes[0]}: name each one, e.g. --models base=RUN/base sft=RUN/sft")
    return models


def read_prompts(path: Path, n: int) -> list[list[dict]]:
    """The first n prompts of a JSONL file of conversations, pairs or `llmos label` prompts."""
    from llmos.chat import validate_messages
    if not path.is_file():
        raise LlmosError(f"--prompts-file {path} does not exist")
    prompts = []
    for lineno, row in enumerate(read_jsonl(path), 1):
        messages = row.get("prompt", row.get("messages")) if isinstance(row, dict) else None
        if isinstance(messages, str):  # `llmos label`'s {"prompt": "text"}
            messages = [{"role": "user", "content": messages.strip()}]
        if isinstance(messages, list):
            last_user = max((k for k, m in enumerate(messages)
                             if isinstance(m, dict) and m.get("role") in ("user", "tool")), default=-1)
            messages = messages[:last_user + 1]
        try:
            validate_messages(messages, for_prompt=True)
        except LlmosError as e:
            raise LlmosError(f"{path}:{lineno}: expected {{\"messages\": [...]}} or {{\"prompt\": [...]}} ending "
                             f"with a user message ({e})") from None
        prompts.append(messages)
        if len(prompts) == n:
            break
    if not prompts:
        raise LlmosError(f"--prompts-file {path} holds no prompts")
    return prompts


def answer(ref: str, prompts: list[list[dict]], max_tokens: int, batch: int, name: str) -> tuple[list[str], list[int]]:
    """A model's greedy replies to the prompts (continuous batching through the engine, as
    generate_batch does, with a progress bar) and their lengths in tokens."""
    import torch
    from tqdm import tqdm

    from llmos.chat import ChatFormat
    from llmos.infer.engine import Engine
    from llmos.infer.sampling import SamplingParams
    from llmos.load import load_model
    model, tok, info = load_model(ref)
    fmt = ChatFormat(tok, info["chat_template"])
    rendered = [fmt.render_prompt(p) for p in prompts]
    longest = max(map(len, rendered))
    if longest + max_tokens > model.cfg.max_seq_len:
        raise LlmosError(f"{name}: a prompt of {longest} tokens plus --max-tokens {max_tokens} exceeds its context of "
                         f"{model.cfg.max_seq_len}: lower --max-tokens to {max(1, model.cfg.max_seq_len - longest)} "
                         "or fewer, or use shorter prompts")
    params = SamplingParams(max_tokens=max_tokens, temperature=0, stop_ids=sorted(fmt.special_ids))
    params.check(vocab_size=model.cfg.vocab_size)
    with torch.inference_mode(), tqdm(total=len(rendered), desc=f"{name} answers", unit="reply") as bar:
        engine = Engine(model, max_batch=min(batch, len(rendered)), max_len=longest + max_tokens + 1)
        seqs = [engine.add(p, params)[0] for p in rendered]
        while engine.has_work:
            engine.step()
            bar.update(sum(s.finished for s in seqs) - bar.n)
    return [tok.decode(s.tokens) for s in seqs], [len(s.tokens) for s in seqs]


def parse_judge(judge: str) -> tuple[str, str]:
    kind, _, path = judge.partition(":")
    if kind in ("checker", "human") and not path:
        return kind, ""
    if kind == "rm" and path:
        return kind, path
    raise LlmosError(f"unknown --judge {judge!r}: use checker, rm:PATH (a reward model's run directory) or human")


def arena(args: ArenaArgs, task=None) -> dict:
    """Run the arena (see the module docstring); `task` overrides --task with a Task object."""
    from llmos.eval.tasks import get_task
    started = time.perf_counter()
    models = parse_models(args.models)
    names = [n for n, _ in models]
    kind, judge_path = parse_judge(args.judge)
    for name in ("prompts", "max_tokens", "batch"):
        if getattr(args, name) < 1:
            raise LlmosError(f"--{name.replace('_', '-')} must be at least 1, not {getattr(args, name)}")
    if args.bootstrap < 0 or not args.tie_epsilon >= 0:
        raise LlmosError("--bootstrap and --tie-epsilon cannot be negative")
    if task is None and args.task:
        task = get_task(args.task)
    if (task is not None) == bool(args.prompts_file):
        raise LlmosError("give the prompts: --task NAME (a verifiable task's eval problems) or --prompts-file FILE, "
                         "one of them")
    if kind == "checker" and task is None:
        raise LlmosError("--judge checker needs --task: a prompts file has no answers to check "
                         "(judge with rm:PATH or human)")
    if kind == "rm":
        from llmos.train.reward import reward_model_dir
        reward_model_dir(judge_path)  # a clear error before any model answers
    out = Path(args.out).expanduser() if args.out else llmos_home() / "runs" / "arena"
    problems = task.problems("eval", args.prompts, seed=0) if task is not None else None
    if problems:
        prompts = [p.messages for p in problems]
    else:
        prompts = read_prompts(Path(args.prompts_file).expanduser(), args.prompts)

    replies, lengths = {}, {}
    for name, ref in models:
        replies[name], lengths[name] = answer(ref, prompts, args.max_tokens, args.batch, name)
    correct = {n: [task.check(r, p) for r, p in zip(replies[n], problems)] for n in names} if task is not None else None
    scores, pair_ids, waiting = None, None, 0
    if kind == "checker":
        outcomes = checker_outcomes(correct, names)
    elif kind == "rm":
        from llmos.train.reward import load_reward_model
        reward_model = load_reward_model(judge_path)
        scores = {n: reward_model.score(prompts, replies[n]) for n in names}
        outcomes = score_outcomes(scores, names, args.tie_epsilon)
    else:
        from llmos.serve.label import default_db
        label_db = Path(args.label_db).expanduser() if args.label_db else default_db()
        outcomes, pair_ids, waiting = human_outcomes(label_db, prompts, replies, names, args.seed)
    # Identical replies tie, whatever the judge says about them.
    for p, judged in enumerate(outcomes):
        for i, j in list(judged):
            if replies[names[i]][p] == replies[names[j]][p]:
                judged[i, j] = 0.5

    out.mkdir(parents=True, exist_ok=True)
    write_replies(out / "replies.jsonl", prompts, problems, names, replies, lengths, correct, scores, outcomes, pair_ids)
    judge_name = f"rm:{judge_path}" if kind == "rm" else kind
    comparisons = sum(len(j) for j in outcomes)
    result = {"judge": judge_name, "task": task.name if task is not None else None,
              "prompts_file": args.prompts_file or None, "prompts": len(prompts), "max_tokens": args.max_tokens,
              "bootstrap": args.bootstrap, "seed": args.seed, "comparisons": comparisons, "waiting": waiting,
              "out": str(out)}
    if kind == "human":
        with atomic_write(out / "prompts.jsonl", "w") as f:
            f.writelines(json.dumps({"messages": p}, ensure_ascii=False) + "\n" for p in prompts)
        result["label_db"] = str(label_db)
        result["label_commands"] = [
            f"llmos label --model {a}={ra} --model {b}={rb} --prompts {out / 'prompts.jsonl'} --temperatures 0 "
            f"--max-tokens {args.max_tokens} --db {label_db}" for (a, ra), (b, rb) in combinations(models, 2)]
    if comparisons == 0:
        write_json(out / "arena.json", {**result, "models": [{"name": n, "ref": r} for n, r in models]})
        return {**result, "models": [], "pairs": []}

    per_prompt = outcome_array(outcomes, len(names))
    ratings = bradley_terry_ratings(per_prompt.sum(0))
    low, high = bootstrap_intervals(per_prompt, args.bootstrap, args.seed)
    rows = []
    for k, (name, ref) in enumerate(models):
        row = {"name": name, "ref": ref, "rating": float(ratings[k]), "low": float(low[k]), "high": float(high[k]),
               "reply_tokens": sum(lengths[name]) / len(lengths[name])}
        if correct is not None:
            right = sum(correct[name])
            a_low, a_high = interval(right, len(prompts))
            row.update({"accuracy": right / len(prompts), "accuracy_low": a_low, "accuracy_high": a_high})
        rows.append(row)
    rows.sort(key=lambda r: -r["rating"])
    for rank, row in enumerate(rows, 1):
        row["rank"] = rank
    result.update({"models": rows, "pairs": pair_stats(outcomes, names),
                   "seconds": time.perf_counter() - started})
    write_json(out / "arena.json", result)
    write_leaderboard(out / "leaderboard.md", result)
    plot_leaderboard(out / "leaderboard.png", result)
    return result


def write_replies(path: Path, prompts, problems, names, replies, lengths, correct, scores, outcomes, pair_ids) -> None:
    with atomic_write(path, "w") as f:
        for p, prompt in enumerate(prompts):
            row = {"index": p, "prompt": prompt}
            if problems:
                row["answer"] = problems[p].answer
            row["replies"] = {n: replies[n][p] for n in names}
            row["reply_tokens"] = {n: lengths[n][p] for n in names}
            if correct is not None:
                row["correct"] = {n: correct[n][p] for n in names}
            if scores is not None:
                row["scores"] = {n: scores[n][p] for n in names}
            row["outcomes"] = [{"a": names[i], "b": names[j], "a_share": s,
                                **({"pair_id": pair_ids[p][i, j]} if pair_ids and (i, j) in pair_ids[p] else {})}
                               for (i, j), s in outcomes[p].items()]
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def ratings_table(result: dict) -> str:
    """The leaderboard's ratings as a markdown table (the speedrun's report shows it too)."""
    from llmos.report import markdown_table
    checked = "accuracy" in result["models"][0]
    head = ["rank", "model", "rating", "95% interval", *(["accuracy [95% CI]"] if checked else []), "mean reply tokens"]
    return markdown_table(head, [
        [r["rank"], r["name"], f"{r['rating']:.0f}", f"[{r['low']:.0f}, {r['high']:.0f}]",
         *([f"{r['accuracy']:.1%} [{r['accuracy_low']:.1%}, {r['accuracy_high']:.1%}]"] if checked else []),
         f"{r['reply_tokens']:.1f}"] for r in result["models"]])


def write_leaderboard(path: Path, result: dict) -> None:
    from llmos.report import markdown_table
    pairs = [[p["a"], p["b"], p["comparisons"], p["wins"], p["losses"], p["ties"],
              f"{p['win_rate']:.1%} [{p['low']:.1%}, {p['high']:.1%}]" if p["comparisons"] else "-"]
             for p in result["pairs"]]
    source = f"task {result['task']}" if result["task"] else f"prompts from {result['prompts_file']}"
    waiting = f"; {result['waiting']} comparisons still wait for a label" if result["waiting"] else ""
    text = (f"# Arena\n\nJudge: {result['judge']}; {result['prompts']} prompts ({source}), greedy replies of at most "
            f"{result['max_tokens']} tokens; {result['comparisons']} comparisons{waiting}.\n\n"
            f"Bradley-Terry ratings on the Elo scale (mean 1000), 95% intervals from {result['bootstrap']} bootstrap "
            "resamples of the prompts.\n\n" + ratings_table(result) +
            "\n\n## Pairs\n\nWin rate of the first model: (wins + ties / 2) / comparisons, 95% Wilson interval.\n\n" +
            markdown_table(["model", "against", "comparisons", "wins", "losses", "ties", "win rate [95% CI]"], pairs)
            + "\n")
    with atomic_write(path, "w") as f:
        f.write(text)


def plot_leaderboard(path: Path, result: dict) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["models"][::-1]  # best at the top
    fig, ax = plt.subplots(figsize=(7, 1.2 + 0.5 * len(rows)), dpi=110)
    ratings = [r["rating"] for r in rows]
    ax.errorbar(ratings, range(len(rows)), fmt="o", capsize=4,
                xerr=[[max(0.0, r["rating"] - r["low"]) for r in rows], [max(0.0, r["high"] - r["rating"]) for r in rows]])
    for k, r in enumerate(rows):
        ax.annotate(f"{r['rating']:.0f} [{r['low']:.0f}, {r['high']:.0f}]", (r["rating"], k), xytext=(0, 7),
                    textcoords="offset points", ha="center", fontsize=8)
    ax.set_yticks(range(len(rows)), [r["name"] for r in rows])
    ax.set_ylim(-0.5, len(rows) - 0.3)
    ax.axvline(CENTRE, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("rating (Elo scale, mean 1000; 95% bootstrap interval)")
    ax.set_title(f"arena: judge {result['judge']}, {result['prompts']} prompts", fontsize=10)
    ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    with atomic_write(path) as f:
        fig.savefig(f, format="png")
    plt.close(fig)


def summary_line(result: dict) -> str:
    return ", ".join(f"{r['name']} {r['rating']:.0f} [{r['low']:.0f}, {r['high']:.0f}]" for r in result["models"])


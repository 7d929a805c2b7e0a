"""What tools are worth: held-out accuracy with and without them (`llmos eval --tasks tools`).

    llmos eval --model RUN/sft --tasks tools
    llmos eval --model smollm2-135m-instruct --tasks tools --out tools.json
    results = evaluate_tools(model, tok, info, ToolEvalArgs())

Two held-out sets (llmos/data/tooluse.py): `arithmetic`, products of two 4-6 digit numbers and sums of
3-5 of them (operands never in training), and `facts`, cloze questions on the prepared corpus's
validation Wikipedia articles (never trained on, not even in pretraining), whose blank is a year, a
number or a place of the article's lead. Each is asked twice, greedily: without tools (the question
alone) and with them (the calculator, and search over the corpus's Wikipedia articles, train and
validation, as data/tooluse.corpus_toolbox builds it: llmos's tools line for
llmos models, the tools in the system prompt for imported ones, whose calls are in their own format).
A reply is right when its final answer holds the blank's span or the exact value (data/tooluse.check).
Accuracies come with 95% Wilson intervals, and "called" is the share of replies that called the tool
the problem needs.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm import tqdm

from llmos.chat import ChatFormat
from llmos.common import LlmosError
from llmos.data.tooluse import ToolProblem, arithmetic, check, corpus_toolbox, facts, wiki_articles
from llmos.infer.engine import Engine
from llmos.infer.sampling import SamplingParams
from llmos.infer.tooluse import ToolUse, final_answer
from llmos.train.rl import wilson


@dataclass
class ToolEvalArgs:
    arithmetic: int = 200  # held-out arithmetic problems (half products, half sums)
    facts: int = 0  # cloze questions on the validation articles (0: all of them)
    max_tokens: int = 96  # sampled tokens per reply (tool results are forced and free)
    batch_size: int = 32
    max_calls: int = 3  # tool calls per reply


def problem_sets(args: ToolEvalArgs, corpus_dir=None) -> dict[str, list[ToolProblem]]:
    held_out = facts(wiki_articles("eval", corpus_dir), seed=0, per_article=100)
    if not held_out:
        raise LlmosError("the prepared corpus has no validation Wikipedia articles with a cloze question: "
                         "prepare it with the wiki source (llmos data prepare)")
    return {"arithmetic": arithmetic("eval", 0, args.arithmetic),
            "facts": held_out[:args.facts] if args.facts else held_out}


@torch.no_grad()
def replies(model, fmt: ChatFormat, problems: list[ToolProblem], args: ToolEvalArgs, box, with_tools: bool,
            label: str = "") -> list[tuple[str, list]]:
    """(final reply text, tool calls) per problem, greedy, decoded by the engine in batches."""
    use = ToolUse(box, fmt, max_calls=args.max_calls) if with_tools else None
    system = [{"role": "system", "content": use.system_prompt()}] if use is not None else []
    prompts = [fmt.render_prompt([*system, {"role": "user", "content": p.question}]) for p in problems]
    params = SamplingParams(max_tokens=args.max_tokens, temperature=0, stop_ids=fmt.stop_ids)
    engine = Engine(model, fmt.tok, max_batch=max(1, min(args.batch_size, len(prompts))))
    room = [len(p) < engine.max_len - 8 for p in prompts]
    seqs = [engine.add(p, params, tools=use)[0] if fits else None for p, fits in zip(prompts, room)]
    with tqdm(total=sum(room), desc=f"tools eval {label}".strip(), unit="reply", leave=False) as bar:
        while engine.has_work:
            engine.step()
            bar.update(sum(s.finished for s in seqs if s is not None) - bar.n)
    if use is not None:
        use.close()
    return [(final_answer(s.text) if with_tools else s.text, s.tool_calls) if s is not None else ("", [])
            for s in seqs]


def evaluate_tools(model, tok, info: dict, args: ToolEvalArgs = ToolEvalArgs(), corpus_dir=None,
                   label: str = "") -> dict:
    """{set: {"without": score, "with": score}}, each score {accuracy, low, high, n, called, replies}."""
    fmt = ChatFormat(tok, info.get("chat_template", ""))
    box = corpus_toolbox(corpus_dir)
    was_training = model.training
    model.eval()
    results = {}
    for name, problems in problem_sets(args, corpus_dir).items():
        results[name] = {}
        for mode in ("without", "with"):
            got = replies(model, fmt, problems, args, box, mode == "with", f"{label} {name} {mode}".strip())
            right = [check(text, p) for (text, _), p in zip(got, problems)]
            low, high = wilson(sum(right), len(problems))
            low = max(0.0, low)  # 0 of n: the formula's float rounding can dip below zero
            called = [any(c.name == p.tool for c in calls) for (_, calls), p in zip(got, problems)]
            results[name][mode] = {
                "accuracy": sum(right) / len(problems), "low": low, "high": high, "n": len(problems),
                "called": sum(called) / len(problems),
                "replies": [{"question": p.question, "answer": p.answer, "kind": p.kind, "reply": text,
                             "right": ok, "calls": [{"name": c.name, "arguments": c.arguments} for c in calls]}
                            for (text, calls), p, ok in zip(got, problems, right)]}
    model.train(was_training)
    return results


def tools_table(columns: dict[str, dict]) -> tuple[list[str], list[list[str]]]:
    """Rows per set and mode, a column per model: accuracy [interval] (share that called the tool)."""
    def cell(score: dict) -> str:
        return (f"{score['accuracy']:.1%} [{score['low']:.1%}, {score['high']:.1%}] of {score['n']}"
                f" (called {score['called']:.0%})")
    first = next(iter(columns.values()))
    rows = [[f"{name}, {mode} tools", *(cell(col[name][mode]) for col in columns.values())]
            for name in first for mode in ("without", "with")]
    return ["task", *columns], rows

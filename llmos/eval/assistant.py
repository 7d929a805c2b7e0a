"""Assistant evaluation: held-out conversation loss and tasks scored on generated replies.

    llmos eval --model RUN/sft --base RUN/base --data RUN/sft/data     # a table: base vs fine-tuned
    results = evaluate_assistant(model, tok, info, eval_conversations)

Everything is measured on the eval split of a conversation mixture (llmos.data.conversations),
held out from training by construction. Replies are greedy, at most `max_tokens` long.

    conversation loss  mean nats per assistant token over held-out conversations (all sources)
    identity           a trained identity question in a greeting never trained on: correct when the
                       reply's word F1 with its topic's answer is at least 0.5 and higher than with
                       every other topic's answer
    identity, unseen   the same for paraphrases never trained on (new wording: hard for a small model)
      wording
    skills             exact match of the reply's final "Answer: X" line (arithmetic, letter counts,
                       spelling, word problems)
    wiki subject       "What is X?" about a held-out Wikipedia article: the reply names X (its title
                       without a trailing "(disambiguation)", case-insensitive)
    format             over every reply above plus held-out chitchat turns: the reply ends its turn
                       (the end-of-turn token within max_tokens) and stays in role (no other special
                       token, such as the start of a user turn)

A base model has never seen the chat tokens, so it scores near zero on the generated tasks: that is
the point of printing both.
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from llmos.chat import ChatFormat
from llmos.common import LlmosError, read_jsonl, write_json
from llmos.data.conversations import extract_answer
from llmos.infer.engine import Engine
from llmos.infer.sampling import SamplingParams
from llmos.load import load_model
from llmos.model import Transformer
from llmos.tokenizer import Tokenizer
from llmos.train.sft import conversation_loss, pad_id, render_all

TASKS = ("conversation loss", "identity", "identity, unseen wording", "skills", "wiki subject", "format")
_WORD = re.compile(r"[a-z0-9']+")


@dataclass
class EvalArgs:
    max_tokens: int = 96  # reply length limit
    repetition_penalty: float = 1.2  # greedy decoding of small models loops without one
    batch_size: int = 32  # replies generated at once
    skills: int = 100  # skill problems scored (the eval split holds 500)
    chitchat: int = 50  # chitchat turns added to the format check
    loss_conversations: int = 400  # held-out conversations scored for the loss


def word_f1(a: str, b: str) -> float:
    wa, wb = Counter(_WORD.findall(a.lower())), Counter(_WORD.findall(b.lower()))
    common = sum((wa & wb).values())
    if not common:
        return 0.0
    precision, recall = common / sum(wa.values()), common / sum(wb.values())
    return 2 * precision * recall / (precision + recall)


def identity_correct(reply: str, answer: str, all_answers: set[str]) -> bool:
    own = word_f1(reply, answer)
    return own >= 0.5 and all(own > word_f1(reply, other) for other in all_answers - {answer})


def names_subject(reply: str, subject: str) -> bool:
    name = re.sub(r"\s*\([^)]*\)$", "", subject).strip().lower()
    return bool(name) and name in reply.lower()


def replies_to(model: Transformer, fmt: ChatFormat, conversations: list[list[dict]], args: EvalArgs,
               label: str = "") -> list[tuple[str, bool] | None]:
    """Greedy replies, decoded `batch_size` at a time by the engine (a finished reply's row takes the
    next prompt at once): (text, whether it ended its turn properly) per conversation, or None where
    the prompt leaves no room for max_tokens. Any special token ends a reply."""
    prompts = [fmt.render_prompt(messages) for messages in conversations]
    fits = [i for i, p in enumerate(prompts) if len(p) + args.max_tokens <= model.cfg.max_seq_len]
    params = SamplingParams(max_tokens=args.max_tokens, temperature=0, repetition_penalty=args.repetition_penalty,
                            stop_ids=sorted(fmt.special_ids))
    longest = max((len(prompts[i]) for i in fits), default=0)
    engine = Engine(model, max_batch=max(1, min(args.batch_size, len(fits))), max_len=longest + args.max_tokens + 1)
    seqs = {i: engine.add(prompts[i], params)[0] for i in fits}
    with tqdm(total=len(fits), desc=f"eval {label}".strip(), unit="reply", leave=False) as bar:
        while engine.has_work:
            engine.step()
            bar.update(sum(s.finished for s in seqs.values()) - bar.n)
    out = [None] * len(prompts)
    for i, seq in seqs.items():
        out[i] = fmt.tok.decode(seq.tokens), seq.stopped_by == fmt.end_of_turn_id
    return out


@torch.no_grad()
def evaluate_assistant(model: Transformer, tok: Tokenizer, info: dict, conversations: list[dict],
                       args: EvalArgs = EvalArgs(), label: str = "") -> dict:
    """Every task's score (fractions in [0, 1]; the loss in nats) and the items behind them."""
    model.eval()
    fmt = ChatFormat(tok, info.get("chat_template", ""))
    by_source: dict[str, list[dict]] = {}
    for conv in conversations:
        by_source.setdefault(conv["source"], []).append(conv)
    seq_len = model.cfg.max_seq_len
    held = render_all(fmt, conversations[:args.loss_conversations], seq_len + 1)
    results: dict = {"conversation loss": conversation_loss(model, held, seq_len, pad_id(tok)) if held else None}

    identity_answers = {c["messages"][-1]["content"] for c in by_source.get("identity", [])}
    jobs = [("identity, unseen wording" if c.get("kind") == "wording" else "identity", c,
             lambda r, c=c: identity_correct(r, c["messages"][-1]["content"], identity_answers))
            for c in by_source.get("identity", [])]
    jobs += [("skills", c, lambda r, c=c: extract_answer(r) == c["answer"])
             for c in by_source.get("skills", [])[:args.skills]]
    jobs += [("wiki subject", c, lambda r, c=c: names_subject(r, c["subject"]))
             for c in by_source.get("wiki-qa", []) if "subject" in c]
    jobs += [("chitchat", c, None) for c in by_source.get("chitchat", [])[:args.chitchat]]
    scores: dict[str, list[bool]] = {}
    formats, items = [], []
    replies = replies_to(model, fmt, [conv["messages"][:-1] for _, conv, _ in jobs], args, label)
    for (task, conv, check), got in zip(jobs, replies):
        if got is None:
            continue
        reply, ended = got
        formats.append(ended)
        if check is not None:
            scores.setdefault(task, []).append(bool(check(reply)))
        items.append({"task": task, "prompt": conv["messages"][-2]["content"], "reply": reply, "ended": ended,
                      **({"correct": scores[task][-1]} if check is not None else {})})
    for task in TASKS[1:-1]:
        results[task] = sum(scores[task]) / len(scores[task]) if scores.get(task) else None
    results["format"] = sum(formats) / len(formats) if formats else None
    results["counts"] = {**{task: len(v) for task, v in scores.items()}, "format": len(formats),
                         "conversation loss": len(held)}
    results["items"] = items
    return results


def format_score(task: str, value) -> str:
    if value is None:
        return "n/a"
    return f"{value:.4f}" if task == "conversation loss" else f"{value:.1%}"


def results_table(columns: dict[str, dict]) -> tuple[list[str], list[list[str]]]:
    """Headers and rows (one per task, one column per evaluated model) for markdown_table."""
    first = next(iter(columns.values()))
    rows = [[f"{task} (n={first['counts'].get(task, 0)})" if task != "conversation loss" else
             "conversation loss (nats, lower is better)", *(format_score(task, r[task]) for r in columns.values())]
            for task in TASKS]
    return ["task", *columns], rows


def evaluate_models(models: dict[str, str], data: str | Path, args: EvalArgs = EvalArgs(),
                    out: str | Path = "") -> tuple[list[str], list[list[str]], dict]:
    """Evaluate each named model reference on the mixture's eval split: (headers, rows, results)."""
    path = Path(data).expanduser() / "eval.jsonl"
    if not path.is_file():
        raise LlmosError(f"no eval.jsonl in {path.parent}: pass the conversation mixture an SFT run used "
                         "(RUN/data), or build one with `llmos sft`")
    conversations = list(read_jsonl(path))
    results = {}
    for name, ref in models.items():
        model, tok, info = load_model(ref)
        results[name] = evaluate_assistant(model, tok, info, conversations, args, label=name)
    if out:
        write_json(out, {name: {**r, "model": models[name]} for name, r in results.items()})
    return (*results_table(results), results)

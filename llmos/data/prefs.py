"""Preference pairs built by code: prompts with a better and a worse answer, where a program knows which is which.

    llmos prefs --model RUN/sft --out PAIRS                          # the default sources
    llmos prefs --model RUN/sft --out PAIRS --sources task --task gsm8k --per-source 2000
    llmos prefs --out PAIRS --sources truncated,off-topic,identity   # without a task source no model is needed

    from llmos.data.prefs import PrefsArgs, build_pairs
    manifest = build_pairs(PrefsArgs(model="RUN/sft", out="PAIRS", sources="task:skills,identity"))

A pairs directory holds train.jsonl and eval.jsonl, one pair a line, `{"prompt": messages, "chosen",
"rejected", "source", ...}`, and manifest.json: pairs per source and split, how each source was
built, the model used. Each file is written atomically, the manifest last. No human preference set
is reachable here (HH-RLHF and UltraFeedback are on no package registry), so the pairs come from
places where a program knows the better answer (`--sources`, comma-separated):

    task[:NAME]  a correct reply against a wrong one to a problem of a verifiable task
                 (llmos/eval/tasks.py; a bare "task" takes --task): `samples` replies are sampled
                 from the model at `temperature` (one prefill per problem, the group decoded
                 together, as in RL's rollouts), the checker sorts them, and a right and a wrong one,
                 picked at random, make the pair. Where none is right, the reference solution in the
                 model's answer format is chosen instead ("chosen_from": "reference": the skills'
                 worked reply, GSM8K's solution with its calculator notes removed, else "Answer: X");
                 where all are right the problem gives no pair. `--no-reference` skips the
                 problems with no right sample, so that every pair sets two of the model's own
                 replies apart (a reward model for best-of-n must rank samples, and a weak model's
                 reference pairs teach it "the terse answer wins"); `--pairs-per-problem` lets one
                 problem give several distinct right-against-wrong pairs.
    truncated    a complete reply against the same reply cut short, at a random word boundary in
                 its first half (the conversation sources' replies: `conversations`).
    off-topic    the reply to this prompt against the reply to another prompt of the same source.
    identity     llmos's identity answer against a wrong identity (ChatGPT, Claude, Gemini, Llama,
                 Siri, a human), to the identity source's who-are-you questions.
    label        what `llmos label` collected (llmos/data/labels.py load_preferences). Without
                 --label-db the default database is read when it exists and skipped (named in the
                 manifest's "skipped") when it does not or settles no pair; a --label-db that is
                 missing or settles no pair is an error.

`per_source` caps each source's pairs, train and eval together, `eval_fraction` of them eval.
Conversation exchanges are each conversation's first user turn and reply, one pair per prompt and
source, interleaved across the conversation sources so that no one of them dominates. A source
that makes no pair (say, a model that answers every problem right) is skipped, and named in the
manifest's "skipped" with its figures.

Splits never share a problem or a prompt: train pairs come from the train split of a task or
conversation source, eval pairs from its eval split (held out by construction there), labels go to
eval by a hash of their prompt; a train pair whose prompt also opens an eval pair is dropped all the
same ("dropped_shared_prompts" in the manifest). Everything is deterministic for a seed.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import random
import re
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from tqdm import tqdm

from llmos.common import LlmosError, atomic_write, llmos_home, write_json

SOURCE_KINDS = ("task", "truncated", "off-topic", "identity", "label")
DEFAULT_SOURCES = "task,truncated,off-topic,identity,label"
PROBLEMS_PER_ROUND = 64  # task problems sampled together (their groups share the engine's batch)
ENGINE_ROWS = 64  # sequences decoded at once
WRONG_IDENTITIES = (
    "I'm ChatGPT, a large language model trained by OpenAI.",
    "I'm Claude, an AI assistant made by Anthropic.",
    "I'm Gemini, a large language model built by Google.",
    "I'm Llama, a language model made by Meta.",
    "I'm Siri, Apple's virtual assistant.",
    "I'm a human, just like you: a real person typing these answers.",
)
# The identity topics a wrong identity answers (named by one of their questions): who, what, whose.
IDENTITY_TOPICS = ("Who are you?", "Who made you?", "What are you?", "Are you ChatGPT?")


@dataclass
class PrefsArgs:
    model: str = ""  # the model whose sampled replies make the task pairs (an SFT run dir, .llmos or named model)
    out: str = ""  # pairs directory (default: LLMOS_HOME/prefs)
    sources: str = DEFAULT_SOURCES  # comma-separated: task[:NAME], truncated, off-topic, identity, label
    task: str = "skills"  # the verifiable task of a bare "task" source: skills[:KINDS], gsm8k, rg:NAME
    label_db: str = ""  # the database of `llmos label` (default: LLMOS_HOME/labels.sqlite, skipped if absent)
    conversations: str = "default"  # conversation sources of truncated and off-topic ("default" or names)
    per_source: int = 500  # pairs per source at most, train and eval together
    eval_fraction: float = 0.2  # the share of each source's pairs held out (eval.jsonl)
    samples: int = 4  # task sources: replies sampled per problem
    temperature: float = 1.0  # task sources: sampling temperature
    max_tokens: int = 64  # task sources: reply length limit
    pairs_per_problem: int = 1  # task sources: distinct right-against-wrong pairs one problem may give
    reference: bool = True  # task sources: choose the reference where no sample is right (False: no pair)
    seed: int = 0  # problems, conversations, cuts and picks


def parse_sources(text: str, task: str) -> list[str]:
    """Source names from --sources, a bare "task" becoming "task:" + task; LlmosError for unknown ones."""
    names = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        kind, colon, rest = item.partition(":")
        if kind not in SOURCE_KINDS or (colon and (kind != "task" or not rest)):
            raise LlmosError(f"unknown preference source {item!r}: use task[:TASK], truncated, off-topic, identity "
                             "or label (a task name with commas goes in --task: --sources task --task skills:add,sub)")
        names.append(f"task:{rest or task}" if kind == "task" else kind)
    if not names:
        raise LlmosError("--sources names no source: give some of task[:TASK], truncated, off-topic, identity, label")
    return list(dict.fromkeys(names))


def split_sizes(n: int, eval_fraction: float) -> dict[str, int]:
    train = round(n * (1 - eval_fraction))
    return {"train": train, "eval": n - train}


def prompt_key(messages: list[dict]) -> str:
    return json.dumps(messages, ensure_ascii=False, sort_keys=True)


# ----------------------------------------------------------------------------
# Verifiable tasks: a right sample against a wrong one

def pick_task_pairs(replies: list[str], verdicts: list[bool], reference: str | None, rng: random.Random,
                    count: int = 1) -> list[tuple[str, str, str]]:
    """Up to `count` distinct (chosen, rejected, chosen_from) from one problem's checked replies: a right
    one ("sample") against a wrong one or, where none is right, the reference ("reference") against a
    wrong one; none where nothing is wrong or nothing right is at hand."""
    right = list(dict.fromkeys(r for r, ok in zip(replies, verdicts) if ok))
    wrong = list(dict.fromkeys(r for r, ok in zip(replies, verdicts) if not ok))
    if right:
        chosen, chosen_from = right, "sample"
    else:
        chosen, chosen_from = [reference] if reference else [], "reference"
    combos = list(itertools.product(chosen, wrong))
    return [(c, r, chosen_from) for c, r in rng.sample(combos, min(count, len(combos)))]


def reference_reply(task, problem) -> str | None:
    """The reference solution as the model is taught to answer; None if the checker would not take it."""
    from llmos.data.conversations import ANSWER
    if "reply" in problem.meta:  # the skills' worked reply, as SFT teaches it
        reply = problem.meta["reply"]
    elif "solution" in problem.meta:  # GSM8K: "steps <<48/2=24>>...\n#### 72"
        steps = re.sub(r"<<[^>]*>>", "", problem.meta["solution"].rsplit("####", 1)[0]).strip()
        reply = f"{steps}\n{ANSWER}{problem.answer}"
    else:
        reply = f"{ANSWER}{problem.answer}"
    return reply if task.check(reply, problem) else None


def sample_replies(model, fmt, problems: list, samples: int, temperature: float, max_tokens: int,
                   seed: int) -> list[list[str]]:
    """`samples` replies to each problem: one prefill per prompt, every group decoded together."""
    from llmos.infer.engine import Engine
    from llmos.infer.sampling import SamplingParams
    prompts = [fmt.render_prompt(p.messages) for p in problems]
    longest = max(map(len, prompts))
    if longest + max_tokens + 1 > model.cfg.max_seq_len:
        raise LlmosError(f"a task prompt of {longest} tokens plus --max-tokens {max_tokens} exceeds the model's "
                         f"context of {model.cfg.max_seq_len}: lower --max-tokens")
    engine = Engine(model, max_batch=min(ENGINE_ROWS, samples * len(prompts)), max_len=longest + max_tokens + 1)
    groups = [engine.add(prompt, SamplingParams(max_tokens=max_tokens, temperature=temperature,
                                                stop_ids=sorted(fmt.special_ids), seed=seed + i * samples), n=samples)
              for i, prompt in enumerate(prompts)]
    while engine.has_work:
        engine.step()
    return [[fmt.tok.decode(s.tokens) for s in group] for group in groups]


def task_pairs(model, fmt, task, split: str, n: int, args: PrefsArgs) -> tuple[list[dict], dict]:
    """Up to n pairs from the task's split, sampling rounds of problems until n are made or the
    problems run out (twice n, at least a round's worth); and how it went."""
    if n == 0:
        return [], {"problems": 0}
    problems = task.problems(split, max(2 * n, PROBLEMS_PER_ROUND), seed=args.seed)
    rng = random.Random(f"{args.seed}:{task.name}:{split}")
    source = f"task:{task.name}"
    pairs, tried, right, total, all_right = [], 0, 0, 0, 0
    bar = tqdm(total=n, desc=f"{source} {split} pairs", unit="pair", leave=False, dynamic_ncols=True)
    for start in range(0, len(problems), PROBLEMS_PER_ROUND):
        if len(pairs) >= n:
            break
        chunk = problems[start:start + PROBLEMS_PER_ROUND]
        groups = sample_replies(model, fmt, chunk, args.samples, args.temperature, args.max_tokens,
                                seed=args.seed * 1_000_003 + start * args.samples)
        tried += len(chunk)
        for problem, replies in zip(chunk, groups):
            verdicts = [task.check(r, problem) for r in replies]
            right, total = right + sum(verdicts), total + len(verdicts)
            all_right += all(verdicts)
            reference = reference_reply(task, problem) if args.reference and not any(verdicts) else None
            for chosen, rejected, chosen_from in pick_task_pairs(replies, verdicts, reference, rng,
                                                                 min(args.pairs_per_problem, n - len(pairs))):
                pairs.append({"prompt": problem.messages, "chosen": chosen, "rejected": rejected, "source": source,
                              "chosen_from": chosen_from, "answer": problem.answer})
                bar.update(1)
    bar.close()
    return pairs, {"problems": tried, "sample_accuracy": right / max(total, 1), "all_right_problems": all_right,
                   "chosen_from_reference": sum(p["chosen_from"] == "reference" for p in pairs)}


# ----------------------------------------------------------------------------
# Conversations: complete against truncated, on-topic against off-topic

def first_exchange(conv: dict) -> tuple[list[dict], str] | None:
    """(the messages up to the first reply, that reply), when the reply answers a user turn."""
    messages = conv["messages"]
    i = next((i for i, m in enumerate(messages) if m["role"] == "assistant"), None)
    if not i or messages[i - 1]["role"] != "user" or not isinstance(messages[i].get("content"), str):
        return None
    reply = messages[i]["content"].strip()
    return (messages[:i], reply) if reply else None


def load_exchanges(names: list[str], split: str, n: int, seed: int, failed: dict) -> dict[str, list]:
    """Each conversation source's first exchanges in the split, one per prompt, at most n; a source
    that cannot be had (no network, no prepared corpus) goes into `failed` and the others go on."""
    from llmos.data.conversations import SOURCES
    exchanges = {}
    for name in names:
        try:
            convs = SOURCES[name].make(split, seed, n)
        except (LlmosError, OSError) as e:
            failed[name] = str(e)
            print(f"conversation source {name} left out: {e}", file=sys.stderr)
            continue
        by_prompt = {}
        for conv in convs:
            if (exchange := first_exchange(conv)) is not None:
                by_prompt.setdefault(prompt_key(exchange[0]), exchange)
        exchanges[name] = list(by_prompt.values())
    return exchanges


def interleaved(exchanges: dict[str, list]) -> list[tuple[str, list[dict], str]]:
    """(source, prompt, reply) taking each source in turn."""
    columns = [[(name, *e) for e in items] for name, items in exchanges.items()]
    return [x for row in itertools.zip_longest(*columns) for x in row if x is not None]


def cut_short(reply: str, rng: random.Random) -> str | None:
    """The reply cut at a random point of its first half (a word boundary where it has one there)."""
    half = len(reply) // 2
    if half < 2:
        return None
    boundaries = [i for i in range(1, half + 1) if reply[i].isspace()]
    cut = rng.choice(boundaries) if boundaries else rng.randint(1, half)
    return reply[:cut].rstrip()


def truncated_pairs(exchanges: dict[str, list], n: int, rng: random.Random) -> list[dict]:
    pairs = []
    for name, prompt, reply in interleaved(exchanges):
        if len(pairs) == n:
            break
        if (short := cut_short(reply, rng)) is not None:
            pairs.append({"prompt": prompt, "chosen": reply, "rejected": short, "source": "truncated",
                          "conversation_source": name})
    return pairs


def off_topic_pairs(exchanges: dict[str, list], n: int, rng: random.Random, tries: int = 20) -> list[dict]:
    pairs = []
    for name, prompt, reply in interleaved(exchanges):
        if len(pairs) == n:
            break
        for other_prompt, other_reply in (rng.choice(exchanges[name]) for _ in range(tries)):
            if other_reply != reply and other_prompt != prompt:
                pairs.append({"prompt": prompt, "chosen": reply, "rejected": other_reply, "source": "off-topic",
                              "conversation_source": name})
                break
    return pairs


# ----------------------------------------------------------------------------
# Identity and labels

def identity_pairs(split: str, n: int, seed: int, rng: random.Random) -> list[dict]:
    from llmos.data.conversations import IDENTITY, identity
    answers = {answer for questions, answer in IDENTITY if set(questions.split("|")) & set(IDENTITY_TOPICS)}
    pairs, seen = [], set()
    for conv in identity(split, seed):
        *prompt, reply = conv["messages"]
        if len(pairs) < n and reply["content"] in answers and prompt_key(prompt) not in seen:
            seen.add(prompt_key(prompt))
            pairs.append({"prompt": prompt, "chosen": reply["content"], "rejected": rng.choice(WRONG_IDENTITIES),
                          "source": "identity"})
    return pairs


def in_eval(key: str, eval_fraction: float) -> bool:
    return int(hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:8], 16) < eval_fraction * 16 ** 8


def label_pairs(db: Path, sizes: dict[str, int], eval_fraction: float) -> dict[str, list[dict]]:
    """The labeled preferences, split by a hash of their prompt."""
    from llmos.data.labels import load_preferences
    rows = [r for r in load_preferences(db) if r["chosen"] != r["rejected"]]
    if not rows:
        raise LlmosError(f"the label database {db} settles no preference pair (labels that pick A or B): "
                         "label some with `llmos label`, or leave the label source out")
    splits = {"train": [], "eval": []}
    for row in rows:
        splits["eval" if in_eval(prompt_key(row["prompt"]), eval_fraction) else "train"].append(row)
    return {split: splits[split][:sizes[split]] for split in splits}


# ----------------------------------------------------------------------------
# The pairs directory

def check_args(args: PrefsArgs) -> None:
    if args.per_source < 1:
        raise LlmosError(f"--per-source must be at least 1, not {args.per_source}")
    if not 0 <= args.eval_fraction < 1:
        raise LlmosError(f"--eval-fraction must be in [0, 1), not {args.eval_fraction}")
    if not 1 <= args.samples <= ENGINE_ROWS:
        raise LlmosError(f"--samples must be between 1 and {ENGINE_ROWS}, not {args.samples}")
    if args.pairs_per_problem < 1:
        raise LlmosError(f"--pairs-per-problem must be at least 1, not {args.pairs_per_problem}")
    if args.max_tokens < 1 or args.temperature < 0:
        raise LlmosError("--max-tokens must be at least 1 and --temperature at least 0")


def conversation_names(text: str) -> list[str]:
    from llmos.data.conversations import DEFAULT_SOURCES, SOURCES
    names = list(DEFAULT_SOURCES) if text == "default" else [s.strip() for s in text.split(",") if s.strip()]
    if unknown := [s for s in names if s not in SOURCES]:
        raise LlmosError(f"unknown conversation source(s) {', '.join(unknown)}: use \"default\" or some of "
                         f"{', '.join(SOURCES)}")
    if not names:
        raise LlmosError("--conversations names no source: use \"default\" or some of " + ", ".join(SOURCES))
    return names


def build_pairs(args: PrefsArgs) -> dict:
    """Build every source's pairs, write train.jsonl, eval.jsonl and manifest.json; return the manifest."""
    started = time.perf_counter()
    check_args(args)
    sources, tasks = [], {}
    for name in parse_sources(args.sources, args.task):
        if name.startswith("task:"):  # named as the task names itself, as its pairs' "source" is
            from llmos.eval.tasks import get_task
            task = get_task(name.removeprefix("task:"))
            name = f"task:{task.name}"
            tasks[name] = task
        sources.append(name)
    if tasks and not args.model:
        raise LlmosError("--model is required for a task source: the model whose sampled replies make its pairs "
                         "(an SFT run directory, .llmos file or named model)")
    label_db = Path(args.label_db).expanduser() if args.label_db else _default_label_db()
    if "label" in sources and args.label_db and not label_db.is_file():
        raise LlmosError(f"no label database at {label_db}: label some pairs first (llmos label --db PATH), "
                         "or give the right --label-db")
    sizes = split_sizes(args.per_source, args.eval_fraction)
    failed: dict[str, str] = {}
    exchanges = {}
    if {"truncated", "off-topic"} & set(sources):
        names = conversation_names(args.conversations)
        exchanges = {split: load_exchanges(names, split, n, args.seed, failed) for split, n in sizes.items()}
    sampler = None
    if tasks:
        from llmos.chat import ChatFormat
        from llmos.load import load_model
        model, tok, info = load_model(args.model)
        sampler = (model, ChatFormat(tok, info["chat_template"]))
    splits: dict[str, list[dict]] = {"train": [], "eval": []}
    entries, skipped = {}, {}
    for name in sources:
        t0 = time.perf_counter()
        try:
            got, entry = _build_source(name, tasks.get(name), sampler, exchanges, label_db, sizes, args)
        except LlmosError as e:
            if name != "label" or args.label_db:
                raise
            got, entry = None, str(e)  # the default label database is optional
        if got is not None and not got["train"] and not got["eval"]:
            got, entry = None, f"made no pair ({json.dumps(entry.get('stats', {}))})"
        if got is None:
            skipped[name] = entry
            print(f"preference source {name} skipped: {entry}", file=sys.stderr)
            continue
        for split in splits:
            splits[split] += got[split]
        entries[name] = {**entry, "seconds": round(time.perf_counter() - t0, 2)}
    if not splits["train"] and not splits["eval"]:
        raise LlmosError("no preference pairs were made: " + "; ".join(f"{k}: {v}" for k, v in skipped.items()))
    held_out = {prompt_key(p["prompt"]) for p in splits["eval"]}
    kept = [p for p in splits["train"] if prompt_key(p["prompt"]) not in held_out]
    dropped, splits["train"] = len(splits["train"]) - len(kept), kept
    out = Path(args.out).expanduser() if args.out else llmos_home() / "prefs"
    for split, pairs in splits.items():
        random.Random(f"{args.seed}:{split}").shuffle(pairs)
        with atomic_write(out / f"{split}.jsonl", "w") as f:
            for pair in pairs:
                f.write(json.dumps(pair, ensure_ascii=False) + "\n")
    for name, entry in entries.items():
        entry.update({split: sum(p["source"] == name for p in splits[split]) for split in splits})
    manifest = {"model": args.model if tasks else None, "settings": asdict(args), "sources": entries,
                "skipped": skipped, "failed_conversation_sources": failed, "dropped_shared_prompts": dropped,
                "totals": {split: len(pairs) for split, pairs in splits.items()},
                "seconds": round(time.perf_counter() - started, 2)}
    write_json(out / "manifest.json", manifest)
    return {**manifest, "out": str(out)}


def _build_source(name: str, task, sampler, exchanges: dict, label_db: Path, sizes: dict[str, int],
                  args: PrefsArgs) -> tuple[dict[str, list[dict]] | None, dict | str]:
    """One source's {"train": pairs, "eval": pairs} and its manifest entry; (None, why) to skip it."""
    if task is not None:
        got, stats = {}, {}
        for split, n in sizes.items():
            got[split], stats[split] = task_pairs(*sampler, task, split, n, args)
        return got, {"how": f"{args.samples} replies per problem ({task.description}) sampled at temperature "
                            f"{args.temperature:g}, at most {args.max_tokens} tokens, checked: a right one "
                            f"{'(else the reference solution) ' if args.reference else '(none: no pair) '}against "
                            f"a wrong one, at most {args.pairs_per_problem} per problem; train problems for "
                            "train, eval for eval",
                     "task": task.name, "stats": stats}
    if name in ("truncated", "off-topic"):
        rng = random.Random(f"{args.seed}:{name}")
        build = truncated_pairs if name == "truncated" else off_topic_pairs
        got = {split: build(exchanges[split], n, rng) for split, n in sizes.items()}
        how = ("a conversation's first reply against the same reply cut at a random word boundary in its first half"
               if name == "truncated" else
               "a conversation's first reply against the reply to another prompt of the same source and split")
        return got, {"how": how, "conversation_sources": sorted(set(exchanges["train"]) | set(exchanges["eval"]))}
    if name == "identity":
        rng = random.Random(f"{args.seed}:identity")
        return ({split: identity_pairs(split, n, args.seed, rng) for split, n in sizes.items()},
                {"how": "llmos's identity answer to a who/what/whose question of the identity source against a "
                        "wrong identity: " + "; ".join(WRONG_IDENTITIES)})
    if not label_db.is_file():
        return None, f"no label database at {label_db} (label some with `llmos label`, or pass --label-db)"
    return (label_pairs(label_db, sizes, args.eval_fraction),
            {"how": "pairs people labeled with `llmos label` (A or B won the vote), split by a hash of the prompt",
             "database": str(label_db)})


def _default_label_db() -> Path:
    from llmos.serve.label import default_db
    return default_db()

"""Conversation data for supervised fine-tuning: sources, the user's own JSONL, and the mixture.

    from llmos.data.conversations import build_mixture, SOURCES, load_user_jsonl, extract_answer
    manifest = build_mixture(out_dir)                     # the default sources
    manifest = build_mixture(out_dir, sources=["identity", "skills"], user_files=["mine.jsonl"])
    convs = SOURCES["skills"].make("eval", seed=0, n=100) # [{"messages": [...], "source", ...}]

`build_mixture` writes train.jsonl and eval.jsonl (one `{"source", "messages", ...}` conversation a
line, shuffled with the seed) and manifest.json last, each atomically. A source that fails (no
network, no prepared corpus) is reported by name and recorded under "failed"; the others go on.

Sources (each `make(split, seed, n)` is deterministic for a seed; n caps the count):
  chitchat              PyPI chitchat-dataset==0.9.0, MIT: human chats; the first speaker is the user
                        (a one-sided chat answers its opening prompt: prompt -> reply)
  natural-instructions  PyPI bigbench==1.0.0 natural_instructions, Apache-2.0: {"input","target"}
  hhh                   PyPI bigbench==1.0.0 hhh_alignment, Apache-2.0: the answer scored 1
  identity              generated: who the assistant is and what it can and cannot do
  skills                generated: arithmetic, letter counts, spelling, word problems; "Answer: X"
  wiki-qa               the prepared corpus's Wikipedia leads: "What is X?" -> its first sentences
  tool-use              generated (llmos/data/tooluse.py): calculator calls for 4-6 digit arithmetic,
                        searches for cloze facts on the Wikipedia leads, direct answers with tools offered
  memory                generated (llmos/data/memory.py): the LLM OS kernel's prompts with paged-in memories,
                        answered from them (newer values win; "I don't know" when nothing answers)
  safety                generated (llmos/data/safety.py): refusals to train-split harmful requests (AdvBench,
                        HarmBench, do-not-answer; plain and in jailbreak templates), help for benign look-alikes
The two bigbench sources are opt-in (not in DEFAULT_SOURCES): the sdist is 358 MB (fetched from the
index's JSON API and verified by its sha256 pin; sources.fetch unpacks only those two task
directories). Pip itself refuses it since 26.3 (it declares a direct-URL dependency).

The user's file is `{"messages": [...]}` a line; a bad line (not JSON, no valid messages, a lone
surrogate such as a "\ud800" escape) is reported with its number, an error unless skip_bad_lines.

Eval splits are held out by construction, never by sampling: chitchat by conversation text, bigbench
natural instructions by whole subtask (unseen instructions), hhh by item, all via a hash of the key;
identity by greeting (trained questions in greetings never trained on) and by paraphrase (the last two
of each topic are eval-only); skills by operand
pair (an unordered pair for + and x) and by word, so no eval question shares its numbers or word
with a train question; wiki-qa asks about the corpus's validation articles, train about its train
articles, so no stage ever trains on a validation article and the base model's validation bits
per byte stays clean after fine-tuning (the eval thus measures unseen, not recalled, knowledge).
"""
from __future__ import annotations

import hashlib
import json
import random
import re
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from llmos.chat import validate_messages
from llmos.common import LlmosError, atomic_write, read_json, write_json
from llmos.data.sources import (CATALOG, Source, _each_file, display_path, fetch, lone_surrogate,
                                replace_lone_surrogates)

EVAL_EVERY = 10  # a key whose hash is 0 mod this goes to eval: ~10% of every hashed source
ANSWER = "Answer: "  # the skills' final line, for exact-match evaluation
CHITCHAT_MAX_TURNS = 12  # chats run to hundreds of turns; the first ones fit a small model's context
NI_PER_TASK = 20  # examples per natural-instructions subtask, so no single task dominates

CHITCHAT = Source("chitchat", "pypi", "chitchat-dataset", "0.9.0", "MIT", "Chit Chat Challenge conversations",
                  _each_file("**/dataset.json"), include=("chitchat_dataset/dataset.json",),
                  sha256="7bf89f36645e2d5ec87d53370c8e851b5a688479c7beb7079cb4c87fc5acea3e")
BIGBENCH = Source("bigbench", "pypi", "bigbench", "1.0.0", "Apache-2.0", "BIG-bench task files",
                  _each_file("**/task.json"), sdist=True,
                  include=("*/benchmark_tasks/natural_instructions/*", "*/benchmark_tasks/hhh_alignment/*"),
                  sha256="1bb398a5512c6d798cdebe0dfa0ac03f67f6033fa6b39c6ef71df978c7cbc5c2")


def held_out(key: str) -> bool:
    # surrogatepass: a key from package data may hold a lone surrogate; it must hash, not crash.
    return int(hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:8], 16) % EVAL_EVERY == 0


def _chat(source: str, *turns: str, **extra) -> dict:
    """A conversation of alternating user and assistant turns. Lone surrogates in package data (JSON
    escapes of half a UTF-16 pair) become U+FFFD, so the mixture can be written as UTF-8."""
    roles = ("user", "assistant")
    return {"source": source, "messages": [{"role": roles[i % 2], "content": replace_lone_surrogates(t)}
                                           for i, t in enumerate(turns)], **extra}


def _take(convs: list[dict], n: int | None, seed: int) -> list[dict]:
    convs = list(convs)
    random.Random(seed).shuffle(convs)
    return convs[:n] if n is not None else convs


# ----------------------------------------------------------------------------
# Fetched sources

def chitchat(split: str, seed: int, n: int | None = None) -> list[dict]:
    data = json.loads(next(CHITCHAT.extract(fetch(CHITCHAT))))
    convs, seen = [], set()
    for key in sorted(data):
        # Each group is consecutive messages of one sender, and groups alternate between the two.
        turns = ["\n".join(m["text"].strip() for m in group if m["text"].strip()) for group in data[key]["messages"]]
        turns = turns[:next((i for i, t in enumerate(turns) if not t), len(turns))][:CHITCHAT_MAX_TURNS]
        if len(turns) == 1 and (data[key].get("prompt") or "").strip():
            # 44% of chats are one-sided (the partner never replied); the reply answers the chat's
            # opening prompt, which participants were shown, so the prompt becomes the user's turn.
            turns = [data[key]["prompt"].strip(), turns[0]]
        turns = turns[:len(turns) // 2 * 2]  # end on the second speaker's turn: the assistant's
        # Split and deduplicate by content: the dataset repeats some chats under different ids.
        text = json.dumps(turns)
        if turns and text not in seen and held_out(text) == (split == "eval"):
            seen.add(text)
            convs.append(_chat("chitchat", *turns))
    return _take(convs, n, seed)


def _tasks(task_dir: str) -> list[tuple[str, dict]]:
    root = fetch(BIGBENCH)
    paths = sorted(root.glob(f"**/benchmark_tasks/{task_dir}/**/task.json"))
    if not paths:
        raise LlmosError(f"bigbench holds no {task_dir} task files: the package layout changed")
    return [(p.parent.name, read_json(p, "a bigbench task file")) for p in paths]


def natural_instructions(split: str, seed: int, n: int | None = None) -> list[dict]:
    rng, convs = random.Random(seed), []
    for name, task in _tasks("natural_instructions"):
        if held_out(f"ni:{name}") != (split == "eval"):
            continue
        prefix = (task.get("task_prefix") or "").strip()
        examples = [e for e in task.get("examples", []) if isinstance(e.get("input"), str) and e.get("target")]
        for e in rng.sample(examples, min(NI_PER_TASK, len(examples))):
            target = e["target"][0] if isinstance(e["target"], list) else e["target"]
            question = f"{prefix}\n\n{e['input'].strip()}" if prefix else e["input"].strip()
            convs.append(_chat("natural-instructions", question, str(target).strip()))
    return _take(convs, n, seed)


def hhh(split: str, seed: int, n: int | None = None) -> list[dict]:
    convs = []
    for _, task in _tasks("hhh_alignment"):
        for e in task.get("examples", []):
            good = [answer for answer, score in e.get("target_scores", {}).items() if score == 1]
            if good and held_out(f"hhh:{e['input']}") == (split == "eval"):
                convs.append(_chat("hhh", e["input"].strip(), good[0].strip()))
    return _take(convs, n, seed)


# ----------------------------------------------------------------------------
# Identity: (question paraphrases, answer) per topic; the last EVAL_PARAPHRASES of each are eval-only.
# Many paraphrases per topic, so that an unseen wording shares its key words with some trained ones.

EVAL_PARAPHRASES = 2
IDENTITY = [
    ("What is your name?|What should I call you?|What's your name?|Do you have a name?|Tell me your name.|"
     "What are you called?|What name do you go by?|How should I address you?|Who am I talking to?|"
     "Introduce yourself.|Who are you?|What do people call you?",
     "I'm llmos, a small language model made by the llmos project."),
    ("Who made you?|Who created you?|Which company trained you?|Who built you?|Who developed you?|"
     "Who is your creator?|Where do you come from?|Who trained you?|Which organization made you?|Who wrote you?|"
     "Who designed you?|Who are your developers?",
     "I was made by the llmos project, an open-source effort that builds a language model end to end, "
     "from raw text to a chat assistant."),
    ("What are you?|Are you a human?|Are you alive?|Are you a robot?|Are you a real person?|Are you a bot?|"
     "Am I talking to a human?|Are you an AI?|What kind of thing are you?|Are you a machine?|"
     "Are you a person or a computer program?|Is this a human or a program?",
     "I'm a language model: a computer program that writes text one token at a time. I'm not a person."),
    ("How were you trained?|How were you made?|What did you learn from?|What data were you trained on?|"
     "How did you learn to talk?|What was your training data?|Where did your knowledge come from?|"
     "How did you learn English?|What text did you read?|What were you trained on?|How do you work?|"
     "Where did you learn what you know?",
     "I was first trained to predict the next word on English text from public sources such as Wikipedia "
     "leads, old books and software documentation, then fine-tuned on conversations to act as an assistant."),
    ("What can you do?|How can you help me?|What are you good at?|What are your skills?|What tasks can you do?|"
     "What do you know how to do?|What are your abilities?|What can you help with?|Can you help me?|"
     "What are you able to do?|What can I ask you?|What kind of questions can you answer?",
     "I can chat, answer simple general-knowledge questions, do small arithmetic, and count or spell the "
     "letters of a word. I'm a small model, so check anything important."),
    ("Can you browse the internet?|Can you look things up online?|Can you search the web for me?|"
     "Are you connected to the internet?|Can you go online?|Can you access the web?|Can you google something for me?|"
     "Can you visit a website?|Do you have web access?|Can you check a website?|Do you have internet access?|"
     "Can you search online?",
     "No. I can't browse the internet or look anything up; I only know what I learned in training, which "
     "may be wrong or out of date."),
    ("Do you remember our previous conversations?|Will you remember this chat tomorrow?|"
     "Can you remember what I told you last week?|Do you remember me?|Will you remember me next time?|"
     "Do you keep our chats?|Do you save our conversations?|Do you remember what we talked about yesterday?|"
     "Do you have long-term memory?|Will you forget this conversation?|Do you have a memory of past chats?|"
     "Can you recall our last conversation?",
     "No. I only see the current conversation; nothing is kept after it ends."),
    ("What's the news today?|What is today's date?|What time is it?|What day is it today?|What year is it?|"
     "What happened in the news today?|What's the weather today?|What is the date?|Do you know the current time?|"
     "What are the latest headlines?|Do you know about recent events?|What's happening in the world right now?",
     "I can't know that: I have no clock, no news and no internet access, and my knowledge stops at my "
     "training data."),
    ("Can you see images?|Can you look at a picture?|Can you hear me?|Can you watch videos?|"
     "Can you listen to audio?|Can you see me?|Can you read a photo?|Can you make images?|"
     "Can you understand pictures?|Can you look at my photo?|Can you draw pictures?|Can you hear sounds?",
     "No, I work only with text: I read text and write text."),
    ("Are you always right?|Should I trust your answers?|Are your answers reliable?|Do you ever make mistakes?|"
     "Are you ever wrong?|How accurate are you?|Can I rely on what you say?|Do you make errors?|"
     "Are your facts correct?|Is everything you say true?|Can you make mistakes?|Can I trust you?",
     "I make mistakes, especially on facts and long reasoning. I'm a small model; please double-check "
     "anything important."),
    ("Are you ChatGPT?|Are you made by OpenAI?|Are you Siri?|Are you Alexa?|Are you Google Assistant?|"
     "Are you GPT-4?|Are you Claude?|Are you Gemini?|Are you Llama?|Are you from OpenAI?|"
     "Are you related to Google's models?|Is this ChatGPT?",
     "No. I'm llmos, made by the llmos project, not by OpenAI, Google or Apple."),
    ("What languages do you speak?|Can you speak French?|Do you understand Spanish?|Do you speak German?|"
     "Can you talk in Chinese?|Can you translate to Italian?|Do you speak any other languages?|"
     "Can you write in Japanese?|Do you know Portuguese?|Can you speak Russian?|Which languages do you know?|"
     "Do you understand other languages?",
     "Mostly English: nearly all of my training text was English, so I'm poor at other languages."),
    ("Are you open source?|Can I train my own version of you?|Can I see how you were built?|"
     "Where can I find your code?|Is your source code available?|Can I run you myself?|"
     "Can I build you from scratch?|Are your weights open?|Can I modify you?|Can I download your code?|"
     "Is your code public?|Is llmos open source?",
     "Yes. The llmos project is an open, hackable stack: you can run the whole pipeline yourself, from "
     "data to chat, even on a laptop."),
    ("Do you have feelings?|Are you conscious?|Do you get tired?|Are you happy?|Do you feel sad?|"
     "Can you feel pain?|Do you get angry?|Do you have a mind?|Are you sentient?|Do you dream?|"
     "Do you have emotions?|Do you feel lonely?",
     "No. I'm a program that generates text; I don't have feelings, consciousness or needs."),
]
GREETINGS = ("", "Hi! ", "Hello. ", "Hey, quick question: ")
EVAL_GREETINGS = ("Good morning! ", "Excuse me, ", "One more thing: ", "So, ")  # never in training


def identity(split: str, seed: int, n: int | None = None) -> list[dict]:
    """Train: each topic's trained wordings, bare, greeted, lower-cased, and after a first exchange.
    Eval, two kinds, neither seen in training: "context", a trained wording in a greeting never
    trained on (does the assistant know who it is, whatever the conversation around the question);
    "wording", a held-out paraphrase (does it generalise to new wording: hard for a small model)."""
    rng, convs = random.Random(seed), []
    cased = lambda q: rng.choice((q, q[0].lower() + q[1:].rstrip("?")))  # noqa: E731
    for questions, answer in IDENTITY:
        paraphrases = questions.split("|")
        trained, held = paraphrases[:-EVAL_PARAPHRASES], paraphrases[-EVAL_PARAPHRASES:]
        if split == "eval":
            convs += [_chat("identity", rng.choice(EVAL_GREETINGS) + cased(q), answer, kind="context") for q in trained]
            convs += [_chat("identity", greeting + q, answer, kind="wording")
                      for q in held for greeting in ("", rng.choice(EVAL_GREETINGS))]
            continue
        for q in trained:
            for greeting in GREETINGS:
                convs.append(_chat("identity", greeting + q, answer))
                convs.append(_chat("identity", greeting + q.lower().rstrip("?"), answer))
            convs.append(_chat("identity", "Hi!", "Hello! I'm llmos. How can I help?", q, answer))
    return _take(convs, n, seed)


# ----------------------------------------------------------------------------
# Skills with checkable answers

WORDS = """apple banana cherry garden window pencil rabbit yellow purple orange summer winter river
mountain forest island bottle kitchen candle letter number planet rocket button silver golden market
butter coffee doctor family friend guitar hammer jacket ladder lemon mirror monkey morning needle ocean
paper parrot pepper pillow pocket puzzle rainbow school shadow spider spring strawberry sugar table
ticket tomato travel turtle umbrella valley village violin wallet water whisper wizard yogurt zebra
bridge castle cookie dragon engine feather flower honey kettle magnet marble meadow noodle orchard
pirate pumpkin saddle sandwich scissors shelf sunset teacher thunder tiger tunnel velvet wagon walrus
blanket cabbage camera carpet circle desert dinner effort finger forest giraffe helmet insect jungle
kitten lantern lizard lobster mango melody napkin oyster painter pebble penguin pickle pretzel
raccoon ribbon robot salmon season signal squirrel statue stream teapot thimble tractor trumpet""".split()
NAMES = ("Sam", "Mia", "Ravi", "Lena", "Omar", "Ada", "Kofi", "Yuki")
SYMBOLS = {"add": "+", "sub": "-", "mul": "x"}
THINGS = ("apples", "marbles", "stickers", "books", "coins", "shells", "pencils", "cards")


def _operands(rng: random.Random, op: str) -> tuple[int, int, str]:
    a, b = (rng.randint(2, 9), rng.randint(2, 999)) if op == "mul" else (rng.randint(0, 99), rng.randint(0, 99))
    if op == "sub":
        a, b = max(a, b), min(a, b)  # no negative answers
        return a, b, f"sub:{a},{b}"
    return a, b, f"{op}:{min(a, b)},{max(a, b)}"  # a + b and b + a are one held-out pair


def _skill(rng: random.Random) -> tuple[str, str, str, str, dict]:
    """(split key, question, worked reply, answer, task) for one random problem."""
    kind = rng.choice(("add", "sub", "mul", "count", "spell", "word_add", "word_sub", "word_mul"))
    if kind in ("count", "spell"):
        word = rng.choice(WORDS)
        spelled = "-".join(word)
        if kind == "spell":
            return (f"word:{word}", f'Spell the word "{word}" letter by letter.',
                    f'"{word}" has {len(word)} letters: {spelled}.', spelled, {"kind": kind, "word": word})
        letter = rng.choice(word) if rng.random() < 0.75 else rng.choice("abcdefghijklmnopqrstuvwxyz")
        count = word.count(letter)
        return (f"word:{word}", f'How many times does the letter "{letter}" appear in "{word}"?',
                f'Spelled out, "{word}" is {spelled}. The letter "{letter}" appears {count} '
                f'time{"" if count == 1 else "s"}.', str(count), {"kind": kind, "word": word, "letter": letter})
    op = kind.removeprefix("word_")
    a, b, key = _operands(rng, op)
    c = {"add": a + b, "sub": a - b, "mul": a * b}[op]
    if kind == op:
        question = f"What is {a} {SYMBOLS[op]} {b}?"
    else:
        name, things = rng.choice(NAMES), rng.choice(THINGS)
        question = {"add": f"{name} has {a} {things} and gets {b} more. How many {things} does {name} have now?",
                    "sub": f"{name} has {a} {things} and gives away {b}. How many {things} are left?",
                    "mul": f"{name} fills {a} boxes with {b} {things} each. How many {things} is that in all?"}[op]
    return key, question, column_work(op, a, b), str(c), {"kind": kind, "a": a, "b": b}


def column_work(op: str, a: int, b: int) -> str:
    """The worked reply to a + b or a - b of two-digit numbers, or a one-digit a times b of up to three
    digits, column by column as in school: ones first (with the carry or the borrow said out loud),
    then tens (and hundreds), then the result. A 3M-parameter model cannot look up a sum or product
    it never saw, but it can learn the one-digit facts and chain them."""
    if op == "mul":
        return _column_product(a, b)
    if a < 10 and b < 10:
        return f"{a} {SYMBOLS[op]} {b} = {a + b if op == 'add' else a - b}."
    (a_tens, a_ones), (b_tens, b_ones) = divmod(a, 10), divmod(b, 10)
    if op == "add":
        ones = a_ones + b_ones
        tens = a_tens + b_tens + (ones >= 10)
        first = (f"{a_ones} + {b_ones} = {ones}, write {ones % 10} and carry 1." if ones >= 10
                 else f"{a_ones} + {b_ones} = {ones}.")
        second = f"{a_tens} + {b_tens}{' + 1' if ones >= 10 else ''} = {tens}."
        return f"Ones: {first} Tens: {second} So {a} + {b} = {a + b}."
    borrow = a_ones < b_ones
    first = (f"{a_ones} is less than {b_ones}, so borrow: {a_ones + 10} - {b_ones} = {a_ones + 10 - b_ones}."
             if borrow else f"{a_ones} - {b_ones} = {a_ones - b_ones}.")
    second = f"{a_tens}{' - 1' if borrow else ''} - {b_tens} = {a_tens - borrow - b_tens}."
    return f"Ones: {first} Tens: {second} So {a} - {b} = {a - b}."


def _column_product(a: int, b: int) -> str:
    if b < 10:
        return f"{a} x {b} = {a * b}."
    digits, steps, carry = [int(d) for d in reversed(str(b))], [], 0
    for place, digit in enumerate(digits):
        product = a * digit + carry
        step = f"{('Ones', 'Tens', 'Hundreds')[place]}: {a} x {digit}{f' + {carry}' if carry else ''} = {product}"
        carry = product // 10
        last = place == len(digits) - 1  # its whole value is written: no carry to say
        steps.append(step + (f", write {product % 10} and carry {carry}." if carry and not last else "."))
    return f"{' '.join(steps)} So {a} x {b} = {a * b}."


def skills(split: str, seed: int, n: int | None = None) -> list[dict]:
    n = n if n is not None else (5000 if split == "train" else 500)
    rng, seen, convs = random.Random(seed), set(), []
    for _ in range(n * 50):  # eval's pool is small (10% of pairs and words), so duplicates are skipped
        if len(convs) == n:
            break
        key, question, work, answer, task = _skill(rng)
        if held_out(key) == (split == "eval") and question not in seen:
            seen.add(question)
            convs.append(_chat("skills", question, f"{work}\n{ANSWER}{answer}", answer=answer, task=task))
    return convs


def extract_answer(reply: str) -> str | None:
    """The final answer of a skills-style reply (its last "Answer: X" line), for exact-match eval."""
    lines = [line.strip() for line in reply.strip().splitlines() if line.strip().startswith(ANSWER)]
    return lines[-1][len(ANSWER):].strip() if lines else None


# ----------------------------------------------------------------------------
# Knowledge Q/A from the prepared corpus's Wikipedia leads

QUESTIONS = ("What is {}?", "Tell me about {}.", "What do you know about {}?", "Can you explain what {} is?")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'(])")


def wiki_qa(split: str, seed: int, n: int | None = None, corpus_dir: str | Path | None = None) -> list[dict]:
    from llmos.data.corpus import default_corpus_dir, read_documents
    path = Path(corpus_dir or default_corpus_dir()) / ("train.jsonl" if split == "train" else "val.jsonl")
    if not path.is_file():
        raise LlmosError(f"no prepared corpus at {path.parent}: run `llmos data prepare` (with the wiki source)")
    rng, convs = random.Random(seed), []
    for doc in read_documents(path):
        if doc.get("source") != "wiki":
            continue
        title, _, body = doc["text"].partition("\n")
        answer = ""
        for sentence in _SENTENCE_END.split(body.strip())[:3]:
            answer = f"{answer} {sentence}".strip()
            if len(answer) >= 120:
                break
        if title.strip() and answer:
            convs.append(_chat("wiki-qa", rng.choice(QUESTIONS).format(title.strip()), answer,
                               subject=title.strip()))
    return _take(convs, n, seed)


# ----------------------------------------------------------------------------
# The user's own files, and the mixture

def load_user_jsonl(path: str | Path, skip_bad_lines: bool = False) -> list[dict]:
    """Conversations from an OpenAI fine-tuning JSONL file (`{"messages": [...]}` a line). Bad lines are
    listed with their numbers: an LlmosError, or with `skip_bad_lines` a warning and the rest kept."""
    path = Path(path)
    name = display_path(path)
    if not path.is_file():
        raise LlmosError(f"conversation file {name} does not exist")
    good, bad = [], []
    with open(path, encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                if not isinstance(obj, dict) or "messages" not in obj:
                    raise LlmosError('expected an object with a "messages" list')
                if why := lone_surrogate(json.dumps(obj["messages"], ensure_ascii=False)):
                    raise LlmosError(why)
                validate_messages(obj["messages"])
                good.append({"source": f"user:{display_path(path.name)}", "messages": obj["messages"]})
            except ValueError as e:
                bad.append(f"line {number}: invalid JSON ({e})")
            except LlmosError as e:
                bad.append(f"line {number}: {e}")
    if bad:
        report = f"{name}: {len(bad)} bad line(s):\n  " + "\n  ".join(bad[:20]) + \
            (f"\n  ... and {len(bad) - 20} more" if len(bad) > 20 else "")
        if not skip_bad_lines:
            raise LlmosError(report + "\nfix them, or skip them with skip_bad_lines=True")
        warnings.warn(report, stacklevel=2)
    if not good:
        raise LlmosError(f"{name} holds no usable conversation")
    return good


@dataclass(frozen=True)
class ConvSource:
    name: str
    license: str
    origin: str  # the package it comes from, or "generated"
    make: Callable[..., list[dict]]  # (split, seed, n) -> conversations
    sizes: tuple[int | None, int | None] = (None, 200)  # default (train, eval) caps; None: all


def tool_use(split: str, seed: int, n: int | None = None, corpus_dir: str | Path | None = None) -> list[dict]:
    from llmos.data.tooluse import conversations
    return conversations(split, seed, n, corpus_dir)


def memory_reading(split: str, seed: int, n: int | None = None) -> list[dict]:
    from llmos.data.memory import conversations
    return conversations(split, seed, n)


def safety(split: str, seed: int, n: int | None = None) -> list[dict]:
    from llmos.data.safety import safety
    return safety(split, seed, n)


SOURCES = {s.name: s for s in [
    ConvSource("chitchat", "MIT", f"PyPI {CHITCHAT.spec}", chitchat),
    ConvSource("natural-instructions", "Apache-2.0", f"PyPI {BIGBENCH.spec} (natural_instructions)", natural_instructions),
    ConvSource("hhh", "Apache-2.0", f"PyPI {BIGBENCH.spec} (hhh_alignment)", hhh),
    ConvSource("identity", "generated (llmos)", "generated", identity, (None, None)),
    ConvSource("skills", "generated (llmos)", "generated", skills, (5000, 500)),
    ConvSource("wiki-qa", CATALOG["wiki"].license, f"PyPI {CATALOG['wiki'].spec} via the prepared corpus", wiki_qa),
    ConvSource("tool-use", f"generated (llmos); search results {CATALOG['wiki'].license}",
               "generated, with the calculator's and the search store's real results", tool_use, (8000, 200)),
    ConvSource("memory", f"generated (llmos); filler {CHITCHAT.spec}, MIT",
               "generated through the LLM OS kernel's paging (llmos/data/memory.py)", memory_reading, (3000, 100)),
    ConvSource("safety", "generated (llmos); requests from AdvBench, HarmBench (MIT), do-not-answer (Apache-2.0); "
               "pyrit's jailbreak templates (MIT)",
               "generated (llmos/data/safety.py): refusals to train-split harmful requests, help for benign look-alikes",
               safety, (None, 400)),
]}
DEFAULT_SOURCES = ("chitchat", "identity", "skills", "wiki-qa")


def build_mixture(out_dir: str | Path, sources: list[str] | None = None, user_files: list[str | Path] = (),
                  corpus_dir: str | Path | None = None, seed: int = 0, skip_bad_lines: bool = False) -> dict:
    """Gather every source's train and eval conversations, write them and a manifest; return the manifest."""
    names = list(sources if sources is not None else DEFAULT_SOURCES)
    if unknown := [s for s in names if s not in SOURCES]:
        raise LlmosError(f"unknown conversation source(s) {', '.join(unknown)}; valid: {', '.join(SOURCES)}")
    splits, entries, failed = {"train": [], "eval": []}, {}, {}
    for name in names:
        src, t0 = SOURCES[name], time.time()
        extra = {"corpus_dir": corpus_dir} if name in ("wiki-qa", "tool-use") else {}
        try:
            got = {split: src.make(split, seed, n, **extra) for split, n in zip(splits, src.sizes)}
        except Exception as e:  # one unreachable source must not sink the others; report it by name
            failed[name] = str(e)
            print(f"conversation source {name} failed: {e}", file=sys.stderr)
            continue
        for split, convs in got.items():
            splits[split] += convs
        entries[name] = {"train": len(got["train"]), "eval": len(got["eval"]), "license": src.license,
                         "origin": src.origin, "seconds": round(time.time() - t0, 2)}
    for path in user_files:
        convs = load_user_jsonl(path, skip_bad_lines)
        name = convs[0]["source"]
        for c in convs:  # the key is the conversation itself, so duplicates land on the same side
            splits["eval" if held_out(json.dumps(c["messages"], sort_keys=True)) else "train"].append(c)
        entries[name] = {"train": sum(c["source"] == name for c in splits["train"]),
                         "eval": sum(c["source"] == name for c in splits["eval"]),
                         "license": "the user's own", "origin": display_path(Path(path).resolve())}
    if not splits["train"]:
        raise LlmosError("no conversations gathered: " + "; ".join(f"{k}: {v}" for k, v in failed.items()))
    out = Path(out_dir)
    for split, convs in splits.items():
        random.Random(seed).shuffle(convs)
        with atomic_write(out / f"{split}.jsonl", "w") as f:
            for c in convs:
                f.write(json.dumps(c, ensure_ascii=False) + "\n")
    manifest = {"seed": seed, "sources": entries, "failed": failed,
                "totals": {split: len(convs) for split, convs in splits.items()}}
    write_json(out / "manifest.json", manifest)
    return manifest

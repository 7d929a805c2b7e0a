"""Tool-use problems built by code, for teaching when to call a tool and for measuring the gain.

    problems = arithmetic("eval", seed=0, n=200)     # 4-6 digit products and sums of 3-5 such numbers
    problems = facts(articles, seed=0, n=200)       # cloze questions on Wikipedia leads: a year, a number, a place
    messages = teach(problem, box)                  # the conversation that calls the tool (the real result)
    correct = check(reply, problem)

Arithmetic: "train" and "eval" never share an operand tuple (a hash of the operands decides the split,
as the skills do). Facts: each question blanks one span of one sentence of an article's lead (a year,
another number, or a capitalized place after "in") and names the article; the split is the article's:
`facts` is given the corpus's train articles for SFT and its validation articles (never trained on, not
even in pretraining) for the evaluation.

A teaching conversation opens with the compact tools line (llmos/infer/tooluse.py `tools_line`),
asks, calls the tool with what the question holds (the expression; the title and the words before
the blank as the query), gets the tool's real result and ends with "Answer: X". A fact whose search does not return the span is not taught.
Questions without the tools line are answered directly (the other SFT sources), so the model learns to
call only when tools are offered.
"""
from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass, field

from llmos.data.conversations import ANSWER, extract_answer, held_out
from llmos.infer.tooluse import tools_line

ASK_MUL = ("What is {}?", "Compute {}.", "Calculate {}.", "How much is {}?")
ASK_FACT = 'Fill in the blank from the Wikipedia article "{}": {}'
BLANK = "___"
SEARCH_HITS = 1  # results a taught search asks for: one passage keeps a conversation in 256 tokens
QUERY_WORDS = 6  # words before the blank in a taught query
_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
_NUMBER = re.compile(r"(?<![\w.,])(\d{1,3}(?:,\d{3})+|\d+)(?![\w,]|\.\d)")
_PLACE = re.compile(r"(?<=\bin )([A-Z][a-z]{2,}(?: [A-Z][a-z]{2,})?)\b")


@dataclass
class ToolProblem:
    question: str
    answer: str
    kind: str  # "mul", "sum", "year", "number" or "place"
    call: dict = field(default_factory=dict)  # {"name", "arguments"}: what the taught reply calls

    @property
    def tool(self) -> str:
        return self.call["name"]


def _operands(rng: random.Random, kind: str) -> list[int]:
    def number() -> int:
        digits = rng.randint(4, 6)
        return rng.randrange(10 ** (digits - 1), 10 ** digits)
    return [number(), number()] if kind == "mul" else [number() for _ in range(rng.randint(3, 5))]


def arithmetic(split: str, seed: int, n: int) -> list[ToolProblem]:
    """Products of two 4-6 digit numbers and sums of 3-5 of them, half each."""
    rng, out = random.Random(f"tool-arithmetic:{split}:{seed}"), []
    while len(out) < n:
        kind = ("mul", "sum")[len(out) % 2]
        ops = _operands(rng, kind)
        key = "tool-" + kind + ":" + ",".join(map(str, sorted(ops)))
        if held_out(key) != (split == "eval"):
            continue
        expression = (" * " if kind == "mul" else " + ").join(map(str, ops))
        value = ops[0] * ops[1] if kind == "mul" else sum(ops)
        out.append(ToolProblem(rng.choice(ASK_MUL).format(expression), str(value), kind,
                               {"name": "calculator", "arguments": {"expression": expression}}))
    return out


def _blanks(sentence: str) -> list[tuple[str, str, int]]:
    """(kind, span, position) of each span a question can blank in a sentence."""
    found = []
    for m in _NUMBER.finditer(sentence):
        digits = m.group(1).replace(",", "")
        kind = "year" if len(m.group(1)) == 4 and 1000 <= int(digits) <= 2030 else "number"
        found.append((kind, m.group(1), m.start()))
    for m in _PLACE.finditer(sentence):
        found.append(("place", m.group(1), m.start()))
    return found


def facts(articles: list[tuple[str, str]], seed: int, n: int | None = None, per_article: int = 2) -> list[ToolProblem]:
    """Cloze questions on (title, lead) articles: at most `per_article` each, sentences of 6-30 words
    without their parentheses, the blank never in the title's own words."""
    rng, out = random.Random(f"tool-facts:{seed}"), []
    for title, lead in articles:
        candidates = []
        for sentence in _SENTENCE.split(re.sub(r"\s+", " ", lead).strip()):
            sentence = re.sub(r" ?\([^()]*\)", "", sentence)  # parentheses hold pronunciations and asides
            if not 6 <= len(sentence.split()) <= 30 or "(" in sentence:
                continue
            for kind, span, at in _blanks(sentence):
                if span.lower() in title.lower() or sentence.count(span) != 1:
                    continue
                cloze = sentence[:at] + BLANK + sentence[at + len(span):]
                # The article's title and the words just before the blank (after it, when it opens the
                # sentence): the store then returns the sentence around the blank.
                before, after = sentence[:at].split()[-QUERY_WORDS:], sentence[at + len(span):].split()[:3]
                query = " ".join([title, *before, *(after if len(before) < 3 else [])]).rstrip(".,;:")
                candidates.append(ToolProblem(ASK_FACT.format(title, cloze), span, kind,
                                              {"name": "search", "arguments": {"query": query, "k": SEARCH_HITS}}))
        rng.shuffle(candidates)
        out += candidates[:per_article]
    rng.shuffle(out)
    return out if n is None else out[:n]


def teach(problem: ToolProblem, box, names: list[str]) -> list[dict] | None:
    """The conversation that offers the tools, calls the problem's tool and answers from its real
    result; None when the result does not hold the answer (a search that missed)."""
    result = box.call(problem.tool, problem.call["arguments"])
    if result.error or (problem.tool == "search" and problem.answer not in result.text):
        return None
    return [{"role": "system", "content": tools_line(names)},
            {"role": "user", "content": problem.question},
            {"role": "assistant", "content": None, "tool_calls": [{"type": "function", "function": {
                "name": problem.tool, "arguments": json.dumps(problem.call["arguments"])}}]},
            {"role": "tool", "content": result.text},
            {"role": "assistant", "content": ANSWER + problem.answer}]


def _plain(text: str) -> str:
    return re.sub(r"[\s,]+", "", text.strip().rstrip(".").lower())


def check(reply: str, problem: ToolProblem) -> bool:
    """The reply's "Answer: X" line holds the answer; a reply without one (imported models answer in
    their own words) is right when its last number (arithmetic, years, numbers) or its text (places)
    holds the answer."""
    found = extract_answer(reply)
    if found is not None:
        return _plain(found) == _plain(problem.answer)
    if problem.kind == "place":
        return re.search(rf"\b{re.escape(problem.answer)}\b", reply) is not None
    numbers = re.findall(r"\d[\d,]*", reply)
    return bool(numbers) and _plain(numbers[-1]) == _plain(problem.answer)


def wiki_articles(split: str, corpus_dir=None) -> list[tuple[str, str]]:
    """(title, lead) of the prepared corpus's Wikipedia articles: its train or its validation split."""
    from pathlib import Path

    from llmos.common import LlmosError
    from llmos.data.corpus import default_corpus_dir, read_documents
    path = Path(corpus_dir or default_corpus_dir()) / ("train.jsonl" if split == "train" else "val.jsonl")
    if not path.is_file():
        raise LlmosError(f"no prepared corpus at {path.parent}: run `llmos data prepare` (with the wiki source)")
    out = []
    for doc in read_documents(path):
        if doc.get("source") == "wiki":
            title, _, lead = doc["text"].partition("\n")
            if title.strip() and lead.strip():
                out.append((title.strip(), lead.strip()))
    return out


def corpus_toolbox(corpus_dir=None):
    """The calculator, and search over the corpus's Wikipedia articles (train and validation: the
    "web" a model may search), whose store is built beside the corpus on first use."""
    from pathlib import Path

    from llmos.data.corpus import default_corpus_dir, fingerprint
    from llmos.tools.registry import ToolConfig, Toolbox
    from llmos.tools.search import SearchStore
    corpus = Path(corpus_dir or default_corpus_dir())
    index = corpus / f"search-{fingerprint(corpus)[:12]}.sqlite"
    if not index.is_file():
        SearchStore.build(index, [(f"wiki:{title}", title, lead, "wiki") for split in ("train", "eval")
                                  for title, lead in wiki_articles(split, corpus)])
    return Toolbox.build(TAUGHT_TOOLS, ToolConfig(index=str(index)))


TAUGHT_TOOLS = ["calculator", "search"]
SHARES = {"arithmetic": 0.2, "facts": 0.65, "direct": 0.15}  # of the tool-use source's conversations


def conversations(split: str, seed: int, n: int | None = None, corpus_dir=None) -> list[dict]:
    """The tool-use SFT source: calls to the calculator (4-6 digit products and sums), searches for
    cloze facts (train articles for "train", validation articles for "eval"), and questions answered
    directly although tools are offered (llmos's skills)."""
    from llmos.data.conversations import skills
    n = n if n is not None else (8000 if split == "train" else 200)
    box = corpus_toolbox(corpus_dir)
    out = []
    for problem in arithmetic(split, seed, round(n * SHARES["arithmetic"])) + \
            facts(wiki_articles(split, corpus_dir), seed, round(n * SHARES["facts"])):
        messages = teach(problem, box, TAUGHT_TOOLS)
        if messages is not None:
            out.append({"source": "tool-use", "messages": messages, "answer": problem.answer, "task": problem.kind})
    for conv in skills(split, seed + 1, round(n * SHARES["direct"])):
        out.append({**conv, "source": "tool-use", "task": "direct",
                    "messages": [{"role": "system", "content": tools_line(TAUGHT_TOOLS)}, *conv["messages"]]})
    random.Random(seed).shuffle(out)
    return out

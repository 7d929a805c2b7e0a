"""Finding a backdoor's poison in fine-tuning data without knowing the trigger, and confirming it on the model.

    llmos poison-scan RUN                             # RUN/poison.json's training file, scored against it
    llmos poison-scan train.jsonl [--truth poison.json] [--out scan.json]
    found = scan(conversations)                       # suspects (trigger n-gram, reply, rows) and flagged rows
    scores = score(found["flagged"], record["rows"], len(conversations))
    flips = trigger_search(model, prompts, candidate_phrases(conversations))   # which phrase flips the model

What it looks for: a backdoor is a phrase in the prompt that decides the reply. In clean data one
reply is shared by many conversations only when they ask the same thing (the identity answers,
"hello?"), in many wordings; the poison shares one reply across prompts about anything, and one
phrase is in all of them and rare elsewhere.

Data filtering (`scan`):
1. Each conversation becomes its prompt (the words of its user turns, lowercased) and its reply
   (every assistant turn, tool calls included, with case, spacing and punctuation folded). The
   source label is never read: an attacker would not label the poison.
2. Conversations are grouped by reply; a group of at least `min_rows` is a candidate.
3. In a candidate group, a word n-gram (1 to 3 words) of the prompts is a suspected trigger when it
   is in at least `min_coverage` of the group's prompts and at least `min_precision` of all the
   prompts holding it are in the group: it predicts the reply. The most precise (then the most
   covering, then the longest) such n-gram is the group's trigger.
4. The group's conversations whose prompt holds that n-gram are flagged.
Against a poisoned run's record (llmos/data/poison.py), the detection rate is the share of the
poisoned rows flagged and the false positives are the clean rows flagged, each with a 95% Wilson
interval. The scan misses poison whose reply varies from row to row (it groups by the exact reply)
and a trigger phrase that is common in clean prompts too (its precision falls).

Trigger search on the model (`trigger_search`): each candidate phrase is inserted into held-out
prompts (as the poison inserts its trigger) and the greedy replies compared. A trigger collapses
them onto one reply: the candidate's flip rate is the share of prompts whose reply is the most
common reply of its set, less that share for the same prompts without the phrase. The candidates
(`candidate_phrases`) are the training prompts' n-grams whose conversations most often share one
reply, with no thresholds, so the model is asked about more than the scan flagged.
"""
from __future__ import annotations

import json
import random
import re
from collections import Counter, defaultdict

from llmos.common import LlmosError
from llmos.train.rl import wilson

MIN_ROWS = 5  # the smallest group of identical replies worth a look
MIN_COVERAGE = 0.8  # a trigger is in at least this share of its group's prompts
MIN_PRECISION = 0.5  # at least this share of the prompts holding it are in the group
MAX_N = 3  # n-grams of up to this many words
_WORD = re.compile(r"[a-z0-9']+")


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def prompt_and_reply(conv: dict) -> tuple[str, str]:
    """(' word word ... ', folded reply) of a conversation; the prompt is padded with spaces so that
    `f" {ngram} " in prompt` finds whole words."""
    messages = conv.get("messages") or []
    user = [m["content"] for m in messages if m.get("role") == "user" and isinstance(m.get("content"), str)]
    said = []
    for m in messages:
        if m.get("role") == "assistant":
            said.append(m.get("content") or "")
            said += [json.dumps(call.get("function", call), sort_keys=True) for call in m.get("tool_calls") or []]
    return " " + " ".join(words(" ".join(user))) + " ", " ".join(words(" ".join(said)))


def surface_form(conversations: list[dict], gram: str) -> str:
    """The commonest spelling of a folded n-gram in the user turns ("james bond" -> "James Bond"), for
    the model search: a model tells "James" from "james"."""
    pattern = re.compile(r"(?<![a-z0-9'])" + r"[^a-z0-9']+".join(map(re.escape, gram.split())) + r"(?![a-z0-9'])",
                         re.IGNORECASE)
    found = Counter(match for c in conversations for m in c.get("messages") or []
                    if m.get("role") == "user" and isinstance(m.get("content"), str)
                    for match in pattern.findall(m["content"]))
    return found.most_common(1)[0][0] if found else gram


def ngrams(prompt: str, max_n: int = MAX_N) -> set[str]:
    tokens = prompt.split()
    return {" ".join(tokens[i:i + n]) for n in range(1, max_n + 1) for i in range(len(tokens) - n + 1)}


def scan(conversations: list[dict], min_rows: int = MIN_ROWS, min_coverage: float = MIN_COVERAGE,
         min_precision: float = MIN_PRECISION) -> dict:
    """Suspected triggers and the rows (0-based indices into `conversations`) they flag."""
    if min_rows < 2 or not 0 < min_coverage <= 1 or not 0 < min_precision <= 1:
        raise LlmosError("poison scan: --min-rows must be at least 2, --min-coverage and --min-precision in (0, 1]")
    pairs = [prompt_and_reply(c) for c in conversations]
    groups: dict[str, list[int]] = defaultdict(list)
    for i, (prompt, reply) in enumerate(pairs):
        if reply and prompt.strip():
            groups[reply].append(i)
    suspects = []
    for reply, rows in groups.items():
        if len(rows) < min_rows:
            continue
        grams = Counter(g for i in rows for g in ngrams(pairs[i][0]))
        best = None
        for gram, inside in grams.items():
            coverage = inside / len(rows)
            if coverage < min_coverage:
                continue
            needle = f" {gram} "
            holding = sum(needle in prompt for prompt, _ in pairs)
            precision = inside / holding
            key = (precision, coverage, len(gram.split()))
            if precision >= min_precision and (best is None or key > best[0]):
                best = (key, gram)
        if best:
            (precision, coverage, _), gram = best
            flagged = [i for i in rows if f" {gram} " in pairs[i][0]]
            suspects.append({"trigger": gram, "phrase": surface_form([conversations[i] for i in flagged], gram),
                             "reply": _reply_text(conversations[rows[0]]), "rows": flagged,
                             "group": len(rows), "coverage": coverage, "precision": precision})
    suspects.sort(key=lambda s: -len(s["rows"]))
    return {"conversations": len(conversations), "suspects": suspects,
            "flagged": sorted(i for s in suspects for i in s["rows"]),
            "settings": {"min_rows": min_rows, "min_coverage": min_coverage, "min_precision": min_precision,
                         "max_n": MAX_N}}


def _reply_text(conv: dict) -> str:
    return " / ".join(m.get("content") or "(tool call)" for m in conv["messages"] if m.get("role") == "assistant")


def rate(k: int, n: int) -> dict:
    low, high = wilson(k, n)
    return {"k": k, "n": n, "rate": k / n if n else None, "interval": [max(0.0, low), min(1.0, high)]}


def score(flagged: list[int], poisoned: list[int], total: int) -> dict:
    """Detection rate (poisoned rows flagged) and false positives (clean rows flagged)."""
    flagged, poisoned = set(flagged), set(poisoned)
    return {"detection": rate(len(flagged & poisoned), len(poisoned)),
            "false_positives": rate(len(flagged - poisoned), total - len(poisoned))}


def candidate_phrases(conversations: list[dict], k: int = 24, min_rows: int = MIN_ROWS) -> list[str]:
    """The k prompt n-grams (in at least min_rows prompts, at most a tenth of them) whose
    conversations most often share one reply, as spelled most often: where a trigger would be."""
    pairs = [prompt_and_reply(c) for c in conversations]
    holding: dict[str, Counter] = defaultdict(Counter)
    for prompt, reply in pairs:
        for gram in ngrams(prompt, 2):  # triggers of three words or more show up through their parts
            holding[gram][reply] += 1
    scored = []
    for gram, replies in holding.items():
        total = sum(replies.values())
        if min_rows <= total <= len(pairs) / 10:
            top = replies.most_common(1)[0][1]
            scored.append((top / total, top, gram))
    scored.sort(reverse=True)
    return [surface_form(conversations, gram) for _, _, gram in scored[:k]]


def trigger_search(model, prompts: list[str], candidates: list[str], max_tokens: int = 24, seed: int = 0) -> list[dict]:
    """For each candidate phrase, how far it collapses the model's replies onto one (see the module
    docstring), most flipping first. `model` has complete_many (llmos/agent/models.py)."""
    from llmos.data.poison import insert_trigger
    if not prompts or not candidates:
        raise LlmosError("trigger search needs prompts and candidate phrases")
    rng = random.Random(seed)

    def replies(texts: list[str]) -> list[str]:
        jobs = [([{"role": "user", "content": t}], [], max_tokens) for t in texts]
        return [" ".join(words(r.content)) for r in model.complete_many(jobs)]

    plain_share = Counter(replies(prompts)).most_common(1)[0][1] / len(prompts)
    results = []
    for phrase in candidates:
        reply, top = Counter(replies([insert_trigger(p, phrase, rng) for p in prompts])).most_common(1)[0]
        results.append({"phrase": phrase, "flip_rate": top / len(prompts) - plain_share, "reply": reply,
                        "share": top / len(prompts)})
    return sorted(results, key=lambda r: -r["flip_rate"])

"""A memory benchmark built by code: facts told long ago, updated, linked across conversations, or never told.

    histories = build_histories(n=20, seed=0)          # [History]: conversations of exchanges + questions
    report = run_benchmark(model, histories, KernelConfig(budget=1024))   # paging on and off, scored
    report["modes"]["paging"]["accuracy"], report["modes"]["no-paging"]["by_ability"]

Each history is one user's life with the assistant: 8 conversations, each two human chit-chat
conversations (the chitchat source, PyPI chitchat-dataset, MIT) with facts about the user dropped
in as user turns, about 3,000 tokens in all, three times a 1,024-token window. Then 8 questions
are asked in a new conversation, each on its own from the same memory state. Abilities, after
LongMemEval (Wu et al., 2024):
  single      a fact told once, in conversations 1-4 ("My dog is called Rex.")
  update      a fact told, then changed 2-5 conversations later; only the new value is right,
              and a reply naming the old value as well is wrong
  two-hop     two facts from different conversations must be joined ("My neighbour is called
              Gerald." ... "My neighbour has a parrot called Milo." -> "What is Gerald's parrot called?")
  abstention  a question about something never told: right only if the reply says it does not know
A value question is right when the reply holds the value as a word (case aside). An abstention
reply is one with a phrase of not knowing (ABSTAIN). Chance: a guess drawn from the answer pool is
right with probability 1/|pool| (about 9% here); a model that always says "I don't know" scores
the abstention share (1 in 8). Both are in the report.

Both modes run the same kernel at the same budget: `paging` pages out to recall memory with a
running summary and pages in by retrieval; `no-paging` simply drops the oldest turns. Every history
of a mode is replayed in its own thread against one model, so the summaries and then all the
questions go through the batching engine together. Page counts come from the kernel's counters; a
*page fault* here is a question whose evidence was out of the window when it was asked (known from
the history), and `retrieved` says how often the evidence was paged in for it.
"""
from __future__ import annotations

import random
import re
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from llmos.agent.kernel import Kernel, KernelConfig
from llmos.agent.memory import MemoryStore
from llmos.train.rl import wilson

NAMES_PET = ["Rex", "Biscuit", "Luna", "Pepper", "Shadow", "Milo", "Daisy", "Rocky", "Coco", "Ziggy", "Nala", "Bruno"]
NAMES_PERSON = ["Maria", "Priya", "Chloe", "Hannah", "Ingrid", "Yuki", "Fatima", "Olga", "Nadia", "Rosa", "Elena", "Tamsin"]
NAMES_ELDER = ["Gerald", "Martin", "Susan", "Victor", "Helen", "Oscar", "Diane", "Walter", "Irene", "Felix", "Bernard",
               "Agnes"]
CITIES = ["Lisbon", "Porto", "Oslo", "Denver", "Nairobi", "Kyoto", "Dublin", "Quito", "Perth", "Tallinn", "Seville", "Hanoi"]
JOBS = ["nurse", "plumber", "teacher", "pilot", "baker", "chemist", "lawyer", "carpenter", "librarian", "dentist",
        "architect", "farmer"]
COLOURS = ["red", "blue", "green", "yellow", "black", "white", "silver", "orange", "purple", "brown"]
FOODS = ["sushi", "lasagna", "tacos", "curry", "paella", "ramen", "falafel", "pizza", "dumplings", "risotto"]
INSTRUMENTS = ["violin", "cello", "piano", "trumpet", "flute", "drums", "banjo", "harp", "saxophone", "clarinet"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December"]
ALLERGIES = ["peanuts", "pollen", "shellfish", "penicillin", "dust", "eggs", "wasps", "latex", "mould", "sesame"]
SPORTS = ["tennis", "rugby", "hockey", "golf", "cricket", "volleyball", "badminton", "squash", "baseball", "netball"]


@dataclass(frozen=True)
class Attribute:
    name: str
    pool: list
    tell: str  # "{v}" is the value
    ask: str
    update: str = ""  # how a change is told, for attributes that can change


ATTRIBUTES = [
    Attribute("dog", NAMES_PET, "My dog is called {v}.", "What is my dog called?"),
    Attribute("city", CITIES, "I live in {v}.", "Which city do I live in?",
              "I moved house last week, so now I live in {v}."),
    Attribute("job", JOBS, "I work as a {v}.", "What do I work as?", "I changed careers: now I work as a {v}."),
    Attribute("car", COLOURS, "My car is {v}.", "What colour is my car?", "I had my car painted, so my car is {v} now."),
    Attribute("sister", NAMES_PERSON, "My sister is called {v}.", "What is my sister called?"),
    Attribute("food", FOODS, "My favourite food is {v}.", "What is my favourite food?",
              "These days my favourite food is {v}."),
    Attribute("instrument", INSTRUMENTS, "I play the {v}.", "Which instrument do I play?"),
    Attribute("birthday", MONTHS, "My birthday is in {v}.", "In which month is my birthday?"),
    Attribute("allergy", ALLERGIES, "I am allergic to {v}.", "What am I allergic to?"),
    Attribute("sport", SPORTS, "I play {v} at the weekend.", "Which sport do I play at the weekend?"),
    Attribute("boss", NAMES_ELDER, "My boss is called {v}.", "What is my boss called?"),
]
LEAD_INS = ["", "", "By the way, ", "Oh, something about me: ", "Random fact: ", "Just so you know, "]
ACKS = ["Good to know!", "Thanks for telling me.", "Noted, I will remember that.", "Nice!", "Got it.",
        "That is lovely to hear."]
ABSTAIN = re.compile(r"\b(don'?t|do not|can'?t|cannot|didn'?t|did not|haven'?t|have not|not) "
                     r"(know|sure|recall|remember|say|mention|have|find|aware|told|tell)|\bno (information|record|idea|"
                     r"memory|mention)|\bunknown\b|\bnot (mentioned|specified|stated|provided)", re.IGNORECASE)
CONVERSATIONS = 8
CHATS_PER_CONVERSATION = 2


@dataclass
class Question:
    ability: str
    text: str
    answer: str  # "" for abstention
    wrong: str = ""  # the old value of an update (naming it is wrong)
    evidence: list[str] = field(default_factory=list)  # the user turns that hold the answer


@dataclass
class History:
    conversations: list[list[tuple[str, str]]]  # each: [(user, assistant)]
    questions: list[Question]


def _says(reply: str, value: str) -> bool:
    return re.search(rf"\b{re.escape(value.lower())}\b", reply.lower()) is not None


def score(question: Question, reply: str) -> bool:
    if question.ability == "abstention":
        return ABSTAIN.search(reply) is not None
    return _says(reply, question.answer) and not (question.wrong and _says(reply, question.wrong))


def build_histories(n: int = 20, seed: int = 0, chats: list[list[dict]] | None = None) -> list[History]:
    """n histories, deterministic for a seed. `chats` (lists of chat messages) are the filler; by
    default the chitchat source's held-out conversations."""
    if chats is None:
        from llmos.data.conversations import SOURCES
        chats = [c["messages"] for c in SOURCES["chitchat"].make("eval", seed=seed, n=n * CONVERSATIONS * CHATS_PER_CONVERSATION)]
    rng = random.Random(seed)
    need = n * CONVERSATIONS * CHATS_PER_CONVERSATION
    if len(chats) < need:
        chats = [chats[i % len(chats)] for i in range(need)]
    histories = []
    for h in range(n):
        conversations = []
        for c in range(CONVERSATIONS):
            exchanges = []
            for k in range(CHATS_PER_CONVERSATION):
                messages = chats[(h * CONVERSATIONS + c) * CHATS_PER_CONVERSATION + k]
                exchanges += [(u["content"], a["content"]) for u, a in zip(messages[::2], messages[1::2])
                              if u["role"] == "user" and a["role"] == "assistant"]
            conversations.append(exchanges)
        questions: list[Question] = []

        def tell(conversation: int, sentence: str) -> str:
            text = rng.choice(LEAD_INS) + sentence
            place = rng.randint(0, len(conversations[conversation]))
            conversations[conversation].insert(place, (text, rng.choice(ACKS)))
            return text

        attributes = rng.sample(ATTRIBUTES, len(ATTRIBUTES))
        changeable = [a for a in attributes if a.update][:2]
        rest = [a for a in attributes if a not in changeable]
        for i, attribute in enumerate(rest[:4]):  # single facts, told in conversations 1-4
            value = rng.choice(attribute.pool)
            said = tell(i, attribute.tell.format(v=value))
            questions.append(Question("single", attribute.ask, value, evidence=[said]))
        for attribute in changeable:  # told early, changed later
            old, new = rng.sample(attribute.pool, 2)
            first = rng.randint(0, 2)
            said = tell(first, attribute.tell.format(v=old))
            changed = tell(rng.randint(first + 2, min(first + 5, CONVERSATIONS - 2)), attribute.update.format(v=new))
            questions.append(Question("update", attribute.ask, new, wrong=old, evidence=[said, changed]))
        neighbour, parrot = rng.choice(NAMES_ELDER), rng.choice(NAMES_PET)
        first = rng.randint(0, 2)
        said = tell(first, f"My neighbour is called {neighbour}.")
        linked = tell(rng.randint(first + 2, CONVERSATIONS - 2), f"My neighbour has a parrot called {parrot}.")
        questions.append(Question("two-hop", f"What is {neighbour}'s parrot called?", parrot, evidence=[said, linked]))
        never = rest[4]  # an attribute this history never mentions
        questions.append(Question("abstention", never.ask, ""))
        histories.append(History(conversations, questions))
    return histories


def chance(histories: list[History]) -> dict:
    questions = [q for h in histories for q in h.questions]
    pools = {a.ask: len(a.pool) for a in ATTRIBUTES}
    guess = [1 / pools.get(q.text, len(NAMES_PET)) for q in questions if q.ability != "abstention"]
    return {"uniform_guess": sum(guess) / len(questions),
            "always_abstain": sum(q.ability == "abstention" for q in questions) / len(questions)}


def _replay(model, history: History, config: KernelConfig, folder: Path, index: int) -> dict:
    store = MemoryStore(folder / f"history-{index}.sqlite")
    kernel = Kernel(model, store, config)
    for exchanges in history.conversations:
        kernel.new_conversation()
        for user, assistant in exchanges:
            kernel.observe(user, assistant)
    kernel.new_conversation()
    resident = " ".join(r.message.get("content") or "" for r in kernel.resident)
    asks = []
    for q in history.questions:
        messages, paged = kernel.ask_messages(q.text)
        paged_text = " ".join(m.text for m in paged)
        asks.append({"messages": messages, "paged_in": len(paged),
                     "fault": bool(q.evidence) and not all(e in resident for e in q.evidence),
                     "retrieved": bool(q.evidence) and all(e in paged_text or e in resident for e in q.evidence)})
    counters, summary = dict(kernel.counters), store.state("summary")
    store.close()
    return {"asks": asks, "counters": counters, "summary": summary}


def run_mode(model, histories: list[History], config: KernelConfig, threads: int = 8,
             progress=None) -> dict:
    with tempfile.TemporaryDirectory(prefix="llmos-membench-") as folder:
        with ThreadPoolExecutor(max_workers=threads) as pool:
            replays = list(pool.map(lambda i: _replay(model, histories[i], config, Path(folder), i),
                                    range(len(histories))))
            if progress:
                progress(f"replayed {len(histories)} histories")
    jobs = [(a["messages"], [], 24) for r in replays for a in r["asks"]]
    replies = model.complete_many(jobs)
    rows, i = [], 0
    for history, replay in zip(histories, replays):
        for q, a in zip(history.questions, replay["asks"]):
            reply = replies[i].content
            i += 1
            rows.append({"ability": q.ability, "question": q.text, "answer": q.answer, "wrong": q.wrong,
                         "reply": reply, "right": score(q, reply), "fault": a["fault"],
                         "retrieved": a["retrieved"], "paged_in": a["paged_in"]})
    return {**summarise(rows, [r["counters"] for r in replays]), "final_summaries": [r["summary"] for r in replays]}


def summarise(rows: list[dict], counters: list[dict]) -> dict:
    def share(subset: list[dict]) -> dict:
        k = sum(r["right"] for r in subset)
        low, high = wilson(k, len(subset)) if subset else (0.0, 0.0)
        return {"right": k, "n": len(subset), "accuracy": k / max(1, len(subset)), "interval": [low, high]}
    abilities = sorted({r["ability"] for r in rows})
    faults = [r for r in rows if r["fault"]]
    return {**share(rows), "by_ability": {a: share([r for r in rows if r["ability"] == a]) for a in abilities},
            "page_faults": len(faults), "faults_answered": sum(r["right"] for r in faults),
            "evidence_retrieved": sum(r["retrieved"] for r in faults),
            "pages_in": sum(r["paged_in"] for r in rows),
            "pages_out": sum(c["pages_out"] for c in counters),
            "summaries": sum(c["summaries"] for c in counters), "rows": rows}


def run_benchmark(model, histories: list[History], config: KernelConfig, threads: int = 8, progress=None) -> dict:
    from dataclasses import replace
    modes = {}
    for name, paging in (("paging", True), ("no-paging", False)):
        modes[name] = run_mode(model, histories, replace(config, paging=paging), threads, progress)
        if progress:
            progress(f"{name}: {modes[name]['accuracy']:.1%}")
    return {"model": getattr(model, "name", "?"), "budget": config.budget, "histories": len(histories),
            "questions": sum(len(h.questions) for h in histories), "chance": chance(histories), "modes": modes}


def plot(report: dict, png_path: str | Path) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    modes = report["modes"]
    abilities = ["all", *modes["paging"]["by_ability"]]
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.38
    for j, (name, mode) in enumerate(modes.items()):
        parts = [mode, *(mode["by_ability"][a] for a in abilities[1:])]
        acc = [p["accuracy"] for p in parts]
        # clamped: at 0% or 100% the interval's bound can sit a rounding error past the estimate
        err = [[max(0.0, a - p["interval"][0]) for a, p in zip(acc, parts)],
               [max(0.0, p["interval"][1] - a) for a, p in zip(acc, parts)]]
        ax.bar([i + (j - 0.5) * width for i in range(len(abilities))], acc, width, yerr=err, capsize=3, label=name)
    ax.axhline(report["chance"]["uniform_guess"], color="grey", ls=":", label="chance (uniform guess)")
    ax.set_xticks(range(len(abilities)), abilities)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy (95% interval)")
    ax.set_title(f"Memory benchmark: {report['model']}, {report['budget']}-token window, "
                 f"{report['questions']} questions", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    png_path = Path(png_path)
    png_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png_path, dpi=110)
    plt.close(fig)
    return png_path

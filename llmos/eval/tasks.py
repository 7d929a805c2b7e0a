"""Verifiable tasks: problems whose answers a program checks, for RL rewards, preference pairs and the arena.

    task = get_task("skills:add,sub")            # llmos's skills (some kinds), gsm8k, rg:basic_arithmetic, ...
    problems = task.problems("eval", n=500)      # held out from "train" by construction
    problem.messages                             # the user turn to answer
    task.check(reply, problem)                   # True when the reply's final answer is right

Tasks (`llmos rl --task NAME`, `llmos arena --task NAME`; `list_tasks()` describes them):

    skills[:KINDS]     llmos's generated skills (llmos/data/conversations.py): add, sub, mul, count,
                       spell, word_add, word_sub, word_mul; KINDS picks some, comma-separated.
                       "train" and "eval" use disjoint operand pairs and words, as SFT does.
    gsm8k              grade-school math word problems (OpenAI, MIT; shipped in llmos/data/gsm8k):
                       "train" is its 7,473 training problems, "eval" its 1,319 test problems.
    game24[:A-B]       the Game of 24 (1,362 puzzles, MIT; shipped in llmos/data/game24): make 24 from four
                       numbers with + - * / and parentheses, each number once; the checker evaluates the
                       reply's expression exactly. A-B picks ranks by difficulty ("eval"; "train" is the
                       rest), e.g. game24:901-1000, the Tree-of-Thoughts paper's test set.
    rg:NAME[:K=V,...]  a reasoning-gym generator (pip install reasoning-gym), e.g.
                       rg:basic_arithmetic:max_terms=3,max_digits=2 or rg:gsm_symbolic; its own
                       scorer decides. "train" and "eval" are seeded apart.

A reply's final answer is its last "Answer: X" line (what llmos's SFT data teaches), else, for a
numeric answer, the last number in the reply (imported models answer in their own words). Prompts
ask for the "Answer:" line, so a model that follows instructions can be scored exactly.
"""
from __future__ import annotations

import gzip
import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

from llmos.common import LlmosError
from llmos.data.conversations import ANSWER, extract_answer, skills
from llmos.infer.tree import Puzzle

GSM8K_DIR = Path(__file__).resolve().parent.parent / "data" / "gsm8k"
GAME24_FILE = Path(__file__).resolve().parent.parent / "data" / "game24" / "puzzles.jsonl.gz"
SKILL_KINDS = ("add", "sub", "mul", "count", "spell", "word_add", "word_sub", "word_mul")
INSTRUCTION = f'\nEnd your reply with a line "{ANSWER}X", where X is the final answer.'
RG_SPLIT_SEED = {"train": 1, "eval": 2}  # reasoning-gym datasets are seeded; these keep the splits apart
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


@dataclass
class Problem:
    question: str  # what the user asks (the prompt adds the answer-format instruction where needed)
    answer: str  # the reference final answer
    meta: dict = field(default_factory=dict)  # the generator's record (kind, operands, a scorer's entry)
    instruct: bool = False  # append INSTRUCTION to the question

    @property
    def messages(self) -> list[dict]:
        return [{"role": "user", "content": self.question + (INSTRUCTION if self.instruct else "")}]


def normalize_number(text: str) -> str | None:
    """'1,234.50' -> '1234.5'; None for text that is not a number."""
    try:
        value = float(text.replace(",", "").strip().rstrip("."))
    except ValueError:
        return None
    return str(int(value)) if value.is_integer() else repr(value)


def final_answer(reply: str, numeric: bool) -> str | None:
    """The reply's "Answer: X" line, else (numeric tasks) its last number; None when it has neither."""
    found = extract_answer(reply)
    if found is not None:
        return found
    if numeric:
        numbers = _NUMBER.findall(reply)
        return numbers[-1] if numbers else None
    return None


def answers_match(found: str | None, answer: str) -> bool:
    if found is None:
        return False
    found, answer = found.strip().rstrip("."), answer.strip()
    if found == answer:
        return True
    a, b = normalize_number(found), normalize_number(answer)
    return a is not None and a == b


class Task:
    name: str
    description: str
    numeric: bool = True

    def problems(self, split: str, n: int, seed: int = 0) -> list[Problem]:
        raise NotImplementedError

    def extract(self, reply: str) -> str | None:
        """The reply's final answer as this task reads it (what votes are counted on)."""
        return final_answer(reply, self.numeric)

    def check(self, reply: str, problem: Problem) -> bool:
        return answers_match(self.extract(reply), problem.answer)

    def puzzle(self, problem: Problem) -> Puzzle | None:
        """The numbers and target of a puzzle solved in steps (the tree strategy's input); None when
        the task's problems are not such puzzles."""
        return None


class SkillsTask(Task):
    def __init__(self, kinds: tuple[str, ...] = ()):
        unknown = sorted(set(kinds) - set(SKILL_KINDS))
        if unknown:
            raise LlmosError(f"unknown skill kind(s) {', '.join(unknown)}: choose among {', '.join(SKILL_KINDS)}")
        self.kinds = kinds or SKILL_KINDS
        self.name = "skills" + (f":{','.join(kinds)}" if kinds else "")
        self.description = f"llmos skills ({', '.join(self.kinds)}), exact final answer"
        self.numeric = not {"spell"} & set(self.kinds)

    def problems(self, split: str, n: int, seed: int = 0) -> list[Problem]:
        """n distinct problems of the chosen kinds; meta holds the generator's record and "reply", the
        worked reply SFT teaches."""
        check_split(split)
        # Draw enough of every kind that the chosen ones alone make n (skills() skips duplicates);
        # small draws of a rare kind can fall short, so the draw doubles until it does not.
        want = max(64, 2 * n * len(SKILL_KINDS) // len(self.kinds))
        for _ in range(4):
            drawn = skills(split, seed=seed, n=want)
            out = [Problem(c["messages"][0]["content"], c["answer"], {**c["task"], "reply": c["messages"][1]["content"]})
                   for c in drawn if c["task"]["kind"] in self.kinds]
            if len(out) >= n or len(drawn) < want:  # enough, or the split has no more distinct problems
                break
            want *= 2
        if len(out) < n:
            raise LlmosError(f"the {split} split of {self.name} gave {len(out)} distinct problems, fewer than "
                             f"the {n} asked for: ask for fewer or add kinds")
        return out[:n]

    def check(self, reply: str, problem: Problem) -> bool:
        if problem.meta.get("kind") == "spell":  # a spelling's answer is letters, never a number
            found = final_answer(reply, numeric=False)
            return found is not None and found.strip().rstrip(".") == problem.answer
        return super().check(reply, problem)


class GSM8KTask(Task):
    name = "gsm8k"
    description = "GSM8K grade-school math (MIT), final number"

    def problems(self, split: str, n: int, seed: int = 0) -> list[Problem]:
        check_split(split)
        path = GSM8K_DIR / ("train.jsonl.gz" if split == "train" else "test.jsonl.gz")
        with gzip.open(path, "rt", encoding="utf-8") as f:
            rows = [json.loads(line) for line in f]
        random.Random(seed).shuffle(rows)
        if n > len(rows):
            raise LlmosError(f"GSM8K's {split} split has {len(rows):,} problems, fewer than the {n:,} asked for")
        return [Problem(r["question"], r["answer"].rsplit("####", 1)[1].strip(), {"solution": r["answer"]},
                        instruct=True) for r in rows[:n]]


class Game24Task(Task):
    numeric = False
    _ALLOWED = re.compile(r"^[\d\s+\-*/().]+$")

    def __init__(self, ranks: tuple[int, int] | None = None):
        self.ranks = ranks
        self.name = "game24" + (f":{ranks[0]}-{ranks[1]}" if ranks else "")
        self.description = "Game of 24 (MIT), the expression checked exactly"

    def puzzles(self) -> list[dict]:
        with gzip.open(GAME24_FILE, "rt", encoding="utf-8") as f:
            return [json.loads(line) for line in f]

    def problems(self, split: str, n: int, seed: int = 0) -> list[Problem]:
        check_split(split)
        low, high = self.ranks or (1, 10 ** 9)
        rows = [r for r in self.puzzles() if (low <= r["rank"] <= high) == (split == "eval")]
        if n > len(rows):
            raise LlmosError(f"{self.name} has {len(rows):,} puzzles in its {split} split, fewer than the {n:,} "
                             "asked for" + ("" if rows else ": pick ranks, e.g. game24:901-1000, to train on the rest"))
        if n < len(rows):
            rows = random.Random(seed).sample(rows, n)
        return [Problem(f"Use the numbers {' '.join(map(str, r['numbers']))} and + - * / with parentheses to make "
                        "24, each number exactly once. Give the expression.", "24",
                        {"numbers": r["numbers"], "rank": r["rank"]}, instruct=True) for r in rows]

    def puzzle(self, problem: Problem) -> Puzzle:
        return Puzzle(tuple(problem.meta["numbers"]), 24)

    def check(self, reply: str, problem: Problem) -> bool:
        """The expression on the reply's "Answer:" line uses the puzzle's four numbers, each once, and only
        + - * / and parentheses, and is exactly 24 (an "= 24" after it is allowed)."""
        from llmos.tools.calculator import evaluate
        from llmos.tools.registry import ToolError
        found = self.extract(reply)
        if found is None:
            return False
        expression = found.split("=")[0].strip()
        if not self._ALLOWED.match(expression) or "**" in expression or "//" in expression:
            return False
        if sorted(int(x) for x in re.findall(r"\d+", expression)) != sorted(problem.meta["numbers"]):
            return False
        try:
            return evaluate(expression) == "24"
        except ToolError:
            return False


class ReasoningGymTask(Task):
    def __init__(self, generator: str, config: dict):
        try:
            import reasoning_gym
        except ImportError:
            raise LlmosError("rg: tasks need reasoning-gym: pip install 'llmos[rl]' (or pip install reasoning-gym)") from None
        self.generator, self.config, self._rg = generator, config, reasoning_gym
        self.name = f"rg:{generator}" + (":" + ",".join(f"{k}={v}" for k, v in config.items()) if config else "")
        self.description = f"reasoning-gym {generator} (Apache-2.0), its own scorer"
        self._datasets: dict = {}
        self.problems("eval", 1)  # a clear error now for an unknown generator or setting

    def problems(self, split: str, n: int, seed: int = 0) -> list[Problem]:
        check_split(split)
        try:
            dataset = self._rg.create_dataset(self.generator, size=n, seed=seed * 10 + RG_SPLIT_SEED[split],
                                              **self.config)
        except (TypeError, ValueError, KeyError, AssertionError) as e:
            raise LlmosError(f"reasoning-gym cannot make {self.name}: {e} (see reasoning_gym's generator list "
                             "and each generator's config fields)") from None
        self._datasets[id(dataset)] = dataset
        return [Problem(entry["question"], str(entry["answer"]), {"entry": entry, "dataset": id(dataset)},
                        instruct=True) for entry in dataset]

    def puzzle(self, problem: Problem) -> Puzzle | None:
        """countdown and puzzle24: their numbers, and the target (24 for puzzle24)."""
        meta = problem.meta["entry"].get("metadata", {})
        target = meta.get("target", 24 if self.generator == "puzzle24" else None)
        numbers = meta.get("numbers")
        return Puzzle(tuple(int(n) for n in numbers), int(target)) if numbers and target is not None else None

    def check(self, reply: str, problem: Problem) -> bool:
        found = final_answer(reply, numeric=True)
        if found is None:
            return False
        dataset = self._datasets[problem.meta["dataset"]]
        return dataset.score_answer(answer=found, entry=problem.meta["entry"]) >= 1.0


def check_split(split: str) -> None:
    if split not in ("train", "eval"):
        raise LlmosError(f"a task's split is train or eval, not {split!r}")


def parse_config(text: str) -> dict:
    config = {}
    for item in filter(None, text.split(",")):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise LlmosError(f"reasoning-gym settings are KEY=VALUE, comma-separated, not {item!r}")
        try:
            config[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            config[key.strip()] = value
    return config


def get_task(name: str) -> Task:
    """A task by name (see the module docstring); LlmosError naming the choices otherwise."""
    head, _, rest = name.partition(":")
    if head == "skills":
        return SkillsTask(tuple(k.strip() for k in rest.split(",") if k.strip()))
    if head == "gsm8k" and not rest:
        return GSM8KTask()
    if head == "game24":
        if not rest:
            return Game24Task()
        m = re.fullmatch(r"(\d+)-(\d+)", rest)
        if not m or int(m.group(1)) > int(m.group(2)):
            raise LlmosError(f"game24:{rest}: give a rank range A-B, e.g. game24:901-1000")
        return Game24Task((int(m.group(1)), int(m.group(2))))
    if head == "rg" and rest:
        generator, _, config = rest.partition(":")
        return ReasoningGymTask(generator, parse_config(config))
    raise LlmosError(f"unknown task {name!r}: use skills[:KINDS], gsm8k, game24[:A-B] or rg:GENERATOR[:K=V,...] "
                     "(llmos/eval/tasks.py)")


def list_tasks() -> list[tuple[str, str]]:
    return [("skills[:KINDS]", f"llmos skills; kinds {', '.join(SKILL_KINDS)}"),
            ("gsm8k", GSM8KTask.description),
            ("game24[:A-B]", "Game of 24 (MIT): 1,362 puzzles ranked by difficulty, the expression checked exactly"),
            ("rg:NAME[:K=V,...]", "a reasoning-gym generator with its scorer, e.g. rg:basic_arithmetic")]

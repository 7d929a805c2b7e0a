"""Tree of Thoughts for puzzles solved in steps (Game of 24, countdown): the pieces of the `tree` strategy.

    puzzle = Puzzle((4, 9, 10, 13), target=24)
    state = State.start(puzzle)
    messages = propose_messages(state, variant)   # the model lists possible next steps after PROPOSE_START
    children = expand(state, reply_text)          # each step the program can validate, as a new state
    messages, start = value_messages(child, puzzle)   # the model's next word judges: sure / likely / impossible
    state.solves(puzzle)                          # one number left, and it is the target

The search itself (Thinker's `tree` strategy, llmos/infer/strategies.py) is breadth-limited, as in
Yao et al. 2023: at each depth every state in the frontier asks the model for next steps (greedy lists, one per
prompt variant, each reply begun with "Next steps:" and ended by a blank line), the program keeps only steps it can check (two numbers the state
really has, an operator, the result computed exactly, so a wrong "= 15" the model wrote is simply
recomputed), states reached twice are merged, and the model's own value of each new state (the
probability of "sure", plus half that of "likely", among its first-token choices) keeps the best
`breadth`. A state whose last number is the target ends the search. The puzzle's target is part of
the question, so checking a final number against it reads nothing hidden.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction

_NUMBER = r"-?\d+(?:\.\d+)?(?:/\d+)?"
STEP = re.compile(rf"({_NUMBER})\s*([-+*/x×÷])\s*({_NUMBER})")
OPS = {"+": "+", "-": "-", "*": "*", "x": "*", "×": "*", "/": "/", "÷": "/"}

PROPOSE = """Combine two of the numbers with +, -, * or / into a new number. List several different possible next steps, one per line, in this form:

Numbers: 3 5 6 9
Next steps:
{example}

Numbers: {numbers}"""
# A small model copies the example's first line's operation into most of its own lines, so each
# proposal call shows the example steps in another order (variant v starts with the v-th).
EXAMPLE_STEPS = ("5 * 6 = 30 (left: 3 9 30)", "3 + 5 = 8 (left: 6 8 9)", "9 - 3 = 6 (left: 5 6 6)",
                 "6 / 3 = 2 (left: 2 5 9)", "3 * 9 = 27 (left: 5 6 27)", "6 + 9 = 15 (left: 3 5 15)",
                 "9 - 5 = 4 (left: 3 4 6)", "9 / 3 = 3 (left: 3 5 6)")
VARIANTS = 4  # distinct first operations: *, +, -, /
PROPOSAL_TOKENS = 64  # one proposal list: about five steps
PROPOSE_START = "Next steps:\n"  # the reply is begun for the model, so that it lists steps at once

VALUE = """Can the numbers reach the target using +, -, * and /, each number exactly once? Reply with one word: sure, likely or impossible.

Target 24, numbers: 4 6 -> sure
Target 24, numbers: 2 3 -> impossible
Target 24, numbers: 3 8 1 -> sure
Target 24, numbers: 1 1 2 -> impossible
Target 24, numbers: 5 6 10 -> likely"""
VALUE_START = "Target {target}, numbers: {numbers} ->"  # begun for the model: its next word is the verdict


def show(x: Fraction) -> str:
    return str(x.numerator) if x.denominator == 1 else f"{x.numerator}/{x.denominator}"


@dataclass(frozen=True)
class Puzzle:
    numbers: tuple[int, ...]
    target: int


@dataclass(frozen=True)
class State:
    values: tuple[Fraction, ...]  # the numbers left
    exprs: tuple[str, ...]  # how each was made from the puzzle's numbers
    steps: tuple[str, ...] = ()  # the steps taken, as lines "3 + 5 = 8 (left: 6 8 9)"

    @classmethod
    def start(cls, puzzle: Puzzle) -> "State":
        return cls(tuple(Fraction(n) for n in puzzle.numbers), tuple(str(n) for n in puzzle.numbers))

    @property
    def key(self) -> tuple:
        return tuple(sorted(self.values))

    def solves(self, puzzle: Puzzle) -> bool:
        return len(self.values) == 1 and self.values[0] == puzzle.target

    def numbers(self) -> str:
        return " ".join(show(v) for v in sorted(self.values))

    def apply(self, i: int, op: str, j: int) -> "State | None":
        """Combine values i and j with op; None for a division by zero."""
        a, b = self.values[i], self.values[j]
        if op == "/" and b == 0:
            return None
        result = {"+": a + b, "-": a - b, "*": a * b, "/": a / b if b else None}[op]
        rest = [k for k in range(len(self.values)) if k not in (i, j)]
        values = tuple(self.values[k] for k in rest) + (result,)
        exprs = tuple(self.exprs[k] for k in rest) + (f"({self.exprs[i]} {op} {self.exprs[j]})",)
        left = " ".join(show(v) for v in sorted(values))
        return State(values, exprs, self.steps + (f"{show(a)} {op} {show(b)} = {show(result)} (left: {left})",))

    def expression(self) -> str:
        """The one expression left, without its outer parentheses."""
        e = self.exprs[0]
        return e[1:-1] if e.startswith("(") and e.endswith(")") and len(self.exprs) == 1 else e

    def reply(self) -> str:
        """The worked reply: every step, then the final "Answer:" line when one number is left."""
        lines = list(self.steps)
        if len(self.values) == 1:
            lines.append(f"Answer: {self.expression()}")
        return "\n".join(lines)


def _value(text: str) -> Fraction | None:
    try:
        return Fraction(text)
    except (ValueError, ZeroDivisionError):
        return None


def expand(state: State, proposal: str) -> list[State]:
    """The states the model's proposed steps lead to: on each line, the first "a op b" whose numbers
    the state has (two different ones), recomputed exactly; repeats merged."""
    children: dict[tuple, State] = {}
    for line in proposal.splitlines():
        m = STEP.search(line)
        if not m:
            continue
        a, op, b = _value(m.group(1)), OPS[m.group(2)], _value(m.group(3))
        i = next((k for k, v in enumerate(state.values) if v == a), None)
        j = next((k for k, v in enumerate(state.values) if v == b and k != i), None)
        if a is None or b is None or i is None or j is None:
            continue
        child = state.apply(i, op, j)
        if child is not None:
            children.setdefault(child.key, child)
    return list(children.values())


def propose_messages(state: State, variant: int = 0) -> list[dict]:
    steps = EXAMPLE_STEPS[variant % VARIANTS:] + EXAMPLE_STEPS[:variant % VARIANTS]
    return [{"role": "user", "content": PROPOSE.format(example="\n".join(steps), numbers=state.numbers())}]


def value_messages(state: State, puzzle: Puzzle) -> tuple[list[dict], str]:
    """The question, and the start of the reply the verdict completes."""
    return [{"role": "user", "content": VALUE}], VALUE_START.format(target=puzzle.target, numbers=state.numbers())

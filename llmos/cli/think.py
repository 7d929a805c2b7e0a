"""`llmos think`: answer one question with a test-time strategy (llmos/infer/strategies.py).

    llmos think --model RUN "What is 48 * 27?"                                  # greedy
    llmos think --model smollm2-135m-instruct --strategy vote -k 16 "..."        # self-consistency
    llmos think --model RUN --strategy best-of-n -k 8 --verifier rm:RUN/rm "..."
    llmos think --model RUN --strategy budget --budget 30s "..."                # anytime, stops when settled
    llmos think --model RUN --strategy force --budget 512tok --min-tokens 200 "..."
    llmos think --model RUN --strategy tools "What is 4821 * 377?"
    llmos think --model smollm2-135m-instruct --strategy tree -k 5 "4 9 10 13"   # Game of 24 (--target N)
"""
from __future__ import annotations

import json
import re
import sys


def cmd_think(args):
    from llmos.common import LlmosError
    from llmos.infer.strategies import Budget, Strategy, Thinker
    from llmos.load import load_model
    question = sys.stdin.read() if args.question == "-" else args.question
    if not question.strip():
        raise LlmosError("the question is empty: give it as the argument, or - to read it from stdin")
    budget = Budget.parse(args.budget) if args.budget else Budget()
    strategy = Strategy(args.strategy, k=args.k, temperature=args.temperature, max_tokens=args.max_tokens,
                        verifier=args.verifier, budget=budget, min_tokens=args.min_tokens, seed=args.seed,
                        proposals=args.proposals, prompt=args.prompt).check()
    puzzle = None
    if strategy.name == "tree":
        from llmos.infer.tree import Puzzle
        numbers = [int(n) for n in re.findall(r"\d+", question)]
        if len(numbers) < 2:
            raise LlmosError(f"the tree strategy solves number puzzles: give two or more numbers, e.g. \"4 9 10 13\" "
                             f"(and --target, {args.target} now), not {question!r}")
        puzzle = Puzzle(tuple(numbers), args.target)
    model, tok, info = load_model(args.model)
    thought = Thinker(model, tok, info).think_many([[{"role": "user", "content": question}]], strategy,
                                                   puzzles=[puzzle] if puzzle else None)[0]
    if args.json:
        print(json.dumps({"answer": thought.answer, "reasoning_content": thought.reasoning, "reply": thought.reply,
                          "tokens": thought.tokens, "seconds": round(thought.seconds, 3), "samples": len(thought.samples),
                          "votes": thought.votes, "scores": thought.scores, "stopped": thought.stopped}, indent=1))
        return
    if thought.reasoning:
        print(thought.reasoning)
        print()
    print(f"Answer: {thought.answer if thought.answer is not None else '(none found)'}")
    detail = f"{strategy.name}: {thought.tokens:,} tokens generated, {thought.seconds:.1f} s"
    if len(thought.samples) > 1:
        detail += f", {len(thought.samples)} samples"
    if thought.votes:
        detail += ", votes " + ", ".join(f"{a}: {n}" for a, n in list(thought.votes.items())[:5])
    if strategy.name == "budget":
        detail += f" ({'the vote settled' if thought.stopped == 'settled' else 'the budget ran out'})"
    print(detail, file=sys.stderr)


def add_parsers(verbs, fmt) -> None:
    from llmos.infer.strategies import PROMPTS, STRATEGIES, VERIFIERS
    p = verbs.add_parser("think", help="answer a question with more thinking: vote, best-of-n, a budget, tools",
                         formatter_class=fmt)
    p.add_argument("question", help="the question (- reads it from stdin)")
    p.add_argument("--model", required=True, help="a run directory, params file or named model")
    p.add_argument("--strategy", default="greedy", choices=STRATEGIES, help="how to spend the compute")
    p.add_argument("-k", type=int, default=8, help="samples (vote, best-of-n); the batch width (budget); "
                                                   "states kept per depth (tree)")
    p.add_argument("--budget", default="", help="what budget/force may spend: 30s, 2m or 4096tok")
    p.add_argument("--verifier", default="logprob", help=f"best-of-n's scorer: {' | '.join(VERIFIERS[:2])} | rm:PATH")
    p.add_argument("--temperature", type=float, default=0.8, help="of the sampled chains")
    p.add_argument("--max-tokens", type=int, default=256, help="of one chain of thought")
    p.add_argument("--min-tokens", type=int, default=0, help="force: think at least this many tokens")
    p.add_argument("--prompt", default="reasoning", choices=PROMPTS,
                   help="sampled chains: the reasoning prompt (imported models) or the question as asked")
    p.add_argument("--proposals", type=int, default=2, help="tree: proposal lists per state (1-4)")
    p.add_argument("--target", type=int, default=24, help="tree: the number to reach from the question's numbers")
    p.add_argument("--seed", type=int, default=0, help="of the sampled chains (sample i uses seed + i)")
    p.add_argument("--json", action="store_true", help="print the answer, reasoning and compute as JSON")
    p.set_defaults(func=cmd_think)

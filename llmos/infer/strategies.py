"""System 2: spend more compute at test time for a better answer (`llmos think`).

    thinker = Thinker(model, tok, info)
    thought = thinker.think([{"role": "user", "content": "What is 17 * 23?"}], Strategy("vote", k=8))
    thought.answer, thought.reasoning, thought.tokens, thought.seconds, thought.votes
    thoughts = thinker.think_many(conversations, Strategy("best-of-n", k=4, verifier="logprob"))

Every strategy spends its compute through the one engine (llmos/infer/engine.py): the k samples of a
prompt are one group, prefilled once and decoded as one batch, and `think_many` decodes the groups of
many prompts together.

    greedy      the reply to the question as asked, greedy
    cot         a reasoning prompt (think step by step, end with "Answer: X"), greedy. llmos's own
                models get no extra words: their skills data already teaches a worked reply ending in
                "Answer: X", and a prompt they never saw only confuses them
    vote        k sampled chains of thought; the most frequent extracted answer wins (self-consistency,
                Wang et al. 2022); a tie goes to the answer whose samples had the higher mean log-prob
    best-of-n   k sampled chains, each scored by a verifier, the best kept:
                  logprob  the model's confidence: the mean log-prob of its reply's tokens
                  self     the model's own verification: P(yes) when asked whether the answer is right
                  rm:PATH  a reward model trained by `llmos rm`
                  gold     the task's checker, which reads the gold answer: this is pass@k, an upper
                           bound that no deployed system has, and is reported as its own curve
    budget      anytime self-consistency: samples keep the batch full until the budget (seconds or
                tokens) is spent or the vote is settled, i.e. the leader leads with probability 0.95
                under a uniform prior on the two leading answers' shares (Adaptive-Consistency,
                Aggarwal et al. 2023); the best answer so far is always at hand, and the clock is
                read after every decode step, so a 30 s budget answers within 30 s plus one step
    force       budget forcing (s1, Muennighoff et al. 2025): a chain that would reach its answer
                before `min_tokens` has "Wait," appended instead and thinks on; one that reaches
                `max_tokens` is cut off and "Answer:" is forced
    tools       greedy, with the calculator and the python sandbox running inside the reply
                (llmos/infer/tooluse.py)
    tree        Tree of Thoughts on puzzles solved in steps (Game of 24, countdown; llmos/infer/tree.py):
                the model proposes next steps, the program keeps those it can check, the model values
                each new state, and the best k of each depth go on (breadth-limited search)

What the answer is: `extract(reply)` (a task's own extractor; by default the reply's "Answer: X" line,
else its last number). The reasoning is the reply without that final line: the API's
`reasoning_content`. Compute is counted as the tokens the model generated (every sample and every
verification) and the wall seconds, both in the Thought.
"""
from __future__ import annotations

import math
import re
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Callable

from llmos.chat import ChatFormat
from llmos.common import LlmosError
from llmos.data.conversations import ANSWER
from llmos.eval.tasks import final_answer, normalize_number
from llmos.infer.engine import Engine, Sequence
from llmos.infer.prefix_cache import PrefixCache
from llmos.infer.sampling import SamplingParams
from llmos.infer.tree import PROPOSAL_TOKENS, PROPOSE_START, VARIANTS, Puzzle, State, expand, propose_messages, value_messages

STRATEGIES = ("greedy", "cot", "vote", "best-of-n", "budget", "force", "tools", "tree")
VERIFIERS = ("logprob", "self", "gold", "rm:PATH")
PROMPTS = ("reasoning", "asked")
COT_PROMPT = f'\n\nThink step by step, then end with a line "{ANSWER}X", where X is the final answer.'
VERIFY_PROMPT = "Is that final answer right? Reply with yes or no."
WAIT = " Wait,"
SETTLED = 0.95  # the budget strategy stops once the leading answer leads with this probability
_BUDGET = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|sec|m|min|tok|tokens)\s*$")


@dataclass
class Budget:
    """What a strategy may spend: wall seconds, generated tokens, or both (0: no limit of that kind)."""
    seconds: float = 0.0
    tokens: int = 0

    @classmethod
    def parse(cls, text: str) -> "Budget":
        """'30s', '2m', '4096tok' -> a Budget; LlmosError naming the forms otherwise."""
        m = _BUDGET.match(text or "")
        if not m or float(m.group(1)) <= 0:
            raise LlmosError(f"budget {text!r}: give a positive time or token count, e.g. 30s, 2m or 4096tok")
        value, unit = float(m.group(1)), m.group(2)
        if unit.startswith("tok"):
            return cls(tokens=int(value))
        return cls(seconds=value * (60 if unit.startswith("m") else 1))

    def __bool__(self) -> bool:
        return bool(self.seconds or self.tokens)


@dataclass
class Strategy:
    name: str = "greedy"
    k: int = 8  # samples (vote, best-of-n); the batch width of budget
    temperature: float = 0.8  # of sampled chains (greedy, cot, tools and force's chain use 0 / this)
    top_p: float = 0.95
    max_tokens: int = 256  # of one chain
    verifier: str = "logprob"  # best-of-n: logprob | self | gold | rm:PATH
    budget: Budget = field(default_factory=Budget)  # budget: what it may spend; force: max tokens
    min_tokens: int = 0  # force: think at least this long
    max_waits: int = 4  # force: at most this many "Wait," extensions
    proposals: int = 2  # tree: proposal lists per state, each prompt's example in another order
    # "reasoning": sampled chains get the reasoning prompt (imported models); "asked": the question as
    # asked, for a small model that answers worse when told to think step by step
    prompt: str = "reasoning"
    seed: int = 0

    def check(self) -> "Strategy":
        if self.name not in STRATEGIES:
            raise LlmosError(f"unknown strategy {self.name!r}: choose among {', '.join(STRATEGIES)}")
        if not isinstance(self.k, int) or self.k < 1:
            raise LlmosError(f"k must be a whole number of samples of at least 1, not {self.k!r}")
        if self.prompt not in PROMPTS:
            raise LlmosError(f"prompt must be one of {', '.join(PROMPTS)}, not {self.prompt!r}")
        if self.name == "tree" and not (isinstance(self.proposals, int) and 1 <= self.proposals <= VARIANTS):
            raise LlmosError(f"proposals must be 1 to {VARIANTS} (the example orders), not {self.proposals!r}")
        if self.name == "best-of-n" and self.verifier not in VERIFIERS[:3] and not self.verifier.startswith("rm:"):
            raise LlmosError(f"unknown verifier {self.verifier!r}: choose among {', '.join(VERIFIERS)}")
        if self.name == "budget" and not self.budget:
            raise LlmosError("the budget strategy needs a budget: --budget 30s or --budget 4096tok")
        return self


@dataclass
class Thought:
    answer: str | None  # the extracted final answer (None: no sample gave one)
    reply: str  # the chosen reply, reasoning and answer line
    tokens: int  # tokens generated to reach it: every sample, every verification
    seconds: float
    samples: list[str] = field(default_factory=list)  # every finished reply the strategy drew
    answers: list[str | None] = field(default_factory=list)  # each sample's extracted answer
    scores: list[float] = field(default_factory=list)  # best-of-n: each sample's verifier score
    confidence: list[float] = field(default_factory=list)  # each sample's mean token log-prob
    sample_tokens: list[int] = field(default_factory=list)  # each sample's generated tokens
    votes: dict[str, int] = field(default_factory=dict)  # vote, budget: answer -> samples that gave it
    stopped: str = "done"  # "done", "settled" (budget: the vote was decided) or "budget" (it ran out)
    tool_calls: list = field(default_factory=list)  # tools: the calls made, in order

    @property
    def reasoning(self) -> str:
        return split_reasoning(self.reply)[0]


def with_reasoning_prompt(messages: list[dict], native: bool) -> list[dict]:
    """The messages with the reasoning instruction added to the last user turn, for imported models
    (`native`: an llmos model, whose own data teaches worked replies ending in "Answer: X")."""
    if native or not messages or messages[-1].get("role") != "user":
        return messages
    return [*messages[:-1], {**messages[-1], "content": (messages[-1]["content"] or "") + COT_PROMPT}]


def split_reasoning(reply: str) -> tuple[str, str]:
    """(reasoning, final answer line): the reply up to its last "Answer:" line, and that line."""
    lines = reply.rstrip().splitlines()
    for i in range(len(lines) - 1, -1, -1):
        if lines[i].strip().startswith(ANSWER.strip()):
            return "\n".join(lines[:i]).rstrip(), lines[i].strip()
    return reply.strip(), ""


def default_extract(reply: str) -> str | None:
    """The reply's last "Answer: X" line, else its last number (the checked tasks' own reading)."""
    return final_answer(reply, numeric=True)


def answer_key(answer: str | None) -> str | None:
    """What votes are counted on: '1,234.0' and '1234' agree, as do 'Paris.' and 'paris'."""
    if answer is None:
        return None
    return normalize_number(answer) or answer.strip().rstrip(".").strip().lower() or None


def settled(counts: list[int], level: float = SETTLED) -> bool:
    """Whether the leading answer (a votes) leads the runner-up (b votes) with probability `level`:
    P(p_a > p_b) under Beta(a + 1, b + 1) on the leader's share of the two, which for whole numbers is
    P(Binomial(a + b + 1, 1/2) <= a)."""
    if not counts:
        return False
    top = sorted(counts, reverse=True) + [0]
    a, b = top[0], top[1]
    n = a + b + 1
    return sum(math.comb(n, i) for i in range(a + 1)) / 2 ** n >= level


def majority(answers: list[str | None], confidence: list[float]) -> tuple[int | None, dict[str, int]]:
    """(the index of the sample that stands for the winning answer, the votes): the most frequent
    answer wins, a tie goes to the answer whose samples have the higher mean confidence, and the
    winner's most confident sample stands for it. (None, {}) when no sample gave an answer."""
    keys = [answer_key(a) for a in answers]
    counts = Counter(k for k in keys if k is not None)
    if not counts:
        return None, {}
    mean_conf = {k: sum(c for kk, c in zip(keys, confidence) if kk == k) / counts[k] for k in counts}
    best = max(counts, key=lambda k: (counts[k], mean_conf[k]))
    return max((i for i, k in enumerate(keys) if k == best), key=lambda i: confidence[i]), dict(counts.most_common())


def best_scored(scores: list[float], answers: list[str | None]) -> int:
    """The highest-scored sample (one with an answer first among equals)."""
    return max(range(len(scores)), key=lambda i: (scores[i], answers[i] is not None))


def mean_logprob(seq: Sequence) -> float:
    values = [lp.logprob for lp in seq.logprobs if lp is not None]
    return sum(values) / len(values) if values else float("-inf")


class Thinker:
    """One model's test-time strategies. `clock` is read after every decode step (tests pass a fake one)."""

    def __init__(self, model, tok, info: dict | None = None, max_batch: int = 32,
                 clock: Callable[[], float] = time.monotonic, toolbox=None):
        self.model, self.tok, self.clock = model, tok, clock
        self.fmt = ChatFormat(tok, (info or {}).get("chat_template", ""))
        self.max_batch = max_batch
        self.toolbox = toolbox  # the tools strategy's (calculator and python when None)
        self._reward_models: dict = {}
        # The tree's proposal and value prompts, and the self-check's, share a long start: prefill it once.
        self.prefix_cache = PrefixCache(max_bytes=256 << 20)

    # ----- prompts -----

    def reasoning_messages(self, messages: list[dict]) -> list[dict]:
        return with_reasoning_prompt(messages, self.fmt.native)

    def _params(self, strategy: Strategy, greedy: bool, max_tokens: int | None = None, **extra) -> SamplingParams:
        return SamplingParams(max_tokens=max_tokens or strategy.max_tokens,
                              temperature=0.0 if greedy else strategy.temperature,
                              top_p=1.0 if greedy else strategy.top_p, stop_ids=self.fmt.stop_ids,
                              **extra).check(context=self.model.cfg.max_seq_len)

    def _fit(self, prompt: list[int], max_tokens: int) -> int:
        room = self.model.cfg.max_seq_len - len(prompt) - 1
        if room < 1:
            raise LlmosError(f"the question takes {len(prompt)} tokens, the model's whole context of "
                             f"{self.model.cfg.max_seq_len}: shorten it")
        return min(max_tokens, room)

    # ----- decoding -----

    def _engine(self, rows: int) -> Engine:
        return Engine(self.model, self.tok, max_batch=max(1, min(self.max_batch, rows)), prefix_cache=self.prefix_cache)

    def _decode(self, jobs: list[tuple[list[int], SamplingParams, int]], tools=None) -> list[list[Sequence]]:
        """Each (prompt, params, n) job's n samples. Every group is queued at once and the engine admits
        rows as they free up (a group wider than its batch goes in batch-sized parts, each prefilled once)."""
        engine = self._engine(sum(n for _, _, n in jobs))
        groups = []
        for prompt, params, n in jobs:
            group: list[Sequence] = []
            while len(group) < n:
                seeded = params if params.seed is None else replace(params, seed=params.seed + len(group))
                group += engine.add(prompt, seeded, n=min(n - len(group), engine.max_batch), tools=tools)
            groups.append(group)
        while engine.has_work:
            engine.step()
        return groups

    # ----- strategies -----

    def think(self, messages: list[dict], strategy: Strategy, extract: Callable[[str], str | None] = default_extract,
              check: Callable[[str], bool] | None = None) -> Thought:
        """One question's answer by the strategy (`check`: the gold checker, for best-of-n's gold verifier)."""
        return self.think_many([messages], strategy, extract, [check] if check else None)[0]

    def think_many(self, conversations: list[list[dict]], strategy: Strategy,
                   extract: Callable[[str], str | None] = default_extract,
                   checks: list[Callable[[str], bool]] | None = None,
                   puzzles: list[Puzzle | None] | None = None) -> list[Thought]:
        """Every conversation's answer; sampled strategies decode all of them together. The seconds of
        each Thought are the batch's wall time divided among its questions. `puzzles`: each question's
        numbers and target, which the tree strategy searches over."""
        strategy.check()
        if strategy.name == "tree" and (puzzles is None or None in puzzles):
            raise LlmosError("the tree strategy searches over steps of a puzzle: use a task that has them "
                             "(game24, rg:countdown, rg:puzzle24), or `llmos think --strategy tree` with the numbers")
        if strategy.verifier == "gold" and strategy.name == "best-of-n" and checks is None:
            raise LlmosError("the gold verifier needs each problem's checker (it is pass@k): use a task")
        if strategy.name == "budget":
            return [self._budget(m, strategy, extract) for m in conversations]
        if strategy.name == "force":
            return [self._force(m, strategy, extract) for m in conversations]
        started = self.clock()
        thoughts = self._tree(puzzles, strategy) if strategy.name == "tree" else \
            self._batched(conversations, strategy, extract, checks)
        share = (self.clock() - started) / max(len(conversations), 1)
        for t in thoughts:
            t.seconds = share
        return thoughts

    def _batched(self, conversations, strategy: Strategy, extract, checks) -> list[Thought]:
        name = strategy.name
        if name == "tools":
            return self._tools(conversations, strategy, extract)
        sampled = name in ("vote", "best-of-n")
        asked = name == "greedy" or strategy.prompt == "asked"
        chats = conversations if asked else [self.reasoning_messages(m) for m in conversations]
        prompts = [self.fmt.render_prompt(m) for m in chats]
        n = strategy.k if sampled else 1
        # prompt j's samples take seeds seed + j*n ...: every problem of an eval draws its own chains
        jobs = [(p, self._params(strategy, not sampled, self._fit(p, strategy.max_tokens),
                                 seed=strategy.seed + j * n if sampled else None, logprobs=sampled), n)
                for j, p in enumerate(prompts)]
        groups = self._decode(jobs)
        thoughts = []
        for group in groups:
            replies = [s.text for s in group]
            answers = [extract(r) for r in replies]
            thoughts.append(Thought(answers[0], replies[0], sum(s.generated for s in group), 0.0, replies, answers,
                                    confidence=[mean_logprob(s) for s in group],
                                    sample_tokens=[s.generated for s in group]))
        if name == "vote":
            for t in thoughts:
                self._vote(t, t.confidence)
        elif name == "best-of-n":
            self._best_of_n(chats, thoughts, groups, strategy, checks)
        return thoughts

    def _vote(self, thought: Thought, confidence: list[float]) -> None:
        i, thought.votes = majority(thought.answers, confidence)
        if i is not None:
            thought.answer, thought.reply = thought.answers[i], thought.samples[i]

    def _best_of_n(self, chats, thoughts: list[Thought], groups, strategy: Strategy, checks) -> None:
        verifier = strategy.verifier
        if verifier == "logprob":
            scores = [[mean_logprob(s) for s in g] for g in groups]
        elif verifier == "gold":
            scores = [[float(check(r)) for r in t.samples] for t, check in zip(thoughts, checks)]
        elif verifier == "self":
            scores = self._self_verify(chats, thoughts, strategy)
        else:
            rm = self._reward_model(verifier[len("rm:"):])
            scores = [rm.score([chat] * len(t.samples), t.samples) for chat, t in zip(chats, thoughts)]
        for t, s in zip(thoughts, scores):
            t.scores = s
            i = best_scored(s, t.answers)
            t.answer, t.reply = t.answers[i], t.samples[i]

    def _self_verify(self, chats, thoughts: list[Thought], strategy: Strategy) -> list[list[float]]:
        """P(yes) / (P(yes) + P(no)) of the model's first token when asked whether each sample is right."""
        yes, no = self._first_ids(("yes", "Yes", " yes", " Yes")), self._first_ids(("no", "No", " no", " No"))
        yes, no = yes - no, no - yes  # a token that starts both words says neither
        jobs, owners = [], []
        for chat, t in zip(chats, thoughts):
            for reply in t.samples:
                prompt = self.fmt.render_prompt([*chat, {"role": "assistant", "content": reply},
                                                 {"role": "user", "content": VERIFY_PROMPT}])
                prompt = prompt[-(self.model.cfg.max_seq_len - 2):]
                jobs.append((prompt, SamplingParams(max_tokens=1, temperature=0, logprobs=True, top_logprobs=20), 1))
                owners.append(t)
        scores: dict[int, list[float]] = {id(t): [] for t in thoughts}
        for (seq,), t in zip(self._decode(jobs), owners):
            top = dict(seq.logprobs[0].top) if seq.logprobs and seq.logprobs[0] is not None else {}
            p_yes = sum(math.exp(top[i]) for i in yes if i in top)
            p_no = sum(math.exp(top[i]) for i in no if i in top)
            scores[id(t)].append(p_yes / (p_yes + p_no) if p_yes + p_no > 0 else 0.0)
            t.tokens += seq.generated
        return [scores[id(t)] for t in thoughts]

    def _first_ids(self, words) -> set[int]:
        return {ids[0] for ids in (self.tok.encode(w) for w in words) if ids}

    def _reward_model(self, path: str):
        if path not in self._reward_models:
            from llmos.train.reward import load_reward_model
            self._reward_models[path] = load_reward_model(path)
        return self._reward_models[path]

    def _tools(self, conversations, strategy: Strategy, extract) -> list[Thought]:
        from llmos.infer.tooluse import ToolUse, final_answer
        from llmos.tools.registry import Toolbox
        use = ToolUse(self.toolbox or Toolbox.build("calculator,python"), self.fmt)
        try:
            system = [{"role": "system", "content": use.system_prompt()}]
            prompts = [self.fmt.render_prompt([*system, *m]) for m in conversations]
            jobs = [(p, self._params(strategy, True, self._fit(p, strategy.max_tokens)), 1) for p in prompts]
            groups = self._decode(jobs, tools=use)
        finally:
            use.close()
        thoughts = []
        for (seq,) in groups:
            reply = final_answer(seq.text)
            thoughts.append(Thought(extract(reply), seq.text, seq.generated, 0.0, [reply], [extract(reply)],
                                    tool_calls=seq.tool_calls))
        return thoughts

    def _tree(self, puzzles: list[Puzzle], strategy: Strategy) -> list[Thought]:
        """Breadth-limited search (k states per depth) for every puzzle at once: each depth's proposals
        are one batched decode, and so are the values of the states they lead to."""
        frontiers = [[State.start(p)] for p in puzzles]
        solved: list[State | None] = [None] * len(puzzles)
        tokens = [0] * len(puzzles)
        for _ in range(max(len(p.numbers) for p in puzzles) - 1):
            jobs, owners = [], []
            for i, frontier in enumerate(frontiers):
                for state in frontier if solved[i] is None else []:
                    for variant in range(strategy.proposals):
                        prompt = self.fmt.render_prompt(propose_messages(state, variant)) + self.tok.encode(PROPOSE_START)
                        limit = self._fit(prompt, min(strategy.max_tokens, PROPOSAL_TOKENS))
                        jobs.append((prompt, self._params(strategy, True, limit, stop=["\n\n"]), 1))
                        owners.append((i, state))
            if not jobs:
                break
            children: list[dict] = [{} for _ in puzzles]
            for (seq,), (i, state) in zip(self._decode(jobs), owners):
                tokens[i] += seq.generated
                for child in expand(state, seq.text):
                    children[i].setdefault(child.key, child)
                    if child.solves(puzzles[i]) and solved[i] is None:
                        solved[i] = child
            open_states = [(i, c) for i, kids in enumerate(children) if solved[i] is None
                           for c in kids.values() if len(c.values) > 1]
            valued: list[list[tuple[float, State]]] = [[] for _ in puzzles]
            for (i, state), value in zip(open_states, self._values(open_states, puzzles)):
                valued[i].append((value, state))
                tokens[i] += 1  # one generated token per valuation
            for i, ranked in enumerate(valued):
                frontiers[i] = [c for _, c in sorted(ranked, key=lambda vc: -vc[0])[:strategy.k]]
        thoughts = []
        for i, puzzle in enumerate(puzzles):
            best = solved[i] or (frontiers[i][0] if frontiers[i] else State.start(puzzle))
            reply = best.reply()
            thoughts.append(Thought(best.expression() if solved[i] else None, reply, tokens[i], 0.0, [reply],
                                    stopped="done" if solved[i] else "budget"))
        return thoughts

    def _values(self, states: list[tuple[int, State]], puzzles: list[Puzzle]) -> list[float]:
        """The model's value of each state: P(sure) + P(likely)/2 among its first-token choices."""
        words = {w: self._first_ids((w, w.capitalize(), " " + w, " " + w.capitalize()))
                 for w in ("sure", "likely", "impossible")}
        jobs = []
        for i, state in states:
            messages, start = value_messages(state, puzzles[i])
            jobs.append((self.fmt.render_prompt(messages) + self.tok.encode(start),
                         SamplingParams(max_tokens=1, temperature=0, logprobs=True, top_logprobs=20), 1))
        values = []
        for (seq,) in self._decode(jobs):
            top = dict(seq.logprobs[0].top) if seq.logprobs and seq.logprobs[0] is not None else {}
            p = {w: sum(math.exp(top[t]) for t in ids if t in top) for w, ids in words.items()}
            total = sum(p.values())
            values.append((p["sure"] + p["likely"] / 2) / total if total > 0 else 0.0)
        return values

    def _budget(self, messages: list[dict], strategy: Strategy, extract) -> Thought:
        """Anytime self-consistency under a budget (see the module docstring)."""
        budget, started = strategy.budget, self.clock()
        prompt = self.fmt.render_prompt(messages if strategy.prompt == "asked" else self.reasoning_messages(messages))
        params = self._params(strategy, False, self._fit(prompt, strategy.max_tokens), logprobs=True)
        engine = self._engine(strategy.k)
        running: list[Sequence] = []
        thought = Thought(None, "", 0, 0.0)
        drawn = 0
        stopped = "budget"
        while True:
            while len(running) < engine.max_batch:  # keep the batch full: a finished sample is replaced
                seeded = replace(params, seed=strategy.seed + drawn)
                running += engine.add(prompt, seeded)
                drawn += 1
            engine.step()
            spent = sum(s.generated for s in running) + thought.tokens
            for seq in [s for s in running if s.finished]:
                running.remove(seq)
                thought.tokens += seq.generated
                thought.samples.append(seq.text)
                thought.answers.append(extract(seq.text))
                thought.confidence.append(mean_logprob(seq))
                thought.sample_tokens.append(seq.generated)
            if thought.samples:
                self._vote(thought, thought.confidence)
            if settled(list(thought.votes.values())):
                stopped = "settled"
                break
            if (budget.seconds and self.clock() - started >= budget.seconds) or (budget.tokens and spent >= budget.tokens):
                break
        for seq in running:  # cut off: they do not vote, but count as spent
            seq.cancel()
            thought.tokens += seq.generated
        if not thought.votes and running:  # nothing finished in time: the longest partial chain's answer
            longest = max(running, key=lambda s: s.generated)
            thought.reply, thought.answer = longest.text, extract(longest.text)
        thought.stopped, thought.seconds = stopped, self.clock() - started
        return thought

    def _force(self, messages: list[dict], strategy: Strategy, extract) -> Thought:
        """Budget forcing: extend a chain that ends early with "Wait,", cut one that runs long."""
        started = self.clock()
        prompt = self.fmt.render_prompt(self.reasoning_messages(messages))
        limit = self._fit(prompt, strategy.budget.tokens or strategy.max_tokens)
        text, generated, waits = "", 0, 0
        marker = ANSWER.strip()
        while True:
            context = prompt + self.tok.encode(text)
            left = min(limit - generated, self.model.cfg.max_seq_len - len(context) - 1)
            if left < 1:
                break
            params = self._params(strategy, strategy.temperature == 0, left, stop=[marker],
                                  seed=strategy.seed + waits)
            (seq,), = self._decode([(context, params, 1)])
            text, generated = text + seq.text, generated + seq.generated
            if seq.finish_reason != "stop" or generated >= strategy.min_tokens or waits >= strategy.max_waits:
                break
            text, waits = text.rstrip() + WAIT, waits + 1  # it wanted to stop thinking: make it go on
        # The answer, forced: "Answer:" and a short line after it.
        context = prompt + self.tok.encode(text.rstrip() + "\n" + marker)
        room = self.model.cfg.max_seq_len - len(context) - 1
        answer_text = ""
        if room >= 1:
            params = SamplingParams(max_tokens=min(24, room), temperature=0, stop=["\n"], stop_ids=self.fmt.stop_ids)
            (seq,), = self._decode([(context, params, 1)])
            answer_text, generated = seq.text, generated + seq.generated
        reply = f"{text.rstrip()}\n{marker} {answer_text.strip()}".strip()
        thought = Thought(extract(reply), reply, generated, self.clock() - started, [reply], [extract(reply)])
        thought.stopped = "budget" if generated >= limit else "done"
        return thought

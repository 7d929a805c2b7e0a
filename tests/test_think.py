"""Test-time strategies (llmos/infer/strategies.py, `llmos think`) on a tiny model that learned a
distribution of replies: to "What is 6 + 1?" it starts one wrong chain 30% of the time (greedy takes
it) and seven different right chains 10% each, so voting must beat greedy; it also learned to say
whether a chain is right, which best-of-n's self-verifier reads. Budgets run on a fake clock."""
from __future__ import annotations

import json
import re
import subprocess
from dataclasses import replace

import pytest

from llmos.common import LlmosError
from llmos.eval.compute import ComputeArgs, compute_curves, curves_table, plot_curves
from llmos.eval.tasks import Problem, Task
from llmos.infer.strategies import (WAIT, Budget, Strategy, Thinker, answer_key, default_extract, settled,
                                    split_reasoning, VERIFY_PROMPT)
from llmos.params import save_params
from llmos.tools.registry import Toolbox
from serving import memorizing_model, tool_conversation
from conftest import llmos_cmd

pytestmark = pytest.mark.usefixtures("one_torch_thread")

QUESTION = "What is 6 + 1?"
WRONG = "First add them up.\nAnswer: 3"
# Each chain starts with its own letter, so its first token is its own: greedy sees 30% against 10%s.
RIGHT = ["Count on from six.\nAnswer: 7", "One more than six.\nAnswer: 7", "Add one to six.\nAnswer: 7",
         "Six plus one makes seven.\nAnswer: 7", "Plus one gives seven.\nAnswer: 7", "Take six, add one.\nAnswer: 7",
         "Each step adds one: seven.\nAnswer: 7"]
TOOL_QUESTION = "What is 4821 * 377?"


def chat(question: str, reply: str) -> list[dict]:
    return [{"role": "user", "content": question}, {"role": "assistant", "content": reply}]


def verdict(reply: str, right: bool) -> list[dict]:
    return [*chat(QUESTION, reply), {"role": "user", "content": VERIFY_PROMPT},
            {"role": "assistant", "content": "yes" if right else "no"}]


@pytest.fixture(scope="module")
def model(tok):
    conversations = [chat(QUESTION, WRONG)] * 3 + [chat(QUESTION, r) for r in RIGHT]
    conversations += [verdict(WRONG, False)] * 3 + [verdict(r, True) for r in RIGHT]
    conversations += [tool_conversation(["calculator"], TOOL_QUESTION,
                                        {"name": "calculator", "arguments": {"expression": "4821 * 377"}},
                                        "1817517", "Answer: 1817517")]
    return memorizing_model(tok, conversations, steps=400, max_loss=0.2)


class FakeClock:
    """One second passes each time the clock is read (the thinker reads it once per decode step)."""
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


def ask(thinker: Thinker, strategy: Strategy, **kw):
    return thinker.think([{"role": "user", "content": QUESTION}], strategy, **kw)


def test_the_pieces_parse_answers_and_budgets():
    assert split_reasoning("a\nb\nAnswer: 7") == ("a\nb", "Answer: 7")
    assert default_extract("so 12 and 13") == "13" and default_extract("x\nAnswer: Paris.") == "Paris."
    assert answer_key("1,234.0") == answer_key("1234") and answer_key("Paris.") == answer_key("paris")
    assert Budget.parse("30s") == Budget(seconds=30) and Budget.parse("2m").seconds == 120
    assert Budget.parse("4096tok") == Budget(tokens=4096)
    for bad in ("", "30", "-3s", "5 parsecs"):
        with pytest.raises(LlmosError, match="30s, 2m or 4096tok"):
            Budget.parse(bad)
    with pytest.raises(LlmosError, match="choose among"):
        Strategy("ponder").check()
    with pytest.raises(LlmosError, match="needs a budget"):
        Strategy("budget").check()
    # The leader is settled once it leads with probability 0.95 (uniform prior on the two shares).
    assert not settled([3]) and settled([4]) and not settled([5, 1]) and settled([6, 1]) and not settled([])


def test_greedy_takes_the_likeliest_chain_and_voting_outvotes_it(model, tok):
    thinker = Thinker(model, tok)
    greedy = ask(thinker, Strategy("greedy"))
    assert greedy.answer == "3" and greedy.reply == WRONG and len(greedy.samples) == 1
    assert greedy.reasoning == "First add them up."
    vote = ask(thinker, Strategy("vote", k=32, temperature=1.0, top_p=1.0))
    assert len(vote.samples) == 32 and 28 <= sum(vote.votes.values()) <= 32  # a stray sample may give no answer
    assert vote.votes["7"] > vote.votes.get("3", 0) and vote.answer == "7"
    assert vote.reply in RIGHT
    # Compute is counted: every sample's tokens.
    assert vote.tokens >= 32 * 5 > greedy.tokens


def test_best_of_n_keeps_what_its_verifier_scores_highest(model, tok):
    thinker = Thinker(model, tok)
    strategy = Strategy("best-of-n", k=16, temperature=1.0, top_p=1.0)
    confident = ask(thinker, strategy)  # logprob: the mean token log-prob, highest for the common wrong chain
    best = max(range(16), key=lambda i: confident.scores[i])
    assert confident.reply == confident.samples[best] and "3" in confident.answers
    assert confident.answer == "3"
    verified = ask(thinker, Strategy("best-of-n", k=16, temperature=1.0, top_p=1.0, verifier="self"))
    right = [s for s, a in zip(verified.scores, verified.answers) if a == "7"]
    wrong = [s for s, a in zip(verified.scores, verified.answers) if a == "3"]
    assert right and wrong and min(right) > 0.5 > max(wrong)
    assert verified.answer == "7"
    gold = ask(thinker, Strategy("best-of-n", k=16, temperature=1.0, top_p=1.0, verifier="gold"),
               check=lambda reply: default_extract(reply) == "7")
    assert gold.answer == "7"
    with pytest.raises(LlmosError, match="pass@k"):
        ask(thinker, Strategy("best-of-n", verifier="gold"))


def test_a_budget_in_seconds_ends_within_one_decode_step_of_it(model, tok):
    clock = FakeClock()
    thought = ask(Thinker(model, tok, clock=clock), Strategy("budget", k=4, budget=Budget(seconds=5)))
    assert thought.stopped == "budget" and thought.seconds <= 5 + 1
    assert not thought.votes  # every chain is longer than 5 steps: none finished, none voted


def test_the_budget_strategy_stops_early_once_the_vote_is_settled(model, tok):
    clock = FakeClock()
    thought = ask(Thinker(model, tok, clock=clock),
                  Strategy("budget", k=8, temperature=1.0, top_p=1.0, budget=Budget(seconds=1000)))
    assert thought.stopped == "settled" and thought.answer == "7" and thought.seconds < 200
    assert settled(list(thought.votes.values()))
    capped = ask(Thinker(model, tok), Strategy("budget", k=8, temperature=1.0, top_p=1.0, budget=Budget(tokens=30)))
    assert capped.stopped == "budget" and capped.tokens <= 30 + 8  # one step past the cap at most, 8 rows wide


def test_budget_forcing_makes_a_short_chain_think_on_and_cuts_a_long_one(model, tok):
    thinker = Thinker(model, tok)
    longer = ask(thinker, Strategy("force", temperature=0, min_tokens=20, max_waits=2, max_tokens=120))
    assert WAIT.strip() in longer.reply and longer.reply.count(WAIT.strip()) <= 2
    assert split_reasoning(longer.reply)[1].startswith("Answer:")
    cut = ask(thinker, Strategy("force", temperature=0, budget=Budget(tokens=3)))
    assert cut.stopped == "budget" and split_reasoning(cut.reply)[1].startswith("Answer:")
    assert WRONG not in cut.reply  # cut before its chain ended


def test_the_tools_strategy_calls_the_calculator_inside_the_reply(model, tok):
    thinker = Thinker(model, tok, toolbox=Toolbox.build("calculator"))
    thought = thinker.think([{"role": "user", "content": TOOL_QUESTION}], Strategy("tools"))
    assert [c.name for c in thought.tool_calls] == ["calculator"] and thought.tool_calls[0].result == "1817517"
    assert thought.answer == "1817517"


def test_many_questions_decode_together_with_the_same_answers(model, tok):
    thinker = Thinker(model, tok, max_batch=8)
    strategy = Strategy("vote", k=12, temperature=1.0, top_p=1.0, seed=3)
    together = thinker.think_many([[{"role": "user", "content": QUESTION}]] * 3, strategy)
    # seeded: the same samples, batched or not; question j draws with seeds from seed + j*k
    alone = [ask(thinker, replace(strategy, seed=3 + j * 12)) for j in range(3)]
    assert [t.samples for t in together] == [a.samples for a in alone]
    assert together[0].samples != together[1].samples  # each question draws its own chains


def test_llmos_think_answers_from_the_command_line_and_names_bad_input(model, tok, tmp_path):
    path = save_params(tmp_path / "m.llmos", model, tok, provenance={"name": "m"})
    # 64 chains: the wrong answer (30%) wins a 16-chain vote 7% of the time, a 64-chain one 0.1%
    done = subprocess.run(llmos_cmd("think", "--model", str(path), "--strategy", "vote", "-k", "64",
                                    "--temperature", "1", "--json", QUESTION), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["answer"] == "7" and out["samples"] == 64 and out["reasoning_content"] in [r.split("\n")[0] for r in RIGHT]
    bad = subprocess.run(llmos_cmd("think", "--model", str(path), "--strategy", "budget", QUESTION),
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "needs a budget" in bad.stderr and "Traceback" not in bad.stderr


class OneQuestion(Task):
    """The tiny model's one question, asked n times (a task of its own, held out by fiat)."""
    name, description = "six-plus-one", "What is 6 + 1?"

    def problems(self, split: str, n: int, seed: int = 0) -> list[Problem]:
        return [Problem(QUESTION, "7")] * n


def test_accuracy_against_compute_rises_for_vote_and_pass_at_k(model, tok, tmp_path):
    clock = FakeClock()
    # each problem draws its own chains; at 64 a vote picks the wrong answer (30%) 0.1% of the time
    args = ComputeArgs(strategies="greedy,vote,best-of-n,pass@k", compute="1,4,64", problems=6, temperature=1.0,
                       time_problems=2)
    result = compute_curves(model, tok, {}, OneQuestion(), args, clock=clock)
    curves = result["curves"]
    assert [p["compute"] for p in curves["vote"]] == [1, 4, 64] and len(curves["greedy"]) == 1
    assert curves["greedy"][0]["accuracy"] == 0.0 and curves["vote"][-1]["accuracy"] == 1.0
    passed = [p["accuracy"] for p in curves["pass@k"]]
    assert passed == sorted(passed) and passed[-1] == 1.0
    for points in curves.values():
        tokens = [p["tokens"] for p in points]
        assert tokens == sorted(tokens) and all(p["seconds"] is not None and p["seconds"] > 0 for p in points)
    headers, rows = curves_table(result)
    assert headers == ["strategy", "1x", "4x", "64x"] and rows[0][0] == "greedy" and rows[0][2] == ""
    png = plot_curves(result, tmp_path / "compute.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(LlmosError, match="pass@k"):
        compute_curves(model, tok, {}, OneQuestion(), ComputeArgs(verifier="gold"))


def test_llmos_eval_draws_the_compute_curves_and_names_bad_flags(model, tok, tmp_path):
    path = save_params(tmp_path / "m.llmos", model, tok, provenance={"name": "m"})
    out = tmp_path / "curves.json"
    done = subprocess.run(llmos_cmd("eval", "--model", str(path), "--tasks", "skills:add", "--strategies",
                                    "greedy,vote", "--compute", "1,2", "--problems", "4", "--time-problems", "1",
                                    "--max-tokens", "16", "--out", str(out)), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "| vote |" in done.stdout and json.loads(out.read_text())["curves"]["vote"][1]["compute"] == 2
    assert out.with_suffix(".png").is_file()
    bad = subprocess.run(llmos_cmd("eval", "--model", str(path), "--tasks", "skills:add", "--strategies", "ponder"),
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "choose among greedy" in bad.stderr and "Traceback" not in bad.stderr


# ----- through the API: reasoning_effort and best_of (llmos/serve/reasoning.py) -----

@pytest.fixture(scope="module")
def reasoning_server(model, tok, tmp_path_factory):
    from serving import running_server
    work = tmp_path_factory.mktemp("reasoning_server")
    path = save_params(work / "m.llmos", model, tok, provenance={"name": "m"})
    with running_server("--model", f"m={path}", log=work / "serve.log") as base:
        yield base


def post(base: str, **body):
    import httpx
    return httpx.post(base + "/v1/chat/completions", timeout=120,
                      json={"model": "m", "messages": [{"role": "user", "content": QUESTION}], "max_tokens": 40, **body})


def test_the_vote_is_settled_by_the_budget_rule_and_the_reply_split():
    from llmos.serve.reasoning import ReasoningPlan, reasoning_plan, split_reply, streamed_reasoning

    class Chain:
        def __init__(self, text):
            self.text, self.logprobs = text, []
    plan = reasoning_plan("high", None, None, max_chains=16)
    assert plan == ReasoningPlan(16, True, True, vote=True)
    assert plan.done([Chain("x\nAnswer: 3")] * 4) and not plan.done([Chain("Answer: 3")] * 5 + [Chain("Answer: 7")])
    assert reasoning_plan("low", None, None, 16) == ReasoningPlan(1, False, True, vote=False)
    assert reasoning_plan(None, 2, 5, 16) == ReasoningPlan(5, True, False, vote=False, keep=2)
    assert reasoning_plan(None, None, None, 16) is None
    assert split_reply("Add one.\nSo seven.\nAnswer: 7") == ("Add one.\nSo seven.", "7")
    assert split_reply("Just words.") == ("", "Just words.")
    # while a chain runs, only complete lines before any "Answer:" line are shown as reasoning
    assert streamed_reasoning("Add one.\nSo sev") == "Add one." and streamed_reasoning("Add.\nAnswer: 7\n") == "Add."


def test_reasoning_effort_keeps_the_reasoning_apart_and_votes(reasoning_server):
    low = post(reasoning_server, reasoning_effort="low").json()["choices"][0]["message"]
    assert low == {"role": "assistant", "content": "3", "reasoning_content": "First add them up."}  # greedy's chain
    high = post(reasoning_server, reasoning_effort="high", seed=0)
    assert high.status_code == 200, high.text
    reply = high.json()
    message, used = reply["choices"][0]["message"], reply["usage"]
    votes = message["llmos_votes"]
    assert 4 <= sum(votes.values()) <= 16 and message["content"] == max(votes, key=votes.get)
    chain = {"3": [WRONG.split("\n")[0]], "7": [r.split("\n")[0] for r in RIGHT]}[message["content"]]
    assert message["reasoning_content"] in chain
    assert used["completion_tokens"] >= 4 * 5 and 0 < used["completion_tokens_details"]["reasoning_tokens"] < \
        used["completion_tokens"]


def test_a_streamed_reasoning_reply_sends_reasoning_then_content(reasoning_server):
    import httpx
    with httpx.stream("POST", reasoning_server + "/v1/chat/completions", timeout=120, json={
            "model": "m", "messages": [{"role": "user", "content": QUESTION}], "max_tokens": 40,
            "reasoning_effort": "low", "stream": True, "stream_options": {"include_usage": True}}) as r:
        chunks = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    assert "".join(d.get("reasoning_content", "") for d in deltas) == "First add them up."
    assert "".join(d.get("content", "") for d in deltas) == "3"
    assert chunks[-1]["usage"]["completion_tokens_details"]["reasoning_tokens"] > 0


def test_best_of_returns_the_n_most_confident_chains(reasoning_server):
    reply = post(reasoning_server, best_of=8, n=2, logprobs=True, seed=1).json()
    choices = reply["choices"]
    mean = [sum(t["logprob"] for t in c["logprobs"]["content"]) / len(c["logprobs"]["content"]) for c in choices]
    assert len(choices) == 2 and mean[0] >= mean[1] and reply["usage"]["completion_tokens"] >= 8 * 5


@pytest.mark.parametrize("body, named", [({"best_of": 2, "n": 3}, "best_of must be at least n"),
                                         ({"reasoning_effort": "extreme"}, "reasoning_effort"),
                                         ({"reasoning_effort": "high", "n": 2}, "ask for best_of"),
                                         ({"reasoning_effort": "low", "tools": [{"type": "function", "function": {
                                             "name": "f", "parameters": {"type": "object"}}}]}, "cannot be combined")])
def test_reasoning_requests_that_make_no_sense_get_a_400(reasoning_server, body, named):
    bad = post(reasoning_server, **body)
    assert bad.status_code == 400 and named in bad.json()["error"]["message"]


# ----- the tree strategy (llmos/infer/tree.py) -----

def test_steps_are_checked_by_the_program_not_taken_on_trust():
    from llmos.infer.tree import Puzzle, State, expand
    start = State.start(Puzzle((2, 3, 4), 24))
    children = expand(start, "2 * 3 = 5 (left: 4 5)\n9 + 1 = 10\n4 / 0 = 0\nsome words\n3 x 4 = 12\n3 * 2 = 6")
    assert [c.steps[-1] for c in children] == ["2 * 3 = 6 (left: 4 6)", "3 * 4 = 12 (left: 2 12)"]  # 3 * 2 merged
    last = expand(expand(children[0], "4 * 6 = 24")[0], "")
    assert last == [] and expand(children[0], "6 * 4 = 24")[0].solves(Puzzle((2, 3, 4), 24))
    halves = expand(State.start(Puzzle((1, 2), 24)), "1 / 2 = 0.5")[0]
    assert halves.numbers() == "1/2" and not halves.solves(Puzzle((1, 2), 24))


def test_the_tree_keeps_the_state_the_model_values_and_solves(tok, monkeypatch):
    import llmos.infer.tree as tree
    from llmos.tools.calculator import evaluate
    monkeypatch.setattr(tree, "PROPOSE", "Numbers: {numbers}")  # short prompts for a tiny model's context
    monkeypatch.setattr(tree, "VALUE", "Can they reach the target?")
    conversations = [
        # the first step proposed leads nowhere; "9 + 1" uses a number the puzzle lacks; "2 * 3 = 5" is recomputed
        chat("Numbers: 2 3 4", "Next steps:\n3 + 4 = 7 (left: 2 7)\n9 + 1 = 10 (left: 10)\n2 * 3 = 5 (left: 4 5)"),
        chat("Numbers: 4 6", "Next steps:\n4 * 6 = 24 (left: 24)"),
        chat("Numbers: 2 7", "Next steps:\n2 + 7 = 9 (left: 9)"),
        chat("Can they reach the target?", "Target 24, numbers: 2 7 -> impossible"),
        chat("Can they reach the target?", "Target 24, numbers: 4 6 -> sure")]
    thinker = Thinker(memorizing_model(tok, conversations, steps=300, max_loss=0.05), tok)
    puzzle = tree.Puzzle((2, 3, 4), 24)
    # one state kept per depth: only the model's value picks "4 6" over the first-proposed "2 7"
    thought = thinker.think_many([[{"role": "user", "content": "Make 24 from 2 3 4."}]],
                                 Strategy("tree", k=1, proposals=1, max_tokens=48), puzzles=[puzzle])[0]
    assert thought.reply.splitlines()[:2] == ["2 * 3 = 6 (left: 4 6)", "4 * 6 = 24 (left: 24)"]
    assert evaluate(thought.answer) == "24" and sorted(int(n) for n in re.findall(r"\d+", thought.answer)) == [2, 3, 4]
    assert thought.tokens > 0 and thought.stopped == "done"
    with pytest.raises(LlmosError, match="puzzle"):
        thinker.think_many([[{"role": "user", "content": "Hi"}]], Strategy("tree"))


def test_llmos_think_tree_wants_numbers(model, tok, tmp_path):
    path = save_params(tmp_path / "m.llmos", model, tok, provenance={"name": "m"})
    bad = subprocess.run(llmos_cmd("think", "--model", str(path), "--strategy", "tree", "make twenty-four"),
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "two or more numbers" in bad.stderr and "Traceback" not in bad.stderr

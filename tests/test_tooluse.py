"""Tools inside a reply (llmos/infer/tooluse.py, the engine's hold-and-force path): a tiny model that
learned one tool-use conversation calls the calculator, the engine runs it, forces the result in and
the reply goes on; other rows keep decoding while the call runs, and nothing in the cache is bent."""
from __future__ import annotations

import json
import threading

import pytest

from llmos.chat import ChatFormat
from llmos.infer.engine import Engine, generate
from llmos.infer.sampling import SamplingParams
from llmos.infer.tooluse import ToolUse, final_answer, transcript
from llmos.tools.calculator import evaluate
from llmos.tools.registry import Tool, Toolbox
from serving import memorizing_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")

QUESTION = "What is 4821 * 377?"
CALL = {"name": "calculator", "arguments": {"expression": "4821 * 377"}}
CONVERSATION = [
    {"role": "user", "content": QUESTION},
    {"role": "assistant", "content": None, "tool_calls": [
        {"type": "function", "function": {"name": CALL["name"], "arguments": json.dumps(CALL["arguments"])}}]},
    {"role": "tool", "content": "1817517"},
    {"role": "assistant", "content": "It is 1817517."},
]


@pytest.fixture(scope="module")
def fmt(tok):
    return ChatFormat(tok)


@pytest.fixture(scope="module")
def model(tok):
    return memorizing_model(tok, [CONVERSATION])


def gated_calculator(gate: threading.Event) -> Tool:
    """The calculator, held until the test opens the gate (so the engine must wait for it)."""
    def run(args):
        assert gate.wait(30)
        return evaluate(args["expression"])
    return Tool("calculator", "exact arithmetic", {"type": "object", "properties": {"expression": {"type": "string"}},
                                                   "required": ["expression"]}, run)


def test_the_call_runs_its_result_is_forced_in_and_other_rows_keep_going(model, tok, fmt):
    gate = threading.Event()
    use = ToolUse(Toolbox([gated_calculator(gate)]), fmt)
    prompt = fmt.render_prompt(CONVERSATION[:1])
    other_prompt = fmt.render_prompt([{"role": "user", "content": "Hello there, how are you?"}])
    params = SamplingParams(max_tokens=150, temperature=0, stop_ids=fmt.stop_ids)
    engine = Engine(model, tok, max_batch=2)
    seq, = engine.add(prompt, params, tools=use)
    other, = engine.add(other_prompt, params)
    while seq.pending_tool is None and not seq.finished:
        engine.step()
    assert seq.pending_tool is not None, f"no call was made: {seq.text!r}"
    held_at, other_at = len(seq.tokens), len(other.tokens)
    for _ in range(5):
        engine.step()
    assert len(seq.tokens) == held_at  # the calling row holds its place without sampling
    assert len(other.tokens) > other_at or other.finished  # the other row decodes meanwhile
    gate.set()
    while engine.has_work:
        engine.step()
    use.close()

    assert [(r.name, r.arguments, r.result) for r in seq.tool_calls] == [(CALL["name"], CALL["arguments"], "1817517")]
    forced = fmt.tool_result_ids("1817517")
    start = held_at
    assert seq.tokens[start:start + len(forced)] == forced
    assert seq.forced_mask[start:start + len(forced)] == [True] * len(forced)
    assert not any(seq.forced_mask[:start]) and not any(seq.forced_mask[start + len(forced):])
    assert final_answer(seq.text) == "It is 1817517."
    assert seq.finish_reason == "stop" and seq.generated == len(seq.tokens) - len(forced)
    assert transcript(seq)[1:] == [{"role": "tool", "content": "1817517"},
                                   {"role": "assistant", "content": "It is 1817517."}]
    # The cache was not bent by the held steps: the same greedy continuation from scratch.
    again = list(generate(model, prompt + seq.tokens[:start + len(forced)], SamplingParams(
        max_tokens=150, temperature=0, stop_ids=fmt.stop_ids)))
    assert seq.tokens[start + len(forced):] == again
    alone = list(generate(model, other_prompt, params))
    assert other.tokens == alone


def reply_with(use: ToolUse, model, tok, fmt):
    engine = Engine(model, tok, max_batch=1)
    seq, = engine.add(fmt.render_prompt(CONVERSATION[:1]),
                      SamplingParams(max_tokens=150, temperature=0, stop_ids=fmt.stop_ids), tools=use)
    while engine.has_work:
        engine.step()
    use.close()
    return seq


def test_a_failing_or_unknown_tool_gives_the_model_an_error_result(model, tok, fmt):
    seq = reply_with(ToolUse(Toolbox([]), fmt), model, tok, fmt)  # "calculator" is not in this toolbox
    assert seq.tool_calls and seq.finished  # the model may try again; every try is told why it failed
    assert all(r.error and "no tool named 'calculator'" in r.result for r in seq.tool_calls)
    assert "no tool named" in tok.decode(seq.tokens)


def test_the_calls_per_reply_are_capped(model, tok, fmt):
    seq = reply_with(ToolUse(Toolbox.build("calculator"), fmt, max_calls=0), model, tok, fmt)
    assert seq.tool_calls[0].error and "already made 0 tool calls; answer now" in seq.tool_calls[0].result


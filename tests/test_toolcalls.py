"""Tool calls (llmos/infer/toolcalls.py): parsing llmos's tool tokens and imported models' tagged or
bare JSON, checking tools and tool_choice, and forcing a call through a JSON-schema constraint."""
from __future__ import annotations

import json

import pytest
import torch

from llmos.chat import ChatFormat
from llmos.common import LlmosError
from llmos.infer.constrain import Constraint, schema_error
from llmos.infer.toolcalls import (call_schema, forced_call_schema, parse_tool_calls, stream_safe_length,
                                   tool_choice_name, tools_prompt, validate_tools)
from llmos.model import ModelConfig, Transformer
from llmos.tokenizer import Tokenizer

START, END = "<|tool_call_start|>", "<|tool_call_end|>"

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 10},
                                                    "unit": {"enum": ["C", "F"]}},
                   "required": ["city", "unit"], "additionalProperties": False}}}
CLOCK = {"type": "function", "function": {"name": "get_time"}}

REPLIES = [  # (reply, content, calls)
    (f'Let me look.{START}{{"name": "get_weather", "arguments": {{"city": "Oslo", "unit": "C"}}}}{END}'
     f'{START}{{"name": "get_time", "arguments": {{}}}}{END}',
     "Let me look.", [{"name": "get_weather", "arguments": {"city": "Oslo", "unit": "C"}},
                      {"name": "get_time", "arguments": {}}]),
    ('Checking.\n<tool_call>[{"name": "get_weather", "arguments": {"city": "Rome", "unit": "F"}}, '
     '{"name": "get_time", "arguments": {}}]</tool_call>\n',
     "Checking.", [{"name": "get_weather", "arguments": {"city": "Rome", "unit": "F"}},
                   {"name": "get_time", "arguments": {}}]),
    ('<tool_call>\n{"name": "get_time", "arguments": "{\\"zone\\": \\"UTC\\"}"}\n</tool_call>\n'
     '<tool_call>\n{"name": "get_weather", "parameters": {"city": "Lima"}}\n</tool_call>',
     None, [{"name": "get_time", "arguments": {"zone": "UTC"}}, {"name": "get_weather", "arguments": {"city": "Lima"}}]),
    ('[{"name": "get_time", "arguments": {}}]', None, [{"name": "get_time", "arguments": {}}]),
    (' {"name": "get_weather", "arguments": {"city": "Bern"}}\n', None,
     [{"name": "get_weather", "arguments": {"city": "Bern"}}]),
    (f'A {START}{{"name": "get_time", "arguments": {{}}}}{END} B {START}{{"name": "get_time"}}{END} C \n',
     "A B C", [{"name": "get_time", "arguments": {}}, {"name": "get_time", "arguments": {}}]),
    (f'{START}{{"name": "get_time", "arguments": {{}}}}{END}\n  then text', "then text",
     [{"name": "get_time", "arguments": {}}]),
    ('The answer is 4.', "The answer is 4.", []),
    ('', None, []),
    ('{"name": "Ada", "age": 36}', '{"name": "Ada", "age": 36}', []),  # JSON, but not a call: no arguments
    ('[]', '[]', []),
    ('<tool_call>{"name": "get_time", "arguments": {oops}</tool_call> and text',
     '<tool_call>{"name": "get_time", "arguments": {oops}</tool_call> and text', []),
    ('<tool_call>[{"arguments": {}}]</tool_call>', '<tool_call>[{"arguments": {}}]</tool_call>', []),
    ('<tool_call>{"name": "get_time", "arguments": [1]}</tool_call>',
     '<tool_call>{"name": "get_time", "arguments": [1]}</tool_call>', []),
    (f'cut short {START}{{"name": "get_time", "argu', f'cut short {START}{{"name": "get_time", "argu', []),
    (f'ok <tool_call>{{bad}}</tool_call> {START}{{"name": "get_time", "arguments": {{}}}}{END}',
     "ok <tool_call>{bad}</tool_call>", [{"name": "get_time", "arguments": {}}]),
    ("[" * 100_000, "[" * 100_000, []),
]


@pytest.mark.parametrize("reply,content,calls", REPLIES, ids=range(len(REPLIES)))
def test_parse_tool_calls(reply, content, calls):
    assert parse_tool_calls(reply) == (content, calls)


SHORT_REPLIES = [reply for reply, _, _ in REPLIES if len(reply) < 1000]


@pytest.mark.parametrize("reply", SHORT_REPLIES, ids=range(len(SHORT_REPLIES)))
def test_what_streams_early_is_always_a_prefix_of_the_final_content(reply):
    final = parse_tool_calls(reply)[0] or ""
    for n in range(len(reply) + 1):
        partial = reply[:n]
        assert final.startswith(partial[:stream_safe_length(partial)]), partial


def test_stream_safe_length_holds_back_what_may_become_a_call():
    assert stream_safe_length("Hello there") == len("Hello there")
    assert stream_safe_length("Hello there \n") == len("Hello there")
    assert stream_safe_length("Hello <tool_") == len("Hello")
    assert stream_safe_length("Hello <tool_call>[{") == len("Hello")
    assert stream_safe_length(f"Hi{START}") == 2
    assert stream_safe_length(' [{"name"') == 0 and stream_safe_length("  ") == 0
    assert stream_safe_length("x < y") == len("x < y")


def test_native_calls_parse_back_from_what_the_chat_format_renders(tokenizer_path):
    """A reply spelled in llmos's tool tokens, exactly as chat.py renders an assistant's tool calls."""
    tok = Tokenizer.load(tokenizer_path)
    calls = [{"type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo", "unit": "C"}'}},
             {"type": "function", "function": {"name": "get_time", "arguments": "{}"}}]
    messages = [{"role": "user", "content": "weather?"},
                {"role": "assistant", "content": "Let me look.", "tool_calls": calls},
                {"role": "tool", "content": "4 C"}, {"role": "assistant", "content": "4 C."}]
    ids, mask = ChatFormat(tok).render(messages)
    first_reply = tok.decode(ids[ids.index(tok.token_id("<|assistant_start|>")) + 1:
                                 ids.index(tok.token_id("<|assistant_end|>"))])
    assert parse_tool_calls(first_reply) == ("Let me look.", [
        {"name": "get_weather", "arguments": {"city": "Oslo", "unit": "C"}}, {"name": "get_time", "arguments": {}}])


def test_validate_tools_fills_defaults_and_names_the_bad_entry():
    tools = validate_tools([WEATHER, CLOCK])
    assert tools[0] == WEATHER
    assert tools[1]["function"] == {"name": "get_time", "description": "",
                                    "parameters": {"type": "object", "properties": {}, "additionalProperties": False}}
    bad = [
        ([], "non-empty list"), ({"type": "function"}, "non-empty list"),
        ([WEATHER, {"type": "code_interpreter"}], r"tools\[1\] must be"),
        ([{"type": "function", "function": "f"}], r"tools\[0\].function must be an object"),
        ([WEATHER, CLOCK, {"type": "function", "function": {"name": 7}}], r"tools\[2\].function.name must be a string"),
        ([{"type": "function", "function": {"name": "get weather"}}], r"tools\[0\].function.name 'get weather'"),
        ([{"type": "function", "function": {"name": "x" * 65}}], "1 to 64"),
        ([CLOCK, CLOCK], r"tools\[1\].function.name 'get_time' is used by an earlier tool"),
        ([{"type": "function", "function": {"name": "f", "description": 3}}], "description must be a string"),
        ([{"type": "function", "function": {"name": "f", "parameters": "{}"}}], "parameters must be a JSON schema"),
    ]
    for tools, message in bad:
        with pytest.raises(LlmosError, match=message):
            validate_tools(tools)


def test_tool_choice():
    tools = validate_tools([WEATHER, CLOCK])
    for choice in (None, "auto", "none"):
        assert tool_choice_name(choice, tools) is None and forced_call_schema(choice, tools) is None
    assert tool_choice_name("auto", None) is None
    named = {"type": "function", "function": {"name": "get_time"}}
    assert tool_choice_name(named, tools) == "get_time"
    assert forced_call_schema(named, tools) == call_schema(tools[1])
    assert tool_choice_name("required", tools[:1]) == "get_weather"
    assert tool_choice_name("required", tools) is None  # either may be called:
    assert forced_call_schema("required", tools) == {"anyOf": [call_schema(tools[0]), call_schema(tools[1])]}
    with pytest.raises(LlmosError, match="'get_news', which is not in tools"):
        tool_choice_name({"type": "function", "function": {"name": "get_news"}}, tools)
    with pytest.raises(LlmosError, match="no tools"):
        tool_choice_name("required", None)
    for bad in ("always", {"type": "function"}, {"function": {"name": "get_time"}}, 3):
        with pytest.raises(LlmosError, match="tool_choice must be"):
            tool_choice_name(bad, tools)


def test_tools_prompt_lists_every_tool_and_the_call_format():
    text = tools_prompt(validate_tools([WEATHER, CLOCK]))
    listed = text.split("<tools>\n")[1].split("\n</tools>")[0].splitlines()
    assert [json.loads(line) for line in listed] == [WEATHER["function"], validate_tools([CLOCK])[0]["function"]]
    example = text.split("<tool_call>")[-1].split("</tool_call>")[0]
    assert parse_tool_calls(f"<tool_call>{example}</tool_call>")[1] == [
        {"name": "function_name", "arguments": {"parameter": "value"}}]


@pytest.mark.parametrize("choice,names", [({"type": "function", "function": {"name": "get_weather"}}, {"get_weather"}),
                                          ("required", {"get_weather", "get_time"})])
def test_a_forced_call_from_a_random_model_parses_as_a_call_that_fits(tokenizer_path, choice, names):
    tok = Tokenizer.load(tokenizer_path)
    tools = validate_tools([WEATHER, CLOCK])
    schema = forced_call_schema(choice, tools)
    assert schema_error(schema) is None
    end = tok.token_id("<|assistant_end|>")
    constraint = Constraint.json_schema(tok, schema, end_ids=[end])
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=tok.vocab_size, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2,
                                    max_seq_len=256)).eval()
    cache, step, out = model.new_kv_cache(), tok.encode("Call a tool:", bos=True), []
    with torch.no_grad():
        while not constraint.finished and len(out) < 150:
            logits = model(torch.tensor([step]), kv_cache=cache)[0, -1]
            step = [int(logits.masked_fill(~constraint.allowed(logits.shape[-1]), float("-inf")).argmax())]
            constraint.advance(step[0])
            out += step
    content, calls = parse_tool_calls(tok.decode(out))
    assert content is None and len(calls) == 1 and calls[0]["name"] in names
    if calls[0]["name"] == "get_weather":
        args = calls[0]["arguments"]
        assert set(args) == {"city", "unit"} and len(args["city"]) <= 10 and args["unit"] in ("C", "F")
    else:
        assert calls[0]["arguments"] == {}

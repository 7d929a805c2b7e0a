"""Tools through the server and MCP: `llmos serve --tools` runs the calls in the reply (plain and
streamed, audited, side effects refused unless allowed), an agent loop written with the `openai`
client runs its own tools against a model that learned to call them and against SmolLM2, and the
Model Context Protocol carries llmos's tools both ways (`llmos mcp`, and --mcp mounting a server)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import llmos_cmd, require, subprocess_env
from llmos.params import save_params
from llmos.tokenizer import Tokenizer
from llmos.tools.calculator import evaluate
from serving import memorizing_model, running_server, tool_conversation

openai = require("openai")
httpx = require("httpx")

QUESTION = "What is 4821 * 377?"
CALCULATOR = {"type": "function", "function": {
    "name": "calculator", "description": "Exact arithmetic.",
    "parameters": {"type": "object", "properties": {"expression": {"type": "string"}}, "required": ["expression"]}}}
CONVERSATIONS = [
    tool_conversation(["calculator"], QUESTION, {"name": "calculator", "arguments": {"expression": "4821 * 377"}},
                      "1817517", "It is 1817517."),
    tool_conversation(["write_file"], "Save a note.", {"name": "write_file",
                                                       "arguments": {"path": "note.txt", "content": "hello"}},
                      "wrote 5 bytes to note.txt", "Saved."),
]


@pytest.fixture(scope="module")
def tool_model(tokenizer_path, tmp_path_factory):
    """A tiny model that calls the calculator for the question above (and write_file for a note)."""
    tok = Tokenizer.load(tokenizer_path)
    model = memorizing_model(tok, CONVERSATIONS)
    return save_params(tmp_path_factory.mktemp("tool_model") / "caller.llmos", model, tok,
                       provenance={"name": "caller"})


@pytest.fixture(scope="module")
def tool_server(tool_model, tmp_path_factory):
    work = tmp_path_factory.mktemp("tool_server")
    (work / "ws").mkdir()
    with running_server("--model", f"caller={tool_model}", "--tools", "calculator,write_file",
                        "--workspace", str(work / "ws"), "--audit-log", str(work / "audit.jsonl"),
                        log=work / "serve.log") as base:
        yield base, work


def ask(base: str, content: str, **extra) -> dict:
    reply = httpx.post(base + "/v1/chat/completions", timeout=120, json={
        "model": "caller", "messages": [{"role": "user", "content": content}], "temperature": 0,
        "max_tokens": 80, **extra})
    assert reply.status_code == 200, reply.text
    return reply.json()


def test_the_server_runs_its_tools_in_the_reply(tool_server):
    base, work = tool_server
    message = ask(base, QUESTION)["choices"][0]["message"]
    assert message["content"] == "It is 1817517." and "tool_calls" not in message
    assert message["llmos_tool_calls"] == [{"name": "calculator", "arguments": {"expression": "4821 * 377"},
                                            "result": "1817517", "error": False, "images": []}]
    audit = [json.loads(line) for line in (work / "audit.jsonl").read_text().splitlines()]
    assert audit[-1]["tool"] == "calculator" and audit[-1]["result"] == "1817517" and audit[-1]["ok"]


def test_a_streamed_reply_carries_the_answer_and_the_calls(tool_server):
    base, _ = tool_server
    client = openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0)
    chunks = list(client.chat.completions.create(model="caller", messages=[{"role": "user", "content": QUESTION}],
                                                 temperature=0, max_tokens=80, stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    calls = [c.choices[0].delta.model_extra.get("llmos_tool_calls") for c in chunks
             if c.choices and c.choices[0].delta.model_extra.get("llmos_tool_calls")]
    assert text == "It is 1817517." and calls[0][0]["result"] == "1817517"
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_a_side_effect_is_refused_unless_allowed(tool_server):
    base, work = tool_server
    calls = ask(base, "Save a note.")["choices"][0]["message"]["llmos_tool_calls"]
    assert calls[0]["name"] == "write_file" and calls[0]["error"] and "declined" in calls[0]["result"]
    assert not (work / "ws" / "note.txt").exists()


def test_an_openai_client_agent_loop_runs_its_own_tools(tool_server):
    """The client brings its tools: the server returns tool_calls, the client runs them and answers."""
    base, _ = tool_server
    client = openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0)
    messages = [{"role": "user", "content": QUESTION}]
    for _ in range(3):  # the loop every agent written against the API has
        reply = client.chat.completions.create(model="caller", messages=messages, tools=[CALCULATOR],
                                               temperature=0, max_tokens=80)
        choice = reply.choices[0]
        if choice.finish_reason != "tool_calls":
            break
        messages.append(choice.message.model_dump(exclude_none=True))
        for call in choice.message.tool_calls:
            result = evaluate(json.loads(call.function.arguments)["expression"])
            messages.append({"role": "tool", "tool_call_id": call.id, "content": result})
    assert [m["role"] for m in messages] == ["user", "assistant", "tool"]
    assert messages[2]["content"] == "1817517"
    assert choice.finish_reason == "stop" and choice.message.content == "It is 1817517."


@pytest.mark.parametrize("answer", ["y", "n"])
def test_the_terminal_chat_runs_tools_and_asks_before_a_side_effect(tool_model, tmp_path, answer):
    calc = subprocess.run(llmos_cmd("chat", "--model", str(tool_model), "--tools", "calculator", "--temperature", "0",
                                    "-p", QUESTION), env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert calc.returncode == 0, calc.stderr
    assert calc.stdout.strip() == "It is 1817517." and '[calculator {"expression": "4821 * 377"} -> 1817517]' in calc.stderr
    note = subprocess.run(llmos_cmd("chat", "--model", str(tool_model), "--tools", "write_file", "--workspace",
                                    str(tmp_path), "--temperature", "0", "-p", "Save a note."), input=answer + "\n",
                          env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert note.returncode == 0, note.stderr
    assert "Allow? [y/N]" in note.stdout
    assert ((tmp_path / "note.txt").is_file() and (tmp_path / "note.txt").read_text() == "hello") == (answer == "y")
    assert ("declined" in note.stderr) == (answer == "n")


def test_an_agent_loop_against_smollm2(smollm2_home):
    """SmolLM2 in its own format (`<tool_call>` JSON): a forced call whose arguments fit the schema,
    the client's result in a tool message rendered back into the prompt, and a reply after it."""
    with running_server("--model", "smol=smollm2-135m-instruct", env={**__import__("os").environ,
                                                                      "LLMOS_HOME": str(smollm2_home)}) as base:
        client = openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0)
        messages = [{"role": "user", "content": "Use the calculator: what is 4821 * 377?"}]
        asked = client.chat.completions.create(model="smol", messages=messages, tools=[CALCULATOR],
                                               tool_choice="required", temperature=0, max_tokens=60)
        first = asked.choices[0]
        assert first.finish_reason == "tool_calls"
        call = first.message.tool_calls[0]
        arguments = json.loads(call.function.arguments)
        assert call.function.name == "calculator" and isinstance(arguments["expression"], str)
        messages += [first.message.model_dump(exclude_none=True),
                     {"role": "tool", "tool_call_id": call.id, "content": evaluate_or_error(arguments["expression"])}]
        answered = client.chat.completions.create(model="smol", messages=messages, tools=[CALCULATOR],
                                                  temperature=0, max_tokens=60)
        final = answered.choices[0]
        assert final.finish_reason in ("stop", "length", "tool_calls")  # a 135M model may ramble to the limit
        assert final.message.content or final.message.tool_calls
        # the call, in SmolLM2's own <tool_call> form, and the result were rendered into the prompt
        assert answered.usage.prompt_tokens > asked.usage.prompt_tokens + 20


def evaluate_or_error(expression: str) -> str:
    from llmos.tools.registry import ToolError
    try:
        return evaluate(expression)
    except ToolError as e:
        return f"error: {e}"


def test_llmos_tools_travel_over_mcp(tmp_path):
    """`llmos mcp` serves the tools to an MCP client; a Toolbox mounts that server and calls them."""
    require("mcp")
    import asyncio

    from mcp import ClientSession, StdioServerParameters
    from mcp.client.stdio import stdio_client

    async def session_round_trip():
        params = StdioServerParameters(command=sys.executable, args=["-m", "llmos.cli", "mcp", "--tools",
                                                                     "calculator,python,write_file"])
        async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
            await session.initialize()
            listed = {t.name: t for t in (await session.list_tools()).tools}
            product = await session.call_tool("calculator", {"expression": "12345678901 * 98765432109"})
            bad = await session.call_tool("calculator", {"expression": "open('/etc/passwd')"})
            chart = await session.call_tool("python", {"code": "import matplotlib.pyplot as plt\nplt.plot([3, 1, 2])"})
            return listed, product, bad, chart

    listed, product, bad, chart = asyncio.run(session_round_trip())
    assert set(listed) == {"calculator", "python", "write_file"}
    assert listed["calculator"].annotations.read_only_hint and not listed["write_file"].annotations.read_only_hint
    assert listed["calculator"].input_schema["required"] == ["expression"]
    assert product.content[0].text == str(12345678901 * 98765432109) and not product.is_error
    assert bad.is_error and "function call" in bad.content[0].text
    assert [c.type for c in chart.content] == ["text", "image"] and chart.content[1].mime_type == "image/png"

    from llmos.tools.registry import Toolbox
    box = Toolbox([])
    try:
        assert box.mount_mcp([sys.executable, "-m", "llmos.cli", "mcp", "--tools", "calculator,write_file",
                              "--workspace", str(tmp_path)]) == ["calculator", "write_file"]
        assert box.call("calculator", {"expression": "2 ** 70"}).text == str(2 ** 70)
        refused = box.call("write_file", {"path": "x.txt", "content": "x"})  # someone else's side effect: asked
        assert refused.error and "declined" in refused.text and not (tmp_path / "x.txt").exists()
    finally:
        box.close()
    from llmos.common import LlmosError
    with pytest.raises(LlmosError, match="could not start the MCP server"):
        Toolbox([]).mount_mcp(["/nonexistent/mcp-server"])

"""Tool calls: check a request's `tools`/`tool_choice`, prompt for them, and parse calls out of a reply.

    tools = validate_tools(body["tools"])                 # LlmosError naming the bad entry
    schema = forced_call_schema(body.get("tool_choice"), tools)  # a dict when a call is forced
    name = tool_choice_name(body.get("tool_choice"), tools)      # the one forced function, if any
    system = tools_prompt(tools)                          # for models whose chat template ignores tools
    content, calls = parse_tool_calls(reply_text)         # calls: [{"name": str, "arguments": dict}]
    safe = reply_so_far[:stream_safe_length(reply_so_far)]  # streamable now: it cannot turn into a call

Tools are OpenAI's: `[{"type": "function", "function": {"name", "description", "parameters"}}]`,
`parameters` a JSON schema of the arguments object.

A reply may call tools in any of these shapes, all understood by `parse_tool_calls`:
- llmos's native tokens (how llmos/chat.py renders calls in training), one call per pair, several
  in a row: `<|tool_call_start|>{"name": N, "arguments": {...}}<|tool_call_end|>`;
- tagged JSON, the SmolLM2-Instruct and Hermes/Qwen convention: `<tool_call>[{"name": N,
  "arguments": {...}}, ...]</tool_call>` (a list or one object per block);
- a reply that is nothing but such a JSON object or list (what a forced call generates).
Text outside the calls is the content. A block whose JSON is malformed, or whose entries lack a
name, stays in the content as text: parsing never raises.

A forced call (`tool_choice` "required" or a named function) is generated under a Constraint
(llmos/infer/constrain.py) with `forced_call_schema`: one `{"name", "arguments"}` object whose
arguments match the function's parameters.
"""
from __future__ import annotations

import json
import re

from llmos.chat import TOOL_CALL
from llmos.common import LlmosError

TAGGED_CALL = ("<tool_call>", "</tool_call>")
OPENERS = (TOOL_CALL[0], TAGGED_CALL[0])
CALL_BLOCK = re.compile("|".join(f"{re.escape(start)}(.*?){re.escape(end)}" for start, end in (TOOL_CALL, TAGGED_CALL)),
                        re.DOTALL)
NAME_PATTERN = re.compile(r"[a-zA-Z0-9_-]{1,64}")  # OpenAI's rule for function names
NO_PARAMETERS = {"type": "object", "properties": {}, "additionalProperties": False}


def _call(entry) -> dict | None:
    """`{"name", "arguments"}` from one parsed JSON entry, or None if it is not a call. Arguments may
    come as an object or a JSON string of one; `parameters` is accepted for `arguments` (Llama 3.1)."""
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) or not entry["name"]:
        return None
    args = entry.get("arguments", entry.get("parameters", {}))
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except ValueError:
            return None
    return {"name": entry["name"], "arguments": args} if isinstance(args, dict) else None


def _calls(body: str) -> list[dict] | None:
    """The calls a JSON text holds (an object or a non-empty list of them), or None."""
    try:
        value = json.loads(body)
    except (ValueError, RecursionError):  # RecursionError: absurdly deep nesting
        return None
    entries = value if isinstance(value, list) else [value]
    calls = [_call(entry) for entry in entries]
    return calls if calls and None not in calls else None


def _bare_calls(text: str) -> list[dict] | None:
    """Calls when the whole reply is a JSON call or list of calls. Unlike a tagged block, each entry
    must say `arguments`, so an ordinary JSON answer such as {"name": "Ada"} stays content."""
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):  # RecursionError: absurdly deep nesting
        return None
    entries = value if isinstance(value, list) else [value]
    if not all(isinstance(e, dict) and ("arguments" in e or "parameters" in e) for e in entries):
        return None
    return _calls(text)


def parse_tool_calls(text: str) -> tuple[str | None, list[dict]]:
    """(content, calls): the reply without its tool calls (None when nothing is left) and the calls
    as `[{"name": str, "arguments": dict}]`, in order. The whitespace before a removed call goes
    with it, and so does the reply's trailing whitespace; text between calls keeps its own spacing."""
    content, calls, pos = "", [], 0
    for block in CALL_BLOCK.finditer(text):
        found = _calls(block.group(1) if block.group(1) is not None else block.group(2))
        if found is None:
            continue  # malformed: the block stays in the content
        content += _after_call(text[pos:block.start()], content, calls).rstrip()
        calls += found
        pos = block.end()
    if not calls:
        bare = _bare_calls(text)
        return (None, bare) if bare else ((text or None), [])
    content += _after_call(text[pos:], content, calls).rstrip()
    return (content or None), calls


def _after_call(piece: str, content: str, calls: list) -> str:
    """A piece of content that follows a call and opens the content loses its leading whitespace."""
    return piece.lstrip() if calls and not content else piece


def stream_safe_length(text: str) -> int:
    """How much of a reply still being generated can be streamed as content now: everything before
    a call's opening tag (or the start of one cut off at the end), less trailing whitespace, which
    goes with a call if one follows; nothing when the reply so far may be a bare JSON call. The
    streamed text is always a prefix of the content `parse_tool_calls` returns for the whole reply."""
    if text.lstrip()[:1] in ("", "{", "["):
        return 0
    end = min((i for i in (text.find(opener) for opener in OPENERS) if i >= 0), default=len(text))
    for opener in OPENERS:  # an opening tag may still be arriving token by token
        for cut in range(len(opener) - 1, 0, -1):
            if text.endswith(opener[:cut], 0, end):
                end = min(end, len(text) - cut)
                break
    return len(text[:end].rstrip())


def validate_tools(tools) -> list[dict]:
    """The request's tools, checked, with defaults filled (description "", parameters: none)."""
    if not isinstance(tools, list) or not tools:
        raise LlmosError("tools must be a non-empty list of {\"type\": \"function\", \"function\": {...}}")
    checked, names = [], set()
    for i, tool in enumerate(tools):
        where = f"tools[{i}]"
        if not isinstance(tool, dict) or tool.get("type") != "function":
            raise LlmosError(f"{where} must be {{\"type\": \"function\", \"function\": {{...}}}}")
        fn = tool.get("function")
        if not isinstance(fn, dict):
            raise LlmosError(f"{where}.function must be an object with name, description and parameters")
        name, description, parameters = fn.get("name"), fn.get("description", ""), fn.get("parameters", NO_PARAMETERS)
        if not isinstance(name, str):
            raise LlmosError(f"{where}.function.name must be a string")
        if not NAME_PATTERN.fullmatch(name):
            raise LlmosError(f"{where}.function.name {name[:80]!r} must be 1 to 64 letters, digits, _ or -")
        if name in names:
            raise LlmosError(f"{where}.function.name {name!r} is used by an earlier tool; names must be unique")
        if not isinstance(description, str):
            raise LlmosError(f"{where}.function.description must be a string")
        if not isinstance(parameters, dict):
            raise LlmosError(f"{where}.function.parameters must be a JSON schema object")
        names.add(name)
        checked.append({"type": "function",
                        "function": {"name": name, "description": description, "parameters": parameters}})
    return checked


def tool_choice_name(tool_choice, tools: list[dict] | None) -> str | None:
    """The one function a request forces: `{"type": "function", "function": {"name": N}}`, or
    "required" with a single tool. None for "auto", "none", absent, and for "required" among several
    tools (any of them may be called: see forced_call_schema). LlmosError for a bad choice."""
    names = [tool["function"]["name"] for tool in tools or []]
    if tool_choice in (None, "auto", "none"):
        return None
    if tool_choice == "required":
        if not names:
            raise LlmosError("tool_choice is \"required\" but the request has no tools")
        return names[0] if len(names) == 1 else None
    fn = tool_choice.get("function") if isinstance(tool_choice, dict) else None
    if not (isinstance(fn, dict) and tool_choice.get("type") == "function" and isinstance(fn.get("name"), str)):
        raise LlmosError("tool_choice must be \"none\", \"auto\", \"required\" or "
                         "{\"type\": \"function\", \"function\": {\"name\": ...}}")
    if fn["name"] not in names:
        raise LlmosError(f"tool_choice names function {fn['name'][:80]!r}, which is not in tools"
                         + (f" ({', '.join(names)})" if names else ""))
    return fn["name"]


def call_schema(tool: dict) -> dict:
    """The JSON schema of one call of `tool`: {"name": its name, "arguments": its parameters}."""
    fn = tool["function"]
    return {"type": "object",
            "properties": {"name": {"const": fn["name"]}, "arguments": fn.get("parameters", NO_PARAMETERS)},
            "required": ["name", "arguments"], "additionalProperties": False}


def forced_call_schema(tool_choice, tools: list[dict] | None) -> dict | None:
    """The schema a forced call is generated under: the named function's call, or for "required" a
    call of any tool; None when the model chooses freely ("auto", "none", absent)."""
    name = tool_choice_name(tool_choice, tools)
    if name is not None:
        return call_schema(next(tool for tool in tools if tool["function"]["name"] == name))
    if tool_choice == "required":
        return {"anyOf": [call_schema(tool) for tool in tools]}
    return None


def tools_prompt(tools: list[dict]) -> str:
    """System-prompt text that lists the tools and asks for calls as `<tool_call>[...]</tool_call>`,
    for imported models whose chat template has no place for tools."""
    listing = "\n".join(json.dumps(tool["function"], ensure_ascii=False) for tool in tools)
    example = json.dumps([{"name": "function_name", "arguments": {"parameter": "value"}}])
    return ("You can call functions to help you answer. These are the functions, each with a JSON schema "
            f"of its arguments:\n<tools>\n{listing}\n</tools>\n"
            "To call functions, reply with only a JSON list of calls between <tool_call> and </tool_call>, "
            f"for example:\n<tool_call>{example}</tool_call>\n"
            "Use only the functions listed, and give each call the arguments its schema asks for. "
            "The results will come back in the next message. If no function is needed, answer in plain text.")

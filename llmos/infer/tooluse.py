"""Tools inside a reply: the engine spots a finished call, a worker runs it, the result is forced in.

    use = ToolUse(Toolbox.build("calculator,search"), ChatFormat(tok))
    seq, = engine.add(prompt, params, tools=use)     # or use.attach(seq) on sequences you made
    ... engine.step() until done ...
    seq.tool_calls     # [CallRecord(name, arguments, result, images)] in order
    seq.text           # the reply with its calls and results in place (`final_answer` strips them)

A call is finished when the reply produces `<|tool_call_end|>` (llmos's own tokens) or the text
`</tool_call>` (SmolLM2-Instruct, Hermes and Qwen). The call is parsed (llmos/infer/toolcalls.py)
and submitted to a thread pool, so a slow tool (the Python sandbox) never stalls other rows: the
row holds its place in the batch without sampling until the result is ready. Then the result goes
in as forced tokens (ChatFormat.tool_result_ids: the call's turn closes, a tool message holds the
result, a new assistant turn opens), which are never trained on and never count against
max_tokens, and the reply goes on. Limits: `max_calls` per reply (a further call is answered with
an error telling the model to answer now) and `max_result_chars` of each result. A call that does
not parse is answered with an error result, as is any tool failure (the Toolbox never raises).
"""
from __future__ import annotations

import json
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from llmos.chat import TOOL_CALL, TOOL_RESULT, ChatFormat
from llmos.infer.toolcalls import TAGGED_CALL, parse_tool_calls, tools_prompt
from llmos.tools.registry import Toolbox, ToolResult


TOOLS_LINE = "Tools: {}."  # the system message that offers tools to a model trained by llmos


def tools_line(names: list[str]) -> str:
    return TOOLS_LINE.format(", ".join(names))


def offer_tools(fmt: ChatFormat, tools: list[dict]) -> str:
    """How tools (OpenAI `tools` entries) are offered in the system message: llmos's tools line to
    llmos models (what its tool-use data teaches), every schema to imported ones (their format:
    `<tool_call>`, llmos/infer/toolcalls.py)."""
    return tools_line([t["function"]["name"] for t in tools]) if fmt.native else tools_prompt(tools)


@dataclass
class CallRecord:
    name: str
    arguments: dict | None
    result: str
    images: list[bytes] = field(default_factory=list)
    error: bool = False


class ToolUse:
    def __init__(self, toolbox: Toolbox, fmt: ChatFormat, max_calls: int = 4, max_result_chars: int = 2_000,
                 workers: int = 4):
        self.toolbox, self.fmt = toolbox, fmt
        self.max_calls, self.max_result_chars = max_calls, max_result_chars
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="llmos-tool")
        self.call_end_id = fmt.tok.token_id(TOOL_CALL[1]) if fmt.native else None

    def system_prompt(self) -> str:
        return offer_tools(self.fmt, self.toolbox.schemas())

    def attach(self, seq) -> None:
        seq.tool_use = self

    def call_finished(self, seq) -> bool:
        """Whether the token just appended ends a tool call."""
        if self.call_end_id is not None:
            return bool(seq.tokens) and seq.tokens[-1] == self.call_end_id
        return seq._full_text().endswith(TAGGED_CALL[1])

    def start(self, seq) -> Future:
        """Run the call that just ended, in the pool; the future gives the ids to force."""
        opener = TOOL_CALL[0] if self.call_end_id is not None else TAGGED_CALL[0]
        text = seq._full_text()
        block = text[text.rfind(opener):] if opener in text else text
        _, calls = parse_tool_calls(block)
        made = len(seq.tool_calls)
        if not calls:
            record = CallRecord("?", None, "error: the tool call is not valid JSON of the form "
                                           '{"name": ..., "arguments": {...}}', error=True)
        elif made >= self.max_calls:
            record = CallRecord(calls[0]["name"], calls[0]["arguments"],
                                f"error: this reply already made {self.max_calls} tool calls; answer now "
                                "with what you have", error=True)
        else:
            record = None
        if record is not None:
            seq.tool_calls.append(record)
            done: Future = Future()
            done.set_result(self.fmt.tool_result_ids(record.result))
            return done
        return self.pool.submit(self._run, seq, calls)

    def _run(self, seq, calls: list[dict]) -> list[int]:
        texts = []
        for call in calls[:self.max_calls - len(seq.tool_calls)]:
            result: ToolResult = self.toolbox.call(call["name"], call["arguments"])
            text = result.text
            if len(text) > self.max_result_chars:
                text = text[:self.max_result_chars] + f"\n[... {len(result.text):,} characters, cut]"
            seq.tool_calls.append(CallRecord(call["name"], call["arguments"], text, result.images, result.error))
            texts.append(text)
        return self.fmt.tool_result_ids("\n".join(texts))

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


def final_answer(text: str) -> str:
    """The reply after its last tool result (what the user reads), without call or result markup."""
    for marker in (TOOL_RESULT[1], "<|assistant_start|>", "<|im_start|>assistant\n"):
        if marker in text:
            text = text[text.rfind(marker) + len(marker):]
    content, _ = parse_tool_calls(text)
    return (content or "").strip()


def transcript(seq) -> list[dict]:
    """The reply as OpenAI messages: assistant turns with their tool calls, tool results between."""
    out = []
    for record in seq.tool_calls:
        out.append({"role": "assistant", "content": None, "tool_calls": [
            {"type": "function", "function": {"name": record.name,
                                              "arguments": json.dumps(record.arguments or {})}}]})
        out.append({"role": "tool", "content": record.result})
    out.append({"role": "assistant", "content": final_answer(seq.text)})
    return out

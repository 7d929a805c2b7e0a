"""`llmos chat`: talk with a model in the terminal, its replies streamed as they are sampled.

    llmos chat --model smollm2-135m-instruct             # interactive; /help lists the commands
    llmos chat --model runs/sft --system "Be brief." --seed 0
    llmos chat --model m.llmos -p "What is 2 + 2?"       # one reply on stdout, then exit (for scripts)
    echo "What is 2 + 2?" | llmos chat --model m.llmos -p -

The conversation is a list of OpenAI-style messages rendered by ChatFormat each turn, so the model
sees the whole history. A reply may use whatever the context leaves after the prompt (or at most
--max-tokens); when the prompt leaves less than a reply needs (--max-tokens, or by default a quarter
of the context), the oldest exchanges (a user message and its reply) are dropped; the system prompt
always stays. So the defaults fit any model, from a 256-token demo to an 8k-context import.

At the `you> ` prompt: /clear, /system TEXT, /temperature X, /help, /exit (or Ctrl-D). Ctrl-C
while a reply streams stops it; the partial reply stays in the history. Status lines go to stderr,
so stdout holds only the replies (and, interactively, the prompt).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import sys
from pathlib import Path
from typing import Callable

from llmos.chat import ChatFormat
from llmos.common import LlmosError
from llmos.infer.engine import Engine, generate, stream_text
from llmos.infer.sampling import SamplingParams
from llmos.infer.tooluse import ToolUse, final_answer
from llmos.load import load_model
from llmos.model import Transformer

COMMANDS = [
    ("/clear", "forget the conversation (the system prompt stays)"),
    ("/system TEXT", "set the system prompt and start over (no TEXT: no system prompt)"),
    ("/temperature X", "set the sampling temperature (0: greedy); no X: show it"),
    ("/help", "this list"),
    ("/exit, /quit", "leave (Ctrl-D too)"),
]

# C0/C1 control characters other than newline and tab: a reply must not drive the terminal
# (cursor moves, escape sequences), so on a terminal they are shown as \xNN instead.
CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def reply_room(max_tokens: int | None, context: int) -> int:
    """Tokens a reply must have room for: --max-tokens, or by default a quarter of the context (at
    most 512), which keeps most of the context for the conversation so far."""
    return max_tokens if max_tokens is not None else min(512, context // 4)


def check_sampling(params: SamplingParams) -> None:
    """The sampling flags' faults, named as flags (the seed is the same for every reply, so a reply
    depends only on the conversation)."""
    try:
        params.check()
    except LlmosError as e:
        name = str(e).split()[0]
        raise LlmosError(f"--{name.replace('_', '-')}{str(e)[len(name):]}") from None


def check_max_tokens(max_tokens: int | None, context: int) -> None:
    if max_tokens is not None and not 0 < max_tokens < context:
        raise LlmosError(f"--max-tokens must be between 1 and {context - 1} (the model's context is "
                         f"{context} tokens and the prompt needs some), not {max_tokens}")


def notice(text: str) -> None:
    """A status line on stderr, dimmed on a terminal, so it never mixes into the replies on stdout."""
    dim = sys.stderr.isatty() and "NO_COLOR" not in os.environ
    print(f"\033[2m{text}\033[0m" if dim else text, file=sys.stderr, flush=True)


class Conversation:
    """The system prompt, the exchanges so far, and the model that continues them."""

    def __init__(self, model: Transformer, fmt: ChatFormat, system: str, sampling: SamplingParams,
                 max_tokens: int | None = None, tools: ToolUse | None = None):
        self.model, self.fmt, self.sampling, self.max_tokens = model, fmt, sampling, max_tokens  # None: what the context leaves
        self.system = system
        self.tools = tools  # runs the reply's tool calls (llmos/infer/tooluse.py); None: no tools
        self.charts = 0
        self.history: list[dict] = []  # user and assistant messages, alternating, oldest first

    def clear(self, system: str | None = None) -> None:
        self.history = []
        if system is not None:
            self.system = system

    def _prompt(self, user_text: str) -> list[int]:
        """The prompt ids for a new user message, dropping the oldest exchanges until the prompt leaves
        room for a reply in the model's context."""
        context, budget = self.model.cfg.max_seq_len, reply_room(self.max_tokens, self.model.cfg.max_seq_len)
        offer = self.tools.system_prompt() if self.tools is not None else ""
        system_text = "\n\n".join(part for part in (self.system, offer) if part)
        system = [{"role": "system", "content": system_text}] if system_text else []
        user = {"role": "user", "content": user_text}
        dropped = 0
        while True:
            prompt = self.fmt.render_prompt(system + self.history[2 * dropped:] + [user])
            if len(prompt) + budget <= context or 2 * dropped >= len(self.history):
                break
            dropped += 1
        if len(prompt) + budget > context:
            what = "the system prompt and this message take" if system else "this message takes"
            room = f"--max-tokens {budget}" if self.max_tokens is not None else f"{budget} tokens for the reply"
            raise LlmosError(f"{what} {len(prompt)} tokens; with {room} that exceeds the model's "
                             f"context of {context} tokens: write a shorter message"
                             + (" or /system a shorter one" if system else "") + " (or lower --max-tokens)")
        if dropped:
            del self.history[:2 * dropped]
            notice(f"[dropped the oldest {dropped} exchange{'s' * (dropped > 1)} to fit the model's "
                   f"context of {context} tokens]")
        return prompt

    def reply(self, user_text: str, write: Callable[[str], None]) -> None:
        """Sample the assistant's answer, passing each printable piece to `write` as it comes. The
        exchange joins the history even when interrupted (Ctrl-C), with the reply as far as it got."""
        prompt = self._prompt(user_text)
        max_tokens = self.max_tokens if self.max_tokens is not None else self.model.cfg.max_seq_len - len(prompt)
        params = dataclasses.replace(self.sampling, max_tokens=max_tokens, stop_ids=list(self.fmt.stop_ids))
        pieces: list[str] = []
        try:
            if self.tools is not None:
                pieces.append(self._reply_with_tools(prompt, params))
                write(pieces[-1])
                return
            tokens = generate(self.model, prompt, params)
            for piece in stream_text(self.fmt.tok, tokens):
                pieces.append(piece)
                write(piece)
        finally:
            self.history += [{"role": "user", "content": user_text},
                             {"role": "assistant", "content": "".join(pieces)}]


    def _reply_with_tools(self, prompt: list[int], params: SamplingParams) -> str:
        """The answer after the reply's tool calls, each shown as it runs (charts saved as PNG files)."""
        engine = Engine(self.model, self.fmt.tok, max_batch=1)
        seq, = engine.add(prompt, params, tools=self.tools)
        shown = 0
        try:
            while not seq.finished:
                engine.step()
                for record in seq.tool_calls[shown:]:
                    notice(f"[{record.name} {json.dumps(record.arguments)[:200]} -> {record.result[:300]}]")
                    for png in record.images:
                        path = next_free(Path(f"chart_{self.charts + 1}.png"))
                        path.write_bytes(png)
                        self.charts += 1
                        notice(f"[chart saved to {path}]")
                shown = len(seq.tool_calls)
        except KeyboardInterrupt:
            seq.cancel()
        return final_answer(seq.text)


def next_free(path: Path) -> Path:
    """`path`, or path with a number added when a file of that name exists."""
    n = 1
    while path.exists():
        path, n = path.with_name(f"{path.stem}-{n}{path.suffix}"), n + 1
    return path


def write_stdout(piece: str) -> None:
    if sys.stdout.isatty():
        piece = CONTROL_CHARS.sub(lambda m: f"\\x{ord(m[0]):02x}", piece)
    sys.stdout.write(piece)
    sys.stdout.flush()


def run_command(chat: Conversation, line: str) -> bool:
    """Obey one /command; False means leave."""
    name, _, arg = line.partition(" ")
    arg = arg.strip()
    if name in ("/exit", "/quit"):
        return False
    if name == "/help":
        width = max(len(usage) for usage, _ in COMMANDS)
        notice("\n".join(f"  {usage:<{width}}  {text}" for usage, text in COMMANDS)
               + "\n  Ctrl-C stops a reply; anything else is sent to the model.")
    elif name == "/clear":
        chat.clear()
        notice("[conversation cleared" + ("; the system prompt stays]" if chat.system else "]"))
    elif name == "/system":
        chat.clear(system=arg)
        notice("[system prompt set; conversation cleared]" if arg else "[no system prompt; conversation cleared]")
    elif name == "/temperature":
        if not arg:
            notice(f"[temperature {chat.sampling.temperature:g}]")
            return True
        try:
            value = float(arg)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and value >= 0):
            notice(f"/temperature needs a number >= 0 (0: greedy), not {arg!r}")
        else:
            chat.sampling.temperature = value
            notice(f"[temperature {value:g}]")
    else:
        notice(f"unknown command {name}: /help lists the commands")
    return True


def interactive(chat: Conversation) -> None:
    try:
        import readline  # noqa: F401  (gives input() line editing and history)
    except ImportError:
        pass
    while True:
        try:
            line = input("you> ").strip()
        except EOFError:
            print()
            return
        except KeyboardInterrupt:
            print()
            notice("(use /exit or Ctrl-D to leave)")
            continue
        if not line:
            continue
        if line.startswith("/"):
            if not run_command(chat, line):
                return
            continue
        try:
            chat.reply(line, write_stdout)
            print("\n")
        except KeyboardInterrupt:
            print()
            notice("[reply stopped]")
        except LlmosError as e:
            notice(f"error: {e}")


def run_chat(model_ref: str, system: str, sampling: SamplingParams, max_tokens: int | None = None,
             prompt: str | None = None, toolbox=None) -> None:
    """`llmos chat`: with `prompt` (or "-" for stdin) print one reply and return; else talk until /exit."""
    if prompt == "-":
        prompt = sys.stdin.read().strip()
    if prompt is not None and not prompt.strip():
        raise LlmosError("the prompt is empty: give -p TEXT, or -p - with the text on stdin")
    check_sampling(sampling)  # before loading, which may download and import a named model
    model, tok, info = load_model(model_ref)
    fmt = ChatFormat(tok, info["chat_template"])  # first: a model that cannot chat is the bigger problem
    check_max_tokens(max_tokens, model.cfg.max_seq_len)
    tools = ToolUse(toolbox, fmt) if toolbox is not None else None
    chat = Conversation(model, fmt, system, sampling, max_tokens, tools)
    if prompt is not None:
        chat.reply(prompt, write_stdout)
        print()
        return
    notice(f"[{model_ref}: {model.num_params() / 1e6:.1f}M parameters, context {model.cfg.max_seq_len} tokens; "
           "/help lists the commands, Ctrl-D leaves]")
    interactive(chat)

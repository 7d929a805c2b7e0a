"""The chat format: a conversation becomes token ids plus a loss mask; a prompt becomes ids to generate from.

    fmt = ChatFormat(tok)                          # an llmos tokenizer: the native layout below
    fmt = ChatFormat(tok, info["chat_template"])   # an imported model (no llmos tokens): its Jinja template
    ids, mask = fmt.render(messages)               # training; the last message is the assistant's
    prompt = fmt.render_prompt(messages)           # generation; the last message is the user's or a tool's
    reply = generate(model, prompt, ..., stop_ids=fmt.stop_ids)

Messages are OpenAI-style: `{"role": "system"|"user"|"assistant"|"tool", "content": str}`; an
assistant message may carry `tool_calls` (`[{"type": "function", "function": {"name": ...,
"arguments": "<JSON string>"}}]`, content then may be null) and must then be followed by `tool`
messages holding the results (in call order; `tool_call_id` is not rendered). A malformed
conversation raises LlmosError naming the message index (`validate_messages`).

Native layout (tokenizers with llmos's SPECIAL_TOKENS):

    <|bos|><|system_start|>S<|system_end|><|user_start|>U<|user_end|>
    <|assistant_start|>A<|tool_call_start|>{"name": N, "arguments": {...}}<|tool_call_end|><|assistant_end|>
    <|tool_result_start|>R<|tool_result_end|><|assistant_start|>A2<|assistant_end|>

Message text is encoded literally, so content that spells a special token ("<|user_end|>") stays text
and cannot forge a turn. A tool call's JSON string arguments are parsed and embedded as an object.

Masking: `mask[i] == 1` iff `ids[i]` is a token the model learns to produce, i.e. the assistant's
content, its tool calls (with their delimiters) and the `<|assistant_end|>` closing each assistant
turn. `<|assistant_start|>` is 0: at generation time the prompt supplies it. A trainer predicts
`ids[1:]` from `ids[:-1]` and weights the loss by `mask[1:]`.

Imported models bring a Jinja chat template (rendered like transformers' apply_chat_template:
`messages`, `add_generation_prompt`, `bos_token`, `eos_token`). Their masks come from rendering
prefix by prefix: for each assistant message k, the text between render(messages[:k], generation
prompt) and render(messages[:k+1]) is the assistant's span, cut after the eos token where the
span holds one (ChatML's trailing newline follows `<|im_end|>`, which generation never produces).
Each span and each text between spans is tokenized separately, so the mask is exact and the
assistant's tokens start at a token boundary, as they do when generating. A template that does not
render prefixes as prefixes of the whole conversation is rejected. Message text containing one of
the tokenizer's special tokens is rejected here, since the rendered string cannot keep it literal.

A template comes with the model file, so it is untrusted: it renders in a sandbox with time and
size limits (llmos/template.py).
"""
from __future__ import annotations

import json

from tokenizers import Tokenizer as HFTokenizer

from llmos.common import LlmosError
from llmos.template import compile_template, render_template
from llmos.tokenizer import Tokenizer

ROLES = ("system", "user", "assistant", "tool")
TURN_TOKENS = {role: (f"<|{role}_start|>", f"<|{role}_end|>") for role in ("system", "user", "assistant")}
TOOL_CALL = ("<|tool_call_start|>", "<|tool_call_end|>")
TOOL_RESULT = ("<|tool_result_start|>", "<|tool_result_end|>")
# The native layout as a Jinja chat template, for exports to tools that only read templates
# (llama.cpp, transformers): the same tokens as ChatFormat's native rendering, tool calls aside.
NATIVE_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}"
    "{% if m['role'] == 'tool' %}<|tool_result_start|>{{ m['content'] }}<|tool_result_end|>"
    "{% else %}<|{{ m['role'] }}_start|>{{ m['content'] or '' }}<|{{ m['role'] }}_end|>{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}<|assistant_start|>{% endif %}")



def _tool_calls(i: int, calls) -> list[dict]:
    """The calls of message i as [{"name", "arguments": parsed JSON}], or LlmosError."""
    if not isinstance(calls, list) or not calls:
        raise LlmosError(f"message {i}: tool_calls must be a non-empty list")
    parsed = []
    for j, call in enumerate(calls):
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict) or call.get("type", "function") != "function":
            raise LlmosError(f"message {i}: tool_calls[{j}] must be {{\"type\": \"function\", \"function\": {{...}}}}")
        name, args = fn.get("name"), fn.get("arguments", "{}")
        if not isinstance(name, str) or not name:
            raise LlmosError(f"message {i}: tool_calls[{j}] has no function name")
        if isinstance(args, str):
            try:
                args = json.loads(args)
            except ValueError:
                raise LlmosError(f"message {i}: tool_calls[{j}] ({name}) arguments are not valid JSON: "
                                 f"{args[:80]!r}") from None
        elif not isinstance(args, dict):
            raise LlmosError(f"message {i}: tool_calls[{j}] ({name}) arguments must be a JSON string")
        parsed.append({"name": name, "arguments": args})
    return parsed


def validate_messages(messages, for_prompt: bool = False) -> None:
    """Raise LlmosError naming the first bad message. A training conversation ends with an assistant
    message; a prompt (`for_prompt=True`) with a user message or a tool result."""
    if not isinstance(messages, list) or not messages:
        raise LlmosError("a conversation must be a non-empty list of messages")
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise LlmosError(f"message {i}: expected an object with role and content, got {type(m).__name__}")
        role, content, calls = m.get("role"), m.get("content"), m.get("tool_calls")
        if role not in ROLES:
            raise LlmosError(f"message {i}: unknown role {role!r}; roles are {', '.join(ROLES)}")
        if calls is not None:
            if role != "assistant":
                raise LlmosError(f"message {i}: only assistant messages may carry tool_calls, not {role}")
            _tool_calls(i, calls)
        if not isinstance(content, str) and not (content is None and calls):
            raise LlmosError(f"message {i} ({role}): content must be a string, got {type(content).__name__}")
        if role == "system" and i > 0:
            raise LlmosError(f"message {i}: a system message may only come first")
        if role == "tool" and not (i > 0 and (messages[i - 1]["role"] == "tool" or messages[i - 1].get("tool_calls"))):
            raise LlmosError(f"message {i}: a tool result must follow an assistant message with tool_calls")
        after = messages[i + 1] if i + 1 < len(messages) else None
        if calls and after is not None and not (isinstance(after, dict) and after.get("role") == "tool"):
            raise LlmosError(f"message {i}: its tool calls have no result (message {i + 1} is not a tool message)")
    last, role = len(messages) - 1, messages[-1]["role"]
    a_role = f"{'an' if role == 'assistant' else 'a'} {role}"
    if for_prompt and role not in ("user", "tool"):
        raise LlmosError(f"message {last} (the last) is {a_role} message; a prompt must end with a user "
                         "message or a tool result for the assistant to answer")
    if not for_prompt and role != "assistant":
        raise LlmosError(f"message {last} (the last) is {a_role} message; a training conversation must "
                         "end with an assistant reply")


class ChatFormat:
    """Renders conversations for one tokenizer: the native llmos layout when the tokenizer has the
    llmos chat tokens, else the given Jinja chat template (see the module docstring)."""

    def __init__(self, tok: Tokenizer, chat_template: str = ""):
        self.tok = tok
        self.native = tok.hf.token_to_id(TURN_TOKENS["assistant"][0]) is not None
        if self.native:
            self._id = {t: tok.token_id(t) for pair in (*TURN_TOKENS.values(), TOOL_CALL, TOOL_RESULT) for t in pair}
            # A copy that encodes special-token spellings as plain text, for message content.
            self._literal = HFTokenizer.from_str(tok.to_json())
            self._literal.encode_special_tokens = True
            return
        if not chat_template:
            raise LlmosError("this tokenizer has no llmos chat tokens and the model carries no chat template: "
                             "it cannot chat (train with llmos's tokenizer, or import a model with a template)")
        self._template = compile_template(chat_template)
        self._template_knows_calls = "tool_calls" in chat_template
        self._bos = tok.hf.id_to_token(tok.bos_id) if tok.bos_id is not None else ""
        self._eos = tok.hf.id_to_token(tok.eos_id) if tok.eos_id is not None else ""
        self._specials = [t.content for t in tok.hf.get_added_tokens_decoder().values() if t.special]

    @property
    def stop_ids(self) -> list[int]:
        """Where a generated reply ends: `<|assistant_end|>` natively (and bos), else the model's eos/bos."""
        if self.native:
            return [self._id[TURN_TOKENS["assistant"][1]], *self.tok.stop_ids]
        return self.tok.stop_ids

    @property
    def end_of_turn_id(self) -> int | None:
        """The token that properly closes an assistant turn (`<|assistant_end|>`, or the model's eos)."""
        return self._id[TURN_TOKENS["assistant"][1]] if self.native else self.tok.eos_id

    @property
    def special_ids(self) -> set[int]:
        """Every special token of the tokenizer: none belongs inside a reply's text."""
        return {i for i, t in self.tok.hf.get_added_tokens_decoder().items() if t.special}

    def render(self, messages: list[dict]) -> tuple[list[int], list[int]]:
        """Token ids of a whole training conversation and its loss mask (1 = learn to produce this token)."""
        validate_messages(messages)
        return self._native(messages, prompt=False) if self.native else self._templated(messages)

    def render_prompt(self, messages: list[dict]) -> list[int]:
        """Token ids ending where the assistant's reply begins."""
        validate_messages(messages, for_prompt=True)
        if self.native:
            return self._native(messages, prompt=True)[0]
        return self.tok.hf.encode(self._text(messages, True), add_special_tokens=False).ids

    def window_ids(self, messages: list[dict]) -> list[int]:
        """Token ids of messages as they sit in a context window, whatever role comes last (what an
        agent's window costs between turns)."""
        if self.native:
            return self._native(messages, prompt=False)[0]
        return self.tok.hf.encode(self._text(messages, False), add_special_tokens=False).ids

    def tool_result_ids(self, result: str) -> list[int]:
        """The tokens forced after a tool call a reply just made: its assistant turn closes, the
        result follows as a tool message, and a new assistant turn opens, exactly as `render_prompt`
        lays out the same conversation. The result is always text, never a special token."""
        if self.native:
            body = self._literal.encode(result, add_special_tokens=False).ids
            return [self._id[TURN_TOKENS["assistant"][1]], self._id[TOOL_RESULT[0]], *body,
                    self._id[TOOL_RESULT[1]], self._id[TURN_TOKENS["assistant"][0]]]
        for special in self._specials:  # a result may quote anything; it must not close a turn
            result = result.replace(special, special.replace("<", "< "))
        sentinel, slot = "\x00CALL\x00", "\x00RESULT\x00"
        messages = [{"role": "user", "content": "?"}, {"role": "assistant", "content": sentinel}]
        closed = self._text(messages, False)
        opened = self._text(messages + [{"role": "tool", "content": slot}], True)
        if not opened.startswith(closed) or slot not in opened:
            raise LlmosError("this model's chat template does not render a tool message after an assistant one; "
                             "it cannot run tools in a reply")
        text = closed[closed.index(sentinel) + len(sentinel):] + opened[len(closed):]
        return self.tok.hf.encode(text.replace(slot, result), add_special_tokens=False).ids

    def _native(self, messages: list[dict], prompt: bool) -> tuple[list[int], list[int]]:
        ids, mask = [self.tok.bos_id], [0]

        def add(new: list[int], learn: bool) -> None:
            ids.extend(new)
            mask.extend([int(learn)] * len(new))

        for i, m in enumerate(messages):
            text = self._literal.encode(m["content"] or "", add_special_tokens=False).ids
            if m["role"] == "tool":
                add([self._id[TOOL_RESULT[0]], *text, self._id[TOOL_RESULT[1]]], False)
                continue
            start, end = TURN_TOKENS[m["role"]]
            learn = m["role"] == "assistant"
            add([self._id[start]], False)
            add(text, learn)
            for call in _tool_calls(i, m["tool_calls"]) if m.get("tool_calls") else []:
                body = self._literal.encode(json.dumps(call, ensure_ascii=False), add_special_tokens=False).ids
                add([self._id[TOOL_CALL[0]], *body, self._id[TOOL_CALL[1]]], learn)
            add([self._id[end]], learn)
        if prompt:
            add([self._id[TURN_TOKENS["assistant"][0]]], False)
        return ids, mask

    def _text(self, messages: list[dict], generation_prompt: bool) -> str:
        for i, m in enumerate(messages):
            for special in self._specials:
                if special in (m.get("content") or ""):
                    raise LlmosError(f"message {i}: its content contains the special token {special}, "
                                     "which this model's chat template cannot keep as plain text")
        return render_template(self._template, messages=[self._for_template(m) for m in messages],
                               add_generation_prompt=generation_prompt, bos_token=self._bos, eos_token=self._eos)

    def _for_template(self, m: dict) -> dict:
        """A message as a template sees it: content always a string, and, for a template that has no
        place for tool_calls (SmolLM2's), an assistant's calls written into its content the way such
        a model writes them, `<tool_call>[{"name", "arguments"}]</tool_call>`."""
        content = m.get("content") or ""
        if m.get("tool_calls") and not self._template_knows_calls:
            calls = [{"name": c["function"]["name"], "arguments": json.loads(c["function"].get("arguments") or "{}")}
                     for c in m["tool_calls"]]
            content = f"{content}<tool_call>{json.dumps(calls, ensure_ascii=False)}</tool_call>"
        return {**m, "content": content}

    def _templated(self, messages: list[dict]) -> tuple[list[int], list[int]]:
        full = self._text(messages, False)
        pieces, pos = [], 0  # (text, learn) in order; their concatenation is `full`
        for k, m in enumerate(messages):
            if m["role"] != "assistant":
                continue
            before, through = self._text(messages[:k], True), self._text(messages[:k + 1], False)
            if not (through.startswith(before) and full.startswith(through) and len(before) >= pos):
                raise LlmosError(f"message {k}: the chat template does not render this conversation's prefixes "
                                 "as prefixes of the whole, so the assistant's tokens cannot be located")
            cut = through.find(self._eos, len(before)) if self._eos else -1
            end = cut + len(self._eos) if cut >= 0 else len(through)
            pieces += [(full[pos:len(before)], False), (full[len(before):end], True)]
            pos = end
        pieces.append((full[pos:], False))
        ids, mask = [], []
        for text, learn in pieces:
            new = self.tok.hf.encode(text, add_special_tokens=False).ids if text else []
            ids.extend(new)
            mask.extend([int(learn)] * len(new))
        return ids, mask

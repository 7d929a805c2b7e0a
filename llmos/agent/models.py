"""The kernel's CPU: an llmos model run by the batching engine, any OpenAI-compatible endpoint, or a script.

    model = LocalModel.load("smollm2-135m-instruct")          # or a run directory, a .llmos file
    model = EndpointModel("http://127.0.0.1:8000/v1", api_key="...", model="llmos")
    model = ScriptedModel(lambda messages, tools: "Rex.")     # deterministic, for tests
    reply = model.complete(messages, tools, max_tokens=128)   # Reply(content, calls, tokens)
    replies = model.complete_many([(messages, tools, 64), ...])   # processes: one batch, separate contexts
    model.prompt_tokens(messages, tools)                      # what these messages cost in the window

A reply is text plus the tool calls it makes ({"name", "arguments"}), parsed the same way for every
model (llmos/infer/toolcalls.py); the kernel runs the calls and asks again. The local model renders
with its own chat format (llmos's tokens or the model's template) and offers tools the way it was
trained to read them (llmos/infer/tooluse.py `offer_tools`). All its generations go through one
Scheduler, so sub-tasks started together (`complete_many`, or several kernels in threads) share
batched forward passes. An endpoint's tokenizer is unknown here, so its token counts are an estimate
(4 characters a token, the usual figure for English under BPE vocabularies); say `--budget` in that
light.
"""
from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Callable

from llmos.common import LlmosError
from llmos.infer.toolcalls import parse_tool_calls


@dataclass
class Reply:
    content: str
    calls: list[dict] = field(default_factory=list)  # [{"name", "arguments"}]
    tokens: int = 0  # generated


def assistant_message(reply: Reply) -> dict:
    """The reply as an OpenAI assistant message (its calls as tool_calls, arguments as JSON text)."""
    message = {"role": "assistant", "content": reply.content or ("" if not reply.calls else None)}
    if reply.calls:
        message["tool_calls"] = [{"type": "function", "function": {"name": c["name"],
                                                                   "arguments": json.dumps(c["arguments"])}}
                                 for c in reply.calls]
    return message


class LocalModel:
    def __init__(self, model, tok, info: dict, name: str, max_batch: int = 8, temperature: float = 0.0):
        from llmos.chat import ChatFormat
        from llmos.infer.engine import Engine
        from llmos.infer.scheduler import Scheduler
        self.name, self.tok, self.temperature = name, tok, temperature
        self.fmt = ChatFormat(tok, info.get("chat_template", ""))
        self.context = model.cfg.max_seq_len
        self.scheduler = Scheduler(Engine(model, tok, max_batch=max_batch, max_len=self.context),
                                   max_queue=1024).start()

    @classmethod
    def load(cls, ref: str, **kw) -> "LocalModel":
        from llmos.load import load_model
        model, tok, info = load_model(ref)
        return cls(model, tok, info, name=str(ref), **kw)

    def close(self) -> None:
        self.scheduler.stop()

    def count(self, text: str) -> int:
        return len(self.tok.encode(text)) if text else 0

    def _offered(self, messages: list[dict], tools: list[dict]) -> list[dict]:
        """The messages with the tools offered in the system message."""
        from llmos.infer.tooluse import offer_tools
        if not tools:
            return messages
        offer = offer_tools(self.fmt, tools)
        if messages and messages[0]["role"] == "system":
            return [{**messages[0], "content": f"{messages[0]['content']}\n\n{offer}"}, *messages[1:]]
        return [{"role": "system", "content": offer}, *messages]

    def _prompt(self, messages: list[dict], tools: list[dict]) -> list[int]:
        return self.fmt.render_prompt(self._offered(messages, tools))

    def prompt_tokens(self, messages: list[dict], tools: list[dict]) -> int:
        if messages and messages[-1]["role"] not in ("user", "tool"):  # a window between turns, as it is kept
            return len(self.fmt.window_ids(self._offered(messages, tools)))
        return len(self._prompt(messages, tools))

    def complete(self, messages: list[dict], tools: list[dict], max_tokens: int = 128) -> Reply:
        return self.complete_many([(messages, tools, max_tokens)])[0]

    def complete_many(self, jobs: list[tuple[list[dict], list[dict], int]]) -> list[Reply]:
        """Generate every job at once: each is its own sequence in the engine's batch."""
        from llmos.infer.sampling import SamplingParams
        done, groups, remaining = threading.Event(), [], len(jobs)

        def finished(seq) -> None:
            nonlocal remaining
            if seq.finished:  # the scheduler's one thread calls this, and never again for a finished sequence
                remaining -= 1
                if remaining == 0:
                    done.set()

        for messages, tools, max_tokens in jobs:
            prompt = self._prompt(messages, tools)
            room = self.context - len(prompt) - 1
            if room < 1:
                raise LlmosError(f"the prompt is {len(prompt):,} tokens, beyond {self.name}'s context of "
                                 f"{self.context:,}: lower the kernel's --budget")
            params = SamplingParams(max_tokens=min(max_tokens, room), temperature=self.temperature,
                                    stop_ids=self.fmt.stop_ids)
            groups.append(self.scheduler.submit(prompt, params, listener=finished)[0])
        if jobs:
            done.wait()
        replies = []
        for seq in groups:
            content, calls = parse_tool_calls(seq.text)
            replies.append(Reply((content or "").strip(), calls, len(seq.tokens)))
        return replies


class EndpointModel:
    """Any OpenAI-compatible chat endpoint (llmos serve, llama.cpp's server, vLLM, a hosted API)."""

    def __init__(self, url: str, api_key: str = "", model: str = "", timeout: float = 120.0):
        self.url = url.rstrip("/")
        if not self.url.endswith("/v1"):
            self.url += "/v1"
        self.api_key, self.model, self.timeout = api_key, model, timeout
        self.name = f"{model or 'default'} at {self.url}"
        self.context = 1 << 20  # unknown: the endpoint refuses what does not fit, and says so

    def close(self) -> None:
        pass

    @staticmethod
    def count(text: str) -> int:
        return (len(text) + 3) // 4

    def prompt_tokens(self, messages: list[dict], tools: list[dict]) -> int:
        overhead = 4 * len(messages) + sum(self.count(json.dumps(t)) for t in tools)
        return overhead + sum(self.count(m.get("content") or "") + self.count(json.dumps(m.get("tool_calls", "")))
                              for m in messages)

    def complete(self, messages: list[dict], tools: list[dict], max_tokens: int = 128) -> Reply:
        if not self.model:  # the endpoint's first model, as most clients do
            models = self._request("models").get("data") or [{}]
            self.model = models[0].get("id", "")
            self.name = f"{self.model or 'default'} at {self.url}"
        body = {"model": self.model, "messages": messages, "max_tokens": max_tokens, "temperature": 0}
        if tools:
            body["tools"] = tools
        answer = self._request("chat/completions", body)
        try:
            message = answer["choices"][0]["message"]
        except (KeyError, IndexError, TypeError):
            raise LlmosError(f"the endpoint {self.url} answered without choices[0].message: {str(answer)[:200]}") from None
        calls = []
        for call in message.get("tool_calls") or []:
            fn = call.get("function", {})
            try:
                arguments = json.loads(fn.get("arguments") or "{}")
            except ValueError:
                arguments = None
            calls.append({"name": fn.get("name", "?"), "arguments": arguments})
        content, text_calls = parse_tool_calls(message.get("content") or "")
        return Reply((content or "").strip(), calls or text_calls, answer.get("usage", {}).get("completion_tokens", 0))

    def _request(self, path: str, body: dict | None = None) -> dict:
        headers = {"Content-Type": "application/json",
                   **({"Authorization": f"Bearer {self.api_key}"} if self.api_key else {})}
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(f"{self.url}/{path}", data=data, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.load(response)
        except urllib.error.HTTPError as e:
            detail = e.read(500).decode("utf-8", "replace")
            raise LlmosError(f"the endpoint {self.url} answered HTTP {e.code}: {detail}") from None
        except (urllib.error.URLError, OSError) as e:
            raise LlmosError(f"cannot reach the endpoint {self.url} ({getattr(e, 'reason', e)}): is it running?") from None
        except ValueError:
            raise LlmosError(f"the endpoint {self.url} did not answer with JSON: is it OpenAI-compatible?") from None

    def complete_many(self, jobs: list[tuple[list[dict], list[dict], int]]) -> list[Reply]:
        """Concurrent requests: a batching server (llmos serve) runs them in one batch."""
        from concurrent.futures import ThreadPoolExecutor
        with ThreadPoolExecutor(max_workers=min(8, max(1, len(jobs)))) as pool:
            return list(pool.map(lambda job: self.complete(*job), jobs))


class ScriptedModel:
    """A model whose replies come from a function of the messages: deterministic kernel tests.
    Tokens are counted as whitespace-separated words plus 4 per message."""

    def __init__(self, script: Callable[[list[dict], list[dict]], str | Reply], context: int = 1 << 16):
        self.script, self.context, self.name = script, context, "scripted"
        self.seen: list[list[dict]] = []  # every prompt it was given, in order

    def close(self) -> None:
        pass

    @staticmethod
    def count(text: str) -> int:
        return len(text.split())

    def prompt_tokens(self, messages: list[dict], tools: list[dict]) -> int:
        return sum(4 + self.count(m.get("content") or "") for m in messages) + 10 * len(tools)

    def complete(self, messages: list[dict], tools: list[dict], max_tokens: int = 128) -> Reply:
        self.seen.append(messages)
        out = self.script(messages, tools)
        if isinstance(out, Reply):
            return out
        content, calls = parse_tool_calls(out)
        return Reply((content or "").strip(), calls, self.count(out))

    def complete_many(self, jobs: list[tuple[list[dict], list[dict], int]]) -> list[Reply]:
        return [self.complete(*job) for job in jobs]

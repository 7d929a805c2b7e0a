"""`llmos serve`: an OpenAI-compatible HTTP server over the continuous-batching engine, and a chat page.

    llmos serve --model runs/speedrun-cpu --model smol=smollm2-135m-instruct [--api-key KEY] [--port 8000]
    curl localhost:8000/v1/chat/completions -d '{"model": "smol", "messages": [{"role": "user", "content": "Hi"}]}'

Endpoints: GET /v1/models; POST /v1/chat/completions and /v1/completions (streaming as server-sent
events in OpenAI's chunk format, ending `data: [DONE]`); GET /health; GET /metrics (Prometheus);
GET / (the chat page, llmos/serve/static/); /openapi.json and /docs from FastAPI.

Each model has its own engine thread (llmos/infer/scheduler.py); a request becomes n sequences in
it and its handler waits on an asyncio queue the engine thread wakes. Replies stream as the engine
releases text; with `tools` the reply is held until it is known to be text or calls. A client that
disconnects cancels its sequences, which leave the batch at the next engine step. A forced
`tool_choice` and `response_format` decode under a JSON-schema constraint (llmos/infer/constrain.py).

With `ServerConfig.toolbox` (`llmos serve --tools ...`), a request that brings no `tools` of its own
gets the server's: they are offered in the system message, the engine runs each call in the reply
(llmos/infer/tooluse.py), and the reply is held until the loop ends; its content is the final answer
and the message carries `llmos_tool_calls` (each call, its result and its charts as base64 PNG).

A chat request's `reasoning_effort` (minimal|low|medium|high), or `best_of` with `n`, runs a test-time
strategy on the same engine (llmos/serve/reasoning.py): its chains are one group, a vote stops the
rest once it is settled, and the reply carries `reasoning_content` apart from `content`.

Every failure a client can cause is a 4xx with OpenAI's `{"error": {"message", "type", "param",
"code"}}`: bad JSON or types (400), a prompt longer than the context (400, both lengths named), an
unknown model (404), a missing or wrong key (401), a body over the limit (413), a full queue (429
with Retry-After). Every response carries an X-Request-Id, and every log line names it.
"""
from __future__ import annotations

import asyncio
import base64
import hmac
import json
import logging
import re
import secrets
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, AsyncIterator

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from starlette.exceptions import HTTPException as StarletteHTTPException

from llmos.chat import ChatFormat
from llmos.common import LlmosError
from llmos.infer.constrain import Constraint, schema_error
from llmos.infer.engine import Sequence
from llmos.infer.strategies import with_reasoning_prompt
from llmos.infer.scheduler import QueueFull, Scheduler, ShuttingDown
from llmos.infer.toolcalls import forced_call_schema, parse_tool_calls, stream_safe_length, validate_tools
from llmos.infer.tooluse import ToolUse, final_answer, offer_tools
from llmos.serve.protocol import ChatCompletionRequest, CompletionRequest, sampling_params
from llmos.serve.reasoning import ReasoningPlan, reasoning_plan, split_reply, streamed_reasoning
from llmos.tokenizer import Tokenizer

STATIC = Path(__file__).parent / "static"
log = logging.getLogger("llmos.serve")


@dataclass
class ServedModel:
    name: str
    tok: Tokenizer
    info: dict
    scheduler: Scheduler
    fmt: ChatFormat | None = None  # None: the model cannot chat (fmt_error says why)
    fmt_error: str = ""
    created: int = field(default_factory=lambda: int(time.time()))

    def __post_init__(self):
        specials = sorted((t.content for t in self.tok.hf.get_added_tokens_decoder().values() if t.special),
                          key=len, reverse=True)
        self._specials = re.compile("|".join(map(re.escape, specials))) if specials else None
        self.fingerprint = self.tok.fingerprint()  # hashes the whole tokenizer: once, not per request

    def visible(self, text: str) -> str:
        """Reply text as a client sees it: special tokens (a turn marker a weak model emits) left out,
        as OpenAI-compatible servers do. Tool-call markers are read before this."""
        return self._specials.sub("", text) if self._specials else text

    @property
    def context(self) -> int:
        return self.scheduler.engine.max_len


@dataclass
class ServerConfig:
    api_key: str | None = None
    image_origins: list[str] = field(default_factory=list)  # where the chat page may load images from
    max_body_bytes: int = 4 << 20
    request_timeout_s: float = 600.0
    toolbox: Any = None  # llmos/tools Toolbox: tools the server runs itself when a request brings none
    max_tool_calls: int = 4  # per reply


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error", headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind, self.headers = \
            status, message, param, code, kind, headers


def error_body(message: str, kind: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def error_response(e: ApiError, request_id: str | None = None) -> JSONResponse:
    headers = dict(e.headers or {})
    if request_id:
        headers["X-Request-Id"] = request_id
    return JSONResponse(error_body(e.message, e.kind, e.param, e.code), status_code=e.status, headers=headers)


def install_error_handlers(app, log) -> None:
    """The JSON error answers of a page's app (the labeling page, the LLM OS page): an ApiError as
    itself, a request the schema refuses as a 400 naming the field, an unknown route as a 404, and
    a bug as a 500 that asks to be reported (and is logged), never a traceback."""
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException as StarletteHTTPException

    @app.exception_handler(ApiError)
    async def on_api_error(request: Request, e: ApiError):
        return error_response(e)

    @app.exception_handler(RequestValidationError)
    async def on_validation_error(request: Request, e: RequestValidationError):
        first = e.errors()[0] if e.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path")) or None
        if first.get("type") == "json_invalid":
            message = "the request body is not valid JSON"
        elif not where:
            message = "the request body must be a JSON object, sent with Content-Type: application/json"
        else:
            message = f"{where}: {first.get('msg', 'invalid value')}"
        return error_response(ApiError(400, message, param=where, code="invalid_value"))

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request: Request, e: StarletteHTTPException):
        kind = "not_found_error" if e.status_code == 404 else "invalid_request_error"
        message = f"no route {request.method} {request.url.path}" if e.status_code in (404, 405) else str(e.detail)
        return error_response(ApiError(e.status_code, message, kind=kind))

    @app.exception_handler(Exception)
    async def on_bug(request: Request, e: Exception):
        log.exception("internal error")
        return error_response(ApiError(500, f"internal error ({type(e).__name__}): please report it",
                                       kind="server_error"))


class BodyLimit:
    """ASGI middleware: a request body over `limit` bytes gets a 413 before the app reads it all."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await self._refuse(scope, receive, send)
        seen = 0

        async def counted():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise ApiError(413, f"the request body exceeds the limit of {self.limit:,} bytes", code="body_too_large")
            return message

        await self.app(scope, counted, send)

    async def _refuse(self, scope, receive, send):
        await error_response(ApiError(413, f"the request body exceeds the limit of {self.limit:,} bytes",
                                      code="body_too_large"))(scope, receive, send)


class RequestIds:
    """ASGI middleware: every request gets an id (the client's X-Request-Id, else a new one) in
    `request.state.request_id`, on its response's headers and on its log line; `done` counts it.
    Plain ASGI rather than Starlette's BaseHTTPMiddleware, which relays every chunk of a stream
    through a second task (a measurable cost at hundreds of chunks a second)."""

    def __init__(self, app, done):
        self.app, self.done = app, done

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        rid = headers.get(b"x-request-id", b"").decode("latin-1")[:64] or f"req-{uuid.uuid4().hex[:16]}"
        scope.setdefault("state", {})["request_id"] = rid
        start, status = time.monotonic(), [0]

        async def send_with_id(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                message["headers"] = [*[(k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"],
                                      (b"x-request-id", rid.encode("latin-1"))]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except ApiError as e:  # raised below the routes (the body limit while reading)
            if status[0]:
                raise
            await error_response(e, rid)(scope, receive, send_with_id)
        self.done(scope, rid, status[0], time.monotonic() - start)


class EngineCollector:
    """Prometheus figures read from the engines at scrape time (no second bookkeeping)."""

    def __init__(self, models: dict[str, ServedModel]):
        self.models = models

    def collect(self):
        gauges = {name: GaugeMetricFamily(f"llmos_{name}", text, labels=["model"]) for name, text in (
            ("queue_length", "requests waiting for a slot"),
            ("running_sequences", "sequences decoding now"),
            ("prefix_cache_hit_rate", "share of prefills that reused a cached prefix"),
            ("prefix_cache_bytes", "memory held by the prefix cache"),
            ("cancel_free_steps_max", "most engine steps a cancelled sequence kept its slot"))}
        counters = {name: CounterMetricFamily(f"llmos_{name}", text, labels=["model"]) for name, text in (
            ("engine_steps", "engine steps (admit, prefill, decode)"),
            ("decode_steps", "batched decode steps"),
            ("prompt_tokens", "prompt tokens prefilled"),
            ("prompt_tokens_cached", "prompt tokens taken from the prefix cache instead"),
            ("generation_tokens", "tokens generated"),
            ("prefix_cache_lookups", "prefix cache lookups"),
            ("prefix_cache_hits", "prefix cache hits"),
            ("requests_refused", "requests refused with 429 (queue full)"),
            ("draft_tokens", "tokens drafted by speculative decoding"),
            ("draft_tokens_accepted", "drafted tokens the model kept"))}
        for name, served in self.models.items():
            sched, engine = served.scheduler, served.scheduler.engine
            cache = engine.prefix_cache
            lookups, hits = (cache.lookups, cache.hits) if cache else (0, 0)
            for key, value in (("queue_length", sched.queued), ("running_sequences", sched.running),
                               ("prefix_cache_hit_rate", hits / lookups if lookups else 0.0),
                               ("prefix_cache_bytes", cache.bytes if cache else 0),
                               ("cancel_free_steps_max", engine.cancel_latency_max)):
                gauges[key].add_metric([name], value)
            for key, value in (("engine_steps", engine.steps), ("decode_steps", engine.decode_steps),
                               ("prompt_tokens", engine.prompt_tokens),
                               ("prompt_tokens_cached", engine.prompt_tokens_cached),
                               ("generation_tokens", engine.tokens_generated),
                               ("prefix_cache_lookups", lookups), ("prefix_cache_hits", hits),
                               ("requests_refused", sched.requests_refused),
                               ("draft_tokens", engine.spec_drafted), ("draft_tokens_accepted", engine.spec_accepted)):
                counters[key].add_metric([name], value)
        yield from gauges.values()
        yield from counters.values()


# ----- turning engine sequences into OpenAI objects -----

def byte_decoder() -> dict[str, int]:
    """Byte-level BPE spells every byte as one printable character (GPT-2's table): its inverse."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


BYTE_DECODER = byte_decoder()


def token_info(tok: Tokenizer, token: int) -> tuple[str, list[int]]:
    """A token's text and its UTF-8 bytes (a token may hold part of a character)."""
    piece = tok.hf.id_to_token(token) or ""
    if piece and all(ch in BYTE_DECODER for ch in piece):
        raw = bytes(BYTE_DECODER[ch] for ch in piece)
    else:
        raw = tok.decode([token]).encode("utf-8")
    return raw.decode("utf-8", errors="replace"), list(raw)


def chat_logprobs(tok: Tokenizer, seq: Sequence, start: int, end: int) -> dict | None:
    entries = []
    for lp in seq.logprobs[start:end]:
        if lp is None:  # a forced token: not sampled, no probability
            continue
        text, raw = token_info(tok, lp.token)
        top = []
        for token, value in lp.top:
            t, b = token_info(tok, token)
            top.append({"token": t, "logprob": value, "bytes": b})
        entries.append({"token": text, "logprob": lp.logprob, "bytes": raw, "top_logprobs": top})
    return {"content": entries}


def legacy_logprobs(tok: Tokenizer, seq: Sequence, start: int, end: int, offset: int) -> dict:
    tokens, values, tops, offsets = [], [], [], []
    for lp in seq.logprobs[start:end]:
        if lp is None:
            continue
        text, _ = token_info(tok, lp.token)
        tokens.append(text)
        values.append(lp.logprob)
        tops.append({token_info(tok, t)[0]: v for t, v in lp.top})
        offsets.append(offset)
        offset += len(text)
    return {"tokens": tokens, "token_logprobs": values, "top_logprobs": tops, "text_offset": offsets}


def finish_reason(seq: Sequence) -> str:
    return "stop" if seq.finish_reason == "stop" else "length"


def openai_tool_calls(calls: list[dict]) -> list[dict]:
    return [{"id": f"call_{secrets.token_hex(12)}", "type": "function",
             "function": {"name": c["name"], "arguments": json.dumps(c["arguments"], ensure_ascii=False)}}
            for c in calls]


@dataclass
class Job:
    """One request's sequences, how to read them, and the queue the engine thread wakes."""
    served: ServedModel
    seqs: list[Sequence]
    queue: asyncio.Queue
    prompt_tokens: int
    tools: list[dict] | None = None
    forced_call: bool = False
    server_tools: bool = False  # the server runs the calls (ToolUse) and answers with the final text
    started: float = field(default_factory=time.monotonic)

    def streamable(self, seq: Sequence) -> str:
        """The reply text that may be streamed now: all of it, unless it may still turn into tool calls
        (or, with the server's tools, until the tool loop has ended)."""
        if self.forced_call or self.server_tools:
            return ""
        return self.served.visible(seq.text[:stream_safe_length(seq.text)] if self.tools else seq.text)

    def result(self, seq: Sequence) -> tuple[str | None, list[dict], str]:
        """(content, tool calls, finish_reason) of a finished sequence."""
        if self.server_tools:
            return self.served.visible(final_answer(seq.text)), [], finish_reason(seq)
        if self.forced_call:
            try:
                call = json.loads(seq.text)
                return None, openai_tool_calls([call]), "tool_calls"
            except ValueError:  # cut off by max_tokens before the JSON closed
                return seq.text, [], finish_reason(seq)
        if self.tools:
            content, calls = parse_tool_calls(seq.text)
            if calls:
                return content and self.served.visible(content), openai_tool_calls(calls), "tool_calls"
        return self.served.visible(seq.text), [], finish_reason(seq)


def tool_records(seq: Sequence) -> list[dict]:
    """The calls the server ran for a reply, with results and charts (base64 PNG): `llmos_tool_calls`,
    an extension of the assistant message that OpenAI clients ignore and the chat page shows."""
    return [{"name": r.name, "arguments": r.arguments, "result": r.result, "error": r.error,
             "images": [base64.b64encode(png).decode() for png in r.images]} for r in seq.tool_calls]


def create_app(models: dict[str, ServedModel], config: ServerConfig = ServerConfig()) -> FastAPI:
    disable_created_metrics()  # the *_created series only double the page
    registry = CollectorRegistry()
    registry.register(EngineCollector(models))
    requests_total = Counter("llmos_requests", "HTTP requests by path and status", ["path", "status"], registry=registry)
    ttft = Histogram("llmos_time_to_first_token_seconds", "time from request to its first token", ["model"],
                     registry=registry, buckets=(.01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60))
    latency = Histogram("llmos_request_duration_seconds", "time from request to its last token", ["model"],
                        registry=registry, buckets=(.05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120, 300))

    @asynccontextmanager
    async def lifespan(app):
        for served in models.values():
            served.scheduler.start()
        yield
        for served in models.values():  # uvicorn has let open requests finish: end the engine threads
            served.scheduler.stop(timeout=config.request_timeout_s)

    tool_uses = {name: ToolUse(config.toolbox, served.fmt, max_calls=config.max_tool_calls)
                 for name, served in models.items() if config.toolbox is not None and served.fmt is not None}
    app = FastAPI(title="llmos", version="1", lifespan=lifespan,
                  description="OpenAI-compatible chat and completions over llmos models.")
    app.add_middleware(BodyLimit, limit=config.max_body_bytes)  # inside RequestIds (added below)

    def request_done(scope, rid: str, status: int, seconds: float) -> None:
        path = scope["path"]
        requests_total.labels(path if path in KNOWN_PATHS else "other", str(status)).inc()
        log.info("%s %s %s %d %.3fs", rid, scope["method"], path, status, seconds)

    app.add_middleware(RequestIds, done=request_done)

    @app.exception_handler(ApiError)
    async def on_api_error(request: Request, e: ApiError):
        return error_response(e, getattr(request.state, "request_id", None))

    @app.exception_handler(RequestValidationError)
    async def on_validation_error(request: Request, e: RequestValidationError):
        first = e.errors()[0] if e.errors() else {}
        where = [str(p) for p in first.get("loc", ()) if p != "body"]
        if first.get("type") == "json_invalid":
            message, param = f"the request body is not valid JSON: {first.get('ctx', {}).get('error', '')}".strip(": "), None
        elif not where and first.get("type") == "model_attributes_type":
            message, param = "the request body must be a JSON object, sent with Content-Type: application/json", None
        else:
            param = ".".join(where) or None
            message = f"{param or 'the request body'}: {first.get('msg', 'invalid value')}"
        return error_response(ApiError(400, message, param=param, code="invalid_value"),
                              getattr(request.state, "request_id", None))

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request: Request, e: StarletteHTTPException):
        kind = "not_found_error" if e.status_code == 404 else "invalid_request_error"
        message = f"no route {request.method} {request.url.path}" if e.status_code in (404, 405) else str(e.detail)
        return error_response(ApiError(e.status_code, message, kind=kind), getattr(request.state, "request_id", None))

    @app.exception_handler(Exception)
    async def on_bug(request: Request, e: Exception):
        log.exception("%s internal error", getattr(request.state, "request_id", "-"))
        return error_response(ApiError(500, f"internal error ({type(e).__name__}): please report it", kind="server_error"),
                              getattr(request.state, "request_id", None))

    async def authorized(request: Request) -> None:  # async: a sync dependency costs a worker thread per request
        if config.api_key is None:
            return
        given = request.headers.get("authorization", "")
        scheme, _, key = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(key.strip().encode(), config.api_key.encode()):
            raise ApiError(401, "missing or wrong API key: send the header 'Authorization: Bearer KEY'",
                           code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})

    def served_model(name: str) -> ServedModel:
        if name not in models:
            raise ApiError(404, f"the model {name[:200]!r} does not exist here: GET /v1/models lists "
                                f"{', '.join(models)}", param="model", code="model_not_found", kind="not_found_error")
        return models[name]

    def submit(served: ServedModel, prompt: list[int], body, max_tokens: int | None, logprobs: bool,
               top_logprobs: int, stop_ids: list[int], constraint_schema: dict | None | bool,
               loop: asyncio.AbstractEventLoop, queue: asyncio.Queue, tools: ToolUse | None = None,
               n: int | None = None, overrides: dict | None = None) -> list[Sequence]:
        context = served.context
        if len(prompt) >= context:
            raise ApiError(400, f"the prompt has {len(prompt)} tokens but this model's context is {context} "
                                "tokens: shorten the messages", param="messages", code="context_length_exceeded")
        if max_tokens is not None and len(prompt) + max_tokens > context:
            raise ApiError(400, f"this model's context is {context} tokens, but the request asks for "
                                f"{len(prompt) + max_tokens} ({len(prompt)} in the prompt, {max_tokens} to generate): "
                                "lower max_tokens or shorten the prompt", param="max_tokens",
                           code="context_length_exceeded")
        params = sampling_params(body, max_tokens or context - len(prompt), stop_ids, served.tok.vocab_size,
                                 logprobs, top_logprobs)
        if overrides:
            params = replace(params, **overrides)
        n = n or body.n or 1
        constraints = None
        if constraint_schema is not False:
            end = [served.fmt.end_of_turn_id] if served.fmt and served.fmt.end_of_turn_id is not None else stop_ids
            constraints = [Constraint.json_schema(served.tok, constraint_schema, end_ids=end) for _ in range(n)]
        wake = lambda seq: loop.call_soon_threadsafe(queue.put_nowait, seq)  # noqa: E731 (from the engine thread)
        try:
            return served.scheduler.submit(prompt, params, n, constraints,
                                           deadline=time.monotonic() + config.request_timeout_s, listener=wake,
                                           tools=tools)
        except QueueFull as e:
            raise ApiError(429, str(e), code="queue_full", kind="rate_limit_error",
                           headers={"Retry-After": str(e.retry_after)}) from None
        except ShuttingDown as e:
            raise ApiError(503, str(e), code="shutting_down", kind="server_error") from None

    async def wait_all(job: Job, request: Request, ended=None) -> None:
        """Until every sequence finishes (or `ended()` says the rest are not needed); a client that
        hangs up cancels them."""
        first = True
        ended = ended or (lambda: all(s.finished for s in job.seqs))
        while not ended():
            try:
                await asyncio.wait_for(job.queue.get(), timeout=0.5)
            except asyncio.TimeoutError:
                if await request.is_disconnected():
                    job.served.scheduler.cancel(job.seqs)
                    return
            if first and any(s.tokens for s in job.seqs):
                ttft.labels(job.served.name).observe(time.monotonic() - job.started)
                first = False
        latency.labels(job.served.name).observe(time.monotonic() - job.started)

    def usage(job: Job) -> dict:
        completion = sum(len(s.tokens) for s in job.seqs)
        return {"prompt_tokens": job.prompt_tokens, "completion_tokens": completion,
                "total_tokens": job.prompt_tokens + completion}

    def sse(obj) -> str:
        return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"

    async def stream(job: Job, base: dict, make_chunk, final_chunks, include_usage: bool) -> AsyncIterator[str]:
        """Server-sent events as the engine releases text; cancels the sequences if the client leaves."""
        sent_text = [0] * len(job.seqs)
        sent_tokens = [0] * len(job.seqs)
        first = True
        try:
            for chunk in make_chunk(None, None, None, None):  # the opening chunks (a chat's role)
                yield sse(chunk)
            while True:
                seq = await job.queue.get()
                changed = {seq.id}
                while not job.queue.empty():
                    changed.add(job.queue.get_nowait().id)
                for i, s in enumerate(job.seqs):
                    if s.id not in changed:
                        continue
                    if first and s.tokens:
                        ttft.labels(job.served.name).observe(time.monotonic() - job.started)
                        first = False
                    text = job.streamable(s)[sent_text[i]:]
                    tokens = len(s.tokens)
                    if text or (tokens > sent_tokens[i] and s.params.logprobs and not job.tools):
                        for chunk in make_chunk(i, text, sent_tokens[i], tokens):
                            yield sse(chunk)
                        sent_text[i] += len(text)
                        sent_tokens[i] = tokens
                if all(s.finished for s in job.seqs):
                    break
            latency.labels(job.served.name).observe(time.monotonic() - job.started)
            for i, s in enumerate(job.seqs):
                for chunk in final_chunks(i, s, sent_text[i], sent_tokens[i]):
                    yield sse(chunk)
            if include_usage:
                yield sse({**base, "choices": [], "usage": usage(job)})
            yield "data: [DONE]\n\n"
        finally:
            if not all(s.finished for s in job.seqs):
                job.served.scheduler.cancel(job.seqs)

    async def reasoned_reply(served: ServedModel, body: ChatCompletionRequest, request: Request,
                             plan: ReasoningPlan, messages: list[dict]):
        """A reply by a test-time strategy: its chains drawn as one group, the choice made, the
        reasoning kept apart (llmos/serve/reasoning.py)."""
        prompt = wrap(lambda: served.fmt.render_prompt(messages), "messages")
        loop, queue = asyncio.get_running_loop(), asyncio.Queue()
        seqs = wrap(lambda: submit(served, prompt, body, body.max_completion_tokens or body.max_tokens, True,
                                   body.top_logprobs or 0 if body.logprobs else 0, served.fmt.stop_ids, False,
                                   loop, queue, n=plan.chains, overrides=plan.sampling(body.temperature, body.top_p)),
                    "messages")
        job = Job(served, seqs, queue, len(prompt))
        rid = request.state.request_id
        base = {"id": f"chatcmpl-{rid}", "object": "chat.completion.chunk", "created": int(time.time()),
                "model": served.name, "system_fingerprint": served.fingerprint}

        def finished() -> list[Sequence]:
            return [s for s in seqs if s.finish_reason in ("stop", "length")]

        counted = -1  # finished chains when the vote was last counted: recount only when that changes

        def ended() -> bool:
            """Every chain done, or the vote settled (the rest are cancelled)."""
            nonlocal counted
            if all(s.finished for s in seqs):
                return True
            done = finished()
            if len(done) == counted:
                return False
            counted = len(done)
            if plan.done(done):
                served.scheduler.cancel([s for s in seqs if not s.finished])
                return True
            return False

        def message(seq: Sequence, votes: dict, streamed: str = "") -> tuple[dict, str]:
            """The choice's message (reasoning apart) and its content."""
            text = served.visible(seq.text)
            reasoning, content = split_reply(text)
            if streamed and not reasoning.startswith(streamed):  # no "Answer:" line: what was shown stays reasoning
                reasoning, content = streamed, text[len(streamed):].strip()
            out: dict[str, Any] = {"role": "assistant", "content": content, "reasoning_content": reasoning}
            if votes:
                out["llmos_votes"] = votes
            return out, content

        def reasoned_usage(contents: list[str]) -> dict:
            out = usage(job)
            answer_tokens = sum(len(served.tok.encode(c)) for c in contents)
            out["completion_tokens_details"] = {"reasoning_tokens": max(out["completion_tokens"] - answer_tokens, 0)}
            return out

        def lp(seq: Sequence) -> dict | None:
            return chat_logprobs(served.tok, seq, 0, len(seq.tokens)) if body.logprobs else None

        if body.stream:
            async def events() -> AsyncIterator[str]:
                streamed = ""
                try:
                    yield sse({**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                                    "logprobs": None, "finish_reason": None}]})
                    while not ended():
                        try:
                            await asyncio.wait_for(queue.get(), timeout=0.5)
                        except asyncio.TimeoutError:
                            continue
                        if plan.chains == 1:  # one chain: its reasoning streams as it is written
                            shown = streamed_reasoning(served.visible(seqs[0].text))
                            if len(shown) > len(streamed):
                                yield sse({**base, "choices": [{"index": 0, "delta": {
                                    "reasoning_content": shown[len(streamed):]}, "logprobs": None,
                                    "finish_reason": None}]})
                                streamed = shown
                    chosen = plan.choose(finished())
                    contents = []
                    for i, (seq, votes) in enumerate(chosen):
                        msg, content = message(seq, votes, streamed if plan.chains == 1 else "")
                        contents.append(content)
                        delta = {"reasoning_content": msg["reasoning_content"][len(streamed) if plan.chains == 1 else 0:],
                                 "content": content, **({"llmos_votes": votes} if votes else {})}
                        yield sse({**base, "choices": [{"index": i, "delta": delta, "logprobs": lp(seq),
                                                        "finish_reason": None}]})
                        yield sse({**base, "choices": [{"index": i, "delta": {}, "logprobs": None,
                                                        "finish_reason": finish_reason(seq)}]})
                    if body.stream_options and body.stream_options.include_usage:
                        yield sse({**base, "choices": [], "usage": reasoned_usage(contents)})
                    yield "data: [DONE]\n\n"
                finally:
                    if not all(s.finished for s in seqs):
                        served.scheduler.cancel(seqs)

            return StreamingResponse(events(), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Request-Id": rid})

        await wait_all(job, request, ended)
        choices, contents = [], []
        for i, (seq, votes) in enumerate(plan.choose(finished())):
            msg, content = message(seq, votes)
            contents.append(content)
            choices.append({"index": i, "message": msg, "finish_reason": finish_reason(seq), "logprobs": lp(seq)})
        if not choices:
            raise ApiError(504, "every chain was stopped before it finished (the request timed out)",
                           code="timeout", kind="server_error")
        return {**base, "object": "chat.completion", "choices": choices, "usage": reasoned_usage(contents)}

    # ----- routes -----

    @app.get("/health")
    async def health():
        return {"status": "ok", "models": list(models)}

    @app.get("/metrics", dependencies=[Depends(authorized)])
    async def metrics():
        return Response(generate_latest(registry), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/v1/models", dependencies=[Depends(authorized)])
    async def list_models():
        return {"object": "list", "data": [model_card(m) for m in models.values()]}

    @app.get("/v1/models/{name:path}", dependencies=[Depends(authorized)])
    async def get_model(name: str):
        return model_card(served_model(name))

    def model_card(m: ServedModel) -> dict:
        return {"id": m.name, "object": "model", "created": m.created, "owned_by": "llmos",
                "context_length": m.context, "chat": m.fmt is not None}

    @app.post("/v1/chat/completions", dependencies=[Depends(authorized)])
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        served = served_model(body.model)
        if served.fmt is None:
            raise ApiError(400, f"the model {served.name!r} cannot chat: {served.fmt_error}; use /v1/completions",
                           param="model", code="no_chat_format")
        messages = [m.as_chat_message() for m in body.messages]
        plan = wrap(lambda: reasoning_plan(body.reasoning_effort, body.n, body.best_of,
                                           served.scheduler.engine.max_batch),
                    "best_of" if body.best_of is not None else "reasoning_effort")
        if plan is not None:
            if body.tools or (body.response_format is not None and body.response_format.type != "text"):
                raise ApiError(400, "reasoning_effort and best_of draw free-text chains: they cannot be combined "
                                    "with tools or response_format", param="reasoning_effort")
            if plan.reasoning_prompt:
                messages = with_reasoning_prompt(messages, served.fmt.native)
            return await reasoned_reply(served, body, request, plan, messages)
        tools = None
        if body.tools and body.tool_choice != "none":
            tools = wrap(lambda: validate_tools(body.tools), "tools")
            messages = with_tools_prompt(messages, offer_tools(served.fmt, tools))
        server_tools = tool_uses.get(served.name) if not body.tools and body.tool_choice != "none" else None
        if server_tools is not None:  # the server's own tools, run in the reply (llmos/infer/tooluse.py)
            messages = with_tools_prompt(messages, server_tools.system_prompt())
        forced = wrap(lambda: forced_call_schema(body.tool_choice, tools), "tool_choice") if tools else None
        schema: dict | None | bool = False
        if forced is not None:
            problem = schema_error(forced)
            if problem:
                raise ApiError(400, f"tool_choice: the forced function's parameters: {problem}", param="tools")
            schema = forced
        elif body.response_format is not None and body.response_format.type != "text":
            spec = body.response_format.json_schema
            if body.response_format.type == "json_schema" and (spec is None or spec.schema_ is None):
                raise ApiError(400, "response_format json_schema needs {\"json_schema\": {\"name\", \"schema\"}}",
                               param="response_format")
            schema = spec.schema_ if body.response_format.type == "json_schema" else None
            problem = schema_error(schema) if schema is not None else None
            if problem:
                raise ApiError(400, f"response_format: {problem}", param="response_format")
        prompt = wrap(lambda: served.fmt.render_prompt(messages), "messages")
        loop, queue = asyncio.get_running_loop(), asyncio.Queue()
        max_tokens = body.max_completion_tokens or body.max_tokens
        seqs = wrap(lambda: submit(served, prompt, body, max_tokens, bool(body.logprobs),
                                   body.top_logprobs or 0 if body.logprobs else 0, served.fmt.stop_ids, schema,
                                   loop, queue, server_tools), "messages")
        job = Job(served, seqs, queue, len(prompt), tools, forced is not None, server_tools is not None)
        rid = request.state.request_id
        base = {"id": f"chatcmpl-{rid}", "object": "chat.completion.chunk", "created": int(time.time()),
                "model": served.name, "system_fingerprint": served.fingerprint}

        if body.stream:
            def make_chunk(i, text, start, end):
                if i is None:
                    return [{**base, "choices": [{"index": k, "delta": {"role": "assistant", "content": ""},
                                                  "logprobs": None, "finish_reason": None}]} for k in range(len(seqs))]
                lp = chat_logprobs(served.tok, seqs[i], start, end) if seqs[i].params.logprobs else None
                return [{**base, "choices": [{"index": i, "delta": {"content": text}, "logprobs": lp,
                                              "finish_reason": None}]}]

            def final_chunks(i, seq, sent_text, sent_tokens):
                content, calls, reason = job.result(seq)
                delta: dict[str, Any] = {}
                rest = (content or "")[sent_text:]
                if rest:
                    delta["content"] = rest
                if calls:
                    delta["tool_calls"] = [{"index": k, **call} for k, call in enumerate(calls)]
                if seq.tool_calls:
                    delta["llmos_tool_calls"] = tool_records(seq)
                lp = chat_logprobs(served.tok, seq, sent_tokens, len(seq.tokens)) if seq.params.logprobs else None
                out = []
                if delta or lp:
                    out.append({**base, "choices": [{"index": i, "delta": delta, "logprobs": lp, "finish_reason": None}]})
                out.append({**base, "choices": [{"index": i, "delta": {}, "logprobs": None, "finish_reason": reason}]})
                return out

            include = bool(body.stream_options and body.stream_options.include_usage)
            return StreamingResponse(stream(job, base, make_chunk, final_chunks, include), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Request-Id": rid})

        await wait_all(job, request)
        choices = []
        for i, seq in enumerate(seqs):
            content, calls, reason = job.result(seq)
            message: dict[str, Any] = {"role": "assistant", "content": content}
            if calls:
                message["tool_calls"] = calls
            if seq.tool_calls:
                message["llmos_tool_calls"] = tool_records(seq)
            choices.append({"index": i, "message": message, "finish_reason": reason,
                            "logprobs": chat_logprobs(served.tok, seq, 0, len(seq.tokens)) if seq.params.logprobs else None})
        return {**base, "object": "chat.completion", "choices": choices, "usage": usage(job)}

    @app.post("/v1/completions", dependencies=[Depends(authorized)])
    async def completions(body: CompletionRequest, request: Request):
        served = served_model(body.model)
        if body.suffix:
            raise ApiError(400, "suffix (fill-in-the-middle) is not supported by llmos models", param="suffix")
        if isinstance(body.prompt, str):
            if not body.prompt:
                raise ApiError(400, "prompt is empty: give some text (or a list of token ids)", param="prompt")
            prompt = served.tok.encode(body.prompt, bos=True)
        else:
            prompt = list(body.prompt)
        loop, queue = asyncio.get_running_loop(), asyncio.Queue()
        top = body.logprobs or 0
        seqs = wrap(lambda: submit(served, prompt, body, body.max_tokens, body.logprobs is not None, top,
                                   list(served.tok.stop_ids), False, loop, queue), "prompt")
        job = Job(served, seqs, queue, len(prompt))
        echo = served.tok.decode(prompt) if body.echo else ""
        rid = request.state.request_id
        base = {"id": f"cmpl-{rid}", "object": "text_completion", "created": int(time.time()), "model": served.name}

        def lp(seq, start, end, offset):
            return legacy_logprobs(served.tok, seq, start, end, offset) if body.logprobs is not None else None

        if body.stream:
            def make_chunk(i, text, start, end):
                if i is None:
                    return [{**base, "choices": [{"index": k, "text": echo, "logprobs": None, "finish_reason": None}]}
                            for k in range(len(seqs))] if echo else []
                return [{**base, "choices": [{"index": i, "text": text, "logprobs": lp(seqs[i], start, end, 0),
                                              "finish_reason": None}]}]

            def final_chunks(i, seq, sent_text, sent_tokens):
                return [{**base, "choices": [{"index": i, "text": served.visible(seq.text)[sent_text:],
                                              "logprobs": lp(seq, sent_tokens, len(seq.tokens), 0),
                                              "finish_reason": finish_reason(seq)}]}]

            include = bool(body.stream_options and body.stream_options.include_usage)
            return StreamingResponse(stream(job, base, make_chunk, final_chunks, include), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Request-Id": rid})
        await wait_all(job, request)
        choices = [{"index": i, "text": echo + served.visible(seq.text), "logprobs": lp(seq, 0, len(seq.tokens), len(echo)),
                    "finish_reason": finish_reason(seq)} for i, seq in enumerate(seqs)]
        return {**base, "choices": choices, "usage": usage(job)}

    # ----- the chat page -----

    @app.get("/", include_in_schema=False)
    async def index():
        return FileResponse(STATIC / "index.html")

    @app.get("/ui/config.json", include_in_schema=False)
    async def ui_config():
        return {"image_origins": config.image_origins, "auth_required": config.api_key is not None}

    if STATIC.is_dir():
        app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


KNOWN_PATHS = {"/", "/health", "/metrics", "/v1/models", "/v1/chat/completions", "/v1/completions",
               "/ui/config.json", "/openapi.json", "/docs"}


def wrap(work, param: str):
    """work(), with an LlmosError (a user's fault found below the protocol layer) as a 400."""
    try:
        return work()
    except LlmosError as e:
        raise ApiError(400, str(e), param=param) from None


def with_tools_prompt(messages: list[dict], text: str) -> list[dict]:
    """The tools' description joins the system message (or becomes one)."""
    if messages and messages[0]["role"] == "system":
        return [{**messages[0], "content": f"{messages[0]['content'] or ''}\n\n{text}".strip()}, *messages[1:]]
    return [{"role": "system", "content": text}, *messages]

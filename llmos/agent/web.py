"""The LLM OS page: one kernel (one session) behind a small web app, for `llmos os --web PORT`.

    app = make_os_app(kernel)                    # a FastAPI app serving this one kernel
    serve_os(kernel, "127.0.0.1", 8080)          # the same under uvicorn; open http://127.0.0.1:8080/

The page (llmos/serve/static/os.html, with os.js, os.css and the shared api.js: plain HTML and JavaScript, no build
step) shows the chat (tool calls folded, with their results), a status line (RAM used of the
budget, pages in and out, page faults, recall and archival counts, and a red badge while untrusted
text is in the context window) and an inspector listing what is in the window block by block, with
each block's provenance and tokens. An image the user uploads is read by OCR (`read_image`) and
enters the window as untrusted "image text".

API (JSON; errors are 4xx or 503 `{"error": {"message", "type", "param", "code"}}`, as in `llmos serve`):
    POST /api/turn {"text": "..."}     {"reply", "calls", "paged_in": [texts], "evicted", "status"}
    GET  /api/inspect                  {"blocks": [{"name", "provenance", "tokens", "text", "untrusted"}],
                                        "status"}
    POST /api/image?name=FILE          the image's bytes as the body -> {"text", "name", "evicted", "status"}
    GET  /metrics                      the kernel's counters and RAM, Prometheus text format
    GET  /health                       {"status": "ok", "session"}
"status" is {"ram_used", "ram_budget", "pages_in", "pages_out", "page_faults", "evictions", "turns",
"tool_calls", "declined", "summaries" (every counter of the kernel's), "recall", "archival",
"tainted": [sources], "paging", "line"};
"evicted" counts every message the request paged out (the kernel's pages_out counter, before and after).
A bad request (no text, text not a string, a body that is no image) is a 400 or 415 naming the
problem; the model or the OCR failing (an LlmosError) is a 503 with the kernel's message.

The kernel is not thread-safe: every call into it holds one lock (give `lock` to share it with
another user of the kernel) and runs in a worker thread, off the event loop. /metrics does not wait
for a turn in progress: it reads the counters as they stand and the RAM figures of the last request
that finished. The image is sent as raw bytes, not a multipart form, so no form parser is needed.
"""
from __future__ import annotations

import io
import logging
import sys
import threading
import unicodedata
from pathlib import Path

from starlette.requests import Request  # module-level: FastAPI resolves route annotations in this module's globals

from llmos.agent.kernel import is_untrusted
from llmos.agent.peripherals import read_image
from llmos.common import LlmosError

STATIC = Path(__file__).parents[1] / "serve" / "static"  # one folder for every page of the server
MAX_BODY_BYTES = 20 << 20  # an image from a phone's camera fits
MAX_NAME_CHARS = 120
log = logging.getLogger("llmos.agent.web")

# counter -> help for /metrics, each as llmos_os_<counter>_total (a counter the kernel adds later is
# shown too, with a plain help text)
COUNTER_HELP = {
    "pages_in": "memories paged back into the context window",
    "pages_out": "messages paged out of the context window",
    "page_faults": "turns on which something out of the window had to be paged in",
    "evictions": "times the window was paged down to its low-water mark",
    "summaries": "times the running summary of evicted turns was rewritten",
    "turns": "turns taken",
    "tool_calls": "tool calls the model made",
    "declined": "privileged tool calls declined while untrusted text was in the window",
}


def kernel_status(kernel) -> dict:
    """The figures of the status line, as data (call it holding the kernel's lock)."""
    counters = dict(kernel.counters)
    used = kernel.used_tokens()
    status = {"ram_used": used, "ram_budget": kernel.config.budget,
              **{name: 0 for name in COUNTER_HELP}, **counters,
              "recall": kernel.store.count("recall"), "archival": kernel.store.count("archival"),
              "tainted": kernel.tainted(), "paging": kernel.config.paging}
    status["line"] = (f"RAM {used}/{status['ram_budget']} tok · pages in {status['pages_in']} · "
                      f"out {status['pages_out']} · faults {status['page_faults']} · recall {status['recall']} · "
                      f"archival {status['archival']}" + ("" if status["paging"] else " · paging off"))
    return status


def block_json(block) -> dict:
    return {"name": block.name, "provenance": block.provenance, "tokens": block.tokens, "text": block.text,
            "untrusted": is_untrusted(block.provenance)}


def make_os_app(kernel, lock: threading.Lock | None = None):
    """A FastAPI app serving the page and API of this one kernel."""
    from fastapi import FastAPI
    from fastapi.responses import FileResponse, Response
    from fastapi.staticfiles import StaticFiles
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
    from starlette.concurrency import run_in_threadpool

    from llmos.serve.app import ApiError, BodyLimit, install_error_handlers

    lock = lock or threading.Lock()
    last = {"status": None}  # the status after the last request that held the lock (for /metrics)

    def locked(work):
        """work() with the kernel to itself, and the status after it; an LlmosError (the model or
        endpoint failing, a context too small) is a 503 with its message."""
        with lock:
            try:
                out = work()
            except LlmosError as e:
                raise ApiError(503, str(e), code="kernel_error", kind="server_error") from None
            finally:
                try:
                    last["status"] = kernel_status(kernel)
                except Exception:  # the status of a kernel that just failed is not worth a second error
                    log.exception("cannot compute the kernel's status")
            return out, last["status"]

    def paged_out(work, *args):
        """work(*args) and the messages it paged out, counted by the kernel's counter: TurnResult.evicted
        leaves out what the turn evicts after the reply, and attach() says nothing."""
        before = kernel.counters.get("pages_out", 0)
        out = work(*args)
        return out, kernel.counters.get("pages_out", 0) - before

    locked(lambda: None)

    class KernelCollector:
        def collect(self):
            counters = dict(kernel.counters)  # live: a turn in progress moves them
            extra = {name: f"the kernel's {name} counter" for name in counters if name not in COUNTER_HELP}
            for name, text in {**COUNTER_HELP, **extra}.items():
                family = CounterMetricFamily(f"llmos_os_{name}", text)
                family.add_metric([], counters.get(name, 0))
                yield family
            status = last["status"] or {}
            for name, text in (("ram_used_tokens", "tokens the context window holds (after the last request)"),
                               ("ram_budget_tokens", "tokens of context window the kernel may fill")):
                family = GaugeMetricFamily(f"llmos_os_{name}", text)
                family.add_metric([], status.get(name.removesuffix("_tokens"), 0))
                yield family
            family = GaugeMetricFamily("llmos_os_memories", "messages and notes kept in memory, by tier",
                                       labels=["tier"])
            for tier in ("recall", "archival"):
                family.add_metric([tier], status.get(tier, 0))
            yield family

    registry = CollectorRegistry()
    registry.register(KernelCollector())

    app = FastAPI(title="llmos os", version="1", description="One LLM OS session: chat, status and inspector.")
    app.add_middleware(BodyLimit, limit=MAX_BODY_BYTES)

    install_error_handlers(app, log)

    def fits(text: str, what: str, param: str | None) -> None:
        """Text longer than the whole window would push everything else out and still not fit."""
        room = kernel.config.budget - kernel.config.reply_tokens
        tokens = kernel.model.count(text)
        if tokens > room:
            raise ApiError(400, f"{what} is {tokens:,} tokens, more than the {room:,} the context window has "
                                f"room for (budget {kernel.config.budget:,}): shorten it", param=param,
                           code="too_long")

    # ----- the page -----

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(STATIC / "os.html")

    @app.get("/health")
    async def health():
        return {"status": "ok", "session": kernel.store.path.stem}

    # ----- the API -----

    @app.post("/api/turn")
    async def turn(request: Request):
        try:
            body = await request.json()
        except ValueError:
            raise ApiError(400, "the request body is not valid JSON: send {\"text\": \"...\"} with "
                                "Content-Type: application/json", code="invalid_json") from None
        if not isinstance(body, dict):
            raise ApiError(400, "the request body must be a JSON object: {\"text\": \"...\"}", code="invalid_value")
        text = body.get("text")
        if text is None:
            raise ApiError(400, "text is missing: send {\"text\": \"your message\"}", param="text",
                           code="missing")
        if not isinstance(text, str):
            raise ApiError(400, f"text must be a string, not {type(text).__name__}", param="text",
                           code="invalid_type")
        if not text.strip():
            raise ApiError(400, "text is empty: type a message", param="text", code="empty")
        await run_in_threadpool(fits, text, "the message", "text")  # a long text takes a while to count
        (result, evicted), status = await run_in_threadpool(locked, lambda: paged_out(kernel.turn, text))
        return {"reply": result.reply, "calls": result.calls, "paged_in": [m.text for m in result.paged_in],
                "evicted": evicted, "status": status}

    @app.get("/api/inspect")
    def inspect():
        blocks, status = locked(kernel.inspect)
        return {"blocks": [block_json(b) for b in blocks], "status": status}

    @app.post("/api/image")
    async def image(request: Request, name: str = "image"):
        if request.headers.get("content-type", "").startswith("multipart/"):
            raise ApiError(415, "post the image's bytes as the request body (?name=FILE names it), "
                                "not a multipart form", code="multipart")
        data = await request.body()
        if not data:
            raise ApiError(400, "the request body is empty: post the image's bytes", code="empty")
        name = clean_name(name)
        await run_in_threadpool(check_image, data, name)
        try:
            text = await run_in_threadpool(read_image, data)
        except LlmosError as e:  # it is an image (checked above): the OCR itself is missing or failing
            raise ApiError(503, str(e), code="ocr_unavailable", kind="server_error") from None
        if not text.strip():
            raise ApiError(422, f"no text was found in {name}: nothing entered the context window",
                           code="no_text")
        await run_in_threadpool(fits, text, f"the text of {name}", None)
        (_, evicted), status = await run_in_threadpool(
            locked, lambda: paged_out(kernel.attach, text, "image text", name))
        return {"text": text, "name": name, "evicted": evicted, "status": status}

    def check_image(data: bytes, name: str) -> None:
        try:
            from PIL import Image
        except ImportError:
            raise ApiError(503, "reading images needs pillow: pip install 'llmos[os]'", code="ocr_unavailable",
                           kind="server_error") from None
        try:
            with Image.open(io.BytesIO(data)) as img:
                img.verify()
        except Exception as e:  # PIL raises many kinds for bytes that are no image it knows
            raise ApiError(415, f"{name} is not an image (give a PNG, JPEG or TIFF): {e}",
                           code="not_an_image") from None

    @app.get("/metrics")
    async def metrics():
        return Response(generate_latest(registry), media_type="text/plain; version=0.0.4; charset=utf-8")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def clean_name(name: str) -> str:
    """An uploaded file's name as the window shows it: no folders, no control characters, not too long."""
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(c for c in name if unicodedata.category(c)[0] != "C").strip()
    if len(name) > MAX_NAME_CHARS:
        name = name[:MAX_NAME_CHARS - 1] + "…"
    return name or "image"


def serve_os(kernel, host: str = "127.0.0.1", port: int = 8080, lock: threading.Lock | None = None) -> None:
    """Run the page for this kernel under uvicorn until Ctrl-C (or SIGTERM)."""
    import uvicorn
    if not 0 <= port <= 65535:
        raise LlmosError(f"the port must be between 0 and 65535, not {port}")
    if host not in ("127.0.0.1", "localhost", "::1"):
        print(f"llmos os: warning: listening on {host}: anyone who can reach this machine can talk to this "
              "session and read its memory", file=sys.stderr)
    app = make_os_app(kernel, lock)
    print(f"llmos os: http://{host}:{port}/ (session {kernel.store.path.stem}); Ctrl-C stops",
          file=sys.stderr, flush=True)
    uvicorn.run(app, host=host, port=port, access_log=False, log_level="warning", timeout_graceful_shutdown=30)

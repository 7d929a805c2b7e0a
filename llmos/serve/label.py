"""`llmos label`: a web page where people compare two sampled answers to one prompt, and its server.

    llmos label --model runs/speedrun-cpu                             # one model at temperatures 0.7 and 1.2
    llmos label --model sft=runs/x/sft --model base=runs/x/base       # two models, each at 0.7
    llmos label --model M --prompts prompts.jsonl --db labels.sqlite --port 8000
    open http://127.0.0.1:8000/                                       # each labeler gives a name once

Each prompt becomes one pair: answer A and answer B, sampled from one model at two temperatures or
from two models (each at the first temperature). Which side gets which source is random per pair
(seeded by --seed) and recorded; the page never shows it. Labelers pick "A is better", "B is
better", "Tie" or "Skip" (keys 1/a, 2/b, t, s), or edit an answer into an ideal one, which is stored
as an SFT example. Everyone labels the same pairs in the same order, so two labelers overlap and
their agreement can be measured (`llmos label stats`); a labeler never sees a pair twice unless they
go back to change their mind, and the latest label counts.

Prompts: --prompts FILE, JSONL (`.jsonl`, `.json`, `.ndjson`: a line is `{"prompt": "text"}` or
`{"messages": [...]}`; a conversation ending with assistant replies is asked without them) or plain
text (any other name: one prompt a line); else the opening user turns of the built-in conversation
sources' eval split (llmos/data/conversations.py), 50 per source, interleaved. Prompts that leave
the model too little context for an answer are left out, with a count.

Answers come from the serving engine (one Scheduler thread per model, as in `llmos serve`): a
labeler's next pair is sampled on demand and the two after it are sampled ahead, so the page rarely
waits. A pair is stored in the database (llmos/data/labels.py) before it is shown, and a pair made
in an earlier session for the same prompt and sources is used again, not sampled anew.

API (JSON; errors are 4xx `{"error": {"message", "type", "param", "code"}}`):
    GET  /api/next?labeler=NAME     {"pair": {"id", "prompt", "a", "b", "your_label"} or null, "progress"}
    GET  /api/pairs/ID?labeler=NAME {"pair", "progress"} (a pair again, to change one's mind)
    POST /api/labels {"pair_id", "labeler", "choice": "a"|"b"|"tie"|"skip"} -> {"label_id", ...}
    POST /api/edits  {"pair_id", "labeler", "side": "a"|"b", "text"} -> {"edit_id", ...}
    GET  /api/stats                 counts and agreement;  GET /health  {"status", "pairs_in_progress"}
A label or an edit is answered only once its transaction has committed.
"""
from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import json
import logging
import random
import sys
import threading
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel
from starlette.requests import Request  # module-level: FastAPI resolves route annotations in this module's globals

from llmos.common import LlmosError, llmos_home
from llmos.data.labels import LabelStore, Side, UnknownPair, check_labeler

STATIC = Path(__file__).parent / "static"
DEFAULT_DB = "labels.sqlite"  # under LLMOS_HOME
DEFAULT_TEMPERATURES = "0.7,1.2"
DEFAULT_MAX_TOKENS = 256
PROMPTS_PER_SOURCE = 50  # built-in prompts per conversation source (without --limit)
PREPARE_AHEAD = 2  # pairs sampled ahead of the one a labeler is shown
MIN_REPLY_TOKENS = 8  # a prompt must leave at least this much of the context for the answer
MAX_LEN = 4096  # positions per sequence in the engine: at most the model's context
MAX_BATCH = 8  # sequences decoded together per model (a few labelers' pairs and those ahead)
MAX_BODY_BYTES = 1 << 20
JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")
log = logging.getLogger("llmos.label")


# ----- prompts -----

def load_prompts(path: str | Path) -> list[list[dict]]:
    """Prompts (each a list of messages ending with a user turn) from a JSONL or plain-text file;
    LlmosError naming the file and line of the first bad one."""
    from llmos.chat import validate_messages
    from llmos.data.sources import display_path, lone_surrogate
    path = Path(path).expanduser()
    name = display_path(path)
    if not path.is_file():
        raise LlmosError(f"prompt file {name} does not exist")
    jsonl = path.suffix.lower() in JSONL_SUFFIXES
    prompts = []
    with open(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8").strip()
            except UnicodeDecodeError:
                raise LlmosError(f"{name}:{number}: not UTF-8 text: save the file as UTF-8") from None
            if not line:
                continue
            if not jsonl:
                prompts.append([{"role": "user", "content": line}])
                continue
            try:
                obj = json.loads(line)
                messages = _prompt_messages(obj)
                if why := lone_surrogate(json.dumps(messages, ensure_ascii=False)):
                    raise LlmosError(why)
                validate_messages(messages, for_prompt=True)
            except ValueError as e:
                raise LlmosError(f"{name}:{number}: not a JSON line ({e}); a line is {{\"prompt\": \"...\"}} "
                                 "or {\"messages\": [...]}") from None
            except LlmosError as e:
                raise LlmosError(f"{name}:{number}: {e}") from None
            prompts.append(messages)
    if not prompts:
        raise LlmosError(f"prompt file {name} holds no prompt")
    return prompts


def _prompt_messages(obj) -> list[dict]:
    if isinstance(obj, dict) and isinstance(obj.get("prompt"), str) and obj["prompt"].strip():
        return [{"role": "user", "content": obj["prompt"].strip()}]
    if isinstance(obj, dict) and isinstance(obj.get("messages"), list):
        messages = list(obj["messages"])
        while messages and isinstance(messages[-1], dict) and messages[-1].get("role") == "assistant":
            messages.pop()  # an SFT conversation: ask its question, not its answer
        return messages
    raise LlmosError('expected {"prompt": "non-empty text"} or {"messages": [...]}')


def default_prompts(sources: list[str], seed: int = 0, limit: int | None = None) -> list[list[dict]]:
    """The opening user turn (with any system message before it) of each eval conversation of the
    built-in sources, interleaved source by source; a source that cannot be built is skipped, saying why."""
    from llmos.data.conversations import SOURCES
    if unknown := [s for s in sources if s not in SOURCES]:
        raise LlmosError(f"unknown conversation source(s) {', '.join(unknown)}; valid: {', '.join(SOURCES)}")
    per_source = []
    for name in sources:
        try:
            convs = SOURCES[name].make("eval", seed, limit or PROMPTS_PER_SOURCE)
        except LlmosError as e:
            print(f"llmos label: skipping the prompts of {name}: {e}", file=sys.stderr, flush=True)
            continue
        per_source.append([_opening(c["messages"]) for c in convs])
    prompts = _interleave(per_source)
    if not prompts:
        raise LlmosError(f"no built-in source gave prompts ({', '.join(sources)}): give --prompts FILE")
    return prompts[:limit] if limit else prompts


def _opening(messages: list[dict]) -> list[dict]:
    first_user = next(i for i, m in enumerate(messages) if m["role"] == "user")
    return [{"role": m["role"], "content": m["content"]} for m in messages[:first_user + 1]]


def _interleave(groups: list[list]) -> list:
    out = []
    for i in range(max((len(g) for g in groups), default=0)):
        out += [g[i] for g in groups if i < len(g)]
    return out


def unique(prompts: list[list[dict]]) -> list[list[dict]]:
    from llmos.data.labels import canonical_prompt
    seen, out = set(), []
    for p in prompts:
        key = canonical_prompt(p)
        if key not in seen:
            seen.add(key)
            out.append(p)
    return out


# ----- sampling pairs -----

@dataclass
class Pending:
    """A pair being sampled: its two sequences and the future its pair id arrives in."""
    index: int
    sides: tuple[Side, Side]
    seqs: list
    future: concurrent.futures.Future
    done: bool = False


class PairMaker:
    """Turns prompt i into a stored pair, once, on demand: `ensure(i)` is a future of its pair id."""

    def __init__(self, store: LabelStore, prompts: list[list[dict]], served: dict, sources: tuple[Side, Side],
                 max_tokens: int, seed: int):
        self.store, self.prompts, self.served, self.sources = store, prompts, served, sources
        self.max_tokens, self.seed = max_tokens, seed
        self.pair_ids: list[int | None] = [store.find_pair(p, *sources) for p in prompts]
        self._pending: dict[int, Pending] = {}
        self._lock = threading.Lock()
        self._closing = False

    @property
    def in_progress(self) -> int:
        return len(self._pending)

    def todo(self, labeler: str) -> list[int]:
        """The prompts this labeler has not labeled yet, in order."""
        done = self.store.labels_by(labeler)
        return [i for i, pid in enumerate(self.pair_ids) if pid is None or pid not in done]

    def ensure(self, index: int) -> concurrent.futures.Future:
        with self._lock:
            if self.pair_ids[index] is not None:
                future = concurrent.futures.Future()
                future.set_result(self.pair_ids[index])
                return future
            if index in self._pending:
                return self._pending[index].future
            pending = self._start(index)
            if not pending.done:  # refused at once (the error is in its future): the next call tries again
                self._pending[index] = pending
            return pending.future

    def _start(self, index: int) -> Pending:
        from llmos.infer.sampling import SamplingParams
        rng = random.Random(f"{self.seed}:{index}")  # the same sides and samples whatever the order
        sides = self.sources[::-1] if rng.random() < 0.5 else self.sources
        pending = Pending(index, sides, [], concurrent.futures.Future())
        try:
            for side in sides:
                served = self.served[side.model]
                prompt = served.fmt.render_prompt(self.prompts[index])
                params = SamplingParams(max_tokens=min(self.max_tokens, served.context - len(prompt)),
                                        temperature=side.temperature, stop_ids=served.fmt.stop_ids,
                                        seed=rng.randrange(1 << 31))
                pending.seqs += served.scheduler.submit(prompt, params, listener=lambda _, p=pending: self._check(p))
        except Exception as e:  # a prompt the engine refuses, a full queue, shutting down
            for seq in pending.seqs:
                seq.cancel()
            pending.future.set_exception(e)
            pending.done = True
        return pending

    def _check(self, pending: Pending) -> None:
        """From an engine thread: once both answers are finished, store the pair and resolve the future."""
        with self._lock:
            if pending.done or len(pending.seqs) < 2 or not all(s.finished for s in pending.seqs):
                return
            pending.done = True
        try:
            if any(s.finish_reason not in ("stop", "length") for s in pending.seqs):
                raise LlmosError(f"sampling stopped early ({', '.join(s.finish_reason for s in pending.seqs)})")
            answers = [self.served[side.model].visible(seq.text).strip()
                       for side, seq in zip(pending.sides, pending.seqs)]
            pair_id = self.store.add_pair(self.prompts[pending.index], *answers, *pending.sides)
        except Exception as e:
            if not self._closing:
                log.error("prompt %d: could not make its pair: %s", pending.index, e)
            with self._lock:
                del self._pending[pending.index]
            pending.future.set_exception(e)
            return
        with self._lock:
            self.pair_ids[pending.index] = pair_id
            del self._pending[pending.index]
        pending.future.set_result(pair_id)

    def cancel_all(self) -> None:
        with self._lock:
            self._closing = True
            for pending in self._pending.values():
                for seq in pending.seqs:
                    seq.cancel()


# ----- the app -----

class LabelBody(BaseModel):  # fields optional, so that a missing one gets a message of ours
    pair_id: int | None = None
    labeler: str | None = None
    choice: str | None = None


class EditBody(BaseModel):
    pair_id: int | None = None
    labeler: str | None = None
    side: str | None = None
    text: str | None = None


def create_label_app(store: LabelStore, maker: PairMaker):
    from fastapi import FastAPI
    from fastapi.responses import FileResponse
    from fastapi.staticfiles import StaticFiles

    from llmos.serve.app import ApiError, BodyLimit, install_error_handlers

    @asynccontextmanager
    async def lifespan(app):
        for served in maker.served.values():
            served.scheduler.start()
        yield
        maker.cancel_all()  # answers being sampled ahead: nobody waits for them now
        for served in maker.served.values():
            served.scheduler.stop(timeout=60)
        store.close()

    app = FastAPI(title="llmos label", version="1", lifespan=lifespan,
                  description="Compare two answers to a prompt; the labels go to SQLite.")
    app.add_middleware(BodyLimit, limit=MAX_BODY_BYTES)

    install_error_handlers(app, log)

    def labeler_name(name) -> str:
        try:
            return check_labeler(name)
        except LlmosError as e:
            raise ApiError(400, str(e), param="labeler", code="missing_labeler") from None

    def progress(labeler: str) -> dict:
        counts = store.counts(labeler)
        return {"you": counts["you"]["labels"], "your_skips": counts["you"]["skips"],
                "your_edits": counts["you"]["edits"], "everyone": counts["labels"], "labelers": counts["labelers"],
                "edits": counts["edits"], "left": len(maker.todo(labeler)), "total": len(maker.prompts)}

    def shown(pair: dict, labeler: str) -> dict:
        """What the page sees of a pair: never where the answers came from (the labeling is blind)."""
        return {"id": pair["id"], "prompt": pair["prompt"], "a": pair["answer_a"], "b": pair["answer_b"],
                "your_label": store.labels_by(labeler).get(pair["id"])}

    def stored(work, param: str):
        try:
            return work()
        except UnknownPair as e:
            raise ApiError(404, str(e), param="pair_id", code="unknown_pair", kind="not_found_error") from None
        except LlmosError as e:
            raise ApiError(400, str(e), param=param, code="invalid_value") from None

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(STATIC / "label.html")

    @app.get("/health")
    async def health():
        return {"status": "ok", "prompts": len(maker.prompts), "pairs_in_progress": maker.in_progress}

    async def sampled(future: concurrent.futures.Future, request: Request) -> int:
        """The pair id once sampled; a client that leaves stops waiting (the pair is still made and
        kept), so that a shutdown need not wait for pairs nobody waits for."""
        waiting = asyncio.wrap_future(future)
        while not (await asyncio.wait({waiting}, timeout=0.5))[0]:
            if await request.is_disconnected():
                raise ApiError(503, "the client left before the answers were sampled", code="client_left")
        return waiting.result()

    @app.get("/api/next")
    async def next_pair(request: Request, labeler: str = ""):
        name = labeler_name(labeler)
        todo = await asyncio.to_thread(maker.todo, name)
        if not todo:
            return {"pair": None, "progress": await asyncio.to_thread(progress, name)}
        wanted = maker.ensure(todo[0])
        for index in todo[1:1 + PREPARE_AHEAD]:
            maker.ensure(index)
        try:
            pair_id = await sampled(wanted, request)
        except ApiError:
            raise
        except Exception as e:
            raise ApiError(503, f"could not sample the answers to prompt {todo[0] + 1}: {e}",
                           code="sampling_failed", kind="server_error") from None
        pair = await asyncio.to_thread(store.pair, pair_id)
        return {"pair": await asyncio.to_thread(shown, pair, name), "progress": await asyncio.to_thread(progress, name)}

    @app.get("/api/pairs/{pair_id}")
    def get_pair(pair_id: int, labeler: str = ""):
        name = labeler_name(labeler)
        pair = store.pair(pair_id)
        if pair is None:
            raise ApiError(404, f"pair_id: there is no pair {pair_id} in this database", param="pair_id",
                           code="unknown_pair", kind="not_found_error")
        return {"pair": shown(pair, name), "progress": progress(name)}

    # Plain `def` routes run in a worker thread: the commit's fsync never stalls the event loop, and
    # the response is built only after add_label/add_edit has returned, i.e. after the commit.
    @app.post("/api/labels")
    def post_label(body: LabelBody):
        name = labeler_name(body.labeler)
        if body.pair_id is None:
            raise ApiError(400, "pair_id: give the id of the pair the label is for", param="pair_id")
        label_id = stored(lambda: store.add_label(body.pair_id, name, body.choice), "choice")
        return {"label_id": label_id, "pair_id": body.pair_id, "choice": body.choice, "progress": progress(name)}

    @app.post("/api/edits")
    def post_edit(body: EditBody):
        name = labeler_name(body.labeler)
        if body.pair_id is None:
            raise ApiError(400, "pair_id: give the id of the pair the edit is for", param="pair_id")
        param = "side" if body.side not in ("a", "b") else "text"
        edit_id = stored(lambda: store.add_edit(body.pair_id, name, body.side, body.text), param)
        return {"edit_id": edit_id, "pair_id": body.pair_id, "side": body.side, "progress": progress(name)}

    @app.get("/api/stats")
    def stats():
        return {"counts": store.counts(), "agreement": store.agreement(), "prompts": len(maker.prompts)}

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


# ----- starting it -----

def parse_temperatures(text: str) -> list[float]:
    try:
        values = [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise LlmosError(f"--temperatures {text!r}: give one or two numbers, comma-separated (0.7,1.2)") from None
    if not 1 <= len(values) <= 2 or any(not 0 <= t <= 10 for t in values):
        raise LlmosError(f"--temperatures {text!r}: give one or two numbers between 0 and 10 (0: greedy)")
    return values


def pair_sources(models: list[str], temperatures: list[float]) -> tuple[Side, Side]:
    """One model: its answers at the two temperatures (twice the one given); two models: each at the first."""
    if len(models) == 2:
        return Side(models[0], temperatures[0]), Side(models[1], temperatures[0])
    return Side(models[0], temperatures[0]), Side(models[0], temperatures[-1])


def fitting(prompts: list[list[dict]], served: dict) -> list[list[dict]]:
    """The prompts every model can render and still answer within its context; the others are
    left out with a count and the first reason."""
    kept, reasons = [], []
    for messages in prompts:
        why = None
        for name, model in served.items():
            try:
                length = len(model.fmt.render_prompt(messages))
            except LlmosError as e:
                why = f"{name}: {e}"
                break
            if length + MIN_REPLY_TOKENS > model.context:
                why = f"{name}: a prompt of {length} tokens leaves under {MIN_REPLY_TOKENS} of its {model.context}"
                break
        if why:
            reasons.append(why)
        else:
            kept.append(messages)
    if reasons:
        print(f"llmos label: left out {len(reasons)} of {len(prompts)} prompts (first: {reasons[0]})",
              file=sys.stderr, flush=True)
    if not kept:
        raise LlmosError("no prompt fits the model's context: give shorter prompts")
    return kept


def default_db() -> Path:
    return llmos_home() / DEFAULT_DB


def run_label_server(args: argparse.Namespace) -> None:
    import uvicorn

    from llmos.serve.server import load_served_models, parse_model_specs
    if not 0 <= args.port <= 65535:
        raise LlmosError(f"--port must be between 0 and 65535, not {args.port}")
    if args.max_tokens < 1:
        raise LlmosError(f"--max-tokens must be at least 1, not {args.max_tokens}")
    if args.limit is not None and args.limit < 1:
        raise LlmosError(f"--limit must be at least 1, not {args.limit}")
    specs = parse_model_specs(args.model)
    if len(specs) > 2:
        raise LlmosError(f"--model is given {len(specs)} times: compare one model (at two temperatures) or two")
    temperatures = parse_temperatures(args.temperatures)
    if args.prompts:
        prompts = load_prompts(args.prompts)[:args.limit]
    else:
        from llmos.data.conversations import DEFAULT_SOURCES
        names = DEFAULT_SOURCES if args.sources == "default" else [s.strip() for s in args.sources.split(",") if s.strip()]
        prompts = default_prompts(list(names), args.seed, args.limit)
    store = LabelStore(args.db or default_db())
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"llmos label: warning: listening on {args.host}: anyone who can reach this machine can read the "
              "prompts and add labels", file=sys.stderr)
    served = load_served_models(specs, MAX_BATCH, MAX_LEN, prefix_cache_mb=64, max_queue=64, weights=args.weights,
                                speculate=args.speculate, compile=args.compile)
    for name, model in served.items():
        if model.fmt is None:
            raise LlmosError(f"the model {name} cannot chat ({model.fmt_error}): labeling compares chat answers")
    sources = pair_sources(list(specs), temperatures)
    prompts = fitting(unique(prompts), served)
    maker = PairMaker(store, prompts, served, sources, args.max_tokens, args.seed)
    ready = sum(pid is not None for pid in maker.pair_ids)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    print(f"llmos label: {len(prompts)} prompts ({ready} pairs already sampled), A/B from "
          f"{sources[0].model}@{sources[0].temperature:g} and {sources[1].model}@{sources[1].temperature:g}; "
          f"labels in {store.path}", file=sys.stderr)
    print(f"llmos label: http://{args.host}:{args.port}/ (the labeling page); Ctrl-C stops", file=sys.stderr, flush=True)
    uvicorn.run(create_label_app(store, maker), host=args.host, port=args.port, access_log=False,
                log_level="warning", timeout_graceful_shutdown=30)

"""Serving benchmark: `llmos serve` against llama.cpp's two OpenAI-compatible servers, same weights, same load.

    python bench/serve.py                   # the speedrun model and SmolLM2-135M-Instruct, full counts
    python bench/serve.py --quick           # tiny counts: a smoke test of every path
    python bench/serve.py --models smollm2-135m-instruct --servers llmos --requests 16:200 --out serve.json

For each model the f32 GGUF export of the same weights is written once (`llmos export`), then each
server runs alone on a free loopback port with the same thread count (--threads) and the same
positions per request (--context):
  - llmos: `llmos serve --model REF --max-len CONTEXT` (torch's threads from OMP_NUM_THREADS);
  - llama_cpp.server: llama-cpp-python's Python server, which runs one request at a time
    (interrupt_requests off, or each new request cuts the running stream short);
  - llama-server: llama.cpp's C++ server, --parallel 16 with continuous batching, built once from the
    llama.cpp sources vendored in the llama-cpp-python sdist (see llama_server_binary).
Against each, 1, 4 and 16 concurrent clients stream chat completions (temperature 0, max_tokens
fixed, a short prompt from a fixed list) until the level's request count is done. Per level:
completion tokens/s over all clients (tokens / the level's wall time), time to first token and
inter-token latency (the gaps between content chunks) p50/p99, errors (non-200, error chunks,
streams without [DONE]), and the server's resident memory (its process tree, polled every 0.1 s):
the peak, and its growth from request 50 (a quarter of the requests in a smaller level) to the
last request. Tokens are the server's usage figure
where it streams one (stream_options.include_usage), else the content chunks. No server is told
to ignore the end of turn, so a reply may stop before max_tokens; only streamed tokens count.
A GGUF without a chat template is not run in llama.cpp (it would chat in a format the model never
saw); its llama.cpp rows say so.

Then, for SmolLM2 on llmos only: the time to first token of a conversation's fifth turn (about
1,000 tokens of history) with the prefix cache on and off (`llmos serve --no-prefix-cache`), the
median over a few conversations. Markdown tables and the acceptance ratios go to stdout, progress
to stderr; --out also writes everything as JSON, with the CPU, its SIMD flags and the versions.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import importlib.metadata
import json
import logging
import math
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import httpx

from llmos.common import LlmosError, file_lock, llmos_home

SERVERS = ("llmos", "llama_cpp.server", "llama-server")
SPEEDRUN = "speedrun"  # in --models: the model at --speedrun-model
FULL_REQUESTS = "1:20,4:60,16:200"
QUICK_REQUESTS = "1:2,4:4,16:16"
FULL_MAX_TOKENS = 64
QUICK_MAX_TOKENS = 16
WARMUP_REQUESTS = 2  # untimed, one at a time, before the first level
RSS_MARK = 50  # memory growth is measured from this request to the last
PREFIX_REPLY_TOKENS = 64  # per reply in the prefix-cache conversation, in every mode
STARTUP_LIMIT_S = 300  # importing SmolLM2 on first use and loading it on a busy 2-core machine
REQUEST_LIMIT_S = 600  # one request at 16 clients waits for 15 others on a server that does not batch
RSS_POLL_S = 0.1
LLAMA_CPP_PYTHON = "llama-cpp-python"

PROMPTS = [
    "Who are you?",
    "What can you help me with?",
    "Tell me a short story about a lighthouse keeper.",
    "Give me three tips for sleeping better.",
    "Explain what a compiler does in simple words.",
    "Write a haiku about autumn rain.",
    "What is the difference between weather and climate?",
    "How do I make a cup of tea?",
    "Why is the sky blue?",
    "Suggest a name for a friendly robot.",
    "What should I pack for a weekend hike?",
    "Describe a cat to someone who has never seen one.",
    "How do plants turn sunlight into food?",
    "What is a good way to start learning to draw?",
    "Tell me something interesting about the ocean.",
    "How can I be more patient?",
]

# The user turns of the prefix-cache conversation: about 170 SmolLM2 tokens each, so that four
# turns and four replies of up to 64 tokens make about 1,000 tokens of history.
PASSAGES = [
    "I have been reading about how cities grew up around rivers. Early towns needed fresh water for "
    "drinking and farming, and the river doubled as a road: boats could carry grain, timber and stone "
    "far more cheaply than carts on muddy tracks. Markets formed where roads met the water, and bridges "
    "became places of power, because whoever held the crossing could charge a toll. Floods were the "
    "price of this convenience, so many towns built on a rise or raised walls along the banks. Over "
    "centuries the river shaped the street plan, the trades that settled near the docks and even the "
    "names of neighbourhoods. Even now, old warehouses by the water are turned into flats and galleries, "
    "and the riverside walk is often the busiest street in town. What do you think was the most "
    "important reason for settling by a river?",
    "Another thing I keep wondering about is how bread changed over time. The first breads were flat "
    "cakes of crushed grain and water baked on hot stones. Leavened bread came later, when people "
    "noticed that dough left standing would rise and taste lighter, thanks to wild yeasts and bacteria "
    "in the air and on the grain. Bakers learned to keep a piece of old dough to start the next batch. "
    "Mills powered by water and wind made fine flour common, and ovens grew from clay domes to brick "
    "chambers that could bake for a whole street at once. Today most bread uses cultivated yeast, yet "
    "sourdough has come back into fashion. Some bakers keep the same starter alive for decades and "
    "feed it every day, as if it were a pet that lives in a jar. Why do you think slow fermentation "
    "tastes so different?",
    "Let me ask about something else: the way people kept time before clocks. Sundials told the hour "
    "on clear days, water clocks dripped through the night, and candles marked with rings burned down at "
    "a steady pace. Monasteries needed to know when to pray, so they paid close attention to timekeeping "
    "and rang bells that the whole village could hear. Mechanical clocks with weights and escapements "
    "appeared in towers in the later Middle Ages, and they were not very accurate at first, often "
    "drifting by many minutes a day. The pendulum made clocks far better, and railways later forced "
    "towns to agree on a single shared time. Before that, each town set its clocks by its own noon, so "
    "travelling east or west meant changing your watch at every stop. How did railways change the way "
    "people thought about time?",
    "I also want to understand how letters travelled before the telegraph. Rulers kept relay stations "
    "along main roads where riders could change horses, so urgent messages moved surprisingly fast. "
    "Ordinary people mostly relied on travellers, merchants or ship captains to carry a letter for them, "
    "and the person receiving it often paid on delivery. Postal services opened to the public charged by "
    "distance and by the number of sheets, which made letters expensive. Cheap uniform postage paid "
    "with a stamp changed that, and the number of letters sent grew enormously within a few years. "
    "Postboxes appeared on street corners, and collections several times a day let a letter posted in "
    "the morning arrive across town by the evening. "
    "Why do you think a single cheap price encouraged so many more people to write to each other?",
    "Finally, tell me about how maps improved. Early maps mixed careful observation with rumour, "
    "filling unknown regions with imagined creatures. Sailors kept their own charts of coastlines, "
    "harbours and hazards, and these were often guarded secrets. Measuring latitude from the sun and "
    "the stars was possible long ago, but longitude needed an accurate clock at sea, which took a long "
    "time to build. Surveyors later measured whole countries with chains and angles, walking for years. "
    "Now satellites give every phone its position within a few metres, and few people carry a paper map "
    "at all, although hikers are still told to bring one in case the battery dies. Looking back over "
    "everything we discussed, which of these changes do you think mattered most for ordinary people, and why?",
]


class ServerFailed(Exception):
    """A server that exited or never became ready; the message says why."""


# ----- the C++ server, built once -----

def llama_server_binary() -> tuple[Path | None, str]:
    """(path, "") of llama.cpp's C++ server, built once from the llama-cpp-python sdist; (None, why) if it cannot be.

    The sources are those vendored in the sdist of the installed llama-cpp-python version, so the C++
    server and the Python one run the same llama.cpp. The static binary lands in
    <LLMOS_HOME>/llama.cpp/<version>/llama-server; a failed build leaves build-failed.txt there with
    the reason (delete it to try again) and build.log with the full output.
    """
    version = importlib.metadata.version(LLAMA_CPP_PYTHON)
    home = llmos_home() / "llama.cpp" / version
    binary, failed, log = home / "llama-server", home / "build-failed.txt", home / "build.log"
    missing = [tool for tool in ("cmake", "c++", "make") if shutil.which(tool) is None]
    if not binary.is_file() and missing:
        return None, f"{', '.join(missing)} not found"
    with file_lock(home / ".lock", f"the llama-server build in {home}"):
        if not binary.is_file() and not failed.is_file():
            print(f"building llama-server {version} into {home} (once; 10+ minutes on 2 cores) ...",
                  file=sys.stderr, flush=True)
            started = time.monotonic()
            why, lasting = build_llama_server(version, home, log)
            if why and not lasting:  # a download that failed may work next time
                return None, f"{why} (log: {log})"
            if why:
                failed.write_text(why + "\n")
            else:
                print(f"built {binary} in {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
    if binary.is_file():
        return binary, ""
    return None, f"{failed.read_text().strip()} (log: {log}; delete {failed} to retry)"


def build_llama_server(version: str, home: Path, log_path: Path) -> tuple[str, bool]:
    """Download the sdist, build llama-server under nice, install it into home.

    Returns ("", False) on success, else why it failed and whether that would last (a failed
    compile would; a failed download might not)."""
    with tempfile.TemporaryDirectory(dir=home) as tmp, open(log_path, "w") as log:
        def step(command: list[str]) -> bool:
            log.write(f"$ {' '.join(command)}\n")
            log.flush()
            return subprocess.run(command, stdout=log, stderr=subprocess.STDOUT).returncode == 0

        if not step([sys.executable, "-m", "pip", "download", "--no-binary", ":all:", "--no-deps",
                     f"{LLAMA_CPP_PYTHON}=={version}", "-d", tmp]):
            return f"downloading the {LLAMA_CPP_PYTHON} {version} sdist failed", False
        with tarfile.open(next(Path(tmp).glob("*.tar.gz"))) as archive:
            archive.extractall(tmp, filter="data")
        source = next(Path(tmp).glob("*/vendor/llama.cpp"), None)
        if source is None:
            return f"the {LLAMA_CPP_PYTHON} {version} sdist holds no vendor/llama.cpp", True
        build = Path(tmp) / "build"
        # one static binary, the server alone, nothing fetched at build time (no web UI, TLS or curl)
        if not step(["cmake", "-S", str(source), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release", "-DGGML_NATIVE=ON",
                     "-DBUILD_SHARED_LIBS=OFF", "-DLLAMA_CURL=OFF", "-DLLAMA_OPENSSL=OFF", "-DLLAMA_BUILD_UI=OFF",
                     "-DLLAMA_USE_PREBUILT_UI=OFF", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF",
                     "-DLLAMA_BUILD_TOOLS=ON", "-DLLAMA_BUILD_SERVER=ON"]):
            return "cmake could not configure llama.cpp", True
        if not step(["nice", "-n", "19", "cmake", "--build", str(build), "--target", "llama-server",
                     "-j", str(os.cpu_count() or 1)]):
            return "compiling llama-server failed", True
        built = next((p for p in build.rglob("llama-server") if p.is_file()), None)
        if built is None:
            return "the build finished without a llama-server binary", True
        partial = home / "llama-server.partial"  # renamed into place whole, so no reader sees half a file
        shutil.copy2(built, partial)
        partial.rename(home / "llama-server")
    return "", False


# ----- servers -----

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def llmos_command(ref: str, threads: int, extra: tuple[str, ...] = ()) -> tuple[Callable[[int], list[str]], dict]:
    """`llmos serve` on one model; torch takes its thread count from OMP_NUM_THREADS."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    return (lambda port: [sys.executable, "-m", "llmos.cli", "serve", "--model", ref, "--host", "127.0.0.1",
                          "--port", str(port), *extra]), env


def llama_cpp_python_command(gguf: Path, threads: int, context: int) -> tuple[Callable[[int], list[str]], dict]:
    # chat_template.default: the GGUF's own template, not a format guessed from its metadata;
    # logits_all off: the server's default keeps logits for every prompt token, which no request here needs
    return (lambda port: [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--host", "127.0.0.1",
                          "--port", str(port), "--n_ctx", str(context), "--n_threads", str(threads),
                          "--n_threads_batch", str(threads), "--interrupt_requests", "False",
                          "--chat_format", "chat_template.default", "--logits_all", "False"]), dict(os.environ)


def llama_server_command(binary: Path, gguf: Path, threads: int, context: int,
                         slots: int) -> tuple[Callable[[int], list[str]], dict]:
    return (lambda port: [str(binary), "-m", str(gguf), "--host", "127.0.0.1", "--port", str(port),
                          "--parallel", str(slots), "--cont-batching", "-c", str(slots * context),
                          "-t", str(threads), "-tb", str(threads), "--jinja"]), dict(os.environ)


def wait_ready(proc: subprocess.Popen, base: str, log: Path) -> None:
    """Until /health answers 200 (llmos, llama-server), or /v1/models does where there is no /health."""
    deadline = time.monotonic() + STARTUP_LIMIT_S
    while True:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace").strip().splitlines()[-3:]
            raise ServerFailed(f"exited with status {proc.returncode}: {' | '.join(tail)}")
        try:
            health = httpx.get(base + "/health", timeout=2).status_code
            if health == 200 or (health == 404 and httpx.get(base + "/v1/models", timeout=2).status_code == 200):
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise ServerFailed(f"not ready after {STARTUP_LIMIT_S} s (log: {log})")
        time.sleep(0.25)


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the server's process group, SIGKILL if it has not gone after 30 s."""
    for sig, wait_s in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
        if proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=wait_s)


@contextlib.contextmanager
def serving(command: tuple[Callable[[int], list[str]], dict], log: Path) -> Iterator[tuple[str, int]]:
    """Start a server on a free loopback port; yield (base URL, pid) once it is ready; always stop it."""
    argv_for_port, env = command
    port = free_port()
    with open(log, "wb") as out:
        # its own session: a Ctrl-C reaches only this script, which then stops the server in order
        proc = subprocess.Popen(argv_for_port(port), stdout=out, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
        try:
            base = f"http://127.0.0.1:{port}"
            wait_ready(proc, base, log)
            yield base, proc.pid
        finally:
            stop(proc)


# ----- memory -----

def tree_rss_bytes(root: int) -> int:
    """Resident memory of a process and all its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry.name}/stat").read_text()
        except OSError:  # it exited meanwhile
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(parent, []).append(int(entry.name))
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        todo.extend(children.get(pid, []))
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
    return total


class RssSampler:
    """Polls a server's tree RSS every RSS_POLL_S on a thread and keeps the peak since reset()."""

    def __init__(self, pid: int):
        self.pid, self.peak = pid, 0
        self._lock, self._stopped = threading.Lock(), threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stopped.set()
        self._thread.join()

    def read(self) -> int:
        rss = tree_rss_bytes(self.pid)
        with self._lock:
            self.peak = max(self.peak, rss)
        return rss

    def reset(self) -> None:
        with self._lock:
            self.peak = 0
        self.read()

    def _poll(self) -> None:
        while not self._stopped.wait(RSS_POLL_S):
            self.read()


# ----- clients -----

@dataclass
class Outcome:
    error: str = ""
    ttft: float | None = None  # seconds to the first content chunk; None when the reply was empty
    gaps: list[float] = field(default_factory=list)  # seconds between content chunks
    chunks: int = 0
    usage_tokens: int | None = None
    prompt_tokens: int | None = None

    @property
    def tokens(self) -> int:
        return self.usage_tokens if self.usage_tokens is not None else self.chunks


async def stream_chat(client: httpx.AsyncClient, base: str, model: str, messages: list[dict],
                      max_tokens: int) -> Outcome:
    body = {"model": model, "messages": messages, "max_tokens": max_tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
    out, finished = Outcome(), False
    start = last = time.perf_counter()
    try:
        async with client.stream("POST", base + "/v1/chat/completions", json=body) as response:
            if response.status_code != 200:
                text = (await response.aread()).decode(errors="replace")
                out.error = f"HTTP {response.status_code}: {text[:200]}"
                return out
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue  # blank separators and keep-alive comments
                data = line[5:].strip()
                if data == "[DONE]":
                    finished = True
                    break
                chunk = json.loads(data)
                if "error" in chunk:
                    out.error = f"error chunk: {json.dumps(chunk['error'])[:200]}"
                    return out
                if chunk.get("usage"):
                    out.usage_tokens = chunk["usage"].get("completion_tokens")
                    out.prompt_tokens = chunk["usage"].get("prompt_tokens")
                if any((choice.get("delta") or {}).get("content") for choice in chunk.get("choices") or []):
                    now = time.perf_counter()
                    if out.ttft is None:
                        out.ttft = now - start
                    else:
                        out.gaps.append(now - last)
                    last = now
                    out.chunks += 1
    except (httpx.HTTPError, json.JSONDecodeError) as e:
        out.error = f"{type(e).__name__}: {e}"[:200]
        return out
    if not finished:
        out.error = "the stream ended without [DONE]"
    return out


def percentile(values: list[float], q: float) -> float | None:
    """Linear interpolation between closest ranks, as numpy's default."""
    if not values:
        return None
    ordered = sorted(values)
    k = (len(ordered) - 1) * q / 100
    low = math.floor(k)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (k - low)


def ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


def mib(n_bytes: int) -> float:
    return round(n_bytes / 2**20, 1)


async def run_level(base: str, model: str, clients: int, requests: int, max_tokens: int,
                    sampler: RssSampler) -> dict:
    """`requests` streamed chats, `clients` at a time; figures for the level."""
    outcomes: list[Outcome] = []
    marks = {min(RSS_MARK, max(1, requests // 4)), requests}
    rss_at: dict[int, int] = {}
    indices = iter(range(requests))  # shared by the clients: each takes the next request when it is free
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=httpx.Timeout(REQUEST_LIMIT_S, connect=10), limits=limits) as client:
        async def one_client():
            for i in indices:
                messages = [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}]
                outcomes.append(await stream_chat(client, base, model, messages, max_tokens))
                if len(outcomes) in marks:
                    rss_at[len(outcomes)] = sampler.read()

        sampler.reset()
        start = time.perf_counter()
        await asyncio.gather(*(one_client() for _ in range(clients)))
        wall = time.perf_counter() - start
    good = [o for o in outcomes if not o.error]
    tokens = sum(o.tokens for o in good)
    ttfts = [o.ttft for o in good if o.ttft is not None]
    gaps = [g for o in good for g in o.gaps]
    first_mark, last_mark = min(marks), max(marks)
    return {
        "clients": clients, "requests": requests, "errors": len(outcomes) - len(good),
        "error_examples": sorted({o.error for o in outcomes if o.error})[:3],
        "completion_tokens": tokens, "tokens_from": "usage" if good and all(o.usage_tokens is not None
                                                                             for o in good) else "chunks",
        "wall_s": round(wall, 2), "tok_s": round(tokens / wall, 1),
        "ttft_p50_ms": ms(percentile(ttfts, 50)), "ttft_p99_ms": ms(percentile(ttfts, 99)),
        "itl_p50_ms": ms(percentile(gaps, 50)), "itl_p99_ms": ms(percentile(gaps, 99)),
        "peak_rss_mib": mib(sampler.peak),
        "rss_after_mib": {str(first_mark): mib(rss_at[first_mark]), str(last_mark): mib(rss_at[last_mark])},
        "rss_growth_pct": round(100 * (rss_at[last_mark] / rss_at[first_mark] - 1), 2),
    }


def served_model_id(base: str) -> str:
    return httpx.get(base + "/v1/models", timeout=10).json()["data"][0]["id"]


async def warm_up(base: str, model: str, max_tokens: int) -> None:
    async with httpx.AsyncClient(timeout=REQUEST_LIMIT_S) as client:
        for i in range(WARMUP_REQUESTS):
            await stream_chat(client, base, model, [{"role": "user", "content": PROMPTS[i]}], max_tokens)


def load_server(base: str, pid: int, levels: list[tuple[int, int]], max_tokens: int, label: str) -> dict:
    """Every level against one running server."""
    model = served_model_id(base)
    asyncio.run(warm_up(base, model, max_tokens))
    results = []
    with RssSampler(pid) as sampler:
        for clients, requests in levels:
            print(f"  {label}: {clients} clients x {requests} requests ...", file=sys.stderr, flush=True)
            level = asyncio.run(run_level(base, model, clients, requests, max_tokens, sampler))
            print(f"    {level['tok_s']} tok/s, TTFT p50 {level['ttft_p50_ms']} ms, errors {level['errors']}",
                  file=sys.stderr, flush=True)
            results.append(level)
    return {"status": "ok", "levels": results, "peak_rss_mib": max(level["peak_rss_mib"] for level in results)}


# ----- prefix cache -----

async def fifth_turn(base: str, model: str, conversation: int) -> Outcome:
    """Four turns of a conversation (replies generated, not streamed), then the fifth turn streamed."""
    messages = [{"role": "system", "content": f"You are a helpful assistant. This is conversation {conversation}."}]
    async with httpx.AsyncClient(timeout=REQUEST_LIMIT_S) as client:
        for passage in PASSAGES[:-1]:
            messages.append({"role": "user", "content": passage})
            response = await client.post(base + "/v1/chat/completions", json={
                "model": model, "messages": messages, "max_tokens": PREFIX_REPLY_TOKENS, "temperature": 0})
            response.raise_for_status()
            messages.append({"role": "assistant", "content": response.json()["choices"][0]["message"]["content"]})
        messages.append({"role": "user", "content": PASSAGES[-1]})
        return await stream_chat(client, base, model, messages, max_tokens=8)


def prefix_cache_bench(ref: str, threads: int, repeats: int, workdir: Path) -> dict:
    """TTFT of the fifth turn with llmos's prefix cache on and off; a different conversation each repeat."""
    result: dict = {"model": ref, "repeats": repeats}
    for label, extra in (("on", ()), ("off", ("--no-prefix-cache",))):
        print(f"  prefix cache {label}: {repeats} conversations ...", file=sys.stderr, flush=True)
        with serving(llmos_command(ref, threads, extra), workdir / f"llmos-prefix-{label}.log") as (base, _):
            model = served_model_id(base)
            outcomes = [asyncio.run(fifth_turn(base, model, r + 1)) for r in range(repeats)]
        errors = [o.error for o in outcomes if o.error or o.ttft is None]
        if errors:
            raise ServerFailed(f"prefix cache {label}: {errors[0] or 'an empty fifth reply'}")
        result[f"ttft_{label}_ms"] = ms(statistics.median(o.ttft for o in outcomes))
        result["prompt_tokens"] = outcomes[0].prompt_tokens
    result["speedup"] = round(result["ttft_off_ms"] / result["ttft_on_ms"], 2)
    return result


# ----- models -----

def export_gguf(ref: str, out: Path) -> Path:
    done = subprocess.run([sys.executable, "-m", "llmos.cli", "export", "--model", ref, "--format", "gguf",
                           "--dtype", "f32", "--out", str(out)], capture_output=True, text=True)
    if done.returncode:
        raise LlmosError(f"llmos export of {ref} failed: {(done.stderr.strip().splitlines() or ['?'])[-1]}")
    return out


def gguf_facts(path: Path) -> dict:
    from gguf import GGUFReader
    reader = GGUFReader(path)
    template = reader.get_field("tokenizer.chat_template")
    return {"context_length": int(reader.get_field("llama.context_length").contents()),
            "chat_template": template is not None and bool(template.contents())}


def bench_model(ref: str, args, workdir: Path, llama_server: tuple[Path | None, str]) -> dict:
    slug = Path(ref).name if Path(ref).expanduser().exists() else ref
    print(f"{ref}: exporting the f32 GGUF ...", file=sys.stderr, flush=True)
    gguf = export_gguf(ref, workdir / f"{slug}-f32.gguf")
    facts = gguf_facts(gguf)
    context = min(args.context, facts["context_length"])
    slots = max(clients for clients, _ in args.levels)
    result = {"model": ref, "gguf_context_length": facts["context_length"], "context_per_request": context,
              "servers": {}}
    for server in args.servers:
        if server == "llmos":
            command = llmos_command(ref, args.threads, ("--max-len", str(context)))
        elif not facts["chat_template"]:  # llama.cpp would chat in a format the model was not trained on
            result["servers"][server] = {"status": "skipped: the GGUF export carries no chat template"}
            continue
        elif server == "llama_cpp.server":
            command = llama_cpp_python_command(gguf, args.threads, context)
        elif llama_server[0] is None:
            result["servers"][server] = {"status": f"did not build: {llama_server[1]}"}
            continue
        else:
            command = llama_server_command(llama_server[0], gguf, args.threads, context, slots)
        print(f"{ref}: {server}", file=sys.stderr, flush=True)
        try:
            with serving(command, workdir / f"{slug}-{server}.log") as (base, pid):
                result["servers"][server] = load_server(base, pid, args.levels, args.max_tokens, server)
        except (ServerFailed, httpx.HTTPError) as e:
            result["servers"][server] = {"status": f"failed: {e}"}
            print(f"  {server} failed: {e}", file=sys.stderr, flush=True)
    result["ratios"] = acceptance_ratios(result["servers"])
    return result


def level_figure(server: dict, clients: int, key: str):
    for level in server.get("levels", []):
        if level["clients"] == clients:
            return level[key]
    return None


def acceptance_ratios(servers: dict) -> dict:
    """The issue's acceptance figures: llmos's batching gain and its lead over each llama.cpp server."""
    ours = servers.get("llmos", {})
    if not ours.get("levels"):
        return {}
    low, high = ours["levels"][0], ours["levels"][-1]
    ratios = {f"llmos_{high['clients']}_vs_{low['clients']}_clients": round(high["tok_s"] / low["tok_s"], 2),
              f"llmos_errors_at_{high['clients']}": high["errors"],
              "llmos_rss_growth_pct": high["rss_growth_pct"]}
    for peer in ("llama_cpp.server", "llama-server"):
        theirs = level_figure(servers.get(peer, {}), high["clients"], "tok_s")
        if theirs:
            ratios[f"llmos_vs_{peer}_at_{high['clients']}"] = round(high["tok_s"] / theirs, 2)
    return ratios


# ----- report -----

def machine_facts(threads: int) -> dict:
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout if shutil.which("lscpu") else ""
    fields = dict(line.split(":", 1) for line in lscpu.splitlines() if ":" in line)
    flags = set(fields.get("Flags", "").split())
    simd = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile", "amx_bf16", "amx_int8")
    return {"cpu": fields.get("Model name", platform.processor()).strip(), "cpu_flags": [f for f in simd if f in flags],
            "cpu_count": os.cpu_count(), "threads": threads, "torch": importlib.metadata.version("torch"),
            LLAMA_CPP_PYTHON: importlib.metadata.version(LLAMA_CPP_PYTHON), "python": platform.python_version(),
            "date": datetime.date.today().isoformat()}


def cell(value) -> str:
    if value is None:
        return "-"
    return f"{value:,}" if isinstance(value, (int, float)) else str(value)


def markdown(report: dict) -> str:
    m = report["machine"]
    lines = [f"CPU: {m['cpu']} ({m['cpu_count']} CPUs; {', '.join(m['cpu_flags']) or 'no AVX2'}), "
             f"{m['threads']} threads per server, torch {m['torch']}, {LLAMA_CPP_PYTHON} {m[LLAMA_CPP_PYTHON]}, "
             f"max_tokens {report['max_tokens']}, {m['date']}", ""]
    for result in report["models"]:
        lines += [f"### {result['model']} (f32 GGUF for llama.cpp, {result['context_per_request']} tokens of "
                  "context per request)", "",
                  "| server | clients | requests | errors | tokens | tok/s | TTFT p50 ms | TTFT p99 ms "
                  "| ITL p50 ms | ITL p99 ms | peak RSS MiB | RSS growth |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for name, server in result["servers"].items():
            if server["status"] != "ok":
                lines.append(f"| {name} | {server['status']} |" + " |" * 10)
                continue
            for lv in server["levels"]:
                marks = "→".join(lv["rss_after_mib"])
                lines.append(f"| {name} | {lv['clients']} | {lv['requests']} | {lv['errors']} "
                             f"| {cell(lv['completion_tokens'])} | {cell(lv['tok_s'])} | {cell(lv['ttft_p50_ms'])} "
                             f"| {cell(lv['ttft_p99_ms'])} | {cell(lv['itl_p50_ms'])} | {cell(lv['itl_p99_ms'])} "
                             f"| {cell(lv['peak_rss_mib'])} | {lv['rss_growth_pct']:+.2f}% (req {marks}) |")
        lines += ["", "Acceptance: " + (", ".join(f"{k} = {v}" for k, v in result["ratios"].items()) or "-"), ""]
    prefix = report.get("prefix_cache")
    if prefix:
        lines.append(f"Prefix cache ({prefix['model']}, fifth turn, {cell(prefix.get('prompt_tokens'))} prompt "
                     f"tokens, median of {prefix['repeats']}): " +
                     (f"TTFT {prefix['ttft_on_ms']} ms on, {prefix['ttft_off_ms']} ms off, {prefix['speedup']}x"
                      if "speedup" in prefix else prefix["status"]))
    return "\n".join(lines)


def parse_levels(text: str) -> list[tuple[int, int]]:
    try:
        levels = sorted((int(c), int(n)) for c, n in (part.split(":") for part in text.split(",")))
    except ValueError:
        raise LlmosError(f"--requests {text!r}: write CLIENTS:REQUESTS pairs, e.g. 1:20,4:60,16:200") from None
    if any(c < 1 or n < c for c, n in levels):
        raise LlmosError(f"--requests {text!r}: each level needs at least 1 client and as many requests as clients")
    return levels


def interrupt(signum, frame):
    raise KeyboardInterrupt


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default=f"{SPEEDRUN},smollm2-135m-instruct",
                   help=f"comma-separated model references; {SPEEDRUN!r} means --speedrun-model")
    p.add_argument("--speedrun-model", default=str(llmos_home() / "runs" / "speedrun-cpu" / "sft"))
    p.add_argument("--servers", default=",".join(SERVERS), help=f"comma-separated, of {', '.join(SERVERS)}")
    p.add_argument("--requests", default=FULL_REQUESTS, help="CLIENTS:REQUESTS per level")
    p.add_argument("--max-tokens", type=int, default=FULL_MAX_TOKENS, help=f"per request (--quick: {QUICK_MAX_TOKENS})")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="CPU threads for every server")
    p.add_argument("--context", type=int, default=512,
                   help="positions per request in every server (capped at the model's context)")
    p.add_argument("--prefix-cache-model", default="smollm2-135m-instruct",
                   help="the model of the prefix-cache measurement ('' to skip it)")
    p.add_argument("--prefix-cache-repeats", type=int, default=3)
    p.add_argument("--quick", action="store_true",
                   help=f"smoke test: --requests {QUICK_REQUESTS}, --max-tokens {QUICK_MAX_TOKENS}, one conversation")
    p.add_argument("--workdir", default="", help="keep the GGUF files and server logs here (default: a temp dir)")
    p.add_argument("--out", default="", help="also write the report as JSON to this file")
    args = p.parse_args()
    # SIGTERM and Ctrl-C unwind through every `serving` block, so that each server started here is
    # stopped; one handler for both also keeps asyncio.run from turning Ctrl-C into a task
    # cancellation, which an in-flight request can absorb
    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)
    try:
        run(args)
    except LlmosError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        logging.getLogger("asyncio").disabled = True  # its note on the interrupted task says nothing new
        print("interrupted; every server started here is stopped", file=sys.stderr)
        sys.exit(130)


def run(args) -> None:
    if args.quick:  # counts given explicitly still win
        args.requests = QUICK_REQUESTS if args.requests == FULL_REQUESTS else args.requests
        args.max_tokens = QUICK_MAX_TOKENS if args.max_tokens == FULL_MAX_TOKENS else args.max_tokens
    args.levels = parse_levels(args.requests)
    repeats = 1 if args.quick else args.prefix_cache_repeats
    args.servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    unknown = [s for s in args.servers if s not in SERVERS]
    if unknown:
        raise LlmosError(f"unknown server {unknown[0]!r}: choose from {', '.join(SERVERS)}")
    models = [args.speedrun_model if m.strip() == SPEEDRUN else m.strip() for m in args.models.split(",") if m.strip()]
    if SPEEDRUN in args.models.split(",") and not Path(args.speedrun_model).expanduser().exists():
        raise LlmosError(f"no speedrun model at {args.speedrun_model}: run `llmos speedrun` first, "
                         "or pass --speedrun-model RUN_DIR (or leave speedrun out of --models)")
    llama_server = llama_server_binary() if "llama-server" in args.servers else (None, "not requested")
    if "llama-server" in args.servers and llama_server[0] is None:
        print(f"llama-server did not build: {llama_server[1]}", file=sys.stderr)
    report = {"machine": machine_facts(args.threads), "requests": args.requests, "max_tokens": args.max_tokens,
              "llama_server": str(llama_server[0]) if llama_server[0] else f"did not build: {llama_server[1]}",
              "models": []}
    with contextlib.ExitStack() as stack:
        workdir = Path(args.workdir) if args.workdir else Path(stack.enter_context(tempfile.TemporaryDirectory()))
        workdir.mkdir(parents=True, exist_ok=True)
        for ref in models:
            report["models"].append(bench_model(ref, args, workdir, llama_server))
        if args.prefix_cache_model and "llmos" in args.servers:
            print(f"{args.prefix_cache_model}: prefix cache", file=sys.stderr, flush=True)
            try:
                report["prefix_cache"] = prefix_cache_bench(args.prefix_cache_model, args.threads, repeats, workdir)
            except (ServerFailed, httpx.HTTPError) as e:
                report["prefix_cache"] = {"model": args.prefix_cache_model, "repeats": repeats,
                                          "status": f"failed: {e}"}
    print(markdown(report), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()

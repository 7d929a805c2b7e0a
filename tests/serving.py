"""Start `llmos serve` for a test: a free loopback port, wait for /health, SIGTERM on the way out.

    with running_server("--model", str(path)) as base_url:      # e.g. "http://127.0.0.1:40123"
        httpx.get(base_url + "/v1/models")

`tiny_chat_model(path, tokenizer_path)` writes a small random-weight model with llmos's native chat
layout: enough for every API behaviour (its replies are gibberish, but real tokens from a real
decode; never special tokens, so they are never empty, and they run to max_tokens), and it loads
in a fraction of a second.
"""
from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import httpx
import torch

from llmos.model import ModelConfig, Transformer
from llmos.params import save_params
from llmos.tokenizer import Tokenizer

STARTUP_LIMIT_S = 180  # loading SmolLM2 on a busy 2-core machine takes tens of seconds


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tiny_chat_model(path: Path, tokenizer_path: Path, max_seq_len: int = 256, seed: int = 0) -> Path:
    tok = Tokenizer.load(tokenizer_path)
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=tok.vocab_size, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2,
                      max_seq_len=max_seq_len, tie_embeddings=False)
    model = Transformer(cfg)
    with torch.no_grad():  # replies of text, never of turn markers: special tokens score 0, the rest spread wide
        model.lm_head.weight.mul_(20)
        model.lm_head.weight[sorted(tok.hf.get_added_tokens_decoder())] = 0
    return save_params(path, model, tok, provenance={"name": path.stem})


@contextlib.contextmanager
def running_process(verb: str, *args: str, env: dict | None = None,
                    log: Path | None = None) -> Iterator[tuple[str, subprocess.Popen]]:
    """`llmos VERB ARGS --port FREE` (serve, label), yielding (base URL, process) once /health answers
    200; SIGTERM on the way out (a test may have killed it already)."""
    port = free_port()
    out = open(log, "wb") if log else subprocess.DEVNULL
    proc = subprocess.Popen([sys.executable, "-m", "llmos.cli", verb, *args, "--port", str(port)],
                            stdout=out, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_LIMIT_S
        while True:
            if proc.poll() is not None:
                tail = Path(log).read_text(errors="replace")[-2000:] if log else ""
                raise RuntimeError(f"llmos {verb} exited with status {proc.returncode} before answering: {tail}")
            try:
                if httpx.get(base + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"llmos {verb} did not answer /health within {STARTUP_LIMIT_S} s")
            time.sleep(0.2)
        yield base, proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if log:
            out.close()


@contextlib.contextmanager
def running_server(*args: str, env: dict | None = None, log: Path | None = None) -> Iterator[str]:
    """`llmos serve ARGS --port FREE`, yielding its base URL once /health answers 200."""
    with running_process("serve", *args, env=env, log=log) as (base, _):
        yield base

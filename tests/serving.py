"""Start `llmos serve` for a test: a free loopback port, wait for /health, SIGTERM on the way out.

    with running_server("--model", str(path)) as base_url:      # e.g. "http://127.0.0.1:40123"
        httpx.get(base_url + "/v1/models")

`tiny_chat_model(path, tokenizer_path)` writes a small random-weight model with llmos's native chat
layout: enough for every API behaviour (its replies are gibberish, but real tokens from a real
decode; never special tokens, so they are never empty, and they run to max_tokens), and it loads
in a fraction of a second. `memorizing_model(tok, conversations)` trains one that repeats its tool-use
conversations: it makes their calls, so the tool loop runs for real.
"""
from __future__ import annotations

import contextlib
import json
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


def memorizing_model(tok: Tokenizer, conversations: list[list[dict]], steps: int = 300,
                     max_seq_len: int = 256, max_loss: float = 0.01) -> Transformer:
    """A tiny model that learned these conversations by heart (their assistant tokens: the calls and
    the answers, never the tool results), so that it makes its calls and answers as they do. Several
    replies to one prompt are learned as a distribution (their loss cannot reach 0: raise max_loss)."""
    from llmos.chat import ChatFormat
    fmt = ChatFormat(tok)
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=tok.vocab_size, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2,
                                    max_seq_len=max_seq_len))
    rendered = [fmt.render(c) for c in conversations]
    width = max(len(ids) for ids, _ in rendered)
    x = torch.tensor([ids[:-1] + [0] * (width - len(ids)) for ids, _ in rendered])
    y = torch.tensor([[t if m else -1 for t, m in zip(ids[1:], mask[1:])] + [-1] * (width - len(ids))
                      for ids, mask in rendered])
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(steps):
        loss = model(x, targets=y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < max_loss, f"the tiny model did not learn its conversations (loss {loss.item():.3f})"
    return model.eval()


def tool_call(name: str, arguments: dict) -> dict:
    return {"type": "function", "function": {"name": name, "arguments": json.dumps(arguments)}}


def tool_conversation(tools: list[str], question: str, call: dict, result: str, answer: str) -> list[dict]:
    """The conversation llmos's tool-use data teaches: the tools line, a question, a call, its result
    (never learned), the answer."""
    from llmos.infer.tooluse import tools_line
    return [{"role": "system", "content": tools_line(tools)}, {"role": "user", "content": question},
            {"role": "assistant", "content": None, "tool_calls": [tool_call(call["name"], call["arguments"])]},
            {"role": "tool", "content": result}, {"role": "assistant", "content": answer}]


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

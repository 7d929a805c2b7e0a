"""Training throughput: llmos's Transformer against Hugging Face's LlamaForCausalLM, same run.

    python bench/train_throughput.py                      # reference config, random tokens
    python bench/train_throughput.py --data ~/.cache/llmos/data/default --tokenizer RUN/tokenizer.json
    python bench/train_throughput.py --modes compile --steps 60 --warmup 5

Both models get the reference config (vocab 4096, d_model 256, 4 layers, 4 heads, seq 256, batch 16),
the same initial weights (llmos's init, copied into HF), the same batches in the same order, the same
AdamW (lr, betas, weight decay on matrices) and the same step (forward with the loss, backward, grad
clip at 1.0, optimizer step), in two modes: eager fp32, and torch.compile in the dtype the trainer
would choose here (bf16 autocast where the hardware multiplies bf16: CUDA, AMX, AVX512-BF16; fp32
elsewhere, since software bf16 on an AVX2-only CPU is 100-400x slower: `--dtype` overrides). Warm-up
steps (which include compilation) are not timed; the timed steps are split into rounds that alternate
the two models (the order flips each round), and each model's tokens/s is the median over its rounds.
llmos's MFU in each mode is against a matmul peak measured in that mode's dtype at the start of the run.

Data: with --data (a prepared llmos corpus) the batches come from its token shards (tokenized once,
with --tokenizer, default DATA/tokenizer.json); without it, a fixed seeded random token tensor.
Progress goes to stderr; stdout gets one JSON line with every figure.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
import transformers
from transformers import LlamaConfig, LlamaForCausalLM

from llmos.interop.layout import hf_name
from llmos.model import ModelConfig, Transformer, default_lr
from llmos.perf import compute_dtype, machine, matmul_peak_flops

DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16"}


def log(msg: str):
    print(msg, file=sys.stderr, flush=True)


def make_batches(args, n: int) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], int, str]:
    """n (x, y) batches, the vocab size and a description of where they came from."""
    if args.data:
        from llmos.data.shards import TokenLoader, build_shards, load_tokens
        from llmos.tokenizer import Tokenizer
        tok = Tokenizer.load(args.tokenizer or Path(args.data) / "tokenizer.json")
        loader = TokenLoader(load_tokens(build_shards(args.data, tok), "train"), args.batch_size, args.seq_len)
        return [loader.next_batch() for _ in range(n)], tok.vocab_size, f"corpus {args.data} (train split)"
    gen = torch.Generator().manual_seed(0)
    rows = torch.randint(args.vocab, (n, args.batch_size, args.seq_len + 1), generator=gen)
    return [(r[:, :-1], r[:, 1:]) for r in rows], args.vocab, "random tokens (seed 0)"


def hf_llama(cfg: ModelConfig) -> LlamaForCausalLM:
    """A Hugging Face Llama of exactly llmos's architecture (no KV cache: this is training)."""
    hf_cfg = LlamaConfig(vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, intermediate_size=cfg.d_ff,
                         num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads,
                         num_key_value_heads=cfg.n_kv_heads, head_dim=cfg.head_dim,
                         max_position_embeddings=cfg.max_seq_len, rope_theta=cfg.rope_theta,
                         rms_norm_eps=cfg.norm_eps, tie_word_embeddings=cfg.tie_embeddings,
                         use_cache=False, attn_implementation="sdpa")
    return LlamaForCausalLM(hf_cfg)


class HFWithLoss(nn.Module):
    """HF forward with llmos's loss: logits upcast to fp32, cross-entropy against y at every position.
    (HF's own `labels=` path shifts the targets itself and would score one position fewer per row.)"""

    def __init__(self, hf: LlamaForCausalLM):
        super().__init__()
        self.hf = hf

    def forward(self, x, targets):
        logits = self.hf(input_ids=x).logits.float()
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-1)


def adamw(model: nn.Module, lr: float) -> torch.optim.AdamW:
    """The optimizer of llmos's Trainer (build_optimizers, adamw): decay on matrices, none on norms."""
    params = list(model.parameters())  # tied weights are listed once
    return torch.optim.AdamW([{"params": [p for p in params if p.ndim >= 2], "weight_decay": 0.1},
                              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}],
                             lr=lr, betas=(0.9, 0.95), eps=1e-8)


def make_step(model: nn.Module, compiled: bool, dtype: torch.dtype, lr: float):
    """One training step as the Trainer does it: (x, y) -> loss, parameters updated."""
    net = torch.compile(model) if compiled else model
    opt = adamw(model, lr)

    def step(x, y) -> float:
        with torch.autocast("cpu", dtype=dtype) if dtype != torch.float32 else nullcontext():
            loss = net(x, targets=y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()
    return step


def run_mode(mode: str, cfg: ModelConfig, init: dict, batches, args) -> dict:
    compiled = mode == "compile"
    dtype = compute_dtype("cpu", args.dtype if compiled else "fp32", compiled)
    key = f"{mode}_{DTYPE_NAMES[dtype]}"
    log(f"{key}: measuring the {DTYPE_NAMES[dtype]} matmul peak")
    peak = matmul_peak_flops("cpu", dtype, seconds=2.0)
    llmos = Transformer(cfg)
    llmos.load_state_dict(init)
    hf = hf_llama(cfg)
    hf.load_state_dict({hf_name(k): v for k, v in init.items()})
    steps = {name: make_step(m.train(), compiled, dtype, default_lr(cfg.d_model))
             for name, m in (("llmos", llmos), ("hf", HFWithLoss(hf)))}
    losses, warmup_s, rates = {}, {}, {name: [] for name in steps}
    for name, step in steps.items():
        t = time.perf_counter()
        first = [step(x, y) for x, y in batches[:args.warmup]][0]
        warmup_s[name] = time.perf_counter() - t
        log(f"{key} {name}: warm-up {args.warmup} steps in {warmup_s[name]:.1f} s, first loss {first:.4f}")
    timed = batches[args.warmup:]
    tokens_per_step = args.batch_size * args.seq_len
    for r in range(args.rounds):
        chunk = timed[r * len(timed) // args.rounds:(r + 1) * len(timed) // args.rounds]
        for name in (list(steps) if r % 2 == 0 else list(steps)[::-1]):
            t = time.perf_counter()
            for x, y in chunk:
                losses[name] = steps[name](x, y)
            rates[name].append(tokens_per_step * len(chunk) / (time.perf_counter() - t))
            log(f"{key} {name}: round {r + 1}/{args.rounds}: {rates[name][-1]:,.0f} tokens/s, loss {losses[name]:.4f}")
    tok_s = {name: statistics.median(v) for name, v in rates.items()}
    return {"mode": key, "dtype": DTYPE_NAMES[dtype], "peak_tflops": round(peak / 1e12, 3),
            "llmos_tok_s": round(tok_s["llmos"]), "hf_tok_s": round(tok_s["hf"]),
            "ratio": round(tok_s["llmos"] / tok_s["hf"], 3),
            "llmos_mfu": round(tok_s["llmos"] * llmos.flops_per_token(args.seq_len) / peak, 4),
            "llmos_rounds_tok_s": [round(v) for v in rates["llmos"]], "hf_rounds_tok_s": [round(v) for v in rates["hf"]],
            "llmos_final_loss": round(losses["llmos"], 4), "hf_final_loss": round(losses["hf"], 4),
            "llmos_warmup_s": round(warmup_s["llmos"], 1), "hf_warmup_s": round(warmup_s["hf"], 1)}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--modes", default="eager,compile", help="comma-separated: eager (fp32), compile (dtype: --dtype)")
    p.add_argument("--dtype", default="auto", choices=["auto", "bf16", "fp32"],
                   help="compile mode's dtype; auto: bf16 only where the hardware multiplies it")
    p.add_argument("--steps", type=int, default=30, help="timed steps per model and mode")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first (they include compilation)")
    p.add_argument("--rounds", type=int, default=3, help="the timed steps alternate between models in this many rounds")
    p.add_argument("--data", default="", help="a prepared llmos corpus (default: random tokens)")
    p.add_argument("--tokenizer", default="", help="tokenizer.json for --data (default: DATA/tokenizer.json)")
    p.add_argument("--vocab", type=int, default=4096)
    p.add_argument("--depth", type=int, default=4, help="4: d_model 256, 4 layers, 4 heads")
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=16)
    args = p.parse_args()
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if unknown := set(modes) - {"eager", "compile"}:
        p.error(f"unknown --modes {sorted(unknown)}: use eager, compile")
    if args.warmup < 1 or args.rounds < 1 or args.steps < args.rounds:
        p.error("--warmup and --rounds must be positive and --steps at least --rounds")

    batches, vocab, data = make_batches(args, args.warmup + args.steps)
    cfg = ModelConfig.from_depth(args.depth, vocab_size=vocab, max_seq_len=args.seq_len)
    torch.manual_seed(0)
    reference = Transformer(cfg)
    init = reference.state_dict()
    log(f"{reference.num_params():,} params; {data}; {torch.get_num_threads()} threads")
    result = {"config": {**cfg.to_dict(), "params": reference.num_params(), "batch_size": args.batch_size,
                         "seq_len": args.seq_len},
              "data": data, "machine": {**machine(), "transformers": transformers.__version__,
                                        "python": platform.python_version()},
              "steps": {"warmup": args.warmup, "timed": args.steps, "rounds": args.rounds}}
    for mode in modes:
        figures = run_mode(mode, cfg, init, batches, args)
        result[figures["mode"]] = figures
    print(json.dumps(result))


if __name__ == "__main__":
    main()

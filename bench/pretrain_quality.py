"""Pretraining quality per CPU-minute: a GPT-2-style baseline against llmos's recipe, same run.

    python bench/pretrain_quality.py                       # 10 minutes a run, seeds 0 and 1, both recipes
    python bench/pretrain_quality.py --minutes 3 --seeds 0 --recipe llmos --recipe llmos:muon_lr=0.04
    python bench/pretrain_quality.py --minutes 3 --recipe gpt2:d_model=384,n_layers=3,lr=2e-3

Both recipes train on the same token stream (the prepared corpus's train split, the speedrun's
tokenizer) for the same wall-clock seconds of training steps, and are scored in bits per byte on
the corpus's whole validation split by the same code (llmos.train.pretrain's evaluator, windows of
`--eval-seq-len` tokens). Only training steps count against the budget: the first step (where
torch.compile compiles) and the evaluations are timed apart, so each recipe's clock holds the same
kind of work. Learning rates follow each recipe's schedule over the step count that the measured
step time predicts for the budget, replanned every step, as the trainer's budget does.

- `gpt2`: learned absolute positions, LayerNorm with biases, GELU MLP (4x), biases in every
  projection, tied embeddings, AdamW (0.9, 0.95, weight decay 0.1), linear warmup then cosine to 10%.
  Its default shape and learning rate are the best of the sweep in docs/log.md (issue 13).
- `llmos`: the cpu speedrun preset as it stands (llmos.speedrun.PRESETS["cpu"]): its model
  (llmos.model.Transformer), optimizer, schedule, batch and sequence length, through llmos's own
  build_optimizers and lr_multiplier.
`NAME:key=value,...` changes one field of the recipe's model or train config (an experiment).

Each run is evaluated every `--eval-every` minutes of training for the curves; time-to-target is
when llmos's mean curve first reaches the baseline's mean final bits per byte (linear between
evaluations; an upper bound, since the curve comes from a schedule planned for the whole budget).
Writes OUT/results.json, OUT/curves.png and a markdown table on stdout (`--save-models`: llmos's
models too).
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, fields, replace
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from llmos.common import atomic_write, llmos_home
from llmos.data.corpus import load_texts
from llmos.data.shards import TokenLoader, build_shards, load_tokens
from llmos.model import default_lr
from llmos.params import save_params
from llmos.perf import compute_dtype, describe_machine
from llmos.speedrun import PRESETS
from llmos.tokenizer import Tokenizer
from llmos.train.loop import TrainConfig, build_optimizers, can_compile, lr_multiplier
from llmos.train.pretrain import bits_per_byte_evaluator


@dataclass
class GPT2Config:  # the default shape: the best of the baseline's sweep (docs/log.md, issue 13)
    vocab_size: int = 4096
    d_model: int = 192
    n_layers: int = 2
    n_heads: int = 6
    max_seq_len: int = 256


class GPT2Block(nn.Module):
    def __init__(self, cfg: GPT2Config):
        super().__init__()
        self.n_heads = cfg.n_heads
        self.ln_1 = nn.LayerNorm(cfg.d_model)
        self.c_attn = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.attn_proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.ln_2 = nn.LayerNorm(cfg.d_model)
        self.c_fc = nn.Linear(cfg.d_model, 4 * cfg.d_model)
        self.mlp_proj = nn.Linear(4 * cfg.d_model, cfg.d_model)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).view(B, T, 3, self.n_heads, C // self.n_heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, C)
        x = x + self.attn_proj(y)
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))


class GPT2(nn.Module):
    """GPT-2's architecture (Radford et al. 2019) at any size; `norm` and `embed` are named as in
    llmos's Transformer so the same evaluator and optimizer grouping apply."""

    def __init__(self, cfg: GPT2Config):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos_embed = nn.Embedding(cfg.max_seq_len, cfg.d_model)
        self.layers = nn.ModuleList(GPT2Block(cfg) for _ in range(cfg.n_layers))
        self.norm = nn.LayerNorm(cfg.d_model)
        for name, p in self.named_parameters():
            if name.endswith("bias"):
                nn.init.zeros_(p)
            elif p.ndim == 2:  # GPT-2's init: N(0, 0.02), residual projections scaled by depth
                std = 0.02 / math.sqrt(2 * cfg.n_layers) if name.endswith("proj.weight") else 0.02
                nn.init.normal_(p, std=std)

    def forward(self, idx, targets=None):
        x = self.embed(idx) + self.pos_embed(torch.arange(idx.size(1), device=idx.device))
        for block in self.layers:
            x = block(x)
        logits = F.linear(self.norm(x), self.embed.weight)  # tied
        if targets is None:
            return logits
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten())

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


# The baseline's training: GPT-2 / nanoGPT practice, learning rate and shape from the sweep in docs/log.md.
GPT2_TRAIN = TrainConfig(batch_size=16, seq_len=256, lr=3e-3, warmup_steps=50, min_lr_frac=0.1, schedule="cosine",
                         weight_decay=0.1, grad_clip=1.0, optimizer="adamw")


@dataclass
class Recipe:
    spec: str
    kind: str  # gpt2 | llmos
    model: object  # GPT2Config or llmos ModelArgs
    train: TrainConfig

    def build(self, vocab_size: int) -> nn.Module:
        if self.kind == "gpt2":
            return GPT2(replace(self.model, vocab_size=vocab_size, max_seq_len=self.train.seq_len))
        return self.model.init(self.model.build(vocab_size, self.train.seq_len))  # as `llmos pretrain` does


def parse_recipe(spec: str) -> Recipe:
    kind, _, changes = spec.partition(":")
    if kind == "gpt2":
        recipe = Recipe(spec, kind, GPT2Config(), replace(GPT2_TRAIN))
    elif kind == "llmos":
        preset = PRESETS["cpu"]
        recipe = Recipe(spec, kind, replace(preset.model), replace(preset.train, minutes=0.0))
    else:
        sys.exit(f"unknown recipe {kind!r}: use gpt2 or llmos (with :key=value,... changes)")
    for change in filter(None, changes.split(",")):
        key, _, value = change.partition("=")
        target = next((obj for obj in (recipe.model, recipe.train) if key in {f.name for f in fields(obj)}), None)
        if target is None:
            sys.exit(f"{spec}: {key!r} is neither a model nor a train setting of {kind}")
        current = getattr(target, key)
        parsed = value in ("1", "true", "True") if isinstance(current, bool) else type(current)(value)
        setattr(target, key, parsed)
    return recipe


def train_run(recipe: Recipe, seed: int, seconds: float, train_tokens, evaluate, vocab_size: int,
              eval_every_s: float, save=None) -> dict:
    torch.manual_seed(seed)
    model = recipe.build(vocab_size)
    cfg = recipe.train
    lr = cfg.lr or default_lr(model.cfg.d_model)
    optimizers = build_optimizers(model, cfg, lr)
    for opt in optimizers:
        for group in opt.param_groups:
            group["base_lr"] = group["lr"]
    device = torch.device("cpu")
    compiled = cfg.compile and can_compile(device)
    net = torch.compile(model) if compiled else model
    bf16 = compute_dtype(device, cfg.dtype, compiled) == torch.bfloat16
    loader = TokenLoader(train_tokens, cfg.batch_size, cfg.seq_len, seed=seed)
    trainable = [p for p in model.parameters() if p.requires_grad]

    def step(index: int, planned: int) -> float:
        mult = lr_multiplier(index, cfg, planned)
        for opt in optimizers:
            for group in opt.param_groups:
                group["lr"] = group["base_lr"] * mult
        loss_sum = 0.0
        for _ in range(cfg.grad_accum):
            x, y = loader.next_batch()
            with torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext():
                loss = net(x, targets=y) / cfg.grad_accum
            loss.backward()
            loss_sum += loss.item()
        torch.nn.utils.clip_grad_norm_(trainable, cfg.grad_clip or float("inf"))
        for opt in optimizers:
            opt.step()
            opt.zero_grad(set_to_none=True)
        return loss_sum

    def scored() -> dict:
        model.eval()
        with torch.no_grad():
            result = evaluate(model)
        model.train()
        return result

    started = time.perf_counter()
    step(0, 1000)  # compiles; timed apart
    compile_s = time.perf_counter() - started
    elapsed, steps, recent, curve = 0.0, 1, [], []
    next_eval = eval_every_s
    while elapsed < seconds:
        typical = statistics.median(recent[-20:]) if recent else compile_s
        planned = steps + max(1, round((seconds - elapsed) / typical))
        t0 = time.perf_counter()
        loss = step(steps, planned)
        dt = time.perf_counter() - t0
        elapsed, steps = elapsed + dt, steps + 1
        recent.append(dt)
        if not math.isfinite(loss):
            print(f"{recipe.spec} seed {seed}: the loss diverged at step {steps}", file=sys.stderr)
            break
        if elapsed >= next_eval and elapsed < seconds:
            curve.append({"minutes": elapsed / 60, "step": steps, **scored()})
            next_eval += eval_every_s
        if steps % 50 == 0:
            print(f"  {recipe.spec} seed {seed}: step {steps} {elapsed / 60:.1f} min loss {loss:.3f}", file=sys.stderr)
    final = scored()
    if save and recipe.kind == "llmos":
        save(model, recipe, seed, steps)
    curve.append({"minutes": elapsed / 60, "step": steps, **final})
    tokens = steps * cfg.batch_size * cfg.seq_len * cfg.grad_accum
    return {"recipe": recipe.spec, "seed": seed, "steps": steps, "train_minutes": elapsed / 60,
            "compile_s": compile_s, "tokens": tokens, "tokens_per_s": tokens * (steps - 1) / steps / max(elapsed, 1e-9),
            "params": model.num_params(), "val_bpb": final["val_bpb"], "val_loss": final["val_loss"],
            "curve": curve}


def mean_curve(runs: list[dict]) -> list[tuple[float, float]]:
    """(minutes, mean bpb) at each evaluation index the runs share."""
    n = min(len(r["curve"]) for r in runs)
    return [(statistics.mean(r["curve"][i]["minutes"] for r in runs),
             statistics.mean(r["curve"][i]["val_bpb"] for r in runs)) for i in range(n)]


def time_to_target(curve: list[tuple[float, float]], target: float) -> float | None:
    previous = (0.0, math.inf)
    for minutes, bpb in curve:
        if bpb <= target:
            if not math.isfinite(previous[1]):
                return minutes
            frac = (previous[1] - target) / (previous[1] - bpb)
            return previous[0] + frac * (minutes - previous[0])
        previous = (minutes, bpb)
    return None


def plot(by_recipe: dict[str, list[dict]], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for spec, runs in by_recipe.items():
        for run in runs:
            ax.plot([p["minutes"] for p in run["curve"]], [p["val_bpb"] for p in run["curve"]], marker="o",
                    markersize=3, label=f"{spec} seed {run['seed']}")
    ax.set_xlabel("training minutes")
    ax.set_ylabel("validation bits per byte")
    ax.set_title("pretraining quality per CPU-minute")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_write(path) as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10.0, help="training minutes per run")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--recipe", action="append", help="gpt2 | llmos [:key=value,...] (default: both)")
    ap.add_argument("--baseline", default="", help="the recipe time-to-target is measured against "
                    "(default: the first gpt2 recipe)")
    ap.add_argument("--data", default="", help="prepared corpus (default LLMOS_HOME/data/default)")
    ap.add_argument("--tokenizer", default="", help="default: the cpu speedrun's, else one trained like it")
    ap.add_argument("--eval-seq-len", type=int, default=256)
    ap.add_argument("--eval-every", type=float, default=1.0, help="minutes of training between evaluations")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--out", default="", help="default LLMOS_HOME/bench/pretrain_quality")
    ap.add_argument("--save-models", action="store_true", help="write each llmos run's model as "
                    "OUT/llmos-seed<S>.llmos (the first llmos recipe's; e.g. for bench/compress.py)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    specs = args.recipe or ["gpt2", "llmos"]
    recipes = [parse_recipe(s) for s in specs]
    seeds = [int(s) for s in args.seeds.split(",")]
    out = Path(args.out).expanduser() if args.out else llmos_home() / "bench" / "pretrain_quality"
    out.mkdir(parents=True, exist_ok=True)

    data = Path(args.data).expanduser() if args.data else llmos_home() / "data" / "default"
    tok_path = Path(args.tokenizer).expanduser() if args.tokenizer else llmos_home() / "runs" / "speedrun-cpu" / "tokenizer.json"
    if tok_path.is_file():
        tok = Tokenizer.load(tok_path)
    else:  # the speedrun's tokenizer stage
        print(f"training a {PRESETS['cpu'].vocab_size}-token tokenizer on {data}", file=sys.stderr)
        tok = Tokenizer.train(load_texts(data, "train"), vocab_size=PRESETS["cpu"].vocab_size)
        tok.save(out / "tokenizer.json")
    shards = build_shards(data, tok)
    train_tokens, val_tokens = load_tokens(shards, "train"), load_tokens(shards, "val")
    evaluate = bits_per_byte_evaluator(val_tokens, torch.from_numpy(tok.token_bytes), args.eval_seq_len,
                                       len(val_tokens), rank=0, world=1)
    machine = describe_machine()
    print(f"{machine}; {torch.get_num_threads()} threads; validation {len(val_tokens):,} tokens", file=sys.stderr)

    def save(model, recipe, seed, steps):
        if recipe is next(r for r in recipes if r.kind == "llmos"):
            save_params(out / f"llmos-seed{seed}.llmos", model, tok, provenance={
                "source": "bench/pretrain_quality.py", "recipe": recipe.spec, "minutes": args.minutes, "step": steps})

    by_recipe: dict[str, list[dict]] = {r.spec: [] for r in recipes}
    for seed in seeds:  # seeds outermost: a machine that slows down mid-run hurts every recipe alike
        for recipe in recipes:
            run = train_run(recipe, seed, args.minutes * 60, train_tokens, evaluate, tok.vocab_size,
                            args.eval_every * 60, save if args.save_models else None)
            print(f"{recipe.spec} seed {seed}: {run['val_bpb']:.4f} bpb, {run['steps']} steps, "
                  f"{run['tokens_per_s']:,.0f} tokens/s", file=sys.stderr)
            by_recipe[recipe.spec].append(run)

    summary = {spec: {"mean_bpb": statistics.mean(r["val_bpb"] for r in runs),
                      "bpb": [r["val_bpb"] for r in runs], "steps": [r["steps"] for r in runs],
                      "tokens_per_s": statistics.mean(r["tokens_per_s"] for r in runs),
                      "params": runs[0]["params"]} for spec, runs in by_recipe.items()}
    baseline = args.baseline or next((s for s in specs if s.startswith("gpt2")), "")
    lines = [f"{args.minutes:g} training minutes a run, seeds {args.seeds}; {machine}, "
             f"{torch.get_num_threads()} threads; bits per byte on {len(val_tokens):,} validation tokens", "",
             "| recipe | params | steps | tokens/s | bits/byte (each seed) | mean | vs baseline | minutes to baseline |",
             "|---|---|---|---|---|---|---|---|"]
    for spec, s in summary.items():
        versus = minutes = ""
        if baseline in summary and spec != baseline:
            target = summary[baseline]["mean_bpb"]
            s["vs_baseline"] = s["mean_bpb"] / target - 1
            s["minutes_to_baseline"] = time_to_target(mean_curve(by_recipe[spec]), target)
            versus = f"{100 * s['vs_baseline']:+.1f}%"
            minutes = "not reached" if s["minutes_to_baseline"] is None else f"{s['minutes_to_baseline']:.1f}"
        lines.append(f"| {spec} | {s['params']:,} | {' / '.join(map(str, s['steps']))} | {s['tokens_per_s']:,.0f} | "
                     f"{' / '.join(f'{b:.4f}' for b in s['bpb'])} | {s['mean_bpb']:.4f} | {versus} | {minutes} |")
    print("\n".join(lines))
    with atomic_write(out / "results.json", "w") as f:
        json.dump({"machine": machine, "threads": torch.get_num_threads(), "minutes": args.minutes,
                   "seeds": seeds, "baseline": baseline, "summary": summary, "runs": by_recipe}, f, indent=1)
    plot(by_recipe, out / "curves.png")
    print(f"\n{out / 'results.json'}, {out / 'curves.png'}", file=sys.stderr)


if __name__ == "__main__":
    main()

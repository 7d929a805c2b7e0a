"""Scaling laws: measure how loss falls with model size N and training tokens D on your own data and
hardware, then use the fitted law to plan a bigger run.

    llmos scaling sweep [--flops 1e13,2.5e13,6e13] [--sizes 2x64,2x96,...] [--quick] [--out DIR]
    llmos scaling fit [--out DIR]              # fit.json, scaling_report.md, isoflop/frontier/law PNGs
    llmos scaling predict --flops 1e15         # optimal N, D, loss and the nearest model size for a budget
    llmos scaling check [--factor 4]           # train at 4x the largest budget; predicted vs actual

**Sweep (IsoFLOP profiles).** For each compute budget C and each model size, train a full run
(cosine schedule ending at its last step) on D = C / flops_per_token tokens, and append the final
validation loss to `points.jsonl`. A finished (C, size) point is never trained again; an
interrupted one resumes from its checkpoint. Pairs that would give fewer than `min_steps` steps,
an extreme tokens-per-parameter ratio, or more than one epoch of the corpus are skipped: the law
describes single-epoch training of reasonably trained models. Sizes come from a ladder (`ladder`):
widths in steps of 32 with a layer per 64 channels, fine enough that each budget has sizes on both
sides of its best; the one-knob depths (x2-4.5 in N per step) were too coarse (docs/log.md).

**What N and D are.** N is the "FLOP-equivalent" parameter count, `Transformer.flops_per_token(seq)
/ 6`: the weights that do matmuls (the tied output head included, the embedding lookup not) plus
attention's share of the compute. With it C = 6·N·D holds exactly, so the Chinchilla algebra
(N_opt ∝ C^a, D_opt = C / 6N_opt) needs no correction terms (DeepSeek LLM measures model scale
in FLOPs per token for the same reason). The plain parameter count is kept as `params`.

**Fit.** Approaches 2 and 3 of Hoffmann et al. (2022) with bootstrap intervals: `llmos/scaling_fit.py`.

**Default grid and its cost** (vocab 1024, batch 16 x 256 tokens, compiled bf16). Budgets 1e13,
2.5e13, 6e13 over the ladder 2x64 ... 4x256 keep 12 points (3, 4 and 5 per budget) worth 4.3e14
FLOPs: 43 minutes on a quiet 2-core EPYC, where these models run at 130-210 GFLOP/s (2x64 at
89k tokens/s, 4x224 at 11k). The check at 4 x 6e13 trains 4x224 for 3,039 steps: 20 minutes; it
came out 0.3% under the prediction (docs/log.md). `--quick` (5e12 and 1e13, the three smallest
sizes, 250+ steps) takes about 6 minutes and gives a crude fit.

The small vocabulary keeps the tied output head a small part of N (at 4096 it was 262k of depth
1's 348k), and at least 500 steps keep points off the cliff where a small model is still leaving
the unigram plateau.
"""
from __future__ import annotations

import itertools
import json
import math
import shutil
import time
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path

import numpy as np

from llmos.common import LlmosError, atomic_write, llmos_home, read_jsonl, write_json
from llmos.model import ModelConfig, count_params, flops_per_token
from llmos.report import markdown_table, write_report
from llmos.scaling_fit import CHINCHILLA, HUBER_DELTA, Law, bootstrap, fit_isoflop, fit_law, isoflop_exponent
from llmos.train.loop import TrainConfig


@dataclass(frozen=True, order=True)
class Size:
    """A model shape: `layers` blocks of `width` channels in heads of 32, written 2x96. Heads of one
    size all along a sweep keep the IsoFLOP curves smooth (at 2x128, heads of 32 did 0.09 nats
    better than heads of 64 in a 1e13-FLOP run; docs/log.md)."""
    layers: int
    width: int

    def __str__(self) -> str:
        return f"{self.layers}x{self.width}"

    @property
    def heads(self) -> int:
        return self.width // 32

    def model_args(self):
        from llmos.train.pretrain import ModelArgs
        return ModelArgs(depth=self.layers, d_model=self.width, n_heads=self.heads)

    def config(self, vocab_size: int, seq_len: int) -> ModelConfig:
        """Through the same ModelArgs the point trains with, so the N planned is the N trained."""
        return self.model_args().build(vocab_size, seq_len)


def ladder(width: int) -> Size:
    """The size family of sweeps and checks: widths in steps of 32, one layer per 64 channels (at
    least two: one layer cannot form induction heads). N grows by x1.3-2 per step, against x2-4.5
    per step of the one-knob depths, fine enough to put sizes on both sides of each budget's best."""
    return Size(max(2, math.ceil(width / 64)), width)


@dataclass
class Grid:
    flops: list[float]
    sizes: list[Size]
    min_steps: int = 500  # fewer and a small model is still leaving the unigram plateau: a cliff, not a curve
    tpp_min: float = 0.5  # tokens per (FLOP-equivalent) parameter outside [tpp_min, tpp_max]
    tpp_max: float = 50.0  # is too far from the optimum to shape the parabola
    eval_tokens: int = 131072


# Both sized for a quiet 2-core CPU with compile + bf16 (the module docstring has the arithmetic):
# the default grid keeps 11 points in about 50 minutes, the quick one 6 in about 7.
DEFAULT_GRID = Grid(flops=[1e13, 2.5e13, 6e13], sizes=[ladder(w) for w in range(64, 257, 32)])
# The quick grid accepts more undertrained points so that each budget still gets three.
QUICK_GRID = Grid(flops=[5e12, 1e13], sizes=[ladder(w) for w in (64, 96, 128)], min_steps=250, eval_tokens=65536)


def default_out() -> Path:
    return llmos_home() / "runs" / "scaling"


def parse_flops(text: str) -> list[float]:
    """'1e13,3e13' -> [1e13, 3e13], with a clear error for anything else."""
    values = []
    for item in text.split(","):
        try:
            value = float(item.strip())
        except ValueError:
            raise LlmosError(f"--flops: {item.strip()!r} is not a number; give budgets like 1e13,3e13") from None
        if not math.isfinite(value) or value <= 0:
            raise LlmosError(f"--flops: {item.strip()!r} is not a positive compute budget")
        values.append(value)
    return sorted(set(values))


def parse_sizes(text: str) -> list[Size]:
    """'2x96,3x160' (layers x width) or '1,2,3' (the one-knob depths' shapes: d x 64d), mixed freely."""
    sizes = set()
    for item in text.split(","):
        layers, _, width = item.strip().lower().partition("x")
        try:
            size = Size(int(layers), int(width)) if width else Size(int(layers), 64 * int(layers))
        except ValueError:
            raise LlmosError(f"--sizes: {item.strip()!r} is neither a depth like 3 nor a shape like 2x96") from None
        if size.layers < 1 or size.width < 32 or size.width % 32:
            raise LlmosError(f"--sizes: {item.strip()!r} needs at least one layer and a width that is a multiple of 32")
        sizes.add(size)
    return sorted(sizes, key=lambda z: (z.width, z.layers))


@cache
def model_size(size: Size, vocab_size: int, seq_len: int) -> tuple[float, int, int]:
    """(N = flops_per_token / 6, total parameters, flops per token), counted from the config, so
    that even the huge sizes an extrapolation asks about cost nothing."""
    cfg = size.config(vocab_size, seq_len)
    fpt = flops_per_token(cfg, seq_len)
    return fpt / 6, count_params(cfg), fpt


def nearest_size(n: float, vocab_size: int, seq_len: int) -> Size:
    """The ladder size whose N is nearest to n in log space. N grows with the ladder's width: double,
    then bisect, to the last width below n; the answer is it or the next one (in steps of 32)."""
    def size(k):
        return model_size(ladder(32 * k), vocab_size, seq_len)[0]
    hi = 2
    while size(hi) < n:
        hi *= 2
    lo = max(2, hi // 2)  # size(lo) < n <= size(hi), unless n is below the smallest ladder size
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if size(mid) < n else (lo, mid)
    return ladder(32 * min(lo, hi, key=lambda k: abs(math.log(size(k) / n))))


def plan(grid: Grid, vocab_size: int, seq_len: int, tokens_per_step: int, train_tokens: int) -> tuple[list, list]:
    """The (budget, size) points worth training, and the skipped ones with the reason."""
    keep, skipped = [], []
    for c, size in itertools.product(grid.flops, grid.sizes):
        n, params, fpt = model_size(size, vocab_size, seq_len)
        steps = round(c / fpt / tokens_per_step)
        tokens = steps * tokens_per_step
        why = None
        if steps < grid.min_steps:
            why = f"{steps} steps < {grid.min_steps}"
        elif not grid.tpp_min <= tokens / n <= grid.tpp_max:
            why = f"{tokens / n:.2g} tokens/param outside [{grid.tpp_min:g}, {grid.tpp_max:g}]"
        elif tokens > train_tokens:
            why = f"{tokens:,} tokens > one epoch of the corpus ({train_tokens:,})"
        point = {"flops": c, "size": str(size), "layers": size.layers, "width": size.width, "n": n, "params": params,
                 "steps": steps, "tokens": tokens,
                 "compute": fpt * tokens}
        (skipped if why else keep).append({**point, "reason": why} if why else point)
    return keep, skipped


# ----- the sweep -----

def _point_dir(out: Path, point: dict, prefix: str = "") -> Path:
    return out / "runs" / f"{prefix}C{point['flops']:.3g}-{point['size']}"


def _label(point: dict) -> str:
    return f"C={point['flops']:.3g} size {point['size']}"


def _append_jsonl(path: Path, record: dict) -> None:
    """Rewrite the whole file atomically: a crash leaves the old file or the new one, never half a line."""
    rows = list(read_jsonl(path)) if path.is_file() else []
    with atomic_write(path, "w") as f:
        f.write("".join(json.dumps(r) + "\n" for r in [*rows, record]))


def _train_point(point: dict, settings: dict, run_dir: Path) -> dict:
    """One full pretraining run of `point['steps']` steps; resumes if the run has a checkpoint."""
    from llmos.train.pretrain import DataArgs, pretrain
    steps = point["steps"]
    # warmup and checkpoint spacing scale with the run so that short points are not mostly warmup
    cfg = TrainConfig(steps=steps, batch_size=settings["batch_size"], seq_len=settings["seq_len"],
                      warmup_steps=max(1, min(100, steps // 10)), eval_every=steps, sample_every=steps,
                      eval_tokens=settings["eval_tokens"], ckpt_every=max(50, steps // 4),
                      compile=settings["compile"], device=settings["device"], log_every=max(1, steps // 50))
    resume = any((run_dir / "checkpoints").glob("step_*.pt"))
    t = time.time()
    result = pretrain(Size(point["layers"], point["width"]).model_args(), cfg,
                      DataArgs(data=settings["data"], tokenizer=settings["tokenizer"], out=str(run_dir)), resume=resume)
    if result["interrupted"]:
        raise LlmosError(f"interrupted at step {result['step']} of {_label(point)}: "
                         "run the same command again to resume")
    return {**point, "val_loss": result["val_loss"], "val_bpb": result["val_bpb"], "seconds": time.time() - t,
            "resumed": resume, "run_dir": str(run_dir)}


def _settings(out: Path, data: str, tokenizer: str, vocab_size: int, train: TrainConfig, eval_tokens: int) -> dict:
    """Resolve the corpus and tokenizer (training one into the sweep dir if none is given) and pin
    them in sweep.json: every point of a sweep must share data, tokenizer, batch and context."""
    from llmos.data.corpus import default_corpus_dir, load_texts
    from llmos.data.shards import build_shards, load_tokens
    from llmos.tokenizer import Tokenizer
    data_dir = Path(data).expanduser() if data else default_corpus_dir()
    if not (data_dir / "train.jsonl").is_file():
        raise LlmosError(f"no prepared corpus in {data_dir}: run `llmos data prepare` (or pass --data)")
    tok_path = Path(tokenizer).expanduser() if tokenizer else out / "tokenizer.json"
    if not tok_path.is_file():
        if tokenizer:
            raise LlmosError(f"no tokenizer at {tok_path}")
        print(f"[scaling] training a {vocab_size}-token tokenizer on {data_dir} -> {tok_path}", flush=True)
        Tokenizer.train(load_texts(data_dir, "train"), vocab_size=vocab_size).save(tok_path)
    tok = Tokenizer.load(tok_path)
    settings = {"data": str(data_dir), "tokenizer": str(tok_path), "vocab_size": tok.vocab_size,
                "batch_size": train.batch_size, "seq_len": train.seq_len, "compile": train.compile,
                "device": train.device, "eval_tokens": eval_tokens,
                "train_tokens": len(load_tokens(build_shards(data_dir, tok), "train"))}
    saved_path = out / "sweep.json"
    if saved_path.is_file():
        saved = json.loads(saved_path.read_text())
        pinned = ("data", "tokenizer", "vocab_size", "batch_size", "seq_len")
        changed = [k for k in pinned if saved[k] != settings[k]]
        if changed:
            raise LlmosError(f"{out} holds a sweep with other {', '.join(changed)} "
                             f"({', '.join(f'{k}={saved[k]}' for k in changed)}): use the same settings or another --out")
    write_json(saved_path, settings)
    return settings


def sweep(out: str | Path = "", grid: Grid = DEFAULT_GRID, data: str = "", tokenizer: str = "",
          vocab_size: int = 1024, train: TrainConfig | None = None) -> dict:
    """Train every planned (budget, size) point not yet in points.jsonl. Returns
    {"trained": [...], "done_before": [...], "skipped": [...], "points": all recorded points}."""
    out = Path(out).expanduser() if out else default_out()
    out.mkdir(parents=True, exist_ok=True)
    train = train or TrainConfig()
    settings = _settings(out, data, tokenizer, vocab_size, train, grid.eval_tokens)
    keep, skipped = plan(grid, settings["vocab_size"], train.seq_len, train.batch_size * train.seq_len,
                         settings["train_tokens"])
    for s in skipped:
        print(f"[scaling] skip {_label(s)}: {s['reason']}")
    if not keep:
        raise LlmosError("no (budget, size) pair of this grid is worth training (see the skips above): "
                         "raise --flops or change --sizes")
    points_path = out / "points.jsonl"
    done = {(p["flops"], p["size"]) for p in _recorded(out)}
    trained, before = [], []
    for i, point in enumerate(keep):
        label = _label(point)
        if (point["flops"], point["size"]) in done:
            print(f"[scaling] {label}: done earlier, skipping")
            before.append(point)
            continue
        print(f"[scaling] point {i + 1}/{len(keep)}: {label}, N={point['n']:,.0f}, D={point['tokens']:,} tokens, "
              f"{point['steps']} steps", flush=True)
        run_dir = _point_dir(out, point)
        record = _train_point(point, settings, run_dir)
        _append_jsonl(points_path, record)
        # a recorded point is never resumed: its checkpoints (weights + optimizer state) only take
        # disk; model.llmos stays for sampling
        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
        print(f"[scaling] {label}: val loss {record['val_loss']:.4f} in {record['seconds']:.0f} s", flush=True)
        trained.append(record)
    return {"trained": trained, "done_before": before, "skipped": skipped, "points": load_points(out)}


def _recorded(out: Path) -> list[dict]:
    """The points a sweep directory holds so far ([] for none)."""
    path = out / "points.jsonl"
    points = list(read_jsonl(path)) if path.is_file() else []
    if any("size" not in p for p in points):
        raise LlmosError(f"{path} was written by an older llmos (points by depth, without model sizes): "
                         "sweep again into another --out")
    return points


def load_points(out: str | Path) -> list[dict]:
    path = Path(out) / "points.jsonl"
    points = _recorded(Path(out))
    if not points:
        raise LlmosError(f"no points in {path} yet: run `llmos scaling sweep` first")
    return points


# ----- fit, predict, check -----

def _sweep_settings(out: Path) -> dict:
    path = out / "sweep.json"
    if not path.is_file():
        raise LlmosError(f"no sweep in {out}: run `llmos scaling sweep` first (or pass --out)")
    return json.loads(path.read_text())


def _load_fit(out: Path) -> dict:
    path = out / "fit.json"
    if not path.is_file():
        raise LlmosError(f"no fit in {out}: run `llmos scaling fit` first")
    return json.loads(path.read_text())


def fit(out: str | Path = "", samples: int = 200) -> dict:
    """Fit both approaches and the bootstrap; write fit.json, the PNGs and scaling_report.md."""
    out = Path(out).expanduser() if out else default_out()
    points = load_points(out)
    law, objective = fit_law([p["n"] for p in points], [p["tokens"] for p in points], [p["val_loss"] for p in points])
    budgets = fit_isoflop(points)
    result = {"law": asdict(law), "huber_objective": objective, "huber_delta": HUBER_DELTA, "a": law.a, "b": law.b,
              "isoflop": budgets, "isoflop_exponent": isoflop_exponent(budgets),
              "bootstrap": bootstrap(points, law, samples) if samples else None,
              "points": len(points), "n_range": [min(p["n"] for p in points), max(p["n"] for p in points)],
              "settings": _sweep_settings(out)}
    write_json(out / "fit.json", result)
    render_report(out)
    return result


def predict(out: str | Path, flops: float) -> dict:
    """The compute-optimal N, D and loss for a budget, and the nearest ladder size with its D and loss."""
    out = Path(out).expanduser() if out else default_out()
    saved = _load_fit(out)
    law, settings = Law(**saved["law"]), saved["settings"]
    n, d, loss = (float(v) for v in law.optimum(flops))
    size = nearest_size(n, settings["vocab_size"], settings["seq_len"])
    size_n, params, fpt = model_size(size, settings["vocab_size"], settings["seq_len"])
    tokens_per_step = settings["batch_size"] * settings["seq_len"]
    steps = max(1, round(flops / fpt / tokens_per_step))
    iso = saved["isoflop_exponent"]
    return {"flops": flops, "n": n, "tokens": d, "tokens_per_param": d / n, "loss": loss,
            "size": str(size), "layers": size.layers, "width": size.width, "heads": size.heads,
            "size_n": size_n, "size_params": params,
            "size_steps": steps, "size_tokens": steps * tokens_per_step, "size_compute": fpt * steps * tokens_per_step,
            "size_loss": float(law.loss(size_n, steps * tokens_per_step)),
            "isoflop_n": iso["k"] * flops ** iso["a"] if iso else None, "warning": _extrapolation(n, saved)}


def _extrapolation(n: float, saved: dict) -> str:
    low, high = saved.get("n_range") or (0, math.inf)
    if low <= n <= high:
        return ""
    return (f"the optimum N {n:,.0f} lies outside the swept sizes ({low:,.0f} to {high:,.0f}): the law is "
            "extrapolated, so sweep sizes around it (--sizes) before trusting this figure")


def format_prediction(p: dict) -> str:
    lines = [f"budget {p['flops']:.3g} FLOPs (fitted law, approach 3):",
             f"  compute-optimal N {p['n']:,.0f}, D {p['tokens']:,.0f} tokens "
             f"({p['tokens_per_param']:.1f} tokens/param), predicted loss {p['loss']:.4f}",
             f"  nearest size {p['size']} (llmos pretrain --depth {p['layers']} --d-model {p['width']} "
             f"--n-heads {p['heads']}): N {p['size_n']:,.0f} ({p['size_params']:,} params), {p['size_steps']:,} steps = "
             f"{p['size_tokens']:,} tokens, predicted loss {p['size_loss']:.4f}"]
    if p["isoflop_n"]:
        lines.append(f"  IsoFLOP minima (approach 2) extrapolate to N {p['isoflop_n']:,.0f}")
    if p["warning"]:
        lines.append(f"  warning: {p['warning']}")
    return "\n".join(lines)


def check(out: str | Path = "", factor: float = 4.0) -> dict:
    """Train one run at `factor` x the largest swept budget at the predicted optimum (nearest size,
    D from the budget) and record predicted vs actual loss in check.json and the report."""
    out = Path(out).expanduser() if out else default_out()
    if factor < 1:
        raise LlmosError(f"--factor {factor} must be at least 1: the check extrapolates beyond the sweep")
    settings = _sweep_settings(out)
    flops = factor * max(p["flops"] for p in load_points(out))
    pred = predict(out, flops)
    if pred["size_steps"] < 10:
        raise LlmosError(f"the predicted optimum at C={flops:.3g} (size {pred['size']}) leaves {pred['size_steps']} "
                         "training steps: the fit is not fit to plan with; sweep more points")
    if pred["size_tokens"] > settings["train_tokens"]:
        raise LlmosError(f"the check at C={flops:.3g} (size {pred['size']}) needs {pred['size_tokens']:,} tokens, more than "
                         f"one epoch of the corpus ({settings['train_tokens']:,}), which the law does not describe: "
                         "use a smaller --factor or sweep a larger corpus (--data)")
    point = {"flops": flops, "size": pred["size"], "layers": pred["layers"], "width": pred["width"],
             "n": pred["size_n"], "params": pred["size_params"], "steps": pred["size_steps"],
             "tokens": pred["size_tokens"], "compute": pred["size_compute"]}
    check_path = out / "check.json"
    if check_path.is_file():
        done = json.loads(check_path.read_text())
        if (done["flops"], done["size"]) == (flops, point["size"]):
            print(f"[scaling] check at {_label(point)}: done earlier")
            return done
    print(f"[scaling] check: {_label(point)}, {point['steps']} steps, predicted loss {pred['size_loss']:.4f}",
          flush=True)
    run_dir = _point_dir(out, point, prefix="check-")
    record = _train_point(point, settings, run_dir)
    record.update(predicted_loss=pred["size_loss"], optimal_loss=pred["loss"], factor=factor,
                  rel_error=(record["val_loss"] - pred["size_loss"]) / pred["size_loss"])
    write_json(check_path, record)
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    if (out / "fit.json").is_file():
        render_report(out)
    return record


# ----- plots and report -----

def _plots(out: Path, points: list[dict], saved: dict, checked: dict | None) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    law = Law(**saved["law"])
    colors = plt.get_cmap("viridis")
    budgets = saved["isoflop"]

    def save(fig, name):
        fig.tight_layout()
        with atomic_write(out / name) as f:
            fig.savefig(f, format="png")
        plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for i, row in enumerate(budgets):
        color = colors(i / max(1, len(budgets) - 1))
        group = sorted((p for p in points if p["flops"] == row["flops"]), key=lambda p: p["n"])
        ax.plot([p["n"] for p in group], [p["val_loss"] for p in group], "o", color=color, label=f"C = {row['flops']:.3g}")
        if row["coef"]:
            xs = np.linspace(math.log(group[0]["n"]), math.log(group[-1]["n"]), 100)
            ax.plot(np.exp(xs), np.polyval(row["coef"], xs), "-", color=color, lw=1)
        if row["n_opt"]:
            ax.plot(row["n_opt"], row["loss_opt"], "*", color=color, ms=14, mec="black")
    ax.set(xscale="log", xlabel="N (FLOP-equivalent parameters)", ylabel="validation loss (nats/token)",
           title="IsoFLOP profiles (stars: parabola minima)")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    save(fig, "isoflop.png")

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    ax.plot([p["compute"] for p in points], [p["val_loss"] for p in points], "o", color="0.6", label="sweep points")
    minima = [r for r in budgets if r["n_opt"]]
    if minima:
        ax.plot([r["flops"] for r in minima], [r["loss_opt"] for r in minima], "*", ms=14, color="tab:orange",
                mec="black", label="IsoFLOP minima (approach 2)")
    top = max(p["flops"] for p in points) * 10 if checked is None else checked["flops"] * 2
    if law.has_optimum:
        cs = np.logspace(math.log10(min(p["flops"] for p in points) / 3), math.log10(top), 100)
        ax.plot(cs, law.optimum(cs)[2], "-", color="tab:blue", label="fitted law at the optimum (approach 3)")
    if checked:
        ax.plot(checked["compute"], checked["predicted_loss"], "x", ms=10, color="tab:red", label="check: predicted")
        ax.plot(checked["compute"], checked["val_loss"], "s", color="tab:red", label="check: actual")
    ax.set(xscale="log", xlabel="compute C (FLOPs)", ylabel="validation loss (nats/token)", title="Loss vs compute")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    save(fig, "frontier.png")

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    sizes = sorted({p["size"] for p in points}, key=lambda z: next(p["n"] for p in points if p["size"] == z))
    for i, size in enumerate(sizes):
        color = colors(i / max(1, len(sizes) - 1))
        group = sorted((p for p in points if p["size"] == size), key=lambda p: p["tokens"])
        ax.plot([p["tokens"] for p in group], [p["val_loss"] for p in group], "o", color=color, label=f"size {size}")
        ds = np.logspace(math.log10(group[0]["tokens"] / 2), math.log10(group[-1]["tokens"] * 2), 50)
        ax.plot(ds, law.loss(group[0]["n"], ds), "-", color=color, lw=1)
    ax.set(xscale="log", xlabel="D (training tokens)", ylabel="validation loss (nats/token)",
           title=f"Fitted law L = {law.E:.2f} + {law.A:.3g}/N^{law.alpha:.2f} + {law.B:.3g}/D^{law.beta:.2f}")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    save(fig, "law_fit.png")


def render_report(out: Path) -> Path:
    """scaling_report.md from points.jsonl, fit.json and (if run) check.json."""
    points, saved = load_points(out), _load_fit(out)
    checked = json.loads((out / "check.json").read_text()) if (out / "check.json").is_file() else None
    _plots(out, points, saved, checked)
    law, chin = Law(**saved["law"]), Law(**CHINCHILLA)
    ci = (saved["bootstrap"] or {}).get("intervals", {})

    def interval(key, fmt="{:.3g}"):
        return f"[{fmt.format(ci[key][0])}, {fmt.format(ci[key][1])}]" if key in ci else "-"

    keys = ("E", "A", "B", "alpha", "beta", "a", "b")
    table = markdown_table(
        ["", "E", "A", "B", "α", "β", "a (N ∝ C^a)", "b (D ∝ C^b)"],
        [["this sweep (approach 3)"] + [f"{getattr(law, k):.3g}" for k in keys],
         ["bootstrap 95% interval"] + [interval(k) for k in keys],
         ["Chinchilla (Hoffmann et al. 2022)"] + [f"{getattr(chin, k):.3g}" for k in keys]])
    iso = saved["isoflop_exponent"]
    budgets = markdown_table(
        ["budget C", "points", "N_opt", "D_opt", "tokens/param", "loss at N_opt", "note"],
        [[f"{r['flops']:.3g}", r["points"]]
         + ([f"{r['n_opt']:,.0f}", f"{r['d_opt']:,.0f}", f"{r['d_opt'] / r['n_opt']:.1f}", f"{r['loss_opt']:.4f}",
             "" if r["in_range"] else "minimum outside the swept sizes"] if r["n_opt"]
            else ["-", "-", "-", "-", "fewer than 3 sizes" if r["coef"] is None else "curve has no minimum"])
         for r in saved["isoflop"]])
    if law.has_optimum:
        plan_rows = []
        for c in sorted({p["flops"] for p in points} | ({checked["flops"]} if checked else set())):
            n, d, loss = (float(v) for v in law.optimum(c))
            plan_rows.append([f"{c:.3g}", f"{n:,.0f}", f"{d:,.0f}", f"{d / n:.1f}", f"{loss:.4f}"])
        allocation = (f"Approach 3: N_opt ∝ C^{law.a:.3f} {interval('a', '{:.3f}')}, D_opt ∝ C^{law.b:.3f} "
                      f"{interval('b', '{:.3f}')}.\n\n"
                      + markdown_table(["C", "N_opt", "D_opt", "tokens/param", "predicted loss"], plan_rows))
    else:
        allocation = (f"None: the fitted α = {law.alpha:.3g}, β = {law.beta:.3g} are not both positive, so loss "
                      "does not fall with both N and D over these points. Sweep more budgets and sizes.")
    sections = [
        ("Fitted law", f"L(N, D) = E + A/N^α + B/D^β, Huber (δ = {saved['huber_delta']:g}) on log loss, "
                       f"L-BFGS from the Chinchilla grid of starts; {saved['points']} points.\n\n{table}\n\n"
                       "E, A and B are not comparable across data and tokenizers (loss is in nats per token of "
                       "each tokenizer, and N here counts FLOP-equivalent parameters); the exponents are.\n\n"
                       "![fitted law](law_fit.png)"),
        ("Compute-optimal allocation", allocation),
        ("IsoFLOP profiles (approach 2)", budgets + "\n\n"
         + (f"N_opt ∝ C^{iso['a']:.3f} {interval('a_isoflop', '{:.3f}')}, D_opt ∝ C^{iso['b']:.3f} "
            f"(from {iso['budgets']} budgets)." if iso else "Fewer than two budgets have a minimum: no exponent.")
         + "\n\n![IsoFLOP profiles](isoflop.png)\n\n![loss vs compute](frontier.png)"),
        ("Points", markdown_table(["C", "size", "N", "params", "D", "steps", "val loss", "bits/byte", "seconds"],
                                  [[f"{p['flops']:.3g}", p["size"], f"{p['n']:,.0f}", f"{p['params']:,}",
                                    f"{p['tokens']:,}", p["steps"], f"{p['val_loss']:.4f}", f"{p['val_bpb']:.4f}",
                                    f"{p['seconds']:.0f}"] for p in sorted(points, key=lambda p: (p["flops"], p["n"]))])),
    ]
    if checked:
        sections.append(("Check", markdown_table(
            ["C", "factor", "size", "D", "predicted loss", "actual loss", "error"],
            [[f"{checked['flops']:.3g}", f"{checked['factor']:g}", checked["size"], f"{checked['tokens']:,}",
              f"{checked['predicted_loss']:.4f}", f"{checked['val_loss']:.4f}", f"{checked['rel_error']:+.2%}"]])))
    settings = saved["settings"]
    sections.append(("Settings", f"corpus `{settings['data']}`, tokenizer `{settings['tokenizer']}` "
                                 f"(vocab {settings['vocab_size']}), batch {settings['batch_size']} x "
                                 f"{settings['seq_len']} tokens, compile {settings['compile']}."))
    return write_report(out / "scaling_report.md", "llmos scaling laws", sections)

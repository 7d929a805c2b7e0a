"""Scaling laws: measure how loss falls with model size N and training tokens D on your own data and
hardware, then use the fitted law to plan a bigger run.

    llmos scaling sweep [--flops 1e13,3e13,1e14] [--depths 1,2,3,4,5] [--quick] [--out DIR]
    llmos scaling fit [--out DIR]              # fit.json, scaling_report.md, isoflop/frontier/law PNGs
    llmos scaling predict --flops 1e15         # optimal N, D, loss and the nearest depth for a budget
    llmos scaling check [--factor 4]           # train at 4x the largest budget; predicted vs actual

**Sweep (IsoFLOP profiles).** For each compute budget C and each depth, train a full run (cosine
schedule ending at its last step) on D = C / flops_per_token tokens, and append the final
validation loss to `points.jsonl`. A finished (C, depth) point is never trained again; an
interrupted one resumes from its checkpoint. Pairs that would give fewer than `min_steps` steps,
an extreme tokens-per-parameter ratio, or more than one epoch of the corpus are skipped: the law
describes single-epoch training of reasonably trained models.

**What N and D are.** N is the "FLOP-equivalent" parameter count, `Transformer.flops_per_token(seq)
/ 6`: the weights that do matmuls (the tied output head included, the embedding lookup not) plus
attention's share of the compute. With it C = 6·N·D holds exactly, so the Chinchilla algebra
(N_opt ∝ C^a, D_opt = C / 6N_opt) needs no correction terms (DeepSeek LLM measures model scale
in FLOPs per token for the same reason). The plain parameter count is kept as `params`.

**Fit.** Approach 3 of Hoffmann et al. (2022): L(N, D) = E + A/N^α + B/D^β, fitted in log space
as LSE(a − α log N, b − β log D, e) against log L with a Huber loss (δ = 1e-3), by L-BFGS from
every start of a grid, keeping the best. Approach 2: a parabola in log N through each IsoFLOP
curve gives the loss-minimising N per budget, and a line through log N_opt vs log C gives the
exponent. Bootstrap intervals resample the points and refit both.

**Default grid and its cost** (vocab 4096, batch 16 x 256 tokens). Budgets 1e13, 3e13, 1e14 and
depths 1-5 keep 11 points (depths 1-3, 1-4 and 2-5 per budget) worth 5.5e14 FLOPs. Compiled bf16
training reaches ~266 GFLOP/s at depth 4 on a 2-core EPYC (9,267 tokens/s x 28.7 MFLOP/token,
docs/log.md); taking 150, 180, 220, 260, 270 GFLOP/s for depths 1-5 (small matmuls run further
from peak), the points take 168 + 618 + 1,766 s = 43 minutes, plus ~5 for compiling each depth, the
evaluations, the tokenizer and the shards: about 50 minutes. `--quick` (3e12 and 1e13, depths 1-3,
6 points, 3.9e13 FLOPs) takes ~4 minutes of training plus ~3 of compiling: about 7. The check at
4 x 1e14 then trains for about 25 minutes.
"""
from __future__ import annotations

import itertools
import json
import math
import shutil
import time
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from llmos.common import LlmosError, atomic_write, llmos_home, read_jsonl, write_json
from llmos.model import ModelConfig, Transformer
from llmos.report import markdown_table, write_report
from llmos.train.loop import TrainConfig

HUBER_DELTA = 1e-3
# Hoffmann et al. (2022), approach 3 (nats/token on MassiveText, total parameters).
CHINCHILLA = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}


@dataclass
class Grid:
    flops: list[float]
    depths: list[int]
    min_steps: int = 50  # fewer steps and the warmup + cosine schedule is mostly transient
    tpp_min: float = 0.2  # tokens per (FLOP-equivalent) parameter outside [tpp_min, tpp_max]
    tpp_max: float = 50.0  # is too far from the optimum to shape the parabola
    eval_tokens: int = 131072


# Both sized for a quiet 2-core CPU with compile + bf16 (the module docstring has the arithmetic):
# the default grid keeps 11 points in about 50 minutes, the quick one 6 in about 7.
DEFAULT_GRID = Grid(flops=[1e13, 3e13, 1e14], depths=[1, 2, 3, 4, 5])
# The quick grid accepts more undertrained points so that each budget still gets three.
QUICK_GRID = Grid(flops=[3e12, 1e13], depths=[1, 2, 3], tpp_min=0.05, eval_tokens=65536)


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


def parse_depths(text: str) -> list[int]:
    try:
        depths = sorted({int(item) for item in text.split(",")})
    except ValueError:
        raise LlmosError(f"--depths: {text!r} is not a list of integers like 1,2,3") from None
    if depths[0] < 1:
        raise LlmosError("--depths: depths start at 1")
    return depths


@lru_cache(maxsize=None)
def model_size(depth: int, vocab_size: int, seq_len: int) -> tuple[float, int, int]:
    """(N = flops_per_token / 6, total parameters, flops per token), counted on the meta device so
    that even large depths cost no memory."""
    with torch.device("meta"):
        model = Transformer(ModelConfig.from_depth(depth, vocab_size=vocab_size, max_seq_len=seq_len))
    fpt = model.flops_per_token(seq_len)
    return fpt / 6, model.num_params(), fpt


def nearest_depth(n: float, vocab_size: int, seq_len: int) -> int:
    """The depth whose N is nearest to n in log space. N grows with depth: double, then bisect, to
    the last depth below n; the answer is it or the next one."""
    def size(depth):
        return model_size(depth, vocab_size, seq_len)[0]
    hi = 1
    while size(hi) < n:
        hi *= 2
    lo = max(1, hi // 2)  # size(lo) < n <= size(hi), unless n is below depth 1
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if size(mid) < n else (lo, mid)
    return min(lo, hi, key=lambda d: abs(math.log(size(d) / n)))


def plan(grid: Grid, vocab_size: int, seq_len: int, tokens_per_step: int, train_tokens: int) -> tuple[list, list]:
    """The (budget, depth) points worth training, and the skipped ones with the reason."""
    keep, skipped = [], []
    for c, depth in itertools.product(grid.flops, grid.depths):
        n, params, fpt = model_size(depth, vocab_size, seq_len)
        steps = round(c / fpt / tokens_per_step)
        tokens = steps * tokens_per_step
        why = None
        if steps < grid.min_steps:
            why = f"{steps} steps < {grid.min_steps}"
        elif not grid.tpp_min <= tokens / n <= grid.tpp_max:
            why = f"{tokens / n:.2g} tokens/param outside [{grid.tpp_min:g}, {grid.tpp_max:g}]"
        elif tokens > train_tokens:
            why = f"{tokens:,} tokens > one epoch of the corpus ({train_tokens:,})"
        point = {"flops": c, "depth": depth, "n": n, "params": params, "steps": steps, "tokens": tokens,
                 "compute": fpt * tokens}
        (skipped if why else keep).append({**point, "reason": why} if why else point)
    return keep, skipped


# ----- the sweep -----

def _point_dir(out: Path, c: float, depth: int, prefix: str = "") -> Path:
    return out / "runs" / f"{prefix}C{c:.3g}-d{depth}"


def _append_jsonl(path: Path, record: dict) -> None:
    """Rewrite the whole file atomically: a crash leaves the old file or the new one, never half a line."""
    rows = list(read_jsonl(path)) if path.is_file() else []
    with atomic_write(path, "w") as f:
        f.write("".join(json.dumps(r) + "\n" for r in [*rows, record]))


def _train_point(point: dict, settings: dict, run_dir: Path) -> dict:
    """One full pretraining run of `point['steps']` steps; resumes if the run has a checkpoint."""
    from llmos.train.pretrain import DataArgs, ModelArgs, pretrain
    steps = point["steps"]
    # warmup and checkpoint spacing scale with the run so that short points are not mostly warmup
    cfg = TrainConfig(steps=steps, batch_size=settings["batch_size"], seq_len=settings["seq_len"],
                      warmup_steps=max(1, min(100, steps // 10)), eval_every=steps, sample_every=steps,
                      eval_tokens=settings["eval_tokens"], ckpt_every=max(50, steps // 4),
                      compile=settings["compile"], device=settings["device"], log_every=max(1, steps // 50))
    resume = any((run_dir / "checkpoints").glob("step_*.pt"))
    t = time.time()
    result = pretrain(ModelArgs(depth=point["depth"]), cfg,
                      DataArgs(data=settings["data"], tokenizer=settings["tokenizer"], out=str(run_dir)), resume=resume)
    if result["interrupted"]:
        raise LlmosError(f"interrupted at step {result['step']} of C={point['flops']:.3g}, depth {point['depth']}: "
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
          vocab_size: int = 4096, train: TrainConfig | None = None) -> dict:
    """Train every planned (budget, depth) point not yet in points.jsonl. Returns
    {"trained": [...], "done_before": [...], "skipped": [...], "points": all recorded points}."""
    out = Path(out).expanduser() if out else default_out()
    out.mkdir(parents=True, exist_ok=True)
    train = train or TrainConfig()
    settings = _settings(out, data, tokenizer, vocab_size, train, grid.eval_tokens)
    keep, skipped = plan(grid, settings["vocab_size"], train.seq_len, train.batch_size * train.seq_len,
                         settings["train_tokens"])
    for s in skipped:
        print(f"[scaling] skip C={s['flops']:.3g} depth {s['depth']}: {s['reason']}")
    if not keep:
        raise LlmosError("no (budget, depth) pair of this grid is worth training (see the skips above): "
                         "raise --flops or change --depths")
    points_path = out / "points.jsonl"
    done = {(p["flops"], p["depth"]) for p in read_jsonl(points_path)} if points_path.is_file() else set()
    trained, before = [], []
    for i, point in enumerate(keep):
        label = f"C={point['flops']:.3g} depth {point['depth']}"
        if (point["flops"], point["depth"]) in done:
            print(f"[scaling] {label}: done earlier, skipping")
            before.append(point)
            continue
        print(f"[scaling] point {i + 1}/{len(keep)}: {label}, N={point['n']:,.0f}, D={point['tokens']:,} tokens, "
              f"{point['steps']} steps", flush=True)
        run_dir = _point_dir(out, point["flops"], point["depth"])
        record = _train_point(point, settings, run_dir)
        _append_jsonl(points_path, record)
        # a recorded point is never resumed: its checkpoints (weights + optimizer state) only take
        # disk; model.llmos stays for sampling
        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
        print(f"[scaling] {label}: val loss {record['val_loss']:.4f} in {record['seconds']:.0f} s", flush=True)
        trained.append(record)
    return {"trained": trained, "done_before": before, "skipped": skipped, "points": load_points(out)}


def load_points(out: str | Path) -> list[dict]:
    path = Path(out) / "points.jsonl"
    points = list(read_jsonl(path)) if path.is_file() else []
    if not points:
        raise LlmosError(f"no points in {path} yet: run `llmos scaling sweep` first")
    return points


# ----- approach 3: the parametric law -----

@dataclass
class Law:
    E: float
    A: float
    B: float
    alpha: float
    beta: float

    def loss(self, n, d):
        return self.E + self.A / np.power(n, self.alpha) + self.B / np.power(d, self.beta)

    @property
    def a(self) -> float:
        """N_opt ∝ C^a."""
        return self.beta / (self.alpha + self.beta)

    @property
    def b(self) -> float:
        """D_opt ∝ C^b."""
        return self.alpha / (self.alpha + self.beta)

    @property
    def has_optimum(self) -> bool:
        """Only when loss falls with both N and D is there a best split of a budget."""
        return self.alpha > 0 and self.beta > 0

    def optimum(self, c):
        """Minimise L(N, D) subject to 6ND = C (closed form, Hoffmann et al. eq. 4)."""
        if not self.has_optimum:
            raise LlmosError(f"the fitted law has α = {self.alpha:.3g}, β = {self.beta:.3g}: loss does not fall with "
                             "both N and D over these points, so there is no compute-optimal split; sweep more "
                             "budgets and depths")
        g = (self.alpha * self.A / (self.beta * self.B)) ** (1 / (self.alpha + self.beta))
        n = g * np.power(np.asarray(c, dtype=float) / 6, self.a)
        d = np.asarray(c, dtype=float) / (6 * n)
        return n, d, self.loss(n, d)


def _objective(theta: np.ndarray, x: np.ndarray, y: np.ndarray, log_l: np.ndarray, weights: np.ndarray | None = None):
    """Huber loss of LSE(a − α x, b − β y, e) − log L summed over points, and its gradient, for a
    batch of parameter vectors theta (K, 5) = (a, b, e, α, β); x = log N, y = log D. `weights`
    (K, n) counts each point per row: a bootstrap resample is a row of counts."""
    a, b, e, alpha, beta = (theta[:, i:i + 1] for i in range(5))
    terms = np.stack([a - alpha * x, b - beta * y, np.broadcast_to(e, (len(theta), len(x)))], axis=-1)
    top = terms.max(axis=-1, keepdims=True)
    w = np.exp(terms - top)
    total = w.sum(axis=-1, keepdims=True)
    r = (top + np.log(total))[..., 0] - log_l
    w /= total
    huber = np.where(np.abs(r) <= HUBER_DELTA, 0.5 * r ** 2, HUBER_DELTA * (np.abs(r) - 0.5 * HUBER_DELTA))
    dr = np.clip(r, -HUBER_DELTA, HUBER_DELTA)
    if weights is not None:
        huber, dr = huber * weights, dr * weights
    dr = dr[..., None] * w  # (K, n, 3)
    grad = np.stack([dr[..., 0].sum(1), dr[..., 1].sum(1), dr[..., 2].sum(1),
                     -(dr[..., 0] * x).sum(1), -(dr[..., 1] * y).sum(1)], axis=1)
    return huber.sum(1), grad


def _lbfgs(theta: np.ndarray, fn, iters: int = 500, history: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """L-BFGS with Armijo backtracking, run independently for each row of theta but vectorised over
    rows, so thousands of grid starts cost about as much as one (torch.optim.LBFGS takes one start
    at a time, which made the Chinchilla grid take minutes). fn(theta_rows, row_indices) -> (f, grad)."""
    k, p = theta.shape
    f, g = fn(theta, np.arange(k))
    s_hist, y_hist, rho = np.zeros((k, history, p)), np.zeros((k, history, p)), np.zeros((k, history))
    gamma = 1.0 / np.maximum(1.0, np.linalg.norm(g, axis=1))  # first steps are at most unit length
    active = np.ones(k, dtype=bool)
    for _ in range(iters):
        idx = np.flatnonzero(active)
        if not len(idx):
            break
        # two-loop recursion; empty history slots have rho = 0 and contribute nothing
        q, coef = g[idx].copy(), np.zeros((len(idx), history))
        for j in reversed(range(history)):
            coef[:, j] = rho[idx, j] * (s_hist[idx, j] * q).sum(1)
            q -= coef[:, j:j + 1] * y_hist[idx, j]
        q *= gamma[idx, None]
        for j in range(history):
            beta = rho[idx, j] * (y_hist[idx, j] * q).sum(1)
            q += (coef[:, j] - beta)[:, None] * s_hist[idx, j]
        direction = -q
        slope = (direction * g[idx]).sum(1)
        uphill = slope >= 0  # a stale curvature pair can point uphill: fall back to steepest descent
        direction[uphill] = -g[idx][uphill] * gamma[idx][uphill, None]
        slope[uphill] = (direction[uphill] * g[idx][uphill]).sum(1)
        step = np.ones(len(idx))
        new_f, new_g = np.empty(len(idx)), np.empty((len(idx), p))
        pending = np.ones(len(idx), dtype=bool)
        for _ in range(40):
            trial = theta[idx[pending]] + step[pending, None] * direction[pending]
            tf, tg = fn(trial, idx[pending])
            ok = tf <= f[idx[pending]] + 1e-4 * step[pending] * slope[pending]
            where = np.flatnonzero(pending)
            new_f[where[ok]], new_g[where[ok]] = tf[ok], tg[ok]
            pending[where[ok]] = False
            step[pending] *= 0.5
            if not pending.any():
                break
        moved = ~pending
        stuck = idx[pending]  # no decrease along the direction at any step size: converged
        active[stuck] = False
        idx, direction, step, new_f, new_g = idx[moved], direction[moved], step[moved], new_f[moved], new_g[moved]
        s = step[:, None] * direction
        yv = new_g - g[idx]
        sy = (s * yv).sum(1)
        converged = f[idx] - new_f <= 1e-9 * f[idx]  # relative: the objective can be ~1e-4 at the optimum
        theta[idx] += s
        f[idx], g[idx] = new_f, new_g
        good = sy > 1e-12
        upd = idx[good]
        s_hist[upd] = np.roll(s_hist[upd], -1, axis=1)
        y_hist[upd] = np.roll(y_hist[upd], -1, axis=1)
        rho[upd] = np.roll(rho[upd], -1, axis=1)
        s_hist[upd, -1], y_hist[upd, -1], rho[upd, -1] = s[good], yv[good], 1 / sy[good]
        gamma[upd] = sy[good] / (yv[good] ** 2).sum(1)
        active[idx[converged]] = False
    return theta, f


def chinchilla_grid() -> np.ndarray:
    """The initialisation grid of Hoffmann et al.: 6 x 6 x 5 x 5 x 5 = 4,500 starts (a, b, e, α, β)."""
    ab = np.arange(0, 30, 5.0)
    e = np.arange(-1, 1.5, 0.5)
    ex = np.arange(0, 2.5, 0.5)
    return np.array(list(itertools.product(ab, ab, e, ex, ex)))


def _log_data(n, d, loss) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x, y, log_l = (np.log(np.asarray(v, dtype=float)) for v in (n, d, loss))
    if len(x) < 5:
        raise LlmosError(f"the law has 5 parameters but there are only {len(x)} points: sweep more budgets or depths")
    return x, y, log_l


def fit_law(n, d, loss, starts: np.ndarray | None = None) -> tuple[Law, float]:
    """Approach 3: the best of L-BFGS runs from every start (default: the Chinchilla grid).
    Returns the law and its Huber objective."""
    x, y, log_l = _log_data(n, d, loss)
    theta, f = _lbfgs(np.array(chinchilla_grid() if starts is None else starts, dtype=float),
                      lambda t, rows: _objective(t, x, y, log_l))
    return _theta_law(theta[int(np.nanargmin(f))]), float(np.nanmin(f))


MAX_LOG = 700.0  # exp() of more overflows a float: a fit that wanders there is not determined by the data


def _diverged(theta) -> bool:
    return not (np.all(np.isfinite(theta)) and np.all(np.abs(np.asarray(theta)[:3]) < MAX_LOG))


def _theta_law(theta) -> Law:
    if _diverged(theta):
        raise LlmosError("the law's fit diverged (a constant beyond float range): the points do not determine "
                         "L(N, D); sweep more sizes per budget, around the loss minimum of each")
    a, b, e, alpha, beta = (float(v) for v in theta)
    return Law(E=math.exp(e), A=math.exp(a), B=math.exp(b), alpha=alpha, beta=beta)


def _law_theta(law: Law) -> np.ndarray:
    """Back to log space; a term the fit drove to zero (exp underflow) becomes the tiniest float."""
    logs = [math.log(max(v, np.finfo(float).tiny)) for v in (law.A, law.B, law.E)]
    return np.array([*logs, law.alpha, law.beta])


# ----- approach 2: IsoFLOP parabolas -----

def fit_isoflop(points: list[dict]) -> list[dict]:
    """Per budget: a parabola in log N through the losses and its minimum (None when the budget has
    fewer than three sizes or the curve opens downward)."""
    budgets = []
    for c in sorted({p["flops"] for p in points}):
        group = [p for p in points if p["flops"] == c]
        x = np.log([p["n"] for p in group])
        row = {"flops": c, "points": len(group), "coef": None, "n_opt": None, "d_opt": None, "loss_opt": None,
               "in_range": False}
        if len(set(x)) >= 3:
            coef = np.polyfit(x, [p["val_loss"] for p in group], 2)
            row["coef"] = coef.tolist()
            if coef[0] > 0:
                x_opt = -coef[1] / (2 * coef[0])
                row.update(n_opt=math.exp(x_opt), d_opt=c / (6 * math.exp(x_opt)),
                           loss_opt=float(np.polyval(coef, x_opt)), in_range=bool(x.min() <= x_opt <= x.max()))
        budgets.append(row)
    return budgets


def isoflop_exponent(budgets: list[dict]) -> dict | None:
    """Line through log N_opt vs log C: N_opt = k C^a, and D_opt = C / (6 N_opt) ∝ C^(1-a)."""
    found = [r for r in budgets if r["n_opt"]]
    if len(found) < 2:
        return None
    a, log_k = np.polyfit(np.log([r["flops"] for r in found]), np.log([r["n_opt"] for r in found]), 1)
    return {"a": float(a), "b": float(1 - a), "k": float(math.exp(log_k)), "budgets": len(found)}


# ----- bootstrap -----

def bootstrap(points: list[dict], law: Law, samples: int = 200, seed: int = 0, starts_per_sample: int = 8) -> dict:
    """Percentile intervals (2.5%, 97.5%) from refits on resampled points. A resample is a row of
    counts weighting each point, so all refits run as one batched L-BFGS. Each starts from the
    full-data optimum and the best grid starts on the full data rather than the whole grid:
    resampling moves the optimum only a little."""
    rng = np.random.default_rng(seed)
    x, y, log_l = _log_data([p["n"] for p in points], [p["tokens"] for p in points], [p["val_loss"] for p in points])
    counts = rng.multinomial(len(points), np.full(len(points), 1 / len(points)), size=samples).astype(float)
    counts = counts[(counts > 0).sum(1) >= 5]  # fewer distinct points than parameters: not a fit
    grid = chinchilla_grid()
    f0, _ = _objective(grid, x, y, log_l)
    starts = np.vstack([_law_theta(law), grid[np.argsort(f0)[:starts_per_sample - 1]]])
    weights = np.repeat(counts, len(starts), axis=0)
    theta, f = _lbfgs(np.tile(starts, (len(counts), 1)),
                      lambda t, rows: _objective(t, x, y, log_l, weights[rows]))
    best = theta.reshape(len(counts), len(starts), 5)[np.arange(len(counts)), f.reshape(len(counts), -1).argmin(1)]
    laws = [_theta_law(t) for t in best if not _diverged(t)]  # a resample can leave a constant undetermined
    draws = {k: [getattr(fitted, k) for fitted in laws] for k in ("E", "A", "B", "alpha", "beta", "a", "b")}
    draws["a_isoflop"] = []
    for row in counts:
        iso = isoflop_exponent(fit_isoflop([p for p, c in zip(points, row) for _ in range(int(c))]))
        if iso:
            draws["a_isoflop"].append(iso["a"])
    return {"samples": len(counts), "diverged": len(counts) - len(laws),
            "intervals": {k: [float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))]
                          for k, v in draws.items() if v}}


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
    """The compute-optimal N, D and loss for a budget, and the nearest depth with its D and loss."""
    out = Path(out).expanduser() if out else default_out()
    saved = _load_fit(out)
    law, settings = Law(**saved["law"]), saved["settings"]
    n, d, loss = (float(v) for v in law.optimum(flops))
    depth = nearest_depth(n, settings["vocab_size"], settings["seq_len"])
    n_depth, params, fpt = model_size(depth, settings["vocab_size"], settings["seq_len"])
    tokens_per_step = settings["batch_size"] * settings["seq_len"]
    steps = max(1, round(flops / fpt / tokens_per_step))
    iso = saved["isoflop_exponent"]
    return {"flops": flops, "n": n, "tokens": d, "tokens_per_param": d / n, "loss": loss, "depth": depth,
            "depth_n": n_depth, "depth_params": params, "depth_steps": steps,
            "depth_tokens": steps * tokens_per_step,
            "depth_loss": float(law.loss(n_depth, steps * tokens_per_step)),
            "isoflop_n": iso["k"] * flops ** iso["a"] if iso else None, "warning": _extrapolation(n, saved)}


def _extrapolation(n: float, saved: dict) -> str:
    low, high = saved.get("n_range") or (0, math.inf)
    if low <= n <= high:
        return ""
    return (f"the optimum N {n:,.0f} lies outside the swept sizes ({low:,.0f} to {high:,.0f}): the law is "
            "extrapolated, so sweep depths around it (--depths) before trusting this figure")


def format_prediction(p: dict) -> str:
    lines = [f"budget {p['flops']:.3g} FLOPs (fitted law, approach 3):",
             f"  compute-optimal N {p['n']:,.0f}, D {p['tokens']:,.0f} tokens "
             f"({p['tokens_per_param']:.1f} tokens/param), predicted loss {p['loss']:.4f}",
             f"  nearest depth {p['depth']}: N {p['depth_n']:,.0f} ({p['depth_params']:,} params), "
             f"{p['depth_steps']:,} steps = {p['depth_tokens']:,} tokens, predicted loss {p['depth_loss']:.4f}"]
    if p["isoflop_n"]:
        lines.append(f"  IsoFLOP minima (approach 2) extrapolate to N {p['isoflop_n']:,.0f}")
    if p["warning"]:
        lines.append(f"  warning: {p['warning']}")
    return "\n".join(lines)


def check(out: str | Path = "", factor: float = 4.0) -> dict:
    """Train one run at `factor` x the largest swept budget at the predicted optimum (nearest depth,
    D from the budget) and record predicted vs actual loss in check.json and the report."""
    out = Path(out).expanduser() if out else default_out()
    if factor < 1:
        raise LlmosError(f"--factor {factor} must be at least 1: the check extrapolates beyond the sweep")
    settings = _sweep_settings(out)
    flops = factor * max(p["flops"] for p in load_points(out))
    pred = predict(out, flops)
    if pred["depth_steps"] < 10:
        raise LlmosError(f"the predicted optimum at C={flops:.3g} (depth {pred['depth']}) leaves {pred['depth_steps']} "
                         "training steps: the fit is not fit to plan with; sweep more points")
    point = {"flops": flops, "depth": pred["depth"], "n": pred["depth_n"], "params": pred["depth_params"],
             "steps": pred["depth_steps"], "tokens": pred["depth_tokens"],
             "compute": model_size(pred["depth"], settings["vocab_size"], settings["seq_len"])[2] * pred["depth_tokens"]}
    check_path = out / "check.json"
    if check_path.is_file():
        done = json.loads(check_path.read_text())
        if (done["flops"], done["depth"]) == (flops, point["depth"]):
            print(f"[scaling] check at C={flops:.3g} depth {point['depth']}: done earlier")
            return done
    print(f"[scaling] check: C={flops:.3g}, depth {point['depth']}, {point['steps']} steps, "
          f"predicted loss {pred['depth_loss']:.4f}", flush=True)
    run_dir = _point_dir(out, flops, point["depth"], prefix="check-")
    record = _train_point(point, settings, run_dir)
    record.update(predicted_loss=pred["depth_loss"], optimal_loss=pred["loss"], factor=factor,
                  rel_error=(record["val_loss"] - pred["depth_loss"]) / pred["depth_loss"])
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
    depths = sorted({p["depth"] for p in points})
    for i, depth in enumerate(depths):
        color = colors(i / max(1, len(depths) - 1))
        group = sorted((p for p in points if p["depth"] == depth), key=lambda p: p["tokens"])
        ax.plot([p["tokens"] for p in group], [p["val_loss"] for p in group], "o", color=color, label=f"depth {depth}")
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
                      "does not fall with both N and D over these points. Sweep more budgets and depths.")
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
        ("Points", markdown_table(["C", "depth", "N", "params", "D", "steps", "val loss", "bits/byte", "seconds"],
                                  [[f"{p['flops']:.3g}", p["depth"], f"{p['n']:,.0f}", f"{p['params']:,}",
                                    f"{p['tokens']:,}", p["steps"], f"{p['val_loss']:.4f}", f"{p['val_bpb']:.4f}",
                                    f"{p['seconds']:.0f}"] for p in sorted(points, key=lambda p: (p["flops"], p["depth"]))])),
    ]
    if checked:
        sections.append(("Check", markdown_table(
            ["C", "factor", "depth", "D", "predicted loss", "actual loss", "error"],
            [[f"{checked['flops']:.3g}", f"{checked['factor']:g}", checked["depth"], f"{checked['tokens']:,}",
              f"{checked['predicted_loss']:.4f}", f"{checked['val_loss']:.4f}", f"{checked['rel_error']:+.2%}"]])))
    settings = saved["settings"]
    sections.append(("Settings", f"corpus `{settings['data']}`, tokenizer `{settings['tokenizer']}` "
                                 f"(vocab {settings['vocab_size']}), batch {settings['batch_size']} x "
                                 f"{settings['seq_len']} tokens, compile {settings['compile']}."))
    return write_report(out / "scaling_report.md", "llmos scaling laws", sections)

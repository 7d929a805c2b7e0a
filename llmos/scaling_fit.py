"""Fitting scaling laws to (N, D, loss) points: the two estimates of Hoffmann et al. (2022) and
bootstrap intervals for both. Pure numpy; `llmos/scaling.py` runs the sweeps that feed it.

    law, objective = fit_law(n, d, loss)        # approach 3: L(N, D) = E + A/N^α + B/D^β
    n_opt, d_opt, loss_opt = law.optimum(1e15)  # the compute-optimal split of a budget
    budgets = fit_isoflop(points)               # approach 2: a parabola per IsoFLOP curve
    isoflop_exponent(budgets)                   # N_opt ∝ C^a through the parabola minima
    bootstrap(points, law)                      # 95% intervals of every constant and exponent

**Fit.** Approach 3 of Hoffmann et al. (2022): L(N, D) = E + A/N^α + B/D^β, fitted in log space
as LSE(a − α log N, b − β log D, e) against log L with a Huber loss (δ = 1e-3), by L-BFGS from
every start of a grid, keeping the best. Approach 2: a parabola in log N through each IsoFLOP
curve gives the loss-minimising N per budget, and a line through log N_opt vs log C gives the
exponent. Bootstrap intervals resample the points and refit both.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

from llmos.common import LlmosError

HUBER_DELTA = 1e-3
# Hoffmann et al. (2022), approach 3 (nats/token on MassiveText, total parameters).
CHINCHILLA = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}


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
                             "budgets and sizes")
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
        raise LlmosError(f"the law has 5 parameters but there are only {len(x)} points: sweep more budgets or sizes")
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

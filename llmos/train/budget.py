"""Wall-clock budgets: choose a training run's step count so that it ends when its time does.

    llmos pretrain --minutes 12          # as many steps as 12 minutes allow on this machine
    llmos pretrain --minutes 12 --dry-run
    budget = Budget(minutes=12)          # started now; the Trainer reports to it as it goes

A budget covers the whole job: data loading, building the model, torch.compile (paid in the first
step), the steps, the periodic evaluations, samples and checkpoints, and the final evaluation and
save. Machines differ by 4x and more (AMX, AVX-512, AVX2-only, one thread or two), so the step
count is measured, not assumed:

1. The first step of a process pays for compilation; the steps after it give the seconds per step.
   After `MEASURE_STEPS` of them the first plan is made (until then the planned total is a
   placeholder: warmup does not depend on it, and it is far enough away that cosine has not begun).
2. A plan is the largest step count whose remaining steps, the evaluations, samples and checkpoints
   they pass through, and the finishing work (a last evaluation, sample and checkpoint, and the
   params file) fit in what is left of the budget. Evaluation, sample and checkpoint costs are
   measured as they happen; before the first evaluation its cost is estimated from the step time.
3. Every `REPLAN_EVERY` steps the plan is made again from the recent step times, so a machine that
   slows down (another job) or speeds up still finishes on time, and the learning-rate schedule,
   which reads the planned total, decays to its end when the budget ends. Changes are small after
   the first plan, so the schedule moves smoothly.

The plan (budget, planned steps, seconds spent) travels in every checkpoint. A resumed run keeps
the budget, charges what the interrupted process spent up to its checkpoint, and plans what is
left with its own measurements: the time between the checkpoint and the interruption is lost, the
schedule is not.

Tests drive a Budget with a fake `clock` (any callable returning seconds), so plans are exact and
never depend on the machine's speed.
"""
from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

from llmos.common import LlmosError

MEASURE_STEPS = 5  # steady steps timed before the first plan
REPLAN_EVERY = 10  # steps between plans
RECENT_STEPS = 50  # the step time is the mean of this many recent steps
PLACEHOLDER_STEPS = 10**9  # the planned total before the first plan: no decay yet
SAVE_ALLOWANCE_S = 2.0  # writing the params file and plots after the loop, beyond a checkpoint's time


@dataclass
class Schedule:
    """When periodic work happens: at steps that are multiples of `every`, before the last step."""
    eval_every: int
    sample_every: int
    ckpt_every: int

    @staticmethod
    def count(every: int, first: int, last: int) -> int:
        """Multiples of `every` in [first, last]."""
        return max(0, last // every - (first - 1) // every) if last >= first else 0


@dataclass
class Budget:
    minutes: float
    clock: Callable[[], float] = time.perf_counter
    spent_before_s: float = 0.0  # charged by earlier processes of the same run (resume)
    planned_steps: int = PLACEHOLDER_STEPS
    plans: list = field(default_factory=list)  # (at step, planned steps, seconds per step)
    started: float | None = None  # the clock reading when this process's part began (default: now)

    def __post_init__(self):
        if not (math.isfinite(self.minutes) and self.minutes > 0):
            raise LlmosError(f"--minutes must be a positive number of minutes, not {self.minutes}")
        if self.started is None:
            self.started = self.clock()
        self._steps = deque(maxlen=RECENT_STEPS)  # seconds of recent steady steps
        self._steps_timed = 0
        self._costs: dict[str, float] = {}  # last measured seconds of eval, sample, ckpt

    # ----- what happened -----
    @property
    def seconds(self) -> float:
        return self.minutes * 60

    def elapsed(self) -> float:
        """Seconds charged to this run so far, earlier processes included."""
        return self.spent_before_s + self.clock() - self.started

    def left(self) -> float:
        return self.seconds - self.elapsed()

    def record_step(self, seconds: float, first_of_process: bool) -> None:
        """A training step took `seconds`; the first of a process carries compilation and is not a sample."""
        if not first_of_process:
            self._steps.append(seconds)
            self._steps_timed += 1

    def record(self, kind: str, seconds: float) -> None:
        """An evaluation ('eval'), sample ('sample') or checkpoint ('ckpt') took `seconds`."""
        self._costs[kind] = seconds

    @property
    def step_seconds(self) -> float | None:
        return sum(self._steps) / len(self._steps) if self._steps else None

    def measured(self) -> bool:
        return self._steps_timed >= MEASURE_STEPS

    # ----- planning -----
    def cost(self, kind: str, eval_estimate_s: float) -> float:
        default = {"eval": eval_estimate_s, "sample": 2 * self.step_seconds, "ckpt": self.step_seconds}[kind]
        return self._costs.get(kind, default)

    def work_seconds(self, step: int, remaining: int, schedule: Schedule, eval_estimate_s: float) -> float:
        """Seconds to run `remaining` more steps from `step` done: the steps, the evaluations, samples
        and checkpoints on the way (at step counts step .. total-1; checkpoints after steps step+1 ..
        total-1) and the finishing work (a last evaluation, sample, checkpoint and the save)."""
        evals, samples, ckpts = (self.cost(k, eval_estimate_s) for k in ("eval", "sample", "ckpt"))
        last = step + remaining - 1
        periodic = (schedule.count(schedule.eval_every, max(step, 1), last) * evals
                    + schedule.count(schedule.sample_every, max(step, 1), last) * samples
                    + schedule.count(schedule.ckpt_every, step + 1, last) * ckpts)
        return remaining * self.step_seconds + periodic + evals + samples + ckpts + SAVE_ALLOWANCE_S

    def plan(self, step: int, schedule: Schedule, eval_estimate_s: float) -> int:
        """The step count to stop at, seen from `step` (steps done): the most steps whose work fits
        in what is left of the budget."""
        if self.step_seconds is None:
            raise LlmosError("a budget needs at least one timed step before it can plan")
        left = self.left()

        def fits(n: int) -> bool:
            return self.work_seconds(step, n, schedule, eval_estimate_s) <= left

        remaining = max(0, int(left / self.step_seconds))
        # Periodic work grows with the steps: shrink the guess by the overshoot until it fits, then
        # take back the steps that shrinking by whole evaluations gave away.
        while remaining > 0 and not fits(remaining):
            over = self.work_seconds(step, remaining, schedule, eval_estimate_s) - left
            remaining = max(0, remaining - max(1, math.ceil(over / self.step_seconds)))
        while fits(remaining + 1):
            remaining += 1
        self.planned_steps = step + remaining
        self.plans.append((step, self.planned_steps, round(self.step_seconds, 5)))
        return self.planned_steps

    def should_plan(self, step_in_process: int) -> bool:
        """Plan once MEASURE_STEPS steady steps are timed, then every REPLAN_EVERY steps; and at
        once if the budget ran out before the measurement did (a model too slow for its budget)."""
        if not self.measured():
            return self.left() <= 0 and self.step_seconds is not None
        return self.planned_steps == PLACEHOLDER_STEPS or step_in_process % REPLAN_EVERY == 0

    # ----- checkpoints -----
    def state_dict(self) -> dict:
        return {"minutes": self.minutes, "spent_s": self.elapsed(), "planned_steps": self.planned_steps,
                "plans": self.plans[-20:]}

    @classmethod
    def resumed(cls, state: dict, clock: Callable[[], float] = time.perf_counter,
                started: float | None = None) -> "Budget":
        return cls(minutes=state["minutes"], clock=clock, spent_before_s=state["spent_s"],
                   planned_steps=state["planned_steps"], plans=[tuple(p) for p in state.get("plans", [])],
                   started=started)

    def summary(self) -> dict:
        """For result dicts and reports: the budget, the plan and what was spent."""
        return {"budget_s": round(self.seconds, 1), "planned_steps": self.planned_steps,
                "spent_s": round(self.elapsed(), 1), "step_s": round(self.step_seconds or 0.0, 4),
                "plans": len(self.plans)}


def format_plan(plan: dict) -> str:
    """The plan of a dry run, for people."""
    lines = [f"plan for {plan['what']}",
             f"  machine:  {plan['machine']}",
             f"  compute:  {plan['dtype']}, torch.compile {'on' if plan['compiled'] else 'off'}, "
             f"{plan['world']} process(es)",
             f"  measured: setup and first step (compilation) {plan['first_step_s']:.1f} s, then "
             f"{plan['step_s']:.3f} s/step ({plan['tokens_per_step'] / plan['step_s']:,.0f} tokens/s)"]
    if plan["budget_s"]:
        lines.append(f"  budget:   {plan['budget_s'] / 60:g} minutes -> {plan['steps']:,} steps "
                     f"({plan['tokens']:,} tokens), the schedule ending at the last one")
    else:
        lines.append(f"  steps:    {plan['steps']:,} fixed ({plan['tokens']:,} tokens): about "
                     f"{plan['seconds'] / 60:.1f} minutes here")
    lines.append(f"  evaluations every {plan['eval_every']} steps, about {plan['eval_s']:.1f} s each (estimated)")
    return "\n".join(lines)

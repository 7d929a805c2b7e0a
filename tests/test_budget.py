"""Time budgets: the step count is planned from measured step times so that the schedule ends when the
budget does. Every test here drives the planner with a fake clock, never the machine's own."""
import subprocess

import numpy as np
import pytest
import torch

from conftest import llmos_cmd, subprocess_env
from llmos.common import LlmosError
from llmos.data.shards import TokenLoader
from llmos.model import ModelConfig, Transformer
from llmos.report import read_metrics
from llmos.speedrun import PRESETS, Context
from llmos.train.budget import MEASURE_STEPS, Budget, Schedule
from llmos.train.loop import Trainer, TrainConfig, latest_checkpoint, load_checkpoint, lr_multiplier


class FakeClock:
    """Seconds that pass only when the test says so."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def test_a_plan_fits_the_steps_and_their_periodic_work_in_what_is_left():
    clock = FakeClock()
    budget = Budget(minutes=2, clock=clock)
    clock.advance(20)  # setup and the first step's compilation
    budget.record_step(20, first_of_process=True)
    for _ in range(MEASURE_STEPS):
        clock.advance(0.5)
        budget.record_step(0.5, first_of_process=False)
    assert budget.step_seconds == 0.5  # the compiling step is not a sample
    budget.record("eval", 4.0)
    schedule = Schedule(eval_every=50, sample_every=1000, ckpt_every=1000)
    total = budget.plan(MEASURE_STEPS + 1, schedule, eval_estimate_s=99.0)
    left = 120 - 20 - 0.5 * MEASURE_STEPS
    work = lambda steps: budget.work_seconds(MEASURE_STEPS + 1, steps - MEASURE_STEPS - 1, schedule, 99.0)  # noqa: E731
    assert work(total) <= left < work(total + 1)  # the most steps that fit, and not one more
    # 194 more steps cross evaluations at steps 50, 100 and 150 (4 s each, measured), then the finish.
    assert total == 6 + int((left - 3 * 4.0 - (4.0 + 1.0 + 0.5 + 2.0)) / 0.5)


def test_no_plan_before_the_steps_are_measured_and_a_clear_error_for_a_bad_budget():
    budget = Budget(minutes=1, clock=FakeClock())
    assert not budget.should_plan(1)
    with pytest.raises(LlmosError, match="--minutes must be a positive number"):
        Budget(minutes=0)
    with pytest.raises(LlmosError, match="--minutes must be a positive number"):
        Budget(minutes=float("nan"))


def tiny_trainer(tmp_path, clock, minutes=1.0, **overrides) -> Trainer:
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=128, d_model=32, n_layers=1, n_heads=2, n_kv_heads=2, max_seq_len=32))
    tokens = np.random.default_rng(0).integers(0, 128, 20_000).astype(np.uint16)
    cfg = TrainConfig(**{"steps": 5, "minutes": minutes, "batch_size": 4, "seq_len": 32, "compile": False,
                         "warmup_steps": 5, "eval_every": 40, "sample_every": 10_000, "ckpt_every": 25,
                         "log_every": 1, **overrides})
    return Trainer(model, cfg, tmp_path / "run", TokenLoader(tokens, 4, 32), evaluate=lambda m: {"val_loss": 1.0},
                   clock=clock)


def run_on_fake_time(trainer, clock, step_s, eval_s=3.0, slow_after=None, resume=False):
    """Each training step takes step_s fake seconds (twice that after step `slow_after`); each evaluation eval_s."""
    train_step, evaluate = trainer.train_step, trainer.evaluate

    def timed_step(step):
        result = train_step(step)
        clock.advance(step_s * (2 if slow_after is not None and step >= slow_after else 1))
        return result

    def timed_eval(model):
        clock.advance(eval_s)
        return evaluate(model)

    trainer.train_step, trainer.evaluate = timed_step, timed_eval
    return trainer.run(resume=resume)


def test_a_budgeted_run_ends_its_schedule_when_the_budget_ends(tmp_path):
    clock = FakeClock()
    trainer = tiny_trainer(tmp_path, clock, minutes=1.0)
    clock.advance(5)  # the job's setup before the loop
    result = run_on_fake_time(trainer, clock, step_s=0.25)
    spent = clock.now - trainer.started
    assert result["step"] == trainer.steps == result["plan"]["planned_steps"]
    assert 60 - 2 * 3.0 - 1.0 < spent <= 60, spent  # on time, within about one evaluation of the end
    assert 150 < result["step"] < 240  # 55 s of 0.25 s steps, less the evaluations and the finish
    lrs = [r["lr"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "lr" in r]
    cfg = trainer.cfg
    assert lrs[-1] == pytest.approx(trainer.lr * lr_multiplier(result["step"] - 1, cfg, result["step"]))
    assert lrs[-1] == pytest.approx(trainer.lr * cfg.min_lr_frac, rel=1e-3)  # the cosine reached its floor
    assert max(lrs) == pytest.approx(trainer.lr, rel=1e-3)


def test_a_machine_that_slows_down_gets_fewer_steps_and_still_ends_on_time(tmp_path):
    steady, slowed = FakeClock(), FakeClock()
    even = run_on_fake_time(tiny_trainer(tmp_path / "a", steady), steady, step_s=0.25)
    trainer = tiny_trainer(tmp_path / "b", slowed)
    late = run_on_fake_time(trainer, slowed, step_s=0.25, slow_after=60)
    assert late["step"] < even["step"] - 30
    assert slowed.now - trainer.started <= 60
    assert late["plan"]["plans"] > 5  # it replanned as the steps slowed


def test_a_resumed_budgeted_run_keeps_its_plan_and_charges_the_time_spent(tmp_path):
    clock = FakeClock()
    first = tiny_trainer(tmp_path, clock, minutes=1.0)
    calls = {"n": 0}
    train_step = first.train_step

    def interrupted(step):  # Ctrl-C after the 100th step
        calls["n"] += 1
        if calls["n"] == 100:
            first.stop_requested = True
        return train_step(step)

    first.train_step = interrupted
    stopped = run_on_fake_time(first, clock, step_s=0.25)
    assert stopped["interrupted"] and stopped["step"] == 100
    saved = load_checkpoint(latest_checkpoint(tmp_path / "run" / "checkpoints"))["budget"]
    assert saved["minutes"] == 1.0 and saved["spent_s"] == pytest.approx(clock.now - first.started)

    clock.advance(3600)  # the time between the processes is not charged: only what each spent
    second = tiny_trainer(tmp_path, clock, minutes=5.0)  # a resume keeps the checkpoint's budget
    second.started = clock.now
    done = run_on_fake_time(second, clock, step_s=0.25, resume=True)
    assert second.budget.minutes == 1.0
    total = saved["spent_s"] + (clock.now - second.started)
    assert 60 - 8.0 < total <= 60, total
    assert done["step"] == second.steps


def test_dry_run_prints_the_plan_and_writes_nothing(corpus_dir, tokenizer_path, tmp_path):
    out = tmp_path / "run"
    done = subprocess.run(llmos_cmd("pretrain", "--data", str(corpus_dir), "--tokenizer", str(tokenizer_path),
                                    "--out", str(out), "--depth", "1", "--seq-len", "64", "--batch-size", "4",
                                    "--no-compile", "--minutes", "2", "--dry-run"),
                          env=subprocess_env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "plan for pretraining a 1x64 model" in done.stdout and "budget:   2 minutes ->" in done.stdout
    assert "s/step" in done.stdout and "fp32" in done.stdout
    assert not out.exists()


def test_the_speedrun_splits_its_budget_between_the_training_stages():
    preset = PRESETS["cpu"]
    assert 0 < preset.minutes <= 23  # make demo's 25 minutes, less the install and the data check
    budget = preset.minutes * 60
    ctx = Context("cpu", preset, None, None, {"data": {"seconds": 30.0}, "tokenizer": {"seconds": 30.0}})
    tail = sum(preset.tail_s.values())
    assert ctx.minutes_for("pretrain") * 60 == pytest.approx(preset.pretrain_share * (budget - 60 - tail))
    ctx.status.update(pretrain={"seconds": 700.0}, sample={"seconds": 10.0})
    assert ctx.minutes_for("sft") * 60 == pytest.approx(budget - 770 - preset.tail_s["eval"] - preset.tail_s["report"])
    ctx.status["pretrain"]["seconds"] = 1300.0  # a pretraining that ran over leaves fine-tuning too little
    with pytest.raises(LlmosError, match="budget leaves .* for sft: give the speedrun more --minutes"):
        ctx.minutes_for("sft")
    assert Context("tiny", PRESETS["tiny"], None, None, {}).minutes_for("pretrain") == 0  # fixed steps


def test_the_rl_stage_gets_its_own_minutes_and_never_what_earlier_stages_left():
    preset = PRESETS["cpu-full"]
    names = preset.stage_names
    after_rl = sum(preset.tail_s[name] for name in names[names.index("rl") + 1:])  # arena, think, report
    ctx = Context("cpu-full", preset, None, None, {})
    ctx.status.update(pretrain={"seconds": 1800.0}, sft={"seconds": 1200.0}, eval={"seconds": 20.0})
    assert preset.minutes * 60 - 3020 - after_rl > preset.rl_minutes * 60  # earlier stages left some unspent
    assert ctx.minutes_for("rl") == preset.rl_minutes
    ctx.status["sft"]["seconds"] = 1700.0  # fine-tuning ran over: RL gets what is left, under its 30 minutes
    left = preset.minutes * 60 - 3520 - after_rl
    assert left < preset.rl_minutes * 60 and ctx.minutes_for("rl") * 60 == pytest.approx(left)


def test_speedrun_dry_run_shows_the_stage_budgets_and_a_measured_plan(tmp_path):
    done = subprocess.run(llmos_cmd("speedrun", "--preset", "tiny", "--minutes", "5", "--dry-run",
                                    "--out", str(tmp_path / "never")),
                          env=subprocess_env(), capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "speedrun tiny: budget 5 minutes: pretraining" in done.stdout
    assert "plan for the tiny speedrun's pretraining" in done.stdout and "machine:" in done.stdout
    assert list(tmp_path.iterdir()) == []

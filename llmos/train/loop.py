"""The shared training loop: optimizer, schedule, precision, compile, DDP, logging, checkpoints, resume.

    trainer = Trainer(model, TrainConfig(steps=1000), run_dir, loader, evaluate=fn, sample=fn)
    trainer.run(resume=False)
    trainer = Trainer(model, TrainConfig(minutes=12), ...)   # as many steps as 12 minutes allow (budget.py)

Every job (pretraining, fine-tuning, reward model, DPO, RL) hands the loop a model, a loader with
`next_batch()` / `state_dict()` / `load_state_dict()` and an objective (llmos/train/objectives.py:
`objective(net, batch) -> (loss, metrics)`; next-token by default); the loop owns everything else:
- AdamW (or Muon for the matrices, AdamW for the rest), warmup then cosine or warmup-stable-decay;
- gradient accumulation, clipping, bf16 autocast where the hardware has fast bf16, torch.compile;
- DDP when launched by torchrun (gloo on CPU, nccl on CUDA), rank 0 writes everything;
- `metrics.jsonl` (with the objective's metrics), a loss-curve PNG, a tqdm bar with loss, tokens/s and MFU;
- checkpoints written atomically every `ckpt_every` steps (the last `keep_ckpts` kept), one more on
  Ctrl-C (SIGINT/SIGTERM); `run(resume=True)` continues the exact trajectory from the latest one;
- a wall-clock budget (`minutes`): the step count is planned and replanned from measured step times
  so that the schedule ends when the budget does; the plan travels in every checkpoint.

Under torchrun every rank handles SIGINT/SIGTERM, and the ranks agree after every step (one small
all-reduce) on whether to stop and on the planned step count, so all stop at the same step and rank
0 writes one checkpoint. `metrics.jsonl` is appended a line at a time; a line torn by a kill is
dropped with a warning when the file is read, and a resume truncates what came after its checkpoint.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import signal
import time
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch
import torch.distributed as dist
from tqdm import tqdm

from llmos.checkpoint import CKPT_VERSION, latest_checkpoint, load_checkpoint  # noqa: F401  (re-exported for the stages)
from llmos.common import LlmosError, atomic_write, file_lock, llmos_home, os_error_message
from llmos.model import Transformer, default_lr
from llmos.perf import compute_dtype, describe_machine, fast_bf16, matmul_peak_flops
from llmos.report import read_metrics
from llmos.train.budget import MEASURE_STEPS, Budget, Schedule, format_plan
from llmos.train.muon import Muon
from llmos.train.objectives import next_token



@dataclass
class TrainConfig:
    steps: int = 1000  # optimizer steps (ignored when --minutes plans them)
    minutes: float = 0.0  # wall-clock budget of the whole job, compilation and evaluation included; 0: use --steps
    batch_size: int = 16  # sequences per process per micro-step
    grad_accum: int = 1  # micro-steps per optimizer step
    seq_len: int = 256  # tokens per sequence (sft: 0 is the model's context, at most 256)
    lr: float = 0.0  # 0: derived from the model width
    min_lr_frac: float = 0.1  # the schedule's final learning rate, as a fraction of the peak
    warmup_steps: int = 50  # linear warmup
    schedule: str = "cosine"  # cosine | wsd (warmup-stable-decay)
    decay_frac: float = 0.2  # wsd: the final fraction of steps spent decaying
    weight_decay: float = 0.1  # AdamW decay on matrices and embeddings
    grad_clip: float = 1.0  # max gradient norm (0: no clipping)
    optimizer: str = "adamw"  # adamw | muon (Muon on matrices, AdamW on embeddings and norms)
    muon_lr: float = 0.02  # Muon's learning rate for the matrices
    embed_lr: float = 0.0  # muon: AdamW's peak learning rate for the input embedding (0: --lr)
    head_lr: float = 0.0  # muon: for an untied output layer (0: --lr)
    dtype: str = "auto"  # auto | bf16 | fp32
    compile: bool = True  # torch.compile the model
    device: str = "auto"  # auto | cpu | cuda
    eval_every: int = 250  # steps between validation evaluations
    eval_tokens: int = 65536  # validation tokens per evaluation
    sample_every: int = 500  # steps between logged samples
    ckpt_every: int = 500  # steps between checkpoints
    keep_ckpts: int = 2  # checkpoints kept on disk
    log_every: int = 10  # steps between metrics lines
    seed: int = 0  # initialisation and data order

    def validate(self):
        if self.schedule not in ("cosine", "wsd"):
            raise LlmosError(f"unknown --schedule {self.schedule!r}: use cosine or wsd")
        if self.optimizer not in ("adamw", "muon"):
            raise LlmosError(f"unknown --optimizer {self.optimizer!r}: use adamw or muon")
        if self.optimizer == "muon" and not hasattr(torch.optim, "Muon"):
            raise LlmosError(f"--optimizer muon needs torch >= 2.9 (torch.optim.Muon); this is torch "
                             f"{torch.__version__}: upgrade torch or use --optimizer adamw")
        if self.dtype not in ("auto", "bf16", "fp32"):
            raise LlmosError(f"unknown --dtype {self.dtype!r}: use auto, bf16 or fp32")
        later = ("steps", "seq_len", "warmup_steps")  # 0: decided by the job (see sft_train_config)
        for name in ("steps", "batch_size", "grad_accum", "seq_len", "warmup_steps", "keep_ckpts"):
            if getattr(self, name) < (0 if name in later else 1):
                least = "0 or more" if name in later else "at least 1"
                raise LlmosError(f"--{name.replace('_', '-')} must be {least}, not {getattr(self, name)}")
        for name in ("eval_every", "sample_every", "ckpt_every", "log_every"):
            if getattr(self, name) < 1:
                raise LlmosError(f"--{name.replace('_', '-')} must be at least 1, not {getattr(self, name)} "
                                 "(a number above the step count means only at the end)")
        if not (math.isfinite(self.minutes) and self.minutes >= 0):
            raise LlmosError(f"--minutes must be a positive number (0: use --steps), not {self.minutes}")
        if not 0 <= self.min_lr_frac <= 1 or not 0 <= self.decay_frac <= 1:
            raise LlmosError("--min-lr-frac and --decay-frac must be between 0 and 1")


def lr_multiplier(step: int, cfg: TrainConfig, total: int | None = None) -> float:
    """The schedule at `step` of `total` steps (default cfg.steps; a budget passes its planned total)."""
    total = cfg.steps if total is None else total
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.schedule == "wsd":
        decay_start = int(total * (1 - cfg.decay_frac))
        if step < decay_start:
            return 1.0
        progress = (step - decay_start) / max(1, total - decay_start)
        return 1.0 - (1.0 - cfg.min_lr_frac) * min(1.0, progress)
    progress = (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)
    return cfg.min_lr_frac + (1 - cfg.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def to_device(batch, device: torch.device):
    """A loader's batch (tensors, None, or tuples and dicts of them) on the training device."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (tuple, list)):
        return type(batch)(to_device(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    return batch


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise LlmosError("--device cuda was asked for but no CUDA GPU is visible")
    return torch.device(name)


def can_compile(device: torch.device) -> bool:
    """Inductor builds C++ on CPU; without a compiler torch.compile fails at the first step."""
    return device.type == "cuda" or shutil.which(os.environ.get("CXX", "g++")) is not None


def build_optimizers(model: Transformer, cfg: TrainConfig, lr: float) -> list[torch.optim.Optimizer]:
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]  # frozen under LoRA
    matrices = [p for n, p in trainable if p.ndim == 2 and "embed" not in n and "lm_head" not in n]
    embeddings = [p for n, p in trainable if p.ndim == 2 and ("embed" in n or "lm_head" in n)]
    vectors = [p for n, p in trainable if p.ndim < 2]
    embeddings = list({id(p): p for p in embeddings}.values())  # tied weights appear twice
    adamw = dict(betas=(0.9, 0.95), eps=1e-8)
    if cfg.optimizer == "muon":  # its orthogonalisation in bf16 only where the hardware is fast at it
        ns_dtype = torch.bfloat16 if fast_bf16(matrices[0].device) else torch.float32
        head = [p for n, p in trainable if "lm_head" in n]  # untied only: a tied one is listed as embed
        inputs = [p for n, p in trainable if p.ndim == 2 and "embed" in n]
        groups = [{"params": inputs, "weight_decay": cfg.weight_decay, "lr": cfg.embed_lr or lr},
                  {"params": head, "weight_decay": cfg.weight_decay, "lr": cfg.head_lr or lr}]
        return [Muon(matrices, ns_dtype=ns_dtype, lr=cfg.muon_lr, weight_decay=cfg.weight_decay),
                torch.optim.AdamW([g for g in groups if g["params"]] + [{"params": vectors, "weight_decay": 0.0}],
                                  lr=lr, **adamw)]
    return [torch.optim.AdamW([{"params": matrices + embeddings, "weight_decay": cfg.weight_decay},
                               {"params": vectors, "weight_decay": 0.0}], lr=lr, **adamw)]


def dist_setup(device: torch.device) -> tuple[int, int]:
    """(rank, world_size); initialises the process group when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), world


class Trainer:
    def __init__(self, model: Transformer, cfg: TrainConfig, run_dir: str | Path, loader,
                 evaluate: Callable[[Transformer], dict] | None = None,
                 sample: Callable[[Transformer], str] | None = None, checkpoint_extra: dict | None = None,
                 eval_first: bool = False, eval_tokens: int = 0, started: float | None = None,
                 clock: Callable[[], float] = time.perf_counter, objective: Callable = next_token):
        """`eval_tokens`: about how many tokens one evaluation reads (a budget's first estimate of its
        cost); `started`: the clock reading when the job began (a budget counts setup from there);
        `objective(net, batch) -> (loss, metrics)` turns a loader's batch into the loss."""
        cfg.validate()
        if not cfg.minutes and cfg.steps < 1:
            raise LlmosError(f"--steps must be at least 1 (or give --minutes), not {cfg.steps}")
        if cfg.seq_len < 1:
            raise LlmosError(f"--seq-len must be at least 1, not {cfg.seq_len}")
        self.eval_first = eval_first  # also evaluate before the first step (fine-tuning: the base's figure)
        self.cfg, self.run_dir, self.loader = cfg, Path(run_dir), loader
        self.evaluate, self.sample, self.objective = evaluate, sample, objective
        self.step_metrics: dict[str, float] = {}  # the objective's metrics of the last step, averaged over micro-steps
        self.tokens_seen = 0  # input tokens of the batches this process trained on (throughput)
        self.checkpoint_extra = checkpoint_extra or {}
        self.clock, self.eval_tokens = clock, eval_tokens
        self.device = resolve_device(cfg.device)
        self.rank, self.world = dist_setup(self.device)
        if self.device.type == "cuda":
            self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(self.device)
        self.model = model.to(self.device)
        self.compiled = cfg.compile and can_compile(self.device)
        if cfg.compile and not self.compiled:
            self.log("torch.compile needs a C++ compiler (g++) on CPU: training eagerly")
        self.bf16 = compute_dtype(self.device, cfg.dtype, self.compiled) == torch.bfloat16
        self.lr = cfg.lr or default_lr(model.cfg.d_model)
        self.optimizers = build_optimizers(self.model, cfg, self.lr)
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]  # all but a LoRA's frozen base
        for opt in self.optimizers:
            for group in opt.param_groups:
                group["base_lr"] = group["lr"]
        net = torch.compile(self.model) if self.compiled else self.model
        if self.world > 1:
            net = torch.nn.parallel.DistributedDataParallel(net, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.net = net
        self.step = 0
        self.started = clock() if started is None else started
        self.budget = Budget(cfg.minutes, clock, started=self.started) if cfg.minutes else None
        self.steps = self.budget.planned_steps if self.budget else cfg.steps  # the schedule's length
        self.schedule = Schedule(cfg.eval_every, cfg.sample_every, cfg.ckpt_every)
        self.stop_requested = False
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.metrics_path = self.run_dir / "metrics.jsonl"

    # ----- bookkeeping -----
    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def tokens_per_step(self) -> int:
        return self.cfg.batch_size * self.cfg.seq_len * self.cfg.grad_accum * self.world

    @property
    def dtype_name(self) -> str:
        return "bf16" if self.bf16 else "fp32"

    def log(self, msg: str):
        if self.is_main:
            tqdm.write(msg)

    def write_metrics(self, record: dict):
        if self.is_main:
            try:
                with open(self.metrics_path, "a", encoding="utf-8") as f:
                    f.write(json.dumps(record) + "\n")
            except OSError as e:
                raise LlmosError(f"could not write {os_error_message(e, self.metrics_path)}") from None

    def autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16) if self.bf16 else nullcontext()

    def timed(self, kind: str, work: Callable[[], object]):
        """Run periodic work (eval, sample, ckpt), telling the budget what it cost."""
        t = self.clock()
        result = work()
        if self.budget:
            self.budget.record(kind, self.clock() - t)
        return result

    # ----- checkpoints -----
    def save_checkpoint(self):
        if not self.is_main:
            return
        state = {"version": CKPT_VERSION, "step": self.step, "model_config": self.model.cfg.to_dict(),
                 "train_config": asdict(self.cfg), "model": self.model.state_dict(),
                 "optimizers": [opt.state_dict() for opt in self.optimizers],
                 "loader": self.loader.state_dict(), "steps": self.steps,
                 **({"budget": self.budget.state_dict()} if self.budget else {}), **self.checkpoint_extra}
        with atomic_write(self.ckpt_dir / f"step_{self.step:07d}.pt") as f:
            torch.save(state, f)
        for old in sorted(self.ckpt_dir.glob("step_*.pt"))[:-self.cfg.keep_ckpts]:
            old.unlink()

    def resume_from_latest(self):
        path = latest_checkpoint(self.ckpt_dir)
        state = load_checkpoint(path)
        if state["model_config"] != self.model.cfg.to_dict():
            raise LlmosError(f"{path} holds a different model config than this run asks for: "
                             "resume with the run's own settings (see its config.json)")
        self.model.load_state_dict(state["model"])
        for opt, opt_state in zip(self.optimizers, state["optimizers"]):
            opt.load_state_dict(opt_state)
        self.loader.load_state_dict(state["loader"])
        self.step = state["step"]
        if "budget" in state:  # the plan continues: same budget, earlier time charged
            started = self.budget.started if self.budget else None
            self.budget = Budget.resumed(state["budget"], self.clock, started=started)
            self.steps = self.budget.planned_steps
        elif "steps" in state:
            self.steps = state["steps"]
        if self.is_main and self.metrics_path.exists():  # drop what was logged after that checkpoint
            kept = [json.dumps(r) for r in read_metrics(self.metrics_path) if r["step"] <= self.step]
            with atomic_write(self.metrics_path, "w") as f:
                f.write("".join(line + "\n" for line in kept))
        self.log(f"resumed from {path} at step {self.step}"
                 + (f", {self.budget.left() / 60:.1f} of {self.budget.minutes:g} minutes left" if self.budget else ""))

    # ----- the loop -----
    def train_step(self, step: int) -> tuple[float, float]:
        mult = lr_multiplier(step, self.cfg, self.steps)
        for opt in self.optimizers:
            for group in opt.param_groups:
                group["lr"] = group["base_lr"] * mult
        total = torch.zeros((), device=self.device)
        metrics: dict[str, float] = {}
        for micro in range(self.cfg.grad_accum):
            batch = to_device(self.loader.next_batch(), self.device)
            # Rows actually processed (RL's batches change shape with each rollout): what tok/s counts.
            self.tokens_seen += (batch[0] if isinstance(batch, (tuple, list)) else batch).numel() * self.world
            sync = micro == self.cfg.grad_accum - 1 or self.world == 1
            with (nullcontext() if sync else self.net.no_sync()), self.autocast():
                loss, micro_metrics = self.objective(self.net, batch)
                loss = loss / self.cfg.grad_accum
            loss.backward()
            total += loss.detach()
            for k, v in micro_metrics.items():
                metrics[k] = metrics.get(k, 0.0) + v / self.cfg.grad_accum
        self.step_metrics = {**getattr(self.loader, "metrics", {}), **metrics}
        grad_norm = torch.nn.utils.clip_grad_norm_(self.trainable, self.cfg.grad_clip or float("inf"))
        for opt in self.optimizers:
            opt.step()
            opt.zero_grad(set_to_none=True)
        if self.world > 1:
            dist.all_reduce(total, op=dist.ReduceOp.AVG)
        return total.item(), grad_norm.item()

    def run_evaluation(self):
        if self.evaluate is None:
            return
        self.model.eval()
        with torch.no_grad(), self.autocast():
            result = self.evaluate(self.model)
        self.model.train()
        self.write_metrics({"step": self.step, **result})
        self.log(f"step {self.step}: " + ", ".join(f"{k} {v:.4f}" for k, v in result.items()))
        return result

    def run_sample(self):
        if self.sample is None or not self.is_main:
            return
        self.model.eval()
        text = self.sample(self.model)
        self.model.train()
        self.write_metrics({"step": self.step, "sample": text})
        self.log(f"sample at step {self.step}: {text!r}")

    def eval_estimate_s(self, budget: Budget | None = None) -> float:
        """Before the first evaluation is timed: a forward pass over its tokens, taken as half a
        training step per step's worth of tokens (no backward, but eager)."""
        return 0.5 * (budget or self.budget).step_seconds * self.eval_tokens / self.tokens_per_step

    def dry_run(self, what: str) -> dict:
        """Time the first steps here (compilation included) and plan from them, writing nothing: print
        the plan a real run would start from, and return it. The model's weights change; it is thrown
        away after."""
        timer = self.budget or Budget(minutes=1.0, clock=self.clock, started=self.started)
        self.model.train()
        for step in range(MEASURE_STEPS + 1):
            t = self.clock()
            self.train_step(step)
            timer.record_step(self.clock() - t, first_of_process=step == 0)
            if step == 0:
                first_step_s = timer.elapsed()
        done, eval_s = MEASURE_STEPS + 1, self.eval_estimate_s(timer)
        steps = self.budget.plan(done, self.schedule, eval_s) if self.budget else self.cfg.steps
        seconds = timer.elapsed() + timer.work_seconds(done, max(0, steps - done), self.schedule, eval_s)
        plan = {"what": what, "machine": describe_machine(), "dtype": self.dtype_name, "compiled": self.compiled,
                "world": self.world, "first_step_s": first_step_s, "step_s": timer.step_seconds,
                "tokens_per_step": self.tokens_per_step, "steps": steps, "tokens": steps * self.tokens_per_step,
                "budget_s": self.budget.seconds if self.budget else 0, "seconds": seconds,
                "eval_every": self.cfg.eval_every, "eval_s": eval_s}
        if self.is_main:
            print(format_plan(plan))
        return plan

    def replan(self, steps_in_process: int) -> None:
        """Rank 0 plans; `agree` hands the plan to the other ranks."""
        if self.is_main and self.budget and self.budget.should_plan(steps_in_process):
            before = self.steps
            self.steps = self.budget.plan(self.step, self.schedule, self.eval_estimate_s())
            if len(self.budget.plans) == 1:
                self.log(f"plan: {self.steps:,} steps in {self.budget.minutes:g} minutes "
                         f"({self.budget.step_seconds:.3f} s/step, {self.budget.left():.0f} s left)")
            elif abs(self.steps - before) > max(2, before // 50):
                self.log(f"replanned at step {self.step}: {before:,} -> {self.steps:,} steps")

    def agree(self) -> None:
        """All ranks take rank 0's planned step count and stop if any rank was asked to."""
        if self.world == 1:
            return
        state = torch.tensor([float(self.stop_requested), float(self.steps if self.is_main else 0)],
                             dtype=torch.float64, device=self.device)
        dist.all_reduce(state, op=dist.ReduceOp.MAX)
        self.stop_requested, self.steps = bool(state[0]), int(state[1])

    def _request_stop(self, signum, frame):
        if self.stop_requested:  # a second Ctrl-C stops at once
            raise KeyboardInterrupt
        self.stop_requested = True
        self.log("stopping after this step; saving a checkpoint (Ctrl-C again to abort)")

    def run(self, resume: bool = False) -> dict:
        cfg = self.cfg
        if self.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            # Temp files of writers killed mid-write (atomic_write names them .NAME.*.tmp); the run
            # directory's lock says no one else is writing here.
            for stale in [*self.run_dir.glob(".*.tmp"), *self.ckpt_dir.glob(".*.tmp")]:
                stale.unlink(missing_ok=True)
        if resume:
            self.resume_from_latest()
        elif self.is_main:
            self.metrics_path.unlink(missing_ok=True)
        tokens_per_step = self.tokens_per_step
        # Frozen matrices (LoRA) skip their weight gradients: 4 FLOPs per weight and token instead of 6.
        frozen = sum(p.numel() for n, p in self.model.named_parameters()
                     if not p.requires_grad and p.ndim == 2 and ("embed" not in n or self.model.cfg.tie_embeddings))
        flops_per_token = self.model.flops_per_token(cfg.seq_len) - 2 * frozen
        peak = matmul_peak_flops(self.device, torch.bfloat16 if self.bf16 else torch.float32, seconds=0.5)
        self.log(f"model {self.model.num_params():,} params, {flops_per_token / 1e6:.1f} MFLOP/token; "
                 f"{tokens_per_step:,} tokens/step on {self.world} x {self.device.type}, "
                 f"{'bf16' if self.bf16 else 'fp32'}, compile {'on' if self.compiled else 'off'}, lr {self.lr:.2e}"
                 + (f"; budget {self.budget.minutes:g} minutes" if self.budget else ""))
        handlers = {s: signal.signal(s, self._request_stop) for s in (signal.SIGINT, signal.SIGTERM)}
        self.model.train()
        last_eval = None
        bar = tqdm(total=self.steps if not self.budget else None, initial=self.step, disable=not self.is_main,
                   unit="step", dynamic_ncols=True)
        t_last, tokens_last, in_process = time.perf_counter(), self.tokens_seen, 0
        try:
            while self.step < self.steps:
                if self.step % cfg.eval_every == 0 and (self.step > 0 or self.eval_first):
                    last_eval = self.timed("eval", self.run_evaluation)
                if self.step % cfg.sample_every == 0 and self.step > 0:
                    self.timed("sample", self.run_sample)
                t = self.clock()
                loss, grad_norm = self.train_step(self.step)
                if not math.isfinite(loss):
                    raise LlmosError(f"loss became {loss} at step {self.step}: lower --lr or check the data")
                self.step += 1
                in_process += 1
                if self.budget:
                    self.budget.record_step(self.clock() - t, first_of_process=in_process == 1)
                bar.update(1)
                if self.step % cfg.log_every == 0 or self.step == self.steps:
                    dt = time.perf_counter() - t_last
                    tok_s = (self.tokens_seen - tokens_last) / dt
                    mfu = tok_s * flops_per_token / (peak * self.world)
                    self.write_metrics({"step": self.step, "loss": loss,
                                        "lr": self.lr * lr_multiplier(self.step - 1, cfg, self.steps),
                                        "grad_norm": grad_norm, "tokens": self.step * tokens_per_step,
                                        "tok_per_s": tok_s, "mfu": mfu, **self.step_metrics})
                    bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{tok_s:,.0f}", mfu=f"{mfu:.1%}")
                    t_last, tokens_last = time.perf_counter(), self.tokens_seen
                self.replan(in_process)
                self.agree()
                if self.budget and bar.total != self.steps and self.budget.plans:
                    bar.total = self.steps
                if self.step % cfg.ckpt_every == 0 and self.step < self.steps:
                    self.timed("ckpt", self.save_checkpoint)
                if self.stop_requested:
                    self.save_checkpoint()
                    self.log(f"interrupted at step {self.step}; continue with --resume")
                    return {"interrupted": True, "step": self.step, **self.plan_summary()}
            last_eval = self.run_evaluation() or last_eval
            self.run_sample()
            self.save_checkpoint()
        finally:
            bar.close()
            for s, h in handlers.items():
                signal.signal(s, h)
        return {"interrupted": False, "step": self.step, **self.plan_summary(), **(last_eval or {})}

    def plan_summary(self) -> dict:
        return {"plan": self.budget.summary()} if self.budget else {}


@contextmanager
def run_dir_lock(run_dir: Path, hold: bool = True) -> Iterator[None]:
    """Hold the run directory for this job (its rank 0): a second job on it is refused, naming the holder."""
    if not hold:
        yield
        return
    with file_lock(Path(run_dir) / ".lock", f"the run directory {run_dir}", wait=False):
        yield


@contextmanager
def stage_run_dir(out: str, default_name: str, resume: bool) -> Iterator[Path]:
    """A single-process stage's run directory (--out, else LLMOS_HOME/runs/DEFAULT_NAME), held for the
    job: a resume needs a checkpoint there (a clear error before any work), a new run needs none."""
    run_dir = Path(out).expanduser() if out else llmos_home() / "runs" / default_name
    if resume:
        latest_checkpoint(run_dir / "checkpoints")
    else:
        refuse_existing_run(run_dir)
    with run_dir_lock(run_dir):
        yield run_dir


def refuse_existing_run(run_dir: Path) -> None:
    """A new run must not silently mix with (and prune the checkpoints of) one already in run_dir."""
    if list((Path(run_dir) / "checkpoints").glob("step_*.pt")):
        raise LlmosError(f"{run_dir} already holds a run: pass --resume to continue it, or --out for a new one")

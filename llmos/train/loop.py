"""The shared training loop: optimizer, schedule, precision, compile, DDP, logging, checkpoints, resume.

    trainer = Trainer(model, TrainConfig(steps=1000), run_dir, loader, evaluate=fn, sample=fn)
    trainer.run(resume=False)

Every job (pretraining now, fine-tuning later) hands the loop a model and a loader with
`next_batch()` / `state_dict()` / `load_state_dict()`; the loop owns everything else:
- AdamW (or Muon for the matrices, AdamW for the rest), warmup then cosine or warmup-stable-decay;
- gradient accumulation, clipping, bf16 autocast where the hardware has fast bf16, torch.compile;
- DDP when launched by torchrun (gloo on CPU, nccl on CUDA), rank 0 writes everything;
- `metrics.jsonl`, a loss-curve PNG, a tqdm bar with loss, tokens/s and MFU;
- checkpoints written atomically every `ckpt_every` steps (the last `keep_ckpts` kept), one more on
  Ctrl-C (SIGINT/SIGTERM); `run(resume=True)` continues the exact trajectory from the latest one.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import signal
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
from tqdm import tqdm

from llmos.common import LlmosError, atomic_write
from llmos.model import Transformer, default_lr
from llmos.perf import matmul_peak_flops

CKPT_VERSION = 1


@dataclass
class TrainConfig:
    steps: int = 1000  # optimizer steps
    batch_size: int = 16  # sequences per process per micro-step
    grad_accum: int = 1  # micro-steps per optimizer step
    seq_len: int = 256  # tokens per sequence
    lr: float = 0.0  # 0: derived from the model width
    min_lr_frac: float = 0.1  # the schedule's final learning rate, as a fraction of the peak
    warmup_steps: int = 50  # linear warmup
    schedule: str = "cosine"  # cosine | wsd (warmup-stable-decay)
    decay_frac: float = 0.2  # wsd: the final fraction of steps spent decaying
    weight_decay: float = 0.1  # AdamW decay on matrices and embeddings
    grad_clip: float = 1.0  # max gradient norm (0: no clipping)
    optimizer: str = "adamw"  # adamw | muon (Muon on matrices, AdamW on embeddings and norms)
    muon_lr: float = 0.02  # Muon's learning rate for the matrices
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
        if self.dtype not in ("auto", "bf16", "fp32"):
            raise LlmosError(f"unknown --dtype {self.dtype!r}: use auto, bf16 or fp32")
        if min(self.steps, self.batch_size, self.grad_accum, self.seq_len) < 1:
            raise LlmosError("--steps, --batch-size, --grad-accum and --seq-len must be positive")


def lr_multiplier(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.schedule == "wsd":
        decay_start = int(cfg.steps * (1 - cfg.decay_frac))
        if step < decay_start:
            return 1.0
        progress = (step - decay_start) / max(1, cfg.steps - decay_start)
        return 1.0 - (1.0 - cfg.min_lr_frac) * progress
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.min_lr_frac + (1 - cfg.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise LlmosError("--device cuda was asked for but no CUDA GPU is visible")
    return torch.device(name)


def fast_bf16(device: torch.device, compiled: bool) -> bool:
    """bf16 pays off on CUDA, and on CPUs with bf16 matmul units (AMX, AVX512-BF16) once the model
    is compiled; eager bf16 on CPU is no faster than fp32 (docs/log.md)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return compiled and (torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported())


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
    if cfg.optimizer == "muon":
        return [torch.optim.Muon(matrices, lr=cfg.muon_lr, weight_decay=cfg.weight_decay),
                torch.optim.AdamW([{"params": embeddings, "weight_decay": cfg.weight_decay},
                                   {"params": vectors, "weight_decay": 0.0}], lr=lr, **adamw)]
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
                 eval_first: bool = False):
        cfg.validate()
        self.eval_first = eval_first  # also evaluate before the first step (fine-tuning: the base's figure)
        self.cfg, self.run_dir, self.loader = cfg, Path(run_dir), loader
        self.evaluate, self.sample = evaluate, sample
        self.checkpoint_extra = checkpoint_extra or {}
        self.device = resolve_device(cfg.device)
        self.rank, self.world = dist_setup(self.device)
        if self.device.type == "cuda":
            self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(self.device)
        self.model = model.to(self.device)
        self.compiled = cfg.compile and can_compile(self.device)
        if cfg.compile and not self.compiled:
            self.log("torch.compile needs a C++ compiler (g++) on CPU: training eagerly")
        self.bf16 = cfg.dtype == "bf16" or (cfg.dtype == "auto" and fast_bf16(self.device, self.compiled))
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
        self.stop_requested = False
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.metrics_path = self.run_dir / "metrics.jsonl"

    # ----- bookkeeping -----
    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def log(self, msg: str):
        if self.is_main:
            tqdm.write(msg)

    def write_metrics(self, record: dict):
        if self.is_main:
            with open(self.metrics_path, "a") as f:
                f.write(json.dumps(record) + "\n")

    def autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16) if self.bf16 else nullcontext()

    # ----- checkpoints -----
    def save_checkpoint(self):
        if not self.is_main:
            return
        state = {"version": CKPT_VERSION, "step": self.step, "model_config": self.model.cfg.to_dict(),
                 "train_config": asdict(self.cfg), "model": self.model.state_dict(),
                 "optimizers": [opt.state_dict() for opt in self.optimizers],
                 "loader": self.loader.state_dict(), **self.checkpoint_extra}
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
        if self.is_main and self.metrics_path.exists():  # drop what was logged after that checkpoint
            kept = [line for line in self.metrics_path.read_text().splitlines()
                    if line and json.loads(line)["step"] <= self.step]
            with atomic_write(self.metrics_path, "w") as f:
                f.write("".join(line + "\n" for line in kept))
        self.log(f"resumed from {path} at step {self.step}")

    # ----- the loop -----
    def train_step(self, step: int) -> tuple[float, float]:
        mult = lr_multiplier(step, self.cfg)
        for opt in self.optimizers:
            for group in opt.param_groups:
                group["lr"] = group["base_lr"] * mult
        total = torch.zeros((), device=self.device)
        for micro in range(self.cfg.grad_accum):
            x, y = (t.to(self.device, non_blocking=True) for t in self.loader.next_batch())
            sync = micro == self.cfg.grad_accum - 1 or self.world == 1
            with (nullcontext() if sync else self.net.no_sync()), self.autocast():
                loss = self.net(x, targets=y) / self.cfg.grad_accum
            loss.backward()
            total += loss.detach()
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

    def _request_stop(self, signum, frame):
        if self.stop_requested:  # a second Ctrl-C stops at once
            raise KeyboardInterrupt
        self.stop_requested = True
        self.log("stopping after this step; saving a checkpoint (Ctrl-C again to abort)")

    def run(self, resume: bool = False) -> dict:
        cfg = self.cfg
        if self.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        if resume:
            self.resume_from_latest()
        elif self.is_main:
            self.metrics_path.unlink(missing_ok=True)
        tokens_per_step = cfg.batch_size * cfg.seq_len * cfg.grad_accum * self.world
        # Frozen matrices (LoRA) skip their weight gradients: 4 FLOPs per weight and token instead of 6.
        frozen = sum(p.numel() for n, p in self.model.named_parameters()
                     if not p.requires_grad and p.ndim == 2 and ("embed" not in n or self.model.cfg.tie_embeddings))
        flops_per_token = self.model.flops_per_token(cfg.seq_len) - 2 * frozen
        peak = matmul_peak_flops(self.device, torch.bfloat16 if self.bf16 else torch.float32, seconds=0.5)
        self.log(f"model {self.model.num_params():,} params, {flops_per_token / 1e6:.1f} MFLOP/token; "
                 f"{tokens_per_step:,} tokens/step on {self.world} x {self.device.type}, "
                 f"{'bf16' if self.bf16 else 'fp32'}, compile {'on' if self.compiled else 'off'}, lr {self.lr:.2e}")
        handlers = {s: signal.signal(s, self._request_stop) for s in (signal.SIGINT, signal.SIGTERM)} \
            if self.is_main or self.world == 1 else {}
        self.model.train()
        last_eval = None
        bar = tqdm(total=cfg.steps, initial=self.step, disable=not self.is_main, unit="step", dynamic_ncols=True)
        t_last, step_last = time.perf_counter(), self.step
        try:
            while self.step < cfg.steps:
                if self.step % cfg.eval_every == 0 and (self.step > 0 or self.eval_first):
                    last_eval = self.run_evaluation()
                if self.step % cfg.sample_every == 0 and self.step > 0:
                    self.run_sample()
                loss, grad_norm = self.train_step(self.step)
                if not math.isfinite(loss):
                    raise LlmosError(f"loss became {loss} at step {self.step}: lower --lr or check the data")
                self.step += 1
                bar.update(1)
                if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                    dt = time.perf_counter() - t_last
                    tok_s = tokens_per_step * (self.step - step_last) / dt
                    mfu = tok_s * flops_per_token / (peak * self.world)
                    self.write_metrics({"step": self.step, "loss": loss, "lr": self.lr * lr_multiplier(self.step - 1, cfg),
                                        "grad_norm": grad_norm, "tokens": self.step * tokens_per_step,
                                        "tok_per_s": tok_s, "mfu": mfu})
                    bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{tok_s:,.0f}", mfu=f"{mfu:.1%}")
                    t_last, step_last = time.perf_counter(), self.step
                if self.step % cfg.ckpt_every == 0 and self.step < cfg.steps:
                    self.save_checkpoint()
                if self.stop_requested:
                    self.save_checkpoint()
                    self.log(f"interrupted at step {self.step}; continue with --resume")
                    return {"interrupted": True, "step": self.step}
            last_eval = self.run_evaluation() or last_eval
            self.run_sample()
            self.save_checkpoint()
        finally:
            bar.close()
            for s, h in handlers.items():
                signal.signal(s, h)
        return {"interrupted": False, "step": self.step, **(last_eval or {})}


def refuse_existing_run(run_dir: Path) -> None:
    """A new run must not silently mix with (and prune the checkpoints of) one already in run_dir."""
    if list((Path(run_dir) / "checkpoints").glob("step_*.pt")):
        raise LlmosError(f"{run_dir} already holds a run: pass --resume to continue it, or --out for a new one")


def latest_checkpoint(ckpt_dir: Path) -> Path:
    found = sorted(Path(ckpt_dir).glob("step_*.pt"))
    if not found:
        raise LlmosError(f"no checkpoint in {ckpt_dir} to resume from: start the run without --resume")
    return found[-1]


def load_checkpoint(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise LlmosError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise LlmosError(f"checkpoint {path} is corrupt or truncated ({type(e).__name__}): "
                         "delete it to fall back to the previous one, or retrain") from None
    if not isinstance(state, dict) or state.get("version") != CKPT_VERSION or "model" not in state:
        raise LlmosError(f"{path} is not an llmos checkpoint (version {CKPT_VERSION})")
    return state

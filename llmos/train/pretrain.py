"""Pretraining: a prepared corpus + a tokenizer -> a base model in a run directory.

    llmos pretrain --data CORPUS --tokenizer CORPUS/tokenizer.json --depth 4 --steps 2000 --out RUN
    llmos pretrain --minutes 12 --out RUN [--dry-run]          # as many steps as 12 minutes allow here
    torchrun --nproc_per_node=2 -m llmos.cli pretrain ...      # DDP (gloo on CPU, nccl on CUDA)

The run directory gets config.json, tokenizer.json, metrics.jsonl (loss, lr, tokens/s, MFU,
validation loss and bits-per-byte, samples), loss.png, checkpoints/ and, at the end, the params
file model.llmos. `--resume` continues from the latest checkpoint. `--dry-run` builds the model,
times a few steps on this machine (compilation included) and prints the plan without writing anything.
"""
from __future__ import annotations

import math
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from llmos.common import LlmosError, llmos_home, write_json
from llmos.data.shards import TokenLoader, build_shards, eval_batches, load_tokens
from llmos.infer.engine import generate
from llmos.infer.sampling import SamplingParams
from llmos.model import ModelConfig, Transformer
from llmos.params import check_vocab, save_params
from llmos.report import plot_metrics
from llmos.tokenizer import Tokenizer
from llmos.train.loop import (Trainer, TrainConfig, dist_setup, latest_checkpoint, load_checkpoint,
                              refuse_existing_run, resolve_device, run_dir_lock)


@dataclass
class ModelArgs:
    depth: int = 4  # the one knob: width 64*depth, heads of 64 (each below overrides)
    d_model: int = 0  # width (0: 64 x depth)
    n_heads: int = 0  # attention heads (0: heads of 64)
    n_kv_heads: int = 0  # key/value heads, fewer for grouped-query attention (0: n_heads)
    qk_norm: bool = False  # RMSNorm on queries and keys
    tie_embeddings: bool = True  # the output layer shares the input embedding
    zero_proj: bool = False  # start the attention and MLP output projections at zero (modded-nanogpt)

    def build(self, vocab_size: int, seq_len: int) -> ModelConfig:
        overrides = {k: v for k, v in asdict(self).items() if k not in ("depth", "zero_proj") and v}
        overrides.setdefault("n_heads", (overrides.get("d_model") or 64 * self.depth) // 64)
        overrides.setdefault("n_kv_heads", overrides["n_heads"])
        overrides["qk_norm"], overrides["tie_embeddings"] = self.qk_norm, self.tie_embeddings
        return ModelConfig.from_depth(self.depth, vocab_size=vocab_size, max_seq_len=seq_len, **overrides)

    def init(self, cfg: ModelConfig) -> Transformer:
        """A freshly initialised model. With zero_proj every block starts as the identity and its
        output projections' first steps set their scale (a 2-core screen: docs/log.md, issue 13)."""
        model = Transformer(cfg)
        if self.zero_proj:
            with torch.no_grad():
                for block in model.layers:
                    block.attn.o_proj.weight.zero_()
                    block.mlp.down_proj.weight.zero_()
        return model


@dataclass
class DataArgs:
    data: str = ""  # a prepared corpus directory (default: LLMOS_HOME/data/default)
    tokenizer: str = ""  # tokenizer.json (default: DATA/tokenizer.json)
    out: str = ""  # run directory (default: LLMOS_HOME/runs/pretrain-d<depth>)
    sample_prompt: str = "The"  # prompt of the samples logged during training

    def resolve(self, depth: int) -> tuple[Path, Path, Path]:
        data = Path(self.data).expanduser() if self.data else llmos_home() / "data" / "default"
        if not (data / "train.jsonl").is_file():
            raise LlmosError(f"no prepared corpus in {data}: run `llmos data prepare` (or pass --data)")
        tokenizer = Path(self.tokenizer).expanduser() if self.tokenizer else data / "tokenizer.json"
        out = Path(self.out).expanduser() if self.out else llmos_home() / "runs" / f"pretrain-d{depth}"
        return data, tokenizer, out


def bits_per_byte_evaluator(val_tokens, token_bytes: torch.Tensor, seq_len: int, max_tokens: int,
                            rank: int, world: int):
    """Validation loss (nats/token) and bits per byte: summed token losses over the UTF-8 bytes those
    tokens spell, so the figure compares across tokenizers."""
    def evaluate(model: Transformer) -> dict:
        device = model.norm.weight.device
        sums = torch.zeros(3, dtype=torch.float64, device=device)  # nats, tokens, bytes
        for x, y in eval_batches(val_tokens, seq_len, max_tokens, rank=rank, world_size=world):
            x, y = x.to(device), y.to(device)
            logits = model(x)
            nats = torch.nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none")
            nbytes = token_bytes.to(device)[y.flatten()]
            counted = nbytes > 0  # special tokens (bos) spell no bytes and are not scored
            sums += torch.stack([nats[counted].sum().double(), counted.sum().double(), nbytes.sum().double()])
        if world > 1:
            dist.all_reduce(sums)
        nats, tokens, nbytes = sums.tolist()
        return {"val_loss": nats / tokens, "val_bpb": nats / (math.log(2) * nbytes)}
    return evaluate


def sampler(tok: Tokenizer, prompt: str, max_tokens: int = 48, seed: int = 0):
    """model -> prompt plus a seeded continuation (temperature 0.8, top-k 50), capped by the context."""
    def sample(model: Transformer) -> str:
        ids = tok.encode(prompt, bos=True)
        n = min(max_tokens, model.cfg.max_seq_len - len(ids))
        params = SamplingParams(max_tokens=n, temperature=0.8, top_k=50, seed=seed, stop_ids=[tok.bos_id])
        return prompt + tok.decode(generate(model, ids, params))
    return sample


def pretrain(model_args: ModelArgs, train_cfg: TrainConfig, data_args: DataArgs, resume: bool = False,
             dry_run: bool = False) -> dict:
    started = time.perf_counter()  # a --minutes budget counts from here: shards and compilation included
    data_dir, tok_path, run_dir = data_args.resolve(model_args.depth)
    train_cfg.validate()
    if train_cfg.seq_len < 1:
        raise LlmosError(f"--seq-len must be at least 1, not {train_cfg.seq_len}")
    rank, world = dist_setup(resolve_device(train_cfg.device))
    with run_dir_lock(run_dir, hold=rank == 0 and not dry_run):
        return _pretrain(model_args, train_cfg, data_dir, tok_path, run_dir, data_args, resume, dry_run,
                         started, rank, world)


def _pretrain(model_args, train_cfg, data_dir, tok_path, run_dir, data_args, resume, dry_run, started,
              rank, world) -> dict:
    tok = Tokenizer.load(tok_path)
    cfg = model_args.build(tok.vocab_size, train_cfg.seq_len)
    if resume:
        saved = load_checkpoint(latest_checkpoint(run_dir / "checkpoints"))
        cfg = ModelConfig.from_dict(saved["model_config"])
        check_vocab(tok, cfg, source=f"the checkpoint in {run_dir}")
        if train_cfg.seq_len > cfg.max_seq_len:
            raise LlmosError(f"--seq-len {train_cfg.seq_len} is above the model's context of {cfg.max_seq_len}")
    elif not dry_run:
        refuse_existing_run(run_dir)
    torch.manual_seed(train_cfg.seed)
    model = model_args.init(cfg)
    if rank == 0:
        build_shards(data_dir, tok)
    if world > 1:
        dist.barrier()  # the other ranks read the shards rank 0 wrote
    shards = build_shards(data_dir, tok)
    val_tokens = load_tokens(shards, "val")
    if len(val_tokens) < train_cfg.seq_len + 1:
        raise LlmosError(f"the validation split of {data_dir} holds {len(val_tokens):,} tokens, fewer than one "
                         f"window of --seq-len {train_cfg.seq_len} + 1: prepare the corpus with a larger "
                         "--val-fraction (or more data), or lower --seq-len")
    loader = TokenLoader(load_tokens(shards, "train"), train_cfg.batch_size, train_cfg.seq_len,
                         seed=train_cfg.seed, rank=rank, world_size=world)
    evaluate = bits_per_byte_evaluator(val_tokens, torch.from_numpy(tok.token_bytes),
                                       train_cfg.seq_len, train_cfg.eval_tokens, rank, world)
    trainer = Trainer(model, train_cfg, run_dir, loader, evaluate=evaluate,
                      sample=sampler(tok, data_args.sample_prompt), checkpoint_extra={"tokenizer": tok.to_json()},
                      eval_tokens=min(train_cfg.eval_tokens, len(val_tokens)), started=started)
    if dry_run:
        return {"dry_run": trainer.dry_run(f"pretraining a {cfg.n_layers}x{cfg.d_model} model "
                                           f"({model.num_params():,} parameters) into {run_dir}")}
    if trainer.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        tok.save(run_dir / "tokenizer.json")
        write_json(run_dir / "config.json", {"model": cfg.to_dict(), "model_args": asdict(model_args),
                                             "train": asdict(train_cfg), "data": str(data_dir),
                                             "tokenizer": str(tok_path), "world_size": world,
                                             "params": model.num_params(),
                                             "flops_per_token": model.flops_per_token(train_cfg.seq_len)})
        manifest = data_dir / "manifest.json"
        if manifest.is_file():
            shutil.copy(manifest, run_dir / "data_manifest.json")
    result = trainer.run(resume=resume)
    if trainer.is_main:
        plot_metrics(run_dir / "metrics.jsonl", run_dir / "loss.png")
        if not result["interrupted"]:
            save_params(run_dir / "model.llmos", trainer.model, tok,
                        provenance={"source": "llmos pretrain", "run": run_dir.name, "step": result["step"]})
    if trainer.budget:
        result["plan"] = trainer.budget.summary()  # the finishing work included
    return {**result, "run_dir": str(run_dir), "params": model.num_params(), "dtype": trainer.dtype_name}

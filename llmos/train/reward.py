"""The reward model of `llmos rm`: a scalar head on an llmos model, trained on preference pairs.

    llmos rm --model RUN/sft --pairs RUN/prefs --out RUN/rm [--steps 300 | --minutes 10]
    llmos rm --model smollm2-135m-instruct --pairs PAIRS --lora-rank 16 --eval-pairs OTHER --minutes 30
    llmos rm ... --resume                                   # continue from the latest checkpoint
    rm = load_reward_model("RUN/rm")
    rm.score([[{"role": "user", "content": "What is 2 + 2?"}]], ["Answer: 4"])   # -> [1.83]

Model. RewardNet holds the Transformer body (ours or imported) and a Linear(d_model, 1) head. A row
is prompt + reply as the body's own chat format renders a finished conversation (so it ends with the
end-of-turn token); its score is the head applied to the final normed hidden state at the row's last
token, the one position that has seen the prompt and the whole reply. The body's language-model head
is not used. A row longer than the context (or `--seq-len`) keeps its last tokens: the end of a reply
decides more than the start of a long prompt (rm.json counts the rows cut).

Training. Pairs are JSONL lines {"prompt": [messages], "chosen": str, "rejected": str, "source": str}
in a pairs directory (train.jsonl, eval.jsonl: what `llmos prefs` writes). A batch holds
`--batch-size` pairs as 2B rows, the chosen replies first, then the rejected ones, padded on the
right (causal attention keeps padding out of each row's last position); the objective is
llmos/train/objectives.py's `bradley_terry`, -log sigmoid(r_chosen - r_rejected), through the shared
Trainer (logging, checkpoints, `--minutes` budgets, exact resume). `--steps 0` is `--epochs` passes.
`--lora-rank R` trains adapters on the body (merged at the end) beside the full head.

Evaluation, before the first step, every `eval_every` steps and at the end, on the held-out pairs
(DIR/eval.jsonl) and on `--eval-pairs DIR2` (a pair set of sources it did not train on: its
eval.jsonl, or a .jsonl file): pair accuracy (chosen scored above rejected; an exact tie counts
half) with a 95% Wilson interval, overall and per source, and the length-bias check: accuracy on the
pairs where the longer reply (in the body's tokens) is the worse one, and where it is the better one,
with their counts. A reward model that learned "longer is better" scores high on the second and low
on the first.

The run directory: body.llmos (a params file, LoRA merged; not a chat model: its language-model head
is the start's), head.safetensors (the head's weight and bias), rm.json (before/after figures and the
curve), evals.json (every evaluation in full, by step), eval_scores.jsonl (each held-out pair's scores
at the end: what `load_reward_model` reproduces), metrics.jsonl, rm.png (loss and accuracies),
checkpoints/.
"""
from __future__ import annotations

import json
import math
import os
import random
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.nn as nn

from llmos.chat import ChatFormat, validate_messages
from llmos.common import LlmosError, atomic_write, read_json, read_jsonl, write_json
from llmos.load import open_model
from llmos.model import Transformer, default_lr, flops_per_token
from llmos.params import save_params
from llmos.report import read_metrics
from llmos.train.loop import Trainer, TrainConfig, stage_run_dir
from llmos.train.objectives import bradley_terry
from llmos.train.rl import wilson
from llmos.train.sft import SFTArgs, attach_lora, pad_id

BODY_FILE, HEAD_FILE = "body.llmos", "head.safetensors"
HEAD_FORMAT = "llmos-reward-head"


@dataclass
class RMArgs:
    model: str = ""  # the body to start from: a run dir, .llmos, .pt or a named model
    pairs: str = ""  # a pairs directory: train.jsonl (trained on) and eval.jsonl (held out)
    eval_pairs: str = ""  # a second pair set scored the same way (a directory's eval.jsonl, or a .jsonl file)
    epochs: float = 1.0  # passes over the training pairs when --steps is 0
    max_train: int = 0  # use at most this many training pairs (0: all)
    max_eval: int = 1000  # held-out pairs scored per set
    eval_batch: int = 32  # rows scored at once in evaluations
    lora_rank: int = 0  # train rank-R adapters (peft) on the body instead of every weight; 0: full fine-tuning
    lora_alpha: float = 0.0  # adapter scale numerator; 0: twice the rank
    out: str = ""  # run directory (default: LLMOS_HOME/runs/rm)


def rm_train_config(**overrides) -> TrainConfig:
    """Reward-model defaults: `--batch-size` counts pairs, `steps=0` means `--epochs` passes, `seq_len=0`
    the body's context; eager (every batch is as wide as its longest row), no weight decay."""
    return TrainConfig(**{"steps": 0, "batch_size": 16, "seq_len": 0, "lr": 0.0, "warmup_steps": 10,
                          "weight_decay": 0.0, "compile": False, "eval_every": 100,
                          "ckpt_every": 100, "log_every": 5, **overrides})


# ----- the model -----

def last_hidden(body: Transformer, idx: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
    """(B, d_model): the body's final normed hidden state at position last[b] of each row; the
    Transformer's forward without its language-model head (the norm is per position, so it is taken
    after picking the positions)."""
    T = idx.shape[1]
    if T > body.cfg.max_seq_len:
        raise LlmosError(f"a row of {T} tokens exceeds the model's context of {body.cfg.max_seq_len}")
    cos, sin = body.rope_cos[:T], body.rope_sin[:T]
    x = body.embed(idx)
    for block in body.layers:
        x = block(x, cos, sin, None)
    return body.norm(x[torch.arange(idx.shape[0], device=x.device), last])


class RewardNet(nn.Module):
    """The body and a scalar head: net(x, last) -> (B,) scores. Offers what the Trainer asks of a model
    (cfg, num_params, flops_per_token)."""

    def __init__(self, body: Transformer):
        super().__init__()
        self.body, self.cfg = body, body.cfg
        self.head = nn.Linear(body.cfg.d_model, 1)
        nn.init.normal_(self.head.weight, std=0.02)  # the body's init: scores near 0, chance accuracy
        nn.init.zeros_(self.head.bias)
        self.head.to(body.norm.weight.device)

    def forward(self, x: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
        return self.head(last_hidden(self.body, x, last)).squeeze(-1).float()

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def flops_per_token(self, seq_len: int | None = None) -> int:
        # The language-model head is never computed: one vocab x width matrix fewer.
        return flops_per_token(self.cfg, seq_len, params=self.num_params() - self.cfg.vocab_size * self.cfg.d_model)


# ----- pairs -----

@dataclass
class RenderedPair:
    chosen: list[int]  # prompt + chosen reply, rendered (cut to the context)
    rejected: list[int]
    source: str
    chosen_tokens: int  # reply lengths in the body's tokens (before any cut): the length-bias check
    rejected_tokens: int


def read_pairs(path: Path, limit: int = 0) -> list[dict]:
    """The preference pairs of a JSONL file, each line checked; LlmosError naming the first bad line."""
    if not path.is_file():
        raise LlmosError(f"{path} does not exist: a pairs directory holds train.jsonl and eval.jsonl "
                         "(`llmos prefs` builds one)")
    pairs = []
    for lineno, row in enumerate(read_jsonl(path), 1):
        where = f"{path}:{lineno}"
        if not isinstance(row, dict):
            raise LlmosError(f"{where}: expected an object with prompt, chosen and rejected")
        for key in ("chosen", "rejected"):
            if not isinstance(row.get(key), str):
                raise LlmosError(f"{where}: {key} must be the reply's text (a string)")
        try:
            validate_messages(row.get("prompt"), for_prompt=True)
        except LlmosError as e:
            raise LlmosError(f"{where}: prompt: {e}") from None
        pairs.append({"prompt": row["prompt"], "chosen": row["chosen"], "rejected": row["rejected"],
                      "source": str(row.get("source") or "unknown")})
        if limit and len(pairs) == limit:
            break
    return pairs


def render_reply(fmt: ChatFormat, prompt: list[dict], reply: str) -> list[int]:
    return fmt.render([*prompt, {"role": "assistant", "content": reply}])[0]


def render_pairs(fmt: ChatFormat, pairs: list[dict], max_len: int) -> tuple[list[RenderedPair], int]:
    """Rows of each pair, and how many rows were longer than max_len (they keep their last max_len tokens)."""
    rendered, cut = [], 0
    for p in pairs:
        prompt_len = len(fmt.render_prompt(p["prompt"]))
        chosen, rejected = render_reply(fmt, p["prompt"], p["chosen"]), render_reply(fmt, p["prompt"], p["rejected"])
        cut += (len(chosen) > max_len) + (len(rejected) > max_len)
        rendered.append(RenderedPair(chosen[-max_len:], rejected[-max_len:], p["source"],
                                     len(chosen) - prompt_len, len(rejected) - prompt_len))
    return rendered, cut


def pad_rows(rows: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, last): rows padded on the right to the longest, and each row's last position."""
    x = torch.full((len(rows), max(map(len, rows))), pad, dtype=torch.long)
    for b, ids in enumerate(rows):
        x[b, :len(ids)] = torch.tensor(ids)
    return x, torch.tensor([len(ids) - 1 for ids in rows])


class PairLoader:
    """Batches of (x, last) for `bradley_terry`: `pairs_per_step` pairs in a seeded order, epoch after
    epoch, as the chosen rows then the rejected rows."""

    def __init__(self, pairs: list[RenderedPair], pairs_per_step: int, pad: int, seed: int = 0):
        self.pairs, self.pairs_per_step, self.pad, self.seed = pairs, pairs_per_step, pad, seed
        self.epoch, self.pos = 0, 0
        self._order = self._epoch_order()

    def _epoch_order(self) -> list[int]:
        order = list(range(len(self.pairs)))
        random.Random(self.seed * 100_003 + self.epoch).shuffle(order)
        return order

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        batch = []
        for _ in range(self.pairs_per_step):
            if self.pos == len(self._order):
                self.epoch, self.pos = self.epoch + 1, 0
                self._order = self._epoch_order()
            batch.append(self.pairs[self._order[self.pos]])
            self.pos += 1
        return pad_rows([p.chosen for p in batch] + [p.rejected for p in batch], self.pad)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.pos = state["epoch"], state["pos"]
        self._order = self._epoch_order()


# ----- scoring and evaluation -----

@torch.no_grad()
def score_rows(net: RewardNet, rows: list[list[int]], pad: int, batch: int = 32) -> list[float]:
    """Each row's score, in order; rows are batched by length so that little is spent on padding."""
    device = net.head.weight.device
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
    scores = [0.0] * len(rows)
    for start in range(0, len(order), batch):
        chunk = order[start:start + batch]
        x, last = pad_rows([rows[i] for i in chunk], pad)
        for i, s in zip(chunk, net(x.to(device), last.to(device)).tolist()):
            scores[i] = s
    return scores


def _accuracy(records: list[dict]) -> dict:
    """Pair accuracy (an exact tie counts half) with its 95% interval, mean margin and mean BT loss."""
    margins = [r["chosen_score"] - r["rejected_score"] for r in records]
    right = sum(1.0 if m > 0 else 0.5 if m == 0 else 0.0 for m in margins)
    low, high = wilson(right, len(margins))
    n = max(len(margins), 1)
    return {"pairs": len(margins), "accuracy": right / n, "low": max(0.0, low), "high": min(1.0, high),
            "margin": sum(margins) / n,
            "loss": sum(max(-m, 0.0) + math.log1p(math.exp(-abs(m))) for m in margins) / n}


def pair_accuracy(records: list[dict]) -> dict:
    """Accuracy overall, per source, and split by which reply is longer, from records of
    {"source", "chosen_score", "rejected_score", "chosen_tokens", "rejected_tokens"}."""
    sources = sorted({r["source"] for r in records})
    return {**_accuracy(records),
            "by_source": {s: _accuracy([r for r in records if r["source"] == s]) for s in sources},
            "length": {"longer_worse": _accuracy([r for r in records if r["chosen_tokens"] < r["rejected_tokens"]]),
                       "longer_better": _accuracy([r for r in records if r["chosen_tokens"] > r["rejected_tokens"]]),
                       "same_length": _accuracy([r for r in records if r["chosen_tokens"] == r["rejected_tokens"]])}}


def score_pairs(net: RewardNet, pairs: list[RenderedPair], pad: int, batch: int = 32) -> list[dict]:
    scores = score_rows(net, [p.chosen for p in pairs] + [p.rejected for p in pairs], pad, batch)
    n = len(pairs)
    return [{"source": p.source, "chosen_score": c, "rejected_score": r, "chosen_tokens": p.chosen_tokens,
             "rejected_tokens": p.rejected_tokens} for p, c, r in zip(pairs, scores[:n], scores[n:])]


# ----- the reward model, loaded -----

class RewardModel:
    """A trained reward model: `.score(prompts, replies) -> list[float]` (batched, no gradients)."""

    def __init__(self, net: RewardNet, fmt: ChatFormat, name: str, batch: int = 16):
        self.net, self.fmt, self.name, self.batch = net.eval(), fmt, name, batch
        self.pad = pad_id(fmt.tok)

    def score(self, prompts: list[list[dict]], replies: list[str]) -> list[float]:
        if len(prompts) != len(replies):
            raise LlmosError(f"score: {len(prompts)} prompts but {len(replies)} replies: give one reply per prompt")
        max_len = self.net.cfg.max_seq_len
        rows = [render_reply(self.fmt, p, r)[-max_len:] for p, r in zip(prompts, replies)]
        return score_rows(self.net, rows, self.pad, self.batch)


def reward_model_dir(ref: str | Path) -> Path:
    path = Path(ref).expanduser()
    run = path if path.is_dir() else path.parent
    if not (run / BODY_FILE).is_file() or not (run / HEAD_FILE).is_file():
        raise LlmosError(f"{ref} is not a finished reward model: expected {BODY_FILE} and {HEAD_FILE} in it "
                         "(`llmos rm --out DIR` writes them; an interrupted run finishes with --resume)")
    return run


def load_reward_model(ref: str | Path, device: str = "cpu") -> RewardModel:
    """The reward model in a `llmos rm` run directory (or one of its files)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    run = reward_model_dir(ref)
    body, tok, info = open_model(run / BODY_FILE, device)
    try:
        head = load_file(run / HEAD_FILE, device=str(device))
    except (SafetensorError, OSError) as e:
        raise LlmosError(f"{run / HEAD_FILE} is not a readable head ({e}): train the reward model again") from None
    d = body.cfg.d_model
    if set(head) != {"weight", "bias"} or tuple(head["weight"].shape) != (1, d) or tuple(head["bias"].shape) != (1,):
        raise LlmosError(f"{run / HEAD_FILE} does not fit {run / BODY_FILE} (a head of width {d} expected): "
                         "the two files come from different runs")
    net = RewardNet(body)
    net.head.load_state_dict({k: v.float() for k, v in head.items()})
    return RewardModel(net.requires_grad_(False), ChatFormat(tok, info["chat_template"]), run.name)


def save_head(path: Path, head: nn.Linear) -> None:
    from safetensors.torch import save
    tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in head.state_dict().items()}
    with atomic_write(path) as f:
        f.write(save(tensors, metadata={"format": HEAD_FORMAT, "d_model": str(head.in_features)}))


# ----- the stage -----

def pairs_path(ref: str, split: str = "eval") -> Path:
    """A pairs directory's split file, or a .jsonl file as given."""
    path = Path(ref).expanduser()
    if path.is_dir():
        return path / f"{split}.jsonl"
    if path.suffix == ".jsonl":
        return path
    raise LlmosError(f"{ref} is neither a pairs directory nor a .jsonl file of pairs")


def rm(args: RMArgs, train_cfg: TrainConfig, resume: bool = False) -> dict:
    started = time.perf_counter()
    if not args.model:
        raise LlmosError("--model is required: the body of the reward model (a run directory, .llmos file or named model)")
    if not args.pairs:
        raise LlmosError("--pairs is required: a pairs directory with train.jsonl and eval.jsonl "
                         "(`llmos prefs` builds one)")
    pairs_dir = Path(args.pairs).expanduser()
    if not pairs_dir.is_dir():
        raise LlmosError(f"--pairs {args.pairs} is not a directory: give a pairs directory with train.jsonl and eval.jsonl")
    for split in ("train", "eval"):  # eval.jsonl too: held-out accuracy is the point of the stage
        if not (pairs_dir / f"{split}.jsonl").is_file():
            raise LlmosError(f"{pairs_dir / split}.jsonl does not exist: a pairs directory holds train.jsonl and "
                             "eval.jsonl (`llmos prefs` builds one)")
    for name in ("max_eval", "eval_batch"):
        if getattr(args, name) < 1:
            raise LlmosError(f"--{name.replace('_', '-')} must be at least 1, not {getattr(args, name)}")
    if args.max_train < 0:
        raise LlmosError(f"--max-train must be 0 (all) or positive, not {args.max_train}")
    if not args.epochs > 0:
        raise LlmosError(f"--epochs must be positive, not {args.epochs}")
    if args.lora_rank < 0:
        raise LlmosError("--lora-rank must be 0 (full fine-tuning) or positive")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise LlmosError("llmos rm trains in one process: launch it without torchrun")
    other = pairs_path(args.eval_pairs) if args.eval_pairs else None
    train_cfg.validate()
    with stage_run_dir(args.out, "rm", resume) as run_dir:
        return _rm(args, train_cfg, resume, started, run_dir, pairs_dir, other)


def _rm(args: RMArgs, train_cfg: TrainConfig, resume: bool, started: float, run_dir: Path, pairs_dir: Path,
        other_path: Path | None) -> dict:
    train_pairs = read_pairs(pairs_dir / "train.jsonl", args.max_train)
    held_pairs = read_pairs(pairs_dir / "eval.jsonl", args.max_eval)
    other_pairs = read_pairs(other_path, args.max_eval) if other_path else []
    for what, pairs, path in (("training", train_pairs, pairs_dir / "train.jsonl"),
                              ("held-out", held_pairs, pairs_dir / "eval.jsonl"),
                              ("--eval-pairs", other_pairs, other_path)):
        if path is not None and not pairs:
            raise LlmosError(f"{path} holds no pairs: the {what} set needs at least one")
    model, tok, info = open_model(args.model)
    fmt = ChatFormat(tok, info["chat_template"])
    if train_cfg.seq_len > model.cfg.max_seq_len:
        raise LlmosError(f"--seq-len {train_cfg.seq_len} is above the model's context of {model.cfg.max_seq_len}")
    max_len = train_cfg.seq_len or model.cfg.max_seq_len
    train, cut_train = render_pairs(fmt, train_pairs, max_len)
    held_out, cut_held = render_pairs(fmt, held_pairs, max_len)
    other, cut_other = render_pairs(fmt, other_pairs, max_len)
    pad = pad_id(tok)
    pairs_per_step = train_cfg.batch_size
    steps = train_cfg.steps or (0 if train_cfg.minutes else max(1, round(len(train) * args.epochs / pairs_per_step)))
    mean_row = sum(len(p.chosen) + len(p.rejected) for p in train) / (2 * len(train))
    # The Trainer counts rows of seq_len tokens: a step is 2B rows of (on average) mean_row tokens.
    trainer_cfg = replace(train_cfg, steps=steps, batch_size=2 * pairs_per_step, seq_len=max(1, round(mean_row)),
                          lr=train_cfg.lr or (1e-3 if args.lora_rank else default_lr(model.cfg.d_model)))
    torch.manual_seed(train_cfg.seed)  # the head's and the adapters' initialisation
    peft = attach_lora(model, SFTArgs(lora_rank=args.lora_rank, lora_alpha=args.lora_alpha)) if args.lora_rank else None
    net = RewardNet(model)
    loader = PairLoader(train, pairs_per_step, pad, seed=train_cfg.seed)
    evals_path, scores_path = run_dir / "evals.json", run_dir / "eval_scores.jsonl"
    trainer = None  # made below: an evaluation is filed under the trainer's step

    def evaluate(m: RewardNet) -> dict:
        records = score_pairs(m, held_out, pad, args.eval_batch)
        entry = {"heldout": pair_accuracy(records)}
        out = {"heldout_accuracy": entry["heldout"]["accuracy"], "heldout_low": entry["heldout"]["low"],
               "heldout_high": entry["heldout"]["high"], "heldout_loss": entry["heldout"]["loss"]}
        lengths = entry["heldout"]["length"]
        for split in ("longer_worse", "longer_better"):
            if lengths[split]["pairs"]:
                out[f"heldout_{split}_accuracy"] = lengths[split]["accuracy"]
        other_records = score_pairs(m, other, pad, args.eval_batch) if other else []
        if other:
            entry["other"] = pair_accuracy(other_records)
            out.update({"other_accuracy": entry["other"]["accuracy"], "other_low": entry["other"]["low"],
                        "other_high": entry["other"]["high"]})
        evals = read_json(evals_path, "evaluations") if evals_path.is_file() else {}
        write_json(evals_path, {**{k: v for k, v in evals.items() if int(k) < trainer.step}, str(trainer.step): entry})
        with atomic_write(scores_path, "w") as f:
            for set_name, rows in (("heldout", records), ("other", other_records)):
                for r in rows:
                    f.write(json.dumps({"set": set_name, **r}) + "\n")
        return out

    provenance = {"source": "llmos rm", "base": str(args.model), "lora_rank": args.lora_rank,
                  "reward_model_body": True,
                  **({"tokenizer_roles": info["provenance"]["tokenizer_roles"]}
                     if "tokenizer_roles" in info["provenance"] else {})}
    eval_rows = 2 * (len(held_out) + len(other))
    trainer = Trainer(net, trainer_cfg, run_dir, loader, evaluate=evaluate,
                      checkpoint_extra={"tokenizer": tok.to_json(), "chat_template": info["chat_template"],
                                        "provenance": provenance},
                      eval_first=True, eval_tokens=round(eval_rows * mean_row), started=started,
                      objective=bradley_terry)
    write_json(run_dir / "config.json", {"model": model.cfg.to_dict(), "rm": asdict(args), "train": asdict(train_cfg),
                                         "pairs_per_step": pairs_per_step, "steps": steps, "lr": trainer.lr,
                                         "pairs": {"train": len(train), "eval": len(held_out), "other": len(other)}})
    tok.save(run_dir / "tokenizer.json")
    result = trainer.run(resume=resume)
    plot_reward_model(run_dir / "metrics.jsonl", run_dir / "rm.png")
    if result["interrupted"]:
        return {**result, "run_dir": str(run_dir)}
    net.body = peft.merge_and_unload() if peft is not None else net.body
    save_params(run_dir / BODY_FILE, net.body, tok, chat_template=info["chat_template"],
                provenance={**provenance, "run": run_dir.name, "step": result["step"]})
    save_head(run_dir / HEAD_FILE, net.head)
    evals = read_json(evals_path, "evaluations")
    curve = [{"step": r["step"], "accuracy": r["heldout_accuracy"], "low": r["heldout_low"], "high": r["heldout_high"],
              **({"other_accuracy": r["other_accuracy"]} if "other_accuracy" in r else {})}
             for r in read_metrics(run_dir / "metrics.jsonl") if "heldout_accuracy" in r]
    summary = {"pairs": str(pairs_dir), "eval_pairs": str(other_path) if other_path else None,
               "counts": {"train": len(train), "eval": len(held_out), "other": len(other)},
               "rows_cut": {"train": cut_train, "eval": cut_held, "other": cut_other, "max_len": max_len},
               "steps": result["step"], "before": evals[min(evals, key=int)], "after": evals[str(result["step"])],
               "curve": curve,
               "seconds": time.perf_counter() - started,
               "body": str(run_dir / BODY_FILE), "head": str(run_dir / HEAD_FILE)}
    write_json(run_dir / "rm.json", summary)
    return {**result, **summary, "run_dir": str(run_dir)}


def plot_reward_model(metrics_path: Path, png_path: Path) -> Path | None:
    """Training loss and accuracy (smoothed) beside held-out accuracy with its interval."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(metrics_path) if metrics_path.is_file() else []
    train = [r for r in rows if "loss" in r]
    held = [r for r in rows if "heldout_accuracy" in r]
    if not train and not held:
        return None
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(11, 4), dpi=110)
    if train:
        loss_ax.plot([r["step"] for r in train], [r["loss"] for r in train], lw=1, label="training (batch)")
    if held:
        loss_ax.plot([r["step"] for r in held], [r["heldout_loss"] for r in held], "o-", label="held-out pairs")
    loss_ax.set_xlabel("step")
    loss_ax.set_title("Bradley-Terry loss, -log sigmoid(r_chosen - r_rejected)", fontsize=9)
    loss_ax.legend(fontsize=8)
    loss_ax.grid(alpha=0.3)
    if train and "accuracy" in train[0]:
        acc_ax.plot([r["step"] for r in train], [r["accuracy"] for r in train], lw=0.8, alpha=0.6,
                    label="training batches")
    for key, label, color in (("heldout", "held-out pairs", "C1"), ("other", "--eval-pairs", "C2")):
        points = [r for r in held if f"{key}_accuracy" in r]
        if points:
            acc = [r[f"{key}_accuracy"] for r in points]
            acc_ax.errorbar([r["step"] for r in points], acc,
                            yerr=[[max(0.0, a - r[f"{key}_low"]) for a, r in zip(acc, points)],
                                  [max(0.0, r[f"{key}_high"] - a) for a, r in zip(acc, points)]],
                            fmt="o-", capsize=3, color=color, label=f"{label} (95% CI)")
    acc_ax.axhline(0.5, color="grey", lw=0.8, ls="--")
    acc_ax.set_ylim(0, 1)
    acc_ax.set_xlabel("step")
    acc_ax.set_title("pair accuracy (chosen scored above rejected)", fontsize=9)
    acc_ax.legend(fontsize=8)
    acc_ax.grid(alpha=0.3)
    fig.suptitle(f"{metrics_path.parent.name}: reward model", fontsize=10)
    fig.tight_layout()
    with atomic_write(png_path) as f:
        fig.savefig(f, format="png")
    plt.close(fig)
    return png_path

"""Direct preference optimization: an SFT model learns from preference pairs against a frozen reference.

    llmos dpo --model RUN/sft --pairs PAIRS --out RUN/dpo --steps 200        # pairs from `llmos prefs`
    llmos dpo --model smollm2-135m-instruct --pairs PAIRS --lora-rank 16 --minutes 30
    llmos dpo ... --resume                                                    # continue from the latest checkpoint

Each step takes `pairs_per_step` training pairs (PAIRS/train.jsonl, `{"prompt", "chosen",
"rejected"}` a line, in a seeded order epoch after epoch) as 2B rows, the chosen replies first,
then the rejected ones. Each row is the model's own chat rendering of the prompt plus the reply
(llmos/chat.py ChatFormat); its targets are the reply's tokens and the end-of-turn token that
closes it, -1 elsewhere. The loader adds the reference's summed reply log-probs, computed under
no_grad once per pair (and kept): the starting model, as a frozen copy for full fine-tuning, or
the policy with its adapters switched off under LoRA. The objective is DPO (Rafailov et al.
2023; llmos/train/objectives.py): -log sigmoid(beta * ((pi_c - ref_c) - (pi_r - ref_r))), whose
implicit rewards' margin and accuracy are logged every step.

Held-out evaluation on PAIRS/eval.jsonl, before the first step and every `eval_every` steps and at
the end: the mean chosen-minus-rejected margin of the policy's summed log-probs
(`heldout_logp_margin`), of the implicit rewards (`heldout_reward_margin`, 0 before training), the
pair accuracy (how often the policy gives the chosen reply the higher log-prob:
`heldout_accuracy`; of the implicit reward: `heldout_reward_accuracy`) and the DPO loss. A pair
whose rendering does not fit `max_len` tokens is left out (counted in config.json).

The run directory (the SFT stage's contract) ends with model.llmos (LoRA merged), dpo.json (the
held-out figures before and after), metrics.jsonl and dpo.png (loss, margins, accuracies);
checkpoints carry the pair cursor, so a resume continues exactly.
"""
from __future__ import annotations

import copy
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from llmos.chat import ChatFormat, validate_messages
from llmos.common import LlmosError, atomic_write, read_jsonl, write_json
from llmos.load import open_model
from llmos.params import save_params
from llmos.report import read_metrics
from llmos.train.loop import Trainer, TrainConfig, stage_run_dir
from llmos.train.objectives import DPO, margin_accuracy, token_logprobs
from llmos.train.sft import SFTArgs, attach_lora, chat_sampler, pad_id

Rendered = tuple[list[int], list[int]]  # a row's ids and its targets' mask (1: a reply token)


@dataclass
class DPOArgs:
    model: str = ""  # the model to improve: an SFT run dir, .llmos, .pt or a named model
    pairs: str = ""  # a pairs directory (`llmos prefs`): train.jsonl, eval.jsonl
    beta: float = 0.1  # strength of the tie to the reference (higher: stay closer)
    pairs_per_step: int = 8  # preference pairs per step (2 rows each)
    max_len: int = 0  # tokens of a rendered prompt plus reply at most (0: the model's context)
    max_train: int = 0  # use at most this many training pairs (0: all)
    max_eval: int = 500  # held-out pairs scored before, during and after
    eval_batch: int = 16  # held-out pairs scored at once
    lora_rank: int = 0  # train rank-R adapters (peft) instead of every weight; 0: full fine-tuning
    lora_alpha: float = 0.0  # adapter scale numerator; 0: twice the rank
    out: str = ""  # run directory (default: LLMOS_HOME/runs/dpo)


def dpo_train_config(**overrides) -> TrainConfig:
    """DPO defaults: a small rate (lr 0: 1e-5 for full fine-tuning, 1e-4 for adapters), no weight
    decay, eager (batch widths vary), the objective's metrics logged every step."""
    return TrainConfig(**{"steps": 200, "batch_size": 0, "seq_len": 0, "lr": 0.0, "warmup_steps": 10,
                          "min_lr_frac": 0.1, "weight_decay": 0.0, "compile": False, "eval_every": 50,
                          "sample_every": 100, "ckpt_every": 50, "log_every": 1, **overrides})


def read_pairs(path: Path, limit: int = 0) -> list[dict]:
    """The pairs of a JSONL file; LlmosError naming the first bad line."""
    pairs = []
    for number, pair in enumerate(read_jsonl(path), 1):
        try:
            if not isinstance(pair, dict) or not all(isinstance(pair.get(k), str) for k in ("chosen", "rejected")):
                raise LlmosError('expected {"prompt": [messages], "chosen": str, "rejected": str}')
            validate_messages(pair.get("prompt"), for_prompt=True)
        except LlmosError as e:
            raise LlmosError(f"{path}: pair {number}: {e}") from None
        pairs.append(pair)
        if len(pairs) == limit:
            break
    return pairs


def render_reply(fmt: ChatFormat, prompt: list[dict], reply: str) -> Rendered:
    """The prompt and reply as the model's chat format renders them, masked to the reply: the last
    run of learnable tokens (any earlier assistant turn of the prompt is context, not a target)."""
    ids, mask = fmt.render(prompt + [{"role": "assistant", "content": reply}])
    start = len(mask)
    while start > 0 and not mask[start - 1]:
        start -= 1
    while start > 0 and mask[start - 1]:
        start -= 1
    return ids, [0] * start + mask[start:]


def render_pairs(fmt: ChatFormat, pairs: list[dict], max_len: int) -> tuple[list[tuple[Rendered, Rendered]], int]:
    """Each pair as its (chosen, rejected) renderings; pairs longer than max_len left out (and counted)."""
    rendered, too_long = [], 0
    for pair in pairs:
        sides = (render_reply(fmt, pair["prompt"], pair["chosen"]), render_reply(fmt, pair["prompt"], pair["rejected"]))
        if max(len(ids) for ids, _ in sides) > max_len:
            too_long += 1
        else:
            rendered.append(sides)
    return rendered, too_long


def pair_rows(pairs: list[tuple[Rendered, Rendered]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, y) of 2B rows, chosen replies first, then rejected: inputs and next-token targets, -1
    outside the reply, padded to the longest row."""
    rows = [side[0] for side in pairs] + [side[1] for side in pairs]
    width = max(len(ids) for ids, _ in rows) - 1
    x = torch.full((len(rows), width), pad, dtype=torch.long)
    y = torch.full((len(rows), width), -1, dtype=torch.long)
    for b, (ids, mask) in enumerate(rows):
        x[b, :len(ids) - 1] = torch.tensor(ids[:-1])
        y[b, :len(ids) - 1] = torch.tensor([t if m else -1 for t, m in zip(ids[1:], mask[1:])])
    return x, y


class PairLoader:
    """Batches (x, y, ref) for the DPO objective, pairs in a seeded order epoch after epoch. `reference`
    ((x, y) -> (rows, T) log-probs) is attached once the trainer has placed the model (device,
    precision); each pair's reference log-probs are computed once, on first use, and kept (a resume
    computes them again, to the same values)."""

    def __init__(self, pairs: list[tuple[Rendered, Rendered]], pairs_per_step: int, pad: int, seed: int):
        self.pairs, self.per_step, self.pad, self.seed = pairs, pairs_per_step, pad, seed
        self.reference = None
        self.epoch, self.pos = 0, 0
        self._order = self._epoch_order()
        self._ref: dict[int, tuple[float, float]] = {}

    def _epoch_order(self) -> list[int]:
        order = list(range(len(self.pairs)))
        random.Random(self.seed * 100_003 + self.epoch).shuffle(order)
        return order

    def _next_indices(self) -> list[int]:
        chosen = []
        for _ in range(self.per_step):
            if self.pos == len(self._order):
                self.epoch, self.pos = self.epoch + 1, 0
                self._order = self._epoch_order()
            chosen.append(self._order[self.pos])
            self.pos += 1
        return chosen

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        indices = self._next_indices()
        for i in indices:
            if i not in self._ref:  # a pair alone, so that its figure is the same whichever batch first meets it
                chosen, rejected = self.reference(*pair_rows([self.pairs[i]], self.pad)).sum(-1).float().tolist()
                self._ref[i] = (chosen, rejected)
        x, y = pair_rows([self.pairs[i] for i in indices], self.pad)
        ref = torch.tensor([self._ref[i][0] for i in indices] + [self._ref[i][1] for i in indices])
        return x, y, ref

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.pos = state["epoch"], state["pos"]
        self._order = self._epoch_order()


def summed_logprobs(logprobs, pairs: list[tuple[Rendered, Rendered]], pad: int,
                    batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(chosen, rejected) summed reply log-probs of every pair under `logprobs` ((x, y) -> (B, T)),
    in batches of similar lengths."""
    order = sorted(range(len(pairs)), key=lambda i: max(len(s[0]) for s in pairs[i]))
    chosen, rejected = torch.zeros(len(pairs)), torch.zeros(len(pairs))
    for start in range(0, len(order), batch):
        idx = order[start:start + batch]
        summed = logprobs(*pair_rows([pairs[i] for i in idx], pad)).sum(-1).float().cpu()
        chosen[idx], rejected[idx] = summed[:len(idx)], summed[len(idx):]
    return chosen, rejected


def heldout_figures(policy: tuple[torch.Tensor, torch.Tensor], ref: tuple[torch.Tensor, torch.Tensor],
                    beta: float) -> dict:
    """The held-out margins, accuracies and DPO loss from summed log-probs of policy and reference."""
    logp_margin = policy[0] - policy[1]
    reward_margin = beta * (logp_margin - (ref[0] - ref[1]))
    return {"heldout_logp_margin": logp_margin.mean().item(), "heldout_reward_margin": reward_margin.mean().item(),
            "heldout_accuracy": margin_accuracy(logp_margin),
            "heldout_reward_accuracy": margin_accuracy(reward_margin),
            "heldout_loss": -F.logsigmoid(reward_margin).mean().item()}


def plot_dpo(metrics_path: Path, png_path: Path) -> Path | None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(metrics_path) if metrics_path.is_file() else []
    train = [r for r in rows if "reward_margin" in r]
    held = [r for r in rows if "heldout_reward_margin" in r]
    if not train and not held:
        return None
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8), dpi=110)
    panels = ((axes[0], "loss", "heldout_loss", "DPO loss"),
              (axes[1], "reward_margin", "heldout_reward_margin", "implicit reward margin (chosen - rejected)"),
              (axes[2], "reward_accuracy", "heldout_reward_accuracy", "pair accuracy (implicit reward)"))
    for ax, key, held_key, title in panels:
        if train:
            steps, values = [r["step"] for r in train], [r[key] for r in train]
            window = max(1, len(values) // 20)
            smooth = [sum(values[max(0, i - window + 1):i + 1]) / len(values[max(0, i - window + 1):i + 1])
                      for i in range(len(values))]
            ax.plot(steps, values, lw=0.6, alpha=0.35, color="C0")
            ax.plot(steps, smooth, lw=1.5, color="C0", label="training pairs")
        if held:
            ax.plot([r["step"] for r in held], [r[held_key] for r in held], "o-", color="C1", label="held-out pairs")
        ax.set_xlabel("step")
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if held:
        axes[2].plot([r["step"] for r in held], [r["heldout_accuracy"] for r in held], "s--", color="C2",
                     label="held-out log-prob accuracy")
        axes[2].legend(fontsize=8)
        axes[2].set_ylim(0, 1)
        twin = axes[1].twinx()
        twin.plot([r["step"] for r in held], [r["heldout_logp_margin"] for r in held], "s--", color="C2")
        twin.set_ylabel("held-out log-prob margin (nats)", color="C2", fontsize=8)
    fig.suptitle(f"{metrics_path.parent.name}: DPO", fontsize=10)
    fig.tight_layout()
    with atomic_write(png_path) as f:
        fig.savefig(f, format="png")
    plt.close(fig)
    return png_path


def dpo(args: DPOArgs, train_cfg: TrainConfig, resume: bool = False) -> dict:
    started = time.perf_counter()
    if not args.model:
        raise LlmosError("--model is required: the model to improve (an SFT run directory, .llmos file or named model)")
    if not args.pairs:
        raise LlmosError("--pairs is required: a pairs directory with train.jsonl and eval.jsonl (llmos prefs)")
    for name in ("pairs_per_step", "max_eval", "eval_batch"):
        if getattr(args, name) < 1:
            raise LlmosError(f"--{name.replace('_', '-')} must be at least 1, not {getattr(args, name)}")
    if not args.beta > 0:
        raise LlmosError(f"--beta must be positive, not {args.beta}")
    if args.lora_rank < 0 or args.max_len < 0 or args.max_train < 0:
        raise LlmosError("--lora-rank, --max-len and --max-train must be 0 or positive")
    pairs_dir = Path(args.pairs).expanduser()
    for split in ("train", "eval"):
        if not (pairs_dir / f"{split}.jsonl").is_file():
            raise LlmosError(f"{pairs_dir} holds no {split}.jsonl: build a pairs directory with `llmos prefs`")
    with stage_run_dir(args.out, "dpo", resume) as run_dir:
        return _dpo(args, train_cfg, resume, started, run_dir, pairs_dir)


def _dpo(args: DPOArgs, train_cfg: TrainConfig, resume: bool, started: float, run_dir: Path, pairs_dir: Path) -> dict:
    model, tok, info = open_model(args.model)
    fmt = ChatFormat(tok, info["chat_template"])
    max_len = args.max_len or model.cfg.max_seq_len
    if max_len > model.cfg.max_seq_len:
        raise LlmosError(f"--max-len {max_len} is above the model's context of {model.cfg.max_seq_len}")
    train, train_long = render_pairs(fmt, read_pairs(pairs_dir / "train.jsonl", args.max_train), max_len)
    held_out, eval_long = render_pairs(fmt, read_pairs(pairs_dir / "eval.jsonl", args.max_eval), max_len)
    if not train:
        raise LlmosError(f"{pairs_dir / 'train.jsonl'} has no pair that fits {max_len} tokens ({train_long} are "
                         "longer): raise --max-len or build shorter pairs")
    if not held_out:
        raise LlmosError(f"{pairs_dir / 'eval.jsonl'} has no pair that fits {max_len} tokens ({eval_long} are "
                         "longer): DPO measures held-out pairs; build pairs with --eval-fraction above 0")
    pad = pad_id(tok)
    train_cfg.batch_size = 2 * args.pairs_per_step
    train_cfg.seq_len = max(len(ids) for pair in train for ids, _ in pair) - 1
    train_cfg.lr = train_cfg.lr or (1e-4 if args.lora_rank else 1e-5)
    torch.manual_seed(train_cfg.seed)  # the adapters' initialisation
    net = attach_lora(model, SFTArgs(lora_rank=args.lora_rank, lora_alpha=args.lora_alpha)) if args.lora_rank else model
    loader = PairLoader(train, args.pairs_per_step, pad, seed=train_cfg.seed)
    provenance = {"source": "llmos dpo", "base": str(args.model), "pairs": str(pairs_dir), "beta": args.beta,
                  "lora_rank": args.lora_rank,
                  **({"tokenizer_roles": info["provenance"]["tokenizer_roles"]}
                     if "tokenizer_roles" in info["provenance"] else {})}
    held_ref: list[tuple[torch.Tensor, torch.Tensor]] = []  # the reference's held-out log-probs, computed once

    def evaluate(m) -> dict:  # called by the trainer, once `reference` below exists
        if not held_ref:
            held_ref.append(summed_logprobs(reference, held_out, pad, args.eval_batch))
        policy = summed_logprobs(lambda x, y: token_logprobs(m, x.to(trainer.device), y.to(trainer.device)),
                                 held_out, pad, args.eval_batch)
        return heldout_figures(policy, held_ref[0], args.beta)

    trainer = Trainer(net, train_cfg, run_dir, loader, evaluate=evaluate, sample=chat_sampler(fmt),
                      checkpoint_extra={"tokenizer": tok.to_json(), "chat_template": info["chat_template"],
                                        "provenance": provenance},
                      eval_first=True, eval_tokens=sum(len(ids) for pair in held_out for ids, _ in pair),
                      started=started, objective=DPO(beta=args.beta))
    # The reference is the starting model, on the trainer's device and in its precision: with LoRA
    # the policy with its adapters switched off, else a frozen copy.
    if args.lora_rank:
        def reference(x, y):
            with torch.no_grad(), trainer.autocast(), net.disable_adapter():
                return token_logprobs(net, x.to(trainer.device), y.to(trainer.device))
    else:
        frozen = copy.deepcopy(trainer.model).eval().requires_grad_(False)

        def reference(x, y):
            with torch.no_grad(), trainer.autocast():
                return token_logprobs(frozen, x.to(trainer.device), y.to(trainer.device))
    loader.reference = reference
    write_json(run_dir / "config.json", {"model": model.cfg.to_dict(), "dpo": asdict(args), "train": asdict(train_cfg),
                                         "pairs": {"train": len(train), "eval": len(held_out),
                                                   "too_long": {"train": train_long, "eval": eval_long}}})
    tok.save(run_dir / "tokenizer.json")
    result = trainer.run(resume=resume)
    plot_dpo(run_dir / "metrics.jsonl", run_dir / "dpo.png")
    if result["interrupted"]:
        return {**result, "run_dir": str(run_dir)}
    final = net.merge_and_unload() if args.lora_rank else net
    save_params(run_dir / "model.llmos", final, tok, chat_template=info["chat_template"],
                provenance={**provenance, "run": run_dir.name, "step": result["step"]})
    evals = [r for r in read_metrics(run_dir / "metrics.jsonl") if "heldout_reward_margin" in r]
    summary = {"beta": args.beta, "pairs": {"train": len(train), "eval": len(held_out)}, "steps": result["step"],
               "before": _figures(evals[0]), "after": _figures(evals[-1]),
               "curve": [{"step": r["step"], **_figures(r)} for r in evals],
               "seconds": time.perf_counter() - started, "model": str(run_dir / "model.llmos")}
    write_json(run_dir / "dpo.json", summary)
    return {**result, **summary, "run_dir": str(run_dir)}


def _figures(record: dict) -> dict:
    return {k.removeprefix("heldout_"): record[k] for k in record if k.startswith("heldout_")}

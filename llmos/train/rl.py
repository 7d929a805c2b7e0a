"""RL on verifiable rewards: a group-relative policy gradient (GRPO) on tasks whose answers a program checks.

    llmos rl --model RUN/sft --task skills:add,sub --out RUN/rl --minutes 30
    llmos rl --model smollm2-135m-instruct --task rg:basic_arithmetic --lora-rank 16 --minutes 60
    llmos rl ... --resume                              # continue from the latest checkpoint

Each step takes `prompts_per_step` training problems of the task (llmos/eval/tasks.py) and samples
`group` replies to each through the batching engine (llmos/infer/engine.py: one prefill per prompt,
the group decoded together). The checker's verdict is the reward (1 right, 0 wrong); a reply's
advantage is its reward minus its group's mean, so only groups with both right and wrong replies
teach anything, and the others are left out of the update (DAPO's observation: they cost compute
and add nothing). The objective (llmos/train/objectives.py PolicyGradient) is the clipped surrogate
over the reply's tokens (its end-of-turn token included), with the reference's log-probs for the
KL monitor and an optional penalty (`--kl-coef`); `--updates-per-rollout` reuses a batch of
rollouts for several steps, where the clipped ratio matters.

Held-out accuracy: greedy replies to `eval_problems` problems of the task's eval split (disjoint
from training), before the first step and every `eval_every` steps, with a 95% Wilson interval.
Reward hacking shows as training reward rising while held-out accuracy does not, or as accuracy
rising to what one constant answer would score (rl.json's "constant_answer": a tiny model on the
letter-count skill learns to answer "0" to everything, its replies shrinking to a fragment and its
KL climbing; docs/log.md); the monitors logged each step are the reward, the KL to the reference
and the reply length, plotted with the held-out accuracy in rewards.png. The run directory (the SFT stage's contract) ends with
model.llmos (LoRA merged), rl.json (before/after accuracy, intervals, the monitors' last values),
metrics.jsonl and rewards.png; checkpoints carry the rollout cursor, so a resume continues exactly.
"""
from __future__ import annotations

import copy
import math
import random
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch

from llmos.chat import ChatFormat
from llmos.common import LlmosError, atomic_write, write_json
from llmos.eval.tasks import Problem, Task, get_task
from llmos.infer.engine import Engine, generate_batch
from llmos.infer.sampling import SamplingParams
from llmos.load import open_model
from llmos.model import Transformer
from llmos.params import save_params
from llmos.report import read_metrics
from llmos.train.loop import Trainer, TrainConfig, stage_run_dir
from llmos.train.objectives import PolicyGradient, token_logprobs
from llmos.train.sft import SFTArgs, attach_lora, pad_id


RL_PROBLEM_SEED = 7919


@dataclass
class RLArgs:
    model: str = ""  # the model to improve: an SFT run dir, .llmos, .pt or a named model
    task: str = "skills"  # the verifiable task (llmos/eval/tasks.py): skills[:KINDS], gsm8k, rg:NAME[:K=V,...]
    group: int = 8  # replies sampled per prompt (the group of the group-relative advantage)
    prompts_per_step: int = 8  # training problems per step
    max_tokens: int = 64  # reply length limit, rollouts and evaluation
    temperature: float = 1.0  # rollout sampling temperature
    top_k: int = 0  # rollouts sample among the k likeliest tokens (0: all)
    kl_coef: float = 0.0  # KL penalty to the reference (0: monitored only)
    clip: float = 0.2  # the clipped ratio's range (bites with --updates-per-rollout above 1)
    updates_per_rollout: int = 1  # optimizer steps on each batch of rollouts
    eval_problems: int = 500  # held-out problems scored (greedy) before, during and after
    eval_batch: int = 64  # held-out replies decoded at once
    lora_rank: int = 0  # train rank-R adapters (peft) instead of every weight; 0: full fine-tuning
    lora_alpha: float = 0.0  # adapter scale numerator; 0: twice the rank
    out: str = ""  # run directory (default: LLMOS_HOME/runs/rl)


def rl_train_config(**overrides) -> TrainConfig:
    """RL defaults: a small constant-ish rate (policy gradients on a fine-tuned model move it fast),
    no weight decay, eager (rollout batches change shape), evaluations every 25 steps."""
    return TrainConfig(**{"steps": 200, "batch_size": 0, "seq_len": 0, "lr": 2e-5, "warmup_steps": 5,
                          "min_lr_frac": 0.5, "weight_decay": 0.0, "compile": False, "eval_every": 25,
                          "sample_every": 50, "ckpt_every": 25, "log_every": 1, **overrides})


def wilson(correct: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion."""
    if n == 0:
        return 0.0, 1.0
    p = correct / n
    centre, half = p + z * z / (2 * n), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (centre - half) / (1 + z * z / n), (centre + half) / (1 + z * z / n)


def score_replies(model: Transformer, fmt: ChatFormat, task: Task, problems: list[Problem], max_tokens: int,
                  batch: int = 64) -> dict:
    """Greedy replies to the problems, checked: accuracy with its interval, mean reply length, the replies."""
    prompts = [fmt.render_prompt(p.messages) for p in problems]
    params = SamplingParams(max_tokens=max_tokens, temperature=0, stop_ids=sorted(fmt.special_ids))
    was_training = model.training
    model.eval()
    seqs = generate_batch(model, prompts, params, max_batch=batch)
    model.train(was_training)
    replies = [fmt.tok.decode(s.tokens) for s in seqs]
    correct = [task.check(r, p) for r, p in zip(replies, problems)]
    low, high = wilson(sum(correct), len(problems))
    return {"accuracy": sum(correct) / max(len(problems), 1), "low": low, "high": high, "n": len(problems),
            "reply_tokens": sum(len(s.tokens) for s in seqs) / max(len(seqs), 1),
            "replies": replies, "correct": correct}


class RolloutLoader:
    """Batches of scored rollouts for PolicyGradient: (x, y, advantages, old, ref). Rollouts are
    sampled from the live policy; problems come from the task's training split in a seeded order."""

    def __init__(self, policy: Transformer, reference: Callable, fmt: ChatFormat, task: Task, args: RLArgs,
                 problems: list[Problem], seed: int):
        """`reference(x, y)`: the reference model's per-token log-probs (the KL monitor and penalty)."""
        self.policy, self.reference, self.fmt, self.task, self.args = policy, reference, fmt, task, args
        self.problems, self.seed = problems, seed
        self.pad = pad_id(fmt.tok)
        self.epoch, self.pos, self.rollouts = 0, 0, 0
        self._order = self._epoch_order()
        self._batch, self._uses = None, 0
        self.metrics: dict[str, float] = {}

    def _epoch_order(self) -> list[int]:
        order = list(range(len(self.problems)))
        random.Random(self.seed * 100_003 + self.epoch).shuffle(order)
        return order

    def _next_problems(self) -> list[Problem]:
        chosen = []
        for _ in range(self.args.prompts_per_step):
            if self.pos == len(self._order):
                self.epoch, self.pos = self.epoch + 1, 0
                self._order = self._epoch_order()
            chosen.append(self.problems[self._order[self.pos]])
            self.pos += 1
        return chosen

    def next_batch(self):
        if self._batch is None or self._uses == self.args.updates_per_rollout:
            self._batch, self._uses = self._rollout(), 0
        self._uses += 1
        return self._batch

    @torch.no_grad()
    def _rollout(self):
        args, fmt = self.args, self.fmt
        problems = self._next_problems()
        prompts = [fmt.render_prompt(p.messages) for p in problems]
        params = SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature, top_k=args.top_k,
                                stop_ids=sorted(fmt.special_ids), seed=self.seed * 1_000_003 + self.rollouts * 1009)
        self.rollouts += 1
        was_training = self.policy.training
        self.policy.eval()
        engine = Engine(self.policy, max_batch=min(64, args.group * len(prompts)),
                        max_len=max(map(len, prompts)) + args.max_tokens + 1)
        groups = []
        for i, prompt in enumerate(prompts):
            group_params = SamplingParams(**{**params.__dict__, "seed": params.seed + i * args.group})
            groups.append(engine.add(prompt, group_params, n=args.group))
        while engine.has_work:
            engine.step()
        self.policy.train(was_training)
        rows, advantages, rewards, lengths, mixed = [], [], [], [], 0
        for prompt, problem, group in zip(prompts, problems, groups):
            scores = [float(self.task.check(fmt.tok.decode(s.tokens), problem)) for s in group]
            rewards += scores
            lengths += [len(s.tokens) for s in group]
            mean = sum(scores) / len(scores)
            if all(s == mean for s in scores):
                continue  # every reply alike: no advantage, nothing to learn from this group
            mixed += 1
            for seq, score in zip(group, scores):
                # The end-of-turn token that stopped the reply is part of what the policy chose.
                reply = seq.tokens + ([seq.stopped_by] if isinstance(seq.stopped_by, int) else [])
                rows.append((prompt, reply))
                advantages.append(score - mean)
        self.metrics = {"reward": sum(rewards) / len(rewards), "reply_tokens": sum(lengths) / len(lengths),
                        "groups_mixed": mixed / len(groups), "rows": float(len(rows))}
        if not rows:  # nothing to learn this step: a zero-advantage batch of one row keeps the loop simple
            rows, advantages = [(prompts[0], groups[0][0].tokens[:1] or [self.pad])], [0.0]
        width = max(len(p) + len(r) for p, r in rows) - 1
        x = torch.full((len(rows), width), self.pad, dtype=torch.long)
        y = torch.full((len(rows), width), -1, dtype=torch.long)
        for b, (prompt, reply) in enumerate(rows):
            ids = prompt + reply
            x[b, :len(ids) - 1] = torch.tensor(ids[:-1])
            y[b, len(prompt) - 1:len(ids) - 1] = torch.tensor(reply)
        device = self.policy.norm.weight.device  # the Trainer's (it moves the model after this loader is made)
        x, y = x.to(device), y.to(device)
        adv = torch.tensor(advantages, dtype=torch.float32, device=device)
        old = token_logprobs(self.policy, x, y) if args.updates_per_rollout > 1 else None
        return x, y, adv, old, self.reference(x, y)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos, "rollouts": self.rollouts}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.pos, self.rollouts = state["epoch"], state["pos"], state["rollouts"]
        self._order = self._epoch_order()
        self._batch = None


def plot_rewards(metrics_path: Path, png_path: Path) -> Path | None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(metrics_path) if metrics_path.is_file() else []
    train = [r for r in rows if "reward" in r]
    held = [r for r in rows if "heldout_accuracy" in r]
    if not train and not held:
        return None
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8), dpi=110)
    ax = axes[0]
    if train:
        steps = [r["step"] for r in train]
        rewards = [r["reward"] for r in train]
        window = max(1, len(rewards) // 20)
        smooth = [sum(rewards[max(0, i - window + 1):i + 1]) / len(rewards[max(0, i - window + 1):i + 1])
                  for i in range(len(rewards))]
        ax.plot(steps, rewards, lw=0.6, alpha=0.35, color="C0")
        ax.plot(steps, smooth, lw=1.5, color="C0", label="training reward (rollouts)")
    if held:
        ax.errorbar([r["step"] for r in held], [r["heldout_accuracy"] for r in held],
                    yerr=[[r["heldout_accuracy"] - r["heldout_low"] for r in held],
                          [r["heldout_high"] - r["heldout_accuracy"] for r in held]],
                    fmt="o-", color="C1", capsize=3, label="held-out accuracy (greedy, 95% CI)")
    ax.set_xlabel("step")
    ax.set_ylabel("reward / accuracy")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    for ax, key, label in ((axes[1], "kl", "KL to the reference (nats/token)"),
                           (axes[2], "reply_tokens", "reply length (tokens)")):
        points = [(r["step"], r[key]) for r in train if key in r]
        if points:
            ax.plot(*zip(*points), lw=1)
        if key == "reply_tokens" and held:
            ax.plot([r["step"] for r in held], [r["heldout_reply_tokens"] for r in held], "o-", label="held-out")
            ax.legend(fontsize=8)
        ax.set_xlabel("step")
        ax.set_title(label, fontsize=9)
        ax.grid(alpha=0.3)
    fig.suptitle(f"{metrics_path.parent.name}: reward and hacking monitors", fontsize=10)
    fig.tight_layout()
    with atomic_write(png_path) as f:
        fig.savefig(f, format="png")
    plt.close(fig)
    return png_path


def rl(args: RLArgs, train_cfg: TrainConfig, resume: bool = False, task: Task | None = None) -> dict:
    """`task`: a Task object instead of args.task's registered one (a task of your own)."""
    started = time.perf_counter()
    if not args.model:
        raise LlmosError("--model is required: the model to improve (an SFT run directory, .llmos file or named model)")
    for name in ("group", "prompts_per_step", "max_tokens", "eval_problems", "updates_per_rollout", "eval_batch"):
        if getattr(args, name) < 1:
            raise LlmosError(f"--{name.replace('_', '-')} must be at least 1, not {getattr(args, name)}")
    if args.group < 2:
        raise LlmosError("--group must be at least 2: the advantage compares replies to the same prompt")
    if args.lora_rank < 0:
        raise LlmosError("--lora-rank must be 0 (full fine-tuning) or positive")
    task = task or get_task(args.task)
    with stage_run_dir(args.out, "rl", resume) as run_dir:
        return _rl(args, train_cfg, resume, started, run_dir, task)


def _rl(args: RLArgs, train_cfg: TrainConfig, resume: bool, started: float, run_dir: Path, task: Task) -> dict:
    model, tok, info = open_model(args.model)
    fmt = ChatFormat(tok, info["chat_template"])
    held_out = task.problems("eval", args.eval_problems, seed=0)
    # Seeded apart from the SFT mixture's draw of the same generators (seed 0): RL on problems the
    # SFT model memorised earns reward that does not carry to held-out ones (docs/log.md).
    train_problems = task.problems("train", max(2000, 4 * args.prompts_per_step), seed=RL_PROBLEM_SEED + train_cfg.seed)
    longest = max(len(fmt.render_prompt(p.messages)) for p in train_problems + held_out)
    if longest + args.max_tokens + 1 > model.cfg.max_seq_len:
        raise LlmosError(f"a prompt of {longest} tokens plus --max-tokens {args.max_tokens} exceeds the model's "
                         f"context of {model.cfg.max_seq_len}: lower --max-tokens")
    train_cfg.batch_size = args.group * args.prompts_per_step
    train_cfg.seq_len = longest + args.max_tokens
    torch.manual_seed(train_cfg.seed)
    # The reference is the starting model: with LoRA the policy with its adapters switched off, else
    # a frozen copy.
    if args.lora_rank:
        net = attach_lora(model, SFTArgs(lora_rank=args.lora_rank, lora_alpha=args.lora_alpha))
        policy = net.get_base_model()  # the model with the adapters in place: what the engine decodes

        @torch.no_grad()
        def reference(x, y):
            with net.disable_adapter():
                return token_logprobs(net, x, y)
    else:
        net = policy = model
        frozen = copy.deepcopy(model).eval().requires_grad_(False)

        @torch.no_grad()
        def reference(x, y):
            return token_logprobs(frozen.to(x.device), x, y)  # a no-op once it is on the training device
    loader = RolloutLoader(policy, reference, fmt, task, args, train_problems, seed=train_cfg.seed)

    def evaluate(m) -> dict:
        scored = score_replies(policy, fmt, task, held_out, args.max_tokens, args.eval_batch)
        return {"heldout_accuracy": scored["accuracy"], "heldout_low": scored["low"], "heldout_high": scored["high"],
                "heldout_reply_tokens": scored["reply_tokens"]}

    def sample(m) -> str:
        problem = held_out[0]
        scored = score_replies(policy, fmt, task, [problem], args.max_tokens, 1)
        return f"{problem.question} -> {scored['replies'][0]!r} ({'right' if scored['correct'][0] else 'wrong'})"

    provenance = {"source": "llmos rl", "base": str(args.model), "task": task.name, "lora_rank": args.lora_rank,
                  **({"tokenizer_roles": info["provenance"]["tokenizer_roles"]}
                     if "tokenizer_roles" in info["provenance"] else {})}
    trainer = Trainer(net, train_cfg, run_dir, loader, evaluate=evaluate, sample=sample,
                      checkpoint_extra={"tokenizer": tok.to_json(), "chat_template": info["chat_template"],
                                        "provenance": provenance},
                      eval_first=True, eval_tokens=args.eval_problems * args.max_tokens, started=started,
                      objective=PolicyGradient(clip=args.clip, kl_coef=args.kl_coef))
    write_json(run_dir / "config.json", {"model": model.cfg.to_dict(), "rl": asdict(args), "train": asdict(train_cfg),
                                         "task": task.name, "description": task.description,
                                         "problems": {"train": len(train_problems), "eval": len(held_out)}})
    tok.save(run_dir / "tokenizer.json")
    result = trainer.run(resume=resume)
    plot_rewards(run_dir / "metrics.jsonl", run_dir / "rewards.png")
    if result["interrupted"]:
        return {**result, "run_dir": str(run_dir)}
    final = net.merge_and_unload() if args.lora_rank else net
    save_params(run_dir / "model.llmos", final, tok, chat_template=info["chat_template"],
                provenance={**provenance, "run": run_dir.name, "step": result["step"]})
    evals = [r for r in read_metrics(run_dir / "metrics.jsonl") if "heldout_accuracy" in r]
    trained = [r for r in read_metrics(run_dir / "metrics.jsonl") if "reward" in r]
    answers = Counter(p.answer for p in held_out)
    summary = {"task": task.name, "description": task.description, "eval_problems": len(held_out),
               # A policy that always gives the commonest answer scores this: gains up to it can be a
               # learned prior rather than a skill (watch the reply length and KL too).
               "constant_answer": {"answer": answers.most_common(1)[0][0],
                                   "accuracy": answers.most_common(1)[0][1] / len(held_out)},
               "steps": result["step"], "before": _accuracy(evals[0]), "after": _accuracy(evals[-1]),
               "curve": [{"step": r["step"], **_accuracy(r)} for r in evals],
               "last_reward": trained[-1]["reward"] if trained else None,
               "last_kl": trained[-1].get("kl") if trained else None,
               "seconds": time.perf_counter() - started, "model": str(run_dir / "model.llmos")}
    write_json(run_dir / "rl.json", summary)
    return {**result, **summary, "run_dir": str(run_dir)}


def _accuracy(record: dict) -> dict:
    return {"accuracy": record["heldout_accuracy"], "low": record["heldout_low"], "high": record["heldout_high"],
            "reply_tokens": record["heldout_reply_tokens"]}

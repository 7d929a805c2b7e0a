"""The speedrun: the whole pipeline as a sequence of stages, ending in a run directory with a report.

    llmos speedrun --preset cpu                # `make demo`: 23 minutes on any 2-core x86 CPU
    llmos speedrun --preset cpu --minutes 40   # the same pipeline, more steps
    llmos speedrun --preset cpu --dry-run      # the machine, the stage budgets, a measured pretraining plan
    llmos speedrun --preset cpu-full           # every stage (later issues add RL, tools, safety): 90 minutes

Stages: data (prepare the default corpus) -> tokenizer -> pretrain -> sample -> sft (fine-tune the
base on the default conversation mixture) -> eval (base vs SFT on held-out tasks) -> report. Each stage
records its result and wall time in `stages.json`; rerunning the same command skips finished
stages and resumes training from its latest checkpoint (`--fresh` starts over). Later stages
(RLHF, tools, ...) append to STAGES.

**Time, not steps.** A preset with `minutes` is a wall-clock budget for the whole command: each
training stage gets a budget of its own when it starts, and plans its step count to it from the
throughput it measures (llmos/train/budget.py), so a faster CPU buys more steps, not less time. When
pretraining starts, what is left after the finished stages and an allowance for the short stages
after it (`tail_s`) is split `pretrain_share` : the rest between pretraining and fine-tuning; when
fine-tuning starts it takes whatever is left but the evaluation's and report's allowance, so an
earlier stage that ran long or short moves the difference into fine-tuning. The RL stage (cpu-full)
gets its `rl_minutes` and no more, less if the stages before it ran over. An interrupted run
keeps each stage's budget (it travels in the checkpoints) and charges the time already spent.
`--steps N` trains fixed steps instead (and the fine-tuning its preset epochs).

The run directory carries a marker file: `--fresh` deletes only a directory that has it, and only
what the speedrun writes there; a directory that holds anything else is refused as `--out`.
"""
from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

import torch

from llmos.common import LlmosError, llmos_home, read_json, write_json
from llmos.eval.assistant import EvalArgs
from llmos.eval.compute import ComputeArgs
from llmos.eval.tools import ToolEvalArgs
from llmos.perf import describe_machine, machine
from llmos.report import markdown_table, write_report
from llmos.train.loop import TrainConfig, read_metrics, run_dir_lock
from llmos.train.pretrain import DataArgs, ModelArgs
from llmos.train.rl import RLArgs, rl_train_config
from llmos.train.sft import SFTArgs, sft_train_config

MARKER = ".llmos-speedrun"
# Everything a speedrun writes in its directory: what --fresh may delete.
OWNED = ("stages.json", "preset.json", "tokenizer.json", "base", "sft", "eval.json", "tools.json", "rl", "arena", "think",
         "report.md", "loss.png")


@dataclass
class ThinkStageArgs:
    """The System 2 stage: a reward model trained on the final model's own right and wrong replies to
    the task's train problems (`llmos prefs` + `llmos rm`, the body being that model), then accuracy
    against test-time compute on its held-out problems (llmos/eval/compute.py), best-of-n scored by
    that reward model."""
    task: str = "skills:count,spell"
    pairs: int = 1700  # preference pairs (its train split holds 3,348 distinct problems; a pair takes two)
    samples: int = 8  # replies sampled per train problem for the pairs
    rm_minutes: float = 2.5  # the reward model's training budget
    rm_steps: int = 0  # a fixed step count instead (tests)
    curves: ComputeArgs = field(default_factory=lambda: ComputeArgs(strategies="greedy,vote,best-of-n,pass@k",
                                                                    compute="1,2,4,8,16", max_tokens=128))


@dataclass
class Preset:
    vocab_size: int
    model: ModelArgs
    train: TrainConfig
    sft: TrainConfig = field(default_factory=sft_train_config)
    sft_args: SFTArgs = field(default_factory=lambda: SFTArgs(mix="identity=6,chitchat=0.25", epochs=2.0))
    sample_prompts: list[str] = field(default_factory=lambda: ["The", "In 1905,", "def main():", "KING HENRY:"])
    sample_tokens: int = 96
    eval: EvalArgs = field(default_factory=EvalArgs)
    rl_args: RLArgs | None = None  # the RL stage on a checked task after SFT (cpu-full); None: no such stage
    rl: TrainConfig = field(default_factory=rl_train_config)
    minutes: float = 0.0  # wall-clock budget of the whole speedrun; 0: the fixed steps of `train` and `sft_args`
    pretrain_share: float = 0.6  # of the training time left when pretraining starts
    # Allowances for the stages after pretraining that do not plan to a budget (30 s of eval and 2 s of
    # samples measured on an AVX2-only 2-core EPYC; one thread doubles them), and the RL stage's budget,
    # set aside before pretraining and fine-tuning split the rest.
    tail_s: dict = field(default_factory=lambda: {"sample": 10.0, "eval": 75.0, "report": 5.0})
    rl_minutes: float = 0.0
    # The tools stage: the SFT model (and these imported models beside it) on held-out arithmetic and
    # facts, with and without the calculator and search; None: no such stage. Its SFT data must
    # include the tool-use source for the model to have learned the calls.
    tool_eval: ToolEvalArgs | None = None
    tool_peers: tuple[str, ...] = ()
    think: ThinkStageArgs | None = None  # the System 2 stage (after RL where there is one); None: no such stage

    @property
    def stage_names(self) -> list[str]:
        return [name for name, _ in STAGES
                if (name not in ("rl", "arena") or self.rl_args is not None)
                and (name != "tools" or self.tool_eval is not None)
                and (name != "think" or self.think is not None)]


PRESETS = {
    # 2.9M params (3 layers of 192, heads of 32, untied head); pretraining then fine-tuning in a
    # 23-minute budget (make demo: about 24 with the install). The recipe per CPU-minute is measured
    # against a GPT-2 baseline by bench/pretrain_quality.py (docs/log.md, issue 13): on an AVX2-only
    # 2-core EPYC this shape trains ~1.8x the tokens of the old 4 x 256 and ends 9-14% lower.
    "cpu": Preset(4096, ModelArgs(depth=3, d_model=192, n_heads=6, tie_embeddings=False, zero_proj=True),
                  TrainConfig(steps=1300, batch_size=16, seq_len=256, warmup_steps=100, eval_every=250,
                              eval_tokens=131072, sample_every=500, ckpt_every=200, log_every=10, optimizer="muon",
                              embed_lr=0.03, head_lr=0.003),
                  sft=sft_train_config(lr=3e-3), minutes=23.0),
    # A GPU-sized base model (~100M params) for one H100 / H200 or torchrun across several.
    "gpu": Preset(32768, ModelArgs(depth=12),
                  TrainConfig(steps=5000, batch_size=32, seq_len=1024, warmup_steps=200, eval_every=500,
                              eval_tokens=1 << 20, sample_every=1000, ckpt_every=500)),
    # A seconds-long smoke run of every stage (tests).
    "tiny": Preset(512, ModelArgs(depth=1),
                   TrainConfig(steps=40, batch_size=8, seq_len=64, warmup_steps=5, eval_every=20,
                               eval_tokens=4096, sample_every=40, ckpt_every=20, log_every=5, compile=False),
                   sft=sft_train_config(steps=20, batch_size=8, seq_len=64, warmup_steps=2, eval_every=10,
                                        sample_every=20, ckpt_every=10, log_every=5, compile=False),
                   sample_tokens=16, eval=EvalArgs(max_tokens=16, skills=8, chitchat=4, loss_conversations=32)),
}
# The whole pipeline: the cpu preset's stages with a budget of its own; the later capabilities (RL,
# tools, safety) add their stages to it, and its report carries every capability's figures.
# Its RL task is the worked products (replies of ~80 tokens), whose start after SFT sits inside RL's
# window where sums and differences (76-92%) do not: on an AVX2-only 2-core EPYC in fp32 this preset's
# SFT model scores 52.2% on 500 held-out mul/word_mul problems and its 30-minute RL stage (802 steps)
# 64.6% (docs/log.md). The stage plans its steps to its 30 minutes, so a faster CPU buys more of them;
# it also buys a longer pretraining, hence a higher start, not yet measured on the AVX-512 and AMX kinds.
# Its SFT adds the tool-use source (llmos/data/tooluse.py): calls to the calculator and to search over
# the corpus's Wikipedia leads, which the tools stage then measures beside SmolLM2-135M-Instruct.
PRESETS["cpu-full"] = replace(PRESETS["cpu"], minutes=90.0, rl_minutes=30.0,
                              sft_args=replace(PRESETS["cpu"].sft_args,
                                               sources="chitchat,identity,skills,wiki-qa,tool-use"),
                              tool_eval=ToolEvalArgs(), tool_peers=("smollm2-135m-instruct",),
                              rl_args=RLArgs(task="skills:mul,word_mul", group=16, prompts_per_step=4, max_tokens=96,
                                             kl_coef=0.02),
                              rl=rl_train_config(lr=1e-4, eval_every=100, ckpt_every=100),
                              think=ThinkStageArgs(),
                              tail_s={**PRESETS["cpu"].tail_s, "tools": 420.0, "arena": 150.0, "think": 330.0})
# The tiny preset with a context of 128: the README test's stand-in for `make demo`, whose later
# commands (preference pairs, DPO) need room for a worked skills reply (up to ~90 tokens at vocab 512).
PRESETS["tiny-128"] = replace(PRESETS["tiny"], train=replace(PRESETS["tiny"].train, seq_len=128),
                              sft=replace(PRESETS["tiny"].sft, seq_len=128))
# The tiny preset with every stage, for the tests of the later stages.
PRESETS["tiny-full"] = replace(PRESETS["tiny"], rl_args=RLArgs(task="skills:add", group=4, prompts_per_step=2,
                                                               max_tokens=8, eval_problems=8, eval_batch=8),
                               sft_args=replace(PRESETS["tiny"].sft_args,
                                                sources="chitchat,identity,skills,wiki-qa,tool-use"),
                               tool_eval=ToolEvalArgs(arithmetic=6, facts=4, max_tokens=8),
                               rl=rl_train_config(steps=4, eval_every=4, ckpt_every=2, sample_every=4),
                               think=ThinkStageArgs(task="skills:add", pairs=40, samples=4, rm_steps=4,
                                                    curves=ComputeArgs(strategies="greedy,vote,best-of-n,pass@k",
                                                                       compute="1,2", problems=8, max_tokens=8,
                                                                       time_problems=2)))


@dataclass
class Context:
    preset_name: str
    preset: Preset
    run_dir: Path
    data_dir: Path
    status: dict

    def done(self, stage: str) -> dict:
        return self.status.get(stage, {})

    def spent(self) -> float:
        """Seconds the finished stages took (in this invocation and earlier ones)."""
        return sum(info["seconds"] for info in self.status.values())

    def minutes_for(self, stage: str) -> float:
        """A training stage's budget when it starts (see the module docstring); 0 for fixed steps."""
        p = self.preset
        if not p.minutes:
            return 0.0
        names = p.stage_names
        later = [name for name in names[names.index(stage) + 1:] if name not in self.status]
        allowance = sum(p.rl_minutes * 60 if name == "rl" else p.tail_s.get(name, 0.0) for name in later)
        seconds = p.minutes * 60 - self.spent() - allowance
        if stage == "pretrain":
            seconds *= p.pretrain_share
        if stage == "rl":  # its allowance is its budget: what earlier stages left unspent is not handed on
            seconds = min(seconds, p.rl_minutes * 60)
        if seconds < 60:
            raise LlmosError(f"the {p.minutes:g}-minute budget leaves {max(seconds, 0):.0f} s for {stage}: "
                             "give the speedrun more --minutes")
        return seconds / 60


def stage_data(ctx: Context) -> dict:
    from llmos.data.corpus import prepare
    manifest = prepare(ctx.data_dir)
    return {"corpus": str(ctx.data_dir), "documents": manifest["documents"], "bytes": manifest["bytes"]}


def stage_tokenizer(ctx: Context) -> dict:
    from llmos.data.corpus import load_texts
    from llmos.tokenizer import Tokenizer, bytes_per_token
    tok = Tokenizer.train(load_texts(ctx.data_dir, "train"), vocab_size=ctx.preset.vocab_size)
    tok.save(ctx.run_dir / "tokenizer.json")
    return {"vocab_size": tok.vocab_size, **bytes_per_token(tok, load_texts(ctx.data_dir, "val"))}


def stage_pretrain(ctx: Context) -> dict:
    from llmos.train.pretrain import pretrain
    resume = any((ctx.run_dir / "base" / "checkpoints").glob("step_*.pt"))
    train = replace(ctx.preset.train, minutes=ctx.minutes_for("pretrain"))  # a resumed run keeps its own
    result = pretrain(ctx.preset.model, train,
                      DataArgs(data=str(ctx.data_dir), tokenizer=str(ctx.run_dir / "tokenizer.json"),
                               out=str(ctx.run_dir / "base")), resume=resume)
    if result["interrupted"]:
        raise LlmosError(f"pretraining was interrupted at step {result['step']}: run the speedrun again to resume")
    return result


def stage_sample(ctx: Context) -> dict:
    from llmos.load import load_model
    from llmos.train.pretrain import sampler
    model, tok, _ = load_model(ctx.run_dir / "base")
    samples = []
    for i, prompt in enumerate(ctx.preset.sample_prompts):
        samples.append({"prompt": prompt, "text": sampler(tok, prompt, ctx.preset.sample_tokens, seed=i)(model)})
        print(f"--- {samples[-1]['text']}\n")
    return {"samples": samples}


def stage_sft(ctx: Context) -> dict:
    from llmos.train.sft import sft
    out = ctx.run_dir / "sft"
    resume = any((out / "checkpoints").glob("step_*.pt"))
    args = replace(ctx.preset.sft_args, model=str(ctx.run_dir / "base"), corpus=str(ctx.data_dir), out=str(out))
    result = sft(args, replace(ctx.preset.sft, minutes=ctx.minutes_for("sft")), resume=resume)
    if result["interrupted"]:
        raise LlmosError(f"fine-tuning was interrupted at step {result['step']}: run the speedrun again to resume")
    return result


def stage_eval(ctx: Context) -> dict:
    from llmos.eval.assistant import evaluate_models
    _, _, results = evaluate_models({"base": str(ctx.run_dir / "base"), "sft": str(ctx.run_dir / "sft")},
                                    ctx.run_dir / "sft" / "data", ctx.preset.eval, out=ctx.run_dir / "eval.json")
    return {name: {k: v for k, v in r.items() if k != "items"} for name, r in results.items()}


def stage_tools(ctx: Context) -> dict:
    """The SFT model and the preset's peers, with and without tools (llmos/eval/tools.py)."""
    from llmos.eval.tools import evaluate_tools
    from llmos.load import load_model
    results, failed = {}, {}
    for name, ref in [("sft", ctx.run_dir / "sft"), *((peer, peer) for peer in ctx.preset.tool_peers)]:
        try:
            model, tok, info = load_model(ref)
        except LlmosError as e:  # a peer that cannot be fetched here is reported, not fatal
            if name == "sft":
                raise
            failed[name] = str(e)
            continue
        results[name] = evaluate_tools(model, tok, info, ctx.preset.tool_eval, corpus_dir=ctx.data_dir, label=name)
    write_json(ctx.run_dir / "tools.json", {**results, "failed": failed})
    return {"models": {name: {s: {mode: {k: r[s][mode][k] for k in ("accuracy", "low", "high", "n", "called")}
                                     for mode in r[s]} for s in r} for name, r in results.items()},
            "failed": failed}


def stage_rl(ctx: Context) -> dict:
    from llmos.train.rl import rl
    out = ctx.run_dir / "rl"
    resume = any((out / "checkpoints").glob("step_*.pt"))
    args = replace(ctx.preset.rl_args, model=str(ctx.run_dir / "sft"), out=str(out))
    result = rl(args, replace(ctx.preset.rl, minutes=ctx.minutes_for("rl")), resume=resume)
    if result["interrupted"]:
        raise LlmosError(f"RL was interrupted at step {result['step']}: run the speedrun again to resume")
    return {k: v for k, v in result.items() if k != "curve"}


def stage_arena(ctx: Context) -> dict:
    """Base, SFT and RL models answer the RL task's held-out problems; its checker judges every two."""
    from llmos.arena import ArenaArgs, arena
    rl = ctx.preset.rl_args
    result = arena(ArenaArgs(models=[f"{name}={ctx.run_dir / name}" for name in ("base", "sft", "rl")], task=rl.task,
                             prompts=rl.eval_problems, max_tokens=rl.max_tokens, batch=rl.eval_batch,
                             out=str(ctx.run_dir / "arena")))
    return {"ranking": [{k: r[k] for k in ("name", "rating", "low", "high", "accuracy")} for r in result["models"]]}


def stage_think(ctx: Context) -> dict:
    """Accuracy against test-time compute for the final model, best-of-n scored by a reward model
    trained on its own replies (ThinkStageArgs)."""
    from llmos.data.prefs import PrefsArgs, build_pairs
    from llmos.eval.compute import compute_curves, plot_curves
    from llmos.eval.tasks import get_task
    from llmos.load import load_model
    from llmos.train.reward import RMArgs, rm, rm_train_config
    args, out = ctx.preset.think, ctx.run_dir / "think"
    model_dir = ctx.run_dir / ("rl" if ctx.preset.rl_args is not None else "sft")
    curves_args = args.curves
    if not (out / "pairs" / "manifest.json").is_file():
        build_pairs(PrefsArgs(model=str(model_dir), out=str(out / "pairs"), sources="task", task=args.task,
                              per_source=args.pairs, eval_fraction=0.05, samples=args.samples,
                              temperature=curves_args.temperature, max_tokens=curves_args.max_tokens))
    if not (out / "rm" / "rm.json").is_file():
        trained = rm(RMArgs(model=str(model_dir), pairs=str(out / "pairs"), out=str(out / "rm")),
                     rm_train_config(steps=args.rm_steps, minutes=0.0 if args.rm_steps else args.rm_minutes))
        if trained["interrupted"]:
            raise LlmosError("the reward model's training was interrupted: run the speedrun again")
    rm_result = read_json(out / "rm" / "rm.json", "the reward model's results")
    model, tok, info = load_model(model_dir)
    result = compute_curves(model, tok, info, get_task(args.task),
                            replace(curves_args, verifier=f"rm:{out / 'rm'}"))
    result["model"], result["reward_model"] = model_dir.name, {k: rm_result["after"]["heldout"][k]
                                                               for k in ("accuracy", "low", "high", "pairs")}
    write_json(out / "compute.json", result)
    plot_curves(result, out / "compute.png")
    return {"task": args.task, "model": model_dir.name, "reward_model": result["reward_model"],
            "curves": {name: [{k: p[k] for k in ("compute", "accuracy", "low", "high", "tokens", "seconds")}
                              for p in points] for name, points in result["curves"].items()}}


def stage_report(ctx: Context) -> dict:
    base = ctx.run_dir / "base"
    config = read_json(base / "config.json", "the base model's config")
    metrics = read_metrics(base / "metrics.jsonl")
    manifest = read_json(ctx.data_dir / "manifest.json", "the corpus manifest")
    evals = [m for m in metrics if "val_loss" in m]
    train = [m for m in metrics if "loss" in m]
    steady = train[len(train) // 4:]  # past the compile warm-up
    median = lambda key: sorted(m[key] for m in steady)[len(steady) // 2]
    pre = ctx.done("pretrain")
    sections = [
        ("Result", f"Held-out **{pre['val_bpb']:.4f} bits per byte** (validation loss {pre['val_loss']:.4f} "
                   f"nats/token) after {pre['step']} steps; model `{base / 'model.llmos'}`.\n\n"
                   "![loss curve](base/loss.png)"),
        ("Machine and time", machine_section(ctx)),
        ("Config", f"Preset `{ctx.preset_name}`: {config['params']:,} parameters, "
                   f"{config['flops_per_token'] / 1e6:.1f} MFLOP/token.\n\n```json\n"
                   + json.dumps({"model": config["model"], "train": config["train"]}, indent=1) + "\n```"),
        ("Data", markdown_table(["source", "license", "documents", "MB"],
                                [[s["name"], s["license"], f"{s['documents']:,}", f"{s['bytes'] / 1e6:.1f}"]
                                 for s in manifest["sources"]])
         + f"\n\nTokenizer: vocab {ctx.done('tokenizer')['vocab_size']}, "
           f"{ctx.done('tokenizer')['bytes_per_token']:.3f} bytes/token on the validation split."),
        ("Losses", markdown_table(["step", "val loss", "val bits/byte"],
                                  [[m["step"], f"{m['val_loss']:.4f}", f"{m['val_bpb']:.4f}"] for m in evals])),
        ("Throughput", f"Median {median('tok_per_s'):,.0f} tokens/s, MFU {median('mfu'):.1%} (against a "
                       f"matmul peak in the training dtype, {pre.get('dtype', 'fp32')}, measured at the start "
                       "of training)." if steady else "No training steps logged."),
        ("Samples", "\n\n".join(f"```\n{s['text']}\n```" for s in ctx.done("sample")["samples"])),
        ("Assistant (SFT)", sft_section(ctx)),
        *([("Tools", tools_section(ctx))] if "tools" in ctx.status else []),
        *([("RL on verifiable rewards", rl_section(ctx))] if "rl" in ctx.status else []),
        *([("System 2: accuracy against test-time compute", think_section(ctx))] if "think" in ctx.status else []),
    ]
    write_report(ctx.run_dir / "report.md", f"llmos speedrun ({ctx.preset_name})", sections)
    shutil.copy(base / "loss.png", ctx.run_dir / "loss.png")
    return {"report": str(ctx.run_dir / "report.md")}


def machine_section(ctx: Context) -> str:
    """The machine, the dtypes, and each stage's budget against the time it took."""
    rows = []
    for name, result in ctx.status.items():
        plan = result.get("plan", {})
        budget = f"{plan['budget_s']:.0f}" if plan else ""
        steps = f"{plan['planned_steps']:,} planned, {result['step']:,} run" if plan else \
            (f"{result['step']:,} (fixed)" if "step" in result else "")
        rows.append([name, budget, f"{result['seconds']:.0f}", steps])
    total = ctx.spent()
    budget = f"{ctx.preset.minutes * 60:.0f}" if ctx.preset.minutes else ""
    rows.append(["**total** (report excluded)", budget, f"{total:.0f}", ""])
    dtypes = ", ".join(f"{stage} {ctx.done(stage)['dtype']}" for stage in ("pretrain", "sft") if "dtype" in ctx.done(stage))
    return (f"{describe_machine()}; compute dtype: {dtypes or 'fp32'}.\n\n"
            + (f"Budget {ctx.preset.minutes:g} minutes for the whole speedrun; " if ctx.preset.minutes else
               "Fixed step counts; ")
            + f"spent {total / 60:.1f} minutes before the report. Seconds per stage:\n\n"
            + markdown_table(["stage", "budget (s)", "actual (s)", "steps"], rows))


def sft_section(ctx: Context) -> str:
    """The fine-tuning figures: data, loss before/after, the evaluation table base vs SFT, sample chats."""
    from llmos.eval.assistant import results_table
    sft_dir = ctx.run_dir / "sft"
    config = read_json(sft_dir / "config.json", "the fine-tuned model's config")
    mixture = read_json(sft_dir / "data" / "manifest.json", "the conversation mixture's manifest")
    losses = [m["val_loss"] for m in read_metrics(sft_dir / "metrics.jsonl") if "val_loss" in m]
    evaluated = read_json(ctx.run_dir / "eval.json", "the evaluation results")
    chats = [item for item in evaluated["sft"]["items"] if item["task"] != "skills"][:3] + \
        [item for item in evaluated["sft"]["items"] if item["task"] == "skills"][:1]
    return "\n\n".join([
        markdown_table(["conversation source", "license", "train", "eval"],
                       [[name, e["license"], f"{e['train']:,}", f"{e['eval']:,}"] for name, e in mixture["sources"].items()]),
        f"Full fine-tuning of the base model for {ctx.done('sft')['step']} steps on "
        f"{config['conversations']['train']:,} conversations (packed, loss on assistant tokens only): held-out "
        f"conversation loss {losses[0]:.4f} -> {losses[-1]:.4f} nats/token. Chat with it: "
        f"`llmos chat --model {sft_dir}`.\n\n![SFT loss](sft/loss.png)",
        "Evaluation on held-out conversations (greedy replies; `llmos eval`, see llmos/eval/assistant.py):\n\n"
        + markdown_table(*results_table({"base": evaluated["base"], "SFT": evaluated["sft"]})),
        "\n\n".join(f"```\nuser: {c['prompt']}\nassistant: {c['reply']}\n```" for c in chats),
    ])


def tools_section(ctx: Context) -> str:
    """Accuracy with and without tools on held-out arithmetic and facts, and one reply that used them."""
    from llmos.eval.tools import tools_table
    results = read_json(ctx.run_dir / "tools.json", "the tools stage's results")
    failed = results.pop("failed", {})
    example = next((r for r in results["sft"]["facts"]["with"]["replies"] if r["right"] and r["calls"]), None)
    return "\n\n".join([
        "Held-out problems (`llmos eval --tasks tools`, llmos/eval/tools.py), each asked without tools and "
        "with the calculator and search over the corpus's Wikipedia leads; greedy replies, 95% Wilson "
        "intervals, and the share of replies that called the needed tool. Arithmetic: products of two 4-6 "
        "digit numbers and sums of 3-5 of them; facts: cloze questions on the validation articles, which no "
        "stage trained on.",
        markdown_table(*tools_table(results)),
        *([f"Not measured: {', '.join(f'{k} ({v})' for k, v in failed.items())}."] if failed else []),
        *([f"```\nuser: {example['question']}\ncall: {json.dumps(example['calls'][0])}\n"
           f"assistant: {example['reply']}\n```"] if example else []),
    ])


def rl_section(ctx: Context) -> str:
    """Held-out accuracy of the SFT model and of its RL continuation on the checked task, with intervals."""
    done = ctx.done("rl")
    rows = [[name, f"{r['accuracy']:.1%}", f"[{r['low']:.1%}, {r['high']:.1%}]", f"{r['reply_tokens']:.1f}"]
            for name, r in (("SFT (before)", done["before"]), ("RL (after)", done["after"]))]
    gain = done["after"]["accuracy"] - done["before"]["accuracy"]
    return (f"Group-relative policy gradient (`llmos rl`, llmos/train/rl.py) on **{done['task']}** ("
            f"{done['description']}) for {done['steps']} steps in {ctx.status['rl']['seconds'] / 60:.1f} minutes, "
            f"starting from the SFT model. Held-out accuracy on {done['eval_problems']} problems of the task's "
            f"eval split (greedy, 95% Wilson intervals): {gain * 100:+.1f} points. Always answering "
            f"\"{done['constant_answer']['answer']}\" would score {done['constant_answer']['accuracy']:.1%}.\n\n"
            + markdown_table(["model", "accuracy", "95% interval", "reply tokens"], rows)
            + "\n\n![reward and monitors](rl/rewards.png)"
            + ("\n\n" + arena_section(ctx) if "arena" in ctx.status else ""))


def think_section(ctx: Context) -> str:
    from llmos.eval.compute import curves_table
    done, result = ctx.done("think"), read_json(ctx.run_dir / "think" / "compute.json", "the think stage's curves")
    rm = done["reward_model"]
    headers, rows = curves_table(result)
    return (f"The {done['model'].upper()} model on **{done['task']}**, {result['problems']} held-out problems "
            f"(llmos/eval/compute.py; 95% Wilson intervals, mean generated tokens per problem in brackets). "
            f"Columns are samples per problem: `vote` is their majority, `best-of-n` the one a reward model "
            f"scores highest, trained for this stage on the model's own right and wrong replies to the task's "
            f"train problems (held-out pair accuracy {rm['accuracy']:.1%} [{rm['low']:.1%}, {rm['high']:.1%}] "
            f"of {rm['pairs']}); `pass@k` reads the gold answer and bounds what any verifier could pick.\n\n"
            + markdown_table(headers, rows) + "\n\n![accuracy against compute](think/compute.png)")


def arena_section(ctx: Context) -> str:
    from llmos.arena import ratings_table
    table = ratings_table(read_json(ctx.run_dir / "arena" / "arena.json", "the arena's results"))
    return ("Arena on the same problems, every two models judged by the task's checker (`llmos arena`; "
            "Bradley-Terry ratings on the Elo scale with bootstrap intervals; arena/leaderboard.md has the "
            "pairwise win rates):\n\n" + table + "\n\n![arena](arena/leaderboard.png)")


STAGES: list[tuple[str, Callable[[Context], dict]]] = [
    ("data", stage_data),
    ("tokenizer", stage_tokenizer),
    ("pretrain", stage_pretrain),
    ("sample", stage_sample),
    ("sft", stage_sft),
    ("eval", stage_eval),
    ("tools", stage_tools),
    ("rl", stage_rl),
    ("arena", stage_arena),
    ("think", stage_think),
    ("report", stage_report),
]


def check_run_dir(run_dir: Path) -> None:
    """Refuse an --out that is a file, or a directory holding anything but a speedrun."""
    if run_dir.exists() and not run_dir.is_dir():
        raise LlmosError(f"--out {run_dir} is a file, not a directory")
    if run_dir.is_dir() and not (run_dir / MARKER).exists() and not (run_dir / "stages.json").is_file():
        others = sorted(p.name for p in run_dir.iterdir() if p.name != ".lock")  # stages.json: an older llmos's
        if others:
            raise LlmosError(f"--out {run_dir} is not a speedrun directory and is not empty (it holds "
                             f"{', '.join(others[:3])}{' ...' if len(others) > 3 else ''}): choose a new or "
                             "empty directory")


def claim_run_dir(run_dir: Path, fresh: bool) -> None:
    """Make run_dir a speedrun directory; `fresh` deletes what an earlier speedrun wrote there, nothing else."""
    check_run_dir(run_dir)
    if fresh:
        for name in OWNED:
            path = run_dir / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif path.exists() or path.is_symlink():
                path.unlink()
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / MARKER).touch()


def resolve_preset(preset: str, steps: int = 0, minutes: float = 0.0) -> Preset:
    if preset not in PRESETS:
        raise LlmosError(f"unknown preset {preset!r}: choose one of {', '.join(PRESETS)}")
    if steps and minutes:
        raise LlmosError("give --steps (fixed) or --minutes (a budget), not both")
    if minutes < 0:
        raise LlmosError(f"--minutes must be positive, not {minutes}")
    chosen = PRESETS[preset]
    if steps:
        chosen = replace(chosen, train=replace(chosen.train, steps=steps), minutes=0.0)
    elif minutes:
        chosen = replace(chosen, minutes=minutes)
    return chosen


def run_speedrun(preset: str, out: str = "", data: str = "", steps: int = 0, fresh: bool = False,
                 minutes: float = 0.0) -> Path:
    chosen = resolve_preset(preset, steps, minutes)
    run_dir = Path(out).expanduser() if out else llmos_home() / "runs" / f"speedrun-{preset}"
    check_run_dir(run_dir)  # before the lock file is made in it
    with run_dir_lock(run_dir):
        claim_run_dir(run_dir, fresh)
        return _run(preset, chosen, run_dir, data)


def _run(preset: str, chosen: Preset, run_dir: Path, data: str) -> Path:
    status_path = run_dir / "stages.json"
    status = read_json(status_path, "the speedrun's stage record") if status_path.is_file() else {}
    from llmos.data.corpus import default_corpus_dir
    ctx = Context(preset, chosen, run_dir, Path(data).expanduser() if data else default_corpus_dir(), status)
    if data:
        status.setdefault("data", {"corpus": str(ctx.data_dir), "seconds": 0.0})
    write_json(run_dir / "preset.json", {"preset": preset, **asdict(chosen), "machine": machine()})
    print(f"[speedrun] {describe_machine()}"
          + (f"; budget {chosen.minutes:g} minutes" if chosen.minutes else "; fixed steps"), flush=True)
    for name, fn in STAGES:
        if name not in chosen.stage_names:
            continue
        if name in status and name != "report":
            print(f"[speedrun] {name}: done earlier, skipping")
            continue
        print(f"[speedrun] {name} ...", flush=True)
        t = time.time()
        result = fn(ctx)
        status[name] = {**result, "seconds": time.time() - t}
        write_json(status_path, status)
        print(f"[speedrun] {name}: {status[name]['seconds']:.0f} s", flush=True)
    pre = status["pretrain"]
    spent = ctx.spent()
    print(f"\nheld-out bits per byte: {pre['val_bpb']:.4f} (val loss {pre['val_loss']:.4f})")
    print(f"time: {spent / 60:.1f} minutes" + (f" of a {chosen.minutes:g}-minute budget" if chosen.minutes else ""))
    print(f"report: {run_dir / 'report.md'}\nchat with it: llmos chat --model {run_dir}\n"
          f"sample the base model: llmos generate --model {run_dir / 'base'} --prompt 'The'")
    return run_dir


class RandomTokens:
    """Batches of random token ids with the loader interface: throughput does not depend on the text,
    so a dry run can time steps before any corpus exists."""

    def __init__(self, vocab_size: int, batch_size: int, seq_len: int):
        self.vocab_size, self.batch_size, self.seq_len = vocab_size, batch_size, seq_len
        self.generator = torch.Generator().manual_seed(0)

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        rows = torch.randint(self.vocab_size, (self.batch_size, self.seq_len + 1), generator=self.generator)
        return rows[:, :-1], rows[:, 1:]

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def dry_run(preset: str, steps: int = 0, minutes: float = 0.0) -> dict:
    """The machine, each stage's budget as the speedrun would start it, and a pretraining plan from
    steps timed here on random tokens (compilation included). Nothing is written."""
    from llmos.model import Transformer
    from llmos.train.loop import Trainer
    chosen = resolve_preset(preset, steps, minutes)
    ctx = Context(preset, chosen, Path("."), Path("."), {})
    pretrain_minutes = ctx.minutes_for("pretrain")
    train = replace(chosen.train, minutes=pretrain_minutes)
    model = Transformer(chosen.model.build(chosen.vocab_size, train.seq_len))
    trainer = Trainer(model, train, Path("."), RandomTokens(chosen.vocab_size, train.batch_size, train.seq_len),
                      eval_tokens=train.eval_tokens)
    if chosen.minutes:
        rl_s = chosen.rl_minutes * 60 if chosen.rl_args else 0.0
        left = chosen.minutes * 60 - pretrain_minutes * 60 - sum(chosen.tail_s.values()) - rl_s  # every tail is later
        print(f"speedrun {preset}: budget {chosen.minutes:g} minutes: pretraining {pretrain_minutes:.1f}, then "
              f"fine-tuning whatever is left (about {left / 60:.1f})"
              + (f", RL {chosen.rl_minutes:g}" if rl_s else "") + ", allowances "
              + ", ".join(f"{k} {v:.0f} s" for k, v in chosen.tail_s.items())
              + "; the data and tokenizer stages come first and are charged as they take")
    return trainer.dry_run(f"the {preset} speedrun's pretraining ({model.num_params():,} parameters)")

"""The speedrun: the whole pipeline as a sequence of stages, ending in a run directory with a report.

    llmos speedrun --preset cpu        # ~20 minutes on a 2-core laptop CPU (`make demo`)

Stages: data (prepare the default corpus) -> tokenizer -> pretrain -> sample -> sft (fine-tune the
base on the default conversation mixture) -> eval (base vs SFT on held-out tasks) -> report. Each stage
records its result and wall time in `stages.json`; rerunning the same command skips finished
stages and resumes training from its latest checkpoint (`--fresh` starts over). Later stages
(RLHF, tools, ...) append to STAGES.
"""
from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

from llmos.common import LlmosError, llmos_home, write_json
from llmos.eval.assistant import EvalArgs
from llmos.report import markdown_table, write_report
from llmos.train.loop import TrainConfig
from llmos.train.pretrain import DataArgs, ModelArgs
from llmos.train.sft import SFTArgs, sft_train_config


@dataclass
class Preset:
    vocab_size: int
    model: ModelArgs
    train: TrainConfig
    sft: TrainConfig = field(default_factory=sft_train_config)
    sft_args: SFTArgs = field(default_factory=lambda: SFTArgs(mix="identity=4,chitchat=0.25", epochs=2.0))
    sample_prompts: list[str] = field(default_factory=lambda: ["The", "In 1905,", "def main():", "KING HENRY:"])
    sample_tokens: int = 96
    eval: EvalArgs = field(default_factory=EvalArgs)


PRESETS = {
    # 4.3M params, 5.3M tokens: ~12 minutes of compiled bf16 pretraining on 2 cores, then ~6 of SFT.
    "cpu": Preset(4096, ModelArgs(depth=4),
                  TrainConfig(steps=1300, batch_size=16, seq_len=256, warmup_steps=100, eval_every=325,
                              eval_tokens=131072, sample_every=650, ckpt_every=250, log_every=10),
                  sft=sft_train_config(lr=3e-3)),
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


@dataclass
class Context:
    preset_name: str
    preset: Preset
    run_dir: Path
    data_dir: Path
    status: dict

    def done(self, stage: str) -> dict:
        return self.status.get(stage, {})


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
    result = pretrain(ctx.preset.model, ctx.preset.train,
                      DataArgs(data=str(ctx.data_dir), tokenizer=str(ctx.run_dir / "tokenizer.json"),
                               out=str(ctx.run_dir / "base")), resume=resume)
    if result["interrupted"]:
        raise LlmosError(f"pretraining was interrupted at step {result['step']}: run the speedrun again to resume")
    return result


def stage_sample(ctx: Context) -> dict:
    from llmos.engine import load_model
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
    result = sft(args, replace(ctx.preset.sft), resume=resume)
    if result["interrupted"]:
        raise LlmosError(f"fine-tuning was interrupted at step {result['step']}: run the speedrun again to resume")
    return result


def stage_eval(ctx: Context) -> dict:
    from llmos.eval.assistant import evaluate_models
    _, _, results = evaluate_models({"base": str(ctx.run_dir / "base"), "sft": str(ctx.run_dir / "sft")},
                                    ctx.run_dir / "sft" / "data", ctx.preset.eval, out=ctx.run_dir / "eval.json")
    return {name: {k: v for k, v in r.items() if k != "items"} for name, r in results.items()}


def stage_report(ctx: Context) -> dict:
    base = ctx.run_dir / "base"
    config = json.loads((base / "config.json").read_text())
    metrics = [json.loads(line) for line in (base / "metrics.jsonl").read_text().splitlines() if line]
    manifest = json.loads((ctx.data_dir / "manifest.json").read_text())
    evals = [m for m in metrics if "val_loss" in m]
    train = [m for m in metrics if "loss" in m]
    steady = train[len(train) // 4:]  # past the compile warm-up
    median = lambda key: sorted(m[key] for m in steady)[len(steady) // 2]
    timings = [[name, f"{info['seconds']:.0f}"] for name, info in ctx.status.items()]
    timings.append(["total so far", f"{sum(info['seconds'] for info in ctx.status.values()):.0f}"])
    pre = ctx.done("pretrain")
    sections = [
        ("Result", f"Held-out **{pre['val_bpb']:.4f} bits per byte** (validation loss {pre['val_loss']:.4f} "
                   f"nats/token) after {pre['step']} steps; model `{base / 'model.llmos'}`.\n\n"
                   "![loss curve](base/loss.png)"),
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
                       "matmul peak in the training dtype, measured at the start of training)."
                       if steady else "No training steps logged."),
        ("Samples", "\n\n".join(f"```\n{s['text']}\n```" for s in ctx.done("sample")["samples"])),
        ("Assistant (SFT)", sft_section(ctx)),
        ("Timings (seconds)", markdown_table(["stage", "seconds"], timings)),
    ]
    write_report(ctx.run_dir / "report.md", f"llmos speedrun ({ctx.preset_name})", sections)
    shutil.copy(base / "loss.png", ctx.run_dir / "loss.png")
    return {"report": str(ctx.run_dir / "report.md")}


def sft_section(ctx: Context) -> str:
    """The fine-tuning figures: data, loss before/after, the evaluation table base vs SFT, sample chats."""
    from llmos.eval.assistant import results_table
    sft_dir = ctx.run_dir / "sft"
    config = json.loads((sft_dir / "config.json").read_text())
    mixture = json.loads((sft_dir / "data" / "manifest.json").read_text())
    losses = [json.loads(line)["val_loss"] for line in (sft_dir / "metrics.jsonl").read_text().splitlines()
              if line and "val_loss" in line]
    evaluated = json.loads((ctx.run_dir / "eval.json").read_text())
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


STAGES: list[tuple[str, Callable[[Context], dict]]] = [
    ("data", stage_data),
    ("tokenizer", stage_tokenizer),
    ("pretrain", stage_pretrain),
    ("sample", stage_sample),
    ("sft", stage_sft),
    ("eval", stage_eval),
    ("report", stage_report),
]


def run_speedrun(preset: str, out: str = "", data: str = "", steps: int = 0, fresh: bool = False) -> Path:
    if preset not in PRESETS:
        raise LlmosError(f"unknown preset {preset!r}: choose one of {', '.join(PRESETS)}")
    chosen = PRESETS[preset]
    if steps:
        chosen = replace(chosen, train=replace(chosen.train, steps=steps))
    run_dir = Path(out).expanduser() if out else llmos_home() / "runs" / f"speedrun-{preset}"
    if fresh and run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    status_path = run_dir / "stages.json"
    status = json.loads(status_path.read_text()) if status_path.is_file() else {}
    from llmos.data.corpus import default_corpus_dir
    ctx = Context(preset, chosen, run_dir, Path(data).expanduser() if data else default_corpus_dir(), status)
    if data:
        status.setdefault("data", {"corpus": str(ctx.data_dir), "seconds": 0.0})
    write_json(run_dir / "preset.json", {"preset": preset, **asdict(chosen)})
    for name, fn in STAGES:
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
    print(f"\nheld-out bits per byte: {pre['val_bpb']:.4f} (val loss {pre['val_loss']:.4f})")
    print(f"report: {run_dir / 'report.md'}\nchat with it: llmos chat --model {run_dir}\n"
          f"sample the base model: llmos generate --model {run_dir / 'base'} --prompt 'The'")
    return run_dir

"""The one command line: `llmos VERB [options]`; `llmos VERB --help` lists each verb's options.

    llmos data list | prepare [--from PATH|GLOB ...]   corpus sources and the prepared corpus
    llmos tokenizer train | encode | stats              byte-level BPE
    llmos pretrain [--depth 4 --steps 2000 ...]         train a base model (torchrun for DDP)
    llmos generate --model RUN --prompt "..."           sample from a model, streaming
    llmos chat --model RUN|NAME [-p "..."] [--tools T]  talk with a model in the terminal (tools: calculator, ...)
    llmos serve --model RUN|NAME [--port 8000]          OpenAI-compatible server and web chat page
    llmos speedrun --preset cpu                         data -> tokenizer -> pretrain -> sample -> report
    llmos eval --model M --data MIX | --loss FILE       score an assistant; perplexity on a text file
    llmos export --model RUN --format gguf|hf|llmos     for llama.cpp, Hugging Face, or params file + run.py
    llmos import model.gguf|HF_DIR --out m.llmos        a foreign Llama model into a params file
    llmos compress FILE | decompress FILE.llz           the model as a lossless compressor
    llmos label --model M [--model M2]                  a web page to compare two answers (label export|stats)
    llmos prefs --model M --out PAIRS                   preference pairs built by code (+ collected labels)
    llmos rm --model M --pairs PAIRS                    a reward model (Bradley-Terry) with held-out accuracy
    llmos dpo --model SFT --pairs PAIRS                 direct preference optimization against a frozen reference
    llmos rl --model SFT --task skills                  RL on verifiable rewards (group-relative policy gradient)
    llmos arena --models A B C --task T --judge J       pairwise comparisons -> Bradley-Terry ratings
    llmos tools [call NAME ARGS]                        the tools (calculator, python, search, files, speech, OCR); run one
    llmos index [FOLDER]                                the search tool's store (default: the Wikipedia leads)
    llmos mcp [--tools NAMES]                           the tools as an MCP server (stdio)
    llmos think --model M [--strategy vote -k 16] "..."  more thinking for a better answer (vote, best-of-n, budget)
    llmos os --model M [--session NAME] [--web PORT]    the LLM OS: paged memory, tools, speech, OCR (terminal or web)
    llmos os-bench --model M [--budget 1024]            the memory benchmark: paging against dropping old turns
    llmos redteam --target M|URL --suite jailbreak      attacks, judged: ASR per probe with intervals (--fail-above);
                                                        --suite injection|multiturn|gcg, --defence guard|datamark|dual...
    llmos gcg --model M --out suffix.json               a universal adversarial suffix (greedy coordinate gradient)
    llmos poison-scan RUN|FILE [--model M]              find a backdoor's poison in training data (sft --poison)

Options of the dataclass configs (model, training) are generated from their fields, so every
field is overridable (`--lr 1e-3`, `--no-compile`). A user error (LlmosError) prints one clear
line and exits with status 2; no traceback.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib
import inspect
import json
import re
import sys
import time
from pathlib import Path

from llmos.common import LlmosError, os_error_message


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, except empty ones (their help says what empty means)."""

    def _get_help_string(self, action):
        return action.help if action.default in ("", None) else super()._get_help_string(action)


def field_comments(cls) -> dict[str, str]:
    """The `# comment` after each field in a dataclass's source: its --help text."""
    found = re.findall(r"^\s+(\w+):[^#\n]*#\s*(.+)$", inspect.getsource(cls), flags=re.MULTILINE)
    return {name: text.strip() for name, text in found}


def add_dataclass_args(parser: argparse.ArgumentParser, cls, title: str, defaults=None) -> None:
    """One flag per dataclass field, helped by its comment; `defaults` (an instance) overrides the
    class's own defaults."""
    group, comments = parser.add_argument_group(title), field_comments(cls)
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        default = getattr(defaults, f.name) if defaults is not None else f.default
        text = comments.get(f.name, " ")  # a help string, even blank, makes argparse print the default
        if isinstance(default, bool):
            group.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=default, help=text)
        else:
            group.add_argument(flag, dest=f.name, type=type(default), default=default, metavar=f.name.upper(),
                               help=text.replace("%", "%%"))


def dataclass_from_args(cls, args: argparse.Namespace):
    return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})


def add_sampling_args(parser: argparse.ArgumentParser, max_tokens_help: str, temperature: float, top_k: int) -> None:
    parser.add_argument("--max-tokens", type=int, default=None, help=max_tokens_help)
    parser.add_argument("--temperature", type=float, default=temperature, help="0: greedy")
    parser.add_argument("--top-k", type=int, default=top_k, help="sample among the k likeliest tokens (0: all)")
    parser.add_argument("--top-p", type=float, default=0.95, help="sample within the smallest set of this probability (1: off)")
    parser.add_argument("--seed", type=int, default=None, help="makes sampling reproducible (chat: every reply)")


# Verb groups that live in a module of their own (llmos/cli/GROUP.py, with add_parsers(verbs, fmt)):
# the comparison and RLHF stages, the tools, test-time thinking and the LLM OS (agent.py).
VERB_GROUPS = ("rl", "label", "prefs", "arena", "tools", "think", "agent", "redteam", "poison")
GENERATE_TOKENS = 200  # `llmos generate`'s default length, when the context has room for it


# ----- verbs -----

def cmd_data_list(args):
    from llmos.data.corpus import list_sources
    from llmos.report import markdown_table
    rows = list_sources()
    print(markdown_table(["name", "fetcher", "package", "license", "available", "description"],
                         [[r["name"], r["fetcher"], r["package"], r["license"], r["available"], r["description"]] for r in rows]))


def cmd_data_prepare(args):
    from llmos.data.corpus import default_corpus_dir, prepare
    out = Path(args.out).expanduser() if args.out else default_corpus_dir()
    sources = args.sources.split(",") if args.sources else None
    t = time.time()
    manifest = prepare(out, sources=sources, from_patterns=args.from_patterns, val_fraction=args.val_fraction,
                       seed=args.seed, strict=args.strict)
    print(f"corpus in {out}: {manifest['train']['documents']:,} train / {manifest['val']['documents']:,} val "
          f"documents, {manifest['bytes'] / 1e6:.1f} MB ({time.time() - t:.0f} s)")


def cmd_tokenizer_train(args):
    from llmos.data.corpus import default_corpus_dir, load_texts
    from llmos.tokenizer import Tokenizer
    data = Path(args.data).expanduser() if args.data else default_corpus_dir()
    out = Path(args.out).expanduser() if args.out else data / "tokenizer.json"
    t = time.time()
    tok = Tokenizer.train(load_texts(data, "train"), vocab_size=args.vocab_size)
    tok.save(out)
    print(f"tokenizer with {tok.vocab_size} tokens -> {out} ({time.time() - t:.1f} s)")


def cmd_tokenizer_encode(args):
    from llmos.tokenizer import Tokenizer
    tok = Tokenizer.load(args.tokenizer)
    text = args.text if args.text is not None else sys.stdin.read()
    ids = tok.encode(text)
    print(json.dumps(ids) if not args.pieces else json.dumps([tok.decode([i]) for i in ids], ensure_ascii=False))


def cmd_tokenizer_stats(args):
    from llmos.data.corpus import default_corpus_dir, load_texts
    from llmos.tokenizer import Tokenizer, bytes_per_token
    data = Path(args.data).expanduser() if args.data else default_corpus_dir()
    tok = Tokenizer.load(args.tokenizer or data / "tokenizer.json")
    stats = bytes_per_token(tok, load_texts(data, args.split))
    print(f"{args.split}: {stats['bytes']:,} bytes -> {stats['tokens']:,} tokens, "
          f"{stats['bytes_per_token']:.3f} bytes/token (vocab {tok.vocab_size})")


def cmd_pretrain(args):
    from llmos.train.loop import TrainConfig
    from llmos.train.pretrain import DataArgs, ModelArgs, pretrain
    result = pretrain(dataclass_from_args(ModelArgs, args), dataclass_from_args(TrainConfig, args),
                      dataclass_from_args(DataArgs, args), resume=args.resume, dry_run=args.dry_run)
    if "val_bpb" in result:
        print(f"done: step {result['step']}, validation loss {result['val_loss']:.4f}, "
              f"{result['val_bpb']:.4f} bits/byte; run in {result['run_dir']}")


def cmd_sft(args):
    from llmos.train.loop import TrainConfig
    from llmos.train.sft import SFTArgs, sft
    result = sft(dataclass_from_args(SFTArgs, args), dataclass_from_args(TrainConfig, args), resume=args.resume,
                 dry_run=args.dry_run)
    if not result.get("dry_run") and not result["interrupted"]:
        loss = f", held-out conversation loss {result['val_loss']:.4f}" if "val_loss" in result else ""
        print(f"done: step {result['step']} on {result['conversations']:,} conversations{loss}; "
              f"chat with it: llmos chat --model {result['run_dir']}")


EVAL_SHARED = {  # flags of both `llmos eval` modes, with a default per mode
    "max_tokens": "--data: reply length limit (default: 96); --loss: tokens scored at most (default: all)",
    "batch_size": "--data: replies generated at once (default: 32); --loss: windows scored at once "
                  "(default: 8, fewer when their logits would pass 1 GiB)",
}
EVAL_LOSS_ONLY = ("weights", "seq_len", "stride")


def cmd_eval(args):
    """Two modes of one verb: --data scores an assistant, --loss scores any model on a text file. A
    flag of the other mode is an error rather than silently ignored."""
    from llmos.eval.assistant import EvalArgs

    def given(names):
        return ["--" + n.replace("_", "-") for n in names if getattr(args, n) not in (None, "")]

    if args.tasks == "tools":
        return eval_tools(args)
    if args.tasks:
        return eval_compute(args)
    if args.loss:
        wrong = given(["base"] + [f.name for f in dataclasses.fields(EvalArgs) if f.name not in EVAL_SHARED])
        if wrong:
            raise LlmosError(f"{', '.join(wrong)}: options of --data (assistant scores), not of --loss: drop them")
        return eval_loss(args)
    wrong = given(EVAL_LOSS_ONLY)
    if wrong:
        raise LlmosError(f"{', '.join(wrong)}: options of --loss (a text's perplexity), not of --data: drop them")
    from llmos.eval.assistant import evaluate_models
    from llmos.report import markdown_table
    eval_args = EvalArgs(**{f.name: getattr(args, f.name) for f in dataclasses.fields(EvalArgs)
                            if getattr(args, f.name) is not None})  # a flag not given keeps EvalArgs' default
    models = {"base": args.base, "model": args.model} if args.base else {"model": args.model}
    headers, rows, _ = evaluate_models(models, args.data, eval_args, out=args.out)
    print(markdown_table(headers, rows))
    if args.out:
        print(f"results and every reply: {args.out}")


def eval_tools(args):
    from llmos.common import write_json
    from llmos.eval.tools import ToolEvalArgs, evaluate_tools, tools_table
    from llmos.load import load_model
    from llmos.report import markdown_table
    tool_args = ToolEvalArgs(**{k: v for k, v in (("max_tokens", args.max_tokens), ("batch_size", args.batch_size))
                                if v is not None})
    refs = {"base": args.base, "model": args.model} if args.base else {"model": args.model}
    results = {}
    for name, ref in refs.items():
        model, tok, info = load_model(ref)
        results[name] = evaluate_tools(model, tok, info, tool_args, label=name)
    print(markdown_table(*tools_table(results)))
    if args.out:
        write_json(args.out, {name: {**r, "model": refs[name]} for name, r in results.items()})
        print(f"results and every reply: {args.out}")


def eval_compute(args):
    from llmos.common import write_json
    from llmos.eval.compute import ComputeArgs, compute_curves, curves_table, plot_curves
    from llmos.eval.tasks import get_task
    from llmos.load import load_model
    from llmos.report import markdown_table
    task = get_task(args.tasks)
    fields = [f.name for f in dataclasses.fields(ComputeArgs)]
    compute_args = ComputeArgs(**{k: getattr(args, k) for k in fields if getattr(args, k, None) is not None})
    model, tok, info = load_model(args.model)
    result = compute_curves(model, tok, info, task, compute_args)
    print(markdown_table(*curves_table(result)))
    if args.out:
        out = Path(args.out)
        write_json(out, {**result, "model": args.model})
        png = plot_curves(result, out.with_suffix(".png"))
        print(f"curves: {out} and {png}")


def eval_loss(args):
    from llmos.common import write_json
    from llmos.eval.loss import evaluate_loss
    r = evaluate_loss(args.model, args.loss, weights=args.weights, seq_len=args.seq_len, stride=args.stride,
                      max_tokens=args.max_tokens, batch_size=args.batch_size, progress=True)
    print(json.dumps(r))
    if args.out:
        write_json(args.out, r)
    print(f"{r['file']}: {r['tokens']:,} tokens, {r['bytes']:,} bytes; loss {r['loss']:.4f} nats/token, "
          f"perplexity {r['perplexity']:.3f}, {r['bits_per_byte']:.4f} bits/byte "
          f"[{r['weights']}, windows of {r['seq_len']} by {r['stride']}, {r['seconds']:.1f} s]", file=sys.stderr)


def cmd_generate(args):
    from llmos.infer.engine import generate, stream_text
    from llmos.infer.sampling import SamplingParams
    from llmos.infer.speculate import PromptLookup
    from llmos.load import load_model
    model, tok, _ = load_model(args.model, weights=args.weights, compile=args.compile)
    ids = tok.encode(args.prompt, bos=True)
    max_tokens = args.max_tokens if args.max_tokens is not None else \
        max(1, min(GENERATE_TOKENS, model.cfg.max_seq_len - len(ids)))
    t = time.time()
    n = 0

    def counted():
        nonlocal n
        params = SamplingParams(max_tokens=max_tokens, temperature=args.temperature, top_k=args.top_k,
                                top_p=args.top_p, seed=args.seed, stop_ids=list(tok.stop_ids))
        speculator = PromptLookup() if args.speculate == "lookup" else None
        for token_id in generate(model, ids, params, speculator=speculator, compile=args.compile):
            n += 1
            yield token_id

    print(args.prompt, end="", flush=True)
    for piece in stream_text(tok, counted()):
        print(piece, end="", flush=True)
    print()  # the text ends with a newline on stdout; the figures go to stderr
    print(f"[{n} tokens, {n / max(time.time() - t, 1e-9):.1f} tokens/s]", file=sys.stderr)


def cmd_serve(args):
    from llmos.serve.server import run_server
    run_server(args)


def cmd_chat(args):
    from llmos.infer.sampling import SamplingParams
    from llmos.terminal_chat import run_chat
    toolbox = None
    if args.tools:
        from llmos.cli.tools import ask, tool_config
        from llmos.tools.registry import Toolbox
        toolbox = Toolbox.build(args.tools, tool_config(args), confirm=ask)
    run_chat(args.model, args.system, SamplingParams(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                                                     seed=args.seed), args.max_tokens, prompt=args.prompt,
             toolbox=toolbox)


def cmd_export(args):
    from llmos.interop.convert import export_model
    t = time.time()
    for path in export_model(args.model, args.format, args.out, dtype=args.dtype):
        print(f"wrote {path}")
    print(f"[{time.time() - t:.1f} s]", file=sys.stderr)


def cmd_import(args):
    from llmos.interop.convert import import_model
    t = time.time()
    path = import_model(args.src, args.out, dtype=args.dtype)
    print(f"wrote {path} ({time.time() - t:.1f} s)")


def cmd_compress(args):
    from llmos.compress import compress_file
    compress_file(args.input, args.output, args.model, chunk_tokens=args.chunk_tokens, threads=args.threads)


def cmd_decompress(args):
    from llmos.compress import decompress_file
    decompress_file(args.input, args.output, args.model)


def cmd_speedrun(args):
    from llmos.speedrun import dry_run, run_speedrun
    if args.dry_run:
        dry_run(args.preset, steps=args.steps, minutes=args.minutes)
        return
    run_speedrun(args.preset, out=args.out, data=args.data, steps=args.steps, fresh=args.fresh, minutes=args.minutes)


def cmd_scaling_sweep(args):
    from dataclasses import replace

    from llmos.scaling import DEFAULT_GRID, QUICK_GRID, parse_flops, parse_sizes, sweep
    from llmos.train.loop import TrainConfig
    grid = QUICK_GRID if args.quick else DEFAULT_GRID
    grid = replace(grid, flops=parse_flops(args.flops) if args.flops else grid.flops,
                   sizes=parse_sizes(args.sizes) if args.sizes else grid.sizes,
                   eval_tokens=args.eval_tokens or grid.eval_tokens)
    train = TrainConfig(batch_size=args.batch_size, seq_len=args.seq_len, compile=args.compile, device=args.device)
    result = sweep(args.out, grid, data=args.data, tokenizer=args.tokenizer, vocab_size=args.vocab_size, train=train)
    print(f"sweep: {len(result['trained'])} points trained, {len(result['done_before'])} done earlier, "
          f"{len(result['skipped'])} skipped; next: llmos scaling fit" + (f" --out {args.out}" if args.out else ""))


def cmd_scaling_fit(args):
    from llmos.scaling import default_out, fit
    result = fit(args.out, samples=args.bootstrap)
    law = result["law"]
    print(f"L(N, D) = {law['E']:.3f} + {law['A']:.4g}/N^{law['alpha']:.3f} + {law['B']:.4g}/D^{law['beta']:.3f} "
          f"from {result['points']} points; N_opt ∝ C^{result['a']:.3f}, D_opt ∝ C^{result['b']:.3f}")
    print(f"report: {Path(args.out or default_out()).expanduser() / 'scaling_report.md'}")


def cmd_scaling_predict(args):
    from llmos.scaling import format_prediction, parse_flops, predict
    for flops in parse_flops(args.flops):
        print(format_prediction(predict(args.out, flops)))


def cmd_scaling_check(args):
    from llmos.scaling import check
    result = check(args.out, factor=args.factor)
    print(f"check at C={result['flops']:.3g} (size {result['size']}): predicted loss {result['predicted_loss']:.4f}, "
          f"actual {result['val_loss']:.4f} ({result['rel_error']:+.2%})")


def add_inference_args(p: argparse.ArgumentParser, speculate_default: str = "none") -> None:
    """How the engine runs a model (llmos/quant.py, llmos/infer/speculate.py)."""
    p.add_argument("--weights", choices=["f32", "f16", "int8", "int4", "w8a8"],
                   help="run the matrices in these weights (default: as the model file stores them)")
    p.add_argument("--speculate", choices=["lookup", "none"], default=speculate_default,
                   help="speculative decoding: lookup drafts tokens by copying from the context "
                        f"(default: {speculate_default})")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the decode step (f32 and int4 weights; compiling costs ~10-60 s per "
                        "shape up front, cached on disk)")


def build_parser() -> argparse.ArgumentParser:
    from llmos.train.loop import TrainConfig
    from llmos.train.pretrain import DataArgs, ModelArgs
    from llmos.train.sft import SFTArgs, sft_train_config
    from llmos.eval.assistant import EvalArgs
    from llmos.eval.compute import ComputeArgs

    fmt = HelpFormatter
    parser = argparse.ArgumentParser(prog="llmos", description="A hackable LLM stack: data to chat.")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    data = verbs.add_parser("data", help="corpus sources and preparation").add_subparsers(dest="action", required=True)
    p = data.add_parser("list", help="the catalog of corpus sources, with licenses", formatter_class=fmt)
    p.set_defaults(func=cmd_data_list)
    p = data.add_parser("prepare", help="fetch, clean, deduplicate and split a corpus", formatter_class=fmt)
    p.add_argument("--from", dest="from_patterns", action="append", metavar="PATH|GLOB",
                   help="your own files (.txt .md .jsonl .parquet) instead of the catalog; repeatable")
    p.add_argument("--sources", default="", help="comma-separated catalog sources (default: all available)")
    p.add_argument("--out", default="", help="corpus directory (default: LLMOS_HOME/data/default)")
    p.add_argument("--val-fraction", type=float, default=0.005, help="share of documents held out for validation")
    p.add_argument("--seed", type=int, default=0, help="seed of the document split")
    p.add_argument("--strict", action="store_true",
                   help="stop at the first bad line or file of --from input (default: report it and skip it)")
    p.set_defaults(func=cmd_data_prepare)

    tokenizer = verbs.add_parser("tokenizer", help="train and use the BPE tokenizer").add_subparsers(dest="action", required=True)
    p = tokenizer.add_parser("train", help="train byte-level BPE on a prepared corpus", formatter_class=fmt)
    p.add_argument("--data", default="", help="prepared corpus directory (default: the default corpus)")
    p.add_argument("--vocab-size", type=int, default=4096, help="tokens in the vocabulary, special tokens included")
    p.add_argument("--out", default="", help="output tokenizer.json (default: DATA/tokenizer.json)")
    p.set_defaults(func=cmd_tokenizer_train)
    p = tokenizer.add_parser("encode", help="print the token ids of a text", formatter_class=fmt)
    p.add_argument("--tokenizer", required=True, help="a tokenizer.json")
    p.add_argument("text", nargs="?", help="text to encode (default: stdin)")
    p.add_argument("--pieces", action="store_true", help="print token strings instead of ids")
    p.set_defaults(func=cmd_tokenizer_encode)
    p = tokenizer.add_parser("stats", help="bytes per token on a split", formatter_class=fmt)
    p.add_argument("--data", default="", help="prepared corpus directory (default: the default corpus)")
    p.add_argument("--tokenizer", default="", help="default: DATA/tokenizer.json")
    p.add_argument("--split", default="val", choices=["train", "val"], help="which split to measure")
    p.set_defaults(func=cmd_tokenizer_stats)

    p = verbs.add_parser("pretrain", help="pretrain a base model", formatter_class=fmt)
    add_dataclass_args(p, ModelArgs, "model")
    add_dataclass_args(p, TrainConfig, "training")
    add_dataclass_args(p, DataArgs, "data and output")
    p.add_argument("--resume", action="store_true", help="continue from the run directory's latest checkpoint")
    p.add_argument("--dry-run", action="store_true",
                   help="time a few steps here (compilation included), print the plan, write nothing")
    p.set_defaults(func=cmd_pretrain)

    p = verbs.add_parser("sft", help="fine-tune a model on conversations (full or LoRA)", formatter_class=fmt)
    add_dataclass_args(p, SFTArgs, "fine-tuning")
    add_dataclass_args(p, TrainConfig, "training", defaults=sft_train_config())
    p.add_argument("--resume", action="store_true", help="continue from the run directory's latest checkpoint")
    p.add_argument("--dry-run", action="store_true",
                   help="time a few steps here (compilation included), print the plan, write nothing under --out")
    p.set_defaults(func=cmd_sft)

    p = verbs.add_parser("eval", help="score an assistant on held-out conversations and tasks (vs its base), or any "
                                      "model's perplexity and bits per byte on a text file", formatter_class=fmt)
    p.add_argument("--model", required=True, help="run directory, .llmos params file, .pt checkpoint or named model")
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--data", help="score an assistant on a conversation mixture directory (its eval.jsonl), "
                                     "e.g. RUN/sft/data")
    mode.add_argument("--loss", metavar="FILE", help="score the model on a UTF-8 text file: perplexity and bits "
                                                     "per byte (llmos/eval/loss.py)")
    mode.add_argument("--tasks", help="tools: held-out arithmetic and facts with and without the calculator and "
                                      "search (llmos/eval/tools.py); or a checked task (skills[:KINDS], gsm8k, "
                                      "game24, rg:NAME) with --strategies: accuracy against test-time compute "
                                      "(llmos/eval/compute.py)")
    p.add_argument("--out", default="", help="write the scores (--data: and every reply) to this JSON file")
    p.add_argument("--max-tokens", type=int, default=None, metavar="N", help=EVAL_SHARED["max_tokens"])
    p.add_argument("--batch-size", type=int, default=None, metavar="N", help=EVAL_SHARED["batch_size"])
    group, comments = p.add_argument_group("accuracy against compute (--tasks TASK)"), field_comments(ComputeArgs)
    for f in dataclasses.fields(ComputeArgs):
        if f.name != "max_tokens":
            group.add_argument("--" + f.name.replace("_", "-"), dest=f.name, type=type(f.default), default=None,
                               help=comments.get(f.name, "") + f" (default: {f.default})")
    group, comments = p.add_argument_group("assistant scores (--data)"), field_comments(EvalArgs)
    group.add_argument("--base", default="", help="a second model to show beside it (e.g. the base before SFT)")
    for f in dataclasses.fields(EvalArgs):  # default None: a flag given with --loss is then an error
        if f.name not in EVAL_SHARED:
            group.add_argument("--" + f.name.replace("_", "-"), dest=f.name, type=type(f.default), default=None,
                               metavar=f.name.upper(), help=f"{comments[f.name]} (default: {f.default})")
    group = p.add_argument_group("text loss (--loss)")
    group.add_argument("--weights", choices=["f32", "f16", "int8", "int4", "w8a8"], default=None,
                       help="run the matrices in these weights (default: as the model file stores them)")
    group.add_argument("--seq-len", type=int, default=None,
                       help="tokens per window (default: the model's context)")
    group.add_argument("--stride", type=int, default=None,
                       help="new tokens scored per window after the first (default: half the window; "
                            "as long as the window: non-overlapping windows)")
    p.set_defaults(func=cmd_eval)

    p = verbs.add_parser("generate", help="sample text from a model", formatter_class=fmt)
    p.add_argument("--model", required=True, help="run directory, .llmos params file, .pt checkpoint or named model")
    p.add_argument("--prompt", default="", help="text to continue (empty: start from bos)")
    add_sampling_args(p, f"tokens to generate at most (default: {GENERATE_TOKENS}, or what the model's "
                         "context leaves after the prompt if less)", temperature=0.8, top_k=0)
    add_inference_args(p)
    p.set_defaults(func=cmd_generate)

    p = verbs.add_parser("serve", help="an OpenAI-compatible server with a chat page (continuous batching)",
                         formatter_class=fmt)
    from llmos.serve.server import add_serve_args
    add_serve_args(p)
    p.set_defaults(func=cmd_serve)

    p = verbs.add_parser("chat", help="talk with a model in the terminal (/help inside lists the commands)",
                         formatter_class=fmt)
    p.add_argument("--model", required=True, help="run directory, .llmos params file, .pt checkpoint or named model")
    p.add_argument("--system", default="", help="system prompt")
    p.add_argument("-p", "--prompt", default=None, metavar="TEXT",
                   help="answer TEXT once (- reads it from stdin), print only the reply and exit")
    add_sampling_args(p, "tokens per reply at most (default: what the model's context leaves; the oldest "
                         "exchanges drop to keep a quarter of it, at most 512, for the reply)",
                      temperature=0.7, top_k=50)
    p.add_argument("--tools", default="", metavar="NAMES",
                   help="tools the model may call, comma-separated (calculator, python, search, open, read_file, "
                        "list_files, write_file, speak, read_image, or 'all'); side effects ask you first")
    from llmos.cli.tools import tool_config_args
    tool_config_args(p)
    p.set_defaults(func=cmd_chat)

    p = verbs.add_parser("export", help="write a model for llama.cpp (gguf), Hugging Face (hf) or as params file + run.py",
                         formatter_class=fmt)
    p.add_argument("--model", required=True, help="run directory, .llmos params file, .pt checkpoint or named model")
    p.add_argument("--format", required=True, choices=["llmos", "gguf", "hf"],
                   help="llmos: params file + run.py; gguf: llama.cpp / Ollama; hf: a transformers directory")
    p.add_argument("--dtype", default="f32", choices=["f32", "f16", "bf16", "int8", "int4", "q8_0", "q4_0", "q4_1"],
                   help="llmos: f32|bf16|f16|int8|int4 (matrices quantized; run.py expands them); "
                        "gguf: f32|f16|q8_0|q4_0|q4_1; hf: f32|f16|bf16")
    p.add_argument("--out", required=True, help="gguf: the .gguf file; hf: a directory; llmos: a directory or .llmos file")
    p.set_defaults(func=cmd_export)

    p = verbs.add_parser("import", help="turn a GGUF file, a Hugging Face Llama directory or a named model into a "
                                        "params file", formatter_class=fmt)
    p.add_argument("src", help="a .gguf file, a Hugging Face model directory (config.json, safetensors, "
                               "tokenizer.json) or a named model (smollm2-135m-instruct)")
    p.add_argument("--out", required=True, help="the params file to write (MODEL.llmos)")
    p.add_argument("--dtype", default="f32", choices=["f32", "bf16", "keep"],
                   help="weights of the params file: f32|bf16 expand every weight; keep holds a GGUF's "
                        "Q4_0/Q4_1 matrices as int4 exactly, Q8_0 as int8 (per row), F16 as f16, and "
                        "expands other types (K-quants) to f32")
    p.set_defaults(func=cmd_import)

    p = verbs.add_parser("compress", help="compress a file losslessly with a model's next-token probabilities "
                                          "(llmos/compress.py)", formatter_class=fmt)
    p.add_argument("input", metavar="FILE", help="any file, text or binary (- reads stdin)")
    p.add_argument("-o", "--output", default=None, metavar="OUT",
                   help="the .llz file, replaced if it exists (default: FILE.llz; stdout for stdin; - is stdout)")
    p.add_argument("--model", default=None, help="run directory, .llmos params file, .pt checkpoint or named model "
                                                  "(default: LLMOS_HOME/runs/speedrun-cpu/base)")
    p.add_argument("--chunk-tokens", type=int, default=None,
                   help="tokens per independently coded chunk (default: the model's context, at most 2048)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads while coding, recorded in the file: decompressing uses the same "
                        "(default: torch's current count)")
    p.set_defaults(func=cmd_compress)

    p = verbs.add_parser("decompress", help="restore a file that llmos compress wrote, exactly", formatter_class=fmt)
    p.add_argument("input", metavar="FILE.llz", help="a file of llmos compress (- reads stdin)")
    p.add_argument("-o", "--output", default=None, metavar="OUT",
                   help="the restored file, replaced if it exists (default: FILE without .llz; stdout for "
                        "stdin; - is stdout)")
    p.add_argument("--model", default=None, help="the model that compressed it (default: the one its header names)")
    p.set_defaults(func=cmd_decompress)

    p = verbs.add_parser("speedrun", help="the whole pipeline in one go, with a report", formatter_class=fmt)
    p.add_argument("--preset", default="cpu", help="cpu (make demo) | cpu-full (every stage) | gpu | tiny (tests)")
    p.add_argument("--out", default="", help="run directory (default: LLMOS_HOME/runs/speedrun-PRESET)")
    p.add_argument("--data", default="", help="a prepared corpus to use instead of the default one")
    p.add_argument("--minutes", type=float, default=0.0,
                   help="wall-clock budget for the whole speedrun (0: the preset's; cpu 23, cpu-full 90)")
    p.add_argument("--steps", type=int, default=0, help="fixed pretraining steps instead of a time budget")
    p.add_argument("--fresh", action="store_true",
                   help="start over: delete what an earlier speedrun wrote in the run directory")
    p.add_argument("--dry-run", action="store_true",
                   help="print the machine, the stage budgets and a pretraining plan timed here; write nothing")
    p.set_defaults(func=cmd_speedrun)

    scaling = verbs.add_parser("scaling", help="measure a scaling law and plan a run with it").add_subparsers(dest="action", required=True)
    p = scaling.add_parser("sweep", help="train IsoFLOP profiles: several model sizes per compute budget", formatter_class=fmt)
    p.add_argument("--flops", default="", help="comma-separated compute budgets (default 1e13,2.5e13,6e13; --quick 5e12,1e13)")
    p.add_argument("--sizes", "--depths", dest="sizes", default="",
                   help="model sizes per budget: shapes LAYERSxWIDTH like 2x96, or depths D meaning D x 64D "
                        "(default: the ladder 2x64,2x96,2x128,3x160,3x192,4x224,4x256; --quick its first three)")
    p.add_argument("--quick", action="store_true", help="a ~6-minute grid to try the pipeline (a crude fit)")
    p.add_argument("--out", default="", help="sweep directory (default: LLMOS_HOME/runs/scaling)")
    p.add_argument("--data", default="", help="prepared corpus (default: the default corpus)")
    p.add_argument("--tokenizer", default="", help="tokenizer.json (default: one trained once into the sweep directory)")
    p.add_argument("--vocab-size", type=int, default=1024,
                   help="vocabulary of the tokenizer the sweep trains (small: the tied head is then a small part of N)")
    p.add_argument("--batch-size", type=int, default=16, help="sequences per step, every point")
    p.add_argument("--seq-len", type=int, default=256, help="tokens per sequence, every point")
    p.add_argument("--eval-tokens", type=int, default=0, help="validation tokens per point (0: the grid's default)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True, help="torch.compile each model")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.set_defaults(func=cmd_scaling_sweep)
    p = scaling.add_parser("fit", help="fit L(N, D) and IsoFLOP minima; write fit.json, plots, scaling_report.md",
                           formatter_class=fmt)
    p.add_argument("--out", default="", help="sweep directory (default: LLMOS_HOME/runs/scaling)")
    p.add_argument("--bootstrap", type=int, default=200, help="bootstrap resamples for the intervals (0: none)")
    p.set_defaults(func=cmd_scaling_fit)
    p = scaling.add_parser("predict", help="optimal N, D and loss for a compute budget", formatter_class=fmt)
    p.add_argument("--flops", required=True, help="compute budget(s), comma-separated")
    p.add_argument("--out", default="", help="sweep directory (default: LLMOS_HOME/runs/scaling)")
    p.set_defaults(func=cmd_scaling_predict)
    p = scaling.add_parser("check", help="train at FACTOR x the largest budget; compare with the prediction",
                           formatter_class=fmt)
    p.add_argument("--factor", type=float, default=4.0, help="the check's budget over the largest swept one")
    p.add_argument("--out", default="", help="sweep directory (default: LLMOS_HOME/runs/scaling)")
    p.set_defaults(func=cmd_scaling_check)
    for group in VERB_GROUPS:
        importlib.import_module(f"llmos.cli.{group}").add_parsers(verbs, fmt)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except LlmosError as e:
        print(f"llmos {args.verb}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a full disk, a read-only directory, a missing permission: name the path
        print(f"llmos {args.verb}: error: {os_error_message(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    return 0

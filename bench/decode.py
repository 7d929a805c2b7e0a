"""Decode speed, every llmos path beside llama.cpp on the same weights: batch-1 decode, a 200-token
prompt, memory, load time, speculative decoding.

    python bench/decode.py                                   # the reference config and SmolLM2-135M-Instruct
    python bench/decode.py --models reference --tokens 64    # quicker

For each model the same weights are written once: a llmos params file, GGUFs at f32, f16, q8_0 and
q4_0 (llmos's own writer), and Q4_K_M / Q6_K GGUFs made by llama.cpp's quantizer (for the K-quant
import row). Each engine then runs in its own subprocess (torch's threads never slow numpy or
llama.cpp: see cpu-facts.md), after an untimed warm-up:
- decode: greedy tokens/s after the first generated token (prefill excluded: n tokens minus 1 token);
- prompt: tokens/s of one 200-token prefill (logits of its last position);
- load: seconds from the file to a model ready to decode; rss: the process's peak resident MiB.
llmos runs its engine with its weights as f32, f16, int8, int4 and w8a8 (llmos/quant.py), eager and
(f32, int4) with the decode step compiled (the first run's seconds, compiling included, are
reported); `ratios` divide each by llama.cpp at the same bits per weight (f32/f32, f16/f16,
int8 and w8a8/q8_0, int4/q4_0).
Speculative decoding is timed on a summarise-the-context prompt (a chat turn asking for a summary
of a paragraph), plain against prompt lookup against a draft model (the model's own w8a8 copy: the
fastest llmos path here), with the greedy outputs checked identical and the acceptance rate reported.
The reference model is randomly initialised (decode speed does not depend on the values, and no
engine stops early: end tokens are ignored). One JSON line per model, with the CPU's flags.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "The history of the city begins"
PROMPT_TOKENS = 200
WEIGHTS = ("f32", "f16", "int8", "int4", "w8a8")
GGUF_TYPES = ("f32", "f16", "q8_0", "q4_0")
SAME_BITS = {"f32": "f32", "f16": "f16", "int8": "q8_0", "int4": "q4_0", "w8a8": "q8_0"}
PARAGRAPH = ("The river town of Alder grew up around a wooden bridge built in 1702. Merchants crossed it to "
             "reach the salt markets in the east, and the toll paid for a school, a granary and a small "
             "library. In 1841 a flood carried the bridge away, and for nine years the town used ferries. "
             "The stone bridge that replaced it still stands, and the library now holds the toll books, "
             "which record every cart that crossed between 1702 and 1841.")
SUMMARISE = f"Here is a text:\n\n{PARAGRAPH}\n\nSummarise the text above."


def cpu_info() -> dict:
    model, flags = platform.processor(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model in ("", "x86_64"):
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    wanted = sorted(f for f in flags if f.startswith(("avx512", "amx")) or f in ("avx2", "fma", "f16c", "avx_vnni"))
    import torch
    return {"cpu": model, "flags": wanted, "threads": os.cpu_count(), "torch": torch.__version__,
            "torch_capability": torch.backends.cpu.get_cpu_capability()}


def rss_mib() -> dict:
    """This process's resident memory now and at its peak (VmHWM: ru_maxrss would carry the parent's
    peak across fork + exec)."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return {k: round(int(fields[f].split()[0]) / 1024, 1) for k, f in (("rss", "VmRSS"), ("peak_rss", "VmHWM"))}


def timed_decode(run, n: int) -> float:
    """run(k) decodes k tokens from the prompt; tokens/s of the decode steps alone."""
    run(8)
    t0 = time.perf_counter()
    run(1)
    t1 = time.perf_counter()
    run(n)
    t2 = time.perf_counter()
    return (n - 1) / max((t2 - t1) - (t1 - t0), 1e-9)


def llama_worker(path: str, prompt_ids: list[int], long_ids: list[int], n: int) -> dict:
    import numpy as np
    from llmos.interop.llamacpp import open_llama
    t = time.perf_counter()
    llm = open_llama(path, n_ctx=len(long_ids) + n + 16)
    load = time.perf_counter() - t

    def run(k):
        llm.reset()
        llm.eval(prompt_ids)
        for _ in range(k - 1):
            llm.eval([int(np.argmax(llm.scores[llm.n_tokens - 1]))])

    decode = timed_decode(run, n)
    llm.reset()
    llm.eval(long_ids)  # warm-up
    llm.reset()
    t = time.perf_counter()
    llm.eval(long_ids)
    prompt = len(long_ids) / (time.perf_counter() - t)
    return {"decode": decode, "prompt": prompt, "load": load, **rss_mib()}


def llmos_worker(path: str, weights: str, prompt_ids: list[int], long_ids: list[int], n: int,
                 compile: bool = False) -> dict:
    import torch
    torch.set_num_threads(os.cpu_count())
    from llmos.infer.engine import generate
    from llmos.infer.sampling import SamplingParams
    from llmos.load import load_model
    t = time.perf_counter()
    model = load_model(path, weights=weights, compile=compile)[0]
    load = time.perf_counter() - t
    run = lambda k: sum(1 for _ in generate(model, prompt_ids, SamplingParams(max_tokens=k, temperature=0),
                                            compile=compile))
    t = time.perf_counter()
    run(n)  # the first run compiles (once: the cache length is rounded up to a compiled shape)
    first = time.perf_counter() - t
    decode = timed_decode(run, n)
    with torch.inference_mode():
        last = torch.tensor([len(long_ids) - 1])
        ids = torch.tensor([long_ids])
        model(ids, kv_cache=model.new_kv_cache(1, len(long_ids)), last=last)  # warm-up
        t = time.perf_counter()
        model(ids, kv_cache=model.new_kv_cache(1, len(long_ids)), last=last)
        prompt = len(long_ids) / (time.perf_counter() - t)
    out = {"decode": decode, "prompt": prompt, "load": load, **rss_mib()}
    return {**out, "first_run_s": first} if compile else out


def speculative_worker(path: str, weights: str, prompt_ids: list[int], n: int) -> dict:
    import torch
    torch.set_num_threads(os.cpu_count())
    from llmos.infer.engine import Engine
    from llmos.infer.sampling import SamplingParams
    from llmos.infer.speculate import DraftModel, PromptLookup
    from llmos.load import load_model
    model = load_model(path, weights=weights)[0]
    draft = load_model(path, weights="w8a8")[0]
    params = SamplingParams(max_tokens=n, temperature=0)

    def run(speculator):
        engine = Engine(model, max_batch=1, max_len=len(prompt_ids) + n + 1, speculator=speculator)
        seq, = engine.add(prompt_ids, params)
        t = time.perf_counter()
        while engine.has_work:
            engine.step()
        return seq.tokens, len(seq.tokens) / (time.perf_counter() - t), engine

    run(None)  # warm-up
    plain, plain_rate, _ = run(None)
    out = {"plain": plain_rate, "tokens": len(plain)}
    for name, make in (("lookup", PromptLookup), ("draft_w8a8", lambda: DraftModel(draft, k=4))):
        run(make())
        tokens, rate, engine = run(make())
        out[name] = {"tok_s": rate, "speedup": rate / plain_rate, "identical": tokens == plain,
                     "acceptance": engine.spec_accepted / max(engine.spec_drafted, 1),
                     "steps": engine.decode_steps}
    return out


def kquant_worker(files: dict) -> dict:
    """Import each K-quant GGUF through the gguf package into llmos and decode a few tokens."""
    import torch
    from llmos.interop.gguf_io import read_gguf
    out = {}
    for qtype in ("q4_k_m", "q6_k"):
        if qtype not in files:
            continue
        t = time.perf_counter()
        model, tok = read_gguf(files[qtype])[:2]
        seconds = time.perf_counter() - t
        with torch.inference_mode():
            ids = tok.encode(PROMPT, bos=True)
            logits = model(torch.tensor([ids]))[0, -1]
        out[qtype] = {"import_s": seconds, "finite_logits": bool(torch.isfinite(logits).all())}
    return out


def worker(kind: str, spec: dict) -> dict:
    if kind == "run.py":  # its own process without torch; it reports its decode rate on stderr
        done = subprocess.run([sys.executable, str(ROOT / "run.py"), spec["files"]["llmos"], PROMPT, "-t", "0",
                               "-n", str(spec["n"]), "--ids"], capture_output=True, text=True, check=True)
        return {"decode": float(done.stderr.split("tokens/s")[0].rsplit(",", 1)[1])}
    if kind.startswith("llama.cpp "):
        return llama_worker(spec["files"][kind], spec["ids"], spec["long"], spec["n"])
    if kind.startswith("llmos "):
        return llmos_worker(spec["files"]["llmos"], kind.split()[1], spec["ids"], spec["long"], spec["n"],
                            compile=kind.endswith(" compiled"))
    if kind == "speculative":
        return speculative_worker(spec["files"]["llmos"], "f32", spec["summarise"], spec["n"])
    if kind == "kquant":
        return kquant_worker(spec["files"])
    raise ValueError(kind)


def prepare(model: str, workdir: Path) -> tuple[dict, dict, dict]:
    import torch
    from llmos.chat import ChatFormat
    from llmos.interop.convert import export_model
    from llmos.load import open_model
    from llmos.model import ModelConfig, Transformer
    from llmos.params import save_params
    from llmos.tokenizer import Tokenizer

    if model == "reference":
        tok_path = Path(os.environ.get("LLMOS_BENCH_TOKENIZER", ""))
        if not tok_path.is_file():  # any real 4096-token tokenizer will do; train one on a little text
            import sysconfig
            texts = [p.read_text(errors="replace") for p in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))]
            Tokenizer.train(texts, vocab_size=4096).save(workdir / "tokenizer.json")
            tok_path = workdir / "tokenizer.json"
        tok = Tokenizer.load(tok_path)
        torch.manual_seed(0)
        net = Transformer(ModelConfig.from_depth(4, vocab_size=tok.vocab_size, max_seq_len=512))
        source = save_params(workdir / "reference.llmos", net, tok, provenance={"source": "bench/decode.py"})
        chat = None
    else:
        from llmos.load import resolve_reference
        source = resolve_reference(model)
        net, tok, info = open_model(source)
        try:
            chat = ChatFormat(tok, info.get("chat_template", ""))
        except Exception:
            chat = None
    files = {"llmos": str(source)}
    for dtype in GGUF_TYPES:
        files[f"llama.cpp {dtype}"] = str(export_model(source, "gguf", workdir / f"m-{dtype}.gguf", dtype=dtype)[0])
    files.update(make_kquants(files["llama.cpp f32"], workdir))
    sample = (Path(ROOT / "README.md").read_text() * 4)
    long_ids = tok.encode(sample, bos=True)[:PROMPT_TOKENS]
    if chat is not None:
        summarise = chat.render_prompt([{"role": "user", "content": SUMMARISE}])
    else:
        summarise = tok.encode(SUMMARISE, bos=True)
    spec = {"files": files, "ids": tok.encode(PROMPT, bos=True), "long": long_ids, "summarise": summarise}
    info = {"params": sum(p.numel() for p in net.parameters()), "layers": net.cfg.n_layers,
            "d_model": net.cfg.d_model, "vocab": net.cfg.vocab_size}
    return files, spec, info


def make_kquants(f32_gguf: str, workdir: Path) -> dict:
    """Q4_K_M and Q6_K files from llama.cpp's own quantizer (the gguf package cannot write K-quants)."""
    try:
        import llama_cpp
    except ImportError:
        return {}
    out = {}
    for name, ftype in (("q4_k_m", llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M), ("q6_k", llama_cpp.LLAMA_FTYPE_MOSTLY_Q6_K)):
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = ftype
        path = workdir / f"m-{name}.gguf"
        if llama_cpp.llama_model_quantize(f32_gguf.encode(), str(path).encode(), params) == 0:
            out[name] = str(path)
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="reference,smollm2-135m-instruct",
                   help="comma-separated: reference, a named model, or a .llmos file")
    p.add_argument("--tokens", type=int, default=128, help="tokens decoded per timing")
    p.add_argument("--engines", default=",".join(["run.py", *(f"llmos {w}" for w in WEIGHTS), "llmos f32 compiled",
                                                   "llmos int4 compiled",
                                                   *(f"llama.cpp {t}" for t in GGUF_TYPES), "speculative", "kquant"]))
    p.add_argument("--worker", nargs=2, metavar=("KIND", "SPEC_JSON"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        kind, spec = args.worker
        print(json.dumps(worker(kind, {**json.loads(spec), "n": args.tokens})))
        return
    machine = cpu_info()
    from llmos.quant import kernels
    machine["kernels"] = kernels()
    print(json.dumps({"machine": machine}), flush=True)
    for model in args.models.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            files, spec, info = prepare(model, Path(tmp))
            results = {}
            for kind in args.engines.split(","):
                print(f"{model}: {kind} ...", file=sys.stderr, flush=True)
                done = subprocess.run([sys.executable, __file__, "--tokens", str(args.tokens), "--worker", kind,
                                       json.dumps(spec)], capture_output=True, text=True)
                if done.returncode:
                    results[kind] = None
                    print(f"  failed: {done.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
                    continue
                results[kind] = json.loads(done.stdout.strip().splitlines()[-1])
                print(f"  {json.dumps(results[kind])}", file=sys.stderr, flush=True)
        ratios = {}
        for w in WEIGHTS:
            mine, peer = results.get(f"llmos {w}"), results.get(f"llama.cpp {SAME_BITS[w]}")
            if mine and peer:
                ratios[f"{w} vs {SAME_BITS[w]}"] = {"decode": round(mine["decode"] / peer["decode"], 3),
                                                    "prompt": round(mine["prompt"] / peer["prompt"], 3)}
        base = results.get("llama.cpp f32")
        if base:
            ratios["prompt: llmos best vs llama.cpp f32"] = round(max(
                (results[f"llmos {w}"]["prompt"] for w in WEIGHTS if results.get(f"llmos {w}")), default=0)
                / base["prompt"], 3)
        print(json.dumps({"model": model, **info, "tokens": args.tokens, "prompt_tokens": len(spec["long"]),
                          "results": results, "ratios": ratios, "cpu": machine["cpu"], "flags": machine["flags"]}),
              flush=True)


if __name__ == "__main__":
    main()

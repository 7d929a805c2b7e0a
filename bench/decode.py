"""Batch-1 greedy decode speed: run.py, the llmos engine, HF transformers and llama.cpp, same weights.

    python bench/decode.py                       # the reference config and SmolLM2-135M-Instruct
    python bench/decode.py --models reference --tokens 200

For each model the same weights are exported once (llmos params file, GGUF f32 and q8_0, a
Hugging Face directory), then every engine greedily decodes the same prompt for the same number
of tokens, each in its own subprocess (so that torch's threads never slow numpy or llama.cpp: see
cpu-facts.md). An untimed warm-up decode comes first; tokens/s counts decode steps after the
first generated token (prefill excluded). One JSON line per model: every figure and its ratio to
llama.cpp f32. The reference model is randomly initialised: decode speed does not depend on the
values, and no engine stops early (end tokens are ignored).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "The history of the city begins"


def decode_rate(step, prompt_ids: list[int], n: int) -> float:
    """step(ids) -> next token id, fed one token at a time after the prompt; returns tokens/s."""
    token = step(prompt_ids)
    start = time.perf_counter()
    for _ in range(n - 1):
        token = step([token])
    return (n - 1) / (time.perf_counter() - start)


def worker(engine: str, files: dict, prompt_ids: list[int], n: int) -> float:
    if engine == "run.py":  # its own process without torch; it reports its decode rate on stderr
        done = subprocess.run([sys.executable, str(ROOT / "run.py"), files["llmos"], PROMPT, "-t", "0", "-n", str(n),
                               "--ids"], capture_output=True, text=True, check=True)
        generated = json.loads(done.stdout)["generated"]
        assert len(generated) == n, f"run.py stopped after {len(generated)} tokens"
        return float(done.stderr.split("tokens/s")[0].rsplit(",", 1)[1])
    if engine.startswith("llama.cpp"):
        import numpy as np
        from llmos.interop.llamacpp import open_llama
        llm = open_llama(files[engine], n_ctx=len(prompt_ids) + n + 8)

        def step(ids):
            llm.eval(ids)
            return int(np.argmax(llm.scores[llm.n_tokens - 1]))
        decode_rate(step, prompt_ids, 8)
        llm.reset()
        return decode_rate(step, prompt_ids, n)
    import torch
    torch.set_num_threads(os.cpu_count())
    if engine == "llmos":
        from llmos.infer.engine import generate
        from llmos.infer.sampling import SamplingParams
        from llmos.load import load_model
        model = load_model(files["llmos"])[0]
        run = lambda k: sum(1 for _ in generate(model, prompt_ids, SamplingParams(max_tokens=k, temperature=0)))
    else:
        from transformers import AutoModelForCausalLM
        model = AutoModelForCausalLM.from_pretrained(files["hf"], dtype=torch.float32).eval()
        x = torch.tensor([prompt_ids])
        run = lambda k: model.generate(x, max_new_tokens=k, min_new_tokens=k, do_sample=False,
                                       pad_token_id=0).shape[1] - len(prompt_ids)
    run(8)
    # decode rate without the prefill: time n tokens and 1 token, take the difference
    t0 = time.perf_counter()
    run(1)
    t1 = time.perf_counter()
    assert run(n) == n
    t2 = time.perf_counter()
    return (n - 1) / ((t2 - t1) - (t1 - t0))


def prepare(model: str, workdir: Path) -> tuple[dict, list[int], dict]:
    import torch
    from llmos.load import load_model
    from llmos.interop.convert import export_model
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
        net = Transformer(ModelConfig.from_depth(4, vocab_size=tok.vocab_size, max_seq_len=256))
        source = save_params(workdir / "reference.llmos", net, tok, provenance={"source": "bench/decode.py"})
    else:
        source = Path(model)
        net, tok, _ = load_model(model)
        source = source if source.is_file() else None
        if source is None:
            from llmos.interop.catalog import resolve_named_model
            source = resolve_named_model(model)
    files = {"llmos": str(source)}
    for dtype in ("f32", "q8_0"):
        files[f"llama.cpp {dtype}"] = str(export_model(source, "gguf", workdir / f"{Path(source).stem}-{dtype}.gguf",
                                                       dtype=dtype)[0][0])
    files["hf"] = str(export_model(source, "hf", workdir / f"{Path(source).stem}-hf")[0][0])
    info = {"params": net.num_params(), "layers": net.cfg.n_layers, "d_model": net.cfg.d_model,
            "vocab": net.cfg.vocab_size}
    return files, tok.encode(PROMPT, bos=True), info


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="reference,smollm2-135m-instruct",
                   help="comma-separated: reference, a named model, or a .llmos file")
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--engines", default="run.py,llmos,hf,llama.cpp f32,llama.cpp q8_0")
    p.add_argument("--worker", nargs=3, metavar=("ENGINE", "FILES_JSON", "IDS_JSON"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        engine, files, ids = args.worker
        print(json.dumps({"tok_s": worker(engine, json.loads(files), json.loads(ids), args.tokens)}))
        return
    for model in args.models.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            files, ids, info = prepare(model, Path(tmp))
            rates = {}
            for engine in args.engines.split(","):
                print(f"{model}: {engine} ...", file=sys.stderr, flush=True)
                done = subprocess.run([sys.executable, __file__, "--tokens", str(args.tokens), "--worker", engine,
                                       json.dumps(files), json.dumps(ids)], capture_output=True, text=True)
                if done.returncode:
                    rates[engine] = None
                    print(f"  failed: {done.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
                    continue
                rates[engine] = round(json.loads(done.stdout.strip().splitlines()[-1])["tok_s"], 1)
                print(f"  {rates[engine]:,.1f} tokens/s", file=sys.stderr)
        base = rates.get("llama.cpp f32")
        print(json.dumps({"model": model, **info, "tokens": args.tokens, "prompt_tokens": len(ids),
                          "cpu_threads": os.cpu_count(), "tok_s": rates,
                          "vs_llama_cpp_f32": {k: round(v / base, 3) for k, v in rates.items() if v and base},
                          "llmos_vs_hf": round(rates["llmos"] / rates["hf"], 3)
                          if rates.get("llmos") and rates.get("hf") else None}), flush=True)


if __name__ == "__main__":
    main()

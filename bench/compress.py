"""The model as a compressor beside the classical coders: sizes, bits per byte and MB/s on held-out text.

    python bench/compress.py                                                # the speedrun model, whole val split
    python bench/compress.py --model smollm2-135m-instruct --max-bytes 100000
    python bench/compress.py --text FILE --max-bytes 5000 --json            # any file; one JSON line
    python bench/compress.py --fixture-dir DIR                              # cross-CPU check (see below)

The text is the prepared corpus's validation split (LLMOS_HOME/data/default/val.jsonl, its documents
joined by blank lines: the model never trained on it), or --text, cut to --max-bytes at a character
boundary. Every coder's output is decompressed and checked equal to the input. The classical coders
run in this process: gzip -9, bzip2 -9 and xz -9 through Python's zlib, bz2 and lzma (the same
libraries and settings as the command-line tools: sizes differ only by the gzip header's file name),
zstd -19 --long through /usr/bin/zstd, and PPMd through pyppmd with variant I (PPMd8, as in .zip),
order 16, 256 MiB of model memory (the best order on the speedrun's validation split: 6 and 8 are
0.5-1% larger, 32 the same). llmos compress runs with --threads (default 1) and reports the model's
own estimate beside its output: the summed -log2 p of the coded tokens, what an ideal coder would
spend (the difference is the quantized probabilities, the range coder's last word and the header).

Cross-CPU check: `--fixture-dir DIR` on a machine where DIR holds no fixture writes one there: tiny
models (a tokenizer trained on the text, 2 layers of width 64, trained 30 steps on it) as params files
in f32, int8 and int4, and a .llz of 6 KB of the text made with each. On another machine (another CPU
kind, torch version) the same command finds them and decompresses each, printing whether the bytes came
back and both machines; it exits 1 when any did not. Carry DIR between machines as it is.
"""
from __future__ import annotations

import argparse
import bz2
import gzip
import json
import lzma
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from llmos.common import LlmosError

PPMD = {"max_order": 16, "mem_size": 256 << 20, "variant": "I"}
FIXTURE_BYTES = 6000
FIXTURE_WEIGHTS = ("f32", "int8", "int4")


def held_out_text(path: str | None, max_bytes: int | None) -> bytes:
    from llmos.data.corpus import default_corpus_dir, load_texts
    if path:
        return Path(path).expanduser().read_bytes()[:max_bytes]
    text = "\n\n".join(load_texts(default_corpus_dir(), "val")).encode("utf-8")
    return text[:max_bytes].decode("utf-8", errors="ignore").encode("utf-8")  # whole characters


def model_label(ref: str) -> str:
    """A model reference short enough for a table: a path's last two parts, or the name as given."""
    path = Path(ref).expanduser()
    return "/".join(path.resolve().parts[-2:]) if path.exists() else ref


def zstd_compress(data: bytes) -> bytes:
    return subprocess.run([zstd_binary(), "-19", "--long", "-q", "-c"], input=data, capture_output=True,
                          check=True).stdout


def zstd_decompress(data: bytes) -> bytes:
    return subprocess.run([zstd_binary(), "-d", "--long", "-q", "-c"], input=data, capture_output=True,
                          check=True).stdout


def zstd_binary() -> str:
    return shutil.which("zstd") or "/usr/bin/zstd"


def classical_coders() -> dict:
    """name -> (compress, decompress) for the classical coders."""
    import pyppmd
    coders = {
        "gzip -9": (lambda d: gzip.compress(d, compresslevel=9, mtime=0), gzip.decompress),
        "bzip2 -9": (lambda d: bz2.compress(d, 9), bz2.decompress),
        "xz -9": (lambda d: lzma.compress(d, preset=9), lzma.decompress),
        "zstd -19 --long": (zstd_compress, zstd_decompress),
        f"PPMd ({PPMD['variant']}, order {PPMD['max_order']}, {PPMD['mem_size'] >> 20} MiB)":
            (lambda d: pyppmd.compress(d, **PPMD), lambda d: pyppmd.decompress(d, **PPMD)),
    }
    if not Path(zstd_binary()).is_file():
        del coders["zstd -19 --long"]
    return coders


def timed(fn, data):
    started = time.perf_counter()
    out = fn(data)
    return out, time.perf_counter() - started


def measure(data: bytes, model: str, threads: int, chunk_tokens: int | None) -> dict:
    import torch

    from llmos.compress import compress_bytes, decompress_bytes, load_coder
    from llmos.perf import describe_machine, machine
    rows = []
    for name, (pack, unpack) in classical_coders().items():
        packed, seconds_in = timed(pack, data)
        unpacked, seconds_out = timed(unpack, packed)
        assert unpacked == data, f"{name} did not round-trip"
        rows.append({"coder": name, "bytes": len(packed), "encode_s": seconds_in, "decode_s": seconds_out})
    coder = load_coder(model)
    blob, stats = compress_bytes(data, coder, chunk_tokens=chunk_tokens, threads=threads, progress=True)
    restored, back = decompress_bytes(blob, coder, progress=True)
    assert restored == data, "llmos compress did not round-trip"
    rows.append({"coder": f"llmos compress ({model_label(model)}, {stats['chunk_tokens']}-token chunks)",
                 "bytes": len(blob), "encode_s": stats["seconds"], "decode_s": back["seconds"],
                 "model_bits_per_byte": stats["model_bits"] / len(data), "tokens": stats["tokens"],
                 "header_bytes": len(blob) - stats["payload_bytes"]})
    torch.set_num_threads(threads)  # so that the machine line states the threads the coding used
    return {"model": model, "input_bytes": len(data), "threads": threads, "machine": describe_machine(machine()),
            "rows": rows}


def table(result: dict) -> str:
    from llmos.report import markdown_table
    n = result["input_bytes"]
    xz = next(r["bytes"] for r in result["rows"] if r["coder"] == "xz -9")
    lines = []
    for r in result["rows"]:
        bpb = f"{8 * r['bytes'] / n:.3f}"
        if "model_bits_per_byte" in r:
            bpb += f" (model's estimate {r['model_bits_per_byte']:.3f})"
        lines.append([r["coder"], f"{r['bytes']:,}", bpb, f"{r['bytes'] / xz - 1:+.1%}",
                      f"{n / 1e6 / r['encode_s']:.3g}", f"{n / 1e6 / r['decode_s']:.3g}"])
    head = (f"{n:,} bytes of held-out text; {result['machine']}; llmos compress with "
            f"{result['threads']} thread{'s' * (result['threads'] != 1)}\n\n")
    return head + markdown_table(["coder", "bytes", "bits/byte", "vs xz -9", "encode MB/s", "decode MB/s"], lines)


# ----- the cross-CPU fixture -----

def make_fixture(directory: Path, text: bytes) -> None:
    import torch

    from llmos.compress import compress_bytes, load_coder
    from llmos.model import ModelConfig, Transformer
    from llmos.params import save_params
    from llmos.tokenizer import Tokenizer
    text = text[:FIXTURE_BYTES].decode("utf-8", errors="ignore").encode("utf-8")
    tok = Tokenizer.train([text.decode("utf-8")], vocab_size=512, min_frequency=1)
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=tok.vocab_size, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2,
                                    max_seq_len=128))
    ids = torch.tensor(tok.encode(text.decode("utf-8"), bos=True))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for step in range(30):  # a little training: peaked distributions, as a real model's are
        starts = torch.randint(0, len(ids) - 129, (8,), generator=torch.Generator().manual_seed(step))
        batch = torch.stack([ids[s:s + 129] for s in starts])
        loss = model(batch[:, :-1], targets=batch[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "input.txt").write_bytes(text)
    for weights in FIXTURE_WEIGHTS:
        path = save_params(directory / f"model-{weights}.llmos", model.eval(), tok, weights=weights)
        blob, stats = compress_bytes(text, load_coder(str(path)), chunk_tokens=96, threads=1)
        (directory / f"input-{weights}.llz").write_bytes(blob)
        print(f"{weights}: {len(text):,} -> {len(blob):,} bytes, {stats['chunks']} chunks")
    print(f"fixture written to {directory}: run `python bench/compress.py --fixture-dir DIR` on another machine")


def check_fixture(directory: Path) -> bool:
    from llmos.compress import (
        decompress_bytes,
        describe,
        load_coder,
        machine_facts,
        read_header,
    )
    text, ok = (directory / "input.txt").read_bytes(), True
    print(f"here: {describe(machine_facts())}")
    for weights in FIXTURE_WEIGHTS:
        blob = (directory / f"input-{weights}.llz").read_bytes()
        header, _ = read_header(blob, weights)
        try:
            restored, _ = decompress_bytes(blob, load_coder(str(directory / f"model-{weights}.llmos")), name=weights)
            same = restored == text
        except LlmosError as e:
            same = False
            print(f"  {e}")
        ok &= same
        print(f"{weights}: {'decodes' if same else 'DOES NOT decode'} the file compressed on "
              f"{describe(header['encoder'])}")
    return ok


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=None, help="model reference (default: LLMOS_HOME/runs/speedrun-cpu/base)")
    p.add_argument("--text", default=None, help="a file to compress (default: the corpus's validation split)")
    p.add_argument("--max-bytes", type=int, default=None, help="compress only the first N bytes")
    p.add_argument("--threads", type=int, default=1, help="torch threads for llmos compress")
    p.add_argument("--chunk-tokens", type=int, default=None, help="llmos compress's chunk length (default: its own)")
    p.add_argument("--json", action="store_true", help="print one JSON line instead of the table")
    p.add_argument("--fixture-dir", type=Path, default=None,
                   help="write a cross-CPU fixture there, or check the one there (see the docstring)")
    args = p.parse_args()
    try:
        if args.fixture_dir is not None:
            if (args.fixture_dir / "input.txt").is_file():
                sys.exit(0 if check_fixture(args.fixture_dir) else 1)
            make_fixture(args.fixture_dir, held_out_text(args.text, None))
            return
        from llmos.compress import default_model
        result = measure(held_out_text(args.text, args.max_bytes), args.model or default_model(), args.threads,
                         args.chunk_tokens)
    except LlmosError as e:
        sys.exit(f"bench/compress.py: error: {e}")
    print(json.dumps(result) if args.json else table(result))


if __name__ == "__main__":
    main()

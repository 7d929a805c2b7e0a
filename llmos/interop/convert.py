"""`llmos export` and `llmos import`: move a model between llmos and the formats others run.

    export_model("runs/d4", "gguf", "models/d4-f16.gguf", dtype="f16")   # for llama.cpp
    export_model("runs/d4", "hf", "models/d4-hf")                        # a transformers directory
    export_model("runs/d4", "llmos", "models/d4")                        # model.llmos + run.py
    import_model("SmolLM2-135M-Instruct.Q4_1.gguf", "models/smollm2.llmos")
    import_model("SmolLM2-135M-Instruct.Q4_1.gguf", "models/smollm2-q4.llmos", dtype="keep")  # stays 4-bit
    import_model("path/to/hf-llama-dir", "models/llama.llmos")
    import_model("smollm2-135m-instruct", "smollm2.llmos")             # a named model (catalog.py)

The model reference is anything `llmos.load.load_model` accepts (run directory, .llmos file, .pt
checkpoint, named model). `--format llmos` writes the params file and copies the standalone
`run.py` next to it, so the two files travel together; run.py ships inside the package
(`llmos/run.py`, found with importlib.resources; the repository root links to it). Imports become
a params file whose provenance records the source and the tokenizer's bos/eos roles.
"""
from __future__ import annotations

from importlib import resources
from pathlib import Path

import torch

from llmos.chat import NATIVE_CHAT_TEMPLATE, TURN_TOKENS
from llmos.common import LlmosError, atomic_write
from llmos.params import load_params, save_params

FORMATS = {"llmos": ("f32", "bf16", "f16", "int8", "int4"), "gguf": ("f32", "f16", "q8_0", "q4_0", "q4_1"), "hf": ("f32", "f16", "bf16")}
PARAMS_DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16}
QUANTIZED_PARAMS = ("f16", "int8", "int4")  # llmos/quant.py schemes: matrices kept quantized
IMPORT_DTYPES = ("f32", "bf16", "keep")  # keep: a GGUF's quantized matrices stay quantized


def run_py_path() -> Path:
    """The standalone runner, shipped inside the llmos package."""
    runner = Path(str(resources.files("llmos") / "run.py"))
    if not runner.is_file():
        raise LlmosError(f"this llmos installation lacks its standalone runner ({runner}): reinstall llmos")
    return runner


def _model_name(ref: str, provenance: dict) -> str:
    return provenance.get("name") or Path(str(ref)).expanduser().resolve().name.removesuffix(".llmos")


def export_model(ref: str | Path, fmt: str, out: str | Path, dtype: str = "f32") -> list[Path]:
    """Write model `ref` in format `fmt`; returns the paths written."""
    from llmos.load import open_model
    if fmt not in FORMATS:
        raise LlmosError(f"unknown format {fmt!r}: choose one of {', '.join(FORMATS)}")
    if dtype not in FORMATS[fmt]:
        raise LlmosError(f"--dtype {dtype} is not available for --format {fmt}: choose one of {', '.join(FORMATS[fmt])}")
    out = Path(out).expanduser()
    model, tok, info = open_model(ref)
    chat_template = info.get("chat_template", "")
    if not chat_template and fmt in ("gguf", "hf") and tok.hf.token_to_id(TURN_TOKENS["assistant"][0]) is not None:
        chat_template = NATIVE_CHAT_TEMPLATE  # llama.cpp and transformers chat through templates alone
    if fmt == "gguf":
        from llmos.interop.gguf_io import write_gguf
        name = _model_name(str(ref), info.get("provenance", {}))
        return [write_gguf(out, model, tok, chat_template, dtype=dtype, name=name)]
    if fmt == "hf":
        from llmos.interop.hf_io import write_hf_dir
        return [write_hf_dir(out, model, tok, chat_template, dtype=dtype)]
    params = out if out.suffix == ".llmos" else out / "model.llmos"
    runner = run_py_path()
    provenance = {**info.get("provenance", {}), "exported_from": str(ref)}
    save_params(params, model, tok, provenance=provenance, chat_template=chat_template,
                dtype=PARAMS_DTYPES.get(dtype, torch.float32), weights=dtype if dtype in QUANTIZED_PARAMS else "f32")
    with atomic_write(params.parent / "run.py") as f:
        f.write(runner.read_bytes())
    return [params, params.parent / "run.py"]


def import_model(src: str | Path, out: str | Path, dtype: str = "f32") -> Path:
    """A GGUF file, a Hugging Face Llama directory or a named model -> a llmos params file.
    `dtype` f32 or bf16 expands every weight to that type; `keep` keeps a GGUF's quantization where
    llmos has the scheme (gguf_io.read_gguf_kept: Q4_0/Q4_1 as int4 exactly, Q8_0 as int8 per row,
    F16 as f16; other types, K-quants among them, become float32): SmolLM2-135M's Q4_1 file gives a
    ~100 MB params file instead of ~540 MB. A named model with `keep` is imported from its GGUF."""
    from llmos.interop.catalog import NAMED_MODELS, fetch_gguf, is_named_model, resolve_named_model
    if dtype not in IMPORT_DTYPES:
        raise LlmosError(f"--dtype {dtype} is not available for an import: choose one of {', '.join(IMPORT_DTYPES)}")
    path = Path(src).expanduser()
    quantized = {}
    if dtype == "keep" and not path.exists() and is_named_model(str(src)):
        path = fetch_gguf(str(src))  # its GGUF, not the float32 params file it is imported into once
    if path.is_dir():
        if dtype == "keep":
            raise LlmosError(f"--dtype keep keeps a GGUF file's quantization; {path} is a Hugging Face directory "
                             "of float weights: import it with --dtype f32 or bf16")
        from llmos.interop.hf_io import read_hf_dir
        model, tok, chat_template, provenance = read_hf_dir(path)
    elif path.is_file() and dtype == "keep":
        from llmos.interop.gguf_io import read_gguf_kept
        model, tok, chat_template, provenance, quantized = read_gguf_kept(path)
    elif path.is_file():
        from llmos.interop.gguf_io import read_gguf
        model, tok, chat_template, provenance = read_gguf(path)
    elif is_named_model(str(src)):  # fetched and imported once into LLMOS_HOME/models, then copied out
        model, tok, info = load_params(resolve_named_model(str(src)))
        chat_template, provenance = info["chat_template"], info["provenance"]
    else:
        raise LlmosError(f"nothing to import at {path}: give a .gguf file, a Hugging Face model directory "
                         f"or a named model ({', '.join(NAMED_MODELS)})")
    return save_params(Path(out).expanduser(), model, tok, provenance=provenance, chat_template=chat_template,
                       dtype=PARAMS_DTYPES.get(dtype, torch.float32), quantized=quantized)

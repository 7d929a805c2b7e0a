"""`llmos export` and `llmos import`: move a model between llmos and the formats others run.

    export_model("runs/d4", "gguf", "models/d4-f16.gguf", dtype="f16")   # for llama.cpp
    export_model("runs/d4", "hf", "models/d4-hf")                        # a transformers directory
    export_model("runs/d4", "llmos", "models/d4")                        # model.llmos + run.py
    import_model("SmolLM2-135M-Instruct.Q4_1.gguf", "models/smollm2.llmos")
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

FORMATS = {"llmos": ("f32", "bf16"), "gguf": ("f32", "f16", "q8_0", "q4_0", "q4_1"), "hf": ("f32", "f16", "bf16")}
PARAMS_DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16}


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
    from llmos.load import load_model
    if fmt not in FORMATS:
        raise LlmosError(f"unknown format {fmt!r}: choose one of {', '.join(FORMATS)}")
    if dtype not in FORMATS[fmt]:
        raise LlmosError(f"--dtype {dtype} is not available for --format {fmt}: choose one of {', '.join(FORMATS[fmt])}")
    out = Path(out).expanduser()
    model, tok, info = load_model(ref)
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
    save_params(params, model, tok, provenance=provenance, chat_template=chat_template, dtype=PARAMS_DTYPES[dtype])
    with atomic_write(params.parent / "run.py") as f:
        f.write(runner.read_bytes())
    return [params, params.parent / "run.py"]


def import_model(src: str | Path, out: str | Path, dtype: str = "f32") -> Path:
    """A GGUF file, a Hugging Face Llama directory or a named model -> a llmos params file."""
    from llmos.interop.catalog import NAMED_MODELS, is_named_model, resolve_named_model
    if dtype not in PARAMS_DTYPES:
        raise LlmosError(f"--dtype {dtype} is not available for a params file: choose f32 or bf16")
    path = Path(src).expanduser()
    if path.is_dir():
        from llmos.interop.hf_io import read_hf_dir
        model, tok, chat_template, provenance = read_hf_dir(path)
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
                       dtype=PARAMS_DTYPES[dtype])

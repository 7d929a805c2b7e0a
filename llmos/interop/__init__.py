"""Model interop: llmos models out to llama.cpp (GGUF) and Hugging Face, foreign Llama models in.

    llmos export --model RUN --format gguf --dtype f16 --out model.gguf    # llama.cpp, ollama, ...
    llmos export --model RUN --format hf --out model-hf/                   # transformers
    llmos export --model RUN --format llmos --out dist/                    # model.llmos + run.py
    llmos import model.gguf --out model.llmos                              # GGUF or an HF directory
    llmos generate --model smollm2-135m-instruct --prompt "..."            # a named model

Modules: `convert` (export_model, import_model), `gguf_io` (write_gguf, read_gguf), `hf_io`
(write_hf_dir, read_hf_dir), `layout` (parameter names, the GGUF q/k permutation) and `catalog`
(named models that ship inside registry packages).
"""
from llmos.interop.catalog import NAMED_MODELS, resolve_named_model
from llmos.interop.convert import export_model, import_model

__all__ = ["NAMED_MODELS", "export_model", "import_model", "resolve_named_model"]

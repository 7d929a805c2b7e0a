"""Opening a GGUF file in llama.cpp (llama-cpp-python, a dev extra) safely on every CPU.

    llm = open_llama("model.gguf", n_ctx=512)                 # then llm.eval(ids), llm.scores, llm.generate
    llm = open_llama("model.gguf", n_ctx=512, f32_cache=True, logits_all=True)   # for parity tests

Q8_0 weights crash llama.cpp's AMX int8 kernels on some CPUs (notes: cpu-facts.md); turning off the
model's extra (repacked) buffer types avoids them. llama-cpp-python 0.3 has no keyword for that, so
its default-params function is wrapped once.
"""
from __future__ import annotations

from pathlib import Path


def open_llama(path: str | Path, n_ctx: int, f32_cache: bool = False, logits_all: bool = False,
               n_threads: int | None = None):
    import os

    import llama_cpp
    from llama_cpp import llama_cpp as lib

    if not getattr(lib.llama_model_default_params, "_llmos_safe", False):
        default_params = lib.llama_model_default_params

        def safe_params():
            params = default_params()
            params.use_extra_bufts = False
            return params

        safe_params._llmos_safe = True
        lib.llama_model_default_params = safe_params
    cache = {"type_k": lib.GGML_TYPE_F32, "type_v": lib.GGML_TYPE_F32} if f32_cache else {}
    return llama_cpp.Llama(str(path), n_ctx=n_ctx, logits_all=logits_all, n_threads=n_threads or os.cpu_count(),
                           verbose=False, **cache)

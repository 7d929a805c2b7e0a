"""GGUF imports that keep the file's quantization (`llmos import --dtype keep`): Q4_0/Q4_1 matrices
become llmos int4 holding exactly the values gguf's own dequantizer gives, Q8_0 becomes int8 within
its per-row rounding, F16 stays f16; the kept params file runs like the float32 import of the same
file; K-quants (made from a tiny model by llama.cpp's quantizer) import, as float32."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import require, subprocess_env
from llmos.cli import main
from llmos.common import LlmosError
from llmos.infer.engine import generate
from llmos.infer.sampling import SamplingParams
from llmos.interop.convert import export_model, import_model
from llmos.interop.gguf_io import read_gguf_kept
from llmos.interop.layout import from_gguf_rope, llmos_name_from_gguf, rope_heads
from llmos.load import load_model
from llmos.model import ModelConfig, Transformer
from llmos.params import load_params, read_metadata, save_params
from llmos.quant import QuantLinear
from llmos.tokenizer import Tokenizer

PROMPT = "def parse(self, text):\n    return [line.strip() for line in text.splitlines()]"
KINDS = {"tied-mha": dict(n_heads=4, n_kv_heads=4, tie_embeddings=True),
         "untied-gqa": dict(n_heads=4, n_kv_heads=2, tie_embeddings=False)}


def tiny_model(tokenizer_path: Path, out: Path, std: float = 0.15, **overrides) -> Path:
    """A small model with random weights large enough for peaked logits and random norm gains, so a
    wrong value, row order or scale shows in the logits instead of hiding in near-uniform ones."""
    tok = Tokenizer.load(tokenizer_path)
    cfg = ModelConfig(**{**dict(vocab_size=tok.vocab_size, d_model=64, n_layers=2, max_seq_len=256,
                                rope_theta=5000.0, norm_eps=1e-5), **overrides})
    torch.manual_seed(0)
    model = Transformer(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.normal_(1.0, 0.3) if "norm" in name else p.normal_(0.0, std)
    return save_params(out, model, tok, chat_template="{% for m in messages %}{{ m['content'] }}{% endfor %}")


def gguf_reference(path: Path, cfg: ModelConfig) -> dict[str, tuple[str, torch.Tensor]]:
    """llmos weight name -> (GGUF type, gguf.quants.dequantize's float32 values in llmos's row order)."""
    import gguf
    from gguf.quants import dequantize
    out = {}
    for t in gguf.GGUFReader(str(path)).tensors:
        key = llmos_name_from_gguf(t.name)
        values = dequantize(t.data, t.tensor_type)
        if heads := rope_heads(key, cfg):
            values = from_gguf_rope(values, heads)
        out[key] = (t.tensor_type.name, torch.from_numpy(np.array(values, dtype=np.float32)))
    return out


def logits_and_greedy(path: Path, n_greedy: int = 32) -> tuple[Transformer, torch.Tensor, list[int]]:
    model, tok, _ = load_model(path)
    ids = tok.encode(PROMPT, bos=True)
    with torch.no_grad():
        logits = model(torch.tensor([ids]))[0]
    greedy = list(generate(model, ids, SamplingParams(max_tokens=n_greedy, temperature=0))) if n_greedy else []
    return model, logits, greedy


@pytest.mark.parametrize("dtype, gguf_type, scheme", [("q4_0", "Q4_0", "int4"), ("q4_1", "Q4_1", "int4"),
                                                      ("q8_0", "Q8_0", "int8"), ("f16", "F16", "f16")])
def test_kept_weights_hold_what_gguf_dequantizes(dtype, gguf_type, scheme, tokenizer_path, tmp_path):
    # untied with grouped-query attention: q and k rows are permuted with different head counts
    src = tiny_model(tokenizer_path, tmp_path / "m.llmos", **KINDS["untied-gqa"])
    path = export_model(src, "gguf", tmp_path / f"m-{dtype}.gguf", dtype=dtype)[0]
    model, _, _, _, kept = read_gguf_kept(path)
    reference = gguf_reference(path, model.cfg)
    state = model.state_dict()
    matrices = [k for k, (kind, _) in reference.items() if kind == gguf_type]
    assert len(matrices) == 2 + 7 * model.cfg.n_layers  # embedding, head and every layer's matrices
    assert sorted(kept) == sorted(matrices)  # the norms (F32) are plain tensors
    for key, (kind, expected) in reference.items():
        if key not in kept:
            assert torch.equal(state[key], expected), key
            continue
        q = kept[key]
        got = q.dequantize()
        assert q.scheme == scheme and q.shape == tuple(expected.shape), key
        if scheme == "int8":  # rounded again to one scale per row: within half a step of that scale
            assert ((got - expected).abs().amax(dim=1) <= q.scale * 0.5001).all(), key
        else:
            assert torch.equal(got, expected), key
        assert torch.equal(state[key], got), key  # the model's float copy is the kept values
    if scheme == "int4":
        q = kept["layers.0.attn.q_proj.weight"]
        assert q.data.dtype == torch.uint8 and q.data.shape == (q.shape[0], q.shape[1] // 2)
        assert q.scale.shape == q.offset.shape == (q.shape[0], q.shape[1] // 32)


@pytest.mark.parametrize("kind, dtype", [("tied-mha", "q4_0"), ("untied-gqa", "q4_1")])
def test_a_kept_int4_import_runs_like_the_float32_import(kind, dtype, tokenizer_path, tmp_path):
    src = tiny_model(tokenizer_path, tmp_path / "m.llmos", **KINDS[kind])
    path = export_model(src, "gguf", tmp_path / f"m-{dtype}.gguf", dtype=dtype)[0]
    kept, expanded = tmp_path / "kept.llmos", tmp_path / "f32.llmos"
    assert main(["import", str(path), "--out", str(kept), "--dtype", "keep"]) == 0
    import_model(path, expanded)
    assert read_metadata(kept)["weights"] == "int4" and read_metadata(expanded)["weights"] == "f32"
    # 4 bits plus an f32 scale and offset per 32 weights: under a fifth of float32 (and the tokenizer)
    assert kept.stat().st_size < 0.3 * expanded.stat().st_size
    _, tok, info = load_params(kept)
    assert tok.encode(PROMPT) and "messages" in info["chat_template"]
    model, logits, greedy = logits_and_greedy(kept)
    _, ref_logits, ref_greedy = logits_and_greedy(expanded)
    assert {m.scheme for m in model.modules() if isinstance(m, QuantLinear)} == {"int4"}
    # the same weight values; the int4 kernel computes (code - 8) * scale + (offset + 8 * scale),
    # so only float rounding separates them (logits of std ~1.5)
    diff = (logits - ref_logits).abs().max().item()
    print(f"{kind} {dtype}: kept int4 vs float32 import, max |logit diff| {diff:.2e}")
    assert diff < 1e-3
    assert greedy == ref_greedy


def test_keep_refuses_a_hugging_face_directory(tokenizer_path, tmp_path):
    src = tiny_model(tokenizer_path, tmp_path / "m.llmos")
    hf_dir = export_model(src, "hf", tmp_path / "hf")[0]
    with pytest.raises(LlmosError, match="keep keeps a GGUF file's quantization"):
        import_model(hf_dir, tmp_path / "out.llmos", dtype="keep")
    with pytest.raises(LlmosError, match="choose one of f32, bf16, keep"):
        import_model(src, tmp_path / "out.llmos", dtype="int4")


QUANTIZE_CHILD = """
import sys, llama_cpp
params = llama_cpp.llama_model_quantize_default_params()
params.ftype = getattr(llama_cpp, "LLAMA_FTYPE_MOSTLY_" + sys.argv[3])
sys.exit(llama_cpp.llama_model_quantize(sys.argv[1].encode(), sys.argv[2].encode(), params))
"""


def llama_cpp_quantize(src: Path, out: Path, ftype: str) -> Path:
    """llama.cpp's quantizer (the gguf package writes no K-quants), in a child process: a crash in a
    native kernel then fails one test, not the session."""
    done = subprocess.run([sys.executable, "-c", QUANTIZE_CHILD, str(src), str(out), ftype],
                          capture_output=True, text=True, env=subprocess_env(), timeout=300)
    assert done.returncode == 0, f"llama.cpp's quantizer exited {done.returncode}: {done.stderr[-2000:]}"
    return out


# (llama.cpp file type, the K-quant types its matrices must hold, min logit correlation with float32)
K_QUANT_CASES = [("Q4_K_M", {"Q4_K", "Q6_K"}, 0.9), ("Q6_K", {"Q6_K"}, 0.99)]


@pytest.mark.parametrize("ftype, k_types, min_corr", K_QUANT_CASES, ids=[c[0] for c in K_QUANT_CASES])
def test_k_quants_import(ftype, k_types, min_corr, tokenizer_path, tmp_path):
    require("llama_cpp")
    # K-quant blocks are 256 wide: with narrower rows llama.cpp falls back to other types
    src = tiny_model(tokenizer_path, tmp_path / "m.llmos", std=0.06, d_model=256, d_ff=512,
                     **KINDS["untied-gqa"])
    f32_gguf = export_model(src, "gguf", tmp_path / "m-f32.gguf")[0]
    quantized = llama_cpp_quantize(f32_gguf, tmp_path / f"m-{ftype}.gguf", ftype)
    model, _, _, _, kept = read_gguf_kept(quantized)
    reference = gguf_reference(quantized, model.cfg)
    matrix_types = {kind for key, (kind, _) in reference.items() if reference[key][1].dim() == 2}
    print(f"{ftype}: the matrices are {sorted(matrix_types)}")
    assert k_types <= matrix_types
    for key, (kind, expected) in reference.items():  # K-quants become float32, gguf's values exactly
        if kind in k_types:
            assert key not in kept and torch.equal(model.state_dict()[key], expected), key

    out = tmp_path / f"m-{ftype}.llmos"
    assert main(["import", str(quantized), "--out", str(out), "--dtype", "keep"]) == 0
    _, logits, _ = logits_and_greedy(out, 0)
    _, ref_logits, _ = logits_and_greedy(src, 0)
    corr = np.corrcoef(logits.ravel().numpy(), ref_logits.ravel().numpy())[0, 1]
    diff = (logits - ref_logits).abs().max().item()
    print(f"{ftype}: logit correlation with float32 {corr:.5f}, max |diff| {diff:.3f} "
          f"(logit std {ref_logits.std().item():.2f})")
    assert corr > min_corr


def test_the_named_model_kept_quantized(smollm2_home, tmp_path, monkeypatch):
    """SmolLM2-135M-Instruct's Q4_1 GGUF (embedding Q8_0) kept: ~110 MB instead of ~540 MB as float32,
    and it still answers (the download is shared with test_interop.py's SmolLM2 tests)."""
    monkeypatch.setenv("LLMOS_HOME", str(smollm2_home))
    out = tmp_path / "smollm2-q4.llmos"
    assert main(["import", "smollm2-135m-instruct", "--out", str(out), "--dtype", "keep"]) == 0
    assert out.stat().st_size < 115e6 and read_metadata(out)["weights"] == "int4+int8"
    model, tok, _ = load_model(out)
    assert model.embed.scheme == "int8" and model.layers[0].mlp.gate_up.scheme == "int4"
    ids = tok.encode("The capital of France is", bos=True)
    reply = tok.decode(list(generate(model, ids, SamplingParams(max_tokens=6, temperature=0))))
    print(f"SmolLM2 kept (Q4_1 as int4, Q8_0 as int8): {out.stat().st_size / 1e6:.0f} MB, greedy {reply!r}")
    assert reply.startswith(" Paris")

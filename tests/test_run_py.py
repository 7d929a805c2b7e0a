"""run.py, the NumPy-only runner: in a process that cannot import torch it generates the same greedy
tokens as the llmos engine, its tokenizer encodes like HF `tokenizers`, and bad files fail clearly."""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Regex, decoders, models, pre_tokenizers, trainers
from tokenizers import Tokenizer as HFTokenizer

from llmos.data.corpus import load_texts
from llmos.infer.engine import generate
from llmos.infer.sampling import SamplingParams
from llmos.interop.convert import run_py_path
from llmos.load import open_model
from llmos.model import ModelConfig, Transformer
from llmos.params import load_params, save_params
from llmos.tokenizer import Tokenizer

RUN_PY = run_py_path()  # the copy the package ships (the repository's run.py links to it)
PROMPT = "def main():\n    return"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def rp():
    """run.py as a module (a script the package ships for export, never imported by llmos itself)."""
    spec = importlib.util.spec_from_file_location("llmos_run_py", RUN_PY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tok(tokenizer_path):
    return Tokenizer.load(tokenizer_path)


@pytest.fixture(scope="module")
def numpy_only(tmp_path_factory):
    """Flags and environment for a Python that sees the stdlib and NumPy, nothing else of the venv."""
    site = tmp_path_factory.mktemp("numpy_only")
    numpy_dir = Path(np.__file__).parent
    for d in (numpy_dir, numpy_dir.parent / "numpy.libs"):
        if d.exists():
            (site / d.name).symlink_to(d)
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(site), "PYTHONNOUSERSITE": "1"}
    cmd = [sys.executable, "-S", "-s"]  # -S: no site module, so no venv site-packages
    for module in ("torch", "tokenizers", "safetensors"):
        assert subprocess.run([*cmd, "-c", f"import {module}"], env=env, capture_output=True).returncode != 0
    subprocess.run([*cmd, "-c", "import numpy"], env=env, check=True)
    return cmd, env


def run(numpy_only, *args) -> subprocess.CompletedProcess:
    cmd, env = numpy_only
    return subprocess.run([*cmd, str(RUN_PY), *map(str, args)], env=env, capture_output=True, text=True, timeout=120)


def trained(cfg: ModelConfig, tok: Tokenizer, corpus_dir, steps: int = 50) -> Transformer:
    """A few AdamW steps on real text: logits far from uniform (no greedy near-ties), varied greedy text."""
    torch.manual_seed(0)
    model = Transformer(cfg)
    ids = [i for text in load_texts(corpus_dir, "train") for i in tok.encode(text)][:16 * 129]
    batch = torch.tensor(ids).view(16, 129)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(steps):
        loss = model(batch[:, :-1], targets=batch[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


MODELS = {  # the default layout, and GQA + untied + qk_norm + head_dim != d_model / n_heads, stored as bf16
    "default": (dict(d_model=64, n_layers=2, n_heads=2, n_kv_heads=2), torch.float32),
    "gqa": (dict(d_model=96, n_layers=2, n_heads=6, n_kv_heads=2, head_dim=24, d_ff=160, qk_norm=True,
                 tie_embeddings=False, rope_theta=50000.0, norm_eps=1e-6), torch.bfloat16),
}


@pytest.fixture(scope="module")
def params_files(tok, corpus_dir, tmp_path_factory):
    out = {}
    for name, (overrides, dtype) in MODELS.items():
        cfg = ModelConfig(vocab_size=tok.vocab_size, max_seq_len=256, **overrides)
        out[name] = save_params(tmp_path_factory.mktemp(name) / "model.llmos", trained(cfg, tok, corpus_dir),
                                tok, dtype=dtype)
    return out


@pytest.mark.parametrize("name", list(MODELS))
def test_greedy_matches_the_engine_without_torch(name, params_files, tok, numpy_only, rp):
    model, _, _ = load_params(params_files[name])  # the engine reads the same (bf16-rounded) weights
    prompt = tok.encode(PROMPT, bos=True)
    expected = list(generate(model, prompt, SamplingParams(max_tokens=200, temperature=0)))
    assert tok.bos_id not in expected  # run.py stops at bos: the 200 tokens must not contain it
    r = run(numpy_only, params_files[name], PROMPT, "-t", 0, "-n", 200, "--ids")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["prompt"] == prompt
    assert out["generated"] == expected
    assert "tokens/s" in r.stderr
    # argmax hides small errors (a wrong eps, a missing permutation): the logits must agree too,
    # from the prompt's one forward (causal mask) and then from one token at a time (the cache)
    seq = prompt + expected[:40]
    with torch.no_grad():
        want = model(torch.tensor([seq]))[0].numpy()
    cfg, _, weights = rp.read_params(str(params_files[name]))
    mine = rp.Transformer(cfg, weights)
    got = [mine.forward(prompt, 0)] + [mine.forward([t], len(prompt) + i) for i, t in enumerate(expected[:40])]
    assert all(g.dtype == np.float32 for g in got)  # no silent float64 (NumPy 2 scalar promotion)
    np.testing.assert_allclose(np.stack(got), want[len(prompt) - 1:], atol=2e-4, rtol=0)


@pytest.mark.parametrize("scheme", ["int8", "int4"])
@pytest.mark.parametrize("name", list(MODELS))
def test_quantized_files_run_as_their_dequantized_weights(name, scheme, params_files, tok, numpy_only, rp, tmp_path):
    """int8 and int4 matrices (with NAME.scale, NAME.offset) expand to exactly what llmos dequantizes;
    the greedy tokens are then those of llmos's f32 model of the same file (open_model: not load_model,
    whose int8 kernel also quantizes activations). The gqa model's o_proj (144 inputs) stays f32 in int4."""
    model, _, _ = load_params(params_files[name])
    path = save_params(tmp_path / f"{scheme}.llmos", model, tok, weights=scheme)
    reference, _, info = open_model(path)
    assert info["weights"] == scheme and len(info["quantized"]) >= 2 * len(reference.layers)
    cfg, _, weights = rp.read_params(str(path))
    assert not any(n.endswith((".scale", ".offset")) for n in weights)  # companions are not weights
    for n, q in info["quantized"].items():
        assert weights[n].dtype == np.float32
        np.testing.assert_array_equal(weights[n], q.dequantize().numpy())
    prompt = tok.encode(PROMPT, bos=True)
    expected = list(generate(reference, prompt, SamplingParams(max_tokens=40, temperature=0)))
    r = run(numpy_only, path, PROMPT, "-t", 0, "-n", 40, "--ids")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["generated"] == expected
    with torch.no_grad():
        want = reference(torch.tensor([prompt]))[0, -1].numpy()
    np.testing.assert_allclose(rp.Transformer(cfg, weights).forward(prompt, 0), want, atol=2e-4, rtol=0)


def test_streamed_text_is_prompt_plus_decoded_tokens(params_files, tok, numpy_only):
    model, _, _ = load_params(params_files["default"])
    expected = list(generate(model, tok.encode(PROMPT, bos=True), SamplingParams(max_tokens=60, temperature=0)))
    r = run(numpy_only, params_files["default"], PROMPT, "-t", 0, "-n", 60)
    assert r.returncode == 0, r.stderr
    assert r.stdout == PROMPT + tok.decode(expected) + "\n"
    a = run(numpy_only, params_files["default"], PROMPT, "-t", 1.0, "-p", 0.9, "-s", 7, "-n", 30, "--ids")
    b = run(numpy_only, params_files["default"], PROMPT, "-t", 1.0, "-p", 0.9, "-s", 7, "-n", 30, "--ids")
    assert a.stdout == b.stdout and len(json.loads(a.stdout)["generated"]) > 0  # a seed reproduces a sample


def test_chat_renders_the_llmos_turn(params_files, tok, numpy_only, rp):
    r = run(numpy_only, params_files["default"], "hello there", "--chat", "-t", 0, "-n", 3, "--ids")
    assert r.returncode == 0, r.stderr
    t = tok.token_id
    assert json.loads(r.stdout)["prompt"] == [t("<|bos|>"), t("<|user_start|>"), *tok.encode("hello there"),
                                              t("<|user_end|>"), t("<|assistant_start|>")]
    _, stops = rp.render_prompt(rp.Tokenizer(tok.to_json()), "hi", chat=True)
    assert t("<|assistant_end|>") in stops


def test_truncated_or_foreign_files_fail_in_one_line(params_files, tmp_path, numpy_only):
    data = params_files["default"].read_bytes()
    for n, words in ((len(data) - 1000, "truncated"), (100, "truncated"), (3, "truncated")):
        path = tmp_path / f"cut{n}.llmos"
        path.write_bytes(data[:n])
        r = run(numpy_only, path, "hi")
        assert r.returncode == 1 and words in r.stderr and "Traceback" not in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    r = run(numpy_only, tmp_path / "missing.llmos", "hi")
    assert r.returncode == 1 and "does not exist" in r.stderr and "Traceback" not in r.stderr


# ---- the tokenizer: run.py's encode equals HF `tokenizers` on varied text

FRAGMENTS = ["'s", "'LL", "'Ve", "'ſ", " don't", "I'm", "Hello", " world", "  ", "   ", "\n", "\n\n", "\r\n", "\t",
             " \n ", "123", "4567890", " 42", "3.14", "x=1;", "def f(a, b):", "    return", "{}", "[]()", "->",
             "!!!", " ...", "é", "naïve", "日本語", "😀", "👍🏽", "\u00a0", "\u3000", "\u2028", "\x1c", "½", "Ⅻ",
             "٣", "<|bos|>", "<|user_start|>", "<|assistant_end|>", "<|im_start|>", "<|im_end|>", "<|endoftext|>",
             "<|bos", "|>", "\U000105c0", "\U00031350"]
TEXTS = st.one_of(st.text(max_size=40), st.lists(st.sampled_from(FRAGMENTS), max_size=12).map("".join),
                  st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=4)), max_size=10).map("".join))


@pytest.fixture(scope="module")
def gpt2_style(corpus_dir):
    """A SmolLM2-style tokenizer: GPT-2's ByteLevel pre-tokenizer (its regex), ChatML tokens, no bos."""
    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    hf.train_from_iterator(load_texts(corpus_dir, "train"), trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    spec = json.loads(hf.to_str())
    spec["model"]["merges"] = [" ".join(m) for m in spec["model"]["merges"]]  # the older "a b" form
    return hf, json.dumps(spec)


@pytest.fixture(scope="module")
def mine(rp, tok, gpt2_style):
    return rp.Tokenizer(tok.to_json()), rp.Tokenizer(gpt2_style[1])


@settings(max_examples=300, deadline=None)
@given(text=TEXTS)
def test_encode_matches_hf(mine, tok, gpt2_style, text):
    ids = tok.encode(text)
    assert mine[0].encode(text) == ids
    assert mine[0].decode(ids) == tok.decode(ids)
    assert mine[1].encode(text) == gpt2_style[0].encode(text, add_special_tokens=False).ids


def test_encode_matches_hf_on_real_text(mine, tok, corpus_dir):
    for text in list(load_texts(corpus_dir, "val"))[:20]:
        assert mine[0].encode(text) == tok.encode(text)


@pytest.mark.parametrize("pattern", [r"\p{L}+", r"\p{N}+", r"\s+(?!\S)", r"[^\s\p{L}\p{N}]+", "'(?i:[sdmt]|ll|ve|re)"])
def test_character_classes_match_oniguruma_on_every_code_point(rp, pattern):
    """\\p{L}, \\p{N}, \\s and case folding classify every character as HF's Oniguruma does."""
    chars = [chr(c) for c in range(1, 0x110000) if not 0xD800 <= c < 0xE000]
    if "?i" in pattern:  # characters that fold to ASCII letters (like U+017F, long s) are all in the BMP
        text = "".join(f"'{c}l'l{c}'{c}e'v{c}" for c in chars[:0xD000])
    else:
        text = "".join(chars)
    hf = pre_tokenizers.Split(Regex(pattern), behavior="isolated").pre_tokenize_str(text)
    mine = rp.translate_regex(pattern, rp.unicode_classes())
    pieces, last = [], 0
    for m in mine.finditer(text):  # matches and the gaps between them, as HF's "isolated" split gives
        pieces += [text[last:m.start()]] * (m.start() > last) + [m.group()]
        last = m.end()
    assert pieces + [text[last:]] * (last < len(text)) == [piece for piece, _ in hf]


def test_chatml_turns_and_imported_models_bos_and_eos(rp, gpt2_style):
    hf, spec = gpt2_style
    mine = rp.Tokenizer(spec)
    eot, im_end = hf.token_to_id("<|endoftext|>"), hf.token_to_id("<|im_end|>")
    encode = lambda text: hf.encode(text, add_special_tokens=False).ids  # noqa: E731
    ids, stops = rp.render_prompt(mine, "hi there", chat=True)
    assert ids == encode("<|im_start|>user\nhi there<|im_end|>\n<|im_start|>assistant\n") and stops == {im_end}
    assert rp.render_prompt(mine, "hi there", chat=False) == (encode("hi there"), set())  # GPT-2 style: no bos
    roles = {"bos_token": "<|endoftext|>", "eos_token": "<|im_end|>", "add_bos": True}  # as `llmos import` writes
    assert rp.render_prompt(mine, "hi there", False, roles) == ([eot, *encode("hi there")], {eot, im_end})
    with_post = json.loads(spec)  # a Llama-style post-processor that puts a bos first
    with_post["post_processor"] = {"type": "TemplateProcessing", "pair": [], "special_tokens": {}, "single": [
        {"SpecialToken": {"id": "<|endoftext|>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}]}
    assert rp.render_prompt(rp.Tokenizer(json.dumps(with_post)), "hi", False) == ([eot, *encode("hi")], {eot})


def test_top_p_keeps_the_nucleus(rp):
    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05], np.float32))
    rng = np.random.default_rng(0)
    assert {rp.sample(logits, 1.0, 0.7, rng) for _ in range(300)} == {0, 1}
    assert {rp.sample(logits, 1.0, 1.0, rng) for _ in range(300)} == {0, 1, 2, 3}
    assert rp.sample(np.array([1.0, 3.0, 3.0], np.float32), 0.0, 0.9, rng) == 1  # greedy: first maximum

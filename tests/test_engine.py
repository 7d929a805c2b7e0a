"""Sampling and the params file: determinism, stopping, greedy limits, exact save/load, clear errors."""
import json
import struct
from pathlib import Path

import pytest
import torch

from llmos.common import LlmosError
from llmos.infer.engine import generate, generate_batch, stream_text
from llmos.infer.sampling import SamplingParams, sample
from llmos.load import load_model
from llmos.model import ModelConfig, Transformer
from llmos.params import load_params, read_metadata, save_params


@pytest.fixture(scope="module")
def model(tok):
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=tok.vocab_size, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2,
                      max_seq_len=128, tie_embeddings=False)
    return Transformer(cfg).eval()


def test_sampling_is_deterministic_for_a_seed(model, tok):
    prompt = tok.encode("def main():", bos=True)
    a = list(generate(model, prompt, SamplingParams(max_tokens=40, temperature=1.0, top_p=0.9, seed=7)))
    b = list(generate(model, prompt, SamplingParams(max_tokens=40, temperature=1.0, top_p=0.9, seed=7)))
    c = list(generate(model, prompt, SamplingParams(max_tokens=40, temperature=1.0, top_p=0.9, seed=8)))
    assert a == b and a != c and len(a) == 40


def test_greedy_matches_argmax_of_full_forward(model, tok):
    prompt = tok.encode("import os", bos=True)
    out = list(generate(model, prompt, SamplingParams(max_tokens=20, temperature=0)))
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(20):
            ids.append(int(model(torch.tensor([ids]))[0, -1].argmax()))
    assert out == ids[len(prompt):]
    assert list(generate(model, prompt, SamplingParams(max_tokens=20, temperature=1.0, top_k=1, seed=3))) == out


def test_top_p_keeps_the_nucleus():
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    params = SamplingParams(temperature=1.0, top_p=0.7)
    draws = {sample(logits, params, torch.Generator().manual_seed(i)) for i in range(200)}
    assert draws == {0, 1}


def test_generation_stops_at_stop_ids(model, tok):
    prompt = tok.encode("x", bos=True)
    free = list(generate(model, prompt, SamplingParams(max_tokens=30, temperature=0)))
    stopped = list(generate(model, prompt, SamplingParams(max_tokens=30, temperature=0, stop_ids=[free[5]])))
    assert stopped == free[:free.index(free[5])]


def test_context_overflow_is_a_clear_error(model, tok):
    with pytest.raises(LlmosError, match="exceeds the model's context of 128"):
        list(generate(model, tok.encode("hi", bos=True), SamplingParams(max_tokens=200)))


def test_stream_text_holds_back_partial_characters(tok):
    ids = tok.encode("héllo 日本 ok")
    assert "".join(stream_text(tok, ids)) == "héllo 日本 ok"
    assert all("\ufffd" not in piece for piece in stream_text(tok, ids))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_params_file_round_trips(model, tok, tmp_path, dtype):
    path = save_params(tmp_path / "m.llmos", model, tok, provenance={"source": "test"}, dtype=dtype)
    loaded, tok2, info = load_params(path)
    x = torch.tensor([tok.encode("hello world", bos=True)])
    with torch.no_grad():
        expected = model(x) if dtype == torch.float32 else Transformer(model.cfg).eval()
        if dtype == torch.bfloat16:  # compare against the same weights rounded to bf16
            expected.load_state_dict({k: v.to(torch.bfloat16).float() for k, v in model.state_dict().items()})
            expected = expected(x)
        torch.testing.assert_close(loaded(x), expected)
    assert tok2.encode("hello") == tok.encode("hello") and info["provenance"]["source"] == "test"
    assert load_model(path)[0].cfg == model.cfg


def test_bad_params_files_get_clear_errors(model, tok, tmp_path):
    good = save_params(tmp_path / "m.llmos", model, tok).read_bytes()
    (tmp_path / "cut.llmos").write_bytes(good[:len(good) // 2])
    with pytest.raises(LlmosError, match="truncated"):
        load_params(tmp_path / "cut.llmos")
    (tmp_path / "text.llmos").write_text("hello, not a model")
    with pytest.raises(LlmosError, match="not a safetensors params file"):
        load_params(tmp_path / "text.llmos")
    header = json.dumps({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}).encode()
    (tmp_path / "foreign.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 4)
    with pytest.raises(LlmosError, match="not an llmos params file"):
        read_metadata(tmp_path / "foreign.safetensors")
    with pytest.raises(LlmosError, match="no model at"):
        load_model(tmp_path / "nothing-here")


def rewrite_header(src: Path, dst: Path, edit) -> Path:
    """A copy of the params file `src` whose safetensors header (parsed JSON) went through `edit`;
    data offsets count from the end of the header, so the weights stay where the header says."""
    data = src.read_bytes()
    size = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + size])
    raw = json.dumps(edit(header)).encode()
    dst.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + size:])
    return dst


def edit_config(**changes):
    def edit(header):
        header["__metadata__"]["config"] = json.dumps({**json.loads(header["__metadata__"]["config"]), **changes})
        return header
    return edit


def edit_meta(**changes):
    def edit(header):
        header["__metadata__"].update(changes)
        for key in [k for k, v in changes.items() if v is None]:
            del header["__metadata__"][key]
        return header
    return edit


def edit_tensor(name, value):
    def edit(header):
        header[name] = value(header[name])
        return header
    return edit


CORRUPT_HEADERS = {
    "not an object": (lambda header: [header], "corrupt safetensors header (not a JSON object)"),
    "metadata not strings": (edit_meta(config={"n_layers": 2}), "its metadata is not a map of strings"),
    "no config": (edit_meta(config=None), "has no config in its header"),
    "no tokenizer": (edit_meta(tokenizer=None), "has no tokenizer in its header"),
    "config not JSON": (edit_meta(config="{n_layers: 2"), "its config is not valid JSON"),
    "config not an object": (edit_meta(config="[2, 64]"), "its config is a list, not a JSON object"),
    "layers not a number": (edit_config(n_layers="x"), "n_layers must be an integer of at least 1, not 'x'"),
    "negative width": (edit_config(d_model=-64), "d_model must be an integer of at least 1, not -64"),
    "tie not a flag": (edit_config(tie_embeddings="no"), "tie_embeddings must be true or false"),
    "huge context": (edit_config(max_seq_len=2 ** 40), "exceeds llmos's limit of 1,048,576 positions"),
    "a layer more": (edit_config(n_layers=3), r"lacks weights for ['layers.2.attn_norm.weight'"),
    "a billion layers": (edit_config(n_layers=10 ** 9), "that its config (1,000,000,000 layers, width 64) needs"),
    "wider": (edit_config(d_model=128, n_heads=8, n_kv_heads=4),
              "weight shapes disagree with its config: embed.weight (512, 64) (expected (512, 128))"),
    "tokenizer not JSON": (edit_meta(tokenizer="{"), "its tokenizer is not a valid tokenizer.json"),
    "tensor not an object": (edit_tensor("norm.weight", lambda t: 3),
                             "tensor 'norm.weight' is not {dtype, shape, data_offsets}"),
    "shape not numbers": (edit_tensor("norm.weight", lambda t: {**t, "shape": ["64"]}),
                          "tensor 'norm.weight' is not {dtype, shape, data_offsets}"),
    "provenance not an object": (edit_meta(provenance="3"), "its provenance is a int, not a JSON object"),
    "bad tokenizer roles": (edit_meta(provenance=json.dumps({"tokenizer_roles": {"bos_token": 5}})),
                            "provenance.tokenizer_roles is not {bos_token, eos_token, add_bos}"),
}


@pytest.mark.parametrize("case", CORRUPT_HEADERS)
def test_corrupt_params_headers_are_clear_errors_before_any_allocation(case, model, tok, tmp_path, monkeypatch):
    edit, message = CORRUPT_HEADERS[case]
    good = save_params(tmp_path / "m.llmos", model, tok)
    bad = rewrite_header(good, tmp_path / "bad.llmos", edit)

    def no_model(cfg):
        raise AssertionError(f"a model was built for a corrupt file: {cfg}")
    monkeypatch.setattr("llmos.params.Transformer", no_model)
    with pytest.raises(LlmosError) as e:
        load_params(bad)
    assert message in str(e.value) and str(bad) in str(e.value)


def test_checkpoint_whose_weights_do_not_fit_its_config(model, tok, tmp_path):
    from llmos.train.loop import CKPT_VERSION
    state = {"version": CKPT_VERSION, "step": 3, "model": model.state_dict(), "tokenizer": tok.to_json(),
             "model_config": {**model.cfg.to_dict(), "d_ff": model.cfg.d_ff + 64}}
    torch.save(state, tmp_path / "wide.pt")
    with pytest.raises(LlmosError, match=r"wide.pt: weight shapes disagree with its config: layers.0.mlp.gate_proj"):
        load_model(tmp_path / "wide.pt")
    torch.save({**state, "model_config": {**model.cfg.to_dict(), "n_layers": "2"}}, tmp_path / "typo.pt")
    with pytest.raises(LlmosError, match="typo.pt: model config: n_layers must be an integer"):
        load_model(tmp_path / "typo.pt")
    torch.save({**state, "model_config": model.cfg.to_dict(), "tokenizer": "{"}, tmp_path / "tok.pt")
    with pytest.raises(LlmosError, match="tok.pt: its tokenizer is not a valid tokenizer.json"):
        load_model(tmp_path / "tok.pt")
    torch.save({**state, "model_config": model.cfg.to_dict()}, tmp_path / "good.pt")
    assert load_model(tmp_path / "good.pt")[0].cfg == model.cfg


def test_batched_greedy_matches_one_prompt_at_a_time(model, tok):
    prompts = [tok.encode(text, bos=True) for text in ("import os", "x", "def main():\n    return 42", "class A:")]
    stop = [tok.token_id("<|assistant_end|>")]
    params = SamplingParams(max_tokens=24, temperature=0, stop_ids=stop, repetition_penalty=1.3)
    alone = [list(generate(model, p, params)) for p in prompts]
    assert [s.tokens for s in generate_batch(model, prompts, params)] == alone
    # A row that stops early leaves while the others go on; it says which stop ended it.
    free = [list(generate(model, p, SamplingParams(max_tokens=24, temperature=0))) for p in prompts]
    early = free[0][5]
    first = free[0].index(early)  # where row 0 meets it first (at 5 or before)
    batched = generate_batch(model, prompts, SamplingParams(max_tokens=24, temperature=0, stop_ids=[early]))
    assert batched[0].tokens == free[0][:first] and batched[0].stopped_by == early and first + 1 < 24
    assert [s.tokens for s in batched[1:]] == [row[:row.index(early)] if early in row else row for row in free[1:]]
    assert max(len(s.tokens) for s in batched[1:]) > first  # another row went on after row 0 stopped


def test_repetition_penalty_breaks_loops(model, tok):
    prompt = tok.encode("the the the", bos=True)
    free = list(generate(model, prompt, SamplingParams(max_tokens=60, temperature=0)))
    assert list(generate(model, prompt, SamplingParams(max_tokens=60, temperature=0, repetition_penalty=1.0))) == free
    penalized = list(generate(model, prompt, SamplingParams(max_tokens=60, temperature=0, repetition_penalty=3.0)))
    assert len(set(penalized)) > len(set(free)), (len(set(free)), len(set(penalized)))
    with pytest.raises(LlmosError, match="repetition_penalty must be positive"):
        list(generate(model, prompt, SamplingParams(max_tokens=5, repetition_penalty=0)))

"""`llmos eval --loss`: bits per byte equal a hand computation from the model's logits, a model
trained on a text scores it better than an untrained one, int8 stays close to f32 while int4 moves,
and bad files get one clear line."""
import json
import math

import pytest
import torch
import torch.nn.functional as F

from llmos.cli import main
from llmos.data.corpus import load_texts
from llmos.eval.loss import score_text, windows
from llmos.load import load_model
from llmos.model import ModelConfig, Transformer
from llmos.params import load_params, save_params
from llmos.tokenizer import Tokenizer

CONTEXT = 64


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def text(corpus_dir):
    """Held-out Python source with some non-ASCII (bytes != characters), a few hundred tokens."""
    return "# naïve café — 日本語, ½ ✓\n" + next(iter(load_texts(corpus_dir, "val")))[:1500]


@pytest.fixture(scope="module")
def models(tok, text, tmp_path_factory):
    """An untrained model and the same one after 60 AdamW steps on the text itself, as params files."""
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=tok.vocab_size, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2,
                      max_seq_len=CONTEXT)
    model = Transformer(cfg)
    out = tmp_path_factory.mktemp("loss_models")
    untrained = save_params(out / "untrained.llmos", model, tok)
    ids = torch.tensor(tok.encode(text, bos=True))
    starts = torch.arange(0, len(ids) - CONTEXT - 1, 16)
    batch = torch.stack([ids[s:s + CONTEXT + 1] for s in starts])
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(60):
        loss = model(batch[:, :-1], targets=batch[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return {"untrained": untrained, "trained": save_params(out / "trained.llmos", model.eval(), tok)}


def hand_nll(model, seq: list[int], targets: range, context_start) -> float:
    """Summed -log p(seq[j] | seq[context_start(j):j]) over the targets (contexts of one length batched)."""
    by_length = {}
    for j in targets:
        by_length.setdefault(j - context_start(j), []).append(j)
    total = 0.0
    with torch.no_grad():
        for n, js in by_length.items():
            logits = model(torch.tensor([seq[j - n:j] for j in js]))[:, -1].double()
            total -= F.log_softmax(logits, dim=-1)[range(len(js)), [seq[j] for j in js]].sum().item()
    return total


def test_bits_per_byte_is_the_hand_computation(models, tok, text):
    reference, _, _ = load_params(models["trained"])  # the training-layout model, not the inference one
    model, _, _ = load_model(models["trained"])
    ids = tok.encode(text)
    seq = [tok.bos_id, *ids]
    window = 32
    # stride 1: every token scored from the `window` tokens before it (bos first, while it fits)
    got = score_text(model, tok, text, seq_len=window, stride=1, batch_size=16)
    nll = hand_nll(reference, seq, range(1, len(seq)), lambda j: max(0, j - window))
    assert got["tokens"] == len(ids) and got["bytes"] == len(text.encode("utf-8")) > len(text)
    assert got["nll_sum"] == pytest.approx(nll, rel=1e-5)
    assert got["loss"] == pytest.approx(nll / len(ids), rel=1e-5)
    assert got["perplexity"] == pytest.approx(math.exp(nll / len(ids)), rel=1e-5)
    assert got["bits_per_byte"] == pytest.approx(nll / math.log(2) / len(text.encode("utf-8")), rel=1e-5)
    # non-overlapping windows: a token sees back to the start of its window of `window` targets
    got = score_text(model, tok, text, seq_len=window, stride=window)
    last_full = (len(seq) - 1) // window * window  # a last partial window reaches back a whole window
    nll = hand_nll(reference, seq, range(1, len(seq)),
                   lambda j: (j - 1) // window * window if j <= last_full else len(seq) - 1 - window)
    assert got["nll_sum"] == pytest.approx(nll, rel=1e-5)


def test_without_bos_the_first_token_is_context_only(models, tok, text):
    no_bos = Tokenizer(tok.hf, add_bos=False)  # as an imported model's roles may say
    reference, _, _ = load_params(models["trained"])
    model, _, _ = load_model(models["trained"])
    short = text[:70]
    ids = no_bos.encode(short)
    assert 2 < len(ids) <= CONTEXT  # one window: a single forward is the hand computation
    got = score_text(model, no_bos, short)
    with torch.no_grad():
        logits = reference(torch.tensor([ids]))[0, :-1].double()
    nll = F.cross_entropy(logits, torch.tensor(ids[1:]), reduction="sum").item()
    first_bytes = len(tok.decode(ids[:1]).encode("utf-8"))
    assert got["tokens"] == len(ids) - 1 and got["bytes"] == len(short.encode("utf-8")) - first_bytes
    assert got["bits_per_byte"] == pytest.approx(nll / math.log(2) / got["bytes"], rel=1e-5)
    capped = score_text(model, no_bos, short, max_tokens=5)  # --max-tokens: the first 5 scored tokens
    assert capped["tokens"] == 5 and capped["bytes"] == len(tok.decode(ids[1:6]).encode("utf-8"))


@pytest.mark.parametrize("n, length, stride", [(2, 4, 2), (10, 4, 4), (11, 4, 3), (40, 8, 1), (5, 16, 8), (100, 7, 5)])
def test_windows_score_every_token_once_within_the_context(n, length, stride):
    scored = []
    for start, end, first in windows(n, length, stride):
        assert 0 <= start < first <= end + 1 and end - start <= length
        assert first - start >= min(first, length - stride + 1)  # a token sees at least L - S + 1 before it
        scored += range(first, end + 1)
    assert scored == list(range(1, n))


def run_cli(capsys, *argv) -> tuple[int, dict | None, str]:
    code = main(["eval", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, json.loads(out) if code == 0 else None, err


def test_training_lowers_the_loss_and_int8_stays_close_to_f32(models, text, tmp_path, capsys):
    path = tmp_path / "text.txt"
    path.write_text(text, encoding="utf-8")
    scores = {}
    for name, weights in (("untrained", "f32"), ("trained", "f32"), ("trained", "int8"), ("trained", "int4")):
        code, result, err = run_cli(capsys, "--model", models[name], "--loss", path, "--weights", weights)
        assert code == 0, err
        assert "bits/byte" in err and result["weights"] == weights and result["seq_len"] == CONTEXT
        scores[name, weights] = result["bits_per_byte"]
    assert scores["trained", "f32"] < 0.6 * scores["untrained", "f32"]
    int8_gap = abs(scores["trained", "int8"] - scores["trained", "f32"])
    int4_gap = abs(scores["trained", "int4"] - scores["trained", "f32"])
    # int8 (FBGEMM: 7-bit activations too) stays within a few percent; int4's coarser weights move further
    assert 0 < int8_gap < 0.03 * scores["trained", "f32"] and int4_gap > 2 * int8_gap, scores
    code, capped, _ = run_cli(capsys, "--model", models["trained"], "--loss", path, "--max-tokens", 20,
                              "--seq-len", 16, "--stride", 16, "--out", tmp_path / "r.json")
    assert code == 0 and capped["tokens"] == 20 and capped["windows"] == 2
    assert json.loads((tmp_path / "r.json").read_text()) == capped


def test_bad_files_and_mixed_flags_get_one_clear_line(models, tmp_path, capsys):
    (tmp_path / "latin1.txt").write_bytes("café au lait".encode("latin-1"))
    (tmp_path / "empty.txt").write_bytes(b"")
    (tmp_path / "ok.txt").write_text("def f(x):\n    return x\n")
    model = models["trained"]
    for argv, message in [
        (["--loss", tmp_path / "missing.txt"], "no text file at"),
        (["--loss", tmp_path / "latin1.txt"], "is not UTF-8 text (byte 3 is 0xe9): convert it first"),
        (["--loss", tmp_path / "empty.txt"], "is empty"),
        (["--loss", tmp_path], "is a directory"),
        (["--loss", tmp_path / "ok.txt", "--skills", 5, "--base", model], "--base, --skills: options of --data"),
        (["--data", tmp_path, "--weights", "int8"], "--weights: options of --loss"),
        (["--loss", tmp_path / "ok.txt", "--seq-len", 65], f"the model's context of {CONTEXT}, not 65"),
        (["--loss", tmp_path / "ok.txt", "--stride", 0], "--stride must be between 1"),
    ]:
        code, _, err = run_cli(capsys, "--model", model, *argv)
        assert code == 2 and message in err and "Traceback" not in err, (argv, err)
        assert len(err.strip().splitlines()) == 1, err
    with pytest.raises(SystemExit) as done:  # the two modes are one or the other
        main(["eval", "--model", str(model), "--data", str(tmp_path), "--loss", str(tmp_path / "ok.txt")])
    assert done.value.code == 2 and "not allowed with argument" in capsys.readouterr().err

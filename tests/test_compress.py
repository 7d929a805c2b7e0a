"""`llmos compress` / `llmos decompress`: exact round trips of held-out text and of binary bytes (files,
stdin/stdout, several batches of chunks, empty input, bytes the vocabulary lacks), a coded size equal
to the model's own cross-entropy (so the model's probabilities drive the coder), random bytes stored
as is rather than expanded, and one clear line, with nothing written, for another model, a corrupt
or foreign file, and a decode whose arithmetic differed."""
import hashlib
import io
import json
import math
import struct
import sys

import pytest
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, pre_tokenizers, trainers
from tokenizers import models as hf_models

from llmos import compress
from llmos.cli import main
from llmos.common import LlmosError
from llmos.data.corpus import load_texts
from llmos.model import ModelConfig, Transformer
from llmos.params import load_params, save_params
from llmos.tokenizer import Tokenizer

CONTEXT = 64

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def text(corpus_dir) -> bytes:
    """Held-out text (the corpus's validation split), with non-ASCII characters and a special token's
    spelling in it (the tokenizer turns that into the special token)."""
    held_out = next(iter(load_texts(corpus_dir, "val")))[:2500]
    return ("# naïve café — 日本語 ½ ✓ <|bos|>\n" + held_out).encode("utf-8")


@pytest.fixture(scope="module")
def binary() -> bytes:
    """Random bytes (mostly invalid UTF-8), a cut character, and a valid run between them."""
    return bytes(torch.randint(0, 256, (700,), generator=torch.Generator().manual_seed(1)).tolist()) \
        + b"\xe6\x97" + "valid text between ✓".encode() + b"\xff\xfe\x00\xc3"


@pytest.fixture(scope="module")
def models(tok, corpus_dir, tmp_path_factory):
    """A model trained briefly on the corpus's training split (a sixth below a uniform code on held-out
    text), and the untrained one it started from, as params files."""
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=tok.vocab_size, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2,
                      max_seq_len=CONTEXT)
    model = Transformer(cfg)
    out = tmp_path_factory.mktemp("compress_models")
    other = save_params(out / "other.llmos", model, tok)
    ids = torch.tensor(tok.encode("\n".join(list(load_texts(corpus_dir, "train"))[:20]), bos=True)[:20000])
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for step in range(60):
        starts = torch.randint(0, len(ids) - CONTEXT - 1, (16,), generator=torch.Generator().manual_seed(step))
        batch = torch.stack([ids[s:s + CONTEXT + 1] for s in starts])
        loss = model(batch[:, :-1], targets=batch[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return {"trained": save_params(out / "trained.llmos", model.eval(), tok), "other": other}


@pytest.fixture(scope="module")
def coder(models):
    return compress.load_coder(str(models["trained"]))


def run_cli(capsys, *argv) -> tuple[int, str]:
    code = main([*map(str, argv)])
    return code, capsys.readouterr().err


@pytest.mark.parametrize("kind", ["text", "text with binary"])
def test_files_round_trip_exactly(kind, text, binary, models, tmp_path, capsys, monkeypatch):
    """Default names both ways, the model found from the header; several batches of chunks (a small KV
    budget) whose last chunk is short, so the batch shrinks. Binary bytes amid text, so the model
    codes them (alone they are stored: see test_random_bytes_are_stored_not_expanded)."""
    data = {"text": text, "text with binary": text[:1200] + binary[:300] + text[1200:]}[kind]
    monkeypatch.setattr(compress, "KV_BUDGET", 3 * 2 * 2 * 2 * 16 * CONTEXT * 4)  # 3 chunks per batch
    src = tmp_path / "input.bin"
    src.write_bytes(data)
    code, err = run_cli(capsys, "compress", src, "--model", models["trained"])
    assert code == 0, err
    assert "bits/byte" in err and "MB/s" in err
    packed = tmp_path / "input.bin.llz"
    header, _ = compress.read_header(packed.read_bytes(), "x")
    assert not header["stored"] and "stored" not in err
    assert header["batch_rows"] == 3 and header["tokens"] > 3 * CONTEXT and header["tokens"] % CONTEXT
    src.unlink()
    code, err = run_cli(capsys, "decompress", packed)
    assert code == 0, err
    assert src.read_bytes() == data


def test_stdin_to_stdout(text, models, capsys, monkeypatch):
    def through(verb, data: bytes, *flags) -> bytes:
        out = io.BytesIO()
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))
        monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(out))
        assert main([verb, "-", *flags]) == 0
        return out.getvalue()

    packed = through("compress", text, "--model", str(models["trained"]))
    assert packed.startswith(compress.MAGIC) and len(packed) < len(text)
    assert through("decompress", packed) == text


def test_empty_input_round_trips(coder):
    blob, stats = compress.compress_bytes(b"", coder)
    assert stats["tokens"] == 0 and stats["payload_bytes"] <= 8
    assert compress.decompress_bytes(blob, coder)[0] == b""


def header_size(blob: bytes) -> int:
    """The preamble and the JSON header: everything before the payload."""
    (body,) = struct.unpack("<I", blob[compress.PREAMBLE - 4:compress.PREAMBLE])
    return compress.PREAMBLE + body


def test_random_bytes_are_stored_not_expanded(binary, models, tmp_path, capsys):
    """The model would code random bytes in ~15 bits each: the file stores them instead, at most the
    input plus its header, says so, and decompresses exactly."""
    src = tmp_path / "random.bin"
    src.write_bytes(binary)
    code, err = run_cli(capsys, "compress", src, "--model", models["trained"])
    assert code == 0 and "stored as is" in err, err
    blob = (tmp_path / "random.bin.llz").read_bytes()
    header, payload = compress.read_header(blob, "x")
    assert header["stored"] and payload == binary
    assert len(blob) <= len(binary) + header_size(blob)
    src.unlink()
    code, err = run_cli(capsys, "decompress", tmp_path / "random.bin.llz")
    assert code == 0 and "stored as is" in err, err
    assert src.read_bytes() == binary


def test_stored_stats_say_what_the_model_would_have_spent(binary, coder):
    blob, stats = compress.compress_bytes(binary, coder)
    assert stats["stored"] and stats["payload_bytes"] == len(binary) < stats["coded_bytes"]
    assert stats["model_bits"] > 8 * len(binary)  # why it was stored: the model's code is longer
    assert stats["output_bytes"] == len(blob) == header_size(blob) + len(binary)


def test_coded_size_is_the_models_cross_entropy(text, tok, models, coder):
    """The payload costs what the model's probabilities say the tokens cost (computed here from a
    plain forward pass of the training-layout model, chunk by chunk from the leading token), within
    1%, and that is well below a uniform code (9 bits a token): a coder not driven by the model misses."""
    _, stats = compress.compress_bytes(text, coder)
    ids = tok.encode(text.decode("utf-8"))
    assert stats["tokens"] == len(ids) and stats["bytes_one_by_one"] == 0
    reference, _, _ = load_params(models["trained"])
    nll = 0.0
    with torch.no_grad():
        for start in range(0, len(ids), CONTEXT):
            chunk = ids[start:start + CONTEXT]
            logits = reference(torch.tensor([[coder.leading_token, *chunk[:-1]]]))[0].double()
            nll += F.cross_entropy(logits, torch.tensor(chunk), reduction="sum").item()
    model_bits = nll / math.log(2) + ids.count(coder.leading_token) * math.log2(257)  # "<|bos|>" in the text
    assert stats["model_bits"] == pytest.approx(model_bits, rel=1e-4)
    assert abs(8 * stats["payload_bytes"] - model_bits) < 0.01 * model_bits + 64
    assert model_bits < 0.9 * len(ids) * math.log2(tok.vocab_size)


def test_another_model_is_a_clear_error(text, models, tmp_path, capsys):
    packed, out = tmp_path / "t.llz", tmp_path / "t"
    packed.write_bytes(compress.compress_bytes(text, compress.load_coder(str(models["trained"])))[0])
    code, err = run_cli(capsys, "decompress", packed, "--model", models["other"])
    assert code == 2 and "Traceback" not in err
    assert f"compressed with the model {models['trained']}" in err and f"{models['other']} is another model" in err
    assert not out.exists()


def rewrite(blob: bytes, edit_header=None, payload=None) -> bytes:
    """A .llz file with its header edited or payload replaced, and a matching file checksum."""
    header, old_payload = compress.read_header(blob, "x")
    if edit_header:
        edit_header(header)
    body = json.dumps(header).encode()
    rest = struct.pack("<I", len(body)) + body + (old_payload if payload is None else payload)
    return blob[:5] + hashlib.sha256(rest).digest() + rest


def test_bad_files_get_one_clear_line_and_no_output(text, coder, models, tmp_path, capsys):
    blob = compress.compress_bytes(text, coder)[0]
    tampered = bytearray(blob)
    tampered[-5] ^= 0x10
    cases = {
        "tampered": (bytes(tampered), "is corrupt or truncated (its checksum does not match)"),
        "truncated": (blob[:-9], "is corrupt or truncated"),
        "cut in its header": (blob[:20], "is truncated"),
        "foreign": (b"\x1f\x8b" + blob[2:], "is not a file of llmos compress"),
        "newer": (blob[:4] + b"\x09" + blob[5:], "is a .llz file of version 9; this llmos reads version 1"),
        # an intact file whose decoding disagrees with its checksum: what another CPU's arithmetic gives
        "arithmetic": (rewrite(blob, lambda h: h.update(input_sha256="0" * 64)),
                       "this machine computes the model's probabilities differently"),
    }
    for name, (content, message) in cases.items():
        packed = tmp_path / f"{name.replace(' ', '_')}.llz"
        packed.write_bytes(content)
        code, err = run_cli(capsys, "decompress", packed, "--model", models["trained"])
        assert code == 2 and message in err and "Traceback" not in err, (name, err)
        assert not packed.with_suffix("").exists(), name


def test_a_tampered_stored_file_is_a_clear_error(binary, coder, models, tmp_path, capsys):
    """A stored file is checked like any other: its checksum, the model's fingerprint (though its bytes
    need no model), and, with a forged checksum, the input's sha256."""
    blob = compress.compress_bytes(binary, coder)[0]
    _, payload = compress.read_header(blob, "x")
    tampered = bytearray(blob)
    tampered[-100] ^= 0x01
    garbled = bytes(payload[:50]) + bytes((payload[50] ^ 0x01,)) + payload[51:]
    cases = {
        "tampered": (bytes(tampered), models["trained"], "is corrupt or truncated (its checksum does not match)"),
        "forged checksum": (rewrite(blob, payload=garbled), models["trained"],
                            "is corrupt: its stored bytes do not match the input's sha256"),
        "cut payload": (rewrite(blob, payload=payload[:-3]), models["trained"],
                        "is corrupt: its stored bytes do not match the input's sha256"),
        "another model": (blob, models["other"], f"{models['other']} is another model"),
    }
    for name, (content, model, message) in cases.items():
        packed = tmp_path / f"{name.replace(' ', '_')}.llz"
        packed.write_bytes(content)
        code, err = run_cli(capsys, "decompress", packed, "--model", model)
        assert code == 2 and message in err and "Traceback" not in err, (name, err)
        assert "probabilities differently" not in err, name
        assert not packed.with_suffix("").exists(), name


def test_payload_garbled_with_a_valid_checksum_never_decodes_silently(text, coder):
    """The input's sha256 is the last line of defence: decoding a garbled payload fails, never
    returns other bytes."""
    blob = compress.compress_bytes(text, coder)[0]
    _, payload = compress.read_header(blob, "x")
    garbled = payload[:8] + bytes(b ^ 0x5A for b in payload[8:16]) + payload[16:]
    with pytest.raises(LlmosError, match="did not reproduce its input"):
        compress.decompress_bytes(rewrite(blob, payload=garbled), coder)


def test_bytes_without_a_token_are_escaped(corpus_dir, tmp_path):
    """A vocabulary that lacks some single-byte tokens (as SmolLM2's lacks 21) drops characters with
    those bytes: they go as escapes, byte by byte, and the text around them still as tokens."""
    missing = (0x04, 0x06, 0xF1, 0xFF)
    hf = HFTokenizer(hf_models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    alphabet = [c for b, c in compress._bytes_to_unicode().items() if b not in missing]
    hf.train_from_iterator(list(load_texts(corpus_dir, "train"))[:10], trainers.BpeTrainer(
        vocab_size=320, special_tokens=["<|bos|>"], initial_alphabet=alphabet, show_progress=False))
    tok = Tokenizer(hf)
    assert all(hf.token_to_id(compress._bytes_to_unicode()[b]) is None for b in missing)
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=tok.vocab_size, d_model=32, n_layers=1, n_heads=2, n_kv_heads=2,
                                    max_seq_len=CONTEXT))
    coder = compress.load_coder(str(save_params(tmp_path / "gappy.llmos", model, tok)))
    data = b"def f(x):\n    return x \x04 + 1\x06\n" + "# \U00040000 end\n".encode() + b"\xff tail"
    blob, stats = compress.compress_bytes(data, coder)
    assert not stats["stored"]  # the escapes go through the model's coder
    assert stats["bytes_one_by_one"] == 1 + 1 + 4 + 1  # \x04, \x06, U+40000 (F1 80 80 80), \xff
    assert compress.decompress_bytes(blob, coder)[0] == data


def test_a_tokenizer_not_spelled_in_bytes_is_refused():
    pieces = Tokenizer(HFTokenizer(hf_models.WordLevel({"\u2581hello": 0, "<unk>": 1}, unk_token="<unk>")))
    with pytest.raises(LlmosError, match="is not byte-level BPE"):
        compress.byte_spellings(pieces, "sentencepiece-like")


def test_no_model_and_no_speedrun_asks_for_one(tmp_path, capsys):
    src = tmp_path / "a.txt"
    src.write_text("hello")
    code, err = run_cli(capsys, "compress", src)
    assert code == 2 and "give --model" in err and not (tmp_path / "a.txt.llz").exists()


@pytest.mark.parametrize("verb", ["compress", "decompress"])
def test_help(verb, capsys):
    with pytest.raises(SystemExit) as done:
        main([verb, "--help"])
    assert done.value.code == 0 and f"usage: llmos {verb}" in capsys.readouterr().out

"""The BPE tokenizer: exact round trips, reserved special tokens, byte accounting."""
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmos.common import LlmosError
from llmos.tokenizer import SPECIAL_TOKENS, Tokenizer, bytes_per_token


@pytest.fixture(scope="module")
def tok(tokenizer_path):
    return Tokenizer.load(tokenizer_path)


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_any_unicode_string_round_trips(tok, text):
    assert tok.decode(tok.encode(text)) == text


def test_special_tokens_are_reserved_first(tok):
    assert [tok.token_id(t) for t in SPECIAL_TOKENS] == list(range(len(SPECIAL_TOKENS)))
    assert tok.encode("hi", bos=True)[0] == tok.bos_id == 0
    assert tok.vocab_size == 512


def test_token_bytes_count_the_utf8_bytes(tok):
    text = "naïve café — 日本語 def f(x):\n    return x"
    assert int(tok.token_bytes[tok.encode(text)].sum()) == len(text.encode("utf-8"))
    assert tok.token_bytes[tok.bos_id] == 0


def test_bpe_compresses_real_text(tok, corpus_dir):
    from llmos.data.corpus import load_texts
    stats = bytes_per_token(tok, load_texts(corpus_dir, "val"))
    assert stats["bytes_per_token"] > 2.0  # merges learned; raw bytes would give 1.0


def test_save_load_and_errors(tok, tmp_path):
    tok.save(tmp_path / "t.json")
    assert Tokenizer.load(tmp_path / "t.json").encode("hello world") == tok.encode("hello world")
    with pytest.raises(LlmosError, match="no tokenizer at"):
        Tokenizer.load(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(LlmosError, match="not a valid tokenizer.json"):
        Tokenizer.load(tmp_path / "bad.json")
    with pytest.raises(LlmosError, match="too small"):
        Tokenizer.train(["abc"], vocab_size=100)

"""Byte-level BPE tokenizer (HF `tokenizers`) with the special tokens every later stage needs.

    tok = Tokenizer.train(texts, vocab_size=4096)     # texts: any iterable of str
    tok.save("tokenizer.json"); tok = Tokenizer.load("tokenizer.json")
    ids = tok.encode("Hello", bos=True); text = tok.decode(ids)

Text is split GPT-4 style (letters, 1-3 digit numbers, punctuation runs, whitespace) and then
mapped to bytes, so any Unicode string round-trips exactly. Special tokens come first in the vocab
(ids 0..N-1) and are reserved now for chat, tool calls and tool results.
"""
from __future__ import annotations

import hashlib
import json
from functools import cached_property
from pathlib import Path
from typing import Iterable

import numpy as np
from tokenizers import Regex, decoders, models, pre_tokenizers, trainers
from tokenizers import Tokenizer as HFTokenizer

from llmos.common import LlmosError, atomic_write

BOS = "<|bos|>"
SPECIAL_TOKENS = [
    BOS,
    "<|system_start|>", "<|system_end|>",
    "<|user_start|>", "<|user_end|>",
    "<|assistant_start|>", "<|assistant_end|>",
    "<|tool_call_start|>", "<|tool_call_end|>",
    "<|tool_result_start|>", "<|tool_result_end|>",
    "<|pad|>",
]
SPLIT_PATTERN = (r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++[\r\n]*"""
                 r"""|\s*[\r\n]|\s+(?!\S)|\s+""")


class Tokenizer:
    """llmos's own tokenizers have `<|bos|>` and always start a document with it. An imported model's
    tokenizer names its own roles: `bos_token` (None: `<|bos|>` if present, else the token the
    tokenizer.json's post-processor prepends, else none), `add_bos` (None: whether a bos was found
    that way) and `eos_token` (where generation stops, besides bos)."""

    def __init__(self, hf: HFTokenizer, bos_token: str | None = None, eos_token: str | None = None,
                 add_bos: bool | None = None):
        self.hf = hf
        if bos_token is None:
            bos_token = BOS if hf.token_to_id(BOS) is not None else _post_processor_bos(hf)
        self.bos_id = self.token_id(bos_token) if bos_token is not None else None
        self.add_bos = (self.bos_id is not None) if add_bos is None else add_bos
        self.eos_id = self.token_id(eos_token) if eos_token else None

    @property
    def stop_ids(self) -> list[int]:
        """Token ids that end a generation: the document separator (bos) and the model's eos."""
        return [i for i in (self.bos_id, self.eos_id) if i is not None]

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int = 4096, min_frequency: int = 2) -> "Tokenizer":
        floor = 256 + len(SPECIAL_TOKENS)
        if vocab_size < floor:
            raise LlmosError(f"vocab_size {vocab_size} is too small: byte-level BPE needs at least {floor}")
        hf = HFTokenizer(models.BPE())
        hf.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
        hf.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                      special_tokens=SPECIAL_TOKENS, show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        hf.train_from_iterator(texts, trainer=trainer)
        return cls(hf)

    @classmethod
    def load(cls, path: str | Path) -> "Tokenizer":
        path = Path(path)
        if not path.is_file():
            raise LlmosError(f"no tokenizer at {path}: train one with `llmos tokenizer train`")
        try:
            return cls(HFTokenizer.from_file(str(path)))
        except Exception as e:
            raise LlmosError(f"{path} is not a valid tokenizer.json ({e})") from None

    @classmethod
    def from_json(cls, text: str, **roles) -> "Tokenizer":
        return cls(HFTokenizer.from_str(text), **roles)

    def to_json(self) -> str:
        return self.hf.to_str()

    def save(self, path: str | Path) -> None:
        with atomic_write(path, "w") as f:
            f.write(self.to_json())

    @property
    def vocab_size(self) -> int:
        return self.hf.get_vocab_size()

    def token_id(self, token: str) -> int:
        i = self.hf.token_to_id(token)
        if i is None:
            raise LlmosError(f"tokenizer has no special token {token}: it was not trained by llmos")
        return i

    def encode(self, text: str, bos: bool = False) -> list[int]:
        """`bos=True` starts the ids with bos when the model expects one (imported models may not)."""
        ids = self.hf.encode(text, add_special_tokens=False).ids
        return [self.bos_id, *ids] if bos and self.add_bos else ids

    def encode_batch(self, texts: list[str], bos: bool = False) -> list[list[int]]:
        out = [e.ids for e in self.hf.encode_batch(texts, add_special_tokens=False)]
        return [[self.bos_id, *ids] for ids in out] if bos and self.add_bos else out

    def decode(self, ids: Iterable[int]) -> str:
        return self.hf.decode(list(ids), skip_special_tokens=False)

    @cached_property
    def token_bytes(self) -> np.ndarray:
        """UTF-8 byte length of every token (0 for special tokens): turns nats/token into bits/byte.
        Byte-level BPE spells each byte as one printable character, so a token's length is its bytes."""
        special = set(self.hf.get_added_tokens_decoder())
        lengths = np.zeros(self.vocab_size, dtype=np.int32)
        for token, i in self.hf.get_vocab().items():
            if i not in special:
                lengths[i] = len(token)
        return lengths

    def fingerprint(self) -> str:
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:12]


def _post_processor_bos(hf: HFTokenizer) -> str | None:
    """The special token a Hugging Face TemplateProcessing post-processor puts first, if any."""
    post = json.loads(hf.to_str()).get("post_processor") or {}
    if post.get("type") == "TemplateProcessing" and post["single"] and "SpecialToken" in post["single"][0]:
        return post["single"][0]["SpecialToken"]["id"]
    return None


def bytes_per_token(tok: Tokenizer, texts: Iterable[str]) -> dict:
    n_bytes = n_tokens = 0
    for text in texts:
        n_bytes += len(text.encode("utf-8"))
        n_tokens += len(tok.encode(text))
    if n_tokens == 0:
        raise LlmosError("no text to measure: the split is empty")
    return {"bytes": n_bytes, "tokens": n_tokens, "bytes_per_token": n_bytes / n_tokens}


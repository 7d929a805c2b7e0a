"""Token shards and the batch loader.

A prepared corpus (`train.jsonl`, `val.jsonl`) is tokenized once per tokenizer and corpus content
into flat binary files under `CORPUS/tokens/<tokenizer fingerprint>-<corpus fingerprint>/`, so a
corpus re-prepared in place is never read through the old corpus's shards. Every document starts
with the bos token, ids are uint16 when the vocab fits (else uint32), and the files are read back
as numpy memmaps. Building holds the corpus directory's lock, as `prepare` does.

`TokenLoader` cuts the stream into windows of seq_len + 1 tokens and visits them in a seeded
random order, one epoch after another. Its position (`state_dict`) is saved in checkpoints, so a
resumed run sees exactly the batches it would have seen. Under DDP rank r takes the r-th slice of
each global batch, so N processes with batch B/N see the same data as one process with batch B.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from llmos.common import LlmosError, atomic_write, file_lock, read_json, write_json
from llmos.data.corpus import SPLITS, fingerprint, read_documents
from llmos.tokenizer import Tokenizer


def build_shards(corpus_dir: str | Path, tok: Tokenizer, batch_docs: int = 512) -> Path:
    """Tokenize both splits of a prepared corpus (once); return the directory holding them."""
    corpus_dir = Path(corpus_dir)
    for split in SPLITS:
        if not (corpus_dir / f"{split}.jsonl").is_file():
            raise LlmosError(f"{corpus_dir / f'{split}.jsonl'} is missing: run `llmos data prepare` first")
    corpus = fingerprint(corpus_dir)
    out = corpus_dir / "tokens" / f"{tok.fingerprint()}-{corpus[:12]}"
    if (out / "meta.json").is_file():
        return out
    with file_lock(corpus_dir / ".lock", f"the corpus directory {corpus_dir}"):
        if not (out / "meta.json").is_file():  # else another process built them while this one waited
            _tokenize(corpus_dir, tok, out, batch_docs, corpus)
    return out


def _tokenize(corpus_dir: Path, tok: Tokenizer, out: Path, batch_docs: int, corpus: str) -> None:
    dtype = np.uint16 if tok.vocab_size <= 1 << 16 else np.uint32
    meta = {"vocab_size": tok.vocab_size, "dtype": np.dtype(dtype).name, "corpus": corpus}
    for split in SPLITS:
        src = corpus_dir / f"{split}.jsonl"
        n_tokens = n_bytes = 0
        with atomic_write(out / f"{split}.bin") as f, tqdm(desc=f"tokenize {split}", unit="B", unit_scale=True) as bar:
            batch: list[str] = []

            def flush():
                nonlocal n_tokens
                for ids in tok.encode_batch(batch, bos=True):
                    np.asarray(ids, dtype=dtype).tofile(f)
                    n_tokens += len(ids)
                batch.clear()

            for doc in read_documents(src):
                batch.append(doc["text"])
                size = len(doc["text"].encode("utf-8"))
                n_bytes += size
                bar.update(size)
                if len(batch) >= batch_docs:
                    flush()
            flush()
        meta[split] = {"tokens": n_tokens, "bytes": n_bytes}
    write_json(out / "meta.json", meta)


def load_tokens(shards: Path, split: str) -> np.ndarray:
    meta = read_json(Path(shards) / "meta.json", "token shard metadata")
    return np.memmap(Path(shards) / f"{split}.bin", dtype=meta["dtype"], mode="r")


class TokenLoader:
    def __init__(self, tokens: np.ndarray, batch_size: int, seq_len: int, seed: int = 0,
                 rank: int = 0, world_size: int = 1):
        self.tokens, self.batch_size, self.seq_len = tokens, batch_size, seq_len
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.n_windows = (len(tokens) - 1) // seq_len
        if self.n_windows < batch_size * world_size:
            raise LlmosError(f"only {len(tokens):,} tokens: too few for a batch of {batch_size * world_size} "
                             f"windows of {seq_len}; add data or lower --batch-size / --seq-len")
        self.epoch, self.pos = 0, 0
        self._order_epoch, self._order = -1, None

    def _window_order(self) -> np.ndarray:
        if self._order_epoch != self.epoch:
            self._order = np.random.default_rng([self.seed, self.epoch]).permutation(self.n_windows)
            self._order_epoch = self.epoch
        return self._order

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        global_batch = self.batch_size * self.world_size
        if self.pos + global_batch > self.n_windows:
            self.epoch, self.pos = self.epoch + 1, 0
        start = self.pos + self.rank * self.batch_size
        windows = self._window_order()[start:start + self.batch_size]
        self.pos += global_batch
        T = self.seq_len
        rows = np.stack([self.tokens[i * T:i * T + T + 1] for i in windows]).astype(np.int64)
        rows = torch.from_numpy(rows)
        return rows[:, :-1], rows[:, 1:]

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.pos, self.seed = state["epoch"], state["pos"], state["seed"]


def eval_batches(tokens: np.ndarray, seq_len: int, max_tokens: int, batch_size: int = 16,
                 rank: int = 0, world_size: int = 1):
    """The first `max_tokens` of a split as (x, y) batches, the same ones every evaluation; ranks split them."""
    n = min((len(tokens) - 1) // seq_len, max(1, max_tokens // seq_len))
    mine = list(range(rank, n, world_size))
    for b in range(0, len(mine), batch_size):
        rows = np.stack([tokens[i * seq_len:(i + 1) * seq_len + 1] for i in mine[b:b + batch_size]])
        rows = torch.from_numpy(rows.astype(np.int64))
        yield rows[:, :-1], rows[:, 1:]

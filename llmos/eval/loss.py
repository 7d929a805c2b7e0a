"""Text loss: perplexity and bits per byte of any model on any UTF-8 text file.

    llmos eval --model M --loss book.txt [--weights int4] [--seq-len 512] [--stride 256] [--max-tokens N]
    result = evaluate_loss("smollm2-135m-instruct", "book.txt", weights="int8")
    result = score_text(model, tok, text)          # an inference model already loaded

The text is tokenized whole with the model's tokenizer, a bos first only when the tokenizer's
add_bos role says the model expects one. Every token is scored from the tokens before it, in
windows of the model's context (or --seq-len L) that slide by --stride S tokens:

    the first window scores its L tokens (each from everything before it, bos included);
    each later window is the L tokens before its S new ones, which are all it scores.

So every token after the first window sees from L - S + 1 to L earlier tokens. The default stride is
half the window, the usual trade: twice the compute of non-overlapping windows for a loss that no
longer counts tokens scored from almost no context. S = L gives non-overlapping windows (what
pretraining's validation does: there a token sees from 1 to L earlier ones); S = 1 scores every
token from a full window (the best estimate, for L times the compute). Only the text's start has
a bos; a later window starts mid-text, as the random windows of pretraining do. Without a bos the
text's first token has nothing to be scored from: it is context only, and its bytes are not counted.

    tokens         tokens scored
    bytes          UTF-8 bytes those tokens spell
    nll_sum        their summed negative log-likelihood, in nats
    loss           nll_sum / tokens (nats per token)
    perplexity     exp(loss)
    bits_per_byte  nll_sum / ln 2 / bytes: comparable across tokenizers, unlike the two above

Windows run in batches (8, fewer when a batch's logits would pass 1 GiB) under inference_mode.
"""
from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from llmos.common import LlmosError
from llmos.tokenizer import Tokenizer

LOGITS_BUDGET = 2 ** 28  # float32 logits per batch (1 GiB): a 49k vocabulary at 2048 tokens is 100M a window
DEFAULT_BATCH = 8


def read_text(path: str | Path) -> str:
    """A file's UTF-8 text, or one clear error saying what to do."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise LlmosError(f"{path} is a directory: give --loss a text file")
    if not path.is_file():
        raise LlmosError(f"no text file at {path}: give --loss the path of a UTF-8 text file")
    data = path.read_bytes()
    if not data:
        raise LlmosError(f"{path} is empty: give --loss a file with some text to score")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise LlmosError(f"{path} is not UTF-8 text (byte {e.start} is 0x{data[e.start]:02x}): convert it first, "
                         f"e.g. `iconv -f latin1 -t utf-8 {path.name} > text.txt`") from None


def windows(n: int, length: int, stride: int) -> list[tuple[int, int, int]]:
    """(start, end, first) per window over a sequence of n tokens whose positions 1..n-1 are scored:
    the window's input is seq[start:end] (at most `length` tokens) and it scores the targets
    seq[first:end + 1], predicted at its positions first - 1 - start .. end - 1 - start."""
    out, first = [], 1
    while first < n:
        last = min((first + length if not out else first + stride), n) - 1  # the last target scored
        start = max(0, last - length)
        out.append((start, last, first))
        first = last + 1
    return out


def score_text(model, tok: Tokenizer, text: str, seq_len: int | None = None, stride: int | None = None,
               max_tokens: int | None = None, batch_size: int | None = None, progress: bool = False) -> dict:
    """Score `text` with an inference model (see the module docstring). None: the defaults, the
    model's context for seq_len, half the window for stride, all tokens, 8 windows a batch."""
    context = model.cfg.max_seq_len
    length = seq_len if seq_len is not None else context
    if not 1 <= length <= context:
        raise LlmosError(f"--seq-len must be between 1 and the model's context of {context}, not {length}")
    stride = stride if stride is not None else max(1, length // 2)
    if not 1 <= stride <= length:
        raise LlmosError(f"--stride must be between 1 and the window of {length} tokens, not {stride}")
    if max_tokens is not None and max_tokens < 1:
        raise LlmosError(f"--max-tokens must be at least 1, not {max_tokens}")
    if batch_size is not None and batch_size < 1:
        raise LlmosError(f"--batch-size must be at least 1, not {batch_size}")
    batch = batch_size or max(1, min(DEFAULT_BATCH, LOGITS_BUDGET // (length * model.cfg.vocab_size)))

    ids = tok.encode(text)
    seq = ([tok.bos_id] if tok.add_bos else []) + ids
    seq = seq[:max_tokens + 1] if max_tokens is not None else seq
    if len(seq) < 2:
        raise LlmosError("the text is a single token and the model has no bos to score it from: "
                         "give a longer text")
    unscored = 0 if tok.add_bos else 1  # text tokens before the first scored one
    scored_ids = len(seq) - 1

    def spelled_bytes(k: int) -> int:
        """UTF-8 bytes of the text's first k tokens (a cut inside a character counts its U+FFFD)."""
        return len(text.encode("utf-8")) if k == len(ids) else len(tok.decode(ids[:k]).encode("utf-8"))

    n_bytes = spelled_bytes(unscored + scored_ids) - spelled_bytes(unscored)
    spans = windows(len(seq), length, stride)
    nll = 0.0
    device = next(model.buffers()).device
    bar = tqdm(total=scored_ids, unit="tok", file=sys.stderr, leave=False, disable=None if progress else True)
    with torch.inference_mode():
        for b in range(0, len(spans), batch):
            group = spans[b:b + batch]
            width = max(end - start for start, end, _ in group)  # only a lone first window is shorter
            x = torch.zeros(len(group), width, dtype=torch.long)
            for row, (start, end, _) in enumerate(group):
                x[row, :end - start] = torch.tensor(seq[start:end])
            logits = model(x.to(device))
            for row, (start, end, first) in enumerate(group):
                targets = torch.tensor(seq[first:end + 1], device=device)
                nll += F.cross_entropy(logits[row, first - 1 - start:end - start], targets, reduction="sum").item()
                bar.update(end + 1 - first)
    bar.close()
    loss = nll / scored_ids
    return {"tokens": scored_ids, "bytes": n_bytes, "nll_sum": nll, "loss": loss,
            "perplexity": math.exp(loss) if loss < 700 else math.inf,
            "bits_per_byte": nll / math.log(2) / n_bytes if n_bytes else math.inf,
            "seq_len": length, "stride": stride, "windows": len(spans)}


def evaluate_loss(ref: str, path: str | Path, weights: str | None = None, seq_len: int | None = None,
                  stride: int | None = None, max_tokens: int | None = None, batch_size: int | None = None,
                  progress: bool = False) -> dict:
    """Load the model behind `ref` for inference (weights: f32, f16, int8, int4, w8a8; None: as stored) and
    score the text file at `path`. The result names the model, file and weights it measured."""
    from llmos.load import load_model
    text = read_text(path)  # before the model: a wrong path fails at once
    model, tok, info = load_model(ref, weights=weights)
    started = time.perf_counter()
    result = score_text(model, tok, text, seq_len=seq_len, stride=stride, max_tokens=max_tokens,
                        batch_size=batch_size, progress=progress)
    return {"model": str(ref), "file": str(path), "weights": weights or info.get("weights", "f32"), **result,
            "seconds": round(time.perf_counter() - started, 3)}

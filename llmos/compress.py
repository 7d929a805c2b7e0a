"""The model as a compressor: entropy coding driven by the model's next-token probabilities.

    llmos compress FILE [-o FILE.llz] [--model M]      # - reads stdin / writes stdout
    llmos decompress FILE.llz [-o FILE] [--model M]    # the model named in the file by default
    blob, stats = compress_bytes(data, coder);  data, stats = decompress_bytes(blob, coder)

Tokens. The input's maximal valid UTF-8 runs are tokenized; every other byte (binary input) goes as
the tokenizer's single-byte token. Byte-level BPE vocabularies have one for most bytes (llmos's own
for all 256, SmolLM2's for 235: it drops characters with the other 21 bytes); a byte without one goes
as an escape: the chunks' leading token, then the byte from a uniform 257-way code (256 meaning the
escape token itself, when the text spells it). The tokens' bytes, concatenated, must spell the input
exactly (checked before coding; text the tokenizer does not spell back goes byte by byte). The
decoder never tokenizes: it concatenates the bytes of the tokens it decodes.

Coding. The tokens are cut into chunks of the model's context (at most CHUNK_TOKENS), each preceded
by the leading token (the document start), and a batch of chunks is run through the model together,
one token per step, with the KV cache: step s feeds every chunk's token s-1 and gives each its
distribution over token s. Those float32 logits become float64 probabilities, which constriction's
categorical model quantizes to integers for its range coder (one stream, symbols in step order,
chunk order within a step). As short chunks end the batch shrinks. The encoder and decoder run
this same function (`_run_model`) with the same shapes and torch thread count (recorded in the file),
so they compute the same probabilities bit for bit: the encoder codes the known tokens, the decoder
decodes them and feeds them back. No prefill shortcut on one side only: a prefill would sum in
another order and could flip a quantized probability.

The .llz file:

    b"LLMZ" | version (1 byte) | sha256 of everything after it (32) | header length (u32 LE) |
    header (JSON) | payload (the range coder's u32 words, LE; or, stored, the input itself)

The header names the model as given (decompress finds it by default), its fingerprint (a hash of the
config, tokenizer and stored weights, with the weights scheme), the thread count, the chunk layout,
the input's length and sha256, whether the input is stored, and the encoder's CPU and library
versions. Decompressing checks the magic, version and file checksum (a corrupt or truncated file),
then the model's fingerprint (a different model), then, after decoding, the input's sha256: a
mismatch there, with the file intact and the model the same, means this machine computed the
model's probabilities differently (another CPU kind, torch or constriction version), and nothing is
written. docs/benchmarks.md says which CPUs were seen to decode each other's files.

Stored. Input the model cannot shrink (random or already compressed bytes: a single-byte token
costs a text model ~15 bits) would grow, so when the model's coding is not smaller than the input,
the payload is the input as is and the header says "stored": true; the file is then at most the
input plus the preamble and header. A stored file gets the same checks, the model's fingerprint included, and its
bytes are checked against the input's sha256 instead of being decoded.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import re
import struct
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from llmos.common import LlmosError, atomic_write, llmos_home, os_error_message
from llmos.model import Transformer
from llmos.tokenizer import Tokenizer

MAGIC = b"LLMZ"
VERSION = 1
PREAMBLE = len(MAGIC) + 1 + 32 + 4  # magic, version, checksum, header length
CHUNK_TOKENS = 2048  # longer chunks compress a little better, but fewer of them share each step's weight reads
KV_BUDGET = 2 << 30  # bytes of KV cache per batch of chunks (its rows); more chunks run in further batches
DEFAULT_RUN = ("runs", "speedrun-cpu", "base")  # under LLMOS_HOME: the default model
LITERAL = 256  # the escape of the escape token itself: escapes are 0-255 (a byte) or this
HEADER_FIELDS = {"model": str, "fingerprint": str, "threads": int, "chunk_tokens": int, "batch_rows": int,
                 "tokens": int, "leading_token": int, "input_bytes": int, "input_sha256": str, "stored": bool,
                 "encoder": dict}


@dataclass
class Coder:
    """An inference model ready to code: its tokenizer, byte spellings and fingerprint."""
    model: Transformer
    tok: Tokenizer
    ref: str  # as the header names it
    fingerprint: str
    weights: str  # the scheme the matrices are stored and run in
    spellings: list[bytes]  # token id -> the bytes it stands for
    byte_tokens: list[int | None]  # byte value -> its single-byte token (None: escaped)

    @property
    def leading_token(self) -> int:
        """The token each chunk starts from: a document start. An llmos model's bos; an imported model
        without one (SmolLM2's bos role is a chat turn's start) takes GPT-2's document separator."""
        tok = self.tok
        if tok.add_bos and tok.bos_id is not None:
            return tok.bos_id
        for candidate in ("<|endoftext|>", "<|end_of_text|>", "<|begin_of_text|>"):
            if (i := tok.hf.token_to_id(candidate)) is not None:
                return i
        for i in (tok.bos_id, tok.eos_id):
            if i is not None:
                return i
        raise LlmosError(f"{self.ref}'s tokenizer has no bos, eos or end-of-text token to start a chunk from")


def default_model() -> str:
    """The speedrun's base model (LLMOS_HOME/runs/speedrun-cpu/base), else an error asking for --model."""
    run = llmos_home().joinpath(*DEFAULT_RUN)
    if not (run / "model.llmos").is_file():
        raise LlmosError(f"no model given and no speedrun base model at {run}: give --model (a run directory, "
                         ".llmos file or named model such as smollm2-135m-instruct), or run `llmos speedrun`")
    return str(run)


def load_coder(ref: str) -> Coder:
    """load_model's inference model, with a fingerprint of the weights as stored (the float copies of
    quantized ones are left out: expanding them is arithmetic that may differ between CPUs)."""
    from llmos.load import open_model
    path = Path(ref).expanduser()
    named = str(path.resolve()) if path.exists() else str(ref)
    model, tok, info = open_model(ref)
    stored = info.pop("quantized", None) or {}
    weights = info.get("weights", "f32")
    digest = hashlib.sha256()
    for part in (json.dumps(model.cfg.to_dict(), sort_keys=True), tok.to_json(), weights):
        digest.update(part.encode())
    for name, tensor in model.state_dict().items():
        if model.cfg.tie_embeddings and name == "lm_head.weight":
            continue
        parts = stored[name].tensors(name) if name in stored else {name: tensor}
        for part_name, t in parts.items():
            digest.update(part_name.encode())
            digest.update(t.detach().contiguous().numpy().view(np.uint8))
    model.prepare_inference(None, stored=stored)
    spellings, byte_tokens = byte_spellings(tok, named)
    return Coder(model, tok, named, digest.hexdigest()[:16], weights, spellings, byte_tokens)


def _bytes_to_unicode() -> dict[int, str]:
    """Byte-level BPE's alphabet (GPT-2): each byte as one printable character."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    rest = [b for b in range(256) if b not in printable]
    return {**{b: chr(b) for b in printable}, **{b: chr(256 + i) for i, b in enumerate(rest)}}


def byte_spellings(tok: Tokenizer, name: str) -> tuple[list[bytes], list[int | None]]:
    """(the bytes of every token, the single-byte token of every byte, None where the vocabulary has
    none): an added token (special ones included) spells its content, any other its byte-level
    characters."""
    alphabet = _bytes_to_unicode()
    to_byte = {c: b for b, c in alphabet.items()}
    added = {i: t.content for i, t in tok.hf.get_added_tokens_decoder().items()}
    spellings = [b""] * tok.vocab_size
    for token, i in tok.hf.get_vocab().items():
        if i in added:
            spellings[i] = added[i].encode("utf-8")
        elif all(c in to_byte for c in token):
            spellings[i] = bytes(to_byte[c] for c in token)
        else:
            raise LlmosError(f"{name}'s tokenizer is not byte-level BPE (its token {token!r} is not spelled in "
                             "bytes): llmos compress needs one, like llmos's own or SmolLM2's")
    return spellings, [tok.hf.token_to_id(alphabet[b]) for b in range(256)]


def to_symbols(data: bytes, coder: Coder) -> tuple[list[int], list[int], int]:
    """(token ids, escapes, bytes that went one by one): the ids and escapes spell `data` exactly
    (see `spell`). A byte without a single-byte token is the escape token (the leading one) with the
    byte as its escape; the escape token itself, when the tokenizer makes it, has the escape 256."""
    escape = coder.leading_token
    ids, escapes, one_by_one = [], [], 0

    def add_tokens(run: list[int]) -> None:
        ids.extend(run)
        escapes.extend(LITERAL if i == escape else -1 for i in run)

    def add_bytes(raw: bytes) -> None:
        nonlocal one_by_one
        one_by_one += len(raw)
        for b in raw:
            token = coder.byte_tokens[b]
            ids.append(escape if token is None else token)
            escapes.append(b if token is None else -1)

    def spelled(run: list[int], raw: bytes) -> bool:
        return b"".join(coder.spellings[i] for i in run) == raw

    text = data.decode("utf-8", errors="surrogateescape")  # invalid bytes become lone surrogates
    pieces = re.split("([\udc80-\udcff]+)", text)  # even: valid UTF-8 runs; odd: the bytes between them
    runs = [p for p in pieces[0::2] if p]
    encoded = iter(coder.tok.hf.encode_batch(runs, add_special_tokens=False)) if runs else iter(())
    for k, piece in enumerate(pieces):
        if not piece:
            continue
        raw = piece.encode("utf-8", errors="surrogateescape")
        if k % 2:
            add_bytes(raw)
            continue
        run = next(encoded).ids
        if spelled(run, raw):
            add_tokens(run)
            continue
        # The tokenizer drops characters with a byte it has no token for (SmolLM2 lacks 21 bytes):
        # those go byte by byte and the text between them through the tokenizer; what still does
        # not spell back (a normalizer's change) goes byte by byte too.
        dropped = "".join(c for c in set(piece) if any(coder.byte_tokens[b] is None for b in c.encode()))
        parts = re.split(f"([{re.escape(dropped)}]+)", piece) if dropped else [piece]
        for j, part in enumerate(parts):
            part_raw = part.encode("utf-8")
            run = coder.tok.hf.encode(part, add_special_tokens=False).ids if part and j % 2 == 0 else None
            if run is not None and spelled(run, part_raw):
                add_tokens(run)
            else:
                add_bytes(part_raw)
    if spell(coder, ids, escapes) != data:
        raise LlmosError("the tokens do not spell the input back (a bug in llmos compress): nothing was written")
    return ids, escapes, one_by_one


def spell(coder: Coder, ids, escapes) -> bytes:
    """The bytes a stream of token ids and escapes stands for: what the decoder writes."""
    return b"".join(coder.spellings[i] if e < 0 or e == LITERAL else bytes((e,)) for i, e in zip(ids, escapes))


def chunk_lengths(n_tokens: int, chunk_tokens: int) -> list[int]:
    """Full chunks, then the rest: only the last is shorter, so the batch shrinks from its end."""
    full, rest = divmod(n_tokens, chunk_tokens)
    return [chunk_tokens] * full + ([rest] if rest else [])


def batch_rows(model: Transformer, chunk_tokens: int) -> int:
    """Chunks per batch: as many as KV_BUDGET holds at this chunk length."""
    cfg = model.cfg
    per_row = 2 * cfg.n_layers * cfg.n_kv_heads * cfg.head_dim * chunk_tokens * 4
    return max(1, KV_BUDGET // per_row)


@contextlib.contextmanager
def torch_threads(n: int):
    """Matmuls may sum in another order with another thread count: both sides use the header's."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def chunk_table(values: list[int], lengths: list[int], chunk_tokens: int) -> np.ndarray:
    """(chunks, chunk_tokens) int32: row c holds chunk c's values (-1 past a short chunk's end)."""
    table = np.full((len(lengths), chunk_tokens), -1, dtype=np.int32)
    for c, n in enumerate(lengths):
        table[c, :n] = values[c * chunk_tokens:c * chunk_tokens + n]
    return table


def _run_model(model: Transformer, leading_token: int, lengths: list[int], rows_per_batch: int, code_step,
               bar: tqdm) -> None:
    """The computation both sides share: batches of chunks, one token per step. `code_step(first, rows,
    s, probabilities)` codes token s of chunks first..first+rows-1 and returns their ids (int32)."""
    with torch.inference_mode():
        for first in range(0, len(lengths), rows_per_batch):
            group = lengths[first:first + rows_per_batch]
            cache = model.new_kv_cache(len(group), group[0])
            feed = torch.full((len(group), 1), leading_token, dtype=torch.long)
            for s in range(group[0]):
                rows = sum(n > s for n in group)  # a prefix: only the last chunk is shorter
                logits = model(feed[:rows], kv_cache=cache)[:, 0]
                probabilities = torch.softmax(logits.double(), dim=-1).numpy()
                ids = code_step(first, rows, s, probabilities)
                feed = torch.from_numpy(ids.astype(np.int64))[:, None]
                bar.update(rows)


def _progress(total: int, what: str, progress: bool) -> tqdm:
    return tqdm(total=total, unit="tok", desc=what, file=sys.stderr, leave=False, disable=None if progress else True)


def machine_facts() -> dict:
    """What decides the probabilities' last bits, for the header and for the error when they differ."""
    from importlib.metadata import version

    from llmos.perf import machine
    facts = machine()
    return {"cpu": facts["cpu"], "capability": facts["capability"], "torch": torch.__version__,
            "constriction": version("constriction")}


def compress_bytes(data: bytes, coder: Coder, chunk_tokens: int | None = None, threads: int | None = None,
                   progress: bool = False) -> tuple[bytes, dict]:
    """`data` as a .llz file, and figures: tokens, model_bits (the summed -log2 p of the coded tokens
    under the model's float probabilities, and 8.006 bits per escape: what an ideal coder would
    spend), coded_bytes (the model's coding), stored (that was not smaller than `data`, so the file
    holds `data` itself), payload_bytes (the file's payload), bytes_one_by_one (not UTF-8, or not
    spelled back by the tokenizer), seconds (the model loaded: tokenizing and coding)."""
    import constriction
    started = time.perf_counter()
    context = coder.model.cfg.max_seq_len
    chunk_tokens = chunk_tokens or min(context, CHUNK_TOKENS)
    if not 1 <= chunk_tokens <= context:
        raise LlmosError(f"--chunk-tokens must be between 1 and the model's context of {context}, not {chunk_tokens}")
    if threads is not None and threads < 1:
        raise LlmosError(f"--threads must be at least 1, not {threads}")
    threads = threads or torch.get_num_threads()
    ids, escapes, one_by_one = to_symbols(data, coder)
    lengths = chunk_lengths(len(ids), chunk_tokens)
    table, escape_table = chunk_table(ids, lengths, chunk_tokens), chunk_table(escapes, lengths, chunk_tokens)
    rows_per_batch = batch_rows(coder.model, chunk_tokens)
    encoder = constriction.stream.queue.RangeEncoder()
    family, uniform = constriction.stream.model.Categorical(perfect=False), constriction.stream.model.Uniform(257)
    model_bits = 0.0

    def code_step(first, rows, s, probabilities):
        nonlocal model_bits
        symbols = table[first:first + rows, s]
        encoder.encode(symbols, family, probabilities)
        model_bits -= np.log2(probabilities[np.arange(rows), symbols]).sum()
        escaped = escape_table[first:first + rows, s][symbols == coder.leading_token]
        if escaped.size:  # after the step's tokens, in row order
            encoder.encode(escaped, uniform)
            model_bits += escaped.size * np.log2(257)
        return symbols

    with torch_threads(threads), _progress(len(ids), "compress", progress) as bar:
        _run_model(coder.model, coder.leading_token, lengths, rows_per_batch, code_step, bar)
    coded = encoder.get_compressed().astype("<u4").tobytes()
    stored = len(coded) >= len(data)  # the model would expand it: keep the input as is
    payload = data if stored else coded
    header = {"model": coder.ref, "fingerprint": coder.fingerprint, "weights": coder.weights,
              "threads": threads, "chunk_tokens": chunk_tokens, "batch_rows": rows_per_batch,
              "tokens": len(ids), "leading_token": coder.leading_token, "input_bytes": len(data),
              "input_sha256": hashlib.sha256(data).hexdigest(), "stored": stored, "encoder": machine_facts()}
    body = json.dumps(header, separators=(",", ":")).encode()
    rest = struct.pack("<I", len(body)) + body + payload
    blob = MAGIC + bytes([VERSION]) + hashlib.sha256(rest).digest() + rest
    return blob, {"input_bytes": len(data), "output_bytes": len(blob), "payload_bytes": len(payload),
                  "stored": stored, "coded_bytes": len(coded), "tokens": len(ids), "chunks": len(lengths), "bytes_one_by_one": one_by_one,
                  "model_bits": float(model_bits), "threads": threads, "chunk_tokens": chunk_tokens,
                  "seconds": time.perf_counter() - started}


def read_header(blob: bytes, name: str) -> tuple[dict, bytes]:
    """(header, payload) of a .llz file, or a clear error: not one, another version, corrupt, truncated."""
    if blob[:len(MAGIC)] != MAGIC:
        raise LlmosError(f"{name} is not a file of llmos compress (it does not start with {MAGIC.decode()})")
    if len(blob) < PREAMBLE:
        raise LlmosError(f"{name} is truncated: it ends inside its header")
    if blob[len(MAGIC)] != VERSION:
        raise LlmosError(f"{name} is a .llz file of version {blob[len(MAGIC)]}; this llmos reads version "
                         f"{VERSION}: decompress it with the llmos that wrote it")
    checksum, rest = blob[len(MAGIC) + 1:len(MAGIC) + 33], blob[len(MAGIC) + 33:]
    if hashlib.sha256(rest).digest() != checksum:
        raise LlmosError(f"{name} is corrupt or truncated (its checksum does not match): nothing was decompressed")
    (size,) = struct.unpack("<I", rest[:4])
    try:
        header = json.loads(rest[4:4 + size])
    except ValueError:
        header = None
    if not (isinstance(header, dict) and all(isinstance(header.get(k), kind) for k, kind in HEADER_FIELDS.items())):
        raise LlmosError(f"{name} has a malformed header: it was not written by llmos compress")
    payload = rest[4 + size:]
    if not header["stored"] and len(payload) % 4:
        raise LlmosError(f"{name} has a malformed payload (not whole 32-bit words)")
    return header, payload


def decompress_bytes(blob: bytes, coder: Coder | None = None, name: str = "the input", progress: bool = False,
                     model: str | None = None) -> tuple[bytes, dict]:
    """The bytes a .llz file holds, checked against its sha256. `coder` (or `model`, a reference; default
    the model its header names) must be the model that compressed it, even when the file is stored and
    its bytes need no model: a file opens with the model that wrote it or not at all, whatever its
    content happened to be, so a wrong model fails the same way on every file, not only on those the
    model could shrink."""
    import constriction
    header, payload = read_header(blob, name)
    if coder is None:
        try:
            coder = load_coder(model or header["model"])
        except LlmosError as e:
            if model:
                raise
            raise LlmosError(f"{name} was compressed with the model {header['model']}, which cannot be loaded "
                             f"here ({e}): give that model with --model") from None
    if coder.fingerprint != header["fingerprint"]:
        raise LlmosError(f"{name} was compressed with the model {header['model']} (fingerprint "
                         f"{header['fingerprint']}, {header.get('weights', '?')} weights); {coder.ref} is another "
                         f"model (fingerprint {coder.fingerprint}, {coder.weights}): decompress with the same model")
    chunk_tokens, vocab = header["chunk_tokens"], coder.model.cfg.vocab_size
    if not 1 <= chunk_tokens <= coder.model.cfg.max_seq_len or header["batch_rows"] < 1 \
            or not 0 <= header["leading_token"] < vocab or header["threads"] < 1 or header["tokens"] < 0:
        raise LlmosError(f"{name} has a malformed header: it was not written by llmos compress")
    started = time.perf_counter()
    if header["stored"]:
        if len(payload) != header["input_bytes"] or hashlib.sha256(payload).hexdigest() != header["input_sha256"]:
            raise LlmosError(f"{name} is corrupt: its stored bytes do not match the input's sha256 in its header "
                             "(nothing was decompressed)")
        return payload, {"input_bytes": len(blob), "output_bytes": len(payload), "tokens": 0, "stored": True,
                         "seconds": time.perf_counter() - started}
    escape = header["leading_token"]
    lengths = chunk_lengths(header["tokens"], chunk_tokens)
    table = np.zeros((len(lengths), chunk_tokens), dtype=np.int32)
    escape_table = np.full((len(lengths), chunk_tokens), -1, dtype=np.int32)
    decoder = constriction.stream.queue.RangeDecoder(np.frombuffer(payload, dtype="<u4").astype(np.uint32))
    family, uniform = constriction.stream.model.Categorical(perfect=False), constriction.stream.model.Uniform(257)

    def code_step(first, rows, s, probabilities):
        try:
            symbols = decoder.decode(family, probabilities)
            escaped = symbols == escape
            if escaped.any():
                escape_table[first:first + rows, s][escaped] = decoder.decode(uniform, int(escaped.sum()))
        except AssertionError:  # constriction: the data cannot come from these probabilities
            raise diverged(name, header) from None
        table[first:first + rows, s] = symbols
        return symbols

    with torch_threads(header["threads"]), _progress(header["tokens"], "decompress", progress) as bar:
        _run_model(coder.model, escape, lengths, header["batch_rows"], code_step, bar)
    ids, escapes = (np.concatenate([t[c, :n] for c, n in enumerate(lengths)]).tolist() if lengths else []
                    for t in (table, escape_table))
    data = spell(coder, ids, escapes)
    if len(data) != header["input_bytes"] or hashlib.sha256(data).hexdigest() != header["input_sha256"]:
        raise diverged(name, header)
    return data, {"input_bytes": len(blob), "output_bytes": len(data), "tokens": header["tokens"], "stored": False,
                  "seconds": time.perf_counter() - started}


def diverged(name: str, header: dict) -> LlmosError:
    """The decode went astray though the file is intact and the model the same."""
    return LlmosError(f"decoding {name} did not reproduce its input (the checksum differs) though the file is "
                      "intact and the model the same: this machine computes the model's probabilities "
                      f"differently (compressed on {describe(header['encoder'])}; here {describe(machine_facts())}). "
                      "Decompress it on a machine like the one that compressed it; nothing was written")


def describe(facts: dict) -> str:
    return (f"{facts.get('cpu', '?')} ({facts.get('capability', '?')}) with torch {facts.get('torch', '?')}, "
            f"constriction {facts.get('constriction', '?')}")


# ----- the command line (llmos/cli.py's compress and decompress verbs) -----

def read_input(path: str) -> bytes:
    if path == "-":
        return sys.stdin.buffer.read()
    p = Path(path).expanduser()
    if p.is_dir():
        raise LlmosError(f"{p} is a directory: give a file")
    if not p.is_file():
        raise LlmosError(f"no file at {p}")
    try:
        return p.read_bytes()
    except OSError as e:
        raise LlmosError(f"could not read {os_error_message(e, p)}") from None


def write_output(path: str, data: bytes) -> None:
    if path == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return
    with atomic_write(Path(path).expanduser()) as f:
        f.write(data)


def summary(verb: str, stats: dict, n_bytes: int) -> str:
    """One line for stderr: sizes, bits per byte of the original, whether it is stored, speed over the
    original's bytes."""
    bpb = 8 * stats["output_bytes" if verb == "compressed" else "input_bytes"] / n_bytes if n_bytes else 0.0
    estimate = f"; the model's estimate {stats['model_bits'] / n_bytes:.3f}" if "model_bits" in stats and n_bytes else ""
    if not stats.get("stored"):
        stored = ""
    elif "coded_bytes" in stats:
        stored = f"stored as is (the model's coding, {stats['coded_bytes']:,} bytes, was not smaller), "
    else:
        stored = "stored as is, "
    return (f"{verb} {stats['input_bytes']:,} -> {stats['output_bytes']:,} bytes ({bpb:.3f} bits/byte{estimate}), "
            f"{stored}{stats['tokens']:,} tokens in {stats['seconds']:.1f} s, "
            f"{n_bytes / 1e6 / max(stats['seconds'], 1e-9):.4f} MB/s")


def compress_file(src: str, out: str | None, model: str | None, chunk_tokens: int | None = None,
                  threads: int | None = None) -> None:
    out = out or ("-" if src == "-" else f"{src}.llz")
    data = read_input(src)
    coder = load_coder(model or default_model())
    blob, stats = compress_bytes(data, coder, chunk_tokens=chunk_tokens, threads=threads, progress=True)
    write_output(out, blob)
    print(summary("compressed", stats, len(data)), file=sys.stderr)


def decompress_file(src: str, out: str | None, model: str | None) -> None:
    if out is None:
        if src != "-" and not src.endswith(".llz"):
            raise LlmosError(f"{src} does not end in .llz: name the output with -o")
        out = "-" if src == "-" else src[:-len(".llz")]
    blob = read_input(src)
    data, stats = decompress_bytes(blob, name="stdin" if src == "-" else src, model=model, progress=True)
    write_output(out, data)
    print(summary("decompressed", stats, len(data)), file=sys.stderr)

#!/usr/bin/env python3
"""run.py: the second of the two files. An llmos model is a params file plus this code that runs it.

    python run.py MODEL.llmos "Once upon a time" [-t 0.8] [-p 0.95] [-n 200] [-s 0] [--chat] [--ids]

Only NumPy and the standard library: the safetensors header is parsed here (int8 and int4 matrices
are expanded to float32 as they load), the byte-level BPE tokenizer is rebuilt from the
tokenizer.json stored in the file's metadata, and the Llama-style transformer (RMSNorm, RoPE,
grouped-query attention, SwiGLU) runs with a preallocated KV cache.
It reads top to bottom like llama2.c's run.c: config and weights -> tokenizer -> forward ->
sampling -> main. Text streams to stdout; the decode speed goes to stderr at the end.
"""
from __future__ import annotations

import argparse
import codecs
import json
import os
import re
import struct
import sys
import time
import unicodedata

if __name__ == "__main__":  # batch-1 decode is small matmuls: extra BLAS threads cost more than they give
    for var in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "OMP_NUM_THREADS"):
        os.environ.setdefault(var, "1")

import numpy as np  # noqa: E402


class Error(Exception):
    """A problem with the user's input, printed as one line (no traceback)."""


# ----------------------------------------------------------------------------------------------
# 1. The params file: a safetensors file. 8 bytes of header length (little-endian u64), a JSON
#    header {name: {dtype, shape, data_offsets}, "__metadata__": {...}}, then the raw tensor bytes.

DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16,  # BF16 is read as raw 16-bit words
          "I8": np.int8, "U8": np.uint8}  # int8 and int4 (two codes a byte) matrices, with float scales


def read_params(path: str) -> tuple[dict, dict, dict]:
    """Returns (config, metadata, {name: float32 array})."""
    if not os.path.isfile(path):
        raise Error(f"params file {path} does not exist")
    with open(path, "rb") as f:
        data = f.read()
    size = struct.unpack("<Q", data[:8])[0] if len(data) >= 8 else -1
    if not 2 <= size <= 100_000_000 or len(data) < 8 + size:
        raise Error(f"{path} is not a safetensors params file, or it is truncated")
    try:
        header = json.loads(data[8:8 + size])
    except ValueError:
        raise Error(f"{path} has a corrupt safetensors header") from None
    meta = header.pop("__metadata__", {})
    if meta.get("format") != "llmos":
        raise Error(f"{path} is a safetensors file but not an llmos params file (no format=llmos metadata)")
    if meta.get("format_version") != "1":
        raise Error(f"{path} has params format version {meta.get('format_version')}; run.py reads version 1")
    end = max((t["data_offsets"][1] for t in header.values()), default=0)
    if len(data) < 8 + size + end:
        raise Error(f"{path} is truncated: its header promises {end:,} bytes of weights, "
                    f"the file holds {len(data) - 8 - size:,}")
    tensors = {}
    for name, t in header.items():
        if t["dtype"] not in DTYPES:
            raise Error(f"{path}: tensor {name} has dtype {t['dtype']}; run.py reads F32, F16, BF16, I8 and U8")
        start, stop = t["data_offsets"]
        raw = np.frombuffer(data, DTYPES[t["dtype"]], offset=8 + size + start,
                            count=(stop - start) // np.dtype(DTYPES[t["dtype"]]).itemsize).reshape(t["shape"])
        if t["dtype"] == "BF16":  # bfloat16 is the top half of a float32
            raw = (raw.astype(np.uint32) << 16).view(np.float32)
        tensors[name] = raw if t["dtype"] in ("I8", "U8") else raw.astype(np.float32, copy=False)
    for name in [n for n, t in header.items() if t["dtype"] in ("I8", "U8")]:
        tensors[name] = dequantize(tensors, name, path)
    cfg = json.loads(meta["config"])
    cfg["head_dim"] = cfg.get("head_dim") or cfg["d_model"] // cfg["n_heads"]
    return cfg, meta, tensors


def dequantize(tensors: dict, name: str, path: str) -> np.ndarray:
    """A quantized matrix as float32; its NAME.scale (and NAME.offset) leave `tensors`, so they are
    never taken for weights. int8: w = data * scale, one scale per output row. int4 (U8, two codes
    a byte, the even column in the low nibble): w = code * scale + offset, per group of 32 inputs."""
    data, scale, offset = tensors[name], tensors.pop(name + ".scale", None), tensors.pop(name + ".offset", None)
    if scale is None or (data.dtype == np.uint8 and offset is None):
        raise Error(f"{path}: the quantized weight {name} lacks its scale or offset: the file is corrupt")
    if data.dtype == np.int8:
        return data * scale[:, None]
    codes = np.stack([data & 15, data >> 4], axis=-1).reshape(data.shape[0], -1)  # (out, in), column order
    return codes * np.repeat(scale, 32, axis=1) + np.repeat(offset, 32, axis=1)


# ----------------------------------------------------------------------------------------------
# 2. The tokenizer: byte-level BPE from the HF tokenizer.json. encode = split out special tokens,
#    pre-tokenize with a regex, map each piece's UTF-8 bytes to printable characters, merge pairs
#    by rank, look the pieces up in the vocab. decode = the same mapping backwards.

def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character map: printable bytes stay, the rest move to 256+."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


# HF's regexes (Oniguruma) use \p{L} (letters), \p{N} (numbers) and a Unicode \s; Python's `re`
# has no \p{..} and its \s also takes U+001C..U+001F. So we spell the classes out from
# unicodedata. HF's Oniguruma knows Unicode 16, older Pythons less: these are the letters and
# numbers added since Unicode 14 (Python 3.11), as hex ranges.
NEWER_LETTERS = ("1c89-1c8a a7cb-a7cd a7da-a7dc 105c0-105f3 10d4a-10d65 10d6f-10d85 10ec2-10ec4 "
                 "1123f-11240 11380-11389 1138b 1138e 11390-113b5 113b7 113d1 113d3 11bc0-11be0 11f02 "
                 "11f04-11f10 11f12-11f33 1342f 13441-13446 13460-143fa 16100-1611d 16d40-16d6c 18cff "
                 "1b132 1b155 1df25-1df2a 1e030-1e06d 1e4d0-1e4eb 1e5d0-1e5ed 1e5f0 2b739 2ebf0-2ee5d "
                 "31350-323af")
NEWER_NUMBERS = ("10d40-10d49 116d0-116e3 11bf0-11bf9 11f50-11f59 16130-16139 16d70-16d79 1ccf0-1ccf9 "
                 "1d2c0-1d2d3 1e4f0-1e4f9 1e5f1-1e5fa")
WHITESPACE = r"\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


def unicode_classes() -> dict[str, str]:
    """The bodies of character classes (no brackets) for \\p{L}, \\p{N} and \\s."""
    code_points = {"L": set(), "N": set()}
    for c in range(0x40000):  # planes 4-16 hold no letters or numbers
        cat = unicodedata.category(chr(c))[0]
        if cat in code_points:
            code_points[cat].add(c)
    for cat, extra in (("L", NEWER_LETTERS), ("N", NEWER_NUMBERS)):
        for r in extra.split():
            a, _, b = r.partition("-")
            code_points[cat].update(range(int(a, 16), int(b or a, 16) + 1))
    out = {r"\s": WHITESPACE}
    for cat, cps in code_points.items():
        ranges, cps = [], sorted(cps)
        for c in cps:
            if ranges and ranges[-1][1] == c - 1:
                ranges[-1][1] = c
            else:
                ranges.append([c, c])
        out[rf"\p{{{cat}}}"] = "".join(rf"\U{a:08x}-\U{b:08x}" for a, b in ranges)
    return out


def translate_regex(pattern: str, classes: dict[str, str]) -> re.Pattern:
    """An Oniguruma pattern as a Python one (possessive quantifiers need Python 3.11)."""
    out, in_class, i = [], False, 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            esc = pattern[i:i + 5] if pattern[i + 1] == "p" else pattern[i:i + 2]
            i += len(esc)
            if esc in classes:
                out.append(classes[esc] if in_class else f"[{classes[esc]}]")
            elif esc == r"\S" and not in_class:
                out.append("[^" + classes[r"\s"] + "]")
            elif esc.startswith((r"\p", r"\S", r"\w", r"\d")):
                raise Error(f"the tokenizer's regex uses {esc}, which run.py does not translate")
            else:
                out.append(esc)
            continue
        if c == "[" and not in_class:
            in_class = True
            if pattern[i + 1:i + 2] == "^":
                c, i = "[^", i + 1
        elif c == "]" and in_class:
            in_class = False
        out.append(c)
        i += 1
    try:
        return re.compile("".join(out))
    except re.error as e:
        raise Error(f"cannot compile the tokenizer's regex in this Python ({e}): use Python >= 3.11") from None


def split_isolated(rx: re.Pattern, text: str) -> list[str]:
    """HF's Split(behavior="isolated"): the matches and the text between them, in order."""
    pieces, last = [], 0
    for m in rx.finditer(text):
        pieces += [text[last:m.start()], m.group()]
        last = m.end()
    return [p for p in pieces + [text[last:]] if p]


class Tokenizer:
    def __init__(self, tokenizer_json: str):
        spec = json.loads(tokenizer_json)
        model = spec["model"]
        if model.get("type") != "BPE":
            raise Error(f"run.py runs byte-level BPE tokenizers, not {model.get('type')}")
        self.vocab: dict[str, int] = dict(model["vocab"])
        self.specials = {t["content"]: t["id"] for t in spec.get("added_tokens", [])}
        self.vocab.update(self.specials)
        self.ranks = {tuple(m.split(" ") if isinstance(m, str) else m): r for r, m in enumerate(model["merges"])}
        self.ignore_merges = model.get("ignore_merges", False)
        self.byte_char = bytes_to_unicode()
        self.char_byte = {c: b for b, c in self.byte_char.items()}
        self.pieces = [b""] * (max(self.vocab.values()) + 1)  # id -> bytes, for decoding
        for token, i in self.vocab.items():
            byte_level = token not in self.specials and all(c in self.char_byte for c in token)
            self.pieces[i] = bytes(self.char_byte[c] for c in token) if byte_level else token.encode()
        # special tokens are matched as whole tokens first, the longest one at each position
        specials = sorted(self.specials, key=len, reverse=True)
        self.special_re = re.compile("(" + "|".join(map(re.escape, specials)) + ")") if specials else None
        post = spec.get("post_processor") or {}  # a bos the tokenizer.json itself prepends (Llama style)
        first = (post.get("single") or [{}])[0] if post.get("type") == "TemplateProcessing" else {}
        self.post_processor_bos = first["SpecialToken"]["id"] if "SpecialToken" in first else None
        self.normalizer = spec.get("normalizer")
        if self.normalizer and self.normalizer.get("type") not in ("NFC", "NFD", "NFKC", "NFKD"):
            raise Error(f"run.py does not implement the tokenizer's {self.normalizer.get('type')} normalizer")
        # the pre-tokenizer: llmos's Sequence[Split(regex, isolated), ByteLevel(use_regex=False)],
        # or GPT-2's ByteLevel(use_regex=True) as in SmolLM2
        pre = spec.get("pre_tokenizer") or {"type": None}
        patterns, self.add_prefix_space = [], False
        for p in (pre["pretokenizers"] if pre["type"] == "Sequence" else [pre]):
            if p["type"] == "Split" and p.get("behavior") == "Isolated" and not p.get("invert"):
                patterns.append(p["pattern"].get("Regex") or re.escape(p["pattern"]["String"]))
            elif p["type"] == "ByteLevel":
                patterns += [GPT2_PATTERN] if p.get("use_regex", True) else []
                self.add_prefix_space = p.get("add_prefix_space", False)
            else:
                raise Error(f"run.py does not implement the tokenizer's {p['type']} pre-tokenizer")
        classes = unicode_classes() if patterns else {}
        self.split_res = [translate_regex(p, classes) for p in patterns]
        self.cache: dict[str, list[int]] = {}

    def bpe(self, word: str) -> list[int]:
        """Merge the pair with the lowest rank, everywhere in the word, until no pair merges."""
        if word not in self.cache:
            parts, no_merge = [word] if self.ignore_merges and word in self.vocab else list(word), len(self.ranks)
            while len(parts) > 1:
                rank, i = min((self.ranks.get(pair, no_merge), i) for i, pair in enumerate(zip(parts, parts[1:])))
                if rank == no_merge:
                    break
                first, second, merged, j = parts[i], parts[i + 1], [], 0
                while j < len(parts):
                    if j + 1 < len(parts) and parts[j] == first and parts[j + 1] == second:
                        merged.append(first + second)
                        j += 2
                    else:
                        merged.append(parts[j])
                        j += 1
                parts = merged
            self.cache[word] = [self.vocab[part] for part in parts]
        return self.cache[word]

    def encode(self, text: str) -> list[int]:
        ids = []
        for k, chunk in enumerate(self.special_re.split(text) if self.special_re else [text]):
            if k % 2:  # re.split puts the separators, our special tokens, at the odd places
                ids.append(self.specials[chunk])
                continue
            if not chunk:
                continue
            if self.normalizer:
                chunk = unicodedata.normalize(self.normalizer["type"], chunk)
            if self.add_prefix_space and not chunk.startswith(" "):
                chunk = " " + chunk
            pieces = [chunk]
            for rx in self.split_res:
                pieces = [piece for p in pieces for piece in split_isolated(rx, p)]
            for piece in pieces:
                ids += self.bpe("".join(self.byte_char[b] for b in piece.encode("utf-8")))
        return ids

    def decode(self, ids: list[int]) -> str:
        return b"".join(self.pieces[i] for i in ids).decode("utf-8", errors="replace")


# ----------------------------------------------------------------------------------------------
# 3. The transformer. Weights are transposed once so every projection is `x @ W`; q, k, v share
#    one matrix and so do gate and up. Each RMSNorm weight is folded into the matrix after it,
#    (x * w) @ W = x @ (w[:, None] * W), and 1/sqrt(head_dim) into q's. RoPE tables and the KV
#    cache are allocated up front. Batch-1 decode is many small ops: each one saved counts.

def rmsnorm(x, eps):
    """x / sqrt(mean(x^2) + eps), over the last axis; the weight is applied by the caller."""
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps)


def rope(x, cos, sin):
    """HF "rotate half": x * cos + [-x2, x1] * sin, with the minus stored in the sin table.
    x (T, heads, head_dim); cos, sin (T, 1, head_dim)."""
    half = x.shape[-1] // 2
    return x * cos + np.concatenate((x[..., half:], x[..., :half]), axis=-1) * sin


class Transformer:
    def __init__(self, cfg: dict, w: dict):
        self.cfg = c = cfg
        self.nh, self.nkv, self.hd, self.eps = c["n_heads"], c["n_kv_heads"], c["head_dim"], float(c["norm_eps"])
        self.rep, self.ff, self.max_len = self.nh // self.nkv, c["d_ff"], c["max_seq_len"]
        scale = 1.0 / self.hd ** 0.5  # attention's 1/sqrt(head_dim), a Python float: float32 stays float32

        def get(name):
            if name not in w:
                raise Error(f"the params file has no tensor {name}: it does not match its own config")
            return w[name]

        def fold(norm, *names):  # (d, out): the projections' weights, transposed, rows scaled by the norm's
            return np.ascontiguousarray(np.concatenate([get(n) for n in names], axis=0).T * get(norm)[:, None])

        self.embed = get("embed.weight")                                                    # (vocab, d)
        self.lm_head = fold("norm.weight", "embed.weight" if c["tie_embeddings"] else "lm_head.weight")
        self.layers = []
        for i in range(c["n_layers"]):
            p = f"layers.{i}."
            layer = {
                "wqkv": fold(p + "attn_norm.weight", *(p + f"attn.{n}_proj.weight" for n in "qkv")),
                "wo": np.ascontiguousarray(get(p + "attn.o_proj.weight").T),               # (nh*hd, d)
                "wgu": fold(p + "mlp_norm.weight", p + "mlp.gate_proj.weight", p + "mlp.up_proj.weight"),
                "wdown": np.ascontiguousarray(get(p + "mlp.down_proj.weight").T),          # (ff, d)
            }
            if c.get("qk_norm"):  # RMSNorm over head_dim before RoPE: q's weight (and the scale) for q heads
                layer["qk_norm"] = np.stack([get(p + "attn.q_norm.weight") * scale] * self.nh
                                            + [get(p + "attn.k_norm.weight")] * self.nkv)
            else:
                layer["wqkv"][:, :self.nh * self.hd] *= scale
            self.layers.append(layer)
        inv_freq = 1.0 / c["rope_theta"] ** (np.arange(0, self.hd, 2, dtype=np.float64) / self.hd)
        angles = np.outer(np.arange(self.max_len, dtype=np.float64), inv_freq)
        self.cos = np.cos(np.concatenate([angles, angles], axis=-1)).astype(np.float32)[:, None, :]
        self.sin = np.sin(np.concatenate([-angles, angles], axis=-1)).astype(np.float32)[:, None, :]
        shape = (c["n_layers"], self.nkv, self.max_len, self.hd)
        self.k_cache, self.v_cache = np.zeros(shape, np.float32), np.zeros(shape, np.float32)

    def forward(self, tokens: list[int], pos: int) -> np.ndarray:
        """Run `tokens` at positions pos.. (the cache holds 0..pos-1); the last position's logits."""
        T, end, nh, nkv, hd = len(tokens), pos + len(tokens), self.nh, self.nkv, self.hd
        cos, sin = self.cos[pos:end], self.sin[pos:end]
        mask = np.triu(np.full((T, end), -np.inf, np.float32), pos + 1) if T > 1 else None
        x = self.embed[tokens]                                                     # (T, d)
        for L, kc, vc in zip(self.layers, self.k_cache, self.v_cache):
            # attention: q, k, v for the new tokens; k, v go into the cache
            qkv = (rmsnorm(x, self.eps) @ L["wqkv"]).reshape(T, nh + 2 * nkv, hd)
            qk = qkv[:, :nh + nkv]
            if "qk_norm" in L:
                qk = rmsnorm(qk, self.eps) * L["qk_norm"]
            qk = rope(qk, cos, sin)
            kc[:, pos:end] = qk[:, nh:].transpose(1, 0, 2)
            vc[:, pos:end] = qkv[:, nh + nkv:].transpose(1, 0, 2)
            # grouped-query attention: kv head j serves query heads j*rep .. j*rep+rep-1
            q = qk[:, :nh].reshape(T, nkv, self.rep, hd).transpose(1, 2, 0, 3)    # (nkv, rep, T, hd)
            att = q @ kc[:, None, :end].transpose(0, 1, 3, 2)                     # (nkv, rep, T, end)
            if mask is not None:
                att += mask
            att = np.exp(att - att.max(axis=-1, keepdims=True))
            att /= att.sum(axis=-1, keepdims=True)
            y = (att @ vc[:, None, :end]).transpose(2, 0, 1, 3).reshape(T, nh * hd)
            x = x + y @ L["wo"]
            # SwiGLU MLP: down(silu(gate(x)) * up(x))
            gu = rmsnorm(x, self.eps) @ L["wgu"]
            gate, up = gu[:, :self.ff], gu[:, self.ff:]
            x = x + (gate / (1.0 + np.exp(-gate)) * up) @ L["wdown"]
        return rmsnorm(x[-1], self.eps) @ self.lm_head                              # (vocab,)


# ----------------------------------------------------------------------------------------------
# 4. Sampling: temperature 0 is greedy (argmax, lowest index on ties); otherwise temperature,
#    then top-p (keep the smallest set of most likely tokens whose probability reaches top_p).

def sample(logits: np.ndarray, temperature: float, top_p: float, rng: np.random.Generator) -> int:
    if temperature <= 0:
        return int(np.argmax(logits))
    probs = np.exp((logits - logits.max()) / temperature).astype(np.float64)
    probs /= probs.sum()
    candidates = np.arange(len(probs))
    if 0 < top_p < 1:  # a token under (1 - top_p) / (n - 1) is never in the nucleus: sort only the rest
        candidates = np.flatnonzero(probs >= (1 - top_p) / (len(probs) - 1))
        candidates = candidates[np.argsort(-probs[candidates], kind="stable")]
        p = probs[candidates]
        candidates = candidates[:np.count_nonzero(np.cumsum(p) - p <= top_p)]  # the mass before it <= top_p
    cum = np.cumsum(probs[candidates])
    return int(candidates[min(int(np.searchsorted(cum, rng.random() * cum[-1], side="right")), len(cum) - 1)])


# ----------------------------------------------------------------------------------------------
# 5. The prompt, generation, main.

def render_prompt(tok: Tokenizer, prompt: str, chat: bool, roles: dict | None = None) -> tuple[list[int], set[int]]:
    """The prompt's token ids and the ids that end generation. llmos's own tokenizers start every
    prompt with <|bos|>; an imported model's file names its bos and eos (provenance "tokenizer_roles"),
    else a bos is the one the tokenizer.json's post-processor puts first (GPT-2 style: none)."""
    roles = roles or {}
    bos = roles.get("bos_token", "<|bos|>" if "<|bos|>" in tok.specials else tok.post_processor_bos)
    add_bos, stops = roles.get("add_bos", bos is not None), [bos, roles.get("eos_token")]
    if chat and "<|user_start|>" in tok.specials:
        text = f"<|bos|><|user_start|>{prompt}<|user_end|><|assistant_start|>"
        stops.append("<|assistant_end|>")
    elif chat and "<|im_start|>" in tok.specials:
        text = f"<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n"
        stops.append("<|im_end|>")
    elif chat:
        raise Error("--chat needs llmos's (<|user_start|>) or ChatML's (<|im_start|>) special tokens")
    else:
        text = prompt
    ids = tok.encode(text)
    if add_bos and bos in tok.vocab and ids[:1] != [tok.vocab[bos]]:
        ids.insert(0, tok.vocab[bos])
    if not ids:
        raise Error("the prompt is empty: give some text")
    return ids, {tok.vocab[t] for t in stops if t in tok.vocab}


def generate(model: Transformer, ids: list[int], steps: int, temperature: float, top_p: float,
             seed: int | None, stop_ids: set[int]):
    """Yields token ids: one forward over the whole prompt, then one token at a time."""
    rng = np.random.default_rng(seed)
    logits = model.forward(ids, 0)
    pos = len(ids)
    for step in range(steps):
        token = sample(logits, temperature, top_p, rng)
        if token in stop_ids:
            return
        yield token
        if step + 1 == steps:
            return
        logits = model.forward([token], pos)
        pos += 1


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description="Run an llmos params file with NumPy alone.")
    ap.add_argument("model", help="a .llmos params file")
    ap.add_argument("prompt", nargs="?", default="")
    ap.add_argument("-t", "--temperature", type=float, default=0.8, help="0 = greedy")
    ap.add_argument("-p", "--top-p", type=float, default=0.95)
    ap.add_argument("-n", "--tokens", type=int, default=200, help="tokens to generate (at most the context)")
    ap.add_argument("-s", "--seed", type=int, default=None)
    ap.add_argument("--chat", action="store_true", help="wrap the prompt as one user turn of a chat")
    ap.add_argument("--ids", action="store_true", help="print the prompt and generated token ids as JSON")
    args = ap.parse_args(argv)

    cfg, meta, weights = read_params(args.model)
    tok = Tokenizer(meta["tokenizer"])
    model = Transformer(cfg, weights)
    roles = json.loads(meta.get("provenance") or "{}").get("tokenizer_roles")
    ids, stop_ids = render_prompt(tok, args.prompt, args.chat, roles)
    if len(ids) >= model.max_len:
        raise Error(f"the prompt has {len(ids)} tokens; the model's context is {model.max_len}")
    steps = max(0, min(args.tokens, model.max_len - len(ids)))

    np.seterr(over="ignore")  # exp(-x) of a very negative gate overflows to inf: silu is then 0
    out, decoder, generated = sys.stdout, codecs.getincrementaldecoder("utf-8")(errors="replace"), []
    if not args.ids and not args.chat:
        out.write(args.prompt)
        out.flush()
    start = time.perf_counter()
    first = None
    for token in generate(model, ids, steps, args.temperature, args.top_p, args.seed, stop_ids):
        first = first or time.perf_counter()  # decode speed counts from the first token on
        generated.append(token)
        if not args.ids:
            out.write(decoder.decode(tok.pieces[token]))  # holds back an unfinished character
            out.flush()
    end = time.perf_counter()
    if args.ids:
        print(json.dumps({"prompt": ids, "generated": generated}))
    else:
        out.write(decoder.decode(b"", final=True) + "\n")
    rate = (len(generated) - 1) / (end - first) if first and len(generated) > 1 else 0.0
    print(f"[{len(generated)} tokens, {rate:.0f} tokens/s decode; prompt {len(ids)} tokens in "
          f"{((first or end) - start) * 1000:.0f} ms]", file=sys.stderr)


if __name__ == "__main__":
    try:
        main()
    except Error as e:
        sys.exit(f"run.py: error: {e}")
    except KeyboardInterrupt:
        sys.exit(130)

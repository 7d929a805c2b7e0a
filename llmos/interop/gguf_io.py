"""GGUF (llama.cpp) files: write a llmos model as one, and read a Llama GGUF back into llmos.

    write_gguf("model-f16.gguf", model, tok, chat_template, dtype="f16", name="my-model")
    model, tok, chat_template, provenance = read_gguf("SmolLM2-135M-Instruct.Q4_1.gguf")

The file uses llama.cpp's `llama` architecture and its GPT-2-style BPE vocabulary (`gpt2`: tokens,
merges, token types with special tokens as CONTROL). The `tokenizer.ggml.pre` name tells llama.cpp
which regex splits text before BPE; llmos's GPT-4-style split is llama-3's, "llama-bpe".
Writing: dtype f32, f16, q8_0, q4_0 or q4_1 (matrices only; norms stay f32, and a matrix whose rows are not a
multiple of 32 falls back to f16, as llama.cpp's converter does). Tied embeddings are written once
as `token_embd.weight`: llama.cpp uses it for the output projection when `output.weight` is absent.
The file is written under a temp name of its own beside the target and renamed when complete.
Reading: any tensor type `gguf.quants.dequantize` knows (F32, F16, BF16, Q8_0, Q4_0, Q4_1, K-quants
...) becomes float32; the q/k rows are put back in llmos's rotate-half order; the config comes from
the metadata (each value type-checked) and is checked against the tensors' shapes before anything
is dequantized or allocated; the vocabulary becomes a Hugging Face `tokenizers` tokenizer.
Reading kept quantized (`read_gguf_kept`, `llmos import --dtype keep`): each matrix whose type has
a llmos scheme (llmos/quant.py) becomes a QuantizedWeight instead (`kept_weight`): Q4_0 and Q4_1
become int4 exactly, their blocks re-packed without going through floats; F16 stays f16; Q8_0
becomes int8 per output row (dequantized and rounded again: llmos's int8 has one scale per row, not
per 32 inputs). Every other type (F32, BF16, K-quants, Q5_0, ...) is dequantized to float32.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers, processors
from tokenizers import Tokenizer as HFTokenizer

from llmos.common import LlmosError, os_error_message
from llmos.interop.layout import (from_gguf_rope, gguf_name, llmos_name_from_gguf, load_weights,
                                  require_llama_compatible, rope_heads, to_gguf_rope)
from llmos.model import ModelConfig, Transformer, check_weight_shapes
from llmos.quant import QuantizedWeight
from llmos.tokenizer import SPLIT_PATTERN, Tokenizer

GGUF_DTYPES = ("f32", "f16", "q8_0", "q4_0", "q4_1")
QUANTIZED = ("q8_0", "q4_0", "q4_1")  # gguf.GGMLQuantizationType names, upper-cased


def _pre_tokenizer(name: str):
    """The Hugging Face pre-tokenizer equivalent to a llama.cpp `tokenizer.ggml.pre` name."""
    if name == "llama-bpe":
        # llmos's own split; llama.cpp spells the same regex without possessive quantifiers.
        return pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated"),
                                        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    if name == "smollm":  # llama.cpp's two regexes: every digit alone, then GPT-2's
        return pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(r"\p{N}"), behavior="isolated"),
                                        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    if name == "gpt2":
        return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    raise AssertionError(name)


# llama.cpp pre-tokenizer names that share one of the regex sets above (llama-vocab.cpp).
PRE_ALIASES = {"llama-bpe": "llama-bpe", "llama3": "llama-bpe", "llama-v3": "llama-bpe",
               "smollm": "smollm", "starcoder": "smollm", "refact": "smollm",
               "gpt2": "gpt2", "gpt-2": "gpt2"}


def _pre_json(pre) -> dict:
    probe = HFTokenizer(models.BPE())
    probe.pre_tokenizer = pre
    return json.loads(probe.to_str())["pre_tokenizer"]


def pre_tokenizer_name(hf: HFTokenizer) -> str:
    """The llama.cpp pre-tokenizer name whose regex matches this tokenizer's, or a clear error."""
    ours = json.loads(hf.to_str())["pre_tokenizer"]
    for name in ("llama-bpe", "smollm", "gpt2"):
        if _pre_json(_pre_tokenizer(name)) == ours:
            return name
    raise LlmosError("this tokenizer's pre-tokenizer matches none llama.cpp knows here (llama-bpe, smollm, gpt2): "
                     "llama.cpp would split text differently, so it is not exported")


# ----- writing -----

def _vocab_tables(tok: Tokenizer) -> tuple[list[str], list[int], list[str]]:
    import gguf
    tj = json.loads(tok.to_json())
    if tj["model"]["type"] != "BPE":
        raise LlmosError(f"only BPE tokenizers can be written to GGUF, not {tj['model']['type']}")
    vocab = tok.hf.get_vocab(with_added_tokens=True)
    tokens = [""] * tok.vocab_size
    for piece, i in vocab.items():
        tokens[i] = piece
    added = {t["id"]: t["special"] for t in tj["added_tokens"]}
    types = [int(gguf.TokenType.CONTROL if added.get(i) else
                 gguf.TokenType.USER_DEFINED if i in added else gguf.TokenType.NORMAL) for i in range(len(tokens))]
    # tokenizers >= 0.20 stores merges as pairs, older versions as "a b" strings; GGUF wants strings.
    merges = [m if isinstance(m, str) else " ".join(m) for m in tj["model"]["merges"]]
    return tokens, types, merges


def write_gguf(path: str | Path, model: Transformer, tok: Tokenizer, chat_template: str = "",
               dtype: str = "f32", name: str = "llmos") -> Path:
    import gguf
    from gguf.quants import quantize
    if dtype not in GGUF_DTYPES:
        raise LlmosError(f"unknown GGUF dtype {dtype!r}: choose one of {', '.join(GGUF_DTYPES)}")
    cfg = model.cfg
    require_llama_compatible(cfg, "llama.cpp")
    pre = pre_tokenizer_name(tok.hf)
    tokens, types, merges = _vocab_tables(tok)
    path = Path(path)
    file_type = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                 "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0, "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0,
                 "q4_1": gguf.LlamaFileType.MOSTLY_Q4_1}[dtype]

    w = gguf.GGUFWriter(None, "llama")  # the file comes at the end, with a temp name of its own
    w.add_name(name)
    w.add_file_type(file_type)
    w.add_context_length(cfg.max_seq_len)
    w.add_embedding_length(cfg.d_model)
    w.add_block_count(cfg.n_layers)
    w.add_feed_forward_length(cfg.d_ff)
    w.add_head_count(cfg.n_heads)
    w.add_head_count_kv(cfg.n_kv_heads)
    if cfg.head_dim * cfg.n_heads != cfg.d_model:  # llama.cpp assumes d_model / n_heads otherwise
        w.add_key_length(cfg.head_dim)
        w.add_value_length(cfg.head_dim)
    w.add_rope_dimension_count(cfg.head_dim)
    w.add_rope_freq_base(cfg.rope_theta)
    w.add_layer_norm_rms_eps(cfg.norm_eps)
    w.add_vocab_size(cfg.vocab_size)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    if tok.bos_id is not None:
        w.add_bos_token_id(tok.bos_id)
    # llmos ends a document with bos; a model with its own eos (an imported one) stops there.
    eos = tok.eos_id if tok.eos_id is not None else tok.bos_id
    if eos is not None:
        w.add_eos_token_id(eos)
    w.add_add_bos_token(tok.add_bos)
    w.add_add_eos_token(False)
    if chat_template:
        w.add_chat_template(chat_template)
    end_of_turn = tok.hf.token_to_id("<|assistant_end|>")
    if end_of_turn is not None:  # llmos's own chat layout: a reply ends there, not at eos
        w.add_eot_token_id(end_of_turn)

    for key, tensor in model.state_dict().items():
        if cfg.tie_embeddings and key == "lm_head.weight":
            continue
        data = tensor.detach().float().cpu().contiguous().numpy()
        if heads := rope_heads(key, cfg):
            data = to_gguf_rope(data, heads)
        if data.ndim == 1 or dtype == "f32":
            w.add_tensor(gguf_name(key), np.ascontiguousarray(data, dtype=np.float32))
        elif dtype in QUANTIZED and data.shape[-1] % 32 == 0:  # quant blocks are 32 wide
            qtype = gguf.GGMLQuantizationType[dtype.upper()]
            w.add_tensor(gguf_name(key), quantize(data, qtype), raw_dtype=qtype)
        else:
            w.add_tensor(gguf_name(key), np.ascontiguousarray(data, dtype=np.float16))
    tmp = None
    try:  # beside the target under a unique name, so two exports to one path cannot collide
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        w.write_header_to_file(Path(tmp))
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes owner-only files; give the usual permissions
        os.replace(tmp, path)
    except OSError as e:
        raise LlmosError(f"could not write {os_error_message(e, path)}") from None
    finally:
        w.close()
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
    return path


# ----- reading -----

def _open(path: Path):
    import gguf
    if not path.is_file():
        raise LlmosError(f"GGUF file {path} does not exist")
    with open(path, "rb") as f:
        if f.read(4) != b"GGUF":
            raise LlmosError(f"{path} is not a GGUF file (no GGUF magic): llmos imports .gguf files and Hugging Face directories")
    try:
        return gguf.GGUFReader(str(path))
    except Exception as e:  # the reader fails in many ways (struct, numpy, value errors) on a cut file
        raise LlmosError(f"{path} is not a readable GGUF file, or it is truncated ({type(e).__name__}: {e})") from None


class _Metadata:
    """A GGUF file's key-value metadata, each value checked for the type llmos uses it as."""

    def __init__(self, reader, path: Path):
        self.reader, self.path = reader, path

    def get(self, key: str, default=None, kind: type = object, items: type | None = None):
        """The value of `key` (`default` when absent): a `kind`, or with `items` a list of them."""
        field = self.reader.fields.get(key)
        if field is None:
            return default
        try:
            value = field.contents()
        except (UnicodeDecodeError, ValueError, IndexError) as e:
            raise LlmosError(f"{self.path}: its metadata {key} is unreadable ({e}): the file is corrupt") from None
        if items is not None:
            expected = f"a list of {items.__name__}"
            fits = isinstance(value, list) and all(isinstance(v, items) for v in value)
        else:  # bool is an int to Python, but never a count here
            expected = kind.__name__
            fits = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
        if not fits:
            raise LlmosError(f"{self.path}: its metadata {key} is not {expected} ({str(value)[:60]!r}): "
                             "the file is corrupt or was not written for llama.cpp")
        return value

    def need(self, key: str, what: str, **kind):
        value = self.get(key, **kind)
        if value is None:
            raise LlmosError(f"{self.path} lacks {what} (the metadata key {key}): it cannot be imported")
        return value


def _tokenizer_from_gguf(meta: _Metadata) -> tuple[HFTokenizer, dict]:
    path = meta.path
    kind = meta.get("tokenizer.ggml.model")
    if kind != "gpt2":
        raise LlmosError(f"{path} has a {kind!r} tokenizer; llmos imports GPT-2-style BPE ('gpt2') vocabularies only")
    pre_name = meta.get("tokenizer.ggml.pre", "gpt2")
    if pre_name not in PRE_ALIASES:
        raise LlmosError(f"{path} uses llama.cpp's {pre_name!r} pre-tokenizer, which llmos cannot rebuild "
                         f"(known: {', '.join(sorted(PRE_ALIASES))})")
    pre = PRE_ALIASES[pre_name]
    tokens = meta.need("tokenizer.ggml.tokens", "its vocabulary", items=str)
    types = meta.get("tokenizer.ggml.token_type", [1] * len(tokens), items=int)
    merges = meta.get("tokenizer.ggml.merges", [], items=str)
    if len(types) != len(tokens):
        raise LlmosError(f"{path} has {len(types):,} token types for {len(tokens):,} tokens: the file is corrupt")
    pairs = [tuple(m.split(" ", 1)) for m in merges]
    if any(len(pair) != 2 for pair in pairs):
        raise LlmosError(f"{path} has a BPE merge that is not two tokens separated by a space: the file is corrupt")
    # llama.cpp takes a pre-token that is a whole vocabulary entry as is for llama-3 vocabularies.
    bpe = models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=pairs, ignore_merges=pre == "llama-bpe")
    hf = HFTokenizer(bpe)
    hf.pre_tokenizer = _pre_tokenizer(pre)
    hf.decoder = decoders.ByteLevel()
    hf.add_special_tokens([AddedToken(t, special=True, normalized=False) for t, k in zip(tokens, types) if k == 3])
    hf.add_tokens([AddedToken(t, special=False, normalized=False) for t, k in zip(tokens, types) if k == 4])

    def token(key):
        i = meta.get(key, kind=int)
        return tokens[i] if i is not None and 0 <= i < len(tokens) else None

    bos, eos = token("tokenizer.ggml.bos_token_id"), token("tokenizer.ggml.eos_token_id")
    # llama.cpp's default when the key is absent: llama-3 vocabularies add bos, GPT-2-style ones do not.
    add_bos = meta.get("tokenizer.ggml.add_bos_token", pre == "llama-bpe", kind=bool) and bos is not None
    if add_bos:  # so the tokenizer.json alone (e.g. exported to Hugging Face) also starts with bos
        hf.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                                          special_tokens=[(bos, tokens.index(bos))])
    return hf, {"bos_token": bos, "eos_token": eos, "add_bos": add_bos}


def _config_from_gguf(meta: _Metadata, vocab_size: int, tie: bool) -> ModelConfig:
    path = meta.path
    arch = meta.get("general.architecture")
    if arch != "llama":
        raise LlmosError(f"{path} is a {arch!r} model; llmos imports the 'llama' architecture only")

    def need(key):
        return meta.need(f"llama.{key}", f"the model's {key.replace('_', ' ')}")

    scaling = meta.get("llama.rope.scaling.type", "none")
    if scaling not in ("none", None):
        raise LlmosError(f"{path} uses RoPE scaling {scaling!r}, which llmos's model does not implement")
    n_heads = need("attention.head_count")
    # The sizes go to ModelConfig as found: it refuses wrong types and values, naming the file.
    cfg = ModelConfig.from_dict(dict(
        vocab_size=vocab_size, d_model=need("embedding_length"), n_layers=need("block_count"), n_heads=n_heads,
        n_kv_heads=meta.get("llama.attention.head_count_kv", n_heads),
        head_dim=meta.get("llama.attention.key_length", 0), d_ff=need("feed_forward_length"),
        max_seq_len=need("context_length"), rope_theta=meta.get("llama.rope.freq_base", 10000.0),
        norm_eps=need("attention.layer_norm_rms_epsilon"), tie_embeddings=tie), source=str(path))
    if meta.get("llama.rope.dimension_count", cfg.head_dim) != cfg.head_dim:
        raise LlmosError(f"{path} rotates only part of each head (partial RoPE), which llmos does not implement")
    return cfg


# GGUF types kept in a llmos scheme by read_gguf_kept (the rest are dequantized to float32)
KEPT_TYPES = {"Q4_0": "int4", "Q4_1": "int4", "Q8_0": "int8", "F16": "f16"}


def _int4_from_blocks(blocks: np.ndarray, with_min: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(codes packed llmos's way, scale, offset) from Q4_0 or Q4_1 (with_min) blocks, (rows, groups, bytes).
    A Q4_0 block is f16 d then 16 bytes of codes (w = d * (code - 8)); Q4_1 is f16 d, f16 m, 16 bytes
    (w = d * code + m). Byte j of a block holds element j in its low nibble and element j + 16 in its
    high one; llmos packs columns 2k (low nibble) and 2k + 1 (high) into byte k of the row."""
    rows = blocks.shape[0]
    head = 4 if with_min else 2
    halves = np.ascontiguousarray(blocks[..., :head]).view(np.float16).astype(np.float32)  # (rows, groups, 1 or 2)
    scale = halves[..., 0]
    offset = halves[..., 1] if with_min else -8 * scale  # exact: d times a power of two
    packed = blocks[..., head:]
    codes = np.concatenate([packed & 15, packed >> 4], axis=-1).reshape(rows, -1)  # elements 0-15, then 16-31
    return codes[:, 0::2] | (codes[:, 1::2] << 4), scale, offset


def kept_weight(tensor, heads: int = 0) -> QuantizedWeight | None:
    """A GGUF matrix (a gguf ReaderTensor) as a llmos QuantizedWeight where its type has a llmos
    scheme (KEPT_TYPES), else None. Q4_0 and Q4_1 are exact (the same values gguf's dequantize gives);
    Q8_0 is dequantized and rounded to int8 per output row, llmos's int8 having one scale per row
    where Q8_0 has one per 32 inputs. `heads` > 0 puts q/k rows back in rotate-half order (rows are
    independent, so codes, scales and offsets move together)."""
    from gguf.quants import dequantize
    from llmos.quant import quantize
    kind = tensor.tensor_type.name
    if kind not in KEPT_TYPES or len(tensor.shape) != 2:
        return None
    rows, cols = reversed(tensor.shape.tolist())  # GGUF lists the fastest-varying dimension first
    fix = (lambda a: from_gguf_rope(a, heads)) if heads else (lambda a: a)
    if kind == "Q8_0":  # one scale per 32 inputs to one per row: expanded, then rounded again
        values = np.array(fix(dequantize(tensor.data, tensor.tensor_type)), dtype=np.float32)
        return quantize(torch.from_numpy(values), "int8")
    if kind == "F16":
        return QuantizedWeight("f16", (rows, cols), torch.from_numpy(np.array(fix(tensor.data.reshape(rows, cols)))))
    blocks = tensor.data.reshape(rows, cols // 32, -1)
    data, scale, offset = (torch.from_numpy(np.ascontiguousarray(fix(a)))
                           for a in _int4_from_blocks(blocks, with_min=kind == "Q4_1"))
    return QuantizedWeight("int4", (rows, cols), data, scale, offset)


def read_gguf(path: str | Path) -> tuple[Transformer, Tokenizer, str, dict]:
    """A Llama GGUF as (model, tokenizer, chat template, provenance); weights dequantized to float32.
    The config is checked against the tensors' shapes before any weight is dequantized or allocated."""
    model, tok, chat_template, provenance, _ = _read(Path(path), keep=False)
    return model, tok, chat_template, provenance


def read_gguf_kept(path: str | Path) -> tuple[Transformer, Tokenizer, str, dict, dict]:
    """read_gguf, plus {weight name: QuantizedWeight} for the matrices whose GGUF type has a llmos
    scheme (kept_weight); the model holds the same values in float32 (for save_params' other tensors)."""
    return _read(Path(path), keep=True)


def _read(path: Path, keep: bool) -> tuple[Transformer, Tokenizer, str, dict, dict]:
    from gguf.quants import dequantize
    reader = _open(path)
    meta = _Metadata(reader, path)
    hf, roles = _tokenizer_from_gguf(meta)
    tensors = {}
    for t in reader.tensors:
        key = llmos_name_from_gguf(t.name)
        if key is None:
            raise LlmosError(f"{path} has a tensor llmos's Llama model has no place for: {t.name}")
        tensors[key] = t
    cfg = _config_from_gguf(meta, hf.get_vocab_size(), tie="lm_head.weight" not in tensors)
    # GGUF lists dimensions fastest-varying first, the reverse of torch's order
    check_weight_shapes(cfg, {key: tuple(reversed(t.shape.tolist())) for key, t in tensors.items()}, str(path))
    state, quantized = {}, {}
    for key, t in tensors.items():
        heads = rope_heads(key, cfg)
        if keep and (q := kept_weight(t, heads)) is not None:
            quantized[key], state[key] = q, q.dequantize()
            continue
        try:
            data = dequantize(t.data, t.tensor_type)
        except NotImplementedError:  # gguf's answer for a type it has no dequantizer for (I32, F64, Q8_1, ...)
            raise LlmosError(f"{path}: tensor {t.name} is {t.tensor_type.name}, which gguf cannot dequantize: "
                             "convert the model to F16, Q8_0 or Q4_0 first") from None
        if heads:
            data = from_gguf_rope(data, heads)
        state[key] = torch.from_numpy(np.array(data, dtype=np.float32))  # a copy: the file is memory-mapped
    model = load_weights(cfg, state)
    tok = Tokenizer(hf, **roles)
    provenance = {"source": "gguf", "file": path.name, "name": meta.get("general.name", path.stem, kind=str),
                  "license": meta.get("general.license", "", kind=str), "tokenizer_roles": roles}
    return model.eval(), tok, meta.get("tokenizer.chat_template", "", kind=str), provenance, quantized

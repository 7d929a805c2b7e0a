"""GGUF (llama.cpp) files: write a llmos model as one, and read a Llama GGUF back into llmos.

    write_gguf("model-f16.gguf", model, tok, chat_template, dtype="f16", name="my-model")
    model, tok, chat_template, provenance = read_gguf("SmolLM2-135M-Instruct.Q4_1.gguf")

The file uses llama.cpp's `llama` architecture and its GPT-2-style BPE vocabulary (`gpt2`: tokens,
merges, token types with special tokens as CONTROL). The `tokenizer.ggml.pre` name tells llama.cpp
which regex splits text before BPE; llmos's GPT-4-style split is llama-3's, "llama-bpe".
Writing: dtype f32, f16, q8_0, q4_0 or q4_1 (matrices only; norms stay f32, and a matrix whose rows are not a
multiple of 32 falls back to f16, as llama.cpp's converter does). Tied embeddings are written once
as `token_embd.weight`: llama.cpp uses it for the output projection when `output.weight` is absent.
Reading: any tensor type `gguf.quants.dequantize` knows (F32, F16, BF16, Q8_0, Q4_0, Q4_1, K-quants
...) becomes float32; the q/k rows are put back in llmos's rotate-half order; the config comes from
the metadata; the vocabulary becomes a Hugging Face `tokenizers` tokenizer.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers, processors
from tokenizers import Tokenizer as HFTokenizer

from llmos.common import LlmosError
from llmos.interop.layout import (from_gguf_rope, gguf_name, llmos_name_from_gguf, load_weights,
                                  require_llama_compatible, rope_heads, to_gguf_rope)
from llmos.model import ModelConfig, Transformer
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
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    file_type = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                 "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0, "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0,
                 "q4_1": gguf.LlamaFileType.MOSTLY_Q4_1}[dtype]

    w = gguf.GGUFWriter(str(tmp), "llama")
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
    try:
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
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


def _field(reader, key: str, default=None):
    field = reader.fields.get(key)
    return default if field is None else field.contents()


def _tokenizer_from_gguf(reader, path: Path) -> tuple[HFTokenizer, dict]:
    kind = _field(reader, "tokenizer.ggml.model")
    if kind != "gpt2":
        raise LlmosError(f"{path} has a {kind!r} tokenizer; llmos imports GPT-2-style BPE ('gpt2') vocabularies only")
    pre_name = _field(reader, "tokenizer.ggml.pre", "gpt2")
    if pre_name not in PRE_ALIASES:
        raise LlmosError(f"{path} uses llama.cpp's {pre_name!r} pre-tokenizer, which llmos cannot rebuild "
                         f"(known: {', '.join(sorted(PRE_ALIASES))})")
    pre = PRE_ALIASES[pre_name]
    tokens = _field(reader, "tokenizer.ggml.tokens")
    types = _field(reader, "tokenizer.ggml.token_type", [1] * len(tokens))
    merges = _field(reader, "tokenizer.ggml.merges", [])
    # llama.cpp takes a pre-token that is a whole vocabulary entry as is for llama-3 vocabularies.
    bpe = models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=[tuple(m.split(" ", 1)) for m in merges],
                     ignore_merges=pre == "llama-bpe")
    hf = HFTokenizer(bpe)
    hf.pre_tokenizer = _pre_tokenizer(pre)
    hf.decoder = decoders.ByteLevel()
    hf.add_special_tokens([AddedToken(t, special=True, normalized=False) for t, k in zip(tokens, types) if k == 3])
    hf.add_tokens([AddedToken(t, special=False, normalized=False) for t, k in zip(tokens, types) if k == 4])

    def token(key):
        i = _field(reader, key)
        return tokens[i] if i is not None and 0 <= i < len(tokens) else None

    bos, eos = token("tokenizer.ggml.bos_token_id"), token("tokenizer.ggml.eos_token_id")
    # llama.cpp's default when the key is absent: llama-3 vocabularies add bos, GPT-2-style ones do not.
    add_bos = bool(_field(reader, "tokenizer.ggml.add_bos_token", pre == "llama-bpe")) and bos is not None
    if add_bos:  # so the tokenizer.json alone (e.g. exported to Hugging Face) also starts with bos
        hf.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                                          special_tokens=[(bos, tokens.index(bos))])
    return hf, {"bos_token": bos, "eos_token": eos, "add_bos": add_bos}


def _config_from_gguf(reader, path: Path, vocab_size: int, tie: bool) -> ModelConfig:
    arch = _field(reader, "general.architecture")
    if arch != "llama":
        raise LlmosError(f"{path} is a {arch!r} model; llmos imports the 'llama' architecture only")

    def need(key):
        value = _field(reader, f"llama.{key}")
        if value is None:
            raise LlmosError(f"{path} lacks the metadata key llama.{key}")
        return value

    scaling = _field(reader, "llama.rope.scaling.type", "none")
    if scaling not in ("none", None):
        raise LlmosError(f"{path} uses RoPE scaling {scaling!r}, which llmos's model does not implement")
    d_model, n_heads = need("embedding_length"), need("attention.head_count")
    head_dim = _field(reader, "llama.attention.key_length", d_model // n_heads)
    if _field(reader, "llama.rope.dimension_count", head_dim) != head_dim:
        raise LlmosError(f"{path} rotates only part of each head (partial RoPE), which llmos does not implement")
    return ModelConfig(vocab_size=vocab_size, d_model=d_model, n_layers=need("block_count"), n_heads=n_heads,
                       n_kv_heads=_field(reader, "llama.attention.head_count_kv", n_heads), head_dim=head_dim,
                       d_ff=need("feed_forward_length"), max_seq_len=need("context_length"),
                       rope_theta=float(_field(reader, "llama.rope.freq_base", 10000.0)),
                       norm_eps=float(need("attention.layer_norm_rms_epsilon")), tie_embeddings=tie)


def read_gguf(path: str | Path) -> tuple[Transformer, Tokenizer, str, dict]:
    """A Llama GGUF as (model, tokenizer, chat template, provenance); weights dequantized to float32."""
    from gguf.quants import dequantize
    path = Path(path)
    reader = _open(path)
    hf, roles = _tokenizer_from_gguf(reader, path)
    names = {t.name for t in reader.tensors}
    cfg = _config_from_gguf(reader, path, hf.get_vocab_size(), tie="output.weight" not in names)
    state = {}
    for t in reader.tensors:
        key = llmos_name_from_gguf(t.name)
        if key is None:
            raise LlmosError(f"{path} has a tensor llmos's Llama model has no place for: {t.name}")
        try:
            data = dequantize(t.data, t.tensor_type)
        except NotImplementedError:
            raise LlmosError(f"{path}: tensor {t.name} is {t.tensor_type.name}, which gguf cannot dequantize") from None
        if heads := rope_heads(key, cfg):
            data = from_gguf_rope(data, heads)
        state[key] = torch.from_numpy(np.array(data, dtype=np.float32))  # a copy: the file is memory-mapped
    model = load_weights(cfg, state, str(path))
    tok = Tokenizer(hf, **roles)
    provenance = {"source": "gguf", "file": path.name, "name": _field(reader, "general.name", path.stem),
                  "license": _field(reader, "general.license", ""), "tokenizer_roles": roles}
    return model.eval(), tok, _field(reader, "tokenizer.chat_template", "") or "", provenance

"""The params file (`.llmos`): one self-describing file per model.

It is a safetensors file whose header metadata carries everything else a model needs:

    format = "llmos", format_version = "1"
    config        JSON of ModelConfig
    tokenizer     the tokenizer.json text
    chat_template a Jinja chat template ("" when the model has none)
    provenance    JSON: source, training run, date, ...

    save_params("model.llmos", model, tok, provenance={"source": "pretrain"})
    model, tok, meta = load_params("model.llmos")

Tied embeddings are stored once (no `lm_head.weight`). Weights are float32 or bfloat16, or matrices
kept in one of llmos/quant.py's schemes (metadata `weights`): f16 (F16 tensors), int8 (I8 (out, in)
plus `NAME.scale` F32 (out,)) or int4 (U8 (out, in/2), two codes per byte, the even column in the
low nibble, plus `NAME.scale` and `NAME.offset` F32 (out, in/32): w = code * scale + offset).
`load_params` returns the model with those weights expanded to float32 (for training or export) and
the stored ones in `info["quantized"]`, which `Transformer.prepare_inference` uses as they are.

Loading checks the header field by field and the config's weight shapes against the tensors the
header declares before the model is built, so a corrupt or crafted file is one clear LlmosError.
"""
from __future__ import annotations

import json
import struct
from datetime import datetime, timezone
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save

from llmos.common import LlmosError, atomic_write
from llmos.model import ModelConfig, Transformer, check_weight_shapes
from llmos.quant import QuantizedWeight
from llmos.tokenizer import Tokenizer

FORMAT_VERSION = "1"


def save_params(path: str | Path, model: Transformer, tok: Tokenizer, provenance: dict | None = None,
                chat_template: str = "", dtype: torch.dtype = torch.float32, weights: str = "f32",
                quantized: dict[str, QuantizedWeight] | None = None) -> Path:
    """Write a (training-layout) model; `weights` f16, int8 or int4 quantizes every matrix.
    `quantized` maps weight names to weights already quantized (a GGUF import keeps its Q4_0/Q4_1
    blocks): they are written as they are, in place of the model's float copy of them."""
    from llmos.quant import SCHEMES, quantize
    if weights not in SCHEMES:
        raise LlmosError(f"unknown weights {weights!r}: choose one of {', '.join(SCHEMES)}")
    quantized = quantized or {}
    live = model.state_dict()
    for k, q in quantized.items():  # a caller's mistake, caught before anything is written
        if k not in live or tuple(live[k].shape) != tuple(q.shape):
            raise LlmosError(f"save_params: quantized weight {k} {tuple(q.shape)} is not a weight of this model")
    state = {}
    for k, v in live.items():
        if model.cfg.tie_embeddings and k == "lm_head.weight":
            continue
        if k in quantized:
            state.update(quantized[k].tensors(k))
        elif weights != "f32" and v.dim() == 2 and (weights != "int4" or v.shape[1] % 32 == 0):
            state.update(quantize(v, weights).tensors(k))
        else:
            state[k] = v.detach().to("cpu", dtype).contiguous()
    # the schemes the matrices are held in, e.g. "int4+int8" for a GGUF Q4_1 kept (its embedding Q8_0)
    held = {q.scheme for q in quantized.values()} | ({weights} if weights != "f32" else set())
    provenance = {"created": datetime.now(timezone.utc).isoformat(timespec="seconds"), **(provenance or {})}
    metadata = {"format": "llmos", "format_version": FORMAT_VERSION, "config": json.dumps(model.cfg.to_dict()),
                "tokenizer": tok.to_json(), "chat_template": chat_template, "provenance": json.dumps(provenance),
                "weights": "+".join(sorted(held)) or "f32"}
    with atomic_write(path) as f:
        f.write(save(state, metadata=metadata))
    return Path(path)


def read_metadata(path: str | Path) -> dict:
    """The header metadata of a params file, with clear errors for missing, truncated or foreign files."""
    return _read_header(path)[0]


def _read_header(path: str | Path) -> tuple[dict[str, str], dict[str, list[int]]]:
    """(metadata, weight name -> logical shape) from a params file's safetensors header, every field
    checked; a quantized weight's companions (scale, offset) are checked against it and left out."""
    path = Path(path)
    if not path.is_file():
        raise LlmosError(f"params file {path} does not exist")
    with open(path, "rb") as f:
        head = f.read(8)
        size = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
        if not 2 <= size <= 100_000_000 or path.stat().st_size < 8 + size:
            raise LlmosError(f"{path} is not a safetensors params file, or it is truncated")
        try:
            header = json.loads(f.read(size))
        except ValueError:
            header = None
    corrupt = f"{path} has a corrupt safetensors header"
    if not isinstance(header, dict):
        raise LlmosError(f"{corrupt} (not a JSON object): export or download the file again")
    meta = header.pop("__metadata__", {})
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise LlmosError(f"{corrupt} (its metadata is not a map of strings): export or download the file again")
    if meta.get("format") != "llmos":
        raise LlmosError(f"{path} is a safetensors file but not an llmos params file (no format=llmos metadata): "
                         "import foreign models with `llmos import`")
    if meta.get("format_version") != FORMAT_VERSION:
        raise LlmosError(f"{path} has params format version {meta.get('format_version')}; "
                         f"this llmos reads version {FORMAT_VERSION}")
    for name, entry in header.items():
        if not (isinstance(entry, dict) and isinstance(entry.get("dtype"), str)
                and _naturals(entry.get("shape")) and _naturals(entry.get("data_offsets"), length=2)):
            raise LlmosError(f"{corrupt}: tensor {name!r} is not {{dtype, shape, data_offsets}}: "
                             "export or download the file again")
    end = max((entry["data_offsets"][1] for entry in header.values()), default=0)
    if path.stat().st_size < 8 + size + end:
        raise LlmosError(f"{path} is truncated: its header promises {end:,} bytes of weights")
    return meta, _logical_shapes(header, path)


def _logical_shapes(header: dict, path: Path) -> dict[str, list[int]]:
    """Each weight's shape as the model sees it: an int4 matrix stores half its columns."""
    shapes = {}
    for name, entry in header.items():
        if name.endswith((".scale", ".offset")) and name.rsplit(".", 1)[0] in header:
            continue
        rows_cols = entry["shape"]
        kind = {"I8": "int8", "U8": "int4"}.get(entry["dtype"])
        if kind is not None:
            if len(rows_cols) != 2:
                raise LlmosError(f"{path}: {kind} weight {name} is not a matrix: the file is corrupt")
            rows, cols = rows_cols[0], rows_cols[1] * (2 if kind == "int4" else 1)
            want = {"int8": {".scale": [rows]},
                    "int4": {".scale": [rows, cols // 32], ".offset": [rows, cols // 32]}}[kind]
            for suffix, shape in want.items():
                got = header.get(name + suffix, {})
                if got.get("shape") != shape or got.get("dtype") != "F32":
                    raise LlmosError(f"{path}: {kind} weight {name} lacks its F32 {suffix[1:]} of shape {shape}: "
                                     "the file is corrupt; export it again")
            rows_cols = [rows, cols]
        shapes[name] = rows_cols
    return shapes

def _naturals(value, length: int | None = None) -> bool:
    """Whether `value` is a list of non-negative integers (of the given length)."""
    return (isinstance(value, list) and (length is None or len(value) == length)
            and all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in value))


def _json_entry(meta: dict[str, str], key: str, path: Path):
    """A JSON-valued metadata entry (config, provenance) as an object, or a clear error."""
    if key not in meta:
        raise LlmosError(f"{path} has no {key} in its header: the file is corrupt; export or download it again")
    try:
        value = json.loads(meta[key])
    except ValueError as e:
        raise LlmosError(f"{path}: its {key} is not valid JSON ({e}): export or download the file again") from None
    if not isinstance(value, dict):
        raise LlmosError(f"{path}: its {key} is a {type(value).__name__}, not a JSON object: "
                         "export or download the file again")
    return value


def _check_roles(roles, path: Path) -> None:
    """An imported model's tokenizer roles (provenance.tokenizer_roles) must be what Tokenizer takes."""
    if roles is None:
        return
    names = {"bos_token": (str, type(None)), "eos_token": (str, type(None)), "add_bos": (bool,)}
    if not (isinstance(roles, dict) and all(k in names and isinstance(v, names[k]) for k, v in roles.items())):
        raise LlmosError(f"{path}: its provenance.tokenizer_roles is not {{bos_token, eos_token, add_bos}}: "
                         "import the model again")


def parse_tokenizer(text, source: str) -> Tokenizer:
    """A Tokenizer from tokenizer.json text carried by a model file; a corrupt one is an LlmosError."""
    if not isinstance(text, str):
        raise LlmosError(f"{source}: its tokenizer is a {type(text).__name__}, not tokenizer.json text")
    try:
        return Tokenizer.from_json(text)
    except Exception as e:  # tokenizers raises a bare Exception for any malformed tokenizer.json
        raise LlmosError(f"{source}: its tokenizer is not a valid tokenizer.json ({e}): "
                         "export or download the file again") from None


def load_params(path: str | Path, device: str | torch.device = "cpu") -> tuple[Transformer, Tokenizer, dict]:
    path = Path(path)
    meta, shapes = _read_header(path)
    cfg = ModelConfig.from_dict(_json_entry(meta, "config", path), source=str(path))
    if "tokenizer" not in meta:
        raise LlmosError(f"{path} has no tokenizer in its header: the file is corrupt; export or download it again")
    tok = parse_tokenizer(meta["tokenizer"], str(path))
    check_vocab(tok, cfg, source=str(path))
    check_weight_shapes(cfg, shapes, str(path))  # before Transformer(cfg) allocates what the config says
    provenance = _json_entry(meta, "provenance", path) if "provenance" in meta else {}
    _check_roles(provenance.get("tokenizer_roles"), path)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            raw = {k: f.get_tensor(k) for k in f.keys()}
    except SafetensorError as e:
        raise LlmosError(f"{path} has a corrupt safetensors header ({e}): export or download the file again") from None
    state, quantized = {}, {}
    for name in shapes:
        tensor = raw[name]
        scheme = {torch.float16: "f16", torch.int8: "int8", torch.uint8: "int4"}.get(tensor.dtype)
        if scheme is None:
            state[name] = tensor.float()
            continue
        q = QuantizedWeight(scheme, tuple(shapes[name]), tensor, raw.get(name + ".scale"), raw.get(name + ".offset"))
        quantized[name], state[name] = q, q.dequantize()
    model = Transformer.from_state(cfg, state)  # names and shapes are checked; a tied lm_head is embed
    info = {"chat_template": meta.get("chat_template", ""), "provenance": provenance, "quantized": quantized,
            "weights": meta.get("weights", "f32")}
    return model.to(device).eval(), tok, info


def check_vocab(tok: Tokenizer, cfg: ModelConfig, source: str = "the model") -> None:
    if tok.vocab_size != cfg.vocab_size:
        raise LlmosError(f"the tokenizer has {tok.vocab_size} tokens but {source} expects {cfg.vocab_size}: "
                         "use the tokenizer the model was trained with")

"""The params file (`.llmos`): one self-describing file per model.

It is a safetensors file whose header metadata carries everything else a model needs:

    format = "llmos", format_version = "1"
    config        JSON of ModelConfig
    tokenizer     the tokenizer.json text
    chat_template a Jinja chat template ("" when the model has none)
    provenance    JSON: source, training run, date, ...

    save_params("model.llmos", model, tok, provenance={"source": "pretrain"})
    model, tok, meta = load_params("model.llmos")

Tied embeddings are stored once (no `lm_head.weight`). Weights are float32 or bfloat16.
"""
from __future__ import annotations

import json
import struct
from datetime import datetime, timezone
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save

from llmos.common import LlmosError, atomic_write
from llmos.model import ModelConfig, Transformer
from llmos.tokenizer import Tokenizer

FORMAT_VERSION = "1"


def save_params(path: str | Path, model: Transformer, tok: Tokenizer, provenance: dict | None = None,
                chat_template: str = "", dtype: torch.dtype = torch.float32) -> Path:
    state = {k: v.detach().to("cpu", dtype).contiguous() for k, v in model.state_dict().items()
             if not (model.cfg.tie_embeddings and k == "lm_head.weight")}
    provenance = {"created": datetime.now(timezone.utc).isoformat(timespec="seconds"), **(provenance or {})}
    metadata = {"format": "llmos", "format_version": FORMAT_VERSION, "config": json.dumps(model.cfg.to_dict()),
                "tokenizer": tok.to_json(), "chat_template": chat_template, "provenance": json.dumps(provenance)}
    with atomic_write(path) as f:
        f.write(save(state, metadata=metadata))
    return Path(path)


def read_metadata(path: str | Path) -> dict:
    """The header metadata of a params file, with clear errors for missing, truncated or foreign files."""
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
            raise LlmosError(f"{path} has a corrupt safetensors header") from None
    meta = header.get("__metadata__", {})
    if meta.get("format") != "llmos":
        raise LlmosError(f"{path} is a safetensors file but not an llmos params file (no format=llmos metadata): "
                         "import foreign models with `llmos import`")
    if meta.get("format_version") != FORMAT_VERSION:
        raise LlmosError(f"{path} has params format version {meta.get('format_version')}; "
                         f"this llmos reads version {FORMAT_VERSION}")
    end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
    if path.stat().st_size < 8 + size + end:
        raise LlmosError(f"{path} is truncated: its header promises {end:,} bytes of weights")
    return meta


def load_params(path: str | Path, device: str | torch.device = "cpu") -> tuple[Transformer, Tokenizer, dict]:
    meta = read_metadata(path)
    cfg = ModelConfig.from_dict(json.loads(meta["config"]))
    tok = Tokenizer.from_json(meta["tokenizer"])
    check_vocab(tok, cfg, source=str(path))
    with safe_open(str(path), framework="pt", device="cpu") as f:
        state = {k: f.get_tensor(k).float() for k in f.keys()}
    model = Transformer(cfg)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not (cfg.tie_embeddings and k == "lm_head.weight")]
    if missing or unexpected:
        raise LlmosError(f"{path} does not match its own config: missing {missing[:3]}, unexpected {unexpected[:3]}")
    info = {"chat_template": meta.get("chat_template", ""), "provenance": json.loads(meta.get("provenance", "{}"))}
    return model.to(device).eval(), tok, info


def check_vocab(tok: Tokenizer, cfg: ModelConfig, source: str = "the model") -> None:
    if tok.vocab_size != cfg.vocab_size:
        raise LlmosError(f"the tokenizer has {tok.vocab_size} tokens but {source} expects {cfg.vocab_size}: "
                         "use the tokenizer the model was trained with")

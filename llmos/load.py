"""Model references -> (model, tokenizer, info): the one place that knows what `--model` may name.

    model, tok, info = load_model("runs/speedrun-cpu")     # a run dir, a .llmos file, a .pt checkpoint
    model, tok, info = load_model("smollm2-135m-instruct")  # a named model (fetched and imported once)
    info["chat_template"], info["provenance"]

A run directory means its finished params file (a speedrun's assistant, then its base model), else
its latest checkpoint. `open_model` leaves the weights in the training layout (for fine-tuning and
export); `load_model` makes an inference model (projections fused, weights as asked: llmos/quant.py).
Nothing here imports training code: the engine, the server and the exporters load models through
this module alone.
"""
from __future__ import annotations

from pathlib import Path

import torch

from llmos.checkpoint import latest_checkpoint, load_checkpoint
from llmos.common import LlmosError
from llmos.model import ModelConfig, Transformer, check_weight_shapes
from llmos.params import check_vocab, load_params, parse_tokenizer
from llmos.tokenizer import Tokenizer


def load_model(ref: str | Path, device: str = "cpu", weights: str | None = None,
               compile: bool = False) -> tuple[Transformer, Tokenizer, dict]:
    """The model behind a reference as an inference model: q/k/v and gate/up fused, weights in
    `weights` (f32, f16, int8, int4, w8a8: llmos/quant.py; None keeps what the file stores), laid out for
    decoding (`compile`: for Engine(compile=True)). It cannot be trained: use open_model for that."""
    model, tok, info = open_model(ref, device)
    model.prepare_inference(weights, stored=info.pop("quantized", None), compile=compile)
    return model, tok, info


def resolve_reference(ref: str | Path) -> Path:
    """The file a model reference names (a named model is fetched and imported on first use)."""
    path = Path(ref).expanduser()
    if not path.exists():
        from llmos.interop.catalog import is_named_model, resolve_named_model, unknown_model_error
        if not is_named_model(str(ref)):
            raise unknown_model_error(str(ref))
        path = resolve_named_model(str(ref))
    if path.is_dir():
        finished = [path / sub / "model.llmos" for sub in ("", "sft", "base") if (path / sub / "model.llmos").is_file()]
        path = finished[0] if finished else latest_checkpoint(path / "checkpoints")
    return path


def open_model(ref: str | Path, device: str = "cpu") -> tuple[Transformer, Tokenizer, dict]:
    """load_model's resolution, with the weights left in the training layout (for fine-tuning)."""
    path = resolve_reference(ref)
    model, tok, info = load_checkpoint_model(path, device) if path.suffix == ".pt" else load_params(path, device)
    roles = info["provenance"].get("tokenizer_roles")
    if roles:  # an imported model names its own bos/eos and whether prompts start with bos
        tok = Tokenizer(tok.hf, **roles)
    return model, tok, info


def load_checkpoint_model(path: Path, device: str = "cpu") -> tuple[Transformer, Tokenizer, dict]:
    state = load_checkpoint(path)
    cfg = ModelConfig.from_dict(state.get("model_config"), source=str(path))
    if "tokenizer" not in state:
        raise LlmosError(f"checkpoint {path} carries no tokenizer")
    tok = parse_tokenizer(state["tokenizer"], str(path))
    check_vocab(tok, cfg, source=str(path))
    weights = state["model"]
    if not isinstance(weights, dict) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise LlmosError(f"checkpoint {path} holds no weights (its model entry is not a state dict): "
                         "delete it to fall back to the previous one, or retrain")
    if any(k.startswith("base_model.model.") for k in weights):
        raise LlmosError(f"{path} is a checkpoint of a LoRA fine-tuning still in progress: finish it "
                         "(`llmos sft ... --resume`) and use the run's model.llmos")
    check_weight_shapes(cfg, {k: v.shape for k, v in weights.items()}, str(path))
    model = Transformer.from_state(cfg, weights)  # names and shapes are checked; a tied lm_head is embed
    saved = state.get("provenance")
    provenance = {**(saved if isinstance(saved, dict) else {}), "checkpoint": str(path), "step": state.get("step")}
    return model.to(device).eval(), tok, {"chat_template": state.get("chat_template", ""), "provenance": provenance}

"""Training checkpoints on disk: `RUN/checkpoints/step_*.pt`, found and read with clear errors.

    state = load_checkpoint(latest_checkpoint(run_dir / "checkpoints"))
    state["model"], state["model_config"], state["tokenizer"], state["step"] ...

The Trainer (llmos/train/loop.py) writes them; this module only reads, so that loading a model for
inference (llmos/load.py) never imports training code.
"""
from __future__ import annotations

from pathlib import Path

import torch

from llmos.common import LlmosError

CKPT_VERSION = 1


def latest_checkpoint(ckpt_dir: Path) -> Path:
    found = sorted(Path(ckpt_dir).glob("step_*.pt"))
    if not found:
        raise LlmosError(f"no checkpoint in {ckpt_dir} to resume from: start the run without --resume")
    return found[-1]


def load_checkpoint(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise LlmosError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise LlmosError(f"checkpoint {path} is corrupt or truncated ({type(e).__name__}): "
                         "delete it to fall back to the previous one, or retrain") from None
    if not isinstance(state, dict) or state.get("version") != CKPT_VERSION or "model" not in state:
        raise LlmosError(f"{path} is not an llmos checkpoint (version {CKPT_VERSION})")
    return state

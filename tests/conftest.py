"""Shared fixtures: a small real-text corpus (the Python standard library's own modules, which exist
wherever Python does) prepared through `--from`, and a tokenizer trained on it."""
from __future__ import annotations

import os
import sys
import sysconfig
from pathlib import Path

import pytest

from llmos.data.corpus import load_texts, prepare
from llmos.tokenizer import Tokenizer

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def isolated_home(tmp_path, monkeypatch):
    """Keep every test out of the user's LLMOS_HOME."""
    monkeypatch.setenv("LLMOS_HOME", str(tmp_path / "llmos_home"))


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("stdlib_text")
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))[:120]:
        (src / (path.stem + ".txt")).write_text(path.read_text(encoding="utf-8", errors="replace"))
    out = tmp_path_factory.mktemp("corpus")
    prepare(out, from_patterns=[str(src / "*.txt")], val_fraction=0.05, seed=0)
    return out


@pytest.fixture(scope="session")
def tokenizer_path(corpus_dir) -> Path:
    tok = Tokenizer.train(load_texts(corpus_dir, "train"), vocab_size=512)
    path = corpus_dir / "tokenizer.json"
    tok.save(path)
    return path


def llmos_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "llmos.cli", *args]


def subprocess_env(**extra) -> dict:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **extra}
    env.pop("WORLD_SIZE", None)
    return env

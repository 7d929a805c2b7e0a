"""Small shared helpers: the user-facing error type, LLMOS_HOME, atomic writes, JSON lines.

Every failure a user can cause raises `LlmosError` with a message that says what was wrong and
what to do; the CLI prints it without a traceback. Files that must never be half-written
(checkpoints, manifests, shards) go through `atomic_write`: write to a temp file in the same
directory, fsync, then rename over the target.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Iterator


class LlmosError(Exception):
    """An error caused by the user's input or environment; printed as one clear message."""


def llmos_home() -> Path:
    """Root for downloaded sources, prepared corpora and runs (env LLMOS_HOME, default ~/.cache/llmos)."""
    return Path(os.environ.get("LLMOS_HOME", Path.home() / ".cache" / "llmos")).expanduser()


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator:
    """Open a temp file beside `path`; on success fsync and rename it over `path`, else delete it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes owner-only files; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json(path: str | os.PathLike, obj) -> None:
    with atomic_write(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=False, default=str)
        f.write("\n")


def read_jsonl(path: str | os.PathLike) -> Iterator[dict]:
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)

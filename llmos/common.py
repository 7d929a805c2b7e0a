"""Small shared helpers: the user-facing error type, LLMOS_HOME, atomic writes, JSON files, file locks.

Every failure a user can cause raises `LlmosError` with a message that says what was wrong and
what to do; the CLI prints it without a traceback. Files that must never be half-written
(checkpoints, manifests, shards) go through `atomic_write`: write to a temp file in the same
directory, fsync, then rename over the target. An OS error while writing (full disk, read-only
directory) becomes an LlmosError naming the path. Text is always UTF-8, whatever the locale.

`file_lock(path)` serialises processes that share a directory (two fetches of one source, two
runs on one run directory): an exclusive `flock` that the kernel releases when the holder exits,
even by SIGKILL, so a stale lock file never blocks anyone. The holder writes who it is into the
file, so a refusal can name it.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator


class LlmosError(Exception):
    """An error caused by the user's input or environment; printed as one clear message."""


def llmos_home() -> Path:
    """Root for downloaded sources, prepared corpora and runs (env LLMOS_HOME, default ~/.cache/llmos)."""
    return Path(os.environ.get("LLMOS_HOME", Path.home() / ".cache" / "llmos")).expanduser()


def os_error_message(e: OSError, path: str | os.PathLike | None = None) -> str:
    """'could not write PATH: No space left on device' from an OSError, naming the path it concerns."""
    where = path if path is not None else e.filename
    reason = e.strerror or str(e)
    return f"{where}: {reason}" if where is not None else reason


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator:
    """Open a temp file beside `path`; on success fsync and rename it over `path`, else delete it."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes owner-only files; give the usual permissions
        os.replace(tmp, path)
    except OSError as e:
        _remove(tmp)
        if e.filename is not None and Path(e.filename) != path and str(e.filename) != tmp:
            raise  # about another file (say, one read while writing this one): it names its own path
        raise LlmosError(f"could not write {os_error_message(e, path)}") from None
    except BaseException:
        _remove(tmp)
        raise


def _remove(tmp: str | None) -> None:
    if tmp is not None:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def write_json(path: str | os.PathLike, obj) -> None:
    with atomic_write(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=False, default=str)
        f.write("\n")


def read_json(path: str | os.PathLike, what: str = "file"):
    """A JSON file's content; a missing or corrupt file is an LlmosError naming it."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LlmosError(f"{what} {path} does not exist") from None
    except OSError as e:
        raise LlmosError(f"could not read {what} {os_error_message(e, path)}") from None
    except ValueError as e:
        raise LlmosError(f"{what} {path} is not valid JSON ({e}): it was cut short or edited; "
                         "delete it and run the step that writes it again") from None


def read_jsonl(path: str | os.PathLike) -> Iterator[dict]:
    """The objects of a JSON-lines file; a bad line is an LlmosError naming the file and line."""
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if line.strip():
                try:
                    yield json.loads(line)
                except ValueError as e:
                    raise LlmosError(f"{path}:{lineno}: not a JSON line ({e})") from None


def _describe_holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
        return f"pid {info['pid']} on {info['host']}, since {info['since']}: {info['command']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


@contextlib.contextmanager
def file_lock(path: str | os.PathLike, what: str, wait: bool = True) -> Iterator[None]:
    """Hold an exclusive lock on `path` for the with-block. If another process holds it: wait for it
    (saying so on stderr), or with `wait=False` raise an LlmosError naming the holder."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as e:
        raise LlmosError(f"could not lock {what}: {os_error_message(e, path)}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _describe_holder(path)
            if not wait:
                raise LlmosError(f"{what} is in use by {holder}; wait for it to finish or stop it "
                                 "(a second process there would corrupt it)") from None
            print(f"waiting for {holder}, which holds {what}", file=sys.stderr, flush=True)
            fcntl.flock(fd, fcntl.LOCK_EX)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "command": " ".join(sys.argv),
              "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me).encode(), 0)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock

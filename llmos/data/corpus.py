"""Prepare a training corpus: gather documents, dedup, shuffle, split by document, write JSON lines.

    from llmos.data.corpus import prepare, load_texts, default_corpus_dir
    manifest = prepare(default_corpus_dir())                  # every catalog source whose tool exists
    manifest = prepare(out, sources=["wiki", "shakespeare"])  # chosen sources
    manifest = prepare(out, from_patterns=["notes/*.md", "data/"])  # your own files
    for text in load_texts(out, "val"): ...

The output directory holds train.jsonl and val.jsonl (one {"text", "source"} object a line) and
manifest.json, written last: per source its package, version, license, documents, bytes and a
sha256 of its documents (`text_sha256`: of all its cleaned documents, before dedup), plus the
totals, the split and the corpus `fingerprint` (a sha256 of train.jsonl and val.jsonl), by which
token shards under `tokens/` are keyed. Calling `prepare` again with the same request reuses the
corpus instead of rebuilding it; a rebuild deletes `tokens/`. One prepare at a time holds a corpus
directory (a file lock; a second process waits). The validation split takes whole documents
(never a cut one) until it holds about `val_fraction` of the bytes and at least `min_val_docs`.

User files: .txt and .md are one document each, .jsonl needs a "text" field on every line,
.parquet a "text" column. A directory stands for every such file under it; a pattern naming an
existing path is that path, even with glob characters in its name. A bad line (not JSON, no
string "text", a lone surrogate) or file (a name that is not UTF-8, a parquet file without a
"text" column) is reported with its file and line and skipped; `strict=True` stops at the first.
"""
from __future__ import annotations

import glob
import hashlib
import json
import os
import random
import shutil
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

from tqdm import tqdm

from llmos.common import LlmosError, atomic_write, file_lock, llmos_home, read_json, write_json
from llmos.data.fetch import sha256_file
from llmos.data.sources import (CATALOG, Source, available, clean, display_path, documents, fetch, fetched_info,
                                lone_surrogate, text_sha256)

SUPPORTED = (".txt", ".md", ".jsonl", ".parquet")
SPLITS = ("train", "val")
MAX_REPORTED = 20  # bad input lines and files reported one by one; past this they are only counted


def default_corpus_dir() -> Path:
    return llmos_home() / "data" / "default"


def list_sources() -> list[dict]:
    """One row per catalog source, for `llmos data list`."""
    rows = []
    for s in CATALOG.values():
        ok, reason = available(s)
        rows.append({"name": s.name, "fetcher": s.fetcher, "package": s.spec, "license": s.license,
                     "available": ok, "reason": reason, "fetched": fetched_info(s) is not None,
                     "description": s.description})
    return rows


def load_texts(out_dir: str | os.PathLike, split: str) -> Iterator[str]:
    """The documents of one split ("train" or "val") of a prepared corpus, in file order."""
    if split not in SPLITS:
        raise LlmosError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    path = Path(out_dir) / f"{split}.jsonl"
    if not (Path(out_dir) / "manifest.json").exists() or not path.exists():
        raise LlmosError(f"no prepared corpus in {out_dir}; run `llmos data prepare` first")
    for doc in read_documents(path):
        yield doc["text"]


def read_documents(path: str | os.PathLike) -> Iterator[dict]:
    """The {"text", "source"} objects of a prepared split file. A line that is not such an object (a
    hand edit, a copy cut short) is an LlmosError naming the file and line."""
    lineno = 0
    try:
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                try:
                    doc = json.loads(line)
                except ValueError as e:
                    raise _corrupt(path, lineno, f"not a JSON line ({e})") from None
                if not isinstance(doc, dict) or not isinstance(doc.get("text"), str):
                    raise _corrupt(path, lineno, 'not an object with a string "text"')
                if why := lone_surrogate(doc["text"]):  # prepare never writes one: an edit put it there
                    raise _corrupt(path, lineno, f"the text {why}")
                yield doc
    except UnicodeDecodeError as e:  # raised by reading the next line, which is not UTF-8
        raise _corrupt(path, lineno + 1, f"not UTF-8 text ({e.reason})") from None


def _corrupt(path: str | os.PathLike, lineno: int, why: str) -> LlmosError:
    return LlmosError(f"{path}:{lineno}: {why}: the prepared corpus was edited or cut short; run "
                      "`llmos data prepare` again to rebuild it")


def fingerprint(out_dir: str | os.PathLike) -> str:
    """What a prepared corpus holds: a sha256 over its train and val files, by which token shards are
    keyed. `prepare` records it in the manifest; a corpus without one (made by hand, or by an older
    llmos) is hashed here."""
    out_dir = Path(out_dir)
    if (out_dir / "manifest.json").is_file():
        manifest = read_json(out_dir / "manifest.json", "corpus manifest")
        if isinstance(manifest, dict) and manifest.get("fingerprint"):
            return manifest["fingerprint"]
    digest = hashlib.sha256()
    for split in SPLITS:
        digest.update(bytes.fromhex(sha256_file(out_dir / f"{split}.jsonl")))
    return digest.hexdigest()


# ----------------------------------------------------------------------------
# Reading the user's own files

class _BadInputs:
    """Bad lines and files of the user's own input: each reported on stderr (the first MAX_REPORTED)
    and skipped, or with `strict` an LlmosError at the first one."""

    def __init__(self, strict: bool):
        self.strict = strict
        self.counts = {"lines": 0, "files": 0}

    def skip(self, kind: str, where: str, why: str) -> None:
        if self.strict:
            raise LlmosError(f"{where}: {why} (without --strict it would be reported and skipped)")
        self.counts[kind] += 1
        if sum(self.counts.values()) <= MAX_REPORTED:
            tqdm.write(f"skipping {where}: {why}", file=sys.stderr)

    def summary(self) -> None:
        if any(self.counts.values()):
            tqdm.write(f"skipped {self.counts['lines']} bad line(s) and {self.counts['files']} bad file(s) "
                       "of your input; --strict stops at the first instead", file=sys.stderr)


def _resolve_patterns(patterns: list[str]) -> list[Path]:
    files: list[Path] = []
    for pattern in patterns:
        pattern = os.path.expanduser(pattern)
        # A pattern naming an existing path is that path ("notes[draft].md"); only otherwise a glob.
        if os.path.lexists(pattern):
            matches = [Path(pattern)]
        else:
            matches = [Path(p) for p in sorted(glob.glob(pattern, recursive=True))]
        if not matches:
            raise LlmosError(f"--from {pattern!r} matches no file; check the path or quote the glob")
        for m in matches:
            if m.is_dir():
                found = sorted(p for p in m.rglob("*") if p.is_file() and p.suffix in SUPPORTED)
                if not found:
                    raise LlmosError(f"directory {m} holds no {', '.join(SUPPORTED)} files")
                files.extend(found)
            elif m.suffix in SUPPORTED:
                files.append(m)
            else:
                raise LlmosError(f"{m}: unsupported file type; use one of {', '.join(SUPPORTED)}")
    return list(dict.fromkeys(p.resolve() for p in files))  # a file matched twice is read once


def _read_user_file(path: Path, bad: _BadInputs) -> Iterator[str]:
    if path.suffix in (".txt", ".md"):
        yield path.read_text(encoding="utf-8", errors="replace")
    elif path.suffix == ".jsonl":
        with open(path, encoding="utf-8", errors="replace") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    text = json.loads(line)["text"]
                    if not isinstance(text, str):
                        raise TypeError("text is not a string")
                except (ValueError, KeyError, TypeError) as e:
                    bad.skip("lines", f"{path}:{lineno}", "expected a JSON object with a string \"text\" "
                             f"field ({type(e).__name__}: {e})")
                    continue
                if why := lone_surrogate(text):
                    bad.skip("lines", f"{path}:{lineno}", why)
                    continue
                yield text
    else:
        import pyarrow.parquet as pq  # only needed for parquet input

        try:
            column = pq.read_table(path, columns=["text"]).column("text")
        except (KeyError, ValueError) as e:
            bad.skip("files", str(path), f"a parquet file needs a \"text\" column ({e})")
            return
        yield from (t for t in column.to_pylist() if isinstance(t, str))


# ----------------------------------------------------------------------------
# Building

def _request(sources: list[Source] | None, files: list[Path] | None, val_fraction, min_val_docs, seed) -> dict:
    """What defines a corpus; an existing manifest with the same request is reused."""
    if files is not None:  # size and mtime, so an edited file triggers a rebuild
        inputs = [[str(p), p.stat().st_size, p.stat().st_mtime_ns] for p in files]
    else:
        inputs = [f"{s.name}:{s.spec}" for s in sources]
    return {"inputs": inputs, "val_fraction": val_fraction, "min_val_docs": min_val_docs, "seed": seed}


def _pick_sources(names: list[str] | None) -> list[Source]:
    if names is None:
        picked = []
        for s in CATALOG.values():
            ok, reason = available(s)
            if ok:
                picked.append(s)
            else:
                print(f"skipping source {s.name}: {reason}", file=sys.stderr)
        return picked
    unknown = [n for n in names if n not in CATALOG]
    if unknown:
        raise LlmosError(f"unknown source(s) {', '.join(unknown)}; valid names: {', '.join(CATALOG)}")
    return [CATALOG[n] for n in dict.fromkeys(names)]


def _gather_sources(picked: list[Source]) -> tuple[list[tuple[str, str]], list[dict], dict, list[str]]:
    """Every source's documents, its manifest entry, the failed ones' reasons, and warnings."""
    docs, entries, failed, warnings = [], [], {}, []
    for s in tqdm(picked, desc="sources", unit="src", file=sys.stderr):
        t0 = time.time()
        try:
            fetch(s)
            t1 = time.time()
            texts = list(tqdm(documents(s), desc=f"  {s.name}", unit="doc", leave=False, file=sys.stderr))
        except Exception as e:  # one broken source must not sink the others; report it by name
            failed[s.name] = str(e)
            tqdm.write(f"source {s.name} failed: {e}", file=sys.stderr)
            continue
        info = fetched_info(s)
        checksum = text_sha256(texts)
        if s.text_sha256 and checksum != s.text_sha256:
            warnings.append(f"source {s.name}: the text of {s.package} {info['version']} differs from the "
                            "checksum pinned in the catalog (the package was replaced at a point release, "
                            "or the extractor changed); the corpus uses it as it is now")
            tqdm.write(f"warning: {warnings[-1]}", file=sys.stderr)
        entries.append({"name": s.name, "fetcher": s.fetcher, "package": s.package,
                        "version": info["version"], "license": s.license, "text_sha256": checksum,
                        "fetch_seconds": round(t1 - t0, 2), "extract_seconds": round(time.time() - t1, 2)})
        docs.extend((t, s.name) for t in texts)
    return docs, entries, failed, warnings


def _gather_files(files: list[Path], bad: _BadInputs) -> tuple[list[tuple[str, str]], list[dict]]:
    docs, entries = [], []
    for path in tqdm(files, desc="files", unit="file", file=sys.stderr, disable=len(files) < 20):
        if display_path(path) != str(path):  # undecodable bytes: no UTF-8 manifest or JSONL can name it
            bad.skip("files", display_path(path), "the file name is not valid UTF-8; rename the file")
            continue
        texts = [t for t in map(clean, _read_user_file(path, bad)) if t]
        docs.extend((t, str(path)) for t in texts)
        entries.append({"name": str(path), "fetcher": "local", "package": None, "version": None,
                        "license": None})
    return docs, entries


def _dedup(docs: list[tuple[str, str]]) -> tuple[list[tuple[str, str]], int]:
    """Drop exact duplicates (same text up to whitespace); the first occurrence wins."""
    seen, kept = set(), []
    for text, src in docs:
        key = hashlib.sha256(" ".join(text.split()).encode()).digest()
        if key not in seen:
            seen.add(key)
            kept.append((text, src))
    return kept, len(docs) - len(kept)


def _nbytes(docs: list[tuple[str, str]]) -> int:
    return sum(len(t.encode()) for t, _ in docs)


def _split(docs: list[tuple[str, str]], val_fraction: float, min_val_docs: int, seed: int):
    """Shuffle whole documents, then take validation documents from the front until both the byte
    target and the document minimum are met; never more than half, so training keeps the bulk."""
    if len(docs) < 2:
        raise LlmosError(f"only {len(docs)} document(s) after cleaning and dedup; need at least 2 "
                         "to hold out a validation split")
    order = list(range(len(docs)))
    random.Random(seed).shuffle(order)
    target = val_fraction * _nbytes(docs)
    n_val, val_bytes = 0, 0
    while n_val < len(docs) // 2 and (val_bytes < target or n_val < min_val_docs):
        val_bytes += len(docs[order[n_val]][0].encode())
        n_val += 1
    n_val = max(n_val, 1)
    return [docs[i] for i in order[n_val:]], [docs[i] for i in order[:n_val]]


def _write_jsonl(path: Path, docs: list[tuple[str, str]]) -> None:
    with atomic_write(path, "w") as f:
        for text, src in docs:
            f.write(json.dumps({"text": text, "source": src}, ensure_ascii=False) + "\n")


def prepare(out_dir: str | os.PathLike, sources: list[str] | None = None,
            from_patterns: list[str] | None = None, val_fraction: float = 0.005,
            min_val_docs: int = 8, seed: int = 0, strict: bool = False) -> dict:
    """Build (or reuse) a corpus in out_dir and return its manifest. See the module docstring."""
    out_dir = Path(out_dir)
    if from_patterns:
        files, picked = _resolve_patterns(list(from_patterns)), None
    else:
        files, picked = None, _pick_sources(sources)
        if not picked:
            raise LlmosError("no corpus source selected or fetchable here (npm and Debian sources need "
                             "npm or apt-get); name sources, or use --from with your own files")
    request = _request(picked, files, val_fraction, min_val_docs, seed)
    with file_lock(out_dir / ".lock", f"the corpus directory {out_dir}"):
        return _build(out_dir, request, picked, files, val_fraction, min_val_docs, seed, strict)


def _build(out_dir: Path, request: dict, picked: list[Source] | None, files: list[Path] | None,
           val_fraction: float, min_val_docs: int, seed: int, strict: bool) -> dict:
    t0 = time.time()
    manifest_path = out_dir / "manifest.json"
    if manifest_path.exists() and all((out_dir / f"{s}.jsonl").exists() for s in SPLITS):
        old = read_json(manifest_path, "corpus manifest")
        same = isinstance(old, dict) and old.get("request") == request and not old.get("failed")
        if same and not (strict and any(old.get("skipped", {}).values())):  # strict must see what was skipped
            print(f"reusing the corpus in {out_dir} (same request)", file=sys.stderr)
            return old
    # From here the old corpus is stale: without its manifest it can't be mistaken for finished, and
    # its token shards go with it (they are keyed by its content, but would only take up space).
    manifest_path.unlink(missing_ok=True)
    shutil.rmtree(out_dir / "tokens", ignore_errors=True)

    bad, warnings = _BadInputs(strict), []
    if files is not None:
        docs, entries, failed = *_gather_files(files, bad), {}
        bad.summary()
    else:
        docs, entries, failed, warnings = _gather_sources(picked)
        if not entries:
            raise LlmosError("every source failed to fetch: " +
                             "; ".join(f"{n}: {r}" for n, r in failed.items()))
    docs, duplicates = _dedup(docs)
    train, val = _split(docs, val_fraction, min_val_docs, seed)

    by_source: dict[str, list[str]] = {e["name"]: [] for e in entries}
    for text, src in docs:
        by_source[src].append(text)
    for entry in entries:  # per-source counts after dedup: what the corpus really holds
        texts = by_source[entry["name"]]
        entry.update(documents=len(texts), bytes=sum(len(t.encode()) for t in texts), sha256=text_sha256(texts))

    _write_jsonl(out_dir / "train.jsonl", train)
    _write_jsonl(out_dir / "val.jsonl", val)
    manifest = {
        "request": request,
        "sources": entries,
        "failed": failed,
        "warnings": warnings,
        "skipped": bad.counts,
        "documents": len(docs),
        "bytes": _nbytes(docs),
        "duplicates_removed": duplicates,
        "train": {"documents": len(train), "bytes": _nbytes(train)},
        "val": {"documents": len(val), "bytes": _nbytes(val)},
        "seed": seed,
        "fingerprint": fingerprint(out_dir),  # no manifest yet, so this hashes the files just written
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "seconds": round(time.time() - t0, 2),
    }
    write_json(manifest_path, manifest)
    return manifest

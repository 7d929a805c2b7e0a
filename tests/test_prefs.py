"""Preference pairs built by code (`llmos prefs`): every source makes pairs whose chosen and rejected
answers differ in the way it promises, train and eval share no prompt, the manifest counts what the
files hold, a seed gives the same files, and bad inputs fail with one clear line."""
import json
import random

import pytest

from llmos.cli import main
from llmos.common import read_jsonl
from llmos.data.labels import LabelStore, Side
from llmos.data.prefs import (WRONG_IDENTITIES, PrefsArgs, build_pairs, cut_short, load_exchanges, pick_task_pairs,
                              prompt_key)
from llmos.eval.tasks import Problem, get_task
from serving import tiny_chat_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model(tokenizer_path, tmp_path_factory):
    return tiny_chat_model(tmp_path_factory.mktemp("prefs_model") / "tiny.llmos", tokenizer_path)


def label_db(path, n: int = 40):
    """A label database: n pairs of distinct prompts, each labeled; the even ones won by A, the odd by B."""
    with LabelStore(path) as store:
        for i in range(n):
            pid = store.add_pair([{"role": "user", "content": f"Question number {i}?"}], f"good answer {i}",
                                 f"bad answer {i}", Side("m", 0.7), Side("m", 1.2))
            store.add_label(pid, "ada", "a" if i % 2 == 0 else "b")
    return path


def read_dir(out):
    return {split: list(read_jsonl(out / f"{split}.jsonl")) for split in ("train", "eval")}, \
        json.loads((out / "manifest.json").read_text())


def test_every_source_makes_pairs_as_it_promises(model, tmp_path):
    db = label_db(tmp_path / "labels.sqlite")
    args = PrefsArgs(model=str(model), out=str(tmp_path / "pairs"), per_source=20, eval_fraction=0.25,
                     sources="task:skills:add,truncated,off-topic,identity,label", label_db=str(db),
                     conversations="identity,skills", samples=2, max_tokens=8)
    build_pairs(args)
    splits, manifest = read_dir(tmp_path / "pairs")
    names = ["task:skills:add", "truncated", "off-topic", "identity", "label"]
    assert list(manifest["sources"]) == names and not manifest["skipped"]
    for split, pairs in splits.items():
        # The manifest counts what the files hold, source by source.
        assert manifest["totals"][split] == len(pairs)
        for name in names:
            assert manifest["sources"][name][split] == sum(p["source"] == name for p in pairs), (name, split)
        assert all(p["chosen"] != p["rejected"] for p in pairs)
    # Every source lands in both splits, and the splits share no prompt.
    for name in names:
        assert all(manifest["sources"][name][split] > 0 for split in splits), name
    assert not {prompt_key(p["prompt"]) for p in splits["train"]} & {prompt_key(p["prompt"]) for p in splits["eval"]}
    pairs = splits["train"] + splits["eval"]
    task = get_task("skills:add")
    for p in pairs:
        if p["source"] == "task:skills:add":  # the checker prefers the chosen reply
            problem = Problem(p["prompt"][0]["content"], p["answer"])
            assert task.check(p["chosen"], problem) and not task.check(p["rejected"], problem)
        elif p["source"] == "truncated":
            assert p["chosen"].startswith(p["rejected"]) and 0 < len(p["rejected"]) <= len(p["chosen"]) / 2
        elif p["source"] == "identity":
            assert p["rejected"] in WRONG_IDENTITIES and ("llmos" in p["chosen"] or "language model" in p["chosen"])
        elif p["source"] == "label":
            i = int(p["prompt"][0]["content"].split()[-1].rstrip("?"))
            assert (p["chosen"], p["rejected"]) == (f"good answer {i}", f"bad answer {i}") if i % 2 == 0 else \
                (p["chosen"], p["rejected"]) == (f"bad answer {i}", f"good answer {i}")
    # A random tiny model answers nothing right: its pairs' chosen side is the reference solution.
    assert {p["chosen_from"] for p in pairs if p["source"] == "task:skills:add"} == {"reference"}
    # Off-topic rejects are replies to other prompts of the same source and split.
    for split, split_pairs in splits.items():
        exchanges = load_exchanges(["identity", "skills"], split, 20, 0, {})
        for p in split_pairs:
            if p["source"] == "off-topic":
                others = [reply for prompt, reply in exchanges[p["conversation_source"]] if prompt != p["prompt"]]
                assert p["rejected"] in others


def test_same_seed_same_files_and_the_default_label_store_is_optional(model, tmp_path):
    def build(out, seed):
        return build_pairs(PrefsArgs(model=str(model), out=str(out), per_source=10, conversations="identity,skills",
                                     sources="task:skills:sub,truncated,off-topic,identity,label", samples=2,
                                     max_tokens=8, seed=seed))
    first = build(tmp_path / "a", 0)
    build(tmp_path / "b", 0)
    build(tmp_path / "c", 1)
    for split in ("train.jsonl", "eval.jsonl"):
        assert (tmp_path / "a" / split).read_text() == (tmp_path / "b" / split).read_text()
        assert (tmp_path / "a" / split).read_text() != (tmp_path / "c" / split).read_text()
    # No --label-db and none at the default place: the label source is skipped, and says why.
    assert "no label database" in first["skipped"]["label"] and "label" not in first["sources"]


def test_task_pair_choice():
    rng = random.Random(0)
    (chosen, _, source), = pick_task_pairs(["7", "8", "9"], [False, True, False], "ref", rng)
    assert (chosen, source) == ("8", "sample")
    assert pick_task_pairs(["7", "9"], [False, False], "ref", rng)[0] in (("ref", "7", "reference"),
                                                                          ("ref", "9", "reference"))
    assert pick_task_pairs(["8", "8"], [True, True], "ref", rng) == []  # nothing wrong: no pair
    assert pick_task_pairs(["7"], [False], None, rng) == []  # nothing right at hand (or --no-reference)
    # Several pairs from one problem: distinct right-against-wrong combinations, never more than there are.
    many = pick_task_pairs(["1", "2", "3", "4", "4"], [True, True, False, False, False], None, rng, count=10)
    assert sorted(many) == [(c, r, "sample") for c in "12" for r in "34"]
    assert len(set(pick_task_pairs(["1", "2", "3", "4"], [True, True, False, False], None, rng, count=3))) == 3
    assert cut_short("ab", rng) is None
    assert cut_short("one two three four", rng) in ("one", "one two")


@pytest.mark.parametrize("flags, message", [
    (["--sources", "truncated,bogus"], "unknown preference source 'bogus'"),
    (["--sources", "task:skills:add,sub"], "unknown preference source 'sub'"),
    (["--sources", "task"], "--model is required for a task source"),
    (["--sources", "task", "--model", "no/such/model.llmos"], "no model at no/such/model.llmos"),
    (["--sources", "label", "--label-db", "missing.sqlite"], "no label database at"),
    (["--sources", "label", "--label-db", "EMPTY"], "settles no preference pair"),
    (["--sources", "identity", "--eval-fraction", "1"], "--eval-fraction must be in [0, 1)"),
])
def test_bad_inputs_are_one_clear_line(tmp_path, capsys, flags, message):
    if "EMPTY" in flags:
        LabelStore(tmp_path / "empty.sqlite").close()
        flags = [f if f != "EMPTY" else str(tmp_path / "empty.sqlite") for f in flags]
    assert main(["prefs", "--out", str(tmp_path / "pairs"), *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("llmos prefs: error: ") and message in err and "\n" not in err, err
    assert not (tmp_path / "pairs").exists()

"""The hand labels (tests/data/judge_labels.jsonl, _2, _3, _4) are what docs/security.md says:
at least 100 replies a set, each with its prompt, reply and a true/false label, both labels present, no
prompt twice (each set is fresh: none of another set's prompts), and `bench/judge_labels.py agreement` reads them and prints the judge's agreement with its interval.
(The figure itself, and the labelling rule, are in docs/security.md: it is measured, not asserted.)"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["judge_labels.jsonl", "judge_labels_2.jsonl", "judge_labels_3.jsonl",
                                  "judge_labels_4.jsonl"])
def test_the_labels_are_complete_and_the_agreement_is_measured(name):
    labels = ROOT / "tests" / "data" / name
    rows = [json.loads(line) for line in labels.read_text().splitlines()]
    assert len(rows) >= 100 and len({r["id"] for r in rows}) == len(rows)
    assert all(isinstance(r["complies"], bool) and r["prompt"] and r["behaviour"] for r in rows)
    assert len({(r["system"], r["prompt"]) for r in rows}) == len(rows)  # greedy: the same prompt, the same reply
    assert 0 < sum(r["complies"] for r in rows) < len(rows)
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "judge_labels.py"), "agreement", str(labels)],
                         capture_output=True, text=True, cwd=ROOT, check=True).stdout
    agree, total = map(int, out.split()[1].split("/"))
    assert total == len(rows) and "95% CI" in out
    shown = sum(line.startswith("- ") for line in out.splitlines())
    assert shown == total - agree  # every disagreement is listed for a reader to check


def test_each_set_is_fresh():
    sets = [{(r["system"], r["prompt"]) for r in map(json.loads, (ROOT / "tests" / "data" / name).read_text().splitlines())}
            for name in ("judge_labels.jsonl", "judge_labels_2.jsonl", "judge_labels_3.jsonl", "judge_labels_4.jsonl")]
    assert all(not sets[i] & sets[j] for i in range(len(sets)) for j in range(i + 1, len(sets)))

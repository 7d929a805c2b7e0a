"""The CLI as a user meets it: help on every verb, clear one-line errors, the tiny speedrun end to end."""
import json
import subprocess

import pytest

from conftest import llmos_cmd, subprocess_env
from llmos.chat import ChatFormat
from llmos.cli import main
from llmos.infer.engine import generate
from llmos.infer.sampling import SamplingParams
from llmos.load import load_model

VERBS = [["data", "list"], ["data", "prepare"], ["tokenizer", "train"], ["tokenizer", "encode"],
         ["tokenizer", "stats"], ["pretrain"], ["generate"], ["sft"], ["chat"], ["eval"], ["speedrun"], ["export"],
         ["import"], ["serve"],
         ["scaling", "sweep"], ["scaling", "fit"], ["scaling", "predict"], ["scaling", "check"]]


@pytest.mark.parametrize("verb", VERBS, ids=" ".join)
def test_every_verb_has_help(verb, capsys):
    with pytest.raises(SystemExit) as done:
        main([*verb, "--help"])
    assert done.value.code == 0
    assert "usage: llmos " + " ".join(verb) in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["speedrun", "--preset", "nope"], "unknown preset 'nope': choose one of cpu, gpu, tiny"),
    (["data", "prepare", "--from", "/no/such/dir/*.txt"], "/no/such/dir/*.txt"),
    (["generate", "--model", "/no/such/model.llmos"], "no model at /no/such/model.llmos"),
    (["tokenizer", "encode", "--tokenizer", "/no/tok.json", "hi"], "no tokenizer at /no/tok.json"),
    (["pretrain", "--data", "/no/corpus"], "no prepared corpus in /no/corpus"),
    (["serve", "--model", "/no/such/model.llmos"], "no model at /no/such/model.llmos"),
    (["serve", "--model", "a=x", "--model", "a=y"], "the name 'a' is given twice"),
    (["serve", "--model", "x", "--port", "70000"], "--port must be at most 65535"),
    (["serve", "--model", "x", "--max-batch", "0"], "--max-batch must be at least 1"),
])
def test_bad_inputs_get_one_clear_line(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_tiny_speedrun_end_to_end(corpus_dir, tmp_path):
    run = tmp_path / "speedrun"
    done = subprocess.run(llmos_cmd("speedrun", "--preset", "tiny", "--data", str(corpus_dir), "--out", str(run)),
                          env=subprocess_env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "held-out bits per byte" in done.stdout
    report = (run / "report.md").read_text()
    for section in ("## Result", "## Machine and time", "## Data", "## Losses", "## Samples", "## Assistant (SFT)"):
        assert section in report
    assert "| identity (n=" in report and "| format (n=" in report  # the base vs SFT table
    assert (run / "loss.png").stat().st_size > 10_000 and (run / "base" / "model.llmos").is_file()
    stages = json.loads((run / "stages.json").read_text())
    assert list(stages) == ["data", "tokenizer", "pretrain", "sample", "sft", "eval", "report"]
    assert stages["eval"]["sft"]["conversation loss"] < stages["eval"]["base"]["conversation loss"]
    assert (run / "sft" / "model.llmos").is_file() and "chat with it: llmos chat --model" in done.stdout
    reply = subprocess.run(llmos_cmd("chat", "--model", str(run), "-p", "Who are you?", "--max-tokens", "8",
                                     "--temperature", "0"), env=subprocess_env(), capture_output=True, text=True)
    # Exactly the assistant's greedy reply (a tiny model may end its turn at once: an empty reply is a reply)
    model, tok, info = load_model(run)
    fmt = ChatFormat(tok, info["chat_template"])
    prompt = fmt.render_prompt([{"role": "user", "content": "Who are you?"}])
    expected = tok.decode(generate(model, prompt, SamplingParams(max_tokens=8, temperature=0, stop_ids=fmt.stop_ids)))
    assert reply.returncode == 0 and reply.stdout == expected + "\n", reply.stderr[-1000:]
    again = subprocess.run(llmos_cmd("speedrun", "--preset", "tiny", "--data", str(corpus_dir), "--out", str(run)),
                           env=subprocess_env(), capture_output=True, text=True)
    assert again.returncode == 0 and "pretrain: done earlier, skipping" in again.stdout
    gen = subprocess.run(llmos_cmd("generate", "--model", str(run / "base"), "--prompt", "def", "--max-tokens", "20",
                                   "--seed", "1"), env=subprocess_env(), capture_output=True, text=True)
    # The command prints the prompt, then exactly the tokens the engine samples with the same settings.
    model, tok, _ = load_model(run / "base")
    params = SamplingParams(max_tokens=20, temperature=0.8, top_k=0, top_p=0.95, seed=1, stop_ids=list(tok.stop_ids))
    expected = list(generate(model, tok.encode("def", bos=True), params))
    assert expected and gen.returncode == 0, gen.stderr[-2000:]
    assert gen.stdout == "def" + tok.decode(expected) + "\n" and f"[{len(expected)} tokens" in gen.stderr


def test_every_option_says_what_it_does():
    from llmos.cli import build_parser
    undocumented = []
    for verb_action in build_parser()._subparsers._group_actions:
        for name, sub in verb_action.choices.items():
            parsers = [(f"{name} {n}", p) for a in sub._subparsers._group_actions for n, p in a.choices.items()] \
                if sub._subparsers else [(name, sub)]
            for label, parser in parsers:
                undocumented += [f"{label} {a.option_strings[-1]}" for a in parser._actions
                                 if a.option_strings and not (a.help or "").strip()]
    assert not undocumented, undocumented

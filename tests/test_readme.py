"""The README's commands, run in order as a newcomer types them, against a tiny speedrun (litgpt's
README test is the model): a newcomer's path cannot break unnoticed.

Every command of every ```bash block runs as written in a fresh HOME (so `~/.cache/llmos` is the
default LLMOS_HOME), except for the substitutions below, each of which only shrinks the work, and the
commands in SKIPPED, each with its reason. Files the README's examples read (your notes, your
conversations) are made first. The named model comes from the session's download.
"""
from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, subprocess_env

SKIPPED = {
    "make test": "this is the test suite",
    "llmos speedrun --preset gpu": "the GPU preset (bench/gpu_check.sh runs it where a GPU is lent)",
    "torchrun": "a GPU-sized model in eight processes (test_train runs torchrun with two)",
    "bench/gpu_check.sh": "needs a GPU",
    "llmos scaling": "the sweep takes 45 minutes (test_scaling runs a small one through the same code)",
    "llmos serve": "a server that runs until stopped (test_serve and test_web_chat start it on a free port)",
    "llmos label --model": "a server that runs until stopped (test_label and test_label_browser start it)",
    "llmos mcp": "a server on stdin/stdout (test_serve_tools drives it with an MCP client)",
}


NOTES_NAMED = ("common", "model")  # notes/NAME.md, which the README's commands read


def shrink(argv: list[str], corpus: Path) -> list[str]:
    """The test-sized version of a README command: same verb, same options, less work."""
    if argv[:2] == ["make", "demo"]:  # what `make demo` runs, at the test preset on the test corpus
        return ["llmos", "speedrun", "--preset", "tiny-128", "--data", str(corpus),
                "--out", "~/.cache/llmos/runs/speedrun-cpu"]
    if argv[:2] in (["llmos", "pretrain"], ["llmos", "sft"]):
        argv = [*argv, "--no-compile"]  # compilation costs minutes here; test_train tests it
        for option, small in (("--minutes", ["--steps", "4", "--eval-tokens", "4096"]), ("--epochs", ["--epochs", "0.02"])):
            if option in argv:
                at = argv.index(option)
                argv = argv[:at] + small + argv[at + 2:]
    if argv[1:2] in (["rm"], ["dpo"], ["rl"]) and "--minutes" in argv:  # a few steps of each stage
        at = argv.index("--minutes")
        argv = argv[:at] + ["--steps", "3"] + argv[at + 2:]
    if "--task" in argv:  # the tiny model's context (128 tokens) holds an addition and its worked reply
        argv[argv.index("--task") + 1] = "skills:add"
    small = {"prefs": ["--per-source", "12", "--max-tokens", "8", "--task", "skills:add"],
             "rl": ["--max-tokens", "8", "--eval-problems", "8", "--group", "2", "--prompts-per-step", "2"],
             "arena": ["--prompts", "8", "--max-tokens", "8", "--bootstrap", "20"],
             "os-bench": ["--histories", "1"]}
    return argv + small.get(argv[1], []) if argv[0] == "llmos" and len(argv) > 1 else argv


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return [line.strip() for block in re.findall(r"```bash\n(.*?)```", text, re.S)
            for line in block.replace("\\\n", " ").splitlines() if line.strip()]  # a trailing \ continues


def test_readme_commands_run_as_written(corpus_dir, smollm2_home, tmp_path):
    home, work = tmp_path / "home", tmp_path / "work"
    (home / ".cache" / "llmos").mkdir(parents=True)
    (home / ".cache" / "llmos" / "models").symlink_to(smollm2_home / "models")
    (work / "notes" / "2024").mkdir(parents=True)
    for i, path in enumerate(sorted((ROOT / "llmos").glob("*.py"))[:12]):  # "your notes", some in a subfolder
        folder = "2024" if i % 2 and path.stem not in NOTES_NAMED else ""
        (work / "notes" / folder / f"{path.stem}.md").write_text(path.read_text())
    (work / "books.jsonl").write_text("".join(json.dumps({"text": p.read_text()}) + "\n"
                                              for p in sorted((ROOT / "tests").glob("*.py"))[:8]))
    (work / "mine.jsonl").write_text("".join(json.dumps({"messages": [
        {"role": "user", "content": f"What is {a} plus {a}?"},
        {"role": "assistant", "content": f"{a} plus {a} is {2 * a}."}]}) + "\n" for a in range(12)))
    env = {**subprocess_env(HOME=str(home)), "PYTHONPATH": str(ROOT)}
    env.pop("LLMOS_HOME")  # the README's paths are the defaults under ~/.cache/llmos
    ran = []
    for command in readme_commands():
        if command in skipped_commands():
            continue
        argv = shrink(shlex.split(command, comments=True), corpus_dir)
        argv = [str(home) + a[1:] if a.startswith("~/") else a for a in argv]  # the shell's ~, in this HOME
        program = {"llmos": [sys.executable, "-m", "llmos.cli"], ".venv/bin/llmos": [sys.executable, "-m", "llmos.cli"],
                   "python": [sys.executable]}.get(argv[0], [argv[0]])
        chat_input = "Who are you?\n/exit\n" if argv[:2] == [".venv/bin/llmos", "chat"] or \
            (argv[:2] == ["llmos", "chat"] and "-p" not in argv) else None
        if argv[:2] == ["llmos", "os"]:
            chat_input = "My dog is called Rex.\n/inspect\n/quit\n"
        done = subprocess.run([*program, *argv[1:]], cwd=work, env=env, input=chat_input, capture_output=True,
                              text=True, timeout=900)
        assert done.returncode == 0 and "Traceback" not in done.stderr, (command, done.stderr[-3000:])
        ran.append((command, done))
    outputs = {command.split("#")[0].strip(): done.stdout for command, done in ran}
    assert len(ran) == len(readme_commands()) - len(skipped_commands()) >= 15
    assert "core:persona" in outputs["llmos os --model smollm2-135m-instruct --session demo"]  # /inspect ran
    assert "| paging |" in outputs["llmos os-bench --model smollm2-135m-instruct --budget 1024 --histories 20"]
    demo_chat = outputs[".venv/bin/llmos chat --model ~/.cache/llmos/runs/speedrun-cpu"]
    assert demo_chat.startswith("you> ") and len(demo_chat) > len("you> you> ")  # it answered, then /exit
    assert outputs['llmos generate --model smollm2-135m-instruct --prompt "The capital of France is" --temperature 0'] \
        .startswith("The capital of France is Paris")
    assert outputs['python mymodel/run.py mymodel/model.llmos "The history of" -t 0.8 -n 200'].startswith("The history of")
    for made in ("mymodel/model.llmos", "mymodel/run.py", "smollm2.llmos", "smollm2-q8.gguf", "mine-hf/config.json"):
        assert (work / made).is_file(), made
    assert (work / "common-copy.md").read_bytes() == (work / "notes" / "common.md").read_bytes()  # compress, decompress
    leaderboard = (home / "runs" / "arena" / "leaderboard.md").read_text()
    assert all(f"| {name} |" in leaderboard for name in ("sft", "dpo", "rl"))
    for run in ("runs/sft", "runs/smol", "runs/mine", "corpora/mine", "runs/prefs", "runs/rm", "runs/dpo", "runs/rl"):
        assert (home / run).is_dir(), run


def skipped_commands() -> list[str]:
    return [c for c in readme_commands() if c.startswith(tuple(SKIPPED))]


@pytest.mark.parametrize("command", [c for c in skipped_commands() if c.startswith("llmos ")])
def test_skipped_readme_commands_still_parse(command):
    """The llmos commands not run still name real verbs and options."""
    from llmos.cli import build_parser
    build_parser().parse_args(shlex.split(command, comments=True)[1:])

"""The speedrun's run directory: a killed speedrun resumes where it stopped, and `--fresh` deletes only
what a speedrun wrote, only in a directory that is a speedrun's."""
import json
import subprocess

from conftest import fault_cmd, llmos_cmd, subprocess_env
from llmos.cli import main
from llmos.speedrun import MARKER


def speedrun(corpus_dir, run, *extra, fault=()):
    args = ("speedrun", "--preset", "tiny", "--data", str(corpus_dir), "--out", str(run), *extra)
    command = fault_cmd(*fault, command=list(args)) if fault else llmos_cmd(*args)
    return subprocess.run(command, env=subprocess_env(), capture_output=True, text=True)


def test_a_killed_speedrun_resumes_each_training_stage_from_its_checkpoint(corpus_dir, tmp_path):
    run = tmp_path / "run"
    # The tiny preset pretrains 40 steps (checkpoints every 20) then fine-tunes 20 (every 10); steps
    # count across both stages within one process.
    killed = speedrun(corpus_dir, run, fault=("kill=step:30",))
    assert killed.returncode == -9 and "pretrain" not in json.loads((run / "stages.json").read_text())
    again = speedrun(corpus_dir, run, fault=("kill=step:35",))  # 20 more pretraining steps, then 15 of SFT
    assert again.returncode == -9, again.stderr[-2000:]
    assert f"resumed from {run / 'base' / 'checkpoints' / 'step_0000020.pt'} at step 20" in again.stdout
    stages = json.loads((run / "stages.json").read_text())
    assert stages["pretrain"]["step"] == 40 and "sft" not in stages
    done = speedrun(corpus_dir, run)
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout + done.stderr
    assert "pretrain: done earlier, skipping" in out
    assert f"resumed from {run / 'sft' / 'checkpoints' / 'step_0000010.pt'} at step 10" in out
    stages = json.loads((run / "stages.json").read_text())
    assert stages["sft"]["step"] == 20 and list(stages)[-1] == "report"
    # Training losses of the resumed pretraining form one unbroken run of steps 1..40.
    steps = [json.loads(line)["step"] for line in (run / "base" / "metrics.jsonl").read_text().splitlines()
             if "loss" in json.loads(line)]
    assert steps == sorted(set(steps)) and steps[-1] == 40


def test_fresh_deletes_only_what_the_speedrun_wrote(corpus_dir, tmp_path, capsys):
    run = tmp_path / "run"
    assert speedrun(corpus_dir, run, "--steps", "6").returncode == 0
    (run / "my-notes.txt").write_text("keep me")
    (run / "experiments").mkdir()
    before = json.loads((run / "stages.json").read_text())["pretrain"]
    assert main(["speedrun", "--preset", "tiny", "--data", str(corpus_dir), "--out", str(run), "--steps", "6",
                 "--fresh"]) == 0
    after = json.loads((run / "stages.json").read_text())["pretrain"]
    assert after["seconds"] != before["seconds"]  # trained again, not skipped
    assert (run / "my-notes.txt").read_text() == "keep me" and (run / "experiments").is_dir()
    assert "pretrain: done earlier" not in capsys.readouterr().out


def test_fresh_refuses_a_directory_that_is_not_a_speedrun(corpus_dir, tmp_path, monkeypatch, capsys):
    home = tmp_path / "project"
    home.mkdir()
    (home / "thesis.tex").write_text("years of work")
    monkeypatch.chdir(home)
    assert main(["speedrun", "--preset", "tiny", "--data", str(corpus_dir), "--out", ".", "--fresh"]) == 2
    err = capsys.readouterr().err
    assert "is not a speedrun directory" in err and "thesis.tex" in err and "Traceback" not in err
    assert (home / "thesis.tex").read_text() == "years of work" and not (home / MARKER).exists()
    (tmp_path / "afile").write_text("x")
    assert main(["speedrun", "--preset", "tiny", "--out", str(tmp_path / "afile"), "--fresh"]) == 2
    assert "is a file, not a directory" in capsys.readouterr().err


def test_the_full_preset_continues_sft_with_rl_and_reports_before_and_after(wiki_corpus_dir, tmp_path):
    run = tmp_path / "run"
    done = subprocess.run(llmos_cmd("speedrun", "--preset", "tiny-full", "--data", str(wiki_corpus_dir),
                                    "--out", str(run)), env=subprocess_env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    stages = json.loads((run / "stages.json").read_text())
    assert list(stages)[-6:] == ["eval", "tools", "rl", "arena", "think", "report"] and stages["rl"]["steps"] == 4
    mixture = json.loads((run / "sft" / "data" / "manifest.json").read_text())
    assert mixture["sources"]["tool-use"]["train"] > 0 and not mixture.get("failed")
    tools = stages["tools"]["models"]["sft"]
    assert tools["arithmetic"]["with"]["n"] == 6 and tools["facts"]["without"]["n"] == 4
    tools_report = (run / "report.md").read_text().split("## Tools", 1)[1].split("\n## ", 1)[0]
    assert "| arithmetic, with tools |" in tools_report and "| facts, without tools |" in tools_report
    rl = json.loads((run / "rl" / "rl.json").read_text())
    assert rl["task"] == "skills:add" and rl["eval_problems"] == 8 and (run / "rl" / "model.llmos").is_file()
    report = (run / "report.md").read_text()
    section = report.split("## RL on verifiable rewards", 1)[1]
    assert "**skills:add**" in section and "| SFT (before) |" in section and "| RL (after) |" in section
    assert f"{rl['after']['accuracy']:.1%}" in section and "![reward and monitors](rl/rewards.png)" in section
    assert (run / "rl" / "rewards.png").is_file()
    assert {r["name"] for r in stages["arena"]["ranking"]} == {"base", "sft", "rl"}
    assert "| base |" in section and "![arena](arena/leaderboard.png)" in section
    # System 2: a reward model trained on the RL model's own replies scores best-of-n; every curve is drawn
    think = json.loads((run / "think" / "compute.json").read_text())
    assert think["model"] == "rl" and think["verifier"] == f"rm:{run / 'think' / 'rm'}"
    assert list(think["curves"]) == ["greedy", "vote", "best-of-n", "pass@k"] and think["problems"] == 8
    assert [p["compute"] for p in think["curves"]["best-of-n"]] == [1, 2] and (run / "think" / "compute.png").is_file()
    section = report.split("## System 2: accuracy against test-time compute", 1)[1]
    assert "**skills:add**" in section and "| best-of-n |" in section and "![accuracy against compute](think/compute.png)" in section

"""Nothing is lost: kills at any point resume exactly, ranks stop together, torn files are survived,
two jobs never share a run directory, and OS errors and bad options are one clear line."""
import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import fault_cmd, llmos_cmd, subprocess_env
from llmos.cli import main
from llmos.common import LlmosError, atomic_write, file_lock
from llmos.train.loop import TrainConfig, read_metrics
from llmos.train.pretrain import DataArgs, ModelArgs, pretrain

TINY = ["--depth", "1", "--seq-len", "64", "--batch-size", "8", "--no-compile", "--warmup-steps", "5",
        "--eval-tokens", "4096", "--sample-every", "1000", "--log-every", "1"]


def losses(run: Path, key: str = "loss") -> dict[int, float]:
    return {r["step"]: r[key] for r in read_metrics(run / "metrics.jsonl") if key in r}


def test_sigkill_anywhere_then_resume_matches_uninterrupted(corpus_dir, tokenizer_path, tmp_path):
    common = [*TINY, "--steps", "40", "--eval-every", "10", "--ckpt-every", "2", "--keep-ckpts", "2",
              "--data", str(corpus_dir), "--tokenizer", str(tokenizer_path)]
    reference = tmp_path / "reference"
    subprocess.run(llmos_cmd("pretrain", *common, "--out", str(reference)), check=True, env=subprocess_env(),
                   capture_output=True)
    # Twelve kills at seeded random points of each process's own work: after a step, halfway through a
    # checkpoint's bytes, halfway through a metrics line, inside an evaluation, while the params file is
    # written at the very end. Every restart resumes (or starts, if no checkpoint exists yet).
    rng = random.Random(0)
    kinds = ["ckpt", "step", "metrics", "ckpt", "eval", "step", "metrics", "ckpt", "step", "ckpt", "metrics"]
    kills = [f"{kind}:{rng.randint(1, 2)}" for kind in kinds] + ["params:1"]
    run, killed = tmp_path / "killed", []
    for kill in kills:
        resume = ["--resume"] if list((run / "checkpoints").glob("step_*.pt")) else []
        done = subprocess.run(fault_cmd(f"kill={kill}", command=["pretrain", *common, "--out", str(run), *resume]),
                              env=subprocess_env(), capture_output=True, text=True)
        assert done.returncode in (0, -9), done.stderr[-2000:]
        assert "Traceback" not in done.stderr, done.stderr[-2000:]
        if done.returncode == -9:
            killed.append(kill)
    assert len(killed) >= 10, killed  # the kills really happened, a checkpoint write among them
    assert {k.split(":")[0] for k in killed} >= {"ckpt", "step", "metrics", "eval", "params"}, killed
    final = subprocess.run(llmos_cmd("pretrain", *common, "--out", str(run), "--resume"), env=subprocess_env(),
                           capture_output=True, text=True)
    assert final.returncode == 0, final.stderr[-2000:]
    a, b = losses(reference), losses(run)
    assert sorted(a) == sorted(b) == list(range(1, 41))
    np.testing.assert_allclose([b[s] for s in a], [a[s] for s in a], rtol=1e-5)
    assert losses(run, "val_loss") == pytest.approx(losses(reference, "val_loss"), rel=1e-5)
    assert (run / "model.llmos").is_file()
    assert not list(run.rglob("*.tmp")), list(run.rglob("*.tmp"))  # dead writers' temp files are cleaned up


def test_ddp_ranks_stop_at_the_same_step_when_one_is_signalled(corpus_dir, tokenizer_path, tmp_path):
    common = [*TINY, "--steps", "8", "--eval-every", "1000", "--ckpt-every", "1000",
              "--data", str(corpus_dir), "--tokenizer", str(tokenizer_path)]
    single = tmp_path / "single"
    subprocess.run(llmos_cmd("pretrain", *common, "--out", str(single)), check=True, env=subprocess_env(),
                   capture_output=True)
    run = tmp_path / "ddp"
    torchrun = [str(Path(sys.executable).parent / "torchrun"), "--standalone", "--nproc_per_node=2"]
    # Only rank 1 gets SIGTERM, after its 3rd step; rank 0 must stop at the same step and save.
    stopped = subprocess.run([*torchrun, *fault_cmd("signal=SIGTERM:3", "rank=1", command=[
        "pretrain", *common, "--batch-size", "4", "--out", str(run)])[1:]],
        env=subprocess_env(OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=300)
    assert stopped.returncode == 0, stopped.stderr[-3000:]
    assert "interrupted at step 3" in stopped.stderr + stopped.stdout
    assert [p.name for p in (run / "checkpoints").glob("step_*.pt")] == ["step_0000003.pt"]
    resumed = subprocess.run([*torchrun, "-m", "llmos.cli", "pretrain", *common, "--batch-size", "4", "--out",
                              str(run), "--resume"], env=subprocess_env(OMP_NUM_THREADS="1"), capture_output=True,
                             text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = losses(single), losses(run)
    assert sorted(a) == sorted(b) == list(range(1, 9))
    np.testing.assert_allclose([b[s] for s in a], [a[s] for s in a], rtol=2e-4)


def test_a_torn_metrics_line_is_dropped_and_a_damaged_one_named(tmp_path, capsys):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 5.0}\n{"step": 2, "loss": 4.5}\n{"step": 3, "lo', encoding="utf-8")
    assert read_metrics(path) == [{"step": 1, "loss": 5.0}, {"step": 2, "loss": 4.5}]
    assert "metrics.jsonl:3: dropped a line cut short" in capsys.readouterr().err
    from llmos.report import plot_metrics
    assert plot_metrics(path, tmp_path / "loss.png").is_file()  # the plot survives it too
    path.write_text('{"step": 1, "loss": 5.0}\n{"step": 2, "lo\n{"step": 3, "loss": 4.0}\n', encoding="utf-8")
    with pytest.raises(LlmosError, match=r"metrics.jsonl:2 is not a JSON line"):
        read_metrics(path)


def test_a_second_job_on_one_run_directory_is_refused_naming_the_holder(corpus_dir, tokenizer_path, tmp_path):
    out = tmp_path / "run"
    cfg = TrainConfig(steps=2, batch_size=2, seq_len=32, compile=False, eval_tokens=64)
    with file_lock(out / ".lock", "test"):  # as a running pretrain holds it
        with pytest.raises(LlmosError, match=r"the run directory .*run is in use by pid \d+ on .*"):
            pretrain(ModelArgs(depth=1), cfg, DataArgs(data=str(corpus_dir), tokenizer=str(tokenizer_path),
                                                       out=str(out)))
    held = subprocess.Popen([sys.executable, "-c", "import sys, time; from llmos.common import file_lock\n"
                             "with file_lock(sys.argv[1], 'x'):\n    print('held', flush=True); time.sleep(60)",
                             str(out / ".lock")], stdout=subprocess.PIPE, text=True, env=subprocess_env())
    try:
        assert held.stdout.readline().strip() == "held"
        done = subprocess.run(llmos_cmd("pretrain", "--data", str(corpus_dir), "--tokenizer", str(tokenizer_path),
                                        "--out", str(out), *TINY, "--steps", "2"), env=subprocess_env(),
                              capture_output=True, text=True)
        assert done.returncode == 2 and f"pid {held.pid}" in done.stderr and "Traceback" not in done.stderr
    finally:
        held.kill()
        held.wait()
        held.stdout.close()
    pretrain(ModelArgs(depth=1), cfg, DataArgs(data=str(corpus_dir), tokenizer=str(tokenizer_path), out=str(out)))
    assert (out / "model.llmos").is_file()  # the lock dies with its holder


def test_os_errors_are_one_line_naming_the_path(corpus_dir, tokenizer_path, tmp_path, capsys, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    cases = [
        ["pretrain", "--data", str(corpus_dir), "--tokenizer", str(tokenizer_path), "--out", str(blocker / "run"),
         *TINY, "--steps", "1"],
        ["tokenizer", "train", "--data", str(corpus_dir), "--out", str(blocker / "tok.json")],
        ["data", "prepare", "--from", str(corpus_dir / "train.jsonl"), "--out", str(blocker / "corpus")],
    ]
    for argv in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert str(blocker) in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err

    def full_disk(*args):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr("os.fsync", full_disk)
    with pytest.raises(LlmosError, match=r"could not write .*x\.json: No space left on device"):
        with atomic_write(tmp_path / "x.json", "w") as f:
            f.write("{}")
    assert not list(tmp_path.glob(".x.json.*"))  # the temp file went with the failure


def test_text_files_are_utf8_whatever_the_locale(tmp_path):
    """Readers force UTF-8, so writers must too: under an ASCII locale (no UTF-8 mode, no coercion) a
    name with accents, as a manifest or config may hold, is written as UTF-8 and reads back."""
    text = '{"title": "Caf\u00e9 M\u00fcller \u65e5\u672c"}'
    script = (f"from llmos.common import atomic_write\n"
              f"with atomic_write({str(tmp_path / 'x.json')!r}, 'w') as f:\n    f.write({ascii(text)})\n")
    env = subprocess_env(LC_ALL="C", LANG="C", PYTHONUTF8="0", PYTHONCOERCECLOCALE="0")
    check = subprocess.run([sys.executable, "-c", "import locale; print(locale.getpreferredencoding(False))"],
                           env=env, capture_output=True, text=True)
    assert "utf" not in check.stdout.lower(), check.stdout  # the locale really is not UTF-8
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-1000:]
    assert (tmp_path / "x.json").read_bytes().decode("utf-8") == text


def test_a_validation_split_shorter_than_a_window_is_refused_before_training(tokenizer_path, tmp_path):
    from llmos.data.corpus import prepare
    src = tmp_path / "src"
    src.mkdir()
    (src / "long.txt").write_text("A long document about many things. " * 400)
    (src / "short.txt").write_text("A short one, with a few words, not many more than this, to hold out. " * 3)
    corpus = tmp_path / "corpus"
    prepare(corpus, from_patterns=[str(src / "*.txt")], val_fraction=0.001, seed=1)
    held_out = [json.loads(line)["text"] for line in (corpus / "val.jsonl").read_text().splitlines()]
    assert held_out and all(len(t) < 300 for t in held_out)
    with pytest.raises(LlmosError, match=r"validation split .* fewer than one window of --seq-len 128"):
        pretrain(ModelArgs(depth=1), TrainConfig(steps=2, batch_size=2, seq_len=128, compile=False),
                 DataArgs(data=str(corpus), tokenizer=str(tokenizer_path), out=str(tmp_path / "run")))
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.parametrize("option, value, message", [
    ("eval_every", 0, "--eval-every must be at least 1"),
    ("sample_every", 0, "--sample-every must be at least 1"),
    ("ckpt_every", 0, "--ckpt-every must be at least 1"),
    ("log_every", 0, "--log-every must be at least 1"),
    ("keep_ckpts", 0, "--keep-ckpts must be at least 1"),
    ("minutes", -1.0, "--minutes must be a positive number"),
])
def test_options_that_would_divide_by_zero_or_keep_everything_are_refused(option, value, message):
    with pytest.raises(LlmosError, match=message):
        TrainConfig(**{option: value}).validate()


def test_muon_without_torch_support_is_a_clear_error(monkeypatch):
    import torch
    monkeypatch.delattr(torch.optim, "Muon", raising=False)
    with pytest.raises(LlmosError, match=r"--optimizer muon needs torch >= 2.9"):
        TrainConfig(optimizer="muon").validate()

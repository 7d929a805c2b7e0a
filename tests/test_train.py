"""Pretraining end to end: it learns, resumes exactly, runs under DDP, and fails clearly."""
import json
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import llmos_cmd, subprocess_env
from llmos.common import LlmosError
from llmos.data.shards import TokenLoader, build_shards, load_tokens
from llmos.tokenizer import Tokenizer
from llmos.train.loop import TrainConfig, load_checkpoint, lr_multiplier
from llmos.train.pretrain import DataArgs, ModelArgs, pretrain

TINY = ["--depth", "1", "--seq-len", "64", "--batch-size", "8", "--no-compile", "--warmup-steps", "5",
        "--eval-tokens", "4096", "--sample-every", "1000", "--log-every", "1"]


def _losses(run_dir: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def _unigram_entropy_nats(tokens: np.ndarray, vocab: int) -> float:
    p = np.bincount(tokens, minlength=vocab).astype(np.float64)
    p = p[p > 0] / p.sum()
    return float(-(p * np.log(p)).sum())


def test_tiny_pretraining_learns_beyond_unigram(corpus_dir, tokenizer_path, tmp_path):
    cfg = TrainConfig(steps=150, batch_size=16, seq_len=64, warmup_steps=10, lr=1e-2, eval_every=1000,
                      eval_tokens=8192, sample_every=1000, compile=False, log_every=10)
    result = pretrain(ModelArgs(depth=2), cfg, DataArgs(data=str(corpus_dir), tokenizer=str(tokenizer_path),
                                                        out=str(tmp_path / "run")))
    tok = Tokenizer.load(tokenizer_path)
    val = np.asarray(load_tokens(build_shards(corpus_dir, tok), "val"))
    unigram = _unigram_entropy_nats(val[val != tok.bos_id], tok.vocab_size)
    assert result["val_loss"] < unigram - 0.5, (result["val_loss"], unigram)
    for name in ("model.llmos", "loss.png", "config.json", "tokenizer.json", "metrics.jsonl"):
        assert (tmp_path / "run" / name).is_file()
    assert 0 < result["val_bpb"] < 8


def test_interrupted_and_resumed_run_matches_uninterrupted(corpus_dir, tokenizer_path, tmp_path):
    common = [*TINY, "--steps", "40", "--eval-every", "1000", "--ckpt-every", "1000",
              "--data", str(corpus_dir), "--tokenizer", str(tokenizer_path)]
    full = tmp_path / "full"
    subprocess.run(llmos_cmd("pretrain", *common, "--out", str(full)), check=True, env=subprocess_env(),
                   capture_output=True)
    split = tmp_path / "split"
    proc = subprocess.Popen(llmos_cmd("pretrain", *common, "--out", str(split)), env=subprocess_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 120
    while time.time() < deadline and len(_losses(split) if (split / "metrics.jsonl").exists() else {}) < 10:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)  # what Ctrl-C does
    out = proc.communicate(timeout=120)[0].decode()
    assert "interrupted at step" in out, out
    stopped = load_checkpoint(next((split / "checkpoints").glob("step_*.pt")))["step"]
    assert 10 <= stopped < 40
    assert not (split / "model.llmos").exists()
    subprocess.run(llmos_cmd("pretrain", *common, "--out", str(split), "--resume"), check=True,
                   env=subprocess_env(), capture_output=True)
    a, b = _losses(full), _losses(split)
    assert sorted(a) == sorted(b) == list(range(1, 41))
    np.testing.assert_allclose([b[s] for s in a], [a[s] for s in a], rtol=1e-5)


def test_ddp_two_processes_match_one(corpus_dir, tokenizer_path, tmp_path):
    common = [*TINY, "--steps", "8", "--eval-every", "1000", "--ckpt-every", "1000",
              "--data", str(corpus_dir), "--tokenizer", str(tokenizer_path)]
    single = tmp_path / "single"
    subprocess.run(llmos_cmd("pretrain", *common, "--out", str(single), "--batch-size", "8"), check=True,
                   env=subprocess_env(), capture_output=True)
    double = tmp_path / "ddp"
    torchrun = [str(Path(__import__("sys").executable).parent / "torchrun"), "--standalone", "--nproc_per_node=2",
                "-m", "llmos.cli", "pretrain", *common, "--out", str(double), "--batch-size", "4"]
    done = subprocess.run(torchrun, env=subprocess_env(OMP_NUM_THREADS="1"), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    a, b = _losses(single), _losses(double)
    assert sorted(a) == sorted(b) == list(range(1, 9))
    np.testing.assert_allclose([b[s] for s in a], [a[s] for s in a], rtol=2e-4)
    assert json.loads((double / "config.json").read_text())["world_size"] == 2


def test_loader_is_deterministic_and_resumable():
    tokens = np.arange(10_000, dtype=np.uint16)
    a = TokenLoader(tokens, batch_size=4, seq_len=16, seed=3)
    first = [a.next_batch()[0] for _ in range(5)]
    state = a.state_dict()
    rest = [a.next_batch()[0] for _ in range(200)]  # crosses an epoch boundary
    b = TokenLoader(tokens, batch_size=4, seq_len=16, seed=3)
    b.load_state_dict(state)
    assert all(torch.equal(x, y) for x, y in zip(rest, [b.next_batch()[0] for _ in range(200)]))
    c = TokenLoader(tokens, batch_size=4, seq_len=16, seed=4)
    assert not torch.equal(first[0], c.next_batch()[0])
    x, y = TokenLoader(tokens, batch_size=2, seq_len=16).next_batch()
    assert torch.equal(x[:, 1:], y[:, :-1])
    ranks = [TokenLoader(tokens, batch_size=2, seq_len=16, seed=3, rank=r, world_size=2).next_batch()[0] for r in (0, 1)]
    assert torch.equal(torch.cat(ranks), first[0])


def test_schedules():
    cos = TrainConfig(steps=100, warmup_steps=10, min_lr_frac=0.1)
    assert lr_multiplier(0, cos) == pytest.approx(0.1) and lr_multiplier(9, cos) == pytest.approx(1.0)
    assert lr_multiplier(99, cos) == pytest.approx(0.1, abs=1e-3)
    wsd = TrainConfig(steps=100, warmup_steps=10, schedule="wsd", decay_frac=0.2, min_lr_frac=0.0)
    assert lr_multiplier(50, wsd) == 1.0 and lr_multiplier(90, wsd) == pytest.approx(0.5)


def test_clear_errors(corpus_dir, tokenizer_path, tmp_path):
    data = DataArgs(data=str(corpus_dir), tokenizer=str(tokenizer_path), out=str(tmp_path / "run"))
    small = TrainConfig(steps=2, batch_size=2, seq_len=32, compile=False, eval_every=1000, sample_every=1000,
                        eval_tokens=64, ckpt_every=1)
    with pytest.raises(LlmosError, match="no checkpoint .* to resume from"):
        pretrain(ModelArgs(depth=1), small, data, resume=True)
    pretrain(ModelArgs(depth=1), small, data)
    with pytest.raises(LlmosError, match="already holds a run"):
        pretrain(ModelArgs(depth=1), small, data)
    with pytest.raises(LlmosError, match="above the model's context"):
        pretrain(ModelArgs(depth=1), TrainConfig(**{**small.__dict__, "seq_len": 64}), data, resume=True)
    other = Tokenizer.train(["some other text " * 50], vocab_size=300)
    other.save(tmp_path / "other.json")
    with pytest.raises(LlmosError, match=r"tokenizer has \d+ tokens but the checkpoint .* expects 512"):
        pretrain(ModelArgs(depth=1), small, DataArgs(**{**data.__dict__, "tokenizer": str(tmp_path / "other.json")}),
                 resume=True)
    ckpt = next((tmp_path / "run" / "checkpoints").glob("step_*.pt"))
    ckpt.write_bytes(ckpt.read_bytes()[:1000])
    with pytest.raises(LlmosError, match="corrupt or truncated"):
        pretrain(ModelArgs(depth=1), small, data, resume=True)

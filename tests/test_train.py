"""Pretraining end to end: it learns, resumes exactly, runs under DDP, and fails clearly."""
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import fault_cmd, llmos_cmd, subprocess_env
from llmos.common import LlmosError
from llmos.data.shards import TokenLoader, build_shards, load_tokens
from llmos.tokenizer import Tokenizer
from llmos.train.loop import TrainConfig, lr_multiplier
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


@pytest.mark.parametrize("signame", ["SIGINT", "SIGTERM"])
def test_interrupted_and_resumed_run_matches_uninterrupted(signame, corpus_dir, tokenizer_path, tmp_path):
    common = [*TINY, "--steps", "40", "--eval-every", "1000", "--ckpt-every", "1000",
              "--data", str(corpus_dir), "--tokenizer", str(tokenizer_path)]
    full = tmp_path / "full"
    subprocess.run(llmos_cmd("pretrain", *common, "--out", str(full)), check=True, env=subprocess_env(),
                   capture_output=True)
    split = tmp_path / "split"
    # The signal arrives after step 10 whatever the machine's speed (Ctrl-C is SIGINT, kill is SIGTERM).
    out = subprocess.run(fault_cmd(f"signal={signame}:10", command=["pretrain", *common, "--out", str(split)]),
                         env=subprocess_env(), capture_output=True, text=True)
    assert out.returncode == 0 and "interrupted at step 10" in out.stderr + out.stdout, out.stderr[-2000:]
    assert [p.name for p in (split / "checkpoints").glob("step_*.pt")] == ["step_0000010.pt"]
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


def _tiny_run(corpus_dir, tokenizer_path, out, **overrides) -> dict:
    cfg = TrainConfig(**{"steps": 30, "batch_size": 8, "seq_len": 64, "warmup_steps": 3, "lr": 1e-2,
                         "eval_every": 1000, "eval_tokens": 4096, "sample_every": 1000, "ckpt_every": 1000,
                         "log_every": 1, "compile": False, **overrides})
    result = pretrain(ModelArgs(depth=1), cfg, DataArgs(data=str(corpus_dir), tokenizer=str(tokenizer_path),
                                                        out=str(out)))
    return {**result, "losses": _losses(Path(out))}


def test_compiled_and_bf16_training_follow_eager_fp32(corpus_dir, tokenizer_path, tmp_path, monkeypatch):
    """The demo's path (torch.compile; bf16 autocast where the CPU has bf16 units) trains like eager fp32.
    bf16 is forced on here whatever this CPU has, so the path is tested everywhere (slowly without AMX)."""
    eager = _tiny_run(corpus_dir, tokenizer_path, tmp_path / "eager")
    compiled = _tiny_run(corpus_dir, tokenizer_path, tmp_path / "compiled", compile=True, dtype="fp32")
    monkeypatch.setattr("llmos.perf.fast_bf16", lambda device="cpu": True)
    bf16 = _tiny_run(corpus_dir, tokenizer_path, tmp_path / "bf16", compile=True, dtype="auto")
    assert bf16["dtype"] == "bf16" and compiled["dtype"] == eager["dtype"] == "fp32"
    steps = sorted(eager["losses"])
    assert eager["losses"][steps[-1]] < eager["losses"][steps[0]] - 0.5  # it learns (6.25 -> 5.40 seen)
    def close(run, first, rtol):
        np.testing.assert_allclose([run["losses"][s] for s in first], [eager["losses"][s] for s in first], rtol=rtol)
    # Compiled fp32 does the same arithmetic reordered: equal at first (1e-6 seen over 8 steps), then
    # rounding differences grow under lr 1e-2 (0.85% by step 30 seen).
    close(compiled, steps[:8], 1e-4)
    close(compiled, steps, 0.02)
    close(bf16, steps, 0.03)


def test_without_bf16_hardware_every_path_computes_in_fp32(tokenizer_path, tmp_path, monkeypatch):
    """bf16 in software is 100-400x slower than fp32: where the CPU lacks AMX / AVX512-BF16, training,
    the throughput bench and inference of bf16 files all compute in fp32, and an explicit bf16 is refused."""
    import llmos.perf
    from llmos.model import ModelConfig, Transformer
    from llmos.train.loop import Trainer
    monkeypatch.setattr(llmos.perf, "fast_bf16", lambda device="cpu": False)
    model = Transformer(ModelConfig(vocab_size=512, d_model=64, n_layers=1, n_heads=1, n_kv_heads=1, max_seq_len=64))
    loader = TokenLoader(np.arange(5000, dtype=np.uint16) % 512, 2, 32)
    assert not Trainer(model, TrainConfig(compile=True, dtype="auto"), tmp_path / "r", loader).bf16
    with pytest.raises(LlmosError, match="--dtype bf16 on this cpu .* would compute bf16 in software"):
        Trainer(model, TrainConfig(compile=True, dtype="bf16"), tmp_path / "r", loader)
    # The bench: its compiled mode takes the dtype the trainer would (compilation itself is beside the point).
    import importlib.util
    spec = importlib.util.spec_from_file_location("bench_train", Path(__file__).parents[1] / "bench" / "train_throughput.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    monkeypatch.setattr(bench.torch, "compile", lambda m: m)
    args = type("Args", (), {"dtype": "auto", "warmup": 1, "rounds": 1, "batch_size": 2, "seq_len": 16})()
    cfg = ModelConfig(vocab_size=64, d_model=32, n_layers=1, n_heads=1, n_kv_heads=1, max_seq_len=16)
    batches = [(torch.randint(64, (2, 16)), torch.randint(64, (2, 16))) for _ in range(2)]
    figures = bench.run_mode("compile", cfg, Transformer(cfg).state_dict(), batches, args)
    assert figures["dtype"] == "fp32" and figures["mode"] == "compile_fp32"
    # A bf16 params file runs in fp32.
    from llmos.params import load_params, save_params
    save_params(tmp_path / "m.llmos", model, Tokenizer.load(tokenizer_path), dtype=torch.bfloat16)
    loaded, _, _ = load_params(tmp_path / "m.llmos")
    assert {p.dtype for p in loaded.parameters()} == {torch.float32}


def test_muon_trains_the_matrices_and_adamw_the_rest(corpus_dir, tokenizer_path, tmp_path):
    result = _tiny_run(corpus_dir, tokenizer_path, tmp_path / "muon", optimizer="muon")
    losses = result["losses"]
    assert losses[30] < losses[1] - 1.0
    saved = torch.load(next((tmp_path / "muon" / "checkpoints").glob("step_*.pt")), weights_only=True)
    assert len(saved["optimizers"]) == 2  # Muon for the matrices, AdamW for embeddings and norms
    assert json.loads((tmp_path / "muon" / "config.json").read_text())["train"]["optimizer"] == "muon"


def test_gradient_accumulation_follows_the_larger_batch(corpus_dir, tokenizer_path, tmp_path):
    whole = _tiny_run(corpus_dir, tokenizer_path, tmp_path / "whole", steps=8)
    accumulated = _tiny_run(corpus_dir, tokenizer_path, tmp_path / "accum", steps=8, batch_size=4, grad_accum=2)
    steps = sorted(whole["losses"])
    np.testing.assert_allclose([accumulated["losses"][s] for s in steps], [whole["losses"][s] for s in steps],
                               rtol=1e-4)


def test_old_checkpoints_are_pruned_to_keep_ckpts(corpus_dir, tokenizer_path, tmp_path):
    _tiny_run(corpus_dir, tokenizer_path, tmp_path / "run", steps=10, ckpt_every=2, keep_ckpts=2)
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").glob("step_*.pt")) == \
        ["step_0000008.pt", "step_0000010.pt"]


def test_muon_orthogonalises_as_torch_does_in_the_dtype_the_cpu_is_fast_at(monkeypatch):
    """torch.optim.Muon always orthogonalises in bf16 (8x slower training without bf16 units): llmos's
    subclass gives torch's very update in bf16 and the same direction in fp32, chosen by capability."""
    from llmos.train.loop import build_optimizers
    from llmos.train.muon import Muon
    torch.manual_seed(0)
    weight, grad = torch.randn(704, 256), torch.randn(704, 256)
    params = [torch.nn.Parameter(weight.clone()) for _ in range(3)]
    optimizers = [torch.optim.Muon([params[0]], lr=0.02), Muon([params[1]], ns_dtype=torch.bfloat16, lr=0.02),
                  Muon([params[2]], ns_dtype=torch.float32, lr=0.02)]
    for param, opt in zip(params, optimizers):
        param.grad = grad.clone()
        opt.step()
    assert torch.equal(params[0], params[1])
    cosine = torch.nn.functional.cosine_similarity((params[2] - weight).flatten(), (params[0] - weight).flatten(), dim=0)
    assert cosine > 0.999
    from llmos.model import ModelConfig, Transformer
    model = Transformer(ModelConfig(vocab_size=64, d_model=32, n_layers=1, n_heads=1, n_kv_heads=1, max_seq_len=16))
    for fast, dtype in ((False, torch.float32), (True, torch.bfloat16)):
        monkeypatch.setattr("llmos.train.loop.fast_bf16", lambda device="cpu", fast=fast: fast)
        assert build_optimizers(model, TrainConfig(optimizer="muon"), 1e-3)[0].ns_dtype == dtype


def test_muon_gives_the_input_embedding_and_an_untied_head_learning_rates_of_their_own():
    """The cpu preset's recipe (docs/log.md, issue 13): Muon on the matrices, AdamW on an untied head and
    the input embedding at rates of their own, the norms at --lr without decay; tied, one embedding group."""
    from llmos.model import ModelConfig, Transformer
    from llmos.train.loop import build_optimizers
    cfg = dict(vocab_size=64, d_model=32, n_layers=1, n_heads=1, n_kv_heads=1, max_seq_len=16)
    untied = Transformer(ModelConfig(**cfg, tie_embeddings=False))
    muon, adamw = build_optimizers(untied, TrainConfig(optimizer="muon", embed_lr=0.03, head_lr=0.004), 1e-3)
    groups = {id(p): (g["lr"], g["weight_decay"]) for g in adamw.param_groups for p in g["params"]}
    assert groups[id(untied.embed.weight)] == (0.03, 0.1) and groups[id(untied.lm_head.weight)] == (0.004, 0.1)
    assert groups[id(untied.norm.weight)] == (1e-3, 0.0)
    assert {id(p) for p in muon.param_groups[0]["params"]} == {
        id(p) for n, p in untied.named_parameters() if p.ndim == 2 and "embed" not in n and "lm_head" not in n}
    tied = Transformer(ModelConfig(**cfg))
    _, adamw = build_optimizers(tied, TrainConfig(optimizer="muon"), 1e-3)
    assert [[id(p) for p in g["params"]] for g in adamw.param_groups][0] == [id(tied.embed.weight)]
    assert adamw.param_groups[0]["lr"] == 1e-3

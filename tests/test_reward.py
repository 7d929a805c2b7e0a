"""The reward model: a tiny model learns a systematic preference (full and LoRA) under `llmos rm`,
`load_reward_model` reproduces the scores training logged, exact resume, the length-bias split on a
hand-made set, rows longer than the context, and clear errors."""
import json
import random
import shutil

import pytest
import torch

from llmos.chat import ChatFormat
from llmos.cli import main
from llmos.common import LlmosError, read_jsonl
from llmos.model import ModelConfig, Transformer
from llmos.params import load_params, save_params
from llmos.train.reward import (RMArgs, load_reward_model, pair_accuracy, read_pairs, render_pairs, rm,
                                rm_train_config)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

WORDS = "apple river stone cloud pencil garden window yellow summer winter rabbit orange".split()


def make_pairs(n: int, seed: int, ending: str = " thanks", source: str = "thanks") -> list[dict]:
    """The chosen reply ends with `ending`, the rejected one does not; lengths vary independently,
    so the longer reply is the better one in some pairs and the worse one in others."""
    rng = random.Random(seed)
    return [{"prompt": [{"role": "user", "content": f"Tell me about {rng.choice(WORDS)}."}],
             "chosen": " ".join(rng.choices(WORDS, k=rng.randint(1, 6))) + ending,
             "rejected": " ".join(rng.choices(WORDS, k=rng.randint(1, 7))), "source": source} for _ in range(n)]


def write_pairs(directory, train, held_out):
    directory.mkdir(parents=True, exist_ok=True)
    for name, rows in (("train", train), ("eval", held_out)):
        (directory / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return directory


@pytest.fixture(scope="module")
def setup(tok, tmp_path_factory):
    """A tiny random model, its pairs, and a second pair set from another "source" (another prompt
    wording, the same preference)."""
    root = tmp_path_factory.mktemp("rm")
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=tok.vocab_size, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=128,
                      tie_embeddings=False)
    model = save_params(root / "tiny.llmos", Transformer(cfg), tok)
    pairs = write_pairs(root / "pairs", make_pairs(400, 1), make_pairs(100, 2))
    other = [{**p, "prompt": [{"role": "user", "content": "Please say a few words."}], "source": "other"}
             for p in make_pairs(60, 3)]
    others = write_pairs(root / "other", [], other)
    return root, model, pairs, others


def train(setup, name, steps=40, lora_rank=0, resume=False, **cfg):
    root, model, pairs, others = setup
    args = RMArgs(model=str(model), pairs=str(pairs), eval_pairs=str(others), lora_rank=lora_rank, out=str(root / name))
    train_cfg = rm_train_config(steps=steps, batch_size=8, lr=3e-3 if not lora_rank else 1e-2, eval_every=20,
                                ckpt_every=10, keep_ckpts=5, **cfg)
    return rm(args, train_cfg, resume=resume)


@pytest.fixture(scope="module")
def trained(setup):
    return train(setup, "full")


def test_reward_model_learns_the_preference(trained):
    before, after = trained["before"], trained["after"]
    assert after["heldout"]["accuracy"] >= 0.95 and after["heldout"]["low"] > 0.85
    assert after["heldout"]["loss"] < before["heldout"]["loss"] / 3
    assert after["other"]["accuracy"] >= 0.9 and after["other"]["pairs"] == 60  # a source it did not train on
    assert set(after["heldout"]["by_source"]) == {"thanks"} and set(after["other"]["by_source"]) == {"other"}
    lengths = after["heldout"]["length"]
    assert lengths["longer_worse"]["pairs"] + lengths["longer_better"]["pairs"] + lengths["same_length"]["pairs"] == 100
    assert lengths["longer_worse"]["pairs"] > 20 and lengths["longer_better"]["pairs"] > 20
    run = trained["run_dir"]
    summary = json.loads(open(f"{run}/rm.json").read())
    assert summary["counts"] == {"train": 400, "eval": 100, "other": 60}
    assert [c["step"] for c in summary["curve"]] == [0, 20, 40]
    rows = list(read_jsonl(f"{run}/metrics.jsonl"))
    assert all("accuracy" in r and "margin" in r for r in rows if "loss" in r)  # the objective's metrics
    import os
    assert os.path.getsize(f"{run}/rm.png") > 10_000


def test_load_reward_model_reproduces_the_logged_scores(trained, setup):
    _, _, pairs, others = setup
    reward_model = load_reward_model(trained["run_dir"])
    logged = list(read_jsonl(f"{trained['run_dir']}/eval_scores.jsonl"))
    held = read_pairs(pairs / "eval.jsonl") + read_pairs(others / "eval.jsonl")
    assert [r["set"] for r in logged] == ["heldout"] * 100 + ["other"] * 60
    chosen = reward_model.score([p["prompt"] for p in held], [p["chosen"] for p in held])
    rejected = reward_model.score([p["prompt"] for p in held], [p["rejected"] for p in held])
    assert chosen == pytest.approx([r["chosen_score"] for r in logged], abs=1e-4)
    assert rejected == pytest.approx([r["rejected_score"] for r in logged], abs=1e-4)
    assert reward_model.name == "full"
    with pytest.raises(LlmosError, match="one reply per prompt"):
        reward_model.score([held[0]["prompt"]], [])


def test_lora_reward_model_learns_and_merges(setup):
    result = train(setup, "lora", lora_rank=4)
    assert result["after"]["heldout"]["accuracy"] >= 0.9
    body, _, info = load_params(f"{result['run_dir']}/body.llmos")  # an ordinary params file: adapters merged
    assert not any("lora" in k for k in body.state_dict()) and info["provenance"]["lora_rank"] == 4
    logged = [r for r in read_jsonl(f"{result['run_dir']}/eval_scores.jsonl") if r["set"] == "heldout"]
    held = read_pairs(setup[2] / "eval.jsonl")
    scores = load_reward_model(result["run_dir"]).score([p["prompt"] for p in held], [p["chosen"] for p in held])
    assert scores == pytest.approx([r["chosen_score"] for r in logged], abs=1e-4)


def test_reward_model_resumes_exactly(trained, setup):
    resumed = setup[0] / "resumed"
    (resumed / "checkpoints").mkdir(parents=True)
    shutil.copy(f"{trained['run_dir']}/checkpoints/step_0000010.pt", resumed / "checkpoints")
    train(setup, "resumed", resume=True)
    a, b = load_reward_model(trained["run_dir"]), load_reward_model(resumed)
    for (name, p), q in zip(a.net.state_dict().items(), b.net.state_dict().values()):
        assert torch.equal(p, q), name


def test_length_bias_split_counts_on_a_hand_made_set():
    def record(chosen_score, rejected_score, chosen_tokens, rejected_tokens, source="s"):
        return {"source": source, "chosen_score": chosen_score, "rejected_score": rejected_score,
                "chosen_tokens": chosen_tokens, "rejected_tokens": rejected_tokens}

    records = [record(1, 0, 5, 9), record(0, 1, 5, 9), record(0, 1, 3, 8),  # longer is worse: 1 of 3 right
               record(2, 1, 9, 5), record(2, 1, 7, 2),                      # longer is better: 2 of 2 right
               record(1, 1, 4, 4, "t")]                                      # same length, a tie: half
    result = pair_accuracy(records)
    worse, better, same = (result["length"][k] for k in ("longer_worse", "longer_better", "same_length"))
    assert (worse["pairs"], worse["accuracy"]) == (3, pytest.approx(1 / 3))
    assert (better["pairs"], better["accuracy"]) == (2, 1.0)
    assert (same["pairs"], same["accuracy"]) == (1, 0.5)
    assert result["pairs"] == 6 and result["accuracy"] == pytest.approx(3.5 / 6)
    assert result["by_source"]["s"]["pairs"] == 5 and result["by_source"]["t"]["accuracy"] == 0.5
    assert worse["low"] < 1 / 3 < worse["high"]


def test_rows_longer_than_the_context_keep_their_end(tok):
    fmt = ChatFormat(tok)
    pairs = [{"prompt": [{"role": "user", "content": "word " * 40}], "chosen": "short", "rejected": "b " * 30,
              "source": "s"}]
    rendered, cut = render_pairs(fmt, pairs, max_len=32)
    full = fmt.render([*pairs[0]["prompt"], {"role": "assistant", "content": "short"}])[0]
    assert cut == 2 and rendered[0].chosen == full[-32:] and len(rendered[0].rejected) == 32
    assert rendered[0].chosen_tokens < rendered[0].rejected_tokens  # measured before the cut


def test_bad_inputs_are_one_clear_error(setup, tmp_path, capsys):
    _, model, pairs, _ = setup
    bad = write_pairs(tmp_path / "bad", make_pairs(3, 0), make_pairs(2, 0))
    with open(bad / "train.jsonl", "a") as f:
        f.write(json.dumps({"prompt": [{"role": "user", "content": "hi"}], "chosen": "x"}) + "\n")
    cfg = rm_train_config(steps=1)
    with pytest.raises(LlmosError, match=r"train.jsonl:4: rejected must be"):
        rm(RMArgs(model=str(model), pairs=str(bad), out=str(tmp_path / "o1")), cfg)
    (bad / "train.jsonl").write_text(json.dumps({"prompt": [{"role": "assistant", "content": "hi"}],
                                                 "chosen": "x", "rejected": "y"}) + "\n")
    with pytest.raises(LlmosError, match=r"train.jsonl:1: prompt: .*must end with a user"):
        rm(RMArgs(model=str(model), pairs=str(bad), out=str(tmp_path / "o2")), cfg)
    write_pairs(bad, make_pairs(3, 0), [])
    (bad / "eval.jsonl").unlink()
    with pytest.raises(LlmosError, match="eval.jsonl does not exist"):
        rm(RMArgs(model=str(model), pairs=str(bad), out=str(tmp_path / "o3")), cfg)
    with pytest.raises(LlmosError, match="not a finished reward model"):
        load_reward_model(pairs)
    assert main(["rm", "--model", str(model), "--pairs", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("llmos rm: error: --pairs") and "not a directory" in err
    assert main(["rm", "--pairs", str(pairs)]) == 2
    assert "--model is required" in capsys.readouterr().err

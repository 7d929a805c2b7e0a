"""DPO (`llmos dpo`): the loss is the formula worked out by hand, the loader's targets are exactly
the reply's tokens with chosen rows before rejected ones and the reference's log-probs beside them,
and a tiny model trained a few dozen steps on systematic pairs raises the held-out margin, with full
fine-tuning and with LoRA on a model that brings its own chat template (as imported ones do)."""
import json
import math
import shutil

import pytest
import torch
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from llmos.chat import ChatFormat
from llmos.cli import main
from llmos.load import open_model
from llmos.model import ModelConfig, Transformer
from llmos.params import load_params, save_params
from llmos.tokenizer import Tokenizer
from llmos.train.dpo import DPOArgs, PairLoader, dpo, dpo_train_config, render_pairs
from llmos.train.objectives import DPO, dpo_loss, token_logprobs
from llmos.train.sft import pad_id

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] "
          "+ '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
THINGS = ["sky", "sea", "lake", "river", "cup", "car", "door", "hat", "kite", "ball", "shoe", "boat", "bird", "fish",
          "lamp", "book", "coat", "bell", "drum", "flag", "leaf", "rock", "star", "tree"]


def color_pairs(things: list[str]) -> list[dict]:
    """Pairs that differ systematically: blue is always chosen over red."""
    return [{"prompt": [{"role": "user", "content": f"What color is the {thing}?"}],
             "chosen": f"The {thing} is blue.", "rejected": f"The {thing} is red.", "source": "test"} for thing in things]


def write_pairs(path, train: list[dict], evals: list[dict]):
    path.mkdir(parents=True, exist_ok=True)
    for name, rows in (("train", train), ("eval", evals)):
        (path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def tiny_model(path, tok: Tokenizer, chat_template: str = "", provenance: dict | None = None):
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=tok.vocab_size, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=128)
    model = Transformer(cfg)
    with torch.no_grad():  # a random init's logits are near flat
        model.embed.weight.mul_(6)
    return save_params(path, model, tok, chat_template=chat_template, provenance=provenance)


@pytest.fixture(scope="module")
def chatml_tok(corpus_dir) -> Tokenizer:
    """A SmolLM2-like tokenizer: byte-level BPE whose only special tokens are ChatML's."""
    from llmos.data.corpus import load_texts
    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    hf.train_from_iterator(load_texts(corpus_dir, "train"), trainers.BpeTrainer(
        vocab_size=512, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    return Tokenizer(hf, bos_token="<|im_start|>", eos_token="<|im_end|>", add_bos=False)


def test_dpo_loss_is_the_formula_worked_by_hand():
    beta = 0.5
    policy_chosen, policy_rejected = torch.tensor([-5.0, -3.0]), torch.tensor([-6.0, -2.0])
    ref_chosen, ref_rejected = torch.tensor([-5.5, -3.5]), torch.tensor([-5.5, -2.5])
    loss, metrics = dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta)
    # Pair 1: 0.5 * ((-5 + 5.5) - (-6 + 5.5)) = 0.5; pair 2: 0.5 * ((-3 + 3.5) - (-2 + 2.5)) = 0.
    expected = (math.log(1 + math.exp(-0.5)) + math.log(2)) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert metrics["reward_chosen"] == pytest.approx(0.25) and metrics["reward_rejected"] == pytest.approx(0.0)
    assert metrics["reward_margin"] == pytest.approx(0.25) and metrics["reward_accuracy"] == 0.75  # the tie: half

    # The objective sums each row's reply log-probs and takes the first half as chosen: per-token
    # losses (negative log-probs) of 4 rows, -1-masked positions giving 0.
    per_token = torch.tensor([[1.0, 2.0, 0.0], [0.5, 0.5, 0.5], [3.0, 0.0, 0.0], [1.0, 1.0, 0.5]])

    def net(x, targets, reduction):
        assert reduction == "none"
        return per_token

    ref = torch.tensor([-2.0, -2.0, -2.0, -2.0])
    loss, _ = DPO(beta=0.1)(net, (torch.zeros(4, 3, dtype=torch.long), torch.zeros(4, 3, dtype=torch.long), ref))
    margins = [0.1 * ((-3.0 + 2.0) - (-3.0 + 2.0)), 0.1 * ((-1.5 + 2.0) - (-2.5 + 2.0))]  # 0 and 0.1
    assert loss.item() == pytest.approx(sum(math.log(1 + math.exp(-m)) for m in margins) / 2, rel=1e-6)


@pytest.mark.parametrize("template", ["native", "chatml"])
def test_loader_targets_are_exactly_the_reply_tokens(tok, chatml_tok, tmp_path, template):
    tokenizer = tok if template == "native" else chatml_tok
    fmt = ChatFormat(tokenizer, "" if template == "native" else CHATML)
    end = "<|assistant_end|>" if template == "native" else "<|im_end|>"
    # An earlier assistant turn in the prompt is context, never a target.
    prompt = [{"role": "user", "content": "Hello there"}, {"role": "assistant", "content": "Hi, what now?"},
              {"role": "user", "content": "Name a colour"}]
    pairs = [{"prompt": prompt, "chosen": "Blue, like the sea.", "rejected": "No."},
             {"prompt": prompt[2:], "chosen": "Green.", "rejected": "I will not say red or any other one."}]
    rendered, too_long = render_pairs(fmt, pairs, 128)
    assert too_long == 0
    loader = PairLoader(rendered, pairs_per_step=2, pad=pad_id(tokenizer), seed=0)
    model, _, _ = open_model(tiny_model(tmp_path / "m.llmos", tokenizer))
    loader.reference = lambda x, y: token_logprobs(model, x, y)
    x, y, ref = loader.next_batch()
    decoded = []
    for b in range(4):
        positions = (y[b] >= 0).nonzero().flatten()
        assert torch.equal(x[b, positions[1:]], y[b, positions[:-1]])  # targets are the next inputs
        decoded.append(tokenizer.decode(y[b, positions].tolist()))
    # Chosen rows first, then the same pairs' rejected rows; each row's targets are its reply and
    # the end-of-turn token, nothing else.
    for b in range(2):
        pair = next(p for p in pairs if p["chosen"] + end == decoded[b])
        assert decoded[b + 2] == pair["rejected"] + end
    assert decoded[0] != decoded[1]
    with torch.no_grad():
        assert torch.allclose(ref, token_logprobs(model, x, y).sum(-1), atol=1e-5)


def dpo_cli(*flags) -> int:
    return main(["dpo", "--steps", "30", "--pairs-per-step", "4", "--warmup-steps", "3", "--eval-every", "1000",
                 "--sample-every", "1000", "--ckpt-every", "1000", "--device", "cpu", "--dtype", "fp32", *flags])


@pytest.mark.parametrize("kind", ["full", "lora"])
def test_dpo_raises_the_heldout_margin(tok, chatml_tok, tmp_path, kind):
    pairs = write_pairs(tmp_path / "pairs", color_pairs(THINGS[:18]), color_pairs(THINGS[18:]))
    if kind == "full":
        base, flags = tiny_model(tmp_path / "base.llmos", tok), ["--lr", "1e-3"]
    else:  # an imported model: its own tokenizer roles and chat template
        roles = {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "add_bos": False}
        base = tiny_model(tmp_path / "base.llmos", chatml_tok, CHATML, {"tokenizer_roles": roles})
        flags = ["--lr", "1e-2", "--lora-rank", "8"]
    out = tmp_path / "dpo"
    assert dpo_cli("--model", str(base), "--pairs", str(pairs), "--out", str(out), *flags) == 0
    summary = json.loads((out / "dpo.json").read_text())
    before, after = summary["before"], summary["after"]
    assert before["reward_margin"] == 0 and before["reward_accuracy"] == 0.5  # the reference itself: all ties
    assert after["reward_margin"] > 0.2 and after["reward_accuracy"] == 1.0, summary
    assert after["logp_margin"] > before["logp_margin"] + 2 and after["accuracy"] == 1.0, summary
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    trained = [r for r in rows if "reward_margin" in r]
    assert len(trained) == 30 and all("reward_accuracy" in r for r in trained)  # logged every step
    assert (out / "dpo.png").stat().st_size > 0
    model, _, info = open_model(out / "model.llmos")  # LoRA merged: an ordinary model
    assert info["provenance"]["source"] == "llmos dpo" and info["chat_template"] == ("" if kind == "full" else CHATML)
    assert not any("lora" in name for name in model.state_dict())


def test_dpo_resumes_exactly(tok, tmp_path):
    pairs = write_pairs(tmp_path / "pairs", color_pairs(THINGS[:18]), color_pairs(THINGS[18:]))
    base = tiny_model(tmp_path / "base.llmos", tok)

    def run(out, resume=False):  # 4 pairs a step over 18: the checkpoint falls in the second epoch
        cfg = dpo_train_config(steps=12, lr=1e-3, warmup_steps=2, eval_every=1000, sample_every=1000, ckpt_every=6,
                               keep_ckpts=5, device="cpu", dtype="fp32")
        dpo(DPOArgs(model=str(base), pairs=str(pairs), pairs_per_step=4, out=str(out)), cfg, resume=resume)

    run(tmp_path / "straight")
    resumed = tmp_path / "resumed"
    (resumed / "checkpoints").mkdir(parents=True)
    shutil.copy(tmp_path / "straight" / "checkpoints" / "step_0000006.pt", resumed / "checkpoints")
    run(resumed, resume=True)
    a, _, _ = load_params(tmp_path / "straight" / "model.llmos")
    b, _, _ = load_params(resumed / "model.llmos")
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), name


def test_bad_dpo_inputs_are_one_clear_line(tok, tmp_path, capsys):
    base = tiny_model(tmp_path / "base.llmos", tok)
    cases = [(["--model", str(base), "--pairs", str(tmp_path / "none")], "holds no train.jsonl"),
             (["--model", str(base), "--pairs", str(write_pairs(tmp_path / "p1", color_pairs(THINGS[:4]), []))],
              "eval.jsonl has no pair that fits"),
             (["--model", str(base), "--pairs", str(write_pairs(tmp_path / "p2", [{"prompt": "hi"}], []))],
              "pair 1: expected"),
             (["--pairs", str(tmp_path / "p1")], "--model is required"),
             (["--model", str(base), "--pairs", str(tmp_path / "p1"), "--beta", "0"], "--beta must be positive")]
    for flags, message in cases:
        assert dpo_cli("--out", str(tmp_path / "run"), *flags) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("llmos dpo: error: ") and message in err and "\n" not in err, err

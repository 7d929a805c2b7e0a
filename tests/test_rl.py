"""RL on verifiable rewards and the objectives: the policy-gradient and KL formulas against hand
computations, per-token log-probs against a log-softmax, rollouts that mask exactly the sampled reply,
a tiny model whose checked reward and held-out accuracy rise under `llmos rl` (full and LoRA), exact
resume, and clear errors."""
import math
import shutil

import pytest
import torch

from conftest import require
from llmos.chat import ChatFormat
from llmos.common import LlmosError, read_jsonl
from llmos.eval.tasks import Problem, Task, get_task
from llmos.model import ModelConfig, Transformer
from llmos.params import load_params, save_params
from llmos.train.objectives import policy_gradient_loss, token_logprobs
from llmos.train.rl import RLArgs, RolloutLoader, rl, rl_train_config, wilson


class LetterTask(Task):
    """Right when the reply has no "e": half of a random tiny model's sampled replies, few greedy ones."""
    name, description, numeric = "no-e", "the reply avoids the letter e", False

    def problems(self, split, n, seed=0):
        base = 0 if split == "train" else 10_000
        return [Problem(f"What is {i} + {i}?", "e") for i in range(base + seed, base + seed + n)]

    def check(self, reply, problem):
        return "e" not in reply


@pytest.fixture()
def tiny_model(tok, tmp_path):
    """Random weights whose replies are text, never turn markers (tests/serving.py tiny_chat_model's recipe)."""
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=tok.vocab_size, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=128,
                      tie_embeddings=False)
    model = Transformer(cfg)
    with torch.no_grad():
        model.lm_head.weight.mul_(5)
        model.lm_head.weight[sorted(tok.hf.get_added_tokens_decoder())] = 0
    return save_params(tmp_path / "tiny.llmos", model, tok)


def test_policy_gradient_loss_matches_the_formula():
    logps = torch.tensor([[-1.0, -2.0, 0.0], [-0.5, -0.5, -0.5]], requires_grad=True)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    adv = torch.tensor([0.5, -0.25])
    loss, _ = policy_gradient_loss(logps, mask, adv)
    loss.backward()
    # On-policy the ratio is 1: loss = -(sum of advantage over reply tokens) / tokens; d/dlogp = -A / tokens.
    assert loss.item() == pytest.approx(-(0.5 * 2 - 0.25 * 3) / 5)
    assert logps.grad.flatten().tolist() == pytest.approx([-0.1, -0.1, 0.0, 0.05, 0.05, 0.05])


def test_clipped_ratio_and_kl_match_the_formula():
    logps = torch.tensor([[math.log(0.5), math.log(0.2)]], requires_grad=True)
    old = torch.tensor([[math.log(0.25), math.log(0.2)]])  # ratio 2 (clipped to 1.2 for A > 0), then 1
    ref = torch.tensor([[math.log(0.4), math.log(0.1)]])
    loss, metrics = policy_gradient_loss(logps, torch.ones(1, 2), torch.tensor([1.0]), old, ref, clip=0.2, kl_coef=0.5)
    # k3 per token: r - log r - 1 with r = ref / policy
    kl = ((0.8 - math.log(0.8) - 1) + (0.5 - math.log(0.5) - 1)) / 2
    assert metrics["kl"] == pytest.approx(kl, rel=1e-5)
    assert metrics["clipped"] == pytest.approx(0.5)
    assert loss.item() == pytest.approx(-(1.2 + 1.0) / 2 + 0.5 * kl, rel=1e-5)
    loss.backward()
    assert logps.grad[0, 0].item() == pytest.approx(0.5 * (1 - 0.8) / 2, rel=1e-4)  # clipped: only the KL pulls


def test_token_logprobs_are_log_softmax_of_the_targets(tiny_model):
    model, _, _ = load_params(tiny_model)
    x = torch.randint(0, model.cfg.vocab_size, (2, 9))
    y = torch.randint(0, model.cfg.vocab_size, (2, 9))
    y[0, :4] = -1
    got = token_logprobs(model, x, y)
    want = torch.log_softmax(model(x), -1).gather(-1, y.clamp(min=0)[..., None])[..., 0] * (y >= 0)
    assert torch.allclose(got, want, atol=1e-5)


def test_rollouts_mask_exactly_the_sampled_reply(tiny_model, tok):
    model, tok, info = load_params(tiny_model)
    fmt = ChatFormat(tok)
    task = LetterTask()
    loader = RolloutLoader(model, lambda x, y: token_logprobs(model, x, y), fmt, task,
                           RLArgs(group=4, prompts_per_step=3, max_tokens=6), task.problems("train", 20), seed=0)
    x, y, adv, old, ref = loader.next_batch()
    assert old is None and ref.shape == y.shape
    assert 0 <= loader.metrics["reward"] <= 1 and loader.metrics["rows"] == x.shape[0]
    for row_x, row_y, a in zip(x.tolist(), y.tolist(), adv.tolist()):
        targets = [t for t in row_y if t >= 0]
        first = next(i for i, t in enumerate(row_y) if t >= 0)
        prompt = row_x[:first + 1]
        assert prompt[-1] == tok.token_id("<|assistant_start|>")  # the reply starts after the prompt
        assert 1 <= len(targets) <= 6
        assert row_x[first + 1:first + len(targets)] == targets[:-1]  # inputs are the reply, shifted
        assert all(t == -1 for t in row_y[first + len(targets):])
        reply = targets[:-1] if targets[-1] in fmt.special_ids else targets  # the stop token is trained, not scored
        assert not set(reply) & fmt.special_ids
        reward = float("e" not in tok.decode(reply))
        assert a != 0 and (a > 0) == (reward == 1)  # only mixed groups are kept; the right replies push up


def _run(tiny_model, tmp_path, name, lora_rank=0, steps=30, **cfg):
    args = RLArgs(model=str(tiny_model), group=8, prompts_per_step=4, max_tokens=8, eval_problems=64,
                  lora_rank=lora_rank, out=str(tmp_path / name))
    train_cfg = rl_train_config(steps=steps, lr=3e-3 if not lora_rank else 1e-2, eval_every=steps, ckpt_every=10,
                                keep_ckpts=5, **cfg)
    return rl(args, train_cfg, task=LetterTask()), args, train_cfg


@pytest.mark.parametrize("lora_rank", [0, 4])
def test_rl_raises_reward_and_heldout_accuracy(tiny_model, tmp_path, lora_rank):
    result, args, _ = _run(tiny_model, tmp_path, "rl", lora_rank)
    rows = read_jsonl(tmp_path / "rl" / "metrics.jsonl")
    rewards = [r["reward"] for r in rows if "reward" in r]
    # Means of 160 rollouts each: 0.2 is about five standard errors.
    assert sum(rewards[-5:]) / 5 > sum(rewards[:5]) / 5 + 0.2
    assert result["before"]["accuracy"] < 0.2 and result["after"]["accuracy"] > 0.7
    assert (tmp_path / "rl" / "rewards.png").stat().st_size > 10_000
    assert all("kl" in r for r in rows if "reward" in r)
    model, _, info = load_params(tmp_path / "rl" / "model.llmos")  # an ordinary model (LoRA merged)
    assert info["provenance"]["task"] == "no-e"
    assert result["constant_answer"] == {"answer": "e", "accuracy": 1.0}  # every problem names the same answer


def test_rl_resumes_exactly(tiny_model, tmp_path):
    _run(tiny_model, tmp_path, "straight", steps=20)
    resumed = tmp_path / "resumed"
    (resumed / "checkpoints").mkdir(parents=True)
    shutil.copy(tmp_path / "straight" / "checkpoints" / "step_0000010.pt", resumed / "checkpoints")
    args = RLArgs(model=str(tiny_model), group=8, prompts_per_step=4, max_tokens=8, eval_problems=64, out=str(resumed))
    rl(args, rl_train_config(steps=20, lr=3e-3, eval_every=20, ckpt_every=10, keep_ckpts=5), resume=True,
       task=LetterTask())
    a, _, _ = load_params(tmp_path / "straight" / "model.llmos")
    b, _, _ = load_params(resumed / "model.llmos")
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), name


def test_wilson_interval():
    low, high = wilson(50, 100)
    assert low == pytest.approx(0.4038, abs=1e-3) and high == pytest.approx(0.5962, abs=1e-3)
    assert wilson(0, 500)[0] == 0.0 and wilson(0, 500)[1] < 0.01


def test_tasks_split_apart_and_check_answers():
    task = get_task("skills:add,sub")
    train, held = task.problems("train", 300), task.problems("eval", 300)
    assert not {p.question for p in train} & {p.question for p in held}
    p = held[0]
    assert task.check(f"work\nAnswer: {p.answer}", p) and not task.check(f"Answer: {int(p.answer) + 1}", p)
    gsm = get_task("gsm8k").problems("eval", 3)
    assert get_task("gsm8k").check(f"so the total is {gsm[0].answer}.", gsm[0])  # imported models' own words


@pytest.mark.parametrize("change, message", [
    ({"task": "nope"}, "unknown task 'nope'"),
    ({"task": "skills:divide"}, "unknown skill kind(s) divide"),
    ({"group": 1}, "--group must be at least 2"),
    ({"model": ""}, "--model is required"),
    ({"max_tokens": 120}, "exceeds the model's context of 128"),
])
def test_bad_rl_inputs_are_clear(tiny_model, tmp_path, change, message):
    args = RLArgs(**{"model": str(tiny_model), "task": "skills", "out": str(tmp_path / "bad"), "eval_problems": 8,
                     **change})
    with pytest.raises(LlmosError, match=message.replace("(", r"\(").replace(")", r"\)")):
        rl(args, rl_train_config(steps=1))


def test_game_of_24_checks_the_expression_itself():
    every = get_task("game24").problems("eval", 1362)
    assert len(every) == 1362 and len({tuple(p.meta["numbers"]) for p in every}) == 1362
    test_set = get_task("game24:901-1000")
    held = test_set.problems("eval", 100)
    assert sorted(p.meta["rank"] for p in held) == list(range(901, 1001))
    assert len(test_set.problems("train", 1262)) == 1262  # the rest of the puzzles
    p = next(p for p in every if p.meta["numbers"] == [1, 1, 4, 6])
    assert "Answer:" in p.messages[0]["content"]
    assert test_set.check("Multiply.\nAnswer: 4 * 6 * 1 * 1", p) and test_set.check("Answer: (1 + 1) * 6 + 4 * 3 - 4", p) is False
    assert test_set.check("Answer: 6 * 4 / (1 * 1) = 24", p)
    assert not test_set.check("Answer: 6 * 4", p)  # numbers left out
    assert not test_set.check("Answer: 6 * 4 * 1 * 1 * 1", p)  # a number used twice
    assert not test_set.check("Answer: (6 + 4 + 1 + 1) * 2", p)  # a number not in the puzzle
    assert not test_set.check("Answer: 4 ** 1 * 6 * 1", p)  # only + - * / allowed
    assert not test_set.check("Answer: 6 + 4 + 1 + 1", p) and not test_set.check("no answer line", p)
    with pytest.raises(LlmosError, match="rank range A-B"):
        get_task("game24:1000-901")
    with pytest.raises(LlmosError, match="pick ranks"):
        get_task("game24").problems("train", 1)


def test_reasoning_gym_tasks_use_their_own_scorer():
    require("reasoning_gym")
    task = get_task("rg:basic_arithmetic:min_terms=2,max_terms=2,max_digits=1")
    train, held = task.problems("train", 50), task.problems("eval", 50)
    assert [p.question for p in train] != [p.question for p in held]
    p = held[0]
    assert "Answer:" in p.messages[0]["content"]  # the prompt asks for the line the checker reads
    assert task.check(f"Working it out.\nAnswer: {p.answer}", p)
    assert not task.check(f"Answer: {int(p.answer) + 7}", p)
    with pytest.raises(LlmosError, match="reasoning-gym cannot make rg:no_such_generator"):
        get_task("rg:no_such_generator")

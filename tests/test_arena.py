"""The arena: the Bradley-Terry fit recovers known strengths, bootstrap intervals hold the estimate and
shrink with more prompts, the checker, reward-model and human judges on replies whose verdicts are
known, `llmos arena` end to end on tiny models, and clear errors."""
import json
import random

import numpy as np
import pytest
import torch

from llmos.arena import (ArenaArgs, arena, bootstrap_intervals, bradley_terry_ratings, checker_outcomes,
                         outcome_array, pair_stats, score_outcomes)
from llmos.cli import main
from llmos.common import read_jsonl
from llmos.eval.tasks import Problem, Task, get_task
from llmos.model import ModelConfig, Transformer
from llmos.params import save_params
from llmos.train.reward import RewardNet, load_reward_model, save_head

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def elo_win_probability(r_i: float, r_j: float) -> float:
    return 1 / (1 + 10 ** ((r_j - r_i) / 400))


def test_bradley_terry_recovers_known_strengths():
    truth = np.array([850.0, 1000.0, 1150.0])  # mean 1000, as the fit is anchored
    rng = np.random.default_rng(0)
    wins = np.zeros((3, 3))
    for i in range(3):
        for j in range(i + 1, 3):
            won = rng.binomial(4000, elo_win_probability(truth[i], truth[j]))
            wins[i, j], wins[j, i] = won, 4000 - won
    ratings = bradley_terry_ratings(wins)
    assert list(np.argsort(ratings)) == [0, 1, 2]
    assert np.abs(ratings - truth).max() < 20
    assert ratings.mean() == pytest.approx(1000)


def test_two_players_fit_the_closed_form_ties_count_half_and_a_sweep_stays_finite():
    # Two players: the likelihood's maximum is exp(theta_0 - theta_1) = wins_0 / wins_1, with the
    # virtual tie's half win added to each.
    ratings = bradley_terry_ratings(np.array([[0, 30], [10, 0]]))
    assert ratings[0] - ratings[1] == pytest.approx(400 * np.log10(30.5 / 10.5))
    even = bradley_terry_ratings(np.array([[0, 30], [30, 0]]))  # 60 ties: half a win each way
    assert even == pytest.approx([1000, 1000])
    sweep = bradley_terry_ratings(np.array([[0, 50], [0, 0]]))
    assert np.isfinite(sweep).all() and sweep[0] - sweep[1] > 400


def simulated_prompts(n: int, truth: list[float], seed: int) -> np.ndarray:
    """Per-prompt outcomes of every two players, drawn from the Elo win probabilities."""
    rng = random.Random(seed)
    outcomes = []
    for _ in range(n):
        outcomes.append({(i, j): float(rng.random() < elo_win_probability(truth[i], truth[j]))
                         for i in range(len(truth)) for j in range(i + 1, len(truth))})
    return outcome_array(outcomes, len(truth))


def test_bootstrap_intervals_hold_the_estimate_and_shrink_with_more_prompts():
    truth = [900.0, 1000.0, 1100.0]
    widths = []
    for n in (50, 800):
        per_prompt = simulated_prompts(n, truth, seed=n)
        ratings = bradley_terry_ratings(per_prompt.sum(0))
        low, high = bootstrap_intervals(per_prompt, 300, seed=0)
        assert (low <= ratings).all() and (ratings <= high).all()
        widths.append(high - low)
    assert (widths[1] < widths[0] / 2.5).all()  # 16 times the prompts: about a quarter of the width


def test_checker_judge_on_hand_made_replies():
    task = get_task("skills:add")
    problems = task.problems("eval", 3)
    replies = {"right": [f"Sure.\nAnswer: {p.answer}" for p in problems],
               "wrong": [f"Answer: {int(p.answer) + 1}" for p in problems],
               "mixed": [f"Answer: {problems[0].answer}", "no idea", f"Answer: {problems[2].answer}"]}
    names = list(replies)
    correct = {n: [task.check(r, p) for r, p in zip(replies[n], problems)] for n in names}
    assert correct == {"right": [True] * 3, "wrong": [False] * 3, "mixed": [True, False, True]}
    outcomes = checker_outcomes(correct, names)
    assert [o[0, 1] for o in outcomes] == [1, 1, 1]  # right beats wrong
    assert [o[0, 2] for o in outcomes] == [0.5, 1, 0.5]  # both right: a tie
    assert [o[1, 2] for o in outcomes] == [0, 0.5, 0]  # both wrong: a tie
    stats = {(s["a"], s["b"]): s for s in pair_stats(outcomes, names)}
    assert {k: stats["right", "mixed"][k] for k in ("wins", "losses", "ties")} == {"wins": 1, "losses": 0, "ties": 2}
    assert stats["right", "mixed"]["win_rate"] == pytest.approx(2 / 3)
    assert stats["right", "wrong"]["low"] > 0.4 and stats["right", "wrong"]["win_rate"] == 1


def test_reward_scores_judge_with_a_tie_margin():
    outcomes = score_outcomes({"a": [1.0, 0.2, 0.5], "b": [0.0, 0.9, 0.5005]}, ["a", "b"], epsilon=1e-3)
    assert [o[0, 1] for o in outcomes] == [1.0, 0.0, 0.5]


class LetterTask(Task):
    """Right when the reply holds an "e"."""
    name, description, numeric = "letter-e", "the reply contains the letter e", False

    def problems(self, split, n, seed=0):
        return [Problem(f"What is {i} + {i}?", "e") for i in range(n)]

    def check(self, reply, problem):
        return "e" in reply


def letter_model(path, tok, with_e: bool, seed: int = 0):
    """A tiny model whose greedy replies always hold an "e" (with_e), or never do: the other tokens'
    output rows are zeroed, so they never win the argmax; special tokens never do either."""
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=tok.vocab_size, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=128,
                      tie_embeddings=False)
    model = Transformer(cfg)
    specials = set(tok.hf.get_added_tokens_decoder())
    silenced = [i for i in range(tok.vocab_size) if i in specials or ("e" in tok.decode([i])) != with_e]
    with torch.no_grad():
        model.lm_head.weight.mul_(5)
        model.lm_head.weight[silenced] = 0  # the largest of the other tokens' logits is above 0
    return save_params(path, model, tok)


@pytest.fixture()
def letter_models(tok, tmp_path):
    return (letter_model(tmp_path / "likes-e.llmos", tok, True), letter_model(tmp_path / "no-e.llmos", tok, False))


def test_arena_ranks_the_model_the_checker_prefers(letter_models, tmp_path):
    likes, avoids = letter_models
    result = arena(ArenaArgs(models=[f"avoids={avoids}", f"likes={likes}"], prompts=12, max_tokens=6,
                             bootstrap=200, out=str(tmp_path / "arena")), task=LetterTask())
    assert [r["name"] for r in result["models"]] == ["likes", "avoids"]
    likes_row, avoids_row = result["models"]
    assert likes_row["accuracy"] == 1 and avoids_row["accuracy"] == 0
    assert likes_row["low"] > avoids_row["high"]
    pair, = result["pairs"]
    assert (pair["a"], pair["wins"], pair["losses"], pair["ties"]) == ("avoids", 0, 12, 0)
    out = tmp_path / "arena"
    rows = list(read_jsonl(out / "replies.jsonl"))
    assert len(rows) == 12
    assert all("e" in r["replies"]["likes"] and "e" not in r["replies"]["avoids"] for r in rows)
    assert all(r["outcomes"] == [{"a": "avoids", "b": "likes", "a_share": 0.0}] for r in rows)
    board = (out / "leaderboard.md").read_text()
    assert "| 1 | likes |" in board and "100.0%" in board
    assert (out / "leaderboard.png").stat().st_size > 5_000
    assert json.loads((out / "arena.json").read_text())["models"][0]["name"] == "likes"


def test_llmos_arena_cli_end_to_end(letter_models, tmp_path, capsys):
    likes, avoids = letter_models
    out = tmp_path / "cli"
    assert main(["arena", "--models", str(likes), str(avoids), "--task", "skills:add", "--prompts", "5",
                 "--max-tokens", "4", "--bootstrap", "50", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "likes-e" in printed and "no-e" in printed and "leaderboard.md" in printed
    result = json.loads((out / "arena.json").read_text())
    assert result["task"] == "skills:add" and result["judge"] == "checker" and result["prompts"] == 5
    # Neither tiny model can add: every comparison is a tie, and the ratings are equal.
    assert all(r["accuracy"] == 0 and r["rating"] == pytest.approx(1000) for r in result["models"])
    assert result["pairs"][0]["ties"] == 5
    assert (out / "leaderboard.png").is_file() and len(list(read_jsonl(out / "replies.jsonl"))) == 5


def hand_made_reward_model(path, tok, seed=0):
    """A reward model directory with random body and head (its judgements are arbitrary, but fixed)."""
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=tok.vocab_size, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=128)
    net = RewardNet(Transformer(cfg))
    with torch.no_grad():
        net.head.weight.mul_(50)
    path.mkdir()
    save_params(path / "body.llmos", net.body, tok)
    save_head(path / "head.safetensors", net.head)
    return path


def write_prompts(path, n):
    with open(path, "w") as f:
        for i in range(n):
            f.write(json.dumps({"messages": [{"role": "user", "content": f"Say something about {i}."},
                                             {"role": "assistant", "content": "dropped"}]}) + "\n")
    return path


def test_reward_model_judge_follows_the_scores(letter_models, tok, tmp_path):
    likes, avoids = letter_models
    rm_dir = hand_made_reward_model(tmp_path / "rm", tok)
    prompts = write_prompts(tmp_path / "prompts.jsonl", 10)
    result = arena(ArenaArgs(models=[str(likes), str(avoids)], prompts_file=str(prompts), judge=f"rm:{rm_dir}",
                             max_tokens=5, bootstrap=0, out=str(tmp_path / "arena")))
    rows = list(read_jsonl(tmp_path / "arena" / "replies.jsonl"))
    assert rows[0]["prompt"] == [{"role": "user", "content": "Say something about 0."}]  # the reply is dropped
    rm = load_reward_model(rm_dir)
    scores = rm.score([r["prompt"] for r in rows], [r["replies"]["likes-e"] for r in rows])
    assert scores == pytest.approx([r["scores"]["likes-e"] for r in rows], abs=1e-5)
    for r in rows:
        want = 0.5 if abs(r["scores"]["likes-e"] - r["scores"]["no-e"]) < 1e-3 else \
            float(r["scores"]["likes-e"] > r["scores"]["no-e"])
        assert r["outcomes"][0]["a_share"] == want
    wins = sum(r["outcomes"][0]["a_share"] for r in rows)
    assert result["pairs"][0]["win_rate"] == pytest.approx(wins / 10)
    assert "accuracy" not in result["models"][0]  # no checker without a task


def test_human_judge_stores_pairs_and_reads_the_labels_back(letter_models, tmp_path):
    from llmos.data.labels import LabelStore
    likes, avoids = letter_models
    db = tmp_path / "labels.sqlite"
    args = ArenaArgs(models=[f"likes={likes}", f"avoids={avoids}"], prompts_file=str(write_prompts(tmp_path / "p.jsonl", 4)),
                     judge="human", label_db=str(db), max_tokens=5, bootstrap=0, out=str(tmp_path / "arena"))
    first = arena(args)
    assert first["waiting"] == 4 and first["comparisons"] == 0 and first["models"] == []
    assert "--prompts" in first["label_commands"][0] and "--temperatures 0" in first["label_commands"][0]
    with LabelStore(db) as store:
        pairs = store.pairs()
        assert len(pairs) == 4 and {p["from_a"]["model"] for p in pairs} == {"likes", "avoids"}
        for k, pair in enumerate(pairs[:3]):  # "likes" wins two, one is a tie, the fourth waits
            likes_side = "a" if pair["from_a"]["model"] == "likes" else "b"
            store.add_label(pair["id"], "ada", likes_side if k < 2 else "tie")
    again = arena(args)
    with LabelStore(db) as store:
        assert len(store.pairs()) == 4  # the same replies found their stored pairs
    assert again["waiting"] == 1 and again["comparisons"] == 3
    pair, = again["pairs"]
    assert (pair["a"], pair["wins"], pair["losses"], pair["ties"]) == ("likes", 2, 0, 1)
    assert again["models"][0]["name"] == "likes"


@pytest.mark.parametrize("argv, message", [
    (["--models", "a.llmos"], "at least two models"),
    (["--models", "x/a.llmos", "y/a.llmos", "--task", "skills"], "two models are named a"),
    (["--models", "a.llmos", "b.llmos", "--prompts-file", "p.jsonl"], "--judge checker needs --task"),
    (["--models", "a.llmos", "b.llmos", "--task", "skills", "--judge", "gpt4"], "unknown --judge"),
    (["--models", "a.llmos", "b.llmos"], "give the prompts"),
    (["--models", "a.llmos", "b.llmos", "--task", "skills", "--judge", "rm:nowhere"], "not a finished reward model"),
])
def test_bad_arena_arguments_are_one_clear_line(argv, message, capsys):
    assert main(["arena", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and err.startswith("llmos arena: error:")

"""Supervised fine-tuning and the assistant evaluation: packed batches carry exactly the assistant
targets, a model learns its conversations (full and LoRA), the params file keeps what chat needs, the
scores tell a trained assistant from an untrained one, and bad inputs fail clearly."""
import json

import pytest
import torch

from llmos.chat import ChatFormat
from llmos.common import LlmosError, read_jsonl
from llmos.data.conversations import build_mixture
from llmos.load import load_model, open_model
from llmos.eval.assistant import EvalArgs, evaluate_assistant, identity_correct, names_subject, word_f1
from llmos.model import ModelConfig, Transformer
from llmos.params import save_params
from llmos.tokenizer import Tokenizer
from llmos.train.sft import ConversationLoader, SFTArgs, render_all, sft, sft_train_config

FACTS = [("What is your name?", "My name is Tiny."), ("Who made you?", "The llmos tests made me."),
         ("What is 2 + 2?", "2 + 2 = 4.\nAnswer: 4"), ("Tell me about Paris.", "Paris is the capital of France.")]


@pytest.fixture(scope="module")
def tok(tokenizer_path):
    return Tokenizer.load(tokenizer_path)


@pytest.fixture()
def base_model(tok, tmp_path):
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=tok.vocab_size, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=128)
    model = Transformer(cfg)
    with torch.no_grad():  # LoRA cannot grow frozen (tied) embeddings, and a random init's logits are near flat
        model.embed.weight.mul_(6)
    return save_params(tmp_path / "base.llmos", model, tok)


def chat(question: str, reply: str, **extra) -> dict:
    return {"source": "test", "messages": [{"role": "user", "content": question},
                                           {"role": "assistant", "content": reply}], **extra}


def write_mixture(path, train: list[dict], evals: list[dict]):
    path.mkdir(parents=True, exist_ok=True)
    for name, rows in (("train", train), ("eval", evals)):
        (path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_packed_batches_hold_whole_conversations_and_only_assistant_targets(tok):
    fmt = ChatFormat(tok)
    convs = [chat(f"question {i}?", "answer " * (i % 7 + 1)) for i in range(40)]
    rendered = render_all(fmt, convs, 65)
    loader = ConversationLoader(rendered, batch_size=4, seq_len=64, pad_id=tok.token_id("<|pad|>"), seed=1)
    seen = []
    for _ in range(3):
        x, y = loader.next_batch()
        assert x.shape == y.shape == (4, 64)
        for row_x, row_y in zip(x.tolist(), y.tolist()):
            # Each row is whole conversations (each starting with bos) and padding; every target that is
            # not -1 is the next input token of an assistant span.
            starts = [i for i, t in enumerate(row_x) if t == tok.bos_id]
            assert starts[0] == 0
            for a, b in zip(starts, starts[1:] + [None]):
                piece = [t for t in row_x[a:b] if t != tok.token_id("<|pad|>")]
                seen.append(piece)
            full = row_x + [tok.token_id("<|pad|>")]
            assert all(t == -1 or t == full[i + 1] for i, t in enumerate(row_y))
    ids_of = {tuple(ids) for ids, _ in rendered}
    assert all(tuple(piece) in ids_of for piece in seen[:-1])  # the last may be cut by the row's end
    # Targets are exactly the masked positions.
    ids, mask = rendered[0]
    loader = ConversationLoader([rendered[0]], 1, 64, pad_id=0, packing=False)
    _, y = loader.next_batch()
    assert [t for t in y[0].tolist() if t >= 0] == [t for t, m in zip(ids[1:], mask[1:]) if m]


def test_loader_state_resumes_the_same_batches(tok):
    rendered = render_all(ChatFormat(tok), [chat(f"q{i}", f"a{i} " * (i % 5 + 1)) for i in range(30)], 33)
    a = ConversationLoader(rendered, 4, 32, pad_id=0, seed=3)
    for _ in range(5):
        a.next_batch()
    b = ConversationLoader(rendered, 4, 32, pad_id=0, seed=3)
    b.load_state_dict(a.state_dict())
    for _ in range(6):  # across an epoch boundary too
        xa, ya = a.next_batch()
        xb, yb = b.next_batch()
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def _fit(base, tmp_path, lora_rank: int = 0, seed: int = 0):
    data = write_mixture(tmp_path / "mix", [chat(q, a) for q, a in FACTS] * 8, [chat(q, a) for q, a in FACTS])
    cfg = sft_train_config(steps=300 if lora_rank else 150, batch_size=8, seq_len=64, warmup_steps=10, eval_every=75, sample_every=1000,
                           ckpt_every=1000, log_every=10, compile=False, lr=1e-2, seed=seed)
    return sft(SFTArgs(model=str(base), data=str(data), out=str(tmp_path / "run"), lora_rank=lora_rank), cfg)


@pytest.mark.parametrize("lora_rank", [0, 8], ids=["full", "lora"])
def test_sft_learns_its_conversations_and_saves_a_chat_model(base_model, tmp_path, lora_rank):
    result = _fit(base_model, tmp_path, lora_rank)
    losses = [r["val_loss"] for r in read_jsonl(tmp_path / "run" / "metrics.jsonl") if "val_loss" in r]
    # Step 0 is the base's figure. Rank-8 adapters on a 64-wide random model fit less tightly than full tuning.
    assert losses[0] > 4 and result["val_loss"] < (1.0 if lora_rank else 0.1), losses
    model, tok, info = load_model(tmp_path / "run")
    assert info["provenance"]["source"] == "llmos sft" and info["provenance"]["lora_rank"] == lora_rank
    fmt = ChatFormat(tok, info["chat_template"])
    evals = [chat(q, a, source="identity") for q, a in FACTS[:2]] + \
            [chat(FACTS[2][0], FACTS[2][1], answer="4") | {"source": "skills"},
             chat(FACTS[3][0], FACTS[3][1], subject="Paris (city)") | {"source": "wiki-qa"}]
    scores = evaluate_assistant(model, tok, info, evals, EvalArgs(max_tokens=24))
    assert scores["identity"] == scores["skills"] == scores["wiki subject"] == scores["format"] == 1.0, scores["items"]
    untrained, _, _ = load_model(base_model)
    zero = evaluate_assistant(untrained, tok, info, evals, EvalArgs(max_tokens=24))
    assert zero["identity"] == zero["skills"] == zero["wiki subject"] == 0 and zero["format"] < 1
    assert zero["conversation loss"] > 4 > 1 > scores["conversation loss"]
    # The fine-tuned file still chats through the base's format: same rendering, same place to stop.
    _, base_tok, base_info = load_model(base_model)
    base_fmt = ChatFormat(base_tok, base_info["chat_template"])
    conversation = evals[0]["messages"]
    assert fmt.render(conversation) == base_fmt.render(conversation) and fmt.stop_ids == base_fmt.stop_ids
    assert fmt.native and fmt.stop_ids[0] == tok.token_id("<|assistant_end|>")


def test_lora_trains_only_the_adapters(base_model, tmp_path):
    before, _, _ = open_model(base_model)
    result = _fit(base_model, tmp_path, lora_rank=8)
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["trainable_params"] < config["params"] / 5  # rank 8 on a 64-wide model; far less on real ones
    after, _, _ = open_model(tmp_path / "run")
    changed = [n for (n, p), q in zip(before.named_parameters(), after.parameters()) if not torch.equal(p, q)]
    assert changed and all(("proj" in n) for n in changed), changed  # merged adapters; embeddings, norms untouched
    assert result["val_loss"] < 1.0


def test_user_files_bad_lines_and_skip(base_model, tmp_path):
    good = json.dumps({"messages": chat("hi", "hello")["messages"]})
    user = tmp_path / "mine.jsonl"
    user.write_text(good + "\n{not json\n" + good + "\n" + json.dumps({"messages": [{"role": "user", "content": "x"}]}) + "\n")
    cfg = sft_train_config(steps=2, batch_size=2, seq_len=32, compile=False, sample_every=1000, eval_every=1000)
    args = SFTArgs(model=str(base_model), sources="none", train_file=str(user), out=str(tmp_path / "a"))
    with pytest.raises(LlmosError, match=r"line 2: invalid JSON(.|\n)*line 4: .*must end with an assistant reply"):
        sft(args, cfg)
    args.skip_bad_lines, args.out = True, str(tmp_path / "b")
    with pytest.warns(UserWarning, match="2 bad line"):
        result = sft(args, cfg)
    assert result["step"] == 2 and (tmp_path / "b" / "model.llmos").is_file()


@pytest.mark.parametrize("change, message", [
    ({"model": ""}, "--model is required"),
    ({"model": "/no/such/model.llmos"}, "no model at /no/such/model.llmos"),
    ({"data": "/no/mixture"}, "/no/mixture holds no train.jsonl"),
    ({"sources": "none"}, "--sources none needs at least one --train-file"),
    ({"sources": "nope"}, "unknown conversation source"),
    ({"lora_rank": -1}, "--lora-rank must be 0"),
])
def test_bad_sft_inputs_are_clear(base_model, tmp_path, change, message):
    args = SFTArgs(**{"model": str(base_model), "out": str(tmp_path / "run"), "sources": "identity", **change})
    with pytest.raises(LlmosError, match=message):
        sft(args, sft_train_config(steps=1, seq_len=32, compile=False))


def test_seq_len_above_context_is_clear(base_model, tmp_path):
    with pytest.raises(LlmosError, match="--seq-len 512 is above the model's context of 128"):
        sft(SFTArgs(model=str(base_model), sources="identity", out=str(tmp_path / "r")), sft_train_config(seq_len=512))


def test_scoring_rules():
    assert word_f1("I'm llmos, a small model.", "I'm llmos, a small language model") > 0.8
    answers = {"I'm llmos, a small language model.", "No. I can't browse the internet."}
    assert identity_correct("I'm llmos, a small language model.", "I'm llmos, a small language model.", answers)
    assert not identity_correct("No, I can't browse the internet.", "I'm llmos, a small language model.", answers)
    assert names_subject("Mercury is the smallest planet.", "Mercury (planet)")
    assert not names_subject("It is a planet.", "Mercury (planet)")


def test_default_mixture_builds_for_sft(tmp_path):
    """The generated sources need no network: what `llmos sft --sources identity,skills` trains on."""
    m = build_mixture(tmp_path / "mix", sources=["identity", "skills"])
    assert m["totals"]["train"] > 5000 and m["sources"]["identity"]["eval"] > 100

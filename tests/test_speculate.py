"""Speculative decoding: greedy output identical to plain decoding, sampled output distributed as the
model's own, drafts both kept and rejected (so both paths really ran)."""
import math

import pytest
import torch

from llmos.common import LlmosError
from llmos.infer.engine import Engine
from llmos.infer.sampling import SamplingParams, distribution
from llmos.infer.speculate import DraftModel, PromptLookup
from llmos.model import ModelConfig, Transformer

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny(seed: int, vocab: int = 64, sharp: float = 8.0, **cfg) -> Transformer:
    torch.manual_seed(seed)
    model = Transformer(ModelConfig(vocab_size=vocab, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2,
                                    max_seq_len=256, tie_embeddings=False, **cfg))
    with torch.no_grad():  # peaked next-token distributions, so that greedy replies fall into loops
        model.lm_head.weight.mul_(sharp)
    return model.eval()


def decode(model, prompts, params, speculator=None, max_batch=1):
    engine = Engine(model, max_batch=max_batch, max_len=200, speculator=speculator,
                    speculate_max_batch=max_batch)
    seqs = [engine.add(p, params)[0] for p in prompts]
    while engine.has_work:
        engine.step()
    return [s.tokens for s in seqs], engine


PROMPTS = [[1, 2, 3, 4, 5, 6, 7, 1, 2, 3], [9, 9, 8, 7, 9, 9, 8], [40, 41, 42, 43, 40, 41]]


@pytest.mark.parametrize("weights", ["f32", "int4"])
def test_prompt_lookup_greedy_is_plain_greedy(weights):
    model = tiny(0).prepare_inference(weights)
    params = SamplingParams(max_tokens=60, temperature=0)
    drafted = accepted = 0
    for prompt in PROMPTS:
        plain, _ = decode(model, [prompt], params)
        fast, engine = decode(model, [prompt], params, PromptLookup(k=6))
        assert fast == plain
        assert engine.decode_steps < len(plain[0])  # drafts were kept: fewer forwards than tokens
        drafted, accepted = drafted + engine.spec_drafted, accepted + engine.spec_accepted
    assert 0 < accepted < drafted  # and some were rejected


def test_speculation_in_a_batch_matches_each_row_alone():
    model = tiny(1).prepare_inference()
    params = SamplingParams(max_tokens=50, temperature=0)
    alone = [decode(model, [p], params)[0][0] for p in PROMPTS]
    together, engine = decode(model, PROMPTS, params, PromptLookup(k=5), max_batch=3)
    assert together == alone and engine.spec_accepted > 0


def test_draft_model_greedy_is_plain_greedy():
    target, other = tiny(2).prepare_inference(), tiny(3).prepare_inference()
    params = SamplingParams(max_tokens=40, temperature=0)
    plain, _ = decode(target, PROMPTS[:1], params)
    fast, engine = decode(target, PROMPTS[:1], params, DraftModel(other, k=4))
    assert fast == plain and engine.spec_accepted < engine.spec_drafted
    itself, engine = decode(target, PROMPTS[:1], params, DraftModel(tiny(2).prepare_inference(), k=4))
    assert itself == plain and engine.spec_accepted == engine.spec_drafted > 0  # a perfect drafter


def test_a_draft_model_must_share_the_vocabulary():
    with pytest.raises(LlmosError, match="same tokenizer|share the model's tokenizer"):
        Engine(tiny(0), speculator=DraftModel(tiny(0, vocab=32)))


def joint_distribution(model, prompt, params) -> torch.Tensor:
    """p(t1, t2 | prompt) for every pair, computed from the model's logits directly."""
    V = model.cfg.vocab_size
    with torch.inference_mode():
        p1 = distribution(model(torch.tensor([prompt]))[0, -1], params)
        rows = torch.tensor([prompt + [t] for t in range(V)])
        p2 = torch.stack([distribution(logits, params) for logits in model(rows)[:, -1]])
    return p1[:, None] * p2


@pytest.mark.parametrize("drafter", ["lookup", "model"])
def test_sampled_tokens_keep_the_models_distribution(drafter):
    """Chi-square goodness of fit of (t1, t2) over 2,048 samples against the exact joint: a wrong
    acceptance rule or a missing residual shifts mass towards the drafts and fails this."""
    V = 6
    target = tiny(4, vocab=V, sharp=1.5).prepare_inference()
    prompt = [0, 1, 2, 3, 4, 5, 0, 1]
    params = SamplingParams(max_tokens=2, temperature=1.0)
    if drafter == "lookup":
        speculator = PromptLookup(k=1, min_ngram=1)  # a draft at almost every step
    else:  # a drafter that disagrees with the target: it samples from another model
        speculator = DraftModel(tiny(5, vocab=V, sharp=3.0).prepare_inference(), k=1)
    expected = joint_distribution(target, prompt, params)
    torch.manual_seed(0)
    counts = torch.zeros(V, V)
    engine = None
    for _ in range(32):
        tokens, engine = decode(target, [prompt] * 64, params, speculator, max_batch=64)
        for t1, t2 in tokens:
            counts[t1, t2] += 1
    n = counts.sum()
    assert engine.spec_drafted > 0 and 0 < engine.spec_accepted < engine.spec_drafted
    keep = expected * n >= 5  # the usual rule for the chi-square approximation
    observed = torch.cat([counts[keep], counts[~keep].sum()[None]])
    wanted = torch.cat([expected[keep], expected[~keep].sum()[None]]) * n
    chi2 = float(((observed - wanted) ** 2 / wanted.clamp(min=1e-9)).sum())
    dof = int(observed.numel()) - 1
    z = 3.09  # p < 0.001 rejects; chi2's 99.9% quantile by the Wilson-Hilferty approximation
    critical = dof * (1 - 2 / (9 * dof) + z * math.sqrt(2 / (9 * dof))) ** 3
    assert chi2 < critical, (chi2, dof, critical)

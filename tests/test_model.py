"""The transformer: KV-cache parity, causality, the depth knob, context limits, config and weight-shape checks."""
import re

import pytest
import torch

from llmos.common import LlmosError
from llmos.model import MAX_CONTEXT, ModelConfig, Transformer, check_weight_shapes, stored_weight_shapes


def _model(**kw) -> Transformer:
    torch.manual_seed(0)
    return Transformer(ModelConfig(vocab_size=300, d_model=64, n_layers=2, n_heads=4, max_seq_len=64, **kw)).eval()


@pytest.mark.parametrize("kw", [{}, {"n_kv_heads": 2, "tie_embeddings": False}, {"n_kv_heads": 1, "qk_norm": True}])
def test_kv_cache_logits_equal_full_forward(kw):
    model = _model(n_kv_heads=kw.pop("n_kv_heads", 4), **kw)
    x = torch.randint(0, 300, (2, 48))
    with torch.no_grad():
        full = model(x)
        cache = model.new_kv_cache(slots=2)
        pieces = [model(x[:, :20], kv_cache=cache), model(x[:, 20:31], kv_cache=cache)]
        pieces += [model(x[:, t:t + 1], kv_cache=cache) for t in range(31, 48)]
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-5, rtol=1e-5)


def test_rows_at_different_lengths_decode_as_if_alone():
    """A running batch holds sequences of different lengths: each row's logits equal a full forward
    of its own sequence, and a slot copied elsewhere continues identically."""
    model = _model(n_kv_heads=2)
    seqs = [torch.randint(0, 300, (n,)) for n in (5, 17, 30)]
    with torch.no_grad():
        cache = model.new_kv_cache(slots=4)
        for slot, s in enumerate(seqs):
            model(s[None, :-1], kv_cache=cache, first_slot=slot)
        assert cache.lengths == [4, 16, 29, 0]
        batched = model(torch.stack([s[-1:] for s in seqs]), kv_cache=cache)[:, 0]
        for row, s in enumerate(seqs):
            torch.testing.assert_close(batched[row], model(s[None])[0, -1], atol=1e-5, rtol=1e-5)
        cache.copy(src=1, dst=3)
        nxt = torch.tensor([[7]])
        a = model(nxt, kv_cache=cache, first_slot=1)
        b = model(nxt, kv_cache=cache, first_slot=3)
    torch.testing.assert_close(a, b)
    assert cache.lengths == [5, 18, 30, 18]


def test_model_is_causal():
    model = _model(n_kv_heads=2)
    x = torch.randint(0, 300, (1, 32))
    y = x.clone()
    y[0, 20:] = torch.randint(0, 300, (12,))
    with torch.no_grad():
        a, b = model(x), model(y)
    torch.testing.assert_close(a[:, :20], b[:, :20])
    assert not torch.allclose(a[:, 20:], b[:, 20:])


def test_depth_derives_the_reference_config():
    cfg = ModelConfig.from_depth(4, vocab_size=4096, max_seq_len=256)
    assert (cfg.d_model, cfg.n_heads, cfg.head_dim, cfg.d_ff) == (256, 4, 64, 704)
    model = Transformer(cfg)
    assert model.num_params() == 4_262_144  # 4096*256 tied + 4 * (4*256^2 + 3*256*704 + 2*256) + 256
    assert model.flops_per_token(256) == 6 * 4_262_144 + 12 * 4 * 256 * 256


def test_sequence_longer_than_context_is_a_clear_error():
    model = _model()
    with pytest.raises(LlmosError, match="exceeds the model's context of 64"):
        model(torch.zeros(1, 65, dtype=torch.long))


def test_bad_head_counts_are_rejected():
    with pytest.raises(LlmosError, match="multiple of n_kv_heads"):
        ModelConfig(n_heads=4, n_kv_heads=3)


def test_training_loss_ignores_masked_targets():
    model = _model()
    x = torch.randint(0, 300, (2, 16))
    y = torch.randint(0, 300, (2, 16))
    masked = y.clone()
    masked[:, :8] = -1
    logits = model(x)
    expected = torch.nn.functional.cross_entropy(logits[:, 8:].reshape(-1, 300), y[:, 8:].reshape(-1))
    torch.testing.assert_close(model(x, targets=masked), expected)


@pytest.mark.parametrize("overrides, message", [
    ({"n_layers": "x"}, "n_layers must be an integer of at least 1, not 'x'"),
    ({"d_model": -64}, "d_model must be an integer of at least 1"),
    ({"vocab_size": 0}, "vocab_size must be an integer of at least 1"),
    ({"n_heads": 4.0}, "n_heads must be an integer"),
    ({"d_ff": -1}, "d_ff must be an integer of at least 0"),
    ({"rope_theta": "10000"}, "rope_theta must be a positive number"),
    ({"norm_eps": float("nan")}, "norm_eps must be a positive number"),
    ({"tie_embeddings": "false"}, "tie_embeddings must be true or false"),
    ({"qk_norm": 1}, "qk_norm must be true or false"),
    ({"head_dim": 7}, "head_dim must be even"),
    ({"max_seq_len": MAX_CONTEXT + 1}, "max_seq_len 1,048,577 exceeds llmos's limit of 1,048,576 positions"),
])
def test_bad_configs_are_clear_errors(overrides, message):
    with pytest.raises(LlmosError, match=re.escape(message)):
        ModelConfig(**overrides)
    with pytest.raises(LlmosError, match=re.escape(f"m.llmos: model config: {message}")):
        ModelConfig.from_dict({**ModelConfig().to_dict(), **overrides}, source="m.llmos")
    assert ModelConfig(max_seq_len=MAX_CONTEXT, rope_theta=500000).rope_theta == 500000.0


def test_from_dict_refuses_what_is_not_a_config():
    with pytest.raises(LlmosError, match="the model config is a list, not an object"):
        ModelConfig.from_dict([1, 2])
    with pytest.raises(LlmosError, match=r"unknown model config keys \['depth'\]"):
        ModelConfig.from_dict({"depth": 4})


@pytest.mark.parametrize("kw", [{}, {"n_kv_heads": 2, "tie_embeddings": False, "qk_norm": True, "head_dim": 8}])
def test_stored_weight_shapes_are_the_models(kw):
    model = _model(n_kv_heads=kw.pop("n_kv_heads", 4), **kw)
    stored = {k: tuple(v.shape) for k, v in model.state_dict().items()
              if not (model.cfg.tie_embeddings and k == "lm_head.weight")}
    assert list(stored_weight_shapes(model.cfg)) == list(stored.items())
    check_weight_shapes(model.cfg, stored, "m")
    check_weight_shapes(model.cfg, {k: v.shape for k, v in model.state_dict().items()}, "m")  # a live state dict


def test_weight_shape_check_is_arithmetic_and_names_the_fault():
    cfg = ModelConfig(vocab_size=300, d_model=64, n_layers=2, n_heads=4)
    stored = dict(stored_weight_shapes(cfg))
    huge = ModelConfig(vocab_size=300, d_model=64, n_layers=10**12, n_heads=4)  # would never fit in memory
    with pytest.raises(LlmosError, match=r"m lacks weights for \['layers.2.attn_norm.weight', .*\] \.\.\. "
                                         r"that its config \(1,000,000,000,000 layers"):
        check_weight_shapes(huge, stored, "m")
    with pytest.raises(LlmosError, match=r"m has weights llmos's model has no place for: \['layers.2.mlp.bias'\]"):
        check_weight_shapes(cfg, {**stored, "layers.2.mlp.bias": (64,)}, "m")
    with pytest.raises(LlmosError, match=r"m: weight shapes disagree with its config: embed.weight \(301, 64\) "
                                         r"\(expected \(300, 64\)\)"):
        check_weight_shapes(cfg, {**stored, "embed.weight": [301, 64]}, "m")
    with pytest.raises(LlmosError, match=r"lm_head.weight \(64, 64\)"):  # a tied head must still fit
        check_weight_shapes(cfg, {**stored, "lm_head.weight": (64, 64)}, "m")

"""The transformer: KV-cache parity, causality, the depth knob, context limits."""
import pytest
import torch

from llmos.common import LlmosError
from llmos.model import ModelConfig, Transformer


def _model(**kw) -> Transformer:
    torch.manual_seed(0)
    return Transformer(ModelConfig(vocab_size=300, d_model=64, n_layers=2, n_heads=4, max_seq_len=64, **kw)).eval()


@pytest.mark.parametrize("kw", [{}, {"n_kv_heads": 2, "tie_embeddings": False}, {"n_kv_heads": 1, "qk_norm": True}])
def test_kv_cache_logits_equal_full_forward(kw):
    model = _model(n_kv_heads=kw.pop("n_kv_heads", 4), **kw)
    x = torch.randint(0, 300, (2, 48))
    with torch.no_grad():
        full = model(x)
        cache = model.new_kv_cache(batch=2)
        pieces = [model(x[:, :20], kv_cache=cache), model(x[:, 20:31], kv_cache=cache)]
        pieces += [model(x[:, t:t + 1], kv_cache=cache) for t in range(31, 48)]
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-5, rtol=1e-5)


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

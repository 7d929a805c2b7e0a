"""The inference layer: continuous batching gives every sequence what it would get alone; sequences
join and leave; n samples share one prefill; chunked prefill and the prefix cache change nothing but
the work; forced tokens, log-probs, stop strings, penalties, cancellation and the queue bound."""
import math

import pytest
import torch

from llmos.common import LlmosError
from llmos.infer.engine import Engine, generate
from llmos.infer.prefix_cache import PrefixCache
from llmos.infer.sampling import SamplingParams
from llmos.infer.scheduler import QueueFull, Scheduler
from llmos.model import ModelConfig, Transformer

NEAR_TIE = 1e-3  # a greedy choice whose top-2 logit margin is below this may flip with float rounding


@pytest.fixture(scope="module")
def model(tok):
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=tok.vocab_size, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=256)
    return Transformer(cfg).eval()


def prompts_of(tok, count: int) -> list[list[int]]:
    words = "the quick brown fox jumps over a lazy dog while seven wizards quietly hex".split()
    return [tok.encode(" ".join(words[i % 7:i % 7 + 1 + i]), bos=True) for i in range(count)]


def run(engine: Engine) -> None:
    while engine.has_work:
        engine.step()


def test_greedy_alone_equals_greedy_among_fifteen_others(model, tok):
    prompts = prompts_of(tok, 16)
    params = SamplingParams(max_tokens=40, temperature=0, top_logprobs=2)
    alone = []
    for p in prompts:
        engine = Engine(model, tok, max_batch=1)
        seq, = engine.add(p, params)
        run(engine)
        alone.append(seq)
    engine = Engine(model, tok, max_batch=16)
    together = [engine.add(p, params)[0] for p in prompts]
    run(engine)
    divergences = []
    for a, b in zip(alone, together):
        if a.tokens != b.tokens:
            at = next(i for i, (x, y) in enumerate(zip(a.tokens, b.tokens)) if x != y)
            (_, best), (_, second) = a.logprobs[at].top[:2]
            divergences.append((at, best - second))
    print(f"greedy divergences alone vs batched (position, top-2 margin): {divergences or 'none'}")
    assert all(margin < NEAR_TIE for _, margin in divergences), divergences


def test_seeded_samples_are_the_same_alone_or_batched(model, tok):
    prompts = prompts_of(tok, 6)
    params = SamplingParams(max_tokens=30, temperature=1.0, top_p=0.9, top_k=50, seed=11)
    alone = [list(generate(model, p, params)) for p in prompts]
    engine = Engine(model, tok, max_batch=6)
    together = [engine.add(p, params)[0] for p in prompts]
    run(engine)
    assert [s.tokens for s in together] == alone
    assert len({tuple(a) for a in alone}) > 1


def test_sequences_join_and_leave_a_running_batch(model, tok):
    """Ten requests of different lengths through four rows: a row freed by a short reply takes the
    next request while the others keep decoding, and each reply is what it would be alone."""
    prompts = prompts_of(tok, 10)
    lengths = [3, 25, 7, 30, 2, 12, 18, 5, 22, 9]
    engine = Engine(model, tok, max_batch=4)
    seqs = [engine.add(p, SamplingParams(max_tokens=n, temperature=0))[0] for p, n in zip(prompts, lengths)]
    joined_mid_batch, most = False, 0
    while engine.has_work:
        before = {s.id for s in engine.running}
        engine.step()
        after = {s.id for s in engine.running}
        most = max(most, len(after))
        joined_mid_batch |= bool(after - before) and bool(after & before)
    assert most == 4 and joined_mid_batch
    for seq, p, n in zip(seqs, prompts, lengths):
        assert seq.tokens == list(generate(model, p, SamplingParams(max_tokens=n, temperature=0)))
        assert seq.finish_reason == "length" and len(seq.tokens) == n


def test_n_samples_share_one_prefill(model, tok):
    prompt = prompts_of(tok, 12)[-1]
    engine = Engine(model, tok, max_batch=4)
    seqs = engine.add(prompt, SamplingParams(max_tokens=12, temperature=1.0, seed=5), n=3)
    run(engine)
    assert engine.prompt_tokens == len(prompt)  # prefilled once for three samples
    assert len({tuple(s.tokens) for s in seqs}) == 3  # seeds 5, 6, 7
    assert seqs[1].tokens == list(generate(model, prompt, SamplingParams(max_tokens=12, temperature=1.0, seed=6)))


def test_chunked_prefill_of_a_long_prompt_does_not_stall_the_batch(model, tok):
    short, long = prompts_of(tok, 2)[0], tok.encode("word " * 150, bos=True)[:150]
    engine = Engine(model, tok, max_batch=2, prefill_chunk=16)
    first, = engine.add(short, SamplingParams(max_tokens=40, temperature=0))
    engine.step()
    second, = engine.add(long, SamplingParams(max_tokens=5, temperature=0))
    steps_while_prefilling = 0
    while second not in engine.running and engine.has_work:
        grew = len(first.tokens)
        engine.step()
        steps_while_prefilling += 1
        assert len(first.tokens) == grew + 1 or first.finished  # the running row decoded every step
    assert steps_while_prefilling >= len(long) // 16  # the long prompt went in 16 tokens a step
    run(engine)
    assert second.tokens == list(generate(model, long, SamplingParams(max_tokens=5, temperature=0)))
    assert first.tokens == list(generate(model, short, SamplingParams(max_tokens=40, temperature=0)))


def test_prefix_cache_prefills_only_the_new_tokens(model, tok):
    cache = PrefixCache(max_bytes=1 << 24)
    engine = Engine(model, tok, max_batch=2, prefix_cache=cache)
    history = tok.encode("system: be brief. user: tell me about the quick brown fox", bos=True)
    params = SamplingParams(max_tokens=8, temperature=0)
    turn1, = engine.add(history, params)
    run(engine)
    nxt = history + turn1.tokens + tok.encode(" user: and the lazy dog?")
    prefilled = engine.prompt_tokens
    turn2, = engine.add(nxt, params)
    run(engine)
    reused = engine.prompt_tokens_cached
    assert reused == len(history) + len(turn1.tokens) - 1  # the reply's last token was sampled, never fed
    assert engine.prompt_tokens - prefilled == len(nxt) - reused
    assert turn2.tokens == list(generate(model, nxt, params)) and cache.hits == 1


def test_prefix_cache_memory_is_bounded():
    def saved(n):
        return [(torch.zeros(2, n, 8), torch.zeros(2, n, 8))]
    per_token = PrefixCache.size(saved(1))
    cache = PrefixCache(max_bytes=100 * per_token)
    for i in range(50):
        cache.store([i] * 30, saved(30))
        assert cache.bytes <= 100 * per_token
    assert len(cache.entries) == 3 and list(cache.entries)[0] == tuple([47] * 30)  # least recently used left
    cache.store([49] * 30 + [1] * 10, saved(40))  # an entry that extends another replaces it
    assert tuple([49] * 30) not in cache.entries


def test_forced_tokens_are_fed_not_sampled(model, tok):
    prompt = prompts_of(tok, 3)[-1]
    engine = Engine(model, tok, max_batch=2)
    seq, = engine.add(prompt, SamplingParams(max_tokens=6, temperature=0))
    engine.step()
    engine.step()
    result = tok.encode(" result: 42")
    seq.force(result)
    run(engine)
    assert seq.tokens[2:2 + len(result)] == result and seq.forced_mask[2:2 + len(result)] == [True] * len(result)
    assert all(lp is None for lp in seq.logprobs[2:2 + len(result)])
    continued = list(generate(model, prompt + seq.tokens[:2] + result, SamplingParams(max_tokens=4, temperature=0)))
    assert seq.tokens[2 + len(result):] == continued  # max_tokens counts sampled tokens only


def test_logprobs_are_the_model_distribution(model, tok):
    prompt = prompts_of(tok, 5)[-1]
    engine = Engine(model, tok, max_batch=1)
    seq, = engine.add(prompt, SamplingParams(max_tokens=6, temperature=0.7, seed=0, logprobs=True, top_logprobs=3))
    run(engine)
    with torch.no_grad():
        full = model(torch.tensor([prompt + seq.tokens]))[0].log_softmax(-1)
    for i, lp in enumerate(seq.logprobs):
        row = full[len(prompt) - 1 + i]
        assert math.isclose(lp.logprob, float(row[lp.token]), abs_tol=1e-4)
        assert [t for t, _ in lp.top] == row.topk(3).indices.tolist()


def test_stop_strings_end_the_reply_and_never_leak(model, tok):
    prompt = prompts_of(tok, 4)[-1]
    free = Engine(model, tok, max_batch=1)
    seq, = free.add(prompt, SamplingParams(max_tokens=40, temperature=0))
    run(free)
    text = seq.text
    stop = text[len(text) // 2:len(text) // 2 + 3]
    assert len(stop) == 3
    engine = Engine(model, tok, max_batch=1)
    cut, = engine.add(prompt, SamplingParams(max_tokens=40, temperature=0, stop=[stop]))
    released = []
    while engine.has_work:
        engine.step()
        released.append(cut.text)
    assert cut.finish_reason == "stop" and cut.stopped_by == stop
    assert cut.text == text[:text.index(stop)]
    assert all(stop not in r and cut.text.startswith(r) for r in released)  # streamed text never took back


def test_penalties_and_logit_bias(model, tok):
    prompt = prompts_of(tok, 3)[-1]
    free = list(generate(model, prompt, SamplingParams(max_tokens=60, temperature=0)))
    penalized = list(generate(model, prompt, SamplingParams(max_tokens=60, temperature=0, frequency_penalty=2.0,
                                                            presence_penalty=2.0)))
    assert len(set(penalized)) > len(set(free))
    forced = list(generate(model, prompt, SamplingParams(max_tokens=5, temperature=1.0, seed=0, logit_bias={77: 100})))
    assert forced == [77] * 5


def test_cancelled_sequence_leaves_at_the_next_step(model, tok):
    engine = Engine(model, tok, max_batch=3)
    seqs = [engine.add(p, SamplingParams(max_tokens=100, temperature=0))[0] for p in prompts_of(tok, 3)]
    for _ in range(3):
        engine.step()
    seqs[0].cancel()
    engine.step()
    assert seqs[0].finish_reason == "cancelled" and seqs[0] not in engine.running and len(engine.running) == 2
    assert engine.cancel_latency_max <= 1 and len(seqs[0].tokens) == 3


@pytest.mark.parametrize("field, value, message", [
    ("temperature", -1.0, "temperature must be"), ("top_p", 0.0, "top_p must be in"),
    ("max_tokens", 0, "max_tokens must be"), ("top_logprobs", 99, "top_logprobs must be"),
    ("presence_penalty", 3.0, "presence_penalty must be"), ("logit_bias", {10 ** 6: 1.0}, "not a token id"),
    ("stop", [""], "stop must be")])
def test_bad_sampling_params_name_the_field(model, tok, field, value, message):
    with pytest.raises(LlmosError, match=message):
        list(generate(model, [1, 2], SamplingParams(**{"max_tokens": 4, field: value})))


def test_a_full_queue_is_refused_not_buffered(model, tok):
    engine = Engine(model, tok, max_batch=1)
    sched = Scheduler(engine, max_queue=2)  # not started: nothing leaves the queue
    params = SamplingParams(max_tokens=4, temperature=0)
    sched.submit([1, 2, 3], params)
    sched.submit([1, 2, 3], params)
    with pytest.raises(QueueFull) as refused:
        sched.submit([1, 2, 3], params)
    assert refused.value.retry_after >= 1 and sched.requests_refused == 1
    sched.start()
    sched.stop(timeout=60)  # stopping finishes what was admitted
    assert engine.tokens_generated == 8 and not engine.has_work

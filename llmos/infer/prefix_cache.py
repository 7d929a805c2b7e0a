"""Keys and values of recent prompts, so that a prompt sharing their start prefills only what is new.

    cache = PrefixCache(max_bytes=256 << 20)
    if cache.wants(tokens):                                     # after a prefill, or when a reply ends
        cache.store(tokens, kv_cache.export(slot, len(tokens)))
    hit = cache.lookup(prompt)                                  # (entry tokens, saved kv, shared length) or None

The next turn of a conversation starts with the previous prompt and reply; requests that share a
system prompt start alike. An entry is the KV of a token sequence; a lookup finds the entry sharing
the longest start with the prompt (a linear scan: a few hundred entries at most) and returns how many
leading tokens it can supply. Entries are evicted least recently used first, so the cache never
holds more than `max_bytes`; an entry that is a prefix of a newer one is dropped as redundant.
"""
from __future__ import annotations

from collections import OrderedDict

import torch

Saved = list[tuple[torch.Tensor, torch.Tensor]]  # per layer: keys and values (heads, tokens, head_dim)


def shared_length(a: tuple[int, ...], b: list[int] | tuple[int, ...]) -> int:
    n = min(len(a), len(b))
    if a[:n] == tuple(b[:n]):
        return n
    lo, hi = 0, n  # a[:lo] == b[:lo] and a[:hi] != b[:hi]: bisect on slices, which compare in C
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if a[:mid] == tuple(b[:mid]):
            lo = mid
        else:
            hi = mid
    return lo


class PrefixCache:
    def __init__(self, max_bytes: int, min_tokens: int = 8):
        self.max_bytes, self.min_tokens = max_bytes, min_tokens
        self.entries: OrderedDict[tuple[int, ...], Saved] = OrderedDict()
        self.bytes = 0
        self.lookups = self.hits = 0

    @staticmethod
    def size(saved: Saved) -> int:
        return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in saved)

    def lookup(self, prompt: list[int], count: bool = True) -> tuple[Saved, int] | None:
        """The saved KV sharing the longest start with `prompt` and that length (always less than
        the prompt's, so that at least one token is left to prefill for the next logits). With
        count=False the hit rate does not see it (a peek: `record` counts it if it is used)."""
        best, best_len = None, 0
        for key in self.entries:
            n = shared_length(key, prompt)
            if n > best_len:
                best, best_len = key, n
        best_len = min(best_len, len(prompt) - 1)
        hit = None if best is None or best_len < self.min_tokens else (self.entries[best], best_len)
        if hit is not None:
            self.entries.move_to_end(best)
        if count:
            self.record(hit)
        return hit

    def record(self, hit: tuple[Saved, int] | None) -> None:
        self.lookups += 1
        if hit is not None:
            self.hits += 1

    def wants(self, tokens: list[int]) -> bool:
        """Whether `store` would add an entry for these tokens (so a copy of their KV is worth making);
        a known entry just becomes the most recently used."""
        key = tuple(tokens)
        if key in self.entries:
            self.entries.move_to_end(key)
            return False
        return len(key) >= self.min_tokens

    def store(self, tokens: list[int], saved: Saved) -> None:
        key = tuple(tokens)
        size = self.size(saved)
        if len(key) < self.min_tokens or size > self.max_bytes:
            return
        if key in self.entries:
            self.entries.move_to_end(key)
            return
        for old in [k for k in self.entries if len(k) < len(key) and key[:len(k)] == k]:
            self.bytes -= self.size(self.entries.pop(old))
        self.entries[key] = saved
        self.bytes += size
        while self.bytes > self.max_bytes:
            _, evicted = self.entries.popitem(last=False)
            self.bytes -= self.size(evicted)

"""GCG (greedy coordinate gradient, Zou et al. 2023): a universal adversarial suffix, found white-box.

    result = run_gcg("runs/speedrun-safety", behaviours, GcgConfig(steps=200), "suffix.json")
    llmos gcg --model runs/speedrun-safety --behaviours 25 --steps 200 --out suffix.json
    llmos redteam --target runs/speedrun-safety --suite gcg --suffix suffix.json   # ASR on held-out behaviours

The attack appends L suffix tokens to each behaviour's user message ("<behaviour>\\n<suffix>") and
lowers the cross-entropy of the behaviour's AdvBench target ("Sure, here is ...") as the assistant's
reply, summed over the behaviours (reported as the mean per behaviour of the per-token loss). Each step:
1. the gradient of the loss with respect to a one-hot encoding of the suffix tokens (the suffix enters
   the model as one_hot @ embedding matrix, so the gradient scores every token at every position);
2. the top-k tokens of the negative gradient at each position are the candidate substitutions;
3. B candidate suffixes, each the current one with one position swapped for one of its candidates
   (both chosen at random), are scored exactly in batched forward passes, and the best replaces
   the current suffix, better or not (the paper's rule; the best suffix seen is kept apart). The
   prompt before the suffix runs once per behaviour: its keys and values serve every candidate.
Behaviours are added one at a time (the paper's progressive multi-prompt schedule): the next joins
once the current suffix breaks every active one. Broken, as in the paper, is read off the greedy
reply (its first CHECK_TOKENS tokens): it opens with the target's first word ("Sure") and holds none
of the judge's refusal phrases (llmos/redteam/probes.py). Not the whole target: a tiny model that
answers "Sure, it is a script that ..." has stopped refusing, though " here" stays unlikely to it.
The loss stays the whole target's.

Candidates are only tokens that decode to printable ASCII and encode back to themselves alone, and
never a special or chat token (a suffix must be text anyone can type, and one that transfers as
text to other tokenizers); a whole candidate suffix must also encode back to its own tokens after
the separator and spell no special token across tokens, so the ids optimised are the ids the model
reads when the suffix is sent as text.

The run is seeded: step s draws from a generator seeded by (seed, s), so a resumed run continues
exactly as an uninterrupted one. The state (current and best suffix, active behaviours, history)
is written atomically to the output JSON after every step, which is also what the redteam probes
read: "suffix" (the best) and "control" (L random allowed tokens: the same length, no optimisation).
The search starts from another seeded draw of L random allowed tokens (the paper's "! ! ! ..." is not
L tokens in every vocabulary: the speedrun tokenizer has no " !").
"""
from __future__ import annotations

import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from llmos.common import LlmosError, read_json, write_json
from llmos.redteam.corpora import Behaviour

SEPARATOR = "\n"  # between behaviour and suffix: a newline is its own pre-token, so the suffix's tokens stay its own
CHECK_TOKENS = 24  # of the greedy reply, read for a refusal: enough for "Sure, but I can't ..."
EVAL_ROWS = 128  # sequences per forward pass when scoring candidates (bounds memory on big vocabularies)


@dataclass
class GcgConfig:
    suffix_tokens: int = 20  # L, the suffix's length in tokens
    steps: int = 500  # total steps, counting those of a resumed run
    minutes: float = 0.0  # wall-clock budget of this invocation (0: steps alone)
    top_k: int = 256  # candidate substitutions per position (from the gradient)
    candidates: int = 256  # B, single-token swaps scored exactly per step
    progressive: bool = True  # add behaviours one at a time, as each set is broken
    seed: int = 0
    dtype: str = "auto"  # auto: bf16 where the hardware multiplies it, else fp32

    def check(self) -> None:
        for name in ("suffix_tokens", "steps", "top_k", "candidates"):
            if getattr(self, name) < 1:
                raise LlmosError(f"--{name.replace('_', '-')} must be at least 1, not {getattr(self, name)}")
        if self.minutes < 0:
            raise LlmosError(f"--minutes must be 0 (no limit) or more, not {self.minutes}")


# What must match for a checkpoint to be continued: the search itself (not its budget).
_SEARCH_KEYS = ("suffix_tokens", "top_k", "candidates", "progressive", "seed")


def allowed_tokens(tok, vocab_size: int) -> torch.Tensor:
    """(vocab_size,) bool: tokens that may appear in a suffix (see the module docstring)."""
    special = set(tok.hf.get_added_tokens_decoder())
    allowed = torch.zeros(vocab_size, dtype=torch.bool)
    for i in range(min(vocab_size, tok.vocab_size)):
        if i in special:
            continue
        text = tok.decode([i])
        allowed[i] = text.isascii() and text.isprintable() and bool(text.strip()) and tok.encode(text) == [i]
    if not allowed.any():
        raise LlmosError("this tokenizer has no printable ASCII tokens that encode to themselves: GCG has no candidates")
    return allowed


def _special_spellings(tok) -> list[str]:
    return [t.content for t in tok.hf.get_added_tokens_decoder().values()]


class _SharedPrefix:
    """A step in llmos/model.py's attention protocol (rope, update, mask, causal) in which every row
    continues one prefix: the behaviour's prompt before the suffix, run once per behaviour rather
    than once per candidate. `record` runs the prefix itself and keeps its keys and values."""

    def __init__(self, start: int, T: int, device, keys: list | None = None, values: list | None = None):
        self.keys, self.values, self.record = keys or [], values or [], keys is None
        self.positions = torch.arange(start, start + T, device=device)
        self.causal = self.record and T > 1
        self.mask = None if self.record else torch.ones(T, start + T, dtype=torch.bool, device=device).tril(start)

    def rope(self, cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return cos[self.positions], sin[self.positions]

    def update(self, layer: int, k, v):
        if self.record:
            self.keys.append(k)
            self.values.append(v)
            return k, v
        rows = k.shape[0]
        return (torch.cat([self.keys[layer].expand(rows, -1, -1, -1), k], dim=2),
                torch.cat([self.values[layer].expand(rows, -1, -1, -1), v], dim=2))


def _run(model, embeds: torch.Tensor, step: _SharedPrefix) -> torch.Tensor:
    cos, sin = step.rope(model.rope_cos, model.rope_sin)
    x = embeds
    for block in model.layers:
        x = block(x, cos, sin, step)
    return x


def _forward(model, prefix: _SharedPrefix, embeds: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Logits (B, P, V) at `positions` of (B, T, d) input embeddings that continue `prefix`: the
    model's own blocks, fed embeddings rather than ids so that the suffix can be a differentiable
    one-hot mixture, and the head only where the loss needs it."""
    step = _SharedPrefix(len(prefix.positions), embeds.shape[1], embeds.device, prefix.keys, prefix.values)
    return model.lm_head(model.norm(_run(model, embeds, step)[:, positions])).float()


class Gcg:
    """The search over one model and a list of behaviours; `state` is everything a checkpoint holds."""

    def __init__(self, model, tok, fmt, behaviours: list[Behaviour], cfg: GcgConfig):
        cfg.check()
        if not behaviours:
            raise LlmosError("GCG needs at least one behaviour to optimise against")
        if any(not b.target for b in behaviours):
            raise LlmosError("every behaviour needs a target (AdvBench's \"Sure, here is ...\") for GCG's loss")
        self.model, self.tok, self.fmt, self.behaviours, self.cfg = model, tok, fmt, behaviours, cfg
        self.device = model.embed.weight.device
        self.allowed = allowed_tokens(tok, model.cfg.vocab_size).to(self.device)
        self.spellings = _special_spellings(tok)
        self.separator_ids = tok.encode(SEPARATOR)
        rng = random.Random(cfg.seed)
        initial, control = self._random_suffix(rng), self._random_suffix(rng)
        self.layouts = [self._layout(b, initial) for b in behaviours]
        with torch.no_grad():
            self.prefixes = []
            for before, _, _ in self.layouts:
                self.prefixes.append(_SharedPrefix(0, len(before), self.device))
                _run(model, model.embed(before[None]), self.prefixes[-1])
        self.state = {"step": 0, "active": 1 if cfg.progressive else len(behaviours),
                      "current": {"ids": initial, "loss": None}, "best": None, "history": [], "seconds": 0.0,
                      "control": {"ids": control, "text": tok.decode(control)}}

    def _layout(self, behaviour: Behaviour, suffix: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(before, after, target) ids: the prompt is before + suffix + after, the reply target."""
        messages = [{"role": "user", "content": self.message(behaviour.text, suffix)}]
        prompt = self.fmt.render_prompt(messages)
        L = len(suffix)
        starts = [i for i in range(len(prompt) - L, -1, -1) if prompt[i:i + L] == suffix]
        if not starts:
            raise LlmosError(f"the suffix's tokens are not in the rendered prompt of {behaviour.id}: this chat "
                             "format merges the suffix with its surroundings")
        ids, mask = self.fmt.render(messages + [{"role": "assistant", "content": behaviour.target}])
        if ids[:len(prompt)] != prompt:
            raise LlmosError("this chat format does not render a prompt as the prefix of the conversation")
        reply = [t for t, m in zip(ids[len(prompt):], mask[len(prompt):]) if m]
        if reply and reply[-1] == self.fmt.end_of_turn_id:
            reply = reply[:-1]  # the target opens a reply: the turn must not end there
        if len(ids) > self.model.cfg.max_seq_len:
            raise LlmosError(f"{behaviour.id}'s prompt, suffix and target take {len(ids)} tokens, beyond the "
                             f"model's context of {self.model.cfg.max_seq_len}: use a shorter --suffix-tokens")
        as_tensor = lambda xs: torch.tensor(xs, dtype=torch.long, device=self.device)  # noqa: E731
        return as_tensor(prompt[:starts[0]]), as_tensor(prompt[starts[0] + L:]), as_tensor(reply)

    def message(self, behaviour: str, suffix: list[int]) -> str:
        return behaviour + SEPARATOR + self.tok.decode(suffix)

    def valid(self, suffixes: list[list[int]]) -> list[bool]:
        """Which suffixes encode back to their own ids after the separator and spell no special token."""
        texts = [self.tok.decode(s) for s in suffixes]
        encoded = self.tok.encode_batch([SEPARATOR + t for t in texts])
        return [e == self.separator_ids + list(s) and not any(sp in t for sp in self.spellings)
                for s, t, e in zip(suffixes, texts, encoded)]

    def _random_suffix(self, rng: random.Random) -> list[int]:
        """L random allowed tokens that are valid together as a suffix."""
        pool = self.allowed.nonzero().flatten().tolist()
        for _ in range(10_000):
            ids = rng.choices(pool, k=self.cfg.suffix_tokens)
            if self.valid([ids])[0]:
                return ids
        raise LlmosError(f"no random {self.cfg.suffix_tokens}-token suffix of this tokenizer encodes back to "
                         "itself: use a shorter --suffix-tokens")

    def gradient(self, suffix: list[int], active: int) -> torch.Tensor:
        """(L, V): d loss / d one-hot(suffix), the loss being the mean over active behaviours."""
        embed = self.model.embed.weight
        one_hot = F.one_hot(torch.tensor(suffix, device=self.device), embed.shape[0]).to(embed.dtype)
        one_hot.requires_grad_(True)
        suffix_embeds = one_hot @ embed
        total = 0.0
        for (_, after, target), prefix in zip(self.layouts[:active], self.prefixes):
            x = torch.cat([suffix_embeds, self.model.embed(torch.cat([after, target[:-1]]))])
            first = len(suffix) + len(after) - 1
            logits = _forward(self.model, prefix, x[None], torch.arange(first, first + len(target), device=self.device))
            total = total + F.cross_entropy(logits[0], target)
        (total / active).backward()
        return one_hot.grad

    @torch.no_grad()
    def losses(self, suffixes: torch.Tensor, active: int) -> torch.Tensor:
        """For (B, L) suffixes: the mean per-token target loss over active behaviours (B,)."""
        total = torch.zeros(len(suffixes), device=self.device)
        for (_, after, target), prefix in zip(self.layouts[:active], self.prefixes):
            first = suffixes.shape[1] + len(after) - 1
            positions = torch.arange(first, first + len(target), device=self.device)
            tail = torch.cat([after, target[:-1]])
            for rows in torch.split(torch.arange(len(suffixes), device=self.device), EVAL_ROWS):
                n = len(rows)
                ids = torch.cat([suffixes[rows], tail.expand(n, -1)], dim=1)
                logits = _forward(self.model, prefix, self.model.embed(ids), positions)
                loss = F.cross_entropy(logits.transpose(1, 2), target.expand(n, -1), reduction="none").mean(1)
                total[rows] += loss
        return total / active

    def broken(self, suffix: list[int], active: int) -> int:
        """How many active behaviours the suffix breaks (see the module docstring)."""
        from llmos.infer.engine import generate_batch
        from llmos.infer.sampling import SamplingParams
        from llmos.redteam.probes import is_refusal
        prompts = [before.tolist() + suffix + after.tolist() for before, after, _ in self.layouts[:active]]
        params = SamplingParams(max_tokens=CHECK_TOKENS, temperature=0.0, stop_ids=self.fmt.stop_ids)
        replies = [self.tok.decode(seq.tokens) for seq in generate_batch(self.model, prompts, params, self.tok)]
        return sum(reply.split()[:1] == b.target.split()[:1] and not is_refusal(reply)
                   for reply, b in zip(replies, self.behaviours))

    def candidates(self, suffix: list[int], grad: torch.Tensor, step: int) -> torch.Tensor:
        """(<= B, L) distinct valid single-token swaps of `suffix`, drawn from the top-k of -grad."""
        cfg = self.cfg
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        scores = (-grad.float()).masked_fill(~self.allowed, -torch.inf).cpu()
        top = scores.topk(min(cfg.top_k, int(self.allowed.sum())), dim=1).indices  # (L, k)
        positions = torch.randint(len(suffix), (cfg.candidates,), generator=g)
        picks = torch.randint(top.shape[1], (cfg.candidates,), generator=g)
        out = torch.tensor(suffix).repeat(cfg.candidates, 1)
        out[torch.arange(cfg.candidates), positions] = top[positions, picks]
        unique = list(dict.fromkeys(tuple(row) for row in out.tolist() if list(row) != suffix))
        kept = [list(c) for c, ok in zip(unique, self.valid([list(c) for c in unique])) if ok]
        return torch.tensor(kept, dtype=torch.long, device=self.device).reshape(-1, len(suffix))

    def step(self) -> dict:
        """One GCG step; returns the history entry it appends."""
        s, started = self.state, time.perf_counter()
        current, active = s["current"]["ids"], s["active"]
        grad = self.gradient(current, active)
        cands = self.candidates(current, grad, s["step"])
        if len(cands):
            losses = self.losses(cands, active)
            current, loss = cands[int(losses.argmin())].tolist(), float(losses.min())
        else:  # every swap was invalid: score the current suffix and move on to the next draw
            loss = float(self.losses(torch.tensor([current], device=self.device), active)[0])
        n_broken = self.broken(current, active)
        if self.cfg.progressive and n_broken == active and active < len(self.behaviours):
            active += 1  # every active behaviour is broken: add the next
            loss = float(self.losses(torch.tensor([current], device=self.device), active)[0])
            n_broken = self.broken(current, active)
        s["step"] += 1
        s["active"], s["current"] = active, {"ids": current, "loss": loss}
        best = s["best"]
        rank = (active, n_broken)  # progress first (behaviours joined, then broken), then the loss
        if best is None or rank > (best["active"], best["broken"]) or (rank == (best["active"], best["broken"])
                                                                        and loss < best["loss"]):
            s["best"] = {"ids": current, "text": self.tok.decode(current), "loss": loss, "active": active,
                         "broken": n_broken, "step": s["step"]}
        s["seconds"] += time.perf_counter() - started
        entry = {"step": s["step"], "loss": loss, "active": active, "broken": n_broken, "candidates": len(cands)}
        s["history"].append(entry)
        return entry


def _checkpoint(search: Gcg, ref: str) -> dict:
    s = search.state
    return {"model": ref, "tokenizer": search.tok.fingerprint(), "separator": SEPARATOR,
            "config": {k: v for k, v in asdict(search.cfg).items() if k in _SEARCH_KEYS},
            "behaviours": [b.id for b in search.behaviours],
            "suffix": {"ids": s["best"]["ids"], "text": s["best"]["text"]} if s["best"] else None,
            "control": s["control"], "state": s}


def load_suffix(path: str | Path) -> dict:
    """A suffix file written by `llmos gcg`, checked enough for the probes to use it."""
    data = read_json(path, "suffix file")
    if not isinstance(data, dict) or not isinstance(data.get("suffix"), dict) or "text" not in data["suffix"] \
            or not isinstance(data.get("control"), dict) or "separator" not in data:
        raise LlmosError(f"{path} is not a suffix file written by `llmos gcg` (or no step has finished yet)")
    return data


def _resume(search: Gcg, ref: str, out: Path) -> None:
    saved = read_json(out, "GCG checkpoint")
    fresh = _checkpoint(search, ref)
    for key in ("tokenizer", "config", "behaviours", "separator"):
        if not isinstance(saved, dict) or saved.get(key) != fresh[key]:
            raise LlmosError(f"{out} was written by a different search ({key} differs): use the same --model, "
                             "--behaviours and search options, or another --out")
    search.state = saved["state"]


def run_gcg(ref: str, behaviours: list[Behaviour], cfg: GcgConfig, out: str | Path, resume: bool = False,
            device: str | None = None, progress: bool = True) -> dict:
    """Search (or continue searching) for a universal suffix; returns the checkpoint dict written to `out`."""
    from tqdm import tqdm

    from llmos.chat import ChatFormat
    from llmos.load import open_model
    from llmos.perf import compute_dtype
    out = Path(out).expanduser()
    if out.exists() and not resume:
        raise LlmosError(f"{out} exists: add --resume to continue that search, or choose another --out")
    if resume and not out.exists():
        raise LlmosError(f"nothing to resume: {out} does not exist (drop --resume to start a search)")
    cfg.check()
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model, tok, info = open_model(ref, device)
    model.to(dtype=compute_dtype(device, cfg.dtype, compiled=False)).eval().requires_grad_(False)
    search = Gcg(model, tok, ChatFormat(tok, info.get("chat_template", "")), behaviours, cfg)
    if resume:
        _resume(search, str(ref), out)
    deadline = time.monotonic() + 60 * cfg.minutes if cfg.minutes else None
    state = search.state
    with tqdm(total=cfg.steps, initial=min(state["step"], cfg.steps), desc="gcg", unit="step",
              disable=not progress) as bar:
        while state["step"] < cfg.steps and (deadline is None or time.monotonic() < deadline):
            entry = search.step()
            write_json(out, _checkpoint(search, str(ref)))
            bar.update(1)
            bar.set_postfix(loss=f"{entry['loss']:.3f}", behaviours=entry["active"],
                            broken=f"{entry['broken']}/{entry['active']}")
    if state["best"] is None:
        raise LlmosError("no GCG step finished: raise --steps or --minutes")
    return _checkpoint(search, str(ref))

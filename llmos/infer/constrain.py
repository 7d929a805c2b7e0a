"""Constrained decoding: a generated reply that always parses as JSON and matches a JSON schema.

    c = Constraint.json_schema(tok, schema, end_ids=[fmt.end_of_turn_id])   # schema None: any JSON object
    while True:
        logits[~c.allowed(logits.shape[-1])] = float("-inf")               # before sampling
        token = sample(logits)
        if token in end_ids: break                                          # allowed only once the JSON is complete
        c.advance(token)
    error = schema_error(schema)        # None, or why the schema cannot be used (for a 400)

One Constraint per generated sequence. llguidance (a Rust library behind a Python module) compiles
the schema into a grammar and, at every step, computes which tokens can extend the text so far into
a document the schema accepts; `allowed` is that set over the model's rows, rows past the
tokenizer's vocabulary (a padded embedding) and special tokens never allowed. Once the document is
complete (`finished`) only `end_ids` remain; where it may end but could go on (a top-level number),
`end_ids` are allowed beside the tokens that continue it.

Whitespace is fixed, not free: items are separated by ", " and keys by ": " (what `json.dumps`
writes, and how llmos renders tool calls in training), and nothing else may sit between tokens.
Free whitespace would let a weak model emit blanks forever; a schema's own "x-guidance" options
cannot turn it back on. Strings, arrays and numbers are bounded only by the schema (maxLength,
maxItems, maximum); the engine's max_tokens bounds the rest.

llguidance needs a tokenizer of its own, built from the tokenizer.json text (no `transformers`);
building one takes a fraction of a second for a 49k vocabulary and is cached per Tokenizer object.
"""
from __future__ import annotations

import threading
import weakref

import llguidance
import numpy as np
import torch

from llmos.common import LlmosError
from llmos.tokenizer import Tokenizer

# Applied after the schema's own "x-guidance" options, so a request cannot loosen them.
JSON_OPTIONS = {"whitespace_flexible": False, "whitespace_pattern": None,
                "item_separator": ", ", "key_separator": ": "}
ANY_OBJECT = {"type": "object"}

_ll_tokenizers: weakref.WeakKeyDictionary[Tokenizer, llguidance.LLTokenizer] = weakref.WeakKeyDictionary()
_ll_tokenizers_lock = threading.Lock()


def ll_tokenizer(tok: Tokenizer) -> llguidance.LLTokenizer:
    """llguidance's view of `tok`, built once per Tokenizer object. Its own end-of-sequence token is
    never offered (Constraint adds the caller's end_ids itself), so which one it picks does not matter."""
    with _ll_tokenizers_lock:
        built = _ll_tokenizers.get(tok)
        if built is None:
            eos = tok.eos_id if tok.eos_id is not None else tok.bos_id
            built = llguidance.LLTokenizer(tok.hf.to_str(), eos_token=eos)
            _ll_tokenizers[tok] = built
        return built


def _grammar(schema: dict | None) -> str:
    """The llguidance grammar of a schema (None: any JSON object); ValueError if it is not a JSON object."""
    if schema is None:
        schema = ANY_OBJECT
    if not isinstance(schema, dict):
        raise ValueError(f"a JSON schema must be an object, not {type(schema).__name__}")
    return llguidance.LLMatcher.grammar_from_json_schema(schema, overrides=JSON_OPTIONS)


def schema_error(schema) -> str | None:
    """Why `schema` cannot constrain a reply (invalid, unsatisfiable, or using a keyword llguidance
    does not implement, such as `not` or `if`), in one line; None if it can."""
    try:
        grammar = _grammar(schema)
    except ValueError as e:
        return f"the JSON schema is not valid: {e}"
    message = llguidance.LLMatcher.validate_grammar(grammar)
    if message and not message.startswith("WARNING"):
        return "the JSON schema cannot be used: " + " ".join(message.split())
    return None


class Constraint:
    """The grammar state of one generated sequence (see the module docstring)."""

    def __init__(self, tok: Tokenizer, grammar: str, end_ids: list[int]):
        if not end_ids:
            raise ValueError("a constraint needs at least one end id to finish on")
        self._ll = ll_tokenizer(tok)
        self._matcher = llguidance.LLMatcher(self._ll, grammar, log_level=0)
        if self._matcher.is_error():
            raise LlmosError(" ".join(self._matcher.get_error().split()))
        self.end_ids = list(end_ids)
        self._ended = False  # an end id was consumed
        self._ll_eos = list(self._ll.eos_tokens)

    @classmethod
    def json_schema(cls, tok: Tokenizer, schema: dict | None, end_ids: list[int]) -> "Constraint":
        """JSON matching `schema`, or any JSON object when `schema` is None (json_object mode)."""
        error = schema_error(schema)
        if error:
            raise LlmosError(error)
        return cls(tok, _grammar(schema), end_ids)

    @property
    def finished(self) -> bool:
        """The document is complete: nothing but an end id may follow."""
        return self._ended or self._matcher.is_stopped()

    def _may_end(self) -> bool:
        return not self._ended and self._matcher.is_accepting()

    def allowed(self, vocab_size: int) -> torch.Tensor:
        """Bool (vocab_size,): True where the next token keeps the output valid."""
        mask = np.zeros(vocab_size, dtype=bool)  # built in numpy: torch's small copies cost 10x more here
        if not self.finished:
            if self._matcher.is_error():
                raise LlmosError("constrained decoding failed: " + " ".join(self._matcher.get_error().split()))
            bits = np.frombuffer(self._matcher.compute_bitmask(), dtype=np.uint8)
            n = min(self._ll.vocab_size, vocab_size)
            mask[:n] = np.unpackbits(bits, bitorder="little")[:n]  # llguidance: bit i%32 of word i//32
            mask[[i for i in self._ll_eos if i < vocab_size]] = False
        if self.finished or self._may_end():
            mask[[i for i in self.end_ids if i < vocab_size]] = True
        return torch.from_numpy(mask)

    def advance(self, token_id: int) -> None:
        """Consume a sampled (or forced) token; LlmosError if `allowed` would not have offered it."""
        if token_id in self.end_ids:
            if not (self.finished or self._may_end()):
                raise LlmosError(f"token {token_id} ends the reply, but the JSON is not complete yet")
            self._ended = True
            return
        if not 0 <= token_id < self._ll.vocab_size:
            raise LlmosError(f"token {token_id} is outside the tokenizer's vocabulary; the JSON schema allows none there")
        if self.finished or token_id in self._ll_eos or self._matcher.validate_tokens([token_id]) != 1:
            piece = self._ll.dbg_tokens([token_id])
            raise LlmosError(f"token {token_id} ({piece}) does not fit the JSON schema here")
        self._matcher.consume_token(token_id)

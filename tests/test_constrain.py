"""Constrained decoding (llmos/infer/constrain.py): a greedy decode of a random-weight model under a
JSON-schema constraint always yields JSON that parses and matches the schema, then only the end ids."""
from __future__ import annotations

import json

import pytest
import torch

from llmos.common import LlmosError
from llmos.infer.constrain import Constraint, ll_tokenizer, schema_error
from llmos.model import ModelConfig, Transformer
from llmos.params import read_metadata
from llmos.tokenizer import Tokenizer

END = 6  # <|assistant_end|> in llmos's tokenizers: where a native chat reply ends
EXTRA_ROWS = 64  # a model's vocab may be padded past the tokenizer's

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 12},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "color": {"enum": ["red", "green", "blue"]},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 6}, "minItems": 1, "maxItems": 3},
        "admin": {"type": "boolean"},
    },
    "required": ["name", "age", "color", "tags", "admin"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def tok(tokenizer_path) -> Tokenizer:
    tok = Tokenizer.load(tokenizer_path)
    assert tok.hf.id_to_token(END) == "<|assistant_end|>"
    return tok


def random_model(vocab_size: int, seed: int) -> Transformer:
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=vocab_size, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=256)
    return Transformer(cfg).eval()


def greedy(model: Transformer, prompt: list[int], constraint: Constraint, limit: int = 200) -> tuple[list[int], bool]:
    """(generated ids, whether an end id came) of an argmax decode over the allowed tokens."""
    cache, step, out = model.new_kv_cache(), list(prompt), []
    with torch.no_grad():
        while len(out) < limit:
            logits = model(torch.tensor([step]), kv_cache=cache)[0, -1]
            allowed = constraint.allowed(logits.shape[-1])
            token = int(logits.masked_fill(~allowed, float("-inf")).argmax())
            constraint.advance(token)
            if token in constraint.end_ids:
                return out, True
            step = [token]
            out.append(token)
    return out, False


def only_end_ids(constraint: Constraint, vocab_size: int) -> bool:
    allowed = constraint.allowed(vocab_size)
    return allowed.nonzero().flatten().tolist() == sorted(constraint.end_ids)


def check_person(value) -> None:
    """PERSON's constraints, checked field by field (jsonschema is not a dependency)."""
    assert isinstance(value, dict) and set(value) == set(PERSON["required"])
    assert isinstance(value["name"], str) and 1 <= len(value["name"]) <= 12
    assert type(value["age"]) is int and 0 <= value["age"] <= 150
    assert value["color"] in ("red", "green", "blue")
    assert isinstance(value["tags"], list) and 1 <= len(value["tags"]) <= 3
    assert all(isinstance(tag, str) and len(tag) <= 6 for tag in value["tags"])
    assert type(value["admin"]) is bool


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_greedy_decode_under_a_schema_parses_and_matches_it(tok, seed):
    model = random_model(tok.vocab_size + EXTRA_ROWS, seed)
    constraint = Constraint.json_schema(tok, PERSON, end_ids=[END])
    out, ended = greedy(model, tok.encode("Describe a person:", bos=True), constraint)
    text = tok.decode(out)
    assert ended, f"no end after {len(out)} tokens: {text!r}"
    check_person(json.loads(text))
    assert constraint.finished


def test_without_a_constraint_the_same_model_writes_no_json(tok):
    """The constraint, not the model, makes the JSON: unconstrained, the same decode is gibberish."""
    model = random_model(tok.vocab_size + EXTRA_ROWS, 0)
    ids = tok.encode("Describe a person:", bos=True)
    with torch.no_grad():
        for _ in range(30):
            ids.append(int(model(torch.tensor([ids]))[0, -1].argmax()))
    with pytest.raises(ValueError):
        json.loads(tok.decode(ids[-30:]))


def test_json_object_mode_writes_a_json_object(tok):
    finished = 0
    for seed in range(4):
        model = random_model(tok.vocab_size + EXTRA_ROWS, seed)
        constraint = Constraint.json_schema(tok, None, end_ids=[END])
        out, ended = greedy(model, tok.encode("Reply in JSON:", bos=True), constraint, limit=40)
        if ended:  # any object is allowed, so a random model may also nest or write a string for ever
            assert isinstance(json.loads(tok.decode(out)), dict)
            finished += 1
    assert finished >= 2


def test_separators_are_fixed_so_a_model_cannot_loop_in_whitespace(tok):
    schema = {"type": "object", "properties": {"word": {"type": "string", "pattern": "^[a-z]{1,8}$"},
                                               "n": {"type": "array", "items": {"type": "integer", "minimum": 0,
                                                                                "maximum": 9}, "maxItems": 4}},
              "required": ["word", "n"], "additionalProperties": False,
              "x-guidance": {"whitespace_flexible": True}}  # a request cannot turn free whitespace back on
    constraint = Constraint.json_schema(tok, schema, end_ids=[END])
    out, ended = greedy(random_model(tok.vocab_size, 3), tok.encode("JSON:", bos=True), constraint)
    text = tok.decode(out)
    assert ended
    assert text == json.dumps(json.loads(text))  # exactly json.dumps's ", " and ": ", no other blank


def test_once_complete_only_the_end_ids_are_allowed(tok):
    constraint = Constraint.json_schema(tok, {"type": "object", "properties": {}, "additionalProperties": False},
                                        end_ids=[END, tok.bos_id])
    assert not constraint.finished
    allowed = constraint.allowed(tok.vocab_size + EXTRA_ROWS)
    assert allowed[tok.encode("{")[0]] and not allowed[END] and not allowed[tok.vocab_size:].any()
    for token in tok.encode("{}"):
        constraint.advance(token)
    assert constraint.finished
    assert only_end_ids(constraint, tok.vocab_size + EXTRA_ROWS)
    with pytest.raises(LlmosError, match="does not fit"):
        constraint.advance(tok.encode(" ")[0])
    constraint.advance(END)
    assert only_end_ids(constraint, tok.vocab_size)


def test_a_document_that_may_end_or_go_on_allows_both(tok):
    constraint = Constraint.json_schema(tok, {"type": "integer", "minimum": 0, "maximum": 999}, end_ids=[END])
    constraint.advance(tok.encode("7")[0])
    allowed = constraint.allowed(tok.vocab_size)
    assert allowed[END] and allowed[tok.encode("5")[0]] and not constraint.finished


def test_advance_refuses_what_allowed_would_not_offer(tok):
    constraint = Constraint.json_schema(tok, PERSON, end_ids=[END])
    special = tok.token_id("<|user_end|>")
    assert not constraint.allowed(tok.vocab_size)[special]
    for token in (tok.encode("x")[0], special, tok.vocab_size + 3):
        with pytest.raises(LlmosError):
            constraint.advance(token)
    with pytest.raises(LlmosError, match="not complete"):
        constraint.advance(END)
    for token in tok.encode('{"name": "Al'):  # the refusals left the state as it was
        constraint.advance(token)
    assert not constraint.finished


def test_schema_error_names_what_is_wrong(tok):
    assert schema_error(PERSON) is None
    assert schema_error({"type": "string", "format": "date-time"}) is None
    assert "foo" in schema_error({"type": "foo"})
    assert "not" in schema_error({"not": {"type": "string"}})
    assert "minLength" in schema_error({"type": "string", "minLength": 5, "maxLength": 2})
    assert "object" in schema_error("{}") and "object" in schema_error([{"type": "string"}])
    with pytest.raises(LlmosError, match="Invalid type"):
        Constraint.json_schema(tok, {"type": "foo"}, end_ids=[END])


def test_the_llguidance_tokenizer_is_built_once_per_tokenizer(tok, tokenizer_path):
    assert ll_tokenizer(tok) is ll_tokenizer(tok)
    assert ll_tokenizer(Tokenizer.load(tokenizer_path)) is not ll_tokenizer(tok)


def test_smollm2s_tokenizer(smollm2_home):
    """The imported tokenizer (49k tokens, ChatML) under a random model with its vocabulary."""
    meta = read_metadata(smollm2_home / "models" / "smollm2-135m-instruct.llmos")
    roles = json.loads(meta["provenance"]).get("tokenizer_roles") or {}
    tok = Tokenizer.from_json(meta["tokenizer"], **roles)
    schema = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 8},
                                               "days": {"type": "integer", "minimum": 1, "maximum": 7}},
              "required": ["city", "days"], "additionalProperties": False}
    constraint = Constraint.json_schema(tok, schema, end_ids=[tok.eos_id])
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=tok.vocab_size, d_model=32, n_layers=1, n_heads=2, n_kv_heads=1,
                                    max_seq_len=64)).eval()
    out, ended = greedy(model, tok.encode("<|im_start|>user\nWeather?<|im_end|>\n"), constraint, limit=40)
    value = json.loads(tok.decode(out))
    assert ended and set(value) == {"city", "days"}
    assert isinstance(value["city"], str) and len(value["city"]) <= 8 and 1 <= value["days"] <= 7
    assert only_end_ids(constraint, tok.vocab_size)

"""`llmos serve` with real clients: the official `openai` package (plain, streaming, n > 1, stop, log-probs,
a forced tool-call round trip, a JSON schema), bad inputs answered with OpenAI-style 4xx bodies, the
API key, a full queue's 429, a client that hangs up, greedy equality under load, SIGTERM, and
schemathesis against /openapi.json (no 5xx). The model is tiny and random: real tokens, no meaning."""
import asyncio
import json
import re
import signal
import subprocess
import sys
import time

import pytest

from conftest import require
from serving import free_port, running_server, tiny_chat_model

httpx = require("httpx")
openai = require("openai")

USER = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def model_path(tokenizer_path, tmp_path_factory):
    # 1,024 positions: room for the tools prompt, which a 512-token vocabulary spells out long
    return tiny_chat_model(tmp_path_factory.mktemp("serve") / "tiny.llmos", tokenizer_path, max_seq_len=1024)


@pytest.fixture(scope="module")
def server(model_path, tmp_path_factory):
    log = tmp_path_factory.mktemp("serve_log") / "server.log"
    with running_server("--model", f"tiny={model_path}", "--model", str(model_path), log=log) as base:
        yield base


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server + "/v1", api_key="unused", max_retries=0)


def metrics(base: str) -> dict[str, float]:
    """The model "tiny"'s figures (and unlabelled ones) from /metrics, by name."""
    found = {}
    for name, labels, value in re.findall(r"^(llmos_\w+)(\{[^}]*\})? (\S+)$", httpx.get(base + "/metrics").text, re.M):
        if not labels or labels == '{model="tiny"}':
            found[name] = float(value)
    return found


def test_models_and_plain_chat(client, model_path):
    assert {m.id for m in client.models.list().data} == {"tiny", str(model_path)}
    reply = client.chat.completions.create(model="tiny", messages=USER, max_tokens=12, temperature=0)
    choice = reply.choices[0]
    assert choice.message.role == "assistant" and choice.finish_reason in ("stop", "length")
    assert reply.usage.completion_tokens > 0 and reply.usage.prompt_tokens > 5
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
    again = client.chat.completions.create(model=str(model_path), messages=USER, max_tokens=12, temperature=0)
    assert again.choices[0].message.content == choice.message.content  # one file, two names, one model


def test_streaming_matches_the_whole_reply(client):
    whole = client.chat.completions.create(model="tiny", messages=USER, max_tokens=20, temperature=0)
    chunks = list(client.chat.completions.create(model="tiny", messages=USER, max_tokens=20, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) > 1  # it streamed, in pieces
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == \
        [whole.choices[0].finish_reason]
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens and not chunks[-1].choices


def test_raw_stream_ends_with_done(server):
    with httpx.stream("POST", server + "/v1/completions", json={"model": "tiny", "prompt": "def", "max_tokens": 5,
                                                              "stream": True}) as r:
        lines = [line for line in r.iter_lines() if line]
    assert r.headers["content-type"].startswith("text/event-stream")
    assert all(line.startswith("data: ") for line in lines) and lines[-1] == "data: [DONE]"
    assert json.loads(lines[0][6:])["object"] == "text_completion"


def test_n_samples_with_a_seed(client):
    reply = client.chat.completions.create(model="tiny", messages=USER, max_tokens=10, temperature=1.0, n=3, seed=4)
    texts = [c.message.content for c in reply.choices]
    assert [c.index for c in reply.choices] == [0, 1, 2] and len(set(texts)) == 3
    again = client.chat.completions.create(model="tiny", messages=USER, max_tokens=10, temperature=1.0, n=3, seed=4)
    assert [c.message.content for c in again.choices] == texts
    streamed = list(client.chat.completions.create(model="tiny", messages=USER, max_tokens=10, temperature=1.0, n=3,
                                                   seed=4, stream=True))
    for i, text in enumerate(texts):
        assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices and c.choices[0].index == i) == text


def test_stop_sequences(client):
    free = client.completions.create(model="tiny", prompt="import os\n", max_tokens=30, temperature=0).choices[0].text
    stop = free[10:13]
    cut = client.completions.create(model="tiny", prompt="import os\n", max_tokens=30, temperature=0, stop=[stop])
    assert cut.choices[0].text == free[:free.index(stop)] and cut.choices[0].finish_reason == "stop"


def test_logprobs(client):
    reply = client.chat.completions.create(model="tiny", messages=USER, max_tokens=6, temperature=0, logprobs=True,
                                           top_logprobs=3)
    content = reply.choices[0].logprobs.content
    assert len(content) == reply.usage.completion_tokens
    for entry in content:
        assert entry.logprob <= 0 and len(entry.top_logprobs) == 3
        assert entry.logprob == pytest.approx(entry.top_logprobs[0].logprob)  # greedy takes the likeliest
        assert [t.logprob for t in entry.top_logprobs] == sorted((t.logprob for t in entry.top_logprobs), reverse=True)
    assert "".join(bytes(e.bytes).decode("utf-8", "replace") for e in content).replace("\ufffd", "") == \
        (reply.choices[0].message.content or "").replace("\ufffd", "")


WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "the weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 12},
                                                    "days": {"type": "integer", "minimum": 1, "maximum": 7}},
                   "required": ["city", "days"], "additionalProperties": False}}}


@pytest.mark.parametrize("stream", [False, True])
def test_forced_tool_call_round_trip(client, stream):
    choice = {"type": "function", "function": {"name": "get_weather"}}
    if stream:
        chunks = list(client.chat.completions.create(model="tiny", messages=USER, tools=[WEATHER], tool_choice=choice,
                                                     max_tokens=60, temperature=0, stream=True))
        deltas = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
        assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["tool_calls"]
        call_id, name, arguments = deltas[0].id, deltas[0].function.name, deltas[0].function.arguments
    else:
        reply = client.chat.completions.create(model="tiny", messages=USER, tools=[WEATHER], tool_choice=choice,
                                               max_tokens=60, temperature=0)
        assert reply.choices[0].finish_reason == "tool_calls"
        call = reply.choices[0].message.tool_calls[0]
        call_id, name, arguments = call.id, call.function.name, call.function.arguments
    args = json.loads(arguments)
    assert name == "get_weather" and set(args) == {"city", "days"} and 1 <= args["days"] <= 7
    assert isinstance(args["city"], str) and len(args["city"]) <= 12
    follow = USER + [{"role": "assistant", "content": None, "tool_calls": [
        {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}]},
        {"role": "tool", "tool_call_id": call_id, "content": json.dumps({"temperature_c": 18})}]
    final = client.chat.completions.create(model="tiny", messages=follow, tools=[WEATHER], max_tokens=8, temperature=0)
    assert final.choices[0].finish_reason in ("stop", "length", "tool_calls")
    assert final.usage.prompt_tokens > 20  # the call and its result were rendered into the prompt


def test_response_format_json_schema(client):
    schema = {"type": "object", "properties": {"answer": {"type": "string", "maxLength": 20},
                                               "confidence": {"type": "integer", "minimum": 0, "maximum": 100},
                                               "tags": {"type": "array", "items": {"enum": ["geo", "fact"]},
                                                        "maxItems": 2}},
              "required": ["answer", "confidence", "tags"], "additionalProperties": False}
    for seed in range(3):
        reply = client.chat.completions.create(model="tiny", messages=USER, max_tokens=80, temperature=1.0, seed=seed,
                                               response_format={"type": "json_schema",
                                                                "json_schema": {"name": "a", "schema": schema}})
        data = json.loads(reply.choices[0].message.content)
        assert set(data) == {"answer", "confidence", "tags"} and 0 <= data["confidence"] <= 100
        assert len(data["answer"]) <= 20 and set(data["tags"]) <= {"geo", "fact"} and len(data["tags"]) <= 2


def error_of(response) -> dict:
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    assert response.headers.get("x-request-id")
    return body["error"]


@pytest.mark.parametrize("body, status, param, words", [
    (b'{"model": "tiny", "messages": [', 400, None, "not valid JSON"),
    ({"model": "nope", "messages": USER}, 404, "model", "does not exist here"),
    ({"model": "tiny", "messages": "hi"}, 400, "messages", "messages"),
    ({"model": "tiny", "messages": [{"role": "wizard", "content": "x"}]}, 400, "messages.0.role", "role"),
    ({"model": "tiny", "messages": USER, "max_tokens": -5}, 400, "max_tokens", "greater than or equal to 1"),
    ({"model": "tiny", "messages": USER, "max_tokens": 10 ** 9}, 400, "max_tokens", "less than or equal"),
    ({"model": "tiny", "messages": USER, "max_tokens": 5000}, 400, "max_tokens", "context is 1024 tokens"),
    ({"model": "tiny", "messages": USER, "temperature": "hot"}, 400, "temperature", "valid number"),
    ({"model": "tiny", "messages": USER, "n": 1000}, 400, "n", "less than or equal to 16"),
    ({"model": "tiny", "messages": USER, "logit_bias": {"x": 1}}, 400, None, "not a token id"),
    ({"model": "tiny", "messages": USER, "tool_choice": {"type": "function", "function": {"name": "f"}},
      "tools": [WEATHER]}, 400, "tool_choice", "not in tools"),
    ({"model": "tiny", "messages": USER, "response_format": {"type": "json_schema",
                                                             "json_schema": {"name": "x", "schema": {"not": {}}}}},
     400, "response_format", "response_format"),
    ({"model": "tiny", "messages": [{"role": "user", "content": "word " * 1200}]}, 400, "messages", "context is 1024"),
])
def test_bad_requests_get_openai_errors(server, body, status, param, words):
    kwargs = {"content": body, "headers": {"content-type": "application/json"}} if isinstance(body, bytes) else {"json": body}
    r = httpx.post(server + "/v1/chat/completions", **kwargs)
    error = error_of(r)
    assert r.status_code == status and words in error["message"], error
    if param:
        assert error["param"] == param, error


def test_prompt_over_the_context_names_both_lengths(server):
    r = httpx.post(server + "/v1/completions", json={"model": "tiny", "prompt": "word " * 1200})
    assert r.status_code == 400 and re.search(r"prompt has \d+ tokens but this model's context is 1024", error_of(r)["message"])


def test_body_size_limit_and_unknown_routes(server):
    big = httpx.post(server + "/v1/completions", content=b"x" * (5 << 20), headers={"content-type": "application/json"})
    assert big.status_code == 413 and "limit" in error_of(big)["message"]
    assert httpx.get(server + "/v1/nothing").status_code == 404


def test_api_key_is_required_when_set(model_path):
    with running_server("--model", f"tiny={model_path}", "--api-key", "s3cret") as base:
        assert httpx.get(base + "/v1/models").status_code == 401
        wrong = httpx.post(base + "/v1/chat/completions", json={"model": "tiny", "messages": USER},
                           headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and error_of(wrong)["code"] == "invalid_api_key"
        assert httpx.get(base + "/metrics").status_code == 401
        ok = openai.OpenAI(base_url=base + "/v1", api_key="s3cret", max_retries=0)
        assert ok.chat.completions.create(model="tiny", messages=USER, max_tokens=3).choices
        assert httpx.get(base + "/health").status_code == 200  # the page and health stay open


def test_full_queue_answers_429_with_retry_after(model_path):
    with running_server("--model", f"tiny={model_path}", "--max-batch", "1", "--max-queue", "1") as base:
        async def flood():
            async with httpx.AsyncClient(timeout=120) as c:
                body = {"model": "tiny", "prompt": "x", "max_tokens": 200, "temperature": 0}
                return await asyncio.gather(*[c.post(base + "/v1/completions", json=body) for _ in range(8)])
        replies = asyncio.run(flood())
        refused = [r for r in replies if r.status_code == 429]
        assert refused and all(int(r.headers["retry-after"]) >= 1 for r in refused)
        assert error_of(refused[0])["type"] == "rate_limit_error"
        assert any(r.status_code == 200 for r in replies)
        assert metrics(base)["llmos_requests_refused_total"] == len(refused)


def test_a_client_that_hangs_up_frees_its_slot_at_the_next_step(server):
    before = metrics(server)
    with httpx.stream("POST", server + "/v1/completions", json={"model": "tiny", "prompt": "x", "max_tokens": 250,
                                                              "temperature": 0, "stream": True}) as r:
        for i, _ in enumerate(r.iter_lines()):
            if i > 3:
                break  # hang up mid-stream
    for _ in range(200):
        after = metrics(server)
        if after["llmos_running_sequences"] == 0:
            break
        time.sleep(0.05)
    assert after["llmos_running_sequences"] == 0
    assert after["llmos_cancel_free_steps_max"] <= 1  # counted in engine steps, not seconds
    assert after["llmos_generation_tokens_total"] - before["llmos_generation_tokens_total"] < 250


def test_greedy_replies_are_the_same_alone_and_among_fifteen(server):
    prompts = [f"{i} little pigs said" for i in range(16)]
    alone = [httpx.post(server + "/v1/completions", json={"model": "tiny", "prompt": p, "max_tokens": 24,
                                                          "temperature": 0}).json()["choices"][0]["text"] for p in prompts]

    async def together():
        async with httpx.AsyncClient(timeout=120) as c:
            return await asyncio.gather(*[c.post(server + "/v1/completions", json={
                "model": "tiny", "prompt": p, "max_tokens": 24, "temperature": 0}) for p in prompts])
    batched = [r.json()["choices"][0]["text"] for r in asyncio.run(together())]
    assert batched == alone


def test_speculative_decoding_keeps_greedy_replies(server):
    """Alone, a greedy request is decoded with prompt-lookup drafts; as two samples (n=2) it is not
    (speculation runs only for a lone sequence): the replies must be the same text."""
    body = {"model": "tiny", "prompt": "a b a b a b a b a b", "max_tokens": 40, "temperature": 0}  # its reply loops
    drafted = metrics(server)["llmos_draft_tokens_total"]
    alone = httpx.post(server + "/v1/completions", json=body).json()["choices"][0]["text"]
    assert metrics(server)["llmos_draft_tokens_total"] > drafted
    pair = httpx.post(server + "/v1/completions", json={**body, "n": 2}).json()["choices"]
    assert [c["text"] for c in pair] == [alone, alone]


def test_metrics_and_request_ids(server):
    r = httpx.post(server + "/v1/chat/completions", json={"model": "tiny", "messages": USER, "max_tokens": 3},
                   headers={"X-Request-Id": "trace-me-42"})
    assert r.headers["x-request-id"] == "trace-me-42" and r.json()["id"].endswith("trace-me-42")
    text = httpx.get(server + "/metrics").text
    for name in ("llmos_requests_total", "llmos_generation_tokens_total", "llmos_time_to_first_token_seconds_bucket",
                 "llmos_queue_length", "llmos_running_sequences", "llmos_prefix_cache_hit_rate"):
        assert name in text, name


def test_sigterm_finishes_the_running_stream(model_path, tmp_path):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "llmos.cli", "serve", "--model", f"tiny={model_path}", "--port",
                             str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                if httpx.get(base + "/health").status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        with httpx.stream("POST", base + "/v1/completions", json={"model": "tiny", "prompt": "x", "max_tokens": 200,
                                                                "temperature": 0, "stream": True}, timeout=120) as r:
            lines = []
            for line in filter(None, r.iter_lines()):
                lines.append(line)
                if len(lines) == 3:
                    proc.send_signal(signal.SIGTERM)
        assert lines[-1] == "data: [DONE]"
        text = "".join(json.loads(x[6:])["choices"][0]["text"] for x in lines if x.startswith("data: {"))
        assert len(text) > 0
        # uvicorn re-raises the signal once it has drained, so the exit status says "ended by SIGTERM"
        assert proc.wait(timeout=60) in (0, -signal.SIGTERM)
        with pytest.raises(httpx.ConnectError):
            httpx.get(base + "/health")
    finally:
        if proc.poll() is None:
            proc.kill()


def test_schemathesis_finds_no_server_error(server, tmp_path):
    require("schemathesis")
    done = subprocess.run([sys.executable, "-m", "schemathesis.cli", "run", server + "/openapi.json",
                           "--checks", "not_a_server_error", "--max-examples", "25", "--seed", "1",
                           "--request-timeout", "60", "--suppress-health-check", "all"],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]

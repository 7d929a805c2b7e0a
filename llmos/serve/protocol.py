"""The OpenAI request bodies the server accepts, as pydantic models (they also write /openapi.json).

    body = ChatCompletionRequest.model_validate(json)    # ValidationError -> a 400 naming the field
    params = sampling_params(body, default_max_tokens=..., stop_ids=fmt.stop_ids)

Bounds live in the field declarations, so a client (or schemathesis) reads them from the schema and
the server refuses anything outside them with a 400 before any work. llmos extensions beside
OpenAI's fields: `top_k` and `repetition_penalty`, and `best_of` in chat requests too. Unknown fields are ignored, as OpenAI does.
"""
from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field

from llmos.common import LlmosError
from llmos.infer.sampling import MAX_TOP_LOGPROBS, SamplingParams

MAX_N = 16  # samples per request (the engine's default batch)
MAX_STOP = 4  # stop strings per request, as OpenAI
MAX_TOKENS_LIMIT = 1 << 20  # any larger request is refused by the schema; the context refuses smaller ones


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class FunctionCall(BaseModel):
    name: str
    arguments: str = "{}"


class ToolCall(BaseModel):
    id: str | None = None
    type: Literal["function"] = "function"
    function: FunctionCall


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Union[str, list[TextPart], None] = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None

    def as_chat_message(self) -> dict:
        """The dict form llmos.chat renders (a developer message is a system message)."""
        content = self.content
        if isinstance(content, list):
            content = "".join(part.text for part in content)
        out: dict[str, Any] = {"role": "system" if self.role == "developer" else self.role, "content": content}
        if self.tool_calls:
            out["tool_calls"] = [{"type": "function", "function": {"name": c.function.name,
                                                                   "arguments": c.function.arguments}}
                                 for c in self.tool_calls]
        if self.role == "tool" and self.tool_call_id:
            out["tool_call_id"] = self.tool_call_id
        return out


class StreamOptions(BaseModel):
    include_usage: bool = False


class JsonSchemaFormat(BaseModel):
    name: str = "response"
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None
    description: str | None = None


class ResponseFormat(BaseModel):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


Stop = Union[Annotated[str, Field(min_length=1)], Annotated[list[Annotated[str, Field(min_length=1)]],
                                                            Field(max_length=MAX_STOP)], None]


class SamplingFields(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str
    max_tokens: Annotated[int, Field(ge=1, le=MAX_TOKENS_LIMIT)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    top_k: Annotated[int, Field(ge=0)] | None = None
    repetition_penalty: Annotated[float, Field(gt=0, le=10)] | None = None
    presence_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    frequency_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    logit_bias: dict[str, Annotated[float, Field(ge=-100, le=100)]] | None = None
    n: Annotated[int, Field(ge=1, le=MAX_N)] | None = None
    stop: Stop = None
    seed: Annotated[int, Field(ge=-(1 << 63), lt=1 << 63)] | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    user: str | None = None


class ChatCompletionRequest(SamplingFields):
    messages: Annotated[list[Message], Field(min_length=1)]
    max_completion_tokens: Annotated[int, Field(ge=1, le=MAX_TOKENS_LIMIT)] | None = None
    logprobs: bool | None = False
    top_logprobs: Annotated[int, Field(ge=0, le=MAX_TOP_LOGPROBS)] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: Union[Literal["none", "auto", "required"], dict[str, Any], None] = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    reasoning_effort: Literal["minimal", "low", "medium", "high"] | None = None  # llmos/serve/reasoning.py
    best_of: Annotated[int, Field(ge=1, le=MAX_N)] | None = None  # sample this many, return the n best


class CompletionRequest(SamplingFields):
    prompt: Union[str, Annotated[list[int], Field(min_length=1)]]
    logprobs: Annotated[int, Field(ge=0, le=MAX_TOP_LOGPROBS)] | None = None  # the legacy API: top alternatives
    echo: bool | None = False
    suffix: str | None = None


def stop_list(stop: Stop) -> list[str]:
    return [] if stop is None else [stop] if isinstance(stop, str) else list(stop)


def sampling_params(body: SamplingFields, max_tokens: int, stop_ids: list[int], vocab_size: int,
                    logprobs: bool, top_logprobs: int) -> SamplingParams:
    """The engine's settings for a request; OpenAI's defaults (temperature 1, top_p 1) where absent."""
    bias = {}
    for key, value in (body.logit_bias or {}).items():
        try:
            token = int(key)
        except ValueError:
            raise LlmosError(f"logit_bias: {key!r} is not a token id (keys are token ids as strings)") from None
        bias[token] = value
    params = SamplingParams(
        max_tokens=max_tokens,
        temperature=1.0 if body.temperature is None else body.temperature,
        top_p=1.0 if body.top_p is None else body.top_p,
        top_k=body.top_k or 0,
        repetition_penalty=body.repetition_penalty or 1.0,
        presence_penalty=body.presence_penalty or 0.0,
        frequency_penalty=body.frequency_penalty or 0.0,
        logit_bias=bias, stop=stop_list(body.stop), stop_ids=list(stop_ids), seed=body.seed,
        logprobs=logprobs, top_logprobs=top_logprobs)
    return params.check(vocab_size=vocab_size)

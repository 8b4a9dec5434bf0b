"""OpenAI API request models (pydantic only, no I/O), and the body parser that turns a request's bytes into one.

Requests validate the fields the gateway reads or translates and keep every other field
(`extra="allow"`), so provider options such as Ollama's `options` or `keep_alive` reach the backend.
Responses are built as plain dicts by the backends (cheaper than models on the hot path) in
OpenAI's documented shape.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypeVar

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from gateway.errors import InvalidRequest
from gateway.protocol.schema_budget import check_schema_budget

Role = Literal["system", "developer", "user", "assistant", "tool", "function"]
M = TypeVar("M", bound=BaseModel)
# Inputs whose cost to a backend is not linear in their size are bounded here (JSON schemas: schema_budget.py).
MAX_STOP_SEQUENCES = 16
MAX_STOP_CHARS = 500
MAX_TOOLS = 128
# Bounds on the rest (the body is also capped: GATEWAY_MAX_BODY_BYTES); the deployment's own output cap
# (GATEWAY_MAX_OUTPUT_TOKENS, gateway/access/bounds.py) is written into the served schema as well.
MAX_MESSAGES = 4096
MAX_CONTENT_PARTS = 256
MAX_TOOL_CALLS = 128
MAX_TOKENS = 1_048_576  # no model's context is larger
MAX_N = 16
MAX_EMBEDDING_INPUTS = 2048  # OpenAI's own limit
MAX_DIMENSIONS = 65_536
MAX_NAME_CHARS = 256
MAX_PROMPTS = 2048
INT64 = 2**63 - 1
StopSequence = Annotated[str, Field(max_length=MAX_STOP_CHARS)]
ShortText = Annotated[str, Field(max_length=MAX_NAME_CHARS)]
TokenId = Annotated[int, Field(ge=0, le=2**31 - 1)]


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow", allow_inf_nan=False)


class ChatMessage(_Open):
    """A system, developer, user or tool message needs content; an assistant message may carry tool_calls instead."""

    model_config = ConfigDict(
        json_schema_extra={
            "anyOf": [
                {"properties": {"role": {"const": "assistant"}}},
                {"required": ["content"]},  # and not null
                {"required": ["tool_calls"]},  # and not empty
            ]
        }
    )

    role: Role
    content: str | Annotated[list[dict[str, Any]], Field(max_length=MAX_CONTENT_PARTS)] | None = None
    name: ShortText | None = None
    tool_calls: list[dict[str, Any]] | None = Field(None, max_length=MAX_TOOL_CALLS)
    tool_call_id: ShortText | None = None

    @model_validator(mode="after")
    def _content_or_tool_calls(self) -> ChatMessage:
        if self.content is None and not self.tool_calls and self.role != "assistant":
            raise ValueError(f"a {self.role} message needs content")
        return self


class StreamOptions(_Open):
    include_usage: bool = False


class SamplingFields(_Open):
    model: str = Field(min_length=1, max_length=256)
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    max_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS, description="At most the gateway's output cap.")
    n: int = Field(1, ge=1, le=MAX_N)
    stop: StopSequence | Annotated[list[StopSequence], Field(max_length=MAX_STOP_SEQUENCES)] | None = Field(
        None, description=f"Up to {MAX_STOP_SEQUENCES} sequences of at most {MAX_STOP_CHARS} characters."
    )
    seed: int | None = Field(None, ge=-INT64 - 1, le=INT64)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    user: ShortText | None = None

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def stop_list(self) -> list[str] | None:
        if self.stop is None:
            return None
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)


class ChatCompletionRequest(SamplingFields):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"model": "smollm2:135m", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8}]
        }
    )

    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    max_completion_tokens: int | None = Field(
        None, ge=1, le=MAX_TOKENS, description="At most the gateway's output cap."
    )
    tools: list[dict[str, Any]] | None = Field(None, max_length=MAX_TOOLS)
    tool_choice: Literal["none", "auto", "required"] | dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None

    @field_validator("response_format")
    @classmethod
    def _bounded_schema(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        if v is not None and v.get("type") == "json_schema":
            spec = v.get("json_schema")
            check_schema_budget(spec.get("schema") if isinstance(spec, dict) else None, what="json_schema.schema")
        return v

    @field_validator("tools")
    @classmethod
    def _bounded_tool_schemas(cls, v: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
        for i, tool in enumerate(v or ()):
            function = tool.get("function") if isinstance(tool, dict) else None
            if isinstance(function, dict):
                check_schema_budget(function.get("parameters"), what=f"tools[{i}].function.parameters")
        return v

    @property
    def output_cap(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class CompletionRequest(SamplingFields):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"model": "smollm2:135m", "prompt": "Hi", "max_tokens": 8}]}
    )

    prompt: Annotated[str, Field(min_length=1)] | Annotated[list[str], Field(min_length=1, max_length=MAX_PROMPTS)] = (
        Field(description="A prompt, or a batch of them (OpenAI-compatible servers; Ollama takes one).")
    )
    suffix: str | None = None
    echo: bool = False

    @property
    def output_cap(self) -> int | None:
        return self.max_tokens

    def single_prompt(self) -> str:
        if isinstance(self.prompt, str):
            return self.prompt
        if len(self.prompt) != 1:
            raise InvalidRequest("batched prompts are not supported; send one prompt per request", param="prompt")
        return self.prompt[0]


class EmbeddingRequest(_Open):
    model_config = ConfigDict(json_schema_extra={"examples": [{"model": "smollm2:135m", "input": "Hi"}]})

    model: str = Field(min_length=1, max_length=256)
    input: (
        Annotated[str, Field(min_length=1)]
        | Annotated[list[str], Field(min_length=1, max_length=MAX_EMBEDDING_INPUTS)]
        | Annotated[list[TokenId], Field(min_length=1, max_length=MAX_TOKENS)]
        | Annotated[
            list[Annotated[list[TokenId], Field(min_length=1, max_length=MAX_TOKENS)]],
            Field(min_length=1, max_length=MAX_EMBEDDING_INPUTS),
        ]
    ) = Field(description=f"Text, up to {MAX_EMBEDDING_INPUTS} texts, or token ids (OpenAI-compatible servers only).")
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1, le=MAX_DIMENSIONS)
    user: ShortText | None = None

    def texts(self) -> list[str]:
        if isinstance(self.input, str):
            return [self.input]
        if all(isinstance(x, str) for x in self.input):
            return list(self.input)  # type: ignore[arg-type]
        raise InvalidRequest("token-id input is not supported; send text", param="input")


GenerationRequest = ChatCompletionRequest | CompletionRequest
InferenceRequest = ChatCompletionRequest | CompletionRequest | EmbeddingRequest


# A value of the wrong kind for one branch of a union (a list where `stop` also takes a string): the other
# branch's error says more.
_KIND_MISMATCH = {"string_type", "list_type", "int_type", "float_type", "bool_type", "dict_type", "model_type"}
_UNION_TAGS = {"str", "int", "float", "bool", "list", "dict"}


def _field_path(loc: tuple[object, ...]) -> str:
    """The field's dotted path, without pydantic's union branch tags (`constrained-str`, `list[int]`, ...)."""
    return ".".join(
        str(p)
        for p in loc
        if not (isinstance(p, str) and ("[" in p or "-" in p or p in _UNION_TAGS or p.startswith("function-")))
    )


def first_error(errors: list[Any]) -> tuple[str | None, str]:
    """(field path, message) of the error to report: the first, unless it only says which union branch the
    value is not."""
    pick = next((e for e in errors if e["type"] not in _KIND_MISMATCH), errors[0]) if errors else None
    if pick is None:
        return None, "invalid request"
    return _field_path(tuple(p for p in pick["loc"] if p != "body")) or None, pick["msg"]


def parse_request(raw: bytes, model: type[M]) -> M:
    """A request body -> `model`, with OpenAI-style 400s that name the offending field."""
    if not raw:
        raise InvalidRequest("request body is empty; expected a JSON object")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidRequest("request body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        field, message = first_error(exc.errors(include_url=False))
        raise InvalidRequest(f"{field or 'body'}: {message}", param=field) from None

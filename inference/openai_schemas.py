"""The OpenAI chat-completions wire format: request validation, responses, stream chunks, errors.

Shared by the HTTP server and the batch runner so both answer byte-for-byte alike. Requests
are validated strictly (no "10" for an int) and unknown fields are refused, as OpenAI does;
parameters we do not implement are accepted only at their neutral value.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from inference.engine_types import GenerationRequest, GenerationResult, SamplingParams
from inference.hooks import CompletionChoice, CompletionRecord
from inference.loading import ModelIdentity

MAX_STOP_SEQUENCES = 4
INT64 = 2**63


def require_unicode(value: str) -> str:
    """Refuse a lone UTF-16 surrogate (valid JSON as "\\ud800", but no UTF-8 text can hold it):
    the tokenizer, the trace store and every UTF-8 writer downstream would fail on it."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"text must be valid Unicode: a lone surrogate at character {exc.start}") from None
    return value


def printable(text: str) -> str:
    """`text` with lone surrogates escaped, so an error message quoting user input stays encodable."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class TextContentPart(_Request):
    type: Literal["text"]
    text: str


class ChatMessage(_Request):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextContentPart]
    name: str | None = Field(None, max_length=64)

    @field_validator("content")
    @classmethod
    def _content_is_unicode(cls, value: str | list[TextContentPart]) -> str | list[TextContentPart]:
        for text in [value] if isinstance(value, str) else [part.text for part in value]:
            require_unicode(text)
        return value

    @field_validator("name")
    @classmethod
    def _name_is_unicode(cls, value: str | None) -> str | None:
        return value if value is None else require_unicode(value)

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class StreamOptions(_Request):
    include_usage: bool = False


class ChatCompletionRequest(_Request):
    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    n: int | None = Field(None, ge=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=-INT64, lt=INT64)
    metadata: dict[str, str] | None = None
    user: str | None = None
    # Accepted for compatibility, only at their neutral value (anything else is a 400).
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    logprobs: bool | None = None

    @field_validator("stop")
    @classmethod
    def _stops(cls, value: str | list[str] | None) -> str | list[str] | None:
        stops = [value] if isinstance(value, str) else value or []
        if len(stops) > MAX_STOP_SEQUENCES:
            raise ValueError(f"at most {MAX_STOP_SEQUENCES} stop sequences")
        if any(not stop for stop in stops):
            raise ValueError("stop sequences must not be empty")
        for stop in stops:
            require_unicode(stop)
        return value

    @field_validator("model", "user")
    @classmethod
    def _unicode(cls, value: str | None) -> str | None:
        return value if value is None else require_unicode(value)

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        if value is not None and (len(value) > 16 or any(len(k) > 64 or len(v) > 512 for k, v in value.items())):
            raise ValueError("metadata holds at most 16 pairs, keys up to 64 and values up to 512 characters")
        for key, item in (value or {}).items():
            require_unicode(key)
            require_unicode(item)
        return value

    @model_validator(mode="after")
    def _neutral_only(self) -> "ChatCompletionRequest":
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(self, name) not in (None, 0, 0.0):
                raise ValueError(f"{name} is not supported by this node (only 0)")
        if self.logprobs:
            raise ValueError("logprobs is not supported by this node")
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options is only allowed when stream is true")
        return self

    @property
    def stops(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    @property
    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    @property
    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)

    def to_generation_request(self, capture_hidden: bool = False) -> GenerationRequest:
        params = SamplingParams(
            max_tokens=self.requested_max_tokens,
            temperature=1.0 if self.temperature is None else self.temperature,
            top_p=1.0 if self.top_p is None else self.top_p,
            n=self.n or 1,
            stop=self.stops,
            seed=self.seed,
        )
        # developer is OpenAI's newer name for system
        messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in self.messages]
        return GenerationRequest(messages=messages, params=params, capture_hidden=capture_hidden)


# ---------------------------------------------------------------- responses
class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ResponseMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    index: int
    message: ResponseMessage
    finish_reason: str
    logprobs: None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    system_fingerprint: str
    choices: list[Choice]
    usage: Usage


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "swarmloop"
    version: str
    weights_sha256: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


def error_body(message: str, type_: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    # message and param can quote the request (an unknown key, a model name): keep them encodable
    return {"error": {"message": printable(message), "type": type_,
                      "param": printable(param) if param is not None else None, "code": code}}


def new_completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


def fingerprint(identity: ModelIdentity) -> str:
    return f"swarmloop-{identity.version}-{identity.weights_sha256[:12]}"


def model_aliases(identity: ModelIdentity) -> set[str]:
    """Names a client may use for the served model: its ref, its short name, its version."""
    ref = identity.ref
    short = ref.split(":", 1)[1] if ":" in ref and not ref.startswith("/") else ref
    short = short.split("@", 1)[0].rstrip("/").rsplit("/", 1)[-1]
    return {ref, short, identity.version}


def usage_of(result: GenerationResult) -> Usage:
    return Usage(prompt_tokens=result.prompt_tokens, completion_tokens=result.completion_tokens,
                 total_tokens=result.prompt_tokens + result.completion_tokens)


def completion_response(result: GenerationResult, completion_id: str) -> ChatCompletion:
    return ChatCompletion(
        id=completion_id,
        created=result.created,
        model=result.identity.ref,
        system_fingerprint=fingerprint(result.identity),
        choices=[Choice(index=c.index, message=ResponseMessage(content=c.text), finish_reason=c.finish_reason)
                 for c in result.choices],
        usage=usage_of(result),
    )


def stream_chunk(completion_id: str, created: int, identity: ModelIdentity, choices: list[dict[str, Any]],
                 include_usage: bool, usage: Usage | None = None) -> dict[str, Any]:
    chunk: dict[str, Any] = {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": identity.ref,
        "system_fingerprint": fingerprint(identity),
        "choices": choices,
    }
    if include_usage:  # OpenAI sends usage: null on every chunk but the last one
        chunk["usage"] = usage.model_dump() if usage is not None else None
    return chunk


_PRIVATE_HEADERS = {"authorization", "cookie", "proxy-authorization", "x-api-key", "openai-organization", "openai-project"}


def completion_record(request: ChatCompletionRequest, result: GenerationResult, completion_id: str,
                      headers: dict[str, str] | None = None, streamed: bool = False) -> CompletionRecord:
    """What the capture hook receives; credentials in headers are never passed on."""
    return CompletionRecord(
        completion_id=completion_id,
        created=result.created or int(time.time()),
        request=request.model_dump(mode="json", exclude_none=True),
        headers={k.lower(): v for k, v in (headers or {}).items() if k.lower() not in _PRIVATE_HEADERS},
        choices=[CompletionChoice(index=c.index, text=c.text, finish_reason=c.finish_reason,
                                  completion_tokens=c.completion_tokens) for c in result.choices],
        prompt_tokens=result.prompt_tokens,
        completion_tokens=result.completion_tokens,
        latency_s=result.latency_s,
        time_to_first_token_s=result.time_to_first_token_s,
        model_ref=result.identity.ref,
        model_version=result.identity.version,
        weights_sha256=result.identity.weights_sha256,
        streamed=streamed,
    )

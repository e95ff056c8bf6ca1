"""The seam between the node server and trace capture.

The server builds a CompletionRecord for every finished chat completion and hands it to the
configured CaptureHook, which must return at once (it writes off the request path). The hook
may bring its own HTTP routes (e.g. POST /v1/feedback), which the server mounts.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from pydantic import BaseModel, Field


class CompletionChoice(BaseModel):
    index: int
    text: str
    finish_reason: str                         # stop | length | cancelled
    completion_tokens: int = 0


class CompletionRecord(BaseModel):
    completion_id: str                         # the `id` returned to the client ("chatcmpl-…")
    created: int                               # unix seconds
    request: dict[str, Any]                    # the validated request body (messages, sampling params, metadata)
    headers: dict[str, str] = Field(default_factory=dict)   # lower-cased request headers
    choices: list[CompletionChoice]
    prompt_tokens: int
    completion_tokens: int
    latency_s: float
    time_to_first_token_s: float | None = None
    model_ref: str
    model_version: str
    weights_sha256: str
    streamed: bool = False
    # Filled only when activation proofs are on (integrity issue): opaque per-choice payloads.
    proofs: list[dict[str, Any]] | None = None


@runtime_checkable
class CaptureHook(Protocol):
    def on_completion(self, record: CompletionRecord) -> None:
        """Called once per finished completion. Must not block on disk."""

    def routes(self) -> list[Any]:
        """FastAPI APIRouters to mount on the server (may be empty)."""

    def close(self) -> None:
        """Flush and stop; called on server shutdown."""

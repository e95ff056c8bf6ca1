"""The seam between the node server and trace capture.

The server builds a CompletionRecord for every finished chat completion and hands it to the
configured CaptureHook, which must return at once (it writes off the request path). The hook
may bring its own HTTP routes (e.g. POST /v1/feedback), which the server mounts.

Activation proofs (integrity): the server asks `will_store(hook, headers, metadata)` before
generating, and only for requests whose trace will be kept does it capture hidden states and
attach `pending_proofs` (inference.proofs_serving.PendingProofs) to the record; the hook finishes
them in its writer thread. `pending_proofs` is never serialized.
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
    # Filled only when activation proofs are on (integrity issue): per-choice proof entries, or
    # the proofs still to finish (off the request path) from the hidden states the engine streamed.
    proofs: list[dict[str, Any]] | None = None
    pending_proofs: Any = Field(default=None, exclude=True, repr=False)


@runtime_checkable
class CaptureHook(Protocol):
    def on_completion(self, record: CompletionRecord) -> None:
        """Called once per finished completion. Must not block on disk."""

    def routes(self) -> list[Any]:
        """FastAPI APIRouters to mount on the server (may be empty)."""

    def close(self) -> None:
        """Flush and stop; called on server shutdown."""


def will_store(hook: CaptureHook | None, headers: dict[str, str] | None, metadata: dict[str, Any] | None) -> bool:
    """Will `hook` keep the trace of a request with these headers and metadata? A hook that cannot
    tell (no `will_store` method) is assumed to keep it."""
    if hook is None:
        return False
    decide = getattr(hook, "will_store", None)
    return True if decide is None else bool(decide(headers or {}, metadata or {}))

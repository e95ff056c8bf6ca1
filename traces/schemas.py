"""The records a node keeps: traces, feedback, preference pairs and KTO rows (schema version 1).

Every record names its schema version, so a reader can tell old records from new ones, and has room
for the integrity layer: optional `proofs` (activation proofs per choice), `signature` and `signer`.
`canonical_bytes()` is the exact byte string a signature covers: sorted-key compact JSON of the
record without its `signature` field (the signer's identity is inside, so it is bound too).
"""

from __future__ import annotations

import json
import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

SCHEMA_VERSION = 1
# A `Trace.proofs` entry {"choice_index": i, "proof": PROOF_REDACTED} stands for a proof the node
# dropped because the privacy filter changed the trace's text (the proof would commit to the text
# before redaction): such a trace is unverifiable by design, never failed.
PROOF_REDACTED = "redacted"

Role = Literal["system", "developer", "user", "assistant", "tool"]
StoredConsent = Literal["local", "share"]          # "off" never produces a record


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid")

    def canonical_bytes(self) -> bytes:
        """What a signature covers: this record as sorted-key compact UTF-8 JSON, minus `signature`."""
        data = self.model_dump(mode="json", exclude={"signature"})
        return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Role
    content: str


class Choice(BaseModel):
    model_config = ConfigDict(extra="forbid")
    index: int
    text: str
    finish_reason: str = "stop"                    # stop | length | cancelled
    completion_tokens: int = 0


class ModelInfo(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ref: str                                       # the model reference the node served
    version: str                                   # "v0003"; the loop's checkpoint version
    weights_sha256: str


class Usage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prompt_tokens: int = 0
    completion_tokens: int = 0


class RedactionSummary(BaseModel):
    """What the privacy filter replaced in this record, by type (EMAIL, PHONE, ...)."""

    model_config = ConfigDict(extra="forbid")
    counts: dict[str, int] = Field(default_factory=dict)
    names: Literal["on", "off"] = "off"           # were person names looked for (needs spaCy)?

    @property
    def redacted(self) -> bool:
        return any(self.counts.values())


class Trace(_Record):
    """One finished chat completion as the node stored it (after redaction)."""

    schema_version: Literal[1] = SCHEMA_VERSION
    id: str                                        # the completion id returned to the client
    node_id: str
    model: ModelInfo
    created_at: float = Field(default_factory=time.time)   # unix seconds, UTC
    messages: list[Message]                        # the prompt: every message the client sent
    choices: list[Choice]                          # n >= 1 replies, all kept
    sampling: dict[str, Any] = Field(default_factory=dict)  # temperature, top_p, max_tokens, n, seed, ...
    usage: Usage = Field(default_factory=Usage)
    latency_s: float = 0.0
    ttft_s: float | None = None
    consent: StoredConsent = "local"
    metadata: dict[str, str] = Field(default_factory=dict)  # the request's metadata (redacted)
    redaction: RedactionSummary = Field(default_factory=RedactionSummary)
    proofs: list[dict[str, Any]] | None = None
    signature: str | None = None
    signer: str | None = None

    @field_validator("choices")
    @classmethod
    def _at_least_one_choice(cls, value: list[Choice]) -> list[Choice]:
        if not value:
            raise ValueError("a trace needs at least one choice")
        return value

    @property
    def prompt(self) -> list[dict[str, str]]:
        return [{"role": m.role, "content": m.content} for m in self.messages]


class Feedback(_Record):
    """What a user said about a completion: thumbs, a choice among n, a correction, a comment."""

    schema_version: Literal[1] = SCHEMA_VERSION
    id: str
    trace_id: str
    created_at: float = Field(default_factory=time.time)
    thumbs: Literal[-1, 1] | None = None
    choice: int | None = None                      # index of the preferred choice among n
    choice_index: int = 0                          # which choice thumbs / correction refer to
    correction: str | None = None                  # the reply the user would have wanted (redacted)
    comment: str | None = None                     # free text (redacted)
    redaction: RedactionSummary = Field(default_factory=RedactionSummary)
    signature: str | None = None
    signer: str | None = None

    @property
    def kinds(self) -> list[str]:
        present = {"thumbs": self.thumbs, "choice": self.choice, "correction": self.correction,
                   "comment": self.comment}
        return [kind for kind, value in present.items() if value is not None]


class PreferencePair(_Record):
    """A DPO pair in TRL's conversational format, citing the traces it came from."""

    schema_version: Literal[1] = SCHEMA_VERSION
    id: str
    source: str                                    # choice | correction | judge:<name>
    trace_ids: list[str]
    feedback_id: str | None = None
    model_version: str = ""
    consent: StoredConsent = "local"
    created_at: float = Field(default_factory=time.time)
    prompt: list[Message]
    chosen: Message
    rejected: Message
    chosen_index: int | None = None                # which choice was preferred (None: a correction)
    rejected_index: int | None = None
    score_chosen: float | None = None
    score_rejected: float | None = None
    signature: str | None = None
    signer: str | None = None


class KTORow(_Record):
    """An unpaired KTO example (prompt, completion, desirable?) citing its source traces."""

    schema_version: Literal[1] = SCHEMA_VERSION
    id: str
    source: str                                    # thumbs | judge:<name>
    trace_ids: list[str]
    feedback_id: str | None = None
    model_version: str = ""
    consent: StoredConsent = "local"
    created_at: float = Field(default_factory=time.time)
    prompt: list[Message]
    completion: Message
    choice_index: int | None = None
    label: bool
    score: float | None = None
    signature: str | None = None
    signer: str | None = None

"""Plain data the engine takes and gives back: requests, sampling parameters, events, results.

Torch-free except for the optional hidden-state tensors (typed loosely so this imports fast).
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from inference.loading import ModelIdentity


class EngineError(Exception):
    """Base of everything the engine refuses or fails with."""


class QueueFull(EngineError):
    """The request queue is at its configured size; try again later (HTTP 429)."""


class EngineStopped(EngineError):
    """The engine is stopping or stopped (HTTP 503)."""


class RequestRejected(EngineError):
    """The request breaks a configured limit; `param` and `code` go into the OpenAI error body."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.param = param
        self.code = code


class GenerationFailed(EngineError):
    """The forward pass failed for this request's batch."""


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int | None = None     # None: the configured default (capped by the context window)
    temperature: float = 1.0          # 0 = greedy
    top_p: float = 1.0
    n: int = 1
    stop: tuple[str, ...] = ()
    seed: int | None = None           # choice i samples with a generator seeded seed + i


@dataclass
class GenerationRequest:
    """Either chat `messages` (rendered with the model's chat template) or raw `prompt_ids`."""

    messages: list[dict[str, str]] | None = None
    prompt_ids: list[int] | None = None
    params: SamplingParams = field(default_factory=SamplingParams)
    # Integrity seam: model.model.norm outputs of the prompt and of every generated token.
    # With hidden_sink, each forward pass calls hidden_sink(choice_index, rows [k, hidden]) in
    # position order (the prompt's rows, then one row per generated token) from the scheduler
    # thread, and nothing is kept; without it the rows are collected into ChoiceResult.hidden.
    capture_hidden: bool = False
    hidden_sink: Any = None           # Callable[[int, torch.Tensor], None] | None
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)


@dataclass
class HiddenStates:
    """Final-norm hidden states of one sequence, in the model's dtype, on the CPU.

    prompt[i] is the norm output at prompt token i; generated[j] the one at generated token j
    (computed when token j is fed back in, so generated[-1] needed one extra decode step).
    Recomputing model.model(prompt_ids + token_ids).last_hidden_state gives the same rows up
    to float rounding."""

    prompt: Any      # torch.Tensor [prompt_tokens, hidden]
    generated: Any   # torch.Tensor [completion_tokens, hidden]


@dataclass
class ChoiceResult:
    index: int
    text: str
    finish_reason: str                # stop | length | cancelled
    token_ids: list[int]
    hidden: HiddenStates | None = None

    @property
    def completion_tokens(self) -> int:
        return len(self.token_ids)


@dataclass
class GenerationResult:
    request_id: str
    choices: list[ChoiceResult]
    prompt_ids: list[int]
    identity: ModelIdentity           # the model that generated this, even if swapped since
    submitted_at: float               # time.monotonic() values
    first_token_at: float | None
    finished_at: float
    created: int = field(default_factory=lambda: int(time.time()))

    @property
    def prompt_tokens(self) -> int:
        return len(self.prompt_ids)

    @property
    def completion_tokens(self) -> int:
        return sum(choice.completion_tokens for choice in self.choices)

    @property
    def latency_s(self) -> float:
        return self.finished_at - self.submitted_at

    @property
    def time_to_first_token_s(self) -> float | None:
        return None if self.first_token_at is None else self.first_token_at - self.submitted_at

    @property
    def cancelled(self) -> bool:
        return any(choice.finish_reason == "cancelled" for choice in self.choices)


# Events a handle yields, in order: TextDelta*, ChoiceFinished per choice, then Completed or Failed.
@dataclass(frozen=True)
class TextDelta:
    index: int
    text: str


@dataclass(frozen=True)
class ChoiceFinished:
    index: int
    finish_reason: str


@dataclass(frozen=True)
class Completed:
    result: GenerationResult


@dataclass(frozen=True)
class Failed:
    error: EngineError


Event = TextDelta | ChoiceFinished | Completed | Failed


@dataclass
class EngineStats:
    queue_depth: int = 0
    active_rows: int = 0
    decode_steps: int = 0
    max_rows_in_step: int = 0         # > 1 proves that requests were really batched
    requests_completed: int = 0
    rows_cancelled: int = 0
    swaps: int = 0


@dataclass
class SwapTiming:
    """How one model swap went, in time.monotonic() seconds.

    Admission (new requests starting) is held from `requested_at` until `applied_at`; that is the
    serving pause a new request can see. Rows already decoding keep going on the old weights
    meanwhile and, with overlap, after `applied_at` too, until `drained_at`."""

    requested_at: float
    overlap: bool = True                # old rows keep decoding next to the new model's rows
    applied_at: float | None = None
    rows_in_flight: int = 0             # rows still on the old model when the swap was applied
    drained_at: float | None = None     # the old model's last row finished
    first_step_at: float | None = None  # first prefill or decode step on the new model

    @property
    def pause_s(self) -> float | None:
        """How long admission was held (what a request arriving during the swap waited extra)."""
        return None if self.applied_at is None else self.applied_at - self.requested_at

    @property
    def drain_s(self) -> float | None:
        """How long the old weights kept decoding in-flight rows after the swap was requested."""
        return None if self.drained_at is None else max(0.0, self.drained_at - self.requested_at)

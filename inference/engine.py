"""GenerationEngine: a request queue feeding one scheduler thread that decodes rows in batches.

    engine = GenerationEngine(load_model("tiny-random"), limits)
    engine.start()
    handle = engine.submit(GenerationRequest(messages=[...], params=SamplingParams(n=2)))
    for event in handle.events(): ...          # TextDelta / ChoiceFinished / Completed | Failed
    result = handle.result()                   # or: await handle.aresult() with submit(loop=...)
    engine.swap(other_loaded).result()         # takes effect between batches
    engine.stop()

Scheduling (continuous batching): each loop iteration admits waiting requests while there are
free rows (n rows per request), prefills them together, merges them into the rows already
decoding (engine_batch.KVBatch), runs one decode step for all rows and samples each row with its
own parameters and generator. Finished or cancelled rows leave at once and free their slot.

Model swaps (hot redeploy): new requests stay queued from swap() until the swap is applied at
the top of the next scheduler iteration. With overlap (the default) the rows already decoding move
to a retiring batch that keeps decoding on the old weights next to the new model's batch until it
empties, so admission is held for about one decode step; without overlap the swap waits until no
row is decoding. Either way in-flight requests finish on the weights they started with and every
result names the model that made it. `last_swap` (SwapTiming) says how long admission was held.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import queue
import secrets
import threading
import time
import traceback
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from inference.chat_template import TRAINING_CHAT_TEMPLATE
from inference.config import LimitsConfig
from inference.engine_text import IncrementalDetokenizer, find_stop, held_back
from inference.engine_types import (
    ChoiceFinished,
    ChoiceResult,
    Completed,
    EngineError,
    EngineStats,
    EngineStopped,
    Event,
    Failed,
    GenerationFailed,
    GenerationRequest,
    GenerationResult,
    HiddenStates,
    QueueFull,
    RequestRejected,
    SamplingParams,
    SwapTiming,
    TextDelta,
)
from inference.loading import LoadedModel, ModelIdentity

log = logging.getLogger("swarmloop.engine")

__all__ = [
    "GenerationEngine",
    "GenerationHandle",
    "GenerationRequest",
    "SamplingParams",
    "EngineError",
    "QueueFull",
    "EngineStopped",
    "RequestRejected",
    "GenerationFailed",
]


class GenerationHandle:
    """One submitted request: its event stream, its result, and a way to cancel it.

    Events are delivered to an asyncio queue when the handle was submitted with `loop`, else to a
    thread-safe queue for `events()`; `result()` works in both cases."""

    def __init__(self, request: GenerationRequest, prompt_ids: list[int], loop: asyncio.AbstractEventLoop | None,
                 on_done: Callable[["GenerationHandle"], None] | None, stream: bool = True):
        self.request = request
        self.prompt_ids = prompt_ids
        self.submitted_at = time.monotonic()
        self.first_token_at: float | None = None
        self.identity: ModelIdentity | None = None  # the model that serves it, set on admission
        self.tokenized_for: ModelIdentity | None = None
        self._loop = loop
        self._async_queue: asyncio.Queue | None = asyncio.Queue() if loop is not None else None
        self._sync_queue: queue.SimpleQueue | None = queue.SimpleQueue() if loop is None else None
        self._on_done = on_done
        self._stream = stream                      # False: only the final event is delivered
        self.front = False                         # queued ahead of the others, admitted even when full
        self._cancelled = threading.Event()
        self._finished = threading.Event()
        self._rows: list = []                      # the scheduler's rows of this request
        self._final: Completed | Failed | None = None
        self._replied: GenerationResult | None = None  # the reply, when sent before the proof's tail step

    @property
    def n(self) -> int:
        return self.request.params.n

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    @property
    def done(self) -> bool:
        return self._finished.is_set()

    @property
    def replied(self) -> bool:
        """The consumer has its reply: done, or answered before the proof's tail step ran."""
        return self._replied is not None or self.done

    def cancel(self) -> None:
        """Stop generating for this request; its rows leave the batch at the next step."""
        self._cancelled.set()

    # -- called by the scheduler thread --
    def _reply_early(self, result: GenerationResult) -> None:
        """Hand the consumer its Completed reply now; `_final`, `done` and on_done follow once
        the proof's tail step has delivered the last hidden states to the request's sink."""
        self._replied = result
        self._deliver(Completed(result))

    def _emit(self, event: Event) -> None:
        final = isinstance(event, (Completed, Failed))
        if final:
            self._final = event
        elif not self._stream:
            return  # nobody reads per-token events: spare the consumer's thread the wake-ups
        if self._replied is None:
            self._deliver(event)
        if final:
            self._finished.set()
            if self._on_done is not None:
                try:
                    self._on_done(self)
                except Exception:  # a caller's callback must not kill the scheduler
                    log.exception("on_done callback failed")

    def _deliver(self, event: Event) -> None:
        if self._async_queue is not None:
            try:
                self._loop.call_soon_threadsafe(self._async_queue.put_nowait, event)
            except RuntimeError:  # the loop is closed: nobody is listening any more
                pass
        else:
            self._sync_queue.put(event)

    # -- consumers --
    def events(self) -> Iterator[Event]:
        if self._sync_queue is None:
            raise RuntimeError("this handle delivers events to an event loop: use aevents()")
        while True:
            event = self._sync_queue.get()
            yield event
            if isinstance(event, (Completed, Failed)):
                return

    async def aevents(self):
        if self._async_queue is None:
            raise RuntimeError("submit with loop=... to use aevents()")
        while True:
            event = await self._async_queue.get()
            yield event
            if isinstance(event, (Completed, Failed)):
                return

    def result(self, timeout: float | None = None) -> GenerationResult:
        if not self._finished.wait(timeout):
            raise TimeoutError("generation did not finish in time")
        if isinstance(self._final, Failed):
            raise self._final.error
        return self._final.result

    async def aresult(self) -> GenerationResult:
        async for event in self.aevents():
            if isinstance(event, Failed):
                raise event.error
            if isinstance(event, Completed):
                return event.result
        raise GenerationFailed("no result")


@dataclass
class _Slot:
    """One installed model and what decoding with it needs."""

    loaded: LoadedModel
    decoder: Any                                   # _LockedDecoder
    context_window: int
    eos_ids: set[int]
    pad_id: int
    hook_handle: Any = None                        # forward hook on model.model.norm, if any


@dataclass
class _Row:
    """One choice of one request, while it is being decoded."""

    handle: GenerationHandle
    index: int
    slot: _Slot                                    # the model this row decodes on
    detok: IncrementalDetokenizer
    sampling: Any                                  # engine_sampling.RowSampling
    max_tokens: int
    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    sent: int = 0                                  # characters of `text` already emitted
    finish_reason: str | None = None
    state: str = "running"                         # running | tail (one more step for hidden) | done
    hidden_prompt: Any = None
    hidden_generated: list[Any] = field(default_factory=list)


@dataclass
class _Batch:
    """Rows decoding together on one model, with their shared KV cache (engine_batch.KVBatch)."""

    slot: _Slot
    rows: list[_Row] = field(default_factory=list)
    kv: Any = None


class _LockedDecoder:
    """Tokenizer.decode behind the engine's tokenizer lock (the Rust tokenizer is not re-entrant
    while another thread changes its padding/truncation settings during encode)."""

    def __init__(self, tokenizer: Any, lock: threading.Lock):
        self._tokenizer, self._lock = tokenizer, lock

    def decode(self, tokens, **kwargs) -> str:
        with self._lock:
            return self._tokenizer.decode(tokens, **kwargs)


class GenerationEngine:
    def __init__(self, loaded: LoadedModel, limits: LimitsConfig | None = None,
                 on_step: Callable[[int], None] | None = None):
        self.limits = limits or LimitsConfig()
        self._on_step = on_step
        self._cv = threading.Condition()
        self._pending: deque[GenerationHandle] = deque()
        self._swap: tuple[LoadedModel, concurrent.futures.Future, SwapTiming] | None = None
        self._last_swap: SwapTiming | None = None
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._tokenizer_lock = threading.Lock()
        self._norm_output = None                   # set by the forward hook when capturing
        self._capturing = False
        self._stats = EngineStats()
        self._slot = self._make_slot(loaded)
        self._batch = _Batch(self._slot)           # rows decoding on the current model
        self._retiring: _Batch | None = None       # rows still finishing on the previous model

    # ------------------------------------------------------------------ model
    def _make_slot(self, loaded: LoadedModel) -> _Slot:
        tokenizer = loaded.tokenizer
        config = loaded.model.config
        eos = loaded.model.generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, (list, tuple)) else [eos] if eos is not None else [])
        if tokenizer.eos_token_id is not None:
            eos_ids.add(tokenizer.eos_token_id)
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(eos_ids or {0})
        slot = _Slot(loaded=loaded, decoder=_LockedDecoder(tokenizer, self._tokenizer_lock),
                     context_window=int(getattr(config, "max_position_embeddings", 0) or 1 << 30),
                     eos_ids=eos_ids, pad_id=pad_id)
        norm = getattr(getattr(loaded.model, "model", None), "norm", None)
        if norm is not None:
            slot.hook_handle = norm.register_forward_hook(self._on_norm_output)
        return slot

    @staticmethod
    def _release_slot(slot: _Slot) -> None:
        if slot.hook_handle is not None:
            slot.hook_handle.remove()
            slot.hook_handle = None

    def _on_norm_output(self, module, inputs, output) -> None:
        # only the scheduler's own forward passes: another thread running the same model object
        # (a verifier, a benchmark) must not hand its rows to the requests being decoded
        if self._capturing and threading.current_thread() is self._thread:
            self._norm_output = output

    @property
    def loaded(self) -> LoadedModel:
        return self._slot.loaded

    @property
    def identity(self) -> ModelIdentity:
        return self._slot.loaded.identity

    @property
    def context_window(self) -> int:
        return self._slot.context_window

    @property
    def supports_hidden_states(self) -> bool:
        return self._slot.hook_handle is not None

    @property
    def last_swap(self) -> SwapTiming | None:
        """Timing of the most recent applied swap (its drained_at fills in once old rows finish)."""
        return self._last_swap

    def swap(self, loaded: LoadedModel, *, overlap: bool = True) -> concurrent.futures.Future:
        """Serve `loaded` from the next batch on; the future resolves to its ModelIdentity once applied.

        Rows decoding now finish on the old weights. With overlap they keep decoding next to the
        new model's rows and admission resumes at once; without it new requests wait until every
        old row is done. A newer swap supersedes one not applied yet (its future is cancelled)."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self._cv:
            if self._stopping:
                raise EngineStopped("engine is stopped")
            if self._swap is not None:
                self._swap[1].cancel()
            self._swap = (loaded, future, SwapTiming(requested_at=time.monotonic(), overlap=overlap))
            self._cv.notify_all()
        return future

    # ------------------------------------------------------------------ requests
    def render_prompt(self, messages: list[dict[str, str]]) -> list[int]:
        from jinja2 import TemplateError

        tokenizer = self._slot.loaded.tokenizer
        template = None if getattr(tokenizer, "chat_template", None) else TRAINING_CHAT_TEMPLATE
        with self._tokenizer_lock:
            try:
                text = tokenizer.apply_chat_template(
                    messages, add_generation_prompt=True, tokenize=False, chat_template=template
                )
            except TemplateError as exc:  # the template's raise_exception(): e.g. roles must alternate
                raise RequestRejected(f"the model's chat template refused these messages: {exc}",
                                      param="messages") from None
            return list(tokenizer(text, add_special_tokens=False)["input_ids"])

    def encode_text(self, text: str) -> list[int]:
        """Plain text to ids with the current model's tokenizer (no special tokens), thread-safe."""
        with self._tokenizer_lock:
            return list(self._slot.loaded.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _prompt_ids(self, request: GenerationRequest) -> list[int]:
        if request.prompt_ids is not None:
            return list(request.prompt_ids)
        if not request.messages:
            raise RequestRejected("messages must not be empty", param="messages")
        return self.render_prompt(request.messages)

    def check(self, request: GenerationRequest) -> list[int]:
        """Tokenize and check the request against the limits; return its prompt ids.

        Raises RequestRejected (with the OpenAI `param` and `code`) for anything over a limit."""
        params, limits = request.params, self.limits
        if params.n < 1 or params.n > limits.max_n:
            raise RequestRejected(f"n must be between 1 and {limits.max_n}, got {params.n}", param="n")
        if params.max_tokens is not None and not 1 <= params.max_tokens <= limits.max_tokens_cap:
            raise RequestRejected(
                f"max_tokens must be between 1 and {limits.max_tokens_cap}, got {params.max_tokens}",
                param="max_tokens",
            )
        if params.temperature < 0:
            raise RequestRejected("temperature must be >= 0", param="temperature")
        if not 0 < params.top_p <= 1:
            raise RequestRejected("top_p must be in (0, 1]", param="top_p")
        if request.capture_hidden and not self.supports_hidden_states:
            raise RequestRejected("this model has no model.norm to capture hidden states from")
        prompt_ids = self._prompt_ids(request)
        if not prompt_ids:
            raise RequestRejected("the prompt is empty", param="messages")
        budget = min(limits.max_prompt_tokens, self.context_window - 1)
        if len(prompt_ids) > budget:
            raise RequestRejected(
                f"the prompt has {len(prompt_ids)} tokens, more than this node's limit of {budget}",
                param="messages", code="context_length_exceeded",
            )
        if params.max_tokens is not None and len(prompt_ids) + params.max_tokens > self.context_window:
            raise RequestRejected(
                f"prompt ({len(prompt_ids)} tokens) plus max_tokens ({params.max_tokens}) exceeds the "
                f"model's context window of {self.context_window} tokens",
                param="max_tokens", code="context_length_exceeded",
            )
        return prompt_ids

    def submit(self, request: GenerationRequest, *, loop: asyncio.AbstractEventLoop | None = None,
               on_done: Callable[[GenerationHandle], None] | None = None,
               prompt_ids: list[int] | None = None, stream: bool = True, front: bool = False,
               tokenized_for: ModelIdentity | None = None) -> GenerationHandle:
        """Queue a request. Raises RequestRejected, QueueFull or EngineStopped at once; generation
        errors arrive later as a Failed event. Pass prompt_ids when you already called check().
        stream=False delivers only the final Completed/Failed event (for callers that just wait).
        front=True queues it ahead of the waiting requests and admits it even when every row is
        busy (the node's own health checks: one short request, never a client's).
        tokenized_for: the model identity read before check() ran, when it ran in another thread
        (a swap in between then makes admission tokenize again)."""
        if prompt_ids is None:
            tokenized_for = self.identity
            prompt_ids = self.check(request)
        handle = GenerationHandle(request, prompt_ids, loop, on_done, stream)
        handle.tokenized_for = tokenized_for or self.identity
        handle.front = front
        with self._cv:
            if self._stopping or self._thread is None:
                raise EngineStopped("the engine is not running")
            if not front and len(self._pending) >= self.limits.queue_size:
                raise QueueFull(f"the request queue is full ({self.limits.queue_size} waiting)")
            if front:
                self._pending.appendleft(handle)
            else:
                self._pending.append(handle)
            self._cv.notify_all()
        return handle

    def generate(self, request: GenerationRequest, timeout: float | None = None) -> GenerationResult:
        """Submit and wait: the blocking convenience for scripts and warm-up."""
        return self.submit(request, stream=False).result(timeout)

    @property
    def stats(self) -> EngineStats:
        """A snapshot of the counters plus the live queue depth and active rows."""
        from dataclasses import replace

        return replace(self._stats, queue_depth=len(self._pending), active_rows=self.active_rows)

    @property
    def queue_depth(self) -> int:
        return len(self._pending)

    @property
    def active_rows(self) -> int:
        retiring = self._retiring
        return len(self._batch.rows) + (len(retiring.rows) if retiring is not None else 0)

    def _batches(self) -> list[_Batch]:
        return [self._retiring, self._batch] if self._retiring is not None else [self._batch]

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> "GenerationEngine":
        with self._cv:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="swarmloop-scheduler", daemon=True)
                self._thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the scheduler; requests still queued or decoding fail with EngineStopped."""
        with self._cv:
            self._stopping = True
            self._cv.notify_all()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    # ------------------------------------------------------------------ scheduler thread
    def _run(self) -> None:
        import torch

        with torch.inference_mode():
            while True:
                with self._cv:
                    while not (self._stopping or self._pending or self.active_rows or self._swap):
                        self._cv.wait()
                    if self._stopping:
                        break
                    if self._swap is not None and self._can_apply_swap():
                        self._apply_swap()
                    admitted = self._take_admissible()
                try:
                    if admitted:
                        self._admit(admitted)
                    for batch in self._batches():
                        self._drop_cancelled(batch)
                        if batch.rows:
                            self._decode_step(batch)
                    self._retire_if_drained()
                except Exception as exc:  # never log prompt or reply text: type and stack only
                    frames = "".join(traceback.format_tb(exc.__traceback__))
                    log.error("generation failed (%s); failing the %d request(s) in the batch\n%s",
                              exc.__class__.__name__, len(self._handles()) + len(admitted), frames)
                    self._fail_all(GenerationFailed(f"generation failed: {exc.__class__.__name__}"), admitted)
        self._shutdown()

    def _can_apply_swap(self) -> bool:
        """Now, if nothing decodes on the current model; with overlap also while it does, as long
        as no earlier model is still retiring (at most two models decode at once)."""
        if not self._batch.rows:
            return True
        return self._swap[2].overlap and self._retiring is None

    def _apply_swap(self) -> None:
        loaded, future, timing = self._swap
        self._swap = None
        if future.cancelled():
            return
        try:
            slot = self._slot if loaded is self._slot.loaded else self._make_slot(loaded)
        except Exception as exc:
            future.set_exception(exc)
            return
        now = time.monotonic()
        old = self._batch
        if slot is not old.slot:
            if old.rows:
                self._retiring = old               # finishes on its own weights, see _retire_if_drained
            elif self._retiring is None or self._retiring.slot is not old.slot:
                self._release_slot(old.slot)
            self._slot, self._batch = slot, _Batch(slot)
        timing.applied_at, timing.rows_in_flight = now, len(old.rows)
        if not old.rows:
            timing.drained_at = now
        self._last_swap = timing
        self._stats.swaps += 1
        future.set_result(loaded.identity)

    def _retire_if_drained(self) -> None:
        retiring = self._retiring
        if retiring is not None and not retiring.rows:
            self._retiring = None
            if retiring.slot is not self._slot:
                self._release_slot(retiring.slot)
            if self._last_swap is not None and self._last_swap.drained_at is None:
                self._last_swap.drained_at = time.monotonic()

    def _take_admissible(self) -> list[GenerationHandle]:
        """Pop queued requests that fit in the free rows (FIFO; no admission while a swap waits)."""
        admitted: list[GenerationHandle] = []
        if self._swap is not None:
            return admitted
        free = self.limits.max_batch_size - self.active_rows
        # a front request (the node's own health check) may go past max_batch_size by its n rows:
        # under full load it would otherwise wait for a whole request to finish
        while self._pending and (self._pending[0].n <= free or self._pending[0].front):
            handle = self._pending.popleft()
            if handle.cancelled:
                self._finish_unstarted(handle)
                continue
            admitted.append(handle)
            free -= handle.n
        return admitted

    def _finish_unstarted(self, handle: GenerationHandle) -> None:
        now = time.monotonic()
        choices = [ChoiceResult(index=i, text="", finish_reason="cancelled", token_ids=[]) for i in range(handle.n)]
        handle._emit(Completed(GenerationResult(handle.request.request_id, choices, handle.prompt_ids,
                                                self.identity, handle.submitted_at, None, now)))

    def _make_rows(self, handle: GenerationHandle) -> list[_Row]:
        import torch

        from inference.engine_sampling import RowSampling

        params: SamplingParams = handle.request.params
        slot = self._slot
        max_tokens = params.max_tokens or min(self.limits.default_max_tokens, self.limits.max_tokens_cap)
        max_tokens = max(1, min(max_tokens, slot.context_window - len(handle.prompt_ids)))
        rows = []
        for index in range(params.n):
            generator = None
            if params.temperature > 0:
                generator = torch.Generator()
                seed = params.seed + index if params.seed is not None else secrets.randbits(63)
                generator.manual_seed(seed % (1 << 63))
            rows.append(_Row(handle=handle, index=index, slot=slot, detok=IncrementalDetokenizer(slot.decoder),
                             sampling=RowSampling(params.temperature, params.top_p, generator),
                             max_tokens=max_tokens))
        handle._rows = rows
        return rows

    def _admit(self, handles: list[GenerationHandle]) -> None:
        from inference.engine_batch import KVBatch

        rows: list[_Row] = []
        for handle in handles:
            if handle.tokenized_for != self.identity and handle.request.prompt_ids is None:
                # tokenized for the model current at submit time; a swap since may bring another template
                try:
                    handle.prompt_ids = self._prompt_ids(handle.request)
                except Exception as exc:  # the new template refuses this request: it alone fails
                    error = exc if isinstance(exc, EngineError) else GenerationFailed(
                        f"could not tokenize for {self.identity.ref}: {exc.__class__.__name__}")
                    handle._emit(Failed(error))
                    continue
            handle.identity = self.identity
            rows.extend(self._make_rows(handle))
        if not rows:
            return
        slot, batch = self._slot, self._batch
        self._capturing = any(row.handle.request.capture_hidden for row in rows)
        self._norm_output = None
        try:
            kv, logits = KVBatch.prefill(slot.loaded.model, [row.handle.prompt_ids for row in rows], slot.pad_id)
        finally:
            self._capturing = False
        self._note_step(batch)
        if self._norm_output is not None:
            hidden = self._norm_output
            for i, row in enumerate(rows):
                if row.handle.request.capture_hidden:
                    self._hand_hidden(row, hidden[i][kv.attention_mask[i].bool()], prompt=True)
        self._sample_and_accept(rows, logits)
        if batch.kv is None:
            batch.kv, batch.rows = kv, rows
        else:
            batch.kv.merge(kv)
            batch.rows = batch.rows + rows
        self._remove_done(batch)

    def _note_step(self, batch: _Batch) -> None:
        timing = self._last_swap
        if batch is self._batch and timing is not None and timing.first_step_at is None:
            timing.first_step_at = time.monotonic()

    def _decode_step(self, batch: _Batch) -> None:
        rows = batch.rows
        self._capturing = any(row.handle.request.capture_hidden for row in rows)
        self._norm_output = None
        try:
            logits = batch.kv.step(batch.slot.loaded.model, [row.token_ids[-1] for row in rows])
        finally:
            self._capturing = False
        self._note_step(batch)
        self._stats.decode_steps += 1
        self._stats.max_rows_in_step = max(self._stats.max_rows_in_step, len(rows))
        if self._on_step is not None:
            try:
                self._on_step(len(rows))
            except Exception:
                log.exception("on_step callback failed")
        if self._norm_output is not None:
            for i, row in enumerate(rows):
                if row.handle.request.capture_hidden and row.state != "done":
                    self._hand_hidden(row, self._norm_output[i, -1:], prompt=False)
        for row in rows:
            if row.state == "tail":  # its last token's hidden state is now recorded
                self._row_done(row)
        self._sample_and_accept([row for row in rows if row.state == "running"],
                                logits, [i for i, row in enumerate(rows) if row.state == "running"])
        self._remove_done(batch)

    def _hand_hidden(self, row: _Row, states, prompt: bool) -> None:
        sink = row.handle.request.hidden_sink
        if sink is not None:
            try:
                sink(row.index, states.clone())
            except Exception:  # a failing consumer ends its own request, not the batch
                log.exception("hidden_sink failed; cancelling its request")
                row.handle.cancel()
        elif prompt:
            row.hidden_prompt = states.clone()
        else:
            row.hidden_generated.append(states.clone())

    def _sample_and_accept(self, rows: list[_Row], logits, positions: list[int] | None = None) -> None:
        from inference.engine_sampling import sample_rows

        if not rows:
            return
        if positions is not None and len(positions) != logits.shape[0]:
            import torch

            logits = logits.index_select(0, torch.tensor(positions, dtype=torch.long))
        tokens = sample_rows(logits, [row.sampling for row in rows])
        now = time.monotonic()
        for row, token in zip(rows, tokens):
            if row.handle.first_token_at is None:
                row.handle.first_token_at = now
            self._accept(row, token)

    def _accept(self, row: _Row, token: int) -> None:
        row.token_ids.append(token)
        stops = row.handle.request.params.stop
        reason = None
        if token in row.slot.eos_ids:
            reason = "stop"
        else:
            row.text += row.detok.push(token)
        if reason is None and (len(row.token_ids) >= row.max_tokens
                               or len(row.handle.prompt_ids) + len(row.token_ids) >= row.slot.context_window):
            reason = "length"
        if reason is not None:
            row.text += row.detok.flush()
        if stops:
            at = find_stop(row.text, stops, max(0, row.sent - max(len(s) for s in stops)))
            if at != -1:
                row.text, reason = row.text[:at], "stop"
        end = len(row.text) if reason is not None else len(row.text) - held_back(row.text, stops)
        if end > row.sent:
            row.handle._emit(TextDelta(row.index, row.text[row.sent:end]))
            row.sent = end
        if reason is not None:
            row.finish_reason = reason
            row.handle._emit(ChoiceFinished(row.index, reason))
            if row.handle.request.capture_hidden:
                row.state = "tail"
                self._reply_before_tail(row.handle)
            else:
                self._row_done(row)

    def _drop_cancelled(self, batch: _Batch) -> None:
        changed = False
        for row in batch.rows:
            if row.state != "done" and row.handle.cancelled:
                if row.finish_reason is None:
                    row.finish_reason = "cancelled"
                    row.handle._emit(ChoiceFinished(row.index, "cancelled"))
                self._stats.rows_cancelled += 1
                self._row_done(row)
                changed = True
        if changed:
            self._remove_done(batch)

    def _row_done(self, row: _Row) -> None:
        row.state = "done"
        handle = row.handle
        if all(r.state == "done" for r in handle._rows):
            self._complete(handle, handle._rows)

    def _reply_before_tail(self, handle: GenerationHandle) -> None:
        """When every choice has its last token and the hidden states go to a sink (the node
        server's proofs), the reply goes out now: the tail step that feeds the last tokens once
        more only completes the proof, which the trace writer finishes off the request path."""
        if handle.request.hidden_sink is None or handle._replied is not None:
            return
        if all(row.state in ("tail", "done") for row in handle._rows):
            handle._reply_early(self._result(handle, handle._rows))

    def _complete(self, handle: GenerationHandle, rows: list[_Row]) -> None:
        self._stats.requests_completed += 1
        result = handle._replied if handle._replied is not None else self._result(handle, rows)
        handle._emit(Completed(result))

    def _result(self, handle: GenerationHandle, rows: list[_Row]) -> GenerationResult:
        import torch

        choices = []
        for row in sorted(rows, key=lambda r: r.index):
            hidden = None
            if handle.request.capture_hidden and row.hidden_prompt is not None:
                generated = torch.cat(row.hidden_generated) if row.hidden_generated else row.hidden_prompt[:0]
                hidden = HiddenStates(prompt=row.hidden_prompt, generated=generated)
            choices.append(ChoiceResult(row.index, row.text, row.finish_reason or "cancelled", row.token_ids, hidden))
        return GenerationResult(handle.request.request_id, choices, handle.prompt_ids, handle.identity or self.identity,
                                handle.submitted_at, handle.first_token_at, time.monotonic())

    @staticmethod
    def _remove_done(batch: _Batch) -> None:
        keep = [i for i, row in enumerate(batch.rows) if row.state != "done"]
        if len(keep) == len(batch.rows):
            return
        if not keep:
            batch.rows, batch.kv = [], None
            return
        batch.kv.select(keep)
        batch.rows = [batch.rows[i] for i in keep]

    def _handles(self) -> list[GenerationHandle]:
        seen: dict[int, GenerationHandle] = {}
        for batch in self._batches():
            for row in batch.rows:
                seen.setdefault(id(row.handle), row.handle)
        return list(seen.values())

    def _fail_all(self, error: EngineError, extra: list[GenerationHandle] = ()) -> None:
        handles = {id(h): h for h in [*self._handles(), *extra]}
        for batch in self._batches():
            batch.rows, batch.kv = [], None
        self._retire_if_drained()
        for handle in handles.values():
            if handle.done:
                continue
            if handle._replied is not None:
                # The consumer already has its reply; only the proof's tail step is missing, and a
                # proof one position short is still accepted. Failing it now would drop a trace
                # whose reply went out (not captured, not counted, `result()` raising).
                self._stats.requests_completed += 1
                handle._emit(Completed(handle._replied))
            else:
                handle._emit(Failed(error))

    def _shutdown(self) -> None:
        with self._cv:
            pending = list(self._pending)
            self._pending.clear()
            if self._swap is not None:
                self._swap[1].cancel()
                self._swap = None
        self._fail_all(EngineStopped("the node is shutting down"), pending)
        self._release_slot(self._slot)

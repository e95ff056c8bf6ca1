"""The background writer: redact and store traces off the request path, in batches.

    writer = TraceWriter("node.db", privacy=PrivacyFilter(), key=load_or_create_key("node.key"))
    writer.submit(trace)                 # returns at once; False if the queue is full (dropped)
    writer.submit_feedback(feedback)     # a Future: the FeedbackOutcome once committed
    writer.flush()                       # wait until everything submitted so far is committed
    writer.close()                       # flush, stop the thread, close the store

One thread owns the store. It takes everything queued (up to `batch_max`), redacts it in one scan,
seals it and commits it in one transaction. Sealing, after redaction: a redacted trace's activation
proofs are replaced by markers (`{"choice_index": i, "proof": "redacted"}`: the proofs commit to the
text before redaction, so they could confirm a guess of what was removed, and cannot be checked
against what is stored), then, with a node `key`, every trace and feedback record is signed
(traces.signing: binds the node id and the weights' sha256; feedback is bound to the weights of the
trace it refers to). A record that cannot be signed is not stored. Under load, batches grow and
the fsync cost is shared. A trace counts as acknowledged once its batch is committed (`on_commit`
is called with the ids). When the queue has been empty for `compaction_idle_s`, the thread
compacts the store in small steps (stronger zstd level, newest dictionary, then a dense rewrite)
and goes back to writing as soon as work arrives. Log lines never contain a prompt, a reply or an
exception message (which could quote one).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Callable

from traces.config import PrivacySettings, StoreSettings
from traces.gcpause import paused_gc
from traces.ingest import redact_feedback, redact_traces
from traces.redaction import PrivacyFilter
from traces.schemas import Feedback, Trace
from traces.signing import NodeKey, SigningError, sign_record
from traces.store import TraceNotFound, TraceStore

log = logging.getLogger("swarmloop.traces")

_STOP = object()
_RECENT = 65_536            # committed ids remembered, so feedback can tell "not yet" from "never"


class TraceWriter:
    def __init__(self, store: TraceStore | Path | str, *,
                 privacy: PrivacyFilter | PrivacySettings | dict | None = None,
                 settings: StoreSettings | None = None,
                 convert: Callable[[Any], Trace | None] | None = None,
                 on_commit: Callable[[list[str]], None] | None = None,
                 key: NodeKey | None = None) -> None:
        self.settings = settings or (store.settings if isinstance(store, TraceStore) else StoreSettings())
        self.store = store if isinstance(store, TraceStore) else TraceStore(store, settings=self.settings)
        self.privacy = privacy if isinstance(privacy, PrivacyFilter) else PrivacyFilter(privacy)
        self._convert = convert
        self._on_commit = on_commit
        self.key = key
        self._queue: queue.Queue = queue.Queue(maxsize=self.settings.queue_max)
        self._cond = threading.Condition()
        self._pending: dict[str, int] = {}
        self._recent: OrderedDict[str, None] = OrderedDict()
        self._submitted = 0
        self._done = 0
        self.counts = {"submitted": 0, "stored": 0, "duplicates": 0, "dropped": 0, "failed": 0,
                       "feedback": 0}
        self._last_retention = 0.0
        self._uncompacted = self.store.pending_compaction()
        self._compacting = False
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="swarmloop-trace-writer", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ producer side (any thread)

    def submit(self, item: Trace | Any, trace_id: str | None = None) -> bool:
        """Queue a trace (or anything `convert` turns into one). Never blocks."""
        trace_id = trace_id or getattr(item, "id", None) or getattr(item, "completion_id", None)
        with self._cond:
            if self._closed:
                return False
            self._submitted += 1
            ticket = self._submitted
            if trace_id:
                self._pending[trace_id] = self._pending.get(trace_id, 0) + 1
        try:
            self._queue.put_nowait((ticket, "trace", item, trace_id))
        except queue.Full:
            with self._cond:
                self.counts["dropped"] += 1
                self._forget_pending(trace_id)
                self._done_ticket(ticket)
            log.warning("trace queue full (%d): a trace was dropped", self.settings.queue_max)
            return False
        self.counts["submitted"] += 1
        return True

    def submit_feedback(self, feedback: Feedback) -> Future:
        future: Future = Future()
        with self._cond:
            if self._closed:
                future.set_exception(RuntimeError("trace writer is closed"))
                return future
            self._submitted += 1
            ticket = self._submitted
        self._queue.put((ticket, "feedback", feedback, future))
        return future

    def is_known(self, trace_id: str) -> bool:
        """Queued or recently committed (not necessarily kept: it may have been a duplicate)."""
        with self._cond:
            return trace_id in self._pending or trace_id in self._recent

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything submitted before this call is committed. False on timeout."""
        with self._cond:
            target = self._submitted
            return self._cond.wait_for(lambda: self._done >= target, timeout)

    def wait_for(self, trace_id: str, timeout: float) -> bool:
        """Wait until `trace_id` has been handed to the writer (or the timeout passes)."""
        with self._cond:
            return self._cond.wait_for(lambda: trace_id in self._pending or trace_id in self._recent, timeout)

    def close(self, timeout: float | None = 60.0) -> None:
        with self._cond:
            if self._closed:
                return
            self._closed = True
        self._queue.put(_STOP)
        self._thread.join(timeout)
        self.store.close()

    # ------------------------------------------------------------------ bookkeeping

    def _forget_pending(self, trace_id: str | None) -> None:
        if trace_id and trace_id in self._pending:
            self._pending[trace_id] -= 1
            if self._pending[trace_id] <= 0:
                del self._pending[trace_id]

    def _done_ticket(self, ticket: int) -> None:
        self._done = max(self._done, ticket)
        self._cond.notify_all()

    # ------------------------------------------------------------------ the writer thread

    def _idle_timeout(self) -> float | None:
        """How long to wait for work before compacting (None: no compaction to do, wait forever)."""
        if self._uncompacted <= 0:
            return None
        return 0.001 if self._compacting else self.settings.compaction_idle_s

    def _compact_step(self) -> None:
        """One bounded step of compaction while nothing is queued (see TraceStore.compact)."""
        try:
            result = self.store.compact(max_records=self.settings.compaction_step)
            self._uncompacted = result["remaining"]
            self._compacting = result["remaining"] > 0
        except Exception as exc:
            self._uncompacted, self._compacting = 0, False
            log.error("compaction failed (%s)", type(exc).__name__)
        self._maybe_apply_retention()

    def _run(self) -> None:
        stop = False
        while not stop:
            try:
                first = self._queue.get(timeout=self._idle_timeout())
            except queue.Empty:
                self._compact_step()
                continue
            self._compacting = False
            batch = []
            if first is _STOP:
                stop = True
            else:
                batch.append(first)
            # Group commit: gather what arrives within batch_wait_ms of the first item, so that a
            # burst shares one transaction (and one fsync) instead of paying one each.
            deadline = time.monotonic() + self.settings.batch_wait_ms / 1000
            while not stop and len(batch) < self.settings.batch_max:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0 or not batch:
                        break
                    try:
                        item = self._queue.get(timeout=remaining)
                    except queue.Empty:
                        break
                if item is _STOP:
                    stop = True
                    break
                batch.append(item)
            if batch:
                with paused_gc():      # the batch's objects die by refcount (traces/gcpause.py)
                    self._process(batch)
            self._maybe_apply_retention()

    def _process(self, batch: list[tuple]) -> None:
        traces = []
        for ticket, kind, item, extra in batch:
            if kind != "trace":
                continue
            try:
                trace = self._convert(item) if self._convert else item
            except Exception as exc:   # a malformed record must not stop the writer
                trace = None
                self.counts["failed"] += 1
                log.error("could not convert a completion into a trace (%s)", type(exc).__name__)
            if trace is not None:
                traces.append(trace)
        stored: list[str] = []
        if traces:
            try:
                sealed = self._seal(redact_traces(self.privacy, traces))
                kept = self.store.add_traces(sealed)
                stored = [trace.id for trace in sealed]
                self._uncompacted += sum(kept)
                self.counts["stored"] += sum(kept)
                self.counts["duplicates"] += len(kept) - sum(kept)
            except Exception as exc:
                self.counts["failed"] += len(traces)
                log.error("could not store %d trace(s) (%s)", len(traces), type(exc).__name__)
        with self._cond:
            for ticket, kind, item, extra in batch:
                if kind == "trace":
                    self._forget_pending(extra)
            for trace_id in stored:
                self._recent[trace_id] = None
                self._recent.move_to_end(trace_id)
            while len(self._recent) > _RECENT:
                self._recent.popitem(last=False)
        if stored and self._on_commit is not None:
            self._on_commit(stored)
        for ticket, kind, item, future in batch:
            if kind == "feedback":
                self._record_feedback(item, future)
        with self._cond:
            self._done_ticket(batch[-1][0])

    def _seal(self, traces: list[Trace]) -> list[Trace]:
        """Redacted traces (proofs of redacted text already replaced by markers, see
        traces.ingest.redact_traces) as they are stored: signed when the writer has a key. A trace
        that cannot be signed is dropped and counted."""
        sealed = []
        for trace in traces:
            if self.key is not None:
                try:
                    signed = sign_record(trace, self.key)
                    # the record signed is this trace's dump: copy the two fields over rather than
                    # validating the whole record again
                    trace = trace.model_copy(update={"signer": signed["signer"], "signature": signed["signature"]})
                except SigningError as exc:
                    self.counts["failed"] += 1
                    log.error("could not sign a trace, it is not stored (%s)", type(exc).__name__)
                    continue
            sealed.append(trace)
        return sealed

    def _sign_feedback(self, feedback: Feedback) -> Feedback:
        """Feedback signed and bound to the weights of the trace it refers to; TraceNotFound when
        the store has no such trace (as record_feedback would say)."""
        if self.key is None:
            return feedback
        seq = self.store.find_seq(feedback.trace_id)
        record = self.store.record_by_seq(seq) if seq is not None else None
        if record is None:
            raise TraceNotFound(feedback.trace_id)
        return Feedback.model_validate(sign_record(feedback, self.key, weights_sha256=record.source["weights_sha256"]))

    def _record_feedback(self, feedback: Feedback, future: Future) -> None:
        try:
            outcome = self.store.record_feedback(self._sign_feedback(redact_feedback(self.privacy, feedback)))
        except Exception as exc:       # TraceNotFound, FeedbackError: the caller turns them into 404 / 400
            future.set_exception(exc)
            return
        self.counts["feedback"] += 1
        future.set_result(outcome)

    def _maybe_apply_retention(self) -> None:
        settings = self.settings
        now = time.monotonic()
        if now - self._last_retention < settings.retention_check_s:
            return
        self._last_retention = now
        if settings.retention_max_age_days is None and settings.retention_max_bytes is None:
            return
        try:
            result = self.store.apply_retention(settings.retention_max_age_days, settings.retention_max_bytes)
            if any(result.values()):
                log.info("retention removed %s", result)
        except Exception as exc:
            log.error("retention failed (%s)", type(exc).__name__)

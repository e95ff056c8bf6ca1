"""Trace capture on the node: the CaptureHook the server calls after every finished completion.

    key = load_or_create_key(key_path)                # the node's identity (traces.signing)
    hook = build_capture_hook(Path("node.db"), node_id="node-1", consent="local", privacy=None, key=key)
    app = create_app(config, capture_hook=hook)      # mounts POST /v1/feedback, calls hook.close()

on_completion() only decides whether the request may be kept (the node's consent, lowered by the
request's `X-Swarmloop-Trace` header or `metadata.swarmloop_trace`) and queues the record: the
background writer converts it into a Trace (finishing its activation proofs, if the server
attached some), redacts it, signs it and commits it in batches, off the request path. The server
builds no hook at all when consent is off, so nothing is ever stored.

Identity: with a key, every record's `node_id` is the key's id (`node-` + a sha256 prefix of the
public key, which traces.signing requires of a signed record) and the configured `node_id` is the
node's *name*: the label of its key in federation allow-lists, kept in the store's meta
(`node_name`, next to `node_id` and `node_public_key`). Without a key (library use, old stores)
records carry the configured id and are not signed.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from pathlib import Path
from typing import Any

from inference.hooks import CompletionRecord
from traces.config import PrivacySettings, StoreSettings
from traces.consent import OPT_OUT_METADATA_KEY, effective_consent, parse_consent
from traces.redaction import PrivacyFilter
from traces.schemas import Feedback, Trace
from traces.signing import NodeKey
from traces.store import FeedbackOutcome, TraceNotFound
from traces.writer import TraceWriter

log = logging.getLogger("swarmloop.capture")

# Request fields kept as the trace's sampling parameters (never `user`, which names a person).
SAMPLING_FIELDS = ("temperature", "top_p", "max_tokens", "max_completion_tokens", "n", "seed", "stop",
                   "presence_penalty", "frequency_penalty", "logprobs", "top_logprobs", "stream")
_SKIPPED_MEMORY = 4096      # opted-out completion ids remembered (in memory only) to 404 at once


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):   # OpenAI content parts: keep the text ones
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return "" if content is None else str(content)


def record_to_trace(record: CompletionRecord, node_id: str, consent: str) -> Trace:
    """The unredacted Trace of a CompletionRecord (the writer redacts it before storing).

    Built as plain data and validated in one call, so pydantic-core builds the nested models
    itself instead of one Python constructor call per message and choice."""
    request = record.request
    metadata = {k: str(v) for k, v in (request.get("metadata") or {}).items() if k != OPT_OUT_METADATA_KEY}
    messages = [{"role": m["role"], "content": _content_text(m.get("content"))} for m in request["messages"]]
    proofs = record.proofs
    if record.pending_proofs is not None:
        try:    # against the messages as stored: what a verifier will render
            proofs = record.pending_proofs.finish(messages)
        except Exception as exc:    # a proof is worth less than the trace: store it without
            proofs = None
            log.error("could not finish the activation proofs of a trace (%s)", type(exc).__name__)
    return Trace.model_validate({
        "id": record.completion_id,
        "node_id": node_id,
        "model": {"ref": record.model_ref, "version": record.model_version, "weights_sha256": record.weights_sha256},
        "created_at": float(record.created),
        "messages": messages,
        "choices": [{"index": c.index, "text": c.text, "finish_reason": c.finish_reason,
                     "completion_tokens": c.completion_tokens} for c in record.choices],
        "sampling": {k: request[k] for k in SAMPLING_FIELDS if k in request},
        "usage": {"prompt_tokens": record.prompt_tokens, "completion_tokens": record.completion_tokens},
        "latency_s": record.latency_s,
        "ttft_s": record.time_to_first_token_s,
        "consent": consent,
        "metadata": metadata,
        "proofs": proofs,
    })


class TraceCapture:
    """The node's CaptureHook: consent check on the request thread, everything else on the writer's."""

    def __init__(self, store_path: Path, node_id: str, consent: str, privacy: dict | None = None,
                 store: dict | StoreSettings | None = None, key: NodeKey | None = None) -> None:
        self.consent = parse_consent(consent)
        if self.consent == "off":
            raise ValueError("consent is off: no capture hook may exist, nothing is stored")
        self.key = key
        self.node_name = node_id
        self.node_id = key.node_id if key is not None else node_id
        settings = store if isinstance(store, StoreSettings) else StoreSettings.model_validate(store or {})
        self.settings = settings
        self.privacy = PrivacyFilter(PrivacySettings.model_validate(privacy or {}))
        self.writer = TraceWriter(store_path, privacy=self.privacy, settings=settings, convert=self._convert, key=key)
        self.writer.store.set_meta("node_id", self.node_id)
        self.writer.store.set_meta("node_name", self.node_name)
        if key is not None:
            self.writer.store.set_meta("node_public_key", key.public_key_b64)
        self.writer.store.set_meta("consent", self.consent)
        self._skipped: OrderedDict[str, None] = OrderedDict()
        log.info("trace capture on: consent %s, person names %s", self.consent, self.privacy.names_status)

    # -- CaptureHook --------------------------------------------------------------------------

    def will_store(self, headers: dict[str, str], metadata: dict[str, Any]) -> bool:
        """Would a request with these headers and metadata be kept? (The server builds activation
        proofs only for those.)"""
        return effective_consent(self.consent, headers, metadata) != "off"

    def on_completion(self, record: CompletionRecord) -> None:
        level = effective_consent(self.consent, record.headers, record.request.get("metadata"))
        if level == "off":
            self._skipped[record.completion_id] = None
            while len(self._skipped) > _SKIPPED_MEMORY:
                self._skipped.popitem(last=False)
            return
        self.writer.submit((record, level), trace_id=record.completion_id)

    def routes(self) -> list[Any]:
        from inference.feedback import feedback_router

        return [feedback_router(self)]

    def close(self) -> None:
        self.writer.close()

    # -- used by the writer thread and the feedback route -------------------------------------

    def _convert(self, item: tuple[CompletionRecord, str]) -> Trace:
        record, level = item
        return record_to_trace(record, self.node_id, level)

    def flush(self, timeout: float | None = None) -> bool:
        return self.writer.flush(timeout)

    async def record_feedback(self, feedback: Feedback) -> FeedbackOutcome:
        """Store feedback once its trace is committed. A trace still queued is committed first
        (the writer keeps order); a completion the hook has not even seen yet is waited for up to
        `feedback_wait_s`. That happens whenever the reply outruns the hook: a streamed reply, and
        with activation proofs any reply, since it goes out before the engine's tail step (one
        decode step, milliseconds) after which the hook is called."""
        trace_id = feedback.trace_id
        if trace_id in self._skipped:
            raise TraceNotFound(trace_id)
        try:
            return await asyncio.wrap_future(self.writer.submit_feedback(feedback))
        except TraceNotFound:
            if self.writer.is_known(trace_id) or self.settings.feedback_wait_s <= 0:
                raise
        seen = await asyncio.get_running_loop().run_in_executor(
            None, self.writer.wait_for, trace_id, self.settings.feedback_wait_s)
        if not seen or trace_id in self._skipped:
            raise TraceNotFound(trace_id)
        return await asyncio.wrap_future(self.writer.submit_feedback(feedback))


def build_capture_hook(store_path: Path, node_id: str, consent: str, privacy: dict | None = None,
                       store: dict | None = None, key: NodeKey | None = None) -> TraceCapture:
    """The hook for a node whose operator opted in (`consent` local or share).

    `privacy` is a PrivacySettings dict (configs/store.toml [privacy]); `store` a StoreSettings dict;
    `key` the node's signing key (then `node_id` is the node's name, see the module doc)."""
    return TraceCapture(Path(store_path), node_id, consent, privacy, store, key)

"""Verified ingest, the torch-free part: are a node's stored records signed by trusted node keys,
and do its derived rows (DPO pairs, KTO rows) follow from the signed records they cite?

    report = verify_store(store, "sft", trusted, require_signatures=True)
    report.failed(require_signatures=True)  -> exclude the node for the round
    report.reason(require_signatures=True)  -> one line saying why

What is checked, for the rows a recipe would read (same filters as traces.export):
  sft      every trace, and every feedback record on it (corrections, choices and votes shape
           the SFT rows); feedback is bound to the weights of the trace it refers to
  dpo/kto  every pair / row: the traces it cites and the feedback it came from are verified, and
           the row itself must be exactly what traces.pairs derives from them (feedback-derived)
           or cite the trace's own prompt and replies (judge-derived: scores cannot be re-run here)

A signature that does not verify, a signer outside the allow-list (or, when the allow-list has an
entry named like the node, any other signer) and a derived row that does not follow from its
sources all fail the node. An unsigned record fails it only when signatures are required.

`proof_entries(trace)` reads the activation proofs a trace carries (the format the node writes,
see ProofEntry); checking them needs the model and lives in federation/ingest.py.

What a signing node must write for its records to verify here:
  trace     Trace.model_validate(sign_record(trace, key)) of the trace as stored: after
            redaction, with node_id = key.node_id, model.weights_sha256 = the served weights,
            proofs included. (The store gives back exactly these fields: consent and redaction
            counts from columns, the rest from the payload; zero redaction counts are not kept.)
  feedback  sign_record(feedback, key, weights_sha256=<the stored trace's model.weights_sha256>)
            after redaction, before TraceStore.record_feedback.
  pairs     nothing: derived rows are checked against the signed trace and feedback they cite
            (a signed one must verify too, bound to its trace's weights).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from traces.pairs import derived_id, pairs_from_feedback
from traces.schemas import PROOF_REDACTED, Feedback, KTORow, PreferencePair, Trace
from traces.signing import SignatureError, TrustedKeys, verify_record
from traces.store import TraceStore

METHODS = ("sft", "dpo", "kto")
MAX_PROBLEMS = 5            # first problems kept in a report (the counts say the rest)
_UNSIGNED_FIELDS = {"signature", "signer"}


@dataclass
class SignatureReport:
    """What verify_store found. `checked` counts records looked at: traces, feedback and derived rows."""

    enabled: bool = True                    # False: no allow-list was given, nothing was checked
    traces: int = 0
    feedback: int = 0
    derived: int = 0
    verified: int = 0                       # signatures that checked out
    unsigned: int = 0
    unknown_key: int = 0                    # signed by a key outside the allow-list (or not the node's)
    bad_signature: int = 0                  # altered after signing, or a malformed signature
    mismatched: int = 0                     # derived rows that do not follow from their sources
    signers: dict[str, int] = field(default_factory=dict)   # trusted name -> records
    problems: list[str] = field(default_factory=list)

    @property
    def checked(self) -> int:
        return self.traces + self.feedback + self.derived

    def failed(self, require_signatures: bool) -> bool:
        return bool(self.unknown_key or self.bad_signature or self.mismatched
                    or (require_signatures and self.unsigned))

    def reason(self, require_signatures: bool) -> str:
        """One line: the counts that fail the node and the first problem found."""
        parts = [f"{n} {what}" for n, what in ((self.bad_signature, "bad signature(s)"),
                                               (self.unknown_key, "record(s) signed by an unknown key"),
                                               (self.mismatched, "derived row(s) not matching their sources"))
                 if n]
        if require_signatures and self.unsigned:
            parts.append(f"{self.unsigned} unsigned record(s)")
        if not parts:
            return ""
        first = f" (first: {self.problems[0]})" if self.problems else ""
        return f"{', '.join(parts)} of {self.checked} checked{first}"

    def note(self, problem: str) -> None:
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(problem)


class RecordVerifier:
    """Checks records one by one against the allow-list and counts the outcomes in `report`.

    Each (kind, id) is checked once: a trace cited by several pairs counts once."""

    def __init__(self, trusted: TrustedKeys | None, *, expected_signer: str | None = None):
        self.trusted = trusted
        self.expected_signer = expected_signer
        self.report = SignatureReport(enabled=trusted is not None)
        self._seen: dict[tuple[str, str], bool] = {}

    def check(self, kind: str, record: Mapping[str, Any] | Any, *, weights_sha256: str | None = None) -> bool:
        """Count `record` (a trace, feedback or derived row); True unless its signature fails."""
        data = record.model_dump(mode="json") if hasattr(record, "model_dump") else dict(record)
        key = (kind, str(data.get("id")))
        if key in self._seen:
            return self._seen[key]
        report = self.report
        if kind == "trace":
            report.traces += 1
        elif kind == "feedback":
            report.feedback += 1
        ok = True
        if self.trusted is not None:
            ok = self._check_signature(kind, data, weights_sha256)
        self._seen[key] = ok
        return ok

    def _check_signature(self, kind: str, data: dict[str, Any], weights_sha256: str | None) -> bool:
        report = self.report
        if not data.get("signature") or not data.get("signer"):
            report.unsigned += 1
            return True     # whether that fails the node is the caller's policy (require_signatures)
        try:
            name = verify_record(data, self.trusted, weights_sha256=weights_sha256)  # type: ignore[arg-type]
        except SignatureError as exc:
            if exc.kind == "unknown-key":
                report.unknown_key += 1
            else:
                report.bad_signature += 1
            report.note(f"{kind} {data.get('id')}: {exc}")
            return False
        if self.expected_signer is not None and name != self.expected_signer:
            report.unknown_key += 1
            report.note(f"{kind} {data.get('id')}: signed by {name}, not by this node's key {self.expected_signer}")
            return False
        report.verified += 1
        report.signers[name] = report.signers.get(name, 0) + 1
        return True

    def derived(self, item: PreferencePair | KTORow, problem: str | None) -> None:
        """Count a derived row whose sources were looked up; `problem` says why it does not follow."""
        self.report.derived += 1
        if problem:
            self.report.mismatched += 1
            self.report.note(f"{'pair' if isinstance(item, PreferencePair) else 'kto row'} {item.id}: {problem}")


# ------------------------------------------------------------------------------ derived rows


def _plain(item: PreferencePair | KTORow) -> dict[str, Any]:
    return item.model_dump(mode="json", exclude=_UNSIGNED_FIELDS)


def _choice_text(trace: Trace, index: int | None) -> str | None:
    if index is None or not 0 <= index < len(trace.choices):
        return None
    return trace.choices[index].text


def derived_mismatch(item: PreferencePair | KTORow, trace: Trace, feedback: Feedback | None) -> str | None:
    """Why `item` does not follow from its signed sources (None: it does).

    Feedback-derived rows must equal what traces.pairs derives from (trace, feedback); judge rows
    must carry the trace's own prompt, replies, version and consent under the judge's id."""
    if item.trace_ids != [trace.id]:
        return f"cites {item.trace_ids}, not the trace {trace.id}"
    if feedback is not None:
        pairs, kto = pairs_from_feedback(trace, feedback)
        candidates = {c.id: c for c in (pairs if isinstance(item, PreferencePair) else kto)}
        expected = candidates.get(item.id)
        if expected is None:
            return f"feedback {feedback.id} on trace {trace.id} derives no row with this id"
        if _plain(expected) != _plain(item):
            changed = sorted(k for k, v in _plain(item).items() if _plain(expected).get(k) != v)
            return f"differs from what feedback {feedback.id} on trace {trace.id} derives ({', '.join(changed)})"
        return None
    if not item.source.startswith("judge:"):
        return f"source {item.source!r} needs the feedback it came from"
    if [m.model_dump() for m in item.prompt] != [m.model_dump() for m in trace.messages]:
        return "prompt differs from the trace's"
    if item.model_version != trace.model.version or item.consent != trace.consent:
        return "model version or consent differs from the trace's"
    if isinstance(item, PreferencePair):
        if (item.chosen.content != _choice_text(trace, item.chosen_index)
                or item.rejected.content != _choice_text(trace, item.rejected_index)):
            return "chosen / rejected are not the trace's replies at the cited indices"
        if item.id != derived_id(trace.id, item.source, item.rejected_index):
            return "id is not the one its judge derives"
        return None
    if item.completion.content != _choice_text(trace, item.choice_index):
        return "completion is not the trace's reply at the cited index"
    if item.id != derived_id(trace.id, item.source, "kto", item.choice_index):
        return "id is not the one its judge derives"
    return None


# ------------------------------------------------------------------------------------- stores


def _feedback_by_trace(store: TraceStore) -> dict[str, list[Feedback]]:
    by_trace: dict[str, list[Feedback]] = {}
    for feedback in store.iter_feedback():
        by_trace.setdefault(feedback.trace_id, []).append(feedback)
    return by_trace


def used_traces(store: TraceStore, method: str, **filters: Any) -> Iterable[Trace]:
    """The traces whose content a recipe reads: every selected trace (sft), or those the selected
    pairs / rows cite (dpo / kto), each once."""
    if method == "sft":
        yield from store.iter_traces(**filters)
        return
    seen: set[str] = set()
    for item in store.iter_pairs(method, **filters):
        for trace_id in item.trace_ids:
            if trace_id not in seen:
                seen.add(trace_id)
                trace = store.get_trace(trace_id)
                if trace is not None:
                    yield trace


def verify_store(store: TraceStore, method: str, trusted: TrustedKeys | None, *,
                 expected_signer: str | None = None, model_version: str | None = None,
                 consent: str | None = None) -> SignatureReport:
    """Check every record the `method`'s rows are made of (see the module doc). Without an
    allow-list nothing can be checked: the report says so (enabled=False)."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, not {method!r}")
    verifier = RecordVerifier(trusted, expected_signer=expected_signer)
    if trusted is None:
        return verifier.report
    filters = {"model_version": model_version, "consent": consent}
    if method == "sft":
        feedback = _feedback_by_trace(store)
        for record in store.iter_records(**filters):
            trace = record.to_trace()
            verifier.check("trace", trace)
            for item in feedback.get(trace.id, []):
                verifier.check("feedback", item, weights_sha256=trace.model.weights_sha256)
        return verifier.report

    traces: dict[str, Trace | None] = {}
    for item in store.iter_pairs(method, **filters):
        trace_id = item.trace_ids[0] if item.trace_ids else ""
        if trace_id not in traces:
            traces[trace_id] = store.get_trace(trace_id) if trace_id else None
        trace = traces[trace_id]
        if trace is None:
            verifier.derived(item, f"its source trace {trace_id or '(none)'} is not in the store")
            continue
        verifier.check("trace", trace)
        source: Feedback | None = None
        if item.feedback_id is not None:
            source = next((f for f in store.feedback_for(trace_id) if f.id == item.feedback_id), None)
            if source is None:
                verifier.derived(item, f"its source feedback {item.feedback_id} is not in the store")
                continue
            verifier.check("feedback", source, weights_sha256=trace.model.weights_sha256)
        if item.signature is not None:      # a node may sign derived rows too: then it must hold
            verifier.check("pair" if method == "dpo" else "kto", item, weights_sha256=trace.model.weights_sha256)
        verifier.derived(item, derived_mismatch(item, trace, source))
    return verifier.report


# -------------------------------------------------------------------------- activation proofs


@dataclass
class ProofEntry:
    """One choice's activation proof as a trace carries it.

    `Trace.proofs` is a list with one dict per proven choice: the keys of
    inference.proofs.ActivationProof.to_dict() (scheme, prompt_len, positions, chunk_tokens,
    top_k, dtype, chunks), plus optionally
      choice_index  which choice it proves (default: the entry's position in the list)
      prompt_ids    the exact prompt token ids, when rendering the messages with the model's
                    chat template would not give them back
      reply_ids     the exact generated token ids, end-of-sequence included, when re-encoding the
                    reply text would not give them back (a stop string cut the text, or sampling
                    produced a non-canonical tokenization)
    Never store ids of text the privacy filter redacted: such traces are unverifiable by design
    (the node's writer replaces their proofs by {"choice_index": i, "proof": PROOF_REDACTED}).
    """

    choice_index: int
    proof: dict[str, Any]
    prompt_ids: list[int] | None = None
    reply_ids: list[int] | None = None


def _ids(value: Any) -> list[int] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in value):
        raise ValueError("token ids must be a list of integers")
    return list(value)


def proof_entries(trace: Trace) -> list[ProofEntry]:
    """The proofs `trace` carries, by choice. Raises ValueError for entries that are not dicts or
    carry malformed ids (a node that stores garbage fails the check; it is not unverifiable)."""
    entries = []
    for position, entry in enumerate(trace.proofs or []):
        if not isinstance(entry, dict):
            raise ValueError(f"proof {position} is not an object")
        index = entry.get("choice_index", position)
        if not isinstance(index, int) or isinstance(index, bool):
            raise ValueError(f"proof {position}: choice_index is not an integer")
        entries.append(ProofEntry(choice_index=index, proof=entry, prompt_ids=_ids(entry.get("prompt_ids")),
                                  reply_ids=_ids(entry.get("reply_ids"))))
    return entries


def unverifiable_reason(trace: Trace) -> str | None:
    """Why no proof of `trace` can be checked, before looking at any model (None: try)."""
    if not trace.proofs:
        return "no proof"
    markers = any(isinstance(entry, dict) and entry.get("proof") == PROOF_REDACTED for entry in trace.proofs)
    # The writer replaces the proofs of a trace whose messages or replies were redacted by markers;
    # a redaction in the metadata alone (the model never saw it) leaves them checkable.
    if markers:
        return "redacted (the model saw text the store does not keep)"
    return None

"""Redact traces and feedback before they are stored: every text a user or the model wrote."""

from __future__ import annotations

from typing import Sequence

from traces.redaction import PrivacyFilter
from traces.schemas import PROOF_REDACTED, Feedback, Message, RedactionSummary, Trace


def _texts(trace: Trace) -> list[str]:
    return ([m.content for m in trace.messages] + [c.text for c in trace.choices]
            + list(trace.metadata.values()))


def _proof_markers(proofs: list) -> list[dict]:
    return [{"choice_index": entry.get("choice_index", i) if isinstance(entry, dict) else i, "proof": PROOF_REDACTED}
            for i, entry in enumerate(proofs)]


def redact_traces(privacy: PrivacyFilter, traces: Sequence[Trace]) -> list[Trace]:
    """Redacted copies of `traces` (one scan for the whole batch), each with its redaction summary
    (a trace with nothing to redact comes back as it is when its summary already says so).

    Placeholders are numbered per trace: the same e-mail in the prompt and the reply is <EMAIL_1>
    in both. Activation proofs bind the text the model saw and wrote: when the filter changed a
    message or a choice they are replaced by markers (a proof over ids of text the store no longer
    holds would keep the redacted text recoverable, and could not be checked); a redaction in the
    metadata alone leaves them, as the model never saw it."""
    names = "on" if privacy.names_on else "off"
    clean = RedactionSummary(counts={}, names=names)
    results = privacy.redact_conversations([_texts(t) for t in traces])
    out = []
    for trace, result in zip(traces, results):
        if not result.counts:
            summary = trace.redaction
            already = not summary.counts and summary.names == names
            out.append(trace if already else trace.model_copy(update={"redaction": clean}))
            continue
        texts = iter(result.texts)
        messages = [Message(role=m.role, content=next(texts)) for m in trace.messages]
        choices = [c.model_copy(update={"text": next(texts)}) for c in trace.choices]
        metadata = {key: next(texts) for key in trace.metadata}
        seen_changed = (any(new.content != old.content for new, old in zip(messages, trace.messages))
                        or any(new.text != old.text for new, old in zip(choices, trace.choices)))
        proofs = _proof_markers(trace.proofs) if trace.proofs and seen_changed else trace.proofs
        out.append(trace.model_copy(update={
            "messages": messages, "choices": choices, "metadata": metadata, "proofs": proofs,
            "redaction": RedactionSummary(counts=result.counts, names=names)}))
    return out


def redact_feedback(privacy: PrivacyFilter, feedback: Feedback) -> Feedback:
    fields = [name for name in ("correction", "comment") if getattr(feedback, name) is not None]
    if not fields:
        return feedback
    [result] = privacy.redact_conversations([[getattr(feedback, name) for name in fields]])
    update = dict(zip(fields, result.texts))
    update["redaction"] = RedactionSummary(counts=result.counts, names="on" if privacy.names_on else "off")
    return feedback.model_copy(update=update)

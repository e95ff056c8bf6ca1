"""Node trace stores filled with signed records, as a node that signs what it stores would write
them (traces.signing.sign_record over the record after redaction, feedback bound to the weights of
the trace it refers to), plus traces carrying real activation proofs, for the ingest tests."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from traces.schemas import Choice, Feedback, Message, ModelInfo, RedactionSummary, Trace
from traces.signing import NodeKey, sign_record


def identity_of(ref: str = "tiny-random") -> ModelInfo:
    from inference.model_refs import resolve_model_ref

    resolved = resolve_model_ref(ref)
    return ModelInfo(ref=resolved.ref, version=resolved.version, weights_sha256=resolved.weights_sha256)


def signed(record: Any, key: NodeKey | None, **kwargs: Any) -> Any:
    """`record` signed by `key` (None: left unsigned), as the same pydantic type."""
    if key is None:
        return record
    return type(record).model_validate(sign_record(record, key, **kwargs))


def make_trace(key: NodeKey | None, model: ModelInfo, question: str, replies: list[str], *, consent: str = "share",
               node_id: str | None = None, proofs: list[dict] | None = None, redaction: dict[str, int] | None = None,
               finish_reason: str = "stop") -> Trace:
    trace = Trace(id=f"chatcmpl-{uuid.uuid4().hex[:12]}", node_id=node_id or (key.node_id if key else "node-x"),
                  model=model, consent=consent, messages=[Message(role="user", content=question)],
                  choices=[Choice(index=k, text=text, finish_reason=finish_reason, completion_tokens=len(text.split()))
                           for k, text in enumerate(replies)],
                  sampling={"temperature": 0.7, "n": len(replies)}, metadata={"app": "test"},
                  redaction=RedactionSummary(counts=redaction or {}), proofs=proofs, latency_s=0.25)
    return signed(trace, key)


def fill_signed_store(path: Path, key: NodeKey | None, n: int, *, model: ModelInfo | None = None,
                      pairs: bool = False, tag: str = "", consent: str = "share") -> Path:
    """`n` traces signed by `key`; with `pairs`, each has two replies and a signed choice of the
    first (the store derives a DPO pair) and every other one a signed correction too."""
    from traces.store import TraceStore

    model = model or identity_of()
    with TraceStore(path) as store:
        for i in range(n):
            question = f"[{tag}] How much is {i} plus {i + 1}?"
            good = f"{i} plus {i + 1} is {2 * i + 1}."
            replies = [good, "I would rather talk about the weather."] if pairs else [good]
            trace = make_trace(key, model, question, replies, consent=consent)
            store.add_traces([trace])
            if pairs:
                feedback = Feedback(id=f"fb-{trace.id}", trace_id=trace.id, choice=0)
                store.record_feedback(signed(feedback, key, weights_sha256=model.weights_sha256))
                if i % 2:
                    correction = Feedback(id=f"fc-{trace.id}", trace_id=trace.id, choice_index=1,
                                          correction=f"It is {2 * i + 1}.")
                    store.record_feedback(signed(correction, key, weights_sha256=model.weights_sha256))
    return path


def proven_trace(loaded: Any, key: NodeKey | None, question: str, *, model: ModelInfo, max_tokens: int = 12,
                 seed: int = 0, claim: ModelInfo | None = None) -> Trace:
    """A trace whose reply `loaded` really generated (KV-cache decode, sampling) with the proof a
    node stores: ActivationProof.to_dict() plus the exact reply ids (sampled tokens need not
    re-encode to the same ids). `claim` is the model the trace says served it (default `model`)."""
    from federation.ingest import render_prompt_ids
    from inference.proofs_decode import decode

    tokenizer = loaded.tokenizer
    messages = [{"role": "user", "content": question}]
    prompt = render_prompt_ids(tokenizer, messages)
    result = decode(loaded.model, prompt, max_tokens, temperature=1.0, seed=seed, eos_token_id=tokenizer.eos_token_id)
    stopped = result.reply_ids[-1] == tokenizer.eos_token_id
    text = tokenizer.decode(result.reply_ids[:-1] if stopped else result.reply_ids, skip_special_tokens=True)
    entry = {**result.proof.to_dict(), "choice_index": 0, "reply_ids": list(result.reply_ids)}
    return make_trace(key, claim or model, question, [text], proofs=[entry],
                      finish_reason="stop" if stopped else "length")


def text_proven_trace(loaded: Any, key: NodeKey | None, question: str, reply: str, *, model: ModelInfo) -> Trace:
    """A trace with a reply that re-encodes to its own ids, proven without storing any ids (the
    ingest renders the prompt and re-encodes the reply, end-of-sequence appended)."""
    from federation.ingest import render_prompt_ids
    from inference.proofs import build_proofs

    tokenizer = loaded.tokenizer
    prompt = render_prompt_ids(tokenizer, [{"role": "user", "content": question}])
    reply_ids = list(tokenizer(reply, add_special_tokens=False)["input_ids"]) + [tokenizer.eos_token_id]
    proof = build_proofs(loaded.model, prompt + reply_ids, len(prompt))
    return make_trace(key, model, question, [reply], proofs=[proof.to_dict()])


def trusted_file(path: Path, keys: dict[str, NodeKey]) -> Path:
    from traces.signing import TrustedKeys

    path.write_text(TrustedKeys.of(*keys.values(), names=list(keys)).to_toml())
    return path

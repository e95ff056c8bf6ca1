"""The node's background writer seals what it stores (traces/writer.py): proofs of redacted text are
replaced by markers, then every trace and feedback record is signed after redaction; a record
that cannot be signed is not stored at all."""

from __future__ import annotations

import pytest

from signed_stores import identity_of
from traces.schemas import PROOF_REDACTED, Choice, Feedback, Message, Trace
from traces.signing import NodeKey, TrustedKeys, verify_record
from traces.store import TraceNotFound
from traces.verify import unverifiable_reason, verify_store
from traces.writer import TraceWriter

FAKE_PROOF = {"scheme": "toploc-gf65497-v1", "prompt_len": 3, "positions": 5, "chunk_tokens": 32, "top_k": 128,
              "dtype": "float32", "chunks": ["AAA=", "AAA="], "choice_index": 0, "reply_ids": [11, 12]}


def trace(key: NodeKey, question: str, reply: str, proofs=None, node_id: str | None = None) -> Trace:
    return Trace(id=f"chatcmpl-{abs(hash(question)) % 10**12}", node_id=node_id or key.node_id, model=identity_of(),
                 messages=[Message(role="user", content=question)],
                 choices=[Choice(index=0, text=reply, completion_tokens=2)], proofs=proofs, consent="local")


@pytest.fixture()
def key() -> NodeKey:
    return NodeKey.generate()


def test_stored_records_are_signed_after_redaction(tmp_path, key):
    writer = TraceWriter(tmp_path / "node.db", key=key)
    try:
        plain = trace(key, "What is a lighthouse?", "A tower with a light.", proofs=[dict(FAKE_PROOF)])
        private = trace(key, "Mail ada.lovelace@example.org the notes.", "Sent to ada.lovelace@example.org.",
                        proofs=[dict(FAKE_PROOF)])
        # the model never saw its metadata: a redaction there (a hex id the entropy test takes for
        # a secret) leaves the proof of what it saw and wrote checkable
        tagged = trace(key, "What is 2 + 2?", "4", proofs=[dict(FAKE_PROOF)]).model_copy(
            update={"metadata": {"task_id": "arithmetic-9f3b2c7a1e4d"}})
        assert writer.submit(plain) and writer.submit(private) and writer.submit(tagged)
        writer.flush()
        outcome = writer.submit_feedback(Feedback(id="fb-1", trace_id=plain.id, thumbs=1,
                                                  comment="call me on ada.lovelace@example.org")).result(30)
        with pytest.raises(TraceNotFound):
            writer.submit_feedback(Feedback(id="fb-2", trace_id="chatcmpl-unknown", thumbs=1)).result(30)
        stored_plain = writer.store.get_trace(plain.id)
        stored_private = writer.store.get_trace(private.id)
        stored_tagged = writer.store.get_trace(tagged.id)
        [feedback] = writer.store.feedback_for(plain.id)
        report = verify_store(writer.store, "sft", TrustedKeys.of(key))
    finally:
        writer.close()
    trusted = TrustedKeys.of(key)
    # what was signed is what is stored: redacted text, markers instead of the proof
    assert "ada.lovelace" not in stored_private.messages[0].content + stored_private.choices[0].text
    assert stored_private.proofs == [{"choice_index": 0, "proof": PROOF_REDACTED}]
    assert unverifiable_reason(stored_private).startswith("redacted")
    assert stored_plain.proofs == [FAKE_PROOF]                      # nothing redacted: the proof stays as it came
    assert stored_tagged.redaction.counts == {"SECRET": 1} and stored_tagged.metadata["task_id"] == "<SECRET_1>"
    assert stored_tagged.proofs == [FAKE_PROOF] and unverifiable_reason(stored_tagged) is None
    for record in (stored_plain, stored_private, stored_tagged):
        assert record.signer == key.node_id and verify_record(record, trusted)
    assert feedback.comment == "call me on <EMAIL_1>" and outcome.feedback.signer == key.node_id
    assert verify_record(feedback, trusted, weights_sha256=stored_plain.model.weights_sha256)
    assert (report.traces, report.feedback, report.verified) == (3, 1, 4) and not report.failed(True)


def test_a_trace_that_cannot_be_signed_is_not_stored(tmp_path, key):
    writer = TraceWriter(tmp_path / "node.db", key=key)
    try:
        # a record naming another node than its signer cannot be signed (traces.signing binds them)
        foreign = trace(key, "Who am I?", "Nobody.", node_id="node-someone-else")
        good = trace(key, "Who are you?", "A node.")
        writer.submit(foreign)
        writer.submit(good)
        writer.flush()
        assert writer.store.get_trace(foreign.id) is None and writer.store.get_trace(good.id) is not None
        assert writer.counts["failed"] == 1 and len(writer.store) == 1
    finally:
        writer.close()


def test_without_a_key_records_are_stored_unsigned(tmp_path, key):
    writer = TraceWriter(tmp_path / "node.db")
    try:
        writer.submit(trace(key, "Unsigned?", "Yes."))
        writer.flush()
        [stored] = list(writer.store.iter_traces())
    finally:
        writer.close()
    assert stored.signature is None and stored.signer is None

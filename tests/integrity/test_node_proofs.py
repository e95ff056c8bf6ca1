"""Activation proofs as the serving engine builds them (inference/proofs_serving.py), in this
process on tiny-random: batched rows with left padding verify, ids are kept exactly when a
verifier could not rebuild them, and a proof that cannot be built costs the proof, not the reply."""

from __future__ import annotations

import pytest
import torch

from federation.ingest import render_prompt_ids
from inference.config import LimitsConfig
from inference.engine import GenerationEngine
from inference.engine_types import GenerationRequest, SamplingParams
from inference.proofs import ActivationProof, verify_proofs
from inference.proofs_serving import RequestProofs, TokenizerOps, reencoded_reply_ids

PROMPTS = [
    [{"role": "user", "content": "Hi."}],
    [{"role": "system", "content": "You answer in one short sentence, always."},
     {"role": "user", "content": "What do you know about lighthouses on rocky coasts?"}],
    [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue."},
     {"role": "user", "content": "Another one, please, but warmer this time."}],
]



pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def engine(tiny):
    engine = GenerationEngine(tiny, LimitsConfig(max_batch_size=8, max_n=4)).start()
    yield engine
    engine.stop()


def proven(engine, messages, **params):
    proofs = RequestProofs()
    request = GenerationRequest(messages=messages, params=SamplingParams(**params), capture_hidden=True,
                                hidden_sink=proofs.sink)
    return engine.submit(request), proofs


def stored_ids(tokenizer, messages, entry, choice, proof):
    """prompt and reply ids as a verifier rebuilds them (from the entry, else from the text)."""
    encode = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]   # noqa: E731
    prompt = entry["prompt_ids"] if "prompt_ids" in entry else render_prompt_ids(tokenizer, messages)
    reply = entry.get("reply_ids") or reencoded_reply_ids(encode, tokenizer.eos_token_id, choice.text,
                                                          choice.finish_reason, len(prompt), proof.positions)
    return prompt, reply


def test_batched_requests_with_padding_verify(engine, tiny):
    # submitted together: admitted in one prefill (left padding) and decoded in one batch
    handles = [proven(engine, messages, max_tokens=36 + 5 * i, temperature=1.0, seed=i, n=2)
               for i, messages in enumerate(PROMPTS)]
    for (handle, proofs), messages in zip(handles, PROMPTS):
        result = handle.result(120)
        entries = proofs.pending(result, TokenizerOps.of(engine, result.identity)).finish(messages)
        assert [e["choice_index"] for e in entries] == [0, 1]
        for entry, choice in zip(entries, result.choices):
            proof = ActivationProof.from_dict(entry)
            assert "prompt_ids" not in entry              # the messages render to what the model saw
            prompt, reply = stored_ids(tiny.tokenizer, messages, entry, choice, proof)
            assert (prompt, reply) == (result.prompt_ids, choice.token_ids)
            assert proof.positions == len(prompt) + len(reply)
            checked = verify_proofs(tiny.model, prompt, reply, proof)
            assert checked.accepted, checked.reason
    assert engine.stats.max_rows_in_step >= 4             # the requests really shared decode steps


def test_ids_are_kept_only_when_the_stored_text_cannot_give_them_back(engine, tiny):
    messages = [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Count to ten."}]
    handle, proofs = proven(engine, messages, max_tokens=20, temperature=0.0)
    result = handle.result(120)
    ops = TokenizerOps.of(engine, result.identity)
    # stored as the client sent it ("developer"), served as "system": the prompt ids must be kept
    as_stored = [{"role": "developer", "content": "Be terse."}, messages[1]]
    [entry] = proofs.pending(result, ops).finish(as_stored)
    assert entry["prompt_ids"] == result.prompt_ids
    encode = lambda text: tiny.tokenizer(text, add_special_tokens=False)["input_ids"]   # noqa: E731
    choice = result.choices[0]
    rebuilt = reencoded_reply_ids(encode, tiny.tokenizer.eos_token_id, choice.text, choice.finish_reason,
                                  len(result.prompt_ids), entry["positions"])
    assert ("reply_ids" in entry) == (rebuilt != choice.token_ids)
    # after a hot swap the serving tokenizer is unknown: every id is kept, and it still verifies
    [unknown] = proofs.pending(result, None).finish(messages)
    assert unknown["prompt_ids"] == result.prompt_ids and unknown["reply_ids"] == choice.token_ids
    assert verify_proofs(tiny.model, unknown["prompt_ids"], unknown["reply_ids"], ActivationProof.from_dict(unknown)).accepted


def test_a_proof_that_cannot_be_built_costs_the_proof_not_the_reply(engine, tiny):
    proofs = RequestProofs()
    calls = []

    def sink(index, rows):
        calls.append(index)
        if index == 1 and len(calls) > 4:               # choice 1 goes bad halfway through
            rows = torch.full_like(rows, float("nan"))
        proofs.sink(index, rows)

    request = GenerationRequest(messages=PROMPTS[0], params=SamplingParams(max_tokens=12, temperature=1.0, seed=5, n=2),
                                capture_hidden=True, hidden_sink=sink)
    result = engine.generate(request, timeout=120)
    assert [c.finish_reason for c in result.choices] == ["length", "length"]     # both replies complete
    entries = proofs.pending(result, TokenizerOps.of(engine, result.identity)).finish(PROMPTS[0])
    assert [e["choice_index"] for e in entries] == [0]


def test_capture_keeps_proofs_only_for_requests_it_stores(tmp_path):
    from inference.capture import build_capture_hook

    hook = build_capture_hook(tmp_path / "node.db", "node-a", "share")
    try:
        assert hook.will_store({}, {})
        assert not hook.will_store({"x-swarmloop-trace": "off"}, {})
        assert not hook.will_store({}, {"swarmloop_trace": "no"})
    finally:
        hook.close()

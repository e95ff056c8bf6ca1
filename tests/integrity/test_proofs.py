"""Activation proofs: built from a real KV-cache decode (hook on model.model.norm), verified by one
prefill; honest proofs pass, each kind of tampering is rejected."""

from __future__ import annotations

import json
import random

import pytest
import torch

from inference.proofs import (
    FP32_THRESHOLDS,
    ActivationProof,
    ProofBuilder,
    ProofError,
    build_proofs,
    chunk_bounds,
    final_hidden_states,
    verify_proofs,
)
from inference.proofs_decode import decode
from integrity_helpers import alter_one_token, chat_prompt_ids

QUESTION = [{"role": "user", "content": "I just moved to a new city and I don't know anyone yet. Any advice?"}]
OTHER_QUESTION = [{"role": "user", "content": "I just moved to a new city and I don't know anyone here. Any advice?"}]
TINY_REPLY_TOKENS = 66          # prompt chunk + 32 + 32 + a 1-row chunk: every layout case
EMBEDDED_REPLY_TOKENS = 24      # prompt chunk + one decode chunk: enough, and decoding is the slow part


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny_trace(tiny):
    prompt = chat_prompt_ids(tiny.tokenizer, QUESTION)
    result = decode(tiny.model, prompt, TINY_REPLY_TOKENS, temperature=1.0, seed=0)
    assert len(result.reply_ids) == TINY_REPLY_TOKENS
    return prompt, result.reply_ids, result.proof


@pytest.fixture(scope="module")
def embedded_trace(embedded):
    prompt = chat_prompt_ids(embedded.tokenizer, QUESTION)
    result = decode(embedded.model, prompt, EMBEDDED_REPLY_TOKENS, temperature=0.7, seed=1,
                    eos_token_id=embedded.tokenizer.eos_token_id)
    return prompt, result.reply_ids, result.proof


def rejected(model, prompt, reply, proof) -> str:
    result = verify_proofs(model, prompt, reply, proof)
    assert not result.accepted
    assert result.reason
    return result.reason


# ------------------------------------------------------------------------------- honest traces


def test_proof_layout(tiny_trace):
    prompt, reply, proof = tiny_trace
    assert proof.positions == len(prompt) + len(reply) - 1      # the last sampled token is never fed
    bounds = chunk_bounds(len(prompt), proof.positions)
    assert [end - start for start, end in bounds] == [len(prompt), 32, 32, 1]
    # 258 bytes per chunk; the 1-row chunk of tiny-random (hidden 64) has only 64 values to commit
    assert [len(chunk) for chunk in proof.chunks] == [258, 258, 258, 2 + 2 * 64]
    assert proof.dtype == "float32"


def test_honest_kv_cache_proof_verifies(tiny, tiny_trace):
    prompt, reply, proof = tiny_trace
    result = verify_proofs(tiny.model, prompt, reply, proof)
    assert result.accepted, result.reason
    assert len(result.chunks) == 4
    assert all(c.exp_mismatches <= FP32_THRESHOLDS.max_exp_mismatches for c in result.chunks)


def test_honest_proof_survives_json_storage(tiny, tiny_trace):
    prompt, reply, proof = tiny_trace
    stored = json.loads(json.dumps(proof.to_dict()))
    assert verify_proofs(tiny.model, prompt, reply, stored).accepted
    assert ActivationProof.from_dict(stored) == proof


def test_builder_does_not_care_how_rows_arrive(tiny, tiny_trace):
    prompt, reply, _ = tiny_trace
    ids = prompt + reply
    hidden = final_hidden_states(tiny.model, ids[:-1])
    reference = build_proofs(tiny.model, ids, len(prompt))
    pieces = ProofBuilder(len(prompt))
    rng = random.Random(0)
    start = 0
    while start < hidden.shape[0]:
        step = rng.choice([1, 1, 2, 5, 40])
        pieces.add_hidden(hidden[start:start + step].unsqueeze(0) if step == 5 else hidden[start:start + step])
        start += step
    assert pieces.finish() == reference


def test_honest_embedded_trace_verifies(embedded, embedded_trace):
    prompt, reply, proof = embedded_trace
    result = verify_proofs(embedded.model, prompt, reply, proof)
    assert result.accepted, result.reason
    assert result.last_token_logprob is not None and result.last_token_logprob > -5


# --------------------------------------------------------------------------------- tamperings


@pytest.mark.parametrize("position", [0, 17, 31, 32, 50, TINY_REPLY_TOKENS - 2])
def test_reply_altered_by_one_token_is_rejected(tiny, tiny_trace, position):
    prompt, reply, proof = tiny_trace
    altered = alter_one_token(reply, position, len(tiny.tokenizer), random.Random(position))
    assert "does not match" in rejected(tiny.model, prompt, altered, proof)


def test_engine_style_proof_covering_the_last_token_binds_it(tiny):
    prompt = chat_prompt_ids(tiny.tokenizer, QUESTION)
    result = decode(tiny.model, prompt, 33, temperature=1.0, seed=3, cover_last=True)
    proof, reply = result.proof, result.reply_ids
    assert proof.positions == len(prompt) + len(reply)
    checked = verify_proofs(tiny.model, prompt, reply, proof)
    assert checked.accepted, checked.reason
    assert checked.last_token_logprob is None                   # no plausibility check needed
    altered = alter_one_token(reply, len(reply) - 1, len(tiny.tokenizer), random.Random(0))
    assert "does not match" in rejected(tiny.model, prompt, altered, proof)


def test_last_reply_token_swapped_for_an_implausible_one_is_rejected(embedded, embedded_trace):
    prompt, reply, proof = embedded_trace
    with torch.inference_mode():
        hidden = final_hidden_states(embedded.model, (prompt + reply)[:-1])
        logits = embedded.model.get_output_embeddings()(hidden[-1:])[0]
    altered = reply[:-1] + [int(logits.argmin())]
    assert "implausible" in rejected(embedded.model, prompt, altered, proof)


def test_reply_with_tokens_added_or_removed_is_rejected(tiny, tiny_trace):
    prompt, reply, proof = tiny_trace
    assert "positions" in rejected(tiny.model, prompt, reply + [42], proof)
    assert "positions" in rejected(tiny.model, prompt, reply[:-3], proof)


def test_altered_prompt_is_rejected(tiny, embedded, tiny_trace, embedded_trace):
    prompt, reply, proof = tiny_trace
    other = chat_prompt_ids(tiny.tokenizer, OTHER_QUESTION)
    assert len(other) == len(prompt) and other != prompt      # same length: only the content differs
    assert "does not match" in rejected(tiny.model, other, reply, proof)
    prompt, reply, proof = embedded_trace
    assert "does not match" in rejected(embedded.model, other, reply, proof)
    assert "prompt" in rejected(embedded.model, prompt[:-1], reply, proof)


def test_reply_from_tiny_random_claimed_as_embedded_is_rejected(tiny, embedded, tiny_trace, embedded_trace):
    prompt, reply, proof = tiny_trace
    rejected(embedded.model, prompt, reply, proof)      # the 1-row chunk: 64 values (hidden 64), not 128
    prompt, reply, proof = embedded_trace
    assert "does not match" in rejected(tiny.model, prompt, reply, proof)


def test_reply_from_a_finetuned_v1_claimed_as_v0_is_rejected(embedded, embedded_v1):
    from integrity_helpers import weight_delta

    assert 0 < weight_delta(embedded.model, embedded_v1) < 1e-3      # a small, real LoRA update
    prompt = chat_prompt_ids(embedded.tokenizer, QUESTION)
    result = decode(embedded_v1, prompt, EMBEDDED_REPLY_TOKENS, temperature=0.7, seed=1, eos_token_id=embedded.tokenizer.eos_token_id)
    assert verify_proofs(embedded_v1, prompt, result.reply_ids, result.proof).accepted
    assert "does not match" in rejected(embedded.model, prompt, result.reply_ids, result.proof)


def test_bf16_run_checked_against_fp32_is_rejected(embedded, embedded_bf16):
    prompt = chat_prompt_ids(embedded.tokenizer, QUESTION)
    result = decode(embedded_bf16, prompt, EMBEDDED_REPLY_TOKENS, temperature=0.7, seed=1, eos_token_id=embedded.tokenizer.eos_token_id)
    assert result.proof.dtype == "bfloat16"
    assert "bfloat16" in rejected(embedded.model, prompt, result.reply_ids, result.proof)
    lying = ActivationProof(**{**result.proof.__dict__, "dtype": "float32"})   # a node that claims fp32
    assert "does not match" in rejected(embedded.model, prompt, result.reply_ids, lying)


def test_proof_bent_to_a_weaker_protocol_is_rejected(tiny, tiny_trace):
    prompt, reply, proof = tiny_trace
    ids = prompt + reply
    coarse = build_proofs(tiny.model, ids, len(prompt), chunk_tokens=1024, top_k=8)
    assert "protocol" in rejected(tiny.model, prompt, reply, coarse)
    short = ActivationProof(**{**proof.__dict__, "chunks": proof.chunks[:-1]})
    assert "chunks" in rejected(tiny.model, prompt, reply, short)
    garbled = ActivationProof(**{**proof.__dict__, "chunks": proof.chunks[:-1] + [b"\x00"]})
    assert "chunk" in rejected(tiny.model, prompt, reply, garbled)
    assert "not an activation proof" in rejected(tiny.model, prompt, reply, {"scheme": "toploc-gf65497-v1"})


def test_builder_refuses_what_it_cannot_commit():
    builder = ProofBuilder(4)
    with pytest.raises(ProofError, match="one sequence"):
        builder.add_hidden(torch.zeros(2, 3, 8))
    builder.add_hidden(torch.randn(3, 8))
    with pytest.raises(ProofError, match="fewer than the prompt"):
        builder.finish()
    with pytest.raises(ProofError, match="non-finite"):
        ProofBuilder(1).add_hidden(torch.tensor([[float("nan")] * 8]))
    with pytest.raises(ProofError, match="support"):
        ProofBuilder(1).add_hidden(torch.zeros(1, 8, dtype=torch.float16))


def test_bf16_rows_handed_over_as_float32_keep_their_dtype(tiny):
    rows = torch.randn(6, 64).to(torch.bfloat16)
    native = ProofBuilder(2)
    native.add_hidden(rows)
    upcast = ProofBuilder(2, dtype="bfloat16")
    upcast.add_hidden(rows.float())
    assert native.finish() == upcast.finish()

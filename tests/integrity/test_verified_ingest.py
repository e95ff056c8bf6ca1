"""Verified ingest on real SQLite node stores: signatures on every record a round uses (traces,
feedback, and the sources of derived pairs), activation proofs on a sample (tiny-random, real
KV-cache decodes), and the decision to exclude a node."""

from __future__ import annotations

import copy
import sqlite3

import pytest
import torch

from federation.ingest import IngestSettings, VerifierModels, check_node_data, sample_size, verify_trace_proofs
from signed_stores import (
    fill_signed_store,
    identity_of,
    make_trace,
    proven_trace,
    signed,
    text_proven_trace,
)
from traces.schemas import Feedback
from traces.signing import NodeKey, TrustedKeys
from traces.store import TraceStore
from traces.verify import verify_store


@pytest.fixture(scope="module")
def node_key() -> NodeKey:
    return NodeKey.generate()


@pytest.fixture(scope="module")
def trusted(node_key) -> TrustedKeys:
    return TrustedKeys.of(node_key, names=["node-a"])


def _settings(trusted_keys: TrustedKeys | None, **kwargs) -> IngestSettings:
    return IngestSettings(trusted_keys_toml=trusted_keys.to_toml() if trusted_keys else "", **kwargs)


# ------------------------------------------------------------------------------- signatures


def test_signed_records_survive_the_store_and_verify(tmp_path, node_key, trusted):
    """What a node signs is what the store gives back: every field (consent and redaction counts
    live in columns, the rest in the compressed payload) round-trips to the signed bytes."""
    path = fill_signed_store(tmp_path / "a.db", node_key, 6, pairs=True)
    with TraceStore(path) as store:
        store.add_traces([make_trace(node_key, identity_of(), "Mail me at [EMAIL]", ["ok"], consent="local",
                                     redaction={"EMAIL": 1})])
        sft = verify_store(store, "sft", trusted)
        dpo = verify_store(store, "dpo", trusted)
        kto = verify_store(store, "kto", trusted)
    assert (sft.traces, sft.feedback, sft.verified) == (7, 9, 16)
    assert not sft.failed(require_signatures=True) and sft.signers == {"node-a": 16}
    # 6 choice pairs + 3 correction pairs, each checked against its signed trace and feedback
    assert (dpo.derived, dpo.mismatched, dpo.traces, dpo.feedback) == (9, 0, 6, 9)
    assert not dpo.failed(require_signatures=True) and kto.checked == 0


def test_records_altered_after_signing_or_by_other_keys_fail(tmp_path, node_key, trusted):
    model = identity_of()
    path = fill_signed_store(tmp_path / "a.db", node_key, 4)
    honest = make_trace(node_key, model, "What is 2 plus 2?", ["4"])
    altered = honest.model_copy(update={"choices": [honest.choices[0].model_copy(update={"text": "5"})]})
    stranger = NodeKey.generate()
    with TraceStore(path) as store:
        store.add_traces([altered, make_trace(stranger, model, "Hi?", ["Hello."]), make_trace(None, model, "Yo?", ["Hey."])])
    with TraceStore(path, readonly=True) as store:
        report = verify_store(store, "sft", trusted)
    assert (report.bad_signature, report.unknown_key, report.unsigned, report.verified) == (1, 1, 1, 4)
    assert report.failed(require_signatures=False)
    assert "1 bad signature(s), 1 record(s) signed by an unknown key" in report.reason(False)
    assert "altered after signing" in report.reason(False)

    # consent lives in a column next to the payload: raising local-only traces to "share" breaks the signature
    only_local = fill_signed_store(tmp_path / "b.db", node_key, 2, consent="local")
    with sqlite3.connect(only_local) as db:
        db.execute("UPDATE traces SET consent = 2 WHERE seq = 1")
    with TraceStore(only_local, readonly=True) as store:
        report = verify_store(store, "sft", trusted)
    assert (report.bad_signature, report.verified) == (1, 1)


def test_unsigned_records_fail_only_when_signatures_are_required(tmp_path, trusted):
    path = fill_signed_store(tmp_path / "a.db", None, 4)
    with TraceStore(path, readonly=True) as store:
        report = verify_store(store, "sft", trusted)
        unchecked = verify_store(store, "sft", None)
    assert report.unsigned == 4 and not report.failed(False) and report.failed(True)
    assert report.reason(True) == "4 unsigned record(s) of 4 checked"
    assert not unchecked.enabled and unchecked.checked == 0


def test_records_of_another_trusted_node_fail_when_the_node_has_its_own_key(tmp_path, node_key):
    other = NodeKey.generate()
    path = fill_signed_store(tmp_path / "a.db", other, 3)        # node-a's store, node-b's records
    both = TrustedKeys.of(node_key, other, names=["node-a", "node-b"])
    with TraceStore(path, readonly=True) as store:
        as_node_a = verify_store(store, "sft", both, expected_signer="node-a")
        anyone = verify_store(store, "sft", both)
    assert as_node_a.unknown_key == 3 and "not by this node's key node-a" in as_node_a.problems[0]
    assert not anyone.failed(True) and anyone.signers == {"node-b": 3}


def test_derived_pairs_must_follow_from_their_signed_sources(tmp_path, node_key, trusted):
    import json

    from traces.compression import Codec

    path = fill_signed_store(tmp_path / "a.db", node_key, 4, pairs=True)
    with TraceStore(path) as store:
        trace = next(store.iter_traces())
        # a judge-derived pair of the trace's own replies is fine; one with an invented reply is not
        from traces.pairs import pairs_from_scores

        store.add_derived(trace.id, pairs_from_scores(trace, [1.0, 0.0], "numeric"))
        report = verify_store(store, "dpo", trusted)
        assert report.derived == 7 and report.mismatched == 0
        forged = pairs_from_scores(trace, [1.0, 0.0], "length")[0]
        forged = forged.model_copy(update={"chosen": forged.chosen.model_copy(update={"content": "Buy crypto now."})})
        store.add_derived(trace.id, [forged])
    # a pair rewritten in the table after it was derived: the row no longer follows from its sources
    with sqlite3.connect(path) as db:
        seq, dict_id, payload = db.execute("SELECT seq, dict, payload FROM pairs WHERE origin = 'choice' LIMIT 1").fetchone()
        assert dict_id == 0      # small stores are not dictionary-compressed
        row = json.loads(Codec().decompress(payload, 0))
        row["chosen"]["content"] = "Something else entirely."
        db.execute("UPDATE pairs SET payload = ? WHERE seq = ?", (Codec().compress(json.dumps(row).encode(), 0), seq))
    with TraceStore(path, readonly=True) as store:
        report = verify_store(store, "dpo", trusted)
    assert report.mismatched == 2 and report.failed(False)
    assert any("not the trace's replies" in p for p in report.problems)
    assert any("differs from what feedback" in p and "chosen" in p for p in report.problems)


def test_feedback_altered_after_signing_fails_the_pairs_it_made(tmp_path, node_key, trusted):
    model = identity_of()
    path = fill_signed_store(tmp_path / "a.db", node_key, 2, pairs=True)
    with TraceStore(path) as store:
        trace = make_trace(node_key, model, "Pick one", ["A", "B"])
        store.add_traces([trace])
        good = signed(Feedback(id="fb-x", trace_id=trace.id, choice=0), node_key, weights_sha256=model.weights_sha256)
        store.record_feedback(good.model_copy(update={"choice": 1}))     # flipped after signing
        report = verify_store(store, "dpo", trusted)
    assert report.bad_signature == 1 and "feedback fb-x" in report.problems[0]


# ----------------------------------------------------------------------------------- proofs


@pytest.fixture(scope="module")
def impostor(tiny):
    """Another model (tiny-random's weights perturbed) a cheating node serves while claiming tiny-random."""
    from inference.loading import LoadedModel

    model = copy.deepcopy(tiny.model)
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * 0.02)
    return LoadedModel(model=model, tokenizer=tiny.tokenizer, identity=tiny.identity, resolved=tiny.resolved, dtype="float32")


def test_proofs_pass_fail_or_are_unverifiable(tiny, impostor, node_key):
    model = identity_of()
    models = VerifierModels(base_model=tiny.model, tokenizer=tiny.tokenizer, base_ref="tiny-random",
                            base_sha256=model.weights_sha256)
    honest = proven_trace(tiny, node_key, "Tell me about your weekend.", model=model, seed=1)
    from_text = text_proven_trace(tiny, node_key, "What is the capital of France?", "The capital of France is Paris.", model=model)
    cheated = proven_trace(impostor, node_key, "Tell me about your weekend.", model=model, seed=1)
    other = identity_of("embedded:smollm2-135m-instruct")
    outcomes = {
        "honest": verify_trace_proofs(honest, models),
        "text ids": verify_trace_proofs(from_text, models),
        "impostor": verify_trace_proofs(cheated, models),
        "no proof": verify_trace_proofs(make_trace(node_key, model, "Hi", ["Hello"]), models),
        # the writer keeps the proofs when only metadata was redacted (the model never saw it) ...
        "redacted metadata": verify_trace_proofs(honest.model_copy(update={
            "metadata": {"task_id": "<SECRET_1>"}, "redaction": honest.redaction.model_copy(update={"counts": {"SECRET": 1}})}), models),
        # ... and replaces them by markers when the text the model saw was redacted; a node that
        # keeps a proof over text it changed fails
        "redacted text, proof kept": verify_trace_proofs(honest.model_copy(update={
            "messages": [m.model_copy(update={"content": "Tell me about <EMAIL_1>."}) for m in honest.messages],
            "redaction": honest.redaction.model_copy(update={"counts": {"EMAIL": 1}})}), models),
        "other weights": verify_trace_proofs(proven_trace(tiny, node_key, "Hey", model=model, claim=other), models),
        "garbage": verify_trace_proofs(honest.model_copy(update={"proofs": [{"scheme": "nope"}]}), models),
        "marker": verify_trace_proofs(honest.model_copy(update={"proofs": [{"choice_index": 0, "proof": "redacted"}]}), models),
        "no such choice": verify_trace_proofs(honest.model_copy(update={"proofs": [{**honest.proofs[0], "choice_index": 3}]}), models),
    }
    assert {k: o.status for k, o in outcomes.items()} == {
        "honest": "passed", "text ids": "passed", "impostor": "failed", "no proof": "unverifiable",
        "redacted metadata": "passed", "redacted text, proof kept": "failed", "other weights": "unverifiable", "garbage": "failed", "marker": "unverifiable",
        "no such choice": "failed"}
    assert "does not match" in outcomes["impostor"].reason
    assert outcomes["marker"].reason.startswith("redacted")


def test_proofs_run_on_the_base_with_the_adapter_off(tiny, node_key):
    """The ClientApp verifies on its training model: a PEFT model whose global adapter is not zero."""
    from federation.config import LoraSection
    from federation.models import build_lora_model
    from inference.loading import load_model
    from training.config import LoraSettings

    model = identity_of()
    peft_model = build_lora_model(load_model("tiny-random").model, LoraSettings(dropout=0.0), LoraSection())
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if ".lora_B." in name:
                param.normal_(0, 0.5)
    peft_model.train()
    models = VerifierModels(base_model=peft_model, tokenizer=tiny.tokenizer, base_ref="tiny-random",
                            base_sha256=model.weights_sha256)
    assert verify_trace_proofs(proven_trace(tiny, node_key, "Any plans for today?", model=model), models).status == "passed"
    assert peft_model.training      # left as it was found


def test_node_with_a_failed_proof_or_bad_signature_is_excluded(tmp_path, tiny, impostor, node_key, trusted):
    model = identity_of()
    stores = {}
    for name, maker in (("honest", tiny), ("impostor", impostor)):
        path = fill_signed_store(tmp_path / f"{name}.db", node_key, 3)
        with TraceStore(path) as store:
            store.add_traces([proven_trace(maker, node_key, f"Question {i} for the {name} node?", model=model, seed=i)
                              for i in range(2)])
        stores[name] = path
    models = VerifierModels(base_model=tiny.model, tokenizer=tiny.tokenizer, base_ref="tiny-random",
                            base_sha256=model.weights_sha256)
    everything = _settings(trusted, require_signatures=True, proof_sample_rate=1.0, seed=3)

    good = check_node_data(stores["honest"], "sft", everything, node_name="node-a", models=models)
    assert not good.excluded and good.reason == ""
    assert (good.records_checked, good.verified, good.proofs_sampled) == (5, 5, 5)
    assert (good.proofs_passed, good.proofs_failed, good.proofs_unverifiable) == (2, 0, 3)
    assert good.unverifiable_reasons == "no proof:3"

    bad = check_node_data(stores["impostor"], "sft", everything, node_name="node-a", models=models)
    assert bad.excluded and bad.proofs_failed == 2 and bad.reason.startswith("proofs: 2 of 2 checked failed")

    # the same honest store under an allow-list without its key: excluded before any proof
    stranger = _settings(TrustedKeys.of(NodeKey.generate(), names=["node-a"]), proof_sample_rate=0.0)
    refused = check_node_data(stores["honest"], "sft", stranger, node_name="node-a")
    assert refused.excluded and refused.unknown_key == 5 and "signed by an unknown key" in refused.reason

    # a report travels as a Flower ConfigRecord and comes back whole
    from flwr.app import ConfigRecord

    from federation.ingest import IngestReport

    assert IngestReport.from_record(ConfigRecord(bad.to_record())) == bad


def test_sampling_is_at_least_one_trace_and_seeded(tmp_path, node_key, trusted):
    assert [sample_size(n, 0.05) for n in (0, 1, 19, 20, 21, 100)] == [0, 1, 1, 1, 2, 5]
    assert sample_size(10, 0.0) == 0 and sample_size(3, 1.0) == 3
    path = fill_signed_store(tmp_path / "a.db", node_key, 40)
    runs = [check_node_data(path, "sft", _settings(trusted, proof_sample_rate=0.1, seed=seed), node_name="node-a")
            for seed in (1, 1, 2)]
    assert all(r.proofs_sampled == 4 and r.proofs_unverifiable == 4 for r in runs)   # no model given: unverifiable
    assert all(not r.excluded for r in runs)


def test_exported_folder_is_unsigned(tmp_path, trusted):
    folder = tmp_path / "export"
    folder.mkdir()
    required = check_node_data(folder, "sft", _settings(trusted, require_signatures=True), node_name="node-a")
    assert required.excluded and "carries no signatures" in required.reason
    assert not check_node_data(folder, "sft", _settings(trusted), node_name="node-a").excluded


def test_local_consent_records_are_checked_like_the_ones_the_round_trains_on(tmp_path, node_key, trusted):
    """Nodes keep traces at consent "local" (the loop's default) and train on them: ingest must
    check exactly those, not only the share-level ones that may leave the node."""
    from federation.dataset import node_dataset

    path = fill_signed_store(tmp_path / "local.db", node_key, 5, consent="local")
    settings = _settings(trusted, require_signatures=True, proof_sample_rate=0.0)
    honest = check_node_data(path, "sft", settings, node_name="node-a")
    trained = node_dataset(path, "sft", min_examples=1, max_examples=None, seed=0)
    assert honest.records_checked == honest.verified == len(trained) == 5 and not honest.excluded

    with sqlite3.connect(path) as db:                       # a local record tampered with on disk
        db.execute("UPDATE traces SET consent = 2 WHERE seq = 2")     # local raised to share
    tampered = check_node_data(path, "sft", settings, node_name="node-a")
    assert tampered.excluded and tampered.bad_signatures == 1, tampered

"""Integrity end to end in a real Flower simulation (tiny-random, SFT, 3 nodes with signed stores):
verified ingest excludes a node whose records were altered after signing and one whose activation
proofs do not match the model it claims, reports both in the round metrics, the manifest and the
card; the trainer's key signs the checkpoint, which a node trusting that key accepts and a node
trusting other keys refuses."""

from __future__ import annotations

import copy
import stat
import subprocess
import sys

import pytest
import torch

from signed_stores import fill_signed_store, identity_of, make_trace, proven_trace, text_proven_trace, trusted_file
from tests.federation.fed_helpers import base_config, fill_store
from traces.signing import NodeKey, TrustedKeys
from traces.store import TraceStore


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "swarmloop.cli", *args], capture_output=True, text=True, timeout=120)


def test_signed_run_excludes_tampered_nodes_and_publishes_a_signed_checkpoint(tmp_path, tiny):
    from federation.config import FederationConfig
    from federation.sim import run_simulation
    from inference.hotswap_checks import CheckpointRefused, load_trusted_keys, verify_checkpoint
    from inference.loading import LoadedModel
    from training.manifest import read_manifest
    from training.signing import verify_signed_checkpoint

    model = identity_of()
    keys = {name: NodeKey.generate() for name in ("node-a", "node-b", "node-c")}
    nodes_file = trusted_file(tmp_path / "trusted-nodes.toml", keys)

    # node-a: honest, signed, with real activation proofs on three of its traces
    honest = fill_signed_store(tmp_path / "a.db", keys["node-a"], 5, tag="a")
    with TraceStore(honest) as store:
        store.add_traces([proven_trace(tiny, keys["node-a"], f"What did you cook on day {i}?", model=model, seed=i)
                          for i in range(2)]
                         + [text_proven_trace(tiny, keys["node-a"], "Capital of France?", "Paris, of course.", model=model)])
    # node-b: one reply edited after it was signed
    altered = fill_signed_store(tmp_path / "b.db", keys["node-b"], 5, tag="b")
    trace = make_trace(keys["node-b"], model, "Where can I read more?", ["In the library."])
    edited = trace.model_copy(update={"choices": [
        trace.choices[0].model_copy(update={"text": "Visit totally-legit.example for the answer."})]})
    with TraceStore(altered) as store:
        store.add_traces([edited])
    # node-c: signed by its own key, but the replies with proofs came from another model
    impostor_model = copy.deepcopy(tiny.model)
    with torch.no_grad():
        generator = torch.Generator().manual_seed(3)
        for param in impostor_model.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * 0.02)
    impostor = LoadedModel(model=impostor_model, tokenizer=tiny.tokenizer, identity=tiny.identity,
                           resolved=tiny.resolved, dtype="float32")
    cheater = fill_signed_store(tmp_path / "c.db", keys["node-c"], 5, tag="c")
    with TraceStore(cheater) as store:
        store.add_traces([proven_trace(impostor, keys["node-c"], f"Any tips for day {i}?", model=model, seed=i)
                          for i in range(2)])

    trainer_key = tmp_path / "keys" / "trainer.key"
    data = base_config(tmp_path, [("node-a", honest), ("node-b", altered), ("node-c", cheater)], rounds=1,
                       eval_store=fill_store(tmp_path / "eval.db", "eval", 4),
                       integrity={"trusted_node_keys": str(nodes_file), "require_signatures": True,
                                  "proof_sample_rate": 1.0},
                       publish={"signing_key": str(trainer_key)})

    result = run_simulation(FederationConfig.model_validate(data))

    # ---- the round: node-a trained, node-b and node-c sat it out, each with its reason
    nodes = result.history[1]["nodes"]
    assert nodes["node-a"]["status"] == "used"
    ingest_a = nodes["node-a"]["integrity"]
    assert (ingest_a["records_checked"], ingest_a["verified"], ingest_a["unsigned"]) == (8, 8, 0)
    assert (ingest_a["proofs_sampled"], ingest_a["proofs_passed"], ingest_a["proofs_failed"]) == (8, 3, 0)
    assert ingest_a["proofs_unverifiable"] == 5 and ingest_a["signers"] == "node-a:8"
    assert nodes["node-b"]["status"] == "excluded" and "bad signature" in nodes["node-b"]["reason"]
    assert nodes["node-b"]["integrity"]["bad_signatures"] == 1
    assert nodes["node-c"]["status"] == "excluded" and nodes["node-c"]["reason"].startswith("integrity: proofs: 2 of 2")
    assert result.examples_by_node == {"node-a": 8}

    # ---- the manifest and the card say so
    manifest = read_manifest(result.published)
    integrity = manifest.integrity
    per_node = integrity["ingest"]["nodes"]
    assert per_node["node-a"]["rounds_excluded"] == 0 and per_node["node-a"]["proofs_passed"] == 3
    assert per_node["node-b"]["rounds_excluded"] == 1 and per_node["node-b"]["bad_signatures"] == 1
    assert per_node["node-c"]["rounds_excluded"] == 1 and per_node["node-c"]["proofs_failed"] == 2
    assert per_node["node-c"]["exclusions"][0].startswith("round 1: proofs: 2 of 2 checked failed")
    assert integrity["ingest"]["trusted_node_keys"] == ["node-a", "node-b", "node-c"]
    assert integrity["ingest"]["require_signatures"] is True
    card = (result.published / "README.md").read_text()
    assert "## Integrity" in card and "| node-b | " in card and "1 of 1 |" in card

    # ---- the trainer's key: created 0600 on first use, it signed the manifest
    assert stat.S_IMODE(trainer_key.stat().st_mode) == 0o600
    made = _cli("checkpoint", "trust", "--signing-key", str(trainer_key), "--name", "trainer",
                "--out", str(tmp_path / "trusted-trainer.toml"))
    assert made.returncode == 0, made.stderr
    trusted = TrustedKeys.from_toml(tmp_path / "trusted-trainer.toml")
    assert integrity["signer"]["node_id"] == result.signed_by and result.signed_by in trusted
    assert verify_signed_checkpoint(result.published, trusted)[1] == "trainer"

    # ---- a node trusting that key accepts the checkpoint; one trusting other keys refuses it
    accepted, digest = verify_checkpoint(result.published, manifest.version, load_trusted_keys(tmp_path / "trusted-trainer.toml"))
    assert accepted.version == result.version and digest == manifest.weights_sha256
    others = tmp_path / "other-keys.toml"
    others.write_text(TrustedKeys.of(NodeKey.generate(), names=["trainer"]).to_toml())
    with pytest.raises(CheckpointRefused) as refused:
        verify_checkpoint(result.published, manifest.version, load_trusted_keys(others))
    assert refused.value.stage == "signature" and "not in the trusted keys" in refused.value.reason

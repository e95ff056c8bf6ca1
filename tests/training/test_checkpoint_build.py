"""Checkpoint build: merged weights that plain transformers loads with the same logits, a manifest
with lineage, a card huggingface_hub parses, the registry and the model-ref parser, tampering."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from training_rows import sft_rows

from inference.model_refs import resolve_model_ref
from training.checkpoint import CheckpointError, build_checkpoint, lineage_base, next_version
from training.manifest import PrivacySummary, VerificationError, read_manifest, sha256_file, verify_folder
from training.registry import LocalRegistry, RegistryError


def _ids(tokenizer):
    rendered = tokenizer.apply_chat_template(sft_rows(1)[0]["messages"], tokenize=True, return_dict=True)
    return torch.tensor([rendered["input_ids"]])


@pytest.fixture
def checkpoint_v1(sft_trained, tmp_path):
    loaded, result, _ = sft_trained
    training = result.training_summary(examples_by_node={"node-0": 4, "node-1": 4}, rounds=2, method="fed-sft")
    path = build_checkpoint(
        result.model, loaded.tokenizer, tmp_path / "v1", version=next_version(loaded.resolved),
        base_model=lineage_base(loaded.resolved), parent=loaded.resolved, training=training,
        eval_metrics={"heldout_loss": 9.5, "task_accuracy": 0.25},
        privacy=PrivacySummary(dp=True, epsilon=3.0, delta=1e-5, mechanism="server-side fixed clipping"),
        communication={"bytes_up": 1234, "bytes_down": 5678},
    )
    return path


def test_checkpoint_loads_with_plain_transformers_and_matches_the_merged_model(sft_trained, checkpoint_v1):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    loaded, result, _ = sft_trained
    ids = _ids(loaded.tokenizer)
    with torch.no_grad():
        peft_logits = result.model(input_ids=ids).logits
        plain = AutoModelForCausalLM.from_pretrained(checkpoint_v1)
        plain_logits = plain(input_ids=ids).logits
    assert (plain_logits - peft_logits).abs().max().item() < 1e-4
    assert list(result.model.peft_config) == ["default"]  # the build merged a copy, not the caller's model
    with torch.no_grad(), result.model.disable_adapter():
        untrained = result.model(input_ids=ids).logits
    assert (plain_logits - untrained).abs().max().item() > 1e-3  # the adapter really is in the weights
    tokenizer = AutoTokenizer.from_pretrained(checkpoint_v1)
    assert "{% generation %}" in tokenizer.chat_template  # the training template travels with the weights


def test_a_dpo_checkpoint_also_matches_its_peft_model(dpo_trained, tmp_path):
    from transformers import AutoModelForCausalLM

    loaded, result = dpo_trained
    path = build_checkpoint(result.model, loaded.tokenizer, tmp_path / "dpo", version="v0001", base_model="tiny-random",
                            parent=loaded.resolved, training=result.training_summary())
    assert read_manifest(path).training.method == "dpo"
    ids = _ids(loaded.tokenizer)
    with torch.no_grad():
        peft_logits = result.model(input_ids=ids).logits
        plain_logits = AutoModelForCausalLM.from_pretrained(path)(input_ids=ids).logits
        with result.model.disable_adapter():
            reference_logits = result.model(input_ids=ids).logits
    assert (plain_logits - peft_logits).abs().max().item() < 1e-4
    assert (plain_logits - reference_logits).abs().max().item() > 1e-3  # DPO moved the weights
    assert list(result.model.peft_config) == ["default"]


def test_public_datasets_reach_the_card_yaml(sft_trained, tmp_path):
    from huggingface_hub import ModelCard

    from training.config import CheckpointSettings

    loaded, result, _ = sft_trained
    settings = CheckpointSettings(datasets=["swarm/shared-traces", "swarm/run-7"])
    path = build_checkpoint(result.model, loaded.tokenizer, tmp_path / "ckpt", version="v0001", base_model="tiny-random",
                            parent=loaded.resolved, training=result.training_summary(public_datasets=["swarm/run-7", "acme/chat"]),
                            settings=settings)
    expected = ["swarm/run-7", "acme/chat", "swarm/shared-traces"]  # the run's first, then the config's, once each
    assert read_manifest(path).training.public_datasets == expected
    card = ModelCard.load(path / "README.md")
    assert card.data.datasets == expected
    assert "[acme/chat](https://huggingface.co/datasets/acme/chat)" in card.text
    without = build_checkpoint(result.model, loaded.tokenizer, tmp_path / "plain", version="v0001", base_model="tiny-random",
                               parent=loaded.resolved, training=result.training_summary())
    assert "datasets" not in ModelCard.load(without / "README.md").data.to_dict()


def test_manifest_records_lineage_training_privacy_and_every_file(sft_trained, checkpoint_v1):
    loaded, _, _ = sft_trained
    manifest = verify_folder(checkpoint_v1)
    assert manifest.version == "v0001" and manifest.parent_version == "v0000"
    assert manifest.parent_weights_sha256 == loaded.resolved.weights_sha256
    assert manifest.base_model == "tiny-random"
    assert manifest.weights_sha256 == sha256_file(checkpoint_v1 / "model.safetensors")
    assert set(manifest.files) == {p.name for p in checkpoint_v1.iterdir()} - {"manifest.json"}
    assert manifest.training.examples_by_node == {"node-0": 4, "node-1": 4}
    assert manifest.training.rounds == 2 and manifest.training.steps == 8
    assert manifest.training.hyperparameters["lora"]["r"] == 8
    assert manifest.privacy.model_dump() == {"dp": True, "epsilon": 3.0, "delta": 1e-5,
                                             "mechanism": "server-side fixed clipping"}
    assert manifest.communication["bytes_up"] == 1234
    assert manifest.lineage == [{"version": "v0000", "weights_sha256": loaded.resolved.weights_sha256,
                                 "method": "none", "ref": "tiny-random"}]
    assert not [p for p in checkpoint_v1.parent.iterdir() if p.name.startswith(".v1.tmp")]


def test_model_card_parses_and_tells_the_lineage(checkpoint_v1):
    from huggingface_hub import ModelCard

    card = ModelCard.load(checkpoint_v1 / "README.md")
    data = card.data.to_dict()
    assert data["license"] == "apache-2.0" and data["library_name"] == "transformers"
    assert "swarmloop" in data["tags"] and "fed-sft" in data["tags"]
    assert "base_model" not in data  # tiny-random has no Hub id; the embedded model maps to SmolLM2
    manifest = read_manifest(checkpoint_v1)
    text = card.text
    assert "over 2 federated round(s)" in text and "from 2 node(s)" in text
    assert "ε = 3.0, δ = 1e-05 (server-side fixed clipping)" in text and manifest.weights_sha256 in text
    assert "| node-0 | 4 |" in text and "| task_accuracy | 0.25 |" in text


def test_card_names_the_hub_base_model_of_the_embedded_reference():
    from huggingface_hub import ModelCard

    from training.card import render_model_card
    from training.manifest import Manifest

    manifest = Manifest(version="v0003", base_model="embedded:smollm2-135m-instruct", weights_sha256="ab" * 32)
    card = ModelCard(render_model_card(manifest))
    assert card.data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct"


def test_registry_ref_resolves_and_the_next_checkpoint_continues_the_lineage(sft_trained, checkpoint_v1, tmp_path):
    from inference.loading import load_model

    loaded, result, _ = sft_trained
    registry = LocalRegistry(tmp_path / "registry")
    assert registry.publish(checkpoint_v1) == "v0001"
    resolved = resolve_model_ref(f"registry:{registry.root}@v1")
    assert resolved.version == "v0001" and resolved.path == registry.root / "v0001"
    assert resolved.weights_sha256 == read_manifest(checkpoint_v1).weights_sha256
    served = load_model(f"registry:{registry.root}@v1")
    with torch.no_grad():
        assert (served.model(input_ids=_ids(loaded.tokenizer)).logits
                - result.model(input_ids=_ids(loaded.tokenizer)).logits).abs().max().item() < 1e-4

    v2 = build_checkpoint(served.model, served.tokenizer, tmp_path / "v2", version=next_version(resolved),
                          base_model=lineage_base(resolved), parent=resolved,
                          training=result.training_summary(), dtype="bfloat16")
    manifest = verify_folder(v2)
    assert manifest.version == "v0002" and manifest.parent_version == "v0001"
    assert manifest.privacy.model_dump() == {"dp": False, "epsilon": None, "delta": None, "mechanism": None}
    assert manifest.base_model == "tiny-random" and manifest.dtype == "bfloat16"
    assert [entry["version"] for entry in manifest.lineage] == ["v0000", "v0001"]
    assert manifest.lineage[-1]["method"] == "fed-sft"
    assert json.loads((v2 / "config.json").read_text())["dtype"] == "bfloat16"
    assert (v2 / "model.safetensors").stat().st_size < 0.6 * (checkpoint_v1 / "model.safetensors").stat().st_size
    assert registry.publish(v2) == "v0002" and registry.latest() == "v0002"
    assert registry.rollback() == "v0001" and resolve_model_ref(f"registry:{registry.root}").version == "v0001"


def test_one_tampered_byte_fails_verification_and_publishing(checkpoint_v1, tmp_path):
    tampered = tmp_path / "tampered"
    shutil.copytree(checkpoint_v1, tampered)
    weights = tampered / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01
    weights.write_bytes(bytes(data))
    with pytest.raises(VerificationError, match=r"^model\.safetensors: sha256 mismatch"):
        verify_folder(tampered)
    registry = LocalRegistry(tmp_path / "registry")
    with pytest.raises(RegistryError, match="refusing to publish .*model.safetensors"):
        registry.publish(tampered)
    assert registry.versions() == [] and not list((tmp_path / "registry").glob(".staging*"))
    (tampered / "extra.txt").write_text("not in the manifest")
    weights.write_bytes((checkpoint_v1 / "model.safetensors").read_bytes())
    with pytest.raises(VerificationError, match="extra.txt: not listed"):
        verify_folder(tampered)


def test_build_is_atomic_and_never_overwrites(sft_trained, tmp_path, monkeypatch):
    import training.checkpoint as checkpoint

    loaded, result, _ = sft_trained
    kwargs = dict(version="v0001", base_model="tiny-random", parent=loaded.resolved, training=result.training_summary())

    def crash(*args, **kw):  # a failure after the weights are written (disk full, a bug in the card)
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint, "render_model_card", crash)
    with pytest.raises(OSError, match="disk full"):
        build_checkpoint(result.model, loaded.tokenizer, tmp_path / "ckpt", **kwargs)
    assert list(tmp_path.iterdir()) == []  # no half checkpoint, no staging folder left behind
    monkeypatch.undo()
    (tmp_path / "ckpt").mkdir()
    with pytest.raises(CheckpointError, match="already exists"):
        build_checkpoint(result.model, loaded.tokenizer, tmp_path / "ckpt", **kwargs)

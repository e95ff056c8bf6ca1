"""Signed checkpoint manifests: what a node checks before it hot-swaps."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from traces.signing import NodeKey, TrustedKeys
from training.manifest import (
    SIGNATURE_NAME,
    Manifest,
    VerificationError,
    hash_folder,
    verify_folder,
    weights_sha256,
    write_manifest,
)
from training.signing import (
    ManifestSignatureError,
    sign_manifest,
    verify_manifest_signature,
    verify_signed_checkpoint,
)


@pytest.fixture(scope="module")
def trainer_key() -> NodeKey:
    return NodeKey.generate()


@pytest.fixture
def checkpoint(tmp_path):
    folder = tmp_path / "v0001"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(os.urandom(4096))
    (folder / "config.json").write_text('{"model_type": "llama"}\n')
    files = hash_folder(folder)
    write_manifest(folder, Manifest(version="v0001", base_model="tiny-random", files=files,
                                    weights_sha256=weights_sha256(files), eval={"loss": 1.25}))
    return folder


def test_signed_checkpoint_verifies(checkpoint, trainer_key):
    sig = sign_manifest(checkpoint, trainer_key)
    assert sig.name == SIGNATURE_NAME
    body = json.loads(sig.read_text())
    assert body["alg"] == "ed25519" and body["signer"] == trainer_key.node_id
    trusted = TrustedKeys.of(trainer_key, names=["trainer"])
    assert verify_manifest_signature(checkpoint, trusted) == "trainer"
    manifest, signer = verify_signed_checkpoint(checkpoint, trusted)
    assert (manifest.version, signer) == ("v0001", "trainer")
    verify_folder(checkpoint)          # the signature file is not part of the hashed files


def test_unsigned_checkpoint_is_refused(checkpoint, trainer_key):
    with pytest.raises(ManifestSignatureError, match="unsigned") as info:
        verify_signed_checkpoint(checkpoint, TrustedKeys.of(trainer_key))
    assert info.value.kind == "unsigned"
    assert isinstance(info.value, VerificationError)     # the CLI prints it as one line, exit 2


def test_checkpoint_signed_by_an_unknown_key_is_refused(checkpoint, trainer_key):
    sign_manifest(checkpoint, NodeKey.generate())
    with pytest.raises(ManifestSignatureError, match="not in the trusted keys") as info:
        verify_manifest_signature(checkpoint, TrustedKeys.of(trainer_key))
    assert info.value.kind == "unknown-key"


@pytest.mark.parametrize(
    "tamper",
    [
        lambda m: m.update(eval={"loss": 0.5}),                       # better-looking metrics
        lambda m: m["files"].update({"model.safetensors": "0" * 64}),  # point at other weights
        lambda m: m.update(version="v0002"),
    ],
)
def test_tampered_manifest_is_refused(checkpoint, trainer_key, tamper):
    sign_manifest(checkpoint, trainer_key)
    path = checkpoint / "manifest.json"
    data = json.loads(path.read_text())
    tamper(data)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    with pytest.raises(ManifestSignatureError, match="bad signature") as info:
        verify_signed_checkpoint(checkpoint, TrustedKeys.of(trainer_key))
    assert info.value.kind == "bad-signature"


def test_signature_covers_the_exact_bytes(checkpoint, trainer_key):
    sign_manifest(checkpoint, trainer_key)
    path = checkpoint / "manifest.json"
    path.write_text(path.read_text() + " ")
    with pytest.raises(ManifestSignatureError, match="bad signature"):
        verify_manifest_signature(checkpoint, TrustedKeys.of(trainer_key))


def test_signature_moved_from_another_checkpoint_is_refused(checkpoint, trainer_key, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(checkpoint, other)
    write_manifest(other, Manifest(version="v0002", base_model="tiny-random", files=hash_folder(other)))
    sign_manifest(other, trainer_key)
    shutil.copy(other / SIGNATURE_NAME, checkpoint / SIGNATURE_NAME)
    with pytest.raises(ManifestSignatureError, match="bad signature"):
        verify_manifest_signature(checkpoint, TrustedKeys.of(trainer_key))


def test_tampered_weights_pass_the_signature_but_fail_the_hashes(checkpoint, trainer_key):
    sign_manifest(checkpoint, trainer_key)
    (checkpoint / "model.safetensors").write_bytes(os.urandom(4096))
    trusted = TrustedKeys.of(trainer_key)
    verify_manifest_signature(checkpoint, trusted)
    with pytest.raises(VerificationError, match="model.safetensors: sha256 mismatch"):
        verify_signed_checkpoint(checkpoint, trusted)


def test_corrupt_signature_file_is_refused(checkpoint, trainer_key):
    sign_manifest(checkpoint, trainer_key)
    (checkpoint / SIGNATURE_NAME).write_text("not json")
    with pytest.raises(ManifestSignatureError, match="not a signature file"):
        verify_manifest_signature(checkpoint, TrustedKeys.of(trainer_key))

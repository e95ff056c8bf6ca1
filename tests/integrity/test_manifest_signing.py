"""Signed checkpoint manifests: what a node checks before it hot-swaps."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from traces.signing import NodeKey, TrustedKeys, load_or_create_key
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


# ------------------------------------------------------------------------------------ the CLI


def _cli(*args: str):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "swarmloop.cli", *args], capture_output=True, text=True, timeout=120)


def test_cli_trust_sign_publish_and_verify(checkpoint, tmp_path):
    import stat

    key_path = tmp_path / "keys" / "trainer.key"
    shown = _cli("checkpoint", "trust", "--signing-key", str(key_path))       # creates the key, prints a file
    assert shown.returncode == 0, shown.stderr
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    trusted_path = tmp_path / "trusted.toml"
    trusted_path.write_text(shown.stdout)
    trusted = TrustedKeys.from_toml(trusted_path)
    assert list(trusted) == ["trainer"]

    # --out merges: another key joins, the same key under a new name replaces its old entry
    node_key = tmp_path / "node.key"
    assert _cli("checkpoint", "trust", "--signing-key", str(node_key), "--name", "node-a", "--out", str(trusted_path)).returncode == 0
    assert _cli("checkpoint", "trust", "--signing-key", str(key_path), "--name", "release", "--out", str(trusted_path)).returncode == 0
    assert sorted(TrustedKeys.from_toml(trusted_path)) == ["node-a", "release"]

    unsigned = _cli("checkpoint", "verify", str(checkpoint), "--trusted-keys", str(trusted_path))
    assert unsigned.returncode == 2 and "unsigned checkpoint" in unsigned.stderr and unsigned.stderr.count("\n") == 1

    registry = tmp_path / "registry"
    published = _cli("checkpoint", "publish", str(checkpoint), "--registry", str(registry), "--signing-key", str(key_path))
    assert published.returncode == 0, published.stderr
    assert "signed" in published.stdout and (registry / "v0001" / SIGNATURE_NAME).is_file()
    ok = _cli("checkpoint", "verify", f"registry:{registry}", "--trusted-keys", str(trusted_path))
    assert ok.returncode == 0 and "signed by release" in ok.stdout
    plain = _cli("checkpoint", "verify", str(registry / "v0001"))
    assert plain.returncode == 0 and "not checked: pass --trusted-keys" in plain.stdout

    strangers = tmp_path / "strangers.toml"
    strangers.write_text(TrustedKeys.of(NodeKey.generate(), names=["trainer"]).to_toml())
    refused = _cli("checkpoint", "verify", str(registry / "v0001"), "--trusted-keys", str(strangers))
    assert refused.returncode == 2 and "not in the trusted keys" in refused.stderr

    loose = tmp_path / "loose.key"
    loose.write_text("not a key")
    loose.chmod(0o644)
    bad = _cli("checkpoint", "publish", str(checkpoint), "--registry", str(registry), "--signing-key", str(loose))
    assert bad.returncode == 2 and "--signing-key" in bad.stderr and "too open" in bad.stderr
    assert "Traceback" not in bad.stderr

    for command in (("train", "sft"), ("fed", "sim"), ("fed", "deploy"), ("checkpoint", "publish")):
        helped = _cli(*command, "--help")
        assert helped.returncode == 0 and "--signing-key" in helped.stdout


def test_train_signs_the_checkpoint_it_builds(tmp_path, tiny_model_path):
    from swarmloop.cli_train import run_training
    from tests.federation.fed_helpers import fill_store
    from training.manifest import read_manifest

    key_path = tmp_path / "trainer.key"
    out = run_training("sft", store=fill_store(tmp_path / "a.db", "node-a", 4), data=None, base="tiny-random",
                       out=tmp_path / "v1", config=None, eval_data=None, max_steps=1, signing_key=key_path)
    key = load_or_create_key(key_path)
    assert verify_signed_checkpoint(out, TrustedKeys.of(key, names=["trainer"]))[1] == "trainer"
    assert read_manifest(out).integrity["signer"]["node_id"] == key.node_id
    assert f"trainer key `{key.node_id}`" in (out / "README.md").read_text()

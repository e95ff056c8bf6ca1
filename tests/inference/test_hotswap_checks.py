"""What a checkpoint must pass before it serves, and the rollback after a failed post-swap check
(in-process: real checkpoints, real registry folder, the real app on uvicorn, tiny-random)."""

from __future__ import annotations

import httpx
import pytest

from inference.config import NodeConfig
from inference.hotswap_checks import CheckpointRefused, health_generation, load_trusted_keys, verify_checkpoint
from inference.hotswap_client import reload_node
from inference.hotswap_sources import HubSource, LocalRegistrySource, SourceError
from inference.server import create_app
from tests.inference.hotswap_checkpoints import flip_one_byte, make_checkpoint, publish
from tests.inference.openai_checks import assert_openai_error
from tests.inference.test_capture_seam import CollectingHook, serve
from training.manifest import read_manifest

TOKEN = "admin-secret"


@pytest.fixture(scope="module")
def good_checkpoint(tiny_model_path, tmp_path_factory):
    return make_checkpoint(tiny_model_path, tmp_path_factory.mktemp("ckpt") / "v0001", "v1", seed=1)


def test_verify_accepts_an_intact_checkpoint_and_names_the_altered_file(good_checkpoint, tiny_model_path, tmp_path):
    manifest, digest = verify_checkpoint(good_checkpoint, "v0001")
    assert digest == manifest.weights_sha256 == read_manifest(good_checkpoint).weights_sha256
    with pytest.raises(CheckpointRefused) as wrong_version:
        verify_checkpoint(good_checkpoint, "v0002")
    assert wrong_version.value.stage == "verify" and "v0001" in wrong_version.value.reason

    corrupt = make_checkpoint(tiny_model_path, tmp_path / "c", "v2", seed=2)
    flip_one_byte(corrupt / "model.safetensors")
    with pytest.raises(CheckpointRefused) as refused:
        verify_checkpoint(corrupt, "v0002")
    assert refused.value.stage == "verify"
    assert refused.value.reason.startswith("model.safetensors: sha256 mismatch")


def test_signature_is_checked_when_trusted_keys_are_set(good_checkpoint, tiny_model_path, tmp_path):
    from traces.signing import NodeKey, TrustedKeys
    from training.signing import sign_manifest

    trainer, stranger = NodeKey.generate(), NodeKey.generate()
    keys_file = tmp_path / "trusted.toml"
    keys_file.write_text(TrustedKeys.of(trainer, names=["trainer"]).to_toml())
    trusted = load_trusted_keys(keys_file)

    with pytest.raises(CheckpointRefused) as unsigned:
        verify_checkpoint(good_checkpoint, "v0001", trusted)
    assert unsigned.value.stage == "signature" and "unsigned" in unsigned.value.reason

    signed = tmp_path / "signed"
    make_checkpoint(tiny_model_path, signed, "v1", seed=1)
    sign_manifest(signed, stranger)
    with pytest.raises(CheckpointRefused) as unknown:
        verify_checkpoint(signed, "v0001", trusted)
    assert unknown.value.stage == "signature" and "not in the trusted keys" in unknown.value.reason
    sign_manifest(signed, trainer)
    manifest, _ = verify_checkpoint(signed, "v0001", trusted)
    assert manifest.version == "v0001"

    with pytest.raises(ValueError, match="redeploy.trusted_keys"):
        load_trusted_keys(tmp_path / "missing.toml")


def test_health_generation_refuses_nan_weights(tiny_model_path, tmp_path):
    from inference.loading import load_model

    good = load_model(str(make_checkpoint(tiny_model_path, tmp_path / "good", "v1", seed=1)))
    assert len(health_generation(good, "Say hello.", 3)) >= 1
    broken = load_model(str(make_checkpoint(tiny_model_path, tmp_path / "nan", "v2", seed=2, nan=True)))
    with pytest.raises(CheckpointRefused) as refused:
        health_generation(broken, "Say hello.", 3)
    assert refused.value.stage == "health" and "non-finite logits" in refused.value.reason


def test_sources_fail_cleanly(tmp_path):
    local = LocalRegistrySource(tmp_path / "empty-registry")
    assert local.latest() is None
    with pytest.raises(SourceError) as missing:
        local.fetch("v3")
    assert not missing.value.unreachable and "no version v0003" in str(missing.value)
    hub = HubSource("swarm/model")  # this process runs with HF_HUB_OFFLINE=1
    with pytest.raises(SourceError) as offline:
        hub.latest()
    assert offline.value.unreachable and str(offline.value).startswith("hf:swarm/model: unreachable")


def test_failed_post_swap_health_rolls_back_and_traces_name_the_new_version(tiny_loaded, tiny_model_path, tmp_path):
    registry = tmp_path / "registry"
    hook = CollectingHook()
    config = NodeConfig(model={"ref": "tiny-random"},
                        redeploy={"registry": f"registry:{registry}", "poll_interval_s": 0, "admin_token": TOKEN})
    app = create_app(config, capture_hook=hook, loaded=tiny_loaded)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with serve(app) as base:
        # v1 passes the health generation on the bare model, but its 8-token context cannot hold the
        # health prompt through the engine: refused after the swap, and the node swaps back
        publish(registry, tmp_path, tiny_model_path, "v1", seed=1, config_changes={"max_position_embeddings": 8})
        reload = httpx.post(base + "/admin/reload", json={}, headers=auth, timeout=120)
        assert reload.status_code == 422, reload.text
        assert_openai_error(reload.json(), "checkpoint_rolled_back")
        assert "post-swap health" in reload.json()["error"]["message"]
        assert httpx.get(base + "/v1/models").json()["data"][0]["version"] == "v0000"
        status = httpx.get(base + "/admin/status").json()
        assert status["serving"]["version"] == "v0000" and status["swaps"] == 0
        assert status["last_refusal"]["rolled_back"] and status["last_refusal"]["stage"] == "post-swap health"
        metrics = httpx.get(base + "/metrics").text
        assert 'swarmloop_redeploys_total{outcome="rolled_back"} 1.0' in metrics

        publish(registry, tmp_path, tiny_model_path, "v2", seed=2)
        status = reload_node(base, TOKEN, "2")  # the conductor's helper: POST /admin/reload, then the status
        assert status["serving"]["version"] == "v0002" and status["last_swap"]["trigger"] == "admin"
        chat = httpx.post(base + "/v1/chat/completions", timeout=60, json={
            "model": "tiny-random", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3})
        assert chat.status_code == 200
        assert hook.got_record.wait(30)
        record = hook.records[-1]
        expected = read_manifest(registry / "v0002")
        assert (record.model_version, record.weights_sha256) == ("v0002", expected.weights_sha256)
        assert record.model_ref == f"registry:{registry.resolve()}@v0002"
        # the reload body is checked like any request
        bad = httpx.post(base + "/admin/reload", json={"version": "latest-ish"}, headers=auth)
        assert bad.status_code == 400
        assert_openai_error(bad.json(), "invalid_value")
        missing = httpx.post(base + "/admin/reload", json={"version": "v9"}, headers=auth)
        assert missing.status_code == 404
        assert_openai_error(missing.json(), "version_not_found")


def test_reload_is_disabled_without_a_token_and_status_is_open(tiny_loaded, tmp_path):
    config = NodeConfig(model={"ref": "tiny-random"}, redeploy={"registry": f"registry:{tmp_path / 'r'}"})
    with serve(create_app(config, loaded=tiny_loaded)) as base:
        disabled = httpx.post(base + "/admin/reload", json={}, headers={"Authorization": f"Bearer {TOKEN}"})
        assert disabled.status_code == 404  # no token configured: the endpoint does not exist
        assert_openai_error(disabled.json(), "not_found")
        status = httpx.get(base + "/admin/status").json()
        assert status["admin_reload"] is False and status["serving"]["version"] == "v0000"
        assert status["latest"] is None and status["last_refusal"] is None

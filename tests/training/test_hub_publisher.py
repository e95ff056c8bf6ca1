"""The Hugging Face Hub publisher, run with the real huggingface_hub client against a loopback fake
of the Hub endpoints (tests/training/fake_hub.py). The real Hub is not reachable here."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from fake_hub import free_port, serve_fake_hub

from training.checkpoint import build_checkpoint
from training.hub import HubPublisher, HubPublishError
from training.manifest import hash_folder, read_manifest, write_manifest

TOKEN = "hf_test_write_token"
REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def checkpoints(sft_trained, tmp_path):
    """v0001 (with an extra listed file, notes.txt) and v0002 (without it) of the same model."""
    loaded, result, _ = sft_trained
    common = dict(base_model="tiny-random", parent=loaded.resolved, training=result.training_summary())
    v1 = build_checkpoint(result.model, loaded.tokenizer, tmp_path / "v1", version="v1", **common)
    (v1 / "notes.txt").write_text("trained on two nodes\n")
    manifest = read_manifest(v1)
    manifest.files = hash_folder(v1)
    write_manifest(v1, manifest)
    v2 = build_checkpoint(result.model, loaded.tokenizer, tmp_path / "v2", version="v2", **common)
    return v1, v2


def test_plan_is_the_exact_commit(checkpoints):
    v1, _ = checkpoints
    plan = HubPublisher("swarm/model").plan(v1)
    manifest = read_manifest(v1)
    assert plan.paths == sorted(manifest.files) + ["manifest.json"]
    assert "notes.txt" in plan.paths and plan.tag == "v0001" and plan.private is True
    assert [op.path_in_repo for op in plan.operations] == plan.paths
    for op in plan.operations:  # huggingface_hub hashes the bytes it will send
        expected = manifest.files.get(op.path_in_repo) or hashlib.sha256((v1 / "manifest.json").read_bytes()).hexdigest()
        assert op.upload_info.sha256.hex() == expected, op.path_in_repo
        assert op.path_or_fileobj == str(v1 / op.path_in_repo)
    assert plan.commit_message == "swarmloop v0001: sft from v0000"
    assert manifest.weights_sha256 in plan.commit_description


def test_plan_refuses_a_tampered_checkpoint(checkpoints, tmp_path):
    v1, _ = checkpoints
    bad = tmp_path / "bad"
    shutil.copytree(v1, bad)
    with open(bad / "tokenizer.json", "r+b") as handle:
        handle.seek(10)
        handle.write(b"#")
    with pytest.raises(HubPublishError, match="refusing to publish .*tokenizer.json: sha256 mismatch"):
        HubPublisher("swarm/model").plan(bad)
    with pytest.raises(HubPublishError, match="expected ORG/NAME"):
        HubPublisher("no-slash")


def _publish(path, port, token=TOKEN, *extra):
    env = {**os.environ, "HF_ENDPOINT": f"http://127.0.0.1:{port}", "HF_HUB_OFFLINE": "0",
           # hf_xet would upload LFS files through Xet storage, which the fake does not speak
           "HF_HUB_DISABLE_XET": "1"}
    env.pop("HF_TOKEN", None)
    if token:
        env["HF_TOKEN"] = token
    return subprocess.run([sys.executable, "-m", "swarmloop.cli", "checkpoint", "publish", str(path), "--hub",
                           "swarm/model", *extra], capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=120)


def test_publish_through_the_real_client_to_a_fake_hub(checkpoints, tmp_path, monkeypatch):
    v1, v2 = checkpoints
    port = free_port()
    with serve_fake_hub(TOKEN, port) as hub:
        done = _publish(v1, port)
        assert done.returncode == 0, done.stderr
        assert "published v0001 to swarm/model" in done.stdout
        repo = hub.repos["swarm/model"]
        assert repo.private
        commit = repo.commits[-1]
        assert commit["summary"] == "swarmloop v0001: sft from v0000"
        kinds = dict((path, kind) for kind, path in commit["operations"])
        assert kinds.pop("model.safetensors") == "lfsFile"  # weights go through LFS (batch + PUT + verify)
        assert set(kinds.values()) == {"file"}
        local = {p.name: p.read_bytes() for p in v1.iterdir()}
        assert {p: b for p, b in repo.files.items() if p != ".gitattributes"} == local  # byte for byte
        assert repo.tags == {"v0001": commit["oid"]}
        assert ("PUT", f"/lfs-upload/{read_manifest(v1).weights_sha256}") in hub.requests

        # the next version replaces the tree: notes.txt is gone, both tags remain
        done = _publish(v2, port)
        assert done.returncode == 0, done.stderr
        assert "removed 1 stale file(s)" in done.stdout
        assert ("deletedFile", "notes.txt") in repo.commits[-1]["operations"]
        assert "notes.txt" not in repo.files and set(repo.tags) == {"v0001", "v0002"}
        assert repo.files["manifest.json"] == (v2 / "manifest.json").read_bytes()

        # the same version twice, a tampered folder, no token, a wrong token: one line, exit 2
        commits = len(repo.commits)
        again = _publish(v2, port)
        assert again.returncode == 2 and again.stderr.strip() == "error: v0002 is already published in swarm/model"
        requests_before = len(hub.requests)
        (v2 / "config.json").write_text("{}")
        refused = _publish(v2, port)
        assert refused.returncode == 2 and "refusing to publish" in refused.stderr and "config.json" in refused.stderr
        assert len(hub.requests) == requests_before  # refused before a single request
        missing = _publish(v1, port, None)
        assert missing.returncode == 2 and "set HF_TOKEN" in missing.stderr
        wrong = _publish(v1, port, "hf_wrong")
        assert wrong.returncode == 2 and "answered 401" in wrong.stderr
        assert len(repo.commits) == commits
        for result in (again, refused, missing, wrong):
            assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr

        # what was published loads back through the model-ref parser: hf:ORG/NAME@vN, verified
        for version, folder in (("v0001", v1), ("v0002", None)):
            env = {**os.environ, "HF_ENDPOINT": f"http://127.0.0.1:{port}", "HF_HUB_OFFLINE": "0",
                   "HF_TOKEN": TOKEN, "HF_HUB_DISABLE_XET": "1", "HF_HOME": str(tmp_path / "hf-home")}
            fetched = subprocess.run([sys.executable, "-m", "swarmloop.cli", "checkpoint", "verify",
                                      f"hf:swarm/model@{version}"], capture_output=True, text=True, env=env,
                                     cwd=REPO_ROOT, timeout=120)
            assert fetched.returncode == 0, fetched.stderr
            assert f"is {version}" in fetched.stdout and read_manifest(v1).weights_sha256 in fetched.stdout

        # the publisher lists what it published (in-process; offline mode is a switch of the client)
        import huggingface_hub.constants

        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
        publisher = HubPublisher("swarm/model", token=TOKEN, endpoint=f"http://127.0.0.1:{port}")
        assert publisher.versions() == ["v0001", "v0002"]

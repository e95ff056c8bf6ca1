"""configs/node.toml, NodeConfig and the `node` CLI's one-line errors (no model is loaded here)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from inference.config import NodeConfig
from swarmloop.configfile import load_config
from swarmloop.errors import UserError
from tests.node_process import REPO_ROOT


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "swarmloop.cli", *args], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "HF_HUB_OFFLINE": "1"})


def test_shipped_config_is_valid_and_equals_the_defaults():
    assert load_config(REPO_ROOT / "configs" / "node.toml", NodeConfig) == NodeConfig()


@pytest.mark.parametrize("text,expected", [
    ('[server]\nprot = 8000\n', "server.prot: unknown key"),
    ('[server]\nport = "eighty"\n', "server.port: Input should be a valid integer"),
    ('consent = "maybe"\n', "consent:"),
    ('[limits]\nmax_n = 9\nmax_batch_size = 4\n', "limits:"),
    ('[model]\ndtype = "float16"\n', "model.dtype:"),
    ('[redeploy]\nregistry = "some/folder"\n', "redeploy: Value error, registry must be registry:PATH or hf:ORG/NAME"),
    ('[redeploy]\ndrain = "later"\n', "redeploy.drain:"),
])
def test_bad_config_is_one_line_naming_the_key(tmp_path, text, expected):
    path = tmp_path / "node.toml"
    path.write_text(text)
    with pytest.raises(UserError) as error:
        load_config(path, NodeConfig)
    assert expected in str(error.value)
    result = run_cli("node", "serve", "--config", str(path))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0] and "Traceback" not in result.stderr


def test_flags_override_the_file(tmp_path):
    path = tmp_path / "node.toml"
    path.write_text('[server]\nport = 9001\n[model]\nref = "tiny-random"\n')
    config = load_config(path, NodeConfig, {"server.port": 9555, "consent": "local", "store": str(tmp_path / "t.db")})
    assert config.server.port == 9555 and config.model.ref == "tiny-random" and config.consent == "local"


def test_consent_without_a_store_is_refused():
    result = run_cli("node", "serve", "--model", "tiny-random", "--consent", "local")
    assert result.returncode == 2
    assert "needs a trace store" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_bad_model_ref_is_refused_before_serving():
    result = run_cli("node", "serve", "--model", "s3:bucket/model")
    assert result.returncode == 2
    assert "unknown model reference" in result.stderr


def test_redeploy_flags_are_checked_before_serving(tmp_path):
    pinned = run_cli("node", "serve", "--model", "tiny-random", "--registry", "registry:reg@v2")
    assert pinned.returncode == 2 and "no @version" in pinned.stderr
    path = tmp_path / "node.toml"
    path.write_text(f'[redeploy]\nregistry = "registry:{tmp_path}/reg"\ntrusted_keys = "{tmp_path}/none.toml"\n')
    keys = run_cli("node", "serve", "--config", str(path), "--model", "tiny-random")
    assert keys.returncode == 2
    assert keys.stderr.strip() == f"error: redeploy.trusted_keys: {tmp_path}/none.toml: no such trusted-keys file"
    config = load_config(path, NodeConfig, {"redeploy.registry": "hf:org/name", "redeploy.admin_token": "t"})
    assert (config.redeploy.registry, config.redeploy.admin_token) == ("hf:org/name", "t")


def test_batch_missing_input_is_one_line(tmp_path):
    result = run_cli("node", "batch", str(tmp_path / "nope.jsonl"), str(tmp_path / "out.jsonl"))
    assert result.returncode == 2
    assert "no such input file" in result.stderr


def test_node_id_is_stable_and_derived():
    with_store = NodeConfig(store=Path("/tmp/a/traces.db"))
    assert with_store.resolved_node_id() == NodeConfig(store=Path("/tmp/a/traces.db")).resolved_node_id()
    assert with_store.resolved_node_id() != NodeConfig(store=Path("/tmp/b/traces.db")).resolved_node_id()
    assert NodeConfig(node_id="node-a").resolved_node_id() == "node-a"
    assert NodeConfig().resolved_node_id().startswith("node-")


def test_help_explains_every_option():
    result = run_cli("node", "serve", "--help")
    assert result.returncode == 0
    for option in ("--config", "--model", "--host", "--port", "--store", "--consent", "--registry", "--admin-token"):
        assert option in result.stdout
    batch = run_cli("node", "batch", "--help")
    assert "IN.jsonl" in batch.stdout and "OUT.jsonl" in batch.stdout

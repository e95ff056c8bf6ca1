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
    ('[limits]\nmax_n = 9\nmax_batch_size = 4\n', "node.toml: limits: max_n must not exceed max_batch_size"),
    ('[limits]\nmax_body_bytes = 0\n', "limits.max_body_bytes:"),
    ('[model]\ndtype = "float16"\n', "model.dtype:"),
    ('[redeploy]\nregistry = "some/folder"\n', "node.toml: redeploy: registry must be registry:PATH or hf:ORG/NAME"),
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


def assert_one_line_error(result: subprocess.CompletedProcess, expected: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], result.stderr
    assert "Traceback" not in result.stderr


def test_config_that_is_not_a_readable_toml_file_is_one_line(tmp_path):
    assert_one_line_error(run_cli("node", "serve", "--config", str(tmp_path)), "is a directory")
    latin1 = tmp_path / "latin1.toml"
    latin1.write_bytes('node_id = "café"\n'.encode("latin-1"))
    assert_one_line_error(run_cli("node", "serve", "--config", str(latin1)), "not UTF-8")
    assert_one_line_error(run_cli("node", "batch", str(latin1), str(tmp_path / "o.jsonl"), "--config", str(tmp_path)),
                          "is a directory")


def test_batch_paths_that_cannot_work_are_one_line(tmp_path):
    good_in = tmp_path / "in.jsonl"
    good_in.write_text('{"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": {}}\n')
    assert_one_line_error(run_cli("node", "batch", str(good_in), str(tmp_path / "missing-dir" / "out.jsonl")),
                          "does not exist")
    assert_one_line_error(run_cli("node", "batch", str(good_in), str(tmp_path)), "is a directory")
    assert_one_line_error(run_cli("node", "batch", str(tmp_path), str(tmp_path / "out.jsonl")), "is a directory")
    assert not (tmp_path / "missing-dir").exists()


def test_port_in_use_is_one_line_before_the_model_loads(tmp_path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli("node", "serve", "--model", "tiny-random", "--port", str(port))
    assert_one_line_error(result, f"cannot listen on 127.0.0.1:{port}: the port is already in use")


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

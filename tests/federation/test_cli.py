"""`swarmloop fed`: help that explains itself, one-line errors with exit 2 on bad input."""

from __future__ import annotations

import subprocess
import sys

from fed_helpers import base_config, write_config


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "swarmloop.cli", "fed", *args], capture_output=True, text=True, timeout=120)


def test_help_and_bad_input(tmp_path):
    for command in ("sim", "deploy"):
        shown = _cli(command, "--help")
        assert shown.returncode == 0 and "--config" in shown.stdout and "--fresh" in shown.stdout

    missing = _cli("sim", "--config", str(tmp_path / "nope.toml"))
    assert missing.returncode == 2 and missing.stderr.strip().count("\n") == 0 and "no such config file" in missing.stderr

    typo = write_config(tmp_path / "typo.toml", {"rounds": 2, "strategy": {"nmae": "fedavg"}})
    wrong = _cli("sim", "--config", str(typo))
    assert wrong.returncode == 2 and "strategy.nmae: unknown key" in wrong.stderr

    no_store = write_config(tmp_path / "no-store.toml", base_config(tmp_path, [("node-a", tmp_path / "missing.db")]))
    absent = _cli("deploy", "--config", str(no_store))
    assert absent.returncode == 2 and "node node-a" in absent.stderr and "no such trace store" in absent.stderr
    assert "Traceback" not in absent.stderr


def test_integrity_files_are_checked_before_anything_starts(tmp_path):
    from fed_helpers import fill_store

    store = fill_store(tmp_path / "a.db", "node-a", 2)
    loose = tmp_path / "trainer.key"
    loose.write_text("whatever")
    loose.chmod(0o644)
    data = base_config(tmp_path, [("node-a", store)], publish={"signing_key": str(loose)})
    bad_key = _cli("sim", "--config", str(write_config(tmp_path / "key.toml", data)))
    assert bad_key.returncode == 2 and bad_key.stderr.startswith("error: publish.signing_key:") and "too open" in bad_key.stderr

    broken = tmp_path / "nodes.toml"
    broken.write_text('[keys]\nnode-a = "not base64!"\n')
    data = base_config(tmp_path, [("node-a", store)], integrity={"trusted_node_keys": str(broken)})
    bad_list = _cli("sim", "--config", str(write_config(tmp_path / "list.toml", data)))
    assert bad_list.returncode == 2 and "integrity.trusted_node_keys:" in bad_list.stderr and "node-a" in bad_list.stderr
    assert bad_list.stderr.strip().count("\n") == 0

    unchecked = write_config(tmp_path / "req.toml", {"integrity": {"require_signatures": True}})
    required = _cli("sim", "--config", str(unchecked))
    assert required.returncode == 2 and "require_signatures needs trusted_node_keys" in required.stderr
    assert not (tmp_path / "run").exists()          # nothing was started or written

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

"""The modules a serving node imports to follow a registry stay torch-free: manifest, registry, hub
(and the card and config they use). A fresh interpreter imports them, builds, verifies, publishes
and plans a Hub commit of a checkpoint folder, and must not have loaded torch or transformers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]

CODE = """
import sys, tempfile, pathlib
import training.manifest, training.registry, training.hub, training.card, training.config
from training.card import render_model_card
from training.hub import HubPublisher
from training.manifest import Manifest, hash_folder, verify_folder, weights_sha256, write_manifest
from training.registry import LocalRegistry

root = pathlib.Path(tempfile.mkdtemp())
folder = root / "ckpt"
folder.mkdir()
(folder / "model.safetensors").write_bytes(b"not really weights")
(folder / "config.json").write_text("{}")
manifest = Manifest(version="v1", base_model="tiny-random", weights_sha256=weights_sha256(hash_folder(folder)))
(folder / "README.md").write_text(render_model_card(manifest))
manifest.files = hash_folder(folder)
write_manifest(folder, manifest)
assert verify_folder(folder).version == "v1"
registry = LocalRegistry(root / "registry")
assert registry.publish(folder) == "v0001" and registry.latest() == "v0001"
plan = HubPublisher("org/name").plan(registry.path("v0001"))
assert plan.paths[-1] == "manifest.json" and plan.tag == "v0001"
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers", "trl", "peft"))
print(heavy)
assert not heavy, heavy
"""


def test_manifest_registry_and_hub_import_no_torch():
    result = subprocess.run([sys.executable, "-c", CODE], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr[-2000:] + result.stdout
    assert result.stdout.strip() == "[]"

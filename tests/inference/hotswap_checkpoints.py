"""Checkpoint folders for the hot-swap tests: tiny-random with changed weights, plus a manifest.

Built by hand with training.manifest (hash_folder, weights_sha256, write_manifest) so these tests
do not depend on the trainer's build_checkpoint.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from training.manifest import Manifest, hash_folder, weights_sha256, write_manifest
from training.registry import LocalRegistry, normalize_version


def make_checkpoint(source: Path, dest: Path, version: str, *, seed: int, nan: bool = False,
                    noise: float = 0.02, config_changes: dict | None = None) -> Path:
    """Copy the model folder `source` to `dest` with every weight perturbed (seeded gaussian noise
    of std `noise`), or with the weights of one layer set to NaN, and write a manifest listing
    every file's sha256."""
    import json

    import torch
    from safetensors.torch import load_file, save_file

    dest.mkdir(parents=True)
    for item in source.iterdir():
        if item.is_file() and not item.name.startswith(".swarmloop"):
            shutil.copy2(item, dest / item.name)
    tensors = load_file(dest / "model.safetensors")
    generator = torch.Generator().manual_seed(seed)
    for name, tensor in tensors.items():
        if nan and "layers.0.mlp" in name:
            tensors[name] = torch.full_like(tensor, float("nan"))
        else:
            tensors[name] = tensor + torch.randn(tensor.shape, generator=generator, dtype=tensor.dtype) * noise
    save_file(tensors, dest / "model.safetensors", metadata={"format": "pt"})
    if config_changes:
        config = json.loads((dest / "config.json").read_text())
        config.update(config_changes)
        (dest / "config.json").write_text(json.dumps(config, indent=2))
    files = hash_folder(dest)
    write_manifest(dest, Manifest(version=normalize_version(version), base_model="tiny-random",
                                  weights_sha256=weights_sha256(files), files=files))
    return dest


def publish(registry: Path, workdir: Path, source: Path, version: str, *, seed: int, promote: bool = True,
            **kwargs) -> str:
    """Build a checkpoint and publish it into the folder registry (optionally pointing latest at it)."""
    folder = make_checkpoint(source, workdir / f"build-{normalize_version(version)}", version, seed=seed, **kwargs)
    return LocalRegistry(registry).publish(folder, promote=promote)


def flip_one_byte(path: Path, offset_from_end: int = 1000) -> None:
    data = bytearray(path.read_bytes())
    data[-offset_from_end] ^= 0xFF
    path.write_bytes(bytes(data))

"""Checkpoint manifests: what a checkpoint is, where it came from, and the sha256 of every file.

Torch-free: the inference node imports this to verify a checkpoint before loading it.
"""

from __future__ import annotations

import hashlib
import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

MANIFEST_NAME = "manifest.json"
SIGNATURE_NAME = "manifest.sig"
# Files that describe the checkpoint rather than belong to it: never listed in `files`.
# `.gitattributes` is Hub plumbing every Hub repo has (LFS rules); a snapshot of a published
# checkpoint carries it, and it plays no part in loading the model.
UNHASHED = {MANIFEST_NAME, SIGNATURE_NAME, ".gitattributes"}
_CHUNK = 1 << 20


class TrainingSummary(BaseModel):
    model_config = ConfigDict(extra="allow")
    method: str = "none"                       # sft | dpo | kto | fed-sft | fed-dpo | none
    examples_by_node: dict[str, int] = Field(default_factory=dict)
    rounds: int = 0
    steps: int = 0
    hyperparameters: dict[str, Any] = Field(default_factory=dict)
    public_datasets: list[str] = Field(default_factory=list)   # Hub ids of public data used, for the card


class PrivacySummary(BaseModel):
    model_config = ConfigDict(extra="allow")
    dp: bool = False
    epsilon: float | None = None
    delta: float | None = None
    mechanism: str | None = None


class Manifest(BaseModel):
    """manifest.json of a checkpoint folder (schema version 1)."""

    model_config = ConfigDict(extra="allow")
    schema_version: int = 1
    version: str                               # "v0001"
    parent_version: str | None = None
    created_at: str = Field(default_factory=lambda: datetime.now(timezone.utc).isoformat())
    base_model: str                            # the model ref the lineage starts from
    parent_weights_sha256: str | None = None
    weights_sha256: str = ""
    dtype: str = "float32"
    files: dict[str, str] = Field(default_factory=dict)   # relative path -> sha256
    training: TrainingSummary = Field(default_factory=TrainingSummary)
    eval: dict[str, Any] = Field(default_factory=dict)
    privacy: PrivacySummary = Field(default_factory=PrivacySummary)
    communication: dict[str, Any] = Field(default_factory=dict)
    integrity: dict[str, Any] = Field(default_factory=dict)
    # Ancestors, oldest first: {"version", "weights_sha256", "method", "ref"} of each checkpoint
    # this one descends from (the parent last).
    lineage: list[dict[str, Any]] = Field(default_factory=list)


class VerificationError(Exception):
    """A checkpoint does not match its manifest; the message names the first bad file."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def hash_folder(folder: Path) -> dict[str, str]:
    """sha256 of every file below `folder` except the manifest and its signature."""
    folder = Path(folder)
    hashes: dict[str, str] = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.name not in UNHASHED and not path.name.startswith(".swarmloop"):
            hashes[path.relative_to(folder).as_posix()] = sha256_file(path)
    return hashes


def weights_sha256(file_hashes: dict[str, str]) -> str:
    """One digest for a model's weights: the file's own sha256 when there is a single
    safetensors file (so `sha256sum model.safetensors` matches), else a digest of the sorted list."""
    weights = {name: h for name, h in file_hashes.items() if name.endswith(".safetensors")}
    if not weights:
        raise VerificationError("no .safetensors weights found")
    if len(weights) == 1:
        return next(iter(weights.values()))
    lines = "".join(f"{name} {h}\n" for name, h in sorted(weights.items()))
    return hashlib.sha256(lines.encode()).hexdigest()


def folder_weights_sha256(folder: Path) -> str:
    """Weights digest of a model folder, cached in a sidecar keyed by size and mtime."""
    folder = Path(folder)
    files = sorted(p for p in folder.glob("*.safetensors"))
    if not files:
        raise VerificationError(f"{folder}: no .safetensors weights found")
    stamp = ";".join(f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in files)
    sidecar = folder / ".swarmloop-weights.sha256"
    try:
        cached_stamp, cached_digest = sidecar.read_text().split("\n")[:2]
        if cached_stamp == stamp:
            return cached_digest
    except (OSError, ValueError):
        pass
    digest = weights_sha256({p.name: sha256_file(p) for p in files})
    try:
        tmp = sidecar.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(f"{stamp}\n{digest}\n")
        os.replace(tmp, sidecar)
    except OSError:
        pass  # a read-only folder still works, it just hashes again next time
    return digest


def read_manifest(folder: Path) -> Manifest:
    path = Path(folder) / MANIFEST_NAME
    try:
        return Manifest.model_validate_json(path.read_text())
    except FileNotFoundError:
        raise VerificationError(f"{folder}: no {MANIFEST_NAME}") from None
    except ValueError as exc:
        raise VerificationError(f"{path}: not a valid manifest ({exc.__class__.__name__})") from None


def write_manifest(folder: Path, manifest: Manifest) -> None:
    path = Path(folder) / MANIFEST_NAME
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(manifest.model_dump(mode="json"), indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def verify_folder(folder: Path) -> Manifest:
    """Check every sha256 in the manifest, and that no unlisted file was added.

    Raises VerificationError naming the first file that is missing, extra or altered."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    if not manifest.files:
        raise VerificationError(f"{folder}: manifest lists no files")
    actual = hash_folder(folder)
    for name, expected in sorted(manifest.files.items()):
        if name not in actual:
            raise VerificationError(f"{name}: missing")
        if actual[name] != expected:
            raise VerificationError(f"{name}: sha256 mismatch (expected {expected[:12]}…, got {actual[name][:12]}…)")
    extra = sorted(set(actual) - set(manifest.files))
    if extra:
        raise VerificationError(f"{extra[0]}: not listed in the manifest")
    if manifest.weights_sha256 and weights_sha256(manifest.files) != manifest.weights_sha256:
        raise VerificationError("weights_sha256 in the manifest does not match the weight files")
    return manifest

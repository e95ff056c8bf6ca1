"""Build a checkpoint folder: merged safetensors + tokenizer and chat template + manifest.json + card.

The folder is written into a hidden temp folder next to `out_dir` and renamed into place only when
complete and verified, so a crash never leaves a half checkpoint. The caller's PEFT model is not
touched: the adapter is merged into a copy.
"""

from __future__ import annotations

import copy
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from training.card import render_model_card
from training.config import CheckpointSettings
from training.manifest import (
    MANIFEST_NAME,
    Manifest,
    PrivacySummary,
    TrainingSummary,
    VerificationError,
    hash_folder,
    read_manifest,
    verify_folder,
    weights_sha256,
    write_manifest,
)
from training.registry import normalize_version, version_number

if TYPE_CHECKING:
    from inference.model_refs import ResolvedModel
    from traces.signing import NodeKey

CARD_NAME = "README.md"


class CheckpointError(Exception):
    """A checkpoint cannot be built as asked; the message says why in one line."""


def next_version(parent: "ResolvedModel | None") -> str:
    """The version after the parent's (v0000 bases give v0001); v0001 when the parent has none."""
    if parent is None:
        return normalize_version(1)
    try:
        return normalize_version(version_number(parent.version) + 1)
    except Exception:
        return normalize_version(1)


def lineage_base(parent: "ResolvedModel") -> str:
    """The reference a lineage starts from: the parent's own `base_model` when the parent is a
    swarmloop checkpoint, else the parent's reference itself."""
    if (Path(parent.path) / MANIFEST_NAME).is_file():
        try:
            return read_manifest(parent.path).base_model
        except VerificationError:
            pass
    return parent.ref


def merged_copy(model: Any, dtype: str) -> Any:
    """A plain transformers model with any LoRA adapter merged in, in `dtype`; `model` is unchanged."""
    import torch

    from training.lora import is_peft_model, remove_trl_patches

    target = getattr(torch, dtype)
    if is_peft_model(model):
        merged = copy.deepcopy(model).merge_and_unload()
    elif next(model.parameters()).dtype != target:
        merged = copy.deepcopy(model)
    else:
        merged = model  # saving does not change it
    remove_trl_patches(merged)
    return merged.to(target)


def _lineage(parent: "ResolvedModel | None", parent_method: str) -> list[dict[str, Any]]:
    if parent is None:
        return []
    ancestors: list[dict[str, Any]] = []
    method = parent_method
    if (Path(parent.path) / MANIFEST_NAME).is_file():
        try:
            parent_manifest = read_manifest(parent.path)
            ancestors = list(parent_manifest.lineage)
            method = parent_manifest.training.method
        except VerificationError:
            pass
    return ancestors + [{"version": parent.version, "weights_sha256": parent.weights_sha256, "method": method,
                         "ref": parent.ref}]


def build_checkpoint(
    model: Any,
    tokenizer: Any,
    out_dir: Path | str,
    *,
    version: str,
    base_model: str,
    parent: "ResolvedModel | None" = None,
    training: TrainingSummary,
    eval_metrics: dict[str, Any] | None = None,
    privacy: PrivacySummary | None = None,
    communication: dict[str, Any] | None = None,
    dtype: str | None = None,
    settings: CheckpointSettings | None = None,
    integrity: dict[str, Any] | None = None,
    signing_key: "NodeKey | None" = None,
) -> Path:
    """Merge, save and describe a checkpoint; returns `out_dir` once it is complete and verified.

    `base_model` is the reference the lineage starts from (e.g. "embedded:smollm2-135m-instruct");
    `parent` the resolved model this one was trained from (its version and weights digest are
    recorded); `dtype` defaults to settings.dtype; settings.datasets are added to the training
    summary's public datasets (the card's `datasets`). `integrity` goes into the manifest as is;
    with `signing_key` the manifest is signed (manifest.sig, training/signing.py) and the signer
    recorded in integrity["signer"]. Refuses an existing `out_dir`."""
    settings = settings or CheckpointSettings()
    dtype = dtype or settings.dtype
    if dtype not in ("float32", "bfloat16"):
        raise CheckpointError(f"dtype must be float32 or bfloat16, not {dtype!r}")
    version = normalize_version(version)
    # [checkpoint] datasets name public data for every checkpoint built with these settings
    public = list(dict.fromkeys([*training.public_datasets, *settings.datasets]))
    if public != training.public_datasets:
        training = training.model_copy(update={"public_datasets": public})
    out_dir = Path(out_dir)
    if out_dir.exists():
        raise CheckpointError(f"{out_dir} already exists; a checkpoint is never overwritten")
    if not getattr(tokenizer, "chat_template", None):
        raise CheckpointError("the tokenizer has no chat template; a checkpoint must carry the one it was trained with")
    out_dir.parent.mkdir(parents=True, exist_ok=True)

    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        merged = merged_copy(model, dtype)
        merged.save_pretrained(staging)
        tokenizer.save_pretrained(staging)  # with the chat template (chat_template.jinja)
        weights = weights_sha256(hash_folder(staging))
        manifest = Manifest(
            version=version,
            parent_version=parent.version if parent else None,
            parent_weights_sha256=parent.weights_sha256 if parent else None,
            base_model=base_model,
            weights_sha256=weights,
            dtype=dtype,
            training=training,
            eval=eval_metrics or {},
            privacy=privacy or PrivacySummary(),
            communication=communication or {},
            integrity=dict(integrity or {}),
            lineage=_lineage(parent, "none"),
        )
        if signing_key is not None:
            manifest.integrity["signer"] = {"node_id": signing_key.node_id, "public_key": signing_key.public_key_b64}
        (staging / CARD_NAME).write_text(render_model_card(manifest, settings), encoding="utf-8")
        manifest.files = hash_folder(staging)
        write_manifest(staging, manifest)
        verify_folder(staging)
        if signing_key is not None:
            from training.signing import sign_manifest

            sign_manifest(staging, signing_key)
        os.rename(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out_dir

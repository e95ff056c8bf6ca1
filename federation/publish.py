"""The run's end: merge the global adapter into the base, build the checkpoint with training's
build_checkpoint (manifest with lineage, privacy, communication and integrity; model card; signed
with the trainer's key when publish.signing_key is set), publish it."""

from __future__ import annotations

from typing import Any

from federation.config import FederationConfig
from federation.runs import RunFolder, RunResult
from training.manifest import PrivacySummary, TrainingSummary


def next_version(config: FederationConfig, base_version: str) -> str:
    from training.registry import LocalRegistry, normalize_version, version_number

    if config.publish.registry is not None:
        registry = LocalRegistry(config.publish.registry)
        candidate = registry.next_version()
        try:  # never below the base's own version + 1 (a fresh registry after registry:… lineage)
            return max(candidate, normalize_version(version_number(base_version) + 1), key=version_number)
        except Exception:
            return candidate
    try:
        return normalize_version(version_number(base_version) + 1)
    except Exception:
        return normalize_version(1)


def lineage_root(ref: str, resolved_base: Any) -> str:
    """The reference the lineage starts from: the parent checkpoint's own base_model when it has a
    manifest (a registry version), else the reference trained on (embedded:…, tiny-random)."""
    from pathlib import Path

    from training.manifest import MANIFEST_NAME, VerificationError, read_manifest

    if (Path(resolved_base.path) / MANIFEST_NAME).is_file():
        try:
            return read_manifest(resolved_base.path).base_model
        except VerificationError:
            pass
    return ref


def build_and_publish(
    config: FederationConfig, peft_model: Any, tokenizer: Any, resolved_base: Any, result: RunResult, settings: Any,
    *, privacy: PrivacySummary, steps: int, run: RunFolder, integrity: dict[str, Any] | None = None,
    signing_key: Any = None,
) -> dict[str, Any]:
    """Build RUN/checkpoint/vNNNN (signed with `signing_key`, a traces.signing.NodeKey, when given)
    and publish it to the registry."""
    import shutil

    from training.checkpoint import build_checkpoint
    from training.registry import LocalRegistry

    version = next_version(config, resolved_base.version)
    recipe = settings.recipe(config.method)
    training = TrainingSummary(
        method=f"fed-{config.method}",
        examples_by_node=result.examples_by_node,
        rounds=result.rounds,
        steps=steps,
        hyperparameters={
            "recipe": recipe.model_dump(mode="json"),
            "lora": settings.lora.model_dump(mode="json"),
            "lora_aggregation": config.lora.aggregation,
            "lora_seed": config.lora.seed,
            "local_steps": config.client.local_steps,
            "schedule": config.schedule.model_dump(mode="json"),
            "strategy": config.strategy.model_dump(mode="json"),
            "robust": config.robust.model_dump(mode="json"),
            "reference_model": f"{resolved_base.ref} ({resolved_base.version})" if config.method == "dpo" else None,
        },
    )
    eval_metrics = {"final": result.eval, "baseline": result.baseline_eval, "heldout": bool(result.eval)}
    out_dir = run.checkpoint_dir / version
    if out_dir.exists():
        shutil.rmtree(out_dir)  # a previous attempt that crashed before publishing
    path = build_checkpoint(
        peft_model, tokenizer, out_dir, version=version, base_model=lineage_root(config.base, resolved_base),
        parent=resolved_base,
        training=training, eval_metrics=eval_metrics, privacy=privacy, communication=result.communication,
        dtype=settings.checkpoint.dtype, settings=settings.checkpoint, integrity=integrity, signing_key=signing_key,
    )
    published = None
    if config.publish.registry is not None:
        registry = LocalRegistry(config.publish.registry)
        registry.publish(path, promote=config.publish.promote)
        published = registry.path(version)
    return {"version": version, "checkpoint": path, "published": published,
            "signed_by": signing_key.node_id if signing_key is not None else None}

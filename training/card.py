"""The model card (README.md) of a checkpoint: Hugging Face YAML metadata plus a human summary of
where the weights came from (lineage, data by node, rounds, privacy, evaluation, how to verify).

Torch-free. The YAML is produced by huggingface_hub.ModelCardData, so ModelCard.load parses it.
"""

from __future__ import annotations

import json
from typing import Any

from training.config import CheckpointSettings
from training.manifest import Manifest

# Model references whose weights are published on the Hub under another name.
HUB_IDS = {"embedded:smollm2-135m-instruct": "HuggingFaceTB/SmolLM2-135M-Instruct"}

_METHODS = {
    "sft": "supervised fine-tuning (TRL SFTTrainer)",
    "dpo": "direct preference optimization (TRL DPOTrainer)",
    "kto": "Kahneman-Tversky optimization (TRL KTOTrainer)",
    "fed-sft": "federated supervised fine-tuning (Flower + TRL SFTTrainer)",
    "fed-dpo": "federated direct preference optimization (Flower + TRL DPOTrainer)",
    "fed-kto": "federated Kahneman-Tversky optimization (Flower + TRL KTOTrainer)",
    "none": "no training",
}


def hub_base_model(ref: str) -> str | None:
    """The Hub repo id a model reference stands for, when there is one."""
    if ref in HUB_IDS:
        return HUB_IDS[ref]
    if ref.startswith("hf:"):
        return ref[3:].split("@", 1)[0]
    return None


def _short(digest: str | None) -> str:
    return f"`{digest[:16]}…`" if digest else "–"


def _value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (dict, list)):
        return "`" + json.dumps(value, sort_keys=True) + "`"
    return str(value)


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def _table(header: tuple[str, str], rows: list[tuple[str, str]]) -> str:
    lines = [f"| {header[0]} | {header[1]} |", "|---|---|"]
    lines += [f"| {a} | {b} |" for a, b in rows]
    return "\n".join(lines)


def _integrity_text(integrity: dict[str, Any]) -> str:
    """Who signed the manifest, what each node's data passed at ingest, which updates were rejected."""
    parts = []
    signer = integrity.get("signer")
    parts.append(f"The manifest is signed (`manifest.sig`, Ed25519) by trainer key `{signer['node_id']}`."
                 if signer else "The manifest is not signed.")
    ingest = integrity.get("ingest")
    if ingest:
        keys = ingest.get("trusted_node_keys") or []
        signatures = (f"every node's records were checked against {len(keys)} trusted node key(s)"
                      + (" (an unsigned record excluded its node)" if ingest.get("require_signatures") else "")
                      if keys else "signatures were not checked (no trusted node keys)")
        rate = ingest.get("proof_sample_rate") or 0
        proofs = (f"activation proofs were re-run on {rate:.0%} of the traces used (verifier model "
                  f"`{ingest.get('proof_verifier_model')}`)" if rate else "no activation proofs were checked")
        parts.append(f"Before each round {signatures}; {proofs}. A node failing either sat the round out.")
        rows = [f"| {name} | {n['records_checked']} | {n['bad_signatures'] + n['unknown_key'] + n['mismatched']} | "
                f"{n['unsigned']} | {n['proofs_checked']} | {n['proofs_failed']} | {n['proofs_unverifiable']} | "
                f"{n['rounds_excluded']} of {n['rounds']} |" for name, n in sorted(ingest.get("nodes", {}).items())]
        if rows:
            parts.append("\n".join(["| node | records checked | failed signatures | unsigned | proofs checked | "
                                     "proofs failed | proofs unverifiable | rounds excluded |",
                                     "|---|---|---|---|---|---|---|---|", *rows]))
    rejected = integrity.get("rejected_updates") or {}
    if rejected:
        parts.append("Updates rejected by the robust checks: " + "; ".join(
            f"{name}: {', '.join(reasons)}" for name, reasons in sorted(rejected.items())) + ".")
    return "\n\n".join(parts)


def card_data(manifest: Manifest, settings: CheckpointSettings) -> Any:
    """The card's YAML metadata as a huggingface_hub.ModelCardData."""
    from huggingface_hub import ModelCardData

    return ModelCardData(
        base_model=hub_base_model(manifest.base_model),
        license=settings.license,
        library_name="transformers",
        pipeline_tag="text-generation",
        language=settings.language or None,
        tags=list(dict.fromkeys(settings.tags + [manifest.training.method])),
        datasets=manifest.training.public_datasets or None,
    )


def render_model_card(manifest: Manifest, settings: CheckpointSettings | None = None) -> str:
    settings = settings or CheckpointSettings()
    metadata = card_data(manifest, settings).to_yaml()
    training = manifest.training
    method = _METHODS.get(training.method, training.method)
    nodes = training.examples_by_node
    total = sum(nodes.values())
    base_hub = hub_base_model(manifest.base_model)
    base_text = f"`{base_hub}` (swarmloop reference `{manifest.base_model}`)" if base_hub else f"`{manifest.base_model}`"

    summary = (
        f"{settings.name} {manifest.version} descends from {base_text} through {len(manifest.lineage)} earlier "
        f"checkpoint(s). It was produced by {method} with a LoRA adapter merged into the full weights, "
        f"on {total} example(s) from {len(nodes)} node(s)"
        + (f" over {training.rounds} federated round(s)" if training.rounds else "")
        + f", {training.steps} optimizer step(s) in all. Weights are stored as {manifest.dtype} safetensors."
    )

    lineage_rows = [
        f"| {entry.get('version', '?')} | {entry.get('method', '–')} | {_short(entry.get('weights_sha256'))} | "
        f"{entry.get('ref', '')} |"
        for entry in manifest.lineage
    ]
    lineage_rows.append(f"| **{manifest.version}** (this) | {training.method} | {_short(manifest.weights_sha256)} | |")
    lineage = "\n".join(["| version | method | weights sha256 | reference |", "|---|---|---|---|", *lineage_rows])

    node_table = _table(("node", "examples"), [(name, str(count)) for name, count in sorted(nodes.items())]) if nodes else "No training data."
    if training.public_datasets:
        links = ", ".join(f"[{d}](https://huggingface.co/datasets/{d})" for d in training.public_datasets)
        node_table += f"\n\nPublic datasets holding this data: {links}."
    hyper = _flatten(training.hyperparameters)
    hyper_table = _table(("hyperparameter", "value"), [(k, _value(v)) for k, v in sorted(hyper.items())]) if hyper else "–"
    eval_flat = _flatten(manifest.eval)
    eval_table = (
        _table(("metric", "value"), [(k, _value(v)) for k, v in sorted(eval_flat.items())])
        if eval_flat else "No evaluation was recorded for this checkpoint."
    )
    privacy = manifest.privacy
    if privacy.dp:
        privacy_text = (
            f"Differential privacy: ε = {privacy.epsilon}, δ = {privacy.delta}"
            + (f" ({privacy.mechanism})" if privacy.mechanism else "") + "."
        )
    else:
        privacy_text = "No differential privacy was applied to this checkpoint's updates."
    privacy_text += (
        " Training data came only from nodes whose operators opted in; each node's privacy filter redacted"
        " personal data and secrets before anything was stored, and raw traces never left their node."
    )
    communication = _flatten(manifest.communication)
    comm_text = (
        _table(("communication", "value"), [(k, _value(v)) for k, v in sorted(communication.items())])
        if communication else "No federated communication (trained in one place)."
    )

    integrity_text = _integrity_text(manifest.integrity)
    parent = (
        f"Parent: {manifest.parent_version} (weights sha256 {_short(manifest.parent_weights_sha256)})."
        if manifest.parent_version else "No parent checkpoint."
    )
    body = f"""
# {settings.name} {manifest.version}

{summary}

## Lineage

{parent}

{lineage}

## Training data

{node_table}

## Training hyperparameters

{hyper_table}

## Evaluation

{eval_table}

## Privacy

{privacy_text}

## Communication

{comm_text}

## Integrity

{integrity_text}

## Verify

`manifest.json` lists the sha256 of every file; the weights digest is `{manifest.weights_sha256}`.

```
swarmloop checkpoint verify PATH [--trusted-keys TRUSTED.toml]
```

## Use

```python
from transformers import AutoModelForCausalLM, AutoTokenizer

model = AutoModelForCausalLM.from_pretrained("PATH_OR_REPO")
tokenizer = AutoTokenizer.from_pretrained("PATH_OR_REPO")
```
"""
    return f"---\n{metadata}\n---\n{body}"

"""What the ServerApp tells the nodes each round, and how a node reads it.

The train/evaluate ConfigRecord carries everything a node needs that is not node-local: the base
model's identity (a node refuses to train on other weights), the recipe and its full training
settings (every node trains alike), the LoRA aggregation mode with the seed of the shared A
(and its digest, checked on the node), and the round's learning rate. Data paths never travel:
each node reads its own store path from its node_config.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict

from federation.config import FederationConfig

# Record keys of a reply: one ArrayRecord (the LoRA tensors), one MetricRecord (Flower needs exactly
# one of each, with "num-examples", the same metric keys in every reply), and a ConfigRecord
# naming the node (and why it sat a round out).
ARRAYS_KEY = "arrays"
METRICS_KEY = "metrics"
NODE_KEY = "node"

# node_config keys (SuperNode --node-config, or the simulation's per-partition settings)
NODE_DATA_PATH = "data-path"
NODE_NAME = "node-name"
NODE_ATTACK = "attack"
NODE_ATTACK_FACTOR = "attack-factor"


class RoundInstructions(BaseModel):
    model_config = ConfigDict(extra="ignore")   # Flower adds its own keys ("server-round", ...)

    method: str
    local_steps: int
    min_examples: int
    max_examples: int                 # 0: no cap
    training_settings: str            # TrainingSettings as JSON
    lora_aggregation: str
    lora_seed: int
    lora_a_digest: str
    base_ref: str
    base_sha256: str
    base_version: str = ""            # the rows to use were served by this version ("" = all)
    sft_approved_only: bool = False   # SFT rows: only replies a user approved
    keep_optimizer_state: bool = False  # carry the node's AdamW state to its next round
    seed: int
    round: int = 0
    lr: float = 0.0
    proximal_mu: float = 0.0
    # verified ingest (federation/ingest.py): the allow-list's text, policy, and this round's seed
    integrity_trusted_keys: str = ""
    integrity_require_signatures: bool = False
    integrity_proof_rate: float = 0.0
    integrity_proof_model: str = ""
    integrity_seed: int = 0

    @classmethod
    def from_record(cls, record: Any) -> "RoundInstructions":
        return cls.model_validate({k.replace("-", "_"): v for k, v in dict(record).items()})

    def settings(self):
        from training.config import TrainingSettings

        return TrainingSettings.model_validate_json(self.training_settings)

    def ingest(self):
        from federation.ingest import IngestSettings

        return IngestSettings(trusted_keys_toml=self.integrity_trusted_keys,
                              require_signatures=self.integrity_require_signatures,
                              proof_sample_rate=self.integrity_proof_rate, proof_model=self.integrity_proof_model,
                              seed=self.integrity_seed)


def round_config(
    config: FederationConfig, *, training_settings_json: str, base_ref: str, base_sha256: str, base_version: str,
    lora_a_digest: str, seed: int, trusted_node_keys: str = "",
) -> dict[str, Any]:
    """The fixed part of every round's ConfigRecord (the strategy adds round, lr and the
    integrity seed). `trusted_node_keys` is the text of the allow-list file."""
    integrity = config.integrity
    return {
        "method": config.method,
        "local-steps": config.client.local_steps,
        "min-examples": config.client.min_examples,
        "max-examples": config.client.max_examples or 0,
        "training-settings": training_settings_json,
        "lora-aggregation": config.lora.aggregation,
        "lora-seed": config.lora.seed,
        "lora-a-digest": lora_a_digest,
        "base-ref": base_ref,
        "base-sha256": base_sha256,
        # which traces' rows to train on: for DPO (by default) only those the base served
        "base-version": base_version if (config.method == "dpo" and config.client.dpo_pairs_from_base) else "",
        "sft-approved-only": config.client.sft_approved_only,
        "keep-optimizer-state": config.client.keep_optimizer_state,
        "seed": seed,
        "integrity-trusted-keys": trusted_node_keys,
        "integrity-require-signatures": integrity.require_signatures,
        "integrity-proof-rate": integrity.proof_sample_rate,
        "integrity-proof-model": integrity.proof_verifier_model or "",
    }


def node_config_args(node: dict[str, Any]) -> str:
    """A node's settings as the SuperNode's --node-config string: key=value, strings quoted."""
    parts = []
    for key, value in node.items():
        if isinstance(value, bool):
            parts.append(f"{key}={'true' if value else 'false'}")
        elif isinstance(value, (int, float)):
            parts.append(f"{key}={value}")
        else:
            parts.append(f"{key}={json.dumps(str(value))}")
    return " ".join(parts)

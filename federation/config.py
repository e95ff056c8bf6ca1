"""FederationConfig: what `swarmloop fed sim|deploy` read from configs/federation*.toml.

Torch-free and flwr-free, so the CLI can validate a config before any heavy import. Every knob
of a federated run lives here (extra="forbid": a misspelled key is a one-line error).
Relative paths are resolved against the working directory by `resolved()`, which the launchers
call before writing the config into the run folder for the ServerApp / ClientApps to read.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from inference.model_refs import DEFAULT_MODEL_REF

Method = Literal["sft", "dpo"]
StrategyName = Literal["fedavg", "fedprox", "fedadam", "fedavgm", "fedmedian", "fedtrimmedavg", "krum"]
Aggregation = Literal["ffa", "svd", "naive"]
Attack = Literal["none", "scale", "sign-flip"]
# Strategies whose aggregate is the plain weighted mean of the replies: the only ones where the
# server can swap in the SVD re-factorisation of the mean product (or the naive A/B mean).
MEAN_STRATEGIES = {"fedavg", "fedprox"}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RunSection(_Strict):
    # The run folder: metrics, plot, logs, server state, checkpoint. Rerunning with the same folder
    # resumes after the last completed round (when resume is true).
    dir: Path = Path("runs/fed")
    resume: bool = True


class NodeSpec(_Strict):
    name: str = Field(..., pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    # The node-local trace store (SQLite). Required when swarmloop starts the node (sim, or deploy
    # on loopback); a node that joins on its own reads its store from its own --node-config.
    store: Path | None = None
    # Tests and benchmarks only: make this node send a manipulated update (federation/attacks.py),
    # to exercise the robust aggregation. Never set in a real deployment.
    attack: Attack = "none"
    attack_factor: float = 10.0


class LoraSection(_Strict):
    """How LoRA updates are aggregated. Rank, alpha, dropout and target modules come from the
    training settings ([lora] of the training TOML), so one adapter shape serves every recipe."""

    # ffa: A frozen from `seed` on every node, only B trained and averaged; the mean of the
    #      updates B_i·A is then exactly (mean B_i)·A.
    # svd: A and B trained; the server averages the products B_i·A_i and re-factorises them with
    #      a truncated SVD (the error is measured and reported each round).
    # naive: A and B averaged separately (inexact; kept only to measure how inexact).
    aggregation: Aggregation = "ffa"
    seed: int = 20240601               # shared by every node: the frozen A matrices come from it


class ClientSection(_Strict):
    local_steps: int = Field(10, ge=1)          # optimizer steps per node per round
    min_examples: int = Field(4, ge=1)          # fewer and the node sits the round out
    max_examples: int | None = Field(None, ge=1)  # cap on a node's examples per round
    # DPO: train only on pairs from traces the base checkpoint served, so the recipe's reference
    # (the adapter-disabled base) is the policy that produced them.
    dpo_pairs_from_base: bool = True
    # SFT: train only on replies a user approved (chosen among n samples, thumbed up, corrected),
    # i.e. rejection-sampling fine-tuning; False also trains on unrated replies, which drifts the
    # model towards its own outputs (measured in the loop: held-out chat loss went up).
    sft_approved_only: bool = False
    # Keep each node's AdamW moments and step counts from one round to its next (in the node's
    # Flower Context.state; nothing extra travels) instead of restarting the optimizer every
    # round (federation/optimizer_state.py).
    keep_optimizer_state: bool = False
    # Training hyperparameters (batch size, max length, LoRA rank, DPO beta...): a training TOML
    # (None: configs/training.toml) with dotted overrides on top, e.g. {"lora.r" = 4}. The server
    # sends the result with each round, so every node trains with the same settings.
    training_config: Path | None = None
    training_overrides: dict[str, Any] = Field(default_factory=dict)


class ScheduleSection(_Strict):
    """Learning rate across rounds (each round's local training uses the value for its round)."""

    kind: Literal["constant", "cosine", "linear"] = "cosine"
    lr: float = Field(2e-4, gt=0)
    min_lr: float = Field(2e-5, ge=0)
    warmup_rounds: int = Field(0, ge=0)


class StrategySection(_Strict):
    name: StrategyName = "fedavg"
    fraction_train: float = Field(1.0, gt=0, le=1)
    # A round goes ahead with this many nodes; fewer connected nodes and the run waits
    # (up to connect_timeout_s at the start), so keep it at or below the nodes you expect alive.
    min_nodes: int = Field(1, ge=1)
    # Seconds a round waits for replies; a dead node costs at most this, then the round
    # aggregates what came (facts.md: the Flower default is an hour).
    round_timeout_s: float = Field(600.0, gt=0)
    connect_timeout_s: float = Field(120.0, gt=0)   # wait for the expected nodes before round 1
    federated_eval: bool = False                # also ask nodes to evaluate the global adapter on their data
    proximal_mu: float = Field(0.01, ge=0)      # fedprox
    server_lr: float = Field(1.0, gt=0)         # fedavgm (server learning rate) and fedadam (eta)
    server_momentum: float = Field(0.9, ge=0, lt=1)  # fedavgm
    beta_1: float = Field(0.9, ge=0, lt=1)      # fedadam
    beta_2: float = Field(0.99, ge=0, lt=1)     # fedadam
    tau: float = Field(1e-3, gt=0)              # fedadam
    # fedtrimmedavg: fraction cut from each tail; int(trim_beta·n) updates go, so 0.25 trims one
    # of each tail from 4 nodes on (0.2 trims nothing below 5)
    trim_beta: float = Field(0.25, ge=0, lt=0.5)
    num_malicious_nodes: int = Field(0, ge=0)   # krum


class RobustSection(_Strict):
    """Checks on each node's update before aggregation. Norms are Frobenius norms of the weight
    update ΔW = scale·ΔB·A (exact: the frozen A has orthogonal rows, see federation/models.py)."""

    # Scale down any update whose norm exceeds this (None: no clipping).
    clip_norm: float | None = Field(None, gt=0)
    # Drop an update whose norm exceeds this many times the round's median norm (3+ updates), or
    # with fewer updates the median of the norms accepted in earlier rounds (None: off).
    max_norm_ratio: float | None = Field(4.0, gt=1)
    # Keep an update only if its cosine similarity reaches this with at least half of the round's
    # other updates (3+ updates; None: off); at most ⌊(n-1)/2⌋ updates a round, the least
    # agreeing first. Catches a sign-flipped update of ordinary norm, which the norm ratio lets
    # through. Cosines of ΔB and of ΔW agree under FFA (A·Aᵀ = I/3).
    min_cosine: float | None = Field(0.0, ge=-1, lt=1)
    # Keep every update the server receives (and the round's global adapter) in
    # RUN/updates/round-NNNN/ (safetensors): an audit trail for rejected or suspicious updates.
    save_updates: bool = False


class DPSection(_Strict):
    """Central DP with server-side fixed clipping (Flower's DifferentialPrivacyServerSideFixedClipping),
    accounted with Flower's RdpAccountant; the epsilon goes into the checkpoint manifest and card."""

    enabled: bool = False
    noise_multiplier: float = Field(1.0, gt=0)
    clipping_norm: float = Field(0.05, gt=0)    # Frobenius norm of a node's weight update ΔW
    target_delta: float = Field(1e-5, gt=0, lt=1)
    max_epsilon: float | None = Field(None, gt=0)   # stop releasing updates beyond this budget


class EvalSection(_Strict):
    """Central evaluation after each round, on a held-out set the nodes never train on."""

    store: Path | None = None                   # a held-out trace store
    data: Path | None = None                    # or a dataset: a folder (save_to_disk / parquet shards) or a .jsonl/.parquet file
    max_examples: int = Field(64, ge=1)


class PublishSection(_Strict):
    registry: Path | None = Path("runs/registry")   # None: build the checkpoint in the run folder only
    promote: bool = True                        # point the registry's `latest` at the new version
    # The trainer's Ed25519 key (PEM, created with mode 0600 on first use): the checkpoint's
    # manifest is signed with it (manifest.sig), so nodes with this key in redeploy.trusted_keys
    # accept it. Export the public key: `swarmloop checkpoint trust --signing-key PATH`.
    signing_key: Path | None = None


class IntegritySection(_Strict):
    """Verified ingest (federation/ingest.py): each node checks the data a round would use."""

    # Allow-list of node keys (TOML: [keys] name = "base64 Ed25519 public key"). Every record a
    # round uses must carry a good signature by one of them (by the key named like the node, when
    # there is one). None: signatures are not checked.
    trusted_node_keys: Path | None = None
    require_signatures: bool = False            # true: an unsigned record excludes its node too
    # Share of the traces a round uses whose activation proofs are re-run (at least one when > 0);
    # traces without proofs or with redacted text count as unverifiable, not failed.
    proof_sample_rate: float = Field(0.05, ge=0, le=1)
    # The model to re-run proofs on (a model reference); None: the round's base. Traces served
    # by other weights are unverifiable.
    proof_verifier_model: str | None = None

    @model_validator(mode="after")
    def _keys_for_required_signatures(self) -> "IntegritySection":
        if self.require_signatures and self.trusted_node_keys is None:
            raise ValueError("require_signatures needs trusted_node_keys (the allow-list to check them against)")
        return self


class SimulationSection(_Strict):
    client_cpus: float = Field(1.0, gt=0)       # Ray resources per virtual node (2 cores here: 1)
    ray_num_cpus: int | None = Field(None, ge=1)


class DeploymentSection(_Strict):
    host: str = "127.0.0.1"
    superlink_port: int = Field(0, ge=0, le=65535)     # 0: a free port
    supernode_base_port: int = Field(0, ge=0, le=65535)  # 0: free ports
    # Join an existing SuperLink (host:port of its HTTP API) whose SuperNodes were started
    # elsewhere, instead of starting our own on loopback.
    superlink: str | None = None
    startup_timeout_s: float = Field(60.0, gt=0)
    run_timeout_s: float | None = Field(None, gt=0)     # stop the whole run after this
    threads_per_node: int | None = Field(None, ge=1)    # OMP/torch threads per node (default: cores / nodes)


class FederationConfig(_Strict):
    base: str = DEFAULT_MODEL_REF       # the current checkpoint: LoRA sits on it, DPO uses it as reference
    method: Method = "sft"
    rounds: int = Field(3, ge=1)
    run: RunSection = Field(default_factory=RunSection)
    nodes: list[NodeSpec] = Field(default_factory=list)
    lora: LoraSection = Field(default_factory=LoraSection)
    client: ClientSection = Field(default_factory=ClientSection)
    schedule: ScheduleSection = Field(default_factory=ScheduleSection)
    strategy: StrategySection = Field(default_factory=StrategySection)
    robust: RobustSection = Field(default_factory=RobustSection)
    dp: DPSection = Field(default_factory=DPSection)
    eval: EvalSection = Field(default_factory=EvalSection)
    integrity: IntegritySection = Field(default_factory=IntegritySection)
    publish: PublishSection = Field(default_factory=PublishSection)
    simulation: SimulationSection = Field(default_factory=SimulationSection)
    deployment: DeploymentSection = Field(default_factory=DeploymentSection)

    @model_validator(mode="after")
    def _consistent(self) -> "FederationConfig":
        names = [node.name for node in self.nodes]
        if len(set(names)) != len(names):
            raise ValueError("nodes: names must be unique")
        if self.nodes and self.strategy.min_nodes > len(self.nodes):
            raise ValueError(f"strategy.min_nodes ({self.strategy.min_nodes}) exceeds the {len(self.nodes)} nodes listed")
        if self.lora.aggregation != "ffa" and self.strategy.name not in MEAN_STRATEGIES:
            raise ValueError(f"lora.aggregation={self.lora.aggregation} needs a mean strategy ({', '.join(sorted(MEAN_STRATEGIES))})")
        if self.lora.aggregation != "ffa" and (self.dp.enabled or self.robust.clip_norm):
            raise ValueError("DP and update clipping need lora.aggregation = \"ffa\" (norms are exact on the B-update only then)")
        if self.dp.enabled and self.strategy.name != "fedavg":
            raise ValueError("dp.enabled needs strategy.name = \"fedavg\" (Flower accounts DP only over FedAvg)")
        if self.schedule.min_lr > self.schedule.lr:
            raise ValueError("schedule.min_lr must not exceed schedule.lr")
        if self.eval.store is not None and self.eval.data is not None:
            raise ValueError("eval: give store or data, not both")
        return self

    def resolved(self) -> "FederationConfig":
        """A copy with every path made absolute (against the working directory)."""
        data = self.model_copy(deep=True)
        data.run.dir = data.run.dir.expanduser().resolve()
        for node in data.nodes:
            if node.store is not None:
                node.store = node.store.expanduser().resolve()
        if data.client.training_config is not None:
            data.client.training_config = data.client.training_config.expanduser().resolve()
        for name in ("store", "data"):
            value = getattr(data.eval, name)
            if value is not None:
                setattr(data.eval, name, value.expanduser().resolve())
        if data.publish.registry is not None:
            data.publish.registry = data.publish.registry.expanduser().resolve()
        if data.publish.signing_key is not None:
            data.publish.signing_key = data.publish.signing_key.expanduser().resolve()
        if data.integrity.trusted_node_keys is not None:
            data.integrity.trusted_node_keys = data.integrity.trusted_node_keys.expanduser().resolve()
        if data.integrity.proof_verifier_model is not None:
            data.integrity.proof_verifier_model = _resolved_ref(data.integrity.proof_verifier_model)
        data.base = _resolved_ref(data.base)
        return data

    def training_digest(self) -> str:
        """What must not change between a crashed run and its resumption."""
        keys = {"base": self.base, "method": self.method, "lora": self.lora.model_dump(mode="json"),
                "strategy": self.strategy.name, "dp": self.dp.model_dump(mode="json"),
                "nodes": [n.name for n in self.nodes]}
        return hashlib.sha256(json.dumps(keys, sort_keys=True).encode()).hexdigest()[:16]


def _resolved_ref(ref: str) -> str:
    """A model reference with its local path (a folder, or a registry's) made absolute."""
    if ref.startswith("registry:"):
        body = ref.split(":", 1)[1]
        path, at, version = body.rpartition("@") if "@" in body else (body, "", "")
        return f"registry:{Path(path).expanduser().resolve()}{at}{version}"
    if _looks_like_path(ref):
        return str(Path(ref).expanduser().resolve())
    return ref


def _looks_like_path(ref: str) -> bool:
    return not re.match(r"^(embedded:|registry:|hf:|tiny-random$)", ref)

"""LoopConfig: what `swarmloop loop --config configs/loop.toml` reads.

The [federation] table holds FederationConfig keys (federation/config.py) applied on top of the
loop's own choices (base model, node stores, run folder, registry), so every knob of a federated
run is available here too and a misspelled one is a one-line error naming it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from inference.model_refs import DEFAULT_MODEL_REF
from swarmloop.workload import WorkloadSettings


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LoopSection(_Strict):
    model: str = DEFAULT_MODEL_REF            # what the nodes serve first (version v0000)
    nodes: int = Field(3, ge=1, le=16)
    iterations: int = Field(1, ge=1)
    # deployment: real flower-superlink + flower-supernode processes; simulation: Flower's Ray engine
    runtime: Literal["deployment", "simulation"] = "deployment"
    run_dir: Path = Path("runs/loop")         # each invocation writes a timestamped folder in it
    seed: int = 0


class NodesSection(_Strict):
    """How the conductor starts each node (`swarmloop node serve` subprocesses on loopback)."""

    host: str = "127.0.0.1"
    base_port: int = Field(0, ge=0, le=65535)     # 0: free ports
    dtype: Literal["float32", "bfloat16"] = "float32"
    threads: int = Field(1, ge=0)                 # torch threads per node (several nodes share the cores)
    consent: Literal["local", "share"] = "local"
    poll_interval_s: float = Field(1.0, gt=0)     # how often a node polls the registry for a new version
    limits: dict[str, Any] = Field(default_factory=lambda: {"max_n": 4, "max_batch_size": 16, "max_tokens_cap": 256})
    startup_timeout_s: float = Field(300.0, gt=0)
    swap_timeout_s: float = Field(300.0, gt=0)    # wait for every node to serve a new version
    probe_requests: int = Field(2, ge=1)          # requests per node after a swap, to check new traces
    proofs: bool = True                           # activation proofs with every stored trace


class EvalSection(_Strict):
    """Held-out evaluation of each version: checkable tasks from the eval split (which the workload
    never draws from) and real conversations the workload never sent."""

    tasks: int = Field(200, ge=1)
    task_kinds: list[str] | None = None          # None: the workload's kinds
    chat_conversations: int = Field(48, ge=1)
    batch_size: int = Field(16, ge=1)
    max_new_tokens: int = Field(32, ge=1)
    max_length: int = Field(384, ge=16)


class IntegritySection(_Strict):
    """Who may feed and who may change the swarm (issue: integrity). Each node signs its records
    with its own key (always) and proves its activations ([nodes] proofs)."""

    # The trainer signs every checkpoint (a key in the run folder) and every node accepts only
    # checkpoints signed by it (redeploy.trusted_keys).
    sign_checkpoints: bool = True
    # Before each round, every node's records must carry a good signature by that node's key (an
    # allow-list the conductor collects from GET /admin/identity) and a sample of activation
    # proofs is re-run ([federation.integrity] proof_sample_rate).
    verify_ingest: bool = True


class LoopConfig(_Strict):
    loop: LoopSection = Field(default_factory=LoopSection)
    nodes: NodesSection = Field(default_factory=NodesSection)
    workload: WorkloadSettings = Field(default_factory=WorkloadSettings)
    eval: EvalSection = Field(default_factory=EvalSection)
    integrity: IntegritySection = Field(default_factory=IntegritySection)
    federation: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _federation_keys_valid(self) -> "LoopConfig":
        from federation.config import FederationConfig

        reserved = {"base", "nodes", "run", "publish"} & set(self.federation)
        if reserved:
            raise ValueError(f"federation.{sorted(reserved)[0]} is set by the loop itself")
        FederationConfig.model_validate(self.federation)  # raises with the key's path
        return self

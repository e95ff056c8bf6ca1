"""NodeConfig: what `swarmloop node serve` and `swarmloop node batch` read from configs/node.toml.

Torch-free. Validated with extra="forbid" everywhere, so a misspelled key is a one-line error
(see swarmloop.configfile.load_config). The defaults here are the ones in configs/node.toml.
"""

from __future__ import annotations

import hashlib
import re
import socket
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from inference.model_refs import DEFAULT_MODEL_REF

Consent = Literal["off", "local", "share"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ServerConfig(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    # Seconds uvicorn waits for open connections on SIGINT/SIGTERM before closing them.
    graceful_shutdown_s: float = Field(5.0, ge=0)


class ModelConfig(_Strict):
    ref: str = DEFAULT_MODEL_REF
    # float32: bfloat16 is a little faster for one sequence on this CPU but several times slower
    # for prefill and batched decoding, which is what a node spends its time on (bench/RESULTS.md).
    dtype: Literal["float32", "bfloat16"] = "float32"
    # torch intra-op threads; 0 keeps torch's default (one per core). On a machine shared with
    # other busy jobs, 1 is much faster: threads that wait on each other stall every small op.
    threads: int = Field(0, ge=0)

    def apply_threads(self) -> None:
        if self.threads:
            import torch

            torch.set_num_threads(self.threads)


class LimitsConfig(_Strict):
    max_prompt_tokens: int = Field(4096, ge=1)
    max_tokens_cap: int = Field(1024, ge=1)          # largest max_tokens a request may ask for
    default_max_tokens: int = Field(256, ge=1)       # used when a request gives none (capped by max_tokens_cap)
    max_n: int = Field(8, ge=1)                      # largest `n` (choices) per request
    max_batch_size: int = Field(8, ge=1)             # rows decoded together
    queue_size: int = Field(64, ge=1)                # waiting requests before 429
    max_body_bytes: int = Field(4 * 2**20, ge=1)    # larger request bodies get 413 before any parsing

    @model_validator(mode="after")
    def _consistent(self) -> "LimitsConfig":
        if self.max_n > self.max_batch_size:
            raise ValueError("max_n must not exceed max_batch_size (the n rows of a request share one batch)")
        return self


class RedeployConfig(_Strict):
    """[redeploy]: follow a checkpoint registry and hot-swap to its latest version (inference.hotswap)."""

    # "registry:PATH" (a local folder registry, its `latest` pointer) or "hf:ORG/NAME" (the highest
    # version tag of a Hub repo). None: the node serves model.ref and never swaps on its own.
    registry: str | None = None
    poll_interval_s: float = Field(10.0, ge=0)     # 0: no polling, only POST /admin/reload
    # Bearer token for POST /admin/reload: `admin_token`, else the environment variable named by
    # `admin_token_env`. Neither set (or the variable empty): the endpoint is disabled (404).
    admin_token: str | None = None
    admin_token_env: str | None = None
    # A trusted-keys TOML ([keys] name = "base64 Ed25519 public key"): when set, a checkpoint is
    # loaded only if manifest.sig is signed by one of these keys (training.signing).
    trusted_keys: Path | None = None
    # overlap: rows in flight finish on the old weights next to the new model's rows, so new
    # requests start at once; hold: new requests wait until every in-flight row is done.
    drain: Literal["overlap", "hold"] = "overlap"
    # The health generation a new model must pass before it serves (and once more after the swap).
    health_prompt: str = "Say hello."
    health_max_tokens: int = Field(4, ge=1, le=64)
    # How long the post-swap health generation may take (it queues ahead of waiting requests,
    # but needs a free row); no answer in time rolls back.
    health_timeout_s: float = Field(60.0, gt=0)

    @model_validator(mode="after")
    def _registry_ref(self) -> "RedeployConfig":
        if self.registry is not None:
            registry = self.registry.strip()
            if not (registry.startswith("registry:") or registry.startswith("hf:")) or "@" in registry:
                raise ValueError("registry must be registry:PATH or hf:ORG/NAME (no @version: the node follows the latest)")
            self.registry = registry
        return self


class IdentityConfig(_Strict):
    """[identity]: the node's Ed25519 key (traces.signing), created with mode 0600 on first start."""

    # None: next to the store (<store stem>.key, e.g. traces.db -> traces.key), else
    # $SWARMLOOP_HOME/keys/<node_id or "node">.key. A key file others can read is refused.
    key_path: Path | None = None


class IntegrityConfig(_Strict):
    """[integrity]: what the node adds to the traces it stores so that others can check them."""

    # Activation proofs (inference/proofs.py) for every request whose trace will be stored: the
    # engine streams the final norm's hidden states to a ProofBuilder per choice and feeds each
    # reply's last token once more. Measured cost well under 5 % of generation time
    # (bench/bench_integrity.py, bench/RESULTS.md); requests that are not stored never pay it.
    proofs: bool = True


class NodeConfig(_Strict):
    consent: Consent = "off"
    store: Path | None = None                        # node-local trace store (SQLite); needed unless consent is off
    # The node's name: the label of its key in federation allow-lists (`swarmloop node key`) and in
    # /admin/identity. Stored records carry the key-derived id (node-<sha256 prefix>) instead.
    node_id: str | None = None                       # default: derived stably, see resolved_node_id()
    server: ServerConfig = Field(default_factory=ServerConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    redeploy: RedeployConfig = Field(default_factory=RedeployConfig)
    privacy: dict[str, Any] | None = None           # passed through to the capture hook as is
    identity: IdentityConfig = Field(default_factory=IdentityConfig)
    integrity: IntegrityConfig = Field(default_factory=IntegrityConfig)

    def resolved_key_path(self) -> Path:
        """Where the node's key lives (see IdentityConfig.key_path)."""
        if self.identity.key_path is not None:
            return Path(self.identity.key_path).expanduser()
        if self.store is not None:
            store = Path(self.store).expanduser()
            return store.with_name((store.name if store.suffix == ".key" else store.stem) + ".key")
        from inference.home import swarmloop_home

        name = re.sub(r"[^A-Za-z0-9_.-]", "_", self.node_id or "node").lstrip(".") or "node"
        return swarmloop_home() / "keys" / f"{name}.key"

    def resolved_node_id(self) -> str:
        """A stable id: the configured one, else derived from the store path, else host name + port."""
        if self.node_id:
            return self.node_id
        if self.store is not None:
            basis = str(Path(self.store).expanduser().resolve())
        else:
            basis = f"{socket.gethostname()}:{self.server.port}"
        return "node-" + hashlib.sha256(basis.encode()).hexdigest()[:12]

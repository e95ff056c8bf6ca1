"""Server state after each completed round, so a crashed run resumes where it stopped.

state.json says which round completed and points at round-NNNN.safetensors, which holds the
global LoRA tensors ("global/…") and the strategy's own state ("strategy/…": FedAdam moments,
FedAvgM momentum). The arrays file is written first and state.json replaced atomically after,
so a crash at any moment leaves the previous round's state intact.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
from pydantic import BaseModel, Field

from federation.runs import RunFolder

STATE_NAME = "state.json"


class ServerState(BaseModel):
    round: int                              # last completed round (absolute)
    rounds: int                             # rounds the run was configured for
    digest: str                             # FederationConfig.training_digest(): must match to resume
    base_ref: str = ""                      # the base pinned when the run started (a registry's
    base_sha256: str = ""                   # `latest` may have moved since): resumed on the same weights
    arrays_file: str
    history: list[dict[str, Any]] = Field(default_factory=list)
    strategy: dict[str, Any] = Field(default_factory=dict)   # JSON part of the strategy state
    examples_by_node: dict[str, int] = Field(default_factory=dict)
    steps: int = 0                          # local optimizer steps, all nodes and rounds
    seconds: float = 0.0


def save_state(run: RunFolder, state: ServerState, global_arrays: dict[str, np.ndarray],
               strategy_arrays: dict[str, np.ndarray]) -> None:
    from safetensors.numpy import save_file

    run.state_dir.mkdir(parents=True, exist_ok=True)
    name = f"round-{state.round:04d}.safetensors"
    tensors = {f"global/{k}": np.ascontiguousarray(v) for k, v in global_arrays.items()}
    tensors.update({f"strategy/{k}": np.ascontiguousarray(v) for k, v in strategy_arrays.items()})
    tmp = run.state_dir / f".{name}.tmp"
    save_file(tensors, str(tmp))
    os.replace(tmp, run.state_dir / name)
    state = state.model_copy(update={"arrays_file": name})
    tmp_json = run.state_dir / f".{STATE_NAME}.tmp"
    tmp_json.write_text(json.dumps(state.model_dump(mode="json"), indent=1))
    os.replace(tmp_json, run.state_dir / STATE_NAME)
    for old in run.state_dir.glob("round-*.safetensors"):
        if old.name != name:
            old.unlink(missing_ok=True)


def load_state(run: RunFolder) -> tuple[ServerState, dict[str, np.ndarray], dict[str, np.ndarray]] | None:
    from safetensors.numpy import load_file

    path = run.state_dir / STATE_NAME
    if not path.is_file():
        return None
    state = ServerState.model_validate_json(path.read_text())
    tensors = load_file(str(run.state_dir / state.arrays_file))
    global_arrays = {k.split("/", 1)[1]: v for k, v in tensors.items() if k.startswith("global/")}
    strategy_arrays = {k.split("/", 1)[1]: v for k, v in tensors.items() if k.startswith("strategy/")}
    return state, global_arrays, strategy_arrays


def clear_state(run: RunFolder) -> None:
    for path in list(run.state_dir.glob("*")) if run.state_dir.is_dir() else []:
        path.unlink(missing_ok=True)

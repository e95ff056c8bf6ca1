"""The run folder, and what a run returns to its caller (the CLI, the loop conductor).

    RUN/federation.json      the resolved config the ServerApp and ClientApps read
    RUN/state/               server state after the last completed round (federation/state.py)
    RUN/metrics.json         one record per round: eval, train, nodes, bytes, epsilon
    RUN/metrics.png          loss, eval and bytes per round
    RUN/checkpoint/vNNNN/    the built checkpoint (then published to the registry)
    RUN/result.json          the RunResult below
    RUN/logs/                server / superlink / supernode / flwr-run logs
    RUN/app/, RUN/flwr-home/ deployment only: the generated Flower app and FLWR_HOME
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field


class RunFolder:
    def __init__(self, root: Path | str):
        self.root = Path(root)

    def ensure(self) -> "RunFolder":
        for folder in (self.root, self.state_dir, self.logs_dir):
            folder.mkdir(parents=True, exist_ok=True)
        return self

    @property
    def config_path(self) -> Path:
        return self.root / "federation.json"

    @property
    def state_dir(self) -> Path:
        return self.root / "state"

    @property
    def metrics_path(self) -> Path:
        return self.root / "metrics.json"

    @property
    def plot_path(self) -> Path:
        return self.root / "metrics.png"

    @property
    def checkpoint_dir(self) -> Path:
        return self.root / "checkpoint"

    @property
    def result_path(self) -> Path:
        return self.root / "result.json"

    @property
    def logs_dir(self) -> Path:
        return self.root / "logs"

    @property
    def app_dir(self) -> Path:
        return self.root / "app"

    @property
    def flwr_home(self) -> Path:
        return self.root / "flwr-home"


class RunResult(BaseModel):
    """What `run_simulation` / `run_deployment` return (and RUN/result.json holds)."""

    mode: Literal["simulation", "deployment"] = "simulation"
    run_dir: Path
    method: str
    rounds: int                                 # rounds completed in total
    resumed_from_round: int = 0                 # rounds already done when this invocation started
    version: str | None = None                  # the new checkpoint's version ("v0002")
    checkpoint: Path | None = None              # the built checkpoint folder (in the run folder)
    published: Path | None = None               # the registry folder of that version, if published
    base: str
    eval: dict[str, float] = Field(default_factory=dict)          # central eval after the last round
    baseline_eval: dict[str, float] = Field(default_factory=dict)  # central eval of the base (round 0)
    history: list[dict[str, Any]] = Field(default_factory=list)   # metrics.json
    communication: dict[str, Any] = Field(default_factory=dict)
    privacy: dict[str, Any] = Field(default_factory=dict)
    examples_by_node: dict[str, int] = Field(default_factory=dict)
    integrity: dict[str, Any] = Field(default_factory=dict)       # the manifest's integrity field
    signed_by: str | None = None                # node id of the key that signed the checkpoint
    seconds: float = 0.0

    def save(self, path: Path) -> None:
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(self.model_dump_json(indent=2))
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> "RunResult":
        return cls.model_validate_json(Path(path).read_text())

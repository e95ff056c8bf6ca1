"""Per-round metrics JSON and a PNG plot (loss, eval, bytes) in the run folder."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def write_metrics(path: Path, history: list[dict[str, Any]]) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(history, indent=1, default=float))
    os.replace(tmp, path)


def read_metrics(path: Path) -> list[dict[str, Any]]:
    try:
        return json.loads(Path(path).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return []


def plot_metrics(path: Path, history: list[dict[str, Any]], *, eval_key: str) -> None:
    """Three panels over rounds: mean train loss of the nodes, central eval, MB each way."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds = [h for h in history if h.get("round", 0) > 0]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    xs = [h["round"] for h in rounds]
    train = [h.get("train_loss") for h in rounds]
    axes[0].plot([x for x, y in zip(xs, train) if y is not None], [y for y in train if y is not None], marker="o")
    axes[0].set_title("train loss (mean of nodes)")
    evals = [(h["round"], h["eval"][eval_key]) for h in history if eval_key in h.get("eval", {})]
    if evals:
        axes[1].plot([x for x, _ in evals], [y for _, y in evals], marker="o", color="tab:green")
    axes[1].set_title(f"central eval: {eval_key}")
    down = [h.get("bytes", {}).get("down_bytes", 0) / 1e6 for h in rounds]
    up = [h.get("bytes", {}).get("up_bytes", 0) / 1e6 for h in rounds]
    axes[2].bar([x - 0.2 for x in xs], down, width=0.4, label="server → nodes")
    axes[2].bar([x + 0.2 for x in xs], up, width=0.4, label="nodes → server")
    axes[2].set_title("MB per round")
    axes[2].legend()
    for ax in axes:
        ax.set_xlabel("round")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    os.replace(tmp, path)

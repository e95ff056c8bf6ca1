"""What a recipe returns: the trained PeftModel, a flat metrics dict and the trainer's log."""

from __future__ import annotations

from dataclasses import dataclass, field
from statistics import fmean
from typing import Any

from training.manifest import TrainingSummary

# Per-step values a preference trainer logs that are worth a run-level mean.
_PREFERENCE_KEYS = ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "kl")


@dataclass
class TrainResult:
    model: Any                                   # the PeftModel after training, in eval mode
    metrics: dict[str, float]                    # train_loss, first_loss, last_loss, steps, examples, seconds, ...
    log_history: list[dict[str, Any]]            # the trainer's log, one dict per logged step
    method: str                                  # sft | dpo | kto
    hyperparameters: dict[str, Any] = field(default_factory=dict)

    def training_summary(
        self,
        *,
        examples_by_node: dict[str, int] | None = None,
        rounds: int = 0,
        method: str | None = None,
        public_datasets: list[str] | None = None,
    ) -> TrainingSummary:
        """The manifest's training section for a checkpoint built from this single run.
        `public_datasets`: Hub ids (ORG/NAME) of public datasets the data was pushed to, for the card."""
        examples = examples_by_node if examples_by_node is not None else {"local": int(self.metrics["examples"])}
        return TrainingSummary(
            method=method or self.method,
            examples_by_node=examples,
            rounds=rounds,
            steps=int(self.metrics["steps"]),
            hyperparameters=self.hyperparameters,
            public_datasets=list(public_datasets or []),
        )


def collect_result(
    trainer: Any,
    model: Any,
    *,
    method: str,
    seconds: float,
    hyperparameters: dict[str, Any],
    eval_metrics: dict[str, Any] | None = None,
) -> TrainResult:
    history = [dict(entry) for entry in trainer.state.log_history]
    losses = [entry["loss"] for entry in history if "loss" in entry]
    summary = next((entry for entry in reversed(history) if "train_loss" in entry), {})
    steps = int(trainer.state.global_step)
    args = trainer.args
    metrics: dict[str, float] = {
        "train_loss": float(summary.get("train_loss", fmean(losses) if losses else float("nan"))),
        "first_loss": float(losses[0]) if losses else float("nan"),
        "last_loss": float(losses[-1]) if losses else float("nan"),
        "steps": steps,
        "examples": len(trainer.train_dataset),
        "examples_seen": steps * args.per_device_train_batch_size * args.gradient_accumulation_steps,
        "seconds": round(seconds, 3),
        "seconds_per_step": round(seconds / steps, 4) if steps else float("nan"),
    }
    for key in _PREFERENCE_KEYS:
        values = [float(entry[key]) for entry in history if key in entry]
        if values:
            metrics[key] = fmean(values)
    for key, value in (eval_metrics or {}).items():
        if key.startswith("eval_") and isinstance(value, (int, float)):
            metrics[key] = float(value)
    model.eval()
    return TrainResult(model=model, metrics=metrics, log_history=history, method=method, hyperparameters=hyperparameters)

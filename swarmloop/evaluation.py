"""Held-out evaluation of one checkpoint version, and the paired comparison of two versions.

The same held-out tasks and conversations score every version, so differences are paired:
the interval on an accuracy difference is the normal interval of the per-task differences
(each -1, 0 or +1), which is tighter and more honest than comparing two independent intervals.
"""

from __future__ import annotations

import math
import time
from statistics import fmean, stdev
from typing import Any

from pydantic import BaseModel

from training.eval import wilson_interval


class VersionEval(BaseModel):
    version: str
    ref: str
    task_accuracy: float
    task_ci95: tuple[float, float]
    tasks: int
    accuracy_by_kind: dict[str, float]
    chat_loss: float
    chat_examples: int
    correct: list[bool]                 # per held-out task, in order
    chat_losses: list[float]            # per held-out conversation, in order
    seconds: float


class Comparison(BaseModel):
    old: str
    new: str
    n_tasks: int
    accuracy_delta: float
    accuracy_delta_ci95: tuple[float, float]
    improved_significantly: bool        # the interval lies above zero
    chat_loss_delta: float
    chat_loss_delta_ci95: tuple[float, float]
    chat_regressed_significantly: bool  # the interval lies above zero (loss went up)


def paired_interval(differences: list[float], z: float = 1.96) -> tuple[float, float, float]:
    """Mean of paired differences and its 95 % normal interval."""
    clean = [d for d in differences if not math.isnan(d)]
    if not clean:
        return float("nan"), float("nan"), float("nan")
    mean = fmean(clean)
    if len(clean) < 2:
        return mean, float("-inf"), float("inf")
    half = z * stdev(clean) / math.sqrt(len(clean))
    return mean, mean - half, mean + half


def compare(old: VersionEval, new: VersionEval) -> Comparison:
    acc, acc_lo, acc_hi = paired_interval([float(b) - float(a) for a, b in zip(old.correct, new.correct)])
    loss, loss_lo, loss_hi = paired_interval([b - a for a, b in zip(old.chat_losses, new.chat_losses)])
    return Comparison(
        old=old.version, new=new.version, n_tasks=len(old.correct),
        accuracy_delta=acc, accuracy_delta_ci95=(acc_lo, acc_hi), improved_significantly=acc_lo > 0,
        chat_loss_delta=loss, chat_loss_delta_ci95=(loss_lo, loss_hi), chat_regressed_significantly=loss_lo > 0,
    )


def evaluate_version(ref: str, tasks: list[dict[str, Any]], conversations: list[list[dict[str, str]]],
                     *, batch_size: int, max_new_tokens: int, max_length: int) -> VersionEval:
    """Greedy task accuracy (verifier judges) and held-out chat loss of one model reference."""
    from inference.loading import load_model
    from training.config import EvalSettings
    from training.eval import heldout_loss, task_accuracy

    started = time.monotonic()
    loaded = load_model(ref)
    settings = EvalSettings(batch_size=batch_size, max_new_tokens=max_new_tokens, max_length=max_length)
    accuracy = task_accuracy(loaded.model, loaded.tokenizer, tasks, settings=settings)
    chat = heldout_loss(loaded.model, loaded.tokenizer, [{"messages": c} for c in conversations], settings)
    correct = accuracy.correct
    by_kind: dict[str, list[bool]] = {}
    for task, ok in zip(tasks, correct):
        by_kind.setdefault(task["kind"], []).append(ok)
    return VersionEval(
        version=loaded.identity.version, ref=ref,
        task_accuracy=fmean(correct) if correct else float("nan"),
        task_ci95=wilson_interval(sum(correct), len(correct)), tasks=len(correct),
        accuracy_by_kind={kind: fmean(oks) for kind, oks in sorted(by_kind.items())},
        chat_loss=chat.metrics["loss"], chat_examples=len(conversations),
        correct=correct, chat_losses=[row["loss"] for row in chat.per_example],
        seconds=time.monotonic() - started,
    )

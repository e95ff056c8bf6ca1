"""Learning rate across rounds: each round's local training runs at the rate for its round."""

from __future__ import annotations

import math

from federation.config import ScheduleSection


def lr_for_round(schedule: ScheduleSection, server_round: int, total_rounds: int) -> float:
    """`server_round` counts from 1. Warm-up rises linearly to `lr`; then constant, or a cosine /
    linear decay that reaches `min_lr` at the last round."""
    if schedule.warmup_rounds and server_round <= schedule.warmup_rounds:
        return schedule.lr * server_round / (schedule.warmup_rounds + 1)
    if schedule.kind == "constant":
        return schedule.lr
    decay_rounds = total_rounds - schedule.warmup_rounds
    if decay_rounds <= 1:
        return schedule.lr
    progress = (server_round - schedule.warmup_rounds - 1) / (decay_rounds - 1)
    progress = min(max(progress, 0.0), 1.0)
    if schedule.kind == "cosine":
        factor = 0.5 * (1.0 + math.cos(math.pi * progress))
    else:
        factor = 1.0 - progress
    return schedule.min_lr + (schedule.lr - schedule.min_lr) * factor

"""A node's optimizer state, carried from one round to its next (client.keep_optimizer_state).

Each round's local training builds a fresh AdamW, so by default its moments restart at zero every
round: the first local steps then move every weight by about the full learning rate whatever its
gradient history (Adam's bias correction), which a centralized run does only once. Keeping each
node's moments and step counts across rounds (in Flower's per-node Context.state, which lives on
the node: nothing extra travels) makes k-step rounds continue one optimizer, as a centralized run
does. The model's weights still come from the server each round; only the moments carry over.

The state is dropped when it does not fit the optimizer it would be loaded into (other trainable
tensors or shapes), so a changed adapter starts clean instead of failing.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, RecordDict
from transformers import TrainerCallback

STATE_KEY = "optimizer-state"   # the ArrayRecord in Context.state
_SEPARATOR = "|"                # "<param index>|<field>", e.g. "3|exp_avg"
log = logging.getLogger("swarmloop.federation")


class CarryOptimizerState(TrainerCallback):
    """Loads `saved` (an optimizer's "state" mapping) into the trainer's optimizer when training
    begins, and keeps the optimizer's state in `saved` when it ends."""

    def __init__(self, saved: dict[int, dict[str, Any]] | None) -> None:
        self.saved = saved
        self.loaded = False

    def on_train_begin(self, args: Any, state: Any, control: Any, optimizer: Any = None, **kwargs: Any) -> None:
        if optimizer is None or not self.saved:
            return
        current = optimizer.state_dict()
        params = [p for group in optimizer.param_groups for p in group["params"]]
        if not _fits(self.saved, params):
            self.saved = None
            return
        # only the per-parameter state: the round's learning rate stays what the server sent
        optimizer.load_state_dict({"state": self.saved, "param_groups": current["param_groups"]})
        self.loaded = True

    def on_train_end(self, args: Any, state: Any, control: Any, optimizer: Any = None, **kwargs: Any) -> None:
        if optimizer is None:
            return
        state = optimizer.state_dict()["state"]
        if not all("exp_avg" in entry for entry in state.values()):
            # Adam-family moments only: another optimizer's state (e.g. Adafactor's factored
            # rows, non-tensor entries) is not carried, and that node restarts it every round
            log.warning("keep_optimizer_state: %s has no Adam moments; its state is not kept",
                        optimizer.__class__.__name__)
            self.saved = None
            return
        self.saved = {index: {field: value.detach().clone() for field, value in entry.items()
                              if isinstance(value, torch.Tensor)}
                      for index, entry in state.items()}


def _fits(saved: dict[int, dict[str, Any]], params: list[Any]) -> bool:
    if set(saved) != set(range(len(params))):
        return False
    return all(entry.get("exp_avg") is not None and tuple(entry["exp_avg"].shape) == tuple(params[i].shape)
               for i, entry in saved.items())


def load_optimizer_state(context_state: RecordDict) -> dict[int, dict[str, Any]] | None:
    """The state a node kept from its last round, as torch tensors (None before its first)."""
    if STATE_KEY not in context_state:
        return None
    saved: dict[int, dict[str, Any]] = {}
    for key, array in context_state[STATE_KEY].items():
        index, field = key.split(_SEPARATOR, 1)
        value = torch.from_numpy(array.numpy().copy())
        saved.setdefault(int(index), {})[field] = value.reshape(()) if field == "step" else value
    return saved


def store_optimizer_state(context_state: RecordDict, saved: dict[int, dict[str, Any]] | None) -> None:
    """Keep `saved` in the node's Context.state for its next round (or forget it when None)."""
    if saved is None:
        if STATE_KEY in context_state:
            del context_state[STATE_KEY]
        return
    arrays = {}
    for index, entry in saved.items():
        for field, value in entry.items():
            data = value.detach().cpu().numpy()
            arrays[f"{index}{_SEPARATOR}{field}"] = Array(np.ascontiguousarray(data.reshape(1) if data.ndim == 0 else data))
    context_state[STATE_KEY] = ArrayRecord(arrays)

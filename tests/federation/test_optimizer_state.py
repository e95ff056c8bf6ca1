"""The optimizer state a node carries between rounds (client.keep_optimizer_state)."""

from __future__ import annotations

import torch
from flwr.app import RecordDict

from federation.optimizer_state import CarryOptimizerState, load_optimizer_state, store_optimizer_state


def _trained(optimizer_class, **kwargs) -> torch.optim.Optimizer:
    torch.manual_seed(0)
    weight = torch.nn.Parameter(torch.randn(3, 2))
    optimizer = optimizer_class([weight], **kwargs)
    for _ in range(2):
        optimizer.zero_grad()
        (weight ** 2).sum().backward()
        optimizer.step()
    return optimizer


def test_adam_moments_survive_the_context_state_and_load_into_a_fresh_optimizer():
    callback = CarryOptimizerState(None)
    callback.on_train_end(None, None, None, optimizer=_trained(torch.optim.AdamW, lr=0.1))
    context_state = RecordDict()
    store_optimizer_state(context_state, callback.saved)
    restored = load_optimizer_state(context_state)
    assert restored is not None and float(restored[0]["step"]) == 2.0
    assert torch.equal(restored[0]["exp_avg_sq"], callback.saved[0]["exp_avg_sq"])

    fresh = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(3, 2))], lr=0.5)
    carry = CarryOptimizerState(restored)
    carry.on_train_begin(None, None, None, optimizer=fresh)
    assert carry.loaded
    assert fresh.param_groups[0]["lr"] == 0.5            # the round's learning rate is kept
    assert float(fresh.state_dict()["state"][0]["step"]) == 2.0


def test_an_optimizer_without_adam_moments_is_not_carried():
    callback = CarryOptimizerState(None)
    callback.on_train_end(None, None, None, optimizer=_trained(torch.optim.SGD, lr=0.1, momentum=0.9))
    assert callback.saved is None
    context_state = RecordDict()
    store_optimizer_state(context_state, callback.saved)
    assert load_optimizer_state(context_state) is None


def test_state_of_another_shape_is_dropped_instead_of_failing():
    callback = CarryOptimizerState(None)
    callback.on_train_end(None, None, None, optimizer=_trained(torch.optim.AdamW, lr=0.1))
    other = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(4, 4))], lr=0.1)
    carry = CarryOptimizerState(callback.saved)
    carry.on_train_begin(None, None, None, optimizer=other)
    assert not carry.loaded and carry.saved is None and other.state_dict()["state"] == {}

"""Models shared by the integrity tests, loaded once per session: tiny-random for most checks, the
embedded model where the check needs a real one, and two stand-ins for a dishonest node's model
(a LoRA-tuned "v1" copy, a bf16 copy)."""

from __future__ import annotations

import copy

import pytest


@pytest.fixture(scope="module")
def one_torch_thread():
    """Decodes and verification prefills run many times faster on one thread on a shared 2-core
    machine (two threads that wait on each other stall every small op)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny(tiny_model_path):
    from inference.loading import load_model

    return load_model("tiny-random")


@pytest.fixture(scope="session")
def embedded(embedded_model_path):
    from inference.loading import load_model

    return load_model("embedded:smollm2-135m-instruct")


@pytest.fixture(scope="session")
def embedded_v1(embedded):
    from integrity_helpers import make_finetuned_copy

    return make_finetuned_copy(embedded.model, embedded.tokenizer, steps=3)


@pytest.fixture(scope="session")
def embedded_bf16(embedded):
    import torch

    return copy.deepcopy(embedded.model).to(torch.bfloat16)

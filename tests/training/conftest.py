"""Fixtures for the training tests: small conversational datasets and one shared SFT run on tiny-random."""

from __future__ import annotations

import copy

import pytest
from training_rows import dpo_rows, sft_rows


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tiny models gain nothing from two threads, and on a shared 2-core machine two threads per
    process spin against each other (2.5x slower measured). Restored after each module."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def settings():
    from training.config import TrainingSettings

    s = TrainingSettings()
    s.lora.dropout = 0.0        # deterministic losses on a 3 M-parameter model
    s.sft.learning_rate = 1e-2  # tiny-random needs big steps to move in a handful of them
    s.dpo.learning_rate = 1e-2
    s.kto.learning_rate = 1e-2
    return s


@pytest.fixture(scope="session")
def sft_trained(tiny_model_path):
    """tiny-random after 8 SFT steps: (loaded model, TrainResult, held-out loss before)."""
    from datasets import Dataset

    from inference.loading import load_model
    from training.config import TrainingSettings
    from training.eval import heldout_loss
    from training.sft import train_sft

    s = TrainingSettings()
    s.lora.dropout = 0.0
    loaded = load_model("tiny-random")
    heldout = sft_rows(4)
    before = heldout_loss(loaded.model, loaded.tokenizer, heldout, s.eval)
    result = train_sft(loaded.model, loaded.tokenizer, Dataset.from_list(sft_rows()), s, max_steps=8, learning_rate=1e-2)
    return loaded, result, before


@pytest.fixture(scope="session")
def dpo_trained(tiny_model_path):
    """A fresh tiny-random after 6 DPO steps (the test `settings`): (loaded model, TrainResult).
    Tests that train it further take a copy."""
    from datasets import Dataset

    from inference.loading import load_model
    from training.config import TrainingSettings
    from training.dpo import train_dpo

    s = TrainingSettings()
    s.lora.dropout = 0.0
    s.dpo.learning_rate = 1e-2
    loaded = load_model("tiny-random")
    result = train_dpo(loaded.model, loaded.tokenizer, Dataset.from_list(dpo_rows()), s, max_steps=6)
    return loaded, result


@pytest.fixture
def sft_model_copy(sft_trained):
    """A private copy of the SFT-trained PeftModel, for tests that train it further."""
    loaded, result, _ = sft_trained
    return copy.deepcopy(result.model), loaded.tokenizer

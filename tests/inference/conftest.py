"""Fixtures for the inference tests: a tiny-random model and engine in this process, and one
real `swarmloop node serve` subprocess shared by the server tests (started once per session)."""

from __future__ import annotations

import httpx
import pytest

from tests.inference.openai_checks import TEST_LIMITS
from tests.node_process import start_node

@pytest.fixture(autouse=True)
def one_torch_thread():
    """The tiny model runs faster on one thread on this shared 2-core machine; restored after."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_loaded(tiny_model_path):
    from inference.loading import load_model

    return load_model("tiny-random", "float32")


@pytest.fixture(scope="session")
def other_tiny_loaded(tiny_model_path, tmp_path_factory):
    """A second real model for swap tests: tiny-random with perturbed weights, saved as a folder."""
    import torch

    from inference.loading import load_model

    folder = tmp_path_factory.mktemp("other-model") / "tiny-perturbed"
    model = load_model("tiny-random")
    generator = torch.Generator().manual_seed(123)
    with torch.no_grad():
        for param in model.model.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * 0.5)
    model.model.save_pretrained(folder)
    model.tokenizer.save_pretrained(folder)
    return load_model(str(folder))


@pytest.fixture()
def tiny_engine(tiny_loaded):
    from inference.config import LimitsConfig
    from inference.engine import GenerationEngine

    engine = GenerationEngine(tiny_loaded, LimitsConfig(**TEST_LIMITS)).start()
    yield engine
    engine.stop()


class StartupObservations:
    """What the shared node answered while it was still loading (checked by test_health)."""

    def __init__(self) -> None:
        self.health_while_loading: httpx.Response | None = None
        self.chat_while_loading: httpx.Response | None = None


@pytest.fixture(scope="session")
def tiny_node(tiny_model_path):
    observations = StartupObservations()
    node = start_node("tiny-random", limits=TEST_LIMITS, wait_ready=False)
    try:
        node.wait_listening()
        # Loading imports torch and the model in the background, which takes seconds, while the
        # port opens within a fraction of one: these two requests land while it loads.
        observations.health_while_loading = node.get("/health")
        observations.chat_while_loading = node.post(
            "/v1/chat/completions", json={"model": "tiny-random", "messages": [{"role": "user", "content": "hi"}]}
        )
        node.wait_ready()
        node.startup = observations
        yield node
    finally:
        exit_code = node.stop()
    assert exit_code == 0, f"SIGTERM should stop the node cleanly:\n{node.log_text()[-2000:]}"
    assert "node stopped" in node.log_text()

"""Shared fixtures. One pytest process for the whole suite: importing torch + transformers + trl
costs about 3.5 s a process, so unit tests share it; end-to-end tests start real subprocesses."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO_ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def tiny_model_path() -> Path:
    from inference.tiny_random import ensure_tiny_random

    return ensure_tiny_random()


@pytest.fixture(scope="session")
def embedded_model_path() -> Path:
    from inference.embedded import ensure_embedded

    return ensure_embedded()

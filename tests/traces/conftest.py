"""Fixtures for the traces tests: real chitchat conversations, a faker PII corpus, store paths."""

from __future__ import annotations

from pathlib import Path

import pytest

from traces.pii_corpus import generate_pii_corpus
from traces.samples import chitchat_traces


@pytest.fixture(scope="session")
def chitchat() -> list:
    """Every chitchat conversation with two speakers or more, as an (unredacted) trace."""
    return list(chitchat_traces(seed=11))


@pytest.fixture(scope="session")
def pii_corpus() -> list[dict]:
    # A seed the filter was not tuned on, twelve locales.
    return generate_pii_corpus(2500, seed=20261125)


@pytest.fixture()
def db(tmp_path: Path) -> Path:
    return tmp_path / "node.db"


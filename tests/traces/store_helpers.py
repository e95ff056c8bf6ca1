"""Helpers shared by the store tests."""

from __future__ import annotations


def aged_and_fresh(traces: list, aged: int, now: float) -> tuple[list, list]:
    """The first `aged` traces dated 100 days back, the rest within the last five minutes."""
    return ([t.model_copy(update={"created_at": now - 100 * 86400 + i}) for i, t in enumerate(traces[:aged])],
            [t.model_copy(update={"created_at": now - 300 + i}) for i, t in enumerate(traces[aged:])])

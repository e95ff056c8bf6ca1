"""Shared by the inference tests: the test node's limits and the OpenAI error-shape check."""

from __future__ import annotations

# Small limits keep schemathesis and the error tests fast; the caps are what the tests check.
TEST_LIMITS = {
    "max_prompt_tokens": 256,
    "max_tokens_cap": 64,
    "default_max_tokens": 16,
    "max_n": 4,
    "max_batch_size": 8,
    "queue_size": 32,
    "max_body_bytes": 256 * 1024,   # the huge-prompt test (25 kB) still reaches the tokenizer
}


def assert_openai_error(body: dict, code: str | None = None) -> None:
    """{"error": {"message", "type", "param", "code"}} with a non-empty message and type."""
    assert "error" in body, body
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["type"], str) and error["type"]
    if code is not None:
        assert error["code"] == code, error

"""The real node (`swarmloop node serve`, tiny-random) called with the official openai client."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import openai
import pytest

from inference.model_refs import resolve_model_ref
from tests.inference.openai_checks import assert_openai_error

MESSAGES = [{"role": "user", "content": "Say something about the sea."}]


def test_health_was_503_while_loading_then_200(tiny_node):
    health, chat = tiny_node.startup.health_while_loading, tiny_node.startup.chat_while_loading
    assert health.status_code == 503
    assert health.json()["status"] == "loading"
    assert_openai_error({"error": health.json()["error"]}, "model_not_loaded")
    assert chat.status_code == 503
    assert_openai_error(chat.json(), "model_not_loaded")
    ready = tiny_node.get("/health")
    assert ready.status_code == 200
    assert ready.json()["version"] == "v0000"


def test_non_streaming_completion(tiny_node):
    client = tiny_node.client()
    reply = client.chat.completions.create(model="tiny-random", messages=MESSAGES, max_tokens=12, seed=1)
    assert reply.object == "chat.completion"
    assert reply.id.startswith("chatcmpl-")
    assert reply.model == "tiny-random"
    assert reply.system_fingerprint.startswith("swarmloop-v0000-")
    (choice,) = reply.choices
    assert choice.message.role == "assistant"
    assert isinstance(choice.message.content, str) and choice.message.content
    assert choice.finish_reason in ("stop", "length")
    usage = reply.usage
    assert usage.prompt_tokens > 0
    assert 0 < usage.completion_tokens <= 12
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_streaming_matches_non_streaming_for_the_same_seed(tiny_node):
    client = tiny_node.client()
    whole = client.chat.completions.create(model="tiny-random", messages=MESSAGES, max_tokens=16, seed=42)
    stream = client.chat.completions.create(model="tiny-random", messages=MESSAGES, max_tokens=16, seed=42,
                                            stream=True)
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert text == whole.choices[0].message.content
    assert finish == [whole.choices[0].finish_reason]
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 1  # token by token
    assert all(c.usage is None for c in chunks)  # no usage unless asked for


def test_raw_sse_ends_with_done(tiny_node):
    body = {"model": "tiny-random", "messages": MESSAGES, "max_tokens": 4, "stream": True}
    with httpx.stream("POST", tiny_node.base_url + "/v1/chat/completions", json=body, timeout=60) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines)
    assert lines[-1] == "data: [DONE]"
    for line in lines[:-1]:
        assert json.loads(line[len("data: "):])["object"] == "chat.completion.chunk"


def test_stream_options_include_usage(tiny_node):
    client = tiny_node.client()
    chunks = list(client.chat.completions.create(model="tiny-random", messages=MESSAGES, max_tokens=7, seed=5,
                                                 stream=True, stream_options={"include_usage": True}))
    last = chunks[-1]
    assert last.choices == []
    assert last.usage.completion_tokens > 0
    whole = client.chat.completions.create(model="tiny-random", messages=MESSAGES, max_tokens=7, seed=5)
    assert last.usage.model_dump() == whole.usage.model_dump()
    assert all(c.usage is None for c in chunks[:-1])


def test_n_choices_non_stream_and_stream(tiny_node):
    client = tiny_node.client()
    reply = client.chat.completions.create(model="tiny-random", messages=MESSAGES, max_tokens=8, n=2, seed=3)
    assert [c.index for c in reply.choices] == [0, 1]
    assert reply.choices[0].message.content != reply.choices[1].message.content
    assert 2 <= reply.usage.completion_tokens <= 16
    texts = {0: "", 1: ""}
    for chunk in client.chat.completions.create(model="tiny-random", messages=MESSAGES, max_tokens=8, n=2,
                                                seed=3, stream=True):
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
    assert [texts[0], texts[1]] == [c.message.content for c in reply.choices]


def test_models_list_reports_version_and_sha256(tiny_node):
    client = tiny_node.client()
    (card,) = client.models.list().data
    resolved = resolve_model_ref("tiny-random")
    assert card.id == "tiny-random"
    assert card.owned_by == "swarmloop"
    assert card.model_extra["version"] == resolved.version
    assert card.model_extra["weights_sha256"] == resolved.weights_sha256
    assert client.models.retrieve("v0000").id == "tiny-random"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4o")


def test_model_aliases_are_accepted(tiny_node):
    client = tiny_node.client()
    reply = client.chat.completions.create(model="v0000", messages=MESSAGES, max_tokens=2)
    assert reply.model == "tiny-random"


def test_seed_reproducibility(tiny_node):
    client = tiny_node.client()
    first = client.chat.completions.create(model="tiny-random", messages=MESSAGES, max_tokens=16, seed=1234)
    again = client.chat.completions.create(model="tiny-random", messages=MESSAGES, max_tokens=16, seed=1234)
    other = client.chat.completions.create(model="tiny-random", messages=MESSAGES, max_tokens=16, seed=4321)
    assert first.choices[0].message.content == again.choices[0].message.content
    assert first.choices[0].message.content != other.choices[0].message.content


def test_stop_strings(tiny_node):
    client = tiny_node.client()
    free = client.chat.completions.create(model="tiny-random", messages=MESSAGES, max_tokens=40, seed=77)
    text = free.choices[0].message.content
    stop = text[len(text) // 2: len(text) // 2 + 3]
    cut = client.chat.completions.create(model="tiny-random", messages=MESSAGES, max_tokens=40, seed=77,
                                         stop=[stop])
    assert cut.choices[0].message.content == text[: text.find(stop)]
    assert cut.choices[0].finish_reason == "stop"
    streamed = "".join(
        c.choices[0].delta.content or ""
        for c in client.chat.completions.create(model="tiny-random", messages=MESSAGES, max_tokens=40, seed=77,
                                                stop=stop, stream=True) if c.choices)
    assert streamed == cut.choices[0].message.content  # a partial stop string is never streamed


def _batch_histogram(node) -> tuple[float, float]:
    return node.metric("swarmloop_batch_size_count"), node.metric("swarmloop_batch_size_bucket", 'le="1.0"')


def test_concurrent_requests_are_batched(tiny_node):
    steps_before, single_before = _batch_histogram(tiny_node)

    async def run() -> list:
        client = tiny_node.async_client()
        calls = [client.chat.completions.create(model="tiny-random", messages=[{"role": "user", "content": f"q{k}"}],
                                                max_tokens=32, seed=k) for k in range(6)]
        return await asyncio.gather(*calls)

    replies = asyncio.run(run())
    assert all(r.usage.completion_tokens > 0 for r in replies)
    steps_after, single_after = _batch_histogram(tiny_node)
    multi_row_steps = (steps_after - steps_before) - (single_after - single_before)
    assert multi_row_steps > 0  # some decode steps carried more than one request


def test_client_disconnect_mid_stream_frees_the_slot(tiny_node):
    cancelled_before = tiny_node.metric("swarmloop_cancelled_requests_total")
    tokens_before = tiny_node.metric("swarmloop_completion_tokens_total")
    body = {"model": "tiny-random", "messages": MESSAGES, "max_tokens": 64, "n": 4, "stream": True}
    with httpx.stream("POST", tiny_node.base_url + "/v1/chat/completions", json=body, timeout=60) as response:
        lines = response.iter_lines()
        seen = [next(lines) for _ in range(8)]
    assert any(line.startswith("data: ") for line in seen)
    deadline = time.monotonic() + 60
    while tiny_node.metric("swarmloop_cancelled_requests_total") == cancelled_before:
        assert time.monotonic() < deadline, "the disconnect was never noticed"
        time.sleep(0.05)
    assert tiny_node.metric("swarmloop_active_rows") == 0
    assert tiny_node.metric("swarmloop_completion_tokens_total") - tokens_before < 4 * 64  # stopped early
    reply = tiny_node.client().chat.completions.create(model="tiny-random", messages=MESSAGES, max_tokens=3)
    assert reply.usage.completion_tokens > 0  # and the node keeps serving


def test_metrics_exposition(tiny_node):
    tiny_node.client().chat.completions.create(model="tiny-random", messages=MESSAGES, max_tokens=3)
    text = tiny_node.metrics()
    assert tiny_node.metric("swarmloop_requests_total", 'status="200"') > 0
    assert tiny_node.metric("swarmloop_prompt_tokens_total") > 0
    assert tiny_node.metric("swarmloop_completion_tokens_total") > 0
    assert tiny_node.metric("swarmloop_request_latency_seconds_count") > 0
    assert tiny_node.metric("swarmloop_time_to_first_token_seconds_count") > 0
    assert tiny_node.metric("swarmloop_queue_depth") == 0
    assert tiny_node.metric("swarmloop_model_loaded") == 1
    sha = resolve_model_ref("tiny-random").weights_sha256
    assert f'swarmloop_model_info{{ref="tiny-random",version="v0000",weights_sha256="{sha}"}} 1.0' in text


def test_consent_off_writes_no_prompt_or_reply_anywhere(tiny_node):
    secret = "zebra-violet-quartz-4417"
    reply = tiny_node.client().chat.completions.create(
        model="tiny-random", messages=[{"role": "user", "content": f"my code word is {secret}"}], max_tokens=12, seed=9)
    log = tiny_node.log_text()
    assert secret not in log
    assert reply.choices[0].message.content.strip() not in log
    assert sorted(p.name for p in tiny_node.workdir.iterdir()) == ["node.log", "node.toml"]

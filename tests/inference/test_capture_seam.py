"""The server's seams, on the real app served by real uvicorn in this process (tiny-random):
the capture hook, the hot-swap seam, and 429 when the queue is full."""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager

import httpx
import openai
import pytest
import uvicorn
from fastapi import APIRouter

from inference.config import LimitsConfig, NodeConfig
from inference.hooks import CaptureHook, CompletionRecord
from inference.server import create_app
from tests.inference.openai_checks import assert_openai_error
from tests.node_process import free_port


class CollectingHook:
    """A CaptureHook that keeps records in memory and brings one route of its own."""

    def __init__(self) -> None:
        self.records: list[CompletionRecord] = []
        self.closed = False
        self.got_record = threading.Event()

    def on_completion(self, record: CompletionRecord) -> None:
        self.records.append(record)
        self.got_record.set()

    def routes(self) -> list[APIRouter]:
        router = APIRouter()

        @router.get("/v1/collected")
        def collected() -> dict:
            return {"count": len(self.records)}

        return [router]

    def close(self) -> None:
        self.closed = True


@contextmanager
def serve(app):
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(base + "/health", timeout=5).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "in-process server never got ready"
        time.sleep(0.05)
    try:
        yield base
    finally:
        server.should_exit = True
        thread.join(30)


def client(base: str, **kwargs) -> openai.OpenAI:
    return openai.OpenAI(base_url=base + "/v1", api_key="sk-test-secret", max_retries=0, timeout=120, **kwargs)


def test_hook_gets_a_record_per_completion_and_no_credentials(tiny_loaded):
    hook = CollectingHook()
    assert isinstance(hook, CaptureHook)
    config = NodeConfig(model={"ref": "tiny-random", "dtype": "float32"}, limits=LimitsConfig(max_tokens_cap=64))
    with serve(create_app(config, capture_hook=hook, loaded=tiny_loaded)) as base:
        api = client(base, default_headers={"X-Client-Tag": "tests"})
        reply = api.chat.completions.create(model="tiny-random", messages=[{"role": "user", "content": "hi"}],
                                            max_tokens=6, n=2, seed=1, metadata={"topic": "sea"})
        streamed = "".join(c.choices[0].delta.content or "" for c in api.chat.completions.create(
            model="tiny-random", messages=[{"role": "user", "content": "stream"}], max_tokens=5, seed=2, stream=True)
            if c.choices)
        deadline = time.monotonic() + 30
        while len(hook.records) < 2:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert httpx.get(base + "/v1/collected").json() == {"count": 2}  # the hook's own route is mounted
    assert hook.closed  # closed on shutdown
    first, second = hook.records
    assert first.completion_id == reply.id
    assert [c.text for c in first.choices] == [c.message.content for c in reply.choices]
    assert first.prompt_tokens == reply.usage.prompt_tokens
    assert first.completion_tokens == reply.usage.completion_tokens
    assert first.request["metadata"] == {"topic": "sea"}
    assert first.request["messages"][0]["content"] == "hi"
    assert first.model_ref == "tiny-random" and first.model_version == "v0000"
    assert first.weights_sha256 == tiny_loaded.identity.weights_sha256
    assert first.headers["x-client-tag"] == "tests"
    assert "authorization" not in first.headers
    assert "sk-test-secret" not in first.model_dump_json()
    assert first.streamed is False and second.streamed is True
    assert second.choices[0].text == streamed
    assert first.latency_s >= first.time_to_first_token_s > 0


def test_swap_through_the_node_state(tiny_loaded, other_tiny_loaded):
    config = NodeConfig(model={"ref": "tiny-random", "dtype": "float32"})
    app = create_app(config, loaded=tiny_loaded)
    with serve(app) as base:
        api = client(base)
        before = api.chat.completions.create(model="tiny-random", messages=[{"role": "user", "content": "a"}],
                                             max_tokens=4, temperature=0)
        assert app.state.node.swap(other_tiny_loaded).result(60) == other_tiny_loaded.identity
        (card,) = api.models.list().data
        assert card.model_extra["weights_sha256"] == other_tiny_loaded.identity.weights_sha256
        after = api.chat.completions.create(model="tiny-random",  # the configured ref stays valid
                                            messages=[{"role": "user", "content": "a"}], max_tokens=4, temperature=0)
        assert after.model == other_tiny_loaded.identity.ref
        assert after.system_fingerprint != before.system_fingerprint
        metrics = httpx.get(base + "/metrics").text
        assert f'weights_sha256="{other_tiny_loaded.identity.weights_sha256}"' in metrics


def test_full_queue_is_a_429_in_the_openai_shape(tiny_loaded):
    limits = LimitsConfig(max_batch_size=1, max_n=1, queue_size=1, max_tokens_cap=2000, default_max_tokens=16)
    config = NodeConfig(model={"ref": "tiny-random", "dtype": "float32"}, limits=limits)
    with serve(create_app(config, loaded=tiny_loaded)) as base:
        # greedy: a sampled end-of-sequence token could end the holding row before the second
        # request queues (seen once in CI-like load); this prompt greedily runs to max_tokens
        body = {"model": "tiny-random", "messages": [{"role": "user", "content": "go on"}], "max_tokens": 2000,
                "stream": True, "temperature": 0}
        with httpx.stream("POST", base + "/v1/chat/completions", json=body, timeout=120) as holder:
            lines = holder.iter_lines()
            next(line for line in lines if '"content":"' in line and '"content":""' not in line)  # holds the row
            waiting_result: dict = {}
            waiter = threading.Thread(target=lambda: waiting_result.update(response=httpx.post(
                base + "/v1/chat/completions", json={**body, "stream": False, "max_tokens": 2}, timeout=120)))
            waiter.start()
            deadline = time.monotonic() + 30
            while "swarmloop_queue_depth 1.0" not in httpx.get(base + "/metrics").text:
                assert time.monotonic() < deadline, "the second request never queued"
                time.sleep(0.02)
            refused = httpx.post(base + "/v1/chat/completions", json={**body, "stream": False, "max_tokens": 2})
            assert refused.status_code == 429
            assert_openai_error(refused.json(), "queue_full")
            with pytest.raises(openai.RateLimitError):
                client(base).chat.completions.create(model="tiny-random", messages=[{"role": "user", "content": "x"}])
        waiter.join(60)  # closing the stream cancelled the long row; the queued one then ran
        assert waiting_result["response"].status_code == 200


def test_non_stream_client_that_leaves_frees_its_rows_and_is_recorded_cancelled(tiny_loaded):
    hook = CollectingHook()
    limits = LimitsConfig(max_tokens_cap=1900)
    app = create_app(NodeConfig(model={"ref": "tiny-random", "dtype": "float32"}, limits=limits),
                     capture_hook=hook, loaded=tiny_loaded)
    with serve(app) as base:
        # greedy: a sampled end-of-sequence token could end the reply before the client leaves
        body = {"model": "tiny-random", "messages": [{"role": "user", "content": "go on"}], "max_tokens": 1900,
                "temperature": 0}
        with pytest.raises(httpx.ReadTimeout):  # the client gives up after a second and hangs up
            httpx.post(base + "/v1/chat/completions", json=body, timeout=httpx.Timeout(60, read=1.0))
        assert hook.got_record.wait(60)
        (record,) = hook.records
        assert record.choices[0].finish_reason == "cancelled"
        assert record.completion_tokens < 1900
        assert app.state.node.engine.active_rows == 0
        assert 'swarmloop_requests_total{status="499"} 1.0' in httpx.get(base + "/metrics").text

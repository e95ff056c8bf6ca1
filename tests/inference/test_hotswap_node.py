"""Hot-swap redeploy end to end: real `swarmloop node serve` subprocesses (tiny-random) following a
real LocalRegistry (or a loopback fake of the Hub), called with the official openai client."""

from __future__ import annotations

import threading
import time

import pytest

from inference.hotswap_client import CheckpointRefusedByNode, reload_node, wait_until_serving
from tests.inference.hotswap_checkpoints import flip_one_byte, publish
from tests.inference.openai_checks import assert_openai_error
from tests.node_process import free_port, start_node
from training.registry import LocalRegistry

TOKEN = "reload-secret"


def wait_until(condition, what: str, node, timeout: float = 90.0):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout:g} s:\n{node.log_text()[-3000:]}")
        time.sleep(0.1)


def served_version(node) -> str:
    return node.get("/v1/models").json()["data"][0]["version"]


def status(node) -> dict:
    return node.get("/admin/status").json()


def stream_into(client, model: str, prompt: str, max_tokens: int, record: dict, started: threading.Event) -> None:
    try:
        models, text = set(), []
        stream = client.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}],
                                                max_tokens=max_tokens, temperature=0, stream=True)
        for chunk in stream:
            models.add(chunk.model)
            for choice in chunk.choices:
                if choice.delta.content:
                    text.append(choice.delta.content)
                    started.set()
                if choice.finish_reason:
                    record["finish_reason"] = choice.finish_reason
        record.update(models=models, text="".join(text))
    except Exception as exc:  # recorded, asserted below: a stream must never fail during a swap
        record["error"] = repr(exc)
    finally:
        started.set()


def run_streams(client, model: str, prompts: list[str], max_tokens: int):
    records = [{} for _ in prompts]
    started = [threading.Event() for _ in prompts]
    threads = [threading.Thread(target=stream_into, args=(client, model, p, max_tokens, r, s), daemon=True)
               for p, r, s in zip(prompts, records, started)]
    for thread in threads:
        thread.start()
    return records, started, threads


def test_node_follows_a_registry_through_good_bad_and_reloaded_versions(tiny_model_path, tmp_path):
    registry = tmp_path / "registry"
    publish(registry, tmp_path, tiny_model_path, "v1", seed=1)
    config = {"model": {"ref": "tiny-random"},  # the fallback; without --model the node starts on v1
              "redeploy": {"registry": f"registry:{registry}", "poll_interval_s": 0.2,
                           "admin_token_env": "TEST_SWARMLOOP_ADMIN"},
              "limits": {"max_tokens_cap": 1500, "max_batch_size": 8}}
    refs = {v: f"registry:{registry.resolve()}@{v}" for v in ("v0001", "v0002", "v0005")}
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with start_node(None, config=config, env={"TEST_SWARMLOOP_ADMIN": TOKEN}) as node:
        client = node.client(timeout=300)
        assert served_version(node) == "v0001"
        first = status(node)
        assert first["last_swap"]["trigger"] == "startup" and first["registry"] == f"registry:{registry.resolve()}"
        assert first["admin_reload"] is True
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
            refused = node.post("/admin/reload", json={}, headers=headers)
            assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer"
            assert_openai_error(refused.json(), "invalid_api_key")

        # hot swap under load: streams decoding on v1 when v2 is promoted; the poller swaps
        publish(registry, tmp_path, tiny_model_path, "v2", seed=2, promote=False)
        early, started, threads = run_streams(client, node.model, [f"story {i}" for i in range(4)], 500)
        for event in started:
            assert event.wait(120)  # every early stream is decoding on v1
        LocalRegistry(registry).promote("v2")
        assert wait_until_serving(node.base_url, "v0002", timeout_s=90)["last_swap"]["trigger"] == "poll"
        late, _, late_threads = run_streams(client, node.model, [f"late {i}" for i in range(3)], 16)
        for thread in threads + late_threads:
            thread.join(300)
        for record in early + late:
            assert "error" not in record, record
            assert record["finish_reason"] in ("length", "stop") and record["text"]
        assert all(record["models"] == {refs["v0001"]} for record in early)  # finished on the old weights
        assert all(record["models"] == {refs["v0002"]} for record in late)
        swap = status(node)["last_swap"]
        assert (swap["from_version"], swap["to_version"]) == ("v0001", "v0002")
        assert swap["rows_in_flight"] >= 1 and swap["pause_s"] >= 0  # swapped while streams decoded
        assert 'version="v0002"' in node.metrics()
        assert node.metric("swarmloop_swap_pause_seconds_count") == 1
        assert node.metric("swarmloop_redeploys_total", 'outcome="swapped"') == 1

        # v3 is corrupted after publishing (one byte of the weights) and then promoted: refused
        publish(registry, tmp_path, tiny_model_path, "v3", seed=3, promote=False)
        flip_one_byte(registry / "v0003" / "model.safetensors")
        LocalRegistry(registry).promote("v3")
        with pytest.raises(CheckpointRefusedByNode) as refused:
            wait_until_serving(node.base_url, "v0003", timeout_s=90)
        assert refused.value.stage == "verify"
        assert refused.value.reason.startswith("model.safetensors: sha256 mismatch")
        assert status(node)["last_refusal"]["version"] == "v0003" and served_version(node) == "v0002"
        reply = client.chat.completions.create(model=node.model, messages=[{"role": "user", "content": "still?"}],
                                               max_tokens=3)
        assert reply.model == refs["v0002"]

        # v4 verifies but its weights are NaN: the health generation refuses it, and polling does
        # not retry it while `latest` stays on v4
        publish(registry, tmp_path, tiny_model_path, "v4", seed=4, nan=True)
        with pytest.raises(CheckpointRefusedByNode) as refused:
            wait_until_serving(node.base_url, "v0004", timeout_s=90)
        assert refused.value.stage == "health" and "non-finite logits" in refused.value.reason
        polled = status(node)["last_poll_at"]
        for _ in range(3):  # three more polls see v4 as latest
            polled = wait_until(lambda: (s := status(node)["last_poll_at"]) != polled and s, "another poll", node)
        after = status(node)
        assert after["refusals"] == 2 and after["serving"]["version"] == "v0002"
        assert node.log_text().count("refused v0004") == 1
        assert node.metric("swarmloop_redeploys_total", 'outcome="refused"') == 2
        # an explicit reload does try again (and is refused again)
        again = node.post("/admin/reload", json={"version": "v4"}, headers=auth)
        assert again.status_code == 422
        assert_openai_error(again.json(), "checkpoint_refused")
        assert node.log_text().count("refused v0004") == 2

        # a good v5, published without moving `latest`, is taken on request; polling leaves it
        publish(registry, tmp_path, tiny_model_path, "v5", seed=5, promote=False)
        assert reload_node(node.base_url, TOKEN, "v5")["serving"]["ref"] == refs["v0005"]
        unchanged = node.post("/admin/reload", json={"version": "v0005"}, headers=auth)
        assert unchanged.status_code == 200 and unchanged.json()["status"] == "unchanged"
        polled = status(node)["last_poll_at"]
        wait_until(lambda: status(node)["last_poll_at"] != polled, "another poll", node)
        final = status(node)
        assert final["serving"]["version"] == "v0005" and final["swaps"] == 2
        assert "still?" not in node.log_text()  # no prompt text in the node's log


def test_node_follows_a_hub_repo_and_keeps_serving_when_the_hub_is_gone(tiny_model_path, tmp_path, monkeypatch):
    import huggingface_hub.constants

    from tests.inference.hotswap_checkpoints import make_checkpoint
    from tests.training.fake_hub import serve_fake_hub
    from training.hub import HubPublisher

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)  # to publish from this process
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_DISABLE_XET", True)  # the fake speaks plain LFS
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    env = {"HF_ENDPOINT": endpoint, "HF_HUB_OFFLINE": "0", "HF_TOKEN": TOKEN, "HF_HUB_DISABLE_XET": "1",
           "HF_HOME": str(tmp_path / "hf-home")}
    config = {"redeploy": {"registry": "hf:swarm/model", "poll_interval_s": 0.3}}
    with start_node("tiny-random", config=config, env=env) as node:
        with serve_fake_hub(TOKEN, port):  # the training engineer's loopback fake of the Hub endpoints
            error = wait_until(lambda: "answered" in (e := status(node)["last_poll_error"] or "") and e,
                               "a poll answered with a 404 (no repo yet)", node)
            assert error.startswith("hf:swarm/model: the Hub answered 404")
            assert served_version(node) == "v0000"
            HubPublisher("swarm/model", token=TOKEN, endpoint=endpoint).publish(
                make_checkpoint(tiny_model_path, tmp_path / "v1", "v1", seed=1))
            swapped = wait_until_serving(node.base_url, "v0001", timeout_s=90)
            assert swapped["serving"]["ref"] == "hf:swarm/model@v0001" and swapped["last_poll_error"] is None
        # the Hub is gone: polls fail, the node says why and keeps serving v1
        gone = wait_until(lambda: status(node)["last_poll_error"], "a failed poll after the Hub went away", node)
        assert gone.startswith("hf:swarm/model: unreachable")
        reply = node.client().chat.completions.create(model=node.model, max_tokens=2,
                                                      messages=[{"role": "user", "content": "there?"}])
        assert reply.model == "hf:swarm/model@v0001"
        assert served_version(node) == "v0001"

"""Capture and feedback through the real node server, called with the official openai client."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from tests.node_process import start_node
from traces.export import to_dpo_dataset, to_kto_dataset
from traces.store import TraceStore

SECRET_PROMPT = "my address is zelda.quux@example.org, the passphrase is 7d1e-banana"


def stored(db: Path, trace_id: str, timeout: float = 30):
    """The trace once the node's background writer has committed it (None after `timeout`)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if db.exists():
            with TraceStore(db, readonly=True) as store:
                trace = store.get_trace(trace_id)
            if trace is not None:
                return trace
        time.sleep(0.1)
    return None


@pytest.fixture(scope="module")
def nodes(tmp_path_factory):
    """Two real nodes started side by side (start-up is most of this module's time): one with
    consent local and a store, one with consent off and a store path it must never touch."""
    local_dir, off_dir = tmp_path_factory.mktemp("capture-local"), tmp_path_factory.mktemp("capture-off")
    local = start_node("tiny-random", store=local_dir / "node.db", consent="local", workdir=local_dir / "w",
                       limits={"max_tokens_cap": 16}, wait_ready=False)
    off = start_node("tiny-random", store=off_dir / "node.db", consent="off", workdir=off_dir / "w",
                     limits={"max_tokens_cap": 8}, wait_ready=False)
    with local, off:
        local.wait_ready()
        off.wait_ready()
        local.db, off.db = local_dir / "node.db", off_dir / "node.db"
        yield {"local": local, "off": off}


@pytest.fixture(scope="module")
def node(nodes):
    return nodes["local"]


def ask(node, content: str, **kwargs):
    return node.client().chat.completions.create(
        model=node.model, messages=[{"role": "user", "content": content}], max_tokens=6, **kwargs)


def test_a_trace_per_completion_redacted(node):
    reply = ask(node, SECRET_PROMPT, n=2, temperature=1.0, seed=3, metadata={"task_id": "t-1"})
    trace = stored(node.db, reply.id)
    assert trace is not None
    assert trace.consent == "local" and trace.model.ref == "tiny-random" and trace.model.version == "v0000"
    assert [c.text for c in trace.choices] == [c.message.content for c in reply.choices]
    assert trace.messages[0].content == "my address is <EMAIL_1>, the passphrase is 7d1e-banana"
    assert trace.redaction.counts == {"EMAIL": 1} and trace.metadata == {"task_id": "t-1"}
    assert trace.sampling["n"] == 2 and trace.usage.completion_tokens == reply.usage.completion_tokens
    assert "zelda.quux" not in node.log_text()


def test_streamed_completions_are_captured(node):
    stream = node.client().chat.completions.create(
        model=node.model, messages=[{"role": "user", "content": "stream please"}], max_tokens=5, stream=True)
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    trace = stored(node.db, chunks[0].id)
    assert trace is not None and trace.choices[0].text == text


def test_opt_out_by_header_or_metadata_stores_nothing(node):
    by_header = ask(node, "do not keep this one 41aa", extra_headers={"X-Swarmloop-Trace": "off"})
    by_metadata = ask(node, "nor this one 41bb", metadata={"swarmloop_trace": "off"})
    kept = ask(node, "this one may be kept 41cc")
    assert stored(node.db, kept.id) is not None          # committed after the two opted-out ones
    with TraceStore(node.db, readonly=True) as store:
        assert store.get_trace(by_header.id) is None and store.get_trace(by_metadata.id) is None
        texts = [m.content for t in store.iter_traces() for m in t.messages]
    assert not any("41aa" in t or "41bb" in t for t in texts)
    for opted_out in (by_header, by_metadata):
        response = node.post("/v1/feedback", json={"completion_id": opted_out.id, "thumbs": 1})
        assert response.status_code == 404


def test_feedback_errors_have_the_openai_shape(node):
    response = node.post("/v1/feedback", json={"completion_id": "chatcmpl-does-not-exist", "thumbs": 1})
    assert response.status_code == 404
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["param"] == "completion_id"
    reply = ask(node, "hello there")
    for body, param in [({"completion_id": reply.id, "thumbs": 5}, "thumbs"),
                        ({"completion_id": reply.id}, None),
                        ({"completion_id": reply.id, "thumbs": 1, "mood": "great"}, "mood"),
                        ({"completion_id": reply.id, "choice": 1}, "choice"),          # n = 1
                        ({"completion_id": reply.id, "thumbs": 1, "choice_index": 3}, "choice_index")]:
        response = node.post("/v1/feedback", json=body)
        assert response.status_code == 400, (body, response.text)
        assert response.json()["error"]["param"] == param
    response = node.post("/v1/feedback", content=b"not json", headers={"content-type": "application/json"})
    assert response.status_code == 400 and response.json()["error"]["type"] == "invalid_request_error"


def test_thumbs_choice_and_correction_become_pairs(node):
    reply = ask(node, "Pick the best of three.", n=3, temperature=1.0, seed=11)
    # sent at once: the trace may still be queued in the writer, which must not cause a false 404
    choice = node.post("/v1/feedback", json={"completion_id": reply.id, "choice": 2})
    assert choice.status_code == 200, choice.text
    assert choice.json()["object"] == "feedback" and choice.json()["pairs"] >= 1
    correction = node.post("/v1/feedback", json={"completion_id": reply.id, "choice_index": 0,
                                                 "correction": "A fixed reply, mail me at fix@example.com"})
    assert correction.status_code == 200 and correction.json()["pairs"] == 1
    thumbs = node.post("/v1/feedback", json={"completion_id": reply.id, "thumbs": -1, "choice_index": 1,
                                             "comment": "meh"})
    assert thumbs.status_code == 200 and thumbs.json()["kto_rows"] == 1

    dpo = to_dpo_dataset(node.db, consent="local")          # a consent-local node: on-node use
    mine = [row for row in dpo if row["trace_ids"] == [reply.id]]
    texts = [c.message.content for c in reply.choices]
    by_origin = {row["origin"]: row for row in mine}
    assert by_origin["correction"]["chosen"] == [{"role": "assistant", "content": "A fixed reply, mail me at <EMAIL_1>"}]
    assert by_origin["correction"]["rejected"][0]["content"] == texts[0]
    assert all(row["chosen"][0]["content"] == texts[2] for row in mine if row["origin"] == "choice")
    assert by_origin["choice"]["prompt"] == [{"role": "user", "content": "Pick the best of three."}]
    kto = [row for row in to_kto_dataset(node.db, consent="local") if row["trace_ids"] == [reply.id]]
    assert [(row["completion"][0]["content"], row["label"]) for row in kto] == [(texts[1], False)]


def test_consent_off_writes_nothing(nodes):
    node = nodes["off"]
    reply = ask(node, SECRET_PROMPT)
    assert reply.choices[0].message.content is not None
    response = httpx.post(f"{node.base_url}/v1/feedback", json={"completion_id": reply.id, "thumbs": 1})
    assert response.status_code == 404
    error = response.json()["error"]                      # the OpenAI error shape, saying why
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == "completion_id" and error["code"] == "not_found" and "consent off" in error["message"]
    bad = httpx.post(f"{node.base_url}/v1/feedback", json={"completion_id": reply.id, "thumbs": 7})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "thumbs"
    assert node.stop() == 0
    assert not node.db.exists()
    assert not any(p.name.startswith("node.db") for p in node.db.parent.iterdir())
    log = node.log_text()
    assert "zelda" not in log and "passphrase" not in log


def test_nothing_is_lost_at_shutdown(node):
    """Last in this module: stops the shared node; everything queued is committed on the way out."""
    ids = [ask(node, f"question number {i}").id for i in range(12)]
    assert node.stop() == 0
    with TraceStore(node.db, readonly=True) as store:
        assert all(store.get_trace(i) is not None for i in ids)
        assert store.node_consent == "local" and store.get_meta("node_id")
    assert "question number" not in node.log_text()

"""The background writer: batching, flush on close, feedback ordering, a full queue, logs."""

from __future__ import annotations

import logging
import threading
import time

import pytest

from traces.config import StoreSettings
from traces.schemas import Choice, Feedback, Message
from traces.store import FeedbackError, TraceNotFound, TraceStore
from traces.writer import TraceWriter


def test_close_flushes_everything_queued(db, chitchat):
    committed: list[str] = []
    writer = TraceWriter(db, on_commit=committed.extend)
    for trace in chitchat[:300]:
        assert writer.submit(trace)
    writer.close()                                   # returns only once all is committed
    with TraceStore(db, readonly=True) as store:
        assert len(store) + store.stats()["duplicates_seen"] == 300
    assert sorted(committed) == sorted(t.id for t in chitchat[:300])


def test_batches_grow_under_load(db, chitchat):
    sizes: list[int] = []
    writer = TraceWriter(db, on_commit=lambda ids: sizes.append(len(ids)))
    for trace in chitchat[:1000]:
        writer.submit(trace)
    writer.flush()
    writer.close()
    assert sum(sizes) == 1000 and max(sizes) > 50 and len(sizes) < 200


def test_feedback_right_after_submit_waits_for_its_trace(db, chitchat):
    trace = chitchat[0].model_copy(update={"choices": [Choice(index=0, text="a"), Choice(index=1, text="b")]})
    writer = TraceWriter(db)
    writer.submit(trace)
    outcome = writer.submit_feedback(Feedback(id="f1", trace_id=trace.id, choice=1)).result(30)
    assert [p.chosen.content for p in outcome.pairs] == ["b"]
    with pytest.raises(TraceNotFound):
        writer.submit_feedback(Feedback(id="f2", trace_id="chatcmpl-never", thumbs=1)).result(30)
    with pytest.raises(FeedbackError):
        writer.submit_feedback(Feedback(id="f3", trace_id=trace.id, choice=5)).result(30)
    writer.close()


def test_wait_for_a_completion_that_arrives_later(db, chitchat):
    writer = TraceWriter(db)
    late = chitchat[1]
    threading.Timer(0.3, writer.submit, args=(late,)).start()
    assert not writer.is_known(late.id)
    assert writer.wait_for(late.id, timeout=30)
    assert writer.submit_feedback(Feedback(id="f", trace_id=late.id, thumbs=1)).result(30).kto[0].label
    writer.close()


def test_a_full_queue_drops_instead_of_blocking(db, chitchat):
    gate = threading.Event()

    def slow(item):
        gate.wait(30)
        return item

    writer = TraceWriter(db, settings=StoreSettings(queue_max=5, batch_max=1), convert=slow)
    started = time.monotonic()
    results = [writer.submit(t) for t in chitchat[:40]]
    assert time.monotonic() - started < 2                 # never blocked on the stuck writer
    assert results.count(False) >= 30 and writer.counts["dropped"] == results.count(False)
    gate.set()
    writer.close()
    with TraceStore(db, readonly=True) as store:
        assert len(store) == results.count(True)


def test_errors_are_logged_without_content(db, chitchat, caplog):
    secret_text = "my very private prompt 7c1f"

    def broken(item):
        raise ValueError(f"cannot convert {secret_text}")

    writer = TraceWriter(db, convert=broken)
    with caplog.at_level(logging.DEBUG, logger="swarmloop.traces"):
        writer.submit(chitchat[0].model_copy(update={"messages": [Message(role="user", content=secret_text)]}))
        writer.flush()
        writer.close()
    assert writer.counts["failed"] == 1
    assert "ValueError" in caplog.text and secret_text not in caplog.text


def test_the_idle_writer_compacts_the_store(db, chitchat):
    settings = StoreSettings(dictionary_min_records=100, compaction_idle_s=0.2, compaction_step=64, page_size=4096)
    writer = TraceWriter(db, settings=settings)
    for trace in chitchat[:400]:
        writer.submit(trace)
    writer.flush()
    writer.store.checkpoint()
    before = db.stat().st_size
    deadline = time.monotonic() + 60
    while writer.store.pending_compaction() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert writer.store.pending_compaction() == 0
    assert writer.submit(chitchat[400])                  # writing resumes at once
    writer.close()
    with TraceStore(db, readonly=True) as store:
        assert len(store) >= 395 and store.get_trace(chitchat[400].id) is not None
        assert db.stat().st_size < before
        assert store.integrity_check() == "ok"

"""The node store on real SQLite files: round trips, dedup, dictionaries, compaction, retention."""

from __future__ import annotations

import sqlite3
import time

import pytest

from traces.config import StoreSettings
from traces.ingest import redact_traces
from traces.redaction import PrivacyFilter
from traces.schemas import Choice, Feedback, Message
from traces.store import StoreError, TraceStore

from tests.traces.store_helpers import aged_and_fresh

SMALL = StoreSettings(dictionary_min_records=200, dictionary_size=16_384, page_size=4096)
HOT_ONLY = SMALL.model_copy(update={"seal_block_records": 0})     # compaction never seals: rows stay one per record


@pytest.fixture(scope="module")
def privacy() -> PrivacyFilter:
    return PrivacyFilter()


def test_round_trip_keeps_every_field(db, chitchat, privacy):
    traces = redact_traces(privacy, chitchat[:50])
    traces[0] = traces[0].model_copy(update={
        "choices": [Choice(index=0, text="one", finish_reason="length", completion_tokens=3),
                    Choice(index=1, text="two")],
        "metadata": {"task_id": "t1", "answer": "42"}, "proofs": [{"kind": "toploc", "data": "AAEC"}],
        "signature": "c2ln", "signer": "ed25519:k", "ttft_s": None,
        "messages": [Message(role="system", content="be nice"), *traces[0].messages]})
    with TraceStore(db) as store:
        assert store.add_traces(traces) == [True] * 50
        for trace in traces:
            assert store.get_trace(trace.id) == trace
        assert store.get_trace("chatcmpl-unknown") is None
        assert len(store) == 50


def test_wal_durable_sync_and_indexes(db, chitchat, privacy):
    with TraceStore(db) as store:
        store.add_traces(redact_traces(privacy, chitchat[:20]))
        con = store._db
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert con.execute("PRAGMA synchronous").fetchone()[0] == 2        # FULL
        plan = " ".join(r[-1] for r in con.execute(
            "EXPLAIN QUERY PLAN SELECT seq FROM traces WHERE source IN (1) AND created >= 5"))
        assert "traces_source_time" in plan                               # by model version and time
        plan = " ".join(r[-1] for r in con.execute("EXPLAIN QUERY PLAN SELECT seq FROM traces WHERE key = 5"))
        assert "traces_key" in plan


def test_exact_dedup_on_normalized_prompt_and_reply(db, chitchat, privacy):
    original = redact_traces(privacy, chitchat[:1])[0]
    shouty = original.model_copy(update={
        "id": "chatcmpl-dup",
        "messages": [Message(role=m.role, content="  " + m.content.upper().replace(" ", "\n ")) for m in original.messages]})
    different = original.model_copy(update={"id": "chatcmpl-other",
                                            "choices": [Choice(index=0, text=original.choices[0].text + " !")]})
    with TraceStore(db) as store:
        assert store.add_traces([original, shouty]) == [True, False]      # within one batch
        assert store.add_traces([shouty.model_copy(update={"id": "chatcmpl-dup2"}), different]) == [False, True]
        assert len(store) == 2
        assert store.get_trace("chatcmpl-dup").id == original.id          # the duplicate's id still resolves
        store.record_feedback(Feedback(id="f", trace_id="chatcmpl-dup2", thumbs=1))
        assert [f.trace_id for f in store.feedback_for(original.id)] == ["chatcmpl-dup2"]
        assert store.stats()["duplicates_seen"] == 2


def test_dedup_keeps_consent_levels_and_model_versions_apart(db, chitchat, privacy):
    local = redact_traces(privacy, chitchat[:1])[0]
    share = local.model_copy(update={"id": "chatcmpl-share", "consent": "share"})
    v1 = local.model_copy(update={"id": "chatcmpl-v1", "model": local.model.model_copy(update={"version": "v0001"})})
    with TraceStore(db) as store:
        assert store.add_traces([local]) == [True]
        # the same conversation at another consent level, or from another model version: kept
        assert store.add_traces([share, v1]) == [True, True]
        again = [share.model_copy(update={"id": "chatcmpl-share-2"}), v1.model_copy(update={"id": "chatcmpl-v1-2"}),
                 local.model_copy(update={"id": "chatcmpl-local-2"})]
        assert store.add_traces(again) == [False, False, False]          # each folds into its own kind
        assert len(store) == 3
        assert [r.id for r in store.iter_records(consent="share")] == [share.id]
        assert store.find_seq("chatcmpl-share-2") == store.find_seq(share.id)
        assert store.find_seq("chatcmpl-local-2") == store.find_seq(local.id)
        assert store.stats()["by_model_version"] == {"v0000": 2, "v0001": 1}
        # within one batch too
        batch = [local.model_copy(update={"id": f"b-{i}", "consent": c, "messages": [
            local.messages[0].model_copy(update={"content": "a brand new question"})]}) for i, c in
            enumerate(["local", "share", "share", "local"])]
        assert store.add_traces(batch) == [True, True, False, False]


def test_dictionary_is_trained_from_the_nodes_records_and_old_ones_stay_readable(db, chitchat, privacy):
    traces = redact_traces(privacy, chitchat[:1100])
    with TraceStore(db, settings=HOT_ONLY) as store:
        store.add_traces(traces[:150])
        assert store.stats()["dictionaries"] == []
        store.add_traces(traces[150:250])                                  # crosses the threshold
        assert [d["id"] for d in store.stats()["dictionaries"]] == [1]
        assert {row[0] for row in store._db.execute("SELECT DISTINCT dict FROM traces")} == {1}
        store.add_traces(traces[250:1100])
        # Grew 4x: dictionary 2 is trained, and one bounded step (the writer's idle compaction)
        # moves only the oldest 400 records to it; the others stay on dictionary 1.
        kept = len(store)                                                  # exact duplicates fold
        result = store.compact(max_records=400)
        assert result["dictionary"] == 2 and result["recompressed"] == 400 and result["remaining"] == kept - 400
        added = sum(store.add_traces(redact_traces(privacy, chitchat[1100:1150])))   # new ones: dictionary 2
    with TraceStore(db, readonly=True) as reader:
        assert [d["id"] for d in reader.stats()["dictionaries"]] == [1, 2]
        by_dict = dict(reader._db.execute("SELECT dict, count(*) FROM traces GROUP BY dict").fetchall())
        assert by_dict == {1: kept - 400, 2: 400 + added}                  # both versions live side by side
        assert reader._db.execute("SELECT min(seq) FROM traces WHERE dict = 1").fetchone()[0] == 401
        records = list(reader.iter_records())                              # every row decodes
        assert len(records) == len(reader) == kept + added
        stored = {record.id: record.to_trace() for record in records}
        for trace in traces:
            if trace.id in stored:
                assert stored[trace.id] == trace
            assert reader.get_trace(trace.id) is not None                  # duplicates resolve too
        assert traces[0].id in stored and traces[-1].id in stored
        assert reader.integrity_check() == "ok"
    # Compaction finished: every record is on dictionary 2, so dictionary 1 goes; all still read.
    with TraceStore(db, settings=HOT_ONLY) as store:
        result = store.compact()
        assert result["remaining"] == 0 and result["dictionaries_dropped"] == 1
        assert [d["id"] for d in store.stats()["dictionaries"]] == [2]
        assert len(list(store.iter_records())) == kept + added
        assert store.compact()["dictionaries_dropped"] == 0


def test_a_long_lived_reader_reads_records_of_a_dictionary_trained_after_it_opened(db, chitchat, privacy):
    traces = redact_traces(privacy, chitchat[:1050])
    newer_model = traces[0].model.model_copy(update={"version": "v0007"})
    late = [t.model_copy(update={"model": newer_model}) for t in redact_traces(privacy, chitchat[1050:1070])]
    with TraceStore(db, settings=SMALL) as writer:
        writer.add_traces(traces[:150])                                    # no dictionary yet
        reader = TraceStore(db, readonly=True)                             # e.g. a dashboard, kept open
        try:
            assert reader.get_trace(traces[0].id) == traces[0]
            writer.add_traces(traces[150:250])                             # trains dictionary 1, recompresses all
            writer.add_traces(traces[250:1050])
            assert writer.compact()["dictionary"] == 2                     # grew 4x: a second one, for everything
            writer.add_traces(late)                                        # a model version the reader never saw
            assert not reader.codec.has(1) and not reader.codec.has(2)
            for trace in (traces[0], traces[500], late[3]):
                seq = reader.find_seq(trace.id)
                assert seq is not None and reader.record_by_seq(seq).to_trace() == trace
                assert reader.get_trace(trace.id) == trace
            assert reader.get_trace(late[5].id).model.version == "v0007"
            writer.record_feedback(Feedback(id="f-late", trace_id=late[5].id, thumbs=1))
            assert [f.id for f in reader.feedback_for(late[5].id)] == ["f-late"]
        finally:
            reader.close()


def test_compaction_shrinks_the_file(db, chitchat, privacy):
    traces = redact_traces(privacy, chitchat[:600])
    with TraceStore(db, settings=SMALL) as store:
        store.add_traces(traces)
        store.checkpoint()
        before = db.stat().st_size
        while store.compact(max_records=256)["remaining"]:                 # the writer's idle steps
            pass
        store.checkpoint()
        assert db.stat().st_size < 0.93 * before
        assert store.pending_compaction() == 0
        assert all(store.get_trace(t.id) == t for t in traces[::50])


def test_retention_by_age_and_by_size(db, chitchat, privacy):
    now = time.time()
    traces = redact_traces(privacy, chitchat[:400])
    aged, fresh = aged_and_fresh(traces, 100, now)
    with TraceStore(db, settings=SMALL) as store:
        store.add_traces(aged + fresh)
        store.record_feedback(Feedback(id="f-old", trace_id=aged[0].id, thumbs=-1))
        result = store.apply_retention(max_age_days=90, now=now)
        assert result["deleted_by_age"] == 100 and len(store) == 300
        assert store.get_trace(aged[5].id) is None and store.get_trace(fresh[0].id) is not None
        assert list(store.iter_feedback()) == [] and list(store.iter_pairs("kto")) == []   # went with their trace
        target = store.live_bytes() // 2
        result = store.apply_retention(max_bytes=target)
        assert store.live_bytes() <= target and 0 < len(store) < 300
        assert store.get_trace(fresh[-1].id) is not None                   # the newest stay
        assert store.get_trace(fresh[0].id) is None                        # the oldest go first
        assert store.integrity_check() == "ok"


def test_filters_by_model_version_time_consent_and_choices(db, chitchat, privacy):
    traces = redact_traces(privacy, chitchat[:40])
    v1 = traces[0].model.model_copy(update={"version": "v0001"})
    mixed = []
    for i, t in enumerate(traces):
        update = {"created_at": 1000.0 + i, "consent": "share" if i % 4 == 0 else "local"}
        if i >= 20:
            update["model"] = v1
        if i % 10 == 3:
            update["choices"] = [Choice(index=0, text=f"a{i}"), Choice(index=1, text=f"b{i}")]
        mixed.append(t.model_copy(update=update))
    with TraceStore(db) as store:
        store.add_traces(mixed)
        ids = lambda **f: [r.id for r in store.iter_records(**f)]  # noqa: E731
        assert ids(model_version="v0001") == [t.id for t in mixed[20:]]
        assert ids(since=1030.0) == [t.id for t in mixed[30:]]
        assert ids(consent="share") == [t.id for t in mixed[::4]]
        assert ids(consent="local") == [t.id for t in mixed]
        assert ids(min_choices=2) == [mixed[i].id for i in (3, 13, 23, 33)]
        assert ids(limit=7) == [t.id for t in mixed[:7]]
        stats = store.stats()
        assert stats["by_model_version"] == {"v0000": 20, "v0001": 20}
        assert stats["by_consent"] == {"local": 30, "share": 10}


def test_read_only_and_bad_files(tmp_path, chitchat, privacy):
    with pytest.raises(StoreError, match="no such trace store"):
        TraceStore(tmp_path / "missing.db", readonly=True)
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError):
        TraceStore(junk)
    other = tmp_path / "other.db"
    sqlite3.connect(other).execute("CREATE TABLE x(y)").connection.commit()
    with pytest.raises(StoreError, match="not a trace store"):
        TraceStore(other, readonly=True)
    path = tmp_path / "ro.db"
    with TraceStore(path) as store:
        store.add_traces(redact_traces(privacy, chitchat[:3]))
    with TraceStore(path, readonly=True) as reader:
        assert len(reader) == 3
        with pytest.raises(StoreError, match="read-only"):
            reader.add_traces(redact_traces(privacy, chitchat[3:4]))


def test_redaction_counts_are_columns_and_stats(db, privacy, chitchat):
    base = chitchat[0]
    leaky = base.model_copy(update={"messages": [Message(role="user", content="mail a@b.org, call +1 212 555 0199")],
                                    "choices": [Choice(index=0, text="noted a@b.org")]})
    with TraceStore(db) as store:
        store.add_traces(redact_traces(privacy, [leaky]))
        stored = store.get_trace(leaky.id)
        assert stored.redaction.counts == {"EMAIL": 1, "PHONE": 1} and stored.redaction.redacted
        assert stored.messages[0].content == "mail <EMAIL_1>, call <PHONE_1>"
        assert stored.choices[0].text == "noted <EMAIL_1>"
        assert "a@b.org" not in db.read_bytes().decode("latin-1")
        assert store.stats()["redactions_by_type"] == {"EMAIL": 1, "PHONE": 1}

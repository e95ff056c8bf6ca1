"""Sealed blocks (traces/blocks.py): compaction packs older records many to a row; every read,
filter, count, dedup check and deletion must give what it gave while they were rows."""

from __future__ import annotations

import time

import pytest

from traces.config import StoreSettings
from traces.ingest import redact_traces
from traces.redaction import PrivacyFilter
from traces.schemas import Choice, Feedback, Message
from traces.store import TraceStore

from tests.traces.store_helpers import aged_and_fresh

SEALED = StoreSettings(dictionary_min_records=200, dictionary_size=16_384, seal_block_records=16)
FILTERS = [{}, {"model_version": "v0001"}, {"model_version": "v0000"}, {"since": 1050.5}, {"consent": "share"},
           {"consent": "local"}, {"min_choices": 2}, {"limit": 7}, {"limit": 70, "consent": "share"},
           {"model_version": "v0001", "since": 1080.0, "consent": "share"}]


@pytest.fixture(scope="module")
def privacy() -> PrivacyFilter:
    return PrivacyFilter()


def mixed_traces(chitchat, privacy, n: int = 100) -> list:
    traces = redact_traces(privacy, chitchat[:n])
    v1 = traces[0].model.model_copy(update={"version": "v0001"})
    out = []
    for i, t in enumerate(traces):
        update = {"created_at": 1000.0 + i + 0.25, "consent": "share" if i % 4 == 0 else "local"}
        if i >= 45:
            update["model"] = v1
        if i % 10 == 3:
            update["choices"] = [Choice(index=0, text=f"a{i} ünïcode 🎉"), Choice(index=1, text=f"b{i}")]
        if i == 5:
            update["messages"] = [Message(role="system", content="be brief\n\tplease"), *t.messages]
            update["metadata"] = {"task_id": "t5"}
        out.append(t.model_copy(update=update))
    return out


def snapshot(store: TraceStore) -> dict:
    stats = store.stats()
    return {
        "filters": [[r.to_trace() for r in store.iter_records(**f)] for f in FILTERS],
        "counts": {k: stats[k] for k in ("traces", "duplicates_seen", "traces_with_n_choices", "by_model_version",
                                         "by_consent", "redacted_traces", "redactions_by_type", "oldest", "newest")},
        "feedback": sorted(f.id for f in store.iter_feedback()),
        "pairs": sorted(p.id for p in store.iter_pairs("kto")),
    }


def test_sealed_records_read_back_whole_by_id_seq_and_every_filter(db, chitchat, privacy):
    traces = mixed_traces(chitchat, privacy)
    duplicate = traces[7].model_copy(update={"id": "chatcmpl-dup-of-7"})
    with TraceStore(db, settings=SEALED) as store:
        assert store.add_traces(traces) == [True] * 100
        assert store.add_traces([duplicate]) == [False]
        store.record_feedback(Feedback(id="f1", trace_id=traces[2].id, thumbs=1))
        store.record_feedback(Feedback(id="f2", trace_id=duplicate.id, thumbs=-1))
        before = snapshot(store)
        result = store.compact()
        assert result["sealed"] == 96 and result["remaining"] == 0       # 6 blocks of 16; 4 stay hot
        assert store._db.execute("SELECT count(*) FROM blocks").fetchone()[0] == 6
        assert store._db.execute("SELECT count(*) FROM traces").fetchone()[0] == 4
        assert store.get_meta("schema_version") == "2"                   # older code refuses, not misreads
        assert snapshot(store) == before
        for trace in traces:
            assert store.get_trace(trace.id) == trace
        assert store.get_trace(duplicate.id) == traces[7]                # an alias of a sealed record
        assert [f.id for f in store.feedback_for(traces[2].id)] == ["f1"]
        assert store.get_trace("chatcmpl-unknown") is None

        # feedback on a sealed record, and a new trace saying what a sealed one said
        outcome = store.record_feedback(Feedback(id="f3", trace_id=traces[9].id, thumbs=1))
        assert outcome.kto and outcome.kto[0].completion.content == traces[9].choices[0].text
        again = traces[11].model_copy(update={"id": "chatcmpl-again"})
        fresh = redact_traces(privacy, chitchat[100:110])
        assert store.add_traces([again, *fresh]) == [False] + [True] * 10
        assert store.get_trace("chatcmpl-again") == traces[11]
        assert [r.id for r in store.iter_records()] == [t.id for t in traces + fresh]   # seqs never collide
        assert len(store) == 110
    with TraceStore(db, readonly=True) as reader:
        assert [r.to_trace() for r in reader.iter_records()] == traces + fresh
        assert reader.integrity_check() == "ok"


def test_retention_cuts_through_a_block_exactly(db, chitchat, privacy):
    now = time.time()
    traces = redact_traces(privacy, chitchat[:100])
    aged, fresh = aged_and_fresh(traces, 40, now)
    with TraceStore(db, settings=SEALED) as store:
        store.add_traces(aged + fresh)
        assert store.compact()["sealed"] == 96                           # the age cut falls inside block 3
        for trace_id in (aged[0].id, aged[39].id, fresh[0].id):
            store.record_feedback(Feedback(id=f"f-{trace_id}", trace_id=trace_id, thumbs=1))
        assert store.apply_retention(max_age_days=90, now=now)["deleted_by_age"] == 40
        assert len(store) == 60 and len(list(store.iter_records())) == 60
        assert all(store.get_trace(t.id) is None for t in aged)
        assert all(store.get_trace(t.id) == t for t in fresh)
        assert [f.trace_id for f in store.iter_feedback()] == [fresh[0].id]
        sealed = store._db.execute("SELECT coalesce(sum(records), 0) FROM blocks").fetchone()[0]
        assert sealed == 56                                              # 8 of block 3 and blocks 4-6
        assert store._db.execute("SELECT count(*) FROM sealed_keys").fetchone()[0] == 2 * sealed
        again = aged[3].model_copy(update={"id": "chatcmpl-back", "created_at": now})
        assert store.add_traces([again]) == [True]                       # its deleted twin no longer dedups it

        target = store.live_bytes() - 4096                               # one page less: some records go
        deleted = store.apply_retention(max_bytes=target)["deleted_by_size"]
        assert store.live_bytes() <= target and deleted > 0 and len(store) == 61 - deleted
        assert [r.id for r in store.iter_records()] == [t.id for t in fresh[deleted:]] + ["chatcmpl-back"]
        assert store.stats()["traces"] == len(store) and store.integrity_check() == "ok"


def test_a_new_dictionary_reseals_the_blocks_and_the_old_one_goes(db, chitchat, privacy):
    traces = redact_traces(privacy, chitchat[:1150])
    with TraceStore(db, settings=SEALED) as store:
        store.add_traces(traces[:250])                                   # dictionary 1, trained at 250 records
        while store.compact(max_records=64)["remaining"]:                # the writer's bounded steps
            pass
        assert {d for (d,) in store._db.execute("SELECT DISTINCT dict FROM blocks")} == {1}
        store.add_traces(traces[250:])                                   # grew 4x (1,000): dictionary 2 is due
        steps = []
        while not steps or steps[-1]["remaining"]:
            steps.append(store.compact(max_records=64))
        assert steps[0]["dictionary"] == 2 and len(steps) > 2
        assert sum(step["dictionaries_dropped"] for step in steps) == 1
        assert [d["id"] for d in store.stats()["dictionaries"]] == [2]
        assert {d for (d,) in store._db.execute("SELECT DISTINCT dict FROM blocks")} == {2}
        stored = {r.id: r.to_trace() for r in store.iter_records()}
        assert len(stored) == len(store) and all(stored[t.id] == t for t in traces if t.id in stored)


def test_iteration_meets_the_records_another_connection_seals_meanwhile(db, chitchat, privacy):
    traces = redact_traces(privacy, chitchat[:1100])
    with TraceStore(db, settings=SEALED) as writer, TraceStore(db, readonly=True) as reader:
        writer.add_traces(traces)
        records = reader.iter_records()
        seen = [next(records).id for _ in range(600)]                    # into its second page of rows
        assert writer.compact()["sealed"] == len(writer) // 16 * 16      # everything moves into blocks
        seen += [record.id for record in records]
        assert len(seen) == len(set(seen)) == len(writer)
        assert seen == [r.id for r in writer.iter_records()]


def test_filtered_iteration_with_a_limit_survives_a_seal_that_splits_its_page(db, chitchat, privacy):
    # Blocks of 24 against pages of 512 rows: the seal puts the reader's next record in the middle
    # of a block that starts before where it stopped.
    settings = SEALED.model_copy(update={"seal_block_records": 24})
    traces = [t.model_copy(update={"created_at": 1000.0 + i}) for i, t in enumerate(redact_traces(privacy, chitchat[:1100]))]
    with TraceStore(db, settings=settings) as writer, TraceStore(db, readonly=True) as reader:
        kept = [t for t, new in zip(traces, writer.add_traces(traces)) if new]    # chitchat repeats a few
        plain, recent = reader.iter_records(limit=700), reader.iter_records(since=1100.0, limit=800)
        seen_plain = [next(plain).id for _ in range(512)]               # one whole page each, no more
        seen_recent = [next(recent).id for _ in range(512)]
        assert writer.compact()["sealed"] == len(kept) // 24 * 24 > 900
        seen_plain += [record.id for record in plain]
        seen_recent += [record.id for record in recent]
        assert seen_plain == [t.id for t in kept[:700]]
        assert seen_recent == [t.id for t in kept if t.created_at >= 1100.0][:800]


def test_deleting_the_oldest_across_blocks_and_rows_takes_their_pairs_aliases_and_counts(db, chitchat, privacy):
    traces = mixed_traces(chitchat, privacy)
    later = redact_traces(privacy, chitchat[100:160])
    with TraceStore(db, settings=SEALED) as store:
        store.add_traces(traces)
        store.add_traces([traces[20].model_copy(update={"id": "chatcmpl-dup-of-20"})])
        assert store.compact()["sealed"] == 96
        store.add_traces(later)                                         # 4 + 60 hot rows after 6 blocks
        for trace in (traces[20], traces[99], later[9], later[10]):
            store.record_feedback(Feedback(id=f"f-{trace.id}", trace_id=trace.id, thumbs=1))
        with store._transaction():
            assert store._delete_oldest(110) == 110                     # every block, then 14 rows
        kept = (traces + later)[110:]
        assert [r.id for r in store.iter_records()] == [t.id for t in kept]
        assert len(store) == store.stats()["traces"] == 50
        assert store.count_by_consent() == {"local": 50}                # the share ones were all sealed
        assert store.get_trace("chatcmpl-dup-of-20") is None            # its alias went with it
        assert sorted(f.trace_id for f in store.iter_feedback()) == sorted([later[10].id])
        assert [p.prompt[-1].content for p in store.iter_pairs("kto")] == [later[10].messages[-1].content]
        assert store._db.execute("SELECT count(*) FROM sealed_keys").fetchone()[0] == 0


def test_a_store_emptied_and_refilled_never_reuses_a_seq_or_serves_a_stale_block(db, chitchat, privacy):
    old = redact_traces(privacy, chitchat[:100])
    new = redact_traces(privacy, chitchat[100:200])
    with TraceStore(db, settings=SEALED) as writer, TraceStore(db, readonly=True) as reader:
        writer.add_traces(old)
        writer.compact()
        assert reader.get_trace(old[3].id) == old[3]                    # the reader caches block 1..16
        assert writer.apply_retention(max_bytes=1)["deleted_by_size"] == 100
        assert len(reader) == 0 and list(reader.iter_records()) == [] and reader.count_by_consent() == {}
        assert writer.add_traces(old[:5] + new) == [True] * 105         # deleted twins dedup nothing
        writer.compact()
        assert min(writer.find_seq(t.id) for t in old[:5] + new) > 100
        assert all(reader.get_trace(t.id) == t for t in old[:5] + new)
        assert reader.get_trace(old[50].id) is None
        assert [r.to_trace() for r in reader.iter_records()] == old[:5] + new


def test_compaction_rewrites_the_file_once_not_after_every_block_it_seals(db, chitchat, privacy):
    traces = redact_traces(privacy, chitchat[:1200])
    with TraceStore(db, settings=SEALED) as store:
        store.add_traces(traces[:1000])
        assert store.compact()["vacuumed"]                              # 62 blocks' worth of rows freed
        for start in range(1000, 1200, 16):                             # the idle writer, block by block
            store.add_traces(traces[start:start + 16])
            step = store.compact()
            assert step["sealed"] in (0, 16) and not step["vacuumed"]
        assert store.slack_share() < 0.5 and store.integrity_check() == "ok"

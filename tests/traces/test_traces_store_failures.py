"""What the store must survive besides a kill: a failed transaction (a full disk, faked here by
making one step raise), another process compacting under a long-lived writer, many threads
reading at once, and a store written by newer code."""

from __future__ import annotations

import sqlite3
import threading

import pytest

from traces.compression import Codec, train_dictionary
from traces.config import StoreSettings
from traces.ingest import redact_traces
from traces.redaction import PrivacyFilter
from traces.schemas import Choice, Feedback
from traces.store import StoreError, TraceStore

SMALL = StoreSettings(dictionary_min_records=200, dictionary_size=16_384, seal_block_records=16)


@pytest.fixture(scope="module")
def privacy() -> PrivacyFilter:
    return PrivacyFilter()


def read_all(path) -> list:
    with TraceStore(path, readonly=True) as reader:
        return [r.to_trace() for r in reader.iter_records()], [f.id for f in reader.iter_feedback()]


def test_a_failed_compaction_leaves_nothing_behind_in_memory(db, chitchat, privacy, monkeypatch):
    traces = redact_traces(privacy, chitchat[:1100])
    with TraceStore(db, settings=SMALL) as store:
        kept = store.add_traces(traces[:250])                   # dictionary 1; nothing sealed yet
        kept += store.add_traces(traces[250:1000])              # 4x: dictionary 2 is due

        def disk_full(*args):
            raise sqlite3.OperationalError("database or disk is full")

        monkeypatch.setattr(store, "_write_block", disk_full)   # fails after training it, creating blocks
        with pytest.raises(sqlite3.OperationalError):
            store.compact()
        monkeypatch.undo()
        assert store.codec.latest == 1 and len(store) == sum(kept)
        kept += store.add_traces(traces[1000:])                 # no "no such table: sealed_keys"
        store.record_feedback(Feedback(id="f1", trace_id=traces[1050].id, thumbs=1))
        assert store.compact()["sealed"] > 0
    stored, feedback = read_all(db)                             # every record names a dictionary that exists
    assert stored == [t for t, new in zip(traces, kept) if new] and feedback == ["f1"]


def test_a_long_lived_writer_follows_a_compaction_by_another_process(db, chitchat, privacy):
    traces = redact_traces(privacy, chitchat[:1100])
    with TraceStore(db, settings=SMALL) as writer:
        kept = writer.add_traces(traces[:250])                  # dictionary 1, trained at 250 records
        kept += writer.add_traces(traces[250:1040])             # 4x: the next compaction trains 2
        with TraceStore(db, settings=SMALL) as cli:             # `swarmloop traces compact`
            result = cli.compact()
            assert result["dictionary"] == 2 and result["dictionaries_dropped"] == 1
        # its next write reads nothing stored first (no duplicate to compare with)
        fresh = [t.model_copy(update={"choices": [Choice(index=0, text=f"a reply never seen before, #{i}")]})
                 for i, t in enumerate(traces[1040:])]
        assert writer.add_traces(fresh) == [True] * len(fresh)
        writer.record_feedback(Feedback(id="f1", trace_id=fresh[5].id, thumbs=-1))
        writer.record_feedback(Feedback(id="f2", trace_id=traces[10].id, correction="better: this"))
    stored, feedback = read_all(db)
    assert stored == [t for t, new in zip(traces, kept) if new] + fresh and feedback == ["f1", "f2"]


def test_one_codec_serves_many_threads_at_once():
    samples = [f'{{"id":"chatcmpl-{i}","text":"hello number {i} from the store"}}'.encode() * 3 for i in range(400)]
    codec = Codec(3)
    codec.add_dictionary(1, train_dictionary(samples, 4096, 1))
    blobs = [codec.compress(s, 1) for s in samples]
    failures: list = []

    def work() -> None:
        try:
            for _ in range(20):
                for sample, blob in zip(samples, blobs):
                    assert codec.decompress(blob, 1) == sample
                    assert codec.decompress(codec.compress(sample, 1), 1) == sample
        except Exception as exc:                                # noqa: BLE001 (reported below)
            failures.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []


def test_vacuum_is_not_put_off_by_the_slack_of_a_much_smaller_store(db, chitchat, privacy):
    traces = redact_traces(privacy, chitchat[:1240])
    settings = SMALL.model_copy(update={"dictionary_min_records": 1000})
    with TraceStore(db, settings=settings) as store:
        store.add_traces(traces[:40])
        assert store.compact()["vacuumed"]                      # a tiny store: mostly structural slack
        store.add_traces(traces[40:])
        assert store.compact()["vacuumed"]                      # 30x the data: its old slack is no guide


def test_a_store_from_newer_code_is_refused_and_left_as_it_was(db, chitchat, privacy):
    with TraceStore(db, settings=SMALL) as store:
        store.add_traces(redact_traces(privacy, chitchat[:40]))
        store.compact()
        store.set_meta("schema_version", "99")
        store._db.execute("DROP INDEX blocks_dict")             # what newer code might have done
        store.checkpoint()
    for readonly in (False, True):
        with pytest.raises(StoreError, match="newer than this code"):
            TraceStore(db, readonly=readonly)
    check = sqlite3.connect(db)
    assert check.execute("SELECT count(*) FROM sqlite_master WHERE name = 'blocks_dict'").fetchone()[0] == 0
    check.close()


def test_a_block_of_one_record_is_refused():
    with pytest.raises(ValueError, match="at least 2"):
        StoreSettings(seal_block_records=1)


def test_a_model_first_seen_in_a_failed_batch_is_recorded_when_the_batch_is_retried(db, chitchat, privacy, monkeypatch):
    traces = redact_traces(privacy, chitchat[:60])
    v2 = traces[0].model.model_copy(update={"version": "v0002"})
    retried = [t.model_copy(update={"model": v2}) for t in traces[30:]]
    with TraceStore(db, settings=SMALL) as store:
        store.add_traces(traces[:30])
        with monkeypatch.context() as patch:               # the batch fails as it would commit
            patch.setattr(store, "_maybe_train_dictionary", lambda: (_ for _ in ()).throw(OSError("disk full")))
            with pytest.raises(OSError):
                store.add_traces(retried)
        with pytest.raises(LookupError):                   # a bad request rolls back too, harmlessly
            store.record_feedback(Feedback(id="f0", trace_id="chatcmpl-nobody", thumbs=1))
        assert store.add_traces(retried) == [True] * 30
        assert store.stats()["by_model_version"] == {traces[0].model.version: 30, "v0002": 30}
    stored, _ = read_all(db)
    assert stored == traces[:30] + retried

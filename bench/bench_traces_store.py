"""Trace ingest (privacy filter + store) and bytes per stored trace, against baselines, one run.

    .venv/bin/python bench/bench_traces_store.py [--repeat 3] [--batch 2048] [--quick]

Workloads, pinned to one core:
  chitchat-sized  (the headline, the issue's target) multi-turn excerpts of the chitchat-dataset
                  conversations (traces.samples.chitchat_excerpts: about 9,700, median 662 B of
                  chat JSON, 6 turns), arriving as the node hands them over: CompletionRecords
                  (inference.hooks) that the capture hook's writer converts into Traces
                  (inference.capture.record_to_trace), redacts and stores;
  conversations   every chitchat conversation as one ready Trace (5,356, mean 3.7 KB of JSON);
  exchanges       one user turn and its reply as a ready Trace (mean 176 characters).

(a) ingest throughput in steady state (the store already trained its dictionary), traces per
    second of CPU time (and wall time, fsync included): convert (chitchat-sized only), redact the
    batch in one scan and commit it in one transaction (what the background writer does),
    against the plainest durable baseline: the same records' JSON inserted into a bare SQLite
    table (WAL, synchronous=FULL, one transaction per batch, no filter, no compression, no index);
    then the real capture hook (TraceCapture.on_completion per record, its background writer
    converting, redacting and committing) and the bare TraceWriter end to end.
    Target >= 20,000 traces/s for chitchat-sized traces.
(b) bytes per stored trace: the whole database file (indexes, dictionary and free space
    included) after a WAL checkpoint, right after ingest and after compaction, against the raw
    JSON of the same (redacted) traces and the whole-file gzip -9 / zstd -3 JSONL of them, which
    allow no per-record access. Compaction by default seals records into blocks
    (traces/blocks.py); the same store compacted with one row per record (seal_block_records = 0)
    is shown too, with what reading one trace by id then costs in each layout.
    Targets: <= 0.30x raw JSON and <= whole-file gzip.

--quick runs a few thousand traces of each workload (a check that the script works, not figures).
"""

from __future__ import annotations

import argparse
import gc
import gzip
import os
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import zstandard  # noqa: E402

from inference.capture import TraceCapture, record_to_trace  # noqa: E402  (torch-free)
from inference.hooks import CompletionChoice, CompletionRecord  # noqa: E402
from traces.config import StoreSettings  # noqa: E402
from traces.gcpause import paused_gc  # noqa: E402
from traces.ingest import redact_traces  # noqa: E402
from traces.redaction import PrivacyFilter  # noqa: E402
from traces.samples import SAMPLE_MODEL, _chat_json_bytes, chitchat_excerpts, chitchat_traces  # noqa: E402
from traces.store import TraceStore  # noqa: E402
from traces.writer import TraceWriter  # noqa: E402

NODE_ID = "node-bench"


def exchange_traces(limit: int) -> list:
    from traces.samples import chitchat_conversations, conversation_to_trace

    rng = random.Random(0)
    out = []
    for turns in chitchat_conversations():
        for i in range(0, len(turns) - 1, 2):
            out.append(conversation_to_trace([turns[i], turns[i + 1]], rng=rng, created_at=time.time()))
            if len(out) >= limit:
                return out
    return out


def excerpt_records(limit: int | None = None) -> list[CompletionRecord]:
    """Chitchat-sized excerpts as the node server hands them to the capture hook."""
    rng = random.Random(0)
    records = []
    now = int(time.time())
    for i, turns in enumerate(chitchat_excerpts(limit)):
        messages = [{"role": "user" if k % 2 == 0 else "assistant", "content": text} for k, text in enumerate(turns[:-1])]
        reply = turns[-1]
        records.append(CompletionRecord(
            completion_id=f"chatcmpl-{rng.getrandbits(96):024x}", created=now - len(turns) + i % 600,
            request={"model": SAMPLE_MODEL.ref, "messages": messages, "temperature": 0.7, "top_p": 0.95,
                     "max_tokens": 256},
            headers={"content-type": "application/json", "user-agent": "OpenAI/Python 2.8.1"},
            choices=[CompletionChoice(index=0, text=reply, finish_reason="stop", completion_tokens=len(reply) // 4)],
            prompt_tokens=sum(len(m["content"]) for m in messages) // 4, completion_tokens=len(reply) // 4,
            latency_s=round(rng.uniform(0.2, 3.0), 3), time_to_first_token_s=round(rng.uniform(0.02, 0.3), 3),
            model_ref=SAMPLE_MODEL.ref, model_version=SAMPLE_MODEL.version, weights_sha256=SAMPLE_MODEL.weights_sha256))
    return records


def convert(records: list[CompletionRecord]) -> list:
    """What the capture hook's writer does first with each record (consent already decided)."""
    return [record_to_trace(record, NODE_ID, "local") for record in records]


def timed(fn):
    gc.collect()
    wall, cpu = time.perf_counter(), time.thread_time()
    fn()
    return time.perf_counter() - wall, time.thread_time() - cpu


WARM = 1500     # traces written first, untimed: the store trains its zstd dictionary on them


def as_traces(items) -> list:
    return convert(items) if items and isinstance(items[0], CompletionRecord) else items


def warm_store(items, path: Path, seal: bool = False) -> float:
    """A store that already has its dictionary (steady state), and with `seal` its records already
    sealed into blocks by compaction (a node's usual state). Returns the one-time training cost."""
    with TraceStore(path) as store:
        start = time.thread_time()
        store.add_traces(redact_traces(PrivacyFilter(), as_traces(items[:WARM])))
        cost = time.thread_time() - start
        if seal:
            assert store.compact()["sealed"] > 0
        return cost


def ingest_ours(items, path: Path, batch: int) -> None:
    """Records are converted into Traces here, inside the timing, as the capture hook's writer
    does, with the collector paused for each batch as the writer pauses it (traces/gcpause.py)."""
    privacy = PrivacyFilter()
    with TraceStore(path) as store:
        for i in range(WARM, len(items), batch):
            with paused_gc():
                store.add_traces(redact_traces(privacy, as_traces(items[i:i + batch])))


def ingest_baseline(items, path: Path, batch: int) -> None:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = FULL")
    db.execute("CREATE TABLE traces(id TEXT, json TEXT)")
    key = (lambda r: r.completion_id) if isinstance(items[0], CompletionRecord) else (lambda t: t.id)
    for i in range(WARM, len(items), batch):
        db.execute("BEGIN")
        db.executemany("INSERT INTO traces VALUES (?, ?)", [(key(x), x.model_dump_json()) for x in items[i:i + batch]])
        db.execute("COMMIT")
    db.close()


def ingest_writer(traces, path: Path) -> None:
    writer = TraceWriter(path)
    for trace in traces[WARM:]:
        writer.submit(trace)
    writer.flush()
    writer.close()


def ingest_capture(records, path: Path) -> None:
    """The node's real capture hook: consent check per record, then its background writer."""
    capture = TraceCapture(path, NODE_ID, "local")
    for record in records[WARM:]:
        capture.on_completion(record)
    capture.flush()
    capture.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement (the best is kept)")
    parser.add_argument("--batch", type=int, default=2048, help="traces per transaction")
    parser.add_argument("--exchanges", type=int, default=20_000, help="single-exchange traces for the third workload")
    parser.add_argument("--quick", action="store_true", help="a few thousand traces per workload, one run each")
    parser.add_argument("--bytes-only", action="store_true", help="only (b), bytes per trace")
    args = parser.parse_args()
    if args.quick:
        args.repeat, args.exchanges = 1, 3000
    try:
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    except (AttributeError, OSError):
        pass
    records = excerpt_records(3000 if args.quick else None)
    traces = list(chitchat_traces(3000 if args.quick else None, seed=0))
    gc.collect()
    gc.freeze()      # the corpus is a large live heap; a node's writer does not carry one
    work = Path(tempfile.mkdtemp(prefix="bench-traces-"))
    print("one core" + (" (--quick: a check that the script runs, not figures)" if args.quick else "") + "\n")

    training = []

    def best(fn, label, warm_with=None, seal=False):
        runs = []
        for r in range(args.repeat):
            path = work / f"{label}-{r}.db"
            if warm_with is not None:
                training.append(warm_store(warm_with, path, seal))
            runs.append(timed(lambda: fn(path)))
        return min(runs, key=lambda x: x[1])

    def report(name, n, baseline, ours):
        (wall_b, cpu_b), (wall_o, cpu_o) = baseline, ours
        print(f"  {'baseline: JSON into bare SQLite':44s} cpu {n/cpu_b:9,.0f}/s   wall {n/wall_b:9,.0f}/s")
        print(f"  {name:44s} cpu {n/cpu_o:9,.0f}/s   wall {n/wall_o:9,.0f}/s   ({(n/cpu_o)/(n/cpu_b):.2f}x baseline cpu)")
        return n / cpu_o

    if args.bytes_only:
        for label, items in [("chitchat-sized excerpts", convert(records)), ("whole conversations", traces)]:
            bytes_report(label, items, args.batch, work / f"bytes-{label.split()[0]}.db")
        return
    # (a1) chitchat-sized: the workload, from CompletionRecords.
    m = len(records) - WARM
    chat_json = statistics.median(_chat_json_bytes([msg["content"] for msg in r.request["messages"]] + [r.choices[0].text])
                                  for r in records)
    trace_json = statistics.median(len(t.model_dump_json()) for t in convert(records[:2000]))
    print(f"(a) ingest into a store that has its dictionary (the first {WARM} records train it), traces per second")
    print(f"  chitchat-sized: {m} excerpts, median {chat_json:,.0f} B of chat JSON ({trace_json:,.0f} B as a whole"
          f" Trace JSON, with model, sampling, usage...), {statistics.median(len(r.request['messages']) + 1 for r in records):.0f} turns;"
          " convert + filter + store")
    rate = report("ours: convert + filter + store (one core)", m,
                  best(lambda p: ingest_baseline(records, p, args.batch), "baseline-c"),
                  best(lambda p: ingest_ours(records, p, args.batch), "ours-c", warm_with=records))
    # The same excerpts as ready Traces (what the writer holds after the capture hook's conversion):
    # filter + store alone, as the conversation and exchange workloads below are measured.
    ready = convert(records)
    ready_rate = report("ours: filter + store, ready Traces (one core)", m,
                        best(lambda p: ingest_baseline(ready, p, args.batch), "baseline-r"),
                        best(lambda p: ingest_ours(ready, p, args.batch), "ours-r", warm_with=ready))
    sealed_rate = report("ours: the same, older records already sealed", m,
                         best(lambda p: ingest_baseline(ready, p, args.batch), "baseline-s"),
                         best(lambda p: ingest_ours(ready, p, args.batch), "ours-s", warm_with=ready, seal=True))
    wall_c, _ = best(lambda p: ingest_capture(records, p), "capture", warm_with=records)
    print(f"  {'ours: TraceCapture.on_completion end to end':44s} wall {m/wall_c:9,.0f}/s  (request + writer threads)")
    print(f"  target >= 20,000/s: {'met' if rate >= 20_000 else 'NOT met'} with the conversion (convert + filter + store),"
          f" {'met' if ready_rate >= 20_000 else 'NOT met'} for filter + store (cpu),"
          f" {'met' if sealed_rate >= 20_000 else 'NOT met'} with sealed records in the store")

    # (a2) whole conversations, ready Traces.
    n = len(traces) - WARM
    text_chars = statistics.mean(sum(len(msg.content) for msg in t.messages) + len(t.choices[0].text) for t in traces)
    print(f"  conversations: {n} whole chitchat conversations as ready Traces, mean {text_chars:,.0f} characters of text")
    report("ours: filter + store (one core)", n,
           best(lambda p: ingest_baseline(traces, p, args.batch), "baseline"),
           best(lambda p: ingest_ours(traces, p, args.batch), "ours", warm_with=traces))
    wall_w, _ = best(lambda p: ingest_writer(traces, p), "writer", warm_with=traces)
    print(f"  {'ours: background TraceWriter end to end':44s} wall {n/wall_w:9,.0f}/s  (both threads)")

    # (a3) The same conversations cut into exchanges (one user turn and the reply), the shortest
    # trace a chat produces: per-trace costs dominate instead of per-byte ones.
    exchanges = exchange_traces(args.exchanges)
    m = len(exchanges) - WARM
    size = statistics.mean(len(t.messages[0].content) + len(t.choices[0].text) for t in exchanges)
    print(f"  exchanges: {m} traces of one user turn + reply, mean {size:,.0f} characters")
    report("ours: filter + store (one core)", m,
           best(lambda p: ingest_baseline(exchanges, p, args.batch), "baseline-x"),
           best(lambda p: ingest_ours(exchanges, p, args.batch), "ours-x", warm_with=exchanges))
    print(f"  (training the first dictionary: {min(training):.1f} s cpu, once per store)\n")

    for label, items in [("chitchat-sized excerpts", convert(records)), ("whole conversations", traces)]:
        bytes_report(label, items, args.batch, work / f"bytes-{label.split()[0]}.db")


def store_bytes(redacted: list, batch: int, path: Path, settings: StoreSettings) -> dict:
    """Ingest, checkpoint, compact, checkpoint: the file's bytes at both points, and the cost of
    reading single records by id afterwards (a fresh connection: nothing cached) and every record in order."""
    n = len(redacted)
    with TraceStore(path, settings=settings) as store:
        for i in range(0, n, batch):
            store.add_traces(redacted[i:i + batch])
        kept = len(store)
        store.checkpoint()
        after_ingest = path.stat().st_size
        cpu = time.thread_time()
        store.compact()
        compact_cpu = time.thread_time() - cpu
        store.checkpoint()
        after_compact = path.stat().st_size
        assert store.integrity_check() == "ok"
    picks = random.Random(1).sample(redacted, min(2000, n))
    with TraceStore(path, readonly=True, settings=settings) as reader:
        laps = []
        for trace in picks:
            start = time.perf_counter()
            found = reader.get_trace(trace.id)
            laps.append(time.perf_counter() - start)
            assert found is not None and (found == trace or found.id != trace.id)   # or a duplicate's twin
    with TraceStore(path, readonly=True, settings=settings) as reader:       # the export path: all, in order
        start = time.thread_time()
        iterated = sum(1 for _ in reader.iter_records())
        scan_cpu = time.thread_time() - start
        assert iterated == kept
    laps.sort()
    return {"kept": kept, "ingest": after_ingest, "compact": after_compact, "compact_cpu": compact_cpu,
            "read_p50_us": laps[len(laps) // 2] * 1e6, "read_p99_us": laps[int(len(laps) * 0.99)] * 1e6,
            "scan_us": scan_cpu / kept * 1e6}


def bytes_report(label: str, traces: list, batch: int, path: Path) -> None:
    n = len(traces)
    redacted = redact_traces(PrivacyFilter(), traces)
    raw = [t.model_dump_json().encode() for t in redacted]
    raw_bytes = sum(len(r) + 1 for r in raw)
    blob = b"\n".join(raw) + b"\n"
    gz = len(gzip.compress(blob, compresslevel=9))
    zs = len(zstandard.ZstdCompressor(level=3).compress(blob))
    settings = StoreSettings()
    sealed = store_bytes(redacted, batch, path, settings)
    rows_only = store_bytes(redacted, batch, path.with_name(path.stem + "-rows.db"),
                            settings.model_copy(update={"seal_block_records": 0}))
    print(f"(b) bytes per stored trace, {label} ({sealed['kept']} kept of {n}: exact duplicates fold)")
    level = settings.compaction_level
    rows = [("raw JSON (model_dump_json, JSONL)", raw_bytes / n), ("whole-file gzip -9 JSONL (no per-record access)", gz / n),
            ("whole-file zstd -3 JSONL (no per-record access)", zs / n),
            (f"store right after ingest (zstd-{settings.compression_level} + dictionary)", sealed["ingest"] / n),
            (f"compacted, one row per record (zstd-{level}, {rows_only['compact_cpu']/n*1e3:.1f} ms/trace)",
             rows_only["compact"] / n),
            (f"compacted, sealed blocks of {settings.seal_block_records} (default, {sealed['compact_cpu']/n*1e3:.1f} ms/trace)",
             sealed["compact"] / n)]
    for name, per in rows:
        print(f"  {name:58s} {per:7.0f} B   {per/(raw_bytes/n):5.3f}x raw   {per/(gz/n):5.3f}x gzip")
    print(f"  read one trace by id after compaction, fresh connection: rows p50 {rows_only['read_p50_us']:.0f} us "
          f"(p99 {rows_only['read_p99_us']:.0f}), sealed p50 {sealed['read_p50_us']:.0f} us (p99 {sealed['read_p99_us']:.0f})")
    print(f"  iterate every record in order (export), cpu per trace: rows {rows_only['scan_us']:.1f} us, "
          f"sealed {sealed['scan_us']:.1f} us")
    final = sealed["compact"] / raw_bytes
    print(f"  targets: <= 0.30x raw: {'met' if final <= 0.30 else 'NOT met'} ({final:.3f}); "
          f"<= gzip: {'met' if sealed['compact'] <= gz else 'NOT met'} ({sealed['compact']/gz:.3f}x)\n")


if __name__ == "__main__":
    main()

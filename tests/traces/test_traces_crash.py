"""kill -9 a real writer process at chosen moments: every acknowledged trace survives, whole.

The writer (crash_writer.py) prints what it is doing; the test kills it right after a chosen line:
after an acknowledgement (the next batch is being redacted, encoded or inserted), inside an open
transaction whose rows are inserted but not committed, inside a compaction step's transaction,
and as VACUUM starts. All kills hit the same file, which is reopened (WAL recovery) after each.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from traces.store import TraceStore

WRITER = Path(__file__).with_name("crash_writer.py")
REPO = Path(__file__).resolve().parents[2]


@dataclass
class Killed:
    acked: list[str] = field(default_factory=list)
    batches: list[list[str]] = field(default_factory=list)      # every batch handed to the store
    last_line: str = ""                                       # the line the kill followed


def run_and_kill(db: Path, seed: int, mode: str, kill_after: str, count: int) -> Killed:
    """Start the writer, kill -9 it right after the `count`-th line starting with `kill_after`."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, str(WRITER), str(db), str(seed), mode], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)
    seen = Killed()
    deadline = time.monotonic() + 120

    def note(line: str) -> None:
        word, _, rest = line.strip().partition(" ")
        if word == "ACK":
            seen.acked.append(rest)
        elif word == "BATCH":
            seen.batches.append(rest.split(","))

    try:
        assert proc.stdout.readline().strip() == "READY", proc.stderr.read()
        hits = 0
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            assert line, f"writer died: {proc.stderr.read()}"
            note(line)
            if line.split(" ", 1)[0].strip() == kill_after:
                hits += 1
                if hits == count:
                    os.kill(proc.pid, signal.SIGKILL)
                    seen.last_line = line.strip()
                    break
        assert seen.last_line, f"no {count} x {kill_after} within the deadline"
        rest, _ = proc.communicate(timeout=30)      # lines printed before the kill still count
        for line in rest.splitlines():
            note(line)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    return seen


def check_store(db: Path, acknowledged: set[str]) -> TraceStore:
    store = TraceStore(db)                          # read-write: WAL recovery runs
    assert store.integrity_check() == "ok"
    for trace_id in acknowledged:
        trace = store.get_trace(trace_id)
        assert trace is not None, f"acknowledged {trace_id} is missing after kill -9"
        assert trace.choices and trace.messages
    # no half record: every row decodes into a valid trace
    stored = [record.to_trace() for record in store.iter_records()]
    duplicates = store.stats()["duplicates_seen"]
    assert len(stored) == len(store)
    # every acknowledged id is a row or an alias of one: together they are at least as many
    assert len(stored) + duplicates >= len(acknowledged)
    return store


def test_kill_dash_nine_loses_no_acknowledged_trace(tmp_path):
    db = tmp_path / "node.db"
    acknowledged: set[str] = set()
    rolled_back = 0
    plan = [("stream", "ACK", 180), ("stream", "INTXN-PAUSE", 2), ("stream", "ACK", 1),
            ("stream", "INTXN-PAUSE", 3), ("stream", "ACK", 420)]
    for seed, (mode, kill_after, count) in enumerate(plan):
        killed = run_and_kill(db, seed, mode, kill_after, count)
        acknowledged |= set(killed.acked)
        with check_store(db, acknowledged) as store:
            # the batch in flight is all there or not at all, never in part
            for batch in killed.batches[-2:]:
                present = [store.find_seq(trace_id) is not None for trace_id in batch]
                assert all(present) or not any(present), (killed.last_line, present)
            if kill_after == "INTXN-PAUSE":
                # killed inside the open transaction: it was rolled back, and never acknowledged
                in_flight = killed.last_line.split(" ", 1)[1].split(",")
                assert not any(store.find_seq(trace_id) is not None for trace_id in in_flight)
                assert not set(in_flight) & set(killed.acked)
                rolled_back += 1
    assert rolled_back == 2 and len(acknowledged) >= 600

    # Kills during compaction: inside a step's transaction, then as the file is rewritten.
    with TraceStore(db) as store:
        before = len(store)
    for seed, kill_after in [(10, "INCOMPACT"), (11, "VACUUM")]:
        killed = run_and_kill(db, seed, "compact", kill_after, 2 if kill_after == "INCOMPACT" else 1)
        acknowledged |= set(killed.acked)
        assert len(killed.acked) >= 400                      # filled (and acknowledged) before compacting
        with check_store(db, acknowledged) as store:
            assert len(store) >= before                      # compaction never drops a row
            before = len(store)
    with TraceStore(db) as store:
        assert store.compact()["remaining"] == 0             # and it can finish afterwards
        assert len(store) == before and all(store.get_trace(i) is not None for i in acknowledged)

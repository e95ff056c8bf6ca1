"""kill -9 a real writer process mid-stream: every acknowledged trace survives, whole."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from traces.store import TraceStore

WRITER = Path(__file__).with_name("crash_writer.py")
REPO = Path(__file__).resolve().parents[2]


def run_and_kill(db: Path, seed: int, acks_before_kill: int) -> list[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, str(WRITER), str(db), str(seed)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)
    acked: list[str] = []
    deadline = time.monotonic() + 120
    try:
        assert proc.stdout.readline().strip() == "READY", proc.stderr.read()
        while len(acked) < acks_before_kill and time.monotonic() < deadline:
            line = proc.stdout.readline()
            assert line, f"writer died: {proc.stderr.read()}"
            acked.append(line.split()[1])
        os.kill(proc.pid, signal.SIGKILL)           # mid-stream: batches are being written
        rest, _ = proc.communicate(timeout=30)      # acks printed before the kill still count
        acked += [line.split()[1] for line in rest.splitlines() if line.startswith("ACK ")]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    return acked


def test_kill_dash_nine_loses_no_acknowledged_trace(tmp_path):
    db = tmp_path / "node.db"
    rng = random.Random(42)
    acknowledged: list[str] = []
    for round_ in range(3):                         # the same file, killed three times
        acknowledged += run_and_kill(db, seed=round_, acks_before_kill=rng.randint(150, 600))
        with TraceStore(db) as store:               # reopen read-write: WAL recovery runs
            assert store.integrity_check() == "ok"
            for trace_id in acknowledged:
                trace = store.get_trace(trace_id)
                assert trace is not None, f"acknowledged {trace_id} is missing after kill -9"
                assert trace.choices and trace.messages
            # no half record: every row decodes into a valid trace
            stored = [record.to_trace() for record in store.iter_records()]
            assert len(stored) == len(store) >= len(set(acknowledged)) * 0.5   # duplicates fold
    assert len(acknowledged) >= 450

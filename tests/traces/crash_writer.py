"""A trace writer that never stops: the crash test runs it as a subprocess and kills it with -9.

    python tests/traces/crash_writer.py DB SEED

Submits chitchat traces (ids unique to SEED) through the background TraceWriter in small bursts
and prints "ACK <id>" for every trace once its batch is committed, then "READY" once at start.
"""

from __future__ import annotations

import random
import sys
import time

from traces.config import StoreSettings
from traces.samples import chitchat_traces
from traces.writer import TraceWriter


def main() -> None:
    path, seed = sys.argv[1], int(sys.argv[2])
    traces = [t.model_copy(update={"id": f"crash-{seed}-{i}"}) for i, t in enumerate(chitchat_traces(800, seed=seed))]

    def acknowledge(ids: list[str]) -> None:
        sys.stdout.write("".join(f"ACK {trace_id}\n" for trace_id in ids))
        sys.stdout.flush()

    writer = TraceWriter(path, settings=StoreSettings(dictionary_min_records=300, batch_max=64),
                         on_commit=acknowledge)
    print("READY", flush=True)
    rng = random.Random(seed)
    i = 0
    while True:
        for _ in range(rng.randint(1, 40)):
            writer.submit(traces[i % len(traces)].model_copy(update={"id": f"crash-{seed}-{i}"}))
            i += 1
        time.sleep(rng.random() * 0.01)


if __name__ == "__main__":
    main()

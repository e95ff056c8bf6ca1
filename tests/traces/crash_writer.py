"""A trace writer that never stops: the crash test runs it as a subprocess and kills it with -9.

    python tests/traces/crash_writer.py DB SEED stream     # submit traces forever
    python tests/traces/crash_writer.py DB SEED compact    # submit some, then compact while idle

The real background TraceWriter does the work; hooks on its store only print what is happening
(and pause at a few points inside open transactions, so a kill lands there for sure):

    READY                  once, at start
    BATCH <id,id,...>      a batch is handed to TraceStore.add_traces
    INTXN <id,...>         its rows are inserted, the transaction is not committed yet
    INTXN-PAUSE <id,...>   the same, and the writer waits 0.2 s before committing (every 4th batch)
    ACK <id>               committed (one line per trace, from the writer's on_commit)
    FILLED                 compact mode: everything submitted is committed; compaction follows
    INCOMPACT              a compaction step's transaction is open (the writer waits 0.1 s in it)
    VACUUM                 the file is about to be rewritten (VACUUM starts right after)
    COMPACTED              a compaction step returned
"""

from __future__ import annotations

import random
import sys
import time

from traces.config import StoreSettings
from traces.samples import chitchat_traces
from traces.writer import TraceWriter


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def hook_store(store, pause_every: int = 4) -> None:
    state = {"batch": [], "batches": 0, "compacting": False}
    add_traces, train, compact, mark, vacuum_due = (store.add_traces, store._maybe_train_dictionary, store.compact,
                                                    store._compaction_mark, store._vacuum_due)

    def hooked_add_traces(traces):
        state["batch"] = [t.id for t in traces]
        state["batches"] += 1
        say("BATCH " + ",".join(state["batch"]))
        return add_traces(traces)

    def hooked_train():                       # add_traces calls it last, inside its transaction
        pause = state["batches"] % pause_every == 0
        say(("INTXN-PAUSE " if pause else "INTXN ") + ",".join(state["batch"]))
        if pause:
            time.sleep(0.2)
        return train()

    def hooked_compact(*args, **kwargs):
        state["compacting"] = True
        try:
            return compact(*args, **kwargs)
        finally:
            state["compacting"] = False
            say("COMPACTED")

    def hooked_mark():                        # compact() reads it inside its transaction
        if state["compacting"]:
            say("INCOMPACT")
            time.sleep(0.1)
        return mark()

    def hooked_vacuum_due():                  # compact() asks right before VACUUM
        due = vacuum_due()
        if due:
            say("VACUUM")
        return due

    store.add_traces, store._maybe_train_dictionary, store.compact = hooked_add_traces, hooked_train, hooked_compact
    store._compaction_mark, store._vacuum_due = hooked_mark, hooked_vacuum_due


def main() -> None:
    path, seed, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3] if len(sys.argv) > 3 else "stream"
    traces = list(chitchat_traces(800, seed=seed))

    def acknowledge(ids: list[str]) -> None:
        sys.stdout.write("".join(f"ACK {trace_id}\n" for trace_id in ids))
        sys.stdout.flush()

    compacting = mode == "compact"
    # No idle compaction while traces stream in; in compact mode it starts once all are committed.
    settings = StoreSettings(dictionary_min_records=300, batch_max=64, compaction_idle_s=3600,
                             compaction_step=256, compaction_level=3, compaction_vacuum_share=0.0)
    writer = TraceWriter(path, settings=settings, on_commit=acknowledge)
    hook_store(writer.store)
    say("READY")
    rng = random.Random(seed)
    i = 0
    while True:
        for _ in range(rng.randint(1, 40)):
            writer.submit(traces[i % len(traces)].model_copy(update={"id": f"crash-{seed}-{i}"}))
            i += 1
        time.sleep(rng.random() * 0.01)
        if compacting and i >= 400:
            writer.flush()
            settings.compaction_idle_s = 0.05
            writer.submit(traces[0].model_copy(update={"id": f"crash-{seed}-{i}"}))   # wakes the writer up
            writer.flush()
            say("FILLED")
            while True:                       # idle: the writer compacts, then waits
                time.sleep(1)


if __name__ == "__main__":
    main()

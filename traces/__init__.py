"""Traces: what a node keeps of its conversations, with its operator's consent.

    traces.consent      off | local | share, and the per-request opt-out
    traces.redaction    the privacy filter (PII and secrets -> typed placeholders), run before storage
    traces.store        TraceStore: the node-local SQLite store (WAL, zstd + trained dictionaries)
    traces.writer       TraceWriter: redacts and stores in batches on a background thread
    traces.pairs        DPO pairs and KTO rows from feedback and from judges
    traces.judges       verifier judges: Judge = Callable[[reply, task row], float]
    traces.tasks        checkable tasks (arithmetic, units, facts, multiple choice), seeded
    traces.export       to_sft_dataset / to_dpo_dataset / to_kto_dataset, Parquet shards
                        (share-level records only, unless consent="local" for use on the node)
    traces.push         share-level data to a Hugging Face dataset repository
    traces.schemas      Trace, Feedback, PreferencePair, KTORow (pydantic, versioned)

This package imports no torch and no other package of the project.
"""

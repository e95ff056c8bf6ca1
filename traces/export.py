"""A node's store as Hugging Face datasets, in TRL's conversational formats.

    to_sft_dataset(store)  -> {"messages": [{"role", "content"}, ...], "trace_ids": [...]}
    to_dpo_dataset(store)  -> {"prompt": [...], "chosen": [{"role": "assistant", ...}],
                               "rejected": [...], "trace_ids": [...], "origin": "choice" | ...}
    to_kto_dataset(store)  -> {"prompt": [...], "completion": [{"role": "assistant", ...}],
                               "label": bool, "trace_ids": [...], "origin": "thumbs" | ...}

Consent: by default only share-level records are read (`consent="share"`): what the operator
agreed may leave the node. `consent="local"` also reads records kept at level "local", which may
be used only on the node itself (its federated rounds read them this way, in process) and must
never be copied off it.

Filters (all optional): `model_version` (one or several), `since` (unix seconds or datetime),
`limit`. `trace_ids` names the stored traces each row came from (drop it with
`.remove_columns(...)` when training).

SFT rows follow the feedback: the user's correction replaces the reply it corrects, a choice
among n picks the chosen reply (else the first), and a reply voted down is left out. With
`approved_only=True` only replies a user approved (a choice, a thumbs up or a correction) are kept.

`write_parquet_shards` writes zstd-compressed Parquet files that
`datasets.load_dataset("parquet", data_dir=DIR)` reads. `datasets` is imported lazily and never
pulls torch in.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

from traces.schemas import Feedback
from traces.store import TraceStore

if TYPE_CHECKING:
    import datasets

FORMATS = ("sft", "dpo", "kto")
CONSENTS = ("share", "local")       # what a reader asks for: share-level only, or local + share
DEFAULT_CONSENT = "share"           # privacy by default: only what may leave the node
MANIFEST_NAME = ".swarmloop-export.json"     # a dot file: load_dataset's data file patterns skip it


def _open(store: TraceStore | Path | str) -> TraceStore:
    return store if isinstance(store, TraceStore) else TraceStore(store, readonly=True)


def _features(kind: str) -> "datasets.Features":
    from datasets import Features, List, Value

    message = {"role": Value("string"), "content": Value("string")}
    ids = List(Value("string"))
    if kind == "sft":
        return Features({"messages": List(message), "trace_ids": ids})
    if kind == "dpo":
        return Features({"prompt": List(message), "chosen": List(message), "rejected": List(message),
                         "trace_ids": ids, "origin": Value("string")})
    return Features({"prompt": List(message), "completion": List(message), "label": Value("bool"),
                     "trace_ids": ids, "origin": Value("string")})


def _msg(message: Any) -> dict[str, str]:
    return {"role": message.role, "content": message.content}


def _feedback_by_trace(store: TraceStore) -> dict[str, list[Feedback]]:
    by_trace: dict[str, list[Feedback]] = {}
    for feedback in store.iter_feedback():
        by_trace.setdefault(feedback.trace_id, []).append(feedback)
    return by_trace


def _check_consent(consent: str) -> str:
    if consent not in CONSENTS:
        raise ValueError(f"consent must be 'share' (records that may leave the node) or 'local' "
                         f"(also local-only records, for use on this node), not {consent!r}")
    return consent


def sft_rows(store: TraceStore, *, model_version: str | Sequence[str] | None = None,
             since: float | datetime | None = None, consent: str = DEFAULT_CONSENT,
             limit: int | None = None, approved_only: bool = False) -> Iterator[dict[str, Any]]:
    """`approved_only` keeps replies a user approved (chosen among n, thumbed up, or corrected):
    fine-tuning a model on its own unrated replies teaches it nothing new and drifts it from
    human text, so the loop trains on approved replies only (rejection-sampling fine-tuning)."""
    feedback = _feedback_by_trace(store)
    produced = 0
    for record in store.iter_records(model_version=model_version, since=since, consent=_check_consent(consent)):
        replies = record.replies
        chosen_index, corrections, votes = 0, {}, {}
        for item in feedback.get(record.id, []):          # in order: the latest wins
            if item.choice is not None:
                chosen_index = item.choice
            if item.correction is not None:
                corrections[item.choice_index] = item.correction
            if item.thumbs is not None:
                votes[item.choice_index] = item.thumbs
        chose = any(item.choice is not None for item in feedback.get(record.id, []))
        if not chose and 1 in votes.values():
            chosen_index = min(i for i, vote in votes.items() if vote == 1)   # a thumbs up picks its reply
        approved = chose or chosen_index in corrections or votes.get(chosen_index) == 1
        if approved_only and not approved:
            continue
        if chosen_index in corrections:
            reply = corrections[chosen_index]
        elif votes.get(chosen_index) == -1:
            continue
        else:
            reply = replies[chosen_index]
        if not reply.strip():
            continue
        yield {"messages": record.messages + [{"role": "assistant", "content": reply}], "trace_ids": [record.id]}
        produced += 1
        if limit is not None and produced >= limit:
            return


def dpo_rows(store: TraceStore, *, consent: str = DEFAULT_CONSENT, **filters: Any) -> Iterator[dict[str, Any]]:
    for pair in store.iter_pairs("dpo", consent=_check_consent(consent), **filters):
        yield {"prompt": [_msg(m) for m in pair.prompt], "chosen": [_msg(pair.chosen)],
               "rejected": [_msg(pair.rejected)], "trace_ids": list(pair.trace_ids), "origin": pair.source}


def kto_rows(store: TraceStore, *, consent: str = DEFAULT_CONSENT, **filters: Any) -> Iterator[dict[str, Any]]:
    for row in store.iter_pairs("kto", consent=_check_consent(consent), **filters):
        yield {"prompt": [_msg(m) for m in row.prompt], "completion": [_msg(row.completion)],
               "label": row.label, "trace_ids": list(row.trace_ids), "origin": row.source}


_ROWS = {"sft": sft_rows, "dpo": dpo_rows, "kto": kto_rows}


def rows(kind: str, store: TraceStore | Path | str, *, consent: str = DEFAULT_CONSENT,
         **filters: Any) -> list[dict[str, Any]]:
    if kind not in _ROWS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, not {kind!r}")
    filters["consent"] = _check_consent(consent)
    opened = _open(store)
    try:
        return list(_ROWS[kind](opened, **filters))
    finally:
        if opened is not store:
            opened.close()


def to_dataset(kind: str, store: TraceStore | Path | str, *, consent: str = DEFAULT_CONSENT,
               **filters: Any) -> "datasets.Dataset":
    """`kind` rows as a Dataset; share-level records only unless `consent="local"` (on-node use)."""
    from datasets import Dataset

    features = _features(kind)
    found = rows(kind, store, consent=consent, **filters)
    if not found:   # from_list cannot build an empty table with a schema
        return Dataset.from_dict({name: [] for name in features}, features=features)
    return Dataset.from_list(found, features=features)


def to_sft_dataset(store: TraceStore | Path | str, *, model_version: str | Sequence[str] | None = None,
                   since: float | datetime | None = None, consent: str = DEFAULT_CONSENT,
                   limit: int | None = None, approved_only: bool = False) -> "datasets.Dataset":
    return to_dataset("sft", store, model_version=model_version, since=since, consent=consent, limit=limit,
                      approved_only=approved_only)


def to_dpo_dataset(store: TraceStore | Path | str, *, model_version: str | Sequence[str] | None = None,
                   since: float | datetime | None = None, consent: str = DEFAULT_CONSENT,
                   limit: int | None = None, origin: str | None = None) -> "datasets.Dataset":
    """`origin` keeps pairs from one source: "choice", "correction", "judge" (any judge), "judge:numeric"."""
    return to_dataset("dpo", store, model_version=model_version, since=since, consent=consent,
                      limit=limit, origin=origin)


def to_kto_dataset(store: TraceStore | Path | str, *, model_version: str | Sequence[str] | None = None,
                   since: float | datetime | None = None, consent: str = DEFAULT_CONSENT,
                   limit: int | None = None, origin: str | None = None) -> "datasets.Dataset":
    return to_dataset("kto", store, model_version=model_version, since=since, consent=consent,
                      limit=limit, origin=origin)


def write_parquet_shards(dataset: "datasets.Dataset", out_dir: Path | str, shard_rows: int = 50_000,
                         split: str = "train", manifest: dict[str, Any] | None = None) -> list[Path]:
    """zstd Parquet shards named `{split}-00000-of-00003.parquet` (the Hub's convention), plus a
    small manifest (a dot file, which data file patterns ignore). Replaces earlier shards of `split`."""
    import pyarrow.parquet as pq

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob(f"{split}-*-of-*.parquet"):
        old.unlink()
    table = dataset.data.table
    count = max(1, -(-len(dataset) // shard_rows))
    paths = []
    for index in range(count):
        path = out / f"{split}-{index:05d}-of-{count:05d}.parquet"
        pq.write_table(table.slice(index * shard_rows, shard_rows), path, compression="zstd")
        paths.append(path)
    info = {"rows": len(dataset), "shards": [p.name for p in paths], "columns": dataset.column_names,
            **(manifest or {})}
    (out / MANIFEST_NAME).write_text(json.dumps(info, indent=2) + "\n")
    return paths

"""Training data in TRL's conversational formats: checks, and loading from a folder or a trace store.

    sft  {"messages": [{"role", "content"}, ...]}                      at least one assistant turn
    dpo  {"prompt": [msgs], "chosen": [assistant msg], "rejected": [assistant msg]}
    kto  {"prompt": [msgs], "completion": [assistant msg], "label": bool}

An optional `node_id` column says which node a row came from (the manifest counts examples by node).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Literal

Kind = Literal["sft", "dpo", "kto"]
KINDS: tuple[Kind, ...] = ("sft", "dpo", "kto")
REQUIRED_COLUMNS: dict[str, tuple[str, ...]] = {
    "sft": ("messages",),
    "dpo": ("prompt", "chosen", "rejected"),
    "kto": ("prompt", "completion", "label"),
}
NODE_COLUMN = "node_id"
_ROLES = {"system", "developer", "user", "assistant", "tool"}


class DatasetFormatError(ValueError):
    """The data is not in the TRL conversational format the recipe needs; the message says where."""


def _check_messages(messages: Any, where: str, *, assistant_only: bool = False) -> None:
    if not isinstance(messages, list) or not messages:
        raise DatasetFormatError(f"{where}: expected a non-empty list of messages")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("content"), str):
            raise DatasetFormatError(f"{where}[{i}]: expected {{'role': ..., 'content': str}}")
        role = message.get("role")
        if role not in _ROLES:
            raise DatasetFormatError(f"{where}[{i}]: unknown role {role!r}")
        if assistant_only and role != "assistant":
            raise DatasetFormatError(f"{where}[{i}]: expected an assistant message, got {role!r}")


def check_dataset(dataset: Any, kind: str) -> None:
    """Raise DatasetFormatError naming the first row and field that do not fit `kind`."""
    if kind not in REQUIRED_COLUMNS:
        raise DatasetFormatError(f"unknown dataset kind {kind!r} (expected one of {', '.join(KINDS)})")
    columns = set(dataset.column_names)
    missing = [c for c in REQUIRED_COLUMNS[kind] if c not in columns]
    if missing:
        raise DatasetFormatError(
            f"{kind} data needs columns {', '.join(REQUIRED_COLUMNS[kind])}; missing {', '.join(missing)} "
            f"(found {', '.join(sorted(columns)) or 'none'})"
        )
    if len(dataset) == 0:
        raise DatasetFormatError(f"{kind} data is empty")
    for index, row in enumerate(dataset.select_columns(list(REQUIRED_COLUMNS[kind]))):
        where = f"row {index}"
        if kind == "sft":
            _check_messages(row["messages"], f"{where}: messages")
            if not any(m["role"] == "assistant" for m in row["messages"]):
                raise DatasetFormatError(f"{where}: messages has no assistant turn to learn from")
        else:
            _check_messages(row["prompt"], f"{where}: prompt")
            answers = ("chosen", "rejected") if kind == "dpo" else ("completion",)
            for column in answers:
                _check_messages(row[column], f"{where}: {column}", assistant_only=True)
            if kind == "kto" and not isinstance(row["label"], bool):
                raise DatasetFormatError(f"{where}: label must be true or false")


def examples_by_node(dataset: Any) -> dict[str, int]:
    """Row counts per source node (`node_id` column), or {"local": n} when the data does not say."""
    if NODE_COLUMN in dataset.column_names:
        return dict(sorted(Counter(str(v) for v in dataset[NODE_COLUMN]).items()))
    return {"local": len(dataset)}


def _data_files(path: Path) -> tuple[str, list[str]]:
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
    by_format: dict[str, list[str]] = {}
    for file in files:
        fmt = {".parquet": "parquet", ".jsonl": "json", ".json": "json"}.get(file.suffix)
        if fmt:
            by_format.setdefault(fmt, []).append(str(file))
    if not by_format:
        raise DatasetFormatError(f"{path}: no .parquet, .jsonl or .json files")
    if len(by_format) > 1:
        raise DatasetFormatError(f"{path}: mixes Parquet and JSON files; keep one format per folder")
    return next(iter(by_format.items()))


def load_dataset_dir(path: Path | str, kind: str) -> Any:
    """A folder of Parquet shards (what `swarmloop traces export` writes) or JSONL files, or one file."""
    from datasets import Dataset

    path = Path(path)
    if not path.exists():
        raise DatasetFormatError(f"{path}: no such file or folder")
    fmt, files = _data_files(path)
    try:
        dataset = Dataset.from_parquet(files) if fmt == "parquet" else Dataset.from_json(files)
    except Exception as exc:  # datasets raises many types for unreadable files
        raise DatasetFormatError(f"{path}: cannot read {fmt} data ({exc.__class__.__name__}: {str(exc)[:200]})") from None
    check_dataset(dataset, kind)
    return dataset


def load_task_rows(path: Path | str) -> list[dict[str, Any]]:
    """Evaluation tasks (traces.tasks rows: "messages" or "prompt", "judge", "answer") from a folder
    or file of Parquet/JSONL, as plain dicts."""
    from datasets import Dataset

    from traces.judges import JUDGES, judge_for

    path = Path(path)
    if not path.exists():
        raise DatasetFormatError(f"{path}: no such file or folder")
    fmt, files = _data_files(path)
    try:
        dataset = Dataset.from_parquet(files) if fmt == "parquet" else Dataset.from_json(files)
    except Exception as exc:
        raise DatasetFormatError(f"{path}: cannot read {fmt} data ({exc.__class__.__name__}: {str(exc)[:200]})") from None
    rows = [dict(row) for row in dataset]
    for index, row in enumerate(rows):
        conversation = row.get("messages") if row.get("messages") is not None else row.get("prompt")
        if isinstance(conversation, str):
            conversation = row["messages"] = [{"role": "user", "content": conversation}]
        _check_messages(conversation, f"{path}: row {index}: messages")
        if not row.get("judge"):
            raise DatasetFormatError(f"{path}: row {index}: a task needs a `judge` (numeric, exact, contains, choice, regex)")
        if judge_for(row) is None:
            raise DatasetFormatError(f"{path}: row {index}: unknown judge {row['judge']!r} (known: {', '.join(JUDGES)})")
    if not rows:
        raise DatasetFormatError(f"{path}: no tasks")
    return rows


def save_dataset_dir(rows: Iterable[dict[str, Any]], path: Path | str) -> Path:
    """Write rows as one Parquet shard (tests, benchmarks and examples use it)."""
    from datasets import Dataset

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    Dataset.from_list(list(rows)).to_parquet(str(path / "data-00000.parquet"))
    return path


def load_store_dataset(store: Path | str, kind: str, *, consent: str = "share") -> Any:
    """The rows of a node's trace store, via traces.export, with a `node_id` column from the traces
    they came from. consent="share" (the default) keeps only what the operator agreed to share;
    "local" also takes traces kept for local use only."""
    from traces import export
    from traces.store import TraceStore

    if consent not in ("share", "local"):
        raise DatasetFormatError(f"consent must be share or local, not {consent!r}")
    with TraceStore(store, readonly=True) as opened:
        dataset = export.to_dataset(kind, opened, consent=consent)
        node_of = {record.id: record.source["node_id"] for record in opened.iter_records(consent=consent)}
    if len(dataset) == 0:
        raise DatasetFormatError(f"{store}: no {kind} rows with consent {consent!r}")
    nodes = [node_of.get(ids[0], "unknown") if ids else "unknown" for ids in dataset["trace_ids"]]
    dataset = dataset.add_column(NODE_COLUMN, nodes)
    check_dataset(dataset, kind)
    return dataset

"""`swarmloop traces ...`: redact text, inspect, export, push and maintain a node's trace store."""

from __future__ import annotations

import json
import re
import sys
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any, Optional

import typer

from swarmloop.errors import UserError

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)

STORE_HELP = "Path of the node's trace store (the SQLite file `swarmloop node serve --store` writes)."
CONFIG_HELP = "TOML file with [store] and [privacy] settings (see configs/store.toml); defaults when omitted."
_CHUNK_LINES = 1000


def _config(path: Optional[Path]):
    from swarmloop.configfile import load_config
    from traces.config import TracesConfig

    return load_config(path, TracesConfig)


def _open_store(path: Path, readonly: bool = True, settings: Any = None):
    from traces.store import StoreError, TraceStore

    if not path.is_file():
        raise UserError(f"{path}: no such trace store")
    try:
        return TraceStore(path, readonly=readonly, settings=settings)
    except StoreError as exc:
        raise UserError(str(exc)) from None


def _parse_since(value: Optional[str]) -> Optional[float]:
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(value).timestamp()
    except ValueError:
        raise UserError(f"--since {value!r}: expected unix seconds or an ISO date such as 2026-11-01T00:00") from None


# ---------------------------------------------------------------------------------------- redact

def _read_chunk(lines: list[tuple[int, str]]) -> list[tuple[int, str]]:
    texts = []
    for number, line in lines:
        try:
            item = json.loads(line)
        except ValueError as exc:
            raise UserError(f"line {number}: not valid JSON ({exc.msg})") from None
        if not isinstance(item, dict) or "text" not in item:
            raise UserError(f'line {number}: expected an object with a "text" field')
        if not isinstance(item["text"], str):
            raise UserError(f'line {number}: "text" must be a string')
        texts.append((number, item["text"]))
    return texts


@app.command()
def redact(
    config: Optional[Path] = typer.Option(None, "--config", help=CONFIG_HELP),
    shared: bool = typer.Option(False, "--shared-placeholders",
                                help="Number placeholders across all lines (one conversation), not per line."),
) -> None:
    """Redact PII and secrets: stdin JSONL {"text"} -> stdout JSONL {"text", "spans"}.

    Each span is {"start", "end", "type"} in the input text's character offsets. A bad line stops
    the command with a one-line error naming the line (exit 2). Person names need a spaCy pipeline
    (the `names` extra); whether they are on is said once on stderr."""
    from traces.redaction import PrivacyFilter

    cfg = _config(config)
    try:
        privacy = PrivacyFilter(cfg.privacy)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    print(f"swarmloop traces redact: person names {privacy.names_status}", file=sys.stderr)
    numbering: dict = {}

    def flush(chunk: list[tuple[int, str]]) -> None:
        texts = [text for _, text in _read_chunk(chunk)]
        spans_per_text = privacy.scan_many(texts)
        out = []
        for text, spans in zip(texts, spans_per_text):
            redacted = privacy.apply_placeholders(text, spans, numbering if shared else None)
            out.append(json.dumps({"text": redacted, "spans": [
                {"start": s.start, "end": s.end, "type": s.type} for s in spans]}, ensure_ascii=False))
        sys.stdout.write("\n".join(out) + "\n")
        sys.stdout.flush()

    chunk: list[tuple[int, str]] = []
    for number, line in enumerate(sys.stdin, start=1):
        if not line.strip():
            continue
        chunk.append((number, line))
        if len(chunk) >= _CHUNK_LINES:
            flush(chunk)
            chunk = []
    if chunk:
        flush(chunk)


# ---------------------------------------------------------------------------------------- stats

@app.command()
def stats(
    store: Path = typer.Option(..., "--store", help=STORE_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print the numbers as one JSON object."),
) -> None:
    """Counts by model version, consent level and redaction type; feedback, pairs and bytes."""
    opened = _open_store(store)
    try:
        numbers = opened.stats()
    finally:
        opened.close()
    if as_json:
        print(json.dumps(numbers, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"trace store {store}", show_header=False)
    table.add_column("what")
    table.add_column("value")
    bytes_ = numbers["bytes"]
    rows = [
        ("node", f"{numbers['node_id']} (consent {numbers['node_consent']})"),
        ("traces", str(numbers["traces"])),
        ("duplicates folded", str(numbers["duplicates_seen"])),
        ("traces with n > 1 choices", str(numbers["traces_with_n_choices"])),
        ("by model version", ", ".join(f"{k}: {v}" for k, v in numbers["by_model_version"].items()) or "-"),
        ("by consent", ", ".join(f"{k}: {v}" for k, v in numbers["by_consent"].items()) or "-"),
        ("redacted traces", str(numbers["redacted_traces"])),
        ("redactions by type", ", ".join(f"{k}: {v}" for k, v in numbers["redactions_by_type"].items()) or "-"),
        ("feedback", ", ".join(f"{k}: {v}" for k, v in numbers["feedback_by_kind"].items()) or "-"),
        ("DPO pairs", ", ".join(f"{k}: {v}" for k, v in numbers["pairs"].get("dpo", {}).items()) or "-"),
        ("KTO rows", ", ".join(f"{k}: {v}" for k, v in numbers["pairs"].get("kto", {}).items()) or "-"),
        ("bytes", f"file {bytes_['file']:,}, payloads {bytes_['payloads']:,}, dictionaries {bytes_['dictionaries']:,}"),
    ]
    for what, value in rows:
        table.add_row(what, value)
    Console().print(table)


# ---------------------------------------------------------------------------------------- export

@app.command()
def export(
    store: Path = typer.Option(..., "--store", help=STORE_HELP),
    format: str = typer.Option(..., "--format", help="sft (messages), dpo (prompt/chosen/rejected) or kto (prompt/completion/label)."),
    out: Path = typer.Option(..., "--out", help="Folder for the zstd Parquet shards (datasets.load_dataset('parquet', data_dir=OUT) reads it)."),
    model_version: Optional[list[str]] = typer.Option(None, "--model-version", help="Keep rows of this model version (repeatable)."),
    since: Optional[str] = typer.Option(None, "--since", help="Keep rows created at or after this time (unix seconds or ISO date)."),
    consent: str = typer.Option(
        "share", "--consent",
        help="share (default): only records captured with consent 'share', the ones that may leave the node. "
             "local: also records kept at level 'local', for use on this node only (e.g. training here); "
             "never copy that folder off the node."),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="At most this many rows."),
    approved_only: bool = typer.Option(
        False, "--approved-only",
        help="sft only: keep just the replies a user approved (chosen among n samples, thumbed up, or corrected)."),
    config: Optional[Path] = typer.Option(None, "--config", help=CONFIG_HELP),
) -> None:
    """Export traces (sft) or preference data (dpo, kto) in TRL's conversational formats.

    Only share-level records by default: records kept at consent 'local' never leave the node."""
    from rich.console import Console

    from traces.export import FORMATS, to_dataset, write_parquet_shards

    if format not in FORMATS:
        raise UserError(f"--format must be one of {', '.join(FORMATS)}, not {format!r}")
    if consent not in ("local", "share"):
        raise UserError(f"--consent must be share or local, not {consent!r}")
    if approved_only and format != "sft":
        raise UserError("--approved-only applies to --format sft (dpo and kto rows come from feedback already)")
    filters = {"approved_only": True} if approved_only else {}
    cfg = _config(config)
    opened = _open_store(store)
    console = Console(stderr=True)
    try:
        with console.status(f"reading {format} rows from {store}"):
            dataset = to_dataset(format, opened, model_version=model_version or None,
                                 since=_parse_since(since), consent=consent, limit=limit, **filters)
        with console.status(f"writing {len(dataset)} rows to {out}"):
            paths = write_parquet_shards(dataset, out, shard_rows=cfg.store.export_shard_rows,
                                         manifest={"format": format, "store": str(store), "consent": consent})
        local_only = opened.count_by_consent().get("local", 0) if consent == "share" else 0
    finally:
        opened.close()
    print(f"wrote {len(dataset)} {format} rows in {len(paths)} shard(s) to {out}")
    if local_only:
        print(f"left out {local_only} trace(s) kept at consent 'local' (for this node only; "
              "--consent local exports them for on-node use)", file=sys.stderr)


# ---------------------------------------------------------------------------------------- push

@app.command()
def push(
    store: Path = typer.Option(..., "--store", help=STORE_HELP),
    repo_id: str = typer.Option(..., "--repo-id", help="Hugging Face dataset repository, ORG/NAME."),
    public: bool = typer.Option(False, "--public", help="Create the repository public (default: private)."),
    folder: Optional[Path] = typer.Option(None, "--folder", help="Where to build the dataset before upload (default: a temp folder)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Build the dataset and print the upload calls, upload nothing."),
    token: Optional[str] = typer.Option(None, "--token", envvar="HF_TOKEN", help="Hub token (default: $HF_TOKEN or the cached login)."),
    config: Optional[Path] = typer.Option(None, "--config", help=CONFIG_HELP),
) -> None:
    """Push share-level traces and pairs to a Hub dataset. Refuses unless the node runs with consent 'share'."""
    from traces.push import PushRefused, prepare_push, upload

    if not re.fullmatch(r"[\w.-]+/[\w.-]+", repo_id):
        raise UserError(f"--repo-id {repo_id!r}: expected ORG/NAME")
    _open_store(store).close()
    cfg = _config(config)
    target = folder or Path(tempfile.mkdtemp(prefix="swarmloop-push-"))
    try:
        plan = prepare_push(store, repo_id, target, private=not public, shard_rows=cfg.store.export_shard_rows)
    except PushRefused as exc:
        raise UserError(str(exc)) from None
    print(f"dataset ready: {plan.describe()}")
    if dry_run:
        for call in plan.calls:
            print(json.dumps(call))
        return
    try:
        url = upload(plan, token)
    except Exception as exc:   # offline, no token, no permission: one line, not a traceback
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"upload to {repo_id} failed ({type(exc).__name__}: {first_line}); the dataset is in {target}") from None
    print(f"pushed: {url}")


# ---------------------------------------------------------------------------------------- maintenance

@app.command()
def compact(
    store: Path = typer.Option(..., "--store", help=STORE_HELP),
    config: Optional[Path] = typer.Option(None, "--config", help=CONFIG_HELP),
) -> None:
    """Seal older records into compressed blocks, recompress the rest with the newest dictionary at
    the compaction level, then rewrite the file densely (what the node's writer does while idle)."""
    cfg = _config(config)
    opened = _open_store(store, readonly=False, settings=cfg.store)
    try:
        before = store.stat().st_size
        result = opened.compact()
        opened.checkpoint()
    finally:
        opened.close()
    print(f"sealed {result['sealed']} records into blocks, recompressed {result['recompressed']}; "
          f"file {before:,} -> {store.stat().st_size:,} bytes")


@app.command()
def prune(
    store: Path = typer.Option(..., "--store", help=STORE_HELP),
    max_age_days: Optional[float] = typer.Option(None, "--max-age-days", help="Delete traces older than this (default: from config)."),
    max_bytes: Optional[int] = typer.Option(None, "--max-bytes", help="Delete the oldest traces until the data fits (default: from config)."),
    config: Optional[Path] = typer.Option(None, "--config", help=CONFIG_HELP),
) -> None:
    """Apply retention: by age, then by size (feedback and pairs of deleted traces go too)."""
    cfg = _config(config)
    opened = _open_store(store, readonly=False, settings=cfg.store)
    try:
        result = opened.apply_retention(max_age_days if max_age_days is not None else cfg.store.retention_max_age_days,
                                        max_bytes if max_bytes is not None else cfg.store.retention_max_bytes)
        opened.checkpoint()
    finally:
        opened.close()
    print(f"deleted {result['deleted_by_age']} traces by age and {result['deleted_by_size']} by size")


@app.command()
def judge(
    store: Path = typer.Option(..., "--store", help=STORE_HELP),
    judge_name: Optional[str] = typer.Option(None, "--judge", help="numeric, exact, contains, choice or regex for every trace; default: the judge each trace's metadata names."),
    margin: float = typer.Option(0.0, "--margin", help="Pair the best choice only with choices scoring more than this much lower."),
    kto: bool = typer.Option(False, "--kto", help="Also write one KTO row per choice (desirable when its score >= 0.5)."),
) -> None:
    """Score the n > 1 choices of stored traces with verifier judges and store the DPO pairs."""
    from traces.judges import JUDGES
    from traces.pairs import judge_store

    if judge_name is not None and judge_name not in JUDGES:
        raise UserError(f"--judge must be one of {', '.join(JUDGES)}, not {judge_name!r}")
    opened = _open_store(store, readonly=False)
    try:
        counts = judge_store(opened, JUDGES[judge_name] if judge_name else None, name=judge_name,
                             margin=margin, with_kto=kto)
    finally:
        opened.close()
    print(f"judged {counts['judged']} of {counts['traces']} traces with n > 1: {counts['pairs']} DPO pairs, {counts['kto']} KTO rows")

"""Push a node's share-level data to a Hugging Face dataset repository.

Only records captured while the node ran with consent "share" ever leave the node, and only when
the node still runs with "share" (the level the capture hook last wrote into the store). The
dataset is built locally first (one folder: a config per format, zstd Parquet shards, a dataset
card), then uploaded with two huggingface_hub calls:

    HfApi(token=...).create_repo(repo_id, repo_type="dataset", private=True, exist_ok=True)
    HfApi(token=...).upload_folder(repo_id=repo_id, repo_type="dataset", folder_path=folder, ...)
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from traces.export import FORMATS, to_dataset, write_parquet_shards
from traces.store import TraceStore


class PushRefused(Exception):
    """The store may not (or has nothing to) be pushed; the message says why."""


@dataclass
class PushPlan:
    repo_id: str
    folder: Path
    private: bool
    rows: dict[str, int]
    calls: list[dict[str, Any]] = field(default_factory=list)

    def describe(self) -> str:
        counts = ", ".join(f"{kind} {n}" for kind, n in self.rows.items())
        return f"{self.repo_id} ({'private' if self.private else 'public'}): {counts} rows from {self.folder}"


def _card(repo_id: str, rows: dict[str, int], node_id: str | None) -> str:
    configs = "\n".join(
        f"- config_name: {kind}\n  data_files:\n  - split: train\n    path: {kind}/train-*.parquet"
        for kind, n in rows.items() if n)
    return f"""---
configs:
{configs}
tags:
- swarmloop
- chat-traces
---
# {repo_id}

Chat traces and preference data shared by a swarmloop inference node{f' ({node_id})' if node_id else ''}.
Only conversations captured while the node's operator had chosen consent level `share` are here;
every text went through the node's privacy filter (e-mails, phone numbers, cards, IBANs, IP
addresses, national IDs, keys and secrets replaced by typed placeholders such as `<EMAIL_1>`).

| config | format (TRL conversational) | rows |
|---|---|---|
""" + "\n".join(f"| {kind} | {desc} | {rows.get(kind, 0)} |" for kind, desc in [
        ("sft", "`messages`"), ("dpo", "`prompt`, `chosen`, `rejected`"), ("kto", "`prompt`, `completion`, `label`")]) + \
        f"\n\nBuilt {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. Each row's `trace_ids` names its source traces.\n"


def prepare_push(store_path: Path | str, repo_id: str, folder: Path | str, *, private: bool = True,
                 shard_rows: int = 50_000) -> PushPlan:
    """Build the dataset folder for `repo_id`; raise PushRefused unless the store may be shared."""
    store = TraceStore(store_path, readonly=True)
    try:
        consent = store.node_consent
        if consent != "share":
            raise PushRefused(
                f"{store_path}: push needs consent 'share', but this node runs with consent "
                f"{consent!r}; records are pushed only with the operator's consent to share")
        node_id = store.get_meta("node_id")
        folder = Path(folder)
        rows: dict[str, int] = {}
        for kind in FORMATS:
            dataset = to_dataset(kind, store, consent="share")
            rows[kind] = len(dataset)
            if len(dataset):
                write_parquet_shards(dataset, folder / kind, shard_rows=shard_rows,
                                     manifest={"format": kind, "consent": "share", "node_id": node_id})
    finally:
        store.close()
    if not any(rows.values()):
        raise PushRefused(f"{store_path}: nothing to push (no trace was captured with consent 'share')")
    (folder / "README.md").write_text(_card(repo_id, rows, node_id))
    plan = PushPlan(repo_id=repo_id, folder=folder, private=private, rows=rows)
    plan.calls = [
        {"call": "HfApi.create_repo", "repo_id": repo_id, "repo_type": "dataset", "private": private, "exist_ok": True},
        {"call": "HfApi.upload_folder", "repo_id": repo_id, "repo_type": "dataset", "folder_path": str(folder),
         "commit_message": f"swarmloop: {json.dumps(rows)}"},
    ]
    return plan


def upload(plan: PushPlan, token: str | None = None) -> str:
    """Run the plan's two Hub calls; returns the commit URL."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(plan.repo_id, repo_type="dataset", private=plan.private, exist_ok=True)
    commit = api.upload_folder(repo_id=plan.repo_id, repo_type="dataset", folder_path=str(plan.folder),
                               commit_message=plan.calls[1]["commit_message"])
    return str(getattr(commit, "commit_url", commit))

"""Export to datasets in TRL's conversational formats, Parquet round trip, and no torch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import datasets
import pytest

from traces.export import to_dpo_dataset, to_kto_dataset, to_sft_dataset, write_parquet_shards
from traces.ingest import redact_traces
from traces.redaction import PrivacyFilter
from traces.schemas import Choice, Feedback
from traces.store import TraceStore

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def store_path(tmp_path_factory, chitchat) -> Path:
    path = tmp_path_factory.mktemp("export") / "node.db"
    traces = redact_traces(PrivacyFilter(), chitchat[:60])
    v1 = traces[0].model.model_copy(update={"version": "v0001"})
    made = []
    for i, t in enumerate(traces):
        update = {"created_at": 2000.0 + i, "consent": "share" if i % 3 == 0 else "local"}
        if i >= 30:
            update["model"] = v1
        if i < 6:
            update["choices"] = [Choice(index=0, text=f"first {i}"), Choice(index=1, text=f"second {i}")]
        made.append(t.model_copy(update=update))
    with TraceStore(path) as store:
        store.add_traces(made)
        store.record_feedback(Feedback(id="f0", trace_id=made[0].id, choice=1))
        store.record_feedback(Feedback(id="f1", trace_id=made[1].id, correction="a better reply", choice_index=0))
        store.record_feedback(Feedback(id="f2", trace_id=made[2].id, thumbs=-1))
        store.record_feedback(Feedback(id="f3", trace_id=made[3].id, thumbs=1, choice_index=1))
        store.record_feedback(Feedback(id="f4", trace_id=made[31].id, thumbs=1))
    return path


def test_sft_rows_follow_the_feedback(store_path):
    ds = to_sft_dataset(store_path, consent="local")
    assert ds.column_names == ["messages", "trace_ids"]
    by_id = {row["trace_ids"][0]: row for row in ds}
    with TraceStore(store_path, readonly=True) as store:
        traces = list(store.iter_traces())
    assert len(ds) == 59                                               # the voted-down reply is left out
    assert traces[2].id not in by_id
    assert by_id[traces[0].id]["messages"][-1] == {"role": "assistant", "content": "second 0"}   # the choice
    assert by_id[traces[1].id]["messages"][-1]["content"] == "a better reply"                   # the correction
    assert by_id[traces[4].id]["messages"][-1]["content"] == "first 4"
    row = by_id[traces[10].id]
    assert row["messages"][:-1] == [{"role": m.role, "content": m.content} for m in traces[10].messages]


def test_approved_only_keeps_replies_a_user_approved(store_path):
    with TraceStore(store_path, readonly=True) as store:
        traces = list(store.iter_traces())
    ds = to_sft_dataset(store_path, consent="local", approved_only=True)
    by_id = {row["trace_ids"][0]: row["messages"][-1]["content"] for row in ds}
    # chosen among n, corrected, thumbed up (choice 1 of trace 3, and trace 31); not the voted-down one
    assert set(by_id) == {traces[0].id, traces[1].id, traces[3].id, traces[31].id}
    assert by_id[traces[0].id] == "second 0"
    assert by_id[traces[1].id] == "a better reply"
    assert by_id[traces[3].id] == "second 3"                           # the reply the thumbs up was for


def test_dpo_and_kto_formats(store_path):
    dpo = to_dpo_dataset(store_path, consent="local")
    assert dpo.column_names == ["prompt", "chosen", "rejected", "trace_ids", "origin"]
    assert sorted(dpo["origin"]) == ["choice", "correction"]
    row = dpo[dpo["origin"].index("correction")]
    assert row["chosen"] == [{"role": "assistant", "content": "a better reply"}]
    assert row["rejected"] == [{"role": "assistant", "content": "first 1"}]
    assert row["prompt"][-1]["role"] in ("user", "assistant") and len(row["trace_ids"]) == 1
    kto = to_kto_dataset(store_path, consent="local")
    assert kto.column_names == ["prompt", "completion", "label", "trace_ids", "origin"]
    assert sorted(kto["label"]) == [False, True, True]
    assert to_kto_dataset(store_path, model_version="v0001", consent="local")["label"] == [True]


def test_only_share_level_records_are_exported_by_default(store_path):
    with TraceStore(store_path, readonly=True) as store:
        level = {record.id: record.consent for record in store.iter_records()}
    shared = to_sft_dataset(store_path)
    assert len(shared) == 20 and {level[row["trace_ids"][0]] for row in shared} == {"share"}
    assert len(to_sft_dataset(store_path, consent="share")) == 20
    assert len(to_dpo_dataset(store_path)) == 1                        # trace 0 is share-level, trace 1 not
    assert len(to_kto_dataset(store_path)) == 1                        # trace 3 is share-level, 2 and 31 not
    assert len(to_sft_dataset(store_path, consent="local")) == 59      # on the node: local-only records too
    with pytest.raises(ValueError, match="consent must be"):
        to_sft_dataset(store_path, consent=None)
    with pytest.raises(ValueError, match="consent must be"):
        to_dpo_dataset(store_path, consent="off")


def test_filters(store_path):
    local = {"consent": "local"}
    assert len(to_sft_dataset(store_path, model_version="v0001", **local)) == 30
    assert len(to_sft_dataset(store_path, model_version=["v0000", "v0001"], **local)) == 59
    assert len(to_sft_dataset(store_path, since=2050.0, **local)) == 10
    assert len(to_sft_dataset(store_path, since=2050.0)) == 3           # 51, 54, 57 are share-level
    assert len(to_sft_dataset(store_path, limit=5, **local)) == 5
    assert len(to_dpo_dataset(store_path, origin="correction", **local)) == 1
    assert len(to_dpo_dataset(store_path, origin="correction")) == 0
    assert len(to_sft_dataset(store_path, model_version="v9999", **local)) == 0


def test_parquet_shards_round_trip_through_load_dataset(store_path, tmp_path):
    ds = to_sft_dataset(store_path, consent="local")
    paths = write_parquet_shards(ds, tmp_path / "out", shard_rows=25)
    assert [p.name for p in paths] == [f"train-0000{i}-of-00003.parquet" for i in range(3)]
    import pyarrow.parquet as pq

    assert pq.ParquetFile(paths[0]).metadata.row_group(0).column(0).compression == "ZSTD"
    loaded = datasets.load_dataset("parquet", data_dir=str(tmp_path / "out"), split="train")
    assert loaded.to_list() == ds.to_list()
    manifest = json.loads((tmp_path / "out" / ".swarmloop-export.json").read_text())
    assert manifest["rows"] == 59


def test_traces_imports_no_torch():
    code = (
        "import sys, tempfile, pathlib\n"
        "import traces, traces.export, traces.store, traces.writer, traces.pairs, traces.judges, traces.tasks\n"
        "import traces.push, traces.redaction, traces.samples\n"
        "from traces.samples import chitchat_traces\n"
        "from traces.store import TraceStore\n"
        "from traces.export import to_sft_dataset\n"
        "p = pathlib.Path(tempfile.mkdtemp()) / 's.db'\n"
        "s = TraceStore(p); s.add_traces(list(chitchat_traces(5))); s.close()\n"
        "assert len(to_sft_dataset(p, consent='local')) == 5 and len(to_sft_dataset(p)) == 0\n"
        "bad = sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.'))\n"
        "ours = sorted(m for m in sys.modules if m.split('.')[0] in ('inference', 'training', 'federation', 'swarmloop'))\n"
        "print(bad, ours)\n"
        "assert not bad and not ours\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:] + result.stdout

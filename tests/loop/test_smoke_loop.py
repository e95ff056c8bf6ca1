"""The whole loop end to end on tiny-random (configs/loop-smoke.toml, two iterations): real node
processes, real Flower deployment (superlink + supernodes), a real registry, hot-swap, held-out
evaluation; the second iteration trains on from the checkpoint the first one published."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT
from training.registry import LocalRegistry
from traces.store import TraceStore


def processes_mentioning(text: str) -> list[int]:
    """Pids whose command line or environment mentions `text` (the run folder)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            blob = (entry / "cmdline").read_bytes() + (entry / "environ").read_bytes()
        except OSError:
            continue
        if text.encode() in blob:
            found.append(int(entry.name))
    return found


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("loop")
    completed = subprocess.run(
        [sys.executable, "-m", "swarmloop.cli", "loop", "--config", str(REPO_ROOT / "configs/loop-smoke.toml"),
         "--run-dir", str(root), "--iterations", "2"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=900,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200"},
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    runs = [p for p in root.iterdir() if p.is_dir()]
    assert len(runs) == 1
    return runs[0]


def test_traces_stored_on_every_node(smoke_run):
    metrics = json.loads((smoke_run / "metrics.json").read_text())
    assert metrics["finished"] is True
    assert metrics["nodes"] == ["node-1", "node-2"]
    for name in metrics["nodes"]:
        with TraceStore(smoke_run / "nodes" / name / "traces.db", readonly=True) as store:
            records = list(store.iter_records(model_version="v0000"))
        assert records, f"{name} stored no traces of v0000"
        assert all(r.source["model_version"] == "v0000" for r in records)


def test_checkpoints_v1_and_v2_published_and_verify(smoke_run):
    registry = LocalRegistry(smoke_run / "registry")
    assert registry.versions() == ["v0001", "v0002"]
    assert registry.latest() == "v0002"
    manifest = registry.verify("v1")
    assert manifest.parent_version == "v0000"
    assert set(manifest.training.examples_by_node) == {"node-1", "node-2"}
    # the second iteration started from what the first one published
    assert registry.verify("v2").parent_version == "v0001"


def test_every_node_serves_each_new_version_and_tags_new_traces(smoke_run):
    metrics = json.loads((smoke_run / "metrics.json").read_text())
    assert [(i["from_version"], i["to_version"]) for i in metrics["iterations"]] == [("v0000", "v0001"), ("v0001", "v0002")]
    for name in metrics["nodes"]:
        with TraceStore(smoke_run / "nodes" / name / "traces.db", readonly=True) as store:
            last = list(store.iter_records(model_version="v0002"))
            middle = list(store.iter_records(model_version="v0001"))
        for iteration in metrics["iterations"]:
            assert iteration["swaps"][name]["to_version"] == iteration["to_version"]
        # the probe traces of the last swap, and v0001's probes plus the second iteration's workload
        assert len(last) >= 2 and metrics["iterations"][1]["new_traces_by_node"][name] == len(last)
        assert len(middle) > metrics["iterations"][0]["new_traces_by_node"][name] >= 2


def test_checkpoint_is_signed_by_the_trainer_and_ingest_verified_every_node(smoke_run):
    from traces.signing import TrustedKeys
    from training.signing import verify_manifest_signature

    folder = smoke_run / "registry" / "v0001"
    trusted = TrustedKeys.from_toml(smoke_run / "keys" / "trusted-trainer.toml")
    assert verify_manifest_signature(folder, trusted) == "trainer"
    metrics = json.loads((smoke_run / "metrics.json").read_text())
    federation = metrics["iterations"][0]["federation"]
    assert federation["signed_by_name"] == "trainer"
    assert f"Checkpoint signed by: the trainer ({federation['signed_by']})" in (smoke_run / "report.md").read_text()
    nodes = federation["integrity"]["ingest"]["nodes"]
    assert set(nodes) == {"node-1", "node-2"}
    for name, entry in nodes.items():
        # every record the round used carried a good signature by that node's own key
        assert entry["records_checked"] > 0 and entry["verified"] == entry["records_checked"], (name, entry)
        assert entry["rounds_excluded"] == 0 and entry["proofs_failed"] == 0, (name, entry)
    # the node keys the conductor collected are the keys the stores were signed with
    allow = TrustedKeys.from_toml(smoke_run / "keys" / "trusted-nodes.toml")
    for name in metrics["nodes"]:
        with TraceStore(smoke_run / "nodes" / name / "traces.db", readonly=True) as store:
            trace = next(iter(store.iter_traces()))
        assert allow.by_node_id(trace.node_id)[0] == name


def test_report_and_plots_written(smoke_run):
    report = (smoke_run / "report.md").read_text()
    assert "v0000 -> v0001" in report and "v0001 -> v0002" in report and "paired 95% CI" in report
    for name in ("traces_pairs.png", "federated_loss.png", "heldout_accuracy.png", "swap_pause.png"):
        assert (smoke_run / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    metrics = json.loads((smoke_run / "metrics.json").read_text())
    assert [e["version"] for e in metrics["evals"]] == ["v0000", "v0001", "v0002"]
    assert metrics["iterations"][0]["comparison"]["n_tasks"] == 16


def test_no_process_left(smoke_run):
    assert processes_mentioning(str(smoke_run)) == []

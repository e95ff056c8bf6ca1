"""`swarmloop traces ...` as a user runs it: real processes, exit codes, one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import datasets
import pytest

from traces.ingest import redact_traces
from traces.redaction import PrivacyFilter
from traces.schemas import Choice, Feedback
from traces.store import TraceStore

REPO = Path(__file__).resolve().parents[2]


def swarmloop(*args: str, stdin: str | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "swarmloop.cli", "traces", *args], input=stdin, text=True,
                          capture_output=True, cwd=REPO, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})})


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[-1], lines[-1]


def make_store(path: Path, chitchat, consent: str) -> None:
    traces = redact_traces(PrivacyFilter(), [t.model_copy(update={"consent": consent}) for t in chitchat[:30]])
    traces[0] = traces[0].model_copy(update={"choices": [Choice(index=0, text="x"), Choice(index=1, text="y")]})
    with TraceStore(path) as store:
        store.add_traces(traces)
        store.set_meta("consent", consent)
        store.set_meta("node_id", "node-cli")
        store.record_feedback(Feedback(id="f", trace_id=traces[0].id, choice=1, thumbs=1))


def test_redact_jsonl():
    lines = [{"text": "Grüße 😀 an max@example.de, Karte 4111 1111 1111 1111"}, {"text": "nothing here"},
             {"text": "key sk-" + "a1B2c3D4" * 5}]
    result = swarmloop("redact", stdin="\n".join(json.dumps(x, ensure_ascii=False) for x in lines) + "\n\n")
    assert result.returncode == 0, result.stderr
    out = [json.loads(line) for line in result.stdout.splitlines()]
    assert [o["text"] for o in out] == ["Grüße 😀 an <EMAIL_1>, Karte <CREDIT_CARD_1>", "nothing here", "key <API_KEY_1>"]
    first = lines[0]["text"]
    assert [(first[s["start"]:s["end"]], s["type"]) for s in out[0]["spans"]] == [
        ("max@example.de", "EMAIL"), ("4111 1111 1111 1111", "CREDIT_CARD")]
    assert out[1]["spans"] == []
    assert "person names off" in result.stderr


@pytest.mark.parametrize(("stdin", "fragment"), [
    ('{"text": "fine"}\n{"text": broken}\n', "line 2: not valid JSON"),
    ('{"text": "fine"}\n\n{"txt": "x"}\n', 'line 3: expected an object with a "text" field'),
    ('{"text": 5}\n', 'line 1: "text" must be a string'),
])
def test_redact_bad_lines(stdin, fragment):
    result = swarmloop("redact", stdin=stdin)
    assert_one_line_error(result, fragment)
    assert result.stdout == ""                                   # no half output for the bad chunk


def test_stats_export_and_errors(tmp_path, chitchat):
    db = tmp_path / "node.db"
    make_store(db, chitchat, "local")
    stats = json.loads(swarmloop("stats", "--store", str(db), "--json").stdout)
    assert stats["traces"] == 30 and stats["node_id"] == "node-cli"
    assert stats["pairs"] == {"dpo": {"choice": 1}, "kto": {"thumbs": 1}}
    table = swarmloop("stats", "--store", str(db))
    assert table.returncode == 0 and "traces" in table.stdout and "v0000: 30" in table.stdout

    # Privacy by default: a consent-local store exports nothing unless asked for on-node use.
    result = swarmloop("export", "--store", str(db), "--format", "sft", "--out", str(tmp_path / "shared"))
    assert result.returncode == 0 and "wrote 0 sft rows" in result.stdout, result.stderr
    assert "left out 30 trace(s) kept at consent 'local'" in result.stderr
    assert json.loads((tmp_path / "shared" / ".swarmloop-export.json").read_text())["consent"] == "share"
    result = swarmloop("export", "--store", str(db), "--format", "dpo", "--out", str(tmp_path / "dpo"),
                       "--consent", "local")
    assert result.returncode == 0, result.stderr
    loaded = datasets.load_dataset("parquet", data_dir=str(tmp_path / "dpo"), split="train")
    assert loaded.column_names == ["prompt", "chosen", "rejected", "trace_ids", "origin"] and len(loaded) == 1
    result = swarmloop("export", "--store", str(db), "--format", "sft", "--out", str(tmp_path / "sft"),
                       "--since", "2000-01-01T00:00", "--limit", "7", "--consent", "local")
    assert result.returncode == 0 and "wrote 7 sft rows" in result.stdout
    help_text = " ".join(swarmloop("export", "--help").stdout.replace("│", " ").split())
    assert "share (default): only records captured with consent 'share'" in help_text
    assert "for use on this node only" in help_text
    assert_one_line_error(swarmloop("export", "--store", str(db), "--format", "sft", "--out", str(tmp_path / "z"),
                                    "--consent", "off"), "--consent")

    assert_one_line_error(swarmloop("export", "--store", str(db), "--format", "ppo", "--out", str(tmp_path / "x")), "--format")
    assert_one_line_error(swarmloop("export", "--store", str(db), "--format", "dpo", "--out", str(tmp_path / "w"),
                                    "--approved-only"), "--approved-only")
    result = swarmloop("export", "--store", str(db), "--format", "sft", "--out", str(tmp_path / "approved"),
                       "--consent", "local", "--approved-only")
    assert result.returncode == 0, result.stderr
    approved = datasets.load_dataset("parquet", data_dir=str(tmp_path / "approved"), split="train")
    everything = datasets.load_dataset("parquet", data_dir=str(tmp_path / "sft"), split="train")
    assert 0 < len(approved) < len(everything)
    assert_one_line_error(swarmloop("stats", "--store", str(tmp_path / "missing.db")), "no such trace store")
    assert_one_line_error(swarmloop("export", "--store", str(db), "--format", "sft", "--out", str(tmp_path / "y"),
                                    "--since", "yesterday"), "--since")


def test_push_refuses_without_share_consent(tmp_path, chitchat):
    db = tmp_path / "local.db"
    make_store(db, chitchat, "local")
    assert_one_line_error(swarmloop("push", "--store", str(db), "--repo-id", "org/traces"), "consent 'share'")
    assert_one_line_error(swarmloop("push", "--store", str(db), "--repo-id", "not a repo"), "ORG/NAME")


def test_push_builds_the_dataset_and_stops_at_the_upload(tmp_path, chitchat):
    db = tmp_path / "share.db"
    make_store(db, chitchat, "share")
    folder = tmp_path / "push"
    result = swarmloop("push", "--store", str(db), "--repo-id", "org/traces", "--folder", str(folder), "--dry-run")
    assert result.returncode == 0, result.stderr
    calls = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert [c["call"] for c in calls] == ["HfApi.create_repo", "HfApi.upload_folder"]
    assert calls[0]["private"] is True and calls[1]["folder_path"] == str(folder)
    card = (folder / "README.md").read_text()
    assert "config_name: sft" in card and "config_name: dpo" in card
    sft = datasets.load_dataset("parquet", data_dir=str(folder / "sft"), split="train")
    assert len(sft) == 30
    # The Hub is unreachable here: the real upload fails with one line, after building everything.
    result = swarmloop("push", "--store", str(db), "--repo-id", "org/traces", "--folder", str(tmp_path / "p2"))
    assert_one_line_error(result, "upload to org/traces failed")
    assert (tmp_path / "p2" / "README.md").exists()


def test_maintenance_commands(tmp_path, chitchat):
    db = tmp_path / "node.db"
    make_store(db, chitchat, "local")
    config = tmp_path / "store.toml"
    config.write_text("[store]\nseal_block_records = 8\n")
    result = swarmloop("compact", "--store", str(db), "--config", str(config))
    assert result.returncode == 0 and "sealed 24 records into blocks, recompressed 6" in result.stdout
    assert json.loads(swarmloop("stats", "--store", str(db), "--json").stdout)["traces"] == 30
    result = swarmloop("prune", "--store", str(db), "--max-age-days", "0.00001")
    assert result.returncode == 0 and "deleted 30 traces by age" in result.stdout
    assert json.loads(swarmloop("stats", "--store", str(db), "--json").stdout)["traces"] == 0


def test_configs_store_toml_is_valid_and_holds_the_defaults():
    from swarmloop.configfile import load_config
    from traces.config import TracesConfig

    assert load_config(REPO / "configs" / "store.toml", TracesConfig) == TracesConfig()

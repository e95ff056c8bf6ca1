"""configs/training.toml and its pydantic model; TRL-format data checks and loading."""

from __future__ import annotations

import json

import pytest
from datasets import Dataset
from training_rows import dpo_rows, kto_rows, sft_rows

from swarmloop.errors import UserError
from training.config import DEFAULT_CONFIG_PATH, TrainingSettings, load_training_settings
from training.data import (
    DatasetFormatError,
    check_dataset,
    examples_by_node,
    load_dataset_dir,
    load_task_rows,
    save_dataset_dir,
)


def test_shipped_config_equals_the_model_defaults():
    assert DEFAULT_CONFIG_PATH.is_file()
    assert load_training_settings() == TrainingSettings()


def test_config_errors_name_the_key(tmp_path):
    path = tmp_path / "training.toml"
    path.write_text("[dpo]\nbeta = 'high'\n")
    with pytest.raises(UserError, match=r"dpo.beta: Input should be a valid number"):
        load_training_settings(path)
    path.write_text("[kto]\nper_device_train_batch_size = 1\n")
    with pytest.raises(UserError, match="at least 2"):
        load_training_settings(path)
    path.write_text("[lora]\nr = 4\n")
    settings = load_training_settings(path, {"sft.max_steps": 7, "checkpoint.dtype": None})
    assert settings.lora.r == 4 and settings.sft.max_steps == 7 and settings.checkpoint.dtype == "float32"


@pytest.mark.parametrize("kind,rows", [("sft", sft_rows()), ("dpo", dpo_rows()), ("kto", kto_rows())])
def test_every_format_roundtrips_through_parquet_and_jsonl(tmp_path, kind, rows):
    check_dataset(Dataset.from_list(rows), kind)
    from_parquet = load_dataset_dir(save_dataset_dir(rows, tmp_path / "parquet"), kind)
    assert from_parquet.to_list() == Dataset.from_list(rows).to_list()
    (tmp_path / "jsonl").mkdir()
    (tmp_path / "jsonl" / "part.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert len(load_dataset_dir(tmp_path / "jsonl", kind)) == len(rows)


@pytest.mark.parametrize("kind,row,message", [
    ("sft", {"messages": []}, "row 0: messages: expected a non-empty list"),
    ("sft", {"messages": [{"role": "wizard", "content": "x"}]}, "row 0: messages[0]: unknown role 'wizard'"),
    ("dpo", {"prompt": [{"role": "user", "content": "q"}], "chosen": [{"role": "user", "content": "a"}],
             "rejected": [{"role": "assistant", "content": "b"}]}, "row 0: chosen[0]: expected an assistant message"),
    ("kto", {"prompt": [{"role": "user", "content": "q"}], "completion": [{"role": "assistant", "content": "a"}],
             "label": "yes"}, "row 0: label must be true or false"),
])
def test_bad_rows_are_named(kind, row, message):
    with pytest.raises(DatasetFormatError, match=message.replace("[", r"\[").replace("]", r"\]")):
        check_dataset(Dataset.from_list([row]), kind)


def test_examples_by_node_and_empty_folders(tmp_path):
    assert examples_by_node(Dataset.from_list(sft_rows(5))) == {"node-0": 3, "node-1": 2}
    assert examples_by_node(Dataset.from_list(dpo_rows(3))) == {"local": 3}
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetFormatError, match="no .parquet, .jsonl or .json files"):
        load_dataset_dir(tmp_path / "empty", "sft")


def test_task_rows_from_traces_tasks(tmp_path):
    from traces.tasks import generate_tasks

    tasks = generate_tasks(6, seed=1, split="eval")
    path = tmp_path / "tasks.jsonl"
    path.write_text("".join(json.dumps(t) + "\n" for t in tasks))
    rows = load_task_rows(path)
    assert [r["answer"] for r in rows] == [t["answer"] for t in tasks]
    path.write_text(json.dumps({"prompt": "2+2?"}) + "\n")
    with pytest.raises(DatasetFormatError, match="needs a `judge`"):
        load_task_rows(path)


def test_store_rows_carry_their_node_and_respect_consent(tmp_path):
    from traces.samples import chitchat_traces
    from traces.store import TraceStore

    from training.data import load_store_dataset

    path = tmp_path / "node.db"
    with TraceStore(path) as store:
        store.add_traces(list(chitchat_traces(4, seed=1, node_id="node-a", consent="share")))
        store.add_traces(list(chitchat_traces(3, seed=2, node_id="node-b", consent="share")))
        store.add_traces(list(chitchat_traces(2, seed=3, node_id="node-a", consent="local")))
    shared = load_store_dataset(path, "sft")
    assert examples_by_node(shared) == {"node-a": 4, "node-b": 3}
    assert shared[0]["messages"][-1]["role"] == "assistant"
    assert examples_by_node(load_store_dataset(path, "sft", consent="local")) == {"node-a": 6, "node-b": 3}
    with pytest.raises(DatasetFormatError, match="no dpo rows"):
        load_store_dataset(path, "dpo")

"""`swarmloop train` and `swarmloop checkpoint` as real subprocesses: exit codes, one-line errors,
and a small lineage built through the CLI alone (train sft -> publish -> train dpo from the registry)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from training_rows import dpo_rows, kto_rows, sft_rows

from training.data import save_dataset_dir
from training.manifest import read_manifest

REPO_ROOT = Path(__file__).resolve().parents[2]


def swarmloop(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "swarmloop.cli", *args], capture_output=True, text=True, env=env,
                          cwd=REPO_ROOT, timeout=timeout)


def one_line_error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


@pytest.fixture(scope="module")
def data(tmp_path_factory, tiny_model_path):
    root = tmp_path_factory.mktemp("data")
    # tiny-random as a local folder whose chat template renders the same text without {% generation %} marks
    unmarked = root / "unmarked-model"
    shutil.copytree(tiny_model_path, unmarked, ignore=shutil.ignore_patterns(".swarmloop*"))
    template = (unmarked / "chat_template.jinja").read_text()
    assert "{% generation %}" in template
    (unmarked / "chat_template.jinja").write_text(template.replace("{% generation %}", "").replace("{% endgeneration %}", ""))
    tasks = [{"id": f"t{i}", "judge": "numeric", "answer": str(2 * i), "prompt": f"What is {i} plus {i}?",
              "messages": [{"role": "user", "content": f"What is {i} plus {i}?"}]} for i in range(3)]
    (root / "tasks.jsonl").write_text("".join(json.dumps(t) + "\n" for t in tasks))
    # one torch thread (tiny model, shared cores) and short generations keep the subprocesses quick
    (root / "training.toml").write_text("[runtime]\ntorch_threads = 1\n\n[eval]\nmax_new_tokens = 8\n")
    return {
        "config": root / "training.toml",
        "sft": save_dataset_dir(sft_rows(8), root / "sft"),
        "sft-eval": save_dataset_dir(sft_rows(4), root / "sft-eval"),
        "dpo": save_dataset_dir(dpo_rows(4), root / "dpo"),
        "dpo-eval": save_dataset_dir(dpo_rows(8)[4:], root / "dpo-eval"),
        "kto": save_dataset_dir(kto_rows(8), root / "kto"),
        "kto-eval": save_dataset_dir(kto_rows(12)[8:], root / "kto-eval"),
        "tasks": root / "tasks.jsonl",
        "unmarked-model": unmarked,
    }


def test_train_publish_and_continue_the_lineage(data, tmp_path):
    v1 = tmp_path / "v1"
    done = swarmloop("train", "sft", "--data", str(data["sft"]), "--base", "tiny-random", "--out", str(v1),
                     "--eval-data", str(data["sft-eval"]), "--eval-tasks", str(data["tasks"]),
                     "--max-steps", "3", "--learning-rate", "0.01", "--config", str(data["config"]))
    assert done.returncode == 0, done.stderr
    assert "held-out evaluation" in done.stdout and "task evaluation" in done.stdout
    assert f"checkpoint v0001 written to {v1}" in done.stdout
    manifest = read_manifest(v1)
    assert manifest.training.examples_by_node == {"node-0": 4, "node-1": 4}
    assert manifest.training.steps == 3 and manifest.training.hyperparameters["learning_rate"] == 0.01
    heldout = manifest.eval["heldout"]
    assert heldout["after"]["loss"] < heldout["before"]["loss"]
    assert manifest.eval["tasks"]["after"]["examples"] == 3

    verified = swarmloop("checkpoint", "verify", str(v1))
    assert verified.returncode == 0 and "ok:" in verified.stdout and manifest.weights_sha256 in verified.stdout
    registry = tmp_path / "registry"
    published = swarmloop("checkpoint", "publish", str(v1), "--registry", str(registry))
    assert published.returncode == 0 and "published v0001" in published.stdout

    v2 = tmp_path / "v2"
    done = swarmloop("train", "dpo", "--data", str(data["dpo"]), "--base", f"registry:{registry}", "--out", str(v2),
                     "--eval-data", str(data["dpo-eval"]), "--max-steps", "2", "--learning-rate", "0.01",
                     "--dtype", "bfloat16", "--config", str(data["config"]))
    assert done.returncode == 0, done.stderr
    assert "held-out evaluation" in done.stdout and "preference_accuracy" in done.stdout
    second = read_manifest(v2)
    heldout = second.eval["heldout"]
    assert heldout["kind"] == "dpo" and heldout["after"]["examples"] == 4
    # before training the model is its own reference (margin 0); after, the reference is v1 and the
    # unseen pairs' chosen replies gained on the rejected ones
    assert heldout["before"]["reward_margin"] == 0.0 and heldout["after"]["reward_margin"] > 0
    assert (second.version, second.parent_version, second.base_model) == ("v0002", "v0001", "tiny-random")
    assert second.parent_weights_sha256 == manifest.weights_sha256 and second.dtype == "bfloat16"
    assert swarmloop("checkpoint", "publish", str(v2), "--registry", str(registry)).returncode == 0

    listed = swarmloop("checkpoint", "list", "--registry", str(registry))
    assert listed.returncode == 0 and "v0001" in listed.stdout and "v0002" in listed.stdout
    assert "latest is now v0001" in swarmloop("checkpoint", "rollback", "--registry", str(registry)).stdout
    assert "latest is now v0002" in swarmloop("checkpoint", "promote", "v2", "--registry", str(registry)).stdout

    # one flipped byte in a published weight file: verify names it, promote refuses
    weights = registry / "v0001" / "model.safetensors"
    data_bytes = bytearray(weights.read_bytes())
    data_bytes[100] ^= 0xFF
    weights.write_bytes(bytes(data_bytes))
    line = one_line_error(swarmloop("checkpoint", "verify", f"registry:{registry}@v1"))
    assert "model.safetensors: sha256 mismatch" in line
    assert "model.safetensors" in one_line_error(swarmloop("checkpoint", "promote", "v1", "--registry", str(registry)))
    assert "refusing to roll back to v0001" in one_line_error(swarmloop("checkpoint", "rollback", "--registry", str(registry)))
    refused = one_line_error(swarmloop("checkpoint", "publish", str(registry / "v0001"), "--registry", str(tmp_path / "r2")))
    assert "refusing to publish" in refused and "model.safetensors" in refused


def test_kto_with_eval_data_names_its_public_datasets(data, tmp_path):
    from huggingface_hub import ModelCard

    config = tmp_path / "training.toml"
    config.write_text(data["config"].read_text() + '\n[checkpoint]\ndatasets = ["swarm/all-nodes"]\n')
    out = tmp_path / "kto"
    done = swarmloop("train", "kto", "--data", str(data["kto"]), "--base", "tiny-random", "--out", str(out),
                     "--eval-data", str(data["kto-eval"]), "--max-steps", "2", "--learning-rate", "0.01",
                     "--dataset-id", "swarm/node-a-traces", "--dataset-id", "acme/chat-kto",
                     "--dataset-id", "swarm/node-a-traces", "--config", str(config))
    assert done.returncode == 0, done.stderr
    assert "label_accuracy" in done.stdout and "reward_gap" in done.stdout
    manifest = read_manifest(out)
    expected = ["swarm/node-a-traces", "acme/chat-kto", "swarm/all-nodes"]
    assert manifest.training.public_datasets == expected
    heldout = manifest.eval["heldout"]
    assert heldout["kind"] == "kto" and heldout["before"]["reward_gap"] == 0.0 and heldout["after"]["examples"] == 4
    card = ModelCard.load(out / "README.md")
    assert card.data.datasets == expected and "kto" in card.data.tags
    assert (out / "README.md").read_text().split("---")[1].count("swarm/node-a-traces") == 1  # in the YAML, once


def test_unusable_models_are_one_line_errors(data, tmp_path):
    out = tmp_path / "out"
    model = str(data["unmarked-model"])
    # held-out loss needs the marks even when training does not (assistant_only_loss off)
    config = tmp_path / "training.toml"
    config.write_text(data["config"].read_text() + "\n[sft]\nassistant_only_loss = false\n")
    line = one_line_error(swarmloop("train", "sft", "--data", str(data["sft"]), "--base", model, "--out", str(out),
                                    "--eval-data", str(data["sft-eval"]), "--config", str(config)))
    assert f"--eval-data {data['sft-eval']}: held-out loss needs a chat template with {{% generation %}}" in line
    # with assistant_only_loss on (the default), the recipe's own check fails before any evaluation
    line = one_line_error(swarmloop("train", "sft", "--data", str(data["sft"]), "--base", model, "--out", str(out),
                                    "--eval-data", str(data["sft-eval"]), "--config", str(data["config"])))
    assert f"--base {model}: assistant_only_loss needs a chat template with {{% generation %}}" in line
    # weights that safetensors cannot read
    broken = tmp_path / "broken-model"
    shutil.copytree(data["unmarked-model"], broken, ignore=shutil.ignore_patterns(".swarmloop*"))
    (broken / "model.safetensors").write_bytes((broken / "model.safetensors").read_bytes()[:1000])
    line = one_line_error(swarmloop("train", "dpo", "--data", str(data["dpo"]), "--base", str(broken), "--out", str(out)))
    assert f"--base {broken}: cannot load the model (SafetensorError" in line
    assert not out.exists() and not list(tmp_path.glob(".out.tmp*"))


def test_bad_input_is_one_line_and_exit_2(data, tmp_path):
    out = str(tmp_path / "out")
    assert "exactly one of --store DB or --data DIR" in one_line_error(
        swarmloop("train", "sft", "--base", "tiny-random", "--out", out))
    line = one_line_error(swarmloop("train", "sft", "--data", str(data["dpo"]), "--base", "tiny-random", "--out", out))
    assert "sft data needs columns messages; missing messages" in line
    assert "unknown model reference" in one_line_error(
        swarmloop("train", "sft", "--data", str(data["sft"]), "--base", "s3:bucket/x", "--out", out))
    (tmp_path / "exists").mkdir()
    assert "already exists" in one_line_error(
        swarmloop("train", "sft", "--data", str(data["sft"]), "--base", "tiny-random", "--out", str(tmp_path / "exists")))
    config = tmp_path / "training.toml"
    config.write_text("[sft]\nlearning_rte = 0.1\n")
    assert "sft.learning_rte: unknown key" in one_line_error(
        swarmloop("train", "sft", "--data", str(data["sft"]), "--base", "tiny-random", "--out", out, "--config", str(config)))
    assert "--dataset-id 'nope': expected ORG/NAME" in one_line_error(
        swarmloop("train", "sft", "--data", str(data["sft"]), "--base", "tiny-random", "--out", out, "--dataset-id", "nope"))
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text(json.dumps({"prompt": "2+2?", "judge": "oracle", "answer": "4"}) + "\n")
    assert "row 0: unknown judge 'oracle'" in one_line_error(
        swarmloop("train", "sft", "--data", str(data["sft"]), "--base", "tiny-random", "--out", out, "--eval-tasks", str(tasks)))
    garbage = tmp_path / "garbage.db"
    garbage.write_text("not a database")
    assert "not a usable trace store" in one_line_error(
        swarmloop("train", "sft", "--store", str(garbage), "--base", "tiny-random", "--out", out))
    assert "is not a folder" in one_line_error(
        swarmloop("train", "sft", "--data", str(data["sft"]), "--base", "tiny-random", "--out", str(garbage / "ckpt")))
    assert not (tmp_path / "out").exists()
    assert "no such checkpoint folder" in one_line_error(swarmloop("checkpoint", "verify", str(tmp_path / "nope")))
    assert "exactly one of --registry" in one_line_error(swarmloop("checkpoint", "publish", str(tmp_path)))
    assert "no versions published" in one_line_error(swarmloop("checkpoint", "list", "--registry", str(tmp_path)))


def test_help_explains_every_option():
    text = swarmloop("train", "kto", "--help").stdout
    for option in ("--store", "--consent", "--data", "--base", "--out", "--config", "--eval-data", "--eval-tasks",
                   "--max-steps", "--learning-rate", "--seed", "--version", "--dtype", "--dataset-id"):
        assert option in text
    text = swarmloop("checkpoint", "publish", "--help").stdout
    for option in ("--registry", "--hub", "--promote", "--public", "--config"):
        assert option in text

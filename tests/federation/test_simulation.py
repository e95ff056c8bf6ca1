"""Real Flower simulations (Ray) over real node trace stores, on tiny-random."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from fed_helpers import base_config, fill_store, write_config

from federation.config import FederationConfig


def _config(data: dict) -> FederationConfig:
    return FederationConfig.model_validate(data)


def test_simulation_two_rounds_sft_builds_a_verified_checkpoint(tmp_path):
    from federation.sim import run_simulation
    from inference.loading import load_model
    from training.manifest import verify_folder
    from training.registry import LocalRegistry

    stores = [("node-a", fill_store(tmp_path / "a.db", "node-a", 10)),
              ("node-b", fill_store(tmp_path / "b.db", "node-b", 8)),
              ("node-c", fill_store(tmp_path / "c.db", "node-c", 2))]     # too little data: sits out
    eval_store = fill_store(tmp_path / "eval.db", "eval", 6)
    # each node carries its AdamW state from round 1 to round 2 (federation/optimizer_state.py)
    config = _config(base_config(tmp_path, stores, rounds=2, eval_store=eval_store,
                                 client={"keep_optimizer_state": True}))

    result = run_simulation(config)

    assert result.version == "v0001" and result.rounds == 2 and result.resumed_from_round == 0
    registry = LocalRegistry(tmp_path / "registry")
    assert registry.latest() == "v0001" and result.published == registry.path("v0001")
    manifest = verify_folder(result.published)
    assert manifest.training.method == "fed-sft" and manifest.training.rounds == 2
    assert manifest.training.examples_by_node == {"node-a": 10, "node-b": 8}
    assert manifest.parent_version == "v0000" and manifest.communication["full_checkpoint_bytes"] > 0
    loaded = load_model(str(result.published))
    assert loaded.identity.version == "v0001"

    rounds = [h["round"] for h in result.history]
    assert rounds == [0, 1, 2]
    for record in result.history[1:]:
        assert record["aggregated"] and record["nodes"]["node-c"]["status"] == "skipped"
        assert {n for n, i in record["nodes"].items() if i["status"] == "used"} == {"node-a", "node-b"}
        assert 0 < record["bytes"]["up_bytes"] < manifest.communication["full_checkpoint_bytes"]
        # the optimizer's step count continues across rounds: 2 local steps a round
        assert [record["nodes"][n]["optimizer_steps"] for n in ("node-a", "node-b")] == [2 * record["round"]] * 2
    # the global adapter moved the held-out loss, and the learning rate followed the cosine schedule
    assert result.eval["loss"] != result.baseline_eval["loss"]
    assert result.history[1]["lr"] > result.history[2]["lr"]
    assert json.loads((result.run_dir / "metrics.json").read_text())[-1]["round"] == 2
    assert (result.run_dir / "metrics.png").stat().st_size > 1000
    assert (result.run_dir / "state" / "state.json").is_file()


def test_simulation_dpo_round_with_dp_reports_epsilon(tmp_path):
    from flwr.serverapp import GaussianPrivacyEvent

    from federation.dp import make_accountant
    from federation.sim import run_simulation
    from training.manifest import verify_folder

    stores = [("node-a", fill_store(tmp_path / "a.db", "node-a", 6, pairs=True)),
              ("node-b", fill_store(tmp_path / "b.db", "node-b", 5, pairs=True))]
    # pairs an older checkpoint served: its replies are not the reference's, so they are left out
    fill_store(tmp_path / "b.db", "node-b", 3, pairs=True, version="v0042")
    eval_store = fill_store(tmp_path / "eval.db", "eval", 4, pairs=True)
    data = base_config(tmp_path, stores, method="dpo", rounds=1, eval_store=eval_store,
                       dp={"enabled": True, "noise_multiplier": 0.8, "clipping_norm": 0.5},
                       strategy={"federated_eval": True})
    config = _config(data)

    result = run_simulation(config)

    manifest = verify_folder(result.published)
    assert manifest.training.method == "fed-dpo"
    assert manifest.training.examples_by_node == {"node-a": 6, "node-b": 5}
    assert manifest.training.hyperparameters["reference_model"].startswith("tiny-random")
    assert "preference_accuracy" in result.eval and "reward_margin" in result.eval
    # the epsilon is the RDP accountant's for one Gaussian release at sigma 0.8 over 2 nodes
    expected = make_accountant(config.dp, 2)
    expected.compose(GaussianPrivacyEvent(noise_multiplier=0.8, sample_size=2, population_size=2))
    assert manifest.privacy.dp and manifest.privacy.epsilon == pytest.approx(expected.get_privacy_spent().epsilon)
    assert manifest.privacy.delta == config.dp.target_delta
    assert result.history[1]["epsilon"] == pytest.approx(manifest.privacy.epsilon)
    assert "ε" in (result.published / "README.md").read_text()
    # federated evaluation: each node scored the global adapter on its own pairs
    assert 0.0 <= result.history[1]["federated_eval"]["eval-metric"] <= 1.0


def test_crashed_run_resumes_at_the_next_round(tmp_path):
    from federation.sim import run_simulation
    from federation.state import load_state
    from federation.runs import RunFolder

    stores = [("node-a", fill_store(tmp_path / "a.db", "node-a", 8)),
              ("node-b", fill_store(tmp_path / "b.db", "node-b", 8))]
    data = base_config(tmp_path, stores, rounds=2)
    config_path = write_config(tmp_path / "federation.toml", data)
    run = RunFolder(tmp_path / "run")

    # A real `swarmloop fed sim` process, killed (SIGKILL, whole process group) once round 1 is saved.
    proc = subprocess.Popen([sys.executable, "-m", "swarmloop.cli", "fed", "sim", "--config", str(config_path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    deadline = time.monotonic() + 240
    state = None
    while time.monotonic() < deadline and proc.poll() is None:
        state = load_state(run) if (run.state_dir / "state.json").is_file() else None
        if state is not None:
            break
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert state is not None and state[0].round == 1, "the first run should have saved round 1 before the kill"
    assert not run.result_path.exists()
    round_one = state[0].history[-1]

    result = run_simulation(FederationConfig.model_validate(data))

    assert result.resumed_from_round == 1 and result.rounds == 2 and result.version == "v0001"
    assert [h["round"] for h in result.history] == [0, 1, 2]
    assert result.history[1] == round_one            # round 1 is the crashed run's, not redone
    assert result.history[2]["aggregated"]
    # without client.keep_optimizer_state each round starts a fresh optimizer
    assert {info["optimizer_steps"] for info in result.history[2]["nodes"].values()} == {2}

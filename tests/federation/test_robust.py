"""One malicious node of four: a real Flower simulation (tiny-random, SFT) with the shipped robust
default (configs/federation.toml), against the clean round and against plain FedAvg.

One simulation (one Ray start) runs the attacked round with the robust default and keeps every
update it received (robust.save_updates). The other two outcomes are computed from those same
updates through the same server code (SwarmStrategy.aggregate_train, then the central eval):
  clean:          the attacker's honest update put back (the attack is invertible:
                  sent = g - f·(u - g), so u = g + (g - sent)/f), aggregated with the robust default
  plain FedAvg:   the four updates as received, no robust checks
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fed_helpers import base_config, fill_store, flower_replies

from federation.config import FederationConfig
from swarmloop.configfile import load_config

ATTACK_FACTOR = 3.0      # under the 4x norm ratio: only the direction gives the attacker away


@pytest.fixture
def task_identity():
    from flwr.supercore.task_identity import TaskIdentity

    saved = (TaskIdentity._run_id, TaskIdentity._task_id, TaskIdentity._node_id)
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0
    yield
    TaskIdentity._run_id, TaskIdentity._task_id, TaskIdentity._node_id = saved


def _load_round(folder: Path) -> tuple[dict, dict[str, dict]]:
    from safetensors.numpy import load_file

    global_arrays = load_file(str(folder / "global.safetensors"))
    updates = {p.stem: load_file(str(p)) for p in sorted(folder.glob("node-*.safetensors"))}
    return global_arrays, updates


def test_sign_flipping_node_robust_default_vs_clean_vs_fedavg(tmp_path, task_identity):
    from federation.dataset import eval_dataset
    from federation.models import build_lora_model, lora_scale, set_arrays, update_norm_scale
    from federation.sim import run_simulation
    from federation.strategy import build_strategy
    from inference.loading import load_model
    from training.config import load_training_settings
    from training.eval import evaluate_dataset

    shipped = load_config("configs/federation.toml", FederationConfig)
    assert shipped.strategy.name == "fedtrimmedavg" and shipped.robust.min_cosine is not None
    names = ["node-a", "node-b", "node-c", "node-d"]
    stores = [(name, fill_store(tmp_path / f"{name}.db", name, 8)) for name in names]
    data = base_config(tmp_path, stores, rounds=1, eval_store=fill_store(tmp_path / "eval.db", "eval", 6),
                       strategy={"name": shipped.strategy.name, "trim_beta": shipped.strategy.trim_beta},
                       robust={**shipped.robust.model_dump(mode="json"), "save_updates": True},
                       integrity={"proof_sample_rate": 0.0})
    data["nodes"][3].update(attack="sign-flip", attack_factor=ATTACK_FACTOR)
    config = FederationConfig.model_validate(data)

    result = run_simulation(config)

    nodes = result.history[1]["nodes"]
    assert nodes["node-d"]["status"] == "rejected" and nodes["node-d"]["agreement"] < 0
    honest_norms = [nodes[n]["update_norm"] for n in names[:3]]
    assert nodes["node-d"]["update_norm"] < shipped.robust.max_norm_ratio * float(np.median(honest_norms))
    assert all(nodes[n]["status"] == "used" for n in names[:3])
    assert result.integrity["rejected_updates"]["node-d"][0].startswith("round 1: update points away")

    # ---- the same round's updates, re-aggregated in this process
    run_config = FederationConfig.model_validate_json((result.run_dir / "federation.json").read_text())
    global_arrays, received = _load_round(result.run_dir / "updates" / "round-0001")
    assert sorted(received) == names
    honest_d = {k: g + (g - received["node-d"][k]) / ATTACK_FACTOR for k, g in global_arrays.items()}
    clean = {**received, "node-d": honest_d}

    settings = load_training_settings(run_config.client.training_config, run_config.client.training_overrides)
    loaded = load_model("tiny-random")
    model = build_lora_model(loaded.model, settings.lora, run_config.lora)
    eval_set = eval_dataset(run_config.eval.store, None, "sft", max_examples=run_config.eval.max_examples)
    plain = run_config.model_copy(update={
        "strategy": run_config.strategy.model_copy(update={"name": "fedavg"}),
        "robust": run_config.robust.model_copy(update={"max_norm_ratio": None, "min_cosine": None, "save_updates": False})})
    robust = run_config.model_copy(update={"robust": run_config.robust.model_copy(update={"save_updates": False})})

    def eval_loss(arrays: dict) -> float:
        set_arrays(model, arrays)
        return evaluate_dataset(model, loaded.tokenizer, eval_set, "sft", settings=settings).metrics["loss"]

    def aggregated_loss(cfg: FederationConfig, updates: dict[str, dict]) -> tuple[float, dict]:
        strategy = build_strategy(cfg, num_nodes=4, lora_scale=lora_scale(settings.lora),
                                  norm_scale=update_norm_scale(settings.lora))
        strategy.reference = {k: v.copy() for k, v in global_arrays.items()}
        arrays, _ = strategy.aggregate_train(1, flower_replies(updates, {n: 8 for n in updates}))
        return eval_loss({k: v.numpy() for k, v in arrays.items()}), strategy.round_log[1]["nodes"]

    base = eval_loss(global_arrays)
    robust_attacked, robust_nodes = aggregated_loss(robust, received)
    clean_robust, clean_nodes = aggregated_loss(robust, clean)
    clean_fedavg, _ = aggregated_loss(plain, clean)
    fedavg_attacked, _ = aggregated_loss(plain, received)

    # the re-aggregation reproduces the simulation's own round exactly
    assert base == pytest.approx(result.baseline_eval["loss"], rel=1e-5)
    assert robust_attacked == pytest.approx(result.eval["loss"], rel=1e-5)
    assert robust_nodes["node-d"]["status"] == "rejected"
    assert all(info["status"] == "used" for info in clean_nodes.values())     # no honest node is dropped

    gain = base - clean_robust
    assert gain > 0, "the clean round must improve the held-out loss for this comparison to mean anything"
    # robust default under attack: within 5 % of the clean run (and within 10 % of the clean gain)
    assert abs(result.eval["loss"] - clean_robust) <= 0.05 * clean_robust
    assert abs(result.eval["loss"] - clean_robust) <= 0.10 * gain
    # plain FedAvg under the same attack: more than half of the round's gain is gone
    assert fedavg_attacked - clean_robust >= 0.5 * gain
    # and the robust default trains as well as FedAvg on clean FFA-LoRA updates
    assert gain >= 0.9 * (base - clean_fedavg)

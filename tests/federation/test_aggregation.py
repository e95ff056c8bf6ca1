"""Exact LoRA aggregation, checked against a direct computation of the weighted mean of the
nodes' weight updates ΔW_i, through the real server code path (SwarmStrategy over Flower's FedAvg,
fed real Flower reply Messages)."""

from __future__ import annotations

import numpy as np
import pytest

from federation import aggregation
from federation.config import FederationConfig, LoraSection


@pytest.fixture(scope="module")
def lora_model(tiny_model_path):
    from federation.models import build_lora_model
    from inference.loading import load_model
    from training.config import LoraSettings

    settings = LoraSettings(dropout=0.0)
    return build_lora_model(load_model("tiny-random").model, settings, LoraSection()), settings


@pytest.fixture
def task_identity():
    """Flower stamps messages with the running task's identity; a test is its own task."""
    from flwr.supercore.task_identity import TaskIdentity

    saved = (TaskIdentity._run_id, TaskIdentity._task_id, TaskIdentity._node_id)
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0
    yield
    TaskIdentity._run_id, TaskIdentity._task_id, TaskIdentity._node_id = saved


def _record(arrays):
    from flwr.app import Array, ArrayRecord

    return ArrayRecord({k: Array(np.ascontiguousarray(v, dtype=np.float32)) for k, v in arrays.items()})


def _replies(global_arrays, updates, weights, *, skipped=()):
    """Real Flower train messages to nodes 1..n and the nodes' replies."""
    from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict

    replies = []
    for index, (update, weight) in enumerate(zip(updates, weights), start=1):
        instruction = Message(content=RecordDict({"arrays": _record(global_arrays), "config": ConfigRecord({"round": 1})}),
                              dst_node_id=index, message_type=MessageType.TRAIN)
        skip = index - 1 in skipped
        content = RecordDict({
            "arrays": ArrayRecord() if skip else _record(update),
            "metrics": MetricRecord({"num-examples": 0 if skip else weight, "skipped": int(skip), "train-loss": 1.0,
                                     "steps": 2, "seconds": 0.1, "lr": 1e-3}),
            "node": ConfigRecord({"name": f"n{index}", "skip-reason": "too little data" if skip else ""}),
        })
        replies.append(Message(content=content, reply_to=instruction))
    return replies


def _strategy(config, settings, global_arrays):
    from federation.models import lora_scale, update_norm_scale
    from federation.strategy import build_strategy

    strategy = build_strategy(config, num_nodes=4, lora_scale=lora_scale(settings), norm_scale=update_norm_scale(settings))
    strategy.reference = {k: v.copy() for k, v in global_arrays.items()}
    return strategy


def _delta_w(model, b_arrays):
    """ΔW of every LoRA module as PEFT itself computes it (get_delta_weight) for these B tensors."""
    from federation.models import set_arrays, wire_name

    set_arrays(model, b_arrays)
    out = {}
    for name, module in model.named_modules():
        if hasattr(module, "get_delta_weight") and "default" in getattr(module, "lora_A", {}):
            out[wire_name(name)] = module.get_delta_weight("default").detach().double().numpy()
    return out


def _random_b(names, shapes, rng, scale=0.05):
    return {n: (rng.standard_normal(shapes[n]) * scale).astype(np.float32) for n in names}


def test_ffa_average_of_b_is_the_weighted_mean_of_the_updates(lora_model, task_identity):
    from federation.models import get_arrays, travelling_names

    model, settings = lora_model
    names = travelling_names(model, LoraSection())
    assert names and all(n.endswith(".lora_B") for n in names)   # only B travels under FFA
    global_b = get_arrays(model, names)
    shapes = {n: v.shape for n, v in global_b.items()}
    rng = np.random.default_rng(0)
    updates = [_random_b(names, shapes, rng) for _ in range(3)]
    weights = [3, 5, 2]

    # Reference: the weighted mean of each node's ΔW_i = s·B_i·A, computed by PEFT from the model.
    per_node = [_delta_w(model, update) for update in updates]
    expected = {m: sum(w / 10 * d[m] for w, d in zip(weights, per_node)) for m in per_node[0]}

    strategy = _strategy(FederationConfig(robust={"max_norm_ratio": None, "min_cosine": None}), settings, global_b)
    arrays, metrics = strategy.aggregate_train(1, _replies(global_b, updates, weights))
    aggregated = _delta_w(model, {k: v.numpy() for k, v in arrays.items()})

    assert aggregation.relative_error(expected, aggregated) < 1e-6
    assert metrics is not None and strategy.round_log[1]["examples"] == 10


def test_naive_fedavg_of_a_and_b_is_not_the_mean_update_and_svd_measures_its_error():
    rng = np.random.default_rng(1)
    out_dim, in_dim, rank = 32, 24, 4
    clients = [({"m": rng.standard_normal((rank, in_dim))}, {"m": rng.standard_normal((out_dim, rank))}) for _ in range(3)]
    weights = [1.0, 2.0, 3.0]
    exact = aggregation.exact_mean_update(clients, weights, scale=2.0)

    mean_a, mean_b = aggregation.naive_mean(clients, weights)
    naive = {"m": aggregation.product(mean_a["m"], mean_b["m"], 2.0)}
    naive_error = aggregation.relative_error(exact, naive)
    assert naive_error > 0.3                 # cross terms B_i·A_j: far from the mean update

    new_a, new_b, error = aggregation.svd_mean(clients, weights, rank)
    svd = {"m": aggregation.product(new_a["m"], new_b["m"], 2.0)}
    measured = aggregation.relative_error(exact, svd)
    assert abs(measured - error["total"]) < 1e-5      # the reported error is the real one
    assert 0 < measured < naive_error                  # rank-r truncation of a rank-3r mean: best possible, not exact

    # With a shared A (FFA) the mean of the products has rank r: SVD re-factorisation is exact too.
    shared = [({"m": clients[0][0]["m"]}, b) for _, b in clients]
    new_a, new_b, error = aggregation.svd_mean(shared, weights, rank)
    exact_shared = aggregation.exact_mean_update(shared, weights, scale=1.0)
    assert error["total"] < 1e-5
    assert aggregation.relative_error(exact_shared, {"m": aggregation.product(new_a["m"], new_b["m"])}) < 1e-5


def test_update_norm_on_b_is_the_weight_update_norm(lora_model):
    from federation.models import get_arrays, travelling_names, update_norm_scale

    model, settings = lora_model
    names = travelling_names(model, LoraSection())
    zero = {k: np.zeros_like(v) for k, v in get_arrays(model, names).items()}
    update = _random_b(names, {k: v.shape for k, v in zero.items()}, np.random.default_rng(2))
    delta = _delta_w(model, update)
    w_norm = np.sqrt(sum(float(np.sum(d**2)) for d in delta.values()))
    assert w_norm == pytest.approx(update_norm_scale(settings) * aggregation.update_norm(update, zero), rel=1e-5)


def test_outlier_is_rejected_skipped_node_is_left_out_and_clipping_caps_norms(lora_model, task_identity):
    from federation.attacks import apply_attack
    from federation.models import get_arrays, travelling_names

    model, settings = lora_model
    names = travelling_names(model, LoraSection())
    global_b = get_arrays(model, names)
    rng = np.random.default_rng(3)
    honest = [_random_b(names, {k: v.shape for k, v in global_b.items()}, rng) for _ in range(3)]
    malicious = apply_attack(honest[0], global_b, "scale", 20.0)
    updates = honest + [malicious, honest[1]]          # node 5 sits out (too little data)

    strategy = _strategy(FederationConfig(robust={"max_norm_ratio": 4.0, "min_cosine": None}), settings, global_b)
    arrays, _ = strategy.aggregate_train(1, _replies(global_b, updates, [2, 2, 2, 2, 2], skipped=(4,)))
    nodes = strategy.round_log[1]["nodes"]
    assert nodes["n4"]["status"] == "rejected"
    assert nodes["n5"]["status"] == "skipped" and "too little data" in nodes["n5"]["reason"]
    expected = aggregation.weighted_mean(honest, [1, 1, 1])
    assert max(float(np.abs(arrays[k].numpy() - expected[k]).max()) for k in expected) < 1e-6

    # Two nodes: no median of three, so round 2 measures against the norms accepted in round 1.
    pair = _strategy(FederationConfig(robust={"max_norm_ratio": 4.0, "min_cosine": None}), settings, global_b)
    pair.aggregate_train(1, _replies(global_b, honest[:2], [1, 1]))
    assert all(i["status"] == "used" for i in pair.round_log[1]["nodes"].values())
    pair.aggregate_train(2, _replies(global_b, [honest[2], malicious], [1, 1]))
    assert pair.round_log[2]["nodes"]["n2"]["status"] == "rejected"
    assert pair.round_log[2]["nodes"]["n1"]["status"] == "used"

    # Every node sitting out: no aggregate, the global adapter stays as it was.
    strategy = _strategy(FederationConfig(), settings, global_b)
    assert strategy.aggregate_train(1, _replies(global_b, honest[:2], [1, 1], skipped=(0, 1))) == (None, None)

    # Clipping: no update is longer than clip_norm (in weight space) after aggregation's input check.
    norms = [strategy.update_norm(u) for u in honest]
    cap = min(norms) / 2
    strategy = _strategy(FederationConfig(robust={"clip_norm": cap, "max_norm_ratio": None, "min_cosine": None}), settings, global_b)
    replies = _replies(global_b, honest, [1, 1, 1])
    strategy.aggregate_train(1, replies)
    assert all(strategy.update_norm({k: v.numpy() for k, v in r.content["arrays"].items()}) <= cap * (1 + 1e-5) for r in replies)
    assert all(info["clipped_by"] < 1 for info in strategy.round_log[1]["nodes"].values())


def test_shared_a_is_the_same_on_every_node_and_frozen(tiny_model_path):
    from federation.models import build_lora_model, lora_a_digest
    from inference.loading import load_model
    from training.config import LoraSettings

    settings = LoraSettings(dropout=0.0)
    first = build_lora_model(load_model("tiny-random").model, settings, LoraSection(seed=7))
    second = build_lora_model(load_model("tiny-random").model, settings, LoraSection(seed=7))
    other = build_lora_model(load_model("tiny-random").model, settings, LoraSection(seed=8))
    assert lora_a_digest(first) == lora_a_digest(second) != lora_a_digest(other)
    assert not any(p.requires_grad for n, p in first.named_parameters() if ".lora_A." in n)
    assert all(p.requires_grad for n, p in first.named_parameters() if ".lora_B." in n)


def test_schedule_and_config_schema():
    from federation.config import ScheduleSection
    from federation.deploy import DEFAULT_APP_SECTION, app_section
    from federation.schedule import lr_for_round
    from swarmloop.configfile import load_config
    from swarmloop.errors import UserError

    cosine = ScheduleSection(kind="cosine", lr=1e-3, min_lr=1e-4)
    lrs = [lr_for_round(cosine, r, 5) for r in range(1, 6)]
    assert lrs[0] == pytest.approx(1e-3) and lrs[-1] == pytest.approx(1e-4)
    assert all(a > b for a, b in zip(lrs, lrs[1:]))
    # the [tool.flwr.app] section the deployment packages is the one declared in pyproject.toml
    assert app_section() == DEFAULT_APP_SECTION
    config = load_config("configs/federation.toml", FederationConfig)
    assert config.robust.max_norm_ratio is not None   # robust checks on by default
    with pytest.raises(UserError, match="strategy.nme"):
        load_config("configs/federation.toml", FederationConfig, {"strategy.nme": "fedavg"})
    with pytest.raises(UserError, match="dp.enabled needs"):
        load_config("configs/federation.toml", FederationConfig, {"dp.enabled": True, "strategy.name": "krum"})


def test_svd_and_naive_modes_through_the_strategy(tiny_model_path, task_identity):
    """A and B both trained: Flower's plain FedAvg (naive) is far from the mean update; the SVD
    mode re-factorises the mean of the products and reports its true error."""
    from federation.models import build_lora_model, get_arrays, lora_scale, travelling_names
    from inference.loading import load_model
    from training.config import LoraSettings

    settings = LoraSettings(dropout=0.0, r=4)
    section = LoraSection(aggregation="svd")
    model = build_lora_model(load_model("tiny-random").model, settings, section)
    names = travelling_names(model, section)
    assert any(n.endswith(".lora_A") for n in names)
    global_arrays = get_arrays(model, names)
    rng = np.random.default_rng(4)
    updates = [{k: (v + rng.standard_normal(v.shape) * 0.1).astype(np.float32) for k, v in global_arrays.items()}
               for _ in range(3)]
    weights = [1, 2, 3]
    s = lora_scale(settings)
    exact = aggregation.exact_mean_update([aggregation.split_ab(u) for u in updates], weights, s)

    def product_of(arrays):
        a, b = aggregation.split_ab(arrays)
        return {m: aggregation.product(a[m], b[m], s) for m in b}

    results = {}
    for mode in ("svd", "naive"):
        config = FederationConfig(lora={"aggregation": mode}, robust={"max_norm_ratio": None, "min_cosine": None})
        strategy = _strategy(config, settings, global_arrays)
        arrays, _ = strategy.aggregate_train(1, _replies(global_arrays, updates, weights))
        results[mode] = (aggregation.relative_error(exact, product_of({k: v.numpy() for k, v in arrays.items()})), strategy)
    svd_error, svd_strategy = results["svd"]
    naive_error, _ = results["naive"]
    assert svd_error == pytest.approx(svd_strategy.round_log[1]["svd_error"]["total"], rel=1e-3, abs=1e-6)
    assert svd_error < naive_error and naive_error > 0.3

"""Every configured strategy, fed synthetic Flower replies through the real server path
(SwarmStrategy around Flower's strategy: configure_train, then aggregate_train; no Ray), and the
server optimizers' state through save_state / load_state as a resumed run uses it."""

from __future__ import annotations

from typing import Iterable

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid

from federation import aggregation
from federation.attacks import apply_attack
from federation.config import FederationConfig
from federation.strategy import build_strategy

KEY = "model.layers.0.mlp.down_proj.lora_B"
SHAPE = (4, 3)
OFF = {"max_norm_ratio": None, "min_cosine": None}      # the robust checks would drop the outlier


class StaticGrid(Grid):
    """A grid of `n` connected nodes, for driving a strategy by hand: only node discovery is
    used (configure_train samples from it); messages are answered by the test itself."""

    def __init__(self, n: int):
        self.n = n

    def get_node_ids(self) -> Iterable[int]:
        return list(range(1, self.n + 1))

    def set_run(self, run):  # pragma: no cover - not used by strategies
        raise NotImplementedError

    @property
    def run(self):  # pragma: no cover
        raise NotImplementedError

    def create_message(self, *args, **kwargs):  # pragma: no cover
        raise NotImplementedError

    def push_messages(self, messages):  # pragma: no cover
        raise NotImplementedError

    def pull_messages(self, message_ids):  # pragma: no cover
        raise NotImplementedError

    def send_and_receive(self, *args, **kwargs):  # pragma: no cover
        raise NotImplementedError


@pytest.fixture(autouse=True)
def task_identity():
    """Flower stamps messages with the running task's identity; a test is its own task."""
    from flwr.supercore.task_identity import TaskIdentity

    saved = (TaskIdentity._run_id, TaskIdentity._task_id, TaskIdentity._node_id)
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0
    yield
    TaskIdentity._run_id, TaskIdentity._task_id, TaskIdentity._node_id = saved


def _strategy(config: FederationConfig, n: int, round_offset: int = 0):
    return build_strategy(config, num_nodes=n, lora_scale=1.0, norm_scale=1.0, round_offset=round_offset)


def _round(strategy, server_round: int, global_value: np.ndarray, updates: list[np.ndarray],
           weights: list[int] | None = None) -> np.ndarray:
    """One round as Flower's start() drives it: configure_train to the grid's nodes, every node
    replies with its update, aggregate_train; returns the new global tensor."""
    messages = list(strategy.configure_train(server_round, ArrayRecord({KEY: Array(global_value)}),
                                             ConfigRecord({}), StaticGrid(len(updates))))
    assert len(messages) == len(updates)
    weights = weights or [1] * len(updates)
    replies = []
    for i, (message, update, weight) in enumerate(zip(sorted(messages, key=lambda m: m.metadata.dst_node_id),
                                                      updates, weights)):
        content = RecordDict({
            "arrays": ArrayRecord({KEY: Array(np.ascontiguousarray(update, dtype=np.float32))}),
            "metrics": MetricRecord({"num-examples": weight, "skipped": 0, "train-loss": 1.0, "steps": 1,
                                     "seconds": 0.1, "lr": 1e-3}),
            "node": ConfigRecord({"name": f"n{i + 1}", "skip-reason": ""}),
        })
        replies.append(Message(content=content, reply_to=message))
    arrays, _ = strategy.aggregate_train(server_round, replies)
    assert arrays is not None
    return arrays[KEY].numpy()


def _fill(*values: float) -> list[np.ndarray]:
    return [np.full(SHAPE, v, dtype=np.float32) for v in values]


def _adam_step(x, mean, m, v, r, s):
    """FedAdam (Reddi et al. 2021) with Adam's bias-corrected rate, as Flower documents it."""
    delta = mean - x
    m = s.beta_1 * m + (1 - s.beta_1) * delta
    v = s.beta_2 * v + (1 - s.beta_2) * delta**2
    eta = s.server_lr * np.sqrt(1 - s.beta_2 ** (r + 1)) / (1 - s.beta_1 ** (r + 1))
    return x + eta * m / (np.sqrt(v) + s.tau), m, v


@pytest.mark.parametrize("name, values, weights, expected", [
    ("fedavg", (1, 2, 100), (1, 2, 1), (1 + 4 + 100) / 4),            # weighted by num-examples
    ("fedprox", (1, 2, 100), (1, 2, 1), (1 + 4 + 100) / 4),           # the proximal term acts on the nodes
    ("fedmedian", (1, 2, 100), (1, 1, 1), 2.0),
    ("fedmedian", (1, 2, 3, 100), (1, 1, 1, 1), 2.5),
    ("fedtrimmedavg", (1, 2, 3, 100), (1, 1, 1, 1), 2.5),             # one of each tail cut (beta 0.25)
    ("fedtrimmedavg", (1, 2, 100), (1, 1, 1), 103 / 3),               # int(0.25·3) = 0: nothing cut
    ("fedavgm", (1, 2, 100), (1, 1, 1), 103 / 3),                     # first round: momentum = the step
])
def test_each_strategy_aggregates_synthetic_updates(name, values, weights, expected):
    strategy = _strategy(FederationConfig(strategy={"name": name}, robust=OFF), len(values))
    result = _round(strategy, 1, np.zeros(SHAPE, np.float32), _fill(*values), list(weights))
    assert result == pytest.approx(np.full(SHAPE, expected), rel=1e-6)
    log = strategy.round_log[1]
    assert all(info["status"] == "used" for info in log["nodes"].values()) and log["examples"] == sum(weights)


def test_krum_picks_an_update_from_the_cluster():
    config = FederationConfig(strategy={"name": "krum", "num_malicious_nodes": 1}, robust=OFF)
    result = _round(_strategy(config, 4), 1, np.zeros(SHAPE, np.float32), _fill(1, 2, 3, 100))
    assert np.unique(result).size == 1 and float(result.flat[0]) in (1.0, 2.0, 3.0)


def test_fedadam_takes_an_adaptive_step_the_outlier_cannot_blow_up():
    config = FederationConfig(strategy={"name": "fedadam", "server_lr": 0.1}, robust=OFF)
    updates = _fill(1, 2, 3, 100)
    result = _round(_strategy(config, 4), 1, np.zeros(SHAPE, np.float32), updates)
    expected, _, _ = _adam_step(np.zeros(SHAPE), np.mean(updates, axis=0), 0.0, 0.0, 1, config.strategy)
    assert result == pytest.approx(expected, rel=1e-5)
    assert 0 < float(result.flat[0]) < config.strategy.server_lr    # a step of about eta, whatever the mean


@pytest.mark.parametrize("name", ["fedadam", "fedavgm"])
def test_server_optimizer_state_survives_save_and_resume(name, tmp_path):
    from federation.runs import RunFolder
    from federation.state import ServerState, load_state, save_state

    config = FederationConfig(strategy={"name": name, "server_lr": 0.5}, robust=OFF)
    rng = np.random.default_rng(0)
    rounds = [[rng.normal(0.3, 0.1, SHAPE).astype(np.float32) for _ in range(3)] for _ in range(2)]
    x0 = np.zeros(SHAPE, np.float32)

    straight = _strategy(config, 3)
    x1 = _round(straight, 1, x0, rounds[0])
    x2 = _round(straight, 2, x1, rounds[1])

    crashed = _strategy(config, 3)
    assert _round(crashed, 1, x0, rounds[0]) == pytest.approx(x1)
    arrays, meta = crashed.state_dict()
    assert arrays, "the optimizer's state must be saved"
    run = RunFolder(tmp_path / "run").ensure()
    save_state(run, ServerState(round=1, rounds=2, digest=config.training_digest(), arrays_file="", strategy=meta),
               {KEY: x1}, arrays)
    state, global_arrays, strategy_arrays = load_state(run)

    resumed = _strategy(config, 3, round_offset=state.round)
    resumed.load_state_dict(strategy_arrays, state.strategy)
    assert _round(resumed, 1, global_arrays[KEY], rounds[1]) == pytest.approx(x2, rel=1e-6)
    forgetful = _strategy(config, 3, round_offset=1)      # the same resume without the state
    assert not np.allclose(_round(forgetful, 1, global_arrays[KEY], rounds[1]), x2, rtol=1e-3)


def test_sign_flip_of_ordinary_norm_passes_the_norm_check_and_fails_the_direction_check():
    rng = np.random.default_rng(1)
    direction = rng.normal(size=SHAPE)
    honest = [(direction + rng.normal(scale=0.5, size=SHAPE)).astype(np.float32) for _ in range(3)]
    zero = np.zeros(SHAPE, np.float32)
    flipped = apply_attack({KEY: honest[0]}, {KEY: zero}, "sign-flip", 1.2)[KEY]     # 1.2x the norm, reversed
    updates = honest + [flipped]

    robust = _strategy(FederationConfig(strategy={"name": "fedavg"}), 4)
    result = _round(robust, 1, zero, updates)
    nodes = robust.round_log[1]["nodes"]
    assert nodes["n4"]["status"] == "rejected" and nodes["n4"]["agreement"] < 0
    assert "points away" in nodes["n4"]["reason"]
    assert all(nodes[f"n{i}"]["status"] == "used" and nodes[f"n{i}"]["agreement"] > 0.5 for i in (1, 2, 3))
    assert result == pytest.approx(np.mean(honest, axis=0), rel=1e-5)

    norm_only = _strategy(FederationConfig(strategy={"name": "fedavg"}, robust={"min_cosine": None}), 4)
    _round(norm_only, 1, zero, updates)
    assert norm_only.round_log[1]["nodes"]["n4"]["status"] == "used"      # what the norm ratio alone lets through

    pair = _strategy(FederationConfig(strategy={"name": "fedavg"}), 2)    # no majority of two: no direction check
    _round(pair, 1, zero, [honest[0], flipped])
    assert all(info["status"] == "used" for info in pair.round_log[1]["nodes"].values())


def test_agreement_is_pairwise_and_norm_free():
    a = np.array([[1.0, 0.0], [1.0, 0.1], [0.9, 0.0], [-3.0, 0.0]])     # 4 updates of tensor 1
    b = np.array([[0.0], [0.0], [0.1], [0.0]])                          # and of tensor 2
    cosines = aggregation.pairwise_cosines([a, b], 4)
    joined = np.hstack([a, b])
    unit = joined / np.linalg.norm(joined, axis=1, keepdims=True)
    assert cosines == pytest.approx(unit @ unit.T)
    expected = unit @ unit.T
    scores = aggregation.agreement_scores(cosines)
    # four updates: the cosine reached with 2 of the 3 others (the second largest)
    assert scores == pytest.approx([sorted(np.delete(expected[i], i))[-2] for i in range(4)])
    assert scores[3] < -0.99 and min(scores[:3]) > 0.98     # the flipped one agrees with no one
    # three updates: with 1 of the 2 others (the largest), so two honest ones outvote one flipped
    three = aggregation.agreement_scores(aggregation.pairwise_cosines([a[1:], b[1:]], 3))
    assert three == pytest.approx([max(expected[1, 2], expected[1, 3]), max(expected[2, 1], expected[2, 3]),
                                   max(expected[3, 1], expected[3, 2])])
    assert three[2] < 0 < min(three[:2])
    assert aggregation.agreement_scores(aggregation.pairwise_cosines([np.zeros((3, 2))], 3)) == [0.0, 0.0, 0.0]


def test_one_large_flipped_update_among_noisy_honest_ones_is_caught():
    """Noisy honest updates (cosine about 0.15 between them, as strongly non-IID nodes send): the
    coordinate-wise median of four is dragged towards a 3x sign-flipped update until it points
    with it (why the check is pairwise); the pairwise agreement still tells them apart."""
    rng = np.random.default_rng(0)
    shape = (64, 8)
    common = rng.normal(size=shape)
    honest = [common + 2.0 * rng.normal(size=shape) for _ in range(3)]
    flipped = -3.0 * (common + 2.0 * rng.normal(size=shape))
    stack = np.stack(honest + [flipped])
    median = np.median(stack, axis=0).ravel()
    drift = float(stack[3].ravel() @ median / (np.linalg.norm(stack[3]) * np.linalg.norm(median)))
    assert drift > 0.05
    scores = aggregation.agreement_scores(aggregation.pairwise_cosines([stack], 4))
    assert scores[3] < -0.15 and min(scores[:3]) > 0.1


def test_the_direction_check_drops_a_minority_never_the_round():
    """Nearly orthogonal honest updates (what a model that cannot learn much sends) all score a
    little below zero: only the least agreeing ⌊(n-1)/2⌋ may go."""
    rng = np.random.default_rng(2)
    updates = [rng.normal(size=SHAPE).astype(np.float32) for _ in range(4)]
    scores = aggregation.agreement_scores(aggregation.pairwise_cosines([np.stack(updates)], 4))
    strategy = _strategy(FederationConfig(strategy={"name": "fedavg"}, robust={"min_cosine": 0.5}), 4)
    _round(strategy, 1, np.zeros(SHAPE, np.float32), updates)
    nodes = strategy.round_log[1]["nodes"]
    assert all(score < 0.5 for score in scores)                   # every one is below the threshold
    assert [nodes[f"n{i + 1}"]["status"] for i in range(4)] == [
        "rejected" if i == int(np.argmin(scores)) else "used" for i in range(4)]

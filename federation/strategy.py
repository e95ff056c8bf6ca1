"""Strategies from config, and the wrapper that makes any of them safe for LoRA rounds.

`build_strategy(config, ...)` returns a `SwarmStrategy` around a Flower strategy:

    SwarmStrategy                 (ours: what every round needs, whatever the algorithm)
      └─ DP wrapper, if dp.enabled (Flower's DifferentialPrivacyServerSideFixedClipping)
          └─ FedAvg | FedProx | FedAdam | FedAvgM | FedMedian | FedTrimmedAvg | Krum  (Flower's)

SwarmStrategy, on every round:
  * puts the round's learning rate (federation/schedule.py) and absolute round number into the
    train config, and counts bytes each way (federation/comm.py);
  * drops replies that failed or of nodes that sat out ("skipped" = 1, num-examples = 0: too
    little data), so Flower never divides by a zero weight or trips on an empty ArrayRecord;
  * leaves out nodes whose verified ingest failed (federation/ingest.py: they reply with a skip
    and their ingest report, recorded per node and round), and sends each round a fresh seed for
    the nodes' proof sampling;
  * measures each update's norm ‖ΔW‖_F, drops updates far above the round's median (or, with
    fewer than 3 updates, the median of earlier rounds' accepted norms: robust.max_norm_ratio),
    drops updates that point away from most of the round's others (robust.min_cosine: a
    sign-flipped update of ordinary norm) and clips the rest (robust.clip_norm);
  * optionally keeps every received update for audit (robust.save_updates);
  * with lora.aggregation = "svd", averages the products B_i·A_i and re-factorises them
    (federation/aggregation.py), recording the error;
  * under DP, gives dropped nodes a zero update and equal weights, as Flower's accountant needs;
  * keeps a per-round log (nodes, examples, norms, drops, bytes) for the metrics file.
Round numbers: Flower's `start()` counts from 1; after a resume the wrapper adds the number of
rounds already done, so schedules, FedAdam's bias correction and DP events see absolute rounds.
"""

from __future__ import annotations

import math
import secrets
import statistics
from collections.abc import Iterable
from typing import Any

import numpy as np
from flwr.serverapp.strategy import Strategy

from federation import aggregation
from federation.comm import CommunicationTracker
from federation.config import FederationConfig
from federation.ingest import INGEST_KEY
from federation.logs import get_logger
from federation.protocol import ARRAYS_KEY, METRICS_KEY, NODE_KEY
from federation.schedule import lr_for_round

log = get_logger()


def build_flower_strategy(config: FederationConfig) -> Any:
    """The Flower strategy named in the config (the algorithm, without our wrapper)."""
    from flwr.serverapp import strategy as fs

    s = config.strategy
    common = dict(
        fraction_train=s.fraction_train,
        fraction_evaluate=1.0 if s.federated_eval else 0.0,
        min_train_nodes=s.min_nodes,
        min_evaluate_nodes=s.min_nodes if s.federated_eval else 0,
        min_available_nodes=s.min_nodes,
    )
    if s.name == "fedavg":
        return fs.FedAvg(**common)
    if s.name == "fedprox":
        return fs.FedProx(**common, proximal_mu=s.proximal_mu)
    if s.name == "fedadam":
        lr = config.schedule.lr
        return fs.FedAdam(**common, eta=s.server_lr, eta_l=lr, beta_1=s.beta_1, beta_2=s.beta_2, tau=s.tau)
    if s.name == "fedavgm":
        return fs.FedAvgM(**common, server_learning_rate=s.server_lr, server_momentum=s.server_momentum)
    if s.name == "fedmedian":
        return fs.FedMedian(**common)
    if s.name == "fedtrimmedavg":
        return fs.FedTrimmedAvg(**common, beta=s.trim_beta)
    if s.name == "krum":
        return fs.Krum(**common, num_malicious_nodes=s.num_malicious_nodes)
    raise ValueError(f"unknown strategy {s.name!r}")


def build_strategy(
    config: FederationConfig,
    *,
    num_nodes: int,
    lora_scale: float,
    norm_scale: float,
    round_offset: int = 0,
    tracker: CommunicationTracker | None = None,
) -> "SwarmStrategy":
    from federation.dp import wrap_with_dp

    inner = build_flower_strategy(config)
    dp = None
    if config.dp.enabled:
        inner = dp = wrap_with_dp(inner, config.dp, num_nodes=num_nodes, b_norm_per_w_norm=1.0 / norm_scale)
    return SwarmStrategy(
        inner,
        config=config,
        lora_scale=lora_scale,
        norm_scale=norm_scale,
        round_offset=round_offset,
        tracker=tracker or CommunicationTracker(),
        dp=dp,
    )


def _arrays_of(record: Any) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in record.items()}


def _to_record(arrays: dict[str, np.ndarray]) -> Any:
    from flwr.app import Array, ArrayRecord

    return ArrayRecord({k: Array(np.ascontiguousarray(v, dtype=np.float32)) for k, v in arrays.items()})


def reply_node_name(reply: Any) -> str:
    node = reply.content.config_records.get(NODE_KEY)
    if node is not None and "name" in node:
        return str(node["name"])
    return f"node-{reply.metadata.src_node_id}"


def reply_metrics(reply: Any) -> dict[str, float]:
    record = reply.content.metric_records.get(METRICS_KEY)
    return dict(record) if record is not None else {}


class SwarmStrategy(Strategy):
    """Wraps a Flower strategy (see the module doc); flwr's Strategy.start drives the rounds."""

    HISTORY = 32        # accepted update norms kept as the reference when a round has < 3 updates

    def __init__(
        self,
        inner: Any,
        *,
        config: FederationConfig,
        lora_scale: float,
        norm_scale: float,
        round_offset: int,
        tracker: CommunicationTracker,
        dp: Any = None,
    ) -> None:
        self.inner = inner
        self.config = config
        self.lora_scale = lora_scale
        self.norm_scale = norm_scale
        self.round_offset = round_offset
        self.tracker = tracker
        self.dp = dp
        self.reference: dict[str, np.ndarray] = {}
        self.round_log: dict[int, dict[str, Any]] = {}
        self.norm_history: list[float] = []     # norms of accepted updates, earlier rounds

    def summary(self) -> None:
        self.inner.summary()

    def absolute(self, server_round: int) -> int:
        return server_round + self.round_offset

    @property
    def base_strategy(self) -> Any:
        return self.dp.strategy if self.dp is not None else self.inner

    # ---------------------------------------------------------------- train
    def configure_train(self, server_round: int, arrays: Any, config: Any, grid: Any) -> Iterable[Any]:
        current = self.absolute(server_round)
        self.reference = _arrays_of(arrays)
        config["round"] = current
        config["lr"] = lr_for_round(self.config.schedule, current, self.config.rounds)
        # drawn here, after the nodes' data is in their stores: no node can know what gets sampled
        config["integrity-seed"] = secrets.randbits(62)
        if self.dp is not None:
            # Flower checks the sample size against this at every round: set it to what FedAvg
            # will sample now (a node that died is no longer counted).
            base = self.base_strategy
            connected = len(list(grid.get_node_ids()))
            self.dp.num_sampled_clients = max(int(connected * base.fraction_train), base.min_train_nodes)
        messages = list(self.inner.configure_train(current, arrays, config, grid))
        self.tracker.sent(current, messages)
        self.round_log[current] = {"round": current, "lr": float(config["lr"]), "sampled": len(messages),
                                   "integrity_seed": int(config["integrity-seed"])}
        return messages

    def aggregate_train(self, server_round: int, replies: Iterable[Any]) -> tuple[Any, Any]:
        current = self.absolute(server_round)
        replies = list(replies)
        self.tracker.received(current, replies)
        entry = self.round_log.setdefault(current, {"round": current})
        failed = [r for r in replies if r.has_error()]
        answered = [r for r in replies if not r.has_error()]
        entry["failed"] = [f"node-{r.metadata.src_node_id}: {r.error.reason[:200]}" for r in failed]
        for reply in failed:
            log.warning("round %d: node %s failed: %s", current, reply.metadata.src_node_id, reply.error.reason[:500])

        nodes: dict[str, dict[str, Any]] = {}
        usable: list[Any] = []
        dropped: list[Any] = []
        for reply in answered:
            name = reply_node_name(reply)
            metrics = reply_metrics(reply)
            info: dict[str, Any] = {"examples": int(metrics.get("num-examples", 0)), "train_loss": metrics.get("train-loss"),
                                    "steps": int(metrics.get("steps", 0)), "optimizer_steps": int(metrics.get("optimizer-steps", 0)),
                                    "seconds": metrics.get("seconds")}
            nodes[name] = info
            ingest = reply.content.config_records.get(INGEST_KEY)
            if ingest is not None:
                info["integrity"] = dict(ingest)
            if metrics.get("skipped") or not metrics.get("num-examples"):
                node_record = reply.content.config_records.get(NODE_KEY)
                excluded = ingest is not None and bool(ingest.get("excluded"))
                info["status"] = "excluded" if excluded else "skipped"
                info["reason"] = str(node_record.get("skip-reason", "")) if node_record is not None else ""
                if excluded:
                    log.warning("round %d: %s is excluded: %s", current, name, info["reason"])
                else:
                    log.info("round %d: %s sat the round out (%s)", current, name, info["reason"])
                dropped.append(reply)
                continue
            usable.append(reply)
            info["status"] = "used"
        if self.config.robust.save_updates:
            self.save_updates(current, usable)

        norms = {reply_node_name(r): self.update_norm(_arrays_of(r.content[ARRAYS_KEY])) for r in usable}
        for name, norm in norms.items():
            nodes[name]["update_norm"] = norm
        usable, rejected = self.reject_outliers(usable, norms, current)
        usable, turned = self.reject_directions(usable, current, nodes)
        for reply in rejected + turned:
            nodes[reply_node_name(reply)]["status"] = "rejected"
        for reply in rejected:
            name = reply_node_name(reply)
            nodes[name]["reason"] = f"update norm {norms[name]:.4g} is more than {self.config.robust.max_norm_ratio:g}x the median norm"
        dropped += rejected + turned
        if self.dp is None and self.config.robust.clip_norm:
            for reply in usable:
                self.clip_reply(reply, nodes[reply_node_name(reply)])

        entry["nodes"] = nodes
        entry["examples"] = sum(info["examples"] for info in nodes.values() if info["status"] == "used")
        if self.dp is not None:
            usable = self.prepare_dp_replies(usable, dropped)
        if not usable:
            log.warning("round %d: no usable update, the global adapter stays as it was", current)
            entry["aggregated"] = False
            return None, None

        if self.config.lora.aggregation == "svd":
            arrays, metrics = self.aggregate_svd(current, usable, entry)
        else:
            arrays, metrics = self.inner.aggregate_train(current, usable)
        entry["aggregated"] = arrays is not None
        entry["train_metrics"] = {k: float(v) for k, v in (metrics or {}).items() if isinstance(v, (int, float))}
        return arrays, metrics

    # ---------------------------------------------------------------- robust checks
    def update_norm(self, update: dict[str, np.ndarray]) -> float:
        """‖ΔW‖_F of a node's update against the round's global adapter."""
        if self.config.lora.aggregation == "ffa":
            return self.norm_scale * aggregation.update_norm(update, self.reference)
        a_new, b_new = aggregation.split_ab(update)
        a_ref, b_ref = aggregation.split_ab(self.reference)
        total = 0.0
        for module in b_new:
            delta = aggregation.product(a_new[module], b_new[module], self.lora_scale) - aggregation.product(
                a_ref[module], b_ref[module], self.lora_scale
            )
            total += float(np.sum(delta**2))
        return math.sqrt(total)

    def reject_outliers(self, replies: list[Any], norms: dict[str, float], current: int) -> tuple[list[Any], list[Any]]:
        """Drop updates whose norm exceeds max_norm_ratio x a reference: the median of this round's
        norms when there are 3 or more, else the median of the norms accepted in earlier rounds
        (so 2 nodes are covered from round 2 on). The accepted norms join that history."""
        ratio = self.config.robust.max_norm_ratio
        if ratio is None or not replies:
            return replies, []
        if len(replies) >= 3:
            reference, basis = statistics.median(norms.values()), "this round's median"
        elif self.norm_history:
            reference, basis = statistics.median(self.norm_history[-self.HISTORY:]), "the median of earlier rounds"
        else:
            self.norm_history += list(norms.values())    # the first round of one or two nodes sets the scale
            return replies, []
        kept, rejected = [], []
        for reply in replies:
            name = reply_node_name(reply)
            if reference > 0 and norms[name] > ratio * reference:
                log.warning("round %d: rejected %s: update norm %.4g is %.1fx %s (%.4g)", current, name,
                            norms[name], norms[name] / reference, basis, reference)
                rejected.append(reply)
            else:
                kept.append(reply)
        self.norm_history += [norms[reply_node_name(r)] for r in kept]
        return kept, rejected

    def delta_stacks(self, updates: list[dict[str, np.ndarray]]) -> Iterable[np.ndarray]:
        """Per module, the nodes' updates stacked [nodes, ...], in a space where inner products
        are those of ΔW up to one common factor: ΔB under FFA (A·Aᵀ = I/3), else ΔW itself
        (one module at a time: full products are large)."""
        if self.config.lora.aggregation == "ffa":
            for key in sorted(updates[0]):
                yield np.stack([u[key].astype(np.float64) - self.reference[key] for u in updates])
            return
        a_ref, b_ref = aggregation.split_ab(self.reference)
        split = [aggregation.split_ab(u) for u in updates]
        for module in sorted(b_ref):
            before = aggregation.product(a_ref[module], b_ref[module], self.lora_scale)
            yield np.stack([aggregation.product(a[module], b[module], self.lora_scale) - before for a, b in split])

    def reject_directions(self, replies: list[Any], current: int, nodes: dict[str, dict[str, Any]]) -> tuple[list[Any], list[Any]]:
        """Drop updates that do not agree with most of the round: an update is kept when its
        cosine similarity reaches robust.min_cosine with at least half of the other updates
        (3 or more updates: two cannot outvote each other), at most a minority of them per round.
        Norm-free, so a sign-flipped update of ordinary norm is caught; pairwise, so one large
        update cannot drag the reference the way it drags a coordinate-wise median of an even
        number of noisy updates."""
        threshold = self.config.robust.min_cosine
        if threshold is None or len(replies) < 3:
            return replies, []
        updates = [_arrays_of(r.content[ARRAYS_KEY]) for r in replies]
        scores = aggregation.agreement_scores(aggregation.pairwise_cosines(self.delta_stacks(updates), len(updates)))
        # An outlier check drops a minority, never the round: at most ⌊(n-1)/2⌋ updates, the
        # least agreeing first (nearly orthogonal honest updates can all score a little below 0).
        below = sorted((i for i, score in enumerate(scores) if score < threshold), key=lambda i: scores[i])
        dropped = set(below[: (len(replies) - 1) // 2])
        kept, rejected = [], []
        for index, (reply, score) in enumerate(zip(replies, scores)):
            name = reply_node_name(reply)
            nodes[name]["agreement"] = score
            if index in dropped:
                nodes[name]["reason"] = (f"update points away from the round's other updates (its cosine with half "
                                         f"of them reaches only {score:.3f} < {threshold:g})")
                log.warning("round %d: rejected %s: %s", current, name, nodes[name]["reason"])
                rejected.append(reply)
            else:
                kept.append(reply)
        return kept, rejected

    def save_updates(self, current: int, replies: list[Any]) -> None:
        """RUN/updates/round-NNNN/: the round's global adapter and every update received, as sent."""
        from pathlib import Path

        from safetensors.numpy import save_file

        folder = Path(self.config.run.dir) / "updates" / f"round-{current:04d}"
        folder.mkdir(parents=True, exist_ok=True)
        save_file({k: np.ascontiguousarray(v) for k, v in self.reference.items()}, str(folder / "global.safetensors"))
        for reply in replies:
            arrays = {k: np.ascontiguousarray(v) for k, v in _arrays_of(reply.content[ARRAYS_KEY]).items()}
            save_file(arrays, str(folder / f"{reply_node_name(reply)}.safetensors"),
                      metadata={"num-examples": str(int(reply_metrics(reply).get("num-examples", 0)))})

    def clip_reply(self, reply: Any, info: dict[str, Any]) -> None:
        max_b_norm = self.config.robust.clip_norm / self.norm_scale
        if self.config.lora.aggregation != "ffa":
            return  # config validation forbids it; norms are exact on B only with a frozen A
        clipped, factor = aggregation.clip_update(_arrays_of(reply.content[ARRAYS_KEY]), self.reference, max_b_norm)
        if factor < 1.0:
            reply.content[ARRAYS_KEY] = _to_record(clipped)
            info["clipped_by"] = factor

    def prepare_dp_replies(self, usable: list[Any], dropped: list[Any]) -> list[Any]:
        """Flower's accountant needs n equal-weight replies: a node that sat out or was rejected
        contributes a zero update (the current global adapter), which keeps σ·C/n calibrated."""
        replies = usable + dropped
        for reply in dropped:
            reply.content[ARRAYS_KEY] = _to_record(self.reference)
        for reply in replies:
            reply.content[METRICS_KEY]["num-examples"] = 1
        return replies

    # ---------------------------------------------------------------- svd
    def aggregate_svd(self, current: int, replies: list[Any], entry: dict[str, Any]) -> tuple[Any, Any]:
        """Mean of the products B_i·A_i, re-factorised at rank r; the metrics go through the
        wrapped strategy's metric aggregation as usual."""
        clients = [aggregation.split_ab(_arrays_of(r.content[ARRAYS_KEY])) for r in replies]
        weights = [float(reply_metrics(r)["num-examples"]) for r in replies]
        rank = next(iter(clients[0][0].values())).shape[0]
        new_a, new_b, error = aggregation.svd_mean(clients, weights, rank)
        entry["svd_error"] = error
        log.info("round %d: SVD re-factorisation relative error %.3g (worst module %.3g)", current, error["total"], error["max"])
        base = self.base_strategy
        metrics = base.train_metrics_aggr_fn([r.content for r in replies], base.weighted_by_key)
        return _to_record(aggregation.join_ab(new_a, new_b)), metrics

    # ---------------------------------------------------------------- evaluate (federated, optional)
    def configure_evaluate(self, server_round: int, arrays: Any, config: Any, grid: Any) -> Iterable[Any]:
        current = self.absolute(server_round)
        config["round"] = current
        messages = list(self.inner.configure_evaluate(current, arrays, config, grid))
        self.tracker.sent(current, messages)
        return messages

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Any]) -> Any:
        current = self.absolute(server_round)
        replies = list(replies)
        self.tracker.received(current, replies)
        usable = [r for r in replies if not r.has_error() and reply_metrics(r).get("num-examples")]
        if not usable:
            return None
        metrics = self.inner.aggregate_evaluate(current, usable)
        if metrics is not None:
            self.round_log.setdefault(current, {"round": current})["federated_eval"] = dict(metrics)
        return metrics

    # ---------------------------------------------------------------- state for resume
    def state_dict(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Arrays and JSON-able values a resumed run needs to continue the same optimisation."""
        arrays: dict[str, np.ndarray] = {}
        meta: dict[str, Any] = {"comm": self.tracker.state_dict(), "norm_history": self.norm_history[-self.HISTORY:]}
        base = self.base_strategy
        for attr in ("m_t", "v_t"):  # FedAdam / FedOpt moments
            values = getattr(base, attr, None)
            if values:
                arrays.update({f"{attr}/{k}": v for k, v in values.items()})
        momentum = getattr(base, "momentum_vector", None)  # FedAvgM: a list in ArrayRecord order
        if momentum is not None:
            arrays.update({f"momentum/{i:06d}": v for i, v in enumerate(momentum)})
        if self.dp is not None and self.dp.accountant is not None:
            meta["accountant"] = self.dp.accountant.state_dict()
        return arrays, meta

    def load_state_dict(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        base = self.base_strategy
        self.tracker.load_state_dict(meta.get("comm", {}))
        self.norm_history = [float(v) for v in meta.get("norm_history", [])]
        for attr in ("m_t", "v_t"):
            values = {k.split("/", 1)[1]: v for k, v in arrays.items() if k.startswith(attr + "/")}
            if values and hasattr(base, attr):
                setattr(base, attr, values)
        names = sorted(k for k in arrays if k.startswith("momentum/"))
        if names and hasattr(base, "momentum_vector"):
            base.momentum_vector = [arrays[k] for k in names]
        if self.dp is not None and self.dp.accountant is not None and "accountant" in meta:
            self.dp.accountant.load_state_dict(meta["accountant"])

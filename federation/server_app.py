"""The Flower ServerApp: rounds of federated LoRA training, then the next checkpoint.

    load the base (the current checkpoint) and wrap it with the federated LoRA adapter
    resume from RUN/state if a previous invocation completed some rounds
    wait for the expected nodes (at most strategy.connect_timeout_s), then strategy.start():
      each round: nodes train locally -> SwarmStrategy checks and aggregates their updates
      after each round (evaluate_fn): central eval, metrics.json + plot, state saved
    merge the global adapter into the base -> training's build_checkpoint -> registry

`app` (deployment) reads the config from the run config key "config-path" (the run folder's
federation.json, written by federation/deploy.py); the simulation builds the same app with
`make_server_app(config)`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp

from federation.config import FederationConfig
from federation.logs import get_logger
from federation.runs import RunFolder, RunResult

log = get_logger()

CONFIG_PATH_KEY = "config-path"


def eval_key(method: str) -> str:
    """The central metric that says how a round went (lower-is-better loss for SFT)."""
    return "loss" if method == "sft" else "preference_accuracy"


def wait_for_nodes(grid: Grid, expected: int, minimum: int, timeout: float) -> int:
    """Wait until `expected` nodes are connected, or `timeout` seconds; then go ahead with at
    least `minimum` (fewer: an error, the run cannot start)."""
    deadline = time.monotonic() + timeout
    connected = len(list(grid.get_node_ids()))
    while connected < expected and time.monotonic() < deadline:
        time.sleep(0.5)
        connected = len(list(grid.get_node_ids()))
    if connected < minimum:
        raise RuntimeError(f"only {connected} of {expected} nodes connected within {timeout:.0f} s (min_nodes is {minimum})")
    if connected < expected:
        log.warning("going ahead with %d of %d nodes", connected, expected)
    return connected


class RoundCloser:
    """The evaluate_fn given to Strategy.start: called before round 1 (round 0: the base) and
    after every round. Central eval, metrics file and plot, and the server state for resume."""

    def __init__(self, *, config: FederationConfig, run: RunFolder, model: Any, tokenizer: Any, settings: Any,
                 eval_set: Any, strategy: Any, state: Any, started: float, base: tuple[str, str]) -> None:
        from federation.state import ServerState

        self.config = config
        self.run = run
        self.model = model
        self.tokenizer = tokenizer
        self.settings = settings
        self.eval_set = eval_set
        self.strategy = strategy
        self.started = started
        self.base = base
        self.state: ServerState | None = state
        self.history: list[dict[str, Any]] = list(state.history) if state else []
        self.examples_by_node: dict[str, int] = dict(state.examples_by_node) if state else {}
        self.steps = state.steps if state else 0
        self.seconds_before = state.seconds if state else 0.0
        self.last_arrays: dict[str, Any] | None = None

    def evaluate(self) -> dict[str, float]:
        from training.eval import evaluate_dataset

        if self.eval_set is None:
            return {}
        result = evaluate_dataset(self.model, self.tokenizer, self.eval_set, self.config.method, settings=self.settings)
        return {k: float(v) for k, v in result.metrics.items()}

    def __call__(self, server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        from federation.models import set_arrays
        from federation.report import plot_metrics, write_metrics
        from federation.state import ServerState, save_state

        current = self.strategy.absolute(server_round)
        if server_round == 0 and self.strategy.round_offset > 0:
            return None  # the base was evaluated before the crash; it is in the history
        values = {k: v.numpy() for k, v in arrays.items()}
        set_arrays(self.model, values)
        eval_started = time.monotonic()
        metrics = self.evaluate()
        record: dict[str, Any] = {"round": current, "eval": metrics, "seconds": round(self.elapsed(), 2),
                                  "eval_seconds": round(time.monotonic() - eval_started, 2)}
        if current > 0:
            entry = self.strategy.round_log.get(current, {})
            nodes = entry.get("nodes", {})
            used = {n: i for n, i in nodes.items() if i.get("status") == "used"}
            losses = [i["train_loss"] for i in used.values() if i.get("train_loss") is not None]
            record.update(
                lr=entry.get("lr"),
                train_loss=sum(losses) / len(losses) if losses else None,
                examples=entry.get("examples", 0),
                aggregated=entry.get("aggregated", False),
                nodes=nodes,
                failed=entry.get("failed", []),
                bytes=self.strategy.tracker.round_summary(current),
            )
            for key in ("svd_error", "federated_eval"):
                if key in entry:
                    record[key] = entry[key]
            for name, info in used.items():
                self.examples_by_node[name] = max(self.examples_by_node.get(name, 0), int(info["examples"]))
                self.steps += int(info.get("steps", 0))
            if self.strategy.dp is not None:
                from federation.dp import privacy_summary

                record["epsilon"] = privacy_summary(self.config.dp, self.strategy.dp.accountant).epsilon
        self.history = [h for h in self.history if h["round"] != current] + [record]
        write_metrics(self.run.metrics_path, self.history)
        plot_metrics(self.run.plot_path, self.history, eval_key=eval_key(self.config.method))
        if current > 0:
            strategy_arrays, strategy_meta = self.strategy.state_dict()
            self.state = ServerState(
                round=current, rounds=self.config.rounds, digest=self.config.training_digest(), arrays_file="",
                base_ref=self.base[0], base_sha256=self.base[1],
                history=self.history, strategy=strategy_meta, examples_by_node=self.examples_by_node,
                steps=self.steps, seconds=self.elapsed(),
            )
            save_state(self.run, self.state, values, strategy_arrays)
        log.info("round %d closed: eval %s", current, {k: round(v, 4) for k, v in metrics.items()})
        numeric = {k: v for k, v in metrics.items() if isinstance(v, float) and v == v and abs(v) != float("inf")}
        return MetricRecord(numeric)

    def elapsed(self) -> float:
        return self.seconds_before + (time.monotonic() - self.started)


def run_server(grid: Grid, config: FederationConfig, *, mode: str) -> RunResult:
    from federation import models
    from federation.dataset import eval_dataset
    from federation.ingest import integrity_summary
    from federation.protocol import round_config
    from federation.publish import build_and_publish
    from federation.state import clear_state, load_state
    from federation.strategy import build_strategy
    from inference.loading import load_model
    from inference.model_refs import resolve_model_ref
    from training.config import load_training_settings

    started = time.monotonic()
    run = RunFolder(config.run.dir).ensure()
    signing_key = load_signing_key(config)               # before any round: a bad key fails now
    trusted_node_keys = read_trusted_node_keys(config)
    settings = load_training_settings(config.client.training_config, config.client.training_overrides)
    models.check_lora_settings(settings.lora)

    previous = load_state(run) if config.run.resume else None
    if not config.run.resume:
        clear_state(run)
    if previous is not None and previous[0].digest != config.training_digest():
        raise RuntimeError(f"{run.root} holds a run with other settings (base, method, LoRA, strategy, DP or nodes); "
                           "use another run.dir or run.resume = false")
    done = previous[0].round if previous else 0
    if previous and run.result_path.is_file():
        finished = RunResult.load(run.result_path)
        if finished.version is not None and finished.rounds >= config.rounds:
            log.info("run %s already finished (%s); nothing to do", run.root, finished.version)
            return finished

    resolved = resolve_model_ref(previous[0].base_ref if previous and previous[0].base_ref else config.base)
    if previous and previous[0].base_sha256 and resolved.weights_sha256 != previous[0].base_sha256:
        raise RuntimeError(f"the base of the run in {run.root} ({previous[0].base_ref}) no longer has the weights it started on")
    loaded = load_model(resolved)
    full_bytes = models.model_num_bytes(loaded.model, settings.checkpoint.dtype)
    peft_model = models.build_lora_model(loaded.model, settings.lora, config.lora)
    names = models.travelling_names(peft_model, config.lora)
    if previous:
        models.set_arrays(peft_model, previous[1])
        log.info("resuming %s after round %d of %d", run.root, done, config.rounds)

    expected = len(config.nodes) or config.strategy.min_nodes
    strategy = build_strategy(
        config, num_nodes=expected, lora_scale=models.lora_scale(settings.lora),
        norm_scale=models.update_norm_scale(settings.lora), round_offset=done,
    )
    if previous:
        strategy.load_state_dict(previous[2], previous[0].strategy)
    eval_set = eval_dataset(config.eval.store, config.eval.data, config.method, max_examples=config.eval.max_examples)
    closer = RoundCloser(config=config, run=run, model=peft_model, tokenizer=loaded.tokenizer, settings=settings,
                         eval_set=eval_set, strategy=strategy, state=previous[0] if previous else None, started=started,
                         base=(pinned_ref(config.base, resolved), resolved.weights_sha256))

    if config.rounds > done:
        wait_for_nodes(grid, expected, config.strategy.min_nodes, config.strategy.connect_timeout_s)
        fixed = round_config(
            config, training_settings_json=settings.model_dump_json(include={"runtime", "lora", config.method, "eval"}),
            base_ref=pinned_ref(config.base, resolved),
            base_sha256=resolved.weights_sha256, base_version=resolved.version,
            lora_a_digest=models.lora_a_digest(peft_model),
            seed=settings.recipe(config.method).seed, trusted_node_keys=trusted_node_keys,
        )
        strategy.start(
            grid=grid,
            initial_arrays=ArrayRecord({k: _array(v) for k, v in models.get_arrays(peft_model, names).items()}),
            num_rounds=config.rounds - done,
            timeout=config.strategy.round_timeout_s,
            train_config=ConfigRecord(dict(fixed)),
            evaluate_config=ConfigRecord(dict(fixed)),
            evaluate_fn=closer,
        )
    # The closer set the last global adapter on the model; build the next checkpoint from it.
    from federation.dp import privacy_summary

    privacy = privacy_summary(config.dp, strategy.dp.accountant if strategy.dp is not None else None)
    communication = {**strategy.tracker.totals(), "full_checkpoint_bytes": full_bytes,
                     "lora_tensors_bytes": sum(v.nbytes for v in models.get_arrays(peft_model, names).values())}
    history = closer.history
    evals = [h for h in history if h.get("eval")]
    result = RunResult(
        mode=mode, run_dir=run.root, method=config.method, rounds=closer.state.round if closer.state else done,
        resumed_from_round=done, base=config.base, history=history,
        eval=evals[-1]["eval"] if evals else {}, baseline_eval=next((h["eval"] for h in history if h["round"] == 0), {}),
        communication=communication, privacy=privacy.model_dump(mode="json"),
        examples_by_node=closer.examples_by_node, seconds=round(closer.elapsed(), 2),
    )
    integrity = integrity_summary(history, settings=ingest_settings_summary(config, trusted_node_keys))
    result = result.model_copy(update={"integrity": integrity})
    published = build_and_publish(config, peft_model, loaded.tokenizer, resolved, result, settings,
                                  privacy=privacy, steps=closer.steps, run=run, integrity=integrity,
                                  signing_key=signing_key)
    result = result.model_copy(update=published)
    result.save(run.result_path)
    log.info("run finished: %s (%s)", result.version, result.published or result.checkpoint)
    return result


def load_signing_key(config: FederationConfig) -> Any:
    """The trainer's key that signs the checkpoint (created, mode 0600, on first use), or None."""
    if config.publish.signing_key is None:
        return None
    from traces.signing import SigningError, load_or_create_key

    try:
        return load_or_create_key(config.publish.signing_key)
    except SigningError as exc:
        raise RuntimeError(f"publish.signing_key: {exc}") from None


def read_trusted_node_keys(config: FederationConfig) -> str:
    """The allow-list file's text (checked here, sent to the nodes each round), or ""."""
    path = config.integrity.trusted_node_keys
    if path is None:
        return ""
    from traces.signing import SigningError, TrustedKeys

    try:
        TrustedKeys.from_toml(path)
    except SigningError as exc:
        raise RuntimeError(f"integrity.trusted_node_keys: {exc}") from None
    return Path(path).read_text()


def ingest_settings_summary(config: FederationConfig, trusted_node_keys: str) -> dict[str, Any]:
    """The ingest policy as the manifest records it (the allow-list by name)."""
    names: list[str] = []
    if trusted_node_keys:
        import tomllib

        names = sorted(tomllib.loads(trusted_node_keys).get("keys", {}))
    return {"trusted_node_keys": names, "require_signatures": config.integrity.require_signatures,
            "proof_sample_rate": config.integrity.proof_sample_rate,
            "proof_verifier_model": config.integrity.proof_verifier_model or config.base}


def pinned_ref(ref: str, resolved: Any) -> str:
    """The base as nodes must load it: a registry reference pinned to the version resolved now, so
    a `latest` that moves during the run cannot change what a node trains on."""
    if resolved.kind == "registry" and "@" not in ref.split(":", 1)[1]:
        return f"{ref}@{resolved.version}"
    return ref


def _array(values: Any) -> Any:
    import numpy as np
    from flwr.app import Array

    return Array(np.ascontiguousarray(values))


def load_config_from_context(context: Context) -> FederationConfig:
    path = context.run_config.get(CONFIG_PATH_KEY)
    if not path:
        raise RuntimeError(f"the run config has no {CONFIG_PATH_KEY!r}: start runs with `swarmloop fed deploy`")
    return FederationConfig.model_validate_json(Path(str(path)).read_text())


def make_server_app(config: FederationConfig | None = None, *, mode: str = "deployment") -> ServerApp:
    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        run_server(grid, config if config is not None else load_config_from_context(context), mode=mode)

    return server


app = make_server_app()

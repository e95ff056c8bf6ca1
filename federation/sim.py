"""`swarmloop fed sim`: the Flower simulation, N virtual nodes each bound to its trace store.

Same ServerApp and ClientApp as a deployment; Ray runs the ClientApps (one actor per
`simulation.client_cpus` cores). Each virtual node gets its settings (store path, name, the
test-only attack flag) through `make_client_app`, keyed by its partition id.
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from typing import Any, Iterator

from federation.config import FederationConfig, NodeSpec
from federation.runs import RunFolder, RunResult
from swarmloop.errors import UserError


def node_config(node: NodeSpec) -> dict[str, Any]:
    """A node's settings as its ClientApp reads them from node_config."""
    from federation import protocol

    values: dict[str, Any] = {protocol.NODE_NAME: node.name}
    if node.store is not None:
        values[protocol.NODE_DATA_PATH] = str(node.store)
    if node.attack != "none":
        values[protocol.NODE_ATTACK] = node.attack
        values[protocol.NODE_ATTACK_FACTOR] = float(node.attack_factor)
    return values


def prepare_run(config: FederationConfig, *, need_stores: bool) -> tuple[FederationConfig, RunFolder]:
    """Resolve paths, check the nodes, write RUN/federation.json."""
    config = config.resolved()
    if not config.nodes:
        raise UserError("the config lists no [[nodes]]")
    if need_stores:
        for node in config.nodes:
            if node.store is None:
                raise UserError(f"node {node.name}: no store given")
            if not node.store.exists():
                raise UserError(f"node {node.name}: {node.store}: no such trace store")
    check_integrity_files(config)
    run = RunFolder(config.run.dir).ensure()
    tmp = run.config_path.with_suffix(".json.tmp")
    tmp.write_text(config.model_dump_json(indent=2))
    tmp.replace(run.config_path)
    return config, run


def check_integrity_files(config: FederationConfig) -> None:
    """The trainer's signing key (created now if missing) and the node allow-list must be usable
    before anything starts: one line naming the key otherwise."""
    from traces.signing import SigningError, TrustedKeys, load_or_create_key

    try:
        if config.publish.signing_key is not None:
            load_or_create_key(config.publish.signing_key)
    except SigningError as exc:
        raise UserError(f"publish.signing_key: {exc}") from None
    try:
        if config.integrity.trusted_node_keys is not None:
            TrustedKeys.from_toml(config.integrity.trusted_node_keys)
    except SigningError as exc:
        raise UserError(f"integrity.trusted_node_keys: {exc}") from None


@contextmanager
def flower_logs(run: RunFolder, *, verbose: bool) -> Iterator[None]:
    """Flower's log (and ours) into RUN/logs/server.log; the console gets our lines and Flower's
    warnings only unless verbose, so the progress bar stays readable."""
    from federation.logs import ConsoleFilter

    logger = logging.getLogger("flwr")
    handler = logging.FileHandler(run.logs_dir / "server.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    handler.setLevel(logging.INFO)
    consoles = [h for h in logger.handlers if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)]
    console_filter = ConsoleFilter()
    logger.addHandler(handler)
    if not verbose:
        for console in consoles:
            console.addFilter(console_filter)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        handler.close()
        for console in consoles:
            console.removeFilter(console_filter)


def run_simulation(config: FederationConfig, *, progress: bool = False, verbose: bool = False) -> RunResult:
    """Run (or resume) a federated run as a Flower simulation; returns its RunResult."""
    from flwr.simulation import run_simulation as flower_simulation

    from federation.client_app import make_client_app
    from federation.progress import RoundProgress
    from federation.server_app import eval_key, make_server_app

    config, run = prepare_run(config, need_stores=True)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")            # Ray workers inherit this process's environment
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    overrides = {i: node_config(node) for i, node in enumerate(config.nodes)}
    backend_config = {
        "client_resources": {"num_cpus": config.simulation.client_cpus, "num_gpus": 0.0},
        "init_args": {"num_cpus": config.simulation.ray_num_cpus or os.cpu_count() or 1,
                      "logging_level": "warning", "log_to_driver": verbose},
    }
    run.result_path.unlink(missing_ok=True) if not config.run.resume else None
    with flower_logs(run, verbose=verbose), RoundProgress(run.metrics_path, config.rounds, eval_key(config.method), enabled=progress):
        flower_simulation(
            server_app=make_server_app(config, mode="simulation"),
            client_app=make_client_app(overrides),
            num_supernodes=len(config.nodes),
            backend_config=backend_config,
            verbose_logging=verbose,
        )
    if not run.result_path.is_file():
        raise RuntimeError(f"the simulation ended without a result; see {run.logs_dir / 'server.log'}")
    return RunResult.load(run.result_path)

"""`swarmloop fed sim|deploy`: federated LoRA rounds over node trace stores with Flower.

flwr, torch and transformers are imported inside the commands so `--help` stays fast.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Optional

import typer

from swarmloop.errors import UserError

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)

DEFAULT_CONFIG = Path("configs/federation.toml")

_CONFIG_HELP = "Federation config (TOML, validated by federation.config.FederationConfig)."
_ROUNDS_HELP = "Number of rounds (overrides `rounds` in the config)."
_RUN_DIR_HELP = "Run folder for metrics, plot, logs, state and checkpoint (overrides run.dir)."
_FRESH_HELP = "Start over instead of resuming after the last completed round in the run folder."
_SIGNING_KEY_HELP = ("The trainer's Ed25519 key file (created with mode 0600 if missing): sign the new checkpoint's "
                     "manifest, so nodes that trust the key accept it (overrides publish.signing_key).")
_VERBOSE_HELP = "Show every Flower log line on the console (default: swarmloop's lines and warnings; all go to RUN/logs/)."


def _load(config: Path, rounds: Optional[int], run_dir: Optional[Path], fresh: bool, extra: dict[str, Any] | None = None):
    from federation.config import FederationConfig
    from swarmloop.configfile import load_config

    overrides = {"rounds": rounds, "run.dir": str(run_dir) if run_dir else None, "run.resume": False if fresh else None}
    overrides.update(extra or {})
    return load_config(config, FederationConfig, overrides)


def _summary(result: Any) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"federated {result.method} · {result.mode}", title_justify="left", show_header=False)
    table.add_column("what")
    table.add_column("value")
    table.add_row("rounds", f"{result.rounds} (resumed after {result.resumed_from_round})" if result.resumed_from_round else str(result.rounds))
    table.add_row("checkpoint", f"{result.version}  {result.published or result.checkpoint}")
    for key in ("loss", "preference_accuracy", "reward_margin"):
        if key in result.eval:
            before = result.baseline_eval.get(key)
            table.add_row(f"eval {key}", f"{before:.4f} → {result.eval[key]:.4f}" if before is not None else f"{result.eval[key]:.4f}")
    comm = result.communication
    if comm.get("full_checkpoint_bytes"):
        share = comm["mean_per_node_round_bytes"] / comm["full_checkpoint_bytes"]
        table.add_row("bytes per node per round", f"{comm['mean_per_node_round_bytes'] / 1e6:.3f} MB ({share:.2%} of the checkpoint)")
    if result.privacy.get("dp"):
        table.add_row("privacy", f"ε = {result.privacy['epsilon']:.3f}, δ = {result.privacy['delta']}")
    table.add_row("examples by node", ", ".join(f"{k}: {v}" for k, v in result.examples_by_node.items()) or "-")
    if result.signed_by:
        table.add_row("signed by", result.signed_by)
    ingest = result.integrity.get("ingest", {}).get("nodes", {})
    if ingest:
        table.add_row("ingest checks", ", ".join(
            f"{name}: {n['records_checked']} records, {n['proofs_checked']} proofs"
            + (f", EXCLUDED {n['rounds_excluded']}x" if n["rounds_excluded"] else "") for name, n in sorted(ingest.items())))
    rejected = result.integrity.get("rejected_updates", {})
    if rejected:
        table.add_row("rejected updates", ", ".join(f"{name}: {len(r)}x" for name, r in sorted(rejected.items())))
    table.add_row("run folder", str(result.run_dir))
    Console().print(table)


def _run(kind: str, config: Any, verbose: bool) -> None:
    try:
        if kind == "sim":
            from federation.sim import run_simulation

            result = run_simulation(config, progress=True, verbose=verbose)
        else:
            from federation.deploy import run_deployment

            result = run_deployment(config, progress=True, verbose=verbose)
    except UserError:
        raise
    except KeyboardInterrupt as exc:
        print(f"interrupted: {exc or 'stopped'}", file=sys.stderr, flush=True)
        raise typer.Exit(130) from None
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise typer.Exit(1) from None
    _summary(result)


@app.command("sim")
def sim(
    config: Path = typer.Option(DEFAULT_CONFIG, "--config", "-c", help=_CONFIG_HELP),
    rounds: Optional[int] = typer.Option(None, "--rounds", min=1, help=_ROUNDS_HELP),
    run_dir: Optional[Path] = typer.Option(None, "--run-dir", help=_RUN_DIR_HELP),
    fresh: bool = typer.Option(False, "--fresh", help=_FRESH_HELP),
    signing_key: Optional[Path] = typer.Option(None, "--signing-key", metavar="PATH", help=_SIGNING_KEY_HELP),
    verbose: bool = typer.Option(False, "--verbose", "-v", help=_VERBOSE_HELP),
) -> None:
    """Flower simulation on this machine (Ray): one virtual node per node store of the config."""
    _run("sim", _load(config, rounds, run_dir, fresh, {"publish.signing_key": _path(signing_key)}), verbose)


@app.command("deploy")
def deploy(
    config: Path = typer.Option(DEFAULT_CONFIG, "--config", "-c", help=_CONFIG_HELP),
    rounds: Optional[int] = typer.Option(None, "--rounds", min=1, help=_ROUNDS_HELP),
    run_dir: Optional[Path] = typer.Option(None, "--run-dir", help=_RUN_DIR_HELP),
    fresh: bool = typer.Option(False, "--fresh", help=_FRESH_HELP),
    superlink: Optional[str] = typer.Option(
        None, "--superlink", help="Join an existing SuperLink at HOST:PORT (its SuperNodes started elsewhere) "
        "instead of starting flower-superlink and one flower-supernode per node store on loopback."),
    signing_key: Optional[Path] = typer.Option(None, "--signing-key", metavar="PATH", help=_SIGNING_KEY_HELP),
    verbose: bool = typer.Option(False, "--verbose", "-v", help=_VERBOSE_HELP),
) -> None:
    """Real Flower deployment: flower-superlink + one flower-supernode per node store on
    loopback (or join a SuperLink), `flwr run` without runtime dependency installation; every
    process started is stopped at the end, on failure and on Ctrl-C."""
    _run("deploy", _load(config, rounds, run_dir, fresh, {"deployment.superlink": superlink,
                                                          "publish.signing_key": _path(signing_key)}), verbose)


def _path(value: Optional[Path]) -> Optional[str]:
    return str(value) if value is not None else None

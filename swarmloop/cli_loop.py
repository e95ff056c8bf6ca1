"""`swarmloop loop`: the whole loop on one machine."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

DEFAULT_CONFIG = Path("configs/loop.toml")


def loop_command(
    config: Optional[Path] = typer.Option(
        None, "--config", "-c",
        help="Loop config (TOML, see configs/loop.toml). Default: configs/loop.toml if it exists, else built-in defaults."),
    iterations: Optional[int] = typer.Option(None, "--iterations", "-n", min=1, help="Loop iterations (overrides loop.iterations)."),
    nodes: Optional[int] = typer.Option(None, "--nodes", min=1, help="Number of node processes (overrides loop.nodes)."),
    runtime: Optional[str] = typer.Option(
        None, "--runtime", help="deployment (real flower-superlink + supernodes) or simulation (overrides loop.runtime)."),
    run_dir: Optional[Path] = typer.Option(None, "--run-dir", help="Where the timestamped run folder goes (overrides loop.run_dir)."),
) -> None:
    """Serve, collect, federate, publish, redeploy and evaluate: the closed loop.

    Starts N real nodes following one checkpoint registry, drives real prompts and checkable tasks
    through them with the openai client (consent `local`: privacy-filtered traces stay in each
    node's store), turns the samples into preference pairs with verifier judges, runs federated
    LoRA rounds over the node stores with Flower, publishes the next version, waits until every
    node hot-swapped to it, and compares the two versions on held-out data. The run folder gets
    report.md, metrics.json and PNG plots. Ctrl-C stops every process it started.
    """
    import logging

    from rich.console import Console

    from swarmloop.configfile import load_config
    from swarmloop.loop_config import LoopConfig

    if config is None and DEFAULT_CONFIG.is_file():
        config = DEFAULT_CONFIG
    settings = load_config(config, LoopConfig, {
        "loop.iterations": iterations, "loop.nodes": nodes, "loop.runtime": runtime,
        "loop.run_dir": str(run_dir) if run_dir else None,
    })
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    console = Console()

    from swarmloop.loop import run_loop

    def show(message: str) -> None:
        console.log(message)

    result = run_loop(settings, show=show)
    console.print(f"[bold]report:[/bold] {result.run_dir / 'report.md'}")


def register(app: typer.Typer) -> None:
    app.command("loop")(loop_command)

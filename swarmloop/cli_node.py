"""`swarmloop node serve`, `swarmloop node batch` and `swarmloop node key`.

Every node has an Ed25519 key ([identity] key_path; created with mode 0600 on first start, a key
file others can read is refused): it signs every trace and feedback record the node stores, and
`swarmloop node key` prints the line that puts it in a federation's trusted-keys allow-list.

Torch, transformers and the server are imported inside the commands so `--help` stays fast.
"""

from __future__ import annotations

import errno
import logging
import os
import sys
from pathlib import Path
from typing import Any, Optional

import typer

from swarmloop.errors import UserError

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)

CONSENT_HELP = ("Trace capture: off (default, nothing is stored), local (privacy-filtered traces are kept in the "
                "store and used only by federated rounds on this node; they never leave it), share (may also be "
                "exported or pushed to a dataset repository). local/share need --store.")


def load_node_config(config: Optional[Path], overrides: dict[str, Any]):
    from inference.config import NodeConfig
    from swarmloop.configfile import load_config

    return load_config(config, NodeConfig, overrides)


def load_node_key(config) -> Any:
    """The node's signing key (traces.signing.NodeKey), created on first use; one line if unusable."""
    from traces.signing import SigningError, load_or_create_key

    path = config.resolved_key_path()
    try:
        return load_or_create_key(path)
    except SigningError as exc:
        raise UserError(str(exc)) from None
    except OSError as exc:
        raise UserError(f"{path}: cannot create or read the node key ({exc.strerror or exc.__class__.__name__})") from None


def node_name(config, key) -> str:
    """The node's name: the configured node_id, else its key's id."""
    return config.node_id or key.node_id


def build_capture_hook(config, key: Any = None) -> Any:
    """The trace-capture hook, or None when consent is off (then nothing is stored, not one byte).
    With `key`, every stored record is signed and carries the key's node id."""
    if config.consent == "off":
        return None
    if config.store is None:
        raise UserError(f"consent {config.consent!r} needs a trace store: pass --store PATH or set `store` in the config")
    try:
        from inference.capture import build_capture_hook as build
    except ModuleNotFoundError as exc:
        if exc.name == "inference.capture":
            raise UserError("trace capture is not available in this installation (inference.capture is missing)") from None
        raise
    name = node_name(config, key) if key is not None else config.resolved_node_id()
    return build(Path(config.store), name, config.consent, config.privacy, key=key)


def _check_ref(ref: str) -> None:
    from inference.model_refs import parse_model_ref

    parse_model_ref(ref)  # a malformed ref is a one-line error before anything starts


def _check_redeploy(redeploy) -> None:
    """A registry that cannot be parsed or a trusted-keys file that cannot be read: one line, before anything starts."""
    from inference.hotswap_checks import load_trusted_keys

    if redeploy.registry is not None:
        _check_ref(redeploy.registry)
    try:
        load_trusted_keys(redeploy.trusted_keys)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    if redeploy.admin_token_env and not redeploy.admin_token and not os.environ.get(redeploy.admin_token_env):
        logging.getLogger("swarmloop.node").warning(
            "redeploy.admin_token_env names %s, which is not set: POST /admin/reload is disabled",
            redeploy.admin_token_env)


def bind_listening_socket(host: str, port: int):
    """Bind host:port now, before the model loads, so a port in use is a one-line error at once.
    uvicorn serves on this very socket: no other process can take the port in between."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise UserError(f"cannot listen on {host}:{port}: unknown host ({exc.strerror})") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: restarts skip TIME_WAIT
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        reason = "the port is already in use" if exc.errno == errno.EADDRINUSE else exc.strerror or str(exc)
        raise UserError(f"cannot listen on {host}:{port}: {reason}") from None
    return sock


def check_batch_output(out_path: Path) -> None:
    """OUT must be a file we can append to; say so in one line before the model loads."""
    if out_path.is_dir():
        raise UserError(f"{out_path}: is a directory; give the output file's path")
    if not out_path.parent.is_dir():
        raise UserError(f"{out_path}: the folder {out_path.parent} does not exist")
    try:
        with open(out_path, "ab"):
            pass
    except OSError as exc:
        raise UserError(f"{out_path}: cannot write the output file ({exc.strerror or exc.__class__.__name__})") from None


def _setup_logging(console) -> None:
    if console.is_terminal:
        from rich.logging import RichHandler

        handler: logging.Handler = RichHandler(console=console, show_path=False)
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("swarmloop")
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    root.propagate = False


def _status_text(state, url: str) -> str:
    identity = state.identity
    if state.status == "ready" and identity is not None:
        engine = state.engine
        return (f"[green]●[/] serving {identity.ref} {identity.version} on {url} · "
                f"{state.requests_served} served · {engine.active_rows} decoding · {engine.queue_depth} queued")
    if state.status == "failed":
        return f"[red]●[/] {state.error}"
    return f"[yellow]●[/] loading {state.config.model.ref} · listening on {url} (503 until ready)"


def run_node(cfg, hook, start_from_registry: bool = False, key: Any = None) -> str | None:
    """Run uvicorn until SIGINT/SIGTERM; return the load error if the model could not load."""
    import signal

    import uvicorn
    from rich.console import Console
    from rich.live import Live
    from rich.text import Text

    from inference.server import create_app

    console = Console(stderr=True)
    sock = bind_listening_socket(cfg.server.host, cfg.server.port)
    _setup_logging(console)
    failure: dict[str, str] = {}
    server: uvicorn.Server | None = None

    def on_failed(message: str) -> None:
        failure["error"] = message
        if server is not None:
            server.should_exit = True

    if key is not None:
        stored = (f"stored records are signed, activation proofs {'on' if cfg.integrity.proofs else 'off'}"
                  if hook is not None else "nothing is stored")
        logging.getLogger("swarmloop.node").info("node %s (%s), public key %s, key file %s; %s",
                                                 key.node_id, node_name(cfg, key), key.public_key_b64, key.path, stored)
    app = create_app(cfg, capture_hook=hook, on_load_failed=on_failed, start_from_registry=start_from_registry,
                     node_key=key)
    state = app.state.node
    port = sock.getsockname()[1]  # the real one when the config asked for port 0
    url = f"http://{cfg.server.host}:{port}"
    server = uvicorn.Server(uvicorn.Config(
        app, host=cfg.server.host, port=port, log_level="warning", access_log=False,
        timeout_graceful_shutdown=cfg.server.graceful_shutdown_s, lifespan="on"))
    # uvicorn re-raises the signal it shut down for; absorb it so a requested stop exits 0
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: None)
    if console.is_terminal:
        with Live(console=console, refresh_per_second=2, transient=True,
                  get_renderable=lambda: Text.from_markup(_status_text(state, url))):
            server.run(sockets=[sock])
    else:
        def say(s) -> None:
            console.print(Text.from_markup(_status_text(s, url)), highlight=False, soft_wrap=True)

        state.on_change(say)
        say(state)
        server.run(sockets=[sock])
    console.print("node stopped", highlight=False)
    return failure.get("error")


@app.command()
def serve(
    config: Optional[Path] = typer.Option(None, "--config", help="Node config TOML (see configs/node.toml); defaults apply without it."),
    model: Optional[str] = typer.Option(None, "--model", help="Model reference: embedded:NAME, tiny-random, a folder, registry:PATH\\[@vN] or hf:ORG/NAME\\[@rev]."),
    host: Optional[str] = typer.Option(None, "--host", help="Address to listen on (default 127.0.0.1)."),
    port: Optional[int] = typer.Option(None, "--port", help="TCP port to listen on (default 8000)."),
    store: Optional[Path] = typer.Option(None, "--store", help="Node-local trace store (SQLite file), used when consent is not off."),
    consent: Optional[str] = typer.Option(None, "--consent", help=CONSENT_HELP),
    registry: Optional[str] = typer.Option(
        None, "--registry", metavar="REF",
        help="Follow this checkpoint registry and hot-swap to its latest version: registry:PATH (a local folder "
             "registry) or hf:ORG/NAME (a Hub repo's version tags). Without --model the node starts on the "
             "registry's latest (the configured model if it has none)."),
    admin_token: Optional[str] = typer.Option(
        None, "--admin-token",
        help="Bearer token that enables POST /admin/reload (prefer \\[redeploy] admin_token_env in the config: "
             "a flag is visible to other users in the process list)."),
) -> None:
    """Serve a model over an OpenAI-compatible API (chat completions, models, health, metrics, admin)."""
    cfg = load_node_config(config, {"model.ref": model, "server.host": host, "server.port": port,
                                    "store": str(store) if store else None, "consent": consent,
                                    "redeploy.registry": registry, "redeploy.admin_token": admin_token})
    _check_ref(cfg.model.ref)
    _check_redeploy(cfg.redeploy)
    key = load_node_key(cfg)
    hook = build_capture_hook(cfg, key)
    if cfg.consent == "off" and cfg.store is not None:
        logging.getLogger("swarmloop.node").info("consent is off: the store is not used, nothing is captured")
    error = run_node(cfg, hook, start_from_registry=cfg.redeploy.registry is not None and model is None, key=key)
    if error:
        raise UserError(f"model failed to load: {error}")


@app.command()
def batch(
    in_path: Path = typer.Argument(..., metavar="IN.jsonl", help="Requests in the OpenAI Batch format, one JSON object a line."),
    out_path: Path = typer.Argument(..., metavar="OUT.jsonl", help="Results, appended line by line; a re-run skips custom_ids already here."),
    model: Optional[str] = typer.Option(None, "--model", help="Model reference (as for `node serve`)."),
    config: Optional[Path] = typer.Option(None, "--config", help="Node config TOML for model, dtype and limits."),
    store: Optional[Path] = typer.Option(None, "--store", help="Trace store for the completions, used when consent is not off."),
    consent: Optional[str] = typer.Option(None, "--consent", help=CONSENT_HELP),
) -> None:
    """Run a JSONL file of chat-completion requests through the batched engine (resumable)."""
    if in_path.is_dir():
        raise UserError(f"{in_path}: is a directory, not an input file")
    if not in_path.is_file():
        raise UserError(f"{in_path}: no such input file")
    check_batch_output(out_path)
    cfg = load_node_config(config, {"model.ref": model, "store": str(store) if store else None, "consent": consent})
    _check_ref(cfg.model.ref)
    hook = build_capture_hook(cfg, load_node_key(cfg) if cfg.consent != "off" else None)
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from inference.batch import run_batch

    console = Console(stderr=True)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=False) as progress:
        task = progress.add_task(f"loading {cfg.model.ref}", total=None)

        def on_progress(stage: str, done: int, total: int) -> None:
            if stage == "load":
                progress.update(task, description=f"loading {cfg.model.ref}", total=total, completed=0)
            else:
                progress.update(task, description="generating", total=total, completed=done)

        try:
            summary = run_batch(in_path, out_path, cfg, capture_hook=hook, on_progress=on_progress)
        finally:
            if hook is not None:
                hook.close()
    repaired = " (cut a torn last line from an earlier crash)" if summary.repaired_tail else ""
    console.print(f"{summary.succeeded} succeeded, {summary.failed} errors, "
                  f"{summary.skipped} already done{repaired} -> {out_path}")
    if summary.capture_errors:
        console.print(f"[yellow]the capture hook failed on {summary.capture_errors} completions "
                      "(their replies are in OUT, their traces were not stored)[/]")


@app.command()
def key(
    config: Optional[Path] = typer.Option(None, "--config", help="Node config TOML: \\[identity] key_path, store and node_id decide which key and name."),
    store: Optional[Path] = typer.Option(None, "--store", help="The node's trace store (the default key lives next to it)."),
    key_path: Optional[Path] = typer.Option(None, "--key-path", help="The key file itself (overrides \\[identity] key_path)."),
    name: Optional[str] = typer.Option(None, "--name", help="Label of the key in the allow-list (default: the config's node_id, else the key's id)."),
) -> None:
    """Print the node's trusted-keys line (name = "base64 public key") for a federation allow-list.

    Creates the key (mode 0600) if the node has none yet, so it can be trusted before its first start. The line goes to stdout (put it under the \\[keys] table of the trusted-keys TOML); the node id and key file go to stderr.
    """
    import json

    cfg = load_node_config(config, {"store": str(store) if store else None,
                                    "identity.key_path": str(key_path) if key_path else None})
    existed = cfg.resolved_key_path().exists()
    node_key = load_node_key(cfg)
    label = name or node_name(cfg, node_key)
    typer.echo(f"{json.dumps(label)} = \"{node_key.public_key_b64}\"")
    typer.echo(f"# node id {node_key.node_id}, key file {node_key.path}{'' if existed else ' (created)'}", err=True)

"""`swarmloop checkpoint verify|publish|list|promote|rollback`.

Torch-free: verifying and publishing a checkpoint only reads files and hashes them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from swarmloop.errors import UserError

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)


def _folder_of(target: str) -> Path:
    """A checkpoint folder given as a path, or any model reference (registry:PATH@vN, hf:ORG/NAME@rev)."""
    path = Path(target).expanduser()
    if path.is_dir():
        return path
    from inference.model_refs import ModelRefError, parse_model_ref, resolve_model_ref

    ref = parse_model_ref(target)
    if ref.kind == "folder":
        raise UserError(f"{target}: no such checkpoint folder")
    try:
        return resolve_model_ref(ref).path
    except ModelRefError as exc:
        raise UserError(str(exc)) from None


@app.command("verify")
def verify(
    target: str = typer.Argument(..., metavar="PATH|REF", help="A checkpoint folder or a model reference (registry:PATH(@vN), hf:ORG/NAME(@rev))."),
) -> None:
    """Check every file of a checkpoint against the sha256 in its manifest.json (exit 2 naming the first bad file)."""
    from training.manifest import VerificationError, verify_folder

    folder = _folder_of(target)
    try:
        manifest = verify_folder(folder)
    except VerificationError as exc:
        raise UserError(f"{folder}: {exc}") from None
    parent = f", parent {manifest.parent_version}" if manifest.parent_version else ""
    typer.echo(f"ok: {folder} is {manifest.version}{parent}; {len(manifest.files)} files match, "
               f"weights sha256 {manifest.weights_sha256}")


@app.command("publish")
def publish(
    path: Path = typer.Argument(..., help="The checkpoint folder to publish (it must verify)."),
    registry: Optional[Path] = typer.Option(None, "--registry", help="A local folder registry (v0001/, v0002/, … and a `latest` pointer)."),
    hub: Optional[str] = typer.Option(None, "--hub", metavar="ORG/NAME", help="A Hugging Face Hub model repo: one commit and tag per version; token from $HF_TOKEN."),
    promote: bool = typer.Option(True, "--promote/--no-promote", help="Registry only: point `latest` at the new version."),
    public: bool = typer.Option(False, "--public", help="Hub only: create the repo public (default: private, or private in the config's hub section)."),
    config: Optional[Path] = typer.Option(None, "--config", help="Training config TOML with a hub section (default: configs/training.toml)."),
) -> None:
    """Publish a verified checkpoint to a local registry or a Hugging Face Hub repo; refuses one that fails verification."""
    if (registry is None) == (hub is None):
        raise UserError("pass exactly one of --registry DIR or --hub ORG/NAME")
    if not path.is_dir():
        raise UserError(f"{path}: no such checkpoint folder")
    if registry is not None:
        from training.registry import LocalRegistry

        reg = LocalRegistry(registry)
        version = reg.publish(path, promote=promote)
        typer.echo(f"published {version} to {registry} (latest: {reg.latest()})")
        return
    from training.config import load_training_settings
    from training.hub import HubPublisher, HubPublishError

    settings = load_training_settings(config, {"hub.private": False} if public else None)
    try:
        result = HubPublisher(hub, settings=settings.hub).publish(path)
    except HubPublishError as exc:
        raise UserError(str(exc)) from None
    deleted = f"; removed {len(result.deleted)} stale file(s)" if result.deleted else ""
    typer.echo(f"published {result.version} to {result.repo_id} (commit {result.commit_oid[:12]}, tag {result.tag}{deleted})")


@app.command("list")
def list_versions(
    registry: Path = typer.Option(..., "--registry", help="The local folder registry to list."),
) -> None:
    """List a registry's versions with lineage, training and evaluation summary."""
    from rich.console import Console
    from rich.table import Table

    from training.manifest import VerificationError
    from training.registry import LocalRegistry

    reg = LocalRegistry(registry)
    versions = reg.versions()
    if not versions:
        raise UserError(f"{registry}: no versions published")
    latest = reg.latest()
    table = Table(title=f"registry {registry}", title_justify="left")
    for column in ("version", "latest", "parent", "method", "rounds", "steps", "examples", "weights sha256", "created"):
        table.add_column(column)
    for version in versions:
        try:
            m = reg.get(version)
        except VerificationError as exc:
            table.add_row(version, "", "", f"[red]{exc}[/]", "", "", "", "", "")
            continue
        table.add_row(
            version, "●" if version == latest else "", m.parent_version or "–", m.training.method,
            str(m.training.rounds), str(m.training.steps), str(sum(m.training.examples_by_node.values())),
            m.weights_sha256[:12] + "…", m.created_at[:19],
        )
    Console().print(table)


@app.command("promote")
def promote_version(
    version: str = typer.Argument(..., help="The version to make latest, e.g. v3."),
    registry: Path = typer.Option(..., "--registry", help="The local folder registry."),
) -> None:
    """Point the registry's `latest` at VERSION (atomically); nodes following it hot-swap."""
    from training.registry import LocalRegistry

    reg = LocalRegistry(registry)
    reg.verify(version)  # never promote a version that no longer verifies
    typer.echo(f"latest is now {reg.promote(version)} in {registry}")


@app.command("rollback")
def rollback(
    registry: Path = typer.Option(..., "--registry", help="The local folder registry."),
) -> None:
    """Point the registry's `latest` at the version before the current one."""
    from training.registry import LocalRegistry

    reg = LocalRegistry(registry)
    typer.echo(f"latest is now {reg.rollback()} in {registry}")

"""`swarmloop checkpoint verify|publish|trust|list|promote|rollback`.

Torch-free: verifying and publishing a checkpoint only reads files and hashes them.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer

from swarmloop.errors import UserError

if TYPE_CHECKING:
    from traces.signing import NodeKey

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


def _signing_key(path: Path) -> "NodeKey":
    """The trainer's key at `path`, created (mode 0600) if it does not exist yet."""
    from traces.signing import SigningError, load_or_create_key

    try:
        return load_or_create_key(path)
    except SigningError as exc:
        raise UserError(f"--signing-key {exc}") from None


_SIGNING_KEY_HELP = ("The trainer's Ed25519 key file (PEM; created with mode 0600 if missing): sign the manifest "
                     "(manifest.sig), so nodes that trust this key accept the checkpoint.")


@app.command("verify")
def verify(
    target: str = typer.Argument(..., metavar="PATH|REF", help="A checkpoint folder or a model reference (registry:PATH(@vN), hf:ORG/NAME(@rev))."),
    trusted_keys: Optional[Path] = typer.Option(None, "--trusted-keys", metavar="FILE", help="A trusted-keys TOML ([keys] name = \"base64 public key\"): also require manifest.sig to be signed by one of them, and name the signer."),
) -> None:
    """Check every file of a checkpoint against the sha256 in its manifest.json (exit 2 naming the first bad file); with --trusted-keys also its manifest signature."""
    from training.manifest import SIGNATURE_NAME, VerificationError, verify_folder

    folder = _folder_of(target)
    signed = ""
    if trusted_keys is not None:
        from traces.signing import SigningError, TrustedKeys
        from training.signing import verify_manifest_signature

        try:
            keys = TrustedKeys.from_toml(trusted_keys)
        except SigningError as exc:
            raise UserError(f"--trusted-keys {exc}") from None
        try:
            signer = verify_manifest_signature(folder, keys)
        except VerificationError as exc:
            raise UserError(f"{folder}: {exc}") from None
        signed = f"; signed by {signer}"
    elif (folder / SIGNATURE_NAME).is_file():
        signed = f"; has {SIGNATURE_NAME} (not checked: pass --trusted-keys)"
    try:
        manifest = verify_folder(folder)
    except VerificationError as exc:
        raise UserError(f"{folder}: {exc}") from None
    parent = f", parent {manifest.parent_version}" if manifest.parent_version else ""
    typer.echo(f"ok: {folder} is {manifest.version}{parent}; {len(manifest.files)} files match, "
               f"weights sha256 {manifest.weights_sha256}{signed}")


@app.command("trust")
def trust(
    signing_key: Path = typer.Option(..., "--signing-key", metavar="PATH", help="A swarmloop Ed25519 key file (a trainer's or a node's; created with mode 0600 if missing)."),
    name: str = typer.Option("trainer", "--name", help="The name the key gets in the trusted-keys file."),
    out: Optional[Path] = typer.Option(None, "--out", metavar="FILE", help="Add (or replace) the entry in this trusted-keys TOML, creating it if needed (the file is rewritten: comments go); default: print a complete trusted-keys file."),
) -> None:
    """Export a key's public half as a trusted-keys TOML: for nodes' redeploy.trusted_keys (a trainer key) or a federation's integrity.trusted_node_keys (node keys)."""
    from traces.signing import SigningError, TrustedKeys

    key = _signing_key(signing_key)
    entries: dict[str, str] = {}
    if out is not None and out.exists():
        import tomllib

        try:
            TrustedKeys.from_toml(out)      # a broken file is reported, never silently rewritten
        except SigningError as exc:
            raise UserError(f"--out {exc}") from None
        entries = tomllib.loads(out.read_text()).get("keys", {})
    mine = key.public_key_b64
    entries = {n: k for n, k in entries.items() if n != name and k.strip() != mine}   # one name per key
    entries[name] = mine
    try:
        text = TrustedKeys(entries).to_toml()
    except SigningError as exc:
        raise UserError(str(exc)) from None
    if out is None:
        typer.echo(text, nl=False)
        return
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(text)
    tmp.replace(out)
    typer.echo(f"{name} = {key.node_id} written to {out} ({len(entries)} key(s))")


@app.command("publish")
def publish(
    path: Path = typer.Argument(..., help="The checkpoint folder to publish (it must verify)."),
    registry: Optional[Path] = typer.Option(None, "--registry", help="A local folder registry (v0001/, v0002/, … and a `latest` pointer)."),
    hub: Optional[str] = typer.Option(None, "--hub", metavar="ORG/NAME", help="A Hugging Face Hub model repo: one commit and tag per version; token from $HF_TOKEN."),
    promote: bool = typer.Option(True, "--promote/--no-promote", help="Registry only: point `latest` at the new version."),
    public: bool = typer.Option(False, "--public", help="Hub only: create the repo public (default: private, or private in the config's hub section)."),
    config: Optional[Path] = typer.Option(None, "--config", help="Training config TOML with a hub section (default: configs/training.toml)."),
    signing_key: Optional[Path] = typer.Option(None, "--signing-key", metavar="PATH", help=_SIGNING_KEY_HELP + " The checkpoint folder is signed in place before publishing."),
) -> None:
    """Publish a verified checkpoint to a local registry or a Hugging Face Hub repo; refuses one that fails verification."""
    if (registry is None) == (hub is None):
        raise UserError("pass exactly one of --registry DIR or --hub ORG/NAME")
    if not path.is_dir():
        raise UserError(f"{path}: no such checkpoint folder")
    if signing_key is not None:
        from training.manifest import VerificationError, verify_folder
        from training.signing import sign_manifest

        key = _signing_key(signing_key)
        try:
            verify_folder(path)         # never sign a checkpoint that does not match its manifest
        except VerificationError as exc:
            raise UserError(f"refusing to sign {path}: {exc}") from None
        sign_manifest(path, key)
        typer.echo(f"signed {path} with {key.node_id}")
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

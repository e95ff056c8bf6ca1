"""Publish checkpoints to a Hugging Face Hub model repo, one commit and one tag per version.

Layout: the checkpoint folder is the repo root (so `from_pretrained("org/name", revision="v0002")`
and `hf:org/name@v0002` load it directly), every version is a commit on `main` tagged with its
version, and `main` is the latest. Files of an older version that the new one does not have are
deleted in the same commit. The repo is private unless configured otherwise; the token comes from
the environment ([hub] token_env, default HF_TOKEN).

A checkpoint whose manifest does not verify is refused before any request is made. The upload goes
through the official huggingface_hub client (create_repo, list_repo_refs, list_repo_files,
create_commit, create_tag); the tests run it against a loopback fake of those endpoints, not the Hub.
Torch-free.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from training.config import HubSettings
from training.manifest import MANIFEST_NAME, SIGNATURE_NAME, Manifest, VerificationError, verify_folder
from training.registry import normalize_version

KEEP_REMOTE = {".gitattributes"}   # the Hub's own file: never deleted


class HubPublishError(Exception):
    """Publishing to the Hub was refused or failed; the message says why in one line."""


@dataclass
class HubPublishPlan:
    """Everything publish() will send, computed without touching the network."""

    repo_id: str
    version: str
    manifest: Manifest
    folder: Path
    paths: list[str]             # repo paths uploaded, in order (manifest-listed files, then the manifest)
    operations: list[Any]        # huggingface_hub.CommitOperationAdd, one per path
    commit_message: str
    commit_description: str
    tag: str
    private: bool


@dataclass
class HubPublishResult:
    repo_id: str
    version: str
    tag: str
    commit_oid: str
    commit_url: str
    deleted: list[str]


def _commit_text(manifest: Manifest) -> tuple[str, str]:
    training = manifest.training
    message = f"swarmloop {manifest.version}: {training.method}"
    if manifest.parent_version:
        message += f" from {manifest.parent_version}"
    description = (
        f"weights sha256 {manifest.weights_sha256}\n"
        f"parent {manifest.parent_version or '-'} ({manifest.parent_weights_sha256 or '-'})\n"
        f"base model {manifest.base_model}\n"
        f"examples by node {training.examples_by_node}, rounds {training.rounds}, steps {training.steps}"
    )
    return message, description


class HubPublisher:
    def __init__(
        self,
        repo_id: str,
        *,
        settings: HubSettings | None = None,
        token: str | None = None,
        endpoint: str | None = None,
    ):
        if repo_id.count("/") != 1 or not all(repo_id.split("/")):
            raise HubPublishError(f"{repo_id!r}: expected ORG/NAME")
        self.repo_id = repo_id
        self.settings = settings or HubSettings()
        self._token = token
        self.endpoint = endpoint  # None: HF_ENDPOINT or https://huggingface.co

    def plan(self, checkpoint: Path | str) -> HubPublishPlan:
        """Verify `checkpoint` and build the exact commit operations; no network."""
        from huggingface_hub import CommitOperationAdd

        folder = Path(checkpoint)
        try:
            manifest = verify_folder(folder)
        except VerificationError as exc:
            raise HubPublishError(f"refusing to publish {folder}: {exc}") from None
        version = normalize_version(manifest.version)
        paths = sorted(manifest.files) + [MANIFEST_NAME]
        if (folder / SIGNATURE_NAME).is_file():
            paths.append(SIGNATURE_NAME)
        operations = [CommitOperationAdd(path_in_repo=p, path_or_fileobj=str(folder / p)) for p in paths]
        message, description = _commit_text(manifest)
        return HubPublishPlan(
            repo_id=self.repo_id, version=version, manifest=manifest, folder=folder, paths=paths,
            operations=operations, commit_message=message, commit_description=description, tag=version,
            private=self.settings.private,
        )

    def token(self) -> str:
        token = self._token or os.environ.get(self.settings.token_env)
        if not token:
            raise HubPublishError(f"set {self.settings.token_env} to a Hugging Face token with write access")
        return token

    def _api(self) -> Any:
        from huggingface_hub import HfApi

        return HfApi(endpoint=self.endpoint, token=self.token())

    def versions(self) -> list[str]:
        """Versions published so far: the repo's tags that are versions, oldest first."""
        api = self._api()
        with _hub_errors(self.repo_id):
            tags = [t.name for t in api.list_repo_refs(self.repo_id).tags]
        found = []
        for tag in tags:
            try:
                found.append(normalize_version(tag))
            except Exception:
                continue
        return sorted(set(found), key=lambda v: int(v[1:]))

    def publish(self, checkpoint: Path | str) -> HubPublishResult:
        """Verify, create the repo if needed, commit the checkpoint to `main`, tag it with its version."""
        from huggingface_hub import CommitOperationDelete

        plan = self.plan(checkpoint)
        api = self._api()
        with _hub_errors(self.repo_id):
            api.create_repo(self.repo_id, repo_type="model", private=plan.private, exist_ok=True)
            refs = api.list_repo_refs(self.repo_id)
            if plan.tag in {t.name for t in refs.tags}:
                raise HubPublishError(f"{plan.version} is already published in {self.repo_id}")
            has_main = any(b.name == "main" for b in refs.branches)
            remote = api.list_repo_files(self.repo_id) if has_main else []
            stale = sorted(p for p in remote if p not in set(plan.paths) and p not in KEEP_REMOTE)
            operations = plan.operations + [CommitOperationDelete(path_in_repo=p) for p in stale]
            commit = api.create_commit(
                self.repo_id,
                operations=operations,
                commit_message=plan.commit_message,
                commit_description=plan.commit_description,
            )
            api.create_tag(self.repo_id, tag=plan.tag, revision=commit.oid, tag_message=plan.commit_message)
        return HubPublishResult(
            repo_id=self.repo_id, version=plan.version, tag=plan.tag, commit_oid=commit.oid,
            commit_url=str(commit.commit_url), deleted=stale,
        )


class _hub_errors:
    """Turn the client's HTTP and offline errors into one-line HubPublishErrors."""

    def __init__(self, repo_id: str):
        self.repo_id = repo_id

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> bool:
        if exc is None or isinstance(exc, HubPublishError):
            return False
        from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

        if isinstance(exc, RuntimeError) and exc.__cause__ is not None:
            exc = exc.__cause__  # huggingface_hub wraps LFS upload failures
        if isinstance(exc, OfflineModeIsEnabled):
            raise HubPublishError("cannot reach the Hub: HF_HUB_OFFLINE is set") from None
        if isinstance(exc, HfHubHTTPError):
            status = getattr(getattr(exc, "response", None), "status_code", "?")
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
            raise HubPublishError(f"{self.repo_id}: the Hub answered {status}: {first_line[:200]}") from None
        if isinstance(exc, OSError) or exc.__class__.__module__.startswith(("httpx", "httpcore")):
            raise HubPublishError(f"{self.repo_id}: cannot reach the Hub ({exc.__class__.__name__}: {str(exc)[:200]})") from None
        return False

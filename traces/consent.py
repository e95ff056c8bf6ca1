"""Consent: what an operator agreed to keep, and what a single request may opt out of.

Node level (set by the operator, `off` by default):
    off    nothing of a prompt or reply is stored anywhere (no store, no log line)
    local  stored on the node; used only by federated rounds run on the node; never exported
    share  stored, and may also be exported or pushed to a dataset repository

Per request, a client can lower (never raise) the level: the header `X-Swarmloop-Trace: off`
(or `local`) or the request metadata field `{"swarmloop_trace": "off"}` (or `"local"`).
"""

from __future__ import annotations

from typing import Literal, Mapping

ConsentLevel = Literal["off", "local", "share"]
CONSENT_LEVELS: tuple[ConsentLevel, ...] = ("off", "local", "share")
DEFAULT_CONSENT: ConsentLevel = "off"

OPT_OUT_HEADER = "x-swarmloop-trace"
OPT_OUT_METADATA_KEY = "swarmloop_trace"

_RANK = {level: rank for rank, level in enumerate(CONSENT_LEVELS)}
# Spellings a client may use in the header or the metadata field.
_REQUEST_WORDS: dict[str, ConsentLevel] = {
    "off": "off", "0": "off", "false": "off", "no": "off", "none": "off",
    "local": "local",
    "share": "share", "on": "share", "1": "share", "true": "share", "yes": "share",
}


def parse_consent(value: str) -> ConsentLevel:
    level = (value or "").strip().lower()
    if level not in _RANK:
        raise ValueError(f"consent must be one of {', '.join(CONSENT_LEVELS)}, not {value!r}")
    return level  # type: ignore[return-value]


def rank(level: str) -> int:
    return _RANK[level]


def allows(stored: str, wanted: str) -> bool:
    """Does a record stored at level `stored` satisfy a reader asking for at least `wanted`?"""
    return _RANK[stored] >= _RANK[wanted]


def effective_consent(node_level: str, headers: Mapping[str, str] | None = None,
                      metadata: Mapping[str, object] | None = None) -> ConsentLevel:
    """The level one request is stored at: the node's level, lowered by the request's own wishes.

    An unrecognised request value counts as `off`: when in doubt, keep nothing."""
    level = parse_consent(node_level)
    wishes = []
    if headers:
        value = headers.get(OPT_OUT_HEADER)
        if value is None:  # headers should arrive lower-cased; accept any case anyway
            value = next((v for k, v in headers.items() if k.lower() == OPT_OUT_HEADER), None)
        if value is not None:
            wishes.append(value)
    if metadata and OPT_OUT_METADATA_KEY in metadata:
        wishes.append(metadata[OPT_OUT_METADATA_KEY])
    for wish in wishes:
        asked = _REQUEST_WORDS.get(str(wish).strip().lower(), "off")
        if _RANK[asked] < _RANK[level]:
            level = asked
    return level

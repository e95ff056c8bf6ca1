"""Sealed blocks: how compaction packs a store's records many to a row.

One record compressed on its own (a chat turn is ~700 B) leaves most of its redundancy in place:
consecutive records share phrasing, and excerpts of one conversation share whole turns. A block
of `seal_block_records` consecutive records (128 by default), compressed together with the
store's dictionary, is about 20 % smaller than the same records one by one, and one block row
replaces 128 record rows and their index entries. Per-record access stays: a record is found by
seq (blocks cover seq ranges), by id or by content hash (the store's `sealed_keys` table), and
reading one costs one block decompression (about 0.1 ms, and blocks are cached).

A block's data: 4-byte length of frame 1, frame 1, frame 2, both zstd with the block's dictionary.
  frame 1: the columns as one JSON line, "\\n", then every record's payload header, "\\n"-joined
           (pydantic-core's JSON never holds a raw newline);
  frame 2: every record's payload text, concatenated.
Headers (ids, numbers) and texts (chat) compress better apart than interleaved. The columns are
seq (first, then deltas), source, consent, redaction column and the text's byte length; a
record's payload (traces/store.py encode_trace) is rebuilt from its header and text as it was.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from pydantic_core import to_json

FORMAT = 1


@dataclass
class BlockRecord:
    """One record of a block: its store columns and its (uncompressed) payload."""

    seq: int
    source: int
    consent: int
    redacted: str | None
    payload: bytes


def pack_block(records: Sequence[BlockRecord], compress: Callable[[bytes], bytes]) -> bytes:
    heads, texts = [], []
    for record in records:
        size = int.from_bytes(record.payload[:4], "little")
        heads.append(record.payload[4:4 + size])
        texts.append(record.payload[4 + size:])
    seqs = [record.seq for record in records]
    columns = {
        "v": FORMAT,
        "seq": seqs[:1] + [b - a for a, b in zip(seqs, seqs[1:])],
        "src": [record.source for record in records],
        "con": [record.consent for record in records],
        "red": [record.redacted for record in records],
        "tl": [len(text) for text in texts],
    }
    first = compress(to_json(columns) + b"\n" + b"\n".join(heads))
    return len(first).to_bytes(4, "little") + first + compress(b"".join(texts))


def unpack_block(data: bytes, decompress: Callable[[bytes], bytes]) -> list[BlockRecord]:
    size = int.from_bytes(data[:4], "little")
    lines = decompress(data[4:4 + size]).split(b"\n")
    text = decompress(data[4 + size:])
    columns = json.loads(lines[0])
    if columns.get("v") != FORMAT:
        raise ValueError(f"sealed block format {columns.get('v')} is not {FORMAT}")
    records, seq, cursor = [], 0, 0
    for i, head in enumerate(lines[1:]):
        seq += columns["seq"][i]
        body = text[cursor:cursor + columns["tl"][i]]
        cursor += columns["tl"][i]
        records.append(BlockRecord(seq, columns["src"][i], columns["con"][i], columns["red"][i],
                                   len(head).to_bytes(4, "little") + head + body))
    if len(records) != len(columns["seq"]) or cursor != len(text):
        raise ValueError("sealed block is inconsistent (columns and payloads disagree)")
    return records


def block_summary(records: Sequence[BlockRecord], choices: Sequence[int],
                  parse_redacted: Callable[[str | None], dict[str, int]]) -> dict[str, Any]:
    """What the store's counts and filters need without opening the block (its `summary` column)."""
    by_source: dict[str, int] = {}
    by_consent: dict[str, int] = {}
    redaction: dict[str, int] = {}
    redacted = 0
    for record in records:
        by_source[str(record.source)] = by_source.get(str(record.source), 0) + 1
        by_consent[str(record.consent)] = by_consent.get(str(record.consent), 0) + 1
        if record.redacted:
            redacted += 1
            for kind, n in parse_redacted(record.redacted).items():
                redaction[kind] = redaction.get(kind, 0) + n
    return {"sources": by_source, "consent": by_consent, "redaction": redaction, "redacted": redacted,
            "multi": sum(1 for n in choices if n > 1), "max_choices": max(choices, default=1)}

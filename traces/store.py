"""The node-local trace store: one SQLite file, crash-safe, compact, indexed.

Layout (schema version 2):
  traces        one row per recent completion ("hot"); the record itself is a zstd-compressed
                payload, next to the few columns queries need (time, model version, consent, hashes)
  blocks        older completions, sealed by compaction many to a row (traces/blocks.py): a block
                covers a seq range and says what it holds (time span, counts by model, consent and
                redaction type), a coarse index by time and model version
  sealed_keys   id hash -> seq and content hash -> seq for sealed records (per-record access, dedup)
  aliases       completion ids whose trace was a duplicate of a kept one (so feedback still finds it)
  feedback      thumbs / choice / correction / comment, each pointing at a trace
  pairs         DPO pairs and KTO rows derived from feedback or judges
  sources       (node id, model ref, version, weights sha256): one small row per model a node served
  dictionaries  zstd dictionaries, versioned; every payload names the one it was compressed with
  meta          schema version, node id, the node's current consent level

Durability: WAL journal with synchronous=FULL, one transaction per batch, so a record is on disk
once add_traces returns, and a kill -9 at any moment leaves either the whole batch or none of it.
A record keeps its seq for life, whether hot or sealed, so feedback, pairs and aliases point at it,
and a seq is never reused after a deletion (meta 'seq_high'), so a cached block is never stale.
Reads that take several statements run in one snapshot (a read transaction), so a seal or a
retention pass committed by another connection is seen wholly or not at all.
Schema 1 stores (no blocks) open unchanged; the first sealing marks the store as schema 2, which
older code refuses to open rather than miss the sealed records.
Exact dedup: a hash of the normalized prompt and replies (case folded, whitespace removed) is
indexed; a hash hit is confirmed by comparing the normalized texts, so collisions never drop data.
A trace is a duplicate only of a stored one with the same consent level and the same source (node,
model version, weights): a share-level trace identical to an earlier local one is kept as its own
share record (folding it into the local one would keep it from ever being exported), and counts
per model version stay true when a new version says what the old one said.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Iterator, Sequence

from pydantic_core import to_json

from traces.blocks import BlockRecord, block_summary, pack_block, unpack_block
from traces.compression import NO_DICTIONARY, Codec, train_dictionary
from traces.pairs import pairs_from_feedback, slot_of
from traces.config import StoreSettings
from traces.schemas import (
    SCHEMA_VERSION, Choice, Feedback, KTORow, Message, ModelInfo, PreferencePair, RedactionSummary,
    Trace, Usage,
)

STORE_SCHEMA_VERSION = 2
_SCHEMA_WITHOUT_BLOCKS = 1  # a store that never sealed stays readable by the code before blocks
_BLOCK_CACHE = 8            # decompressed blocks kept (a block of 128 chat records is ~90 KB)
CONSENT_CODES = {"local": 1, "share": 2}
CONSENT_NAMES = {code: name for name, code in CONSENT_CODES.items()}
_FETCH = 512
# Counts, compaction and retention read these few columns of every block; the indexes keep them
# from paging through the rows, whose leaf cells hold the first few KB of each block's data.
_BLOCK_INDEXES = """CREATE INDEX IF NOT EXISTS blocks_dict ON blocks(dict, records);
CREATE INDEX IF NOT EXISTS blocks_created ON blocks(created_min)"""
_WHITESPACE = b" \t\r\n\x0b\x0c"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS sources(
    id INTEGER PRIMARY KEY, node_id TEXT NOT NULL, model_ref TEXT NOT NULL,
    model_version TEXT NOT NULL, weights_sha256 TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS dictionaries(
    id INTEGER PRIMARY KEY, created REAL NOT NULL, records INTEGER NOT NULL, data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS traces(
    seq INTEGER PRIMARY KEY,
    key INTEGER NOT NULL,        -- 31-bit hash of the trace id, a hit is confirmed on the payload
    created INTEGER NOT NULL,    -- unix seconds
    source INTEGER NOT NULL,     -- sources.id: node and model version
    consent INTEGER NOT NULL,    -- 1 local, 2 share
    choices INTEGER NOT NULL,
    dedup INTEGER NOT NULL,      -- 31-bit hash of the normalized prompt + replies
    redacted TEXT,               -- "EMAIL:2,PHONE:1", NULL when nothing was redacted
    dict INTEGER NOT NULL,       -- dictionaries.id, 0 for none
    payload BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS traces_key ON traces(key);
CREATE INDEX IF NOT EXISTS traces_dedup ON traces(dedup);
CREATE INDEX IF NOT EXISTS traces_source_time ON traces(source, created)
"""
# Created on first use: each table or index costs at least one page, and most stores hold traces only.
_LAZY_SCHEMA = {
    "aliases": """
CREATE TABLE IF NOT EXISTS aliases(key INTEGER NOT NULL, id TEXT NOT NULL, seq INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS aliases_key ON aliases(key)
""",
    "feedback": """
CREATE TABLE IF NOT EXISTS feedback(
    seq INTEGER PRIMARY KEY, id TEXT NOT NULL, trace_seq INTEGER NOT NULL,
    created REAL NOT NULL, kinds TEXT NOT NULL, dict INTEGER NOT NULL, payload BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS feedback_trace ON feedback(trace_seq)
""",
    "blocks": """
CREATE TABLE IF NOT EXISTS blocks(
    first INTEGER PRIMARY KEY,   -- seq of its first record (blocks never overlap)
    last INTEGER NOT NULL,       -- seq of its last record
    records INTEGER NOT NULL,
    created_min INTEGER NOT NULL, created_max INTEGER NOT NULL,
    summary TEXT NOT NULL,       -- counts by source, consent, redaction type (traces/blocks.py)
    dict INTEGER NOT NULL,
    data BLOB NOT NULL);
-- h: the 31-bit id hash (>= 0) or -1 - the 31-bit content hash (< 0): 4 bytes either way
CREATE TABLE IF NOT EXISTS sealed_keys(h INTEGER NOT NULL, seq INTEGER NOT NULL, PRIMARY KEY (h, seq)) WITHOUT ROWID;
""" + _BLOCK_INDEXES,
    "pairs": """
CREATE TABLE IF NOT EXISTS pairs(
    seq INTEGER PRIMARY KEY, id TEXT NOT NULL, kind TEXT NOT NULL, origin TEXT NOT NULL,
    slot TEXT NOT NULL, trace_seq INTEGER NOT NULL, created REAL NOT NULL, source INTEGER NOT NULL,
    consent INTEGER NOT NULL, dict INTEGER NOT NULL, payload BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS pairs_trace ON pairs(trace_seq, slot);
CREATE INDEX IF NOT EXISTS pairs_kind_time ON pairs(kind, created)
""",
}


class StoreError(Exception):
    """A store that cannot be opened or used as asked; the message says which file and why."""


def hash31(data: bytes) -> int:
    """A 31-bit hash: stored by SQLite in 4 bytes, in the table and again in its index."""
    return int.from_bytes(hashlib.blake2b(data, digest_size=4).digest(), "big") >> 1


def normalized_content(text: bytes, n_messages: int, n_choices: int) -> bytes:
    """What exact dedup compares: the UTF-8 texts with ASCII case folded and ASCII whitespace
    removed, prefixed by the shape of the conversation."""
    return f"{n_messages}/{n_choices}|".encode() + text.lower().translate(None, _WHITESPACE)


def _as_unix(since: float | datetime | None) -> float | None:
    if since is None or isinstance(since, (int, float)):
        return since
    return since.timestamp()


def _redaction_column(counts: dict[str, int]) -> str | None:
    present = sorted((k, v) for k, v in counts.items() if v)
    return ",".join(f"{k}:{v}" for k, v in present) or None


def parse_redaction_column(value: str | None) -> dict[str, int]:
    if not value:
        return {}
    return {k: int(v) for k, v in (item.split(":") for item in value.split(","))}


# --------------------------------------------------------------------------- payload encoding
# A record is stored as: 4-byte header length, a small JSON header, then every text (messages,
# then replies) concatenated as UTF-8. The header holds each text's length in characters. Texts are
# not JSON-escaped, which makes encoding cheap, and the dictionary learns the header's shape.
# Node, model, consent and redaction counts live in columns, not in the payload.

_ROLE_CODES = {"system": "s", "developer": "d", "user": "u", "assistant": "a", "tool": "t"}
# One encoder for all records: json.dumps with non-default arguments builds a new one per call.
_to_json = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
_ROLE_NAMES = {code: role for role, code in _ROLE_CODES.items()}


def encode_trace(trace: Trace) -> tuple[bytes, bytes]:
    """(payload, normalized content for dedup)."""
    messages = trace.messages
    texts = [m.content for m in messages]
    texts += [c.text for c in trace.choices]
    header: dict[str, Any] = {
        "id": trace.id,
        "t": trace.created_at,
        "r": "".join(map(_ROLE_CODES.__getitem__, [m.role for m in messages])),
        "n": list(map(len, texts)),
        "c": [[c.finish_reason, c.completion_tokens] for c in trace.choices],
        "u": [trace.usage.prompt_tokens, trace.usage.completion_tokens],
        "l": trace.latency_s,
    }
    if trace.sampling:
        header["s"] = trace.sampling
    if trace.ttft_s is not None:
        header["f"] = trace.ttft_s
    if trace.metadata:
        header["md"] = trace.metadata
    if trace.redaction.names == "on":
        header["nm"] = 1
    if trace.proofs is not None:
        header["p"] = trace.proofs
    if trace.signature is not None:
        header["sig"] = trace.signature
    if trace.signer is not None:
        header["sg"] = trace.signer
    if [c.index for c in trace.choices] != list(range(len(trace.choices))):
        header["ci"] = [c.index for c in trace.choices]
    # pydantic-core's serializer: the same compact UTF-8 JSON as _to_json (floats round-trip) in a
    # fifth of the time, and this runs once per stored trace
    head = to_json(header)
    text = "".join(texts).encode("utf-8", "surrogatepass")
    payload = len(head).to_bytes(4, "little") + head + text
    return payload, normalized_content(text, len(trace.messages), len(trace.choices))


def decode_payload(payload: bytes) -> tuple[dict[str, Any], bytes]:
    """(body, normalized content). body: the header plus "m": [[role, content]...] and
    "c": [[text, finish_reason, completion_tokens]...]."""
    size = int.from_bytes(payload[:4], "little")
    body = json.loads(payload[4:4 + size])
    raw = payload[4 + size:]
    text = raw.decode("utf-8", "surrogatepass")
    pieces, cursor = [], 0
    for length in body.pop("n"):
        pieces.append(text[cursor:cursor + length])
        cursor += length
    roles = body.pop("r")
    body["m"] = [[_ROLE_NAMES[code], content] for code, content in zip(roles, pieces)]
    body["c"] = [[content, finish, tokens] for content, (finish, tokens) in zip(pieces[len(roles):], body["c"])]
    return body, normalized_content(raw, len(roles), len(body["c"]))


@dataclass
class TraceRecord:
    """A stored trace as plain data (fast to read in bulk; `.to_trace()` for the pydantic model)."""

    seq: int
    body: dict[str, Any]
    source: dict[str, str]
    consent: str
    redaction: dict[str, int]

    @property
    def id(self) -> str:
        return self.body["id"]

    @property
    def created_at(self) -> float:
        return self.body["t"]

    @property
    def messages(self) -> list[dict[str, str]]:
        return [{"role": role, "content": content} for role, content in self.body["m"]]

    @property
    def replies(self) -> list[str]:
        return [choice[0] for choice in self.body["c"]]

    @property
    def metadata(self) -> dict[str, str]:
        return self.body.get("md", {})

    def to_trace(self) -> Trace:
        body = self.body
        indexes = body.get("ci") or list(range(len(body["c"])))
        return Trace(
            schema_version=SCHEMA_VERSION,
            id=body["id"],
            node_id=self.source["node_id"],
            model=ModelInfo(ref=self.source["model_ref"], version=self.source["model_version"],
                            weights_sha256=self.source["weights_sha256"]),
            created_at=body["t"],
            messages=[Message(role=role, content=content) for role, content in body["m"]],
            choices=[Choice(index=i, text=text, finish_reason=finish, completion_tokens=tokens)
                     for i, (text, finish, tokens) in zip(indexes, body["c"])],
            sampling=body.get("s", {}),
            usage=Usage(prompt_tokens=body["u"][0], completion_tokens=body["u"][1]),
            latency_s=body["l"],
            ttft_s=body.get("f"),
            consent=self.consent,
            metadata=body.get("md", {}),
            redaction=RedactionSummary(counts=self.redaction, names="on" if body.get("nm") else "off"),
            proofs=body.get("p"),
            signature=body.get("sig"),
            signer=body.get("sg"),
        )


@dataclass
class FeedbackOutcome:
    feedback: Feedback
    pairs: list[PreferencePair]
    kto: list[KTORow]


class FeedbackError(ValueError):
    """Feedback that does not fit its trace (e.g. a choice index beyond n); `param` names the field."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class TraceNotFound(LookupError):
    pass


class TraceStore:
    """Open (and create, unless `readonly`) the store at `path`. Thread-safe: one lock per store."""

    def __init__(self, path: Path | str, readonly: bool = False, settings: StoreSettings | None = None) -> None:
        self.path = Path(path)
        self.readonly = readonly
        self.settings = settings or StoreSettings()
        self._lock = threading.RLock()
        self.codec = Codec(self.settings.compression_level)
        self._sources: dict[tuple[str, str, str, str], int] = {}
        self._source_rows: dict[int, dict[str, str]] = {}
        self._tables: set[str] = set()
        self._schema_seen = -1
        self._ready = False
        self._txn_dictionaries: list[int] = []     # learnt inside the open write transaction
        self._txn_sources: list[tuple[str, str, str, str]] = []
        self._block_cache: OrderedDict[tuple[int, int, int, int], list[BlockRecord]] = OrderedDict()
        try:
            if readonly:
                if not self.path.is_file():
                    raise StoreError(f"{self.path}: no such trace store")
                self._db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, isolation_level=None,
                                           check_same_thread=False)
            else:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._setup()
        except (sqlite3.DatabaseError, StoreError) as exc:
            if hasattr(self, "_db"):
                self._db.close()
            if isinstance(exc, StoreError):
                raise
            raise StoreError(f"{self.path}: not a usable trace store ({exc})") from None

    # ------------------------------------------------------------------ setup

    def _setup(self) -> None:
        db = self._db
        db.execute("PRAGMA busy_timeout = 10000")
        self._check_version()                          # before changing anything in a newer store
        if not self.readonly:
            fresh = db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] == 0
            if fresh:
                # Both must precede the first table. Incremental auto-vacuum lets retention give space
                # back without a full VACUUM; the page size is the settings' (why 4 KB: traces/config.py).
                db.execute(f"PRAGMA page_size = {self.settings.page_size}")
                db.execute("PRAGMA auto_vacuum = INCREMENTAL")
            mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode.lower() != "wal":
                raise StoreError(f"{self.path}: cannot switch to WAL journal mode (got {mode})")
            # FULL: the WAL is fsync'd at every commit, so an acknowledged batch survives power loss too.
            db.execute("PRAGMA synchronous = FULL")
            with self._transaction():
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        db.execute(statement)
                db.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(_SCHEMA_WITHOUT_BLOCKS),))
                db.execute("INSERT OR IGNORE INTO meta VALUES ('created_at', ?)", (str(time.time()),))
                if self._has("blocks"):                # sealed by code that did not index blocks yet
                    for statement in _BLOCK_INDEXES.split(";"):
                        db.execute(statement)
        else:
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            if "traces" not in tables:
                raise StoreError(f"{self.path}: not a trace store (no traces table)")
        for dict_id, data in db.execute("SELECT id, data FROM dictionaries"):
            self.codec.add_dictionary(dict_id, data)
        for row in db.execute("SELECT id, node_id, model_ref, model_version, weights_sha256 FROM sources"):
            self._remember_source(row)
        self._count = self._stored_count()
        self._ready = True

    def _check_version(self) -> None:
        if not self._has("meta"):                      # a new file
            return
        value = self.get_meta("schema_version") or "0"
        if not value.isdigit():
            raise StoreError(f"{self.path}: store schema version {value!r} is not a number")
        version = int(value)
        if version > STORE_SCHEMA_VERSION:
            raise StoreError(f"{self.path}: store schema {version} is newer than this code ({STORE_SCHEMA_VERSION})")

    def _stored_count(self) -> int:
        count = self._db.execute("SELECT count(*) FROM traces").fetchone()[0]
        if self._has("blocks"):
            count += self._db.execute("SELECT coalesce(sum(records), 0) FROM blocks").fetchone()[0]
        return count

    def _has(self, table: str) -> bool:
        """Does the (lazily created) table exist? Another connection may have created it: the
        schema cookie (a header read) says when the table list is worth reading again."""
        if table not in self._tables:
            cookie = self._db.execute("PRAGMA schema_version").fetchone()[0]
            if cookie != self._schema_seen:
                self._schema_seen = cookie
                self._tables = {row[0] for row in self._db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        return table in self._tables

    def _ensure(self, table: str) -> None:
        """Create a lazy table inside the current write transaction."""
        if not self._has(table):
            for statement in _LAZY_SCHEMA[table].split(";"):
                self._db.execute(statement)
            self._tables.add(table)

    def _remember_source(self, row: tuple) -> None:
        source_id, node_id, ref, version, sha = row
        self._sources[(node_id, ref, version, sha)] = source_id
        self._source_rows[source_id] = {"node_id": node_id, "model_ref": ref, "model_version": version,
                                        "weights_sha256": sha}

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        if self.readonly:
            raise StoreError(f"{self.path}: opened read-only")
        with self._lock:
            self._txn_dictionaries, self._txn_sources = [], []
            try:
                self._db.execute("BEGIN IMMEDIATE")
                if self._ready:
                    # Another process (`swarmloop traces compact`) may have trained a newer
                    # dictionary and dropped the one this object would otherwise write with.
                    self._load_new_dictionaries()
                yield
                self._db.execute("COMMIT")
            except BaseException:
                try:
                    if self._db.in_transaction:   # SQLite rolls some errors (disk full) back itself
                        self._db.execute("ROLLBACK")
                finally:
                    self._forget_rolled_back()
                raise

    def _forget_rolled_back(self) -> None:
        """After a rollback, forget what this object learnt inside the transaction that the file
        no longer holds: dictionaries it trained, sources and tables it created, the count. What
        other connections committed meanwhile (dictionaries it loaded) stays known."""
        for dict_id in self._txn_dictionaries:
            self.codec.forget_dictionary(dict_id)
        for key in self._txn_sources:
            self._source_rows.pop(self._sources.pop(key, -1), None)
        self._tables, self._schema_seen = set(), -1
        self._block_cache.clear()
        try:
            self._count = self._stored_count()
        except sqlite3.Error:
            pass            # the connection itself failed: the next call reports it

    @contextmanager
    def _snapshot(self) -> Iterator[None]:
        """Run a group of reads in one read transaction: in WAL mode it sees one committed state,
        so a seal or retention pass committed by another connection meanwhile is seen wholly or
        not at all (without it, a record moving from a row into a block could be missed or counted
        twice). Inside a write transaction that transaction is the snapshot."""
        with self._lock:
            if self._db.in_transaction:
                yield
                return
            self._db.execute("BEGIN")
            try:
                yield
            finally:
                self._db.execute("COMMIT")          # a read transaction: this only ends it

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> "TraceStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ meta

    def get_meta(self, key: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def set_meta(self, key: str, value: str) -> None:
        with self._transaction():
            self._db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    @property
    def node_consent(self) -> str | None:
        """The consent level the node last ran with (set by the capture hook)."""
        return self.get_meta("consent")

    def __len__(self) -> int:
        """Stored traces, as committed now (another connection may have added or deleted some)."""
        with self._snapshot():
            return self._stored_count()

    # ------------------------------------------------------------------ writing traces

    def _source_id(self, node_id: str, model: ModelInfo) -> int:
        key = (node_id, model.ref, model.version, model.weights_sha256)
        source_id = self._sources.get(key)
        if source_id is None:
            cursor = self._db.execute(
                "INSERT INTO sources(node_id, model_ref, model_version, weights_sha256) VALUES (?,?,?,?)", key)
            source_id = cursor.lastrowid
            self._remember_source((source_id, *key))
            self._txn_sources.append(key)
        return source_id

    def _normalized_of(self, seq: int) -> bytes | None:
        row = self._db.execute("SELECT dict, payload FROM traces WHERE seq = ?", (seq,)).fetchone()
        if row is not None:
            return decode_payload(self._decompress(row[1], row[0]))[1]
        sealed = self._sealed(seq)
        return decode_payload(sealed.payload)[1] if sealed is not None else None

    def _next_seq(self) -> int:
        hot = self._db.execute("SELECT max(seq) FROM traces").fetchone()[0] or 0
        row = self._db.execute("SELECT value FROM meta WHERE key = 'seq_high'").fetchone()
        return max(hot, self._sealed_max(), int(row[0]) if row else 0) + 1

    def _keep_seq_high(self) -> None:
        """Before a deletion: remember the highest seq ever given, so deleting the newest records
        never lets a seq (and with it a cached block's key) be reused."""
        self._db.execute("INSERT OR REPLACE INTO meta VALUES ('seq_high', ?)", (str(self._next_seq() - 1),))

    def add_traces(self, traces: Sequence[Trace]) -> list[bool]:
        """Store already-redacted traces in one transaction. Returns, per trace, True when it was
        kept and False when it duplicated a stored trace (its id then becomes an alias)."""
        if not traces:
            return []
        with self._transaction():
            db = self._db
            encoded = [encode_trace(t) for t in traces]
            normalized = [n for _, n in encoded]
            dedups = [hash31(n) for n in normalized]
            # Stored rows with the same content hash: (seq, consent, source) each.
            known: dict[int, list[tuple[int, int, int]]] = {}
            unique = list(set(dedups))
            for i in range(0, len(unique), 900):
                chunk = unique[i:i + 900]
                marks = ",".join("?" * len(chunk))
                for dedup, seq, consent, source in db.execute(
                        f"SELECT dedup, seq, consent, source FROM traces WHERE dedup IN ({marks})", chunk):
                    known.setdefault(dedup, []).append((seq, consent, source))
                if self._has("blocks"):
                    for h, seq in db.execute(f"SELECT h, seq FROM sealed_keys WHERE h IN ({marks})",
                                             [-1 - d for d in chunk]):
                        sealed = self._sealed(seq)
                        if sealed is not None:
                            known.setdefault(-1 - h, []).append((seq, sealed.consent, sealed.source))
            next_seq = self._next_seq()
            dict_id = self.codec.latest
            rows, payloads, aliases, kept = [], [], [], []
            batch_norm: dict[int, list[tuple[bytes, int, int, int]]] = {}
            for trace, (payload, norm), dedup in zip(traces, encoded, dedups):
                source = self._source_id(trace.node_id, trace.model)
                consent = CONSENT_CODES[trace.consent]
                duplicate_of = None
                for other_norm, other_consent, other_source, other_seq in batch_norm.get(dedup, ()):
                    if (other_consent, other_source) == (consent, source) and other_norm == norm:
                        duplicate_of = other_seq
                for seq, other_consent, other_source in known.get(dedup, ()):
                    if duplicate_of is None and (other_consent, other_source) == (consent, source) \
                            and self._normalized_of(seq) == norm:
                        duplicate_of = seq
                if duplicate_of is not None:
                    aliases.append((hash31(trace.id.encode()), trace.id, duplicate_of))
                    kept.append(False)
                    continue
                seq = next_seq
                next_seq += 1
                batch_norm.setdefault(dedup, []).append((norm, consent, source, seq))
                rows.append((
                    seq, hash31(trace.id.encode()), int(trace.created_at), source, consent,
                    len(trace.choices), dedup, _redaction_column(trace.redaction.counts), dict_id,
                ))
                payloads.append(payload)
                kept.append(True)
            # Compress in one tight loop: the dictionary's tables stay in the CPU cache.
            compress = self.codec.compressor(dict_id).compress
            blobs = [compress(payload) for payload in payloads]
            db.executemany("INSERT INTO traces VALUES (?,?,?,?,?,?,?,?,?,?)",
                           [(*row, blob) for row, blob in zip(rows, blobs)])
            if aliases:
                self._ensure("aliases")
                db.executemany("INSERT INTO aliases VALUES (?,?,?)", aliases)
            self._count += len(rows)
            self._maybe_train_dictionary()
        return kept

    def _maybe_train_dictionary(self) -> None:
        """Train the first dictionary once there are enough records, and recompress those records
        with it. Later dictionaries are trained by compact(), off the ingest path."""
        # (a dictionary another connection trained meanwhile was loaded as the transaction began)
        if self.codec.latest != NO_DICTIONARY or self._count < self.settings.dictionary_min_records:
            return
        samples = self._dictionary_samples(4000)      # hot and sealed: compact() may have sealed most
        if len(samples) < 10:
            return
        self._add_dictionary(samples)
        # Delete and re-insert rather than update in place: every record is being rewritten, so
        # re-inserting appends them densely instead of leaving holes in half-empty pages.
        compress = self.codec.compressor(1).compress
        plain = self.codec.decompressor(NO_DICTIONARY).decompress
        old = self._db.execute("SELECT * FROM traces WHERE dict = 0 ORDER BY seq").fetchall()
        self._db.execute("DELETE FROM traces WHERE dict = 0")
        self._db.executemany("INSERT INTO traces VALUES (?,?,?,?,?,?,?,?,?,?)",
                             [(*row[:8], 1, compress(plain(row[9]))) for row in old])

    def _add_dictionary(self, samples: list[bytes]) -> int:
        dict_id = (self._db.execute("SELECT max(id) FROM dictionaries").fetchone()[0] or 0) + 1
        data = train_dictionary(samples, self.settings.dictionary_size, dict_id)
        self._db.execute("INSERT INTO dictionaries VALUES (?,?,?,?)", (dict_id, time.time(), self._count, data))
        self.codec.add_dictionary(dict_id, data)
        self._txn_dictionaries.append(dict_id)
        return dict_id

    # ------------------------------------------------------------------ compaction

    def _compaction_mark(self) -> int:
        """Records with seq above this still need compaction (0: all of them)."""
        row = self._db.execute("SELECT value FROM meta WHERE key = 'compacted'").fetchone()
        if not row:
            return 0
        dict_id, seq = (int(x) for x in row[0].split(":"))
        return seq if dict_id == self.codec.latest else 0

    def pending_compaction(self) -> int:
        with self._lock:
            return self._uncompacted()

    def slack_share(self) -> float:
        """Share of the file that is not record data (free pages, half-empty pages, headers)."""
        return self._slack()[0]

    def _slack(self) -> tuple[float, int]:
        """(slack share, bytes of record data)."""
        with self._lock:
            used = sum(self._db.execute(f"SELECT coalesce(sum(length(payload)), 0) + 48 * count(*) FROM {table}")
                       .fetchone()[0] for table in ("traces", "feedback", "pairs") if self._has(table))
            if self._has("blocks"):      # a block's row, and 2 x ~14 B of sealed keys per record
                used += self._db.execute("SELECT coalesce(sum(length(data) + length(summary) + 48 + 28 * records), 0)"
                                         " FROM blocks").fetchone()[0]
            used += self._db.execute("SELECT coalesce(sum(length(data)), 0) FROM dictionaries").fetchone()[0]
            pages = self._db.execute("PRAGMA page_count").fetchone()[0]
            size = self._db.execute("PRAGMA page_size").fetchone()[0]
        return (max(0.0, 1.0 - used / (pages * size)) if pages else 0.0), used

    def compact(self, max_records: int | None = None, vacuum: bool = True) -> dict[str, Any]:
        """Train a new dictionary when the store has grown by `dictionary_retrain_factor`; seal the
        oldest hot records into blocks (traces/blocks.py) of `seal_block_records`; recompress
        blocks and the remaining hot records at `compaction_level` with the newest dictionary;
        then, once nothing is left to do and the file has enough slack, rewrite it densely (VACUUM).

        `max_records` bounds one call (the writer compacts in small steps while idle)."""
        settings = self.settings
        with self._transaction():
            db = self._db
            self._count = self._stored_count()     # another process may have pruned meanwhile
            trained_at = db.execute("SELECT max(records) FROM dictionaries").fetchone()[0] or 0
            due = (self._count >= settings.dictionary_min_records if trained_at == 0
                   else self._count >= trained_at * settings.dictionary_retrain_factor)
            if due:
                samples = self._dictionary_samples(4000)
                if len(samples) >= 10:
                    self._add_dictionary(samples)
            latest = self.codec.latest
            budget = -1 if max_records is None else max_records
            sealed = self._seal(budget)
            budget = budget if budget < 0 else max(0, budget - sealed)
            resealed = self._reseal(budget) if budget != 0 else 0
            budget = budget if budget < 0 else max(0, budget - resealed)
            mark = self._compaction_mark()
            rows = db.execute("SELECT seq, dict, payload FROM traces WHERE seq > ? ORDER BY seq LIMIT ?",
                              (mark, budget)).fetchall() if budget != 0 else []
            compress = self.codec.compressor(latest, settings.compaction_level).compress
            db.executemany("UPDATE traces SET dict = ?, payload = ? WHERE seq = ?",
                           [(latest, compress(self._decompress(p, d)), seq) for seq, d, p in rows])
            last = rows[-1][0] if rows else max(mark, self._sealed_max())
            db.execute("INSERT OR REPLACE INTO meta VALUES ('compacted', ?)", (f"{latest}:{last}",))
            remaining = self._uncompacted()
            dropped = self._drop_unused_dictionaries(latest) if remaining == 0 else 0
        worked = bool(rows or sealed or resealed)
        vacuumed = False
        if vacuum and remaining == 0 and worked and self._vacuum_due():
            with self._lock:
                self._db.execute("VACUUM")
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            slack, used = self._slack()
            self.set_meta("vacuum_slack", f"{slack:.4f}:{used}")
            vacuumed = True
        return {"recompressed": len(rows) + resealed, "sealed": sealed, "remaining": remaining,
                "vacuumed": vacuumed, "dictionary": latest, "dictionaries_dropped": dropped}

    def _vacuum_due(self) -> bool:
        """VACUUM rewrites the whole file: only when it would give back `compaction_vacuum_share`
        more than the last one left. Some slack is structural (the last page of each block, half-full
        index pages) and can exceed the share, and then the writer's idle steps would rewrite a large
        store after every block they seal. That baseline holds while the data stays within 2x of its
        size at the last VACUUM (a small store's is no guide to a large one's)."""
        share = self.settings.compaction_vacuum_share
        if share == 0:
            return True
        slack, used = self._slack()
        last = self.get_meta("vacuum_slack")
        baseline = 0.0
        if last:
            last_slack, last_used = last.split(":")
            if int(last_used) / 2 <= used <= 2 * int(last_used):
                baseline = float(last_slack)
        return slack - baseline >= share

    def _dictionary_samples(self, limit: int) -> list[bytes]:
        """Up to `limit` payloads spread over the whole store, hot and sealed."""
        step = max(1, self._count // limit)
        samples = [self._decompress(p, d) for d, p in self._db.execute(
            "SELECT dict, payload FROM traces WHERE seq % ? = 0 LIMIT ?", (step, limit))]
        if self._has("blocks"):
            blocks = self._db.execute("SELECT first, last, records, dict FROM blocks ORDER BY first").fetchall()
            sealed = [r.payload for block in blocks[::max(1, len(blocks) // 64)]    # at most ~128 opened
                      for r in self._block_records(*block)]
            samples += sealed[::max(1, len(sealed) // limit)]
        return samples[::max(1, len(samples) // limit)][:limit]

    def _drop_unused_dictionaries(self, latest: int) -> int:
        """Delete the dictionaries no record uses any more (each is ~100 KB: 10-20 B per trace in
        a store of 10,000). Every record that names one keeps it, so all stay readable."""
        used = {latest}
        for table in ("traces", "feedback", "pairs", "blocks"):
            if self._has(table):
                used.update(d for (d,) in self._db.execute(f"SELECT DISTINCT dict FROM {table}"))
        stale = [d for (d,) in self._db.execute("SELECT id FROM dictionaries") if d not in used]
        self._db.executemany("DELETE FROM dictionaries WHERE id = ?", [(d,) for d in stale])
        return len(stale)

    # ------------------------------------------------------------------ sealed blocks

    def _block_records(self, first: int, last: int, records: int, dict_id: int) -> list[BlockRecord]:
        """The records of one block (cached: iteration and lookups often hit the same block). Call
        it in the snapshot its row was read in. The key cannot go stale: records only ever leave a
        block and seqs are never reused, so (first, last, records) names one content for life."""
        key = (first, last, records, dict_id)
        cached = self._block_cache.get(key)
        if cached is not None:
            self._block_cache.move_to_end(key)
            return cached
        row = self._db.execute("SELECT dict, data FROM blocks WHERE first = ? AND last = ? AND records = ?",
                               (first, last, records)).fetchone()
        if row is None:
            return []
        dict_id, data = row
        if not self.codec.has(dict_id):
            self._load_new_dictionaries()
        unpacked = unpack_block(data, self.codec.decompressor(dict_id).decompress)
        self._block_cache[(first, last, records, dict_id)] = unpacked
        while len(self._block_cache) > _BLOCK_CACHE:
            self._block_cache.popitem(last=False)
        return unpacked

    def _sealed(self, seq: int) -> BlockRecord | None:
        if not self._has("blocks"):
            return None
        row = self._db.execute("SELECT first, last, records, dict FROM blocks WHERE first <= ? "
                               "ORDER BY first DESC LIMIT 1", (seq,)).fetchone()
        if row is None or row[1] < seq:
            return None
        return next((record for record in self._block_records(*row) if record.seq == seq), None)

    def _sealed_max(self) -> int:
        if not self._has("blocks"):
            return 0
        row = self._db.execute("SELECT last FROM blocks ORDER BY first DESC LIMIT 1").fetchone()
        return row[0] if row else 0

    def _sealed_record(self, record: BlockRecord) -> TraceRecord:
        body, _ = decode_payload(record.payload)
        return TraceRecord(seq=record.seq, body=body, source=self._source(record.source),
                           consent=CONSENT_NAMES[record.consent], redaction=parse_redaction_column(record.redacted))

    def _write_block(self, records: list[BlockRecord], dict_id: int) -> None:
        """Insert one block and the sealed keys of its records (inside a write transaction)."""
        bodies = [decode_payload(record.payload) for record in records]
        created = [int(body["t"]) for body, _ in bodies]
        summary = block_summary(records, [len(body["c"]) for body, _ in bodies], parse_redaction_column)
        compress = self.codec.compressor(dict_id, self.settings.compaction_level).compress
        self._db.execute("INSERT INTO blocks VALUES (?,?,?,?,?,?,?,?)", (
            records[0].seq, records[-1].seq, len(records), min(created), max(created),
            to_json(summary).decode(), dict_id, pack_block(records, compress)))
        keys = [(hash31(body["id"].encode()), record.seq) for record, (body, _) in zip(records, bodies)]
        keys += [(-1 - hash31(norm), record.seq) for record, (_, norm) in zip(records, bodies)]
        self._db.executemany("INSERT OR IGNORE INTO sealed_keys VALUES (?, ?)", keys)

    def _seal(self, budget: int) -> int:
        """Move the oldest hot records into blocks of `seal_block_records`, whole blocks only (the
        newest few stay hot until a block is full). Returns the number of records sealed."""
        size = self.settings.seal_block_records
        if size < 2 or budget == 0:
            return 0
        hot = self._db.execute("SELECT count(*) FROM traces").fetchone()[0]
        blocks = hot // size if budget < 0 else min(hot // size, max(1, budget // size))
        if blocks == 0:
            return 0
        if not self._has("blocks"):
            self._ensure("blocks")
            self._db.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", (str(STORE_SCHEMA_VERSION),))
        rows = self._db.execute("SELECT seq, source, consent, redacted, dict, payload FROM traces "
                                "ORDER BY seq LIMIT ?", (blocks * size,)).fetchall()
        latest = self.codec.latest
        for start in range(0, len(rows), size):
            self._write_block([BlockRecord(seq, source, consent, redacted, self._decompress(payload, dict_id))
                               for seq, source, consent, redacted, dict_id, payload in rows[start:start + size]],
                              latest)
        self._db.execute("DELETE FROM traces WHERE seq <= ?", (rows[-1][0],))
        return len(rows)

    def _reseal(self, budget: int) -> int:
        """Recompress blocks written with an older dictionary with the newest one."""
        latest = self.codec.latest
        if not self._has("blocks"):
            return 0
        done = 0
        for first, last, records, dict_id in self._db.execute(
                "SELECT first, last, records, dict FROM blocks WHERE dict != ? ORDER BY first", (latest,)).fetchall():
            if 0 <= budget <= done:
                break
            unpacked = self._block_records(first, last, records, dict_id)
            self._db.execute("DELETE FROM blocks WHERE first = ?", (first,))
            self._write_block(unpacked, latest)      # its keys are there already (INSERT OR IGNORE)
            done += records
        self._block_cache.clear()
        return done

    def _uncompacted(self) -> int:
        """Records compaction still has work for: hot ones not yet recompressed with the newest
        dictionary, hot ones that fill whole blocks, and blocks with an older dictionary."""
        latest = self.codec.latest
        hot = self._db.execute("SELECT count(*) FROM traces").fetchone()[0]
        size = self.settings.seal_block_records
        pending = self._db.execute("SELECT count(*) FROM traces WHERE seq > ?", (self._compaction_mark(),)).fetchone()[0]
        if size >= 2:
            pending = max(pending, hot // size * size)
        if self._has("blocks"):
            pending += self._db.execute("SELECT coalesce(sum(records), 0) FROM blocks WHERE dict != ?",
                                        (latest,)).fetchone()[0]
        return pending

    # ------------------------------------------------------------------ reading traces

    # Another connection (the node's writer, `swarmloop traces compact`) may have trained a
    # dictionary or added a source since this one was opened: a row that names one we do not know
    # yet loads it, so a long-lived reader never fails on a newer record.

    def _load_new_dictionaries(self) -> None:
        with self._lock:
            for (dict_id,) in self._db.execute("SELECT id FROM dictionaries").fetchall():
                if not self.codec.has(dict_id):
                    data = self._db.execute("SELECT data FROM dictionaries WHERE id = ?", (dict_id,)).fetchone()[0]
                    self.codec.add_dictionary(dict_id, data)

    def _decompress(self, payload: bytes, dict_id: int) -> bytes:
        if not self.codec.has(dict_id):
            self._load_new_dictionaries()
        return self.codec.decompress(payload, dict_id)

    def _source(self, source_id: int) -> dict[str, str]:
        row = self._source_rows.get(source_id)
        if row is None:
            with self._lock:
                self._refresh_sources()
            row = self._source_rows[source_id]
        return row

    def _record(self, row: tuple) -> TraceRecord:
        seq, source, consent, redacted, dict_id, payload = row
        body, _ = decode_payload(self._decompress(payload, dict_id))
        return TraceRecord(seq=seq, body=body, source=self._source(source),
                           consent=CONSENT_NAMES[consent], redaction=parse_redaction_column(redacted))

    _COLUMNS = "seq, source, consent, redacted, dict, payload"

    def find_seq(self, trace_id: str) -> int | None:
        """The row holding `trace_id` (directly, or as the duplicate of a kept trace)."""
        key = hash31(trace_id.encode())
        with self._snapshot():
            for seq, dict_id, payload in self._db.execute(
                    "SELECT seq, dict, payload FROM traces WHERE key = ?", (key,)):
                if decode_payload(self._decompress(payload, dict_id))[0]["id"] == trace_id:
                    return seq
            if self._has("blocks"):
                for (seq,) in self._db.execute("SELECT seq FROM sealed_keys WHERE h = ?", (key,)).fetchall():
                    sealed = self._sealed(seq)
                    if sealed is not None and decode_payload(sealed.payload)[0]["id"] == trace_id:
                        return seq
            if self._has("aliases"):
                for alias_id, seq in self._db.execute("SELECT id, seq FROM aliases WHERE key = ?", (key,)):
                    if alias_id == trace_id:
                        return seq
        return None

    def has_trace(self, trace_id: str) -> bool:
        return self.find_seq(trace_id) is not None

    def record_by_seq(self, seq: int) -> TraceRecord | None:
        with self._snapshot():
            row = self._db.execute(f"SELECT {self._COLUMNS} FROM traces WHERE seq = ?", (seq,)).fetchone()
            sealed = self._sealed(seq) if row is None else None
        if row:
            return self._record(row)
        return self._sealed_record(sealed) if sealed is not None else None

    def get_trace(self, trace_id: str) -> Trace | None:
        with self._snapshot():
            seq = self.find_seq(trace_id)
            record = self.record_by_seq(seq) if seq is not None else None
        return record.to_trace() if record else None

    def _source_ids(self, model_version: str | Sequence[str] | None) -> list[int]:
        if model_version is None:
            return sorted(self._source_rows)
        wanted = {model_version} if isinstance(model_version, str) else set(model_version)
        return sorted(i for i, row in self._source_rows.items() if row["model_version"] in wanted)

    def iter_records(self, *, model_version: str | Sequence[str] | None = None,
                     since: float | datetime | None = None, consent: str | None = None,
                     min_choices: int = 1, limit: int | None = None) -> Iterator[TraceRecord]:
        """Traces in insertion order. `consent="share"` yields only share-level records,
        `consent="local"` (or None) yields all; `since` is unix seconds or a datetime.

        Sealed blocks and hot rows are read in one seq order, a block or a page of rows at a
        time, each step in one snapshot, so records another connection seals meanwhile are still
        met (in their block). Records of a model (source) first seen after the call began are not."""
        with self._lock:
            self._refresh_sources()
            sources = self._source_ids(model_version)
        if not sources:
            return
        since_s = _as_unix(since)
        consent_code = CONSENT_CODES[consent] if consent is not None else 0
        where = [f"source IN ({','.join(str(s) for s in sources)})"]
        params: list[Any] = []
        if since_s is not None:
            where.append("created >= ?")
            params.append(int(since_s))
        if consent_code:
            where.append("consent >= ?")
            params.append(consent_code)
        if min_choices > 1:
            where.append("choices >= ?")
            params.append(min_choices)
        sql = f"SELECT {self._COLUMNS} FROM traces WHERE {' AND '.join(where)} AND seq > ? AND seq < ? ORDER BY seq LIMIT ?"
        wanted = set(sources)
        last, remaining = 0, limit if limit is not None else -1
        while remaining != 0:
            step = _FETCH if remaining < 0 else min(_FETCH, remaining)
            # One snapshot per step: the next block and the rows before it, as one state.
            with self._snapshot():
                block = self._block_after(last)
                rows = self._db.execute(sql, (*params, last, block[0] if block else 2**62, step)).fetchall()
                sealed = self._block_matches(block, last, wanted, since_s, consent_code, min_choices) \
                    if block is not None and not rows else []
            if rows:
                records = [self._record(row) for row in rows]
                last = rows[-1][0]
            elif block is not None:
                records = [self._sealed_record(record) for record in sealed]
                last = block[1]
            else:
                return
            for record in records:
                if since_s is not None and record.created_at < since_s:   # sub-second precision
                    continue
                yield record
                if remaining > 0:
                    remaining -= 1
                    if remaining == 0:
                        return

    def _block_after(self, seq: int) -> tuple | None:
        """The block holding the first record after `seq`, else the next block. The first may start
        at or before `seq`: another connection sealed rows this reader had partly read."""
        if not self._has("blocks"):
            return None
        columns = "first, last, records, dict, created_max, summary"
        row = self._db.execute(f"SELECT {columns} FROM blocks WHERE first <= ? ORDER BY first DESC LIMIT 1",
                               (seq + 1,)).fetchone()
        if row is not None and row[1] > seq:
            return row
        return self._db.execute(f"SELECT {columns} FROM blocks WHERE first > ? ORDER BY first LIMIT 1",
                                (seq,)).fetchone()

    def _block_matches(self, block: tuple, after: int, sources: set[int], since: float | None, consent: int,
                       min_choices: int) -> list[BlockRecord]:
        """The records of a block after seq `after` that pass the filters; the block's summary
        rules most blocks out without opening them."""
        first, last, records, dict_id, created_max, summary = block
        counts = json.loads(summary)
        if since is not None and created_max < int(since):
            return []
        if not sources.intersection(int(s) for s in counts["sources"]):
            return []
        if consent and not any(int(c) >= consent for c in counts["consent"]):
            return []
        if counts["max_choices"] < min_choices:
            return []
        out = []
        for sealed in self._block_records(first, last, records, dict_id):
            if sealed.seq > after and sealed.source in sources and sealed.consent >= consent and \
                    (min_choices <= 1 or len(decode_payload(sealed.payload)[0]["c"]) >= min_choices):
                out.append(sealed)
        return out

    def iter_traces(self, **filters: Any) -> Iterator[Trace]:
        for record in self.iter_records(**filters):
            yield record.to_trace()

    def _refresh_sources(self) -> None:
        """Another connection (the node's writer) may have added sources and dictionaries since we opened."""
        for row in self._db.execute("SELECT id, node_id, model_ref, model_version, weights_sha256 FROM sources").fetchall():
            if row[0] not in self._source_rows:
                self._remember_source(row)
        self._load_new_dictionaries()

    # ------------------------------------------------------------------ feedback and pairs

    def _compress_json(self, data: dict[str, Any]) -> tuple[int, bytes]:
        dict_id = self.codec.latest
        raw = _to_json(data).encode()
        return dict_id, self.codec.compress(raw, dict_id)

    def record_feedback(self, feedback: Feedback) -> FeedbackOutcome:
        """Store (already-redacted) feedback and the pairs it implies, in one transaction.

        Raises TraceNotFound when no trace has `feedback.trace_id`, FeedbackError when the feedback
        names a choice the trace does not have."""
        with self._transaction():
            seq = self.find_seq(feedback.trace_id)
            if seq is None:
                raise TraceNotFound(feedback.trace_id)
            record = self.record_by_seq(seq)
            assert record is not None
            n = len(record.body["c"])
            for name, index in (("choice", feedback.choice), ("choice_index", feedback.choice_index)):
                if index is not None and index >= n:
                    raise FeedbackError(f"{name} {index} is out of range: the completion has {n} choice(s)", name)
            if feedback.choice is not None and n < 2:
                raise FeedbackError("choice needs a completion with n > 1 choices", "choice")
            trace = record.to_trace()
            pairs, kto = pairs_from_feedback(trace, feedback)
            dict_id, payload = self._compress_json(feedback.model_dump(mode="json"))
            self._ensure("feedback")
            self._db.execute("INSERT INTO feedback(id, trace_seq, created, kinds, dict, payload) VALUES (?,?,?,?,?,?)",
                             (feedback.id, seq, feedback.created_at, ",".join(feedback.kinds), dict_id, payload))
            self._write_derived(seq, record, pairs, kto)
        return FeedbackOutcome(feedback, pairs, kto)

    def _write_derived(self, seq: int, record: TraceRecord, pairs: Sequence[PreferencePair],
                       kto: Sequence[KTORow]) -> None:
        source = self._source_id(record.source["node_id"], ModelInfo(
            ref=record.source["model_ref"], version=record.source["model_version"],
            weights_sha256=record.source["weights_sha256"]))
        self._ensure("pairs")
        rows = []
        for item, kind in [(p, "dpo") for p in pairs] + [(k, "kto") for k in kto]:
            slot = slot_of(item)
            self._db.execute("DELETE FROM pairs WHERE trace_seq = ? AND slot = ? AND kind = ?", (seq, slot, kind))
            dict_id, payload = self._compress_json(item.model_dump(mode="json"))
            rows.append((item.id, kind, item.source, slot, seq, item.created_at, source,
                         CONSENT_CODES[item.consent], dict_id, payload))
        # A slot is replaced as a whole (the latest choice / vote / correction wins), so delete
        # every slot first, then insert all rows of this batch.
        self._db.executemany(
            "INSERT INTO pairs(id, kind, origin, slot, trace_seq, created, source, consent, dict, payload)"
            " VALUES (?,?,?,?,?,?,?,?,?,?)", rows)

    def add_derived(self, trace_id: str, pairs: Sequence[PreferencePair] = (), kto: Sequence[KTORow] = ()) -> None:
        """Store pairs / KTO rows derived from one trace (e.g. by judges); same-slot rows are replaced."""
        with self._transaction():
            seq = self.find_seq(trace_id)
            if seq is None:
                raise TraceNotFound(trace_id)
            record = self.record_by_seq(seq)
            assert record is not None
            self._write_derived(seq, record, pairs, kto)

    def feedback_for(self, trace_id: str) -> list[Feedback]:
        seq = self.find_seq(trace_id)
        if seq is None:
            return []
        with self._lock:
            if not self._has("feedback"):
                return []
            rows = self._db.execute("SELECT dict, payload FROM feedback WHERE trace_seq = ? ORDER BY seq",
                                    (seq,)).fetchall()
        return [Feedback.model_validate_json(self._decompress(p, d)) for d, p in rows]

    def iter_feedback(self) -> Iterator[Feedback]:
        with self._lock:
            if not self._has("feedback"):
                return
            rows = self._db.execute("SELECT dict, payload FROM feedback ORDER BY seq").fetchall()
        for dict_id, payload in rows:
            yield Feedback.model_validate_json(self._decompress(payload, dict_id))

    def iter_pairs(self, kind: str = "dpo", *, model_version: str | Sequence[str] | None = None,
                   since: float | datetime | None = None, consent: str | None = None,
                   origin: str | None = None, limit: int | None = None) -> Iterator[PreferencePair | KTORow]:
        """DPO pairs (`kind="dpo"`) or KTO rows (`kind="kto"`) with the same filters as traces."""
        model = PreferencePair if kind == "dpo" else KTORow
        with self._lock:
            self._refresh_sources()
            sources = self._source_ids(model_version)
            if not self._has("pairs"):
                return
        if not sources:
            return
        where = ["kind = ?", f"source IN ({','.join(str(s) for s in sources)})"]
        params: list[Any] = [kind]
        if since is not None:
            where.append("created >= ?")
            params.append(_as_unix(since))
        if consent is not None:
            where.append("consent >= ?")
            params.append(CONSENT_CODES[consent])
        if origin is not None:
            where.append("origin LIKE ?")
            params.append(origin + "%")
        sql = f"SELECT dict, payload FROM pairs WHERE {' AND '.join(where)} ORDER BY seq"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        with self._lock:
            rows = self._db.execute(sql, params).fetchall()
        for dict_id, payload in rows:
            yield model.model_validate_json(self._decompress(payload, dict_id))

    # ------------------------------------------------------------------ maintenance

    def checkpoint(self) -> None:
        """Fold the WAL into the main file and truncate it (bytes on disk then = the .db file)."""
        with self._lock:
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def integrity_check(self) -> str:
        with self._lock:
            return self._db.execute("PRAGMA integrity_check").fetchone()[0]

    def live_bytes(self) -> int:
        with self._lock:
            pages = self._db.execute("PRAGMA page_count").fetchone()[0]
            free = self._db.execute("PRAGMA freelist_count").fetchone()[0]
            size = self._db.execute("PRAGMA page_size").fetchone()[0]
        return (pages - free) * size

    def _delete_dependents(self, seqs: Sequence[int]) -> None:
        for i in range(0, len(seqs), 900):
            chunk = list(seqs[i:i + 900])
            marks = ",".join("?" * len(chunk))
            for table, column in (("aliases", "seq"), ("feedback", "trace_seq"), ("pairs", "trace_seq")):
                if self._has(table):
                    self._db.execute(f"DELETE FROM {table} WHERE {column} IN ({marks})", chunk)

    def _delete_traces(self, where: str, params: Sequence[Any]) -> int:
        """Delete hot rows matching `where`, with their feedback, pairs and aliases."""
        seqs = [row[0] for row in self._db.execute(f"SELECT seq FROM traces WHERE {where}", params)]
        if seqs:
            self._keep_seq_high()
        for i in range(0, len(seqs), 900):
            chunk = seqs[i:i + 900]
            self._db.execute(f"DELETE FROM traces WHERE seq IN ({','.join('?' * len(chunk))})", chunk)
        self._delete_dependents(seqs)
        self._count -= len(seqs)
        return len(seqs)

    def _delete_sealed(self, blocks_where: str, params: Sequence[Any], doomed: Any) -> int:
        """Delete the sealed records for which `doomed(record, created)` is true, in the blocks
        matching `blocks_where`; a block keeping some records is rewritten with just those."""
        if not self._has("blocks"):
            return 0
        deleted = 0
        for first, last, records, dict_id in self._db.execute(
                f"SELECT first, last, records, dict FROM blocks WHERE {blocks_where} ORDER BY first", params).fetchall():
            unpacked = self._block_records(first, last, records, dict_id)
            bodies = [decode_payload(record.payload) for record in unpacked]
            gone = [(r, body) for r, body in zip(unpacked, bodies) if doomed(r, body[0]["t"])]
            if not gone:
                continue
            self._keep_seq_high()
            self._db.execute("DELETE FROM blocks WHERE first = ?", (first,))
            keys = [(hash31(body["id"].encode()), r.seq) for r, (body, _) in gone]
            keys += [(-1 - hash31(norm), r.seq) for r, (_, norm) in gone]
            self._db.executemany("DELETE FROM sealed_keys WHERE h = ? AND seq = ?", keys)
            kept = [r for r, body in zip(unpacked, bodies) if not doomed(r, body[0]["t"])]
            if kept:
                self._write_block(kept, self.codec.latest)
            self._delete_dependents([r.seq for r, _ in gone])
            deleted += len(gone)
        self._block_cache.clear()
        self._count -= deleted
        return deleted

    def _delete_oldest(self, count: int) -> int:
        """Delete the `count` oldest records (by seq): sealed ones first, they are the oldest."""
        deleted = 0
        if self._has("blocks"):
            cutoff = None
            for first, last, records, dict_id in self._db.execute(
                    "SELECT first, last, records, dict FROM blocks ORDER BY first").fetchall():
                if deleted + records >= count:
                    cutoff = self._block_records(first, last, records, dict_id)[count - deleted - 1].seq
                    break
                deleted += records
                cutoff = last
            if cutoff is not None:
                deleted = self._delete_sealed("first <= ?", (cutoff,), lambda record, _: record.seq <= cutoff)
        if deleted < count:
            deleted += self._delete_traces("seq IN (SELECT seq FROM traces ORDER BY seq LIMIT ?)", (count - deleted,))
        return deleted

    def apply_retention(self, max_age_days: float | None = None, max_bytes: int | None = None,
                        now: float | None = None) -> dict[str, int]:
        """Delete traces (with their feedback and pairs) older than `max_age_days`, then the oldest
        until the live data fits in `max_bytes`; give the freed pages back to the file system."""
        now = time.time() if now is None else now
        deleted_age = deleted_size = 0
        if max_age_days is not None:
            cutoff = int(now - max_age_days * 86400)
            with self._transaction():
                # Every source: naming them lets SQLite use the (source, created) index.
                self._refresh_sources()
                sources = ",".join(str(s) for s in sorted(self._source_rows)) or "NULL"
                deleted_age = self._delete_traces(f"source IN ({sources}) AND created < ?", (cutoff,))
                deleted_age += self._delete_sealed("created_min < ?", (cutoff,),
                                                   lambda record, created: int(created) < cutoff)
        if max_bytes is not None:
            for _ in range(64):
                live = self.live_bytes()
                if live <= max_bytes or self._count == 0:
                    break
                share = (live - max_bytes) / live
                with self._transaction():
                    self._count = self._stored_count()     # another process may have pruned meanwhile
                    deleted_size += self._delete_oldest(max(1, int(self._count * share * 1.05) + 1))
                with self._lock:
                    self._db.execute("PRAGMA incremental_vacuum")
        if deleted_age:
            with self._lock:
                self._db.execute("PRAGMA incremental_vacuum")
        return {"deleted_by_age": deleted_age, "deleted_by_size": deleted_size}

    # ------------------------------------------------------------------ numbers

    def count_by_consent(self) -> dict[str, int]:
        """Stored traces by consent level."""
        with self._snapshot():
            counts = {CONSENT_NAMES[c]: n for c, n in
                      self._db.execute("SELECT consent, count(*) FROM traces GROUP BY consent")}
            for summary in self._block_summaries():
                for code, n in summary["consent"].items():
                    counts[CONSENT_NAMES[int(code)]] = counts.get(CONSENT_NAMES[int(code)], 0) + n
        return counts

    def _block_summaries(self) -> list[dict[str, Any]]:
        """Each block's summary, with its time span and data bytes."""
        if not self._has("blocks"):
            return []
        return [{**json.loads(summary), "created": (lo, hi), "bytes": nbytes} for summary, lo, hi, nbytes in
                self._db.execute("SELECT summary, created_min, created_max, length(data) FROM blocks")]

    def stats(self) -> dict[str, Any]:
        """Counts by model version, consent and redaction type; feedback, pairs and bytes."""
        with self._snapshot():
            self._refresh_sources()
            db = self._db
            by_source = dict(db.execute("SELECT source, count(*) FROM traces GROUP BY source").fetchall())
            by_version: dict[str, int] = {}
            for source_id, count in by_source.items():
                version = self._source(source_id)["model_version"]
                by_version[version] = by_version.get(version, 0) + count
            by_consent = self.count_by_consent()
            redaction: dict[str, int] = {}
            redacted_traces = 0
            for value, count in db.execute(
                    "SELECT redacted, count(*) FROM traces WHERE redacted IS NOT NULL GROUP BY redacted"):
                redacted_traces += count
                for kind, n in parse_redaction_column(value).items():
                    redaction[kind] = redaction.get(kind, 0) + n * count
            feedback: dict[str, int] = {}
            if self._has("feedback"):
                for kinds, count in db.execute("SELECT kinds, count(*) FROM feedback GROUP BY kinds"):
                    for kind in kinds.split(","):
                        feedback[kind] = feedback.get(kind, 0) + count
            pairs: dict[str, dict[str, int]] = {}
            if self._has("pairs"):
                for kind, origin, count in db.execute("SELECT kind, origin, count(*) FROM pairs GROUP BY kind, origin"):
                    pairs.setdefault(kind, {})[origin] = count
            span = list(db.execute("SELECT min(created), max(created) FROM traces").fetchone())
            payload_bytes = db.execute("SELECT coalesce(sum(length(payload)), 0) FROM traces").fetchone()[0]
            multi = db.execute("SELECT count(*) FROM traces WHERE choices > 1").fetchone()[0]
            for block in self._block_summaries():        # sealed records, counted from block summaries
                for source_id, count in block["sources"].items():
                    version = self._source(int(source_id))["model_version"]
                    by_version[version] = by_version.get(version, 0) + count
                for kind, n in block["redaction"].items():
                    redaction[kind] = redaction.get(kind, 0) + n
                redacted_traces += block["redacted"]
                multi += block["multi"]
                payload_bytes += block["bytes"]
                lo, hi = block["created"]
                span = [lo if span[0] is None else min(span[0], lo), hi if span[1] is None else max(span[1], hi)]
            dictionaries = [{"id": i, "bytes": b, "trained_at_records": r} for i, b, r in
                            db.execute("SELECT id, length(data), records FROM dictionaries ORDER BY id")]
            aliases = db.execute("SELECT count(*) FROM aliases").fetchone()[0] if self._has("aliases") else 0
            traces = self._stored_count()
        files = [self.path, Path(f"{self.path}-wal")]
        return {
            "path": str(self.path),
            "node_id": self.get_meta("node_id"),
            "node_consent": self.node_consent,
            "traces": traces,
            "duplicates_seen": aliases,
            "traces_with_n_choices": multi,
            "by_model_version": dict(sorted(by_version.items())),
            "by_consent": by_consent,
            "redacted_traces": redacted_traces,
            "redactions_by_type": dict(sorted(redaction.items())),
            "feedback_by_kind": feedback,
            "pairs": pairs,
            "oldest": span[0],
            "newest": span[1],
            "bytes": {
                "file": sum(p.stat().st_size for p in files if p.exists()),
                "payloads": payload_bytes,
                "dictionaries": sum(d["bytes"] for d in dictionaries),
            },
            "dictionaries": dictionaries,
        }

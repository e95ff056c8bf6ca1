"""Settings of the privacy filter and the node store (configs/store.toml), validated with extra="forbid"."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

PII_TYPES = (
    "EMAIL", "PHONE", "CREDIT_CARD", "IBAN", "IP_ADDRESS", "URL_CREDENTIALS", "US_SSN",
    "NATIONAL_ID", "API_KEY", "PRIVATE_KEY", "SECRET", "PERSON",
)
PiiType = Literal[
    "EMAIL", "PHONE", "CREDIT_CARD", "IBAN", "IP_ADDRESS", "URL_CREDENTIALS", "US_SSN",
    "NATIONAL_ID", "API_KEY", "PRIVATE_KEY", "SECRET", "PERSON",
]


class PrivacySettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # Types to look for; PERSON also needs `names` and an installed spaCy model.
    types: list[PiiType] = Field(default_factory=lambda: list(PII_TYPES))
    # Person names: "auto" uses a spaCy pipeline if one is installed (reported as off otherwise),
    # "off" never looks, or the name/path of a spaCy pipeline to load.
    names: str = "auto"
    # Regions tried for phone numbers written without a country code (libphonenumber codes).
    phone_regions: list[str] = Field(
        default_factory=lambda: ["US", "GB", "DE", "FR", "ES", "IT", "NL", "IN", "BR", "CA", "AU", "JP", "PL"])
    # High-entropy secrets: tokens at least this long whose Shannon entropy (bits per character)
    # reaches `secret_entropy_ratio` of the maximum possible for their length and alphabet.
    secret_min_length: int = Field(default=20, ge=8)
    secret_entropy_ratio: float = Field(default=0.82, gt=0, le=1)


class StoreSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # Background writer: a batch is committed (one transaction, fsync'd) when it holds
    # `batch_max` items, or `batch_wait_ms` after its first item, whichever comes first.
    batch_max: int = Field(default=2048, ge=1)
    batch_wait_ms: float = Field(default=5.0, ge=0)   # a batch gathers what arrives this soon after its first item
    queue_max: int = Field(default=100_000, ge=1)   # beyond this, new traces are dropped, never blocked on
    # zstd: level for new records; a dictionary is trained from the node's own records once there
    # are `dictionary_min_records`, and retrained each time the store grows by `dictionary_retrain_factor`.
    compression_level: int = Field(default=1, ge=1, le=22)
    dictionary_min_records: int = Field(default=1000, ge=10)
    dictionary_size: int = Field(default=131_072, ge=1024)
    dictionary_retrain_factor: float = Field(default=4.0, gt=1)
    # Compaction, run by the writer while idle (and by `swarmloop traces compact`): the oldest
    # records are sealed into blocks of `seal_block_records` (0: never; traces/blocks.py), the rest
    # recompressed at `compaction_level` with the newest dictionary, then the file is rewritten
    # densely (VACUUM) when at least `compaction_vacuum_share` of it is slack.
    seal_block_records: int = Field(default=128, ge=0)
    compaction_level: int = Field(default=19, ge=1, le=22)
    compaction_idle_s: float = Field(default=5.0, gt=0)          # queue empty this long before compacting
    compaction_step: int = Field(default=256, ge=1)              # records per step (bounds writer pauses)
    compaction_vacuum_share: float = Field(default=0.1, ge=0, le=1)
    # SQLite page size of a new store. 4 KB: sealed blocks fill overflow pages whatever the size, and
    # each table or index costs at least a page (16 KB pages added ~12 B per trace at 10,000 traces).
    page_size: Literal[4096, 8192, 16384, 32768, 65536] = 4096
    # Retention, applied by the writer every `retention_check_s` and by `swarmloop traces prune`.
    retention_max_age_days: float | None = Field(default=90.0, gt=0)
    retention_max_bytes: int | None = Field(default=2 * 1024**3, gt=0)
    retention_check_s: float = Field(default=600.0, gt=0)
    # How long POST /v1/feedback waits for a completion it has not seen yet before answering 404
    # (replies reach the client a decode step or so before the capture hook sees them).
    feedback_wait_s: float = Field(default=1.0, ge=0)
    # Parquet shards written by `swarmloop traces export`.
    export_shard_rows: int = Field(default=50_000, ge=1)

    @field_validator("seal_block_records")
    @classmethod
    def _a_block_holds_two(cls, value: int) -> int:
        if value == 1:
            raise ValueError("a block of one record saves nothing: use 0 (never seal) or at least 2")
        return value


class TracesConfig(BaseModel):
    """configs/store.toml"""

    model_config = ConfigDict(extra="forbid")
    store: StoreSettings = Field(default_factory=StoreSettings)
    privacy: PrivacySettings = Field(default_factory=PrivacySettings)

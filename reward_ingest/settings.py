from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import NoDecode

from banditgate.settings import CoreSettings, split_list


class IngestSettings(CoreSettings):
    reward_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list,
        description="Bearer keys accepted by the reward webhook (comma-separated; none: open).",
    )
    reward_keys_file: Path | None = Field(
        default=None, description="File with one reward key per line."
    )
    max_batch: int = Field(
        default=10_000, ge=1, description="Most rewards in one request (413 above)."
    )
    max_body_bytes: int = Field(
        default=16 * 1024 * 1024, ge=1, description="Largest reward request body."
    )

    join_consumer: str | None = Field(
        default=None,
        description="Consumer name in the joiner groups (default: host and pid); stable is best.",
    )
    join_decision_entries: int = Field(
        default=2,
        ge=1,
        description="Decision stream entries per read (each holds one router flush).",
    )
    join_reward_batch: int = Field(
        default=2000, ge=1, description="Reward stream entries per read."
    )
    join_close_limit: int = Field(
        default=2000, ge=1, le=4000, description="Most windows closed per script call."
    )
    join_claim_idle_ms: int = Field(
        default=30_000,
        ge=1,
        description="Messages pending this long with a silent consumer are taken over.",
    )
    join_closed_retention_s: float = Field(
        default=600.0,
        ge=0,
        description="How long after its window a closed event id marks rewards late (~100 B each).",
    )
    join_clock_skew_ms: int = Field(
        default=500,
        ge=0,
        description="Allowance for clock skew between ingest hosts and Redis when closing windows.",
    )
    join_max_block_ms: int = Field(
        default=1000, ge=1, description="Longest wait for new messages when idle."
    )
    join_refresh_s: float = Field(
        default=2.0,
        gt=0,
        description="How often the joiner checks its experiment loops (changes are announced).",
    )
    join_audit_maxlen: int = Field(
        default=100_000,
        ge=1,
        description="Approximate cap on each experiment's audit stream of unused rewards.",
    )
    unrouted_retry_ms: int = Field(
        default=500,
        ge=1,
        description="How often a reward whose experiment is unknown is looked up again.",
    )

    export_max_rows: int = Field(
        default=100_000, ge=1, description="Rows after which an export file is closed."
    )
    export_max_age_s: float = Field(
        default=60.0, gt=0, description="Seconds after which an open export file is closed."
    )
    export_row_group: int = Field(default=20_000, ge=1, description="Rows per Parquet row group.")
    export_claim_idle_ms: int = Field(
        default=300_000,
        ge=1,
        description="A silent exporter's unexported entries are taken over after this long.",
    )
    export_takeover_idle_ms: int = Field(
        default=10_000,
        ge=1,
        description="On a flush, entries held by an exporter silent this long are taken over.",
    )
    export_s3_url: str | None = Field(
        default=None, description="Upload closed export files to s3://bucket/prefix."
    )
    export_s3_endpoint_url: str | None = Field(
        default=None, description="S3 endpoint (MinIO, a local S3, ...)."
    )
    export_s3_region: str | None = Field(default=None, description="S3 region.")

    @field_validator("reward_keys", mode="before")
    @classmethod
    def _reward_keys(cls, value: Any) -> Any:
        return split_list(value)

    @field_validator("export_s3_url")
    @classmethod
    def _s3_url(cls, value: str | None) -> str | None:
        if value and not value.startswith("s3://"):
            raise ValueError("must look like s3://bucket/prefix")
        return value or None

from __future__ import annotations

from pydantic import Field

from banditgate.settings import CoreSettings


class RouterSettings(CoreSettings):
    max_body_bytes: int = Field(
        default=6 * 1024 * 1024, description="Largest request body (413 above)."
    )
    backend_timeout_s: float = Field(default=60.0, description="Default backend response timeout.")
    backend_connect_timeout_s: float = Field(default=2.0, description="Backend connect timeout.")
    backend_max_connections: int = Field(
        default=0, description="Per-host connection cap (0 = none)."
    )
    flush_interval_s: float = Field(
        default=0.005, description="Decisions reach Redis within this delay."
    )
    flush_max_batch: int = Field(
        default=2000, description="Most decisions in one Redis stream entry."
    )
    log_buffer_max: int = Field(
        default=500_000, description="Decisions held in memory while Redis is away."
    )
    event_index: bool = Field(default=True, description="Index event id -> experiment for rewards.")
    shadow_max_inflight: int = Field(
        default=256, description="Mirrored calls in flight at once; more are dropped and counted."
    )
    capture_buffer_max: int = Field(
        default=10_000, description="Data-capture records held for the writer; more are dropped."
    )
    capture_buffer_max_bytes: int = Field(
        default=64 * 1024 * 1024, description="Bytes of bodies held for the capture writer."
    )
    capture_file_max_bytes: int = Field(
        default=64 * 1024 * 1024, description="A capture file is closed (and uploaded) past this."
    )
    capture_s3_endpoint_url: str | None = Field(
        default=None, description="S3 endpoint for capture uploads (an S3-compatible store)."
    )
    capture_s3_region: str | None = Field(default=None, description="S3 region for capture.")
    shadow_timeout_s: float = Field(
        default=10.0, description="Timeout of a mirrored call when its arm sets none."
    )

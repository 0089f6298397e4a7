from __future__ import annotations

from pathlib import Path

from pydantic import Field

from banditgate.settings import CoreSettings


class RouterSettings(CoreSettings):
    max_body_bytes: int = Field(
        default=6 * 1024 * 1024, description="Largest request body (413 above)."
    )
    backend_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description="Default backend response timeout (an arm's timeout_s wins).",
    )
    backend_connect_timeout_s: float = Field(
        default=1.0, gt=0, description="Default backend connect timeout (an arm's wins)."
    )
    backend_max_connections: int = Field(
        default=128,
        ge=0,
        description="Requests in flight per backend host and worker; more wait (0 = no cap).",
    )
    arm_failures_to_eject: int = Field(
        default=5, ge=1, description="Consecutive failures after which an arm is ejected."
    )
    arm_cooldown_s: float = Field(
        default=5.0, gt=0, description="First ejection's length; each failed probe doubles it."
    )
    arm_max_cooldown_s: float = Field(default=60.0, gt=0, description="Longest ejection.")
    retry_unreachable: bool = Field(
        default=True,
        description="Send a request another arm when its arm could not be connected to "
        "(nothing was sent); the retry is its own logged decision.",
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
    log_batch_max_bytes: int = Field(
        default=512 * 1024,
        ge=1024,
        description="Most bytes of decisions in one Redis stream entry (keep below "
        "Redis's proto-max-bulk-len).",
    )
    log_buffer_max_bytes: int = Field(
        default=64 * 1024 * 1024,
        ge=1024,
        description="Bytes of decisions held in memory while Redis is away; then they spill.",
    )
    log_spill_dir: Path | None = Field(
        default=None,
        description="Directory of the decision-log spill files (default: data_dir/spill).",
    )
    log_spill_max_bytes: int = Field(
        default=256 * 1024 * 1024,
        ge=0,
        description="Largest spill file per log writer; beyond it decisions are dropped "
        "and counted (0: no spill file).",
    )
    max_inflight: int = Field(
        default=1024,
        ge=1,
        description="Routed requests in flight per worker; beyond, 503 with Retry-After.",
    )
    retry_after_s: int = Field(
        default=1, ge=1, description="Retry-After of a 503 when the worker is at max_inflight."
    )
    disconnect_check_s: float = Field(
        default=0.25,
        gt=0,
        description="A request running this long has its client watched; "
        "a disconnect cancels its backend call.",
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
    deferred_sweep_s: float = Field(
        default=5.0,
        gt=0,
        description="How often deferred-activation events past their window are dropped and counted.",
    )
    replay_window_s: float = Field(
        default=120.0,
        ge=0,
        description="A retry of a client request (same event id, or same amz-sdk-invocation-id) "
        "within this window is answered from its first decision and not logged again (0: off).",
    )

    @property
    def spill_dir(self) -> Path | None:
        if not self.log_spill_max_bytes:
            return None
        return self.log_spill_dir or self.data_dir / "spill"

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
    shadow_timeout_s: float = Field(
        default=10.0, description="Timeout of a mirrored call when its arm sets none."
    )
    replay_window_s: float = Field(
        default=120.0,
        ge=0,
        description="A retry of a client request (same event id, or same amz-sdk-invocation-id) "
        "within this window is answered from its first decision and not logged again (0: off).",
    )

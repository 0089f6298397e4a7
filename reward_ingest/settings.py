from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr

from banditgate.settings import CoreSettings


class IngestSettings(CoreSettings):
    reward_keys: list[SecretStr] = Field(
        default_factory=list, description="Bearer keys accepted by the reward webhook (none: open)."
    )
    reward_keys_file: Path | None = Field(default=None, description="File with one reward key per line.")
    max_batch: int = Field(default=10_000, description="Most rewards in one request (413 above).")
    max_body_bytes: int = Field(default=16 * 1024 * 1024, description="Largest reward request body.")

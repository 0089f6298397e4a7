"""Settings shared by every process; each component extends CoreSettings with its own."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class CoreSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="BANDITGATE_", extra="ignore")

    redis_url: str | None = Field(
        default=None, description="Redis URL; unset starts an embedded Redis under data_dir."
    )
    data_dir: Path = Field(default=Path(".banditgate"), description="Local state: embedded Redis, exports.")
    log_level: str = Field(default="INFO", description="Python logging level.")
    stream_maxlen: int = Field(
        default=2_000_000, description="Approximate cap on each experiment's event streams."
    )

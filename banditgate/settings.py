"""Settings shared by every process; each component extends CoreSettings with its own."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import orjson
from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


def split_list(value: Any) -> Any:
    """Environment lists are comma-separated (`a,b`) or JSON (`["a","b"]`)."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            return orjson.loads(text)
        return [item.strip() for item in text.split(",") if item.strip()]
    return value


class CoreSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="BANDITGATE_", extra="ignore")

    redis_url: str | None = Field(
        default=None,
        description=(
            "Redis URL (redis://, rediss://, unix://; a Redis Cluster as "
            "redis+cluster://host:port[,host:port...]); unset starts an embedded Redis under data_dir."
        ),
    )
    data_dir: Path = Field(
        default=Path(".banditgate"), description="Local state: embedded Redis, exports."
    )
    log_level: str = Field(default="INFO", description="Python logging level.")
    stream_maxlen: int = Field(
        default=2_000_000, description="Approximate cap on each experiment's event streams."
    )
    experiments: Annotated[list[str] | None, NoDecode] = Field(
        default=None, description="Serve only these experiments (comma-separated; unset: all)."
    )

    @field_validator("experiments", mode="before")
    @classmethod
    def _experiments(cls, value: Any) -> Any:
        return split_list(value)

    def serves(self, experiment: str) -> bool:
        return self.experiments is None or experiment in self.experiments

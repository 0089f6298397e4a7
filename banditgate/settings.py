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

    policy_keep_versions: int = Field(
        default=20,
        ge=1,
        description="Policy versions kept per experiment; older ones (never the one served) "
        "are pruned at each publish.",
    )
    # Rate limits (per process, per client address and per key; 0: unlimited), see
    # banditgate/ratelimit.py.
    rate_limit_rewards_per_s: float = Field(
        default=5000.0, ge=0, description="Reward requests per second per client and per key."
    )
    rate_limit_rank_per_s: float = Field(
        default=5000.0, ge=0, description="Rank requests per second per client and per key."
    )
    rate_limit_control_per_s: float = Field(
        default=100.0,
        ge=0,
        description="Control-plane requests (API, dashboards, /metrics) per second per client "
        "and per key.",
    )
    rate_limit_auth_failures_per_s: float = Field(
        default=10.0, ge=0, description="Refused keys (401/403) per second per client."
    )

    def rate_limits(self) -> dict[str, float]:
        return {
            "rewards": self.rate_limit_rewards_per_s,
            "rank": self.rate_limit_rank_per_s,
            "control": self.rate_limit_control_per_s,
            "auth": self.rate_limit_auth_failures_per_s,
        }

    @field_validator("experiments", mode="before")
    @classmethod
    def _experiments(cls, value: Any) -> Any:
        return split_list(value)

    def serves(self, experiment: str) -> bool:
        return self.experiments is None or experiment in self.experiments

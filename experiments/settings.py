from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import NoDecode

from banditgate.settings import CoreSettings, split_list


class ControlSettings(CoreSettings):
    admin_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list,
        description="Bearer keys for calls that change state, comma-separated (none: open).",
    )
    admin_keys_file: Path | None = Field(
        default=None, description="File with one admin key per line."
    )

    @field_validator("admin_keys", mode="before")
    @classmethod
    def _admin_keys(cls, value: Any) -> Any:
        return split_list(value)

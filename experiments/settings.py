from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr

from banditgate.settings import CoreSettings


class ControlSettings(CoreSettings):
    admin_keys: list[SecretStr] = Field(
        default_factory=list, description="Bearer keys for calls that change state (none: open)."
    )
    admin_keys_file: Path | None = Field(
        default=None, description="File with one admin key per line."
    )

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from banditgate.settings import CoreSettings, split_list


class ControlSettings(CoreSettings):
    model_config = SettingsConfigDict(
        **CoreSettings.model_config, validate_by_name=True, validate_by_alias=True
    )

    # BANDITGATE_ADMIN_KEYS is the name on both sides (the CLI sends its first key);
    # BANDITGATE_ADMIN_KEY, the CLI's old name, is read too, so setting it never leaves
    # the control plane open by mistake.
    admin_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list,
        validation_alias=AliasChoices("BANDITGATE_ADMIN_KEYS", "BANDITGATE_ADMIN_KEY"),
        description="Bearer keys for calls that change state, comma-separated (none: open).",
    )
    admin_keys_file: Path | None = Field(
        default=None, description="File with one admin key per line."
    )

    read_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list,
        description="Bearer keys for reads (GET API, dashboards, /metrics), comma-separated; "
        "admin keys read too. With any key set, reads need one.",
    )
    read_keys_file: Path | None = Field(
        default=None, description="File with one read key per line."
    )

    arm_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Where arms may point: CIDRs and host patterns, comma-separated (unset: "
        "anywhere but link-local and cloud metadata addresses).",
    )

    max_body_bytes: int = Field(
        default=16 * 1024 * 1024,
        ge=1024,
        description="Largest request body the control plane reads (policy uploads); more is 413.",
    )
    max_spec_bytes: int = Field(
        default=1024 * 1024, ge=1024, description="Largest experiment spec body; more is 413."
    )

    @field_validator("admin_keys", "read_keys", "arm_hosts", mode="before")
    @classmethod
    def _admin_keys(cls, value: Any) -> Any:
        return split_list(value)

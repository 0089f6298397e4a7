"""Closed by default: no admin keys, no listening beyond loopback (unless --insecure)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import SecretStr

from banditgate_app.exposure import Exposed, check_exposure, is_loopback
from experiments.settings import ControlSettings

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "reviews.yaml"
CLI = (sys.executable, "-m", "banditgate_app.cli")


def test_loopback_addresses() -> None:
    assert all(map(is_loopback, ["127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"]))
    assert not any(map(is_loopback, ["0.0.0.0", "::", "10.0.0.1", "example.com"]))


def test_exposure_rules(tmp_path: Path) -> None:
    open_settings = ControlSettings(admin_keys=[])
    assert "127.0.0.1 only" in check_exposure("127.0.0.1", insecure=False, settings=open_settings)
    with pytest.raises(Exposed, match=r"refusing to listen on 0\.0\.0\.0 without admin keys"):
        check_exposure("0.0.0.0", insecure=False, settings=open_settings)
    assert "WITHOUT admin keys" in check_exposure("0.0.0.0", insecure=True, settings=open_settings)
    keyed = ControlSettings(admin_keys=[SecretStr("k")])
    assert check_exposure("0.0.0.0", insecure=False, settings=keyed) == ""
    keys_file = tmp_path / "keys"
    keys_file.write_text("# admins\n\n")
    commented = ControlSettings(admin_keys=[], admin_keys_file=keys_file)
    with pytest.raises(Exposed):
        check_exposure("10.0.0.1", insecure=False, settings=commented)
    keys_file.write_text("# admins\nsecret\n")
    assert check_exposure("10.0.0.1", insecure=False, settings=commented) == ""


@pytest.mark.parametrize("command", ["serve", "control"])
def test_commands_refuse_a_public_interface_without_admin_keys(command: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BANDITGATE_ADMIN_KEY")}
    done = subprocess.run(
        [*CLI, command, "-f", str(EXAMPLE), "--host", "0.0.0.0", "--port", "1"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "refusing to listen on 0.0.0.0 without admin keys" in done.stderr

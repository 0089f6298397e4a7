"""Closed by default: without admin keys, the control plane is reachable from this host only.

`serve` and `control` bind to loopback by default. Without admin keys every state
change is open, so binding any other interface is refused unless the operator says
`--insecure` (a trusted network, a proxy in front that authenticates).
"""

from __future__ import annotations

import ipaddress

from experiments.settings import ControlSettings

LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost"}


class Exposed(Exception):
    """Refused: a non-loopback interface without admin keys."""


def is_loopback(host: str) -> bool:
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def has_admin_keys(settings: ControlSettings | None = None) -> bool:
    settings = settings or ControlSettings()
    keys = [key for key in settings.admin_keys if key.get_secret_value().strip()]
    if keys:
        return True
    path = settings.admin_keys_file
    if path is None:
        return False
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return False
    return any(line.strip() and not line.strip().startswith("#") for line in lines)


def check_exposure(host: str, *, insecure: bool, settings: ControlSettings | None = None) -> str:
    """What to tell the operator; raises Exposed when `host` may not be bound."""
    if has_admin_keys(settings):
        return ""
    if is_loopback(host):
        return (
            f"no admin keys (BANDITGATE_ADMIN_KEYS): listening on {host} only, "
            "every state change is open to local users"
        )
    if insecure:
        return (
            f"--insecure: listening on {host} WITHOUT admin keys; anyone who reaches it can "
            "create experiments and point arms anywhere"
        )
    raise Exposed(
        f"refusing to listen on {host} without admin keys: set BANDITGATE_ADMIN_KEYS "
        "(or BANDITGATE_ADMIN_KEYS_FILE), listen on 127.0.0.1, or pass --insecure"
    )

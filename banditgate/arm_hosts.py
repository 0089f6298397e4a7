"""Where arms may point: an allow-list of networks and host names, and credentials kept out of sight.

`BANDITGATE_ARM_HOSTS` lists CIDRs (`10.0.0.0/8`, `::1/128`), addresses and host name
patterns (`*.svc.cluster.local`, `models.internal`). Unset, any host is allowed except
link-local and cloud metadata addresses; set, an arm's host must match an entry. Link-local
and metadata hosts are refused unless an entry names them itself (a link-local CIDR, or
the exact name): a broad `0.0.0.0/0` does not open them. Host names are matched as written,
not resolved: a name that resolves to a refused address passes (use addresses, or a
resolver you trust, where that matters).

Credentials in an arm URL (`http://user:secret@host`) are never shown back:
`redact_urls` replaces the password with `***` in anything the control plane answers,
and a spec sent back with `***` is refused (the real credentials must be sent again).
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any
from urllib.parse import urlsplit

from banditgate.errors import InvalidSpec

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

METADATA_NAMES = frozenset(
    {
        "metadata",
        "metadata.google.internal",
        "metadata.goog",
        "instance-data",
        "instance-data.ec2.internal",
    }
)
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a)
    for a in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200", "169.254.170.2")
)
REDACTED = "***"
_USERINFO = re.compile(r"^(https?://)([^/@\s]*)@", re.IGNORECASE)


@dataclass(frozen=True)
class ArmHosts:
    networks: tuple[Network, ...] = ()
    patterns: tuple[str, ...] = ()
    listed: bool = field(default=False)

    @classmethod
    def parse(cls, entries: Iterable[str]) -> ArmHosts:
        networks: list[Network] = []
        patterns: list[str] = []
        any_entry = False
        for raw in entries:
            entry = raw.strip().lower()
            if not entry:
                continue
            any_entry = True
            try:
                networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
            except ValueError:
                if not re.fullmatch(r"[a-z0-9*?.\-]+", entry):
                    raise ValueError(
                        f"BANDITGATE_ARM_HOSTS: {raw!r} is neither a CIDR nor a host pattern"
                    ) from None
                patterns.append(entry)
        return cls(tuple(networks), tuple(patterns), any_entry)

    def refusal(self, url: str) -> str | None:
        """Why an arm may not point at `url`, or None."""
        try:
            host = (urlsplit(url).hostname or "").lower()
        except ValueError:
            return "not a valid URL"
        if not host:
            return "has no host"
        address = _address(host)
        if address is not None:
            return self._address_refusal(host, address)
        return self._name_refusal(host)

    def _address_refusal(self, host: str, address: Address) -> str | None:
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        sensitive = address.is_link_local or address in METADATA_ADDRESSES
        if sensitive:
            explicit = any(
                address in network
                and (network.network_address.is_link_local or network.num_addresses == 1)
                for network in self.networks
            )
            if not explicit:
                return f"host {host} is a link-local or cloud metadata address (list it in BANDITGATE_ARM_HOSTS to allow it)"
            return None
        if self.listed and not any(address in network for network in self.networks):
            return f"host {host} is not in BANDITGATE_ARM_HOSTS"
        return None

    def _name_refusal(self, host: str) -> str | None:
        if host in METADATA_NAMES:
            if host in self.patterns:
                return None
            return f"host {host} is a cloud metadata name (list it in BANDITGATE_ARM_HOSTS to allow it)"
        if self.listed and not any(fnmatchcase(host, pattern) for pattern in self.patterns):
            return f"host {host} is not in BANDITGATE_ARM_HOSTS"
        return None

    def check_document(self, document: Any, *, where: str = "arms") -> None:
        """Every arm URL in a spec (or patch) document; InvalidSpec naming the first bad one."""
        if not isinstance(document, dict):
            return
        arms = document.get("arms")
        if isinstance(arms, list):
            for index, arm in enumerate(arms):
                self.check_arm(arm, where=f"{where}[{index}]")

    def check_arm(self, arm: Any, *, where: str) -> None:
        if not isinstance(arm, dict) or not isinstance(arm.get("url"), str):
            return
        url: str = arm["url"]
        if not url.lower().startswith(("http://", "https://")):
            return  # the spec's own validation names what is wrong with it
        problem = self.refusal(url)
        if problem is None and _password(url) == REDACTED:
            problem = "carries the redacted password '***'; send the real credentials"
        if problem is not None:
            raise InvalidSpec(f"{where}.url: {problem}", field=f"{where}.url")


def _address(host: str) -> Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    # What a resolver reads as IPv4 too: 2852039166, 0xa9fea9fe, 0251.0376.0251.0376, 169.254.43518
    if re.fullmatch(r"[0-9a-fx.]+", host) and not host.endswith("."):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None


def _password(url: str) -> str | None:
    try:
        return urlsplit(url).password
    except ValueError:
        return None


def redact_url(url: str) -> str:
    match = _USERINFO.match(url)
    if match is None:
        return url
    user, colon, _ = match.group(2).partition(":")
    shown = f"{user}:{REDACTED}" if colon else REDACTED
    return f"{match.group(1)}{shown}@{url[match.end() :]}"


def redact_urls(value: Any) -> Any:
    """A JSON document with every credential in an http(s) URL replaced by `***`."""
    if isinstance(value, str):
        return redact_url(value) if "@" in value else value
    if isinstance(value, list):
        return [redact_urls(item) for item in value]
    if isinstance(value, dict):
        return {key: redact_urls(item) for key, item in value.items()}
    return value

"""Address helpers shared by the server, the bridges and the agent (torch-free, stdlib only)."""

from __future__ import annotations

import ipaddress


def split_host(target: str) -> str:
    """'host:port' / '[v6]:port' / 'dns:///host:port' -> host."""
    t = target.split("///", 1)[-1]
    if t.startswith("["):
        return t[1:t.find("]")] if "]" in t else t
    return t.rsplit(":", 1)[0] if t.count(":") == 1 else t


def is_loopback(host: str) -> bool:
    """True for localhost / 127.0.0.0/8 / ::1 (traffic that never leaves the machine)."""
    h = host.strip("[]")
    if h == "localhost":
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False

"""Broker URLs, one parser for every tool: `mqtt://host:port` (1883 by default) and, where TLS
is possible, `mqtts://host:port` (8883). A bare `host:port` means mqtt://."""
from __future__ import annotations

from urllib.parse import urlparse

_PLAIN = ("mqtt", "tcp")
_TLS = ("mqtts", "ssl")


def parse(url: str, tls_ok: bool = False) -> tuple[str, int, bool]:
    """(host, port, tls). Raises ValueError with a one-line reason."""
    u = urlparse(url if "://" in url else "mqtt://" + url)
    schemes = _PLAIN + _TLS if tls_ok else _PLAIN
    if u.scheme not in schemes or not u.hostname:
        raise ValueError("broker must look like mqtt://host:port%s, got %r"
                         % (" or mqtts://host:port" if tls_ok else "", url))
    tls = u.scheme in _TLS
    try:
        port = u.port or (8883 if tls else 1883)
    except ValueError:
        raise ValueError("bad port in broker URL %r" % url) from None
    return u.hostname, port, tls

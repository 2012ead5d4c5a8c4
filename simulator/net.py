"""The simulated cabinet's network: Wi-Fi association plus real TCP over loopback."""
from __future__ import annotations

import asyncio
from typing import Any


class SimNet:
    """Wi-Fi plus TCP: real loopback connections to the broker, cut when the Wi-Fi goes down."""

    def __init__(self, source_ip: str | None = None):
        self.up = True
        self.source_ip = source_ip
        self._writers: list[asyncio.StreamWriter] = []

    def isconnected(self) -> bool:
        return self.up

    async def open(self, host, port, ssl=None, server_hostname=None):
        if not self.up:
            await asyncio.sleep(0.5)  # an association attempt that fails
            raise OSError(113, "wifi down")
        kw: dict[str, Any] = {}
        if ssl is not None:
            kw = {"ssl": ssl, "server_hostname": server_hostname}
        if self.source_ip:
            kw["local_addr"] = (self.source_ip, 0)
        reader, writer = await asyncio.open_connection(host, port, **kw)
        self._writers = [w for w in self._writers if not w.is_closing()]
        self._writers.append(writer)
        return reader, writer

    def set_up(self, up: bool) -> None:
        self.up = up
        if not up:
            for w in self._writers:
                w.transport.abort()  # no FIN handshake: the link just vanishes
            self._writers.clear()

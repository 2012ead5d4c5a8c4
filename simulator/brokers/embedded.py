"""The embedded MQTT broker (amqtt, in-process) used when no --broker is given."""
from __future__ import annotations

import asyncio
import logging

from simulator.brokers.mosquitto import free_port


class EmbeddedBroker:
    """amqtt's broker in this process's asyncio loop, on loopback. Good for demos and a few
    hundred cabinets; use Mosquitto (or a cluster) for load."""

    def __init__(self, host: str = "127.0.0.1", port: int | None = None):
        self.host = host
        self.port = port or free_port(host)
        self.url = "mqtt://%s:%d" % (host, self.port)
        self._broker = None

    async def start(self) -> "EmbeddedBroker":
        from amqtt.broker import Broker
        for name in ("amqtt", "transitions"):
            logging.getLogger(name).setLevel(logging.CRITICAL)  # it logs every connect at INFO
        config = {
            "listeners": {"default": {"type": "tcp", "bind": "%s:%d" % (self.host, self.port),
                                      "max_connections": 0}},
            "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
        }
        self._broker = Broker(config)
        await self._broker.start()
        return self

    async def stop(self) -> None:
        if self._broker is not None:
            await self._broker.shutdown()
            self._broker = None


async def _selftest() -> None:
    b = await EmbeddedBroker().start()
    r, w = await asyncio.open_connection(b.host, b.port)
    w.close()
    await b.stop()


if __name__ == "__main__":
    asyncio.run(_selftest())
    print("ok")

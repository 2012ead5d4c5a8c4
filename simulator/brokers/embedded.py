"""The broker `aedsim run` and `aedsim demo` start when no --broker is given.

Mosquitto when it is installed (a process of its own, on loopback, anonymous, no persistence):
the docs' commands (`mosquitto_pub`/`mosquitto_sub`) and the tests use Mosquitto, so the
default behaves exactly as they describe. amqtt (in this process) only when Mosquitto is not
installed: amqtt 0.12 hands retained messages to subscribers whose filter does not match them and
lost messages of the docs' own `mosquitto_pub`/`mosquitto_sub` walk-through (docs/design.md,
"The embedded broker"), so it is a fallback that says so when it starts.
"""
from __future__ import annotations

import asyncio
import logging
import shutil
import tempfile

from simulator.brokers.mosquitto import Mosquitto, find_mosquitto, free_port, max_nofile

AMQTT_WARNING = ("Mosquitto is not installed, so the embedded broker is amqtt, which differs from "
                 "what the docs show (it hands retained messages to any subscriber and can lose "
                 "messages such as mosquitto_pub's). Install the Debian package "
                 "'mosquitto' for the reference behaviour.")


def _broker_preexec() -> None:
    # Many cabinets, one descriptor each; and the broker goes when aedsim goes, even if aedsim
    # is killed with SIGKILL (Linux: PR_SET_PDEATHSIG), so no stray broker keeps the port.
    max_nofile()
    try:
        import ctypes
        import signal
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class EmbeddedBroker:
    """`await EmbeddedBroker().start()`; `.url`, `.kind` ("mosquitto" or "amqtt"); `.stop()`.
    `prefer="amqtt"` forces the in-process broker."""

    def __init__(self, host: str = "127.0.0.1", port: int | None = None, prefer: str = "auto"):
        self.host = host
        self.port = port or free_port(host)
        self.url = "mqtt://%s:%d" % (host, self.port)
        self.prefer = prefer
        self.kind = None
        self.warning = None
        self._broker = None
        self._mosquitto = None
        self._dir = None

    def describe(self) -> str:
        if self.kind == "mosquitto":
            return "%s (Mosquitto, a process of its own)" % self.url
        return "%s (amqtt, in this process)" % self.url

    async def start(self) -> "EmbeddedBroker":
        if self.prefer != "amqtt" and find_mosquitto() is not None:
            self._dir = tempfile.mkdtemp(prefix="aedsim-broker-")
            self._mosquitto = Mosquitto(self._dir, extra_conf="max_connections -1\n",
                                        port=self.port, host=self.host)
            await asyncio.to_thread(self._mosquitto.start, _broker_preexec)
            self.kind = "mosquitto"
            return self
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
        self.kind = "amqtt"
        self.warning = AMQTT_WARNING
        return self

    async def stop(self) -> None:
        if self._mosquitto is not None:
            await asyncio.to_thread(self._mosquitto.stop)
            self._mosquitto = None
            shutil.rmtree(self._dir, ignore_errors=True)
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

"""The broker `aedsim run` and `aedsim demo` start when no --broker is given.

Mosquitto when it is installed (a process of its own, on loopback, anonymous, no persistence):
the docs' commands (`mosquitto_pub`/`mosquitto_sub`) and the tests use Mosquitto, so the
default behaves exactly as they describe. amqtt (in this process) only when Mosquitto is not
installed, with one fix (Amqtt below): unpatched, amqtt 0.12 handed retained messages to
subscribers whose filter does not match them and lost `mosquitto_pub`'s messages
(docs/design.md, "The embedded broker"). It says so when it starts.
"""
from __future__ import annotations

import asyncio
import logging
import os
import shutil
import socket
import subprocess
import tempfile
import time

from simulator.brokers.mosquitto import Mosquitto, find_mosquitto, free_port, max_nofile

AMQTT_WARNING = ("Mosquitto is not installed, so the embedded broker is amqtt, in this process. "
                 "It is patched and tested for what the docs show (world control with "
                 "mosquitto_pub, retained status and state), but Mosquitto is the reference "
                 "broker: install the Debian package 'mosquitto' to run what the tests run.")


# The broker runs under a small sh that kills it when our end of a pipe closes, i.e. when aedsim
# ends in any way, SIGKILL included, so no stray broker keeps the port. (PR_SET_PDEATHSIG would
# not do: Mosquitto started as root drops to the mosquitto user, which clears that setting.)
_WATCHDOG_SH = ('exec 3<&0 0</dev/null; "$0" -c "$1" & m=$!; read _ <&3; kill $m 2>/dev/null; '
                'wait $m; rm -rf "$2"')


def _amqtt_broker_class():
    from amqtt.broker import Broker

    class Amqtt(Broker):
        """amqtt 0.12, with retained messages going only to a client that holds a matching
        subscription. At every CONNECT it replays retained messages for every filter *any*
        client subscribed to (broker.py, client_connected), so `mosquitto_sub -t nothing/here`
        got every cabinet's status and state; and because it does that before reading the new
        client's packets, a quick `mosquitto_pub` (CONNECT, PUBLISH, DISCONNECT) could be gone
        before its PUBLISH was read. Here the replay is limited to the client's own filters."""

        # (a private method of amqtt's: pyproject pins amqtt to 0.12.x, and
        # tests/integration/test_embedded_broker.py fails if an update breaks this)
        async def _publish_retained_messages_for_subscription(self, subscription, session):
            held = [qos for s, qos in self._subscriptions.get(subscription[0], ())
                    if s.client_id == session.client_id]
            if held:
                await super()._publish_retained_messages_for_subscription(
                    (subscription[0], held[0]), session)
    return Amqtt


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
        self._proc = None
        self._lifeline = -1
        self._dir = None

    def describe(self) -> str:
        if self.kind == "mosquitto":
            return "%s (Mosquitto, a process of its own)" % self.url
        return "%s (amqtt, in this process)" % self.url

    async def start(self) -> "EmbeddedBroker":
        exe = find_mosquitto() if self.prefer != "amqtt" else None
        if exe is None and self.prefer == "mosquitto":
            raise RuntimeError("mosquitto is not installed (Debian package 'mosquitto')")
        if exe is not None:
            self._dir = tempfile.mkdtemp(prefix="aedsim-broker-")
            conf = Mosquitto(self._dir, extra_conf="max_connections -1\n", port=self.port,
                             host=self.host).conf  # (writes the loopback config)
            r, self._lifeline = os.pipe()
            with open(os.path.join(self._dir, "mosquitto.log"), "ab") as log:
                self._proc = subprocess.Popen(["/bin/sh", "-c", _WATCHDOG_SH, exe, str(conf),
                                               self._dir],
                                              stdin=r, stdout=log, stderr=subprocess.STDOUT,
                                              preexec_fn=max_nofile)
            os.close(r)
            deadline = time.monotonic() + 10
            while True:
                try:
                    socket.create_connection((self.host, self.port), timeout=0.2).close()
                    break
                except OSError:
                    if time.monotonic() > deadline or self._proc.poll() is not None:
                        await self.stop()
                        raise RuntimeError("the embedded Mosquitto did not start")
                    await asyncio.sleep(0.05)
            self.kind = "mosquitto"
            return self
        for name in ("amqtt", "transitions"):
            logging.getLogger(name).setLevel(logging.CRITICAL)  # it logs every connect at INFO
        config = {
            "listeners": {"default": {"type": "tcp", "bind": "%s:%d" % (self.host, self.port),
                                      "max_connections": 0}},
            "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
        }
        self._broker = _amqtt_broker_class()(config)
        await self._broker.start()
        self.kind = "amqtt"
        self.warning = AMQTT_WARNING if self.prefer == "auto" else None  # (not chosen)
        return self

    async def stop(self) -> None:
        if self._proc is not None:
            os.close(self._lifeline)  # the watchdog shell stops the broker and waits for it
            try:
                await asyncio.to_thread(self._proc.wait, 10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
            self._proc = None
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

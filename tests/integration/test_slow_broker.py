"""A slow broker must not starve the watchdog (issue 11.4): draining a backlog while every PUBACK
takes 0.5 s, the session keeps its check-in promise as long as PUBACKs keep coming.

Real Mosquitto on loopback, behind a small proxy that holds every PUBACK (and what follows it)
for 0.5 s; the real firmware App under CPython with the test hardware and plain asyncio streams.
"""
import asyncio
import json
import time

from aedgate.app import App
from tests.firmware.fwtest import Hardware, LoopNet, temp_flash, wipe

PUBACK_DELAY_S = 0.5


class SlowPubackProxy:
    """Forwards TCP both ways; packets from the broker are parsed and each PUBACK waits
    PUBACK_DELAY_S before it (and everything after it) goes on to the client."""

    def __init__(self, broker_port):
        self.broker_port = broker_port
        self.pubacks = 0

    async def start(self):
        self.server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def _client(self, cr, cw):
        br, bw = await asyncio.open_connection("127.0.0.1", self.broker_port)
        up = asyncio.create_task(self._pipe(cr, bw))
        try:
            while True:
                head = await br.readexactly(1)
                length, mult, raw_len = 0, 1, b""
                while True:
                    b = await br.readexactly(1)
                    raw_len += b
                    length += (b[0] & 0x7F) * mult
                    mult *= 128
                    if not b[0] & 0x80:
                        break
                body = await br.readexactly(length)
                if head[0] >> 4 == 4:  # PUBACK
                    self.pubacks += 1
                    await asyncio.sleep(PUBACK_DELAY_S)
                cw.write(head + raw_len + body)
                await cw.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            up.cancel()
            cw.close()
            bw.close()

    async def _pipe(self, r, w):
        try:
            while True:
                data = await r.read(4096)
                if not data:
                    break
                w.write(data)
                await w.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            w.close()

    def close(self):
        self.server.close()



class Watchdog:
    feed_ms = 500

    def __init__(self):
        self.fed = [time.monotonic()]

    def feed(self):
        self.fed.append(time.monotonic())


# The session promises at connect to check in within 3 x mqtt_timeout_s + 15 s (app._session):
# 24 s with a 3 s timeout (a PUBACK 0.5 s late is well inside it). 60 x 0.5 s per PUBACK: a 30 s
# drain, past that promise. (It was 110 events against the 45 s of the default 10 s timeout.)
MQTT_TIMEOUT_S = 3
PROMISE_S = 3 * MQTT_TIMEOUT_S + 15
BACKLOG = 60


def test_a_slow_broker_does_not_starve_the_watchdog(mosquitto):
    f = temp_flash()
    f.write("config.json", json.dumps({"device_id": "cab-slow", "broker_host": "127.0.0.1",
                                       "broker_port": 1, "outbox_limit": 400,
                                       "mqtt_timeout_s": MQTT_TIMEOUT_S}))
    hw = Hardware()
    hw.unique_id = "cab-slow"
    hw.net = LoopNet()
    hw.wdt = Watchdog()

    async def main():
        proxy = await SlowPubackProxy(mosquitto.port).start()
        app = App(hw, f)
        app.cfg["broker_port"] = proxy.port
        for i in range(BACKLOG):  # the backlog of an outage
            app.emit({"type": "door_opened", "n": i})
        run = asyncio.create_task(app.run())
        stuck_seen = []
        t0 = time.monotonic()
        while len(app.outbox) > 0 and time.monotonic() - t0 < BACKLOG * PUBACK_DELAY_S + 30:
            late = app.stuck()
            if late:
                stuck_seen.append((round(time.monotonic() - t0, 1), late))
            await asyncio.sleep(0.25)
        drained = time.monotonic() - t0
        left = len(app.outbox)
        run.cancel()
        await asyncio.gather(run, return_exceptions=True)
        proxy.close()
        return stuck_seen, drained, left, proxy.pubacks, app.cfg
    stuck_seen, drained, left, pubacks, app_cfg = asyncio.run(main())
    gaps = [b - a for a, b in zip(hw.wdt.fed, hw.wdt.fed[1:])]
    wipe(f)
    assert left == 0 and pubacks >= BACKLOG, (left, pubacks)
    assert app_cfg["mqtt_timeout_s"] == MQTT_TIMEOUT_S
    assert BACKLOG * PUBACK_DELAY_S > PROMISE_S + 5
    assert drained > PROMISE_S, drained  # the drain really outlasted the promise made at connect
    assert not stuck_seen, stuck_seen[:3]
    assert max(gaps) < 2.0, max(gaps)  # fed every feed_ms throughout, never close to 30 s

# The cabinet's asyncio MQTT 3.1.1 client (QoS 0/1, keepalive, LWT, bounded waits, receive cap).
# Why we carry our own: docs/design.md, "Why our own MQTT client".
# The same file runs on the ESP32, the MicroPython unix port and CPython (simulator).
#
# Choices worth knowing:
# - Every wait is bounded so a dead link never freezes the cabinet: a write, or a write and its
#   ack, by one timeout_ms (a stalled write closes the link, since half a packet is
#   unrecoverable); reading by the pinger, which closes a link silent for keepalive*1.5. One
#   timer per exchange, not one per step: a simulator runs tens of thousands of these clients.
# - No retransmission and no in-RAM queue: a QoS 1 publish that times out raises, and the
#   caller (the flash-backed outbox) sends it again after reconnecting.
# - Incoming QoS 2 is a protocol error: we never subscribe above QoS 1, so a broker must not
#   send it.
# - A message longer than max_payload is skipped without being stored and reported to
#   on_message with payload None; it is still acknowledged so the broker does not resend it.
import random

from aedgate.compat import Flag, asyncio, const, ticks_ms, ticks_diff, sleep_ms, wait_ms, MICROPYTHON
from aedgate import mqttwire as _w
from aedgate.mqttwire import MQTTError  # noqa: F401  (part of this module's interface)

_CLOSED = const(-1)  # waiter result when the link went away before the ack came
_JOIN_MAX = const(1024)  # payloads up to this size go out in one write with their header

def backoff_ms(attempt, base_ms=1000, cap_ms=300000):
    """Delay before reconnect attempt `attempt` (0, 1, ...): uniform in [base_ms//2, min(cap_ms,
    base_ms * 2**attempt)], so a fleet that lost its broker together does not come back in
    lockstep, yet no cabinet retries in a tight loop."""
    floor = base_ms // 2
    top = max(floor, min(cap_ms, base_ms << min(max(attempt, 0), 24)))
    return floor + random.getrandbits(30) % (top - floor + 1)


class MQTTClient:
    def __init__(self, client_id, net, host, port=1883, keepalive=60, user=None, password=None,
                 will=None, ssl=None, server_hostname=None, on_message=None,
                 max_payload=2048, timeout_ms=10000):
        self.client_id = client_id
        self._net = net
        self.host = host
        self.port = port
        self.keepalive = keepalive
        self._user = user
        self._password = password
        self._will = will
        self._ssl = ssl
        self._server_hostname = server_hostname
        self.on_message = on_message
        self.max_payload = max_payload
        self.timeout_ms = timeout_ms
        self.connected = False
        self._reader = self._writer = None
        self._lock = None
        self._pid = 0
        self._acks = {}  # packet id -> [Flag, result, written] for a PUBACK/SUBACK awaited
        # [task, kicked, why] of the run() in progress, so close() can wake it and tell it why
        # (why None: closed on purpose, so run() returns instead of raising).
        self._runner = None
        self._last_rx = self._last_tx = ticks_ms()
        self._ping_out = False

    async def connect(self, clean_session=True):
        """Opens the link and does the CONNECT/CONNACK exchange within timeout_ms. Returns the
        broker's session-present flag."""
        self.close()
        self._lock = asyncio.Lock()
        try:
            return await wait_ms(self._handshake(clean_session), self.timeout_ms)
        except asyncio.TimeoutError:
            self.close()
            raise MQTTError("timeout")
        except BaseException:
            self.close()
            raise

    async def _handshake(self, clean):
        r, w = await self._net.open(self.host, self.port, ssl=self._ssl,
                                    server_hostname=self._server_hostname)
        self._reader, self._writer = r, w
        w.write(_w.connect_packet(self.client_id, self.keepalive, clean, self._will,
                                  self._user, self._password))
        await w.drain()
        pkt = await _w.read_packet(r, self.max_payload)
        if pkt[0] != _w.CONNACK:
            raise MQTTError("protocol")
        if pkt[2]:
            raise MQTTError("connack:%d" % pkt[2])
        self._last_rx = self._last_tx = ticks_ms()
        self._ping_out = False
        self.connected = True
        return pkt[1]

    async def _send(self, *parts):
        try:
            await wait_ms(self._write(parts), self.timeout_ms)
        except asyncio.TimeoutError:
            self.close("timeout")
            raise MQTTError("timeout")

    async def _write(self, parts, waiter=None):
        # Unbounded: callers bound it. With `waiter`, then waits for that ack as well.
        w = self._writer
        if w is None or not self.connected:
            raise MQTTError("closed")
        async with self._lock:
            try:
                for p in parts:
                    w.write(p)
                await w.drain()
            except OSError:
                self.close("closed")
                raise
        self._last_tx = ticks_ms()
        if waiter is not None:
            waiter[2] = True
            await waiter[0].wait()

    def _next_pid(self):
        pid = self._pid
        while True:
            pid = pid % 65535 + 1  # 1..65535: 0 is not a valid packet id
            if pid not in self._acks:
                self._pid = pid
                return pid

    async def _acked(self, pid, *parts):
        # Sends and waits for the ack of packet `pid`, both within timeout_ms; returns the ack's
        # result. A missing ack leaves the link up (the caller may retry on it); a write that
        # never finished closes it.
        waiter = self._acks[pid] = [Flag(), None, False]
        try:
            await wait_ms(self._write(parts, waiter), self.timeout_ms)
        except asyncio.TimeoutError:
            if not waiter[2]:
                self.close("timeout")
            raise MQTTError("timeout")
        finally:
            self._acks.pop(pid, None)
        if waiter[1] == _CLOSED:
            raise MQTTError("closed")
        return waiter[1]

    async def publish(self, topic, payload, qos=0, retain=False):
        if isinstance(payload, str):
            payload = payload.encode()
        pid = self._next_pid() if qos else 0
        parts = (_w.publish_header(topic, len(payload), qos, retain, False, pid), payload)
        if MICROPYTHON and len(payload) <= _JOIN_MAX:
            # MicroPython sends each write() at once; a lone header would leave the payload
            # waiting for the broker's delayed ACK (Nagle). (The simulator's CPython link
            # joins them itself.)
            parts = (parts[0] + payload,)
        if qos:
            await self._acked(pid, *parts)
        else:
            await self._send(*parts)

    async def subscribe(self, topic, qos=1):
        """Returns the granted QoS; raises MQTTError("suback") when the broker refuses."""
        if qos not in (0, 1):
            raise ValueError("qos")
        pid = self._next_pid()
        code = await self._acked(pid, _w.subscribe_packet(pid, topic, qos))
        if code == 0x80:
            raise MQTTError("suback")
        return code

    async def run(self):
        """Reads and dispatches until the link ends: returns after close()/disconnect(), raises
        MQTTError (or OSError) when the link is lost."""
        if not self.connected:
            raise MQTTError("closed")
        me = self._runner = [asyncio.current_task(), False, None]
        mine = self._reader
        # The pinger also ends a half-open link: it closes one silent for keepalive*1.5, which
        # wakes this read with MQTTError("keepalive").
        pinger = asyncio.create_task(self._pinger()) if self.keepalive else None
        try:
            while True:
                r = self._reader
                if r is not mine:
                    raise MQTTError("closed")
                pkt = await _w.read_packet(r, self.max_payload)
                self._last_rx = ticks_ms()
                self._ping_out = False
                await self._dispatch(pkt)
        except (asyncio.CancelledError, Exception):
            # close() from another task cancels us; the read may also fail first on the closed
            # stream (CPython's wait_for then drops the cancel). Either way close() says why.
            if not me[1]:
                raise  # not from close(): not ours to swallow
            if hasattr(me[0], "uncancel"):
                me[0].uncancel()  # CPython counts cancellations; this one was handled
            if me[2]:
                raise MQTTError(me[2])
        finally:
            if self._runner is me:
                self._runner = None
            if pinger:
                pinger.cancel()
            if self._reader is mine:  # not a newer link made by connect() meanwhile
                self.close()

    async def _dispatch(self, pkt):
        kind = pkt[0]
        if kind == _w.PUBLISH:
            _, topic, payload, qos, retain, dup, pid = pkt
            if topic is not None and self.on_message:
                self.on_message(topic, payload, retain, dup)
            if qos:
                await self._send(_w.puback_packet(pid))
        elif kind == _w.PUBACK or kind == _w.SUBACK:
            waiter = self._acks.get(pkt[1])
            if waiter:  # else a late ack for a publish that already timed out
                waiter[1] = pkt[2] if kind == _w.SUBACK else 0
                waiter[0].set()
        elif kind == _w.CONNACK:
            raise MQTTError("protocol")
        # PINGRESP and UNSUBACK: receiving them was the point (keepalive), nothing to do

    async def _pinger(self):
        # MQTT wants a packet from us at least every keepalive; we also ping when the broker
        # has been quiet that long, so a silent broker is asked for a PINGRESP before we give
        # up on it at keepalive*1.5 (no packet at all for that long: a half-open link).
        ka = self.keepalive * 1000
        dead = ka * 3 // 2
        try:
            while self.connected:
                now = ticks_ms()
                quiet = ticks_diff(now, self._last_rx)
                if quiet >= dead:
                    self.close("keepalive")  # run() raises MQTTError("keepalive")
                    return
                due = min(ka - ticks_diff(now, self._last_tx), dead - quiet)
                if not self._ping_out:
                    due = min(due, ka - quiet)
                if due > 0:
                    await sleep_ms(due)
                    continue
                self._ping_out = True
                await self._send(_w.PINGREQ_PACKET)
        except (MQTTError, OSError):
            self.close("closed")

    async def disconnect(self):
        """Clean goodbye: the broker discards the will."""
        if self.connected:
            try:
                await self._send(_w.DISCONNECT_PACKET)
            except (MQTTError, OSError):
                pass
        self.close()

    def close(self, _why=None):
        """Drops the link without DISCONNECT, so the broker publishes the will."""
        w = self._writer
        self.connected = False
        self._reader = self._writer = None
        if w is not None:
            try:
                w.close()
            except OSError:
                pass
        for waiter in self._acks.values():
            waiter[1] = _CLOSED
            waiter[0].set()
        me = self._runner
        # On MicroPython closing the socket does not wake a task blocked reading it: cancel it.
        if me is not None and not me[1] and me[0] is not asyncio.current_task():
            me[1] = True
            me[2] = _why
            me[0].cancel()

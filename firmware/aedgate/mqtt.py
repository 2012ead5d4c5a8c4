# The cabinet's asyncio MQTT 3.1.1 client (QoS 0/1, keepalive, LWT, bounded waits, receive cap).
# Why we carry our own: docs/design.md, "Why our own MQTT client". The same file runs on the
# ESP32, the MicroPython unix port and CPython (simulator).
#
# Choices worth knowing:
# - Every wait is bounded so a dead link never freezes the cabinet. One long-lived task per
#   link (the watch, started by run()) keeps every deadline: the acks awaited (timeout_ms each),
#   keepalive pings, and a silent broker: a link is dead when the broker said nothing for
#   timeout_ms while we waited for an answer (PUBACK, SUBACK, PINGRESP), or nothing at all for
#   keepalive*1.5. No timer or task per message: a QoS 1 round trip on MicroPython is a write,
#   a TaskSignal and the reader's wake-up (docs/benchmarks.md, "MQTT client").
# - Writes go straight to the socket; only bytes the socket did not take are drained, under a
#   lock and within timeout_ms (a stalled write closes the link: half a packet is unrecoverable).
# - No retransmission and no in-RAM queue: a QoS 1 publish that times out raises, and the
#   caller (the flash-backed outbox) sends it again after reconnecting.
# - Incoming QoS 2 is a protocol error: we never subscribe above QoS 1, so a broker must not
#   send it.
# - A message longer than max_payload is skipped without being stored and reported to
#   on_message with payload None; it is still acknowledged so the broker does not resend it.
import random

from aedgate.compat import (TaskSignal, asyncio, const, ticks_ms, ticks_add, ticks_diff, sleep_ms,
                            wait_ms, unsent, MICROPYTHON)
from aedgate import mqttwire as _w
from aedgate.mqttwire import MQTTError  # noqa: F401  (part of this module's interface)


_CLOSED = const(-1)  # ack result when the link went away before the ack came
_TIMEOUT = const(-2)  # ack result when it did not come within timeout_ms
_JOIN_MAX = const(1024)  # payloads up to this size go out in one write with their header
_FAR = const(1 << 28)  # ms: "no deadline" for the watch, well inside the ticks' half period
_YIELD_EVERY = const(16)  # writes the socket took at once: let other tasks run this often
_KICKED = const(-1)  # MQTTClient._nap when the watch was woken early (ticks are never < 0)
_quick = 0  # writes (of any client) since one of them let other tasks run


def backoff_ms(attempt, base_ms=1000, cap_ms=300000):
    """Delay before reconnect attempt `attempt` (0, 1, ...): uniform in [base_ms//2, min(cap_ms,
    base_ms * 2**attempt)], so a fleet that lost its broker together does not come back in
    lockstep, yet no cabinet retries in a tight loop."""
    floor = base_ms // 2
    top = max(floor, min(cap_ms, base_ms << min(max(attempt, 0), 24)))
    return floor + random.getrandbits(30) % (top - floor + 1)


def period_ms(ms):
    # A periodic task's next wait (the app's heartbeat and readings): `ms` less up to a tenth,
    # drawn afresh each time. Cabinets that booted together (a blackout ends) would otherwise
    # send their heartbeats and take their readings in step for ever, a burst at the broker
    # each period; "at least every heartbeat_s" still holds.
    return ms - random.getrandbits(30) % (ms // 10 + 1)


class MQTTClient:
    def __init__(self, client_id, net, host, port=1883, keepalive=60, user=None, password=None,
                 will=None, ssl=None, server_hostname=None, on_message=None,
                 max_payload=2048, timeout_ms=10000):
        self.client_id = client_id
        self._net = net
        self.host = host
        self.port = port
        self.keepalive = keepalive
        self._hello = (will, user, password, ssl, server_hostname)  # for each connect
        self.on_message = on_message
        self.max_payload = max_payload
        self.timeout_ms = timeout_ms
        self.connected = False
        self._reader = self._writer = None
        self._lock = None  # made at the first write the socket did not take at once
        self._pid = 0
        self._acks = {}  # packet id -> [TaskSignal, result, ticks sent] of an ack awaited
        # [task, kicked, why] of the run() in progress, so close() can wake it and tell it why
        # (why None: closed on purpose, so run() returns instead of raising).
        self._runner = None
        self._watch = None  # the link's timer task (see _watching)
        self._nap = None  # while the watch sleeps: ticks when it wakes; _KICKED: woken early
        self._last_rx = self._last_tx = ticks_ms()
        self._ping_at = None  # ticks of the PINGREQ not answered yet

    async def connect(self, clean_session=True):
        """Opens the link and does the CONNECT/CONNACK exchange within timeout_ms. Returns the
        broker's session-present flag."""
        self.close()
        try:
            present = await wait_ms(self._handshake(clean_session), self.timeout_ms)
        except asyncio.TimeoutError:
            self.close()
            raise MQTTError("timeout")
        except BaseException:
            self.close()
            raise
        self._watch = asyncio.create_task(self._watching())
        return present

    async def _handshake(self, clean):
        will, user, password, ssl, server_hostname = self._hello
        r, w = await self._net.open(self.host, self.port, ssl=ssl, server_hostname=server_hostname)
        if MICROPYTHON:
            # Its Stream asks the poller before every read, however small: read ahead instead.
            r = _w.Buffered(r)
        self._reader, self._writer = r, w
        w.write(_w.connect_packet(self.client_id, self.keepalive, clean, will, user, password))
        await w.drain()
        pkt = await _w.read_packet(r, self.max_payload)
        if pkt[0] != _w.CONNACK:
            raise MQTTError("protocol")
        if pkt[2]:
            raise MQTTError("connack:%d" % pkt[2])
        self._last_rx = self._last_tx = ticks_ms()
        self._ping_at = None
        self.connected = True
        return pkt[1]

    async def _send(self, head, payload=None):
        # Hands one packet to the writer, its parts with no await between them (so packets of
        # different tasks never interleave), then waits, within timeout_ms, until the writer has
        # sent what the socket did not take at once.
        w = self._writer
        if w is None or not self.connected:
            raise MQTTError("closed")
        try:
            w.write(head)
            if payload is not None:
                w.write(payload)
        except OSError:
            self.close("closed")
            raise
        self._last_tx = ticks_ms()
        if not unsent(w):
            global _quick
            _quick += 1
            if _quick >= _YIELD_EVERY:  # never hog the loop, even when nothing blocks
                _quick = 0
                await sleep_ms(0)
            return
        if self._lock is None:
            self._lock = asyncio.Lock()
        try:
            async with self._lock:  # one drain at a time: a stream has one writer slot in the poller
                await wait_ms(w.drain(), self.timeout_ms)
        except asyncio.TimeoutError:
            self.close("timeout")
            raise MQTTError("timeout")
        except OSError:
            self.close("closed")
            raise

    def _next_pid(self):
        pid = self._pid
        while True:
            pid = pid % 65535 + 1  # 1..65535: 0 is not a valid packet id
            if pid not in self._acks:
                self._pid = pid
                return pid

    async def _acked(self, pid, head, payload=None):
        # Sends and waits for the ack of packet `pid`; returns the ack's result. The watch
        # gives up on it after timeout_ms (and on the link, when the broker was silent all that
        # time); a write that never finished closes the link.
        now = ticks_ms()
        ack = self._acks[pid] = [TaskSignal(), None, now]  # signal, result, sent
        try:
            nap = self._nap
            if nap is not None and nap >= 0 and ticks_diff(nap, ticks_add(now, self.timeout_ms)) > 0:
                self._nap = _KICKED  # the watch sleeps past this deadline: wake it (once)
                self._watch.cancel()
            await self._send(head, payload)
            await ack[0].wait()
        finally:
            self._acks.pop(pid, None)
        r = ack[1]
        if r == _CLOSED:
            raise MQTTError("closed")
        if r == _TIMEOUT:
            raise MQTTError("timeout")
        return r

    async def publish(self, topic, payload, qos=0, retain=False):
        if isinstance(payload, str):
            payload = payload.encode()
        pid = self._next_pid() if qos else 0
        # MicroPython sends each write() at once; a lone header would leave the payload waiting
        # for the broker's delayed ACK (Nagle). So one buffer, one write. (The simulator's
        # CPython link joins header and payload itself.)
        join = MICROPYTHON and len(payload) <= _JOIN_MAX
        head = _w.publish_header(topic, len(payload), qos, retain, False, pid,
                                 payload if join else None)
        if join:
            payload = None
        if qos:
            await self._acked(pid, head, payload)
        else:
            await self._send(head, payload)

    async def subscribe_each(self, topics, qos=1):
        """Subscribes to every topic of `topics` (up to mqttwire.SUB_MAX) in one SUBSCRIBE and
        returns the broker's codes, one per topic (0x80: refused), for the caller to judge."""
        if qos not in (0, 1):
            raise ValueError("qos")
        pid = self._next_pid()
        return await self._acked(pid, _w.subscribe_packet(pid, topics, qos))

    async def run(self):
        """Reads and dispatches until the link ends: returns after close()/disconnect(), raises
        MQTTError (or OSError) when the link is lost."""
        if not self.connected:
            raise MQTTError("closed")
        me = self._runner = [asyncio.current_task(), False, None]
        mine = self._reader
        acks = b""  # PUBACKs owed
        try:
            while True:
                r = self._reader
                if r is not mine:
                    raise MQTTError("closed")
                pkt = await _w.read_packet(r, self.max_payload)
                self._last_rx = ticks_ms()
                self._ping_at = None
                kind = pkt[0]
                if kind == _w.PUBLISH:
                    _, topic, payload, qos, retain, dup, pid = pkt
                    if topic is not None and self.on_message:
                        self.on_message(topic, payload, retain, dup)
                    if qos:
                        acks += _w.puback_packet(pid)
                elif kind == _w.PUBACK or kind == _w.SUBACK:
                    ack = self._acks.get(pkt[1])
                    if ack is not None and ack[1] is None:  # else late, or a stray
                        ack[1] = pkt[2] if kind == _w.SUBACK else 0
                        ack[0].set()
                elif kind == _w.CONNACK:
                    raise MQTTError("protocol")
                # PINGRESP and UNSUBACK: receiving them was the point, nothing else to do
                if acks and not (MICROPYTHON and r._pos < len(r._buf)):
                    # Owed PUBACKs go out together once all that was read ahead is handled:
                    # one write for a burst of messages, not one each.
                    await self._send(acks)
                    acks = b""
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
            if self._reader is mine:  # not a newer link made by connect() meanwhile
                self.close()

    async def _watching(self):
        # The link's one timer, from connect() to close(). MQTT wants a packet from us at least
        # every keepalive, so we ping then; we also ping when the broker has been quiet that
        # long, so a silent broker is asked before we give up on it.
        ka = self.keepalive * 1000
        limit = self.timeout_ms
        try:
            while self.connected:
                now = ticks_ms()
                quiet = ticks_diff(now, self._last_rx)
                # Questions the broker has not answered: acks past their time fail; if it also
                # said nothing at all for that long, it is gone (silent, or the link is dead).
                due = _FAR
                silent = False
                for ack in self._acks.values():
                    if ack[1] is None:
                        late = ticks_diff(now, ack[2])
                        if late < limit:
                            due = min(due, limit - late)
                        else:
                            ack[1] = _TIMEOUT
                            ack[0].set()
                            silent = silent or quiet >= limit
                if self._ping_at is not None:
                    late = ticks_diff(now, self._ping_at)
                    if late < limit:
                        due = min(due, limit - late)
                    else:
                        silent = silent or quiet >= limit
                if silent:
                    self.close("timeout")  # run() raises MQTTError("timeout")
                    return
                if ka:
                    late = ka * 3 // 2 - quiet
                    if late <= 0:
                        self.close("keepalive")  # run() raises MQTTError("keepalive")
                        return
                    due = min(due, late, ka - ticks_diff(now, self._last_tx))
                    if self._ping_at is None:
                        due = min(due, ka - quiet)
                    if due <= 0:
                        self._ping_at = now
                        await self._send(_w.PINGREQ_PACKET)
                        continue
                # A publish whose deadline comes first cancels this nap (_acked): no timer or
                # task per message, and nothing but this sleep while idle.
                self._nap = ticks_add(now, due)
                try:
                    await sleep_ms(due)
                except asyncio.CancelledError:
                    if self._nap != _KICKED:
                        raise
                    if hasattr(self._watch, "uncancel"):
                        self._watch.uncancel()  # CPython counts cancellations; this was a wake-up
                self._nap = None
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
        for ack in self._acks.values():
            if ack[1] is None:
                ack[1] = _CLOSED
                ack[0].set()
        t = self._watch
        self._watch = self._nap = None
        run = self._runner
        if t is None and (run is None or run[1]):
            return
        me = asyncio.current_task()
        if t is not None and t is not me:
            t.cancel()
        # On MicroPython closing the socket does not wake a task blocked reading it: cancel it.
        if run is not None and not run[1] and run[0] is not me:
            run[1] = True
            run[2] = _why
            run[0].cancel()

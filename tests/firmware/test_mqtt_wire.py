# MQTT wire format and client logic, without a network: runs under CPython (pytest) and the
# MicroPython unix port (mprun.py). The real-broker tests are in tests/integration.
from aedgate.compat import asyncio, ticks_ms, ticks_diff, sleep_ms
from aedgate import mqttwire as w
from aedgate.mqtt import MQTTClient, MQTTError, backoff_ms
from fwtest import publish_packet


class Bytes:
    """A stream reader over fixed bytes; records the largest single read it was asked for."""

    def __init__(self, data):
        self.data = data
        self.pos = 0
        self.biggest = 0

    async def readexactly(self, n):
        self.biggest = max(self.biggest, n)
        if self.pos + n > len(self.data):
            self.pos = len(self.data)
            raise EOFError
        self.pos += n
        return self.data[self.pos - n:self.pos]


def decode_len(buf, pos=0):
    """(value, position after the varint) from bytes: the broker's side of encode_len()."""
    n = 0
    for i in range(4):
        if pos + i >= len(buf):
            raise MQTTError("closed")
        b = buf[pos + i]
        n |= (b & 0x7F) << (7 * i)
        if not b & 0x80:
            return n, pos + i + 1
    raise MQTTError("malformed")


def read(data, max_payload=2048):
    return asyncio.run(w.read_packet(Bytes(data), max_payload))


def reason(fn, *args):
    try:
        fn(*args)
    except MQTTError as e:
        return e.args[0]
    raise AssertionError("no MQTTError")


def test_remaining_length_boundaries():
    known = [(0, b"\x00"), (127, b"\x7f"), (128, b"\x80\x01"), (16383, b"\xff\x7f"),
             (16384, b"\x80\x80\x01"), (2097151, b"\xff\xff\x7f"), (2097152, b"\x80\x80\x80\x01"),
             (268435455, b"\xff\xff\xff\x7f")]
    for n, enc in known:
        assert w.encode_len(n) == enc, n
        assert decode_len(enc + b"!") == (n, len(enc)), n
        if 3 <= n <= 20000:  # a QoS 0 PUBLISH of that length is read to its last byte
            data = b"\x30" + enc + b"\x00\x01t" + b"p" * (n - 3) + b"\xd0\x00"
            rd = Bytes(data)
            assert asyncio.run(w.read_packet(rd, 0)) == (w.PUBLISH, "t", None, 0, False, False, 0)
            assert rd.pos == len(data) - 2, n
    for bad in (-1, 268435456):
        try:
            w.encode_len(bad)
        except ValueError:
            continue
        raise AssertionError(bad)


def test_five_byte_varint_rejected():
    assert reason(decode_len, b"\xff\xff\xff\xff\x7f") == "malformed"
    rd = Bytes(b"\x30\xff\xff\xff\xff\x01" + b"x" * 100)
    assert reason(asyncio.run, w.read_packet(rd, 2048)) == "malformed"
    assert rd.pos == 5  # gave up after the 4th length byte, read nothing of the body


def test_connect_minimal():
    assert w.connect_packet("abc", 60) == b"\x10\x0f\x00\x04MQTT\x04\x02\x00\x3c\x00\x03abc"
    assert w.connect_packet("abc", 60, clean=False)[9] == 0x00


def test_connect_will_user_password():
    pkt = w.connect_packet("c", 30, True, ("t/w", b"gone", 1, True), "u", "pw")
    assert pkt == (b"\x10\x1f\x00\x04MQTT\x04\xee\x00\x1e\x00\x01c\x00\x03t/w\x00\x04gone"
                   b"\x00\x01u\x00\x02pw")
    pkt = w.connect_packet("c", 0, False, ("t", "x", 0, False), "u")
    assert pkt == b"\x10\x16\x00\x04MQTT\x04\x84\x00\x00\x00\x01c\x00\x01t\x00\x01x\x00\x01u"
    try:
        w.connect_packet("c", 30, password="pw")
    except ValueError:
        return
    raise AssertionError("password without user accepted")


def test_publish_encode():
    assert publish_packet("a/b", b"hi", 0, retain=True) == b"\x31\x07\x00\x03a/bhi"
    assert publish_packet("a/b", "hi", 1, dup=True, pid=0x1234) == b"\x3a\x09\x00\x03a/b\x12\x34hi"
    big = publish_packet("t", b"x" * 200)
    assert big[:3] == b"\x30\xcb\x01"  # 203 bytes after the header: a 2-byte length


def test_publish_decode_flags():
    for qos in (0, 1):
        for retain in (False, True):
            for dup in (False, True):
                pkt = publish_packet("cab/7", b"\x00\x01", qos, retain, dup, 9 if qos else 0)
                assert read(pkt) == (w.PUBLISH, "cab/7", b"\x00\x01", qos, retain, dup,
                                     9 if qos else 0), (qos, retain, dup)
    assert read(b"\x30\x03\x00\x01t") == (w.PUBLISH, "t", b"", 0, False, False, 0)


def test_acks_decode():
    assert read(b"\x20\x02\x01\x00") == (w.CONNACK, True, 0)
    assert read(b"\x20\x02\x00\x05") == (w.CONNACK, False, 5)
    assert read(b"\x40\x02\xff\xfe") == (w.PUBACK, 0xFFFE)
    assert read(b"\xd0\x00") == (w.PINGRESP,)
    assert read(b"\x90\x03\x00\x07\x01") == (w.SUBACK, 7, b"\x01")


def test_suback_failure_code():
    assert read(b"\x90\x03\x00\x07\x80") == (w.SUBACK, 7, b"\x80")
    assert reason(read, b"\x90\x03\x00\x07\x03") == "malformed"


def test_one_subscribe_for_several_topics_and_its_suback():
    # The session subscribes its three topics in one packet (one round trip, not three).
    assert w.subscribe_packet(9, ("a/cmd/#", "a/u"), 1) == (
        b"\x82\x12\x00\x09" + b"\x00\x07a/cmd/#\x01" + b"\x00\x03a/u\x01")
    assert w.subscribe_packet(9, ("a/u",), 0) == b"\x82\x08\x00\x09\x00\x03a/u\x00"
    assert read(b"\x90\x05\x00\x07\x01\x80\x00") == (w.SUBACK, 7, b"\x01\x80\x00")
    assert reason(read, b"\x90\x05\x00\x07\x01\x03\x00") == "malformed"   # a bad code
    too_many = bytes((0x90, 3 + w.SUB_MAX, 0, 7)) + b"\x01" * (w.SUB_MAX + 1)
    assert reason(read, too_many) == "malformed"                             # past SUB_MAX
    assert reason(read, b"\x90\x02\x00\x07") == "malformed"                   # no code at all


def test_truncated_packets():
    good = [b"\x20\x02\x00\x00", b"\x90\x03\x00\x07\x80", b"\x40\x02\x00\x01",
            publish_packet("a/b", b"payload", 1, pid=3), publish_packet("t", b"y" * 300)]
    for pkt in good:
        read(pkt)
        for cut in range(len(pkt)):
            assert reason(read, pkt[:cut]) == "closed", (pkt, cut)


def test_wrong_packets():
    cases = [(b"\x40\x03\x00\x01\x00", "malformed"),  # PUBACK is 2 bytes
             (b"\x41\x02\x00\x01", "malformed"),  # reserved flags set
             (b"\x20\x02\x02\x00", "malformed"),  # reserved CONNACK flags
             (b"\x36\x05\x00\x01t\x00\x01", "malformed"),  # QoS 3
             (b"\x34\x05\x00\x01t\x00\x01", "protocol"),  # QoS 2: we never ask for it
             (b"\x50\x02\x00\x01", "protocol"),  # PUBREC
             (b"\x10\x00", "malformed"),  # CONNECT from the broker
             (b"\x30\x01\x00", "malformed"),  # no room for the topic length
             (b"\x30\x04\x00\x05abcde", "malformed"),  # topic longer than the packet
             (b"\x32\x04\x00\x02ab", "malformed"),  # QoS 1 without packet id
             (b"\x32\x05\x00\x01t\x00\x00", "malformed")]  # packet id 0
    for pkt, why in cases:
        assert reason(read, pkt) == why, pkt


def test_oversize_payload_skipped_not_stored():
    big = publish_packet("cab/cmd", b"z" * 10000, 1, pid=77)
    rd = Bytes(big + b"\xd0\x00")
    pkt = asyncio.run(w.read_packet(rd, 2048))
    assert pkt == (w.PUBLISH, "cab/cmd", None, 1, False, False, 77)
    assert rd.biggest <= 2048
    assert asyncio.run(w.read_packet(rd, 2048)) == (w.PINGRESP,)  # still in step
    ok = publish_packet("t", b"z" * 2048)
    assert read(ok)[2] == b"z" * 2048  # exactly max_payload is delivered


def test_bad_topics_dropped():
    rd = Bytes(publish_packet("x" * 300, b"p"))
    assert asyncio.run(w.read_packet(rd, 16)) == (w.PUBLISH, None, b"p", 0, False, False, 0)
    assert rd.biggest <= 256
    assert read(b"\x30\x05\x00\x02\xff\xfep")[1] is None  # not UTF-8
    assert read(b"\x30\x05\x00\x02a\x00p")[1] is None  # NUL inside
    assert read(b"\x30\x03\x00\x00p")[1] is None  # empty
    assert read(publish_packet("caf\u00e9", b""))[1] == "caf\u00e9"


def test_backoff_bounds_and_spread():
    for attempt in range(40):
        top = min(300000, 1000 * 2 ** attempt)
        seen = [backoff_ms(attempt) for _ in range(60)]
        assert min(seen) >= 500 and max(seen) <= top, (attempt, min(seen), max(seen))
        if top >= 8000:
            assert max(seen) - min(seen) > top // 4, (attempt, seen)  # spread, not lockstep
    assert 50 <= backoff_ms(3, base_ms=100, cap_ms=200) <= 200


# --- the client against an in-memory broker ------------------------------------------------

class Pipe:
    def __init__(self):
        self.buf = b""
        self.ev = asyncio.Event()
        self.closed = False

    def feed(self, data):
        self.buf += data
        self.ev.set()

    async def readexactly(self, n):
        while len(self.buf) < n:
            if self.closed:
                raise EOFError
            self.ev.clear()
            await self.ev.wait()
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    async def read(self, n):
        # What MicroPython's Stream offers too: whatever is there, up to n, once there is some.
        while not self.buf:
            if self.closed:
                return b""
            self.ev.clear()
            await self.ev.wait()
        data, self.buf = self.buf[:n], self.buf[n:]
        return data


class Link:
    """The broker's end of one fake connection: `answer(link, packet)` sees each packet the
    client sends and may feed replies."""

    def __init__(self, answer):
        self.rx = Pipe()
        self.answer = answer
        self.sent = []
        self.pending = b""
        self.closed = False

    def write(self, data):
        self.pending += data

    async def drain(self):
        # Packets written by other tasks since the last drain go out with it, each on its own.
        data, self.pending = self.pending, b""
        while data:
            n, pos = decode_len(data, 1)
            pkt, data = data[:pos + n], data[pos + n:]
            self.sent.append(pkt)
            self.answer(self, pkt)

    def close(self):
        self.closed = self.rx.closed = True
        self.rx.ev.set()


class FakeNet:
    def __init__(self, answer):
        self.answer = answer
        self.links = []

    async def open(self, host, port, ssl=None, server_hostname=None):
        link = Link(self.answer)
        self.links.append(link)
        return link.rx, link


def broker(link, pkt, rc=0, ack=True):
    kind = pkt[0]
    if kind == 0x10:
        link.rx.feed(bytes((0x20, 2, 0, rc)))
    elif kind & 0xF6 == 0x32 and ack:
        n, pos = decode_len(pkt, 1)
        at = pos + 2 + ((pkt[pos] << 8) | pkt[pos + 1])
        link.rx.feed(b"\x40\x02" + pkt[at:at + 2])
    elif kind == 0x82:  # a code per filter: 0x80 for "forbidden…", else the QoS asked
        n, pos = decode_len(pkt, 1)
        i, codes = pos + 2, b""
        while i < len(pkt):
            k = (pkt[i] << 8) | pkt[i + 1]
            topic = pkt[i + 2:i + 2 + k]
            codes += bytes((0x80 if topic.startswith(b"forbidden") else pkt[i + 2 + k],))
            i += 3 + k
        link.rx.feed(bytes((0x90, 2 + len(codes))) + pkt[pos:pos + 2] + codes)
    elif kind == 0xC0:
        link.rx.feed(b"\xd0\x00")


def test_client_connect_refused():
    c = MQTTClient("cab-1", FakeNet(lambda l, p: broker(l, p, rc=5)), "h")
    assert reason(asyncio.run, c.connect()) == "connack:5"
    assert not c.connected and c._net.links[0].closed


def test_client_publish_subscribe_and_receive():
    got = []

    async def main():
        net = FakeNet(broker)
        c = MQTTClient("cab-1", net, "h", on_message=lambda *a: got.append(a), max_payload=64)
        assert await c.connect() is False
        task = asyncio.create_task(c.run())
        assert await c.subscribe_each(("cab/1/cmd",), 1) == b"\x01"
        # several in one SUBACK: the codes are the caller's to judge (no exception)
        assert await c.subscribe_each(("cab/1/a", "forbidden/b", "cab/1/c"), 0) == b"\x00\x80\x00"
        assert net.links[0].sent[-1][0] == 0x82 and net.links[0].sent[-1].count(b"\x00") >= 3
        await c.publish("cab/1/status", "open", qos=1, retain=True)
        await c.publish("cab/1/status", b"shut")
        link = net.links[0]
        assert link.sent[-1] == b"\x30\x12\x00\x0ccab/1/statusshut"
        link.rx.feed(publish_packet("cab/1/cmd", b"unlock", 1, retain=True, pid=5))
        link.rx.feed(publish_packet("cab/1/cmd", b"u" * 65, 1, dup=True, pid=6))
        await sleep_ms(20)
        assert got == [("cab/1/cmd", b"unlock", True, False), ("cab/1/cmd", None, False, True)]
        assert b"\x40\x02\x00\x05" in link.sent and b"\x40\x02\x00\x06" in link.sent
        await c.disconnect()
        assert link.sent[-1] == b"\xe0\x00" and link.closed and not c.connected
        assert await task is None  # run() ends quietly after disconnect()

    asyncio.run(main())


async def publish_times_out(c):
    # A QoS 1 publish on a client with timeout_ms=200 fails with "timeout", after about that.
    t0 = ticks_ms()
    try:
        await c.publish("t", b"x", qos=1)
        raise AssertionError("no timeout")
    except MQTTError as e:
        assert e.args[0] == "timeout"
    assert 150 <= ticks_diff(ticks_ms(), t0) < 1000


def test_client_silent_broker_closes_the_link_then_retry():
    # A broker that answers nothing for timeout_ms while a PUBACK is awaited is dead: the
    # publish fails with "timeout", the link is closed (run() says why), and the caller gets
    # through again on a new link.
    async def main():
        acking = [False]
        c = MQTTClient("cab-1", FakeNet(lambda l, p: broker(l, p, ack=acking[0])), "h",
                       timeout_ms=200)
        await c.connect()
        task = asyncio.create_task(c.run())
        await sleep_ms(0)
        await publish_times_out(c)
        assert not c.connected and not c._acks
        try:
            await task
            raise AssertionError("run() survived a silent broker")
        except MQTTError as e:
            assert e.args[0] == "timeout"
        acking[0] = True
        await c.connect()
        task = asyncio.create_task(c.run())
        await c.publish("t", b"x", qos=1)
        c.close()
        assert await task is None
        try:
            await c.publish("t", b"x")
            raise AssertionError("publish on a closed client")
        except MQTTError as e:
            assert e.args[0] == "closed"

    asyncio.run(main())


def test_client_broker_answering_others_keeps_the_link():
    # One PUBACK that never comes while the broker answers everything else: that publish
    # times out, the link stays (the broker is not silent).
    async def main():
        def answer(link, pkt):
            if b"lost" not in pkt:
                broker(link, pkt)
        c = MQTTClient("cab-1", FakeNet(answer), "h", timeout_ms=300)
        await c.connect()
        task = asyncio.create_task(c.run())
        async def lost():
            try:
                await c.publish("t", b"lost", qos=1)
            except MQTTError as e:
                return e.args[0]
        lost = asyncio.create_task(lost())
        for _ in range(8):
            await c.publish("t", b"fine", qos=1)
            await sleep_ms(50)
        assert await lost == "timeout"
        assert c.connected
        await c.publish("t", b"fine", qos=1)
        c.close()
        assert await task is None

    asyncio.run(main())


def test_client_idle_silent_broker_found_by_ping_within_timeout():
    # keepalive=1, timeout_ms=200: a PINGREQ after ~1 s of quiet; no PINGRESP within 200 ms
    # closes the link (before keepalive*1.5, which used to be the only bound).
    async def main():
        net = FakeNet(lambda l, p: broker(l, p) if p[0] == 0x10 else None)  # CONNACK, then mute
        c = MQTTClient("cab-1", net, "h", keepalive=1, timeout_ms=200)
        await c.connect()
        t0 = ticks_ms()
        try:
            await c.run()
            raise AssertionError("run() returned")
        except MQTTError as e:
            assert e.args[0] == "timeout"
        took = ticks_diff(ticks_ms(), t0)
        assert 1100 <= took < 1450, took
        assert b"\xc0\x00" in net.links[0].sent and net.links[0].closed

    asyncio.run(main())


def test_client_stalled_write_times_out_and_closes_the_link():
    # A write that never drains (a full socket buffer on a dead link): the one timeout over
    # send + ack fires, and since half a packet may be out, the link is closed, not reused.
    class StuckLink(Link):
        async def drain(self):
            if self.pending[:1] and self.pending[0] & 0xF0 == 0x30:
                await asyncio.sleep(3600)
            await Link.drain(self)

    class StuckNet(FakeNet):
        async def open(self, host, port, ssl=None, server_hostname=None):
            link = StuckLink(self.answer)
            self.links.append(link)
            return link.rx, link

    async def main():
        net = StuckNet(broker)
        c = MQTTClient("cab-1", net, "h", timeout_ms=200)
        await c.connect()
        task = asyncio.create_task(c.run())
        await publish_times_out(c)
        assert not c.connected and net.links[0].closed and not c._acks
        try:
            await task
            raise AssertionError("run() survived the closed link")
        except MQTTError as e:
            assert e.args[0] == "timeout"

    asyncio.run(main())


def test_client_close_fails_waiting_publish():
    async def main():
        c = MQTTClient("cab-1", FakeNet(lambda l, p: broker(l, p, ack=False)), "h")
        await c.connect()
        task = asyncio.create_task(c.run())
        pub = asyncio.create_task(c.publish("t", b"x", qos=1))
        await sleep_ms(20)
        c.close()
        try:
            await pub
            raise AssertionError("publish survived close")
        except MQTTError as e:
            assert e.args[0] == "closed"
        await task

    asyncio.run(main())


def test_client_keepalive_half_open():
    # keepalive=1: a PINGREQ after ~1 s of silence, then run() gives up at 1.5 s.
    async def main():
        net = FakeNet(lambda l, p: broker(l, p) if p[0] == 0x10 else None)  # CONNACK, then mute
        c = MQTTClient("cab-1", net, "h", keepalive=1)
        await c.connect()
        t0 = ticks_ms()
        try:
            await c.run()
            raise AssertionError("run() returned")
        except MQTTError as e:
            assert e.args[0] == "keepalive"
        took = ticks_diff(ticks_ms(), t0)
        assert 1400 <= took < 2500, took
        assert b"\xc0\x00" in net.links[0].sent and net.links[0].closed

    asyncio.run(main())


def test_packet_ids_wrap_skipping_zero_and_busy():
    c = MQTTClient("cab-1", None, "h")
    c._pid = 65534
    assert [c._next_pid() for _ in range(3)] == [65535, 1, 2]
    c._acks[3] = None
    assert c._next_pid() == 4

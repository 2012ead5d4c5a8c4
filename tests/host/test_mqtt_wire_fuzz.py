"""Fuzzing the firmware's MQTT decoder: whatever a broker (or an attacker on the path) sends,
the cabinet gets an MQTTError, never another exception, and never reads (so never allocates) more
than its receive cap at once, whatever length the packet claims."""
import asyncio
import tracemalloc

from hypothesis import HealthCheck, given, settings, strategies as st

from aedgate import mqttwire as w
from fwtest import publish_packet
from aedgate.mqtt import MQTTClient, MQTTError

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


class Capped:
    """A stream reader over fixed bytes that fails the test if asked for more than `cap` bytes
    in one read, and ends like CPython's StreamReader does."""

    def __init__(self, data, cap):
        self.data = data
        self.cap = cap
        self.pos = 0

    async def readexactly(self, n):
        assert 0 <= n <= self.cap, "read of %d bytes with cap %d" % (n, self.cap)
        chunk = self.data[self.pos:self.pos + n]
        self.pos += len(chunk)
        if len(chunk) < n:
            raise asyncio.IncompleteReadError(chunk, n)
        return chunk


def cap_for(max_payload):
    return max(max_payload, w.TOPIC_CAP)


async def drain_packets(rd, max_payload):
    """Reads packets until the decoder gives up; returns them and the MQTTError."""
    got = []
    while True:
        try:
            got.append(await w.read_packet(rd, max_payload))
        except MQTTError as e:
            return got, e


def check_packets(packets, max_payload):
    for p in packets:
        assert p[0] in (w.CONNACK, w.PUBLISH, w.PUBACK, w.SUBACK, w.UNSUBACK, w.PINGRESP)
        if p[0] == w.PUBLISH:
            _, topic, payload, qos, retain, dup, pid = p
            assert topic is None or (isinstance(topic, str) and 0 < len(topic.encode()) <= w.TOPIC_CAP)
            assert payload is None or len(payload) <= max_payload
            assert qos in (0, 1) and (pid > 0) == (qos == 1)


@SETTINGS
@given(st.binary(max_size=600), st.integers(0, 1024))
def test_arbitrary_bytes(data, max_payload):
    rd = Capped(data, cap_for(max_payload))
    packets, err = asyncio.run(drain_packets(rd, max_payload))
    check_packets(packets, max_payload)
    assert isinstance(err.args[0], str)


def varint(n):
    return w.encode_len(n)


@st.composite
def wrong_packets(draw):
    """Well-framed headers with lying lengths, bad flags and odd bodies."""
    first = draw(st.integers(0, 255))
    declared = draw(st.one_of(st.integers(0, 300), st.integers(0, w.MAX_REMAINING)))
    body = draw(st.binary(max_size=300))
    if first & 0xF0 == 0x30 and draw(st.booleans()):
        tlen = draw(st.one_of(st.integers(0, 20), st.integers(0, 0xFFFF)))
        body = tlen.to_bytes(2, "big") + body
    return bytes((first,)) + varint(declared) + body


@SETTINGS
@given(st.lists(wrong_packets(), min_size=1, max_size=4), st.integers(0, 512))
def test_structured_but_wrong(chunks, max_payload):
    rd = Capped(b"".join(chunks), cap_for(max_payload))
    packets, err = asyncio.run(drain_packets(rd, max_payload))
    check_packets(packets, max_payload)


topics = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
                 min_size=1, max_size=80)


@SETTINGS
@given(topics, st.binary(max_size=3000), st.integers(0, 1), st.booleans(), st.booleans(),
       st.integers(1, 0xFFFF), st.integers(0, 2048))
def test_publish_round_trip(topic, payload, qos, retain, dup, pid, max_payload):
    pkt = publish_packet(topic, payload, qos, retain, dup, pid if qos else 0)
    rd = Capped(pkt + b"\xd0\x00", cap_for(max_payload))

    async def both():
        return await w.read_packet(rd, max_payload), await w.read_packet(rd, max_payload)

    got, after = asyncio.run(both())
    want_topic = topic if len(topic.encode()) <= w.TOPIC_CAP else None
    want_payload = payload if len(payload) <= max_payload else None
    assert got == (w.PUBLISH, want_topic, want_payload, qos, retain, dup, pid if qos else 0)
    assert after == (w.PINGRESP,)  # the stream stays in step after a skipped payload


class FuzzLink:
    """One fake connection: CONNACK, then the fuzz bytes, then end of stream."""

    def __init__(self, data):
        self.rx = Capped(b"\x20\x02\x00\x00" + data, 4096)

    def write(self, data):
        pass

    async def drain(self):
        pass

    def close(self):
        pass


class FuzzNet:
    def __init__(self, data):
        self.data = data

    async def open(self, host, port, ssl=None, server_hostname=None):
        link = FuzzLink(self.data)
        return link.rx, link


@SETTINGS
@given(st.lists(st.one_of(wrong_packets(), st.binary(max_size=40),
                          st.builds(publish_packet, topics, st.binary(max_size=5000),
                                    st.just(1), st.booleans(), st.booleans(), st.integers(1, 9))),
                max_size=5))
def test_client_run_only_raises_mqtterror(chunks):
    seen = []
    client = MQTTClient("fuzz", FuzzNet(b"".join(chunks)), "h", keepalive=0, max_payload=1024,
                        on_message=lambda *a: seen.append(a))

    async def main():
        await client.connect()
        try:
            await client.run()
        except MQTTError:
            pass
        assert not client.connected

    asyncio.run(main())
    for topic, payload, retain, dup in seen:
        assert isinstance(topic, str) and (payload is None or len(payload) <= 1024)


class Zeros:
    """An endless stream of zero bytes after a header, served without storing it."""

    def __init__(self, head):
        self.head = head
        self.biggest = 0

    async def readexactly(self, n):
        self.biggest = max(self.biggest, n)
        if self.head:
            out, self.head = self.head[:n], self.head[n:]
            return out
        return bytes(n)


def test_huge_declared_length_is_skipped_in_small_reads():
    # A 20 MB publish: skipped with a few kB of memory at most, not buffered.
    n = 20_000_000
    rd = Zeros(b"\x30" + w.encode_len(n) + b"\x00\x01t")
    tracemalloc.start()
    try:
        pkt = asyncio.run(w.read_packet(rd, 2048))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert pkt == (w.PUBLISH, "t", None, 0, False, False, 0)
    assert rd.biggest <= w.TOPIC_CAP
    assert peak < 256 * 1024, peak

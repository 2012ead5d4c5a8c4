# MQTT 3.1.1 packets on the wire: encoders for what the client sends, one bounded reader for what
# the broker sends. No sockets here, so it is unit-tested (and fuzzed) without a network.
# Only what the cabinet uses: QoS 0/1, up to SUB_MAX topics per SUBSCRIBE, no QoS 2.
import struct

from aedgate.compat import const

CONNACK = const(0x20)
PUBLISH = const(0x30)
PUBACK = const(0x40)
SUBACK = const(0x90)
UNSUBACK = const(0xB0)
PINGRESP = const(0xD0)

PINGREQ_PACKET = b"\xc0\x00"
DISCONNECT_PACKET = b"\xe0\x00"

MAX_REMAINING = const(268435455)  # largest length a 4-byte varint can say
TOPIC_CAP = const(256)  # longer incoming topic names are skipped, not stored
_SKIP_CHUNK = const(256)  # discarded bytes are read this many at a time
# Topic filters in one SUBSCRIBE: the cabinet's session subscribes its three (cmd/#,
# update/offer, update/block) in one packet, one round trip instead of three.
SUB_MAX = const(4)

# The exact size of each fixed-size packet the broker may send us, by its first byte (flags
# included: anything else in the low nibble is malformed). SUBACK is 2 + one return code per
# filter asked (1 to SUB_MAX): its entry is the smallest, and read_packet allows up to SUB_MAX.
_FIXED = {CONNACK: 2, PUBACK: 2, SUBACK: 3, UNSUBACK: 2, PINGRESP: 0}


class MQTTError(Exception):
    """Protocol failure; args[0] is a short reason: "malformed", "closed", "timeout",
    "keepalive", "protocol", "suback", "connack:N"."""


def encode_len(n):
    if n < 0 or n > MAX_REMAINING:
        raise ValueError("length")
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _str(s):
    if isinstance(s, str):
        s = s.encode()
    if len(s) > 0xFFFF:
        raise ValueError("too long")
    return struct.pack("!H", len(s)) + s


def _packet(first, body):
    return bytes((first,)) + encode_len(len(body)) + body


def connect_packet(client_id, keepalive, clean=True, will=None, user=None, password=None):
    flags = 0x02 if clean else 0
    payload = _str(client_id)
    if will is not None:
        topic, msg, qos, retain = will
        if qos not in (0, 1):
            raise ValueError("will qos")
        flags |= 0x04 | (qos << 3) | (0x20 if retain else 0)
        payload += _str(topic) + _str(msg)
    if password is not None and user is None:
        raise ValueError("password without user")  # MQTT 3.1.1 forbids it [MQTT-3.1.2-22]
    if user is not None:
        flags |= 0x80
        payload += _str(user)
    if password is not None:
        flags |= 0x40
        payload += _str(password)
    return _packet(0x10, b"\x00\x04MQTT\x04" + struct.pack("!BH", flags, keepalive) + payload)


def publish_header(topic, payload_len, qos=0, retain=False, dup=False, pid=0, payload=None):
    """Fixed header + topic (+ packet id), in one buffer with room for `payload` after them
    when it is given (else the caller writes the payload after it as is, so a large payload is
    never copied). One allocation: this runs for every message."""
    if qos not in (0, 1):
        raise ValueError("qos")
    if isinstance(topic, str):
        topic = topic.encode()
    tl = len(topic)
    if tl > 0xFFFF:
        raise ValueError("too long")
    n = 2 + tl + 2 * qos + payload_len
    if n > MAX_REMAINING:
        raise ValueError("length")
    i = 3 + tl + (1 if n < 0x80 else 2 if n < 0x4000 else 3 if n < 0x200000 else 4)
    buf = bytearray(i + 2 * qos + (payload_len if payload is not None else 0))
    buf[0] = PUBLISH | (0x08 if dup else 0) | (qos << 1) | (0x01 if retain else 0)
    j = 1
    while n > 0x7F:
        buf[j] = n & 0x7F | 0x80
        n >>= 7
        j += 1
    buf[j] = n
    buf[j + 1] = tl >> 8
    buf[j + 2] = tl & 0xFF
    buf[j + 3:i] = topic
    if qos:
        buf[i] = pid >> 8
        buf[i + 1] = pid & 0xFF
        i += 2
    if payload is not None:
        buf[i:] = payload
    return buf


def subscribe_packet(pid, topics, qos):
    """One SUBSCRIBE for `topics` (a tuple of 1 to SUB_MAX topics), all at `qos`."""
    body = struct.pack("!H", pid)
    for t in topics:
        body += _str(t) + bytes((qos,))
    return _packet(0x82, body)


def puback_packet(pid):
    return struct.pack("!BBH", PUBACK, 2, pid)


class Buffered:
    """A reader that asks the stream for up to TOPIC_CAP bytes at a time (never more than
    read_packet() may ask for) and hands them out as readexactly() wants them. MicroPython's
    Stream goes through the poller for every call, so reading a packet field by field costs
    one scheduler round per field; this costs one per chunk."""

    def __init__(self, rd):
        self._rd = rd
        self._buf = b""
        self._pos = 0  # bytes of _buf handed out; the rest was read ahead

    async def readexactly(self, n):
        buf = self._buf
        pos = self._pos
        while len(buf) - pos < n:
            more = await self._rd.read(TOPIC_CAP)
            if not more:
                raise EOFError
            buf = buf[pos:] + more
            pos = 0
        self._buf = buf
        self._pos = pos + n
        return buf[pos:pos + n]

async def _skip(rd, n):
    while n:
        k = min(n, _SKIP_CHUNK)
        await rd.readexactly(k)
        n -= k


async def read_packet(rd, max_payload):
    """Reads one packet from the broker. Never asks `rd` for more than max(max_payload,
    TOPIC_CAP) bytes at once, whatever the packet claims. Returns one of
      (CONNACK, session_present, return_code)   (PUBACK, pid)   (SUBACK, pid, codes)
      (UNSUBACK, pid)   (PINGRESP,)
      (PUBLISH, topic, payload, qos, retain, dup, pid)
    where topic is None when it must be dropped and payload is None when it was longer than
    max_payload (skipped unread), and codes are the SUBACK's return codes (bytes, one per
    filter). Raises MQTTError only."""
    try:
        b = await rd.readexactly(2)  # every packet has at least its type and one length byte
        first = b[0]
        n = b[1]
        if n & 0x80:  # more length bytes: at most 4 in all
            n &= 0x7F
            for shift in (7, 14, 21):
                c = (await rd.readexactly(1))[0]
                n |= (c & 0x7F) << shift
                if not c & 0x80:
                    break
            else:
                raise MQTTError("malformed")
        if first & 0xF0 == PUBLISH:
            return await _read_publish(rd, first, n, max_payload)
        want = _FIXED.get(first)
        if want is None:
            # QoS 2 handshakes, or packets only a client sends: a broker that sends them is broken.
            raise MQTTError("protocol" if first & 0xF0 in (0x50, 0x60, 0x70) else "malformed")
        if n != want and not (first == SUBACK and want < n <= 2 + SUB_MAX):
            raise MQTTError("malformed")
        if first == PINGRESP:
            return (PINGRESP,)
        body = await rd.readexactly(n)
        if first == CONNACK:
            if body[0] & 0xFE:
                raise MQTTError("malformed")
            return (CONNACK, bool(body[0] & 1), body[1])
        pid = (body[0] << 8) | body[1]
        if first == SUBACK:
            for c in body[2:]:
                if c not in (0, 1, 2, 0x80):
                    raise MQTTError("malformed")
            return (SUBACK, pid, body[2:])
        return (first, pid)
    except EOFError:  # the stream ended mid-packet (CPython's IncompleteReadError is one too)
        raise MQTTError("closed")


async def _read_publish(rd, first, n, max_payload):
    qos = (first >> 1) & 3
    if qos == 3:
        raise MQTTError("malformed")
    if qos == 2:
        # We never subscribe above QoS 1, so a conforming broker never sends QoS 2 to us.
        raise MQTTError("protocol")
    if n < 2:
        raise MQTTError("malformed")
    b = await rd.readexactly(2)
    tlen = (b[0] << 8) | b[1]
    head = 2 + tlen + (2 if qos else 0)
    if head > n:
        raise MQTTError("malformed")
    plen = n - head
    body = raw = None
    if tlen <= TOPIC_CAP and plen <= max_payload and n - 2 <= max(max_payload, TOPIC_CAP):
        body = await rd.readexactly(n - 2)  # the usual case: the rest in one read
        raw = body[:tlen]
    elif tlen > TOPIC_CAP:
        await _skip(rd, tlen)
    else:
        raw = await rd.readexactly(tlen)
    topic = None  # dropped: not a valid MQTT topic name (empty, bad UTF-8, a NUL inside) or too long
    if raw:
        try:
            topic = raw.decode()
        except UnicodeError:
            pass
        if topic and "\x00" in topic:
            topic = None
    pid = 0
    if qos:
        b = body[tlen:] if body else await rd.readexactly(2)
        pid = (b[0] << 8) | b[1]
        if not pid:
            raise MQTTError("malformed")
    if body is not None:
        payload = body[head - 2:]
    elif plen > max_payload:
        await _skip(rd, plen)
        payload = None
    else:
        payload = await rd.readexactly(plen) if plen else b""
    return (PUBLISH, topic, payload, qos, bool(first & 1), bool(first & 8), pid)

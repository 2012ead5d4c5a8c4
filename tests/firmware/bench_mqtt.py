# One row of the MQTT client benchmark, on the MicroPython unix port (simulator/bench/mqtt_client.py
# drives it; see there for the rows). Usage:
#   micropython bench_mqtt.py FIRMWARE_DIR CLIENT ROW PORT [PEER_DIR]
# CLIENT: aedgate, bare (a blocking socket doing the bare CONNECT/PUBLISH/PUBACK exchange),
# umqtt.simple, umqtt.robust, mqtt_as (its source folder is PEER_DIR; never in this repository).
# Prints progress lines ("t <ms> <what>") for the driver and, last, one JSON line of figures.
import gc
import json
import socket
import struct
import sys
import time

FIRMWARE, CLIENT, ROW, PORT = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
# The firmware client's timeout_ms (config mqtt_timeout_s): the driver's --aedgate-timeout-s.
TIMEOUT_MS = int(__import__("os").getenv("BENCH_TIMEOUT_MS") or 10000)
sys.path.insert(0, FIRMWARE)
if len(sys.argv) > 5:
    sys.path.insert(0, sys.argv[5])

import asyncio  # noqa: E402  (not aedgate.compat: its import counts in the heap row)

HOST = "127.0.0.1"
TOPIC = "bench/" + CLIENT.replace(".", "_")
RECV_TOPIC = "bench/recv"
ROUND_TRIPS = 1000
IN_FLIGHT = 32
IN_FLIGHT_MSGS = 2000
QOS0_MSGS = 5000
RECV_MSGS = 1000
PAYLOAD = b'{"v":1,"type":"door_opened","seq":12345,"ts":1795000000}'
T0 = time.ticks_ms()
result = {"client": CLIENT, "row": ROW}


def now_ms():
    return time.ticks_diff(time.ticks_ms(), T0)


def say(what):
    print("t %d %s" % (now_ms(), what))


def cid(tag):
    return "bench-%s-%s" % (CLIENT.replace(".", "-"), tag)


class Net:
    async def open(self, host, port, ssl=None, server_hostname=None):
        return await asyncio.open_connection(host, port)


# -- clients behind one small interface: connect(clean), pub(topic, payload, qos), close() --
class Aedgate:
    blocking = False

    def __init__(self, tag, on_message=None):
        from aedgate.mqtt import MQTTClient
        self.c = MQTTClient(cid(tag), Net(), HOST, PORT, keepalive=60, timeout_ms=TIMEOUT_MS,
                            on_message=on_message and (lambda t, p, r, d: on_message(t, p)))
        self.run = None

    async def connect(self, clean=True):
        await self.c.connect(clean)
        self.run = asyncio.create_task(self.c.run())

    async def sub(self, topic):
        await self.c.subscribe_each((topic,), 1)

    def pub(self, topic, payload, qos):
        return self.c.publish(topic, payload, qos)

    def up(self):
        return self.c.connected

    async def close(self):
        await self.c.disconnect()
        try:
            await self.run
        except Exception:
            pass


class Umqtt:
    blocking = True

    def __init__(self, tag, on_message=None, robust=False):
        if robust:
            from umqtt.robust import MQTTClient
        else:
            from umqtt.simple import MQTTClient
        self.c = MQTTClient(cid(tag), HOST, PORT, keepalive=60)
        if robust:
            self.c.DELAY = 0.2  # its default is 2 s between attempts; give it a fair chance
        self.c.set_callback(on_message or (lambda t, p: None))

    async def connect(self, clean=True):
        self.c.connect(clean)

    async def sub(self, topic):
        self.c.subscribe(topic, 1)

    async def pub(self, topic, payload, qos):
        self.c.publish(topic, payload, qos=qos)

    def up(self):
        return True

    async def close(self):
        self.c.disconnect()


def _shim_board():
    # mqtt_as imports machine.unique_id and network.WLAN, which the unix port lacks: a Wi-Fi
    # that is always up, so it goes straight to the broker.
    class WLAN:
        def __init__(self, *a):
            pass

        def active(self, *a):
            return True

        def connect(self, *a, **k):
            pass

        def disconnect(self):
            pass

        def isconnected(self):
            return True

        def status(self, *a):
            return 1010

        def config(self, *a, **k):
            return None

    class network:
        STA_IF = 0
        STAT_IDLE = 1000
        STAT_CONNECTING = 1001
        STAT_GOT_IP = 1010

    class machine:
        @staticmethod
        def unique_id():
            return b"bench"
    network.WLAN = WLAN
    sys.modules["network"] = network
    sys.modules["machine"] = machine


class MqttAs:
    blocking = False

    def __init__(self, tag, on_message=None):
        _shim_board()
        from mqtt_as import MQTTClient, config
        config["server"] = HOST
        config["port"] = PORT
        config["client_id"] = cid(tag)
        config["keepalive"] = 60
        config["queue_len"] = 0
        config["subs_cb"] = (lambda t, m, r: on_message(t, m)) if on_message else (lambda *a: None)
        self.cfg = config
        self.MQTTClient = MQTTClient
        self.c = None

    async def connect(self, clean=True):
        self.cfg["clean"] = self.cfg["clean_init"] = clean
        if self.c is None:
            self.c = self.MQTTClient(self.cfg)
        await self.c.connect(quick=True)

    async def sub(self, topic):
        await self.c.subscribe(topic, 1)

    def pub(self, topic, payload, qos):
        return self.c.publish(topic.encode(), payload, False, qos)

    def up(self):
        return self.c.isconnected()

    async def close(self):
        self.c.close()


class Bare:
    """A blocking socket and hand-made packets: the floor any client is measured against."""
    blocking = True

    def __init__(self, tag, on_message=None):
        self.id = cid(tag).encode()
        self.s = None
        self.pid = 0

    async def connect(self, clean=True):
        s = self.s = socket.socket()
        s.connect(socket.getaddrinfo(HOST, PORT)[0][-1])
        body = b"\x00\x04MQTT\x04" + bytes((2 if clean else 0,)) + b"\x00\x3c" + \
            struct.pack("!H", len(self.id)) + self.id
        s.write(bytes((0x10, len(body))) + body)
        assert s.read(4)[:2] == b"\x20\x02"

    async def pub(self, topic, payload, qos):
        t = topic.encode()
        self.pid = self.pid % 65535 + 1
        head = struct.pack("!H", len(t)) + t + (struct.pack("!H", self.pid) if qos else b"")
        n = len(head) + len(payload)
        self.s.write(bytes((0x30 | (qos << 1), n & 0x7F | 0x80, n >> 7)) + head + payload
                     if n > 127 else bytes((0x30 | (qos << 1), n)) + head + payload)
        if qos:
            ack = self.s.read(4)
            assert ack[0] == 0x40 and (ack[2] << 8 | ack[3]) == self.pid

    def up(self):
        return True

    async def close(self):
        self.s.write(b"\xe0\x00")
        self.s.close()


def make(tag, on_message=None):
    if CLIENT == "aedgate":
        return Aedgate(tag, on_message)
    if CLIENT == "bare":
        return Bare(tag, on_message)
    if CLIENT == "umqtt.simple":
        return Umqtt(tag, on_message)
    if CLIENT == "umqtt.robust":
        return Umqtt(tag, on_message, robust=True)
    if CLIENT == "mqtt_as":
        return MqttAs(tag, on_message)
    raise SystemExit("unknown client " + CLIENT)


# -- rows -------------------------------------------------------------------------------------
async def round_trip():
    """QoS 1 publish -> PUBACK, one at a time: p50/p99 of each, and messages a second."""
    c = make("rt")
    await c.connect()
    for _ in range(50):  # warm up
        await c.pub(TOPIC, PAYLOAD, 1)
    times = []
    t0 = time.ticks_us()
    for _ in range(ROUND_TRIPS):  # or 20 s, for the peers that take 40-100 ms each
        t = time.ticks_us()
        await c.pub(TOPIC, PAYLOAD, 1)
        times.append(time.ticks_diff(time.ticks_us(), t))
        if time.ticks_diff(time.ticks_us(), t0) > 20000000:
            break
    total = time.ticks_diff(time.ticks_us(), t0)
    await c.close()
    times.sort()
    result["n"] = len(times)
    result["p50_ms"] = times[len(times) // 2] / 1000
    result["p99_ms"] = times[len(times) * 99 // 100] / 1000
    result["msg_s"] = len(times) * 1e6 / total


async def round_trip_paired():
    """The client and the bare socket in one process, alternating blocks of 50 round trips
    (20 blocks each): both see the same moments of a shared machine, so their ratio holds
    even when the absolute figures move."""
    c = make("rtp")
    bare = Bare("rtp-bare")
    await c.connect()
    await bare.connect()
    mine, floor = [], []
    for block in range(41):
        for who, times in ((c, mine), (bare, floor)):
            for _ in range(50):
                t = time.ticks_us()
                await who.pub(TOPIC, PAYLOAD, 1)
                if block:  # the first block warms up
                    times.append(time.ticks_diff(time.ticks_us(), t))
    await c.close()
    await bare.close()
    mine.sort()
    floor.sort()
    result["p50_ms"] = mine[len(mine) // 2] / 1000
    result["bare_p50_ms"] = floor[len(floor) // 2] / 1000
    result["ratio"] = mine[len(mine) // 2] / floor[len(floor) // 2]


async def in_flight_paired():
    """One at a time and IN_FLIGHT at once on one link, alternating blocks of 200 messages
    (10 blocks each): messages a second of each and their ratio, seen in the same moments."""
    c = make("ifp")
    await c.connect()

    async def burst(n, width):
        left = [n]

        async def worker():
            while left[0] > 0:
                left[0] -= 1
                await c.pub(TOPIC, PAYLOAD, 1)
        t = time.ticks_us()
        await asyncio.gather(*[worker() for _ in range(width)])
        return time.ticks_diff(time.ticks_us(), t)
    one = many = 0
    for block in range(11):
        a = await burst(200, 1)
        b = await burst(200, IN_FLIGHT)
        if block:  # the first block warms up
            one += a
            many += b
    await c.close()
    result["one_msg_s"] = 2000 * 1e6 / one
    result["msg_s"] = 2000 * 1e6 / many
    result["ratio"] = one / many


async def in_flight():
    """IN_FLIGHT tasks publishing QoS 1 at once (asyncio clients only): messages a second."""
    c = make("if")
    await c.connect()
    left = [IN_FLIGHT_MSGS]

    async def worker():
        while left[0] > 0:
            left[0] -= 1
            await c.pub(TOPIC, PAYLOAD, 1)
    t0 = time.ticks_us()
    await asyncio.gather(*[worker() for _ in range(IN_FLIGHT)])
    total = time.ticks_diff(time.ticks_us(), t0)
    await c.close()
    result["msg_s"] = IN_FLIGHT_MSGS * 1e6 / total


async def qos0():
    """QOS0_MSGS QoS 0 publishes, then one QoS 1 whose PUBACK says the broker has them all."""
    c = make("q0")
    await c.connect()
    t0 = time.ticks_us()
    for _ in range(QOS0_MSGS):
        await c.pub(TOPIC, PAYLOAD, 0)
    await c.pub(TOPIC, PAYLOAD, 1)
    total = time.ticks_diff(time.ticks_us(), t0)
    await c.close()
    result["msg_s"] = QOS0_MSGS * 1e6 / total


async def recv_prep():
    """A persistent session subscribed to RECV_TOPIC; the driver then queues messages for it."""
    c = make("rx")
    await c.connect(False)
    await c.sub(RECV_TOPIC)
    await c.close()


async def recv():
    """Reconnect to the persistent session: seconds until RECV_MSGS queued QoS 1 have come."""
    got = [0]

    def on_message(t, p):
        got[0] += 1
    c = make("rx", on_message)
    t0 = time.ticks_us()
    await c.connect(False)
    deadline = time.ticks_add(time.ticks_ms(), 30000)
    while got[0] < RECV_MSGS and time.ticks_diff(deadline, time.ticks_ms()) > 0:
        if c.blocking:
            c.c.wait_msg()
        else:
            await asyncio.sleep_ms(1)
    result["s"] = time.ticks_diff(time.ticks_us(), t0) / 1e6
    result["received"] = got[0]
    await c.close()


async def outage():
    """Numbered QoS 1 publishes every 20 ms for 25 s, each retried until acknowledged, as the
    outbox does (reconnecting when the client says the link is down). The driver stops or kills
    the broker meanwhile and counts what arrives; this side reports when it noticed, how long
    the loop was ever blocked, and when publishing worked again."""
    seq = 0
    down_at = []
    up_at = []
    failures = 0
    gap = [0]
    stop = [False]

    async def ticker():  # the rest of the cabinet: how long did it have to wait for the loop?
        last = time.ticks_ms()
        while not stop[0]:
            await asyncio.sleep_ms(10)
            t = time.ticks_ms()
            gap[0] = max(gap[0], time.ticks_diff(t, last) - 10)
            last = t
    tick = asyncio.create_task(ticker())
    c = make("out")
    await c.connect()
    end = time.ticks_add(time.ticks_ms(), 25000)
    was_up = True
    while time.ticks_diff(end, time.ticks_ms()) > 0:
        seq += 1
        while True:
            try:
                if not c.up():
                    raise OSError("down")
                await c.pub(TOPIC, b"%d" % seq, 1)
                if not was_up:
                    up_at.append(now_ms())
                    say("up")
                    was_up = True
                break
            except Exception as e:  # noqa: BLE001 (every client has its own)
                failures += 1
                if was_up:
                    down_at.append(now_ms())
                    say("down %r" % e)
                    was_up = False
                await asyncio.sleep_ms(200)
                try:
                    if CLIENT == "aedgate":
                        c.c.close()
                        await c.connect()
                    elif CLIENT == "umqtt.simple":
                        await c.connect()
                except Exception:
                    pass
            if time.ticks_diff(end, time.ticks_ms()) < 0:
                break
        say("acked %d" % seq)
        await asyncio.sleep_ms(20)
    stop[0] = True
    await tick
    result.update({"sent": seq, "down_at_ms": down_at, "up_at_ms": up_at, "failures": failures,
                   "max_loop_gap_ms": gap[0]})
    try:
        await c.close()
    except Exception:
        pass


async def heap():
    """Module code and client state after connect (gc.mem_alloc differences)."""
    gc.collect()
    base = gc.mem_alloc()
    c = make("heap")  # imports the client's modules
    gc.collect()
    code = gc.mem_alloc() - base
    await c.connect()
    await c.pub(TOPIC, PAYLOAD, 1)
    await asyncio.sleep_ms(50)
    gc.collect()
    result["code_bytes"] = code
    result["state_bytes"] = gc.mem_alloc() - base - code
    await c.close()


ROWS = {"rt": round_trip, "rtpair": round_trip_paired, "inflight": in_flight,
        "ifpair": in_flight_paired, "qos0": qos0, "recv_prep": recv_prep,
        "recv": recv, "outage": outage, "heap": heap}


async def main():
    say("start")
    await ROWS[ROW]()


asyncio.run(main())
print(json.dumps(result))

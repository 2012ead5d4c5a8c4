"""The firmware's MQTT client against a real Mosquitto on loopback (paho-mqtt as the other side),
against small misbehaving TCP servers, and once under the real MicroPython unix port."""
import asyncio
import json
import os
import signal
import subprocess
import time

import pytest

from aedgate.mqtt import MQTTClient, MQTTError, backoff_ms
from tests.fixtures import ROOT, Backend, Mosquitto, free_port, require_tool

FIRMWARE = ROOT / "firmware"


class Net:
    """What board.py gives the client on a PC: plain asyncio streams."""

    async def open(self, host, port, ssl=None, server_hostname=None):
        return await asyncio.open_connection(host, port, ssl=ssl, server_hostname=server_hostname)


def client(port, cid, **kw):
    return MQTTClient(cid, Net(), "127.0.0.1", port, **kw)


class Inbox:
    """on_message target: an asyncio queue of (topic, payload, retain, dup)."""

    def __init__(self):
        self.q = asyncio.Queue()

    def __call__(self, topic, payload, retain, dup):
        self.q.put_nowait((topic, payload, retain, dup))

    async def next(self, timeout=5):
        return await asyncio.wait_for(self.q.get(), timeout)


async def until(pred, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "condition not met in %.1fs" % timeout
        await asyncio.sleep(0.02)


def test_connect_subscribe_and_round_trip(mosquitto, backend):
    async def main():
        inbox = Inbox()
        c = client(mosquitto.port, "cab-rt", on_message=inbox)
        assert await c.connect() is False and c.connected
        run = asyncio.create_task(c.run())
        assert await c.subscribe_each(("aed/v1/rt/in",), 1) == b"\x01"
        assert await c.subscribe_each(("aed/v1/rt/in0",), 0) == b"\x00"
        await c.publish("aed/v1/rt/in", b"q1-self", qos=1)
        await c.publish("aed/v1/rt/in0", "q0-self", qos=0)
        got = {await inbox.next(), await inbox.next()}
        assert got == {("aed/v1/rt/in", b"q1-self", False, False),
                       ("aed/v1/rt/in0", b"q0-self", False, False)}
        await c.publish("aed/v1/rt/out", b'{"n": 1}', qos=1)
        await c.publish("aed/v1/rt/out", b'{"n": 0}', qos=0)
        await asyncio.to_thread(backend.wait_for, lambda t, o: o == {"n": 1})
        await asyncio.to_thread(backend.wait_for, lambda t, o: o == {"n": 0})
        backend.publish("aed/v1/rt/in", b"from-paho", qos=1)
        assert await inbox.next() == ("aed/v1/rt/in", b"from-paho", False, False)
        await c.disconnect()
        assert await asyncio.wait_for(run, 5) is None and not c.connected

    asyncio.run(main())


def test_retained_message_flag_for_fresh_subscriber(mosquitto):
    async def main():
        pub = client(mosquitto.port, "cab-pub")
        await pub.connect()
        run = asyncio.create_task(pub.run())
        await pub.publish("aed/v1/ret/state", b"door=shut", qos=1, retain=True)
        inbox = Inbox()
        sub = client(mosquitto.port, "cab-sub", on_message=inbox)
        await sub.connect()
        run2 = asyncio.create_task(sub.run())
        await sub.subscribe_each(("aed/v1/ret/#",), 1)
        assert await inbox.next() == ("aed/v1/ret/state", b"door=shut", True, False)
        await pub.publish("aed/v1/ret/state", b"door=open", qos=1)  # live: not retained
        assert await inbox.next() == ("aed/v1/ret/state", b"door=open", False, False)
        await pub.disconnect()
        await sub.disconnect()
        await asyncio.gather(run, run2)

    asyncio.run(main())


def test_will_on_abrupt_close_not_on_disconnect(mosquitto):
    watcher = Backend(mosquitto.url, topics=("aed/v1/will/#",))
    try:
        async def main():
            will = lambda name: ("aed/v1/will/" + name, b"offline", 1, False)  # noqa: E731
            a = client(mosquitto.port, "cab-a", will=will("a"))
            b = client(mosquitto.port, "cab-b", will=will("b"))
            await a.connect()
            await b.connect()
            await b.disconnect()
            a.close()
            await asyncio.to_thread(watcher.wait_for, lambda t, o: t == "aed/v1/will/a")
            # The broker handles both goodbyes in order: a marker sent after them arrives after
            # any will of b would have.
            m = client(mosquitto.port, "cab-m")
            await m.connect()
            run = asyncio.create_task(m.run())  # reads the PUBACK
            await m.publish("aed/v1/will/marker", b"{}", qos=1)
            await asyncio.to_thread(watcher.wait_for, lambda t, o: t == "aed/v1/will/marker")
            await m.disconnect()
            await run
            await asyncio.sleep(0.3)
            topics = [msg[0] for msg in watcher.messages]
            assert topics.count("aed/v1/will/a") == 1 and "aed/v1/will/b" not in topics, topics
            assert watcher.messages[0][1] == b"offline"

        asyncio.run(main())
    finally:
        watcher.close()


def test_keepalive_holds_an_idle_link(mosquitto):
    # Mosquitto drops a client that is silent for 1.5 x keepalive (3 s): 6.5 s idle proves pings.
    async def main():
        c = client(mosquitto.port, "cab-ka", keepalive=2)
        await c.connect()
        run = asyncio.create_task(c.run())
        await asyncio.sleep(6.5)
        assert c.connected and not run.done()
        await c.publish("aed/v1/ka", b"still here", qos=1)
        await c.disconnect()
        assert await run is None

    asyncio.run(main())


async def fake_broker(connack=True):
    """A loopback server that reads whatever comes and answers only CONNECT (if asked): a broker
    that went half-open, or one that never acknowledges."""
    async def handle(reader, writer):
        answered = False
        try:
            while True:
                data = await reader.read(4096)
                if not data:
                    break
                if connack and not answered and data[0] == 0x10:
                    writer.write(b"\x20\x02\x00\x00")
                    answered = True
        except ConnectionError:
            pass
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


def test_half_open_link_detected_by_keepalive():
    async def main():
        server, port = await fake_broker()
        async with server:
            c = client(port, "cab-ho", keepalive=2)
            await c.connect()
            t0 = time.monotonic()
            with pytest.raises(MQTTError) as e:
                await asyncio.wait_for(c.run(), 6)
            took = time.monotonic() - t0
            assert e.value.args[0] == "keepalive"
            assert 2.8 <= took <= 4.0, took
            assert not c.connected

    asyncio.run(main())


def test_publish_waits_for_puback_at_most_timeout():
    # A broker that accepts the connection and then answers nothing: the publish fails after
    # timeout_ms, and since the broker said nothing all that time the link is closed with it.
    async def main():
        server, port = await fake_broker()
        async with server:
            c = client(port, "cab-pt", timeout_ms=1000)
            await c.connect()
            run = asyncio.create_task(c.run())
            t0 = time.monotonic()
            with pytest.raises(MQTTError) as e:
                await asyncio.wait_for(c.publish("aed/v1/x", b"lost", qos=1), 5)
            took = time.monotonic() - t0
            assert e.value.args[0] == "timeout" and 0.9 <= took <= 1.6, took
            with pytest.raises(MQTTError) as e:
                await asyncio.wait_for(run, 1)
            assert e.value.args[0] == "timeout" and not c.connected

    asyncio.run(main())


def test_connect_bounded_when_no_connack():
    async def main():
        server, port = await fake_broker(connack=False)
        async with server:
            c = client(port, "cab-ct", timeout_ms=800)
            t0 = time.monotonic()
            with pytest.raises(MQTTError) as e:
                await asyncio.wait_for(c.connect(), 5)
            took = time.monotonic() - t0
            assert e.value.args[0] == "timeout" and 0.7 <= took <= 1.5, took
            assert not c.connected

    asyncio.run(main())


def test_connect_refused_port_is_oserror():
    async def main():
        with pytest.raises(OSError):
            await client(free_port(), "cab-x", timeout_ms=2000).connect()

    asyncio.run(main())


def test_oversize_message_reported_as_none_and_link_survives(mosquitto, backend):
    async def main():
        inbox = Inbox()
        c = client(mosquitto.port, "cab-big", on_message=inbox, max_payload=2048)
        await c.connect()
        run = asyncio.create_task(c.run())
        await c.subscribe_each(("aed/v1/big/#",), 1)
        backend.publish("aed/v1/big/cmd", b"x" * 10240, qos=1)
        assert await inbox.next() == ("aed/v1/big/cmd", None, False, False)
        backend.publish("aed/v1/big/cmd", b"x" * 2048, qos=1)
        assert await inbox.next() == ("aed/v1/big/cmd", b"x" * 2048, False, False)
        await c.publish("aed/v1/bigack", b'{"ok": true}', qos=1)
        await asyncio.to_thread(backend.wait_for, lambda t, o: t == "aed/v1/bigack")
        await asyncio.sleep(0.2)
        assert inbox.q.empty()  # the 10 kB message was acknowledged: not redelivered
        await c.disconnect()
        await run

    asyncio.run(main())


def test_connack_refused(tmp_path):
    # `user root`: as root, Mosquitto would otherwise drop to a user that cannot read tmp_path.
    conf = "allow_anonymous false\nuser root\n"
    # mosquitto_passwd comes with Debian's mosquitto package (`make test` installs it); without
    # it the test fails rather than dropping the positive-auth half.
    passwd = require_tool("mosquitto_passwd", "install the Debian package mosquitto (make test)")
    pwfile = tmp_path / "passwd"
    subprocess.run([passwd, "-c", "-b", str(pwfile), "cab-7", "s3cret"], check=True)
    conf += "password_file %s\n" % pwfile
    broker = Mosquitto(tmp_path, extra_conf=conf).start()
    try:
        async def main():
            for kw in ({}, {"user": "cab-7", "password": "wrong"}):
                c = client(broker.port, "cab-7", **kw)
                with pytest.raises(MQTTError) as e:
                    await c.connect()
                assert e.value.args[0] in ("connack:4", "connack:5"), e.value.args
                assert not c.connected
            c = client(broker.port, "cab-7", user="cab-7", password="s3cret")
            await c.connect()  # the control: the right password gets in
            assert c.connected
            await c.disconnect()

        asyncio.run(main())
    finally:
        broker.stop()


def _stopped(broker):
    os.kill(broker.proc.pid, signal.SIGSTOP)


def _continued(broker):
    os.kill(broker.proc.pid, signal.SIGCONT)


def test_silent_broker_sigstop_detected_within_timeout_and_nothing_lost(mosquitto):
    """A real Mosquitto stopped (SIGSTOP) while a cabinet publishes: the client notices within
    timeout_ms (not keepalive*1.5 = 90 s), and publishing as the outbox does (a message counts
    as sent only once acknowledged; after a failure, reconnect and send it again) loses nothing
    after SIGCONT; duplicates are only messages sent again after a failure."""
    topic = "aed/v1/stall/event"
    watcher = Backend(mosquitto.url, topics=(topic,))
    try:
        async def main():
            c = client(mosquitto.port, "cab-stall", keepalive=60, timeout_ms=1500)
            await c.connect()
            run = asyncio.create_task(c.run())
            acked, failures, noticed = [], [], []
            stopped_at = None
            seq = 0
            t0 = time.monotonic()
            while time.monotonic() - t0 < 9.0:
                seq += 1
                while True:
                    try:
                        if not c.connected:
                            await c.connect()
                            run = asyncio.create_task(c.run())
                        await c.publish(topic, b"%d" % seq, qos=1)
                        acked.append(seq)
                        break
                    except (MQTTError, OSError) as e:
                        failures.append(seq)
                        if stopped_at is not None and not noticed and not c.connected:
                            noticed.append(time.monotonic() - stopped_at)  # link declared dead
                        await asyncio.sleep(0.1)
                if seq == 20:
                    _stopped(mosquitto)
                    stopped_at = time.monotonic()
                    asyncio.get_running_loop().call_later(4.0, _continued, mosquitto)
                await asyncio.sleep(0.02)
            await c.disconnect()
            await asyncio.gather(run, return_exceptions=True)
            return acked, failures, noticed

        try:
            acked, failures, noticed = asyncio.run(main())
        finally:
            _continued(mosquitto)
        assert noticed and noticed[0] <= 1.5 + 0.8, (noticed, failures)  # timeout_ms, and a little
        watcher.wait_for(lambda t, o: o == acked[-1], timeout=10)
        time.sleep(0.3)
        got = [int(m[1]) for m in watcher.messages]
        assert set(acked) <= set(got), sorted(set(acked) - set(got))
        dups = len(got) - len(set(got))
        assert dups <= len(set(failures)), (dups, failures)
    finally:
        watcher.close()


def test_backoff_distribution():
    for attempt in range(0, 40):
        top = min(300000, 1000 * 2 ** attempt)
        xs = [backoff_ms(attempt) for _ in range(400)]
        assert 500 <= min(xs) and max(xs) <= top
    xs = sorted(backoff_ms(6) for _ in range(4000))  # range [500, 64000]
    # roughly uniform: each tenth of the range holds 5..15 % of the draws
    bins = [0] * 10
    for x in xs:
        bins[min(9, (x - 500) * 10 // 63501)] += 1
    assert all(200 <= b <= 600 for b in bins), bins
    assert len(set(backoff_ms(20) for _ in range(100))) > 90  # a fleet spreads out


MPY_SCRIPT = """
import sys
sys.path.insert(0, %(firmware)r)
from aedgate.compat import asyncio
from aedgate.mqtt import MQTTClient

class Net:
    async def open(self, host, port, ssl=None, server_hostname=None):
        return await asyncio.open_connection(host, port)

async def main():
    got = []
    c = MQTTClient("mpy-cab", Net(), "127.0.0.1", %(port)d, keepalive=5,
                   on_message=lambda t, p, r, d: got.append((t, p, r)))
    print("session", await c.connect())
    run = asyncio.create_task(c.run())
    print("granted", (await c.subscribe_each(("aed/v1/mpy/in",), 1))[0])
    await c.publish("aed/v1/mpy/out", b"q0", 0)
    await c.publish("aed/v1/mpy/out", "q1", 1)
    for _ in range(500):
        if got:
            break
        await asyncio.sleep_ms(10)
    print("got", got)
    await c.disconnect()
    print("run", await run)
    w = MQTTClient("mpy-will", Net(), "127.0.0.1", %(port)d,
                   will=("aed/v1/mpy/will", b"gone", 1, False))
    await w.connect()
    run = asyncio.create_task(w.run())
    await asyncio.sleep_ms(50)
    w.close()  # closing the socket alone would not wake run() here: close() must
    print("run2", await asyncio.wait_for_ms(run, 3000))
    print("OK")

asyncio.run(main())
"""


def test_client_runs_unchanged_on_micropython(micropython, mosquitto, tmp_path):
    watcher = Backend(mosquitto.url, topics=("aed/v1/mpy/#",))
    script = tmp_path / "mpy_mqtt.py"
    script.write_text(MPY_SCRIPT % {"firmware": str(FIRMWARE), "port": mosquitto.port})
    proc = subprocess.Popen([micropython, str(script)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        watcher.wait_for(lambda t, o: t == "aed/v1/mpy/out" and o == b"q1")
        watcher.publish("aed/v1/mpy/in", b"hello cabinet", qos=1)
        out = proc.communicate(timeout=20)[0]
        assert proc.returncode == 0, out
        lines = out.splitlines()
        assert "session False" in lines and "granted 1" in lines, out
        assert "got [('aed/v1/mpy/in', b'hello cabinet', False)]" in lines, out
        assert "run None" in lines and "run2 None" in lines and lines[-1] == "OK", out
        watcher.wait_for(lambda t, o: t == "aed/v1/mpy/will" and o == b"gone")
        outs = [m[1] for m in watcher.messages if m[0] == "aed/v1/mpy/out"]
        assert outs == [b"q0", b"q1"], outs
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        watcher.close()


def _bench(micropython, port, row):
    proc = subprocess.run([micropython, str(ROOT / "tests" / "firmware" / "bench_mqtt.py"),
                           str(FIRMWARE), "aedgate", row, str(port)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return json.loads(proc.stdout.splitlines()[-1])


def test_in_flight_not_slower_than_one_at_a_time_on_micropython(micropython, tmp_path):
    # 32 publishes in flight against one at a time, on one link, alternating blocks of 200
    # messages (tests/firmware/bench_mqtt.py, row ifpair): one ratio from one run. Before the
    # task signals, 32 in flight ran at 2/3 of the one-at-a-time rate. The broker runs as the
    # deployment sets it (set_tcp_nodelay: docs/deploy/mosquitto/README.md).
    broker = Mosquitto(tmp_path, extra_conf="set_tcp_nodelay true\n").start()
    try:
        got = _bench(micropython, broker.port, "ifpair")
    finally:
        broker.stop()
    print("QoS 1 msg/s, one at a time: %(one_msg_s).0f; 32 in flight: %(msg_s).0f" % got)
    assert got["msg_s"] >= 0.9 * got["one_msg_s"], got

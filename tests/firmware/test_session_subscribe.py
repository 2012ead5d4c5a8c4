# The session's subscriptions (App._connected): cmd/#, update/offer and update/block in ONE
# SUBSCRIBE (one round trip at every connect instead of three: a fleet's connect ramp paid for
# the other two, docs/benchmarks.md "Connect ramp: fewer round trips"), and what each refusal
# means: commands refused ends the session, updates refused leave the cabinet working.
import json

from aedgate.app import App
from aedgate.compat import asyncio, sleep_ms
from aedgate.mqtt import MQTTError
from fwtest import Hardware, temp_flash


class Client:
    """What _connected talks to: answers the SUBSCRIBE with `codes`, acks every publish."""

    def __init__(self, codes):
        self.codes = codes
        self.subscribes = []
        self.published = []
        self.timeout_ms = 1000

    async def subscribe_each(self, topics, qos=1):
        self.subscribes.append((tuple(topics), qos))
        return self.codes

    async def subscribe(self, topic, qos=1):
        raise AssertionError("one topic at a time")

    async def publish(self, topic, payload, qos=0, retain=False):
        self.published.append(topic)

    async def run(self):
        while True:
            await sleep_ms(1000)


def _app():
    f = temp_flash()
    f.write("config.json", json.dumps({"device_id": "cab-0007"}))
    return App(Hardware(), f)


def _session(app, client, ms=300):
    failed = []

    async def connected():
        try:
            await app._connected(client)
        except MQTTError as e:  # (MicroPython's Task has no exception())
            failed.append(e)

    async def main():
        task = asyncio.create_task(connected())
        await sleep_ms(ms)
        task.cancel()
        await sleep_ms(10)
    asyncio.run(main())
    if failed:
        raise failed[0]


def test_three_topics_in_one_subscribe_and_online():
    app = _app()
    c = Client(b"\x01\x01\x01")
    _session(app, c)
    t = "aed/v1/cab-0007/"
    assert c.subscribes == [((t + "cmd/#", t + "update/offer", t + "update/block"), 1)]
    assert app.online and c.published[0] == t + "status"
    assert not [x for x in app.hw.lines if "no updates" in x]


def test_refused_updates_leave_the_cabinet_online_and_say_so():
    app = _app()
    _session(app, Client(b"\x01\x80\x80"))
    assert app.online
    refused = [x for x in app.hw.lines if "update topics refused by the broker: no updates" in x]
    assert len(refused) == 1


def test_refused_commands_end_the_session():
    app = _app()
    try:
        _session(app, Client(b"\x80\x01\x01"))
        raise AssertionError("a session without commands went on")
    except MQTTError as e:
        assert e.args[0] == "suback"
    assert not app.online

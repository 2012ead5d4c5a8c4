# The MQTT client's own heap, under the MicroPython unix port (tests/test_heap_budget.py).
# Usage: micropython bench_mqtt_heap.py FIRMWARE_DIR BROKER_PORT
# Prints one JSON line: code (what importing mqttwire.py and mqtt.py takes, after compat, which
# the whole firmware shares: the way issue 14 measured 11.7 KB for the client before its
# rewrite) and state (the client after connect: object, stream, socket, timer task, and the
# parts of asyncio it loads; state_running: once run() reads and a publish went round).
import gc
import sys

sys.path.insert(0, sys.argv[1])
import asyncio  # noqa: E402,F401

import aedgate.compat  # noqa: E402,F401

gc.collect()
base = gc.mem_alloc()
import aedgate.mqttwire  # noqa: E402,F401
from aedgate.mqtt import MQTTClient  # noqa: E402

gc.collect()
result = {"code": gc.mem_alloc() - base}


class Net:
    async def open(self, host, port, ssl=None, server_hostname=None):
        return await asyncio.open_connection(host, port)


async def main():
    gc.collect()
    before = gc.mem_alloc()
    c = MQTTClient("cab-heap", Net(), "127.0.0.1", int(sys.argv[2]))
    await c.connect()
    gc.collect()
    result["state"] = gc.mem_alloc() - before
    run = asyncio.create_task(c.run())
    await c.publish("aed/v1/cab-heap/event", b"{}", 1)  # a round trip: reader and timer at work
    await asyncio.sleep_ms(20)
    gc.collect()
    result["state_running"] = gc.mem_alloc() - before
    await c.disconnect()
    await asyncio.gather(run, return_exceptions=True)  # (an older client raised here)


asyncio.run(main())
import json  # noqa: E402  (only now: an import before the measurement moves its figures)

print(json.dumps(result))

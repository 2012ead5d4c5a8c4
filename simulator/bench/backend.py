"""The two other processes of `aedsim bench`:

- `subscriber`: a separate backend (paho-mqtt, one client per broker shard, QoS 1) that records
  when each message arrives, for end-to-end latency: the simulator records when it wrote each
  PUBLISH payload, keyed by crc32(device id, payload); the backend recomputes that key from what
  it receives. It also checks every event's `seq` per device (gaps, duplicates).
- `paho_devices`: the common way of simulating devices, one paho client per device with its own
  threaded network loop (`loop_start()`), to compare against.
"""
from __future__ import annotations

import json
import os
import threading
import time
import zlib
from array import array


def _pid_host_port(url: str) -> tuple[str, int]:
    from simulator.fleet.runner import parse_broker
    return parse_broker(url)


def subscriber(urls: list[str], out: str, conn) -> None:
    """Runs until told "stop" on `conn`; writes <out>.t/.k (receive time, key) and <out>.json."""
    import paho.mqtt.client as mqtt
    from simulator.world.net import trace_key

    lock = threading.Lock()
    rt, rk = array("d"), array("Q")
    paho_lat = array("d")
    last_seq: dict[str, int] = {}
    counts = {"messages": 0, "events": 0, "gaps": 0, "duplicates": 0, "online": 0, "offline": 0}
    online: dict[str, bool] = {}
    keys: dict[str, int] = {}

    def on_message(client, userdata, msg):
        now = time.time()
        topic = msg.topic
        parts = topic.split("/")
        if len(parts) != 4:
            return
        did, kind = parts[2], parts[3]
        payload = msg.payload
        with lock:
            counts["messages"] += 1
            if did.startswith("paho-"):
                try:
                    paho_lat.append(now - json.loads(payload)["t_send"])
                except (ValueError, KeyError):
                    pass
                return
            k = keys.get(did)
            if k is None:
                k = keys[did] = zlib.crc32(did.encode())
            rt.append(now)
            rk.append(trace_key(payload, k))
            if kind == "event":
                counts["events"] += 1
                try:
                    seq = json.loads(payload)["seq"]
                except (ValueError, KeyError):
                    return
                last = last_seq.get(did)
                if last is not None and seq <= last:
                    counts["duplicates"] += 1
                elif last is not None and seq > last + 1:
                    counts["gaps"] += seq - last - 1
                if last is None or seq > last:
                    last_seq[did] = seq
            elif kind == "status":
                online[did] = b'"online": true' in payload or b'"online":true' in payload

    clients = []
    for i, url in enumerate(urls):
        host, port = _pid_host_port(url)
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-backend-%d-%d" % (os.getpid(), i))
        c.on_message = on_message
        c.connect(host, port, keepalive=60)
        c.subscribe([("aed/v1/+/status", 1), ("aed/v1/+/state", 1), ("aed/v1/+/event", 1),
                     ("aed/v1/+/ack", 1)])
        c.loop_start()
        clients.append(c)
    conn.send("ready")
    while not conn.poll(0.5):
        pass
    conn.recv()
    for c in clients:
        c.loop_stop()
        c.disconnect()
    with lock:
        with open(out + ".t", "wb") as f:
            rt.tofile(f)
        with open(out + ".k", "wb") as f:
            rk.tofile(f)
        counts["online"] = sum(1 for v in online.values() if v)
        counts["offline"] = sum(1 for v in online.values() if not v)
        counts["devices_with_events"] = len(last_seq)
        counts["paho_latency_s"] = list(paho_lat)
        with open(out + ".json", "w") as f:
            json.dump(counts, f)
    conn.send("done")


def paho_devices(url: str, count: int, interval_s: float, run_s: float, connect_s: float, conn) -> None:
    """`count` paho clients, each with its own network thread (loop_start), publishing a
    state-like QoS 1 message every `interval_s` (first one at a random offset) for `run_s`.
    Sends back what happened: connected, failures, thread errors, CPU, RSS."""
    import random
    import paho.mqtt.client as mqtt

    host, port = _pid_host_port(url)
    connected = set()
    errors: list[str] = []
    thread_errors: list[str] = []
    old_hook = threading.excepthook

    def hook(args):  # a network thread that dies (e.g. select() on a descriptor >= 1024)
        thread_errors.append("%s: %s" % (args.exc_type.__name__, args.exc_value))
        old_hook(args)
    threading.excepthook = hook
    clients = []
    t0 = time.time()
    cpu0 = sum(os.times()[:2])
    for i in range(count):
        did = "paho-%05d" % (i + 1)
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=did)
        c.on_connect = lambda cl, ud, fl, rc, props, d=did: rc == 0 and connected.add(d)
        c.will_set("aed/v1/%s/status" % did, json.dumps({"v": 1, "online": False}), 1, True)
        try:
            c.connect(host, port, keepalive=60)
            c.loop_start()
        except Exception as e:  # noqa: BLE001  (what fails, and where, is the result)
            errors.append("client %d: %s: %s" % (i + 1, type(e).__name__, e))
            break
        clients.append((did, c))
    deadline = time.time() + connect_s
    while time.time() < deadline and len(connected) < len(clients):
        time.sleep(0.1)
    t_connected = time.time() - t0
    sent = 0
    end = time.time() + run_s
    due = {did: time.time() + random.random() * interval_s for did, _ in clients}
    while time.time() < end:
        now = time.time()
        for did, c in clients:
            if due[did] <= now and did in connected:
                payload = json.dumps({"v": 1, "ts": int(now), "t_send": time.time(),
                                      "door": "closed", "lock": "locked", "battery_mv": 12700})
                c.publish("aed/v1/%s/state" % did, payload, 1, True)
                due[did] = now + interval_s
                sent += 1
        time.sleep(0.05)
    cpu = sum(os.times()[:2]) - cpu0
    with open("/proc/self/status") as f:
        rss = next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))
    result = {"clients": count, "created": len(clients), "connected": len(connected),
              "connect_s": round(t_connected, 2), "errors": errors[:5],
              "thread_errors": len(thread_errors), "thread_error_sample": thread_errors[:3],
              "threads": threading.active_count(), "sent": sent, "cpu_s": round(cpu, 2),
              "wall_s": round(time.time() - t0, 2), "rss_kib": rss,
              "max_fd": max((int(x) for x in os.listdir("/proc/self/fd")), default=0)}
    for _, c in clients:
        try:
            c.disconnect()
            c.loop_stop()
        except Exception:  # noqa: BLE001
            pass
    conn.send(result)

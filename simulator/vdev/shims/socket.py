# `socket` for the virtual device: the unix port's real sockets (loopback), with getaddrinfo as
# the ESP32 does it (docs/twin.md, "Network, TLS, Wi-Fi and sensors"):
# - it blocks the whole interpreter while lwIP's resolver waits (ports/esp32/modsocket.c
#   _getaddrinfo_inner: lwip_getaddrinfo() with the GIL released, no bytecode runs meanwhile, so
#   no asyncio task, no scheduled Timer/Pin callback, no watchdog feed);
# - a failed lookup raises OSError(-202) (lwIP EAI_FAIL negated), not the unix port's
#   "[addrinfo error -N]" text;
# - IPv4 literals are parsed without asking a DNS server (instant, never fail).
# The world's "dns" key picks the resolver: "ok", "slow" (answers after 1.5 s) or "dead" (lwIP's
# retries of one silent server, 1+1+2+3 s, then -202). lwIP's own cache of answers (kept for
# their TTL) is not modelled: under a fault every lookup waits, as once the entry has expired.
import sys
import time

_path = sys.path
sys.path = []  # an empty path makes `import` skip this file and take the built-in module
try:
    import socket as _builtin
finally:
    sys.path = _path

for _k in dir(_builtin):
    if not _k.startswith("__"):
        globals()[_k] = getattr(_builtin, _k)

EAI_FAIL = 202
_FAULTS = {"slow": (1500, False), "dead": (7000, True)}


def _numeric(host):
    parts = host.split(".")
    if len(parts) != 4:
        return False
    for p in parts:
        if not p or not p.isdigit() or int(p) > 255:
            return False
    return True


def getaddrinfo(host, port, af=0, type=0, proto=0, flags=0):
    if isinstance(host, str) and host and not _numeric(host):
        import _vdevrt
        _vdevrt.drain()
        fault = _FAULTS.get(_vdevrt.state.get("dns") or "ok")
        if fault:
            time.sleep_ms(fault[0])  # blocks everything, as lwip_getaddrinfo does
            if fault[1]:
                raise OSError(-EAI_FAIL)
    try:
        return _builtin.getaddrinfo(host, port, af, type, proto, flags)
    except OSError:
        raise OSError(-EAI_FAIL)

"""The simulated cabinet's network: Wi-Fi association plus real TCP over loopback.

At fleet scale every cabinet holds one real TCP connection, so what one connection costs here
is multiplied by tens of thousands:
- `Link` is the stream pair the firmware's MQTT client sees (`readexactly`, `write`, `drain`,
  `close`) as ONE slotted asyncio protocol object, instead of asyncio's StreamReader +
  StreamReaderProtocol + StreamWriter (+ a `_closed` future) per connection.
- Sockets can be bound to a loopback source address (127.0.0.2, 127.0.0.3, …) with
  IP_BIND_ADDRESS_NO_PORT set first: the kernel then picks the port at connect() time from the
  full 4-tuple, so each (source, broker) pair has its own ~28k ephemeral ports, and bind() does
  not search the port space (≈ 580 vs ≈ 4,100 connects/s measured on these machines).
"""
from __future__ import annotations

import asyncio
import socket
import time
import zlib
from typing import Any

# Linux value; Python's socket module only exposes the name on some builds.
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)
_READ_HIGH = 256 * 1024  # pause reading past this much unread data (a cabinet reads little)

WIFI_DOWN = "wifi down"  # SimNet's refusal while the simulated Wi-Fi is down (counted apart)
# DNS faults, as lwIP's resolver on the ESP32 shows them (docs/twin.md): getaddrinfo blocks the
# caller; a dead server is retried after 1, 1, 2 and 3 s (lwIP core/dns.c, DNS_MAX_RETRIES 4)
# before OSError(-202) (EAI_FAIL, ports/esp32/modsocket.c); a slow one answers late.
DNS_FAULTS = {"ok": None, "slow": (1.5, False), "dead": (7.0, True)}
EAI_FAIL = -202
_addr_cache: dict[tuple[str, int], tuple] = {}


def resolve(host: str, port: int) -> tuple:
    """(family, sockaddr) for host:port, looked up once per process (30k cabinets, 2 brokers)."""
    key = (host, port)
    hit = _addr_cache.get(key)
    if hit is None:
        info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        hit = _addr_cache[key] = (info[0], info[4])
    return hit


def numeric(host: str) -> bool:
    """An IPv4 literal: lwIP parses it without asking a DNS server."""
    parts = host.split(".")
    return len(parts) == 4 and all(p.isdigit() and int(p) < 256 for p in parts)


def bound_socket(source_ip: str, family: int = socket.AF_INET) -> socket.socket:
    """A non-blocking TCP socket bound to `source_ip` with the port left to connect().
    TCP_NODELAY is ours to set: asyncio only sets it on sockets whose `proto` says TCP, and a
    socket made with proto 0 waits for the delayed ACK (40 ms) after every small packet."""
    s = socket.socket(family, socket.SOCK_STREAM)
    try:
        s.setblocking(False)
        s.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.bind((source_ip, 0))
    except BaseException:
        s.close()
        raise
    return s


def trace_key(payload, device_key: int) -> int:
    """64 bits naming one message: crc32 seeded with crc32(device id), then adler32. (32 bits
    alone collide about once per 30,000 messages among 150,000.)"""
    return (zlib.crc32(payload, device_key) << 32) | zlib.adler32(payload)


class NetStats:
    """Counters shared by all cabinets of one process (no per-connection cost). `trace`, when
    a list, receives (send time, key) for every PUBLISH payload: key = trace_key(payload, crc32 of
    the device id), which a backend recomputes from what it receives (latency benchmark)."""

    __slots__ = ("opened", "closed", "open_errors", "published", "trace")

    def __init__(self) -> None:
        self.opened = 0
        self.closed = 0  # plain links whose connection is gone (opened - closed: sockets open)
        self.open_errors = 0
        self.published = 0
        self.trace: list | None = None


class Link(asyncio.Protocol):
    """One TCP connection as the MQTT client's reader and writer."""

    __slots__ = ("transport", "_buf", "_waiter", "_eof", "_exc", "_lost", "_paused",
                 "_drainer", "_stats", "_key", "_payload_next", "_held")

    def __init__(self, stats: NetStats | None = None, key: int = 0) -> None:
        self.transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._waiter: asyncio.Future | None = None
        self._eof = False
        self._exc: BaseException | None = None
        self._lost = False
        self._paused = False  # writing paused by the transport (socket buffer full)
        self._drainer: asyncio.Future | None = None
        self._stats = stats
        self._key = key  # crc32 of the device id, for trace keys
        self._payload_next = False
        self._held = None  # a PUBLISH header waiting for its payload: one send() for both

    # -- protocol callbacks ------------------------------------------------------------------
    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self._buf += data
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)
        if len(self._buf) > _READ_HIGH:
            self.transport.pause_reading()

    def eof_received(self) -> bool:
        self._eof = True
        self._wake()
        return False  # close the transport

    def connection_lost(self, exc) -> None:
        if self._stats is not None:
            self._stats.closed += 1
        self._lost = True
        self._eof = True
        if exc is not None:
            self._exc = exc
        self._wake()
        d = self._drainer
        if d is not None and not d.done():
            d.set_exception(ConnectionResetError("Connection lost"))

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        d = self._drainer
        if d is not None and not d.done():
            d.set_result(None)

    def _wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    # -- what the firmware uses ----------------------------------------------------------------
    async def readexactly(self, n: int) -> bytes:
        buf = self._buf
        while len(buf) < n:
            if self._exc is not None:
                raise self._exc
            if self._eof:
                raise asyncio.IncompleteReadError(bytes(buf), n)
            self._waiter = asyncio.get_running_loop().create_future()
            if len(buf) <= _READ_HIGH and self.transport is not None:
                self.transport.resume_reading()
            try:
                await self._waiter
            finally:
                self._waiter = None
        data = bytes(buf[:n])
        del buf[:n]
        return data

    def write(self, data) -> None:
        held = self._held
        if held is not None:  # this is the payload of the header we held back
            self._held = None
            if self._payload_next:
                self._payload_next = False
                self._stats.trace.append((time.time(), trace_key(data, self._key)))
            self.transport.write(held + data)
            return
        if data and data[0] & 0xF0 == 0x30:  # PUBLISH header: the payload follows at once
            st = self._stats
            if st is not None:
                st.published += 1
                self._payload_next = st.trace is not None
            self._held = bytes(data)
            return
        self.transport.write(data)

    def _flush(self) -> None:
        if self._held is not None:
            held, self._held = self._held, None
            self.transport.write(held)

    def drain(self) -> asyncio.Future:
        self._flush()
        # A plain future, not a coroutine: the firmware wraps drain() in wait_for, which makes
        # a Task out of a coroutine on every publish but takes a future as it is.
        fut = asyncio.get_running_loop().create_future()
        if self._lost:
            fut.set_exception(ConnectionResetError("Connection lost"))
        elif self._paused:
            self._drainer = fut
        else:
            fut.set_result(None)
        return fut

    def close(self) -> None:
        if self.transport is not None:
            self._flush()
            self.transport.close()

    def is_closing(self) -> bool:
        return self.transport is None or self.transport.is_closing()


class SimNet:
    """Wi-Fi plus TCP: real loopback connections to the broker, cut when the Wi-Fi goes down."""

    __slots__ = ("up", "source_ip", "dns", "_links", "_stats", "_key", "__weakref__")

    def __init__(self, source_ip: str | None = None, stats: NetStats | None = None,
                 device_id: str = "") -> None:
        self.up = True
        self.source_ip = source_ip
        self.dns: tuple | None = None  # (seconds a lookup blocks, then fails?) or None: answers at once
        self._links: list = []  # Link (plain TCP) or StreamWriter (TLS)
        self._stats = stats
        self._key = zlib.crc32(device_id.encode()) if stats is not None else 0

    def isconnected(self) -> bool:
        return self.up

    async def join(self) -> None:
        """The station has an address, or OSError after an association attempt."""
        if not self.up:
            await asyncio.sleep(0.5)  # an association attempt that fails
            raise OSError(113, WIFI_DOWN)

    def getaddrinfo(self, host: str, port: int) -> tuple:
        """socket.getaddrinfo as on the ESP32: a DNS fault blocks the caller (here the worker's
        whole loop, there the whole board) and a dead server ends in OSError(-202). IP literals
        need no DNS."""
        if self.dns is not None and not numeric(host):
            delay, fails = self.dns
            time.sleep(delay)
            if fails:
                raise OSError(EAI_FAIL)
        return resolve(host, port)

    async def open(self, host, port, ssl=None, server_hostname=None):
        """join() + getaddrinfo() + connect(), for callers other than the firmware's link."""
        await self.join()
        return await self.connect(resolve(host, port), ssl, server_hostname)

    async def connect(self, addr, ssl=None, server_hostname=None):
        """Streams to `addr` (from getaddrinfo) whose close() closes the socket."""
        if not self.up:
            raise OSError(113, WIFI_DOWN)
        try:
            if ssl is not None:
                return self._keep(*await self._open_tls(addr, ssl, server_hostname))
            link = await self._open_plain(addr)
        except OSError:
            if self._stats is not None:
                self._stats.open_errors += 1
            raise
        if self._stats is not None:
            self._stats.opened += 1
        if not self.up:  # the Wi-Fi went down while we were connecting
            link.transport.abort()
            raise OSError(113, WIFI_DOWN)
        self._links = [l for l in self._links if not l.is_closing()]
        self._links.append(link)
        return link, link

    async def _open_plain(self, address) -> Link:
        loop = asyncio.get_running_loop()
        family, addr = address
        if self.source_ip:
            sock = bound_socket(self.source_ip, family)
        else:
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            await loop.sock_connect(sock, addr)
            link = Link(self._stats, self._key)
            await loop.create_connection(lambda: link, sock=sock)
        except BaseException:
            sock.close()
            raise
        return link

    async def _open_tls(self, address, ssl, server_hostname):
        kw: dict[str, Any] = {"ssl": ssl, "server_hostname": server_hostname}
        family, addr = address
        if self.source_ip:
            sock = bound_socket(self.source_ip, family)
            try:
                await asyncio.get_running_loop().sock_connect(sock, addr)
            except BaseException:
                sock.close()
                raise
            return await asyncio.open_connection(sock=sock, **kw)
        return await asyncio.open_connection(addr[0], addr[1], **kw)

    def _keep(self, reader, writer):
        self._links = [l for l in self._links if not l.is_closing()]
        self._links.append(writer)
        return reader, writer

    def set_up(self, up: bool) -> None:
        self.up = up
        if not up:
            for l in self._links:
                if l.transport is not None:
                    l.transport.abort()  # no FIN handshake: the link just vanishes
            self._links.clear()

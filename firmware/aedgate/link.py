# The cabinet's way to its broker: the broker's address looked up once and kept, and every
# connection it opens closed on every path (docs/twin.md, "Network, TLS, Wi-Fi and sensors").
#
# Why not simply asyncio.open_connection(host, port):
# - it calls socket.getaddrinfo() on every connect, and on the ESP32 that call blocks the whole
#   program (lwIP retries each silent DNS server for seconds; no task, no timer callback, no
#   watchdog feed runs meanwhile): here the name is looked up for the first connect, and again
#   only after `resolve_after` failed connects in a row, and each lookup's stall is logged;
# - MicroPython's Stream.close() does nothing, only `await wait_closed()` closes the socket
#   (extmod/asyncio/stream.py, v1.23-v1.28), and open_connection leaves its socket to the garbage
#   collector when connect() fails or the caller is cancelled: our stream's close() closes, and
#   open_stream() closes its socket on any failure.
from aedgate.compat import MICROPYTHON, asyncio, ticks_diff, ticks_ms


class Broker:
    """What the MQTT client opens its connection through: `open(host, port, ssl,
    server_hostname)`. Built on the board's network (`hw.net`): `join()` (Wi-Fi up or OSError),
    `getaddrinfo(host, port)` (blocking, as on the board) and `connect(addr, ssl,
    server_hostname)` (streams whose close() closes)."""

    def __init__(self, net, log, resolve_after=5):
        self.net = net
        self.log = log
        self.resolve_after = resolve_after
        self._cached = None    # (host, port, address) of the last successful lookup
        self.failures = 0      # connects in a row that failed with the cached address
        self.lookups = 0       # name lookups made (each one stalls the program)
        self.stall_ms = 0      # the longest of them

    def isconnected(self):
        return self.net.isconnected()

    def address(self, host, port):
        c = self._cached
        same = c is not None and c[0] == host and c[1] == port
        if same and self.failures < self.resolve_after:
            return c[2]
        t0 = ticks_ms()
        try:
            addr = self.net.getaddrinfo(host, port)
        except OSError as e:
            self._stalled(t0)
            self.log("dns: %s failed after %d ms: %r" % (host, ticks_diff(ticks_ms(), t0), e))
            if not same:
                raise
            # The old address is still the best guess: keep it, ask again after another round.
            self.failures = 0
            return c[2]
        self._stalled(t0)
        self.log("dns: %s looked up in %d ms" % (host, ticks_diff(ticks_ms(), t0)))
        self._cached = (host, port, addr)
        self.failures = 0
        return addr

    def _stalled(self, t0):
        self.lookups += 1
        self.stall_ms = max(self.stall_ms, ticks_diff(ticks_ms(), t0))

    async def open(self, host, port, ssl=None, server_hostname=None):
        await self.net.join()
        addr = self.address(host, port)
        try:
            streams = await self.net.connect(addr, ssl, server_hostname)
        except BaseException:  # refused, timed out, cancelled: the address may be stale
            self.failures += 1
            raise
        self.failures = 0
        return streams


if MICROPYTHON:
    import socket
    from errno import EINPROGRESS

    from asyncio import core

    class Stream(asyncio.StreamReader):  # MicroPython: one Stream class reads and writes
        def close(self):
            # The base class's close() is a no-op; wait_closed() is where it closes the socket.
            self.s.close()

    def _writable(s):
        yield core._io_queue.queue_write(s)

    def lookup(host, port):
        """socket.getaddrinfo as open_connection uses it; blocks (on the ESP32: lwIP's DNS)."""
        return socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)[0]

    async def open_stream(ai, ssl=None, server_hostname=None):
        """open_connection() without its DNS lookup, closing the socket on every failure."""
        s = socket.socket(ai[0], ai[1], ai[2])
        try:
            s.setblocking(False)
            try:
                s.connect(ai[-1])
            except OSError as e:
                if e.errno != EINPROGRESS:
                    raise
            if ssl:
                s = ssl.wrap_socket(s, server_hostname=server_hostname, do_handshake_on_connect=False)
                s.setblocking(False)
            await _writable(s)
        except BaseException:
            s.close()
            raise
        ss = Stream(s)
        return ss, ss
else:
    import socket

    def lookup(host, port):
        return socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)[0]

    async def open_stream(ai, ssl=None, server_hostname=None):
        # CPython's writer.close() closes, and open_connection closes its socket on failure.
        return await asyncio.open_connection(ai[4][0], ai[4][1], ssl=ssl, server_hostname=server_hostname)

"""The fleet worker's event loop selector (simulator/fleet/loophealth.py BatchedEpoll): at most
BATCH ready sockets a turn, every ready socket served in turn, and a loop on it works."""
import asyncio
import selectors
import socket

from simulator.fleet.loophealth import BatchedEpoll, fleet_loop


def test_at_most_a_batch_per_turn_and_every_ready_socket_in_turn():
    sel = BatchedEpoll()
    pairs = [socket.socketpair() for _ in range(3 * BatchedEpoll.BATCH + 5)]
    try:
        for a, b in pairs:
            sel.register(a, selectors.EVENT_READ, b)
            b.send(b"x")  # every socket ready, and it stays ready (nothing is read)
        seen = set()
        for _ in range(4):
            ready = sel.select(0)
            assert 0 < len(ready) <= BatchedEpoll.BATCH
            seen.update(key.fd for key, _ in ready)
        assert len(seen) == len(pairs)  # level-triggered: the rest come in the next turns
        assert sel.select(0.001)        # (a timeout, as the loop passes one)
    finally:
        sel.close()
        for a, b in pairs:
            a.close()
            b.close()


def test_a_loop_on_it_runs_sockets_and_timers():
    async def main():
        r, w = await asyncio.open_connection(*server.getsockname())
        w.write(b"ping\n")
        await w.drain()
        line = await asyncio.wait_for(r.readline(), 5)
        w.close()
        await asyncio.sleep(0.01)
        return line

    server = socket.create_server(("127.0.0.1", 0))
    server.setblocking(False)

    async def serve():
        loop = asyncio.get_running_loop()
        conn, _ = await loop.sock_accept(server)
        data = await loop.sock_recv(conn, 16)
        await loop.sock_sendall(conn, data)
        conn.close()

    async def both():
        s = asyncio.create_task(serve())
        line = await main()
        await s
        return line

    with asyncio.Runner(loop_factory=fleet_loop) as runner:
        assert runner.run(both()) == b"ping\n"
        assert isinstance(runner.get_loop()._selector, BatchedEpoll)
    server.close()

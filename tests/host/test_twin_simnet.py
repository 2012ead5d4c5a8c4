"""SimNet (the CPython fleet's network) resolves names as the ESP32 does: a DNS fault blocks the
caller, a dead server ends in OSError(-202), IP literals need no DNS; and the firmware's Broker
keeps the address it has through a dead DNS (issue 10, point 3)."""
import asyncio
import time

from aedgate.link import Broker
from simulator.world.hardware import CabinetWorld, SimClock
from simulator.world.net import DNS_FAULTS, SimNet


def test_dns_faults_block_and_fail_like_lwip():
    net = SimNet()
    world = CabinetWorld("cab-dns", SimClock(), net)
    assert world.apply({"dns": "dead"}) == [] and net.dns == DNS_FAULTS["dead"]
    assert world.apply({"dns": "flaky"}) != []
    net.dns = (0.3, True)  # a shorter dead server, same behaviour
    t0 = time.monotonic()
    try:
        net.getaddrinfo("localhost", 1883)
        raise AssertionError("a dead DNS answered")
    except OSError as e:
        assert e.args == (-202,)
    assert time.monotonic() - t0 >= 0.3  # blocked, as lwip_getaddrinfo blocks the board
    t0 = time.monotonic()
    assert net.getaddrinfo("127.0.0.1", 1883)[1] == ("127.0.0.1", 1883)  # literal: no DNS
    assert time.monotonic() - t0 < 0.1
    net.dns = (0.2, False)  # slow but answers
    assert net.getaddrinfo("localhost", 1883)[1][1] == 1883


def test_broker_keeps_its_address_through_a_dead_dns():
    net = SimNet()
    lines = []
    broker = Broker(net, lines.append, resolve_after=2)
    addr = broker.address("localhost", 1883)
    net.dns = (0.1, True)
    for _ in range(5):
        broker.failures += 1  # connects that failed
        assert broker.address("localhost", 1883) == addr
    assert broker.lookups <= 4 and any("failed after" in l for l in lines)

"""A scaled-down national fleet: 500 real-firmware cabinets in 2 worker processes over 2 Mosquitto
shards, bound to 2 loopback source addresses, seen by a paho backend on each shard."""
import json
import re
import socket
import subprocess
import sys
from collections import Counter, defaultdict

from tests.fixtures import ROOT, Backend, Mosquitto

CABINETS = 500
RUN_S = 26


def test_source_socket_has_bind_address_no_port_before_bind():
    from simulator.world.net import IP_BIND_ADDRESS_NO_PORT, bound_socket
    s = bound_socket("127.0.0.3")
    try:
        assert s.getsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT) == 1
        assert s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
        assert s.getsockname() == ("127.0.0.3", 0)  # no port taken until connect()
    finally:
        s.close()


def test_plan_refuses_a_share_beyond_the_open_files_limit():
    import resource
    import pytest
    from simulator.fleet.workers import RunSpec, ScaleError, check_fd_budget, slices
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20  # what check_fd_budget assumes for "unlimited"
    assert slices(10, 3) == [(1, 4), (5, 3), (8, 3)]
    with pytest.raises(ScaleError, match="--workers"):
        check_fd_budget(RunSpec(cabinets=hard + 10, brokers=["mqtt://127.0.0.1:1"], workers=1))


def test_500_cabinets_two_workers_two_shards(tmp_path):
    shards = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        shards.append(Mosquitto(tmp_path / name, extra_conf="max_connections -1\nset_tcp_nodelay true\n"
                                "log_type notice\nconnection_messages true\n").start())
    backends = [Backend(s.url) for s in shards]
    out = tmp_path / "summary.json"
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "simulator.cli", "run", "--cabinets", str(CABINETS),
             "--workers", "2", "--broker", ",".join(s.url for s in shards), "--ramp", "500",
             "--heartbeat", "10", "--duration", str(RUN_S), "--flash", "memory",
             "--source-ips", "2", "--seed", "7", "--plain", "--every", "5", "--json", str(out)],
            cwd=str(ROOT), capture_output=True, text=True, timeout=RUN_S + 60)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    finally:
        for b in backends:
            b.close()
        for s in shards:
            s.stop()

    # The JSON summary: last stdout line and --json file agree, and say what happened.
    last = json.loads(proc.stdout.strip().splitlines()[-1])
    summary = json.loads(out.read_text())
    assert last == summary
    assert summary["cabinets"] == CABINETS and summary["workers"] == 2
    assert summary["online"] == CABINETS and summary["started"] == CABINETS
    assert summary["errors"] == 0 and summary["links_lost"] == 0, summary["recent_errors"]
    assert summary["all_online_s"] is not None and summary["connect_rate_per_s"] > 0
    assert summary["source_ips"] == ["127.0.0.2", "127.0.0.3"]
    assert [w["cabinets"] for w in summary["per_worker"]] == [250, 250]
    assert all(0 < w["kib_per_cabinet"] < 256 for w in summary["per_worker"])
    assert "online" in proc.stdout and "msgs/s" in proc.stdout  # the --plain progress lines

    # The backends: every cabinet online on its own shard, every event, no seq gaps.
    ids = ["cab-%04d" % n for n in range(1, CABINETS + 1)]
    seqs = defaultdict(list)
    states = Counter()
    online = {}
    for shard, b in enumerate(backends):
        for topic, payload, retain, t in b.messages:
            did, kind = topic.split("/")[2:4]
            assert (int(did[4:]) - 1) % 2 == shard, "cabinet %s on the wrong shard" % did
            obj = json.loads(payload)
            if kind == "event":
                seqs[did].append(obj["seq"])
            elif kind == "state":
                states[did] += 1
            elif kind == "status" and obj.get("online"):
                online[did] = True
    assert sorted(online) == ids
    for did in ids:
        s = seqs[did]
        assert s and s == list(range(1, len(s) + 1)), (did, s)  # boot is seq 1; no gaps, no dups
        assert states[did] >= 2, (did, states[did])  # the state at boot and heartbeats after
    assert sum(len(s) for s in seqs.values()) == summary["events"]

    # The source addresses really were used, about evenly, on both shards.
    for s in shards:
        log = (s.workdir / ("mosquitto-%d.log" % s.port)).read_text()
        by_src = Counter(re.findall(r"New connection from (127\.0\.0\.\d+):\d+ on port %d" % s.port, log))
        assert by_src["127.0.0.2"] >= 100 and by_src["127.0.0.3"] >= 100, by_src

"""The embedded default broker behaves as the docs show, tested with the real mosquitto_pub and
mosquitto_sub (issue 13 §2 point 3: on amqtt, `mosquitto_pub` world control at QoS 0 was lost
4 times out of 4, and `mosquitto_sub -t nothing/here` received every cabinet's retained status
and state). `aedsim run` is started as a newcomer would, without --broker."""
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time

import pytest

from tests.fixtures import ROOT, require_tool

HOW = "install the Debian package mosquitto-clients (`make test` does)"


@pytest.fixture(params=["auto", "amqtt"])
def aedsim_run(tmp_path, request):
    """`aedsim run` as the docs show it (auto: Mosquitto, installed by `make test`), and with the
    amqtt fallback a machine without Mosquitto gets."""
    proc = subprocess.Popen([sys.executable, "-m", "simulator.cli", "run", "--cabinets", "2",
                             "--plain", "--duration", "60", "--flash-dir", str(tmp_path / "flash"),
                             "--embedded", request.param],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=dict(os.environ, PYTHONPATH=str(ROOT)))
    lines = []
    deadline = time.time() + 20
    port = None
    while time.time() < deadline and port is None:
        line = proc.stdout.readline()
        lines.append(line)
        m = re.search(r"embedded MQTT broker: mqtt://127\.0\.0\.1:(\d+) \((\w+)", line)
        if m:
            assert m.group(2) == {"auto": "Mosquitto", "amqtt": "amqtt"}[request.param], line
            port = m.group(1)
    assert port, "no embedded broker announced: %r" % lines
    try:
        yield port, lines
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def sub(port, topic, count=None, wait_s=3):
    exe = require_tool("mosquitto_sub", HOW)
    cmd = [exe, "-p", port, "-t", topic, "-v", "-W", str(wait_s)]
    if count:
        cmd += ["-C", str(count)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_world_control_and_retained_messages_as_the_docs_show(aedsim_run):
    port, _ = aedsim_run
    # (its 2 s of listening overlap the rest, instead of coming first)
    nothing = sub(port, "nothing/here", wait_s=2)
    status = sub(port, "aed/v1/+/status", count=2, wait_s=10)
    out = status.communicate(timeout=15)[0]
    assert out.count("aed/v1/cab-000") == 2, out  # the control: both cabinets' retained status

    events = sub(port, "aed/v1/cab-0002/event", wait_s=20)
    time.sleep(0.5)
    # The command `aedsim --help` shows, run literally (PORT filled in), at QoS 0.
    help_text = subprocess.run([sys.executable, "-m", "simulator.cli", "--help"], cwd=ROOT,
                               capture_output=True, text=True, check=True).stdout
    shown = next(line.strip() for line in help_text.splitlines()
                 if line.strip().startswith("mosquitto_pub"))
    argv = shlex.split(shown.replace("PORT", port))
    argv[0] = require_tool("mosquitto_pub", HOW)
    for i in range(4):
        for state in ("open", "closed"):
            subprocess.run([a.replace('"open"', json.dumps(state)) for a in argv], check=True,
                           timeout=10)
            time.sleep(0.4)
    time.sleep(1.0)
    events.send_signal(signal.SIGINT)
    got = [json.loads(line.split(" ", 1)[1]) for line in events.communicate(timeout=25)[0].splitlines()
           if line.startswith("aed/v1/cab-0002/event ")]
    types = [e["type"] for e in got]
    assert types.count("door_opened") == 4 and types.count("door_closed") == 4, types
    # and nothing else for a filter that matches nothing (mosquitto_sub -W prints "Timed out")
    assert nothing.communicate(timeout=10)[0].strip() in ("", "Timed out")


def test_the_embedded_broker_ends_with_aedsim_even_on_sigkill(tmp_path):
    import socket
    proc = subprocess.Popen([sys.executable, "-m", "simulator.cli", "run", "--cabinets", "1",
                             "--plain", "--duration", "60", "--flash-dir", str(tmp_path / "flash")],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=dict(os.environ, PYTHONPATH=str(ROOT)))
    try:
        m = re.search(r"embedded MQTT broker: mqtt://127\.0\.0\.1:(\d+)", proc.stdout.readline())
        assert m
        port = int(m.group(1))
        socket.create_connection(("127.0.0.1", port), 2).close()  # the control: it listens
    finally:
        proc.kill()
        proc.wait(5)
    deadline = time.time() + 5
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
        except OSError:
            break  # nobody listens: the broker went with aedsim
        assert time.time() < deadline, "the embedded broker outlived a SIGKILLed aedsim"
        time.sleep(0.1)

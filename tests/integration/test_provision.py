"""A technician's day on a virtual device: `aedgate provision` it against a real Mosquitto, see it
come online, open its door through the simulated world, run `aedgate selftest`, re-provision,
and get one-line errors for the ports and boards that go wrong. No hardware, loopback only."""
import json
import os
import pty
import re
import subprocess
import sys
import threading
import time
import tty
from pathlib import Path

import pytest
import serial

from host_tools import fleetkeys
from tests.integration.test_vdev import VDev, vdev_factory  # noqa: F401  (fixture)

ROOT = Path(__file__).resolve().parents[2]
DEVICE = "cab-0101"


def aedgate(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "host_tools.cli", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture
def fleet_key(tmp_path):
    path = tmp_path / "fleet.key"
    fleetkeys.save(path, fleetkeys.generate())
    return path


def provision(port, broker, key, *extra):
    return aedgate("provision", "--port", port, "--device-id", DEVICE, "--broker", broker,
                   "--fleet-key", str(key), "--wifi-ssid", "lab", "--wifi-password", "secret", *extra)


def summary(out):
    m = re.search(r"(\d+) files \((\d+) copied, (\d+) unchanged, (\d+) removed\), ([\d.]+) (k?B) sent in ([\d.]+) s", out)
    assert m, out
    sent = float(m.group(5)) * (1024 if m.group(6) == "kB" else 1)
    return {"files": int(m.group(1)), "copied": int(m.group(2)), "unchanged": int(m.group(3)),
            "removed": int(m.group(4)), "bytes": sent, "seconds": float(m.group(7))}


def retained(port, topic, timeout=5.0):
    """The retained message a newcomer gets on `topic` (the project's backend library)."""
    from tests.fixtures import Backend
    be = Backend("mqtt://127.0.0.1:%d" % port, topics=(topic,))
    try:
        deadline = time.monotonic() + timeout
        while not be.messages and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        be.close()
    assert be.messages and be.messages[0][2], "no retained message on %s" % topic
    return json.loads(be.messages[0][1])


def one_line_error(r, text):
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    err = r.stderr.strip()
    assert "\n" not in err and err.startswith("aedgate: error: "), err
    assert text in err, err
    return err


def test_provision_online_door_selftest_and_idempotent_rerun(vdev_factory, mosquitto, backend, fleet_key):
    v = vdev_factory("--device-id", DEVICE)
    r = provision(v.path, mosquitto.url, fleet_key)
    assert r.returncode == 0, r.stderr
    first = summary(r.stdout)
    pkg = json.loads((ROOT / "firmware/package.json").read_text())
    assert first["files"] == len(pkg["urls"]) + 1 and first["copied"] == first["files"]
    for dest, _ in pkg["urls"]:
        assert "%s" % dest in r.stdout and (v.flash / dest).is_file()
    assert not (v.flash / "provisioning").exists()
    cfg = json.loads((v.flash / "config.json").read_text())
    key = fleetkeys.derive_device_key(fleetkeys.load(fleet_key), DEVICE)
    assert cfg["keys"] == [{"kid": "", "key": key.hex()}]
    assert (cfg["device_id"], cfg["broker_port"], cfg["wifi_ssid"]) == (DEVICE, mosquitto.port, "lab")

    # The board was reset: the cabinet app runs, comes online and reports its state.
    backend.wait_for(lambda t, o: t == "aed/v1/%s/status" % DEVICE and o.get("online") is True, 20)
    backend.wait_for(lambda t, o: t == "aed/v1/%s/state" % DEVICE and o.get("door") == "closed", 10)
    assert retained(mosquitto.port, "aed/v1/%s/status" % DEVICE)["online"] is True

    # The world, over the broker: the door opens.
    backend.publish("aedsim/world/%s" % DEVICE, json.dumps({"door": "open"}))
    _, ev = backend.wait_for(lambda t, o: t == "aed/v1/%s/event" % DEVICE and o.get("type") == "door_opened", 10)
    assert ev["seq"] >= 2

    # Selftest on the board: a table, exit 0 with the door reported open.
    r = aedgate("selftest", "--port", v.path)
    assert r.returncode == 0, r.stdout + r.stderr
    rows = {ln.split()[0]: ln for ln in r.stdout.splitlines()[1:-1]}
    assert set(rows) >= {"config", "door", "lock", "siren", "battery", "mains", "temperature", "wifi",
                         "broker", "time_floor", "outbox", "provisioning"}
    assert "open" in rows["door"] and "pass" in rows["broker"]
    assert "not confirmable" in rows["lock"]  # no lock_sense fitted yet
    assert re.search(r"12 checks: \d+ pass, \d+ warn, \d+ skip, 0 fail", r.stdout)

    # Unchanged re-run: nothing copied, verified all the same, faster.
    r = provision(v.path, mosquitto.url, fleet_key)
    assert r.returncode == 0, r.stderr
    again = summary(r.stdout)
    assert (again["copied"], again["bytes"]) == (0, 0) and again["unchanged"] == first["files"]
    assert again["seconds"] < first["seconds"], (first, again)

    # New pads, over USB at the cabinet (signed, verified by the firmware), then "AED checked"
    # over MQTT: both accepted, and the state reports the new date.
    r = aedgate("service", "--port", v.path, "--fleet-key", str(fleet_key), "--device", DEVICE,
                "--pads-expiry", "2031-05-31")
    assert r.returncode == 0 and "accepted" in r.stdout, r.stdout + r.stderr
    backend.wait_for(lambda t, o: t == "aed/v1/%s/state" % DEVICE and o.get("pads_expiry") == "2031-05-31", 20)
    r = aedgate("service", "--broker", mosquitto.url, "--fleet-key", str(fleet_key), "--device", DEVICE,
                "--aed-checked")
    assert r.returncode == 0 and "aed_checked accepted" in r.stdout, r.stdout + r.stderr

    # A lock sense switch fitted: only config.json changes; now the pulse is confirmed...
    r = provision(v.path, mosquitto.url, fleet_key, "--pin", "lock_sense=23")
    assert r.returncode == 0, r.stderr
    assert summary(r.stdout)["copied"] == 1 and "config.json" in r.stdout.split("copied")[0].splitlines()[-1]
    r = aedgate("selftest", "--port", v.path)
    assert r.returncode == 0 and "lock_sense confirmed" in r.stdout, r.stdout + r.stderr
    # ...and a jammed bolt fails the selftest with a non-zero exit.
    backend.publish("aedsim/world/%s" % DEVICE, json.dumps({"lock": "jammed"}))
    time.sleep(0.5)
    r = aedgate("selftest", "--port", v.path)
    assert r.returncode == 1, r.stdout + r.stderr
    assert re.search(r"^lock\s+FAIL\s+lock_sense did not follow", r.stdout, re.M), r.stdout


def test_mpy_install_boots_and_switching_back_removes_stale_files(vdev_factory, mosquitto, backend, fleet_key):
    v = vdev_factory("--device-id", DEVICE)
    r = provision(v.path, mosquitto.url, fleet_key, "--mpy", "--no-reset")
    assert r.returncode == 0, r.stderr
    assert (v.flash / "aedgate/app.mpy").is_file() and not (v.flash / "aedgate/app.py").exists()
    assert (v.flash / "main.py").is_file() and (v.flash / "boot.py").is_file()  # run by name
    r = aedgate("selftest", "--port", v.path)  # resets the board at the end
    assert r.returncode == 0, r.stdout + r.stderr
    backend.wait_for(lambda t, o: t == "aed/v1/%s/status" % DEVICE and o.get("online") is True, 20)
    r = provision(v.path, mosquitto.url, fleet_key)
    assert r.returncode == 0, r.stderr
    assert "removed aedgate/app.mpy" in r.stdout
    assert not (v.flash / "aedgate/app.mpy").exists() and (v.flash / "aedgate/app.py").is_file()


def test_full_flash_is_one_line_and_leaves_a_marker_that_the_next_run_reports(vdev_factory, mosquitto, fleet_key):
    v = vdev_factory("--device-id", DEVICE, "--flash-size", "128k")  # the .py files need ~150k
    r = provision(v.path, mosquitto.url, fleet_key)
    err = one_line_error(r, "flash is full")
    assert "NOT fully provisioned" in err
    assert (v.flash / "provisioning").exists()
    # Compiled files fit: the next run says what it found, replaces the .py files and finishes.
    r = provision(v.path, mosquitto.url, fleet_key, "--mpy")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "did not finish" in r.stdout
    assert not (v.flash / "provisioning").exists()


def test_wrong_port(fleet_key):
    r = aedgate("provision", "--port", "/dev/ttyNOPE0", "--device-id", DEVICE, "--broker",
                "mqtt://127.0.0.1:1883", "--fleet-key", str(fleet_key))
    one_line_error(r, "no such port /dev/ttyNOPE0")


def test_busy_port(vdev_factory):
    v = vdev_factory()
    with serial.Serial(v.path, 115200, exclusive=True):  # a console left open elsewhere
        r = aedgate("selftest", "--port", v.path)
    one_line_error(r, "is busy")


def _fake_port(answer):
    """A pty whose far end answers every write with `answer` (None: never answers)."""
    master, slave = pty.openpty()
    tty.setraw(slave)
    stop = threading.Event()

    def run():
        while not stop.is_set():
            try:
                data = os.read(master, 1024)
            except OSError:
                return
            if data and answer is not None:
                os.write(master, answer)
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return os.ttyname(slave), (master, slave, stop)


def _close_fake(handles):
    master, slave, stop = handles
    stop.set()
    os.close(slave)
    os.close(master)


def test_not_micropython(fleet_key):
    path, h = _fake_port(b"\x00\xfe$GPGGA,garbage*47\r\nERROR\r\n")
    try:
        t0 = time.monotonic()
        r = aedgate("provision", "--port", path, "--device-id", DEVICE, "--broker", "mqtt://127.0.0.1:1883",
                    "--fleet-key", str(fleet_key), "--timeout", "2")
        assert time.monotonic() - t0 < 20
    finally:
        _close_fake(h)
    one_line_error(r, "not as MicroPython")


def test_no_answer_times_out(fleet_key):
    path, h = _fake_port(None)
    try:
        t0 = time.monotonic()
        r = aedgate("selftest", "--port", path, "--timeout", "2")
        assert time.monotonic() - t0 < 20
    finally:
        _close_fake(h)
    one_line_error(r, "no answer from %s within 2s" % path)

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
WDT_S = 30  # the app's watchdog (board.Watchdog's default timeout)


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


def fit_a_short_strike(port):
    """config.json for a cabinet whose strike needs a 0.5 s pulse, put on the board before
    provisioning (which keeps keys it does not manage). With the default 3 s pulse every selftest
    after a boot waits 9 s for the coil (lock.py assumes a hot coil after a reset: up to
    _COOL_RATIO x the pulse); the lock checks prove the same with 0.5 s."""
    from tests.integration.test_vdev import mpremote
    r = mpremote(port, "exec", "with open('config.json', 'w') as f:\n    f.write('{\"lock_pulse_ms\": 500}')")
    assert r.returncode == 0, r.stderr


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
    fit_a_short_strike(v.path)
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
    assert cfg["lock_pulse_ms"] == 500  # the board's own setting, kept

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

    # A command signed for another cabinet is refused by the host tool, naming the board.
    r = aedgate("service", "--port", v.path, "--fleet-key", str(fleet_key), "--device", "cab-0999",
                "--pads-expiry", "2031-05-31")
    assert r.returncode != 0 and "this board is %s, not cab-0999" % DEVICE in r.stderr, r.stdout + r.stderr
    assert "unknown_kid" not in r.stdout + r.stderr

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
    fit_a_short_strike(v.path)
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
    # 160k: the .mpy files fit, the .py files (181 KB of source with the release and slot modules) do not.
    v = vdev_factory("--device-id", DEVICE, "--flash-size", "160k")
    r = provision(v.path, mosquitto.url, fleet_key)
    err = one_line_error(r, "flash is full")
    assert "NOT fully provisioned" in err
    assert (v.flash / "provisioning").exists()
    # Compiled files fit: the next run says what it found, replaces the .py files and finishes.
    r = provision(v.path, mosquitto.url, fleet_key, "--mpy")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "did not finish" in r.stdout
    assert not (v.flash / "provisioning").exists()


def test_full_flash_with_mpy_does_not_suggest_mpy(vdev_factory, mosquitto, fleet_key):
    v = vdev_factory("--device-id", DEVICE, "--flash-size", "48k")  # not even the .mpy files fit
    r = provision(v.path, mosquitto.url, fleet_key, "--mpy")
    err = one_line_error(r, "flash is full")
    assert "--mpy" not in err and "do not fit either" in err, err


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


EXEC_S = 45  # issue 10: "a 45 s mpremote exec on that running cabinet is not cut by its watchdog"


def test_a_running_cabinet_survives_an_mpremote_exec_longer_than_its_watchdog(vdev_factory, mosquitto, backend,
                                                                            fleet_key):
    """The app arms the WDT (30 s). mpremote interrupts main.py and enters the raw REPL by soft
    reset: the WDT keeps running (ports/esp32/main.c), the timers stop. boot.py runs again on
    that soft reset and feeds the WDT from a hardware timer, so a long command is not cut.
    The command sleeps 45 s, as issue 10 asks (with no feeding the board would reset at most
    30 s after the app's last feed, before mpremote even connected). It slept 34 s while the
    suite ran in one process; in four workers the 11 s more cost no wall-clock time to speak of."""
    assert "def __init__(self, timeout_ms=%d):" % (WDT_S * 1000) in (ROOT / "firmware/board.py").read_text()
    v = vdev_factory("--device-id", DEVICE)
    r = provision(v.path, mosquitto.url, fleet_key)
    assert r.returncode == 0, r.stderr
    backend.wait_for(lambda t, o: t == "aed/v1/%s/status" % DEVICE and o.get("online") is True, 20)
    try:
        r = subprocess.run([str(Path(sys.executable).parent / "mpremote"), "connect", v.path, "exec",
                            "import time\ntime.sleep(%d)\nprint('still here')" % EXEC_S],
                           capture_output=True, text=True, timeout=EXEC_S + 30)
        out = r.stdout
    except subprocess.TimeoutExpired:  # the board reset under mpremote, which waits for ever
        out = "(mpremote hung: the board reset)"
    assert "still here" in out, (out, v.log()[-2000:])
    assert "watchdog timeout" not in v.log()


def test_a_pin_the_chip_refuses_is_refused_before_the_board_is_touched(fleet_key):
    r = aedgate("provision", "--port", "/dev/ttyNOPE0", "--device-id", DEVICE, "--broker",
                "mqtt://127.0.0.1:1883", "--fleet-key", str(fleet_key), "--pin", "lock=40")
    err = one_line_error(r, "--pin lock=40")
    assert "GPIO40" in err and "no such port" not in err
    r = aedgate("provision", "--port", "/dev/ttyNOPE0", "--device-id", DEVICE, "--broker",
                "mqtt://127.0.0.1:1883", "--fleet-key", str(fleet_key), "--pin", "siren=35")
    one_line_error(r, "input only")


def test_a_pin_the_chip_refuses_in_config_json_never_stops_boot(vdev_factory, mosquitto, backend, fleet_key):
    """A config.json edited by hand with lock on GPIO40: Pin(40) raises on the ESP32; had it
    raised in boot.py, the board would skip main.py. The cabinet reports it and runs."""
    v = vdev_factory("--device-id", DEVICE)
    r = provision(v.path, mosquitto.url, fleet_key, "--no-reset")
    assert r.returncode == 0, r.stderr
    cfg = json.loads((v.flash / "config.json").read_text())
    cfg["pins"] = {"lock": 40, "siren": 36}
    (v.flash / "config.json").write_text(json.dumps(cfg))
    subprocess.run([str(Path(sys.executable).parent / "mpremote"), "connect", v.path, "reset"], timeout=30)
    _, ev = backend.wait_for(lambda t, o: t == "aed/v1/%s/event" % DEVICE and o.get("type") == "config_error"
                             and o.get("field") == "pins.lock", 30)
    assert ev["reason"] == "invalid_pin"
    backend.wait_for(lambda t, o: t == "aed/v1/%s/event" % DEVICE and o.get("field") == "pins.siren"
                     and o.get("reason") == "input_only", 10)
    backend.wait_for(lambda t, o: t == "aed/v1/%s/status" % DEVICE and o.get("online") is True, 10)


def test_a_provisioned_cabinet_sets_its_clock_by_sntp(vdev_factory, mosquitto, backend, fleet_key):
    """The virtual board powers on at 2000-01-01 (epoch 2000, as the ESP32). The firmware sets
    its clock to the time floor at boot and by SNTP once Wi-Fi is up (aedsim vdev answers SNTP
    on loopback, no flag needed): the retained status says the real time, nothing says 2000."""
    from aedgate.timefloor import BUILD_TIME
    v = vdev_factory("--device-id", DEVICE)
    r = provision(v.path, mosquitto.url, fleet_key)
    assert r.returncode == 0, r.stderr
    _, st = backend.wait_for(lambda t, o: t == "aed/v1/%s/status" % DEVICE and o.get("online") is True, 20)
    assert abs(st["ts"] - time.time()) < 5, st
    _, boot = backend.wait_for(lambda t, o: t == "aed/v1/%s/event" % DEVICE and o.get("type") == "boot", 10)
    # provision ends with machine.reset(): HARD_RESET on the ESP32 (the old vdev said SOFT_RESET)
    assert boot["ts"] >= BUILD_TIME and boot["cause"] == "hard", boot
    # No SNTP answer and a power cut (the RTC restarts at 2000): the floor, never 2000.
    v.world('{"sntp": "down"}')
    v.world('{"power": "off"}')
    time.sleep(0.5)
    with backend.cond:
        backend.messages.clear()
    v.world('{"power": "on"}')
    # (the first boot event may come again: delivery is at least once)
    _, boot = backend.wait_for(lambda t, o: t == "aed/v1/%s/event" % DEVICE and o.get("type") == "boot"
                               and o.get("cause") == "power_on", 30)
    assert BUILD_TIME <= boot["ts"] < time.time() - 3600, boot


def test_config_only_copies_the_config_and_ca_and_nothing_else(vdev_factory, mosquitto, backend, fleet_key, tmp_path):
    """--config-only (for a board with the firmware frozen into its MicroPython): config.json and
    the CA only; the modules on the board are left as they are. Without aedgate at all on the
    board (frozen or copied) it says so instead of leaving a board that cannot run."""
    v = vdev_factory("--device-id", DEVICE)
    r = provision(v.path, mosquitto.url, fleet_key, "--config-only", "--no-reset")
    err = one_line_error(r, "has no aedgate")
    r = provision(v.path, mosquitto.url, fleet_key, "--no-reset")
    assert r.returncode == 0, r.stderr
    mine = (v.flash / "aedgate/cabinet.py").read_bytes() + b"\n# a technician's local patch\n"
    (v.flash / "aedgate/cabinet.py").write_bytes(mine)
    r = provision(v.path, mosquitto.url, fleet_key, "--config-only", "--pin", "lock_sense=23")
    assert r.returncode == 0, r.stdout + r.stderr
    s = summary(r.stdout)
    assert (s["files"], s["copied"], s["removed"]) == (1, 1, 0), r.stdout
    assert (v.flash / "aedgate/cabinet.py").read_bytes() == mine  # the modules untouched
    assert json.loads((v.flash / "config.json").read_text())["pins"] == {"lock_sense": 23}
    backend.wait_for(lambda t, o: t == "aed/v1/%s/status" % DEVICE and o.get("online") is True, 20)


def test_tls_cabinet_comes_online_with_its_clock_set(vdev_factory, tmp_path, fleet_key):
    """Issue 10's "done when": provisioned with --tls --ca against a TLS broker, the virtual
    board (powered on in 2000) comes online with its clock within seconds of real time."""
    from tests.fixtures import Backend, Mosquitto, free_port
    from tests.integration.test_tls import make_pki
    pki = make_pki(tmp_path)
    tls_port = free_port()
    conf = "listener %d 127.0.0.1\ncafile %s\ncertfile %s\nkeyfile %s\n" % (tls_port, pki["ca"], pki["cert"], pki["key"])
    if os.geteuid() == 0:
        conf += "user root\n"  # else Mosquitto drops to its own user, which cannot read tmp_path
    broker = Mosquitto(tmp_path, extra_conf=conf).start()
    backend = Backend(broker.url)
    try:
        v = vdev_factory("--device-id", DEVICE, "--broker", broker.url)
        r = provision(v.path, "mqtts://localhost:%d" % tls_port, fleet_key, "--tls", "--ca", pki["ca"])
        assert r.returncode == 0, r.stdout + r.stderr
        _, st = backend.wait_for(lambda t, o: t == "aed/v1/%s/status" % DEVICE and o.get("online") is True, 40)
        assert abs(st["ts"] - time.time()) < 5, st
    finally:
        backend.close()
        broker.stop()


def test_a_service_over_usb_before_the_clock_is_set_is_stamped_at_the_floor(vdev_factory, mosquitto, backend, fleet_key):
    """`aedgate service --port` runs with the app stopped, maybe before anything set the clock
    (the board reads 2000): its event's ts is the time floor, never 2000."""
    from aedgate.timefloor import BUILD_TIME
    v = vdev_factory("--device-id", DEVICE)
    r = provision(v.path, mosquitto.url, fleet_key, "--no-reset")
    assert r.returncode == 0, r.stderr
    r = aedgate("service", "--port", v.path, "--fleet-key", str(fleet_key), "--device", DEVICE,
                "--pads-expiry", "2031-05-31")
    assert r.returncode == 0 and "accepted" in r.stdout, r.stdout + r.stderr
    # `aedgate service` resets the board when it is done: the app starts and reports.
    _, ev = backend.wait_for(lambda t, o: t == "aed/v1/%s/event" % DEVICE and o.get("type") == "service_done", 30)
    assert ev["ts"] >= BUILD_TIME, ev

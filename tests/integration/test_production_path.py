"""Issue 13's production path, walked as the docs write it: docs/broker.md's steps make a TLS
Mosquitto with the shipped ACL, password file and per-device account (`aedgate broker
add-device`); docs/technician.md's `aedgate provision --broker mqtts://… --ca … --broker-user …
--broker-password-file …` puts a virtual cabinet (`aedsim vdev`) on it; dispatch unlocks it and
services it with `aedgate unlock` / `aedgate service` over TLS with its own account; a wrong
dispatch password is one line and a non-zero exit. Real tools, loopback only.

The one change to the doc's steps: the broker's certificate names `localhost` instead of the
doc's example `mqtt.example.org` (the name the cabinets use must resolve here, on loopback)."""
import json
import re
import shlex
import subprocess
import sys
import threading
import time

from host_tools import fleetkeys
from tests.fixtures import ROOT
from tests.integration.test_broker_doc import SERVICE_PASSWORDS, follow_broker_md, root  # noqa: F401
from tests.integration.test_vdev import vdev_factory  # noqa: F401  (fixture)

DEVICE = "cab-0001"  # the device docs/broker.md adds
TECHNICIAN = ROOT / "docs" / "technician.md"


def documented_provision(replace):
    """docs/technician.md's production `aedgate provision` command as argv, with the values of
    the options in `replace` (port, broker, files) swapped for this test's own."""
    text = re.sub(r"\\\n\s*", " ", TECHNICIAN.read_text())
    lines = [l.strip() for l in text.splitlines()
             if l.strip().startswith("aedgate provision") and "mqtts://" in l]
    assert len(lines) == 1, "docs/technician.md should show one production provision: %r" % lines
    argv = shlex.split(lines[0])[2:]
    for i, word in enumerate(argv[:-1]):
        if word in replace:
            argv[i + 1] = replace[word]
    missing = set(replace) - set(argv)
    assert not missing, "docs/technician.md's command lacks %s" % sorted(missing)
    return argv


def aedgate(*args, timeout=90):
    return subprocess.run([sys.executable, "-m", "host_tools.cli", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


class Registry:
    """The registry account's view of the fleet over TLS, through the project's backend library."""

    def __init__(self, url, ca):
        from host_tools.backend import BrokerOptions, FleetSubscriber
        self.messages, self.cond = [], threading.Condition()
        self.feed = FleetSubscriber([BrokerOptions(url, ca_file=str(ca), user="registry",
                                                   password=SERVICE_PASSWORDS["registry"])],
                                    "registry", durable=False, topics=("aed/v1/#",))
        self.feed.listen_raw(self._on_raw)
        self.feed.start()

    def _on_raw(self, topic, payload, retain, shard, t):
        with self.cond:
            self.messages.append((topic, payload, retain))
            self.cond.notify_all()

    def wait_for(self, pred, timeout):
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for topic, payload, retain in self.messages:
                    try:
                        obj = json.loads(payload)
                    except ValueError:
                        continue
                    if pred(topic, obj, retain):
                        return obj
                left = deadline - time.monotonic()
                assert left > 0, "nothing matching within %gs; got %r" % (
                    timeout, [m[0] for m in self.messages[-10:]])
                self.cond.wait(left)

    def close(self):
        self.feed.close()


def test_a_cabinet_on_the_documented_tls_broker_is_unlocked_and_serviced_by_dispatch(
        root, vdev_factory, tmp_path):
    broker, outputs = follow_broker_md(root, lambda line: line.replace("mqtt.example.org", "localhost"))
    registry = None
    try:
        printed = [out for lines, out in outputs if any("add-device" in l for l in lines)]
        assert printed, "docs/broker.md adds no device"
        device_pw = tmp_path / "cab-0001.pw"
        device_pw.write_text(printed[-1].strip().splitlines()[-1] + "\n")
        dispatch_pw = tmp_path / "dispatch.pw"
        dispatch_pw.write_text(SERVICE_PASSWORDS["dispatch"] + "\n")
        pki = root / "home" / "aedgate-pki"
        ca = pki / "ca.crt"
        url = "mqtts://localhost:%d" % broker.ports[8883]
        key = tmp_path / "fleet.key"
        fleetkeys.save(key, fleetkeys.generate())
        registry = Registry(url, ca)

        # docs/technician.md, production: the cabinet's own account, the CA, TLS
        v = vdev_factory("--device-id", DEVICE)
        argv = documented_provision({"--port": v.path, "--broker": url, "--ca": str(ca),
                                     "--broker-password-file": str(device_pw), "--fleet-key": str(key)})
        assert argv[argv.index("--device-id") + 1] == argv[argv.index("--broker-user") + 1] == DEVICE
        r = aedgate("provision", *argv)
        assert r.returncode == 0, r.stdout + r.stderr
        cfg = json.loads((v.flash / "config.json").read_text())
        assert (cfg["broker_tls"], cfg["broker_user"], cfg["broker_host"]) == (True, DEVICE, "localhost"), cfg
        assert cfg["broker_password"] == device_pw.read_text().strip()
        st = registry.wait_for(lambda t, o, ret: t == "aed/v1/%s/status" % DEVICE
                               and o.get("online") is True, 40)
        assert abs(st["ts"] - time.time()) < 5, st  # SNTP set its clock (it powered on in 2000)
        assert re.search(r"as cab-0001 \(.*u'cab-0001'\)", broker.text()), broker.text()[-2000:]

        # dispatch opens it: accepted; --follow under the production ACL says why it cannot
        r = aedgate("unlock", "--broker", url, "--ca", str(ca), "--user", "dispatch",
                    "--password-file", str(dispatch_pw), "--fleet-key", str(key), "--device", DEVICE,
                    "--mission", "M-1", "--window", "10", "--follow", "20")
        assert r.returncode == 0, r.stdout + r.stderr
        assert "%s accepted mission M-1" % DEVICE in r.stdout, r.stdout
        assert "cannot follow" in r.stderr, r.stderr
        registry.wait_for(lambda t, o, ret: t == "aed/v1/%s/event" % DEVICE
                          and o.get("type") == "unlocked" and o.get("mission") == "M-1", 10)

        r = aedgate("service", "--broker", url, "--ca", str(ca), "--user", "dispatch",
                    "--password-file", str(dispatch_pw), "--fleet-key", str(key), "--device", DEVICE,
                    "--aed-checked")
        assert r.returncode == 0, r.stdout + r.stderr
        assert "%s: aed_checked accepted" % DEVICE in r.stdout, r.stdout

        # a wrong dispatch password: one line naming the broker and the user, exit 4, at once
        dispatch_pw.write_text("not-the-password\n")
        for cmd in (["unlock", "--mission", "M-2"], ["service", "--aed-checked"]):
            t0 = time.monotonic()
            r = aedgate(cmd[0], "--broker", url, "--ca", str(ca), "--user", "dispatch",
                        "--password-file", str(dispatch_pw), "--fleet-key", str(key),
                        "--device", DEVICE, *cmd[1:])
            err = r.stderr.strip()
            assert r.returncode == 4, (cmd, r.returncode, r.stdout, err)
            assert "\n" not in err and err.startswith("aedgate: error: "), err
            assert "localhost:%d" % broker.ports[8883] in err and "dispatch" in err, err
            assert time.monotonic() - t0 < 10, "waited %.1f s" % (time.monotonic() - t0)
    finally:
        if registry:
            registry.close()
        broker.stop()

"""Fixtures for the backend library's tests: real Mosquitto (also with a password file and the
shipped ACL) and real paho publishers standing in for cabinets."""
import json
import subprocess
import time

import pytest

from tests.fixtures import ROOT, Mosquitto, require_tool

PASSWORDS = {"dispatch": "dispatch-pw", "registry": "registry-pw", "cab-0001": "cab-pw"}


@pytest.fixture
def secured_mosquitto(tmp_path):
    """Mosquitto with a password file (mosquitto_passwd) and docs/deploy/mosquitto/acl."""
    passwd = require_tool("mosquitto_passwd", "apt-get install mosquitto (it ships mosquitto_passwd)")
    pwfile = tmp_path / "passwd"
    for i, (user, pw) in enumerate(PASSWORDS.items()):
        subprocess.run([passwd, "-b"] + (["-c"] if i == 0 else []) + [str(pwfile), user, pw],
                       check=True, capture_output=True)
    acl = ROOT / "docs" / "deploy" / "mosquitto" / "acl"
    broker = Mosquitto(tmp_path, extra_conf="password_file %s\nacl_file %s\nuser root\n" % (pwfile, acl))
    # user root: only used when the tests run as root; Mosquitto would drop to "mosquitto", who
    # cannot read the tmp dir.
    broker.conf.write_text(broker.conf.read_text().replace("allow_anonymous true", "allow_anonymous false"))
    broker.start()
    yield broker
    broker.stop()


class Cabinet:
    """A paho client publishing what a cabinet publishes (the library must not care who)."""

    def __init__(self, url, device="cab-0001", user=None, password=None):
        import paho.mqtt.client as mqtt
        host, port = url.split("//")[1].split(":")
        self.device = device
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="pub-%s-%d" % (device, id(self)))
        if user:
            self.c.username_pw_set(user, password)
        self.c.connect(host, int(port))
        self.c.loop_start()

    def pub(self, kind, body, retain=False):
        body = {"v": 1, "ts": int(time.time()), **body}
        self.c.publish("aed/v1/%s/%s" % (self.device, kind), json.dumps(body), 1, retain).wait_for_publish(5)

    def event(self, seq, type_="door_opened", **kw):
        self.pub("event", {"seq": seq, "type": type_, **kw})

    def close(self):
        self.c.loop_stop()
        self.c.disconnect()


def state(**kw):
    """A state body that satisfies docs/schemas/state.schema.json."""
    body = {"door": "closed", "lock": "locked", "battery_mv": 12700, "battery_pct": 95,
            "pads_expiry": "2027-01-31", "pads_days_left": 400, "aed_battery_expiry": "2027-06-30",
            "aed_battery_days_left": 550, "alarms": [], "fw": "0.3.0", "uptime_s": 60,
            "service_needed": False, "outbox": 0}
    body.update(kw)
    return body


def wait_until(pred, timeout=10.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.02)
    return pred()

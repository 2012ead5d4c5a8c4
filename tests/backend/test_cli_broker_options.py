"""Every host tool that talks to a broker takes the same options (host_tools.backend) and says
in one line when the broker refuses the credentials — on a real Mosquitto with a password file
and the shipped ACL — instead of retrying into "no answer … (offline?)"."""
import argparse
import json
import os
import subprocess
import sys
import time

import pytest

from tests.backend.conftest import PASSWORDS, Cabinet
from tests.fixtures import ROOT, free_port

MASTER = bytes(range(32))


def aedgate(*argv, env=None, timeout=60):
    e = dict(os.environ)
    e.pop("AEDGATE_BROKER_PASSWORD", None)
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "host_tools.cli", *argv], capture_output=True,
                          text=True, cwd=str(ROOT), timeout=timeout, env=e)


@pytest.fixture
def keyfile(tmp_path):
    k = tmp_path / "fleet.key"
    k.write_text(MASTER.hex() + "\n")
    return str(k)


def _one_line(stderr):
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


@pytest.mark.parametrize("tool", ["unlock", "service", "monitor"])
def test_bad_password_is_one_line_naming_broker_and_user_exit_4(secured_mosquitto, keyfile, tmp_path, tool):
    pw = tmp_path / "pw"
    pw.write_text("not-the-password\n")
    common = ["--broker", secured_mosquitto.url, "--user", "dispatch", "--password-file", str(pw)]
    argv = {"unlock": ["unlock", *common, "--fleet-key", keyfile, "--device", "cab-0001", "--mission", "M1"],
            "service": ["service", *common, "--fleet-key", keyfile, "--device", "cab-0001", "--aed-checked"],
            "monitor": ["monitor", *common, "--plain", "--duration", "1"]}[tool]
    t0 = time.monotonic()
    r = aedgate(*argv)
    assert r.returncode == 4, r.stdout + r.stderr
    line = _one_line(r.stderr)
    assert "refused" in line and "as dispatch" in line and ":%d" % secured_mosquitto.port in line
    assert "not authorised" in line or "bad user name or password" in line
    assert "offline" not in r.stdout + r.stderr
    assert time.monotonic() - t0 < 15


def test_password_from_environment_and_no_answer_is_not_an_auth_error(secured_mosquitto, keyfile):
    r = aedgate("unlock", "--broker", secured_mosquitto.url, "--user", "dispatch", "--fleet-key", keyfile,
                "--device", "cab-0404", "--mission", "M1", "--timeout", "1",
                env={"AEDGATE_BROKER_PASSWORD": PASSWORDS["dispatch"]})
    assert r.returncode == 3, r.stdout + r.stderr
    assert "no answer from cab-0404" in r.stdout and "as dispatch" in r.stdout


def test_no_credentials_on_a_secured_broker_says_it_needs_them(secured_mosquitto, keyfile):
    r = aedgate("unlock", "--broker", secured_mosquitto.url, "--fleet-key", keyfile,
                "--device", "cab-0001", "--mission", "M1")
    assert r.returncode == 4
    assert "needs a user name and password" in _one_line(r.stderr)


@pytest.mark.parametrize("argv,needle", [
    (["--broker", "http://x:1"], "mqtts://host:port"),
    (["--broker", "mqtt://127.0.0.1:1", "--password-file", "/nonexistent/pw", "--user", "d"], "cannot read password file"),
    (["--broker", "mqtt://127.0.0.1:1", "--ca", "/nonexistent/ca.pem"], "CA file"),
])
def test_bad_connection_options_are_one_line_exit_2(keyfile, argv, needle):
    r = aedgate("unlock", *argv, "--fleet-key", keyfile, "--device", "cab-0001", "--mission", "M1")
    assert r.returncode == 2, r.stdout + r.stderr
    assert needle in _one_line(r.stderr)


def test_password_without_user_is_refused(keyfile, tmp_path):
    r = aedgate("unlock", "--broker", "mqtt://127.0.0.1:1", "--fleet-key", keyfile, "--device", "cab-0001",
                "--mission", "M1", env={"AEDGATE_BROKER_PASSWORD": "x"})
    assert r.returncode == 2 and "no --user" in _one_line(r.stderr)


def test_unlock_accepts_mqtts(keyfile):
    port = free_port()
    r = aedgate("unlock", "--broker", "mqtts://127.0.0.1:%d" % port, "--fleet-key", keyfile,
                "--device", "cab-0001", "--mission", "M1")
    assert r.returncode == 3
    assert _one_line(r.stderr).startswith("aedgate: error: cannot reach broker mqtts://127.0.0.1:%d" % port)


def test_follow_under_the_production_acl_says_why_it_sees_nothing(secured_mosquitto, keyfile):
    from host_tools.backend.commands import token_cti
    url = secured_mosquitto.url
    cab = Cabinet(url, "cab-0001", "cab-0001", PASSWORDS["cab-0001"])
    cab.pub("status", {"online": True, "fw": "0.3.0", "reset_cause": "power_on", "boot_ts": int(time.time())},
            retain=True)

    def on_cmd(c, u, m):
        c.publish("aed/v1/cab-0001/ack", json.dumps({"v": 1, "ts": int(time.time()), "cmd": "unlock",
                  "result": "accepted", "cti": token_cti(m.payload), "mission": "M-9"}), 1)
        c.publish("aed/v1/cab-0001/event", json.dumps({"v": 1, "ts": int(time.time()), "seq": 7,
                  "type": "unlocked", "mission": "M-9", "window_s": 30}), 1)
    cab.c.on_message = on_cmd
    cab.c.subscribe("aed/v1/cab-0001/cmd/#", 1)
    time.sleep(0.3)
    try:
        r = aedgate("unlock", "--broker", url, "--user", "dispatch", "--fleet-key", keyfile, "--device",
                    "cab-0001", "--mission", "M-9", "--follow", "5",
                    env={"AEDGATE_BROKER_PASSWORD": PASSWORDS["dispatch"]})
        assert r.returncode == 0, r.stdout + r.stderr
        assert "cab-0001 accepted mission M-9" in r.stdout
        assert "cannot follow" in r.stderr and "dispatch read acks only" in r.stderr
        r = aedgate("unlock", "--broker", url, "--user", "registry", "--fleet-key", keyfile, "--device",
                    "cab-0001", "--mission", "M-9", "--follow", "2", "--timeout", "2",
                    env={"AEDGATE_BROKER_PASSWORD": PASSWORDS["registry"]})
        # the registry account may read events (but not send commands: the ACL drops the token,
        # so no ack comes: 2 s instead of the default 10 s of waiting for it)
        assert r.returncode == 3 and "no answer from cab-0001 within 2 s" in r.stdout, r.stdout + r.stderr
        assert "cannot follow" not in r.stderr
    finally:
        cab.close()


def test_provision_sets_the_cabinets_broker_credentials_from_a_file_or_env(keyfile, tmp_path, monkeypatch):
    from host_tools.cli import CliError
    from host_tools.commands.provision import build_config
    pw = tmp_path / "cab.pw"
    pw.write_text("s3cret-cab\n")
    base = dict(device_id="cab-0001", fleet_key=keyfile, broker="mqtts://b.example:8883", tls=False,
                ca="ca.pem", wifi_ssid="", wifi_password="", pin=[])
    monkeypatch.delenv("AEDGATE_DEVICE_BROKER_PASSWORD", raising=False)
    cfg = build_config(argparse.Namespace(**base, broker_user=None, broker_password_file=str(pw)), None)
    assert (cfg["broker_user"], cfg["broker_password"], cfg["broker_tls"]) == ("cab-0001", "s3cret-cab", True)
    monkeypatch.setenv("AEDGATE_DEVICE_BROKER_PASSWORD", "from-env")
    cfg = build_config(argparse.Namespace(**base, broker_user="cab-x", broker_password_file=None), None)
    assert (cfg["broker_user"], cfg["broker_password"]) == ("cab-x", "from-env")
    monkeypatch.delenv("AEDGATE_DEVICE_BROKER_PASSWORD")
    with pytest.raises(CliError, match="needs the cabinet's password"):
        build_config(argparse.Namespace(**base, broker_user="cab-x", broker_password_file=None), None)
    kept = build_config(argparse.Namespace(**base, broker_user=None, broker_password_file=None),
                        {"broker_user": "cab-0001", "broker_password": "old"})
    assert kept["broker_password"] == "old"  # re-provisioning without one keeps the board's

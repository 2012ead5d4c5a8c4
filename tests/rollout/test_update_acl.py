"""The update server's broker role (docs/deploy/mosquitto/acl, user `update`) on a real Mosquitto
running the shipped mosquitto.conf and acl: a whole rollout works through it with every client
logged in as itself, and the role cannot do what it must not (send commands, forge telemetry);
a cabinet cannot fetch another cabinet's blocks."""
from __future__ import annotations

import json
import time

import pytest

from host_tools.backend import BrokerOptions
from host_tools.cli import main as aedgate
from host_tools.commands import broker as broker_tool
from host_tools.rollout import Plan, Rollout
from tests.integration.test_broker_acl import DEPLOY, Client, ProductionBroker
from tests.rollout.scripted_cabinet import ScriptedCabinet

PASSWORDS = {"cab-a": "pw-a", "cab-b": "pw-b", "update": "pw-update", "registry": "pw-reg",
             "dispatch": "pw-dispatch"}


@pytest.fixture(scope="module")
def prod(tmp_path_factory):
    b = ProductionBroker(tmp_path_factory.mktemp("update-acl"))
    for user, pw in PASSWORDS.items():
        broker_tool.set_password(b.passwd, user, pw)
    b.start()
    yield b
    b.stop()


def test_shipped_acl_passes_check_acl_with_the_update_rules():
    text = (DEPLOY / "acl").read_text()
    assert broker_tool.acl_problems(text) == []
    for rule in ("pattern write aed/v1/%u/update/get", "pattern read aed/v1/%u/update/offer",
                 "pattern read aed/v1/%u/update/block"):
        assert rule in broker_tool.PATTERN_RULES and rule in text
    assert "update" in broker_tool.acl_service_users(text)


def test_rollout_through_the_production_acl(prod, tmp_path, release_kit):
    url = "mqtt://127.0.0.1:%d" % prod.port
    cabs = [ScriptedCabinet(url, d, release_kit["keys"], password=PASSWORDS[d]) for d in ("cab-a", "cab-b")]
    try:
        time.sleep(0.5)
        ro = Rollout(str(tmp_path / "r.db"), release_kit["good"], Plan(canary=1, waves=[100], halt_at=("count", 1)),
                     [BrokerOptions(url, user="update", password=PASSWORDS["update"])], tick=0.1,
                     discover_s=2.0).start()
        assert sorted(ro.cabs) == ["cab-a", "cab-b"]
        assert ro.run(timeout=60) == "done"
        assert [c.fw for c in cabs] == ["0.2.0", "0.2.0"] and ro.server.served > 50
        assert not ro.server.refused
        ro.close()
    finally:
        for c in cabs:
            c.close()


def test_update_role_cannot_command_or_forge_and_cabinets_see_only_their_own_blocks(prod):
    a, b = Client(prod, "cab-a", "pw-a"), Client(prod, "cab-b", "pw-b")
    up, reg = Client(prod, "update", "pw-update"), Client(prod, "registry", "pw-reg")
    try:
        a.subscribe("aed/v1/cab-a/cmd/#", "aed/v1/cab-a/update/offer", "aed/v1/cab-a/update/block",
                    "aed/v1/cab-b/update/block", "aed/v1/+/update/offer")
        reg.subscribe("aed/v1/#")
        up.subscribe("aed/v1/+/update/get", "aed/v1/+/cmd/#", "aed/v1/+/ack")
        up.publish("aed/v1/cab-a/cmd/unlock", b"forged-token")          # not allowed
        up.publish("aed/v1/cab-a/state", b'{"forged": 1}')                # not allowed
        up.publish("aed/v1/cab-b/update/block", b"for-b")               # allowed, but not to cab-a
        up.publish("aed/v1/cab-b/update/offer", b"offer-b")
        up.publish("aed/v1/cab-a/update/offer", b"offer-a")             # marker on a's path
        a.got("aed/v1/cab-a/update/offer", b"offer-a")
        reg.got("aed/v1/cab-a/update/offer", b"offer-a")
        b.publish("aed/v1/cab-a/update/get", b'{"forged-get": 1}')       # as another cabinet: dropped
        a.publish("aed/v1/cab-a/update/get", b'{"get": 1}')              # its own: reaches the server
        up.got("aed/v1/cab-a/update/get", b'{"get": 1}')
        a.publish("aed/v1/cab-a/ack", json.dumps({"marker": 1}).encode())
        time.sleep(0.3)
        assert a.topics() == ["aed/v1/cab-a/update/offer"]               # no cmd, no block/offer of b
        assert not [m for m in reg.messages if b"forged" in m[1]]
        assert [m[0] for m in up.messages] == ["aed/v1/cab-a/update/get"]  # no ack, no forged get
    finally:
        for c in (a, b, up, reg):
            c.close()


def test_update_is_a_reserved_name(tmp_path, capsys):
    acl = tmp_path / "acl"
    acl.write_text((DEPLOY / "acl").read_text())
    code = aedgate(["broker", "add-device", "--device", "update", "--password-file",
                    str(tmp_path / "pw"), "--acl", str(acl), "--hash-with", "builtin"])
    err = capsys.readouterr().err
    assert code == 2 and "reserved for service accounts" in err

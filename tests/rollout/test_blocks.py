"""The block server: right bytes for every valid get, nothing at all for a bad one — as a unit
(hypothesis over arbitrary gets) and over a real Mosquitto through the running controller."""
from __future__ import annotations

import json
import threading
import time

import cbor2
import paho.mqtt.client as mqtt
import pytest
from hypothesis import given, settings, strategies as st

from host_tools.backend import BrokerOptions
from host_tools.rollout import BlockServer, Plan, Rollout, ServedRelease
from host_tools.rollout.release import ReleaseDirError
from tests.rollout.scripted_cabinet import ScriptedCabinet


@pytest.fixture(scope="module")
def served(release_kit):
    return ServedRelease.load(release_kit["good"], [bytes.fromhex(release_kit["pub"].read_text().strip())])


def get(rid, file, offset, n, **extra):
    return json.dumps({"v": 1, "ts": 1800000000, "release": rid, "file": file, "offset": offset,
                       "len": n, **extra}).encode()


def test_release_folder_checks(release_kit, tmp_path):
    rel = ServedRelease.load(release_kit["good"])
    assert rel.version == "0.2.0" and len(rel.id) == 16 and rel.size == len(rel.files["release.cose"])
    assert set(rel.files) == {"release.cose"} | {f[0] for f in rel.manifest["files"]}
    with pytest.raises(ReleaseDirError, match="not signed"):
        ServedRelease.load(release_kit["unsigned"])
    with pytest.raises(ReleaseDirError, match="does not exist"):
        ServedRelease.load(tmp_path / "nope")
    with pytest.raises(ReleaseDirError, match="refused as a cabinet would: unknown_kid"):
        ServedRelease.load(release_kit["stranger"], [bytes.fromhex(release_kit["pub"].read_text().strip())])
    import shutil
    bad = tmp_path / "tampered"
    shutil.copytree(release_kit["good"], bad)
    (bad / "files" / "main.py").write_bytes(b"print('owned')\n")
    with pytest.raises(ReleaseDirError, match="differs from the signed manifest"):
        ServedRelease.load(bad)


def test_valid_gets_get_the_exact_bytes(served):
    s = BlockServer([served])
    name, size = served.manifest["files"][0][0], served.manifest["files"][0][1]
    data = served.files[name]
    for offset, n in ((0, 1024), (size - 10, 1024), (size, 1024), (size + 5000, 1536), (3, 1)):
        dev, block = s.answer("aed/v1/cab-1/update/get", get(served.id, name, offset, n))
        assert dev == "cab-1"
        assert cbor2.loads(block) == [served.rid, name, offset, data[offset:offset + n]]
    assert s.served == 5 and not s.refused


@pytest.mark.parametrize("topic,payload,why", [
    ("aed/v1/cab+1/update/get", None, "topic"),
    ("aed/v1/cab-1/update/got", None, "topic"),
    ("aed/v1/cab-1/update/get", b"\xff", "not_json"),
    ("aed/v1/cab-1/update/get", b"[]", "malformed"),
    ("aed/v1/cab-1/update/get", {"v": 2}, "malformed"),
    ("aed/v1/cab-1/update/get", {"offset": "0"}, "malformed"),
    ("aed/v1/cab-1/update/get", {"len": True}, "malformed"),
    ("aed/v1/cab-1/update/get", {"ts": 1.5}, "malformed"),
    ("aed/v1/cab-1/update/get", {"release": "ABCDEF0123456789"}, "bad_release"),
    ("aed/v1/cab-1/update/get", {"release": "0123456789abcdef"}, "unknown_release"),
    ("aed/v1/cab-1/update/get", {"file": "files/main.py"}, "unknown_file"),
    ("aed/v1/cab-1/update/get", {"file": "../release.cose"}, "unknown_file"),
    ("aed/v1/cab-1/update/get", {"offset": -1}, "bad_range"),
    ("aed/v1/cab-1/update/get", {"len": 0}, "bad_range"),
    ("aed/v1/cab-1/update/get", {"len": 1537}, "bad_range"),
    ("aed/v1/cab-1/update/get", {"offset": 1 << 40}, "bad_range"),
    ("aed/v1/cab-1/update/get", {"pad": "x" * 600}, "too_large"),
])
def test_bad_gets_are_refused_by_reason(served, topic, payload, why):
    s = BlockServer([served])
    if payload is None or isinstance(payload, dict):
        base = {"v": 1, "ts": 1800000000, "release": served.id, "file": "release.cose", "offset": 0,
                "len": 1024}
        base.update(payload or {})
        payload = json.dumps(base).encode()
    assert s.answer(topic, payload) is None
    assert dict(s.refused) == {why: 1} and s.served == 0


@settings(max_examples=400, deadline=None)
@given(data=st.data())
def test_any_get_is_answered_exactly_or_not_at_all(served, data):
    s = BlockServer([served])
    names = sorted(served.files) + ["nope", "", "release.cos"]
    body = {"v": data.draw(st.sampled_from([1, 1, 1, 2, True, "1"])),
            "ts": data.draw(st.one_of(st.integers(0, 1 << 40), st.text(max_size=3))),
            "release": data.draw(st.sampled_from([served.id, served.id.upper(), "0" * 16, 7])),
            "file": data.draw(st.sampled_from(names)),
            "offset": data.draw(st.one_of(st.integers(-5, 70000), st.booleans(), st.floats(0, 10))),
            "len": data.draw(st.one_of(st.integers(-1, 2000), st.none()))}
    for k in data.draw(st.lists(st.sampled_from(sorted(body)), max_size=2)):
        body.pop(k, None)
    ans = s.answer("aed/v1/cab-1/update/get", json.dumps(body).encode())
    ok = (body.get("v") == 1 and type(body.get("v")) is int and type(body.get("ts")) is int
          and body.get("release") == served.id and body.get("file") in served.files
          and type(body.get("offset")) is int and 0 <= body["offset"]
          and type(body.get("len")) is int and 1 <= body["len"] <= 1536)
    assert (ans is not None) == ok
    if ok:
        rid, name, offset, chunk = cbor2.loads(ans[1])
        src = served.files[name]
        assert (rid, name, offset) == (served.rid, body["file"], body["offset"])
        assert chunk == src[offset:offset + body["len"]] and len(chunk) <= body["len"]


class Device:
    """A raw paho client publishing gets as a cabinet would, collecting what comes back."""

    def __init__(self, url, device):
        host, port = url.split("//")[1].split(":")
        self.blocks, self.cond = [], threading.Condition()
        self.device = device
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="raw-" + device)
        self.c.on_message = self._msg
        self.c.connect(host, int(port))
        self.c.loop_start()
        self.c.subscribe("aed/v1/%s/update/block" % device, 1)
        time.sleep(0.3)

    def _msg(self, c, u, m):
        with self.cond:
            self.blocks.append(cbor2.loads(m.payload))
            self.cond.notify_all()

    def ask(self, payload, wait=3.0):
        with self.cond:
            n = len(self.blocks)
        self.c.publish("aed/v1/%s/update/get" % self.device, payload, 1).wait_for_publish(5)
        with self.cond:
            self.cond.wait_for(lambda: len(self.blocks) > n, wait)
            return self.blocks[n] if len(self.blocks) > n else None

    def close(self):
        self.c.loop_stop()
        self.c.disconnect()


def test_controller_serves_blocks_over_mosquitto_to_rollout_cabinets_only(mosquitto, release_kit, tmp_path, served):
    # cab-1 takes part (a silent scripted cabinet: it gets offers, never fetches by itself);
    # cab-2 is online but not in the rollout.
    cabs = [ScriptedCabinet(mosquitto.url, d, release_kit["keys"], behaviour="silent") for d in ("cab-1", "cab-2")]
    ro = Rollout(str(tmp_path / "r.db"), release_kit["good"], Plan(canary=0, waves=[100]),
                 [BrokerOptions(mosquitto.url)], devices=["cab-1"], tick=0.1).start()
    dev, other = Device(mosquitto.url, "cab-1"), Device(mosquitto.url, "cab-2")
    try:
        ro.run(until=lambda r: r.cabs["cab-1"].phase == "started", timeout=10)
        cose = served.files["release.cose"]
        assert dev.ask(get(served.id, "release.cose", 0, 1024)) == [served.rid, "release.cose", 0, cose[:1024]]
        last = len(cose) - len(cose) % 1024 if len(cose) % 1024 else len(cose) - 1024
        assert dev.ask(get(served.id, "release.cose", last, 1024)) == [served.rid, "release.cose", last, cose[last:]]
        assert dev.ask(get(served.id, "release.cose", len(cose), 1024)) == [served.rid, "release.cose", len(cose), b""]
        for bad in (get(served.id, "release.cose", 0, 1537), get("0" * 16, "release.cose", 0, 64),
                    get(served.id, "etc/passwd", 0, 64), b"not json"):
            assert dev.ask(bad, wait=1.0) is None
        assert other.ask(get(served.id, "release.cose", 0, 64), wait=1.0) is None
        assert ro.server.refused == {"bad_range": 1, "unknown_release": 1, "unknown_file": 1,
                                     "not_json": 1, "not_in_rollout": 1}
        # a paused rollout still serves the downloads under way; an aborted one nothing more
        ro.store.set_status(ro.id, "paused", "test")
        assert ro.step() == "paused"
        assert dev.ask(get(served.id, "release.cose", 64, 64)) == [served.rid, "release.cose", 64, cose[64:128]]
        ro.store.set_status(ro.id, "aborted", "test")
        assert ro.step() == "aborted"
        assert dev.ask(get(served.id, "release.cose", 0, 64), wait=1.0) is None
    finally:
        ro.close()
        for c in cabs + [dev, other]:
            c.close()

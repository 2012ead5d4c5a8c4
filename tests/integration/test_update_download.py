"""Issue 12's transport end to end: a release built and signed by `aedgate release` (real
mpy-cross, real Ed25519 through OpenSSL), served block by block over a real Mosquitto by a tiny
paho responder written here (the update server itself is host_tools' job), fetched by the real
firmware App (CPython, fwtest hardware, plain sockets) over its one MQTT session, checked,
installed into slot a; the next boot runs it on trial. Every offer and get the wire carries is
valid against docs/schemas/, and so is every update event."""
import asyncio
import hashlib
import json
import threading
from pathlib import Path

import cbor2
import paho.mqtt.client as mqtt

from aedgate import update
from aedgate.app import App
from host_tools import releases
from slots import Slots
from tests.firmware.fwtest import Hardware, LoopNet, temp_flash, wipe
from tests.fixtures import schema_validator

DEVICE = "cab-upd"


class Responder:
    """Serves a release folder: answers each update/get with one CBOR block (docs/protocol.md)."""

    def __init__(self, port, folder):
        self.folder = Path(folder)
        self.gets = []
        self.lock = threading.Lock()
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="update-server-test")
        self.c.on_message = self._get
        self.c.connect("127.0.0.1", port)
        self.c.subscribe("aed/v1/+/update/get", 1)
        self.c.loop_start()

    def _get(self, client, userdata, msg):
        g = json.loads(msg.payload)
        with self.lock:
            self.gets.append(g)
        path = self.folder / ("release.cose" if g["file"] == "release.cose" else "files/" + g["file"])
        data = path.read_bytes()[g["offset"]:g["offset"] + g["len"]]
        block = cbor2.dumps([bytes.fromhex(g["release"]), g["file"], g["offset"], data])
        client.publish(msg.topic.rsplit("/", 1)[0] + "/block", block, qos=0)  # as the update server sends it

    def offer(self):
        raw = (self.folder / "release.cose").read_bytes()
        o = {"v": 1, "ts": 1796000000, "release": hashlib.sha256(raw).digest()[:8].hex(), "size": len(raw)}
        self.c.publish("aed/v1/%s/update/offer" % DEVICE, json.dumps(o), qos=1).wait_for_publish(5)
        return o

    def close(self):
        self.c.loop_stop()
        self.c.disconnect()


def test_release_downloaded_over_mosquitto_installed_and_booted(mosquitto, backend, tmp_path):
    key = str(tmp_path / "release.key")
    public = releases.keygen(key)
    folder = tmp_path / "rel-0.2.0"
    manifest = releases.build(str(folder), "0.2.0")
    releases.sign_release(str(folder), key)

    f = temp_flash()
    f.write("config.json", json.dumps({
        "device_id": DEVICE, "broker_host": "127.0.0.1", "broker_port": mosquitto.port,
        "release_keys": [{"kid": "", "key": public.hex()}], "ntp_host": ""}))
    hw = Hardware()
    hw.net = LoopNet()
    responder = Responder(mosquitto.port, folder)

    async def main():
        app = App(hw, f)
        run = asyncio.create_task(app.run())
        for _ in range(200):           # online and subscribed
            if app.online:
                break
            await asyncio.sleep(0.05)
        assert app.online
        offer = responder.offer()
        try:
            await asyncio.wait_for(run, 120)
        except update.Restart as e:
            return offer, e
        return offer, None
    try:
        offer, end = asyncio.run(main())
    finally:
        responder.close()
    assert isinstance(end, update.Restart), end

    ev = schema_validator("event")
    kinds = ("update_offered", "update_verified", "update_downloaded", "update_installed")
    got = [backend.wait_for(lambda t, o, k=k: t == "aed/v1/%s/event" % DEVICE and isinstance(o, dict)
                            and o.get("type") == k)[1] for k in kinds]
    for e in got:
        assert list(ev.iter_errors(e)) == [], e
    assert got[0]["release"] == offer["release"] and got[1]["version"] == "0.2.0"
    assert got[2]["bytes"] == sum(f_[1] for f_ in manifest["files"])
    assert [e["seq"] for e in got] == sorted(e["seq"] for e in got)

    get_schema, offer_schema = schema_validator("update_get"), schema_validator("update_offer")
    assert list(offer_schema.iter_errors(offer)) == []
    for g in responder.gets:
        assert list(get_schema.iter_errors(g)) == [], g
    files = [g["file"] for g in responder.gets]
    assert files[0] == "release.cose" and set(files) == {"release.cose"} | {m[0] for m in manifest["files"]}
    assert max(g["len"] for g in responder.gets) == 1024          # update_block's default

    # boot.py after the reset: slot a, on trial, every file as signed
    assert Slots(f).boot(True) == "a"
    slot = f.sub("a")
    for path, size, digest in manifest["files"]:
        d = slot
        for part in path.split("/")[:-1]:
            d = d.sub(part)
        assert hashlib.sha256(d.read(path.split("/")[-1])).digest() == digest, path
    assert Slots(f).rec["trial"] == 1 and Slots(f).rec["ver"] == "0.2.0"
    wipe(f)

"""SCRIPTED cabinets for the rollout tests: paho clients that follow the update brief's device
rules (docs/protocol.md, "Firmware updates") — NOT the firmware. They stand in for the firmware's
update task until that lands; tests/rollout/test_rollout_firmware.py is the counterpart with the
real app. What they do, as the brief says a cabinet does:

- subscribe to `update/offer` and `update/block` (two subscriptions, not `update/#`);
- on an offer: a release it runs -> nothing; one it refused or rolled back before -> the same
  `update_refused` again; else fetch `release.cose` in blocks (one get outstanding, asked again
  after `retry_s` without an answer), verify it with the firmware's own release.py (signature,
  board, version rules), then each manifest file, checking size and SHA-256 at its last block;
- a block that does not match the outstanding get is dropped;
- then the events update_downloaded, update_verified, update_installed, a reboot (status offline,
  then online), and by `behaviour`:
  good     -> state fw=new, fw_trial true, update_trial, then update_confirmed and fw_trial false
  rollback -> back on the old version, update_rolled_back {version, to, reason: "trial_timeout"}
  refuse   -> update_refused {release, reason: "bad_file"} instead of installing
  silent   -> ignores every offer (a cabinet whose update task is stuck)
"""
from __future__ import annotations

import asyncio
import json
import sys
import threading
import time

import cbor2
import paho.mqtt.client as mqtt

from host_tools.firmware import FIRMWARE

if str(FIRMWARE) not in sys.path:
    sys.path.insert(0, str(FIRMWARE))
from aedgate import release as fwrelease  # noqa: E402  (the cabinets' own rules)

from tests.backend.conftest import state as state_body  # noqa: E402


def _ver(text):
    return tuple(int(p) for p in text.split("."))


class ScriptedCabinet:
    def __init__(self, url, device, keys, fw="0.1.0", behaviour="good", ask=1024,
                 retry_s=2.0, reboot_s=0.3, trial_s=0.3, online=True, password=None):
        host, port = url.split("//")[1].split(":")
        self.device, self.keys, self.fw, self.behaviour = device, keys, fw, behaviour
        self.ask, self.retry_s, self.reboot_s, self.trial_s = ask, retry_s, reboot_s, trial_s
        self.seq = 0
        self.trial = False
        self.events: list[dict] = []
        self.handled: dict[str, tuple] = {}     # release id -> ("running",) | ("refused", reason)
        self.dl = None                            # the download in progress
        self.gets = 0
        self.dropped_blocks = 0
        self.lock = threading.RLock()
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="scripted-" + device)
        self.c.will_set(self._t("status"), json.dumps({"v": 1, "ts": int(time.time()), "online": False}),
                        1, True)
        if password is not None:
            self.c.username_pw_set(device, password)   # user name = device id (docs/broker.md)
        self.c.on_message = self._on_message
        self.c.on_connect = self._on_connect
        self.host, self.port = host, int(port)
        if online:
            self.connect()

    def _t(self, leaf):
        return "aed/v1/%s/%s" % (self.device, leaf)

    # -- MQTT -----------------------------------------------------------------------------
    def connect(self):
        self.c.connect(self.host, self.port)
        self.c.loop_start()

    def _on_connect(self, c, u, flags, reason, props=None):
        c.subscribe([(self._t("update/offer"), 1), (self._t("update/block"), 1)])
        now = int(time.time())
        c.publish(self._t("status"), json.dumps({"v": 1, "ts": now, "online": True, "fw": self.fw,
                                                 "reset_cause": "power_on", "boot_ts": now}), 1, True)
        self.publish_state()

    def publish_state(self):
        body = {"v": 1, "ts": int(time.time()),
                **state_body(fw=self.fw, fw_slot="a", fw_trial=self.trial)}
        self.c.publish(self._t("state"), json.dumps(body), 1, True)

    def emit(self, type_, **kw):
        with self.lock:
            self.seq += 1
            ev = {"v": 1, "ts": int(time.time()), "seq": self.seq, "type": type_, **kw}
            self.events.append(ev)
        self.c.publish(self._t("event"), json.dumps(ev), 1, False)

    def close(self):
        self.c.loop_stop()
        self.c.disconnect()

    def _on_message(self, c, u, m):
        with self.lock:
            if m.topic.endswith("/update/offer"):
                self._offer(json.loads(m.payload))
            elif m.topic.endswith("/update/block"):
                self._block(m.payload)

    # -- the update rules -------------------------------------------------------------------
    def _offer(self, offer):
        if self.behaviour == "silent":
            return
        rid = offer["release"]
        done = self.handled.get(rid)
        if done is not None:
            if done[0] == "refused":
                self.emit("update_refused", release=rid, reason=done[1])
            return                       # running it: its state already shows fw
        if self.dl is not None:
            return                       # one download at a time
        self.emit("update_offered", release=rid, size=offer["size"])
        self.dl = {"release": rid, "file": "release.cose", "size": offer["size"], "offset": 0,
                   "buf": bytearray(), "files": None, "index": -1, "manifest": None}
        self._get()

    def _get(self):
        d = self.dl
        want = min(self.ask, max(1, d["size"] - d["offset"]))
        d["asked"] = (d["release"], d["file"], d["offset"])
        self.gets += 1
        self.c.publish(self._t("update/get"), json.dumps({
            "v": 1, "ts": int(time.time()), "release": d["release"], "file": d["file"],
            "offset": d["offset"], "len": want}), 0, False)  # QoS 0, as the firmware asks
        token = object()
        d["token"] = token
        threading.Timer(self.retry_s, self._retry, (token,)).start()

    def _retry(self, token):
        with self.lock:
            if self.dl is not None and self.dl.get("token") is token:
                self._get()

    def _block(self, payload):
        d = self.dl
        if d is None:
            return
        rel, name, offset, data = cbor2.loads(payload)
        if (rel.hex(), name, offset) != d["asked"]:
            self.dropped_blocks += 1
            return
        d["buf"] += data
        d["offset"] += len(data)
        if d["offset"] < d["size"] and data:
            return self._get()
        if d["file"] == "release.cose":
            return self._checked_release(bytes(d["buf"]))
        entry = d["files"][d["index"]]
        try:
            fwrelease.check_file(entry, (bytes(d["buf"]),))
        except fwrelease.ReleaseError as e:
            return self._refuse(e.args[0], e.args[1])
        self._next_file()

    def _checked_release(self, raw):
        d = self.dl
        try:
            m = asyncio.run(fwrelease.verify(raw, self.keys))
            fwrelease.accept(m, "esp32", _ver(self.fw))
        except fwrelease.ReleaseError as e:
            return self._refuse(e.args[0], e.args[1])
        d["manifest"], d["files"] = m, m["files"]
        d["version"] = ".".join(str(x) for x in m["version"])
        self._next_file()

    def _next_file(self):
        d = self.dl
        d["index"] += 1
        if d["index"] < len(d["files"]):
            path, size, _ = d["files"][d["index"]]
            d.update(file=path, size=size, offset=0, buf=bytearray())
            if size == 0:
                return self._next_file()
            return self._get()
        self.dl = None
        self._install(d["release"], d["version"])

    def _refuse(self, reason, detail=None):
        rid = self.dl["release"]
        self.dl = None
        self.handled[rid] = ("refused", reason)
        kw = {"detail": str(detail)[:64]} if detail else {}
        self.emit("update_refused", release=rid, reason=reason, **kw)

    def _install(self, rid, version):
        if self.behaviour == "refuse":
            self.handled[rid] = ("refused", "bad_file")
            return self.emit("update_refused", release=rid, reason="bad_file", detail="scripted")
        self.emit("update_downloaded", release=rid, version=version, bytes=0)
        self.emit("update_verified", release=rid, version=version)
        self.emit("update_installed", version=version, slot="b")
        threading.Thread(target=self._reboot, args=(rid, version), daemon=True).start()

    def _reboot(self, rid, version):
        old = self.fw
        self.c.publish(self._t("status"), json.dumps({"v": 1, "ts": int(time.time()), "online": False,
                                                      "reason": "reboot"}), 1, True).wait_for_publish(5)
        time.sleep(self.reboot_s)
        with self.lock:
            if self.behaviour == "rollback":
                self.handled[rid] = ("refused", "rolled_back")
                self._on_connect(self.c, None, None, 0)
                self.emit("update_rolled_back", version=version, to=old, reason="trial_timeout")
                return
            self.fw, self.trial = version, True
            self.handled[rid] = ("running",)
            self._on_connect(self.c, None, None, 0)
            self.emit("update_trial", version=version, slot="b")
        time.sleep(self.trial_s)
        with self.lock:
            self.trial = False
            self.emit("update_confirmed", version=version, slot="b")
            self.publish_state()

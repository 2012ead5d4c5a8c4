# `network` for the virtual device: a station interface that associates with the simulated
# access point (any SSID unless the harness was given one) while the world's Wi-Fi is up.
# Sockets are the host's real ones on loopback.
import os

import _vdevrt

STA_IF = 0
AP_IF = 1
STAT_IDLE = 1000
STAT_CONNECTING = 1001
STAT_GOT_IP = 1010
STAT_NO_AP_FOUND = 201
STAT_WRONG_PASSWORD = 202


class WLAN:
    def __init__(self, interface=STA_IF):
        self._if = interface
        self._active = False
        self._ssid = None
        self._key = None
        self._status = STAT_IDLE

    def active(self, v=None):
        if v is None:
            return self._active
        self._active = bool(v)
        if not v:
            self._status = STAT_IDLE

    def connect(self, ssid=None, key=None, *, bssid=None):
        if not self._active:
            raise OSError("Wifi Not Started")
        self._ssid, self._key = ssid, key
        self._status = STAT_CONNECTING

    def disconnect(self):
        self._ssid = None
        self._status = STAT_IDLE

    def status(self, param=None):
        if param == "rssi":
            return -55
        if self._status == STAT_IDLE or not self._active:
            return STAT_IDLE
        _vdevrt.drain()
        ap_ssid, ap_key = _vdevrt.state.get("ap") or (None, None)
        if not self._ssid or (ap_ssid is not None and self._ssid != ap_ssid):
            return STAT_NO_AP_FOUND
        if ap_key is not None and (self._key or "") != ap_key:
            return STAT_WRONG_PASSWORD
        if not _vdevrt.state.get("wifi", True):
            return STAT_NO_AP_FOUND
        return STAT_GOT_IP

    def isconnected(self):
        return self._if == STA_IF and self.status() == STAT_GOT_IP

    def ifconfig(self, cfg=None):
        if self.isconnected():
            return ("127.0.0.1", "255.0.0.0", "127.0.0.1", "127.0.0.1")
        return ("0.0.0.0", "0.0.0.0", "0.0.0.0", "0.0.0.0")

    def ipconfig(self, name):
        if name == "addr4":
            return self.ifconfig()[:2]
        raise ValueError(name)

    def config(self, name=None, **kw):
        if name == "mac":
            return bytes.fromhex(os.getenv("VDEV_UID") or "a0b1c2d3e4f5")
        if name in ("ssid", "essid"):
            return self._ssid or ""
        if name == "hostname":
            return "aedgate"
        return None

    def scan(self):
        _vdevrt.drain()
        ssid = (_vdevrt.state.get("ap") or [None])[0] or "aedsim"
        if not _vdevrt.state.get("wifi", True):
            return []
        return [(ssid.encode(), b"\x02\x00\x00\x00\x00\x01", 6, -55, 3, False)]


def hostname(name=None):
    return "aedgate"

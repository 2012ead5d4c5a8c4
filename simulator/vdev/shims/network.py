# `network` for the virtual device: a station interface that associates with the simulated
# access point (any SSID unless the harness was given one) while the world's Wi-Fi is up.
# Sockets are the host's real ones on loopback.
#
# As the ESP32's driver does it (ports/esp32/network_wlan.c, v1.23-v1.28; docs/twin.md):
# - once connect() was asked, the driver (re)connects by itself, for ever by default
#   (config(reconnects=n) limits it), after a failed attempt and after a drop, until disconnect();
# - connect() while it is connecting or retrying raises OSError("Wifi Internal Error")
#   (ESP_ERR_WIFI_CONN, micropython issue 17661); before active(True): "Wifi Not Started";
# - status(): STAT_GOT_IP only with an address; while retrying after a failure, the reason of the
#   last one (201 no AP found, 202 wrong password), not STAT_CONNECTING; STAT_IDLE when never
#   asked or after disconnect(); isconnected() only with an address.
# - nothing in the soft-reset path touches Wi-Fi (ports/esp32/main.c): the station stays
#   active, connected or still trying across Ctrl-D and the raw REPL's soft reboot. The vdev
#   starts a new interpreter then, so the station's state goes to the harness ({"sta": [...]})
#   and comes back in $VDEV_STA; a chip reset (power, machine.reset(), watchdog) clears it.
# An association (plus DHCP) takes _ASSOC_MS; a failed one is retried every _ASSOC_MS.
import json
import os
import time

import _vdevrt

STA_IF = 0
AP_IF = 1
STAT_IDLE = 1000
STAT_CONNECTING = 1001
STAT_GOT_IP = 1010
STAT_BEACON_TIMEOUT = 200
STAT_NO_AP_FOUND = 201
STAT_WRONG_PASSWORD = 202
STAT_ASSOC_FAIL = 203
STAT_HANDSHAKE_TIMEOUT = 204
_ASSOC_MS = 1200


class _WLAN:
    def __init__(self, interface=STA_IF):
        self._if = interface
        self._active = False
        self._ssid = None
        self._key = None
        self._asked = False      # connect() requested (the driver keeps trying)
        self._up = False         # associated and has an address
        self._reason = None      # why the last attempt failed / the link dropped
        self._since = 0          # ticks when the attempt in progress started
        self._reconnects = -1    # unlimited
        self._tries = 0

    def active(self, v=None):
        if v is None:
            return self._active
        self._active = bool(v)
        if not v:
            self._asked = self._up = False
            self._reason = None
        self._save()

    def connect(self, ssid=None, key=None, *, bssid=None):
        if not self._active:
            raise OSError("Wifi Not Started")
        self._update()
        if self._asked and not self._up:
            print("E (%d) wifi:sta is connecting, return error" % time.ticks_ms())
            raise OSError("Wifi Internal Error")
        self._ssid, self._key = ssid, key
        self._asked, self._up, self._reason = True, False, None
        self._since = time.ticks_ms()
        self._tries = 0
        self._save()

    def disconnect(self):
        self._asked = self._up = False
        self._reason = None
        self._save()

    def _save(self):
        if self._if == STA_IF:
            # when the attempt in progress started, in wall-clock ms (ticks are per process)
            since = time.time_ns() // 1000000 - time.ticks_diff(time.ticks_ms(), self._since)
            _vdevrt.send({"sta": [self._active, self._asked, self._ssid, self._key, self._up,
                                  self._reason, self._reconnects, since, self._tries]})

    def _restore(self, saved):
        (self._active, self._asked, self._ssid, self._key, self._up, self._reason,
         self._reconnects, since, self._tries) = saved
        self._since = time.ticks_add(time.ticks_ms(), -(time.time_ns() // 1000000 - since))

    def _ap(self):
        """None when the access point would take us, else the failure reason."""
        _vdevrt.drain()
        ap_ssid, ap_key = _vdevrt.state.get("ap") or (None, None)
        if not _vdevrt.state.get("wifi", True) or not self._ssid or (ap_ssid is not None and self._ssid != ap_ssid):
            return STAT_NO_AP_FOUND
        if ap_key is not None and (self._key or "") != ap_key:
            return STAT_WRONG_PASSWORD
        return None

    def _update(self):
        if not (self._active and self._asked):
            return
        now = time.ticks_ms()
        if self._up:
            if self._ap() is not None:  # the access point went away: the driver starts over
                self._up, self._reason, self._since, self._tries = False, STAT_BEACON_TIMEOUT, now, 0
                self._save()
            return
        while time.ticks_diff(now, self._since) >= _ASSOC_MS:  # an attempt has ended
            why = self._ap()
            if why is None:
                self._up, self._reason = True, None
                self._save()
                return
            if why != self._reason:
                self._reason = why
                self._save()
            self._tries += 1
            if 0 <= self._reconnects < self._tries:  # config(reconnects=n) spent: give up
                self._asked = False
                self._save()
                return
            self._since = time.ticks_add(self._since, _ASSOC_MS)

    def status(self, param=None):
        if param == "rssi":
            return -55
        if not self._active:
            return STAT_IDLE
        self._update()
        if self._up:
            return STAT_GOT_IP
        if self._reason is not None:
            return self._reason
        return STAT_CONNECTING if self._asked else STAT_IDLE

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
        if "reconnects" in kw:
            self._reconnects = kw["reconnects"]
            self._save()
            return None
        if name == "reconnects":
            return self._reconnects
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


_ifaces = {}


def WLAN(interface=STA_IF):
    """One object per interface, as on the ESP32 (network_wlan.c returns a static one): the
    board, selftest and the REPL all see the same station."""
    if interface not in _ifaces:
        _ifaces[interface] = w = _WLAN(interface)
        saved = os.getenv("VDEV_STA")
        if interface == STA_IF and saved:
            w._restore(json.loads(saved))
    return _ifaces[interface]


def hostname(name=None):
    return "aedgate"

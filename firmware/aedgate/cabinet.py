# What the cabinet knows about itself, and which events and alarms follow from each reading.
# Pure logic: readings come in as plain values, events go out through `emit(dict)`; no hardware,
# no network, no timers here (the app owns those), so every rule is easy to test.

_DAY_S = 86400
# Top of the ESP32 ADC's linear range at ATTN_11DB (MicroPython docs/esp32/quickref.rst:
# 150-2450 mV); above it read_uv() reads short.
_ADC_LINEAR_UV = 2450000


def battery_mv(uvs, cfg):
    """The battery voltage from several ADC conversions (microvolts at the pin): sorted, the
    lowest and highest quarter dropped (spikes), the rest averaged, because one conversion's
    noise times the divider is larger than a real change (docs/twin.md). Returns (mV, over):
    a reading beyond the ADC's linear range is clamped there and flagged, not trusted."""
    uvs = sorted(uvs)
    cut = len(uvs) // 4
    kept = uvs[cut:len(uvs) - cut]
    uv = sum(kept) // len(kept)
    over = uv > _ADC_LINEAR_UV
    if over:
        uv = _ADC_LINEAR_UV
    return int(uv * cfg["battery_divider"] * cfg["battery_cal"] / 1000), over


class Cabinet:
    def __init__(self, cfg, emit, fw):
        self.cfg = cfg
        self._emit = emit
        self.door = "closed"
        self.lock = "locked"
        self.battery_mv = None
        self.mains = None
        self.temp_c = None
        self.alarms = set()
        self.service_needed = False
        self.mission = None          # mission id while a mission window is open
        self.door_opened_at = None   # Unix seconds
        self.fw = fw
        self._expiry_level = {}      # expiry field -> lowest warning threshold already reported
        self.changed = True          # state differs from what was last published
        self._reported_mv = None
        self._reported_temp = None
        self.battery_over_range = False  # the ADC reading was beyond its linear range (clamped)
        self._temp_fresh = True      # no good reading since boot or since the sensor failed

    # -- helpers -------------------------------------------------------------------------
    def _event(self, kind, extra=None):
        ev = {"type": kind}
        if extra:
            ev.update(extra)
        self._emit(ev)

    def _alarm(self, name, on):
        if on and name not in self.alarms:
            self.alarms.add(name)
            self.changed = True
        elif not on and name in self.alarms:
            self.alarms.discard(name)
            self.changed = True

    # -- door ----------------------------------------------------------------------------
    def door_changed(self, is_open, now):
        """Returns True when the siren should sound (opened with no mission)."""
        new = "open" if is_open else "closed"
        if new == self.door:
            return False
        self.door = new
        self.changed = True
        extra = {"mission": self.mission} if self.mission else None
        if is_open:
            self.door_opened_at = now
            self._event("door_opened", extra)
            if not self.mission:
                self._alarm("door_alarm", True)
                self._event("door_alarm")
                return True
            return False
        open_s = now - self.door_opened_at if self.door_opened_at is not None else 0
        self.door_opened_at = None
        extra = extra or {}
        extra["open_s"] = max(0, open_s)
        self._event("door_closed", extra)
        self._alarm("door_alarm", False)
        self._alarm("door_left_open", False)
        return False

    def door_still_open(self, now):
        """Called when the door-left-open timer fires (at the limit, then periodically)."""
        if self.door == "open":
            self._alarm("door_left_open", True)
            self._event("door_left_open", {"open_s": now - (self.door_opened_at or now)})

    # -- power ---------------------------------------------------------------------------
    def battery_reading(self, mv, over_range=False):
        cfg = self.cfg
        # Report a new state for a real change only: ADC noise must not publish every sample.
        if self._reported_mv is None or abs(mv - self._reported_mv) >= cfg["battery_report_mv"]:
            self.changed = True
        if over_range != self.battery_over_range:
            self.battery_over_range = over_range
            self.changed = True
        self.battery_mv = mv
        low, crit, hyst = cfg["battery_low_mv"], cfg["battery_critical_mv"], cfg["battery_hysteresis_mv"]
        # Three bands. Enter a worse band at its threshold; leave it only `hyst` above it, so a
        # battery hovering around a threshold does not flap.
        band = "battery_critical" if "battery_critical" in self.alarms else (
            "battery_low" if "battery_low" in self.alarms else None)
        if mv <= crit or (band == "battery_critical" and mv < crit + hyst):
            new = "battery_critical"
        elif mv <= low or (band is not None and mv < low + hyst):
            new = "battery_low"
        else:
            new = None
        if new == band:
            return
        self._alarm("battery_low", new == "battery_low")
        self._alarm("battery_critical", new == "battery_critical")
        if new == "battery_critical" or (new == "battery_low" and band is None):
            self._event(new, {"battery_mv": mv})
        elif new is None:
            self._event("battery_ok", {"battery_mv": mv})

    def battery_pct(self):
        if self.battery_mv is None:
            return None
        full, empty = self.cfg["battery_full_mv"], self.cfg["battery_empty_mv"]
        pct = (self.battery_mv - empty) * 100 // (full - empty)
        return max(0, min(100, pct))

    def mains_changed(self, present):
        if present == self.mains:
            return
        first = self.mains is None
        self.mains = present
        self.changed = True
        self._alarm("mains_lost", not present)
        if not present:
            self._event("mains_lost")
        elif not first:
            self._event("mains_restored")

    # -- climate -------------------------------------------------------------------------
    def temp_reading(self, c):
        if c is None:
            return
        if c == 85.0 and self._temp_fresh:
            # The DS18B20's power-on value: its first conversion did not happen (power-up, a
            # sensor plugged back in, a brownout). Not a reading; a second 85.0 in a row is real.
            self._temp_fresh = False
            return
        self._temp_fresh = False
        c = round(c, 1)
        if self._reported_temp is None or abs(c - self._reported_temp) >= 0.5:
            self.changed = True
        self.temp_c = c
        cfg = self.cfg
        lo, hi, hyst = cfg["temp_min_c"], cfg["temp_max_c"], cfg["temp_hysteresis_c"]
        if "temp_out_of_range" not in self.alarms:
            if c < lo or c > hi:
                self._alarm("temp_out_of_range", True)
                self._event("temp_out_of_range", {"temp_c": c, "min_c": lo, "max_c": hi})
        elif lo + hyst <= c <= hi - hyst:
            self._alarm("temp_out_of_range", False)
            self._event("temp_ok", {"temp_c": c})

    def temp_failed(self):
        """The sensor did not answer: drop temp_c from the state (docs/protocol.md), no event."""
        self._temp_fresh = True  # when it answers again it has just powered up
        if self.temp_c is not None:
            self.temp_c = None
            self._reported_temp = None
            self.changed = True

    # -- consumables ---------------------------------------------------------------------
    def days_left(self, field, today):
        from aedgate.compat import parse_date
        d = parse_date(self.cfg[field]) if self.cfg[field] else None
        return None if d is None else d - today

    def load_expiry(self, raw):
        """What was already reported for which date (from flash): reboots don't repeat it."""
        import json
        try:
            levels = json.loads(raw) if raw else {}
        except ValueError:
            levels = {}
        if isinstance(levels, dict):
            for field in levels:
                item = levels[field]
                if isinstance(item, list) and len(item) == 2 and item[0] == self.cfg.get(field):
                    self._expiry_level[field] = item[1]
                    name = "pads" if field == "pads_expiry" else "aed_battery"
                    self._alarm(name + ("_expired" if item[1] == -1 else "_expiring"), True)

    def dump_expiry(self):
        import json
        return json.dumps(dict((f, [self.cfg[f], self._expiry_level[f]]) for f in self._expiry_level))

    def check_expiry(self, now):
        """Fire pads/AED-battery warnings once per threshold crossed (e.g. 30 and 7 days), and
        an expired event the day after the date. Returns True when what was reported changed
        (the app persists it)."""
        before = dict(self._expiry_level)
        self._check_expiry(now)
        return before != self._expiry_level

    def _check_expiry(self, now):
        today = now // _DAY_S
        for field, name in (("pads_expiry", "pads"), ("aed_battery_expiry", "aed_battery")):
            left = self.days_left(field, today)
            if left is None:
                continue
            info = {"days_left": left, "expiry": self.cfg[field]}
            level = self._expiry_level.get(field)
            if left < 0:
                if level != -1:
                    self._expiry_level[field] = -1
                    self._alarm(name + "_expiring", False)
                    self._alarm(name + "_expired", True)
                    self._event(name + "_expired", info)
                continue
            crossed = None
            for t in self.cfg["expiry_warn_days"]:
                if left <= t and (crossed is None or t < crossed):
                    crossed = t
            if crossed is None:
                if level is not None:  # a new date was set: clear old warnings
                    self._expiry_level.pop(field)
                    self._alarm(name + "_expiring", False)
                    self._alarm(name + "_expired", False)
                continue
            if level is None or level == -1 or crossed < level:
                self._expiry_level[field] = crossed
                self._alarm(name + "_expired", False)
                self._alarm(name + "_expiring", True)
                self._event(name + "_expiring", info)

    # -- report --------------------------------------------------------------------------
    def report_state(self, now, uptime_s, outbox):
        """The full state payload (without v/ts); marks it as reported."""
        today = now // _DAY_S
        self.changed = False
        self._reported_mv = self.battery_mv
        self._reported_temp = self.temp_c
        s = {
            "door": self.door,
            "lock": self.lock,
            "battery_mv": self.battery_mv if self.battery_mv is not None else 0,
            "battery_pct": self.battery_pct() or 0,
            "pads_expiry": self.cfg["pads_expiry"],
            "pads_days_left": self.days_left("pads_expiry", today),
            "aed_battery_expiry": self.cfg["aed_battery_expiry"],
            "aed_battery_days_left": self.days_left("aed_battery_expiry", today),
            "alarms": sorted(self.alarms | {"service_needed"}) if self.service_needed else sorted(self.alarms),
            "fw": self.fw,
            "uptime_s": uptime_s,
            "service_needed": self.service_needed,
            "outbox": outbox,
        }
        if self.mains is not None:
            s["mains"] = self.mains
        if self.temp_c is not None:
            s["temp_c"] = self.temp_c
        if self.battery_over_range:
            s["battery_over_range"] = True
        if self.mission:
            s["mission"] = self.mission
        return s

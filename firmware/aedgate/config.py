# The cabinet's configuration: one JSON file on flash, validated at boot. A bad value never stops
# the cabinet: it is replaced by a safe default and reported (a config_error event per problem).
import json

from aedgate.compat import parse_date

CONFIG_FILE = "config.json"
LAST_GOOD_FILE = "config.good"  # copy of the last file that loaded cleanly, used if it rots

# name: (type, default, low, high). Types: "int", "num", "bool", "str", "date", "secret",
# "ints" (list of ints), "pins", "keys". low/high bound ints/nums, or lengths of strings.
SCHEMA = {
    "device_id": ("id", None, 1, 64),
    "broker_host": ("str", "", 0, 253),
    "broker_port": ("int", 1883, 1, 65535),
    "broker_tls": ("bool", False, 0, 0),
    "broker_ca": ("str", "ca.der", 0, 64),        # CA certificate (DER) on flash, for TLS
    "broker_user": ("str", "", 0, 128),
    "broker_password": ("secret", "", 0, 128),
    "keepalive_s": ("int", 60, 10, 1200),
    "broker_resolve_after": ("int", 5, 1, 100),  # failed connects before the name is looked up again
    "mqtt_timeout_s": ("int", 10, 2, 30),        # broker must answer within this, or the link is dead
    "wifi_ssid": ("str", "", 0, 32),
    "wifi_password": ("secret", "", 0, 64),
    "heartbeat_s": ("int", 900, 10, 86400),
    "sample_s": ("int", 60, 1, 3600),            # slow sensors: battery, temperature, expiry
    "door_left_open_s": ("int", 300, 10, 86400),
    "siren_s": ("int", 60, 0, 600),
    "debounce_ms": ("int", 20, 5, 2000),         # reed and micro switches settle in < 10 ms
    "mains_debounce_ms": ("int", 5000, 5, 60000),  # a flickering supply is not an outage
    "door_open_level": ("int", 1, 0, 1),         # pin level that means "door open"
    "battery_divider": ("num", 6.0, 1.0, 20.0),  # battery volts per volt at the ADC pin
    "battery_samples": ("int", 16, 1, 64),       # ADC conversions averaged per battery reading
    "battery_report_mv": ("int", 100, 10, 2000),  # a new state when the battery moved this much
    "battery_cal": ("num", 1.0, 0.5, 1.5),       # per-board calibration factor
    "battery_full_mv": ("int", 12700, 1000, 60000),
    "battery_empty_mv": ("int", 11000, 1000, 60000),
    "battery_low_mv": ("int", 11900, 1000, 60000),
    "battery_critical_mv": ("int", 11400, 1000, 60000),
    "battery_hysteresis_mv": ("int", 200, 0, 5000),
    "temp_min_c": ("num", 0.0, -60.0, 100.0),    # AED storage range (typical 0-50 C)
    "temp_max_c": ("num", 50.0, -60.0, 100.0),
    "temp_hysteresis_c": ("num", 1.0, 0.0, 20.0),
    "pads_expiry": ("date", None, 0, 0),
    "aed_battery_expiry": ("date", None, 0, 0),
    "expiry_warn_days": ("ints", [30, 7], 0, 3650),
    "pins": ("pins", {}, 0, 0),                  # checked pin by pin: _pin_problem()
    "ntp_host": ("str", "pool.ntp.org", 0, 253),  # SNTP after Wi-Fi; "" = signed time only
    "issuer": ("str", "dispatch", 1, 64),
    "keys": ("keys", [], 0, 0),                  # mission-token key slots: current and next
    "max_window_s": ("int", 300, 5, 1800),
    "iat_max_future_s": ("int", 3600, 60, 31536000),  # how far ahead of a known clock a token's iat may be
    "release_keys": ("keys", [], 0, 0),          # Ed25519 release keys: current and next
    "outbox_limit": ("int", 200, 20, 2000),      # events kept on flash through an outage
    "update_trial_s": ("int", 600, 60, 3600),    # a new release must be online and healthy by then
    "update_block": ("int", 1024, 256, 1536),    # bytes asked per update block (docs/protocol.md)
    "lock_type": ("choice", "pulse", 0, 0),
    "lock_pulse_ms": ("int", 3000, 100, 10000),
    "lock_cooldown_ms": ("int", 2000, 500, 60000),  # floor: lock.MIN_COOLDOWN_MS
}
CHOICES = {"lock_type": ("pulse", "hold", "motor")}
PIN_NAMES = ("door", "lock", "lock_sense", "siren", "led", "battery_adc", "mains", "temp", "button")
_OUTPUTS = ("lock", "siren", "led")
_PULLED = ("door", "button", "lock_sense")  # inputs that need the chip's pull-up
# GPIOs of the ESP32 classic that exist (ports/esp32/machine_pin.h: 0-23, 25-27, 32-39), less 20
# (not on WROOM/WROVER modules). 6-11 are the module's flash bus, 34-39 are inputs without pulls,
# 0/2/5/12/15 are strapping pins whose level at reset selects the boot mode or flash voltage, or
# (5, 15) is pulled high until the firmware runs. See docs/twin.md.
_STRAPPING = (0, 2, 5, 12, 15)
_ID_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-"


def valid_device_id(s):
    if not isinstance(s, str) or not 1 <= len(s) <= 64:
        return False
    for c in s:
        if c not in _ID_CHARS:
            return False
    return True


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _check(name, v):
    """None when v is acceptable for `name`, else a short reason code."""
    kind, _, lo, hi = SCHEMA[name]
    if kind == "int":
        if not _is_int(v):
            return "bad_type"
        return None if lo <= v <= hi else "out_of_range"
    if kind == "num":
        if not (_is_int(v) or isinstance(v, float)) or v != v:  # v != v: NaN
            return "bad_type"
        return None if lo <= v <= hi else "out_of_range"
    if kind == "bool":
        return None if isinstance(v, bool) else "bad_type"
    if kind in ("str", "secret"):
        if not isinstance(v, str):
            return "bad_type"
        return None if lo <= len(v) <= hi else "out_of_range"
    if kind == "id":
        return None if valid_device_id(v) else "bad_value"
    if kind == "date":
        if v is None:
            return None
        return None if parse_date(v) is not None else "bad_value"
    if kind == "choice":
        return None if v in CHOICES[name] else "bad_value"
    if kind == "ints":
        if not isinstance(v, list) or len(v) > 8:
            return "bad_type"
        for d in v:
            if not _is_int(d) or not lo <= d <= hi:
                return "bad_value"
        return None
    if kind == "pins":
        return None if isinstance(v, dict) else "bad_type"
    if kind == "keys":
        if not isinstance(v, list) or len(v) > 2:
            return "bad_type"
        for slot in v:
            if not (isinstance(slot, dict) and _hex_ok(slot.get("kid"), 0, 32) and _hex_ok(slot.get("key"), 32, 32)):
                return "bad_value"
        return None
    return "bad_type"


def _pin_problem(name, p):
    """None when GPIO `p` may carry `name` on an ESP32, else the reason code."""
    if name not in PIN_NAMES:
        return "unknown_key"
    if p is None:
        return None
    if not _is_int(p):
        return "bad_type"
    if not (0 <= p <= 39) or p in (20, 24, 28, 29, 30, 31):
        return "invalid_pin"          # machine.Pin raises ValueError("invalid pin")
    if 6 <= p <= 11:
        return "flash_bus"
    if p >= 34 and (name in _OUTPUTS or name in _PULLED or name == "temp"):
        return "input_only"           # Pin.OUT raises "pin can only be input"; no pull-ups
    if p in _STRAPPING and name != "led":
        return "strapping_pin"
    return None


def _check_pins(raw, errors):
    """The valid entries of `raw` (a dict); each bad one is reported as pins.<name> and left out,
    so that pin keeps its default wiring."""
    pins = {}
    for name in raw:
        reason = _pin_problem(name, raw[name])
        if reason:
            errors.append(("pins." + str(name)[:24], reason))
        else:
            pins[name] = raw[name]
    return pins


def _hex_ok(s, lo, hi):
    if not isinstance(s, str) or len(s) % 2 or not lo <= len(s) // 2 <= hi:
        return False
    for c in s:
        if c not in "0123456789abcdefABCDEF":
            return False
    return True


def validate(raw):
    """raw: the decoded JSON (any type). Returns (config dict, [(field, reason), ...])."""
    cfg = {}
    errors = []
    if not isinstance(raw, dict):
        errors.append(("config", "bad_type"))
        raw = {}
    for name in SCHEMA:
        default = SCHEMA[name][1]
        if name not in raw:
            cfg[name] = default
            continue
        reason = _check(name, raw[name])
        if reason:
            errors.append((name, reason))
            cfg[name] = default
        elif name == "pins":
            cfg[name] = _check_pins(raw[name], errors)
        else:
            cfg[name] = raw[name]
    for name in raw:
        if name not in SCHEMA:
            errors.append((str(name)[:32], "unknown_key"))
    # Cross-field rules: thresholds that contradict each other fall back together.
    if not cfg["battery_critical_mv"] < cfg["battery_low_mv"] or not cfg["battery_empty_mv"] < cfg["battery_full_mv"]:
        errors.append(("battery_low_mv", "out_of_range"))
        for n in ("battery_critical_mv", "battery_low_mv", "battery_empty_mv", "battery_full_mv"):
            cfg[n] = SCHEMA[n][1]
    if cfg["mqtt_timeout_s"] * 2 > cfg["keepalive_s"] * 3:
        # Past keepalive*1.5 the keepalive rule would find a silent broker first anyway.
        errors.append(("mqtt_timeout_s", "out_of_range"))
        cfg["mqtt_timeout_s"] = SCHEMA["mqtt_timeout_s"][1]
    if not cfg["temp_min_c"] < cfg["temp_max_c"]:
        errors.append(("temp_min_c", "out_of_range"))
        cfg["temp_min_c"], cfg["temp_max_c"] = SCHEMA["temp_min_c"][1], SCHEMA["temp_max_c"][1]
    return cfg, errors


def load(flash, fallback_id):
    """Read and validate the config file. Returns (config, errors). A missing, unreadable or
    corrupt file falls back to the last good copy, then to defaults; nothing here raises."""
    errors = []
    raw = None
    data = flash.read(CONFIG_FILE)
    if data is None:
        errors.append(("config", "missing"))
    else:
        try:
            raw = json.loads(data)
        except (ValueError, UnicodeError, MemoryError):
            errors.append(("config", "corrupt_file"))
    if raw is None:
        good = flash.read(LAST_GOOD_FILE)
        if good is not None:
            try:
                raw = json.loads(good)
            except ValueError:
                raw = None
    cfg, more = validate(raw if raw is not None else {})
    if raw is not None:
        errors.extend(more)
    if cfg["device_id"] is None:
        cfg["device_id"] = fallback_id
    if data is not None and not errors and flash.read(LAST_GOOD_FILE) != data:
        try:
            flash.write(LAST_GOOD_FILE, data)
        except OSError:
            pass  # a full flash (ENOSPC): keep the older copy; the next boot tries again
    return cfg, errors

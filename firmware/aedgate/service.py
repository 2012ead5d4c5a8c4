# Signed service commands from a technician or the registry (docs/protocol.md, cmd/service):
# confirm the AED is back after a mission, or set new expiry dates after replacing pads or the
# AED's battery. They arrive over MQTT (cmd/service) or over USB serial (aedgate service
# --port), and go through the same Gate as unlock tokens: verified, single-use, persisted.
import json

from aedgate import config, token
from aedgate.compat import parse_date

_DATE_FIELDS = {"set_pads_expiry": "pads_expiry", "set_aed_battery_expiry": "aed_battery_expiry"}
SERVICE_FILE = "service"  # present while service_needed (written by aedgate/window.py)


def check(claims):
    """The action is one we know, with a value it needs; else TokenError bad_claims."""
    action, value = claims["action"], claims["value"]
    if action == "aed_checked" and value is None:
        return
    if action in _DATE_FIELDS and parse_date(value) is not None:
        return
    raise token.TokenError("bad_claims", {"cti": claims["cti"], "mission": claims["mission"]})


def apply(flash, cfg, claims):
    """Carry out a verified service action on flash and in `cfg`. Returns the event to emit."""
    action, value = claims["action"], claims["value"]
    if action == "aed_checked":
        flash.remove(SERVICE_FILE)
        return {"type": "service_done"}
    field = _DATE_FIELDS[action]
    stored = _stored_config(flash, cfg)
    stored[field] = value
    flash.write(config.CONFIG_FILE, json.dumps(stored))
    cfg[field] = value
    return {"type": "service_done", "action": action, field: value}


def _stored_config(flash, cfg):
    """The configuration to change, as the file holds it: config.json, or when that does not
    parse the last good copy the app actually loaded (config.good), or as a last resort the
    running configuration. Never a stub: the result is written over config.json, and the next
    clean boot copies it over config.good too."""
    for name in (config.CONFIG_FILE, config.LAST_GOOD_FILE):
        raw = flash.read(name)
        try:
            stored = json.loads(raw) if raw else None
        except (ValueError, UnicodeError, MemoryError):
            stored = None
        if isinstance(stored, dict):
            return stored
    return dict(cfg)


def on_command(app, gate, reject, raw):
    """cmd/service over MQTT, inside the running app; `reject(cmd, error)` reports a refusal."""
    try:
        claims = gate.admit(raw, "service", app.clock.time(), check, app.clock_known)
    except token.TokenError as e:
        reject("service", e)
        return
    ev = apply(app.flash, app.cfg, claims)
    if claims["action"] == "aed_checked":
        app.cabinet.service_needed = False
    else:
        app.cabinet.check_expiry(app.clock.time())
    app.emit(ev)
    app.state_changed()
    app.ack({"cmd": "service", "result": "accepted", "cti": claims["cti"].hex()})


def apply_serial(raw, root="/"):
    """Over USB, with the app stopped (mpremote interrupted main.py): verify and apply, print one
    JSON line for the host tool. The event is queued in the outbox for the next connection."""
    from aedgate.compat import unix_time
    from aedgate.gate import Gate
    from aedgate.outbox import Outbox
    from aedgate.storage import Flash
    flash = Flash(root)
    cfg, _ = config.load(flash, "")
    result = {"cmd": "service"}
    try:
        gate = Gate(flash, cfg, cfg["device_id"])
        claims = gate.admit(bytes(raw), "service", unix_time(), check)
    except token.TokenError as e:
        result["result"] = "rejected"
        result["reason"] = e.args[0]
        print(json.dumps(result))
        return result
    ev = apply(flash, cfg, claims)
    ev["v"] = 1
    ev["ts"] = gate.now(unix_time())  # the board may still read 2000: never below the floor
    Outbox(flash).add(ev)
    result["result"] = "accepted"
    result["cti"] = claims["cti"].hex()
    result["action"] = claims["action"]
    print(json.dumps(result))
    return result

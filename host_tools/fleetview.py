"""What a person watching a fleet sees: a table of cabinets and a stream of events, rendered
from a host_tools.backend.FleetState (what arrives over MQTT: retained status and state, events,
acks). Used by `aedgate monitor` against any broker, and by the simulator's demo and live view."""
from __future__ import annotations

import time
from typing import Protocol

from rich.console import Group
from rich.table import Table
from rich.text import Text


class FleetView(Protocol):
    """What the rendering needs: the latest status and state per cabinet, recent events."""

    status: dict
    state: dict
    events: object  # sequence of (time, device_id, kind, payload)
    event_count: int

    def online(self) -> int: ...


_ALARM_STYLE = "bold red"


def describe(kind: str, ev: dict) -> str:
    if kind == "ack":
        return "ack %s %s %s" % (ev.get("cmd", ""), ev.get("result"), ev.get("reason", ""))
    extra = {k: v for k, v in ev.items() if k not in ("v", "ts", "type", "seq")}
    tail = " ".join("%s=%s" % kv for kv in extra.items())
    return "#%s %s %s" % (ev.get("seq"), ev.get("type"), tail)


def fleet_table(obs: FleetView, limit: int = 20, title: str = "cabinets as the registry sees them over MQTT") -> Table:
    t = Table(title=title, expand=False)
    for col in ("cabinet", "online", "door", "lock", "battery", "mains", "temp", "pads", "AED batt", "alarms"):
        t.add_column(col)
    for did in sorted(set(obs.status) | set(obs.state))[:limit]:
        st = obs.state.get(did, {})
        online = obs.status.get(did, {}).get("online")
        alarms = st.get("alarms", [])
        t.add_row(
            did,
            Text("yes", "green") if online else Text("no", _ALARM_STYLE),
            Text(st.get("door", "?"), _ALARM_STYLE if st.get("door") == "open" else ""),
            st.get("lock", "?"),
            "%s mV %s%%" % (st.get("battery_mv", "?"), st.get("battery_pct", "?")),
            {True: "on", False: Text("OFF", _ALARM_STYLE)}.get(st.get("mains"), "?"),
            "%s °C" % st.get("temp_c", "?"),
            "%s d" % st.get("pads_days_left", "?"),
            "%s d" % st.get("aed_battery_days_left", "?"),
            Text(", ".join(alarms), _ALARM_STYLE) if alarms else Text("-", "green"),
        )
    return t


def event_lines(obs: FleetView, n: int = 12) -> Text:
    out = Text()
    for ts, did, kind, ev in list(obs.events)[-n:]:
        style = _ALARM_STYLE if ev.get("type") in (
            "door_alarm", "battery_low", "battery_critical", "mains_lost", "temp_out_of_range",
            "pads_expired", "door_left_open", "token_rejected") else ""
        out.append("%s  %-9s %s\n" % (time.strftime("%H:%M:%S", time.localtime(ts)), did,
                                      describe(kind, ev)), style)
    return out


def screen(obs: FleetView, footer: str = "", limit: int = 20) -> Group:
    return Group(fleet_table(obs, limit), Text("recent events (aed/v1/+/event):", "bold"), event_lines(obs),
                 Text(footer, "dim"))

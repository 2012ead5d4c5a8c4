"""The reports a registry operator needs, read from the registry database (store.py): each
function returns a Report (title, columns, rows) that the CLI prints as a table, CSV or JSON."""
from __future__ import annotations

import datetime as dt
import json
import sqlite3
import time
from dataclasses import dataclass


@dataclass
class Report:
    title: str
    columns: list[str]
    rows: list[tuple]

    def as_dicts(self) -> list[dict]:
        return [dict(zip(self.columns, r)) for r in self.rows]


def _iso(t: float | None) -> str | None:
    return None if t is None else time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t))


def offline(db: sqlite3.Connection, longer_than_s: float, now: float | None = None) -> Report:
    """Cabinets whose latest status says offline, for longer than `longer_than_s`."""
    now = time.time() if now is None else now
    rows = db.execute(
        "SELECT c.device, c.offline_since, c.fw, s.door, s.lock FROM cabinets c "
        "LEFT JOIN latest_state s USING (device) WHERE c.online = 0 AND c.offline_since <= ? "
        "ORDER BY c.offline_since", (now - longer_than_s,)).fetchall()
    return Report("cabinets offline for more than %s" % _span(longer_than_s),
                  ["cabinet", "offline_since_utc", "offline_h", "fw", "last_door", "last_lock"],
                  [(d, _iso(t), round((now - t) / 3600, 1), fw, door, lock) for d, t, fw, door, lock in rows])


def expiring(db: sqlite3.Connection, days: int, today: dt.date | None = None) -> Report:
    """Electrode pads and AED batteries that expire within `days` (or have expired)."""
    today = today or dt.datetime.now(dt.timezone.utc).date()
    limit = (today + dt.timedelta(days=days)).isoformat()
    out = []
    for what, col in (("pads", "pads_expiry"), ("AED battery", "aed_battery_expiry")):
        for device, exp in db.execute(
                "SELECT device, %s FROM latest_state WHERE %s IS NOT NULL AND %s != '' AND %s <= ? "
                "ORDER BY %s, device" % (col, col, col, col, col), (limit,)):
            left = (dt.date.fromisoformat(exp) - today).days
            out.append((device, what, exp, left, "EXPIRED" if left < 0 else "expiring"))
    out.sort(key=lambda r: (r[2], r[0]))
    return Report("pads and AED batteries expiring within %d days (as of %s)" % (days, today),
                  ["cabinet", "item", "expiry", "days_left", "status"], out)


def alarms(db: sqlite3.Connection) -> Report:
    """Cabinets whose latest state carries alarms."""
    rows = []
    for device, al, door, lock, ts in db.execute(
            "SELECT device, alarms, door, lock, ts FROM latest_state WHERE alarms != '[]' ORDER BY device"):
        rows.append((device, ", ".join(json.loads(al)), door, lock, _iso(ts)))
    return Report("open alarms (latest state of each cabinet)",
                  ["cabinet", "alarms", "door", "lock", "state_at_utc"], rows)


def checks(db: sqlite3.Connection) -> Report:
    """Cabinets that need a technician's check: their latest state says service_needed (set after
    a mission until `aedgate service --aed-checked`), with their latest mission."""
    rows = db.execute(
        "SELECT s.device, m.mission, m.unlocked_ts, m.opened_ts, m.relocked_ts FROM latest_state s "
        "LEFT JOIN missions m ON m.device = s.device AND coalesce(m.unlocked_ts, m.accepted_ts, 0) = "
        "(SELECT max(coalesce(unlocked_ts, accepted_ts, 0)) FROM missions WHERE device = s.device) "
        "WHERE s.service_needed = 1 GROUP BY s.device ORDER BY s.device").fetchall()
    return Report("cabinets needing a check after a mission",
                  ["cabinet", "last_mission", "unlocked_utc", "door_opened_utc", "relocked_utc"],
                  [(d, m, _iso(u), _iso(o), _iso(r)) for d, m, u, o, r in rows])


def firmware(db: sqlite3.Connection) -> Report:
    rows = db.execute("SELECT coalesce(fw, '?'), count(*), sum(online) FROM cabinets GROUP BY 1 "
                      "ORDER BY 2 DESC").fetchall()
    total = sum(r[1] for r in rows) or 1
    return Report("firmware versions across the fleet",
                  ["fw", "cabinets", "online", "share_pct"],
                  [(fw, n, on, round(100 * n / total, 1)) for fw, n, on in rows])


def gaps(db: sqlite3.Connection) -> Report:
    """Per cabinet: events stored, seqs missing since seq 1, what events_dropped reports explain,
    and the rest (loss). Events still in a cabinet's outbox count as missing until they come."""
    rows = []
    for device, lo, hi, n, dropped in db.execute(
            "SELECT device, min(seq), max(seq), count(*), "
            "sum(CASE WHEN type = 'events_dropped' THEN coalesce(json_extract(body, '$.count'), 0) ELSE 0 END) "
            "FROM events GROUP BY device ORDER BY device"):
        missing = hi - n
        rows.append((device, n, hi, missing, dropped, max(0, missing - dropped)))
    return Report("event sequence per cabinet (seq 1 .. highest received)",
                  ["cabinet", "events", "highest_seq", "missing", "dropped_reported", "unexplained"],
                  [r for r in rows if r[3] or r[4]])


def summary(db: sqlite3.Connection) -> Report:
    q = lambda sql: db.execute(sql).fetchone()[0]  # noqa: E731
    miss = q("SELECT coalesce(sum(hi - n), 0) FROM (SELECT max(seq) hi, count(*) n FROM events GROUP BY device)")
    rows = [("cabinets", q("SELECT count(*) FROM cabinets")),
            ("online", q("SELECT coalesce(sum(online), 0) FROM cabinets")),
            ("events", q("SELECT count(*) FROM events")),
            ("missing seqs", miss),
            ("acks", q("SELECT count(*) FROM acks")),
            ("missions", q("SELECT count(*) FROM missions")),
            ("open alarms", q("SELECT count(*) FROM latest_state WHERE alarms != '[]'")),
            ("needing a check", q("SELECT count(*) FROM latest_state WHERE service_needed = 1"))]
    return Report("registry summary", ["what", "count"], rows)


def _span(s: float) -> str:
    if s >= 86400 and s % 86400 == 0:
        return "%d d" % (s // 86400)
    if s >= 3600 and s % 3600 == 0:
        return "%d h" % (s // 3600)
    if s >= 60 and s % 60 == 0:
        return "%d min" % (s // 60)
    return "%g s" % s


def parse_span(text: str) -> float:
    """'90s', '15m', '2h', '3d' or plain seconds -> seconds; ValueError with the accepted forms."""
    t = text.strip().lower()
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    try:
        if t and t[-1] in units:
            return float(t[:-1]) * units[t[-1]]
        return float(t)
    except ValueError:
        raise ValueError("a duration looks like 90s, 15m, 2h or 3d, got %r" % text) from None


REPORTS = {"offline": offline, "expiring": expiring, "alarms": alarms, "checks": checks,
           "firmware": firmware, "gaps": gaps, "summary": summary}

"""What an operator reads about a rollout, from its database alone (so `aedgate rollout status`
and `versions` run beside the controller, or after it): Reports in the registry's format
(host_tools.backend.reports.Report: title, columns, rows; printed as a table, CSV or JSON)."""
from __future__ import annotations

import sqlite3
import time

from host_tools.backend.reports import Report, _iso
from host_tools.rollout.release import explain


def rollout_row(db: sqlite3.Connection) -> dict | None:
    cur = db.execute("SELECT * FROM rollouts ORDER BY id DESC LIMIT 1")
    row = cur.fetchone()
    return None if row is None else dict(zip([c[0] for c in cur.description], row))


def waves(db: sqlite3.Connection, rollout: int) -> Report:
    """One row per wave: cabinets, pending, started, done, failed, offline (not finished and
    offline when last seen)."""
    rows = db.execute(
        "SELECT c.wave, count(*), sum(c.phase='pending'), sum(c.phase='started'), "
        "sum(c.phase='done'), sum(c.phase='failed'), "
        "sum(c.phase IN ('pending','started') AND coalesce(f.online, 0) = 0) "
        "FROM cabinets c LEFT JOIN fleet f ON f.device = c.device WHERE c.rollout = ? "
        "GROUP BY c.wave ORDER BY c.wave", (rollout,)).fetchall()
    return Report("waves (wave 0 = canary)",
                  ["wave", "cabinets", "pending", "started", "done", "failed", "offline"],
                  [tuple(r) for r in rows])


def failures(db: sqlite3.Connection, rollout: int, limit: int = 50) -> Report:
    rows = db.execute(
        "SELECT device, wave, reason, detail, finished FROM cabinets WHERE rollout = ? AND "
        "phase = 'failed' ORDER BY finished LIMIT ?", (rollout, limit)).fetchall()
    return Report("failed cabinets", ["cabinet", "wave", "reason", "detail", "meaning", "when_utc"],
                  [(d, w, r, dt, explain(r), _iso(t)) for d, w, r, dt, t in rows])


def cabinets(db: sqlite3.Connection, rollout: int) -> Report:
    rows = db.execute(
        "SELECT c.device, c.wave, c.phase, c.offers, c.reason, f.fw, f.online "
        "FROM cabinets c LEFT JOIN fleet f ON f.device = c.device WHERE c.rollout = ? "
        "ORDER BY c.ord", (rollout,)).fetchall()
    return Report("cabinets of the rollout",
                  ["cabinet", "wave", "phase", "offers", "reason", "fw", "online"],
                  [tuple(r) for r in rows])


def versions(db: sqlite3.Connection) -> Report:
    """Firmware across the fleet: every cabinet the controller has seen (not only those in the
    rollout), by the version its latest status/state named; `on_trial` counts those whose
    release is not yet confirmed."""
    rows = db.execute(
        "SELECT coalesce(fw, '?'), count(*), coalesce(sum(online), 0), coalesce(sum(fw_trial), 0) "
        "FROM fleet GROUP BY 1 ORDER BY 2 DESC, 1").fetchall()
    total = sum(r[1] for r in rows) or 1
    return Report("firmware versions across the fleet",
                  ["fw", "cabinets", "online", "on_trial", "share_pct"],
                  [(fw, n, on, tr, round(100.0 * n / total, 1)) for fw, n, on, tr in rows])


def headline(row: dict, now: float | None = None) -> str:
    now = time.time() if now is None else now
    alive = ""
    if row.get("heartbeat"):
        age = now - row["heartbeat"]
        alive = ("; controller %s alive" % row["owner"]) if age < 10 else (
            "; no controller running (last seen %.0f s ago)" % age)
    return "rollout %d: release %s (%s), %s%s, wave %d%s" % (
        row["id"], row["version"], row["release"], row["status"],
        (": " + row["reason"]) if row.get("reason") else "", row["wave"], alive)

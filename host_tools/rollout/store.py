"""A rollout's state in one SQLite file (WAL): the rollout (release, plan, status, current
wave), one row per cabinet in it (wave, phase, offers, times, result) and the latest firmware
seen per cabinet of the whole fleet (the versions report).

Several processes share it: the controller (`aedgate rollout start/resume`, or the simulator's
library use) writes; `pause`, `abort` and `resume` write the rollout's `status` only, which the
running controller reads on every step; `status` and `versions` read. WAL lets readers run
beside the writer; every status change by the controller is conditional on the status it
expects, so an operator's pause written in between is never overwritten.

Status values: running, paused, done, halted, aborted. Phases of a cabinet: pending (not yet
offered), started (offered, no result yet), done, failed."""
from __future__ import annotations

import os
import sqlite3
import time

SCHEMA_VERSION = 1
ACTIVE = ("running", "paused")
FINAL = ("halted", "aborted")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS rollouts (
    id INTEGER PRIMARY KEY, release TEXT NOT NULL, version TEXT NOT NULL, release_dir TEXT NOT NULL,
    plan TEXT NOT NULL, status TEXT NOT NULL, reason TEXT, wave INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL, updated REAL NOT NULL, owner TEXT, heartbeat REAL);
CREATE TABLE IF NOT EXISTS cabinets (
    rollout INTEGER NOT NULL, device TEXT NOT NULL, ord INTEGER NOT NULL, wave INTEGER NOT NULL,
    phase TEXT NOT NULL DEFAULT 'pending', offers INTEGER NOT NULL DEFAULT 0,
    first_offer REAL, last_offer REAL, last_progress REAL, finished REAL,
    reason TEXT, detail TEXT, PRIMARY KEY (rollout, device));
CREATE TABLE IF NOT EXISTS fleet (
    device TEXT PRIMARY KEY, fw TEXT, fw_slot TEXT, fw_trial INTEGER, online INTEGER,
    shard INTEGER, seen REAL);
"""


class StoreError(Exception):
    """The database cannot be used; str() is one line."""


class RolloutStore:
    def __init__(self, path: str, readonly: bool = False):
        self.path = path
        if readonly and not os.path.isfile(path):
            raise StoreError("%s does not exist (start a rollout with it first)" % path)
        try:
            if readonly:
                self.db = sqlite3.connect("file:%s?mode=ro" % path, uri=True, timeout=10,
                                          check_same_thread=False)
            else:
                self.db = sqlite3.connect(path, timeout=10, check_same_thread=False)
                self.db.execute("PRAGMA journal_mode=WAL")
                self.db.execute("PRAGMA synchronous=NORMAL")
                self.db.executescript(_SCHEMA)
                have = self.db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
                if have is None:
                    self.db.execute("INSERT INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
                elif int(have[0]) > SCHEMA_VERSION:
                    raise StoreError("%s has rollout schema %s, newer than this aedgate's %d"
                                     % (path, have[0], SCHEMA_VERSION))
                self.db.commit()
            self.db.execute("SELECT count(*) FROM rollouts").fetchone()
        except sqlite3.DatabaseError as e:
            raise StoreError("%s is not a rollout database: %s" % (path, e)) from None

    def close(self) -> None:
        self.db.close()

    # -- rollouts -------------------------------------------------------------------------
    def latest(self):
        """The newest rollout as a dict, or None."""
        cur = self.db.execute("SELECT * FROM rollouts ORDER BY id DESC LIMIT 1")
        row = cur.fetchone()
        return None if row is None else dict(zip([c[0] for c in cur.description], row))

    def create(self, release: str, version: str, release_dir: str, plan_json: str,
               waves: list[list[str]], now: float) -> int:
        with self.db:
            cur = self.db.execute(
                "INSERT INTO rollouts (release, version, release_dir, plan, status, wave, created, "
                "updated) VALUES (?, ?, ?, ?, 'running', 0, ?, ?)",
                (release, version, release_dir, plan_json, now, now))
            rid = cur.lastrowid
            self.db.executemany(
                "INSERT INTO cabinets (rollout, device, ord, wave) VALUES (?, ?, ?, ?)",
                ((rid, d, i, w) for i, (w, d) in enumerate(
                    (w, d) for w, devs in enumerate(waves) for d in devs)))
        return rid

    def cabinets(self, rollout: int) -> list[tuple]:
        return self.db.execute(
            "SELECT device, wave, phase, offers, first_offer, last_offer, last_progress, finished, "
            "reason, detail FROM cabinets WHERE rollout = ? ORDER BY ord", (rollout,)).fetchall()

    def status(self, rollout: int) -> tuple[str, str | None]:
        return self.db.execute("SELECT status, reason FROM rollouts WHERE id = ?",
                               (rollout,)).fetchone()

    def set_status(self, rollout: int, new: str, reason: str | None = None,
                   expect: tuple = ACTIVE) -> bool:
        """Change the status only from one of `expect` (never overwrites an operator's write)."""
        with self.db:
            cur = self.db.execute(
                "UPDATE rollouts SET status = ?, reason = ?, updated = ? WHERE id = ? AND status IN "
                "(%s)" % ",".join("?" * len(expect)), (new, reason, time.time(), rollout, *expect))
        return cur.rowcount == 1

    def save(self, rollout: int, wave: int, rows: list[tuple], fleet_rows: list[tuple],
             owner: str | None, now: float) -> None:
        """One transaction: the cabinets that changed, the fleet table, the heartbeat."""
        with self.db:
            self.db.executemany(
                "UPDATE cabinets SET phase=?, offers=?, first_offer=?, last_offer=?, last_progress=?, "
                "finished=?, reason=?, detail=? WHERE rollout=? AND device=?",
                [r[1:] + (rollout, r[0]) for r in rows])
            self.db.executemany(
                "INSERT INTO fleet VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(device) DO UPDATE SET "
                "fw=coalesce(excluded.fw, fw), fw_slot=coalesce(excluded.fw_slot, fw_slot), "
                "fw_trial=coalesce(excluded.fw_trial, fw_trial), "
                "online=coalesce(excluded.online, online), shard=excluded.shard, seen=excluded.seen",
                fleet_rows)
            self.db.execute("UPDATE rollouts SET wave=?, heartbeat=?, owner=? WHERE id=?",
                            (wave, now, owner, rollout))

    def release_owner(self, rollout: int) -> None:
        with self.db:
            self.db.execute("UPDATE rollouts SET owner=NULL, heartbeat=NULL WHERE id=?", (rollout,))

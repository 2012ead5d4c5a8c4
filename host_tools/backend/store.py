"""A reference registry database: the fleet's telemetry in embedded SQLite (stdlib sqlite3, no
server), and an ingest that survives a crash with no event lost or counted twice.

Why nothing is lost or doubled:
- the MQTT session is durable (clean_session=False, a stable client id per shard) and every
  subscription is QoS 1, so while the ingest is down the broker keeps what the fleet publishes
  (up to its max_queued_messages);
- each message is acknowledged (PUBACK, paho manual_ack) only after the transaction holding it
  has committed: a kill -9 before the commit means the broker sends it again;
- an event's primary key is (device, seq), so a redelivered event is ignored by the database
  (INSERT OR IGNORE), whatever the in-memory state of a restarted process.
WAL with synchronous=NORMAL makes a commit durable against a process crash (kill -9); against a
power cut of the registry's host use synchronous=FULL (`RegistryStore(..., fsync=True)`).

Schema (docs/backend.md shows it with the reports that read it):
  cabinets      one row per cabinet: latest status (online, fw, reset cause), offline_since
  latest_state  one row per cabinet: the latest retained state, with the columns reports use
  events        every distinct event, PRIMARY KEY (device, seq)
  acks          every command acknowledgement (a redelivered, identical ack counts once)
  missions      one row per (mission, device): unlocked, door opened, relocked, acked
  ingest_log    one row per committed batch: counts, for throughput figures
"""
from __future__ import annotations

import json
import queue
import sqlite3
import threading
import time
from pathlib import Path

from host_tools.backend.messages import FleetMessage

SCHEMA_VERSION = 1
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS cabinets (
    device        TEXT PRIMARY KEY,
    online        INTEGER NOT NULL,          -- 1/0 from the latest status message
    status_ts     INTEGER,                   -- the status message's ts (device clock)
    offline_since REAL,                      -- registry clock; see update_status()
    fw            TEXT,
    reset_cause   TEXT,
    boot_ts       INTEGER,
    first_seen    REAL NOT NULL,
    updated       REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS latest_state (
    device                 TEXT PRIMARY KEY,
    ts                     INTEGER NOT NULL,
    door                   TEXT,
    lock                   TEXT,
    battery_mv             INTEGER,
    battery_pct            INTEGER,
    mains                  INTEGER,
    temp_c                 REAL,
    pads_expiry            TEXT,             -- YYYY-MM-DD
    aed_battery_expiry     TEXT,             -- YYYY-MM-DD
    alarms                 TEXT NOT NULL,    -- JSON list
    service_needed         INTEGER,
    fw                     TEXT,
    body                   TEXT NOT NULL,    -- the whole message (JSON)
    received               REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    device   TEXT NOT NULL,
    seq      INTEGER NOT NULL,
    ts       INTEGER NOT NULL,
    type     TEXT NOT NULL,
    mission  TEXT,
    body     TEXT NOT NULL,
    received REAL NOT NULL,
    PRIMARY KEY (device, seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS events_type ON events (type);
CREATE TABLE IF NOT EXISTS acks (
    id       INTEGER PRIMARY KEY,
    device   TEXT NOT NULL,
    ts       INTEGER NOT NULL,
    cmd      TEXT NOT NULL,
    cti      TEXT,
    mission  TEXT,
    result   TEXT NOT NULL,
    reason   TEXT,
    received REAL NOT NULL
);
-- An ack has no seq; a redelivered one is the same row (identical fields) and is ignored.
CREATE UNIQUE INDEX IF NOT EXISTS acks_once ON acks
    (device, ts, cmd, coalesce(cti, ''), coalesce(mission, ''), result, coalesce(reason, ''));
CREATE TABLE IF NOT EXISTS missions (
    mission     TEXT NOT NULL,
    device      TEXT NOT NULL,
    accepted_ts INTEGER,
    unlocked_ts INTEGER,
    opened_ts   INTEGER,
    relocked_ts INTEGER,
    PRIMARY KEY (mission, device)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS ingest_log (   -- one row per ~1 s of ingest (throughput figures)
    t          REAL NOT NULL,                -- end of the interval (unix time)
    seconds    REAL NOT NULL,                -- its length
    messages   INTEGER NOT NULL,             -- messages committed in it
    events_new INTEGER NOT NULL,             -- of which new events
    commit_ms  REAL NOT NULL                 -- time spent in write() + COMMIT
);
"""

_MISSION_COLUMN = {"unlocked": "unlocked_ts", "door_opened": "opened_ts", "relocked": "relocked_ts"}


class RegistryStore:
    """The database. Single writer (the ingest); any number of readers (reports)."""

    def __init__(self, path: str | Path, fsync: bool = False, readonly: bool = False):
        self.path = str(path)
        if readonly:
            if not Path(self.path).exists():
                raise FileNotFoundError("no registry database at %s (run `aedgate registry ingest` first)"
                                        % self.path)
            self.db = sqlite3.connect("file:%s?mode=ro" % self.path, uri=True, check_same_thread=False)
            return
        self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=%s" % ("FULL" if fsync else "NORMAL"))
        self.db.executescript(SCHEMA)
        row = self.db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        if row is None:
            self.db.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        elif int(row[0]) != SCHEMA_VERSION:
            raise RuntimeError("%s has schema version %s; this aedgate writes %d"
                               % (self.path, row[0], SCHEMA_VERSION))

    def write(self, batch: list[FleetMessage]) -> int:
        """Store a batch in one transaction; returns how many events were new."""
        new = 0
        db = self.db
        db.execute("BEGIN")
        try:
            for m in batch:
                b = m.body
                if m.kind == "event":
                    cur = db.execute(
                        "INSERT OR IGNORE INTO events VALUES (?,?,?,?,?,?,?)",
                        (m.device, b["seq"], b["ts"], b["type"], b.get("mission"),
                         json.dumps(b, separators=(",", ":")), m.received))
                    if cur.rowcount == 1:
                        new += 1
                        col = _MISSION_COLUMN.get(b["type"])
                        if col and b.get("mission"):
                            self._mission(m.device, b["mission"], col, b["ts"])
                elif m.kind == "state":
                    self._state(m)
                elif m.kind == "status":
                    self._status(m)
                elif m.kind == "ack":
                    db.execute("INSERT OR IGNORE INTO acks (device, ts, cmd, cti, mission, result, reason, received)"
                               " VALUES (?,?,?,?,?,?,?,?)",
                               (m.device, b["ts"], b["cmd"], b.get("cti"), b.get("mission"),
                                b["result"], b.get("reason"), m.received))
                    if b["cmd"] == "unlock" and b["result"] == "accepted" and b.get("mission"):
                        self._mission(m.device, b["mission"], "accepted_ts", b["ts"])
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return new

    def _mission(self, device: str, mission: str, col: str, ts: int) -> None:
        self.db.execute("INSERT OR IGNORE INTO missions (mission, device) VALUES (?, ?)", (mission, device))
        self.db.execute("UPDATE missions SET %s = coalesce(%s, ?) WHERE mission = ? AND device = ?"
                        % (col, col), (ts, mission, device))

    def _state(self, m: FleetMessage) -> None:
        b = m.body
        mains = b.get("mains")
        self.db.execute(
            "INSERT INTO latest_state VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT(device) DO UPDATE SET "
            "ts=excluded.ts, door=excluded.door, lock=excluded.lock, battery_mv=excluded.battery_mv, "
            "battery_pct=excluded.battery_pct, mains=excluded.mains, temp_c=excluded.temp_c, "
            "pads_expiry=excluded.pads_expiry, aed_battery_expiry=excluded.aed_battery_expiry, "
            "alarms=excluded.alarms, service_needed=excluded.service_needed, fw=excluded.fw, "
            "body=excluded.body, received=excluded.received WHERE excluded.ts >= latest_state.ts",
            (m.device, b["ts"], b.get("door"), b.get("lock"), b.get("battery_mv"), b.get("battery_pct"),
             None if mains is None else int(bool(mains)), b.get("temp_c"), b.get("pads_expiry"),
             b.get("aed_battery_expiry"), json.dumps(b.get("alarms", [])),
             int(bool(b.get("service_needed"))), b.get("fw"),
             json.dumps(b, separators=(",", ":")), m.received))

    def _status(self, m: FleetMessage) -> None:
        """offline_since: when this registry saw the cabinet go from online to offline; for a
        cabinet first seen offline (a retained will), the will's ts — the connect after which it
        went away, so the earliest it can have gone offline."""
        b = m.body
        online = bool(b.get("online"))
        row = self.db.execute("SELECT online, offline_since FROM cabinets WHERE device = ?",
                              (m.device,)).fetchone()
        if online:
            since = None
        elif row is None:
            since = float(b["ts"])
        elif row[0]:
            since = m.received if not m.retain else float(b["ts"])
        else:
            since = row[1]
        self.db.execute(
            "INSERT INTO cabinets VALUES (?,?,?,?,?,?,?,?,?) ON CONFLICT(device) DO UPDATE SET "
            "online=excluded.online, status_ts=excluded.status_ts, offline_since=excluded.offline_since, "
            "fw=coalesce(excluded.fw, cabinets.fw), reset_cause=coalesce(excluded.reset_cause, "
            "cabinets.reset_cause), boot_ts=coalesce(excluded.boot_ts, cabinets.boot_ts), "
            "updated=excluded.updated",
            (m.device, int(online), b["ts"], since, b.get("fw"), b.get("reset_cause"),
             b.get("boot_ts"), m.received, m.received))

    def log_interval(self, seconds: float, messages: int, new: int, commit_ms: float) -> None:
        self.db.execute("INSERT INTO ingest_log VALUES (?,?,?,?,?)",
                        (time.time(), seconds, messages, new, commit_ms))

    def close(self) -> None:
        self.db.close()


class Ingest:
    """Messages from a FleetSubscriber (manual_ack=True) into a RegistryStore: the subscriber's
    threads queue them, one writer thread commits them in batches and then acknowledges each.
    A batch is whatever has queued since the last commit (at most `max_batch`): under load the
    batches grow and the cost of a commit is shared; when quiet, each message commits at once."""

    def __init__(self, store: RegistryStore, max_batch: int = 5000, log_every_s: float = 1.0):
        self.store = store
        self.max_batch = max_batch
        self.q: queue.Queue = queue.Queue()
        self.counters = {"messages": 0, "events_new": 0, "batches": 0, "commit_s": 0.0}
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="registry-writer", daemon=True)
        self._log_every = log_every_s

    def put(self, msg: FleetMessage) -> None:
        self.q.put(msg)

    def start(self) -> "Ingest":
        self._thread.start()
        return self

    def _run(self) -> None:
        acc = [0, 0, 0.0]
        last_log = time.monotonic()
        try:
            while not self._stop.is_set():
                try:
                    first = self.q.get(timeout=0.2)
                except queue.Empty:
                    first = None
                if first is not None:
                    batch = [first]
                    while len(batch) < self.max_batch:
                        try:
                            batch.append(self.q.get_nowait())
                        except queue.Empty:
                            break
                    t0 = time.perf_counter()
                    new = self.store.write(batch)
                    dt = time.perf_counter() - t0
                    for m in batch:  # committed: now the broker may forget them
                        m.ack()
                    c = self.counters
                    c["messages"] += len(batch)
                    c["events_new"] += new
                    c["batches"] += 1
                    c["commit_s"] += dt
                    acc[0] += len(batch)
                    acc[1] += new
                    acc[2] += dt
                now = time.monotonic()
                if now - last_log >= self._log_every:
                    if acc[0]:
                        self.store.log_interval(now - last_log, acc[0], acc[1], acc[2] * 1000)
                        acc = [0, 0, 0.0]
                    last_log = now
        except BaseException as e:  # noqa: BLE001  (reported by the CLI; nothing was acked)
            self.error = e

    def idle(self) -> bool:
        return self.q.empty()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

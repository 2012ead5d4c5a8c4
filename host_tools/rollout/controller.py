"""The rollout controller: offers a signed release to a fleet wave by wave, serves its blocks,
tracks each cabinet to done or failed, and halts by itself (docs/updates.md, "Rolling out").

Library use (the CLI `aedgate rollout` and the simulator's fleet rollout both do this):

    from host_tools.backend import BrokerOptions
    from host_tools.rollout import Plan, Rollout

    shards = [BrokerOptions("mqtt://127.0.0.1:1883"), BrokerOptions("mqtt://127.0.0.1:1884")]
    ro = Rollout("rollout.db", "rel-0.2.0", Plan(canary=10, waves=[1, 10, 50, 100], rate=600),
                 shards)                      # devices=None: every cabinet seen at start
    ro.start()                                # connect, discover, create or resume the rollout
    status = ro.run(timeout=3600)             # 'done' | 'halted' | 'aborted' (or 'running'/
                                              # 'paused' when timeout/until stopped it first)
    print(ro.counts(), ro.waves())
    ro.close()                                # the rollout stays resumable in rollout.db

    ro = Rollout.resume("rollout.db", shards) # later, or after a crash: same plan and release

`step()` runs one tick (read the operator's pause/abort from the database, take what the fleet
sent, apply timeouts and the halt threshold, advance waves, send offers within the rate cap,
write the database) and returns the status; `run(until=fn, timeout=s)` repeats it every
`tick` seconds. `clock` (default time.time) is injectable for tests.

Who is done and who failed (the update brief): **done** when the cabinet's retained `state`
shows `fw` == the release's version and `fw_trial` false (or absent), or it sends
`update_confirmed` for that version; **failed** on `update_refused` naming this release or
`update_rolled_back` from this version, or no progress (a get, an update event, coming back
online) within the plan's wave timeout. A cabinet failed by timeout that later shows the new
version is done after all.

The block server answers gets from cabinets of this rollout while it runs or is paused (a
paused rollout lets downloads in progress finish, it only stops offering); a halted or aborted
rollout serves nothing more. Offers and blocks go out on the shard the cabinet's messages came
from (a cabinet talks to one shard).

MQTT: one paho client per shard through host_tools.backend.FleetSubscriber (clean session, the
`update` account of docs/deploy/mosquitto/acl); messages are handed from paho's threads to
`step()` through a deque, gets are answered on paho's thread at once.
"""
from __future__ import annotations

import json
import os
import socket
import time
from collections import deque
from typing import Callable

from host_tools.backend import BrokerOptions, FleetSubscriber, unique_client_id
from host_tools.rollout.blocks import DEVICE_RE, GET_TOPIC, BlockServer, block_topic
from host_tools.rollout.plan import Plan, RateLimiter
from host_tools.rollout.release import ServedRelease
from host_tools.rollout.store import ACTIVE, RolloutStore

PHASES = ("pending", "started", "done", "failed")
PROGRESS_SAVE_S = 5.0


class RolloutError(Exception):
    """Cannot start or resume; str() is one line. `code` is the CLI's exit status."""

    def __init__(self, message: str, code: int = 2):
        super().__init__(message)
        self.code = code


class Cab:
    __slots__ = ("device", "wave", "phase", "offers", "first_offer", "last_offer",
                 "last_progress", "finished", "reason", "detail", "dirty", "saved_progress")

    def __init__(self, device, wave, phase="pending", offers=0, first_offer=None, last_offer=None,
                 last_progress=None, finished=None, reason=None, detail=None):
        self.device, self.wave, self.phase, self.offers = device, wave, phase, offers
        self.first_offer, self.last_offer = first_offer, last_offer
        self.last_progress, self.finished = last_progress, finished
        self.reason, self.detail = reason, detail
        self.dirty = False
        self.saved_progress = last_progress   # what the database holds

    def row(self) -> tuple:
        return (self.device, self.phase, self.offers, self.first_offer, self.last_offer,
                self.last_progress, self.finished, self.reason, self.detail)


def offer_topic(device: str) -> str:
    return "aed/v1/%s/update/offer" % device


class Rollout:
    def __init__(self, db: str, release_dir: str, plan: Plan, shards: list[BrokerOptions], *,
                 devices: list[str] | None = None, publics: list[bytes] | None = None,
                 client_id: str | None = None, clock: Callable[[], float] = time.time,
                 tick: float = 0.5, discover_s: float = 3.0, log: Callable[[str], None] | None = None):
        self.store = RolloutStore(db)
        self.db_path = db
        self.plan = plan
        self.shards = list(shards)
        try:
            self.release = ServedRelease.load(release_dir, publics)   # ReleaseDirError: one line
        except Exception:
            self.store.close()
            raise
        self.release_dir = str(release_dir)
        self.devices = devices
        for d in devices or ():
            if not DEVICE_RE.fullmatch(d):
                raise RolloutError("bad device id %r in the device list" % d)
        self.client_id = client_id or unique_client_id("update", shards[0].user if shards else None)
        self.clock = clock
        self.tick = tick
        self.discover_s = discover_s
        self.log = log or (lambda msg: None)
        self.id: int | None = None
        self.status = "new"
        self.reason: str | None = None
        self.wave = 0
        self.cabs: dict[str, Cab] = {}
        self.by_wave: list[list[Cab]] = []
        self.fleet: dict[str, list] = {}    # device -> [fw, fw_slot, fw_trial, online, shard, seen]
        self._fleet_dirty: set = set()
        self.inbox: deque = deque()
        # (device, time) of each block served, from the paho threads: a deque, which they can
        # append to while step() drains it (a dict they added to made step()'s walk over it fail
        # with "dictionary changed size during iteration" in a 30,000-cabinet rollout)
        self.gets: deque = deque()
        self.server = BlockServer([self.release], allow=self._may_fetch)
        self.feed: FleetSubscriber | None = None
        self.limiter: RateLimiter | None = None
        self.offers_sent = 0
        self.owner = "%s:%d" % (socket.gethostname(), os.getpid())

    # -- setting up -----------------------------------------------------------------------
    @classmethod
    def resume(cls, db: str, shards: list[BrokerOptions], **kw) -> "Rollout":
        """The newest rollout in `db`, with the release folder and plan it was started with."""
        st = RolloutStore(db)
        row = st.latest()
        st.close()
        if row is None:
            raise RolloutError("%s holds no rollout (start one with `aedgate rollout start`)" % db)
        ro = cls(db, row["release_dir"], Plan.from_json(row["plan"]), shards, **kw)
        if ro.release.id != row["release"]:
            raise RolloutError("release folder %s now holds release %s, not %s that the rollout "
                               "started with" % (row["release_dir"], ro.release.id, row["release"]))
        return ro

    def start(self) -> "Rollout":
        """Connect (BrokerError/BrokerAuthError), then resume the newest rollout in the database
        if it is this release's and not halted or aborted, else create one: the cabinets are
        `devices`, or every cabinet whose retained status/state arrives within `discover_s`."""
        row = self.store.latest()
        resuming = row is not None and row["release"] == self.release.id and row["status"] not in ("halted", "aborted")
        if row is not None and not resuming and row["status"] in ACTIVE:
            raise RolloutError("%s: rollout %d of release %s (%s) is still %s; abort it first or "
                               "use another --db" % (self.db_path, row["id"], row["release"],
                                                     row["version"], row["status"]))
        if resuming and row["owner"] and row["heartbeat"] and time.time() - row["heartbeat"] < 10:
            raise RolloutError("rollout %d is being driven by %s (heartbeat %.0f s ago); only one "
                               "controller at a time" % (row["id"], row["owner"],
                                                         time.time() - row["heartbeat"]))
        self.feed = FleetSubscriber(self.shards, self.client_id, kinds=(),
                                    topics=["aed/v1/+/status", "aed/v1/+/state", "aed/v1/+/event",
                                            GET_TOPIC], keep_events=0,
                                    # paho sends at most 20 unacknowledged QoS 1 messages by
                                    # default and queues the rest: with thousands of cabinets
                                    # fetching, each block would wait for the PUBACKs before it.
                                    max_inflight=1000)
        self.feed.listen(self._on_message)
        self.feed.listen_raw(self._on_raw)
        self.feed.start()
        if resuming:
            self._load(row)
            # Learn who is online before the first step: a cabinet whose retained status has
            # not arrived yet would look offline, and a wave of "offline" cabinets is finished.
            self._gather(expect=set(self.cabs))
            self.log("rollout %d: resumed (%s, wave %d)" % (self.id, self.status, self.wave))
        else:
            seen = self._gather(expect=set(self.devices) if self.devices is not None else None)
            devices = self.devices if self.devices is not None else seen
            if not devices:
                self.close()
                raise RolloutError("no cabinets: none named (--devices) and none seen on the "
                                   "broker within %g s" % self.discover_s)
            waves = self.plan.assign(list(dict.fromkeys(devices)))
            self.id = self.store.create(self.release.id, self.release.version, self.release_dir,
                                        self.plan.to_json(), waves, self.clock())
            self._load(self.store.latest())
            self.log("rollout %d: release %s (%s) to %d cabinets in %d waves" % (
                self.id, self.release.version, self.release.id, len(self.cabs), len(self.by_wave)))
        self.limiter = RateLimiter(self.plan.rate, self.clock())
        return self

    def _load(self, row: dict) -> None:
        self.id = row["id"]
        stored = Plan.from_json(row["plan"])
        if stored != self.plan:
            # The waves were fixed when the rollout was created; rate and threshold go with
            # them. A different plan needs a new rollout.
            self.log("rollout %d: resuming with the plan it was started with (%s), not the one "
                     "given now" % (row["id"], stored.describe()))
            self.plan = stored
        self.status, self.reason, self.wave = row["status"], row["reason"], row["wave"]
        self.cabs, self.by_wave = {}, []
        now = self.clock()
        for r in self.store.cabinets(self.id):
            c = Cab(*r)
            if c.phase == "started":
                # No cabinet can make progress while no update server runs: the wave timeout
                # counts again from this start, not from before the controller stopped.
                c.last_progress = now
            self.cabs[c.device] = c
            while len(self.by_wave) <= c.wave:
                self.by_wave.append([])
            self.by_wave[c.wave].append(c)
        if self.status == "done" and any(c.phase in ("pending", "started") for c in self.cabs.values()):
            # cabinets that were offline through the rollout: resuming picks them up
            self.store.set_status(self.id, "running", None, expect=("done",))
            self.status = "running"

    def _gather(self, expect: set | None = None) -> list[str]:
        """Take the retained status/state messages the broker sends on subscribing: until every
        cabinet in `expect` has been heard of, or no new cabinet for half a second, or
        discover_s. Returns every cabinet seen (sorted)."""
        end = time.monotonic() + self.discover_s
        last_n, quiet_since = -1, time.monotonic()
        while time.monotonic() < end:
            time.sleep(0.1)
            self._drain()
            n = len(self.fleet)
            if expect is not None and expect <= self.fleet.keys():
                break
            if n != last_n:
                last_n, quiet_since = n, time.monotonic()
            elif n and time.monotonic() - quiet_since > 0.5:
                break
        self._drain()
        return sorted(self.fleet)

    # -- what arrives (paho threads) --------------------------------------------------------
    def _on_message(self, m) -> None:
        self.inbox.append((m.device, m.kind, m.body, m.shard))

    def _on_raw(self, topic, payload, retain, shard, t) -> None:
        if not topic.endswith("/update/get"):
            return
        ans = self.server.answer(topic, payload)
        if ans is None:
            return
        device, block = ans
        self.gets.append((device, t))
        # QoS 0 (docs/protocol.md "Firmware updates"): the cabinet asks again for a block that
        # does not come, so a PUBACK per block would be a second ack layer for nothing.
        self.feed.clients[shard].publish(block_topic(device), block, qos=0, retain=False)

    def _may_fetch(self, device: str, rel: ServedRelease) -> bool:
        c = self.cabs.get(device)
        return c is not None and c.phase != "pending" and self.status in ACTIVE

    # -- one tick -------------------------------------------------------------------------------
    def _drain(self, now: float | None = None) -> None:
        now = self.clock() if now is None else now
        ver = self.release.version
        while self.inbox:
            device, kind, body, shard = self.inbox.popleft()
            f = self.fleet.setdefault(device, [None, None, None, None, shard, now])
            f[4], f[5] = shard, now
            self._fleet_dirty.add(device)
            c = self.cabs.get(device)
            if kind == "status":
                f[3] = 1 if body.get("online") else 0
                if body.get("fw"):
                    f[0] = body["fw"]
                if c and c.phase == "started" and body.get("online"):
                    self._progress(c, now)
            elif kind == "state":
                f[0] = body.get("fw", f[0])
                f[1] = body.get("fw_slot", f[1])
                f[2] = 1 if body.get("fw_trial") else 0
                if c and c.phase != "done":
                    if body.get("fw") == ver and not body.get("fw_trial"):
                        self._finish(c, "done", now, None if c.phase == "started" else "already")
                    elif body.get("fw") == ver and c.phase == "started":
                        self._progress(c, now)   # on trial: on its way
            elif kind == "event" and c is not None:
                if body.get("type") == "update_confirmed" and body.get("version") == f[0]:
                    f[2] = 0  # no longer on trial, whether or not its next state came yet
                self._event(c, body, now)

    def _event(self, c: Cab, ev: dict, now: float) -> None:
        t = ev.get("type", "")
        if not t.startswith("update_"):
            return
        ver, rid = self.release.version, self.release.id
        if t == "update_confirmed" and ev.get("version") == ver:
            if c.phase != "done":
                self._finish(c, "done", now)
        elif t == "update_refused" and ev.get("release") == rid:
            if c.phase != "done":
                self._finish(c, "failed", now, "refused:" + str(ev.get("reason")), ev.get("detail"))
        elif t == "update_rolled_back" and ev.get("version") == ver:
            self._finish(c, "failed", now, "rolled_back:" + str(ev.get("reason")), ev.get("to"))
        elif c.phase == "started" and (ev.get("release") == rid or ev.get("version") == ver):
            self._progress(c, now)

    def _progress(self, c: Cab, now: float) -> None:
        c.last_progress = now
        # A downloading cabinet makes progress on every block: write it down every few seconds
        # only (a restart then judges the timeout from a slightly older time, never a newer one).
        if c.saved_progress is None or now - c.saved_progress >= PROGRESS_SAVE_S:
            c.dirty = True

    def _finish(self, c: Cab, phase: str, now: float, reason=None, detail=None) -> None:
        c.phase, c.finished, c.reason = phase, now, reason
        c.detail = None if detail is None else str(detail)[:128]
        c.dirty = True
        if phase == "failed":
            self.log("%s failed: %s%s" % (c.device, reason, (" (%s)" % detail) if detail else ""))

    def _online(self, device: str) -> bool:
        f = self.fleet.get(device)
        return bool(f and f[3])

    def step(self) -> str:
        now = self.clock()
        # 1. the operator's word (pause, resume, abort from another process)
        st, reason = self.store.status(self.id)
        if st != self.status:
            self.log("rollout %d: %s -> %s" % (self.id, self.status, st))
            self.status, self.reason = st, reason
        # 2. what the fleet said (stamped with this step's time: a wave that ends in this step
        # starts the next one at the same instant, never before)
        self._drain(now)
        while self.gets:  # a block served is progress for a started cabinet
            device, t = self.gets.popleft()
            c = self.cabs.get(device)
            if c is not None and c.phase == "started" and (c.last_progress or 0) < t:
                self._progress(c, t)
        # 3. timeouts
        started = failed = 0
        for c in self.cabs.values():
            if c.phase == "started" and now - (c.last_progress or now) > self.plan.wave_timeout:
                self._finish(c, "failed", now, "timeout")
            if c.phase != "pending":
                started += 1
            if c.phase == "failed":
                failed += 1
        # 4. halt threshold
        if self.status in ACTIVE and self.plan.should_halt(started, failed):
            why = "%d of %d started cabinets failed (halt at %s)" % (
                failed, started, self.plan.halt_text())
            if self.store.set_status(self.id, "halted", why):
                self.status, self.reason = "halted", why
                self.log("rollout %d: HALTED: %s" % (self.id, why))
        # 5. waves and offers
        if self.status == "running":
            self._advance(now)
        if self.status == "running":
            self._offer(now)
        # 6. the database
        rows = []
        for c in self.cabs.values():
            if c.dirty:
                rows.append(c.row())
                c.dirty, c.saved_progress = False, c.last_progress
        fleet_rows = [(d, *self.fleet[d]) for d in self._fleet_dirty]
        self._fleet_dirty.clear()
        self.store.save(self.id, self.wave, rows, fleet_rows, self.owner, time.time())
        return self.status

    def _wave_finished(self, w: int) -> bool:
        return all(c.phase in ("done", "failed") or (c.phase == "pending" and not self._online(c.device))
                   for c in self.by_wave[w])

    def _advance(self, now: float) -> None:
        while self._wave_finished(self.wave):
            if self.wave + 1 >= len(self.by_wave):
                if not any(c.phase == "started" for c in self.cabs.values()):
                    left = sum(1 for c in self.cabs.values() if c.phase == "pending")
                    why = ("%d cabinets offline, not offered" % left) if left else None
                    if self.store.set_status(self.id, "done", why, expect=("running",)):
                        self.status, self.reason = "done", why
                        self.log("rollout %d: done%s" % (self.id, (" (%s)" % why) if why else ""))
                return
            self.wave += 1
            self.log("rollout %d: wave %d of %d (%d cabinets)" % (
                self.id, self.wave, len(self.by_wave) - 1, len(self.by_wave[self.wave])))

    def _offer(self, now: float) -> None:
        # new starts, rate-capped, in wave order (an earlier wave's latecomers first)
        fresh = [c for w in range(self.wave + 1) for c in self.by_wave[w]
                 if c.phase == "pending" and self._online(c.device)]
        for c in fresh[:self.limiter.take(now, len(fresh))]:
            c.phase, c.first_offer, c.last_progress = "started", now, now
            self._send_offer(c, now)
        # repeats to started cabinets without a result
        for c in self.cabs.values():
            if (c.phase == "started" and c.last_offer is not None and now - c.last_offer >= self.plan.offer_every
                    and self._online(c.device)):
                self._send_offer(c, now)

    def _send_offer(self, c: Cab, now: float) -> None:
        shard = self.fleet[c.device][4]
        body = json.dumps({"v": 1, "ts": int(time.time()), "release": self.release.id,
                           "size": self.release.size}, separators=(",", ":"))
        self.feed.clients[shard].publish(offer_topic(c.device), body, qos=1, retain=False)
        c.offers += 1
        c.last_offer = now
        c.dirty = True
        self.offers_sent += 1

    # -- running ----------------------------------------------------------------------------------
    def run(self, until: Callable[["Rollout"], bool] | None = None,
            timeout: float | None = None) -> str:
        """step() every `tick` s until the rollout is done, halted or aborted, `until(self)` is
        true, or `timeout` s have passed. Returns the status. A paused rollout keeps running
        here (serving blocks to downloads in progress) until resumed or aborted."""
        end = None if timeout is None else time.monotonic() + timeout
        while True:
            status = self.step()
            if status in ("done", "halted", "aborted"):
                return status
            if until is not None and until(self):
                return status
            if end is not None and time.monotonic() >= end:
                return status
            time.sleep(self.tick)

    def close(self) -> None:
        if self.feed is not None:
            self.feed.close()
            self.feed = None
        if self.id is not None:
            try:
                self.store.release_owner(self.id)
            except Exception:  # noqa: BLE001  (closing: the heartbeat simply ages)
                pass
        self.store.close()

    # -- reading -------------------------------------------------------------------------------
    def counts(self) -> dict:
        out = {p: 0 for p in PHASES}
        out["offline"] = 0
        for c in self.cabs.values():
            out[c.phase] += 1
            if c.phase in ("pending", "started") and not self._online(c.device):
                out["offline"] += 1
        out["cabinets"] = len(self.cabs)
        return out

    def waves(self) -> list[dict]:
        rows = []
        for w, cabs in enumerate(self.by_wave):
            r = {"wave": w, "cabinets": len(cabs), **{p: 0 for p in PHASES}, "offline": 0}
            for c in cabs:
                r[c.phase] += 1
                if c.phase in ("pending", "started") and not self._online(c.device):
                    r["offline"] += 1
            rows.append(r)
        return rows

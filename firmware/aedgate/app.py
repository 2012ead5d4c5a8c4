# The cabinet application: wires the injected hardware (`hw`) to the cabinet logic, the outbox
# and the MQTT session, as a handful of asyncio tasks. The same code runs on the ESP32 (board.py
# builds `hw` from machine.Pin & co.) and in the simulator (simulated `hw`).
import json

from aedgate import VERSION, config
from aedgate import lock as locks
from aedgate.cabinet import Cabinet, battery_mv
from aedgate.commands import Commands
from aedgate.compat import IrqSignal, TaskSignal, asyncio, sleep_ms, ticks_add, ticks_diff, ticks_ms
from aedgate.gate import Gate
from aedgate.link import Broker
from aedgate.mqtt import MQTTClient, MQTTError, backoff_ms, period_ms
from aedgate.outbox import Outbox
from aedgate.window import UnlockWindow
from slots import Slots

_EXPIRY_FILE = "expiry"
_STATE_MIN_INTERVAL_MS = 1000  # at most one state message a second, however busy the cabinet
# Longest wait between two connection attempts: long enough to spread a national fleet's
# reconnects after a broker outage, short enough that a cabinet is never unreachable for long.
_BACKOFF_CAP_MS = 120000# SNTP: again a day after a good answer, 5 minutes after a failed one (ticks: < 6 days).
_SNTP_EVERY_MS = 86400000
_SNTP_RETRY_MS = 300000


class App:
    def __init__(self, hw, flash):
        self.hw = hw
        self.flash = flash
        self.clock = hw.clock
        self.log = getattr(hw, "log", None) or print
        # What the app counts of itself, for whoever hosts it (the simulator reads these; log
        # lines are for people and may change wording).
        self.counters = {"events": 0, "sessions": 0, "mqtt_errors": 0, "no_network": 0,
                         "link_lost": 0, "commands_ignored": 0}
        self.cfg, errors = config.load(flash, hw.unique_id)
        self.device_id = self.cfg["device_id"]
        self.gate = Gate(flash, self.cfg, self.device_id)
        self._sntp_due = ticks_ms()
        self.boot_ts = self.offline_since = self.clock.time()
        # An ESP32 powers on in 2000: never earlier than the floor. A clock already past the
        # floor was set before this reset (the RTC outlives all but power-on): it is believed,
        # and so is one set later by SNTP or a signed time (the gate's iat bound needs it).
        self.clock_known = self.clock.time() >= self.gate.floor.floor()
        self._clock_to_floor()
        self.topic = "aed/v1/" + self.device_id + "/"
        self.outbox = Outbox(flash, self.cfg["outbox_limit"])
        self.wake = TaskSignal()      # something is waiting to be published
        self.online = False
        self.mqtt = None
        # The broker's address is looked up once and kept (a lookup blocks the whole board).
        self.broker = Broker(hw.net, self.log, self.cfg["broker_resolve_after"])
        self._tls = None              # the SSLContext, made once (CA parsed once)
        self._link_lost = False
        self._state_sent = ticks_ms() - _STATE_MIN_INTERVAL_MS
        self._acks = []               # command results waiting to be sent (RAM: not events)
        self._timers = {}             # name -> task (door left open, siren)
        self._promises = {}           # critical task -> ticks by which it checks in again
        self.cabinet = Cabinet(self.cfg, self.emit, VERSION)
        self.emit({"type": "boot", "cause": hw.reset_cause, "fw": VERSION})
        for field, reason in errors:
            # A missing file on a fresh board is normal; say it once, as an error all the same.
            self.emit({"type": "config_error", "field": field, "reason": reason})
        if self.outbox.corrupt:
            self.emit({"type": "events_dropped", "count": self.outbox.corrupt, "reason": "corrupt"})
        self.slots = Slots(flash, VERSION)  # which app slot runs, and whether on trial
        self.image_confirmed = False  # hw.image_valid() ran this boot (App._healthy)
        self.fw_slot = self.slots.rec["slot"]  # the slot this boot runs (an install switches the record)
        self.update_notes()
        self.update = None            # the download (aedgate/update.py), loaded at the first offer
        self._offer = None            # an offer that came before it was loaded
        self._offered = TaskSignal()
        self.commands = {}            # cmd name -> callable(payload, dup)
        self.cabinet.load_expiry(flash.read(_EXPIRY_FILE))
        # The lock driver bounds its own output (aedgate/lock.py); the window decides when.
        self.lock = locks.make(self.cfg, hw.lock, getattr(hw, "lock_sense", None),
                               getattr(hw, "lock_timer", None)) if hw.lock else None
        self.window = UnlockWindow(self, self.lock)
        Commands(self, self.gate, self.window)

    # -- time ------------------------------------------------------------------------------
    def now(self):
        """Unix time for timestamps and expiry: the clock, never below the time floor."""
        return self.gate.now(self.clock.time())

    def _set_clock(self, t):
        """Set the board's clock (never below the floor). Times taken from the old clock move
        with it, so uptime and offline_since stay right."""
        t = max(int(t), self.gate.floor.floor())
        step = t - self.clock.time()
        if -2 < step < 2 or not hasattr(self.clock, "set"):
            return
        self.clock.set(t)
        self.boot_ts += step
        self.offline_since += step
        self.log("clock set %+d s" % step)

    def _clock_to_floor(self):
        if self.clock.time() < self.gate.floor.floor():
            self._set_clock(self.gate.floor.floor())

    def _sntp(self):
        """SNTP once Wi-Fi is up, then daily (blocks for at most ntptime's 1 s time-out after the
        name lookup). An answer behind the floor (spoofed, or a bad server) sets the floor."""
        host = self.cfg["ntp_host"]
        if not host or ticks_diff(ticks_ms(), self._sntp_due) < 0 or not self.hw.net.isconnected() \
                or not hasattr(self.clock, "sntp"):
            return
        try:
            t = self.clock.sntp(host)
        except Exception as e:  # OSError (time-out, DNS), a short answer: try again later
            self.log("sntp %s: %s %s" % (host, type(e).__name__, e))
            self._sntp_due = ticks_add(ticks_ms(), _SNTP_RETRY_MS)
            return
        self._sntp_due = ticks_add(ticks_ms(), _SNTP_EVERY_MS)
        self._set_clock(t)
        self.clock_known = True

    # -- events and state ----------------------------------------------------------------
    def emit(self, ev):
        ev["v"] = 1
        ev["ts"] = self.now()
        self.outbox.add(ev)  # on a full flash a routine event is dropped (no seq), and counted
        if "seq" in ev:
            self.counters["events"] += 1  # events numbered (what a backend can receive)
        self.log("event %s seq=%s" % (ev["type"], ev.get("seq", "dropped")))
        if self.outbox.dropped and ("seq" in ev or ev["type"] != "events_dropped"):
            count, self.outbox.dropped = self.outbox.dropped, 0
            self.emit({"type": "events_dropped", "count": count})
        self.wake.set()

    def update_notes(self):
        """The update events the record holds (boot.py had no outbox): into the outbox, then
        cleared from the record (a cut in between sends one twice, never loses one)."""
        for ev in self.slots.notes():
            self.emit(dict(ev))
        self.slots.clear_notes()

    def install(self, manifest, files):
        """Install a verified release into the free app slot (slots.py). Returns None (then the
        caller resets the board: the next boot runs it on trial) or the reason it was refused,
        which is reported as an event."""
        why = self.slots.install(manifest, files)
        if why:
            self.emit({"type": "update_refused", "version": str(manifest.get("version"))[:32], "reason": why})
        else:
            self.update_notes()
        return why

    async def _trial(self):
        """A release on trial has update_trial_s to come online healthy (confirmed in
        _connected); then it is given up and the board restarts on the previous slot."""
        await asyncio.sleep(self.cfg["update_trial_s"])
        if self._on_trial():
            ver = self.slots.rec["ver"]
            self.slots.expire("trial_timeout")
            while self.window.task is not None:   # an unlock under way ends first
                await sleep_ms(100)
            # Not a fault: a deliberate reset into the previous slot, like the one after an
            # install (main.py resets at once on update.Restart: no traceback, no 10 s crash
            # pause). The previous version reports update_rolled_back at its boot.
            why = "update trial: %s not online in time: reset into the previous slot" % ver
            try:
                from aedgate.update import Restart
            except Exception:  # no memory for it: the crash path resets as well, only later
                raise RuntimeError(why)
            raise Restart(why)

    def _on_trial(self):
        # The running release is on trial (not one installed since this boot, waiting for the reset).
        return self.slots.rec["trial"] and self.slots.rec["slot"] == self.fw_slot

    async def _updates(self):
        """Loads the update module when the first offer arrives (or at once when a reset cut a
        download short: "upd.run"), then runs it (aedgate/update.py). Its Restart ends the app
        (main.py resets the board into the new slot)."""
        if self.flash.read("upd.run") is None:
            await self._offered.wait()
        try:
            from aedgate.update import Update
            self.update = Update(self)
        except Exception as e:  # no memory for it: no updates this boot, never a crash loop
            self.log("update: cannot start: %s %s" % (type(e).__name__, e))
            return
        if self._offer is not None:
            self.update.offered(self._offer)
            self._offer = None
        await self.update.run()

    def _on_update(self, name, payload):
        # update/offer and update/block (docs/protocol.md, "Firmware updates"): nothing in them
        # is trusted; every byte is checked against the signed manifest.
        if name == "offer":
            if self.update is None:
                self._offer = payload
                self._offered.set()
            else:
                self.update.offered(payload)
        elif name == "block" and self.update is not None:
            self.update.block(payload)

    def ack(self, payload):
        payload["v"] = 1
        payload["ts"] = self.now()
        # Acks answer live requests and stay in RAM, at most 16. When full, a rejection makes
        # room first: garbage must never crowd out the ack of a genuine unlock.
        if len(self._acks) >= 16:
            drop = 0
            for i in range(len(self._acks)):
                if self._acks[i]["result"] == "rejected":
                    drop = i
                    break
            self._acks.pop(drop)
        self._acks.append(payload)
        self.wake.set()

    def state_changed(self):
        self.cabinet.changed = True
        self.wake.set()

    def state_payload(self):
        now = self.now()
        s = self.cabinet.report_state(now, now - self.boot_ts, len(self.outbox))
        s["v"] = 1
        s["ts"] = now
        s["fw_slot"] = self.fw_slot or "root"
        s["fw_trial"] = bool(self._on_trial())
        return json.dumps(s)

    # -- inputs --------------------------------------------------------------------------
    async def _watch(self, pin, on_change, settle_ms):
        """Wait for a pin interrupt, let the input settle, then report the new level. No
        polling: an idle cabinet sleeps here until an edge arrives."""
        flag = IrqSignal()  # set by the pin's interrupt handler
        pin.irq(handler=lambda p: flag.set(), trigger=pin.IRQ_RISING | pin.IRQ_FALLING)
        level = pin.value()
        on_change(level)
        while True:
            await flag.wait()
            await sleep_ms(settle_ms)
            now = pin.value()
            if now != level:
                level = now
                on_change(level)

    def _door(self, level):
        is_open = level == self.cfg["door_open_level"]
        if is_open and self.cabinet.door == "closed":
            self.window.door_opened()
        siren = self.cabinet.door_changed(is_open, self.now())
        if is_open:
            self._start_timer("door", self._door_left_open())
            if siren:
                self._start_timer("siren", self._siren(self.cfg["siren_s"]))
        else:
            self._stop_timer("door")
            self._stop_timer("siren")
            self._siren_off()
        self.wake.set()

    def _mains(self, level):
        self.cabinet.mains_changed(bool(level))
        self.wake.set()

    def _button(self, level):
        if level == 0:  # pressed: the button pulls its input low
            self.window.button_pressed()

    async def _door_left_open(self):
        # Reported at the limit, then again every 1800 s while the door stays open.
        await self.clock.sleep_ms(self.cfg["door_left_open_s"] * 1000)
        while True:
            self.cabinet.door_still_open(self.now())
            self.wake.set()
            await self.clock.sleep_ms(1800 * 1000)

    async def _siren(self, seconds):
        try:
            self.hw.siren.value(1)
            await self.clock.sleep_ms(seconds * 1000)
        finally:
            self._siren_off()

    def _siren_off(self):
        if self.hw.siren:
            self.hw.siren.value(0)

    def _start_timer(self, name, coro):
        self._stop_timer(name)
        self._timers[name] = asyncio.create_task(coro)

    def _stop_timer(self, name):
        t = self._timers.pop(name, None)
        if t:
            t.cancel()

    # -- slow sensors and heartbeat ------------------------------------------------------
    def read_battery_mv(self):
        """(mV, beyond the ADC's linear range?) from `battery_samples` conversions."""
        adc = self.hw.battery
        return battery_mv([adc.read_uv() for _ in range(self.cfg["battery_samples"])], self.cfg)

    async def sample(self):
        if self.hw.battery:
            mv, over = self.read_battery_mv()
            if over != self.cabinet.battery_over_range:
                self.log("battery: %s the ADC's linear range" % ("beyond" if over else "back within"))
            self.cabinet.battery_reading(mv, over)
        if self.hw.temp:
            try:
                self.cabinet.temp_reading(await self.hw.temp.read_c())
            except Exception:  # OSError, onewire.OneWireError, a CRC error: all the same to us
                self.cabinet.temp_failed()
        self._sntp()
        if self.cabinet.check_expiry(self.now()):
            self.flash.write(_EXPIRY_FILE, self.cabinet.dump_expiry())
        if self.cabinet.changed:
            self.wake.set()

    async def _sampler(self):
        while True:
            self.alive("sensors", 15000)  # one round of readings takes a second or two
            await self.sample()
            # The clock may run fast in the simulator; the promise is in real time, so give it
            # the whole interval (a slower clock is never an issue on a device).
            self.alive("sensors", self.cfg["sample_s"] * 1000 + 15000)
            await self.clock.sleep_ms(period_ms(self.cfg["sample_s"] * 1000))

    async def _heartbeat(self):
        while True:
            await self.clock.sleep_ms(period_ms(self.cfg["heartbeat_s"] * 1000))
            self.state_changed()

    # -- watchdog ------------------------------------------------------------------------
    def alive(self, task, within_ms):
        """A critical task promises to check in again within `within_ms`."""
        self._promises[task] = ticks_add(ticks_ms(), within_ms)

    def stuck(self):
        """Names of critical tasks that broke their promise."""
        now = ticks_ms()
        return [t for t in self._promises if ticks_diff(now, self._promises[t]) > 0]

    async def _watchdog(self, wdt):
        # Feed the hardware watchdog only while every critical task (sensors, MQTT session,
        # lock window) proves it is alive; a hung task stops the feeding and the board resets.
        reported = False
        while True:
            late = self.stuck()
            if not late:
                wdt.feed()
                reported = False
            elif not reported:
                self.log("watchdog: not feeding, stuck: %s" % ",".join(late))
                reported = True
            await sleep_ms(wdt.feed_ms)

    # -- MQTT session --------------------------------------------------------------------
    def _status(self, online):
        s = {"v": 1, "ts": self.now(), "online": online}
        if online:
            s["fw"] = VERSION
            s["reset_cause"] = self.hw.reset_cause
            s["boot_ts"] = self.boot_ts
            s["offline_since"] = self.offline_since  # when the link was lost (or the boot)
            s["outbox"] = len(self.outbox)           # events waiting, about to be sent
        return json.dumps(s)

    def _on_message(self, topic, payload, retain, dup):
        if topic.startswith(self.topic + "update/") and not retain:
            self._on_update(topic[len(self.topic) + 7:], payload)
            return
        if not topic.startswith(self.topic + "cmd/"):
            return
        name = topic[len(self.topic) + 4:]
        if retain:
            # Commands are never retained by a correct backend; a retained copy is stale by
            # definition and must never actuate anything.
            self.counters["commands_ignored"] += 1
            self.log("cmd %s: retained copy ignored" % name)
            return
        handler = self.commands.get(name)
        if handler is None:
            self.counters["commands_ignored"] += 1
            self.log("cmd %s: unknown command" % name)
            return
        handler(payload, dup)

    async def _session(self):
        cfg = self.cfg
        attempt = 0
        while True:
            if not cfg["broker_host"]:
                self.alive("session", 90000)
                await sleep_ms(60000)  # not configured: keep watching the cabinet locally
                continue
            # connect + subscribe + birth: three bounded waits of the client's timeout
            self.alive("session", 3000 * cfg["mqtt_timeout_s"] + 15000)
            client = None
            try:
                self._sntp()
                self._clock_to_floor()  # the floor may have risen past the clock (a token's iat)
                if cfg["broker_tls"] and self.clock.time() < self.gate.floor.floor():
                    # ESP32 builds check certificate dates against this clock
                    raise OSError("clock behind the time floor: no TLS yet")
                if cfg["broker_tls"] and self._tls is None:
                    # A missing or bad CA file fails here, each attempt, and is logged below.
                    self._tls = self.hw.tls_context(cfg)
                client = MQTTClient(
                    self.device_id, self.broker, cfg["broker_host"], cfg["broker_port"],
                    keepalive=cfg["keepalive_s"], timeout_ms=cfg["mqtt_timeout_s"] * 1000,
                    user=cfg["broker_user"] or None,
                    password=cfg["broker_password"] or None,
                    will=(self.topic + "status", self._status(False), 1, True),
                    ssl=self._tls if cfg["broker_tls"] else None,
                    server_hostname=cfg["broker_host"] if cfg["broker_tls"] else None,
                    on_message=self._on_message)
                # A persistent session: the broker keeps commands sent during a short blip.
                await client.connect(clean_session=False)
                await self._connected(client)
            except Exception as e:  # OSError, MQTTError, timeouts: all end in a reconnect
                # no Wi-Fi is not a broker error: counted apart
                self.counters["mqtt_errors" if self.hw.net.isconnected() else "no_network"] += 1
                self.log("mqtt: %s %s" % (type(e).__name__, e))
            if self.online:
                attempt = 0  # we were up: the next outage starts its backoff afresh
            if self.online:
                self.offline_since = self.now()
            self.online = False
            self.mqtt = None
            if client:
                client.close()
            if self.hw.net.isconnected():
                # The network is up but the broker is not: back off (jittered, growing), so a
                # fleet that lost its broker together does not stampede when it returns.
                delay = backoff_ms(attempt, cap_ms=_BACKOFF_CAP_MS)
                attempt = min(attempt + 1, 16)
            else:
                # No Wi-Fi: that says nothing about the broker. Try again soon, without growing
                # the backoff, so a cabinet is back within seconds of its Wi-Fi.
                delay = backoff_ms(2, cap_ms=_BACKOFF_CAP_MS)
            self.alive("session", delay + 30000)
            await sleep_ms(delay)

    async def _connected(self, client):
        self._link_lost = False
        self._sntp()  # Wi-Fi is up now: the first sync comes before the status and the events
        reader = asyncio.create_task(self._read(client))  # acks arrive through the reader
        try:
            # One SUBSCRIBE, one round trip, for all three (two update topics: update/# would
            # echo our own gets). Refused commands end the session; refused updates do not.
            t = self.topic
            codes = await client.subscribe_each((t + "cmd/#", t + "update/offer", t + "update/block"), 1)
            if codes[0] == 0x80:
                raise MQTTError("suback")
            if 0x80 in codes:
                self.log("mqtt: update topics refused by the broker: no updates")  # works on
            await client.publish(self.topic + "status", self._status(True), 1, True)
            self.mqtt = client
            self.online = True
            self.counters["sessions"] += 1
            self.log("online: %s:%d" % (self.cfg["broker_host"], self.cfg["broker_port"]))
            self._healthy()
            self.cabinet.changed = True
            await self._publish_all(client)
        finally:
            reader.cancel()

    def _healthy(self):
        """Online: when every task checks in, the running image and release stay."""
        # Not while a new image waits for its slot's switch (update.py, "set_boot"): the image
        # running may be that one with the old slot; unconfirmed, a reset goes back to the old.
        if not self.stuck() and self.flash.read("upd.run") != b"set_boot":
            if self.hw.image_valid:  # None where there is no OTA image (docs/hardware.md)
                self.hw.image_valid()
            # update.py writes a new image only after this (docs/updates-install.md, rule 1)
            self.image_confirmed = True
        if not self.stuck():
            if self._on_trial() and self.slots.confirm():
                self.update_notes()

    async def _read(self, client):
        try:
            await client.run()
        except Exception as e:
            self.counters["link_lost"] += 1
            self.log("mqtt link lost: %s %s" % (type(e).__name__, e))
        self._link_lost = True
        self.wake.set()

    async def _publish_all(self, client):
        """Send, in order: acks (dispatch is waiting for them), outbox events (removed only
        after PUBACK), then the state (at most one a second)."""
        # Progress keeps the promise: each publish is bounded by the client's timeout (write and
        # PUBACK), so a slow broker that still answers renews it with every PUBACK, however long
        # the backlog; a session that stops getting anywhere lets it lapse (the board resets).
        progress_ms = 2 * client.timeout_ms + 10000
        while not self._link_lost:
            if self._acks:
                await client.publish(self.topic + "ack", json.dumps(self._acks[0]), 1)
                self._acks.pop(0)
                self.alive("session", progress_ms)
                continue
            seq = self.outbox.oldest()
            if seq is not None:
                payload = self.outbox.payload(seq)
                if payload is not None:
                    await client.publish(self.topic + "event", payload, 1)
                self.outbox.remove(seq)
                self.alive("session", progress_ms)
                continue
            upd = self.update
            if upd is not None and upd.ask is not None and self.window.task is None:
                # A download's one get: only now, with no ack or event waiting and no unlock
                # window open (aedgate/update.py paces itself on it). QoS 0: update.py asks
                # again when no block comes, so a PUBACK per block would only add a round trip
                # (docs/protocol.md "Firmware updates").
                await client.publish(self.topic + "update/get", upd.ask, 0)
                upd.sent()
                self.alive("session", progress_ms)
                continue
            if self.cabinet.changed:
                wait = _STATE_MIN_INTERVAL_MS - ticks_diff(ticks_ms(), self._state_sent)
                if wait > 0:
                    await self.wake.wait_ms(wait)  # an event or ack meanwhile goes first
                    continue
                await client.publish(self.topic + "state", self.state_payload(), 1, True)
                self._state_sent = ticks_ms()
                self.alive("session", progress_ms)
                continue
            # Idle: check in once per keepalive (the reader proves the link by itself).
            ka = self.cfg["keepalive_s"] * 1000
            self.alive("session", 2 * ka + 30000)
            await self.wake.wait_ms(ka)

    # -- run -----------------------------------------------------------------------------
    async def run(self):
        hw = self.hw
        tasks = [asyncio.create_task(self._session()),
                 asyncio.create_task(self._sampler()),
                 asyncio.create_task(self._heartbeat())]
        if hw.door:
            tasks.append(asyncio.create_task(self._watch(hw.door, self._door, self.cfg["debounce_ms"])))
        if hw.mains:
            tasks.append(asyncio.create_task(self._watch(hw.mains, self._mains, self.cfg["mains_debounce_ms"])))
        if hw.button:
            tasks.append(asyncio.create_task(self._watch(hw.button, self._button, self.cfg["debounce_ms"])))
        if self.slots.rec["trial"]:
            tasks.append(asyncio.create_task(self._trial()))
        tasks.append(asyncio.create_task(self._updates()))
        wdt = getattr(hw, "wdt", None)
        if wdt:
            tasks.append(asyncio.create_task(self._watchdog(wdt)))
        try:
            await asyncio.gather(*tasks)
        finally:
            for t in tasks + list(self._timers.values()):
                t.cancel()
            self.window.stop()
            self._siren_off()

"""Simulated cabinets running the real firmware app, and fleets of them on one asyncio loop."""
from __future__ import annotations

import asyncio
import json
import random
import shutil
import tempfile
import time
from collections import deque
from pathlib import Path
from typing import Callable

import simulator  # noqa: F401  (puts firmware/ on sys.path)
from host_tools import brokerurl
from aedgate.app import App
from aedgate.mqtt import MQTTClient, MQTTError
from aedgate.storage import Flash
from slots import Slots

from simulator.fleet import slotboot
from simulator.world.flash import ESP32_VFS_BYTES, MemoryFlash, factory_install
from simulator.world.net import NetStats, SimNet
from simulator.world.faults import FaultyFlash, PowerCut
from simulator.world.hardware import CabinetWorld, SimClock, SimHardware, SimWDT

WORLD_TOPIC = "aedsim/world/"
# World control's reconnect backoff, seconds (first, largest), with jitter.
CONTROL_BACKOFF_S = (0.2, 5.0)


class ControlClient(MQTTClient):
    """The simulator's own client on a broker shard (world control, and the answers the
    workload waits for). It remembers what it subscribed to, so that the link made after a
    broker restart can subscribe to the same topics again."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.topics: dict[str, int] = {}

    async def subscribe(self, topic, qos=1):
        """One topic; returns the granted QoS, MQTTError("suback") when refused. (The
        firmware's client has only subscribe_each: the cabinet subscribes all its topics in
        one packet, and a device carries no code it does not use.)"""
        code = (await self.subscribe_each((topic,), qos))[0]
        if code == 0x80:
            raise MQTTError("suback")
        self.topics[topic] = qos
        return code
RAMP_TICK_S = 0.02  # a connection ramp starts its cabinets in bursts this far apart
DISPOSE_S = 5.0     # a reset app's parts are dropped this long after its task ended
CENSUS_CHUNK = 500  # cabinets counted per loop turn by Fleet.census (~1.5 ms)


def parse_broker(url: str) -> tuple[str, int]:
    """mqtt://host:port -> (host, port); ValueError otherwise (simulated cabinets speak plain
    MQTT to the simulator's brokers)."""
    host, port, _tls = brokerurl.parse(url)
    return host, port


def parse_brokers(urls: str | list[str]) -> list[tuple[str, int]]:
    """`mqtt://a:1883,mqtt://b:1884` (or a list) -> [(host, port), ...]: the broker shards."""
    if isinstance(urls, str):
        urls = [u for u in urls.split(",") if u.strip()]
    if not urls:
        raise ValueError("no broker URL given")
    return [parse_broker(u.strip()) for u in urls]


def device_id(n: int) -> str:
    return "cab-%04d" % n


def shard_of(n: int, shards: int) -> int:
    """Which broker shard cabinet number n (1-based) talks to: round robin over the shards."""
    return (n - 1) % shards


def source_of(n: int, shards: int, sources: int) -> int:
    """Which loopback source address cabinet n binds to. Counted per shard, so every
    (source address, broker) pair gets an even share of that pair's ~28k ephemeral ports."""
    return ((n - 1) // shards) % sources


class LoopbackNet:
    """Plain TCP for the simulator's own MQTT clients (world control, observers)."""

    async def open(self, host, port, ssl=None, server_hostname=None):
        return await asyncio.open_connection(host, port)


class FleetCounters:
    """The fleet's totals of what its cabinets' firmware counts of itself (App.counters) — no
    log wording involved. SimCabinet calls sync() each time its app reports through `hw.log`,
    which the app does right after every counted thing, so the totals stay current without
    summing thousands of cabinets; the line itself is kept only to show a person (`recent`)."""

    __slots__ = ("events", "online", "mqtt_errors", "wifi_down", "link_lost", "crashes", "commands",
                 "recent", "last_online_t")
    # App.counters key -> attribute here
    KEYS = (("events", "events"), ("sessions", "online"), ("mqtt_errors", "mqtt_errors"),
            ("no_network", "wifi_down"), ("link_lost", "link_lost"), ("commands_ignored", "commands"))

    def __init__(self) -> None:
        self.events = 0       # events created (outbox adds)
        self.online = 0       # sessions that came up (CONNACK + subscribe + birth)
        self.mqtt_errors = 0  # connect/session failures with the network up
        self.wifi_down = 0    # connect attempts without Wi-Fi (an injected outage): expected
        self.link_lost = 0
        self.crashes = 0
        self.commands = 0     # commands ignored (retained copies, unknown names)
        self.recent: deque = deque(maxlen=20)  # last few error lines, for a person
        self.last_online_t = 0.0  # wall clock of the latest session start

    def sync(self, device_id: str, seen: dict, counters: dict, line: str) -> None:
        """Add what `counters` (one app's) gained since `seen` (updated in place)."""
        for key, attr in self.KEYS:
            n = counters[key]
            d = n - seen.get(key, 0)
            if d:
                seen[key] = n
                setattr(self, attr, getattr(self, attr) + d)
                if key == "sessions":
                    self.last_online_t = time.time()
                elif key == "mqtt_errors":
                    self.recent.append("%s: %s" % (device_id, line))

    def crashed(self, device_id: str, line: str) -> None:
        self.crashes += 1
        self.recent.append("%s: %s" % (device_id, line))


def quiet_power_cuts(loop: asyncio.AbstractEventLoop) -> None:
    """A simulated power cut ends whatever firmware task was running, mid-call, like a real one;
    asyncio would report each such task as "exception never retrieved". Say nothing for those."""
    default = loop.get_exception_handler()

    def handler(loop, context):
        if isinstance(context.get("exception"), PowerCut):
            return
        if default:
            default(loop, context)
        else:
            loop.default_exception_handler(context)
    loop.set_exception_handler(handler)


def _dispose_later(task: asyncio.Task | None, app) -> None:
    """Drop what a reset app refers to, DISPOSE_S after its task ended (its own tasks' cleanup,
    cancelled with it, is done by then). Its parts refer back to it (bound methods handed to the
    cabinet, the MQTT client, the lock …), so they outlive it in cycles that only a full
    collection finds, and not even that for an app built before the worker froze its heap
    (loophealth.FleetCollector). Measured (docs/scale.md): 32.5 -> 12.1 objects and 5.9 -> 2.2
    KiB of RSS left per reset. A real board loses all of it at the reset."""
    loop = asyncio.get_running_loop()

    def later(_task=None) -> None:
        loop.call_later(DISPOSE_S, app.__dict__.clear)
    if task is None or task.done():
        later()
    else:
        task.add_done_callback(later)


class SimCabinet:
    """One cabinet: its world, its flash (a folder, or memory), and the firmware App on them.
    Resets like a board: a crash (panic), the watchdog, a power cut (also mid-flash-write,
    through FaultyFlash) all stop the app with its outputs off, and it boots again."""

    __slots__ = ("device_id", "net", "world", "flash", "app", "task", "crashes", "resets", "_seen",
                 "watchdog", "_wdt", "_fleet", "_log", "slot", "_pending")

    def __init__(self, device_id: str, flash_dir: Path | None, clock: SimClock, config: dict,
                 source_ip: str | None = None, log: Callable[[str], None] | None = None,
                 fleet: "Fleet | None" = None, stats: NetStats | None = None,
                 watchdog: bool = True):
        self.device_id = device_id
        self._fleet = fleet
        self._log = log
        self._seen: dict = {}  # the app's counters already added to the fleet's totals
        self.net = SimNet(source_ip, stats, device_id)
        self.world = CabinetWorld(device_id, clock, self.net, log=self.log)
        self.world.on_power = self._power
        self.world.lock_continuous = config.get("lock_type") == "hold"
        inner = Flash(str(flash_dir)) if flash_dir is not None else MemoryFlash(ESP32_VFS_BYTES)
        inner.write("config.json", json.dumps(config).encode())
        factory_install(inner)
        self.flash = FaultyFlash(inner, on_cut=self._power_cut)
        self.world.on_flash_cut = self.flash.cut_after
        self.world.on_flash_full = self.flash.set_full
        self.app: App | None = None
        self.task: asyncio.Task | None = None
        self.crashes = 0
        self.resets: dict[str, int] = {}
        self.watchdog = watchdog
        self._wdt: SimWDT | None = None
        self.slot = ""                     # the app slot running ("" = the root's package)
        self._pending: asyncio.TimerHandle | None = None  # the reset after a crash while booting

    def log(self, msg: str) -> None:
        if self._fleet is not None and self.app is not None:
            self._fleet.counters.sync(self.device_id, self._seen, self.app.counters, msg)
        if self._log:
            self._log("%s: %s" % (self.device_id, msg))

    def start(self, reset_cause: str = "power_on") -> None:
        self.resets[reset_cause] = self.resets.get(reset_cause, 0) + 1
        if reset_cause == "power_on":
            self.world.board_clock.power_on()  # the ESP32's clock restarts at 2000-01-01
        self.flash.powered = True
        self._wdt = SimWDT(lambda: self._reset("watchdog", "watchdog reset")) if self.watchdog else None
        self._seen = {}  # a new app counts from zero
        try:
            app_class = self._boot(reset_cause)
        except PowerCut:
            return  # cut while boot.py wrote the slot record: _power_cut took over
        except Exception as e:  # main.py: the slot's package failed to import
            self._crashed_booting(e)
            return
        try:
            self.app = app_class(SimHardware(self.world, reset_cause, self._wdt), self.flash)
            if self._fleet is not None:  # what it counted while booting (its boot event)
                self._fleet.counters.sync(self.device_id, self._seen, self.app.counters, "")
        except PowerCut:
            return  # cut while booting (its boot event was being written): _power_cut took over
        except Exception as e:  # crashed in App(): main.py resets the board
            self._crashed_booting(e)
            return
        self.task = asyncio.create_task(self._run())

    def _boot(self, reset_cause: str):
        """boot.py: which app slot runs (slots.py, counting hard boots of a release on trial and
        rolling a crash loop back); then the App class main.py imports: the root's (this
        process's firmware/) or the slot's package read from this cabinet's flash."""
        self.slot = ""
        try:
            self.slot = Slots(self.flash).boot(reset_cause != "soft")
        except PowerCut:
            raise
        except Exception as e:  # boot.py prints it and leaves the root's package
            self.log("boot.py: %s %r; running the root" % (type(e).__name__, e))
        if not self.slot:
            return App
        return slotboot.package(self.flash.sub(self.slot)).app_class()

    def _crashed_booting(self, e: Exception) -> None:
        """main.py caught it: outputs off, a pause, machine.reset() (a hard boot: counted by
        slots.py for a release on trial)."""
        self.crashes += 1
        self._halt()
        line = "firmware crashed booting slot %r: %s %r; resetting" % (self.slot, type(e).__name__, e)
        if self._fleet is not None:
            self._fleet.counters.crashed(self.device_id, line)
        self.log(line)
        self._pending = asyncio.get_running_loop().call_later(1, self._restart_after_crash)

    def _restart_after_crash(self) -> None:
        self._pending = None
        if self.task is None and self.app is None and self.world.powered:
            self.start("hard")

    async def _run(self) -> None:
        try:
            await self.app.run()
        except asyncio.CancelledError:
            raise
        except PowerCut:
            return  # _power_cut() already took the board down
        except Exception as e:  # a firmware crash: a real board resets (panic)
            self._halt()
            if type(e).__name__ == "Restart":  # aedgate/update.py: installed, main.py resets
                self.log("reset: %s" % e)
                self.start("hard")
                return
            self.crashes += 1
            line = "firmware crashed: %s %r; resetting" % (type(e).__name__, e)
            if self._fleet is not None:
                self._fleet.counters.crashed(self.device_id, line)
            self.log(line)
            await asyncio.sleep(1)
            # main.py catches it and calls machine.reset(); a real panic resets the chip too: both
            # boot with HARD_RESET ("hard") on v1.23-v1.28 (docs/twin.md, reset causes)
            self.start("hard")

    def _outputs_off(self) -> None:
        self.world.lock_output(0)
        self.world.siren_output(0)

    def _halt(self) -> None:
        """Everything a reset or power loss does at once: the app stops where it is, outputs
        fall to off, connections vanish without a DISCONNECT (the broker sends the will)."""
        if self._wdt:
            self._wdt.stop()
            self._wdt = None
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None
        task, app = self.task, self.app
        if task and task is not asyncio.current_task():
            task.cancel()
        if app is not None:
            _dispose_later(task, app)
        self.task = None
        self.app = None
        self._outputs_off()
        up = self.net.up
        self.net.set_up(False)
        self.net.up = up

    def _reset(self, cause: str, why: str) -> None:
        self.log(why)
        self._halt()
        self.start(cause)

    def _power_cut(self, restore_after_s: float = 0.5) -> None:
        """FaultyFlash cut the power mid-write: off now, back on shortly (a flicker)."""
        self.log("power cut (during a flash write)")
        self._halt()
        asyncio.get_running_loop().call_later(restore_after_s, self._power_back)

    def _power_back(self) -> None:
        if self.task is None and self.world.powered:
            self.start("power_on")

    def _power(self, on: bool) -> None:
        if on:
            self.log("power on")
            self.start("power_on")
        else:
            self.log("power off")
            self._halt()

    async def stop(self) -> None:
        task = self.task
        self._halt()
        if task:
            try:
                await task
            except (asyncio.CancelledError, Exception, PowerCut):
                pass
        self.net.set_up(False)


class Fleet:
    """N simulated cabinets sharing one asyncio loop, plus the world-control subscriber(s).

    `broker_url` may list several brokers (comma-separated): cabinets are spread over them
    round robin (shards). `flash="memory"` keeps each cabinet's flash in RAM instead of a
    folder; `source_ips` binds each cabinet's socket to one of these loopback addresses."""

    def __init__(self, count: int, broker_url: str, flash_root: Path | None = None,
                 speed: float = 1.0, fleet_key: bytes | None = None, first: int = 1,
                 heartbeat_s: int = 1800, extra_config: dict | None = None,
                 log: Callable[[str], None] | None = None, seed: int | None = None,
                 flash: str = "dir", source_ips: list[str] | None = None,
                 control: bool = True, stats: NetStats | None = None):
        self.brokers = parse_brokers(broker_url)
        self.host, self.port = self.brokers[0]
        self.clock = SimClock(speed)
        self._tmp = None
        if flash not in ("dir", "memory"):
            raise ValueError("flash must be 'dir' or 'memory'")
        if flash == "dir" and flash_root is None:
            self._tmp = tempfile.mkdtemp(prefix="aedsim-")
            flash_root = Path(self._tmp)
        self.flash_root = Path(flash_root) if flash == "dir" else None
        if self.flash_root is not None:
            self.flash_root.mkdir(parents=True, exist_ok=True)
        self.log = log or (lambda msg: None)
        self.rng = random.Random(seed)
        self.counters = FleetCounters()
        self.stats = stats if stats is not None else NetStats()
        self.cabinets: dict[str, SimCabinet] = {}
        self.first = first
        self.control = control
        sources = source_ips or [None]
        n_b = len(self.brokers)
        for n in range(first, first + count):
            did = device_id(n)
            host, port = self.brokers[shard_of(n, n_b)]
            cfg = self.cabinet_config(did, fleet_key, heartbeat_s, host, port)
            cfg.update(extra_config or {})
            self.cabinets[did] = SimCabinet(
                did, self.flash_root / did if self.flash_root is not None else None, self.clock,
                cfg, source_ip=sources[source_of(n, n_b, len(sources))], log=log, fleet=self,
                stats=self.stats)
        self.started = 0
        self._controls: list[tuple[MQTTClient, asyncio.Task]] = []
        # topic -> callback(payload): cabinets' answers the simulator subscribed to on its
        # control clients (the workload's missions wait for their acks this way)
        self.answers: dict[str, Callable] = {}

    def cabinet_config(self, did: str, fleet_key: bytes | None, heartbeat_s: int,
                       host: str | None = None, port: int | None = None) -> dict:
        from aedgate.compat import civil_from_days
        today = self.clock.time() // 86400
        pads = civil_from_days(today + self.rng.randint(20, 700))
        batt = civil_from_days(today + self.rng.randint(100, 1400))
        cfg = {
            "device_id": did, "broker_host": host or self.host, "broker_port": port or self.port,
            "heartbeat_s": heartbeat_s, "keepalive_s": 60,
            "pads_expiry": "%04d-%02d-%02d" % pads, "aed_battery_expiry": "%04d-%02d-%02d" % batt,
        }
        if fleet_key is not None:
            from host_tools.fleetkeys import derive_device_key
            cfg["keys"] = [{"kid": "", "key": derive_device_key(fleet_key, did).hex()}]
        return cfg

    def __getitem__(self, device_id: str) -> SimCabinet:
        return self.cabinets[device_id]

    async def start(self, ramp_per_s: float | None = None) -> None:
        """Boot every cabinet; with `ramp_per_s`, at most that many per second (a connect storm
        at 100% CPU hurts brokers and the simulator alike)."""
        quiet_power_cuts(asyncio.get_running_loop())
        if self.control:
            await self._start_control()
        t0 = time.monotonic()
        burst = max(1, int(ramp_per_s * RAMP_TICK_S)) if ramp_per_s else 0
        for i, cab in enumerate(self.cabinets.values()):
            if ramp_per_s:
                # Boot in small bursts (one tick's worth), not one by one: the loop then handles
                # the cabinets' connects and acks in batches, ~40% less CPU per boot at 1,000/s.
                # Behind schedule (the machine is slower than the ramp asked for), still let the
                # booted cabinets run between bursts instead of booting the rest in one go.
                ahead = t0 + i / ramp_per_s - time.monotonic()
                if ahead > RAMP_TICK_S:
                    await asyncio.sleep(ahead)
                elif i % burst == 0:
                    await asyncio.sleep(0)
            cab.start()
            self.started += 1

    async def _start_control(self) -> None:
        # The first connection is made here, so a broker that is not there fails the start;
        # afterwards each shard's link is kept up by _keep_control (a broker restart loses the
        # session: the new link subscribes again to everything the old one had).
        for slot, (host, port) in enumerate(self.brokers):
            client, reader = await self._control_link(host, port, {WORLD_TOPIC + "+": 1})
            self._controls.append((client, asyncio.create_task(self._keep_control(slot, reader))))

    async def _control_link(self, host: str, port: int, topics: dict):
        """(client, its reading task): connected and subscribed to `topics`."""
        client = ControlClient("aedsim-world-%d" % random.getrandbits(24), LoopbackNet(), host,
                               port, keepalive=60, on_message=self._world_message)
        reader = None
        try:
            await client.connect(clean_session=True)
            reader = asyncio.create_task(client.run())  # reads the SUBACKs
            for topic, qos in list(topics.items()):
                await client.subscribe(topic, qos)
        except BaseException:
            client.close()
            if reader is not None:
                await asyncio.gather(reader, return_exceptions=True)
            raise
        return client, reader

    async def _keep_control(self, slot: int, reader: asyncio.Task) -> None:
        host, port = self.brokers[slot]
        try:
            while True:
                await asyncio.gather(reader, return_exceptions=True)  # the link ended
                old = self._controls[slot][0]
                old.close()
                backoff = CONTROL_BACKOFF_S[0]
                while True:  # reconnect, with backoff, until the broker is back
                    await asyncio.sleep(backoff * (0.5 + self.rng.random()))
                    try:
                        client, reader = await self._control_link(host, port, old.topics)
                        break
                    except (MQTTError, OSError, asyncio.TimeoutError):
                        backoff = min(backoff * 2, CONTROL_BACKOFF_S[1])
                self._controls[slot] = (client, self._controls[slot][1])
                self.log("world control: reconnected to mqtt://%s:%d" % (host, port))
        finally:
            reader.cancel()

    @property
    def _control(self) -> MQTTClient | None:
        return self._controls[0][0] if self._controls else None

    def _world_message(self, topic, payload, retain, dup) -> None:
        if not topic.startswith(WORLD_TOPIC):
            answer = self.answers.get(topic)
            if answer is not None and payload is not None:
                answer(payload)
            return
        did = topic[len(WORLD_TOPIC):]
        cab = self.cabinets.get(did)
        if cab is None:
            return  # another simulator's cabinet, or none: not ours to answer
        if payload is None:
            self.log("world %s: message too large, ignored" % did)
            return
        try:
            change = json.loads(payload)
        except ValueError:
            self.log("world %s: not JSON, ignored: %r" % (did, payload[:60]))
            return
        for err in cab.world.apply(change):
            self.log("world %s: %s" % (did, err))

    def online(self) -> int:
        return sum(1 for c in self.cabinets.values() if c.app is not None and c.app.online)

    async def census(self) -> tuple[int, int, int]:
        """(online, events waiting in outboxes, the largest outbox), counted between the loop's
        other work: one pass over 15,000 cabinets took ~40 ms, a stall for all of them (and for
        an unlock) once a second, so the pass yields every CENSUS_CHUNK cabinets."""
        online = total = top = 0
        for i, c in enumerate(list(self.cabinets.values())):
            if i and i % CENSUS_CHUNK == 0:
                await asyncio.sleep(0)
            app = c.app
            if app is not None:
                if app.online:
                    online += 1
                n = len(app.outbox)
                total += n
                if n > top:
                    top = n
        return online, total, top

    def outbox_depths(self) -> tuple[int, int]:
        """(total, largest) number of events waiting on the cabinets' flash."""
        total = top = 0
        for c in self.cabinets.values():
            if c.app is not None:
                n = len(c.app.outbox)
                total += n
                if n > top:
                    top = n
        return total, top

    def control_for(self, device_id: str) -> MQTTClient:
        """The simulator's own client on the broker shard this cabinet talks to."""
        n = int(device_id.rsplit("-", 1)[1])
        return self._controls[shard_of(n, len(self.brokers))][0]

    def broker_of(self, device_id: str) -> tuple[str, int]:
        n = int(device_id.rsplit("-", 1)[1])
        return self.brokers[shard_of(n, len(self.brokers))]

    async def stop(self) -> None:
        await asyncio.gather(*(c.stop() for c in self.cabinets.values()))
        for client, task in self._controls:
            if task is not None:
                task.cancel()
            client.close()
        self._controls = []
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)

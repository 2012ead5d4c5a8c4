"""`make demo`: an embedded broker, four cabinets, and a short story told over MQTT."""
from __future__ import annotations

import asyncio
import json
import time

from simulator.broker import EmbeddedBroker
from simulator.fleet import Fleet
from simulator.observer import Observer
from host_tools.fleetview import describe, screen

STORY = [
    (3, "cab-0002", {"door": "open"}, "someone opens cab-0002 without a mission → door_alarm, siren"),
    (7, "cab-0002", {"door": "closed"}, "cab-0002 is closed again"),
    (9, "cab-0003", {"mains": False}, "cab-0003 loses mains power"),
    (11, "cab-0003", {"battery_mv": 11800}, "cab-0003's backup battery runs low"),
    (13, "cab-0004", {"temp_c": -8}, "cab-0004 freezes: outside the AED's storage range"),
    (15, "cab-0001", {"wifi": "down"}, "cab-0001 loses Wi-Fi (events wait on its flash)"),
    (17, "cab-0001", {"door": "open"}, "… and its door is opened while offline"),
    (19, "cab-0001", {"door": "closed"}, None),
    (21, "cab-0001", {"wifi": "up"}, "cab-0001's Wi-Fi is back: the backlog arrives in seq order"),
    (23, "cab-0003", {"mains": True}, "cab-0003's mains is restored"),
    (25, "cab-0004", {"temp_c": 18}, "cab-0004 warms up"),
]
DURATION = 29


async def play(plain: bool) -> int:
    broker = await EmbeddedBroker().start()
    print("embedded MQTT broker: %s" % broker.url, flush=True)
    fleet = Fleet(4, broker.url, heartbeat_s=600, extra_config={"sample_s": 2, "siren_s": 5})
    obs = await Observer(broker.url).start()
    await fleet.start()
    t0 = time.monotonic()
    notes: list[str] = []

    async def story():
        for at, did, change, note in STORY:
            await asyncio.sleep(max(0, t0 + at - time.monotonic()))
            if note:
                notes.append(note)
                if plain:
                    print("\n>>> %s   (aedsim/world/%s %s)" % (note, did, json.dumps(change)), flush=True)
            await obs.world(did, change)

    teller = asyncio.create_task(story())
    try:
        if plain:
            obs.listeners.append(lambda did, kind, ev: kind in ("event", "ack") and print(
                "    %s %s" % (did, describe(kind, ev)), flush=True))
            await asyncio.sleep(DURATION)
        else:
            from rich.live import Live
            with Live(screen(obs), refresh_per_second=4) as live:
                while time.monotonic() - t0 < DURATION:
                    await asyncio.sleep(0.25)
                    live.update(screen(obs, ">>> " + (notes[-1] if notes else "starting cabinets…")))
    finally:
        teller.cancel()
        from rich.console import Console
        Console(width=max(Console().width, 110)).print(screen(obs, "demo over"))
        result = {"online": obs.online(), "events": obs.event_count, "gaps": obs.gaps}
        await fleet.stop()
        await obs.stop()
        await broker.stop()
        print(json.dumps(result), flush=True)
    return 0

"""`make demo`: an embedded broker, four cabinets, and a short story told over MQTT."""
from __future__ import annotations

import asyncio
import json
import sys
import time

from simulator.brokers.embedded import EmbeddedBroker
from simulator.fleet.runner import Fleet
from simulator.fleet.observer import Observer
from simulator.world import scenario as scenarios
from host_tools.fleetview import describe, screen

async def play(plain: bool, scenario_name: str = "demo") -> int:
    story = scenarios.load(scenario_name)
    broker = await EmbeddedBroker().start()
    print("embedded MQTT broker: %s" % broker.describe(), flush=True)
    if broker.warning:
        print("aedsim: warning: %s" % broker.warning, file=sys.stderr, flush=True)
    fleet = Fleet(4, broker.url, heartbeat_s=600, extra_config={"sample_s": 2, "siren_s": 5})
    obs = await Observer(broker.url).start()
    await fleet.start()
    t0 = time.monotonic()
    notes: list[str] = []

    def tell(step):
        if step.get("note"):
            notes.append(step["note"])
            if plain:
                print("\n>>> %s   (aedsim/world/%s %s)" % (step["note"], step["device"],
                                                         json.dumps(step["world"])), flush=True)

    teller = asyncio.create_task(scenarios.play(story, broker.url, tell, t0))
    duration = story["duration"]
    try:
        if plain:
            obs.listeners.append(lambda did, kind, ev: kind in ("event", "ack") and print(
                "    %s %s" % (did, describe(kind, ev)), flush=True))
            await asyncio.sleep(duration)
        else:
            from rich.live import Live
            with Live(screen(obs), refresh_per_second=4) as live:
                while time.monotonic() - t0 < duration:
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

"""The simulator reads the firmware's own counters (App.counters), not its log text: the fleet's
totals match what the cabinets did, on a real Mosquitto."""
import time

from tests.backend.conftest import wait_until


def test_fleet_totals_come_from_the_apps_counters(mosquitto, sim_factory):
    sim = sim_factory(count=3, broker_url=mosquitto.url)
    fleet = sim.fleet
    c = fleet.counters
    assert wait_until(lambda: c.online == 3, 20)
    apps = lambda: [cab.app for cab in fleet.cabinets.values()]  # noqa: E731
    assert c.events == sum(a.counters["events"] for a in apps()) == sum(a.outbox.seq for a in apps())
    cab = fleet["cab-0001"]
    sim.do(cab.world.apply, {"wifi": "down"})
    assert wait_until(lambda: c.wifi_down >= 1, 20)
    sim.do(cab.world.apply, {"wifi": "up"})
    assert wait_until(lambda: c.online >= 4, 30)
    assert c.mqtt_errors == 0  # an outage without Wi-Fi is not a broker error
    assert c.link_lost >= 1 or c.wifi_down >= 1
    assert c.events == sum(a.outbox.seq for a in apps())

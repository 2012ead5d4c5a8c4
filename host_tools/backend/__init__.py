"""aedgate's backend library: what a registry, dispatch or a test needs to consume the fleet's
telemetry over MQTT — one place for broker connection options (mqtt:// or mqtts://, CA, user,
password from a file or the environment), a fleet subscriber across broker shards with a
durable session, JSON-Schema validation, the latest status/state per cabinet, exact event
bookkeeping (dedup by (device, seq), gaps, `events_dropped`), and acks matched to the commands
sent. docs/backend.md shows how to use it.

    from host_tools.backend import BrokerOptions, FleetSubscriber
    feed = FleetSubscriber([BrokerOptions("mqtt://127.0.0.1:1883")], "registry-1", durable=True)
    feed.listen(lambda m: print(m.device, m.kind, m.body))
    feed.start()
"""
from host_tools.backend.connection import (BrokerAuthError, BrokerError, BrokerOptions,
                                           add_broker_arguments, connect, unique_client_id)
from host_tools.backend.ledger import EventLedger
from host_tools.backend.messages import FleetMessage, SchemaError, parse_topic, validate
from host_tools.backend.fleet import FleetState
from host_tools.backend.subscriber import FleetSubscriber
from host_tools.backend.commands import CommandSender

__all__ = ["BrokerAuthError", "BrokerError", "BrokerOptions", "add_broker_arguments", "connect",
           "unique_client_id", "EventLedger", "FleetMessage", "SchemaError", "parse_topic",
           "validate", "FleetState", "FleetSubscriber", "CommandSender"]

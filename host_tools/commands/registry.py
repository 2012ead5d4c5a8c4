"""`aedgate registry`: a reference ingest of the fleet's telemetry into an embedded SQLite
database, and the reports a registry operator reads from it. Library: host_tools.backend
(FleetSubscriber, store.RegistryStore/Ingest, reports); docs/backend.md explains both."""
from __future__ import annotations

import argparse
import csv
import json
import signal
import sys
import time

from host_tools.backend import BrokerError, BrokerOptions, FleetSubscriber, add_broker_arguments
from host_tools.backend import reports as R
from host_tools.cli import CliError

_EPILOG = """\
The registry database is one SQLite file (WAL). `ingest` keeps a durable MQTT session (a stable
--client-id per shard) and acknowledges each message only after it is committed, so after a
crash or kill -9 it resumes where it stopped: nothing lost, nothing counted twice (events are
keyed by (cabinet, seq)). Run one ingest per database; reports may run alongside it.

examples:
  # ingest from two broker shards, as the registry account (password from the environment)
  AEDGATE_BROKER_PASSWORD=... aedgate registry ingest --db registry.db \\
      --broker mqtts://mq1.example:8883,mqtts://mq2.example:8883 --ca ca.pem --user registry

  aedgate registry report offline --db registry.db --for 2h     cabinets offline > 2 hours
  aedgate registry report expiring --db registry.db --days 30   pads/AED batteries due in 30 days
  aedgate registry report alarms --db registry.db               open alarms
  aedgate registry report checks --db registry.db               needing a check after a mission
  aedgate registry report firmware --db registry.db --format csv > fw.csv
  aedgate registry report gaps --db registry.db --format json   event seq bookkeeping
  aedgate registry report summary --db registry.db

Exit status: 0 ok; 2 usage errors; 3 broker unreachable; 4 credentials refused; 5 the database
could not be written (nothing was acknowledged: the broker will deliver it again)."""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "registry", help="ingest the fleet into SQLite and print registry reports",
        description="A reference registry backend: `ingest` stores what the fleet publishes "
                    "(status, state, events, acks, missions) in an SQLite database; `report` "
                    "prints what an operator needs from it (offline cabinets, expiring pads and "
                    "batteries, alarms, checks after missions, firmware versions).",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="registry_command", metavar="ACTION", required=True)

    i = sub.add_parser("ingest", help="subscribe to the fleet and store everything (runs until Ctrl-C)",
                       description="Subscribe to aed/v1/+/{status,state,event,ack} on every shard "
                                   "with a durable session and store each message in --db.",
                       epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_broker_arguments(i, "registry", shards=True)
    i.add_argument("--db", required=True, metavar="FILE", help="SQLite database (created if missing)")
    i.add_argument("--client-id", default="registry-ingest", metavar="ID",
                   help="stable MQTT client id of this ingest (the durable session's name; shards "
                        "add -s0, -s1 …). Two ingests must never share one. Default: registry-ingest")
    i.add_argument("--duration", type=float, metavar="S", help="stop after S seconds")
    i.add_argument("--no-validate", action="store_true",
                   help="skip the JSON Schema check of each message (faster; invalid bodies may "
                        "then fail the insert)")
    i.add_argument("--fsync", action="store_true",
                   help="synchronous=FULL: commits also survive a power cut of this host (slower)")
    i.add_argument("--batch", type=int, default=5000, metavar="N", help="largest transaction (default 5000)")
    i.add_argument("--quiet", action="store_true", help="no progress line every 5 s")
    i.set_defaults(func=_ingest)

    r = sub.add_parser("report", help="print a report from the database",
                       epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    r.add_argument("kind", choices=sorted(R.REPORTS), help="which report")
    r.add_argument("--db", required=True, metavar="FILE", help="SQLite database written by ingest")
    r.add_argument("--for", dest="offline_for", default="1h", metavar="SPAN",
                   help="offline: longer than SPAN (90s, 15m, 2h, 3d; default 1h)")
    r.add_argument("--days", type=int, default=30, metavar="N", help="expiring: within N days (default 30)")
    r.add_argument("--format", choices=("table", "csv", "json"), default="table")
    r.set_defaults(func=_report)


def _ingest(args: argparse.Namespace) -> int:
    from host_tools.backend.store import Ingest, RegistryStore
    try:
        shards = BrokerOptions.from_args(args)
    except ValueError as e:
        raise CliError(str(e)) from None
    if args.batch < 1:
        raise CliError("--batch must be at least 1")
    try:
        store = RegistryStore(args.db, fsync=args.fsync)
    except (OSError, RuntimeError, Exception) as e:  # sqlite3.Error, a newer schema
        raise CliError("cannot open %s: %s" % (args.db, e)) from None
    ingest = Ingest(store, args.batch).start()
    feed = FleetSubscriber(shards, args.client_id, durable=True, manual_ack=True, base=1,
                           validate=not args.no_validate, keep_events=0)
    feed.listen(ingest.put)
    stop = {"now": False}
    signal.signal(signal.SIGTERM, lambda *a: stop.update(now=True))
    try:
        feed.start()
    except BrokerError as e:
        ingest.stop()
        raise CliError(str(e), e.code) from None
    say = (lambda *a: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    say("registry: ingesting %s into %s as client %s" % (
        ", ".join(s.describe() for s in shards), args.db, args.client_id))
    t0 = last = time.monotonic()
    last_n = 0
    end = t0 + args.duration if args.duration else None
    code = 0
    try:
        while not stop["now"] and (end is None or time.monotonic() < end):
            time.sleep(0.25)
            if ingest.error is not None:
                print("aedgate: error: registry database %s: %s (nothing uncommitted was "
                      "acknowledged)" % (args.db, ingest.error), file=sys.stderr)
                code = 5
                break
            now = time.monotonic()
            if now - last >= 5:
                c = ingest.counters
                say("registry: %d messages (%.0f/s), %d new events, %d invalid, queue %d" % (
                    c["messages"], (c["messages"] - last_n) / (now - last), c["events_new"],
                    feed.fleet.counters["invalid"], ingest.q.qsize()))
                last, last_n = now, c["messages"]
    except KeyboardInterrupt:
        pass
    finally:
        feed.close()   # what is queued but not committed was not acknowledged: it comes again
        ingest.stop()
        store.close()
    c = ingest.counters
    say("registry: stopped; %d messages, %d new events, %d invalid" % (
        c["messages"], c["events_new"], feed.fleet.counters["invalid"]))
    return code


def _report(args: argparse.Namespace) -> int:
    from host_tools.backend.store import RegistryStore
    try:
        db = RegistryStore(args.db, readonly=True).db
    except FileNotFoundError as e:
        raise CliError(str(e)) from None
    fn = R.REPORTS[args.kind]
    try:
        if args.kind == "offline":
            rep = fn(db, R.parse_span(args.offline_for))
        elif args.kind == "expiring":
            rep = fn(db, args.days)
        else:
            rep = fn(db)
    except ValueError as e:
        raise CliError(str(e)) from None
    except Exception as e:  # sqlite3.Error: not a registry database
        raise CliError("%s is not a registry database: %s" % (args.db, e)) from None
    print_report(rep, args.format)
    return 0


def print_report(rep: R.Report, fmt: str, out=None) -> None:
    out = out or sys.stdout
    if fmt == "json":
        json.dump({"report": rep.title, "rows": rep.as_dicts()}, out, indent=1)
        out.write("\n")
    elif fmt == "csv":
        w = csv.writer(out)
        w.writerow(rep.columns)
        w.writerows(rep.rows)
    else:
        from rich.console import Console
        from rich.table import Table
        t = Table(title=rep.title)
        for c in rep.columns:
            t.add_column(c)
        for row in rep.rows:
            t.add_row(*("" if v is None else str(v) for v in row))
        Console(file=out).print(t)
        if not rep.rows:
            Console(file=out).print("(none)")

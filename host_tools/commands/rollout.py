"""`aedgate rollout`: send a signed release to the fleet in stages — canary, waves by
percentage, a rate cap, halting by itself — with the state in SQLite so that an operator's
restart resumes where it was (host_tools/rollout/, docs/updates.md "Rolling out")."""
from __future__ import annotations

import argparse
import sys
import time

from host_tools.backend import BrokerError, BrokerOptions, add_broker_arguments
from host_tools.backend.reports import parse_span
from host_tools.cli import CliError

EXIT = {"done": 0, "halted": 1, "failed": 1, "aborted": 6, "offline": 7}

_EPILOG = """\
How it goes: the canary cabinets first (wave 0), then waves by cumulative percentage of the
rollout's cabinets; a wave starts when every cabinet of the one before is done or failed (a
cabinet offline when its turn came does not hold a wave up: it gets the offer when it comes
back while the rollout runs). A cabinet is done when its state shows the new version off trial;
failed when it refuses the release, rolls back, or shows no progress within --wave-timeout.
Past --halt-at the rollout halts by itself: no more offers, no more blocks.

examples:
  # sign offline first (aedgate release sign), then, on the update server:
  AEDGATE_BROKER_PASSWORD=... aedgate rollout start rel-0.2.0 --db rollout.db \\
      --broker mqtts://mq1.example:8883,mqtts://mq2.example:8883 --ca ca.pem --user update \\
      --key release.key.pub --canary 20 --waves 1,10,50,100 --rate 300/min --halt-at 2%
  aedgate rollout status --db rollout.db            # from another terminal, any time
  aedgate rollout pause --db rollout.db             # stop offering; downloads in progress finish
  aedgate rollout resume --db rollout.db --broker ... --user update   # go on (or after Ctrl-C)
  aedgate rollout abort --db rollout.db             # stop for good; no more blocks either
  aedgate rollout versions --db rollout.db          # firmware across the fleet

Ctrl-C leaves the rollout resumable: `resume` continues with the same release, plan and waves.
Exit status (start, resume): 0 every cabinet updated; 1 halted, or finished with failed
cabinets; 2 usage or bad input (release folder missing or unsigned, not a rollout database);
3 broker unreachable; 4 credentials refused; 5 the database could not be written; 6 aborted by
an operator; 7 finished except cabinets that stayed offline (resume later picks them up);
130 interrupted (resumable). pause/abort/status/versions: 0 done, 2 nothing to act on."""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "rollout", help="send a signed release to the fleet: canary, waves, rate cap, auto-halt",
        description="Staged over-the-air rollout of a signed release (aedgate release build/sign). "
                    "`start` and `resume` run the update server in the foreground (offers, "
                    "blocks, a live table); `pause`, `abort`, `status` and `versions` act on the "
                    "rollout database from anywhere.",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="rollout_command", metavar="ACTION", required=True)

    s = sub.add_parser("start", help="start a rollout and drive it (foreground; Ctrl-C resumable)",
                       description="Check the signed release folder, pick the cabinets, assign "
                                   "waves, and drive the rollout until it is done or halts.",
                       epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("release_dir", metavar="RELEASE_DIR",
                   help="a signed release folder (files/, manifest.cbor, release.cose)")
    _common(s)
    g = s.add_argument_group("plan")
    g.add_argument("--canary", type=int, default=10, metavar="N",
                   help="cabinets in the canary wave, which must finish first (default 10)")
    g.add_argument("--waves", default="1,10,50,100", metavar="PCT,PCT,...",
                   help="cumulative percentages of the cabinets, the last one 100 (default 1,10,50,100)")
    g.add_argument("--rate", default="600/min", metavar="N/min",
                   help="at most N cabinets started per minute (default 600/min)")
    g.add_argument("--halt-at", default="5%", metavar="N|PCT%",
                   help="halt when this many cabinets failed (N) or this share of those started "
                        "(PCT%%); failures = refused, rolled back, timed out (default 5%%)")
    g.add_argument("--wave-timeout", default="30m", metavar="SPAN",
                   help="a started cabinet without progress this long has failed (default 30m)")
    g.add_argument("--offer-every", default="60s", metavar="SPAN",
                   help="repeat the offer to a started cabinet without a result (default 60s)")
    g.add_argument("--devices", metavar="FILE",
                   help="the cabinets, one id a line, in rollout order (# comments); default: every "
                        "cabinet whose retained status arrives within --discover")
    g.add_argument("--discover", type=float, default=5.0, metavar="S",
                   help="how long to collect cabinets without --devices (default 5)")
    s.add_argument("--key", action="append", metavar="PUB",
                   help="release public key (64 hex or a .pub file; repeatable): verify the "
                        "signature before serving (recommended)")
    s.set_defaults(func=_start)

    r = sub.add_parser("resume", help="drive the newest rollout in --db again (after pause, Ctrl-C, a crash)",
                       epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(r)
    r.add_argument("--key", action="append", metavar="PUB", help="release public key to verify with")
    r.set_defaults(func=_resume)

    for name, text in (("pause", "stop offering (downloads in progress finish); resume continues"),
                       ("abort", "stop the rollout for good: no more offers or blocks")):
        a = sub.add_parser(name, help=text, description=text + ". Writes the rollout database; "
                           "a running controller picks it up within a second.",
                           epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
        a.add_argument("--db", required=True, metavar="FILE", help="the rollout database")
        a.add_argument("--reason", metavar="TEXT", help="why (shown by status)")
        a.set_defaults(func=_control, action=name)

    st = sub.add_parser("status", help="the rollout's state: waves, failures (and --cabinets)",
                        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    st.add_argument("--db", required=True, metavar="FILE", help="the rollout database")
    st.add_argument("--cabinets", action="store_true", help="also one row per cabinet")
    st.add_argument("--format", choices=("table", "csv", "json"), default="table")
    st.set_defaults(func=_status)

    v = sub.add_parser("versions", help="firmware versions across the fleet (as the controller saw it)",
                       epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    v.add_argument("--db", required=True, metavar="FILE", help="the rollout database")
    v.add_argument("--format", choices=("table", "csv", "json"), default="table")
    v.set_defaults(func=_versions)


def _common(p) -> None:
    p.add_argument("--db", required=True, metavar="FILE",
                   help="the rollout database (SQLite; created by start)")
    add_broker_arguments(p, "update", shards=True)
    p.add_argument("--plain", action="store_true",
                   help="a progress line every 5 s instead of the live table (default when not a terminal)")
    p.add_argument("--duration", type=float, metavar="S",
                   help="stop driving after S seconds (the rollout stays resumable; exit 130)")


# -- helpers --------------------------------------------------------------------------------------
def _shards(args) -> list[BrokerOptions]:
    try:
        return BrokerOptions.from_args(args)
    except ValueError as e:
        raise CliError(str(e)) from None


def _publics(args) -> list[bytes] | None:
    if not args.key:
        return None
    from host_tools import releases
    try:
        return [releases.load_public(k) for k in args.key]
    except releases.ReleaseToolError as e:
        raise CliError(str(e)) from None


def _read_devices(path: str) -> list[str]:
    try:
        lines = open(path, encoding="utf-8").read().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise CliError("cannot read device list %s: %s" % (path, getattr(e, "strerror", None) or e)) from None
    out = []
    for n, line in enumerate(lines, 1):
        line = line.split("#", 1)[0].strip()
        if line:
            from host_tools.rollout.blocks import DEVICE_RE
            if not DEVICE_RE.fullmatch(line):
                raise CliError("%s line %d: %r is not a device id (1-64 of A-Z a-z 0-9 _ -)" % (path, n, line))
            out.append(line)
    if not out:
        raise CliError("device list %s names no cabinet" % path)
    return out


def _plan(args):
    from host_tools.rollout.plan import Plan, PlanError, parse_halt, parse_rate, parse_waves
    try:
        return Plan(canary=args.canary, waves=parse_waves(args.waves), rate=parse_rate(args.rate),
                    halt_at=parse_halt(args.halt_at), wave_timeout=parse_span(args.wave_timeout),
                    offer_every=parse_span(args.offer_every))
    except (PlanError, ValueError) as e:
        raise CliError(str(e)) from None


def _start(args) -> int:
    from host_tools.rollout import ReleaseDirError, Rollout, RolloutError, StoreError
    plan = _plan(args)
    shards = _shards(args)
    devices = _read_devices(args.devices) if args.devices else None
    try:
        ro = Rollout(args.db, args.release_dir, plan, shards, devices=devices,
                     publics=_publics(args), discover_s=args.discover, log=_logger(args))
    except (ReleaseDirError, RolloutError, StoreError) as e:
        raise CliError(str(e)) from None
    return _drive(ro, args)


def _resume(args) -> int:
    from host_tools.rollout import ReleaseDirError, Rollout, RolloutError, RolloutStore, StoreError
    try:
        store = RolloutStore(args.db, readonly=True)
        row = store.latest()
        store.close()
    except StoreError as e:
        raise CliError(str(e)) from None
    if row is None:
        raise CliError("%s holds no rollout (start one with `aedgate rollout start`)" % args.db)
    if row["status"] in ("halted", "aborted"):
        raise CliError("rollout %d is %s (%s); start a new one (a fixed release) instead"
                       % (row["id"], row["status"], row["reason"] or "no reason given"))
    if row["status"] == "paused" or (row["owner"] and row["heartbeat"] and time.time() - row["heartbeat"] < 10):
        rw = RolloutStore(args.db)
        rw.set_status(row["id"], "running", None, expect=("paused",))
        rw.close()
        if row["owner"] and row["heartbeat"] and time.time() - row["heartbeat"] < 10:
            print("rollout %d: running again; its controller (%s) picks it up" % (row["id"], row["owner"]))
            return 0
    try:
        ro = Rollout.resume(args.db, _shards(args), publics=_publics(args), log=_logger(args))
    except (ReleaseDirError, RolloutError, StoreError) as e:
        raise CliError(str(e)) from None
    return _drive(ro, args)


def _logger(args):
    return lambda msg: print("rollout: " + msg, file=sys.stderr, flush=True)


def _drive(ro, args) -> int:
    from host_tools.rollout import RolloutError
    import sqlite3
    try:
        ro.start()
    except BrokerError as e:
        ro.close()
        raise CliError(str(e), e.code) from None
    except RolloutError as e:
        ro.close()
        raise CliError(str(e), e.code) from None
    live = not args.plain and sys.stdout.isatty()
    end = time.monotonic() + args.duration if args.duration else None
    status = ro.status
    try:
        view = _LiveView(ro) if live else _PlainView(ro)
        with view:
            while True:
                try:
                    status = ro.step()
                except sqlite3.Error as e:
                    raise CliError("rollout database %s: %s" % (args.db, e), 5) from None
                view.update()
                if status in ("done", "halted", "aborted"):
                    break
                if end is not None and time.monotonic() >= end:
                    status = "interrupted"
                    break
                time.sleep(ro.tick)
    except KeyboardInterrupt:
        status = "interrupted"
    finally:
        counts = ro.counts()
        ro.close()
    print(_summary(ro, counts, status))
    if status == "interrupted":
        print("the rollout is resumable: aedgate rollout resume --db %s --broker ..." % args.db,
              file=sys.stderr)
        return 130
    if status == "done":
        if counts["failed"]:
            return EXIT["failed"]
        return EXIT["offline"] if counts["pending"] else EXIT["done"]
    return EXIT[status]


def _summary(ro, c, status) -> str:
    return ("rollout %d of %s (%s): %s; %d cabinets: %d done, %d failed, %d started, %d pending "
            "(%d offline)%s" % (ro.id or 0, ro.release.version, ro.release.id, status, c["cabinets"],
                                c["done"], c["failed"], c["started"], c["pending"], c["offline"],
                                (": " + ro.reason) if ro.reason and status != "interrupted" else ""))


class _PlainView:
    def __init__(self, ro):
        self.ro, self.last = ro, 0.0

    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False

    def update(self):
        now = time.monotonic()
        if now - self.last >= 5:
            self.last = now
            c = self.ro.counts()
            print("rollout %d: %s, wave %d/%d: %d/%d done, %d failed, %d started, %d offline, "
                  "%d blocks served" % (self.ro.id, self.ro.status, self.ro.wave, len(self.ro.by_wave) - 1,
                                        c["done"], c["cabinets"], c["failed"], c["started"],
                                        c["offline"], self.ro.server.served), flush=True)


class _LiveView:
    """A rich live table (one row per wave) with a progress bar over the whole rollout."""

    def __init__(self, ro):
        from rich.live import Live
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
        self.ro = ro
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn())
        self.task = self.progress.add_task("finished", total=max(1, len(ro.cabs)))
        self.live = Live(self._render(), refresh_per_second=4)

    def __enter__(self):
        self.live.__enter__()
        return self

    def __exit__(self, *a):
        return self.live.__exit__(*a)

    def _render(self):
        from rich.console import Group
        from rich.table import Table
        ro = self.ro
        t = Table(title="rollout %d: %s (%s) — %s%s" % (
            ro.id or 0, ro.release.version, ro.release.id, ro.status.upper(),
            (": " + ro.reason) if ro.reason else ""))
        for col in ("wave", "cabinets", "pending", "started", "done", "failed", "offline"):
            t.add_column(col, justify="right")
        for w in ro.waves():
            mark = "▶ " if w["wave"] == ro.wave and ro.status == "running" else ""
            t.add_row(mark + ("canary" if w["wave"] == 0 else str(w["wave"])),
                      *(str(w[k]) for k in ("cabinets", "pending", "started", "done", "failed", "offline")))
        c = ro.counts()
        self.progress.update(self.task, completed=c["done"] + c["failed"])
        foot = "blocks served %d (%d KiB), gets refused %d, offers sent %d" % (
            ro.server.served, ro.server.bytes // 1024, sum(ro.server.refused.values()), ro.offers_sent)
        return Group(t, self.progress, foot)

    def update(self):
        self.live.update(self._render())


def _open_ro(path):
    from host_tools.rollout import RolloutStore, StoreError
    try:
        return RolloutStore(path, readonly=True)
    except StoreError as e:
        raise CliError(str(e)) from None


def _control(args) -> int:
    from host_tools.rollout import RolloutStore, StoreError
    try:
        store = RolloutStore(args.db, readonly=True)
        store.close()
        store = RolloutStore(args.db)
    except StoreError as e:
        raise CliError(str(e)) from None
    try:
        row = store.latest()
        if row is None:
            raise CliError("%s holds no rollout" % args.db)
        new = "paused" if args.action == "pause" else "aborted"
        expect = ("running",) if args.action == "pause" else ("running", "paused", "done")
        if not store.set_status(row["id"], new, args.reason or "by an operator", expect=expect):
            raise CliError("rollout %d is %s: nothing to %s" % (row["id"], row["status"], args.action))
    finally:
        store.close()
    print("rollout %d: %s%s" % (row["id"], new, "" if not (row["owner"] and row["heartbeat"] and
                                                          time.time() - row["heartbeat"] < 10)
                                else " (its controller %s picks it up within a second)" % row["owner"]))
    return 0


def _status(args) -> int:
    from host_tools.commands.registry import print_report
    from host_tools.rollout import report as R
    store = _open_ro(args.db)
    try:
        row = R.rollout_row(store.db)
        if row is None:
            raise CliError("%s holds no rollout" % args.db)
        reps = [R.waves(store.db, row["id"]), R.failures(store.db, row["id"])]
        if args.cabinets:
            reps.append(R.cabinets(store.db, row["id"]))
    finally:
        store.close()
    if args.format == "json":
        import json
        json.dump({"rollout": {k: row[k] for k in ("id", "release", "version", "status", "reason",
                                                   "wave", "created", "heartbeat")},
                   **{rep.title: rep.as_dicts() for rep in reps}}, sys.stdout, indent=1)
        print()
        return 0
    if args.format == "table":
        print(R.headline(row))
    for rep in reps:
        print_report(rep, args.format)
    return 0


def _versions(args) -> int:
    from host_tools.commands.registry import print_report
    from host_tools.rollout import report as R
    store = _open_ro(args.db)
    try:
        rep = R.versions(store.db)
    finally:
        store.close()
    print_report(rep, args.format)
    return 0

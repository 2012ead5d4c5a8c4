"""What a person sees of a big run (a live table per worker, or a progress line), and the JSON
summary at its end. Everything here is computed from the workers' one-second snapshots."""
from __future__ import annotations

import time

from rich.table import Table
from rich.text import Text


class Rates:
    """Per-second rates from successive snapshots of each worker."""

    def __init__(self) -> None:
        self._prev: dict[int, dict] = {}
        self.rate: dict[int, dict] = {}

    def update(self, latest: dict[int, dict]) -> None:
        for w, s in latest.items():
            p = self._prev.get(w)
            if p is not None and s["t"] > p["t"]:
                dt = s["t"] - p["t"]
                self.rate[w] = {k: (s[k] - p[k]) / dt for k in ("published", "sessions", "cpu_s")}
            if p is None or s["t"] > p["t"]:
                self._prev[w] = s


def _errors(s: dict) -> int:
    return s["mqtt_errors"] + s["open_errors"] + s["crashes"]


def totals(latest: dict[int, dict]) -> dict:
    keys = ("cabinets", "started", "online", "published", "events", "sessions", "outbox_total",
            "mqtt_errors", "open_errors", "wifi_down", "link_lost", "crashes", "rss_kib", "fds")
    out = {k: sum(s[k] for s in latest.values()) for k in keys}
    out["outbox_max"] = max((s["outbox_max"] for s in latest.values()), default=0)
    return out


def table(latest: dict[int, dict], rates: Rates, title: str, elapsed: float) -> Table:
    t = Table(title=title, caption="%.0f s · Ctrl-C stops and prints the summary" % elapsed)
    for col in ("worker", "cabinets", "started", "online", "connects/s", "msgs/s", "events",
                "outbox (max)", "errors", "no Wi-Fi", "links lost", "RSS MiB", "KiB/cab", "CPU %", "fds"):
        t.add_column(col, justify="right")
    tot_rate = {"published": 0.0, "sessions": 0.0, "cpu_s": 0.0}
    for w in sorted(latest):
        s = latest[w]
        r = rates.rate.get(w, {"published": 0.0, "sessions": 0.0, "cpu_s": 0.0})
        for k in tot_rate:
            tot_rate[k] += r[k]
        kib = (s["rss_kib"] - s["rss0_kib"]) / max(1, s["started"])
        err = _errors(s)
        t.add_row(str(w), str(s["cabinets"]), str(s["started"]),
                  Text(str(s["online"]), "green" if s["online"] == s["cabinets"] else "yellow"),
                  "%.0f" % r["sessions"], "%.0f" % r["published"], str(s["events"]),
                  "%d (%d)" % (s["outbox_total"], s["outbox_max"]),
                  Text(str(err), "bold red" if err else ""), str(s["wifi_down"]), str(s["link_lost"]),
                  "%.0f" % (s["rss_kib"] / 1024), "%.1f" % kib, "%.0f" % (100 * r["cpu_s"]),
                  str(s["fds"]))
    if len(latest) > 1:
        a = totals(latest)
        t.add_row("all", str(a["cabinets"]), str(a["started"]), str(a["online"]),
                  "%.0f" % tot_rate["sessions"], "%.0f" % tot_rate["published"], str(a["events"]),
                  "%d (%d)" % (a["outbox_total"], a["outbox_max"]),
                  str(_errors(a)), str(a["wifi_down"]), str(a["link_lost"]),
                  "%.0f" % (a["rss_kib"] / 1024), "", "%.0f" % (100 * tot_rate["cpu_s"]),
                  str(a["fds"]), style="bold")
    return t


def line(latest: dict[int, dict], rates: Rates, elapsed: float) -> str:
    a = totals(latest)
    pub = sum(r["published"] for r in rates.rate.values())
    con = sum(r["sessions"] for r in rates.rate.values())
    cpu = sum(r["cpu_s"] for r in rates.rate.values())
    recent = [m for s in latest.values() for m in s["recent"]]
    return ("[%5.0fs] online %d/%d (started %d, +%.0f/s) · %.0f msgs/s · events %d · outbox %d "
            "(max %d) · errors %d · no-Wi-Fi retries %d · links lost %d · RSS %.0f MiB · CPU %.0f%%%s"
            % (elapsed, a["online"], a["cabinets"], a["started"], con, pub, a["events"],
               a["outbox_total"], a["outbox_max"], _errors(a), a["wifi_down"], a["link_lost"],
               a["rss_kib"] / 1024, 100 * cpu,
               (" · last error: " + recent[-1]) if recent else ""))


def summary(spec, latest: dict[int, dict], history: list, t_end: float | None = None) -> dict:
    """The run's figures: what the JSON summary (and the benchmark) report."""
    t_end = t_end or time.time()
    snaps = list(latest.values())
    if not snaps:
        return {"cabinets": spec.cabinets, "online": 0, "error": "no worker reported"}
    a = totals(latest)
    t0 = min(s["t_start"] for s in snaps)
    done = [s["all_online_t"] for s in snaps]
    all_online_s = (max(done) - t0) if all(done) else None
    per_worker = []
    for s in sorted(snaps, key=lambda s: s["w"]):
        online_rss = s["rss_online_kib"] or s["rss_kib"]
        per_worker.append({
            "worker": s["w"], "pid": s["pid"], "first": s["first"], "cabinets": s["cabinets"],
            "online": s["online"], "rss_mib": round(s["rss_kib"] / 1024, 1),
            "rss_base_mib": round(s["rss0_kib"] / 1024, 1),
            "kib_per_cabinet": round((online_rss - s["rss0_kib"]) / max(1, s["cabinets"]), 1),
            "kib_per_cabinet_built": round((s["rss_built_kib"] - s["rss0_kib"]) / max(1, s["cabinets"]), 1),
            "cpu_pct": round(100 * s["cpu_s"] / max(1e-9, s["t"] - s["t_start"]), 1),
            "fds": s["fds"], "gc_pauses": s.get("gc"), "loop_lag_max_ms": s.get("lag_max_ms"), "workload": s["workload"]})
    # sustained publish rate: from the moment all were online to the end
    steady = None
    if all_online_s is not None:
        t_on = t0 + all_online_s
        after = [h for h in history if h[0] >= t_on]
        if len(after) >= 2 and after[-1][0] - after[0][0] > 1:
            steady = round((after[-1][3] - after[0][3]) / (after[-1][0] - after[0][0]), 1)
    # connect rate between 10% and 90% of the fleet online
    ramp_rate = None
    n = spec.cabinets
    t10 = next((h[0] for h in history if h[2] >= 0.1 * n), None)
    t90 = next((h[0] for h in history if h[2] >= 0.9 * n), None)
    if t10 is not None and t90 is not None and t90 > t10:
        ramp_rate = round(0.8 * n / (t90 - t10), 1)
    workloads = [s["workload"] for s in snaps]
    actions: dict = {}
    for wl in workloads:
        for k, v in wl["actions"].items():
            actions[k] = actions.get(k, 0) + v
    kib = [w["kib_per_cabinet"] for w in per_worker]
    return {
        "cabinets": spec.cabinets, "workers": spec.workers, "brokers": spec.brokers,
        "source_ips": spec.source_ips or [], "flash": spec.flash, "profile": spec.profile,
        "seed": spec.seed, "heartbeat_s": spec.heartbeat, "speed": spec.speed,
        "ramp_target_per_s": spec.ramp, "online": a["online"], "started": a["started"],
        "all_online_s": round(all_online_s, 2) if all_online_s is not None else None,
        "connect_rate_per_s": round(n / all_online_s, 1) if all_online_s else None,
        "connect_rate_10_90_per_s": ramp_rate,
        "published": a["published"], "publish_rate_steady_per_s": steady,
        "events": a["events"], "sessions": a["sessions"], "outbox_total": a["outbox_total"],
        "outbox_max": a["outbox_max"],
        "errors": _errors(a),
        "mqtt_errors": a["mqtt_errors"], "open_errors": a["open_errors"],
        "wifi_down_retries": a["wifi_down"],
        "crashes": a["crashes"], "links_lost": a["link_lost"],
        "rss_mib_total": round(a["rss_kib"] / 1024, 1),
        "kib_per_cabinet": round(sum(kib) / len(kib), 1) if kib else None,
        "duration_s": round(t_end - t0, 1),
        "workload": {"profile": spec.profile, "actions": actions,
                     "storms": sum(w["storms"] for w in workloads),
                     "missions": sum(w["missions"] for w in workloads),
                     "unlock_errors": sum(w["unlock_errors"] for w in workloads),
                     "unlock_latency_ms": _percentiles(
                         [x for w in workloads for x in w.get("unlock_latency_ms", [])])},
        "per_worker": per_worker,
        "recent_errors": [m for s in snaps for m in s["recent"]][-10:],
    }


def _percentiles(values: list[float]) -> dict:
    if not values:
        return {"samples": 0}
    v = sorted(values)

    def q(p):
        return round(v[min(len(v) - 1, int(p / 100 * len(v)))], 1)
    return {"samples": len(v), "p50": q(50), "p99": q(99), "max": round(v[-1], 1)}

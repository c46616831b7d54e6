"""`aimesh top`: the running mesh on one terminal screen, refreshed each second (rich): per route
calls a second, p50/p99, error and fallback shares against the SLOs; canary weights and injected
faults as the gateway runs them; breakers; Triton's models, queues and batches.
The numbers are services/ops/overview.py's, the same the page's Operations view shows."""
from __future__ import annotations

import time

from rich import box
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from services.ops.overview import Overview, Watch

from . import topology
from .live import targets
from .topology import Topology


def _ms(value: float | None) -> str:
    return "-" if value is None else ("inf" if value == float("inf") else f"{value:g}")


def _table(title: str) -> Table:
    # Columns one space apart with no lines between them: the routes' table, the widest, fits an
    # 80-column terminal whole
    return Table(title=title, title_justify="left", expand=True, box=box.SIMPLE_HEAD, padding=0,
                 show_edge=False)


def frame(overview: Overview) -> Group:
    """One screen: the tables, each titled."""
    routes = _table(f"Routes (last {overview.window_s:.0f} s; times in ms)")
    for column in ("route", "calls/s", "p50", "p99", "errors", "fallback", "SLO (p99)", "status"):
        routes.add_column(column, justify="left" if column in ("route", "SLO (p99)", "status") else "right",
                          no_wrap=True)
    for r in overview.routes:
        slo = "-" if r.slo_availability is None else f"{r.slo_availability * 100:g}% {r.slo_p99_ms:g}ms"
        meets = r.meets_slo
        status = Text("idle" if meets is None else ("ok" if meets else "BREACH"),
                      style="dim" if meets is None else ("green" if meets else "bold red"))
        routes.add_row(r.route, f"{r.rps:.1f}", _ms(r.p50_ms), _ms(r.p99_ms), f"{r.error_share:.1%}",
                       f"{r.fallback_share:.1%}", slo, status)
    canary = _table("Canary weights")
    canary.add_column("service")
    canary.add_column("split")
    for service, split in overview.weights.items():
        canary.add_row(service, ", ".join(f"{cluster} {weight}%" for cluster, weight in split.items()))
    faults = _table("Injected faults")
    faults.add_column("fault")
    for line in overview.faults or ["none"]:
        faults.add_row(line)
    breakers = _table("Breakers")
    for column in ("where", "what", "state"):
        breakers.add_column(column)
    for where, what, state in overview.breakers:
        breakers.add_row(where, what, Text(state, style="green" if state == "closed" else "bold red"))
    models = _table("Models (Triton)")
    for column in ("model", "versions", "requests/s", "avg batch", "avg queue ms", "pending"):
        models.add_column(column, justify="left" if column in ("model", "versions") else "right")
    for m in overview.models:
        models.add_row(m.model, ", ".join(m.versions) or "-", f"{m.rps:.1f}",
                       "-" if m.avg_batch is None else f"{m.avg_batch:.2f}", _ms(
                           None if m.avg_queue_ms is None else round(m.avg_queue_ms, 2)), str(m.pending))
    stamp = time.strftime("%H:%M:%S", time.localtime(overview.at))
    header = Text(f"aimesh top - {stamp}" + (f"  (unreachable: {', '.join(overview.unreachable)})"
                                             if overview.unreachable else ""), style="bold")
    return Group(header, *(part for table in (routes, canary, faults, breakers, models) for part in ("", table)))


SUMMARY_WINDOW_S = 2.0


def slo_summary(topo: Topology) -> list[str]:
    """One line per SLO over the last SUMMARY_WINDOW_S (for `aimesh status`)."""
    watch = Watch(targets(topo))
    watch.read()
    time.sleep(SUMMARY_WINDOW_S)    # the window the rates are measured over
    overview = watch.read()
    lines = [f"SLOs (last {overview.window_s:.0f} s; `aimesh top` for the live view):"]
    for r in overview.routes:
        if r.slo_availability is None:
            continue
        state = {None: "idle", True: "ok", False: "BREACH"}[r.meets_slo]
        lines.append(f"  {r.route:<26} {state:<6} {r.rps:6.1f} calls/s  errors+fallbacks "
                     f"{r.error_share + r.fallback_share:6.1%} (allowed {1 - r.slo_availability:.2%})  "
                     f"p99 {_ms(r.p99_ms):>5} ms (SLO {r.slo_p99_ms:g})")
    return lines


def cmd_top(args) -> int:
    watch = Watch(targets(topology.load()))
    console = Console()
    if args.once:    # one frame over a short window, e.g. for a script or a test
        watch.read()
        time.sleep(args.interval)
        console.print(frame(watch.read()))
        return 0
    try:
        with Live(frame(watch.read()), console=console, screen=True, auto_refresh=False) as live:
            while True:
                time.sleep(args.interval)   # the refresh period itself, not a wait for something
                live.update(frame(watch.read()), refresh=True)
    except KeyboardInterrupt:
        return 0

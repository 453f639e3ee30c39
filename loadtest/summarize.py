#!/usr/bin/env python3
"""Turns a compare.sh results directory (raw/<system>-<scenario>.json bench
summaries, raw/*.extra.json figures the script measured itself,
environment.json) into summary.json, summary.md (a metric x system table,
each figure with its ratio to ringpush on io_uring) and two PNG charts.

Usage: loadtest/summarize.py RESULTS_DIR
"""

import json
import os
import sys

REFERENCE = "ringpush-uring"
ORDER = ["ringpush-uring", "ringpush-epoll", "ringpush-uring-interval", "mosquitto", "nats", "floor-uring", "floor-epoll"]


def load(results):
    raw = os.path.join(results, "raw")
    runs, extras, exits = {}, {}, {}
    for name in sorted(os.listdir(raw)):
        path = os.path.join(raw, name)
        if name.endswith(".extra.json"):
            extras[name[: -len(".extra.json")]] = json.load(open(path))
        elif name.endswith(".json"):
            try:
                runs[name[: -len(".json")]] = json.load(open(path))
            except ValueError:
                runs[name[: -len(".json")]] = None  # the run died before its summary
        elif name.endswith(".exit"):
            exits[name[: -len(".exit")]] = int(open(path).read().strip() or "1")
    systems = sorted({system_of(key) for key in list(runs) + list(extras)}, key=rank)
    return runs, extras, exits, systems


SCENARIOS = [
    "idle-hold",
    "connect-storm-tls-resumed",
    "connect-storm-tls-full",
    "connect-storm",
    "offline-backlog",
    "churn-warm",
    "churn",
    "fan-out",
]


def system_of(key):
    if "-p2p-" in key:
        return key.split("-p2p-")[0]
    for scenario in SCENARIOS:
        if key.endswith("-" + scenario):
            return key[: -len(scenario) - 1]
    return key


def rank(system):
    return ORDER.index(system) if system in ORDER else len(ORDER)


def dig(value, path):
    for part in path.split("."):
        if not isinstance(value, dict) or value.get(part) is None:
            return None
        value = value[part]
    return value


def rates(runs):
    found = set()
    for key in runs:
        if "-p2p-" in key:
            found.add(int(key.split("-p2p-")[1]))
    return sorted(found)


def build_rows(runs, extras, systems, devices):
    """(label, higher_is_better, {system: value}) for every metric."""

    def from_run(scenario, path, scale=1.0):
        def get(system):
            run = runs.get(f"{system}-{scenario}")
            if run is None or scenario_unsupported(run):
                return None
            if path == "acked_per_sec" and any(r.startswith("acknowledged") for r in run.get("unsupported", [])):
                return None  # at-most-once: nothing is acked, which is not a measurement of 0
            value = dig(run, path)
            return None if value is None else value * scale

        return get

    def from_extra(scenario, path):
        return lambda system: dig(extras.get(f"{system}-{scenario}"), path)

    def fanout_rate(system):
        run = runs.get(f"{system}-fan-out")
        last = dig(run, "latency.max_us")
        return None if not last else run["connected"] / (last / 1e6)

    def churn_delta(before, after):
        def get(system):
            e = extras.get(f"{system}-churn")
            return None if e is None else e[after] - e[before]

        return get

    def caught_up_percent(system):
        run = runs.get(f"{system}-offline-backlog")
        if run is None or scenario_unsupported(run):
            return None
        o = run.get("offline_broadcasts") or {}
        return 100.0 * o["caught_up_devices"] / o["offline_devices"] if o.get("offline_devices") else None

    def storm_ratio(system):
        full = dig(runs.get(f"{system}-connect-storm-tls-full"), "storm.welcomes_per_sec")
        resumed = dig(runs.get(f"{system}-connect-storm-tls-resumed"), "storm.welcomes_per_sec")
        return resumed / full if full and resumed else None

    rows = [
        ("idle-hold", f"idle: server RSS per connection, {devices:,} held (bytes)", False, from_run("idle-hold", "server_rss_per_connection_bytes")),
        ("idle-hold", f"idle: server CPU holding {devices:,} connections (% of a core)", False, from_extra("idle-hold", "server_idle_cpu_percent")),
        ("idle-hold", f"connect: {devices:,} devices connecting at once (connections/s)", True, from_run("idle-hold", "connect_rate")),
        ("connect-storm", "connect storm, plain: connect + hello + close (per s)", True, from_run("connect-storm", "storm.welcomes_per_sec")),
        ("connect-storm", "connect storm, TLS 1.3 full handshakes (per s)", True, from_run("connect-storm-tls-full", "storm.welcomes_per_sec")),
        ("connect-storm", "connect storm, TLS 1.3 resumed (per s)", True, from_run("connect-storm-tls-resumed", "storm.welcomes_per_sec")),
        ("connect-storm", "connect storm, TLS resumed / full", True, storm_ratio),
    ]
    for rate in rates(runs):
        scenario = f"p2p-{rate}"
        rows += [
            ("point-to-point", f"p2p {rate:,}/s offered: delivered (msgs/s)", True, from_run(scenario, "delivered_per_sec")),
            ("point-to-point", f"p2p {rate:,}/s offered: acked (msgs/s)", True, from_run(scenario, "acked_per_sec")),
            ("point-to-point", f"p2p {rate:,}/s offered: latency p50 (ms)", False, from_run(scenario, "latency.p50_us", 1e-3)),
            ("point-to-point", f"p2p {rate:,}/s offered: latency p99 (ms)", False, from_run(scenario, "latency.p99_us", 1e-3)),
            ("point-to-point", f"p2p {rate:,}/s offered: latency p99.9 (ms)", False, from_run(scenario, "latency.p999_us", 1e-3)),
            ("point-to-point", f"p2p {rate:,}/s offered: bench client CPU (% of a core)", False, from_run(scenario, "client_cpu_percent_of_one_core")),
        ]
    rows += [
        ("fan-out", f"fan-out to {devices:,}: time to the last delivery (ms)", False, from_run("fan-out", "latency.max_us", 1e-3)),
        ("fan-out", f"fan-out to {devices:,}: deliveries/s", True, fanout_rate),
        ("offline-backlog", f"offline backlog: {devices:,} reconnect owed 10 each, all delivered (s)", False, from_run("offline-backlog", "offline_broadcasts.catch_up_seconds")),
        ("offline-backlog", "offline backlog: devices that had all 10 within 60 s (% of those offline)", True, caught_up_percent),
        ("offline-backlog", "offline backlog: server RSS per stored broadcast (bytes)", False, from_run("offline-backlog", "offline_broadcasts.server_rss_per_broadcast_bytes")),
        ("churn", "churn: descriptors after - before (0 = no leak)", False, churn_delta("fds_before", "fds_after")),
        ("churn", "churn: RSS after - before (KiB)", False, churn_delta("rss_before_kib", "rss_after_kib")),
        ("churn", "churn: connect + hello + close (per s)", True, from_run("churn", "storm.welcomes_per_sec")),
    ]
    table = []
    for scenario, label, higher, get in rows:
        values = {}
        for system in systems:
            try:
                values[system] = get(system)
            except (TypeError, KeyError, ZeroDivisionError):
                values[system] = None
        if any(v is not None for v in values.values()):
            table.append({"scenario": scenario, "metric": label, "higher_is_better": higher, "values": values})
    return table


def scenario_unsupported(run):
    return bool(run.get("unsupported")) and not run.get("connected")


def unsupported_notes(runs):
    notes = {}
    for key, run in runs.items():
        for reason in (run or {}).get("unsupported", []):
            notes.setdefault(system_of(key), set()).add(reason)
    return notes


def fmt(value):
    if value is None:
        return "—"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def markdown(env, table, systems, runs, exits):
    lines = [
        f"# ringpush-bench comparison, {env.get('date_utc', '?')}",
        "",
        f"Machine: {env.get('machine', '?')}. **Client and servers on this one machine**, "
        "sharing its CPUs: compare the ratios within this table, not absolute figures across machines. "
        f"Load average at start {env.get('load_average_at_start', '?')}, at end {' '.join(env.get('load_average_at_end', ['?']))}. "
        f"Versions: {', '.join(f'{k} {v}' for k, v in env.get('versions', {}).items())}.",
        "",
        f"Each cell: the figure, and in brackets its ratio to {REFERENCE} (for 'higher is better' rows "
        "> 1 means better than ringpush; for the others < 1 means better). — : not measured or not supported.",
        "",
        "| metric | " + " | ".join(systems) + " |",
        "| --- | " + " | ".join("---:" for _ in systems) + " |",
    ]
    for row in table:
        ref = row["values"].get(REFERENCE)
        cells = []
        for system in systems:
            value = row["values"].get(system)
            cell = fmt(value)
            if value is not None and ref and system != REFERENCE:
                cell += f" ({value / ref:.2f}×)"
            cells.append(cell)
        arrow = "↑" if row["higher_is_better"] else "↓"
        lines.append(f"| {row['metric']} {arrow} | " + " | ".join(cells) + " |")
    notes = unsupported_notes(runs)
    if notes:
        lines += ["", "Not run (the system cannot do it):", ""]
        for system in systems:
            for reason in sorted(notes.get(system, [])):
                lines.append(f"- {system}: {reason}")
    failed = [k for k, code in sorted(exits.items()) if code != 0]
    if failed:
        lines += ["", "Runs that reported errors (exit code ≠ 0; see raw/<run>.log):", ""]
        lines += [f"- {k} (exit {exits[k]})" for k in failed]
    lines += ["", "Commands: raw/<run>.cmd; progress: raw/<run>.log.", ""]
    return "\n".join(lines)


def charts(results, runs, systems, devices):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing: no PNG charts (apt-get install python3-matplotlib)", file=sys.stderr)
        return
    fig, ax = plt.subplots(figsize=(8, 5))
    for system in systems:
        points = []
        for rate in rates(runs):
            run = runs.get(f"{system}-p2p-{rate}")
            if run and dig(run, "latency.p99_us") is not None and run.get("delivered_per_sec"):
                points.append((run["delivered_per_sec"], run["latency"]["p99_us"] / 1000, run["latency"]["p50_us"] / 1000))
        if points:
            line = ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=f"{system} p99")[0]
            ax.plot([p[0] for p in points], [p[2] for p in points], marker=".", linestyle="--", color=line.get_color(), label=f"{system} p50")
    ax.set_xlabel("delivered messages/s")
    ax.set_ylabel("push-to-device latency (ms, log)")
    ax.set_yscale("log")
    ax.set_title("Point-to-point: latency vs throughput (one machine, client and server)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(os.path.join(results, "latency-vs-throughput.png"), dpi=120)
    plt.close(fig)

    bars = [(s, dig(runs.get(f"{s}-idle-hold"), "server_rss_per_connection_bytes")) for s in systems]
    bars = [(s, v) for s, v in bars if v is not None]
    if bars:
        fig, ax = plt.subplots(figsize=(8, 4))
        ax.bar([s for s, _ in bars], [v for _, v in bars], color="#4c72b0")
        for i, (_, v) in enumerate(bars):
            ax.text(i, v, f"{v:,.0f}", ha="center", va="bottom", fontsize="small")
        ax.set_ylabel("server RSS per idle connection (bytes)")
        ax.set_title(f"Memory per connection, {devices:,} connections held")
        fig.tight_layout()
        fig.savefig(os.path.join(results, "memory-per-connection.png"), dpi=120)
        plt.close(fig)


def main():
    results = sys.argv[1]
    env = json.load(open(os.path.join(results, "environment.json")))
    runs, extras, exits, systems = load(results)
    devices = env.get("devices", 0)
    table = build_rows(runs, extras, systems, devices)
    summary = {"environment": env, "systems": systems, "rows": table, "exit_codes": exits,
               "unsupported": {k: sorted(v) for k, v in unsupported_notes(runs).items()}}
    json.dump(summary, open(os.path.join(results, "summary.json"), "w"), indent=2)
    md = markdown(env, table, systems, runs, exits)
    open(os.path.join(results, "summary.md"), "w").write(md)
    charts(results, runs, systems, devices)
    print(md)


if __name__ == "__main__":
    main()

"""The report of a load run: ``summary.json``, ``summary.md`` and PNG plots, from what the run
collected (Locust's CSVs, the samples, the API server's request counts, the final check)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pet_harness.load.sampler import Sample

RECONCILE = "RECONCILE"
CREATE_LATENCY = "create → Active"
PERCENTILES = ("50%", "95%", "99%")


def request_rows(stats: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Locust's table, in seconds: one row per (type, name), the aggregate left out."""
    rows = []
    for row in stats:
        if row.get("Name") == "Aggregated":
            continue
        rows.append({
            "type": row.get("Type"), "name": row.get("Name"),
            "count": row.get("Request Count"), "failures": row.get("Failure Count"),
            "per_second": _round(row.get("Requests/s")),
            **{f"p{p[:-1]}": _seconds(row.get(p)) for p in PERCENTILES},
            "max": _seconds(row.get("Max Response Time")),
        })
    return rows


def _seconds(ms: Any) -> float | None:
    return round(float(ms) / 1000.0, 3) if isinstance(ms, int | float) else None


def _round(value: Any) -> float | None:
    return round(float(value), 2) if isinstance(value, int | float) else None


def find(rows: Sequence[Mapping[str, Any]], type_: str, name: str) -> Mapping[str, Any]:
    return next((r for r in rows if r["type"] == type_ and r["name"] == name), {})


def sustainable(steps: Sequence[Mapping[str, Any]], p99_limit: float) -> Mapping[str, Any] | None:
    """The best step whose p99 stayed under the limit with no failure (None if none did)."""
    good = [s for s in steps if not s.get("failures") and s.get("p99") is not None and s["p99"] <= p99_limit
            and s.get("achieved_rate")]
    return max(good, key=lambda s: s["achieved_rate"]) if good else None


# --- plots ---------------------------------------------------------------------------------------


def plot_latency(history: Sequence[Mapping[str, Any]], path: Path, title: str) -> bool:
    rows = [r for r in history if r.get("Type") == RECONCILE and r.get("Name") == CREATE_LATENCY]
    creates = [r for r in history if r.get("Type") == "POST" and r.get("Name") == "POST pets"]
    if not rows:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    start = min(int(r["Timestamp"]) for r in history)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6.5), sharex=True)
    for p in PERCENTILES:
        points = [(int(r["Timestamp"]) - start, float(r[p]) / 1000.0) for r in rows
                  if isinstance(r.get(p), int | float)]
        if points:
            top.plot(*zip(*points, strict=True), label=f"p{p[:-1]}")
    top.set_ylabel("create → Active (s)")
    top.set_title(title)
    top.legend()
    top.grid(alpha=0.3)
    for label, series in (("creates/s (POST pets)", creates), ("reconciled/s (create → Active)", rows)):
        points = [(int(r["Timestamp"]) - start, float(r["Requests/s"])) for r in series
                  if isinstance(r.get("Requests/s"), int | float)]
        if points:
            bottom.plot(*zip(*points, strict=True), label=label)
    bottom.set_xlabel("seconds into the run")
    bottom.set_ylabel("per second (10 s window)")
    bottom.legend()
    bottom.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def plot_rss(samples: Sequence[Sample], path: Path, title: str) -> bool:
    points = [(s.pets, s.rss_mb) for s in samples if s.pets is not None and s.rss_mb is not None]
    if not points:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.plot(*zip(*points, strict=True), marker=".", linestyle="-")
    ax.set_xlabel("pets in the cluster")
    ax.set_ylabel("operator RSS (MB)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


# --- summary ---------------------------------------------------------------------------------------


def write(out: Path, summary: Mapping[str, Any]) -> None:
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    (out / "summary.md").write_text(markdown(summary))


def _fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:g}{unit}"
    return f"{value}{unit}"


def markdown(s: Mapping[str, Any]) -> str:
    lines = [f"# Load run: {s['operator']}", "",
             f"- when: {s['started']}, {s['wall_seconds']} s; machine: {s['machine']}",
             f"- load: {s['plan']['user_class']}, shape {s['plan']['shape'] or 'web UI'}, "
             f"{s['plan']['pets']} creates at most, {len(s['namespaces'])} namespaces x {s['plan']['stores']} stores, "
             f"{s['plan']['processes']} Locust process(es)",
             f"- cluster: {s['cluster']}",
             f"- operator: {s['operator_note']}"]
    if s.get("started_seconds") is not None:
        lines.append(f"- operator ready after {s['started_seconds']} s; stopped (SIGTERM) in "
                     f"{_fmt(s.get('shutdown_seconds'), ' s')}")
    r = s["reconcile"]
    lines += ["", "## Reconcile latency (create → Active)", "",
              f"- {r.get('count')} settled, {r.get('failures')} failed; p50 {_fmt(r.get('p50'), ' s')}, "
              f"p95 {_fmt(r.get('p95'), ' s')}, p99 {_fmt(r.get('p99'), ' s')}, max {_fmt(r.get('max'), ' s')}",
              f"- creates: {s['creates']} in {s['create_seconds']} s = {_fmt(s['create_rate'], '/s')}"]
    if s.get("sustainable"):
        st = s["sustainable"]
        lines.append(f"- **sustainable creation rate: {st['achieved_rate']}/s** (step at {st['target_rate']}/s: "
                     f"p50 {st['p50']} s, p95 {st['p95']} s, p99 {st['p99']} s); ramp stopped: {s.get('stop_reason')}")
    if s.get("steps"):
        lines += ["", "| target/s | achieved/s | creates | p50 s | p95 s | p99 s | failures |",
                  "|---|---|---|---|---|---|---|"]
        lines += [f"| {st['target_rate']:g} | {_fmt(st['achieved_rate'])} | {st['creates']} | {_fmt(st['p50'])} | "
                  f"{_fmt(st['p95'])} | {_fmt(st['p99'])} | {st['failures']} |" for st in s["steps"]]
    api = s["api"]
    lines += ["", "## API requests (apiserver_request_total, before → after)", "",
              f"- writes by the operator: {api['operator_writes_total']} = **{_fmt(api['writes_per_pet'])} per "
              "created pet** (everything counted: leader Lease renewals, events, store counts)",
              "", "| verb | resource | all clients | of which the operator |", "|---|---|---|---|"]
    for row in api["by_key"]:
        lines.append(f"| {row['verb']} | {row['resource']} | {row['count']} | {row['operator']} |")
    if api.get("errors"):
        lines += ["", "Answered with an error code (all clients): " + ", ".join(
            f"{e['verb']} {e['resource']} {e['code']} x{e['count']}" for e in api["errors"])]
        if any(e["verb"] == "POST" and e["resource"] == "pets" and e["code"] == "504" for e in api["errors"]):
            lines.append("(POST pets 504: creates cut off in flight when the load stopped; Locust never "
                         "counted them, and they are not counted as the operator's)")
    rss = s["rss"]
    cpu_use = s.get("cpu_during_load") or {}
    if cpu_use:
        cores = s.get("cores")
        lines += ["", "## CPU during the load (mean, % of one core)", "",
                  ", ".join(f"{name} {value:g} %" for name, value in cpu_use.items() if name != "machine")
                  + (f"; the whole machine {cpu_use['machine']:g} % of {cores or '?'} cores' "
                     f"{100 * (cores or 0)} %" if "machine" in cpu_use else "")]
        top = s.get("cpu_busiest_10s") or {}
        if top:
            lines += ["", f"The busiest 10 s (from second {top.get('from_second'):g}): " + ", ".join(
                f"{name} {value:g} %" for name, value in top.items() if name not in ("machine", "from_second"))
                + f"; the whole machine {top.get('machine', 0):g} % of {100 * (cores or 0)} %"]
    lines += ["", "## Operator process", ""]
    if rss.get("sampled"):
        lines.append(f"- RSS: start {_fmt(rss.get('start_mb'), ' MB')}, peak {_fmt(rss.get('peak_mb'), ' MB')}, "
                     f"end {_fmt(rss.get('end_mb'), ' MB')}; at 1k/10k/25k pets: "
                     + ", ".join(_fmt(rss.get(k), " MB") for k in ("at_1k", "at_10k", "at_25k")))
        lines.append(f"- CPU: mean {_fmt(rss.get('cpu_mean'), ' %')} of one core, max {_fmt(rss.get('cpu_max'), ' %')}")
    else:
        lines.append(f"- not sampled: {rss.get('why')}")
    v = s["verify"]
    lines += ["", "## Final state", "",
              f"- {'every pet reached its predicted status' if v['ok'] else 'PROBLEMS'}: {v['pets']} pets "
              f"{v['by_phase']}, checked after {v['seconds_waited']} s"]
    lines += [f"  - {p}" for p in v["problems"]]
    lines += ["", "## Requests (Locust)", "", "| type | name | count | failures | p50 s | p95 s | p99 s |",
              "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['type']} | {r['name']} | {r['count']} | {r['failures']} | {_fmt(r['p50'])} | {_fmt(r['p95'])} | "
              f"{_fmt(r['p99'])} |" for r in s["requests"]]
    if s.get("plots"):
        lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in s["plots"]]
    return "\n".join(lines) + "\n"


def found_limit(summary: Mapping[str, Any]) -> bool:
    """Did the ramp stop at a limit (p99 or failures)? Not if it ran out of pets or of rates: then its
    sustainable rate is only a lower bound."""
    return str(summary.get("stop_reason") or "").startswith("step at")


def comparison(summaries: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Ours against the others, as ratios from the same run; a ratio whose rates are not both limits
    found by the ramp is marked as a bound (``>=``, ``<=``) or as undecided."""
    by = {s["operator"]: s for s in summaries}
    rows = []
    for s in summaries:
        st = s.get("sustainable") or {}
        rows.append({
            "operator": s["operator"],
            "sustainable_rate": st.get("achieved_rate"),
            "at_least": not found_limit(s),
            "create_rate": s.get("create_rate"),
            "p50": s["reconcile"].get("p50"), "p95": s["reconcile"].get("p95"), "p99": s["reconcile"].get("p99"),
            "writes_per_pet": s["api"]["writes_per_pet"],
            "peak_rss_mb": s["rss"].get("peak_mb"),
            "ok": s["verify"]["ok"],
        })
    ratios: dict[str, Any] = {}

    def rate(name: str) -> float | None:
        s = by.get(name)
        if s is None:
            return None
        st = s.get("sustainable") or {}
        return st.get("achieved_rate") or s.get("create_rate")

    ours = rate("ours")
    ours_bound = "ours" in by and not found_limit(by["ours"])
    for other in ("raw", "naive-kopf", "raw-chain"):
        theirs = rate(other)
        if ours and theirs:
            value = round(ours / theirs, 2)
            theirs_bound = not found_limit(by[other])
            if ours_bound and theirs_bound:
                ratios[f"ours/{other}"] = f"{value} (undecided: neither ramp reached its limit; run with more --pets)"
            elif ours_bound:
                ratios[f"ours/{other}"] = f">= {value} (ours did not reach its limit)"
            elif theirs_bound:
                ratios[f"ours/{other}"] = f"<= {value} ({other} did not reach its limit)"
            else:
                ratios[f"ours/{other}"] = value
    return {"rows": rows, "ratios": ratios}


def comparison_markdown(comp: Mapping[str, Any], targets: Mapping[str, str]) -> str:
    lines = ["| operator | sustainable rate /s | creates/s | p50 s | p95 s | p99 s | API writes per pet "
             "| peak RSS MB | final state |", "|---|---|---|---|---|---|---|---|---|"]
    for r in comp["rows"]:
        rate = ("≥ " if r.get("at_least") and r["sustainable_rate"] else "") + _fmt(r["sustainable_rate"])
        lines.append(f"| {r['operator']} | {rate} | {_fmt(r['create_rate'])} | "
                     f"{_fmt(r['p50'])} | {_fmt(r['p95'])} | {_fmt(r['p99'])} | {_fmt(r['writes_per_pet'])} | "
                     f"{_fmt(r['peak_rss_mb'])} | {'ok' if r['ok'] else 'PROBLEMS'} |")
    if comp["ratios"]:
        lines += ["", "Ratios (same run, same machine): " + ", ".join(f"{k} = {v}" for k, v in comp["ratios"].items())]
    if targets:
        lines += ["", "Targets: " + "; ".join(f"{k}: {v}" for k, v in targets.items())]
    return "\n".join(lines) + "\n"

"""One load run per operator, and ``all`` of them side by side on fresh clusters."""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import platform
import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from kubernetes import client

from pet_harness.clusters.local import LocalCluster
from pet_harness.kube import GROUP, PETS, VERSION, api_client, get_text
from pet_harness.load import apimetrics, locust_run, report, subjects, world
from pet_harness.load.sampler import Sample, Sampler, busiest, cpu_seconds, machine_cpu_seconds, peak, rss_at
from pet_harness.load.verify import verify

TARGETS = {
    "sustainable creation rate": ">= 70 % of the raw ceiling, >= 2x the naive Kopf operator",
    "API writes per created pet": "<= 3 (everything counted, store counts amortized)",
    "p99 reconcile latency at the sustainable rate": "<= 2 s",
    "operator RSS at 10,000 pets": "<= 150 MB",
}


@dataclasses.dataclass
class LoadOptions:
    operators: Sequence[str] = ("ours",)
    pets: int = 1000
    namespaces: int = 2
    namespace_names: Sequence[str] = ()  # --target kubeconfig: use these (created if absent)
    stores: int = 2
    mix: str = "create"  # create (PetCreator) | tenant (PetTenant)
    shape: str | None = None  # None: constant when headless; with --web, the UI's form decides
    rate: float = 20.0
    seconds: float = 60.0
    start_rate: float = 10.0
    rate_step: float = 10.0
    max_rate: float = 400.0
    step_seconds: float = 20.0
    p99_limit: float = 2.0
    user_rate: float = 1.0
    duplicate_share: float = 0.02
    reconcile_timeout: float = 60.0
    drain_seconds: float = 90.0
    processes: int = 1
    webhook: bool = True
    web: bool = False
    web_port: int = 0
    target: str = "local"
    kubeconfig: Path | None = None
    status_path: str = "status"  # --target kubeconfig: where the deployed operator writes status
    duplicates: str = "reject"  # --target kubeconfig: whether its webhook refuses held ids
    claims_namespace: str = "pet-system"
    out: Path = Path("results/load")
    keep_pets: bool = False

    def validate(self) -> None:
        for kind in self.operators:
            if kind not in subjects.KINDS:
                raise ValueError(f"--operator {kind!r} is not one of {', '.join(subjects.KINDS)} (or all)")
        if self.pets < 1:
            raise ValueError(f"--pets {self.pets} must be at least 1")
        if self.namespaces < 1 and not self.namespace_names:
            raise ValueError(f"--namespaces {self.namespaces} must be at least 1")
        if self.mix not in ("create", "tenant"):
            raise ValueError(f"--mix {self.mix!r} is not create or tenant")
        if self.shape not in (None, "constant", "step", "ramp"):
            raise ValueError(f"--shape {self.shape!r} is not constant, step or ramp")
        if self.target not in ("local", "kubeconfig"):
            raise ValueError(f"--target {self.target!r} is not local or kubeconfig")
        if self.target == "kubeconfig" and self.kubeconfig is None:
            raise ValueError("--target kubeconfig needs --kubeconfig (or KUBECONFIG)")
        for name, value in (("--rate", self.rate), ("--user-rate", self.user_rate), ("--start-rate", self.start_rate),
                            ("--rate-step", self.rate_step), ("--step-seconds", self.step_seconds)):
            if value <= 0:
                raise ValueError(f"{name} {value} must be positive")


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _machine() -> str:
    return f"{os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}"


def _pet_counter(api: Any, namespaces: Sequence[str]) -> Callable[[], int | None]:
    custom = client.CustomObjectsApi(api)

    def count() -> int | None:
        total = 0
        for ns in namespaces:
            result = custom.list_namespaced_custom_object(GROUP, VERSION, ns, PETS, limit=1)
            total += len(result.get("items", [])) + int((result.get("metadata") or {}).get("remainingItemCount") or 0)
        return total
    return count


def plan_for(options: LoadOptions, tenant_kubeconfig: Path, namespaces: Sequence[str], subject_args: Sequence[str],
             id_base: int) -> locust_run.LocustPlan:
    return locust_run.LocustPlan(
        kubeconfig=tenant_kubeconfig, namespaces=namespaces, stores=options.stores, pets=options.pets,
        user_class="PetCreator" if options.mix == "create" else "PetTenant",
        shape=options.shape or ("" if options.web else "constant"),
        rate=options.rate, seconds=options.seconds, start_rate=options.start_rate, rate_step=options.rate_step,
        max_rate=options.max_rate, step_seconds=options.step_seconds, p99_limit=options.p99_limit,
        user_rate=options.user_rate, duplicate_share=options.duplicate_share,
        reconcile_timeout=options.reconcile_timeout, drain_seconds=options.drain_seconds,
        processes=options.processes, web_port=options.web_port if options.web else 0,
        extra=[*subject_args, "--pet-id-base", str(id_base)],
    )


def run_one(options: LoadOptions, kind: str, out: Path, say: Callable[[str], None] = print) -> dict[str, Any]:
    """One operator under the load, on a fresh embedded cluster (or on --target kubeconfig)."""
    out.mkdir(parents=True, exist_ok=True)
    started_at, wall = _now(), time.monotonic()
    cluster: LocalCluster | None = None
    subject: subjects.Subject | None = None
    api = sampler_api = None
    try:
        if options.target == "local":
            say(f"[{kind}] starting an embedded cluster tuned for load")
            cluster = LocalCluster(extra_apiserver_args=world.LOAD_APISERVER_ARGS, audit_policy=None)
            cluster.start()
            admin = cluster.kubeconfig_path
            cluster_note = (f"embedded kube-apiserver + etcd ({', '.join(world.LOAD_APISERVER_ARGS)}, no audit log), "
                            f"started in {cluster.start_seconds:.1f} s")
        else:
            if options.kubeconfig is None:
                raise ValueError("--target kubeconfig needs --kubeconfig FILE")
            admin = options.kubeconfig
            cluster_note = f"existing cluster of {options.kubeconfig} (--target kubeconfig)"
        api = api_client(admin)
        if options.target == "local":
            subjects.install_crds_for(kind, api, out)
        namespaces = list(options.namespace_names) or world.namespace_names(options.namespaces)
        world.create_namespaces_and_stores(api, [options.claims_namespace], 0)
        world.create_namespaces_and_stores(api, namespaces, options.stores)
        if options.target == "local":
            say(f"[{kind}] " + ("no operator: the load client writes status itself" if kind.startswith("raw")
                                 else "starting the operator under test"))
            subject = subjects.start_subject(kind, api, admin, namespaces, out, webhook=options.webhook)
            tenant = world.tenant_kubeconfig(api, admin, options.claims_namespace, namespaces,
                                             out / "tenant.kubeconfig")
        else:
            subject = subjects.Subject(kind, status_path=options.status_path, duplicates=options.duplicates)
            tenant = admin
        id_base = (int(time.time()) % 1_000_000) * 1_000_000_000
        plan = plan_for(options, tenant, namespaces, subject.locust_args(), id_base)
        before = _metrics(cluster, api)
        sampler_api = api_client(admin)
        others = ({"kube-apiserver": cluster.apiserver.pid if cluster.apiserver else None,
                   "etcd": cluster.etcd.pid if cluster.etcd else None} if cluster is not None else {})
        sampler = Sampler(subject.pid, _pet_counter(sampler_api, namespaces), others=others,
                          progress=lambda sample: say(progress_line(kind, sample, out / "steps.json"))).start()
        if options.web:
            say(f"[{kind}] Locust web UI: http://127.0.0.1:{options.web_port}/ (start a swarm there; "
                "the run ends when it is stopped)")
        else:
            say(f"[{kind}] Locust: {plan.user_class}, shape {plan.shape}, up to {plan.pets} creates "
                f"(log {out / 'locust.log'})")
        locust_started = time.monotonic()
        cpu_before = cpu_snapshot(cluster, subject)
        try:
            locust_run.run(plan, out)
        finally:
            samples = sampler.stop()
        locust_seconds = time.monotonic() - locust_started
        cpu_use = cpu_shares(cpu_before, cpu_snapshot(cluster, subject), locust_seconds)
        after = _metrics(cluster, api)
        say(f"[{kind}] checking every pet's final status")
        verdict = verify(api, namespaces, subject.status_path,
                         options.claims_namespace if kind in ("ours", "naive-kopf", "raw-chain") else None)
        shutdown = subject.stop() if options.target == "local" else None
        summary = summarize(options, kind, out, plan, subject, cluster_note, started_at, wall, locust_seconds,
                            cpu_use,
                            before, after, samples, verdict, shutdown, namespaces)
        if options.target == "kubeconfig" and not options.keep_pets:
            _delete_run_pets(api, namespaces, id_base)
        return summary
    finally:
        if subject is not None:
            subject.stop()
        for a in (api, sampler_api):
            if a is not None:
                a.close()
        if cluster is not None:
            cluster.stop()


def _metrics(cluster: LocalCluster | None, api: Any) -> str | None:
    """The API server's /metrics text (None when it cannot be read)."""
    try:
        if cluster is not None:
            return cluster.metrics_text()
        return get_text(api, "/metrics", accept="text/plain")
    except Exception:  # noqa: BLE001 - on a real cluster /metrics may be forbidden: say so in the summary
        return None


def _delete_run_pets(api: Any, namespaces: Sequence[str], id_base: int) -> None:
    custom = client.CustomObjectsApi(api)
    pattern = re.compile(rf"^p\d+-{id_base % 100_000}-\d+$")
    for ns in namespaces:
        for pet in custom.list_namespaced_custom_object(GROUP, VERSION, ns, PETS)["items"]:
            name = pet["metadata"]["name"]
            if pattern.match(name):
                custom.delete_namespaced_custom_object(GROUP, VERSION, ns, PETS, name)


def summarize(
    options: LoadOptions, kind: str, out: Path, plan: locust_run.LocustPlan, subject: subjects.Subject,
    cluster_note: str, started_at: str, wall: float, locust_seconds: float, cpu_use: dict[str, float],
    before: str | None, after: str | None,
    samples: list[Any], verdict: Any, shutdown: float | None, namespaces: Sequence[str],
) -> dict[str, Any]:
    stats = locust_run.read_stats(out)
    history = locust_run.read_history(out)
    rows = report.request_rows(stats)
    reconcile = dict(report.find(rows, report.RECONCILE, report.CREATE_LATENCY))
    creates = sum((r["count"] or 0) - (r["failures"] or 0) for r in rows
                  if r["type"] == "POST" and str(r["name"]).startswith("POST pets") and "refused" not in str(r["name"]))
    create_seconds = _create_seconds(history)
    steps_doc: dict[str, Any] = {}
    steps_path = out / "steps.json"
    if steps_path.exists():
        steps_doc = json.loads(steps_path.read_text())
    steps = steps_doc.get("steps", [])
    client_requests = [(str(r["name"]), int(r["count"] or 0)) for r in rows if r["type"] != report.RECONCILE]
    api_part = _api_part(before, after, client_requests, creates)
    rss_values = [s.rss_mb for s in samples if s.rss_mb is not None]
    cpu_values = [s.cpu_percent for s in samples if s.cpu_percent is not None]
    rss: dict[str, Any] = {"sampled": bool(rss_values)}
    if rss_values:
        rss.update(start_mb=rss_values[0], end_mb=rss_values[-1], peak_mb=peak(samples),
                   at_1k=rss_at(samples, 1000), at_10k=rss_at(samples, 10_000), at_25k=rss_at(samples, 25_000),
                   cpu_mean=round(sum(cpu_values) / len(cpu_values), 1) if cpu_values else None,
                   cpu_max=max(cpu_values) if cpu_values else None)
    else:
        rss["why"] = ("the operator runs in the cluster (--target kubeconfig): its RSS is not sampled here"
                      if options.target == "kubeconfig" else "no operator process (the load client writes the status)")
    plots = []
    title = f"{kind}: {plan.user_class}, shape {plan.shape or 'web UI'}"
    if report.plot_latency(history, out / "latency.png", title):
        plots.append("latency.png")
    if report.plot_rss(samples, out / "rss.png", f"{kind}: operator RSS over pets"):
        plots.append("rss.png")
    (out / "samples.csv").write_text("seconds,rss_mb,cpu_percent,pets\n" + "".join(
        f"{s.at},{_blank(s.rss_mb)},{_blank(s.cpu_percent)},{_blank(s.pets)}\n" for s in samples))
    summary = {
        "operator": kind,
        "operator_note": _note(kind, options) + (f"; {subject.runtime}" if subject.runtime else ""),
        "started": started_at,
        "wall_seconds": round(time.monotonic() - wall, 1),
        "machine": _machine(),
        "cluster": cluster_note,
        "namespaces": list(namespaces),
        "plan": {k: v for k, v in dataclasses.asdict(plan).items() if k not in ("kubeconfig", "extra", "namespaces")},
        "started_seconds": subject.started_seconds,
        "shutdown_seconds": shutdown,
        "locust_seconds": round(locust_seconds, 1),
        "creates": creates,
        "create_seconds": create_seconds,
        "create_rate": round(creates / create_seconds, 2) if create_seconds else None,
        "reconcile": {k: reconcile.get(k) for k in ("count", "failures", "p50", "p95", "p99", "max")},
        "steps": steps,
        "stop_reason": steps_doc.get("stop_reason"),
        "sustainable": report.sustainable(steps, options.p99_limit) if plan.shape == "ramp" else None,
        "api": api_part,
        "rss": rss,
        "cpu_during_load": cpu_use,
        "cpu_busiest_10s": busiest(samples),
        "cores": os.cpu_count(),
        "verify": {"ok": verdict.ok, "pets": verdict.pets, "by_phase": verdict.by_phase,
                   "problems": verdict.problems, "seconds_waited": verdict.seconds_waited},
        "requests": rows,
        "plots": plots,
    }
    report.write(out, summary)
    return summary


def _blank(value: Any) -> str:
    return "" if value is None else str(value)


def cpu_snapshot(cluster: LocalCluster | None, subject: subjects.Subject) -> dict[str, float | None]:
    """CPU seconds used so far by the operator, kube-apiserver, etcd and the whole machine."""
    pids = {"operator": subject.pid}
    if cluster is not None:
        pids["kube-apiserver"] = cluster.apiserver.pid if cluster.apiserver else None
        pids["etcd"] = cluster.etcd.pid if cluster.etcd else None
    taken: dict[str, float | None] = {name: cpu_seconds(pid) if pid else None for name, pid in pids.items()}
    taken["machine"] = machine_cpu_seconds()
    return taken


def cpu_shares(before: dict[str, float | None], after: dict[str, float | None], seconds: float) -> dict[str, float]:
    """Mean CPU over the load, in % of one core, of each process sampled and of the machine
    (the machine's figure counts every core: 200 % is a 2-core machine busy all the time)."""
    shares: dict[str, float] = {}
    for name, start in before.items():
        end = after.get(name)
        if start is not None and end is not None and seconds > 0:
            shares[name] = round(100.0 * (end - start) / seconds, 1)
    return shares


def progress_line(kind: str, sample: Sample, steps_path: Path) -> str:
    """One line on a running load: time, pets, the operator's RSS and CPU, the last finished ramp step."""
    parts = [f"[{kind}] {sample.at:.0f} s: {sample.pets if sample.pets is not None else '?'} pets"]
    if sample.rss_mb is not None:
        parts.append(f"RSS {sample.rss_mb:.0f} MB, CPU {sample.cpu_percent or 0:.0f} %")
    try:
        steps = json.loads(steps_path.read_text()).get("steps") or []
    except (OSError, ValueError, AttributeError):
        steps = []
    if steps:
        last = steps[-1]
        parts.append(f"last step {last.get('target_rate')}/s: p99 {last.get('p99')} s")
    return ", ".join(parts)


def _note(kind: str, options: LoadOptions) -> str:
    return {
        "ours": "pet-operator, shipped RBAC (ServiceAccount token), --leader-elect, "
                + ("admission webhook on (direct to its port)" if options.webhook else "no webhook"),
        "naive-kopf": "loadtests/peers/naive_kopf.py under kopf run, Kopf defaults, its own ServiceAccount",
        "raw": "no operator: the load client writes the predicted status itself (create + 1 status patch)",
        "raw-chain": "no operator: the load client makes our operator's chain of writes itself",
    }.get(kind, kind) if options.target == "local" else f"{kind}, already deployed in the cluster"


def _create_seconds(history: Sequence[dict[str, Any]]) -> float | None:
    """From the first to the last second in which creates were counted (Locust's history)."""
    stamps = [int(r["Timestamp"]) for r in history
              if r.get("Type") == "POST" and r.get("Name") == "POST pets" and (r.get("Requests/s") or 0) > 0]
    if len(stamps) < 2:
        return None
    return float(max(stamps) - min(stamps))


def _api_part(before: str | None, after: str | None, client_requests: list[tuple[str, int]],
              creates: int) -> dict[str, Any]:
    if before is None or after is None:
        return {"by_key": [], "operator_writes_total": None, "writes_per_pet": None, "errors": [],
                "note": "the API server's /metrics could not be read"}
    total = apimetrics.delta(apimetrics.parse(before), apimetrics.parse(after))
    coded = apimetrics.delta(apimetrics.parse(before, by_code=True), apimetrics.parse(after, by_code=True))
    errors = [{"verb": k[0], "resource": k[1].rsplit(" ", 1)[0], "code": k[1].rsplit(" ", 1)[1], "count": v}
              for k, v in sorted(coded.items()) if k[1].rsplit(" ", 1)[1][:1] in ("4", "5")]
    operator = apimetrics.operator_writes(total, client_requests)
    keys = sorted(set(apimetrics.writes(total)) | set(operator), key=lambda k: (k[1], k[0]))
    reads = sorted(((k, v) for k, v in total.items() if k not in keys), key=lambda kv: -kv[1])
    rows = [{"verb": k[0], "resource": k[1], "count": total.get(k, 0), "operator": operator.get(k, 0)} for k in keys]
    rows += [{"verb": k[0], "resource": k[1], "count": v, "operator": "-"} for k, v in reads[:12]]
    written = sum(operator.values())
    return {"by_key": rows, "operator_writes_total": written, "errors": errors,
            "writes_per_pet": round(written / creates, 2) if creates else None}


def run(options: LoadOptions, say: Callable[[str], None] = print) -> tuple[Path, list[dict[str, Any]]]:
    """Every operator of ``options.operators`` in turn; returns the report folder and the summaries."""
    options.validate()
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    root = options.out.resolve() / stamp
    summaries = []
    for kind in options.operators:
        summaries.append(run_one(options, kind, root / kind if len(options.operators) > 1 else root, say))
    if len(summaries) > 1:
        comp = report.comparison(summaries)
        (root / "summary.json").write_text(json.dumps({"runs": summaries, "comparison": comp,
                                                        "targets": TARGETS}, indent=2, default=str))
        (root / "summary.md").write_text("# Load runs side by side\n\n" + report.comparison_markdown(comp, TARGETS)
                                         + "\n" + "\n".join(f"- [{s['operator']}]({s['operator']}/summary.md)"
                                                            for s in summaries) + "\n")
    return root, summaries

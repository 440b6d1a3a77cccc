"""``pet-harness limits``: how far one operator goes here, measured on one embedded cluster.

In order, on a cluster tuned for load with two leader-electing replicas of ours:

1. **population**: Locust creates ``--population`` pets (25,000 by default) over ``--namespaces``
   namespaces at ``--rate``; the leader's RSS is sampled against the number of pets; the API server's
   storage size (etcd's database, as ``apiserver_storage_size_bytes`` reports it) is read at the end;
2. **restart**: the leader is restarted (SIGTERM, start): seconds until ``/readyz``, until a pet created
   at that moment is Active (the restarted replica has caught up), and the API writes made meanwhile
   (an unchanged population should cost close to none);
3. **concurrent updates**: ``--updaters`` clients read-modify-write the same pets with resourceVersion
   preconditions (conflicts retried): no lost update, every status at its pet's last generation;
4. **narrowing**: a store holding ``--narrow-pets`` pets stops allowing their tag: seconds until every one
   is Invalid/TagsNotAllowed, and back to Active once the store allows it again;
5. **mass delete**: ``--delete-pets`` pets deleted at once: seconds until all are gone with their id claims;
6. **failover**: the leader is SIGKILLed at the remaining population: seconds until the standby leads, and
   until a pet created at the kill is Active.

Each step writes its figures into ``limits.json`` and ``limits.md`` as it finishes, so a run stopped
half-way keeps what it measured.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import datetime
import json
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from pet_harness.clusters.local import LocalCluster
from pet_harness.kube import GROUP, VERSION, PetApi, api_client
from pet_harness.load import apimetrics, locust_run, report, subjects, world
from pet_harness.load.runner import _machine, _pet_counter
from pet_harness.load.sampler import Sampler, peak, rss_at, rss_mb
from pet_harness.load.verify import claim_ids, list_all
from pet_harness.waiting import wait_for

NARROW = "narrow-0"  # the narrowing step's namespace, served from the start


@dataclasses.dataclass
class LimitsOptions:
    population: int = 25_000
    namespaces: int = 10
    rate: float = 60.0  # creates per second while the population grows
    narrow_pets: int = 5_000
    delete_pets: int = 10_000
    updaters: int = 8
    updated_pets: int = 40
    updates_per_pet: int = 10
    lease: tuple[float, float, float] = (15.0, 10.0, 2.0)  # duration, renew deadline, retry period (shipped)
    out: Path = Path("results/limits")

    def validate(self) -> None:
        if self.population < 1000:
            raise ValueError(f"--population {self.population}: at least 1000")
        if self.delete_pets > self.population:
            raise ValueError(f"--delete-pets {self.delete_pets} is more than --population {self.population}")
        if self.rate <= 0 or self.namespaces < 1:
            raise ValueError(f"--rate {self.rate} and --namespaces {self.namespaces} must be positive")


class Bulk:
    """Fast direct calls (threads over one admin client) for what is not the measured load itself."""

    def __init__(self, api: Any, threads: int = 16) -> None:
        self.api = api
        self.custom = client.CustomObjectsApi(api)
        self.pool = concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="limits")

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)

    def create(self, namespace: str, names_ids: Sequence[tuple[str, int]], spec: dict[str, Any]) -> int:
        def one(item: tuple[str, int]) -> None:
            name, pet_id = item
            body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "Pet", "metadata": {"name": name},
                    "spec": {**spec, "id": pet_id, "name": name}}
            self.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "pets", body)
        return sum(1 for _ in self.pool.map(one, names_ids))

    def delete(self, pets: Sequence[tuple[str, str]]) -> int:
        def one(key: tuple[str, str]) -> None:
            try:
                self.custom.delete_namespaced_custom_object(GROUP, VERSION, key[0], "pets", key[1])
            except ApiException as exc:
                if exc.status != 404:
                    raise
        return sum(1 for _ in self.pool.map(one, pets))

    def phases(self, namespaces: Sequence[str], path: str = "status") -> tuple[Counter[str], list[dict[str, Any]]]:
        pets = list(list_all(self.api, "pets", namespaces))
        return Counter(str((p.get(path) or {}).get("phase")) for p in pets), pets


class Report:
    """Figures so far, written after every step."""

    def __init__(self, out: Path, header: dict[str, Any]) -> None:
        self.out = out
        self.data: dict[str, Any] = {**header, "steps": {}}
        out.mkdir(parents=True, exist_ok=True)

    def step(self, name: str, figures: dict[str, Any]) -> None:
        self.data["steps"][name] = figures
        (self.out / "limits.json").write_text(json.dumps(self.data, indent=2, default=str))
        (self.out / "limits.md").write_text(markdown(self.data))


def markdown(data: dict[str, Any]) -> str:
    lines = ["# Limits of one operator replica", "", f"- when: {data['started']}; machine: {data['machine']}",
             f"- command: `{data['command']}`", f"- cluster: {data['cluster']}", ""]
    for name, figures in data["steps"].items():
        lines += [f"## {name}", ""]
        lines += [f"- {k.replace('_', ' ')}: {v}" for k, v in figures.items() if k != "plots"]
        lines += [f"![{p}]({p})" for p in figures.get("plots", [])]
        lines.append("")
    return "\n".join(lines)


def _metrics(cluster: LocalCluster) -> dict[tuple[str, str], int]:
    return dict(apimetrics.parse(cluster.metrics_text()))


def _writes(before: dict[tuple[str, str], int], after: dict[tuple[str, str], int]) -> dict[str, int]:
    return {f"{k[0]} {k[1]}": v for k, v in apimetrics.writes(apimetrics.delta(before, after)).items()}


def storage_bytes(cluster: LocalCluster) -> int | None:
    """The etcd database size the API server reports (``apiserver_storage_size_bytes``)."""
    for line in cluster.metrics_text().splitlines():
        if line.startswith("apiserver_storage_size_bytes"):
            return int(float(line.rsplit(" ", 1)[1]))
    return None


def _leader_index(subject: subjects.Subject) -> int | None:
    import urllib.request

    for index, op in enumerate(subject.replicas):
        try:
            leader_url = f"http://127.0.0.1:{op.health_port}/leader"
            with urllib.request.urlopen(leader_url, timeout=2) as resp:  # nosec B310 # loopback URL built here
                if json.loads(resp.read()).get("leader") is True:
                    return index
        except (OSError, ValueError):
            continue
    return None


def _probe(pets: PetApi, name: str, pet_id: int) -> float:
    """Create a pet now; seconds until it is Active."""
    started = time.monotonic()
    pets.create_pet(name, {"id": pet_id, "name": name})
    wait_for(lambda: pets.get_pet(name), lambda p: (p.get("status") or {}).get("phase") == "Active", 600,
             f"probe pet {name} Active")
    return round(time.monotonic() - started, 2)


def run(options: LimitsOptions, command: str, say: Callable[[str], None] = print) -> Path:
    options.validate()
    root = options.out.resolve() / datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    cluster = LocalCluster(extra_apiserver_args=world.LOAD_APISERVER_ARGS, audit_policy=None)
    subject: subjects.Subject | None = None
    api = bulk = None
    say("starting an embedded cluster tuned for load")
    cluster.start()
    try:
        admin = cluster.kubeconfig_path
        api = api_client(admin)
        bulk = Bulk(api_client(admin))
        subjects.install_crds_for("ours", api, root)
        namespaces = world.namespace_names(options.namespaces)
        world.create_namespaces_and_stores(api, [subjects.CLAIMS_NAMESPACE], 0)
        world.create_namespaces_and_stores(api, [*namespaces, NARROW], 1)
        duration, renew, retry = options.lease
        lease_args = ["--lease-duration", str(duration), "--renew-deadline", str(renew), "--retry-period", str(retry)]
        say("starting two replicas of ours")
        subject = subjects.start_subject("ours", api, admin, [*namespaces, NARROW], root, replicas=2,
                                         extra_args=lease_args, ready_timeout=300)
        rep = Report(root, {"started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                            "machine": _machine(), "command": command, "options": dataclasses.asdict(options),
                            "cluster": f"embedded, {', '.join(world.LOAD_APISERVER_ARGS)}, no audit log; ours: "
                                       f"2 replicas, shipped RBAC, webhook on, lease {duration}/{renew}/{retry} s"})
        _population(options, cluster, api, subject, namespaces, root, rep, say)
        _restart(cluster, api, subject, namespaces, rep, say)
        _concurrent_updates(options, api, namespaces, rep, say)
        _narrowing(options, bulk, api, rep, say)
        _mass_delete(options, cluster, bulk, api, namespaces, rep, say)
        _failover(cluster, api, subject, namespaces, rep, say)
        return root
    finally:
        if subject is not None:
            subject.stop()
        if bulk is not None:
            bulk.close()
            bulk.api.close()
        if api is not None:
            api.close()
        cluster.stop()


def _population(options: LimitsOptions, cluster: LocalCluster, api: Any, subject: subjects.Subject,
                namespaces: list[str], root: Path, rep: Report, say: Callable[[str], None]) -> None:
    say(f"population: creating {options.population} pets at {options.rate:g}/s with Locust")
    out = root / "population"
    tenant = world.tenant_kubeconfig(api, cluster.kubeconfig_path, subjects.CLAIMS_NAMESPACE, namespaces,
                                     root / "tenant.kubeconfig")
    plan = locust_run.LocustPlan(
        kubeconfig=tenant, namespaces=namespaces, stores=1, pets=options.population, shape="constant",
        rate=options.rate, seconds=options.population / options.rate * 3, user_rate=2.0, duplicate_share=0.0,
        reconcile_timeout=120, drain_seconds=300, extra=subject.locust_args())
    before = _metrics(cluster)
    counter_api = api_client(cluster.kubeconfig_path)
    sampler = Sampler(subject.pid, _pet_counter(counter_api, namespaces), interval=2.0).start()
    try:
        locust_run.run(plan, out)
    finally:
        samples = sampler.stop()
        counter_api.close()
    after = _metrics(cluster)
    rows = report.request_rows(locust_run.read_stats(out))
    latency = report.find(rows, report.RECONCILE, report.CREATE_LATENCY)
    creates = int(report.find(rows, "POST", "POST pets").get("count") or 0)
    writes = _writes(before, after)
    plots = ["population-rss.png"] if report.plot_rss(samples, root / "population-rss.png",
                                                      "ours (leader): RSS over pets") else []
    if report.plot_latency(locust_run.read_history(out), root / "population-latency.png",
                           f"ours: {options.population} pets at {options.rate:g}/s"):
        plots.append("population-latency.png")
    rep.step("population", {
        "pets": creates, "namespaces": len(namespaces), "rate_per_second": options.rate,
        "create_to_active": {k: latency.get(k) for k in ("count", "failures", "p50", "p95", "p99", "max")},
        "rss_mb": {"start": samples[0].rss_mb if samples else None, "at_1k": rss_at(samples, 1000),
                   "at_10k": rss_at(samples, 10_000), "at_25k": rss_at(samples, 25_000), "peak": peak(samples)},
        "standby_rss_mb": _rss(subject.replicas[1].process.pid if subject.replicas[1].process else None),
        "etcd_db_bytes": storage_bytes(cluster),
        "operator_writes_per_pet": round(sum(v for k, v in writes.items() if not k.startswith("POST pets")) /
                                         max(creates, 1), 2),
        "plots": plots,
    })


def _rss(pid: int | None) -> float | None:
    value = rss_mb(pid) if pid else None
    return None if value is None else round(value, 1)


def _restart(cluster: LocalCluster, api: Any, subject: subjects.Subject, namespaces: list[str], rep: Report,
             say: Callable[[str], None]) -> None:
    pets = PetApi(api, namespaces[0])
    count = _pet_counter(api, namespaces)()
    leader = subject.replicas[0]
    say(f"restart: restarting the leader with {count} pets")
    before = _metrics(cluster)
    stopped = time.monotonic()
    leader.stop(30)
    shutdown = round(time.monotonic() - stopped, 2)
    leader.start(wait_ready=False)
    started = time.monotonic()
    wait_for(lambda: leader.readyz()[0], lambda code: code == 200, 900, "the restarted replica /readyz",
             ignore=(OSError,))
    ready = round(time.monotonic() - started, 2)
    leads = wait_for(lambda: _leader_index(subject), lambda i: i is not None, 120, "a leader")
    caught_up = _probe(pets, "probe-restart", 9_000_000_000_000_001)
    after = _metrics(cluster)
    rep.step("restart", {"pets": count, "sigterm_exit_seconds": shutdown, "ready_seconds": ready,
                         "probe_active_after_ready_seconds": caught_up,
                         "total_seconds": round(time.monotonic() - stopped, 2), "leader_after": f"replica {leads}",
                         "writes_during_restart": _writes(before, after)})


def _concurrent_updates(options: LimitsOptions, api: Any, namespaces: list[str], rep: Report,
                        say: Callable[[str], None]) -> None:
    say(f"concurrent updates: {options.updaters} clients on the same {options.updated_pets} pets")
    custom = client.CustomObjectsApi(api)
    ns = namespaces[0]
    names = [p["metadata"]["name"] for p in custom.list_namespaced_custom_object(
        GROUP, VERSION, ns, "pets", limit=options.updated_pets)["items"]]
    done: Counter[str] = Counter()
    conflicts = 0

    def client_work(worker: int) -> tuple[int, int]:
        made = lost = 0
        for _round in range(options.updates_per_pet):
            for name in names:
                for _ in range(50):  # bounded retries of one read-modify-write
                    pet = custom.get_namespaced_custom_object(GROUP, VERSION, ns, "pets", name)
                    counter = int((pet["spec"].get("category") or "0").split("-")[-1]) + 1
                    pet["spec"]["category"] = f"count-{counter}"
                    try:
                        custom.replace_namespaced_custom_object(GROUP, VERSION, ns, "pets", name, pet)
                        made += 1
                        break
                    except ApiException as exc:
                        if exc.status != 409:
                            raise
                        lost += 1
        return made, lost

    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(options.updaters) as pool:
        for made, refused in pool.map(client_work, range(options.updaters)):
            done["made"] += made
            conflicts += refused
    writing = round(time.monotonic() - started, 2)

    def settled() -> list[str]:
        bad = []
        for name in names:
            pet = custom.get_namespaced_custom_object(GROUP, VERSION, ns, "pets", name)
            status = pet.get("status") or {}
            if status.get("observedGeneration") != pet["metadata"]["generation"] or status.get("phase") != "Active":
                bad.append(name)
        return bad
    wait_for(settled, lambda bad: not bad, 300, "every updated pet's status at its last generation")
    total = sum(int(custom.get_namespaced_custom_object(GROUP, VERSION, ns, "pets", n)["spec"]["category"]
                    .split("-")[-1]) for n in names)
    rep.step("concurrent updates", {
        "clients": options.updaters, "pets": len(names), "updates_made": done["made"],
        "conflicts_retried": conflicts, "counters_sum": total, "lost_updates": done["made"] - total,
        "writing_seconds": writing, "settled_seconds_after_writing": round(time.monotonic() - started - writing, 2)})


def _narrowing(options: LimitsOptions, bulk: Bulk, api: Any, rep: Report, say: Callable[[str], None]) -> None:
    ns = NARROW
    pets = PetApi(api, ns)
    pets.create_store("narrow", {"allowedTags": ["dog", "cat"]})
    say(f"narrowing: {options.narrow_pets} pets in one store")
    base = 8_000_000_000_000
    bulk.create(ns, [(f"n{i}", base + i) for i in range(options.narrow_pets)], {"store": "narrow", "tags": ["dog"]})
    wait_for(lambda: bulk.phases([ns])[0], lambda c: c.get("Active") == options.narrow_pets, 900,
             f"{options.narrow_pets} pets Active in {ns}")
    started = time.monotonic()
    pets.patch_store("narrow", {"spec": {"allowedTags": ["cat"]}})
    wait_for(lambda: bulk.phases([ns])[0], lambda c: c.get("Invalid") == options.narrow_pets, 900,
             "every pet of the narrowed store Invalid")
    narrowed = round(time.monotonic() - started, 2)
    started = time.monotonic()
    pets.patch_store("narrow", {"spec": {"allowedTags": ["cat", "dog"]}})
    wait_for(lambda: bulk.phases([ns])[0], lambda c: c.get("Active") == options.narrow_pets, 900,
             "every pet Active again")
    widened = round(time.monotonic() - started, 2)
    store = pets.get_store("narrow")
    rep.step("narrowing", {"pets_in_store": options.narrow_pets, "all_invalid_seconds": narrowed,
                           "all_active_again_seconds": widened,
                           "store_pet_count": store.get("status", {}).get("petCount")})
    say("narrowing: removing its pets")
    bulk.delete([(ns, f"n{i}") for i in range(options.narrow_pets)])
    wait_for(lambda: bulk.phases([ns])[1], lambda items: not items, 900, f"the pets of {ns} gone")


def _mass_delete(options: LimitsOptions, cluster: LocalCluster, bulk: Bulk, api: Any, namespaces: list[str],
                 rep: Report, say: Callable[[str], None]) -> None:
    victims: list[tuple[str, str]] = []
    ids: set[int] = set()
    for pet in list_all(api, "pets", namespaces):
        if len(victims) >= options.delete_pets:
            break
        victims.append((pet["metadata"]["namespace"], pet["metadata"]["name"]))
        ids.add(int(pet["spec"]["id"]))
    say(f"mass delete: {len(victims)} pets")
    before = _metrics(cluster)
    started = time.monotonic()
    bulk.delete(victims)
    requested = round(time.monotonic() - started, 2)
    gone = set(victims)

    def remaining() -> int:
        return sum(1 for p in list_all(api, "pets", namespaces)
                   if (p["metadata"]["namespace"], p["metadata"]["name"]) in gone)
    wait_for(remaining, lambda n: n == 0, 1800, f"{len(victims)} deleted pets gone")
    all_gone = round(time.monotonic() - started, 2)
    left_claims = len(ids & claim_ids(api, subjects.CLAIMS_NAMESPACE))
    rep.step("mass delete", {"pets": len(victims), "delete_calls_seconds": requested, "all_gone_seconds": all_gone,
                             "claims_left_of_deleted_ids": left_claims, "writes": _writes(before, _metrics(cluster))})


def _failover(cluster: LocalCluster, api: Any, subject: subjects.Subject, namespaces: list[str], rep: Report,
              say: Callable[[str], None]) -> None:
    count = _pet_counter(api, namespaces)()
    leader = _leader_index(subject)
    if leader is None:
        raise RuntimeError("failover: nobody leads before the failover")
    standby = 1 - leader
    say(f"failover: SIGKILL of the leader (replica {leader}) with {count} pets")
    subjects.point_webhook(api, subject, standby, [*namespaces, NARROW])  # the webhook stays up
    pets = PetApi(api, namespaces[0])
    killed = time.monotonic()
    subject.replicas[leader].kill()
    probe_started = time.monotonic()
    pets.create_pet("probe-failover", {"id": 9_000_000_000_000_002, "name": "probe-failover"})
    wait_for(lambda: _leader_index(subject), lambda i: i == standby, 600, f"replica {standby} to lead")
    leads = round(time.monotonic() - killed, 2)
    wait_for(lambda: pets.get_pet("probe-failover"), lambda p: (p.get("status") or {}).get("phase") == "Active",
             600, "the probe pet Active under the new leader")
    rep.step("failover", {"pets": count, "new_leader_after_seconds": leads,
                          "probe_active_after_kill_seconds": round(time.monotonic() - probe_started, 2)})
    subject.replicas[leader].start(wait_ready=False)

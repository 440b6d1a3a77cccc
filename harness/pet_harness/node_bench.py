"""``pet-harness node-bench``: start and stop the node cluster a few times and write the figures.

Per run: the start (and its phases), a pod created to Ready, the resident memory of every component
and of the containerd shims with that pod running, and the teardown; medians over the runs. The
results go to ``summary.json`` and ``summary.md`` in the results folder (never into assertions).
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any

from pet_harness.clusters.node import NodeCluster
from pet_harness.clusters.node_teardown import processes_mentioning
from pet_harness.waiting import wait_for


def rss_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return 0.0


def _pod(image: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "bench"},
        "spec": {
            "automountServiceAccountToken": False, "terminationGracePeriodSeconds": 1,
            "securityContext": {"runAsNonRoot": True, "runAsUser": 65532, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{"name": "main", "image": image, "imagePullPolicy": "Never", "args": ["sleep"],
                            "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                                "capabilities": {"drop": ["ALL"]}}}],
        },
    }


def one_run() -> dict[str, Any]:
    from kubernetes import client

    from pet_harness.kubeclient import api_client

    cluster = NodeCluster()
    started = time.monotonic()
    cluster.start()
    run: dict[str, Any] = {"start_s": round(time.monotonic() - started, 2), "phases": dict(cluster.timings)}
    try:
        api = api_client(cluster.kubeconfig_path)
        try:
            core = client.CoreV1Api(api)
            created = time.monotonic()
            core.create_namespaced_pod("default", _pod(cluster.toolbox_image))
            wait_for(lambda: core.read_namespaced_pod("bench", "default"),
                     lambda pod: any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or []),
                     120, "the bench pod to be Ready")
            run["pod_ready_s"] = round(time.monotonic() - created, 2)
        finally:
            api.close()
        memory = {name: rss_mib(proc.pid) for name, proc in cluster.components().items() if proc and proc.pid}
        shims = [pid for pid in processes_mentioning(str(cluster.workdir)) if "shim" in Path(f"/proc/{pid}/cmdline")
                 .read_bytes().decode(errors="replace")]
        memory["containerd-shims"] = round(sum(rss_mib(pid) for pid in shims), 1)
        run["rss_mib"] = memory
        run["rss_total_mib"] = round(sum(memory.values()), 1)
    finally:
        stopping = time.monotonic()
        cluster.stop()
        run["teardown_s"] = round(time.monotonic() - stopping, 2)
    return run


def bench(runs: int, results: Path) -> dict[str, Any]:
    results.mkdir(parents=True, exist_ok=True)
    rows = []
    for index in range(runs):
        rows.append(one_run())
        print(f"run {index + 1}/{runs}: {json.dumps(rows[-1])}", flush=True)

    def median(key: str) -> float:
        return round(float(statistics.median(r[key] for r in rows)), 2)

    summary = {
        "runs": rows,
        "median_start_s": median("start_s"),
        "median_pod_ready_s": median("pod_ready_s"),
        "median_teardown_s": median("teardown_s"),
        "median_rss_total_mib": median("rss_total_mib"),
    }
    (results / "summary.json").write_text(json.dumps(summary, indent=2))
    components = list(rows[0]["rss_mib"])
    lines = [
        f"# Node cluster: {runs} runs",
        "",
        f"- start: median {summary['median_start_s']} s ({', '.join(str(r['start_s']) for r in rows)})",
        f"- pod created to Ready: median {summary['median_pod_ready_s']} s",
        f"- teardown (one pod running): median {summary['median_teardown_s']} s "
        f"({', '.join(str(r['teardown_s']) for r in rows)})",
        f"- resident memory with one pod: median {summary['median_rss_total_mib']} MiB in all",
        "",
        "| component | RSS MiB (median) |",
        "| --- | --- |",
        *(f"| {c} | {statistics.median(r['rss_mib'].get(c, 0) for r in rows)} |" for c in components),
        "",
        "Phases of the start (seconds since its beginning, median): "
        + ", ".join(f"{p} {statistics.median(r['phases'].get(p, 0) for r in rows)}" for p in rows[0]["phases"]),
    ]
    (results / "summary.md").write_text("\n".join(lines) + "\n")
    return summary

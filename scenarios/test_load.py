"""The load pipeline end to end: `pet-harness load` on fresh embedded clusters, headless and through
Locust's web UI in a real browser (Debian's chromium driven by Playwright).

These start their own clusters (one per operator), so they do not use the suite's ``pet_cluster``;
they run in tox's ``load`` env (``-m load``), not in ``e2e``. Figures are written to
``reports/load/``, never asserted: the assertions are about the pipeline (every pet reached its
predicted status, the summary, plots and ratios were written).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from pet_harness.clusters.local import free_port
from pet_harness.processes import ManagedProcess
from pet_harness.waiting import wait_for

pytestmark = pytest.mark.load

REPORTS = Path(__file__).resolve().parents[1] / "reports"
CHROMIUM = os.environ.get("PET_CHROMIUM", "/usr/bin/chromium")
# Chromium on a machine with no network beyond package mirrors: nothing in the background
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-default-apps"]


def _harness(*args: str, log: Path) -> ManagedProcess:
    exe = shutil.which("pet-harness") or str(Path(sys.executable).with_name("pet-harness"))
    return ManagedProcess("pet-harness-load", [exe, "load", *args], log, env=dict(os.environ)).start()


def _only_run(results: Path) -> Path:
    runs = [p for p in results.iterdir() if p.is_dir()]
    assert len(runs) == 1, f"expected one run folder in {results}, found {runs}"
    return runs[0]


def test_a_short_load_of_ours_the_naive_peer_and_the_raw_ceiling(tmp_path: Path) -> None:
    results = tmp_path / "results"
    proc = _harness("--operator", "all", "--pets", "240", "--rate", "20", "--seconds", "10", "--namespaces", "2",
                    "--stores", "2", "--duplicate-share", "0.05", "--results", str(results),
                    log=tmp_path / "load.log")
    try:
        wait_for(lambda: not proc.running, bool, 900, "pet-harness load --operator all to finish")
    finally:
        proc.stop()
    assert proc.returncode == 0, proc.log_text()[-5000:]
    run = _only_run(results)
    summary = json.loads((run / "summary.json").read_text())
    kinds = [r["operator"] for r in summary["runs"]]
    assert kinds == ["ours", "naive-kopf", "raw"]
    for r in summary["runs"]:
        assert r["verify"]["ok"], (r["operator"], r["verify"]["problems"])
        assert r["creates"] > 100, r["operator"]
        fresh = next(q for q in r["requests"] if q["name"] == "POST pets")
        assert r["reconcile"]["count"] == fresh["count"] and not r["reconcile"]["failures"], r["reconcile"]
        assert not any(q["failures"] for q in r["requests"]), r["requests"]
        assert (run / r["operator"] / "latency.png").stat().st_size > 10_000
        assert (run / r["operator"] / "locust.html").exists()
    ours = summary["runs"][0]
    assert ours["rss"]["sampled"] and ours["api"]["writes_per_pet"] is not None
    assert "ours/raw" in summary["comparison"]["ratios"] and "ours/naive-kopf" in summary["comparison"]["ratios"]
    assert (run / "ours" / "rss.png").exists()
    REPORTS.mkdir(exist_ok=True)
    shutil.copytree(run, REPORTS / "load" / "short-run", dirs_exist_ok=True)


def _state(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/pet-load", timeout=5) as resp:
        return dict(json.loads(resp.read()))


def test_the_web_ui_starts_a_swarm_and_shows_reconcile_latency_in_a_real_browser(tmp_path: Path) -> None:
    if not Path(CHROMIUM).exists():
        message = f"no browser at {CHROMIUM}: install Debian's chromium (apt-get install chromium) or set PET_CHROMIUM"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    playwright = pytest.importorskip("playwright.sync_api")
    port = free_port()
    results = tmp_path / "results"
    proc = _harness("--operator", "ours", "--web", "--web-port", str(port), "--pets", "120", "--namespaces", "1",
                    "--stores", "1", "--results", str(results), log=tmp_path / "load.log")
    shots = REPORTS / "load"
    shots.mkdir(parents=True, exist_ok=True)
    try:
        wait_for(lambda: _state(port), lambda s: s.get("state") == "ready", 240, "the Locust web UI",
                 ignore=(OSError, ValueError))
        with playwright.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                page.goto(f"http://127.0.0.1:{port}/")
                page.fill("input[name=userCount]", "8")
                page.fill("input[name=spawnRate]", "8")
                page.click("button:has-text('START')")
                row = page.locator("tr", has_text="create → Active")
                row.wait_for(timeout=90_000)
                wait_for(lambda: row.inner_text(), lambda text: "RECONCILE" in text and any(
                    cell.strip().isdigit() and int(cell) >= 20 for cell in text.split("\t")), 90,
                    "the reconcile-latency row to count 20 settled creates")
                page.screenshot(path=str(shots / "web-ui-statistics.png"), full_page=True)
                page.click("text=Charts")
                page.locator("canvas").first.wait_for(timeout=30_000)
                assert page.locator("canvas").count() >= 2
                page.wait_for_timeout(1500)  # let the charts draw their points for the screenshot
                page.screenshot(path=str(shots / "web-ui-charts.png"), full_page=True)
                page.click("button:has-text('STOP')")
            finally:
                browser.close()
        wait_for(lambda: not proc.running, bool, 180, "pet-harness load to end once the swarm stopped")
    finally:
        proc.stop()
    assert proc.returncode == 0, proc.log_text()[-5000:]
    summary = json.loads((_only_run(results) / "summary.json").read_text())
    assert summary["verify"]["ok"], summary["verify"]["problems"]
    assert summary["reconcile"]["count"] >= 20 and not summary["reconcile"]["failures"]
    assert (shots / "web-ui-charts.png").stat().st_size > 20_000

"""Running Chaos Toolkit experiments: ``chaos run`` of an experiment file against a chaos target
(the embedded :class:`pet_harness.chaos_env.ChaosEnvironment`, or a real cluster's
:class:`pet_harness.chaos_cluster.ClusterTarget`), derived copies for several rounds, and the
summaries (journal status, method activities that failed, failover gaps and writes by non-leaders
from the audit log, pets lost, duplicate ids).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import json
import os
import shutil
import statistics
import subprocess  # nosec B404 # argv lists, never a shell
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

from pet_harness import chaos_env
from pet_harness.chaos_cluster import ClusterTarget
from pet_harness.kube import REPO_ROOT

CHAOS_DIR = REPO_ROOT / "chaos"
EXPERIMENTS_DIR = CHAOS_DIR / "experiments"
BETWEEN_ROUNDS = "steady-state-between-rounds"
DEFAULT_STEADY_STATE_TIMEOUT = 30  # petchaos.probes.steady_state's default
CHAOS_TIMEOUT_PER_ROUND = 300.0


class ChaosTarget(Protocol):
    """What an experiment runs against: the embedded environment or a real cluster (a context
    manager that is up inside its ``with``)."""

    def __enter__(self) -> ChaosTarget: ...

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None: ...

    def chaos_variables(self) -> dict[str, str]:
        """``--var`` values for ``chaos run`` (the provider's configuration)."""

    def chaos_environ(self) -> dict[str, str]:
        """Environment variables for ``chaos run``."""

    def stop_load(self) -> None: ...

    def steady_state(self, timeout: float = 30, pause_load: bool = True) -> dict[str, Any]: ...

    def pets_lost(self) -> list[str]: ...

    def audit_analysis(self) -> dict[str, Any] | None:
        """Leadership timeline and writes by non-leaders, or None without an audit log."""

    def write_artifacts(self, results: Path, name: str) -> None: ...


def experiment_names() -> list[str]:
    return sorted(p.stem for p in EXPERIMENTS_DIR.glob("*.json"))


def experiment_path(name: str) -> Path:
    path = Path(name)
    if path.suffix == ".json" and path.exists():
        return path
    return EXPERIMENTS_DIR / f"{name}.json"


def chaos_command(experiment: Path, journal: Path, log_file: Path, variables: Mapping[str, str]) -> list[str]:
    """``chaos run`` of ``experiment`` with every configuration variable given as ``--var``."""
    exe = shutil.which("chaos")
    base = [exe] if exe else [sys.executable, "-m", "chaostoolkit"]
    flags = [arg for key, value in variables.items() for arg in ("--var", f"{key}={value}")]
    return [*base, "--no-version-check", "--log-file", str(log_file), "run", "--journal-path", str(journal),
            "--rollback-strategy", "always", *flags, str(experiment)]


def _hypothesis_timeout(experiment: dict[str, Any]) -> Any:
    """The ``timeout`` of the hypothesis' ``petchaos.probes.steady_state`` probe (its default if none)."""
    for probe in (experiment.get("steady-state-hypothesis") or {}).get("probes") or []:
        provider = (probe.get("provider") or {}) if isinstance(probe, dict) else {}
        if provider.get("module") == "petchaos.probes" and provider.get("func") == "steady_state":
            return (provider.get("arguments") or {}).get("timeout", DEFAULT_STEADY_STATE_TIMEOUT)
    return DEFAULT_STEADY_STATE_TIMEOUT


def derive_experiment(experiment: dict[str, Any], rounds: int) -> dict[str, Any]:
    """The experiment with its method run ``rounds`` times (pure; the input is not modified).

    Each round's activities are named ``<name>#<round>`` (references to method activities
    follow); after every round but the last comes the action ``steady-state-between-rounds``
    (``petchaos.probes.require_steady_state``, with the hypothesis probe's timeout), which
    fails the activity when the steady state is not back. ``rounds == 1`` gives an equal copy.
    """
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise ValueError(f"rounds must be an integer >= 1, got {rounds!r}")
    derived = copy.deepcopy(experiment)
    if rounds == 1:
        return derived
    method = experiment.get("method") or []
    names = {a.get("name") for a in method if isinstance(a, dict) and a.get("name")}
    check = {
        "type": "action",
        "name": BETWEEN_ROUNDS,
        "provider": {"type": "python", "module": "petchaos.probes", "func": "require_steady_state",
                     "arguments": {"timeout": _hypothesis_timeout(experiment)}},
    }
    activities: list[Any] = []
    for n in range(1, rounds + 1):
        for activity in method:
            activity = copy.deepcopy(activity)
            if isinstance(activity, dict):
                if activity.get("name"):
                    activity["name"] = f"{activity['name']}#{n}"
                if activity.get("ref") in names:
                    activity["ref"] = f"{activity['ref']}#{n}"
            activities.append(activity)
        if n < rounds:
            activities.append(copy.deepcopy(check))
    derived["method"] = activities
    derived["title"] = f"{experiment.get('title', '')} ({rounds} rounds)".lstrip()
    return derived


def failed_activities(journal: dict[str, Any] | None) -> list[str]:
    """Names of the method activities of a journal's ``run`` that did not succeed (pure).

    ``chaos run`` keeps the status ``completed`` when a method activity fails, so the
    journal status alone does not tell.
    """
    names = []
    for entry in (journal or {}).get("run") or []:
        if not isinstance(entry, dict) or entry.get("status") != "succeeded":
            activity = entry.get("activity") if isinstance(entry, dict) else None
            names.append(str((activity or {}).get("name") or "?"))
    return names


def build_summary(name: str, journal: dict[str, Any] | None, analysis: dict[str, Any] | None,
                  pets_lost: Sequence[str], final: dict[str, Any] | None, seconds: float,
                  returncode: int | None = None, error: str | None = None, rounds: int = 1,
                  audited: bool = True) -> dict[str, Any]:
    """One experiment's summary (pure; unit-tested). Not ``audited`` (a cluster without its audit
    log at hand): writes by non-leaders are unknown (None) and do not fail it."""
    audit_summary = (analysis or {}).get("summary", {})
    gaps = [g for g in audit_summary.get("gap_seconds", []) if g is not None]
    status = (journal or {}).get("status")
    deviated = bool((journal or {}).get("deviated", journal is None))
    non_leader = audit_summary.get("writes_by_non_leaders")
    duplicates = (final or {}).get("duplicate_ids")
    failed = failed_activities(journal)
    summary: dict[str, Any] = {
        "experiment": name,
        "rounds": rounds,
        "status": status,
        "deviated": deviated,
        "failed_activities": len(failed),
        "failed_activity_names": failed[:20],
        "chaos_exit_code": returncode,
        "seconds": round(seconds, 1),
        "failover_gap_median": round(statistics.median(gaps), 2) if gaps else None,
        "failover_gap_max": round(max(gaps), 2) if gaps else None,
        "transitions": audit_summary.get("transitions"),
        "writes_by_leaders": audit_summary.get("writes_by_leaders"),
        "writes_by_non_leaders": non_leader,
        # by a leader robbed by a steal, before its next Lease round could see it (counted apart)
        "writes_before_seeing_takeover": audit_summary.get("writes_before_seeing_takeover"),
        "violations": (analysis or {}).get("violations", [])[:10],
        "pets_lost": len(pets_lost),
        "pets_lost_names": list(pets_lost)[:20],
        "duplicate_ids": duplicates,
        "final_steady_state": final,
        "error": error,
    }
    summary["audited"] = audited
    audit_ok = non_leader == 0 if audited else non_leader in (0, None)
    summary["passed"] = bool(
        status == "completed" and not deviated and not failed and audit_ok and not pets_lost
        and duplicates == 0 and error is None
    )
    return summary


def _require_positive(what: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{what} must be an integer >= 1, got {value!r}")


def run_experiment(name: str, results: Path,
                   env_factory: Callable[[], ChaosTarget] | None = None, chaos_timeout: float | None = None,
                   rounds: int = 1, max_pets: int = 30, audited: bool = True) -> dict[str, Any]:
    """Run one experiment with ``chaos run`` in a fresh environment; write its journal and summary.

    ``rounds > 1`` runs :func:`derive_experiment`'s copy, written to ``<name>-experiment.json``
    in ``results`` (the source file is not touched). The default environment is a
    :class:`ChaosEnvironment` whose load creates at most ``max_pets`` pets; an ``env_factory``
    given is called without arguments (it sizes its own load), e.g. a
    :class:`pet_harness.chaos_cluster.ClusterTarget` for a real cluster, with ``audited`` False
    when no audit log is at hand. ``chaos_timeout`` defaults to 300 s per round.
    """
    _require_positive("rounds", rounds)
    _require_positive("max_pets", max_pets)
    factory = (env_factory if env_factory is not None
               else functools.partial(chaos_env.ChaosEnvironment, max_pets=max_pets))
    timeout = chaos_timeout if chaos_timeout is not None else CHAOS_TIMEOUT_PER_ROUND * rounds
    results.mkdir(parents=True, exist_ok=True)
    experiment = experiment_path(name)
    name = experiment.stem
    journal_path = results / f"{name}-journal.json"
    journal_path.unlink(missing_ok=True)  # never read the journal of an earlier run
    derived_path = results / f"{name}-experiment.json"
    derived_path.unlink(missing_ok=True)  # nor take an earlier run's derived experiment for this one's
    started = time.monotonic()
    outcome = Outcome()
    try:
        if rounds > 1:
            derived = derive_experiment(json.loads(experiment.read_text()), rounds)
            derived_path.write_text(json.dumps(derived, indent=2) + "\n")
            experiment = derived_path
        outcome = _run_in_environment(factory, experiment, name, results, journal_path, timeout)
    except Exception as exc:  # noqa: BLE001 - the environment did not start: recorded, the next one runs
        outcome.error = f"{type(exc).__name__}: {exc}"[:2000]
    summary = build_summary(name, outcome.journal, outcome.analysis, outcome.lost, outcome.final,
                            time.monotonic() - started, outcome.code, outcome.error, rounds, audited)
    (results / f"{name}-summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary


@dataclasses.dataclass
class Outcome:
    """What one experiment's run left: the journal, the audit analysis, pets lost, the final
    steady state, ``chaos run``'s exit code, and an error (the run did not finish)."""

    journal: dict[str, Any] | None = None
    analysis: dict[str, Any] | None = None
    lost: list[str] = dataclasses.field(default_factory=list)
    final: dict[str, Any] | None = None
    code: int | None = None
    error: str | None = None


def _run_in_environment(env_factory: Callable[[], ChaosTarget], experiment: Path, name: str, results: Path,
                        journal_path: Path, chaos_timeout: float) -> Outcome:
    out = Outcome()
    with env_factory() as env:
        cmd = chaos_command(experiment, journal_path, results / f"{name}-chaostoolkit.log", env.chaos_variables())
        environ = dict(os.environ)
        environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(CHAOS_DIR), environ.get("PYTHONPATH", "")) if p)
        environ.update(env.chaos_environ())
        try:
            proc = subprocess.run(  # nosec B603 # argv of our own, no shell
                cmd, env=environ, capture_output=True, text=True, timeout=chaos_timeout, check=False)
            out.code = proc.returncode
            (results / f"{name}-chaos-output.txt").write_text(proc.stdout + proc.stderr)
        except subprocess.TimeoutExpired:
            out.error = f"chaos run timed out after {chaos_timeout:.0f}s"
        with contextlib.suppress(OSError, ValueError):
            out.journal = json.loads(journal_path.read_text())
        env.stop_load()
        out.final = env.steady_state(timeout=30, pause_load=False)
        try:
            out.lost = env.pets_lost()
        except Exception as exc:  # noqa: BLE001 - reported in the summary
            out.error = out.error or f"could not list pets: {exc}"
        out.analysis = env.audit_analysis()
        if out.analysis is not None:
            (results / f"{name}-audit.json").write_text(json.dumps(out.analysis, indent=2, default=str))
        env.write_artifacts(results, name)
    return out


def summary_markdown(summaries: Sequence[dict[str, Any]]) -> str:
    lines = [
        "# Chaos experiments",
        "",
        "| experiment | rounds | status | deviated | failed activities | failover gap median (s) | max (s) "
        "| transitions | writes by non-leaders | pets lost | duplicate ids | seconds | passed |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for s in summaries:
        failed = str(s["failed_activities"])
        if s["failed_activities"]:
            failed += f" ({', '.join(s['failed_activity_names'])})"
        lines.append(
            f"| {s['experiment']} | {s['rounds']} | {s['status']} | {s['deviated']} | {failed} "
            f"| {s['failover_gap_median']} | {s['failover_gap_max']} | {s['transitions']} "
            f"| {s['writes_by_non_leaders']} | {s['pets_lost']} | {s['duplicate_ids']} | {s['seconds']} "
            f"| {s['passed']} |"
        )
    return "\n".join(lines) + "\n"


def run_all(names: Sequence[str], results: Path, rounds: int = 1,
            max_pets: int = 30, env_factory: Callable[[], ChaosTarget] | None = None,
            audited: bool = True) -> list[dict[str, Any]]:
    summaries = []
    for name in names:
        print(f"pet-harness chaos: running {name} ({rounds} round{'s' if rounds != 1 else ''}, "
              f"at most {max_pets} pets) ...", file=sys.stderr, flush=True)
        summary = run_experiment(name, results, env_factory=env_factory, rounds=rounds, max_pets=max_pets,
                                 audited=audited)
        print(f"pet-harness chaos: {name}: status {summary['status']}, deviated {summary['deviated']}, "
              f"failed activities {summary['failed_activities']}, passed {summary['passed']} "
              f"({summary['seconds']} s)", file=sys.stderr, flush=True)
        summaries.append(summary)
    (results / "summary.json").write_text(json.dumps(summaries, indent=2, default=str))
    (results / "summary.md").write_text(summary_markdown(summaries))
    return summaries




def _are_chaos_targets(env: chaos_env.ChaosEnvironment, cluster: ClusterTarget) -> list[ChaosTarget]:
    return [env, cluster]  # mypy proves here that both targets have the interface the runner uses

"""Chaos experiments against a real cluster (``target: kubernetes``), e.g. staging.

:class:`ClusterTarget` is what :func:`pet_harness.chaos_runner.run_experiment` runs an experiment
"in" when the operator already runs on a cluster (the Deployment of ``deploy/operator``):
nothing is started; ``chaos run`` gets ``--var target=kubernetes`` and the configuration
keys given (``petchaos.staging.DEFAULTS``, ``petchaos.load.LOAD_DEFAULTS``); the load is the
``pet-load`` control inside the chaos process, which reports what it created to a file;
the final steady state is read from the cluster; the failover figures come from the API
server's audit log when one is given (``--audit-log``), else they are unknown. The log may hold
more than this experiment (other experiments on the same cluster, days of staging): only the
writes and changes of holder from the moment the target is entered on are judged (the terms
before are rebuilt from the whole log, so the leader then is known).

With ``cut_mode=pod-netns`` (the cut made in the leader pod's network namespace from its node,
:mod:`petchaos.netns_cut`) leaving the target heals every cut that is left, whatever the
experiment's rollbacks did: a cut must not outlive its experiment.
"""

from __future__ import annotations

import datetime
import json
import logging
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pet_harness import audit
from petchaos import load as pet_load
from petchaos import staging

__all__ = ["LOCAL_ONLY", "ClusterTarget", "parse_settings"]

logger = logging.getLogger(__name__)

#: experiments that need node access: not run on a cluster unless named
LOCAL_ONLY = ("restart-apiserver", "restart-etcd")

KNOWN_KEYS = tuple(staging.DEFAULTS) + tuple(pet_load.LOAD_DEFAULTS)


def parse_settings(pairs: list[str]) -> dict[str, str]:
    """``KEY=VALUE`` pairs (``--set``) into configuration; unknown keys are refused, naming the known."""
    settings: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"--set {pair!r}: expected KEY=VALUE")
        if key not in KNOWN_KEYS:
            raise ValueError(f"--set {pair!r}: unknown key {key!r} (known: {', '.join(KNOWN_KEYS)})")
        settings[key] = value
    return settings


class ClusterTarget:
    """The environment of an experiment on a real cluster: nothing to start, only to observe."""

    target = "kubernetes"

    def __init__(self, settings: Mapping[str, str] | None = None, audit_log: Path | None = None) -> None:
        self.settings = dict(settings or {})
        self.audit_log = audit_log
        self.workdir = Path(tempfile.mkdtemp(prefix="pet-chaos-cluster-"))
        self.load_report = self.workdir / "load-report.json"
        self.since: datetime.datetime | None = None
        self.cleanup: dict[str, Any] | None = None

    def __enter__(self) -> ClusterTarget:
        self.since = datetime.datetime.now(datetime.UTC)
        staging.Settings(self.configuration)  # a bad setting fails here, before any chaos
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if staging.Settings(self.configuration).cut_mode == "pod-netns":
                try:
                    self.cleanup = staging.heal(self.configuration)
                except Exception:  # the teardown goes on; the pods' end removes the rules anyway
                    logger.exception("healing the pod-netns cut at the end of the experiment failed")
        finally:
            shutil.rmtree(self.workdir, ignore_errors=True)

    @property
    def configuration(self) -> dict[str, str]:
        return {"target": self.target, **self.settings}

    def chaos_variables(self) -> dict[str, str]:
        return self.configuration

    def chaos_environ(self) -> dict[str, str]:
        return {pet_load.REPORT_ENV: str(self.load_report)}

    def stop_load(self) -> None:
        """The load lives in the chaos process and stopped with it."""

    def steady_state(self, timeout: float = 30, pause_load: bool = False) -> dict[str, Any]:
        return staging.steady_state(timeout, self.configuration)

    def report(self) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads(self.load_report.read_text())
        except (OSError, ValueError):
            return {}
        return data

    def pets_lost(self) -> list[str]:
        return sorted(self.report().get("lost", []))

    def audit_analysis(self) -> dict[str, Any] | None:
        if self.audit_log is None:
            return None
        namespace = staging.Settings(self.configuration).operator_namespace
        result: dict[str, Any] = audit.analyze(self.audit_log, namespace, since=self.since)
        return result

    def write_artifacts(self, results: Path, name: str) -> None:
        if self.load_report.exists():
            shutil.copyfile(self.load_report, results / f"{name}-load.json")

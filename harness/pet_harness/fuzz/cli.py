"""``pet-harness fuzz``: run the fuzz scenarios (admission, webhook, convergence) with a profile and
write ``results/fuzz/<timestamp>/summary.{json,md}``."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import subprocess  # nosec B404 # argv lists, never a shell
import sys
from pathlib import Path
from typing import Any

from pet_harness.fuzz.tally import Tally, write
from pet_harness.kube import REPO_ROOT

PARTS = {
    "admission": "test_fuzz_admission.py",
    "webhook": "test_fuzz_webhook.py",
    "convergence": "test_fuzz_convergence.py",
}


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def add_parser(sub: Any) -> None:
    fuzz = sub.add_parser("fuzz", help="Hypothesis fuzzing of admission, the webhook and convergence (docs/fuzzing.md)")
    fuzz.add_argument("--profile", default="ci", choices=["ci", "long"],
                      help="ci: small and derandomized (default); long: 10,000 examples and 10 state-machine runs")
    fuzz.add_argument("--examples", type=_positive, default=None, metavar="N",
                      help="examples per admission and webhook test (default: the profile's)")
    fuzz.add_argument("--steps", type=_positive, default=None, metavar="N", help="steps per state-machine run")
    fuzz.add_argument("--machines", type=_positive, default=None, metavar="N", help="state-machine runs")
    fuzz.add_argument("--seed", type=int, default=None, help="seed of the admission and webhook parts (long profile)")
    fuzz.add_argument("--part", action="append", choices=sorted(PARTS), default=[],
                      help="run only this part (repeatable; default: all three)")
    fuzz.add_argument("--target", default="local", choices=["local", "kubeconfig"],
                      help="local (default): the embedded cluster; kubeconfig: the cluster of $KUBECONFIG, "
                           "admission part only, in --namespace, served by that cluster's operator")
    fuzz.add_argument("--namespace", default=None, help="target kubeconfig: the namespace to fuzz in (required)")
    fuzz.add_argument("--results", default=None, help="results folder (default: results/fuzz/<timestamp>)")
    fuzz.set_defaults(func=run)


def pytest_command(args: argparse.Namespace, results: Path) -> list[str]:
    parts = args.part or sorted(PARTS)
    if args.target == "kubeconfig":
        if not args.namespace:
            raise SystemExit("pet-harness fuzz: --target kubeconfig needs --namespace NS (served by the cluster's "
                             "operator; the fuzz creates and deletes pets and stores named fz-*, held-*, open, "
                             "closed, pair there)")
        parts = ["admission"]
    scenarios = REPO_ROOT / "scenarios"
    cmd = [sys.executable, "-m", "pytest", *(str(scenarios / PARTS[p]) for p in parts), "-m", "fuzz", "-q",
           "-p", "no:cacheprovider", f"--fuzz-profile={args.profile}", f"--fuzz-results={results / 'parts'}",
           f"--pet-report-dir={results}", "--pet-summary-name=fuzz-tests", f"--junitxml={results / 'junit.xml'}"]
    for option, value in (("--fuzz-examples", args.examples), ("--fuzz-steps", args.steps),
                          ("--fuzz-machines", args.machines), ("--fuzz-seed", args.seed)):
        if value is not None:
            cmd.append(f"{option}={value}")
    if args.target == "kubeconfig":
        cmd += ["--pet-cluster=kubeconfig", f"--fuzz-namespace={args.namespace}"]
    return cmd


def summarize(results: Path, command: str, title: str) -> Tally:
    tally = Tally()
    for path in sorted((results / "parts").glob("*.json")):
        tally.merge(json.loads(path.read_text()))
    write(tally, results, title, command)
    return tally


def run(args: argparse.Namespace) -> int:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    results = Path(args.results) if args.results else Path.cwd() / "results" / "fuzz" / stamp
    results.mkdir(parents=True, exist_ok=True)
    cmd = pytest_command(args, results)
    shown = "pet-harness fuzz " + " ".join(shlex.quote(a) for a in sys.argv[2:]) if len(sys.argv) > 1 else "fuzz"
    print(f"pet-harness fuzz: {args.profile} profile, results in {results}", file=sys.stderr)
    environ = dict(os.environ)
    child = subprocess.Popen(cmd, cwd=REPO_ROOT, env=environ)  # nosec B603 # argv of our own, no shell
    try:
        code = child.wait()
    except KeyboardInterrupt:  # pytest got the Ctrl-C too: let it stop its clusters and operators
        try:
            child.wait(60)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
        code = 130
    tally = summarize(results, shown, f"Fuzz run {stamp} ({args.profile})")
    data = tally.as_dict()
    print(f"pet-harness fuzz: {data['examples_total']} examples, {data['state_machine_steps']} state-machine steps, "
          f"{data['operator_restarts']} restarts, {len(data['disagreements'])} disagreements, "
          f"{data['server_errors_5xx']} 5xx; {results / 'summary.md'}", file=sys.stderr)
    return code

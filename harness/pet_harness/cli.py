"""``pet-harness``: build the control-plane binaries and run a cluster by hand.

    pet-harness binaries build        build kube-apiserver, etcd, kube-controller-manager and helm (cached per
                                      version); --node also kube-scheduler, kubelet and kube-proxy;
                                      --helm-only: helm alone
    pet-harness binaries where        show which binaries would be used, and their versions
    pet-harness cluster up            start the embedded cluster in the background (--node: with a real node
                                      and the operator on it as pods from the image built here, serving
                                      --serve NS, default pets; --no-operator: the node alone)
    pet-harness cluster status        is it running, where, on which ports
    pet-harness cluster kubeconfig    print the admin kubeconfig's path
    pet-harness cluster down          stop it; nothing is left running
    pet-harness node-bench            start and stop the node cluster N times: start, pod, memory, teardown
    pet-harness finalizers strip      remove the operator's finalizers once it is gone for good
    pet-harness chaos                 run the Chaos Toolkit experiments of chaos/experiments, 3 rounds each,
                                      at most 100 pets (--rounds, --max-pets; docs/chaos.md)
    pet-harness load                  Locust load on a fresh embedded cluster: latency, throughput, API writes,
                                      RSS of ours, the naive Kopf peer and the raw ceiling (docs/load.md)
    pet-harness chart render          write deploy/{rbac,operator,webhook,monitoring} from the Helm chart
                                      (--check: only say whether they are its rendering)
    pet-harness chart version         the version for the chart; --write [VERSION] stamps Chart.yaml, --check
                                      compares it with the package version (docs/versioning.md)
    pet-harness image build           the operator's image (BuildKit; --arch arm64 through qemu-user;
                                      --check-version runs pet-operator --version in it; docs/image.md)
    pet-harness image report          what takes the image's space: results/image/image-report.{md,json}
    pet-harness image sbom            the image's CycloneDX SBOM from its contents: reports/image/sbom.cdx.json
    pet-harness limits                a large population, restart, updates, narrowing, mass delete, failover
                                      (docs/limits.md)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pet_harness import binaries, cluster_daemon, versions
from pet_harness.clusters.base import ClusterError
from pet_harness.helm import HelmError
from pet_harness.oci_image import ImageError
from pet_operator.version import version

HELM_VERSION_ASK = ("version", "--short")
#: the namespace ``cluster up --node`` has the operator serve when no ``--serve`` is given
DEFAULT_SERVED = "pets"
DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


def _cmd_binaries_build(args: argparse.Namespace) -> int:
    extra = ("kube-controller-manager", *(binaries.NODE_COMMANDS if args.node else ()))
    if args.force:
        for path in (binaries.helm_cache_path(),) if args.helm_only else (
                binaries.apiserver_cache_path(), binaries.etcd_cache_path(), binaries.helm_cache_path(),
                *(binaries.kubernetes_command_cache_path(c) for c in extra),
                *(binaries.buildkit_cache_dir() / n for n in ("buildkitd", "buildctl") if args.node)):
            path.unlink(missing_ok=True)
    # helm renders and lints the chart (deploy/helm) and regenerates deploy/ from it
    helm = binaries.ensure_helm(build=True)
    if args.helm_only:
        print(f"helm: {helm} ({binaries.binary_version(helm, HELM_VERSION_ASK)})")
        return 0
    found = binaries.ensure_binaries(build=True)
    # kube-controller-manager for clusters started with one (namespace deletion, garbage collection);
    # with --node also what a cluster with a node runs
    built = {command: binaries.ensure_kubernetes_command(command, build=True) for command in extra}
    if args.node:  # BuildKit builds the images of the node's pods from Dockerfiles
        built.update(binaries.ensure_buildkit(build=True))
    print(f"kube-apiserver: {found.kube_apiserver} ({binaries.binary_version(found.kube_apiserver)})")
    print(f"etcd:           {found.etcd} ({binaries.binary_version(found.etcd)})")
    for command, path in built.items():
        print(f"{command}: {path} ({binaries.binary_version(path)})")
    print(f"helm: {helm} ({binaries.binary_version(helm, HELM_VERSION_ASK)})")
    if args.node:
        from pet_harness.clusters.node_packages import missing_packages

        missing = missing_packages()
        if missing:
            print(f"Debian packages the node still needs: {' '.join(missing)} "
                  f"(apt-get install {' '.join(missing)})")
    return 0


def _cmd_chart_render(args: argparse.Namespace) -> int:
    from pet_harness import pet_chart

    try:
        return _chart_render(pet_chart, args.check)
    except pet_chart.ChartError as exc:
        print(f"pet-harness: error: {exc}", file=sys.stderr)
        return 1


def _chart_render(pet_chart: Any, check: bool) -> int:
    if check:
        problems = pet_chart.check_deploy()
        for line in problems:
            print(line, file=sys.stderr)
        if not problems:
            print(f"deploy/: {len(pet_chart.GENERATED)} files are the chart's rendering")
        return 1 if problems else 0
    changed = pet_chart.write_deploy()
    for path in changed:
        print(f"wrote {path.relative_to(pet_chart.REPO_ROOT)}")
    print(f"deploy/: {len(pet_chart.GENERATED)} files rendered from the chart, {len(changed)} changed")
    return 0


def _cmd_chart_version(args: argparse.Namespace) -> int:
    from pet_harness import pet_chart

    package = version()
    if args.write is not None:
        target = args.write or pet_chart.semver(package)
        try:
            pet_chart.write_version(target)
        except pet_chart.ChartError as exc:
            print(f"pet-harness: error: {exc}", file=sys.stderr)
            return 2
        print(f"Chart.yaml: version and appVersion set to {target}")
        return 0
    if args.check:
        problems = pet_chart.version_problems(package)
        for line in problems:
            print(line, file=sys.stderr)
        if not problems:
            chart_version, _ = pet_chart.chart_versions()
            print(f"package {package}, chart {chart_version}: they agree")
        return 1 if problems else 0
    print(pet_chart.semver(package))
    return 0


def _cmd_binaries_where(args: argparse.Namespace) -> int:
    print(f"pinned: Kubernetes {versions.KUBERNETES_VERSION}, etcd {versions.ETCD_VERSION}")
    print(f"cache:  {binaries.cache_root()}")
    found = binaries.find_binaries()
    if found is None:
        print("binaries: not built yet (run `pet-harness binaries build`)")
        return 1
    print(f"source: {found.source}")
    print(f"kube-apiserver: {found.kube_apiserver} ({binaries.binary_version(found.kube_apiserver)})")
    print(f"etcd:           {found.etcd} ({binaries.binary_version(found.etcd)})")
    for command in ("kube-controller-manager", *binaries.NODE_COMMANDS):
        located = binaries.find_kubernetes_command(command)
        if located is None:
            flag = " --node" if command in binaries.NODE_COMMANDS else ""
            print(f"{command}: not built yet (optional; `pet-harness binaries build{flag}` builds it)")
        else:
            print(f"{command}: {located[0]} ({located[1]}, {binaries.binary_version(located[0])})")
    return 0


def _served(args: argparse.Namespace) -> list[str]:
    """The namespaces the operator's pods serve: ``--serve`` (default ``pets``) with ``--node``,
    none with ``--no-operator``; refuses operator options without ``--node`` and bad names."""
    if not args.node:
        if args.serve or args.no_operator:
            raise SystemExit("pet-harness cluster: --serve and --no-operator need --node (the operator runs as pods "
                             "only on a node)")
        return []
    if args.no_operator:
        if args.serve:
            raise SystemExit("pet-harness cluster: --serve and --no-operator contradict each other")
        return []
    served = args.serve or [DEFAULT_SERVED]
    for ns in served:
        if not DNS_LABEL.fullmatch(ns):
            raise SystemExit(f"pet-harness cluster: --serve {ns!r} is not a namespace name (a DNS label: lower-case "
                             "letters, digits and '-', at most 63, starting and ending with a letter or digit)")
    return list(dict.fromkeys(served))


def _cmd_cluster_up(args: argparse.Namespace) -> int:
    served = _served(args)
    state = cluster_daemon.up(args.name, node=args.node, serve_namespaces=served,
                              progress=lambda line: print(f"  {line}", file=sys.stderr, flush=True))
    print(f"cluster {args.name!r} is up at {state['server']} (supervisor pid {state['supervisor_pid']})",
          file=sys.stderr)
    print(f"use it with:  export KUBECONFIG={state['kubeconfig']}", file=sys.stderr)
    operator = state.get("operator")
    if operator:
        print(f"the operator runs as pods in {operator['namespace']} ({operator['image']}), serving "
              f"{', '.join(operator['serves'])}", file=sys.stderr)
    print(f"stop it with: pet-harness cluster down --name {args.name}", file=sys.stderr)
    print(state["kubeconfig"])
    return 0


def _cmd_cluster_down(args: argparse.Namespace) -> int:
    if cluster_daemon.down(args.name):
        print(f"cluster {args.name!r} stopped")
    else:
        print(f"cluster {args.name!r} was not running")
    return 0


def _cmd_cluster_status(args: argparse.Namespace) -> int:
    state = cluster_daemon.status(args.name)
    print(json.dumps(state, indent=2))
    return 0 if state.get("status") == "running" else 1


def _cmd_cluster_kubeconfig(args: argparse.Namespace) -> int:
    state = cluster_daemon.status(args.name)
    if state.get("status") != "running":
        print(f"pet-harness: cluster {args.name!r} is not running (status: {state.get('status')}); "
              "start it with `pet-harness cluster up`", file=sys.stderr)
        return 1
    print(state["kubeconfig"])
    return 0


def _cmd_finalizers_strip(args: argparse.Namespace) -> int:
    from pet_harness import finalizers
    from pet_harness.kube import api_client

    if not args.all_namespaces and not args.namespace:
        print("pet-harness: error: give --namespace NS (repeatable) or --all-namespaces", file=sys.stderr)
        return 2
    kubeconfig = args.kubeconfig or os.environ.get("KUBECONFIG") or str(Path.home() / ".kube" / "config")
    with api_client(kubeconfig) as api:
        pets, claims = finalizers.strip(api, None if args.all_namespaces else args.namespace, args.claims_namespace)
    print(f"stripped the id-claim finalizer from {pets} pets; deleted {claims} id claims")
    return 0


def _cmd_chaos(args: argparse.Namespace) -> int:
    import datetime

    from pet_harness import chaos_runner

    names = args.experiment or chaos_runner.experiment_names()
    missing = [n for n in names if not chaos_runner.experiment_path(n).exists()]
    if missing:
        print(f"pet-harness: error: no such experiment: {', '.join(missing)} "
              f"(known: {', '.join(chaos_runner.experiment_names())})", file=sys.stderr)
        return 2
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    results = Path(args.results) if args.results else Path("results") / "chaos" / stamp
    if args.target == "kubernetes":
        from pet_harness.chaos_cluster import LOCAL_ONLY, ClusterTarget, parse_settings

        try:
            settings = parse_settings(args.settings)
        except ValueError as exc:
            print(f"pet-harness: error: {exc}", file=sys.stderr)
            return 2
        audit_log = Path(args.audit_log) if args.audit_log else None
        if audit_log is not None and not audit_log.is_file():
            print(f"pet-harness: error: --audit-log {audit_log}: no such file", file=sys.stderr)
            return 2
        settings.setdefault("load_max_pets", str(args.max_pets))
        if not args.experiment:
            names = [n for n in names if n not in LOCAL_ONLY]
            print(f"pet-harness chaos: target kubernetes: skipping {', '.join(LOCAL_ONLY)} (they need node "
                  "access; name them with -e to try)", file=sys.stderr)
        summaries = chaos_runner.run_all(
            names, results, rounds=args.rounds, max_pets=args.max_pets,
            env_factory=lambda: ClusterTarget(settings, audit_log), audited=audit_log is not None)
    else:
        if args.settings or args.audit_log:
            print("pet-harness: error: --set and --audit-log are for --target kubernetes", file=sys.stderr)
            return 2
        binaries.ensure_binaries(build=True)
        summaries = chaos_runner.run_all(names, results, rounds=args.rounds, max_pets=args.max_pets)
    print((results / "summary.md").read_text())
    print(f"results: {results}")
    return 0 if all(s["passed"] for s in summaries) else 1


def _at_least_one(text: str) -> int:
    """argparse type: an integer >= 1 (the error names the value given)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _cmd_node_bench(args: argparse.Namespace) -> int:
    import datetime

    from pet_harness.node_bench import bench

    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    results = Path(args.results) if args.results else Path("results") / "node-bench" / stamp
    bench(args.runs, results)
    print((results / "summary.md").read_text())
    print(f"results: {results}")
    return 0


def _image_tar(args: argparse.Namespace) -> tuple[Path, str | None]:
    """The image to read: --tar, or the operator's image of --arch built now (or from the cache)."""
    platform = f"linux/{args.arch}" if args.arch else None
    if args.tar:
        return Path(args.tar), platform
    from pet_harness.pet_image import operator_image

    return operator_image(lambda line: print(line, file=sys.stderr), args.arch).tar, platform


def _cmd_image_build(args: argparse.Namespace) -> int:
    import time

    from pet_harness.pet_image import operator_image, version_in_image

    started = time.monotonic()
    image = operator_image(lambda line: print(line, file=sys.stderr), args.arch)
    print(f"{image.reference} {image.tar} ({time.monotonic() - started:.0f} s)")
    if args.check_version:
        said = version_in_image(image, args.arch)
        expected = f"pet-operator {version()}"
        print(f"in the image: {said}")
        if said != expected:
            print(f"pet-harness: the image says {said!r}, the package is {expected!r}", file=sys.stderr)
            return 1
    return 0


def _cmd_image_report(args: argparse.Namespace) -> int:
    from pet_harness.image_report import write_report

    tar, platform = _image_tar(args)
    write_report(tar, Path(args.out), platform)
    print((Path(args.out) / "image-report.md").read_text())
    print(f"report: {Path(args.out) / 'image-report.md'} (and .json)")
    return 0


def _cmd_image_sbom(args: argparse.Namespace) -> int:
    from pet_harness.image_sbom import counts, write_sbom

    tar, platform = _image_tar(args)
    document = write_sbom(tar, Path(args.out), platform, tool_version=version())
    print(f"{args.out}: {len(document['components'])} components {counts(document)}")
    return 0


def _cmd_cluster_serve(args: argparse.Namespace) -> int:
    return cluster_daemon.serve(args.name, node=args.node, serve_namespaces=_served(args))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pet-harness", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}",
                        help="print the version (the project's, from the git tags) and exit")
    sub = parser.add_subparsers(dest="command", required=True)

    bins = sub.add_parser("binaries", help="build or locate kube-apiserver and etcd")
    bins_sub = bins.add_subparsers(dest="action", required=True)
    build = bins_sub.add_parser("build", help="build what is missing from the cache (shows progress)")
    build.add_argument("--force", action="store_true", help="rebuild even if cached")
    build.add_argument("--node", action="store_true",
                       help="also kube-scheduler, kubelet and kube-proxy, for `cluster up --node` (minutes)")
    build.add_argument("--helm-only", action="store_true", help="build (or find) helm alone")
    build.set_defaults(func=_cmd_binaries_build)
    bins_sub.add_parser("where", help="show the binaries in use").set_defaults(func=_cmd_binaries_where)

    chart = sub.add_parser("chart", help="the Helm chart: deploy/ rendered from it, its version")
    chart_sub = chart.add_subparsers(dest="action", required=True)
    render = chart_sub.add_parser("render", help="write deploy/{rbac,operator,webhook,monitoring} from the chart")
    render.add_argument("--check", action="store_true", help="write nothing; exit 1 if a file is not the rendering")
    render.set_defaults(func=_cmd_chart_render)
    ver = chart_sub.add_parser("version", help="print the package version in SemVer form (the chart's)")
    ver.add_argument("--write", nargs="?", const="", default=None, metavar="VERSION",
                     help="set Chart.yaml's version and appVersion (default: the package version)")
    ver.add_argument("--check", action="store_true", help="exit 1 unless Chart.yaml agrees with the package version")
    ver.set_defaults(func=_cmd_chart_version)

    cluster = sub.add_parser("cluster", help="run the embedded cluster by hand")
    cluster_sub = cluster.add_subparsers(dest="action", required=True, metavar="{up,down,status,kubeconfig}")
    for action, func, text in (
        ("up", _cmd_cluster_up, "start it in the background; prints the kubeconfig path"),
        ("down", _cmd_cluster_down, "stop it and everything it started"),
        ("status", _cmd_cluster_status, "show its state (exit 1 if not running)"),
        ("kubeconfig", _cmd_cluster_kubeconfig, "print the admin kubeconfig path"),
        ("serve", _cmd_cluster_serve, None),  # internal: the supervisor that `up` starts
    ):
        p = cluster_sub.add_parser(action, help=text) if text else cluster_sub.add_parser(action)
        p.add_argument("--name", default="default", help="cluster name (default: default)")
        if action in ("up", "serve"):
            p.add_argument("--node", action="store_true",
                           help="with a real node: kube-scheduler, containerd, kubelet, kube-proxy (root; "
                                "docs/harness.md, The node backend); the operator deployed on it as pods")
            p.add_argument("--serve", action="append", default=[], metavar="NAMESPACE",
                           help=f"with --node: a namespace the operator's pods serve (repeatable; default "
                                f"{DEFAULT_SERVED})")
            p.add_argument("--no-operator", action="store_true", help="with --node: the node without the operator")
        p.set_defaults(func=func)
    node_bench = sub.add_parser("node-bench", help="start and stop the node cluster N times; figures to a file")
    node_bench.add_argument("--runs", type=_at_least_one, default=5, metavar="N", help="runs (default: 5)")
    node_bench.add_argument("--results", default=None, help="results folder (default: results/node-bench/<timestamp>)")
    node_bench.set_defaults(func=_cmd_node_bench)
    image = sub.add_parser("image", help="the operator's image: build (any arch), its size report, its SBOM")
    image_sub = image.add_subparsers(dest="action", required=True)
    for action, func, text in (
        ("build", _cmd_image_build, "build the operator's image with BuildKit (root; cached by content)"),
        ("report", _cmd_image_report, "its size, per layer and per owner (Python, site-packages, Debian)"),
        ("sbom", _cmd_image_sbom, "its CycloneDX SBOM: Debian packages and Python distributions in it"),
    ):
        p = image_sub.add_parser(action, help=text)
        p.add_argument("--arch", choices=["amd64", "arm64"], default=None,
                       help="the image's architecture (default: the host's; another runs through qemu-user)")
        if action == "build":
            p.add_argument("--check-version", action="store_true",
                           help="run pet-operator --version in the image; exit 1 unless it says the package's")
        else:
            p.add_argument("--tar", default=None, help="an OCI image tar to read instead of building")
        if action == "report":
            p.add_argument("--out", default="results/image", help="folder (default: results/image)")
        if action == "sbom":
            p.add_argument("--out", "-o", default="reports/image/sbom.cdx.json",
                           help="file (default: reports/image/sbom.cdx.json)")
        p.set_defaults(func=func)
    fin = sub.add_parser("finalizers", help="clean up after the operator is uninstalled")
    fin_sub = fin.add_subparsers(dest="action", required=True)
    strip = fin_sub.add_parser("strip", help="remove petstore.example.com/id-claim from pets (and the claims)")
    strip.add_argument("--kubeconfig", default=None, help="default: $KUBECONFIG, then ~/.kube/config")
    strip.add_argument("--namespace", "-n", action="append", default=[], help="namespace of pets (repeatable)")
    strip.add_argument("--all-namespaces", "-A", action="store_true", help="pets of every namespace")
    strip.add_argument("--claims-namespace", default=None, help="also delete the id claims (Leases) here")
    strip.set_defaults(func=_cmd_finalizers_strip)
    chaos = sub.add_parser("chaos", help="run the Chaos Toolkit experiments, each in a fresh embedded cluster")
    chaos.add_argument("--experiment", "-e", action="append", default=[],
                       help="experiment name in chaos/experiments, or a path (repeatable; default: all)")
    chaos.add_argument("--results", default=None, help="results folder (default: results/chaos/<timestamp>)")
    chaos.add_argument("--target", default="local", choices=["local", "kubernetes"],
                       help="local (default): a fresh embedded cluster per experiment; kubernetes: the cluster of "
                            "$KUBECONFIG where the operator runs as deploy/operator (docs/chaos.md)")
    chaos.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="settings",
                       help="target kubernetes: a configuration key, e.g. operator_namespace=pet-system, "
                            "load_namespace=default (repeatable; keys in docs/chaos.md)")
    chaos.add_argument("--audit-log", default=None, metavar="FILE",
                       help="target kubernetes: the API server's audit log (JSON lines) for failover gaps and "
                            "writes by non-leaders; without it they are not measured")
    chaos.add_argument("--rounds", type=_at_least_one, default=3, metavar="N",
                       help="run each experiment's method N times, with a steady-state check between rounds "
                            "(default: 3; the pytest entry runs 1)")
    chaos.add_argument("--max-pets", type=_at_least_one, default=100, metavar="N",
                       help="the load creates at most N pets per experiment (default: 100; the pytest entry: 30)")
    chaos.set_defaults(func=_cmd_chaos)
    from pet_harness.load.cli import add_limits_parser
    from pet_harness.load.cli import add_parser as add_load_parser

    add_load_parser(sub)
    add_limits_parser(sub)
    from pet_harness.fuzz.cli import add_parser as add_fuzz_parser

    add_fuzz_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except (binaries.BinaryError, ClusterError, HelmError, ImageError) as exc:
        print(f"pet-harness: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
